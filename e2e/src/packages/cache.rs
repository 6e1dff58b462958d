//! One cache discipline for every fetched tree (containerd builds, and the keyring the
//! Ubuntu sources need), because a half-written tree that a later run trusts would
//! surface as a baffling containerd failure far from its cause.
//!
//! Fetches of the same tree queue on a lock file, so parallel tests and processes
//! download once; a tree is assembled in a staging directory and renamed into place
//! only after a marker holding the package version is written last into it, so a run
//! killed at any point leaves either nothing or a complete tree.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, ensure};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// Holds the package version; a tree without it is incomplete and never used.
const MARKER: &str = "package-version";

/// A tree at `<cache>/<group>/<name>`, e.g. `containerd/ubuntu-noble`.
pub(super) struct Slot<'a> {
    pub group: &'a str,
    pub name: String,
    /// For progress messages, e.g. `containerd from Ubuntu 24.04 noble`.
    pub what: String,
    /// Files, relative to the unpacked root, whose presence says the tree is usable,
    /// e.g. `usr/bin/containerd` and `usr/sbin/runc`. A tree an older harness cached
    /// without one of them is fetched again.
    pub required: &'a [&'a str],
}

/// A complete tree in the cache.
pub(super) struct Filled {
    pub package_version: String,
    /// The unpacked package.
    pub root: PathBuf,
}

impl Slot<'_> {
    /// The tree from the cache, or else `fill(scratch, root)`'s: it must unpack the
    /// package into `root` (which does not exist yet; its parent does) and return the
    /// package version, and may keep downloads in `scratch`, which is removed afterwards.
    pub fn get_or_fill(
        &self,
        cache: &Path,
        fill: impl FnOnce(&Path, &Path) -> Result<String>,
    ) -> Result<Filled> {
        let parent = cache.join(self.group);
        fs::create_dir_all(&parent)
            .with_context(|| format!("creating the cache directory {}", parent.display()))?;
        let _lock = lock(&parent.join(format!("{}.lock", self.name)))?;

        let dest = parent.join(&self.name);
        if let Some(filled) = self.cached(&dest)? {
            eprintln!(
                "cached: {} {} in {}",
                self.what,
                filled.package_version,
                dest.display()
            );
            return Ok(filled);
        }

        eprintln!("fetching {}…", self.what);
        let prefix = format!(".{}-staging-", self.name);
        remove_stale_staging(&parent, &prefix)?;
        let staging = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&parent)
            .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
        let scratch = staging.path().join("scratch");
        let tree = staging.path().join("tree");
        for dir in [&scratch, &tree] {
            fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let package_version = fill(&scratch, &tree.join("root"))?;
        for required in self.required {
            ensure!(
                tree.join("root").join(required).is_file(),
                "the unpacked {} has no {required}; expected the packages to ship it",
                self.what,
            );
        }
        fs::write(tree.join(MARKER), &package_version)
            .with_context(|| format!("writing {MARKER} into {}", tree.display()))?;

        if dest.exists() {
            // Only an incomplete tree can be here: `cached` accepted nothing.
            fs::remove_dir_all(&dest)
                .with_context(|| format!("removing the incomplete tree {}", dest.display()))?;
        }
        fs::rename(&tree, &dest)
            .with_context(|| format!("moving {} to {}", tree.display(), dest.display()))?;
        eprintln!(
            "fetched {} {package_version} into {}",
            self.what,
            dest.display()
        );
        Ok(Filled {
            package_version,
            root: dest.join("root"),
        })
    }

    fn cached(&self, dest: &Path) -> Result<Option<Filled>> {
        let marker = dest.join(MARKER);
        let package_version = match fs::read_to_string(&marker) {
            Ok(text) => text.trim().to_owned(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", marker.display())),
        };
        let root = dest.join("root");
        let complete = !package_version.is_empty()
            && self.required.iter().all(|file| root.join(file).is_file());
        Ok(complete.then_some(Filled {
            package_version,
            root,
        }))
    }
}

fn lock(path: &Path) -> Result<Flock<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(lock),
        Err((file, Errno::EWOULDBLOCK)) => {
            // Say why nothing happens: the other fetch may take a while to download.
            eprintln!("waiting for another fetch holding {}…", path.display());
            file
        }
        Err((_, errno)) => {
            return Err(errno).with_context(|| format!("locking {}", path.display()));
        }
    };
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {}", path.display()))
}

/// Staging directories of runs that were killed mid-fetch; under the tree's lock no
/// live run can own one, and each may hold a large download.
fn remove_stale_staging(parent: &Path, prefix: &str) -> Result<()> {
    let entries = fs::read_dir(parent).with_context(|| format!("listing {}", parent.display()))?;
    for entry in entries {
        let path = entry?.path();
        let stale = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(prefix));
        if stale {
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale staging {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot<'static> {
        Slot {
            group: "things",
            name: "thing".to_owned(),
            what: "a thing".to_owned(),
            required: &["bin/thing"],
        }
    }

    fn fill_ok(_: &Path, root: &Path) -> Result<String> {
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/thing"), "").unwrap();
        Ok("1.0-1".to_owned())
    }

    #[test]
    fn a_filled_tree_is_reused() {
        let cache = tempfile::tempdir().unwrap();
        let first = slot().get_or_fill(cache.path(), fill_ok).unwrap();
        assert_eq!(first.package_version, "1.0-1");
        assert_eq!(first.root, cache.path().join("things/thing/root"));
        let second = slot()
            .get_or_fill(cache.path(), |_, _| panic!("the cached tree must be used"))
            .unwrap();
        assert_eq!(second.root, first.root);
        assert_eq!(second.package_version, "1.0-1");
    }

    #[test]
    fn a_failed_or_incomplete_fill_leaves_nothing_behind() {
        let cache = tempfile::tempdir().unwrap();
        let err = slot()
            .get_or_fill(cache.path(), |_, _| anyhow::bail!("offline"))
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "offline");
        let err = slot()
            .get_or_fill(cache.path(), |_, root| {
                fs::create_dir_all(root).unwrap();
                Ok("1.0-1".to_owned())
            })
            .err()
            .unwrap();
        assert!(err.to_string().contains("has no bin/thing"), "{err}");
        let left: Vec<_> = fs::read_dir(cache.path().join("things"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["thing.lock"]);
        // And the next attempt fills it.
        slot().get_or_fill(cache.path(), fill_ok).unwrap();
    }

    #[test]
    fn stale_staging_and_incomplete_trees_are_replaced() {
        let cache = tempfile::tempdir().unwrap();
        let parent = cache.path().join("things");
        fs::create_dir_all(parent.join(".thing-staging-old/tree")).unwrap();
        fs::create_dir_all(parent.join("thing/root")).unwrap();
        slot().get_or_fill(cache.path(), fill_ok).unwrap();
        assert!(!parent.join(".thing-staging-old").exists());
        assert!(parent.join("thing/package-version").is_file());
    }
}
