//! containerd builds from Ubuntu's archive, for the LTS releases nodes run.
//!
//! Ubuntu ships containerd through its `-updates` and `-security` pockets (noble's
//! release pocket is still on 1.7 while its updates carry 2.x), so the sources name all
//! three pockets, as a real node's do, and apt picks the version such a node would get.
//!
//! The archive's signing keys come from Debian's `ubuntu-keyring` package, fetched from
//! trixie into the cache, because the Debian hosts the gate runs on (bookworm) do not
//! package them and trusting the archive unsigned is not an option.

use std::{
    env::consts::ARCH,
    fmt,
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::{
    ContainerdBuild, FetchError, PackageSource,
    apt::{self, Archive, DebLine},
    cache::Slot,
    debian::Suite,
    mirror,
};

/// Overrides every pocket's archive, e.g. to use a local mirror or a caching proxy;
/// Ubuntu's mirrors all carry the `-security` pocket too.
const MIRROR_ENV: &str = "REFLEKTOR_UBUNTU_MIRROR";
/// Where the `ubuntu-keyring` package puts the keys of the archive's Release files.
const KEYRING: &str = "usr/share/keyrings/ubuntu-archive-keyring.gpg";
/// The oldest Debian suite that packages `ubuntu-keyring`.
const KEYRING_SUITE: Suite = Suite::Trixie;

/// An Ubuntu LTS release whose containerd package the release gate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ubuntu {
    Jammy,
    Noble,
}

impl Ubuntu {
    pub const ALL: [Ubuntu; 2] = [Ubuntu::Jammy, Ubuntu::Noble];

    /// The codename, as used in `sources.list`.
    pub fn codename(self) -> &'static str {
        match self {
            Ubuntu::Jammy => "jammy",
            Ubuntu::Noble => "noble",
        }
    }

    pub fn number(self) -> &'static str {
        match self {
            Ubuntu::Jammy => "22.04",
            Ubuntu::Noble => "24.04",
        }
    }

    /// The release, updates and security pockets' `main`, signed by `keyring`.
    fn archive(self, keyring: &Path) -> Archive {
        // archive.ubuntu.com and security.ubuntu.com carry only amd64 and i386.
        let (archive, security) = if ARCH == "x86_64" {
            (
                "http://archive.ubuntu.com/ubuntu",
                "http://security.ubuntu.com/ubuntu",
            )
        } else {
            (
                "http://ports.ubuntu.com/ubuntu-ports",
                "http://ports.ubuntu.com/ubuntu-ports",
            )
        };
        let codename = self.codename();
        let lines = [
            (archive, codename.to_owned()),
            (archive, format!("{codename}-updates")),
            (security, format!("{codename}-security")),
        ]
        .into_iter()
        .map(|(default, suite)| DebLine {
            keyring: keyring.to_owned(),
            uri: mirror(MIRROR_ENV, default),
            suite,
            component: "main",
        })
        .collect();
        Archive {
            lines,
            hint: format!("set {MIRROR_ENV} to use another Ubuntu mirror"),
        }
    }
}

impl fmt::Display for Ubuntu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.codename())
    }
}

impl PackageSource for Ubuntu {
    fn id(&self) -> String {
        format!("ubuntu:{self}")
    }

    fn label(&self) -> String {
        format!("Ubuntu {} {self}", self.number())
    }

    fn fetch(&self, cache: &Path) -> Result<ContainerdBuild, FetchError> {
        let slot = Slot {
            group: "containerd",
            name: format!("ubuntu-{self}"),
            what: format!("containerd from {}", self.label()),
            required: &["usr/bin/containerd", "usr/sbin/runc"],
        };
        let filled = apt::fetch_deb(cache, &slot, &["containerd", "runc"], || {
            Ok(self.archive(&keyring(cache)?))
        })
        .map_err(FetchError::classify)?;
        Ok(ContainerdBuild {
            source: self.id(),
            package_version: filled.package_version,
            root: filled.root,
        })
    }
}

/// The Ubuntu archive keyring, from Debian's `ubuntu-keyring` package in the cache.
fn keyring(cache: &Path) -> Result<PathBuf> {
    let slot = Slot {
        group: "keyrings",
        name: "ubuntu-keyring".to_owned(),
        what: format!("ubuntu-keyring from Debian {KEYRING_SUITE}"),
        required: &[KEYRING],
    };
    let filled = apt::fetch_deb(cache, &slot, &["ubuntu-keyring"], || {
        KEYRING_SUITE.archive()
    })?;
    Ok(filled.root.join(KEYRING))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_name_the_pockets_a_node_has() {
        let archive = Ubuntu::Noble.archive(Path::new("/k.gpg"));
        let suites: Vec<_> = archive
            .lines
            .iter()
            .map(|line| line.suite.as_str())
            .collect();
        assert_eq!(suites, ["noble", "noble-updates", "noble-security"]);
        assert!(
            archive
                .lines
                .iter()
                .all(|line| line.component == "main" && line.keyring == Path::new("/k.gpg"))
        );
        assert!(archive.hint.contains(MIRROR_ENV), "{}", archive.hint);
    }
}
