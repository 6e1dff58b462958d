//! Test images built in-process, as an OCI image layout on disk.
//!
//! The mirror's tests need images whose every digest and size they know in advance, with
//! real content for containerd to unpack, and the machine has no route to a public
//! registry. So images are made here from seeded noise: reproducible per seed, different
//! per seed, and written in the layout `skopeo copy oci:…` reads, so that pushing them is
//! what a real client does. Layers are streamed to disk, so a layer of any size costs only
//! a buffer of memory.

use std::{
    fs,
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use flate2::{Compression, write::GzEncoder};
use oci_spec::image as oci;
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Uncompressed layers cost no compression time, which matters for huge layers in a
/// debug build.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The annotation by which `skopeo copy oci:<dir>:<tag>` finds an image in `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Fixed so that tar headers, and with them layer digests, depend on the seed alone
/// (2024-01-01T00:00:00Z).
const MTIME: u64 = 1_704_067_200;
/// Noise is drawn from the generator in whole blocks, so that the bytes a layer gets do
/// not depend on how its readers happen to slice their reads.
const NOISE_BLOCK: usize = 64 * 1024;

impl Descriptor {
    /// The same descriptor as oci-spec's type, for building manifests and indexes.
    pub fn to_oci(&self) -> Result<oci::Descriptor> {
        Ok(oci::DescriptorBuilder::default()
            .media_type(oci::MediaType::from(self.media_type.as_str()))
            .digest(oci::Digest::from_str(&self.digest)?)
            .size(self.size)
            .build()?)
    }
}

/// An OCI content descriptor, serialized as the specification spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

/// How a layer's tar is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    None,
}

/// One layer to build: `size` bytes of noise in a single file, wrapped in a tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    pub size: u64,
    pub compression: LayerCompression,
}

impl LayerSpec {
    /// A `tar+gzip` layer, the kind almost every real image has.
    pub fn gzip(size: u64) -> Self {
        Self {
            size,
            compression: LayerCompression::Gzip,
        }
    }

    /// A plain `tar` layer: the way to build huge layers quickly.
    pub fn uncompressed(size: u64) -> Self {
        Self {
            size,
            compression: LayerCompression::None,
        }
    }
}

/// The OS and architecture an image runs on, as OCI names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl Platform {
    pub fn linux(architecture: &str) -> Self {
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
        }
    }

    /// The platform containerd on this machine pulls out of an index.
    pub fn host() -> Result<Self> {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => bail!(
                "no OCI architecture name known for this host's {other:?}; \
                 teach Platform::host in e2e/src/image.rs"
            ),
        };
        Ok(Self::linux(architecture))
    }
}

/// A layer as stored (`blob`) and as unpacked (`diff_id`, the digest of the plain tar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub blob: Descriptor,
    pub diff_id: String,
}

/// One platform's manifest, config and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    pub platform: Platform,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Layer>,
}

/// An image in the layout, by tag: `target` is what the tag resolves to, the manifest
/// itself or the index over `platforms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    pub tag: String,
    pub target: Descriptor,
    pub platforms: Vec<PlatformImage>,
}

impl TestImage {
    pub fn is_index(&self) -> bool {
        self.target.media_type == OCI_INDEX
    }

    pub fn platform(&self, platform: &Platform) -> Option<&PlatformImage> {
        self.platforms
            .iter()
            .find(|image| image.platform == *platform)
    }

    /// A platform other than `platform`: in an index, the one a node on
    /// `platform` never pulls.
    pub fn other_than(&self, platform: &Platform) -> Option<&PlatformImage> {
        self.platforms
            .iter()
            .find(|image| image.platform != *platform)
    }
}

/// An OCI image layout directory being filled with test images.
///
/// Digests depend only on the seed and on the sequence of `add_*` calls, so a test can
/// rebuild the same images, or different ones, at will.
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
    rng: SmallRng,
    images: Vec<TestImage>,
}

impl OciLayout {
    /// Starts an empty layout in `dir`, which must be empty or not exist yet.
    pub fn create(dir: &Path, seed: u64) -> Result<Self> {
        if let Ok(mut entries) = fs::read_dir(dir) {
            ensure!(
                entries.next().is_none(),
                "{} already has content; an OCI layout for test images needs an empty directory",
                dir.display()
            );
        }
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let layout = Self {
            dir: dir.to_owned(),
            rng: SmallRng::seed_from_u64(seed),
            images: Vec::new(),
        };
        layout.write_file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        layout.write_index()?;
        Ok(layout)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn images(&self) -> &[TestImage] {
        &self.images
    }

    /// Where a blob of this layout lives on disk.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("{digest:?} is not a sha256:<64 hex digits> digest"))?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    /// Adds a single-platform image: an OCI manifest tagged `tag`.
    pub fn add_image(
        &mut self,
        tag: &str,
        platform: &Platform,
        layers: &[LayerSpec],
    ) -> Result<TestImage> {
        self.check_new_tag(tag)?;
        let image = self.build_platform(tag, platform, layers)?;
        self.tag(TestImage {
            tag: tag.to_owned(),
            target: image.manifest.clone(),
            platforms: vec![image],
        })
    }

    /// Adds a multi-platform image: an OCI index tagged `tag`, over one manifest per
    /// platform, each with its own config and layers built to `layers`.
    pub fn add_index(
        &mut self,
        tag: &str,
        platforms: &[Platform],
        layers: &[LayerSpec],
    ) -> Result<TestImage> {
        self.check_new_tag(tag)?;
        ensure!(!platforms.is_empty(), "index {tag:?} needs a platform");
        let images = platforms
            .iter()
            .map(|platform| self.build_platform(tag, platform, layers))
            .collect::<Result<Vec<_>>>()?;
        let manifests = images
            .iter()
            .map(|image| {
                let mut entry = image.manifest.to_oci()?;
                entry.set_platform(Some(
                    oci::PlatformBuilder::default()
                        .architecture(oci::Arch::from(image.platform.architecture.as_str()))
                        .os(oci::Os::from(image.platform.os.as_str()))
                        .build()?,
                ));
                Ok(entry)
            })
            .collect::<Result<Vec<_>>>()?;
        let target = self.put_json(OCI_INDEX, &index(manifests)?)?;
        self.tag(TestImage {
            tag: tag.to_owned(),
            target,
            platforms: images,
        })
    }

    fn check_new_tag(&self, tag: &str) -> Result<()> {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && !tag.starts_with(['.', '-']);
        ensure!(
            valid,
            "{tag:?} is not a valid tag: use up to 128 of [A-Za-z0-9_.-], not starting with . or -"
        );
        ensure!(
            self.images.iter().all(|image| image.tag != tag),
            "tag {tag:?} is already in the layout at {}; give each image its own tag",
            self.dir.display()
        );
        Ok(())
    }

    fn build_platform(
        &mut self,
        tag: &str,
        platform: &Platform,
        specs: &[LayerSpec],
    ) -> Result<PlatformImage> {
        let mut layers = Vec::with_capacity(specs.len());
        for (n, spec) in specs.iter().enumerate() {
            // A directory per layer, so that unpacked layers do not shadow each other.
            let dir = format!("layer-{tag}-{}-{}-{n}", platform.os, platform.architecture);
            let layer = self
                .write_layer(&dir, spec)
                .with_context(|| format!("building layer {n} of {tag} for {platform:?}"))?;
            layers.push(layer);
        }
        let config = oci::ImageConfigurationBuilder::default()
            .architecture(oci::Arch::from(platform.architecture.as_str()))
            .os(oci::Os::from(platform.os.as_str()))
            .config(oci::Config::default())
            .rootfs(
                oci::RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(
                        layers
                            .iter()
                            .map(|layer| layer.diff_id.clone())
                            .collect::<Vec<_>>(),
                    )
                    .build()?,
            )
            .build()?;
        let config = self.put_json(OCI_CONFIG, &config)?;
        let manifest = oci::ImageManifestBuilder::default()
            .schema_version(oci::SCHEMA_VERSION)
            .media_type(oci::MediaType::ImageManifest)
            .config(config.to_oci()?)
            .layers(
                layers
                    .iter()
                    .map(|layer| layer.blob.to_oci())
                    .collect::<Result<Vec<_>>>()?,
            )
            .build()?;
        let manifest = self.put_json(OCI_MANIFEST, &manifest)?;
        Ok(PlatformImage {
            platform: platform.clone(),
            manifest,
            config,
            layers,
        })
    }

    /// Streams the layer's tar through the digests (and gzip) into a staging file in the
    /// blob directory, then renames it to its digest.
    fn write_layer(&mut self, dir: &str, spec: &LayerSpec) -> Result<Layer> {
        let blobs = self.dir.join("blobs/sha256");
        let staging = NamedTempFile::with_prefix_in(".staging-", &blobs)
            .with_context(|| format!("creating a staging file in {}", blobs.display()))?;
        let file = staging
            .as_file()
            .try_clone()
            .context("sharing the staging file")?;
        let stored = Digesting::new(BufWriter::with_capacity(1 << 20, file));
        let noise = Noise::new(&mut self.rng, spec.size);
        let (media_type, diff_id, mut file, blob) = match spec.compression {
            LayerCompression::Gzip => {
                let gzip = GzEncoder::new(stored, Compression::fast());
                let (gzip, tar) = write_tar(Digesting::new(gzip), dir, spec.size, noise)?;
                let (file, blob) = gzip.finish().context("finishing gzip")?.finish();
                (OCI_LAYER_GZIP, tar.digest, file, blob)
            }
            LayerCompression::None => {
                // The blob is the tar itself.
                let (file, blob) = write_tar(stored, dir, spec.size, noise)?;
                (OCI_LAYER_TAR, blob.digest.clone(), file, blob)
            }
        };
        file.flush().context("writing the layer")?;
        let path = self.blob_path(&blob.digest)?;
        staging
            .persist(&path)
            .with_context(|| format!("moving the layer to {}", path.display()))?;
        Ok(Layer {
            blob: Descriptor {
                media_type: media_type.to_owned(),
                digest: blob.digest,
                size: blob.size,
            },
            diff_id,
        })
    }

    fn put_json(&self, media_type: &str, value: &impl Serialize) -> Result<Descriptor> {
        let bytes = canonical_json(value)?;
        let descriptor = Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256_digest(&bytes),
            size: bytes.len() as u64,
        };
        let path = self.blob_path(&descriptor.digest)?;
        fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(descriptor)
    }

    fn tag(&mut self, image: TestImage) -> Result<TestImage> {
        self.images.push(image.clone());
        self.write_index()?;
        Ok(image)
    }

    /// Rewritten after every image, so the layout on disk is complete between calls.
    fn write_index(&self) -> Result<()> {
        let manifests = self
            .images
            .iter()
            .map(|image| {
                let mut entry = image.target.to_oci()?;
                entry.set_annotations(Some([(REF_NAME.to_owned(), image.tag.clone())].into()));
                Ok(entry)
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_file("index.json", &canonical_json(&index(manifests)?)?)
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }
}

/// `sha256:<hex>` of `bytes`.
fn index(manifests: Vec<oci::Descriptor>) -> Result<oci::ImageIndex> {
    Ok(oci::ImageIndexBuilder::default()
        .schema_version(oci::SCHEMA_VERSION)
        .media_type(oci::MediaType::ImageIndex)
        .manifests(manifests)
        .build()?)
}

/// JSON with every object's keys sorted: oci-spec keeps annotations and
/// labels in hash maps, whose order (and so a digest) would change from run
/// to run.
pub fn canonical_json(value: &impl Serialize) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(value)?)?)
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes a tar of one directory holding one file, `data`, of `size` bytes of `noise`,
/// and returns the writer with the digest of the tar.
fn write_tar<W: Write>(
    out: Digesting<W>,
    dir: &str,
    size: u64,
    noise: Noise<'_>,
) -> Result<(W, Digested)> {
    let header = |kind, mode, size| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header
    };
    let mut tar = tar::Builder::new(out);
    tar.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        format!("{dir}/"),
        io::empty(),
    )
    .context("writing the tar")?;
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0o644, size),
        format!("{dir}/data"),
        noise,
    )
    .context("writing the tar")?;
    let out = tar.into_inner().context("finishing the tar")?;
    Ok(out.finish())
}

/// What went through a [`Digesting`] writer.
#[derive(Debug)]
struct Digested {
    digest: String,
    size: u64,
}

/// A writer that hashes and counts what it passes on.
struct Digesting<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Digesting<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (W, Digested) {
        let digested = Digested {
            digest: format!("sha256:{}", hex::encode(self.hasher.finalize())),
            size: self.size,
        };
        (self.inner, digested)
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `remaining` bytes from the generator, incompressible like most real layer content.
struct Noise<'a> {
    rng: &'a mut SmallRng,
    block: Box<[u8]>,
    /// How much of `block` has been read.
    used: usize,
    remaining: u64,
}

impl<'a> Noise<'a> {
    fn new(rng: &'a mut SmallRng, size: u64) -> Self {
        Self {
            rng,
            block: vec![0; NOISE_BLOCK].into_boxed_slice(),
            used: NOISE_BLOCK,
            remaining: size,
        }
    }
}

impl Read for Noise<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        if self.used == self.block.len() {
            self.rng.fill_bytes(&mut self.block);
            self.used = 0;
        }
        let available = (self.block.len() - self.used).min(buf.len());
        let n = usize::try_from(self.remaining).map_or(available, |left| left.min(available));
        buf[..n].copy_from_slice(&self.block[self.used..self.used + n]);
        self.used += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use flate2::read::GzDecoder;

    use serde_json::{Value, json};

    use super::*;

    fn build(dir: &Path, seed: u64) -> Result<OciLayout> {
        let mut layout = OciLayout::create(dir, seed)?;
        layout.add_image(
            "single",
            &Platform::linux("amd64"),
            &[LayerSpec::gzip(1024), LayerSpec::gzip(200_000)],
        )?;
        layout.add_index(
            "multi",
            &[Platform::linux("amd64"), Platform::linux("arm64")],
            &[LayerSpec::uncompressed(70_000)],
        )?;
        Ok(layout)
    }

    fn read_json(layout: &OciLayout, descriptor: &Descriptor) -> Value {
        let bytes = fs::read(layout.blob_path(&descriptor.digest).unwrap()).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn same_seed_same_images_other_seed_other_images() -> Result<()> {
        let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let first = build(dirs[0].path(), 7)?;
        let again = build(dirs[1].path(), 7)?;
        let other = build(dirs[2].path(), 8)?;
        assert_eq!(first.images(), again.images());
        for (mine, theirs) in first.images().iter().zip(other.images()) {
            assert_ne!(mine.target.digest, theirs.target.digest);
        }
        assert_eq!(
            fs::read(first.dir().join("index.json"))?,
            fs::read(again.dir().join("index.json"))?
        );
        Ok(())
    }

    #[test]
    fn every_blob_matches_its_descriptor_and_diff_id() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let layout = build(dir.path(), 1)?;
        for image in layout.images() {
            for platform in &image.platforms {
                let manifest = read_json(&layout, &platform.manifest);
                assert_eq!(manifest["mediaType"], OCI_MANIFEST);
                assert_eq!(manifest["config"], serde_json::to_value(&platform.config)?);
                let config = read_json(&layout, &platform.config);
                assert_eq!(config["architecture"], *platform.platform.architecture);
                for (n, layer) in platform.layers.iter().enumerate() {
                    assert_eq!(manifest["layers"][n], serde_json::to_value(&layer.blob)?);
                    assert_eq!(config["rootfs"]["diff_ids"][n], *layer.diff_id);
                    let stored = fs::read(layout.blob_path(&layer.blob.digest)?)?;
                    assert_eq!(stored.len() as u64, layer.blob.size);
                    assert_eq!(sha256_digest(&stored), layer.blob.digest);
                    let tar = if layer.blob.media_type == OCI_LAYER_GZIP {
                        let mut tar = Vec::new();
                        GzDecoder::new(&stored[..]).read_to_end(&mut tar)?;
                        tar
                    } else {
                        assert_eq!(layer.blob.media_type, OCI_LAYER_TAR);
                        stored
                    };
                    assert_eq!(sha256_digest(&tar), layer.diff_id);
                }
            }
        }
        let index: Value = serde_json::from_slice(&fs::read(dir.path().join("index.json"))?)?;
        let tags: Vec<_> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                (
                    entry["annotations"][REF_NAME].clone(),
                    entry["digest"].clone(),
                )
            })
            .collect();
        let expected: Vec<_> = layout
            .images()
            .iter()
            .map(|image| (json!(image.tag), json!(image.target.digest)))
            .collect();
        assert_eq!(tags, expected);
        Ok(())
    }

    #[test]
    fn layers_hold_exactly_the_requested_noise() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut layout = OciLayout::create(dir.path(), 3)?;
        let size = 3 * NOISE_BLOCK as u64 + 5;
        let image = layout.add_image(
            "sized",
            &Platform::linux("amd64"),
            &[LayerSpec::uncompressed(size)],
        )?;
        let blob = layout.blob_path(&image.platforms[0].layers[0].blob.digest)?;
        let mut archive = tar::Archive::new(File::open(blob)?);
        let sizes: Vec<_> = archive
            .entries()?
            .map(|entry| Ok(entry?.header().size()?))
            .collect::<Result<_>>()?;
        assert_eq!(sizes, [0, size]);
        Ok(())
    }

    #[test]
    fn index_lists_each_platform() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let layout = build(dir.path(), 2)?;
        let multi = &layout.images()[1];
        assert!(multi.is_index());
        let index = read_json(&layout, &multi.target);
        let platforms: Vec<_> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["platform"]["architecture"].clone())
            .collect();
        assert_eq!(platforms, [json!("amd64"), json!("arm64")]);
        assert!(multi.platform(&Platform::linux("arm64")).is_some());
        assert!(multi.platform(&Platform::linux("s390x")).is_none());
        Ok(())
    }

    #[test]
    fn rejects_reused_and_invalid_tags() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut layout = OciLayout::create(dir.path(), 0)?;
        let amd64 = Platform::linux("amd64");
        layout.add_image("v1", &amd64, &[])?;
        let err = layout.add_image("v1", &amd64, &[]).unwrap_err();
        assert!(err.to_string().contains("already in the layout"), "{err}");
        let err = layout.add_image("a/b", &amd64, &[]).unwrap_err();
        assert!(err.to_string().contains("not a valid tag"), "{err}");
        Ok(())
    }
}
