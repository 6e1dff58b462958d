//! File-tree moves for the backup, the cleanup and the sweep of what we
//! wrote before. Moves are renames within the config path, so a moved file
//! keeps its bytes, mode, owner and links exactly.

use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::hosts::MARKER;
use super::{HOSTS_TOML, MirrorConfigError};

/// Suffix of the temporary file a `hosts.toml` is written to before the
/// rename; one left by a crash is ours.
pub const TMP_SUFFIX: &str = ".reflektor-tmp";

pub fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MirrorConfigError {
    let path = path.to_owned();
    move |source| MirrorConfigError::Io {
        action,
        path,
        error: source,
    }
}

/// The entries of a directory, sorted so that reports are stable.
pub fn entries(dir: &Path) -> Result<Vec<PathBuf>, MirrorConfigError> {
    let mut entries = fs::read_dir(dir)
        .map_err(io_error("read", dir))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error("read", dir))?;
    entries.sort();
    Ok(entries)
}

/// Whether the path exists, without following a final symlink.
pub fn exists(path: &Path) -> Result<bool, MirrorConfigError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("inspect", path)(e)),
    }
}

pub fn rename(from: &Path, to: &Path) -> Result<(), MirrorConfigError> {
    fs::rename(from, to).map_err(|source| MirrorConfigError::Move {
        from: from.to_owned(),
        to: to.to_owned(),
        error: source,
    })
}

/// A file reflektor wrote: a `hosts.toml` starting with the marker, or a
/// temporary file a crash left behind.
pub fn is_marked(path: &Path, meta: &Metadata) -> Result<bool, MirrorConfigError> {
    if !meta.is_file() {
        return Ok(false);
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if name.ends_with(TMP_SUFFIX) {
        return Ok(true);
    }
    if name != HOSTS_TOML {
        return Ok(false);
    }
    let mut head = Vec::with_capacity(MARKER.len() + 1);
    fs::File::open(path)
        .and_then(|file| file.take(MARKER.len() as u64 + 1).read_to_end(&mut head))
        .map_err(io_error("read", path))?;
    Ok(
        head.starts_with(MARKER.as_bytes())
            && matches!(head.get(MARKER.len()), Some(b'\n' | b'\r')),
    )
}

/// Whether a file, symlink or empty directory in the live tree is the same
/// as its counterpart in the backup: then it is a copy we made.
pub fn same_as(live: &Path, meta: &Metadata, backup: &Path) -> Result<bool, MirrorConfigError> {
    let Ok(other) = fs::symlink_metadata(backup) else {
        return Ok(false);
    };
    if meta.is_dir() {
        return Ok(other.is_dir());
    }
    if meta.file_type().is_symlink() {
        return Ok(other.file_type().is_symlink()
            && fs::read_link(live).ok() == fs::read_link(backup).ok());
    }
    if !meta.is_file() || !other.is_file() || meta.len() != other.len() {
        return Ok(false);
    }
    let a = fs::read(live).map_err(io_error("read", live))?;
    let b = fs::read(backup).map_err(io_error("read", backup))?;
    Ok(a == b)
}

/// What to do with the leaves of a sweep that are not ours.
pub enum Others<'a> {
    /// Move them under this directory, at the same relative path; a name
    /// taken there is an error (the backup must be exact).
    MoveExact(&'a Path),
    /// Move them under this directory, renaming on a clash (`name.1`, …).
    MoveAside(&'a Path),
    /// Leave them where they are.
    Leave,
}

#[derive(Debug, Default)]
pub struct Swept {
    /// Our files, deleted.
    pub removed: Vec<PathBuf>,
    /// Other entries, moved: (from, to).
    pub moved: Vec<(PathBuf, PathBuf)>,
}

/// Removes every leaf of `dir` that `ours` claims, handles the others as
/// `others` says, and removes directories left empty. `skip` names
/// top-level entries to leave alone (reflektor's own state directories).
/// A subtree with nothing of ours moves as a whole, keeping it exact.
pub fn sweep(
    dir: &Path,
    skip: &[&str],
    ours: &dyn Fn(&Path, &Path, &Metadata) -> Result<bool, MirrorConfigError>,
    others: &Others<'_>,
) -> Result<Swept, MirrorConfigError> {
    let mut swept = Swept::default();
    for entry in entries(dir)? {
        let name = entry.file_name().unwrap_or_default();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        sweep_entry(&entry, Path::new(name), ours, others, &mut swept)?;
    }
    Ok(swept)
}

fn sweep_entry(
    live: &Path,
    rel: &Path,
    ours: &dyn Fn(&Path, &Path, &Metadata) -> Result<bool, MirrorConfigError>,
    others: &Others<'_>,
    swept: &mut Swept,
) -> Result<(), MirrorConfigError> {
    let meta = fs::symlink_metadata(live).map_err(io_error("inspect", live))?;
    if !contains_ours(live, rel, &meta, ours)? {
        return move_other(live, rel, others, swept);
    }
    if !meta.is_dir() {
        fs::remove_file(live).map_err(io_error("remove", live))?;
        swept.removed.push(live.to_owned());
        return Ok(());
    }
    let children = entries(live)?;
    if children.is_empty() {
        // An empty directory that is ours.
        fs::remove_dir(live).map_err(io_error("remove", live))?;
        return Ok(());
    }
    for child in children {
        let child_rel = rel.join(child.file_name().unwrap_or_default());
        sweep_entry(&child, &child_rel, ours, others, swept)?;
    }
    if entries(live)?.is_empty() {
        fs::remove_dir(live).map_err(io_error("remove", live))?;
    }
    Ok(())
}

fn contains_ours(
    live: &Path,
    rel: &Path,
    meta: &Metadata,
    ours: &dyn Fn(&Path, &Path, &Metadata) -> Result<bool, MirrorConfigError>,
) -> Result<bool, MirrorConfigError> {
    if !meta.is_dir() {
        return ours(live, rel, meta);
    }
    let children = entries(live)?;
    if children.is_empty() {
        return ours(live, rel, meta);
    }
    for child in children {
        let child_meta = fs::symlink_metadata(&child).map_err(io_error("inspect", &child))?;
        let child_rel = rel.join(child.file_name().unwrap_or_default());
        if contains_ours(&child, &child_rel, &child_meta, ours)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn move_other(
    live: &Path,
    rel: &Path,
    others: &Others<'_>,
    swept: &mut Swept,
) -> Result<(), MirrorConfigError> {
    let dest = match others {
        Others::Leave => return Ok(()),
        Others::MoveExact(root) => move_into(live, rel, root, true)?,
        Others::MoveAside(root) => move_into(live, rel, root, false)?,
    };
    swept.moved.push((live.to_owned(), dest));
    Ok(())
}

/// Moves `live` to `root/rel`. On a clash that is an error when `exact`,
/// else the name gets a suffix (`name.1`, …). Returns where it went.
pub fn move_into(
    live: &Path,
    rel: &Path,
    root: &Path,
    exact: bool,
) -> Result<PathBuf, MirrorConfigError> {
    let mut dest = root.join(rel);
    if exists(&dest)? {
        if exact {
            return Err(MirrorConfigError::BackupClash {
                path: live.to_owned(),
                dest,
            });
        }
        let base = dest.clone().into_os_string();
        let mut n = 1;
        while exists(&dest)? {
            let mut candidate = base.clone();
            candidate.push(format!(".{n}"));
            dest = PathBuf::from(candidate);
            n += 1;
        }
    }
    if !exists(root)? {
        fs::create_dir_all(root).map_err(io_error("create", root))?;
    }
    // Parent directories inside `root` take the modes of the live ones.
    let live_root = live
        .ancestors()
        .nth(rel.components().count())
        .unwrap_or(live);
    let mut parent_rel = PathBuf::new();
    for component in rel.parent().into_iter().flat_map(Path::components) {
        parent_rel.push(component);
        let made = root.join(&parent_rel);
        if !exists(&made)? {
            let live_parent = live_root.join(&parent_rel);
            let mode = fs::metadata(&live_parent)
                .map_err(io_error("inspect", &live_parent))?
                .permissions()
                .mode();
            fs::create_dir(&made).map_err(io_error("create", &made))?;
            fs::set_permissions(&made, fs::Permissions::from_mode(mode))
                .map_err(io_error("set the mode of", &made))?;
        }
    }
    rename(live, &dest)?;
    Ok(dest)
}

/// Copies `from` to `to` (which must not exist), keeping modes and
/// symlinks. Top-level entries named in `skip` are left out.
pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<(), MirrorConfigError> {
    let meta = fs::symlink_metadata(from).map_err(io_error("inspect", from))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(from).map_err(io_error("read", from))?;
        symlink(&target, to).map_err(io_error("create", to))?;
    } else if kind.is_file() {
        fs::copy(from, to).map_err(io_error("copy to", to))?;
    } else if kind.is_dir() {
        fs::create_dir(to).map_err(io_error("create", to))?;
        for entry in entries(from)? {
            let name = entry.file_name().unwrap_or_default();
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            copy_tree(&entry, &to.join(name), &[])?;
        }
        fs::set_permissions(to, meta.permissions()).map_err(io_error("set the mode of", to))?;
    } else {
        return Err(MirrorConfigError::Special {
            path: from.to_owned(),
        });
    }
    Ok(())
}

/// Writes a file whole or not at all: a temporary file beside it, flushed,
/// then renamed over it, so containerd never reads half a `hosts.toml`.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), MirrorConfigError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}{TMP_SUFFIX}"));
    let mut file = fs::File::create(&tmp).map_err(io_error("create", &tmp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &tmp))?;
    drop(file);
    rename(&tmp, path)
}
