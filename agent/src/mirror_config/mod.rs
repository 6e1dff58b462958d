//! `reflektor configuration` and `reflektor cleanup`: how reflektor tells
//! containerd to use it, and how it takes that back.
//!
//! containerd 1.5 and later read `<config_path>/<registry host>/hosts.toml`
//! for each image pull; `_default/hosts.toml` applies to every registry
//! without a directory of its own. Each file we write lists our mirror
//! targets as `[host."…"]` entries, tried in order before `server`, the real
//! upstream. containerd adds `?ns=<registry>` to mirror requests by itself,
//! which is how the mirror knows which registry an image comes from.
//!
//! The directory is the node's, not ours, so the rule is that no file we did
//! not write is ever deleted:
//!
//! - **Backup.** The first `configuration` moves everything in the config
//!   path into `_backup/` (renames: bytes, modes, owners and links stay
//!   exact). It is built in `_backup.partial/` and renamed when complete, so
//!   a crash midway is resumed, never mistaken for a finished backup. Later
//!   runs keep the first backup as it is. The layout is Spegel's, so a node
//!   Spegel configured switches without losing its originals.
//! - **Ours.** A file is ours if it is a `hosts.toml` whose first line is
//!   [`MARKER`], or a byte-identical copy of the file at the same place in
//!   `_backup/`. Each run first removes what is ours, then writes afresh, so
//!   running twice gives the same tree.
//! - **Neither.** Anything else found in the config path after the backup
//!   (a file someone added by hand, or files another tool wrote, such as
//!   Spegel's own `hosts.toml`) is moved to `_displaced/`, reported, and
//!   left for a person to judge. Neither command deletes it.
//! - **Without `--prepend-existing`** the config path holds only our files:
//!   every original is in `_backup/`, out of containerd's view.
//! - **With `--prepend-existing`** the originals stay in effect. For each
//!   registry we mirror, we take the directory containerd would have used
//!   (`host_port_` before `host:port`, as containerd looks them up; one it
//!   shadowed stays in `_backup/` only), copy
//!   its other files (certificates referenced by relative paths) and write
//!   its `hosts.toml` as: our hosts first, then the original's hosts in
//!   their order, minus any that are one of our targets. The original's
//!   top-level settings (`server`, `ca`, `client`, `skip_verify`, `[header]`)
//!   are kept, because they describe the upstream. A directory with only
//!   Docker-style certificate files becomes `ca`/`client` settings, which is
//!   what containerd made of it. A `hosts.toml` containerd could not parse
//!   is skipped as containerd skipped it, with a warning. Every other entry
//!   of the backup is copied back unchanged; when we mirror through
//!   `_default`, a registry with a directory of its own therefore bypasses
//!   the mirror, and a warning names it.
//! - **Cleanup** moves what is neither ours nor in the backup to
//!   `_displaced/`, removes our files, and renames the backup's entries back
//!   into place, which restores the original tree exactly; `_backup/` is
//!   then gone. It goes through `_backup.restoring/`, so a crash midway is
//!   finished by the next `cleanup` or `configuration`. Without a backup it
//!   removes only files carrying the marker and says so. Running it twice is
//!   harmless.
//!
//! File modes follow Spegel: a `hosts.toml` gets the mode of the original it
//! replaces (0600 when it holds credentials), else 0644. Every `hosts.toml`
//! is written to a temporary file and renamed, so containerd never reads
//! half of one.

mod hosts;
mod tree;
mod values;

pub use hosts::{ConfigError, Existing, HostsFile, MARKER, MirrorConfig, MirrorRequest};
pub use values::{DEFAULT_DIR, DialTimeout, MirrorTarget, MirroredRegistry, ValueError};

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tree::{
    Others, copy_tree, entries, exists, io_error, is_marked, move_into, rename, same_as, sweep,
    write_atomic,
};

/// Where the originals wait for `cleanup`; Spegel's name, kept for drop-in
/// compatibility.
pub const BACKUP_DIR: &str = "_backup";
/// The backup while it is being taken.
pub const PARTIAL_DIR: &str = "_backup.partial";
/// The backup while it is being restored.
pub const RESTORING_DIR: &str = "_backup.restoring";
/// What was found in the config path that is neither ours nor an original.
pub const DISPLACED_DIR: &str = "_displaced";

/// Never swept or backed up: they are reflektor's own state. containerd
/// never looks in them, because no registry host starts with `_`.
const RESERVED: &[&str] = &[BACKUP_DIR, PARTIAL_DIR, RESTORING_DIR, DISPLACED_DIR];

const HOSTS_TOML: &str = "hosts.toml";

#[derive(Debug, thiserror::Error)]
pub enum MirrorConfigError {
    #[error(
        "--containerd-registry-config-path {} is not a directory. Fix: point it at the \
         directory in containerd's registry config_path (usually /etc/containerd/certs.d)",
        path.display()
    )]
    NotADirectory { path: PathBuf },
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("cannot move {} to {}: {error}", from.display(), to.display())]
    Move {
        from: PathBuf,
        to: PathBuf,
        error: io::Error,
    },
    #[error(
        "both {} and {} exist, so it is unclear which holds the originals. Fix: compare them, \
         merge what is missing into {BACKUP_DIR}, delete {PARTIAL_DIR}, and run again",
        backup.display(),
        partial.display()
    )]
    TwoBackups { backup: PathBuf, partial: PathBuf },
    #[error(
        "cannot back up {}: {} already exists. Fix: move one of them out of the config path \
         and run again",
        path.display(),
        dest.display()
    )]
    BackupClash { path: PathBuf, dest: PathBuf },
    #[error(
        "{} is neither a file, a directory nor a symlink, so reflektor cannot copy it. Fix: \
         remove it from the backup",
        path.display()
    )]
    Special { path: PathBuf },
}

/// One thing a command did, one line each in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    CreatedConfigPath {
        path: PathBuf,
    },
    /// A state directory left by an interrupted run, finished first.
    Resumed {
        path: PathBuf,
    },
    BackedUp {
        backup: PathBuf,
        entries: usize,
    },
    BackupKept {
        backup: PathBuf,
        entries: usize,
    },
    /// Files we wrote earlier, removed before writing afresh.
    RemovedOwn {
        files: usize,
    },
    Displaced {
        from: PathBuf,
        to: PathBuf,
    },
    Wrote {
        path: PathBuf,
        server: Option<String>,
        targets: usize,
        kept_hosts: usize,
    },
    /// An original host that is one of our targets, not repeated.
    DroppedHost {
        path: PathBuf,
        host: String,
    },
    /// An original `hosts.toml` containerd could not have parsed either.
    Unparseable {
        path: PathBuf,
        reason: String,
    },
    /// An original entry copied back into effect (`--prepend-existing`).
    Kept {
        path: PathBuf,
    },
    /// A registry directory that keeps its registry off the `_default`
    /// mirror.
    BypassesDefault {
        path: PathBuf,
    },
    Restored {
        backup: PathBuf,
        entries: usize,
    },
    NoBackup {
        backup: PathBuf,
        removed: usize,
    },
    DisplacedRemain {
        path: PathBuf,
    },
    NothingToDo {
        path: PathBuf,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::CreatedConfigPath { path } => write!(f, "created {}", path.display()),
            Event::Resumed { path } => write!(
                f,
                "found {} from an interrupted run; finished it first",
                path.display()
            ),
            Event::BackedUp { backup, entries } => write!(
                f,
                "backed up {} into {}; 'reflektor cleanup' restores them",
                count(*entries, "original entry", "original entries"),
                backup.display()
            ),
            Event::BackupKept { backup, entries } => write!(
                f,
                "kept the earlier backup {} ({}) as it is",
                backup.display(),
                count(*entries, "entry", "entries")
            ),
            Event::RemovedOwn { files } => {
                write!(
                    f,
                    "removed {} reflektor wrote before",
                    count(*files, "file", "files")
                )
            }
            Event::Displaced { from, to } => write!(
                f,
                "warning: moved {} to {}: reflektor did not write it and it is not in the \
                 backup; review it, then delete it or restore it by hand",
                from.display(),
                to.display()
            ),
            Event::Wrote {
                path,
                server,
                targets,
                kept_hosts,
            } => {
                let ours = count(*targets, "reflektor host", "reflektor hosts");
                write!(f, "wrote {}: {ours}", path.display())?;
                if *kept_hosts > 0 {
                    let kept = count(*kept_hosts, "original host", "original hosts");
                    write!(f, ", then {kept}")?;
                }
                match server {
                    Some(server) => write!(f, ", then server {server}"),
                    None => write!(f, ", then the image's own registry"),
                }
            }
            Event::DroppedHost { path, host } => write!(
                f,
                "{}: the original host {host} is one of reflektor's targets; listed once",
                path.display()
            ),
            Event::Unparseable { path, reason } => write!(
                f,
                "warning: {} is not valid TOML ({reason}); containerd ignores it too, so its \
                 hosts are not kept",
                path.display()
            ),
            Event::Kept { path } => write!(f, "kept {} from the backup", path.display()),
            Event::BypassesDefault { path } => write!(
                f,
                "warning: {} has its own directory, so containerd does not use the _default \
                 mirror for it. Fix: add it to --mirrored-registries to mirror it",
                path.display()
            ),
            Event::Restored { backup, entries } => write!(
                f,
                "restored {} from {}",
                count(*entries, "original entry", "original entries"),
                backup.display()
            ),
            Event::NoBackup { backup, removed } => write!(
                f,
                "no backup at {}, so nothing to restore; removed {} reflektor wrote",
                backup.display(),
                count(*removed, "file", "files")
            ),
            Event::DisplacedRemain { path } => write!(
                f,
                "note: {} holds entries reflektor found but did not write; review and delete it",
                path.display()
            ),
            Event::NothingToDo { path } => {
                write!(f, "{} does not exist; nothing to clean up", path.display())
            }
        }
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What a command did, for the pod log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub events: Vec<Event>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for event in &self.events {
            writeln!(f, "{event}")?;
        }
        Ok(())
    }
}

/// The config path and reflektor's state directories in it.
struct Layout {
    root: PathBuf,
    backup: PathBuf,
    partial: PathBuf,
    restoring: PathBuf,
    displaced: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            backup: root.join(BACKUP_DIR),
            partial: root.join(PARTIAL_DIR),
            restoring: root.join(RESTORING_DIR),
            displaced: root.join(DISPLACED_DIR),
        }
    }

    /// Whether the config path is there; an error if it is not a directory.
    fn present(&self) -> Result<bool, MirrorConfigError> {
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => Ok(true),
            Ok(_) => Err(MirrorConfigError::NotADirectory {
                path: self.root.clone(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("inspect", &self.root)(e)),
        }
    }

    fn check_single_backup(&self) -> Result<(), MirrorConfigError> {
        if exists(&self.backup)? && exists(&self.partial)? {
            return Err(MirrorConfigError::TwoBackups {
                backup: self.backup.clone(),
                partial: self.partial.clone(),
            });
        }
        Ok(())
    }

    /// Takes the backup unless one exists.
    fn ensure_backup(&self, report: &mut Report) -> Result<(), MirrorConfigError> {
        if exists(&self.backup)? {
            report.events.push(Event::BackupKept {
                backup: self.backup.clone(),
                entries: entries(&self.backup)?.len(),
            });
            return Ok(());
        }
        if exists(&self.partial)? {
            report.events.push(Event::Resumed {
                path: self.partial.clone(),
            });
        } else {
            fs::create_dir(&self.partial).map_err(io_error("create", &self.partial))?;
        }
        // Files that carry our marker are not originals: a backup that
        // someone deleted by hand left them behind.
        let swept = sweep(
            &self.root,
            RESERVED,
            &|live, _, meta| is_marked(live, meta),
            &Others::MoveExact(&self.partial),
        )?;
        if !swept.removed.is_empty() {
            report.events.push(Event::RemovedOwn {
                files: swept.removed.len(),
            });
        }
        rename(&self.partial, &self.backup)?;
        report.events.push(Event::BackedUp {
            backup: self.backup.clone(),
            entries: entries(&self.backup)?.len(),
        });
        Ok(())
    }

    /// Removes what is ours and displaces what is neither ours nor an
    /// original, leaving only reflektor's state directories.
    fn sweep_live(&self, report: &mut Report) -> Result<(), MirrorConfigError> {
        let swept = sweep(
            &self.root,
            RESERVED,
            &|live, rel, meta| {
                Ok(is_marked(live, meta)? || same_as(live, meta, &self.backup.join(rel))?)
            },
            &Others::MoveAside(&self.displaced),
        )?;
        if !swept.removed.is_empty() {
            report.events.push(Event::RemovedOwn {
                files: swept.removed.len(),
            });
        }
        for (from, to) in swept.moved {
            report.events.push(Event::Displaced { from, to });
        }
        Ok(())
    }

    /// Moves every entry of `_backup.restoring` back into place, then
    /// removes it. Anything in the way is displaced, never overwritten.
    fn finish_restore(&self, report: &mut Report) -> Result<(), MirrorConfigError> {
        let originals = entries(&self.restoring)?;
        for original in &originals {
            let name = original.file_name().unwrap_or_default();
            let dest = self.root.join(name);
            if exists(&dest)? {
                let to = move_into(&dest, Path::new(name), &self.displaced, false)?;
                report.events.push(Event::Displaced {
                    from: dest.clone(),
                    to,
                });
            }
            rename(original, &dest)?;
        }
        fs::remove_dir(&self.restoring).map_err(io_error("remove", &self.restoring))?;
        report.events.push(Event::Restored {
            backup: self.backup.clone(),
            entries: originals.len(),
        });
        Ok(())
    }

    /// The directory containerd would have used for `registry` before we
    /// came, as a name under the backup: a real directory, not a link.
    fn effective_dir(
        &self,
        registry: &MirroredRegistry,
    ) -> Result<Option<String>, MirrorConfigError> {
        for candidate in registry.candidate_dirs() {
            let path = self.backup.join(&candidate);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => return Ok(Some(candidate)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("inspect", &path)(e)),
            }
        }
        Ok(None)
    }

    /// What an original registry directory had in effect, the way
    /// containerd reads it; `None` when there is nothing to keep.
    fn read_existing(
        &self,
        dir: &str,
        report: &mut Report,
    ) -> Result<Option<(Existing, String)>, MirrorConfigError> {
        let dir_path = self.backup.join(dir);
        let hosts_path = dir_path.join(HOSTS_TOML);
        let bytes = match fs::read(&hosts_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error("read", &hosts_path)(e)),
        };
        let source = format!("{BACKUP_DIR}/{dir}/{HOSTS_TOML}");
        if !bytes.is_empty() {
            let parsed = String::from_utf8(bytes)
                .map_err(|e| e.to_string())
                .and_then(|text| Existing::parse(&text));
            match parsed {
                Ok(existing) => return Ok(Some((existing, source))),
                Err(reason) => report.events.push(Event::Unparseable {
                    path: hosts_path,
                    reason,
                }),
            }
        }
        // containerd's fallback for a directory without a usable hosts.toml.
        let names: Vec<String> = entries(&dir_path)?
            .iter()
            .filter(|p| p.is_file())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let existing = Existing::from_cert_files(&names);
        if existing.root.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            existing,
            format!("the certificate files in {BACKUP_DIR}/{dir}/"),
        )))
    }
}

/// Points containerd at the mirror targets: backs up the config path once,
/// then writes one `hosts.toml` per mirrored registry, following the rules
/// in the module documentation.
pub fn configure(config_path: &Path, config: &MirrorConfig) -> Result<Report, MirrorConfigError> {
    let layout = Layout::new(config_path);
    let mut report = Report::default();
    if !layout.present()? {
        fs::create_dir_all(&layout.root).map_err(io_error("create", &layout.root))?;
        report.events.push(Event::CreatedConfigPath {
            path: layout.root.clone(),
        });
    }
    layout.check_single_backup()?;
    if exists(&layout.restoring)? {
        report.events.push(Event::Resumed {
            path: layout.restoring.clone(),
        });
        layout.finish_restore(&mut report)?;
    }
    layout.ensure_backup(&mut report)?;
    layout.sweep_live(&mut report)?;

    let mut claimed: Vec<String> = Vec::new();
    for registry in config.registries() {
        claimed.extend(registry.candidate_dirs());
        let effective = layout.effective_dir(registry)?;
        let mode = match &effective {
            Some(dir) => match fs::metadata(layout.backup.join(dir).join(HOSTS_TOML)) {
                Ok(meta) => meta.permissions().mode() & 0o7777,
                Err(_) => 0o644,
            },
            None => 0o644,
        };
        let (dir, existing) = match effective {
            Some(dir) if config.prepend_existing() => {
                copy_tree(
                    &layout.backup.join(&dir),
                    &layout.root.join(&dir),
                    &[HOSTS_TOML],
                )?;
                let existing = layout.read_existing(&dir, &mut report)?;
                (dir, existing)
            }
            _ => {
                let dir = registry.dir().to_owned();
                let path = layout.root.join(&dir);
                fs::create_dir(&path).map_err(io_error("create", &path))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(io_error("set the mode of", &path))?;
                (dir, None)
            }
        };
        let file = config.render(registry, existing.as_ref().map(|(e, s)| (e, s.as_str())));
        let path = layout.root.join(&dir).join(HOSTS_TOML);
        write_atomic(&path, &file.text, mode)?;
        for host in file.dropped_hosts {
            report.events.push(Event::DroppedHost {
                path: path.clone(),
                host,
            });
        }
        report.events.push(Event::Wrote {
            server: file.server,
            path,
            targets: file.targets,
            kept_hosts: file.kept_hosts,
        });
    }

    if config.prepend_existing() {
        let mirrors_all = config.registries().contains(&MirroredRegistry::Default);
        for original in entries(&layout.backup)? {
            let name = original.file_name().unwrap_or_default();
            if claimed.iter().any(|c| name == c.as_str()) {
                continue;
            }
            let path = layout.root.join(name);
            copy_tree(&original, &path, &[])?;
            report.events.push(Event::Kept { path: path.clone() });
            if mirrors_all && fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                report.events.push(Event::BypassesDefault { path });
            }
        }
    }
    Ok(report)
}

/// Undoes [`configure`]: restores the backup exactly and removes what
/// reflektor wrote, or, with no backup, removes only the marked files.
pub fn cleanup(config_path: &Path) -> Result<Report, MirrorConfigError> {
    let layout = Layout::new(config_path);
    let mut report = Report::default();
    if !layout.present()? {
        report.events.push(Event::NothingToDo {
            path: layout.root.clone(),
        });
        return Ok(report);
    }
    layout.check_single_backup()?;
    if exists(&layout.restoring)? {
        report.events.push(Event::Resumed {
            path: layout.restoring.clone(),
        });
        layout.finish_restore(&mut report)?;
    } else if exists(&layout.partial)? {
        // A first backup that never finished: nothing of ours was written
        // yet, and its entries are originals.
        report.events.push(Event::Resumed {
            path: layout.partial.clone(),
        });
        rename(&layout.partial, &layout.restoring)?;
        layout.finish_restore(&mut report)?;
    } else if exists(&layout.backup)? {
        layout.sweep_live(&mut report)?;
        rename(&layout.backup, &layout.restoring)?;
        layout.finish_restore(&mut report)?;
    } else {
        let swept = sweep(
            &layout.root,
            RESERVED,
            &|live, _, meta| is_marked(live, meta),
            &Others::Leave,
        )?;
        report.events.push(Event::NoBackup {
            backup: layout.backup.clone(),
            removed: swept.removed.len(),
        });
    }
    if exists(&layout.displaced)? {
        report.events.push(Event::DisplacedRemain {
            path: layout.displaced.clone(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
