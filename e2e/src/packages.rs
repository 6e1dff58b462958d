//! Where the release gate's containerd builds come from: distribution packages,
//! behind one [`PackageSource`] interface.
//!
//! The gate runs reflektor against the containerd that people actually run, and
//! people run what their distribution ships: Debian's and Ubuntu's `containerd` (their
//! patches, Go toolchain and decorated version strings) and, on the RHEL family,
//! Docker's `containerd.io` rpm. Each source drives its tools (apt-get with a private
//! state, curl) so that the host's package manager is neither read for sources nor
//! written, and unpacks into a cache outside the repository, so that only the first run
//! pays for the download.
//!
//! Not every host can reach every archive. A source that cannot be reached says so as
//! [`FetchError::Unavailable`], with the reason, so that a report can show the build as
//! not run on this host instead of faking it or leaving it out; anything else that goes
//! wrong (bad data, a missing tool) is a [`FetchError::Failed`] to fix.

mod apt;
mod cache;
pub mod debian;
mod rpm;
mod ubuntu;

use std::{
    env, fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use reflektor::version::RuntimeVersion;

use self::debian::Suite;
pub use self::{rpm::DockerRpm, ubuntu::Ubuntu};

/// A place containerd builds come from, such as one Debian suite.
pub trait PackageSource: Send + Sync + fmt::Debug {
    /// Stable id used in cluster files and reports, e.g. `debian:bookworm`; what
    /// [`parse_source`] reads back.
    fn id(&self) -> String;

    /// For people, e.g. `Ubuntu 24.04 noble`.
    fn label(&self) -> String;

    /// The source's containerd from `cache` if an earlier run left a complete tree there,
    /// else downloaded and unpacked into it. Blocking.
    ///
    /// Safe to call concurrently from threads and processes: callers for the same
    /// source queue on a lock file, and a tree only becomes visible once complete.
    fn fetch(&self, cache: &Path) -> Result<ContainerdBuild, FetchError>;
}

/// Why a source gave no build.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source cannot be reached from this host (no DNS, no route, a timeout, the
    /// repository index missing): not a defect of the build, so a report shows it as
    /// not run here rather than as a failure.
    #[error("unavailable on this host: {reason}")]
    Unavailable { reason: String },
    /// Anything to fix: malformed data, a checksum mismatch, a missing tool.
    #[error(transparent)]
    Failed(anyhow::Error),
}

impl FetchError {
    /// Sorts an error from a fetch into the two kinds.
    ///
    /// Deliberately not `From<anyhow::Error>`: a second such impl in the crate makes
    /// `?` in closures whose error type is inferred ambiguous.
    fn classify(err: anyhow::Error) -> Self {
        match err.downcast::<Unreachable>() {
            Ok(unreachable) => FetchError::Unavailable {
                reason: unreachable.reason,
            },
            Err(err) => FetchError::Failed(err),
        }
    }
}

/// How a source says it cannot be reached from inside code that returns
/// [`anyhow::Result`], so that `?` and `.context` work throughout;
/// [`FetchError::classify`] turns it into [`FetchError::Unavailable`] at the trait's
/// boundary, whatever context was added on the way.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
struct Unreachable {
    reason: String,
}

/// Every source the release gate knows, in the order a report lists them.
pub fn all_sources() -> Vec<Box<dyn PackageSource>> {
    let debian = Suite::ALL
        .into_iter()
        .map(|suite| Box::new(suite) as Box<dyn PackageSource>);
    let ubuntu = Ubuntu::ALL
        .into_iter()
        .map(|release| Box::new(release) as Box<dyn PackageSource>);
    let rpm = DockerRpm::ALL
        .into_iter()
        .map(|repo| Box::new(repo) as Box<dyn PackageSource>);
    debian.chain(ubuntu).chain(rpm).collect()
}

/// The source with id `spec`, e.g. `debian:bookworm`, `ubuntu:noble` or
/// `docker-rpm:rhel9`.
pub fn parse_source(spec: &str) -> Result<Box<dyn PackageSource>> {
    let mut sources = all_sources();
    match sources.iter().position(|source| source.id() == spec) {
        Some(found) => Ok(sources.swap_remove(found)),
        None => {
            let known: Vec<_> = sources.iter().map(|source| source.id()).collect();
            bail!(
                "unknown containerd package source {spec:?}; expected one of {}",
                known.join(", ")
            )
        }
    }
}

/// The `(major, minor)` release of a containerd version string such as `1.6.20~ds1`,
/// read with the agent's own parser so that the harness and the agent never disagree
/// on what a distribution's version means.
pub fn major_minor(version: &str) -> Result<(u64, u64)> {
    let parsed = RuntimeVersion::parse(version)
        .with_context(|| format!("containerd version {version:?} is not a version"))?;
    // The parser guarantees at least two components.
    Ok((parsed.components()[0], parsed.components()[1]))
}

/// One source's containerd package, unpacked into a directory tree.
#[derive(Debug, Clone)]
pub struct ContainerdBuild {
    /// The [`PackageSource::id`] it came from.
    pub source: String,
    /// The distribution's package version, e.g. `1.4.13~ds1-1~deb11u4` or
    /// `1.7.27-3.1.el9`.
    pub package_version: String,
    /// The unpacked package: binaries live under `usr/bin`.
    pub root: PathBuf,
}

impl ContainerdBuild {
    pub fn containerd_bin(&self) -> PathBuf {
        self.root.join("usr/bin/containerd")
    }

    /// The runc this containerd was packaged with (its package depends on it,
    /// or, in Docker's rpm, bundles it): what runs a node's containers.
    pub fn runc_bin(&self) -> PathBuf {
        let sbin = self.root.join("usr/sbin/runc");
        if sbin.is_file() {
            sbin
        } else {
            self.root.join("usr/bin/runc")
        }
    }

    /// What the build's runc reports, if it runs on this host: a newer suite's is linked
    /// against a newer glibc (trixie, sid and noble need 2.38) than an older
    /// host has. The error says why not.
    pub fn runc_version(&self) -> Result<String> {
        let runc = self.runc_bin();
        let stdout = run(Command::new(&runc).arg("--version"))?;
        Ok(stdout.lines().next().unwrap_or_default().to_owned())
    }

    /// The version the binary itself reports, which is also what its Version RPC
    /// answers; it can differ from the package version (sid's lacks the `~ds1`).
    pub fn reported_version(&self) -> Result<String> {
        let bin = self.containerd_bin();
        let stdout = run(Command::new(&bin).arg("--version"))?;
        reported_version_in(&stdout)
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "`{} --version` printed {stdout:?}; expected `containerd <module> <version> ...`",
                    bin.display()
                )
            })
    }

    /// The reported major version: it decides the config schema (1.x reads v2, 2.x v3).
    pub fn major(&self) -> Result<u64> {
        Ok(major_minor(&self.reported_version()?)?.0)
    }
}

/// The version in `containerd --version` output, whose second field names the build:
/// `containerd github.com/containerd/containerd 1.6.20~ds1 <revision>`,
/// `containerd containerd.io 1.7.27 <revision>`, or Ubuntu's
/// `containerd github.com/containerd/containerd/v2 2.2.1 ` with no revision.
fn reported_version_in(stdout: &str) -> Option<&str> {
    stdout.split_whitespace().nth(2)
}

/// Where fetched builds are kept between runs: `$REFLEKTOR_E2E_CACHE`, else
/// `$XDG_CACHE_HOME/reflektor-e2e`, else `$HOME/.cache/reflektor-e2e`.
///
/// Outside the repository so that `git clean` and fresh checkouts do not re-download.
pub fn default_cache_dir() -> Result<PathBuf> {
    let var = |name| env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = var("REFLEKTOR_E2E_CACHE") {
        return Ok(dir.into());
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("reflektor-e2e"));
    }
    let home = var("HOME").context(
        "cannot choose a cache directory: set REFLEKTOR_E2E_CACHE, XDG_CACHE_HOME or HOME",
    )?;
    Ok(PathBuf::from(home).join(".cache/reflektor-e2e"))
}

/// The value of the environment variable `name` that overrides an archive's URL (to use
/// a local mirror or a caching proxy), else `default`; without a trailing slash.
fn mirror(name: &str, default: &str) -> String {
    env::var(name)
        .ok()
        .filter(|mirror| !mirror.is_empty())
        .unwrap_or_else(|| default.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// Fails, naming the package to install, unless `program` is on `PATH`: a missing
/// tool is for this host's owner to fix, not a source being unavailable.
fn require_tool(program: &str, package: &str) -> Result<()> {
    let found = env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if !found {
        bail!(
            "{program} is not on PATH; install the {package} package (apt-get install {package})"
        );
    }
    Ok(())
}

/// Runs `command` to completion and returns its stdout; on failure the error names the
/// command line and carries the tail of its output.
fn run(command: &mut Command) -> Result<String> {
    let line = format!("{command:?}");
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .with_context(|| format!("could not start {line}; is {program} installed?"))?;
    if !output.status.success() {
        bail!(
            "{line} failed with {}:\n{}",
            output.status,
            tail(&output.stderr, &output.stdout)
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{line} printed non-UTF-8 output"))
}

/// The last lines of stderr, or of stdout when stderr is empty (apt reports some
/// failures, like `Err:` lines, on stdout only).
fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    const LINES: usize = 20;
    let text = if stderr.iter().all(u8::is_ascii_whitespace) {
        stdout
    } else {
        stderr
    };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_parses_back_from_its_id() {
        let ids: Vec<_> = all_sources().iter().map(|source| source.id()).collect();
        assert_eq!(
            ids,
            [
                "debian:bullseye",
                "debian:bookworm",
                "debian:trixie",
                "debian:sid",
                "ubuntu:jammy",
                "ubuntu:noble",
                "docker-rpm:rhel9",
            ]
        );
        for id in ids {
            assert_eq!(parse_source(&id).unwrap().id(), id);
        }
    }

    #[test]
    fn unknown_sources_list_the_known_ones() {
        for spec in ["gentoo:1", "debian:buster", "ubuntu:24.04", "bookworm", ""] {
            let err = parse_source(spec).unwrap_err().to_string();
            assert!(err.contains(&format!("{spec:?}")), "{err}");
            assert!(
                err.contains(
                    "debian:bullseye, debian:bookworm, debian:trixie, debian:sid, \
                     ubuntu:jammy, ubuntu:noble, docker-rpm:rhel9"
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn labels_are_for_people() {
        let labels: Vec<_> = all_sources().iter().map(|source| source.label()).collect();
        assert_eq!(
            labels,
            [
                "Debian bullseye",
                "Debian bookworm",
                "Debian trixie",
                "Debian sid",
                "Ubuntu 22.04 jammy",
                "Ubuntu 24.04 noble",
                "Docker containerd.io for RHEL 9",
            ]
        );
    }

    #[test]
    fn unreachable_sources_are_unavailable_through_any_context() {
        let reason = "archive.ubuntu.com: Could not resolve".to_owned();
        let err = anyhow::Error::new(Unreachable {
            reason: reason.clone(),
        })
        .context("fetching the keyring")
        .context("fetching containerd");
        let err = FetchError::classify(err);
        assert!(matches!(&err, FetchError::Unavailable { reason: r } if *r == reason));
        assert_eq!(
            err.to_string(),
            "unavailable on this host: archive.ubuntu.com: Could not resolve"
        );

        let err = FetchError::classify(anyhow::anyhow!("bad checksum").context("checking"));
        assert!(matches!(err, FetchError::Failed(_)), "{err}");
        assert_eq!(format!("{err:#}"), "checking: bad checksum");
    }

    #[test]
    fn reported_versions_of_every_packaging() {
        for (stdout, version) in [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1\n",
                "1.6.20~ds1",
            ),
            (
                "containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da\n",
                "1.7.27",
            ),
            (
                "containerd github.com/containerd/containerd/v2 2.2.1 \n",
                "2.2.1",
            ),
        ] {
            assert_eq!(reported_version_in(stdout), Some(version), "{stdout:?}");
            RuntimeVersion::parse(version).unwrap();
        }
        assert_eq!(reported_version_in("containerd\n"), None);
    }

    #[test]
    fn major_minor_ignores_distribution_decorations() {
        assert_eq!(major_minor("1.4.13~ds1").unwrap(), (1, 4));
        assert_eq!(major_minor("2.1.9+unknown").unwrap(), (2, 1));
        assert!(major_minor("v2").is_err());
        assert!(major_minor("").is_err());
    }
}
