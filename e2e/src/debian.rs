//! containerd builds taken from Debian's archive.
//!
//! The release gate has to run reflektor against the containerd that people actually
//! run, and distribution packages are the closest thing to that: they carry the
//! distribution's patches, Go toolchain and version strings. Packages are fetched with a
//! private apt configuration, so the host's apt state is never read for sources nor
//! written, and they are cached outside the repository, so only the first run pays for the
//! ~20 MB download per suite.

use std::{
    env, fmt,
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
};

use anyhow::{Context, Result, bail, ensure};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use reflektor::version::RuntimeVersion;

/// Overrides the archive, e.g. to use a local mirror or a caching proxy.
const MIRROR_ENV: &str = "REFLEKTOR_DEBIAN_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Shipped by `debian-archive-keyring`; on bookworm it already trusts trixie's and sid's keys.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Written last into a staged tree: a cached tree without it is not trusted.
const MARKER: &str = "package-version";

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
    /// [`major_minor`] strictly and treat a different full string as news, not failure.
    pub fn expected_version(self) -> &'static str {
        match self {
            Suite::Bullseye => "1.4.13~ds1",
            Suite::Bookworm => "1.6.20~ds1",
            Suite::Trixie => "1.7.24~ds1",
            Suite::Sid => "2.1.9+unknown",
        }
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

/// The `(major, minor)` release of a containerd version string such as `1.6.20~ds1`,
/// read with the agent's own parser so that the harness and the agent never disagree
/// on what a Debian version means.
pub fn major_minor(version: &str) -> Result<(u64, u64)> {
    let parsed = RuntimeVersion::parse(version)
        .with_context(|| format!("containerd version {version:?} is not a version"))?;
    // The parser guarantees at least two components.
    Ok((parsed.components()[0], parsed.components()[1]))
}

/// One suite's containerd package, unpacked into a directory tree.
#[derive(Debug, Clone)]
pub struct ContainerdBuild {
    pub suite: Suite,
    /// The Debian package version, e.g. `1.4.13~ds1-1~deb11u4`.
    pub package_version: String,
    /// The unpacked package: binaries live under `usr/bin`.
    pub root: PathBuf,
}

impl ContainerdBuild {
    pub fn containerd_bin(&self) -> PathBuf {
        self.root.join("usr/bin/containerd")
    }

    /// The version the binary itself reports, which is also what its Version RPC
    /// answers; it can differ from the package version (sid's lacks the `~ds1`).
    pub fn reported_version(&self) -> Result<String> {
        let bin = self.containerd_bin();
        let stdout = run(Command::new(&bin).arg("--version"))?;
        // `containerd github.com/containerd/containerd 1.6.20~ds1 <revision>`
        stdout
            .split_whitespace()
            .nth(2)
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

/// The suite's containerd, from `<cache>/containerd/<suite>` if an earlier run left a
/// complete tree there, else downloaded from Debian's archive.
///
/// Safe to call concurrently from threads and processes: callers for the same suite
/// queue on a lock file, and a tree only becomes visible, by rename, once complete.
pub fn fetch(suite: Suite, cache: &Path) -> Result<ContainerdBuild> {
    let builds = cache.join("containerd");
    fs::create_dir_all(&builds)
        .with_context(|| format!("creating the build cache {}", builds.display()))?;
    let _lock = lock(&builds.join(format!("{suite}.lock")))?;

    let dest = builds.join(suite.name());
    if let Some(build) = cached(suite, &dest)? {
        eprintln!(
            "cached: containerd {} from Debian {suite} in {}",
            build.package_version,
            dest.display()
        );
        return Ok(build);
    }

    eprintln!("fetching containerd from Debian {suite}…");
    remove_stale_staging(&builds, suite)?;
    let staging = tempfile::Builder::new()
        .prefix(&staging_prefix(suite))
        .tempdir_in(&builds)
        .with_context(|| format!("creating a staging directory in {}", builds.display()))?;
    let deb = Apt::prepare(&cache.join("apt").join(suite.name()), suite)?
        .download_containerd(staging.path())?;

    let tree = staging.path().join("tree");
    // dpkg-deb creates only the last component of its target.
    fs::create_dir(&tree).with_context(|| format!("creating {}", tree.display()))?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(tree.join("root")))?;
    let package_version = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?
        .trim()
        .to_owned();
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
        "fetched containerd {package_version} from Debian {suite} into {}",
        dest.display()
    );
    Ok(ContainerdBuild {
        suite,
        package_version,
        root: dest.join("root"),
    })
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

fn cached(suite: Suite, dest: &Path) -> Result<Option<ContainerdBuild>> {
    let marker = dest.join(MARKER);
    let package_version = match fs::read_to_string(&marker) {
        Ok(text) => text.trim().to_owned(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", marker.display())),
    };
    let build = ContainerdBuild {
        suite,
        package_version,
        root: dest.join("root"),
    };
    let complete = !build.package_version.is_empty() && build.containerd_bin().is_file();
    Ok(complete.then_some(build))
}

fn staging_prefix(suite: Suite) -> String {
    format!(".{suite}-staging-")
}

/// Staging directories of runs that were killed mid-fetch; under the suite's lock no
/// live run can own one, and each holds a ~20 MB download.
fn remove_stale_staging(builds: &Path, suite: Suite) -> Result<()> {
    let prefix = staging_prefix(suite);
    let entries = fs::read_dir(builds).with_context(|| format!("listing {}", builds.display()))?;
    for entry in entries {
        let path = entry?.path();
        let stale = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(&prefix));
        if stale {
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale staging {}", path.display()))?;
        }
    }
    Ok(())
}

/// apt-get pointed at private sources, lists, cache and an empty dpkg status, so that
/// it resolves packages from exactly one suite and leaves the host's apt state alone.
struct Apt {
    options: Vec<String>,
    mirror: String,
}

impl Apt {
    fn prepare(dir: &Path, suite: Suite) -> Result<Self> {
        ensure!(
            Path::new(KEYRING).is_file(),
            "{KEYRING} is missing; install the debian-archive-keyring package"
        );
        for sub in ["lists/partial", "cache/archives/partial"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let mirror = env::var(MIRROR_ENV)
            .ok()
            .filter(|mirror| !mirror.is_empty())
            .unwrap_or_else(|| DEFAULT_MIRROR.to_owned());
        let mirror = mirror.trim_end_matches('/').to_owned();
        let sources = dir.join("sources.list");
        let status = dir.join("status");
        fs::write(
            &sources,
            format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n"),
        )
        .with_context(|| format!("writing {}", sources.display()))?;
        fs::write(&status, "").with_context(|| format!("writing {}", status.display()))?;

        let path = |sub: &str| dir.join(sub).display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            // Host pins must not pick the candidate version either.
            "Dir::Etc::Preferences=/dev/null".to_owned(),
            "Dir::Etc::PreferencesParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", path("lists")),
            format!("Dir::State::status={}", status.display()),
            format!("Dir::Cache={}", path("cache")),
            // The `_apt` user may not be able to write into the cache directory.
            "APT::Sandbox::User=root".to_owned(),
            "Acquire::Languages=none".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect();
        Ok(Self { options, mirror })
    }

    /// Downloads the suite's `containerd_*.deb` into `dir` and returns its path.
    fn download_containerd(&self, dir: &Path) -> Result<PathBuf> {
        // Without `--error-on=any` an unreachable archive is only a warning, and the
        // failure would surface later as a baffling "Unable to locate package".
        self.run(&["update", "--error-on=any"], dir)?;
        self.run(&["download", "containerd"], dir)?;
        let mut debs = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|name| name.to_str());
            if name.is_some_and(|name| name.starts_with("containerd_") && name.ends_with(".deb")) {
                debs.push(path);
            }
        }
        match <[PathBuf; 1]>::try_from(debs) {
            Ok([deb]) => Ok(deb),
            Err(debs) => bail!(
                "`apt-get download containerd` left {} containerd_*.deb files in {}; expected exactly one",
                debs.len(),
                dir.display()
            ),
        }
    }

    fn run(&self, args: &[&str], cwd: &Path) -> Result<()> {
        let mut command = Command::new("apt-get");
        command
            .arg("-q")
            .args(&self.options)
            .args(args)
            .current_dir(cwd)
            .env("LC_ALL", "C");
        run(&mut command).with_context(|| {
            format!(
                "Debian's archive at {} must be reachable (set {MIRROR_ENV} to use another mirror)",
                self.mirror
            )
        })?;
        Ok(())
    }
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
    fn suites_round_trip_through_their_names() {
        for suite in Suite::ALL {
            assert_eq!(suite.name().parse::<Suite>().unwrap(), suite);
        }
        let err = "buster".parse::<Suite>().unwrap_err().to_string();
        assert!(err.contains("bullseye, bookworm, trixie, sid"), "{err}");
    }

    #[test]
    fn major_minor_ignores_debian_decorations() {
        assert_eq!(major_minor("1.4.13~ds1").unwrap(), (1, 4));
        assert_eq!(major_minor("2.1.9+unknown").unwrap(), (2, 1));
        assert!(major_minor("v2").is_err());
        assert!(major_minor("").is_err());
    }

    #[test]
    fn expected_versions_parse() {
        for suite in Suite::ALL {
            major_minor(suite.expected_version()).unwrap();
        }
    }
}
