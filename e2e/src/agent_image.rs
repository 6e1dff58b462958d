//! The agent's own image, `target/image/reflektor.oci.tar` (and the
//! harness's sandbox image, built the same way): an OCI
//! image-layout archive (what `skopeo copy oci-archive:`, `ctr images import`
//! and `kind load image-archive` take), assembled here without Docker,
//! buildah or any base image.
//!
//! It holds, in the spirit of distroless images, the stripped release
//! binary and the shared libraries it links, taken from the build host's
//! Debian packages (each package's name and version is recorded in a label
//! and in `/usr/share/reflektor/packages`), and nothing else: no shell, no
//! package manager. It runs as root, as it must to reach containerd's
//! socket and host paths.
//!
//! It is reproducible: the same binary gives the same manifest digest.
//! Every timestamp is the commit's time, entries are sorted, owners are 0,
//! and gzip's header carries no time.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use flate2::{Compression, GzBuilder};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
    SCHEMA_VERSION, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

use crate::image::canonical_json;

const PACKAGES_FILE: &str = "usr/share/reflektor/packages";

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub binary: PathBuf,
    /// Where the binary goes in the image, and runs from.
    pub entrypoint: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// The full reference it is named by, e.g.
    /// `ghcr.io/reflektor/reflektor:0.1.0`.
    pub name: String,
    pub version: String,
    /// The commit, for `org.opencontainers.image.revision`.
    pub revision: String,
    /// Seconds since the epoch: every timestamp in the image.
    pub created: u64,
}

impl ImageSpec {
    /// The agent's image, from `binary`, at the source tree's commit.
    pub fn agent(binary: PathBuf, name: String) -> Self {
        Self::at_head(
            binary,
            name,
            "/usr/bin/reflektor",
            "reflektor",
            "A stateless, cluster-local OCI registry mirror for containerd nodes",
        )
    }

    /// The sandbox ("pause") image the harness's pods run with, from the
    /// `reflektor-pause` binary.
    pub fn pause(binary: PathBuf, name: String) -> Self {
        Self::at_head(
            binary,
            name,
            "/pause",
            "reflektor-pause",
            "The pod sandbox process of reflektor's test harness",
        )
    }

    /// The spec for `binary` at the source tree's current commit: its
    /// hash and its commit time, so that a rebuild is byte for byte the
    /// same. Outside a git checkout: `unknown` and the epoch.
    fn at_head(
        binary: PathBuf,
        name: String,
        entrypoint: &'static str,
        title: &'static str,
        description: &'static str,
    ) -> Self {
        let git = |format: &str| {
            Command::new("git")
                .args(["log", "-1", &format!("--format={format}")])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        // A tree with changes is not the commit: say so in the label.
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
        let revision = git("%H").unwrap_or_else(|| "unknown".to_owned());
        ImageSpec {
            binary,
            entrypoint,
            title,
            description,
            name,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: if dirty {
                format!("{revision}-dirty")
            } else {
                revision
            },
            created: git("%ct").and_then(|t| t.parse().ok()).unwrap_or(0),
        }
    }
}

/// A shared library the binary links, and the Debian package it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// Where the dynamic loader looks for it, and so where it goes.
    pub path: PathBuf,
    pub package: String,
    pub version: String,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub archive: PathBuf,
    pub manifest_digest: String,
    /// The archive's size: the image, compressed.
    pub archive_bytes: u64,
    pub layer_bytes: u64,
    pub libraries: Vec<Library>,
}

pub fn build(spec: &ImageSpec, archive: &Path) -> Result<BuiltImage> {
    ensure!(
        spec.binary.is_file(),
        "the agent binary {} is missing. Fix: `cargo build --release -p reflektor` (`just \
         image` does)",
        spec.binary.display()
    );
    ensure_x86_64(&spec.binary)?;
    let libraries = linked_libraries(&spec.binary)?;
    ensure_nss_built_in(&libraries)?;
    let stripped = strip(&spec.binary)?;
    let files = image_files(spec.entrypoint, &stripped, &libraries)?;
    let (layer, diff_id) = layer(&files, spec.created)?;
    let layer_digest = sha256(&layer);

    let packages: std::collections::BTreeSet<String> = libraries
        .iter()
        .map(|l| format!("{}={}", l.package, l.version))
        .collect();
    let packages: Vec<String> = packages.into_iter().collect();
    let labels = HashMap::from([
        (
            "org.opencontainers.image.source".to_owned(),
            env!("CARGO_PKG_REPOSITORY").to_owned(),
        ),
        (
            "org.opencontainers.image.version".to_owned(),
            spec.version.clone(),
        ),
        (
            "org.opencontainers.image.revision".to_owned(),
            spec.revision.clone(),
        ),
        (
            "org.opencontainers.image.licenses".to_owned(),
            env!("CARGO_PKG_LICENSE").to_owned(),
        ),
        (
            "org.opencontainers.image.title".to_owned(),
            "reflektor".to_owned(),
        ),
        (
            "org.opencontainers.image.description".to_owned(),
            "A stateless, cluster-local OCI registry mirror for containerd nodes".to_owned(),
        ),
        ("io.reflektor.image.packages".to_owned(), packages.join(" ")),
    ]);
    let created = rfc3339(spec.created);
    let config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .entrypoint(vec![spec.entrypoint.to_owned()])
                .user("0:0")
                .working_dir("/")
                .labels(labels.clone())
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id])
                .build()?,
        )
        .history(vec![
            HistoryBuilder::default()
                .created(created)
                .created_by("reflektor-e2e image: one binary and the libraries it links")
                .build()?,
        ])
        .build()?;
    let config = canonical_json(&config)?;
    let config_descriptor = descriptor(MediaType::ImageConfig, &config)?;
    let layer_descriptor = DescriptorBuilder::default()
        .media_type(MediaType::ImageLayerGzip)
        .size(layer.len() as u64)
        .digest(Sha256Digest::from_str(&layer_digest)?)
        .build()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config_descriptor)
        .layers(vec![layer_descriptor])
        .annotations(labels)
        .build()?;
    let manifest = canonical_json(&manifest)?;
    let mut manifest_descriptor = descriptor(MediaType::ImageManifest, &manifest)?;
    manifest_descriptor.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .build()?,
    ));
    manifest_descriptor.set_annotations(Some(HashMap::from([
        // skopeo's `oci-archive:…:<tag>` and the OCI layout's own name.
        (
            "org.opencontainers.image.ref.name".to_owned(),
            spec.version.clone(),
        ),
        // What `ctr images import` (and so `kind load`) names it.
        ("io.containerd.image.name".to_owned(), spec.name.clone()),
    ])));
    let manifest_digest = manifest_descriptor.digest().to_string();
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()?;

    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    entries.insert(
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    entries.insert("index.json".to_owned(), canonical_json(&index)?);
    for blob in [config, manifest, layer.clone()] {
        entries.insert(format!("blobs/sha256/{}", sha256(&blob)), blob);
    }
    write_archive(archive, &entries, spec.created)?;
    Ok(BuiltImage {
        archive: archive.to_owned(),
        manifest_digest,
        archive_bytes: fs::metadata(archive)?.len(),
        layer_bytes: layer.len() as u64,
        libraries,
    })
}

use std::collections::HashMap;

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn descriptor(media_type: MediaType, bytes: &[u8]) -> Result<Descriptor> {
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .size(bytes.len() as u64)
        .digest(Sha256Digest::from_str(&sha256(bytes))?)
        .build()?)
}

/// The image is labelled amd64: an ELF for another machine must not end
/// up in it.
fn ensure_x86_64(binary: &Path) -> Result<()> {
    const EM_X86_64: u16 = 62;
    let mut head = [0u8; 20];
    std::io::Read::read_exact(&mut fs::File::open(binary)?, &mut head)
        .with_context(|| format!("reading {}", binary.display()))?;
    ensure!(
        &head[..4] == b"\x7fELF",
        "{} is not an ELF binary",
        binary.display()
    );
    let machine = u16::from_le_bytes([head[18], head[19]]);
    ensure!(
        machine == EM_X86_64,
        "{} is built for ELF machine {machine}, not x86-64; this builder makes amd64 images \
         (see the README on arm64)",
        binary.display()
    );
    Ok(())
}

/// DNS lookups (bootstrap, `cleanup-wait`) need glibc's NSS modules, which
/// `ldd` does not list: they are loaded at run time, unless glibc has them
/// built in, as from 2.34 on.
fn ensure_nss_built_in(libraries: &[Library]) -> Result<()> {
    let libc = libraries
        .iter()
        .find(|l| l.package.starts_with("libc6"))
        .context("the binary links no glibc from libc6")?;
    let mut numbers = libc
        .version
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    ensure!(
        (major, minor) >= (2, 34),
        "glibc {} keeps its NSS modules apart, and this image would not carry them, so DNS \
         would fail in it; build on Debian 12, Ubuntu 22.04 or newer",
        libc.version
    );
    Ok(())
}

/// `ldd`'s answer: every library the dynamic loader would load, the loader
/// itself included, each with its package.
pub fn linked_libraries(binary: &Path) -> Result<Vec<Library>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    ensure!(
        output.status.success(),
        "ldd {}: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut libraries = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!(
                "ldd {}: {line}; the binary would not start",
                binary.display()
            );
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or the
        // loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let Some(path) = path
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        else {
            continue;
        };
        let path = PathBuf::from(path);
        let (package, version) = package_of(&path)?;
        libraries.push(Library {
            path,
            package,
            version,
        });
    }
    ensure!(
        !libraries.is_empty(),
        "ldd names no library for {}: a static binary needs no libraries, but this builder \
         expects glibc's",
        binary.display()
    );
    Ok(libraries)
}

/// The Debian package that installed `path`, and its version. With merged
/// /usr, dpkg may know a file by its /usr path or by the real file's.
fn package_of(path: &Path) -> Result<(String, String)> {
    let mut candidates = vec![path.to_owned()];
    if let Ok(stripped) = path.strip_prefix("/") {
        candidates.push(Path::new("/usr").join(stripped));
    }
    if let Ok(real) = fs::canonicalize(path) {
        candidates.push(real);
    }
    for candidate in &candidates {
        let output = Command::new("dpkg-query")
            .arg("--search")
            .arg(candidate)
            .output()
            .context("running dpkg-query; the image is built on Debian or Ubuntu")?;
        if !output.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let Some((package, _)) = text.lines().next().and_then(|l| l.split_once(": ")) else {
            continue;
        };
        let version = Command::new("dpkg-query")
            .args(["--show", "--showformat=${Version}", package])
            .output()?;
        ensure!(
            version.status.success(),
            "dpkg-query --show {package} failed"
        );
        return Ok((
            package.to_owned(),
            String::from_utf8_lossy(&version.stdout).trim().to_owned(),
        ));
    }
    bail!(
        "{} belongs to no Debian package (tried {candidates:?}); the image records where each \
         library came from",
        path.display()
    )
}

/// A stripped copy of the binary: its symbols are for debugging, not for
/// nodes.
fn strip(binary: &Path) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("reflektor");
    let status = Command::new("strip")
        .arg("--strip-unneeded")
        .arg("-o")
        .arg(&copy)
        .arg(binary)
        .status()
        .context("running strip (Debian package binutils)")?;
    ensure!(status.success(), "strip {} failed", binary.display());
    Ok(fs::read(&copy)?)
}

/// Path in the image (no leading slash) → (mode, bytes).
fn image_files(
    entrypoint: &str,
    binary: &[u8],
    libraries: &[Library],
) -> Result<BTreeMap<String, (u32, Vec<u8>)>> {
    let mut files = BTreeMap::new();
    files.insert(
        entrypoint.trim_start_matches('/').to_owned(),
        (0o755, binary.to_vec()),
    );
    for library in libraries {
        let bytes = fs::read(&library.path)
            .with_context(|| format!("reading {}", library.path.display()))?;
        let in_image = library
            .path
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned();
        files.insert(in_image, (0o755, bytes));
    }
    // /etc/hosts (which kubelet mounts) before DNS, as on any node.
    files.insert(
        "etc/nsswitch.conf".to_owned(),
        (0o644, b"hosts: files dns\n".to_vec()),
    );
    let packages: String = libraries
        .iter()
        .map(|l| format!("{} {} {}\n", l.package, l.version, l.path.display()))
        .collect();
    files.insert(PACKAGES_FILE.to_owned(), (0o644, packages.into_bytes()));
    Ok(files)
}

fn header(path: &str, mode: u32, size: u64, mtime: u64, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header
        .set_path(path)
        .expect("image paths are short and plain");
    header.set_cksum();
    header
}

/// The layer, gzipped, and its diff id (the digest of the plain tar).
fn layer(files: &BTreeMap<String, (u32, Vec<u8>)>, mtime: u64) -> Result<(Vec<u8>, String)> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in files.keys() {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", dir.display()));
            parent = dir.parent();
        }
    }
    let mut entries: BTreeMap<String, (u32, Option<&[u8]>)> = BTreeMap::new();
    for dir in &dirs {
        entries.insert(dir.clone(), (0o755, None));
    }
    for (path, (mode, bytes)) in files {
        entries.insert(path.clone(), (*mode, Some(bytes)));
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, (mode, bytes)) in &entries {
        match bytes {
            None => tar.append(
                &header(path, *mode, 0, mtime, tar::EntryType::Directory),
                &[][..],
            )?,
            Some(bytes) => tar.append(
                &header(
                    path,
                    *mode,
                    bytes.len() as u64,
                    mtime,
                    tar::EntryType::Regular,
                ),
                *bytes,
            )?,
        }
    }
    let tar = tar.into_inner()?;
    let diff_id = format!("sha256:{}", sha256(&tar));
    // No file name and no time in gzip's header; one fixed level.
    let mut gzip = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    gzip.write_all(&tar)?;
    Ok((gzip.finish()?, diff_id))
}

fn write_archive(archive: &Path, entries: &BTreeMap<String, Vec<u8>>, mtime: u64) -> Result<()> {
    if let Some(parent) = archive.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let partial = archive.with_extension("tar.partial");
    let mut tar = tar::Builder::new(fs::File::create(&partial)?);
    let mut dirs = std::collections::BTreeSet::new();
    for path in entries.keys() {
        if let Some((dir, _)) = path.rsplit_once('/') {
            dirs.insert("blobs/".to_owned());
            dirs.insert(format!("{dir}/"));
        }
    }
    for dir in &dirs {
        tar.append(
            &header(dir, 0o755, 0, mtime, tar::EntryType::Directory),
            &[][..],
        )?;
    }
    for (path, bytes) in entries {
        tar.append(
            &header(
                path,
                0o644,
                bytes.len() as u64,
                mtime,
                tar::EntryType::Regular,
            ),
            &bytes[..],
        )?;
    }
    tar.into_inner()?.sync_all()?;
    fs::rename(&partial, archive)
        .with_context(|| format!("moving the image into place at {}", archive.display()))?;
    Ok(())
}

/// Seconds since the epoch as RFC 3339 UTC, e.g. 2026-11-29T01:23:08Z.
fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let seconds = epoch % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    }
}
