//! Debian packages fetched with apt-get pointed at private sources, lists, cache and an
//! empty dpkg status, so that it resolves packages from exactly the archive a source
//! names and leaves the host's apt state alone. Shared by the Debian and Ubuntu sources,
//! which differ only in their `deb` lines.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{
    Unreachable,
    cache::{Filled, Slot},
    require_tool, run, tail,
};

/// One `deb [signed-by=<keyring>] <uri> <suite> <component>` line.
pub(super) struct DebLine {
    pub keyring: PathBuf,
    pub uri: String,
    pub suite: String,
    pub component: &'static str,
}

/// What a source tells apt.
pub(super) struct Archive {
    pub lines: Vec<DebLine>,
    /// How to point apt elsewhere when the archive is unreachable, e.g. `set
    /// REFLEKTOR_UBUNTU_MIRROR to use another mirror`.
    pub hint: String,
}

/// `packages` from `archive`, unpacked together into `slot` unless the cache has them;
/// the tree's version is the first package's. `archive` is only asked for when a
/// download is needed, since preparing it may fetch a keyring.
pub(super) fn fetch_deb(
    cache: &Path,
    slot: &Slot,
    packages: &[&str],
    archive: impl FnOnce() -> Result<Archive>,
) -> Result<Filled> {
    slot.get_or_fill(cache, |scratch, root| {
        require_tool("apt-get", "apt")?;
        require_tool("dpkg-deb", "dpkg")?;
        let apt = Apt::prepare(&cache.join("apt").join(&slot.name), archive()?)?;
        let mut version = None;
        for package in packages {
            let deb = apt.download(package, scratch)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
            if version.is_none() {
                let found = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
                version = Some(found.trim().to_owned());
            }
        }
        version.context("no package to fetch")
    })
}

struct Apt {
    options: Vec<String>,
    hint: String,
}

impl Apt {
    fn prepare(dir: &Path, archive: Archive) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let mut sources = String::new();
        for line in &archive.lines {
            // A keyring that is missing would otherwise surface as a NO_PUBKEY warning.
            if !line.keyring.is_file() {
                bail!(
                    "{} is missing; it must hold the signing keys of {}",
                    line.keyring.display(),
                    line.uri
                );
            }
            sources += &format!(
                "deb [signed-by={}] {} {} {}\n",
                line.keyring.display(),
                line.uri,
                line.suite,
                line.component
            );
        }
        let list = dir.join("sources.list");
        let status = dir.join("status");
        fs::write(&list, sources).with_context(|| format!("writing {}", list.display()))?;
        fs::write(&status, "").with_context(|| format!("writing {}", status.display()))?;

        let path = |sub: &str| dir.join(sub).display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", list.display()),
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
            // An archive that stalls is unavailable, not worth apt's default patience.
            "Acquire::http::Timeout=30".to_owned(),
            "Acquire::https::Timeout=30".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect();
        Ok(Self {
            options,
            hint: archive.hint,
        })
    }

    /// Downloads `<package>_*.deb` into `dir` and returns its path.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        // Without `--error-on=any` an unreachable archive is only a warning, and the
        // failure would surface later as a baffling "Unable to locate package".
        self.run(&["update", "--error-on=any"], dir)?;
        self.run(&["download", package], dir)?;
        let prefix = format!("{package}_");
        let mut debs = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry.context("listing the download directory")?.path();
            let name = path.file_name().and_then(|name| name.to_str());
            if name.is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb")) {
                debs.push(path);
            }
        }
        match <[PathBuf; 1]>::try_from(debs) {
            Ok([deb]) => Ok(deb),
            Err(debs) => bail!(
                "`apt-get download {package}` left {} {prefix}*.deb files in {}; expected exactly one",
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
        let line = format!("apt-get {}", args.join(" "));
        let output = command
            .output()
            .with_context(|| format!("could not start {line}"))?;
        if output.status.success() {
            return Ok(());
        }
        let tail = tail(&output.stderr, &output.stdout);
        let all = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if unreachable(&all) {
            bail!(Unreachable {
                reason: format!(
                    "{line} could not reach the archive ({}):\n{tail}",
                    self.hint
                ),
            });
        }
        bail!("{line} failed with {}:\n{tail}", output.status)
    }
}

/// Whether apt's output says an archive could not be reached or does not have what its
/// sources line names (the only failures that depend on the host's network), and
/// nothing worse: a bad signature is an error to see, even on a flaky network.
fn unreachable(output: &str) -> bool {
    const NETWORK: [&str; 9] = [
        "Could not resolve",
        "Temporary failure resolving",
        "Could not connect to",
        "Unable to connect to",
        "Connection timed out",
        "Connection failed",
        "No route to host",
        "Network is unreachable",
        "404  Not Found",
    ];
    const INTEGRITY: [&str; 4] = [
        "GPG error",
        "NO_PUBKEY",
        "is not signed",
        "Hash Sum mismatch",
    ];
    NETWORK.iter().any(|sign| output.contains(sign))
        && !INTEGRITY.iter().any(|sign| output.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from `apt-get update --error-on=any` on bookworm (apt 2.6) with three
    /// sources: a name that does not resolve, a suite the archive lacks, a closed port.
    const UNREACHABLE: &str = "\
Ign:1 http://127.0.0.1:9/ubuntu noble InRelease
Ign:2 http://nonexistent.invalid/ubuntu noble InRelease
Ign:3 http://archive.ubuntu.com/ubuntu nosuchsuite InRelease
Err:4 http://archive.ubuntu.com/ubuntu nosuchsuite Release
  404  Not Found [IP: 203.0.113.80 80]
Err:1 http://127.0.0.1:9/ubuntu noble InRelease
  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)
Err:2 http://nonexistent.invalid/ubuntu noble InRelease
  Could not resolve 'nonexistent.invalid'
Reading package lists...
E: The repository 'http://archive.ubuntu.com/ubuntu nosuchsuite Release' does not have a Release file.
";

    #[test]
    fn unreachable_archives_are_unavailable() {
        assert!(unreachable(UNREACHABLE));
        for line in UNREACHABLE.lines().filter(|line| line.starts_with("  ")) {
            assert!(unreachable(line), "{line}");
        }
    }

    #[test]
    fn bad_data_is_a_failure_even_on_a_bad_network() {
        let unsigned = "W: GPG error: http://archive.ubuntu.com/ubuntu noble InRelease: The \
                        following signatures couldn't be verified because the public key is \
                        not available: NO_PUBKEY 871920D1991BC93C\n\
                        E: The repository 'http://archive.ubuntu.com/ubuntu noble InRelease' \
                        is not signed.\n";
        assert!(!unreachable(unsigned));
        assert!(!unreachable(&format!("{UNREACHABLE}{unsigned}")));
        assert!(!unreachable("E: Unable to locate package containerd\n"));
    }
}
