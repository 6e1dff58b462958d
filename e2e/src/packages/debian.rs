//! containerd builds from Debian's archive, one per suite.
//!
//! Debian is where reflektor's reason to exist came from (a strict SemVer check choked
//! on `1.6.20~ds1`), and its four live suites span containerd 1.4 to 2.x, so they are
//! the backbone of the release gate. Debian's archive also serves the Ubuntu sources
//! their keyring, which bookworm does not package.

use std::{fmt, path::Path, str::FromStr};

use anyhow::{Context, Result, ensure};

use super::{
    ContainerdBuild, FetchError, PackageSource,
    apt::{self, Archive, DebLine},
    cache::Slot,
    mirror,
};

/// Overrides the archive, e.g. to use a local mirror or a caching proxy.
const MIRROR_ENV: &str = "REFLEKTOR_DEBIAN_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Shipped by `debian-archive-keyring`; on bookworm it already trusts trixie's and sid's keys.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A Debian suite whose containerd package the release gate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    Bullseye,
    Bookworm,
    Trixie,
    Sid,
}

impl Suite {
    pub const ALL: [Suite; 4] = [Suite::Bullseye, Suite::Bookworm, Suite::Trixie, Suite::Sid];

    /// The codename, as used in `sources.list` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bullseye => "bullseye",
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
            Suite::Sid => "sid",
        }
    }

    /// What `containerd --version` reported for this suite's package when the archive
    /// was last checked (November 2026).
    ///
    /// Point releases and sid uploads move this on, so callers should compare only
    /// [`major_minor`](super::major_minor) strictly and treat a different full string
    /// as news, not failure.
    pub fn expected_version(self) -> &'static str {
        match self {
            Suite::Bullseye => "1.4.13~ds1",
            Suite::Bookworm => "1.6.20~ds1",
            Suite::Trixie => "1.7.24~ds1",
            Suite::Sid => "2.1.9+unknown",
        }
    }

    /// The suite's `main`, signed by Debian's keyring.
    pub(super) fn archive(self) -> Result<Archive> {
        ensure!(
            Path::new(KEYRING).is_file(),
            "{KEYRING} is missing; install the debian-archive-keyring package"
        );
        Ok(Archive {
            lines: vec![DebLine {
                keyring: KEYRING.into(),
                uri: mirror(MIRROR_ENV, DEFAULT_MIRROR),
                suite: self.name().to_owned(),
                component: "main",
            }],
            hint: format!("set {MIRROR_ENV} to use another Debian mirror"),
        })
    }
}

impl PackageSource for Suite {
    fn id(&self) -> String {
        format!("debian:{self}")
    }

    fn label(&self) -> String {
        format!("Debian {self}")
    }

    fn fetch(&self, cache: &Path) -> Result<ContainerdBuild, FetchError> {
        let slot = Slot {
            group: "containerd",
            name: format!("debian-{self}"),
            what: format!("containerd from {}", self.label()),
            required: &["usr/bin/containerd", "usr/sbin/runc"],
        };
        let filled = apt::fetch_deb(cache, &slot, &["containerd", "runc"], || self.archive())
            .map_err(FetchError::classify)?;
        Ok(ContainerdBuild {
            source: self.id(),
            package_version: filled.package_version,
            root: filled.root,
        })
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Suite::ALL
            .into_iter()
            .find(|suite| suite.name() == s)
            .with_context(|| {
                let known: Vec<_> = Suite::ALL.iter().map(|suite| suite.name()).collect();
                format!(
                    "unknown Debian suite {s:?}; expected one of {}",
                    known.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::major_minor;

    #[test]
    fn suites_round_trip_through_their_names() {
        for suite in Suite::ALL {
            assert_eq!(suite.name().parse::<Suite>().unwrap(), suite);
        }
        let err = "buster".parse::<Suite>().unwrap_err().to_string();
        assert!(err.contains("bullseye, bookworm, trixie, sid"), "{err}");
    }

    #[test]
    fn expected_versions_parse() {
        for suite in Suite::ALL {
            major_minor(suite.expected_version()).unwrap();
        }
    }
}
