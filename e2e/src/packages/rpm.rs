//! containerd builds from Docker's rpm repositories, which is where RHEL-family nodes
//! (RHEL, Rocky, Alma) get containerd: neither RHEL nor its rebuilds package it.
//!
//! No rpm tooling is assumed on the (Debian) host beyond `rpm2cpio` and `cpio`: the
//! repository's metadata is read here, the newest `containerd.io` for this machine's
//! architecture is picked from it, and the package is checked against the sha256 that
//! the metadata gives for it. Trust rests on HTTPS to Docker and that chain of
//! checksums (repomd.xml → primary.xml.gz → rpm); the rpm's own GPG signature is not
//! checked, since that needs rpm's database and Docker's key on the host.

use std::{
    cmp::Ordering,
    env::consts::ARCH,
    fmt,
    fs::{self, File},
    io::{self, Read},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};
use flate2::read::GzDecoder;
use reflektor::version::RuntimeVersion;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    ContainerdBuild, FetchError, PackageSource, Unreachable, cache::Slot, mirror, require_tool,
    tail,
};

/// Overrides `https://download.docker.com`, e.g. to use a local mirror of it.
const MIRROR_ENV: &str = "REFLEKTOR_DOCKER_RPM_MIRROR";
const DEFAULT_MIRROR: &str = "https://download.docker.com";
const PACKAGE: &str = "containerd.io";
/// repomd.xml is small, so waiting longer only delays the verdict on a host that
/// cannot reach the repository.
const INDEX_SECONDS: u32 = 30;
/// The rpm is ~35 MB: 300 s allow a 1 MB/s link.
const DOWNLOAD_SECONDS: u32 = 300;

/// A Docker rpm repository whose `containerd.io` the release gate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DockerRpm {
    Rhel9,
}

impl DockerRpm {
    pub const ALL: [DockerRpm; 1] = [DockerRpm::Rhel9];

    fn rhel(self) -> u32 {
        match self {
            DockerRpm::Rhel9 => 9,
        }
    }

    /// The repository's base URL, which `repodata/` and `Packages/` are under.
    fn repo(self) -> String {
        format!(
            "{}/linux/rhel/{}/{ARCH}/stable",
            mirror(MIRROR_ENV, DEFAULT_MIRROR),
            self.rhel()
        )
    }

    /// Downloads, verifies and unpacks the newest `containerd.io` into `root`, and
    /// returns its version-release.
    fn fill(self, scratch: &Path, root: &Path) -> Result<String> {
        // Checked before the network: a host without them fails even where the
        // repository happens to be unreachable, so the fix is never hidden.
        for (tool, package) in [("curl", "curl"), ("rpm2cpio", "rpm2cpio"), ("cpio", "cpio")] {
            require_tool(tool, package)?;
        }
        let repo = self.repo();
        let repomd = scratch.join("repomd.xml");
        curl(
            &format!("{repo}/repodata/repomd.xml"),
            &repomd,
            INDEX_SECONDS,
            Fetched::Index,
        )?;
        let primary = primary_location(&read(&repomd)?)
            .with_context(|| format!("reading {repo}/repodata/repomd.xml"))?;
        let compressed = scratch.join("primary.xml.gz");
        let url = format!("{repo}/{}", primary.location.href);
        curl(&url, &compressed, DOWNLOAD_SECONDS, Fetched::Listed)?;
        verify(&compressed, &primary.checksum).with_context(|| format!("checking {url}"))?;
        let mut xml = String::new();
        GzDecoder::new(File::open(&compressed).context("opening primary.xml.gz")?)
            .read_to_string(&mut xml)
            .with_context(|| format!("gunzipping {url}"))?;

        let packages = parse_primary(&xml).with_context(|| format!("reading {url}"))?;
        let newest = newest(&packages, PACKAGE, ARCH).with_context(|| format!("reading {url}"))?;
        let rpm = scratch.join("package.rpm");
        let url = format!("{repo}/{}", newest.location.href);
        curl(&url, &rpm, DOWNLOAD_SECONDS, Fetched::Listed)?;
        verify(&rpm, &newest.checksum).with_context(|| format!("checking {url}"))?;
        unpack(&rpm, root, scratch).with_context(|| format!("unpacking {url}"))?;
        Ok(newest.version.to_string())
    }
}

impl fmt::Display for DockerRpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rhel{}", self.rhel())
    }
}

impl PackageSource for DockerRpm {
    fn id(&self) -> String {
        format!("docker-rpm:{self}")
    }

    fn label(&self) -> String {
        format!("Docker {PACKAGE} for RHEL {}", self.rhel())
    }

    fn fetch(&self, cache: &Path) -> Result<ContainerdBuild, FetchError> {
        let slot = Slot {
            group: "containerd",
            name: format!("docker-rpm-{self}"),
            what: format!("{PACKAGE} from {}", self.repo()),
            required: &["usr/bin/containerd", "usr/bin/runc"],
        };
        let filled = slot
            .get_or_fill(cache, |scratch, root| self.fill(scratch, root))
            .map_err(FetchError::classify)?;
        Ok(ContainerdBuild {
            source: self.id(),
            package_version: filled.package_version,
            root: filled.root,
        })
    }
}

/// `repodata/repomd.xml`: where the repository's metadata files are.
#[derive(Debug, Deserialize)]
struct Repomd {
    #[serde(rename = "data", default)]
    data: Vec<RepomdData>,
}

#[derive(Debug, Deserialize)]
struct RepomdData {
    #[serde(rename = "@type")]
    kind: String,
    checksum: Checksum,
    location: Location,
}

/// `primary.xml`: one entry per package build in the repository.
#[derive(Debug, Deserialize)]
struct Primary {
    #[serde(rename = "package", default)]
    packages: Vec<Package>,
}

#[derive(Debug, Deserialize)]
struct Package {
    name: String,
    arch: String,
    version: Evr,
    checksum: Checksum,
    location: Location,
}

/// An rpm's epoch, version and release.
#[derive(Debug, Deserialize)]
struct Evr {
    #[serde(rename = "@epoch", default)]
    epoch: Option<String>,
    #[serde(rename = "@ver")]
    ver: String,
    #[serde(rename = "@rel")]
    rel: String,
}

#[derive(Debug, Deserialize)]
struct Checksum {
    #[serde(rename = "@type")]
    kind: String,
    #[serde(rename = "$text")]
    hex: String,
}

#[derive(Debug, Deserialize)]
struct Location {
    #[serde(rename = "@href")]
    href: String,
}

impl fmt::Display for Evr {
    /// As rpm prints it, with the epoch only when it is not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.epoch.as_deref() {
            None | Some("" | "0") => write!(f, "{}-{}", self.ver, self.rel),
            Some(epoch) => write!(f, "{epoch}:{}-{}", self.ver, self.rel),
        }
    }
}

/// Where `primary.xml.gz` is and its sha256, from repomd.xml.
fn primary_location(xml: &str) -> Result<RepomdData> {
    let repomd: Repomd =
        quick_xml::de::from_str(xml).context("repomd.xml is not a repomd document")?;
    let primary = repomd
        .data
        .into_iter()
        .find(|data| data.kind == "primary")
        .context("repomd.xml has no <data type=\"primary\">; expected a yum repository")?;
    ensure!(
        primary.location.href.ends_with(".xml.gz"),
        "repomd.xml puts the primary metadata at {:?}; expected a gzipped .xml.gz, the only \
         compression this harness reads",
        primary.location.href
    );
    relative_href(&primary.location.href)?;
    Ok(primary)
}

fn parse_primary(xml: &str) -> Result<Vec<Package>> {
    let primary: Primary =
        quick_xml::de::from_str(xml).context("primary.xml is not a yum metadata document")?;
    Ok(primary.packages)
}

/// The newest build of `name` for `arch`: by epoch, then by the version as the agent
/// reads containerd versions, then by rpm's ordering of the version and the release.
fn newest<'a>(packages: &'a [Package], name: &str, arch: &str) -> Result<&'a Package> {
    let mut candidates = Vec::new();
    for package in packages {
        if package.name != name || package.arch != arch {
            continue;
        }
        let epoch = match package.version.epoch.as_deref() {
            None | Some("") => 0,
            Some(epoch) => epoch.parse::<u64>().with_context(|| {
                format!(
                    "{name} {} has epoch {epoch:?}; expected a number",
                    package.version
                )
            })?,
        };
        let version = RuntimeVersion::parse(&package.version.ver).with_context(|| {
            format!(
                "{name} {} has a version containerd could not report",
                package.version
            )
        })?;
        candidates.push((epoch, version, package));
    }
    let (_, _, newest) = candidates
        .into_iter()
        .max_by(|(a_epoch, a_version, a), (b_epoch, b_version, b)| {
            a_epoch
                .cmp(b_epoch)
                .then_with(|| a_version.cmp_numeric(b_version))
                .then_with(|| rpmvercmp(&a.version.ver, &b.version.ver))
                .then_with(|| rpmvercmp(&a.version.rel, &b.version.rel))
        })
        .with_context(|| {
            format!("the repository lists no {name} for {arch}; expected Docker's layout, which has one per release")
        })?;
    relative_href(&newest.location.href)?;
    Ok(newest)
}

/// rpm's ordering of versions and releases (`rpmvercmp`): runs of digits compare as
/// numbers and runs of letters as text, a digit run is newer than a letter run, other
/// characters only separate runs, the string with runs left over is newer, and `~`
/// is older than anything, even the end. (`^`, unused by Docker, is a separator here.)
fn rpmvercmp(a: &str, b: &str) -> Ordering {
    let separator = |c: char| !c.is_ascii_alphanumeric() && c != '~';
    let (mut a, mut b) = (a, b);
    loop {
        a = a.trim_start_matches(separator);
        b = b.trim_start_matches(separator);
        match (a.strip_prefix('~'), b.strip_prefix('~')) {
            (Some(a_rest), Some(b_rest)) => {
                (a, b) = (a_rest, b_rest);
                continue;
            }
            (Some(_), None) => return Ordering::Less,
            (None, Some(_)) => return Ordering::Greater,
            (None, None) => {}
        }
        if a.is_empty() || b.is_empty() {
            return (!a.is_empty()).cmp(&!b.is_empty());
        }
        let numeric = a.starts_with(|c: char| c.is_ascii_digit());
        let run = |s: &str| {
            s.find(|c: char| {
                if numeric {
                    !c.is_ascii_digit()
                } else {
                    !c.is_ascii_alphabetic()
                }
            })
            .unwrap_or(s.len())
        };
        let (a_run, a_rest) = a.split_at(run(a));
        let (b_run, b_rest) = b.split_at(run(b));
        if b_run.is_empty() {
            // Runs of different kinds: the numeric one is newer.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let ordering = if numeric {
            let (a_run, b_run) = (a_run.trim_start_matches('0'), b_run.trim_start_matches('0'));
            a_run.len().cmp(&b_run.len()).then(a_run.cmp(b_run))
        } else {
            a_run.cmp(b_run)
        };
        if ordering.is_ne() {
            return ordering;
        }
        (a, b) = (a_rest, b_rest);
    }
}

/// Metadata hrefs are joined to the repository URL; one that leaves it would fetch
/// from wherever the metadata says.
fn relative_href(href: &str) -> Result<()> {
    ensure!(
        !href.is_empty()
            && !href.starts_with('/')
            && !href.contains("://")
            && !href.split('/').any(|part| part == ".."),
        "the metadata points at {href:?}; expected a path inside the repository"
    );
    Ok(())
}

fn verify(file: &Path, checksum: &Checksum) -> Result<()> {
    ensure!(
        checksum.kind == "sha256",
        "the metadata gives a {} checksum; expected sha256",
        checksum.kind
    );
    let mut hasher = Sha256::new();
    io::copy(
        &mut File::open(file).with_context(|| format!("opening {}", file.display()))?,
        &mut hasher,
    )
    .with_context(|| format!("reading {}", file.display()))?;
    let actual = hex::encode(hasher.finalize());
    let expected = checksum.hex.trim().to_ascii_lowercase();
    ensure!(
        actual == expected,
        "the download has sha256 {actual}; the metadata says {expected}. Fetch again; if it \
         persists, the mirror serves a corrupt or tampered file"
    );
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `rpm2cpio <rpm> | cpio -idm` into `root`, which must end up holding containerd.
fn unpack(rpm: &Path, root: &Path, scratch: &Path) -> Result<()> {
    fs::create_dir(root).with_context(|| format!("creating {}", root.display()))?;
    let errors = scratch.join("rpm2cpio.stderr");
    let mut rpm2cpio = Command::new("rpm2cpio")
        .arg(rpm)
        .stdout(Stdio::piped())
        .stderr(File::create(&errors).context("creating the rpm2cpio log")?)
        .spawn()
        .context("starting rpm2cpio")?;
    let archive = rpm2cpio.stdout.take().context("rpm2cpio's stdout")?;
    let cpio = Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames"])
        .current_dir(root)
        .stdin(archive)
        .output()
        .context("running cpio")?;
    let status = rpm2cpio.wait().context("waiting for rpm2cpio")?;
    if !status.success() {
        bail!(
            "rpm2cpio {} failed with {status}:\n{}",
            rpm.display(),
            read(&errors)?
        );
    }
    if !cpio.status.success() {
        bail!(
            "cpio -idm failed with {}:\n{}",
            cpio.status,
            tail(&cpio.stderr, &cpio.stdout)
        );
    }
    Ok(())
}

/// What a download is, which decides what an HTTP error from it means.
#[derive(Clone, Copy)]
enum Fetched {
    /// The repository's index: an HTTP error there means this host has no such
    /// repository to read, for instance behind a proxy that blocks it.
    Index,
    /// A file the index listed: an HTTP error means the repository is inconsistent.
    Listed,
}

/// Downloads `url` to `dest` within `seconds`.
fn curl(url: &str, dest: &Path, seconds: u32, fetched: Fetched) -> Result<()> {
    let output = Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location"])
        .args([
            "--connect-timeout",
            "10",
            "--max-time",
            &seconds.to_string(),
        ])
        .arg("--output")
        .arg(dest)
        .arg(url)
        .output()
        .context("starting curl")?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    // curl's exit codes: 5 and 6 no DNS answer, 7 no connection, 28 timeout, 35 TLS
    // handshake, 52, 55 and 56 the connection died; 22 an HTTP error status.
    let code = output.status.code();
    let unreachable = matches!(code, Some(5 | 6 | 7 | 28 | 35 | 52 | 55 | 56));
    let no_index = matches!(fetched, Fetched::Index) && code == Some(22);
    if unreachable || no_index {
        bail!(Unreachable {
            reason: format!(
                "could not fetch {url}: {stderr} (set {MIRROR_ENV} to use a mirror of {DEFAULT_MIRROR})"
            ),
        });
    }
    bail!(
        "curl {url} failed with {}: {stderr}; the repository's index listed it, so it may be \
         mid-update: fetch again later",
        output.status
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/rpm")
            .join(name);
        fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    #[test]
    fn repomd_points_at_primary() {
        let primary = primary_location(&fixture("repomd.xml")).unwrap();
        assert_eq!(
            primary.location.href,
            "repodata/3f1c2a6c2b3f9f7e64a1d1b2e7a4a1c0d5a0b7e1f2c3d4e5f60718293a4b5c6d-primary.xml.gz"
        );
        assert_eq!(primary.checksum.kind, "sha256");
        assert_eq!(
            primary.checksum.hex,
            "3f1c2a6c2b3f9f7e64a1d1b2e7a4a1c0d5a0b7e1f2c3d4e5f60718293a4b5c6d"
        );
    }

    #[test]
    fn repomd_without_primary_or_gzip_is_refused() {
        let err = |xml: &str| format!("{:#}", primary_location(xml).unwrap_err());
        let e = err("<repomd><revision>1</revision></repomd>");
        assert!(e.contains("no <data type=\"primary\">"), "{e}");
        let e = err(
            "<repomd><data type=\"primary\"><checksum type=\"sha256\">ab</checksum>\
             <location href=\"repodata/x-primary.xml.zst\"/></data></repomd>",
        );
        assert!(
            e.contains("x-primary.xml.zst") && e.contains(".xml.gz"),
            "{e}"
        );
        let e = err(
            "<repomd><data type=\"primary\"><checksum type=\"sha256\">ab</checksum>\
             <location href=\"../elsewhere/primary.xml.gz\"/></data></repomd>",
        );
        assert!(e.contains("inside the repository"), "{e}");
        let e = err("not xml");
        assert!(e.contains("not a repomd document"), "{e}");
    }

    #[test]
    fn newest_containerd_for_the_architecture_wins() {
        let packages = parse_primary(&fixture("primary.xml")).unwrap();
        assert_eq!(packages.len(), 6);
        let newest = newest(&packages, PACKAGE, "x86_64").unwrap();
        assert_eq!(newest.version.to_string(), "1.7.27-3.1.el9");
        assert_eq!(
            newest.location.href,
            "Packages/containerd.io-1.7.27-3.1.el9.x86_64.rpm"
        );
        assert_eq!(newest.checksum.hex, "4".repeat(64));

        let arm = super::newest(&packages, PACKAGE, "aarch64").unwrap();
        assert_eq!(arm.version.to_string(), "1.7.28-1.el9");
        let docker = super::newest(&packages, "docker-ce", "x86_64").unwrap();
        assert_eq!(docker.version.to_string(), "3:28.0.4-1.el9");
        let err = super::newest(&packages, PACKAGE, "s390x").unwrap_err();
        assert!(
            err.to_string().contains("no containerd.io for s390x"),
            "{err}"
        );
    }

    #[test]
    fn a_version_the_agent_cannot_read_is_reported() {
        let xml = "<metadata><package type=\"rpm\"><name>containerd.io</name><arch>x86_64</arch>\
                   <version epoch=\"0\" ver=\"nightly\" rel=\"1\"/>\
                   <checksum type=\"sha256\">ab</checksum><location href=\"P/c.rpm\"/>\
                   </package></metadata>";
        let packages = parse_primary(xml).unwrap();
        let err = format!("{:#}", newest(&packages, PACKAGE, "x86_64").unwrap_err());
        assert!(err.contains("nightly-1"), "{err}");
    }

    #[test]
    fn rpm_orders_versions_like_rpm() {
        use Ordering::*;
        for (a, b, expected) in [
            ("1.el9", "1.el9", Equal),
            ("3.1.el9", "1.el9", Greater),
            ("3.1.el9", "3.el9", Greater),
            ("1.7.27", "1.7.9", Greater),
            ("010", "9", Greater),
            ("1.0", "1.0a", Less),
            ("1a", "1.1", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("2.el9_4", "2.el9", Greater),
            ("1_2", "1.2", Equal),
        ] {
            assert_eq!(rpmvercmp(a, b), expected, "{a} vs {b}");
            assert_eq!(rpmvercmp(b, a), expected.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn downloads_are_checked_against_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "containerd").unwrap();
        let sha256 = |hex: &str, kind: &str| Checksum {
            kind: kind.to_owned(),
            hex: hex.to_owned(),
        };
        let good = hex::encode(Sha256::digest(b"containerd"));
        verify(&file, &sha256(&good.to_ascii_uppercase(), "sha256")).unwrap();
        let err = verify(&file, &sha256(&"0".repeat(64), "sha256")).unwrap_err();
        assert!(err.to_string().contains("corrupt or tampered"), "{err}");
        let err = verify(&file, &sha256(&good, "sha")).unwrap_err();
        assert!(err.to_string().contains("expected sha256"), "{err}");
    }

    #[test]
    fn ids_name_the_rhel_release() {
        assert_eq!(DockerRpm::Rhel9.id(), "docker-rpm:rhel9");
        assert!(
            DockerRpm::Rhel9
                .repo()
                .ends_with(&format!("/linux/rhel/9/{ARCH}/stable"))
        );
    }
}
