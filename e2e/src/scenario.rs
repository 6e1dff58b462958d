//! The standard test images on a fresh upstream, shared by the pull tests
//! and the mirror tests so that both exercise the same content.

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::cluster::LARGE_LAYER_MIB;
use crate::image::{LayerSpec, OciLayout, Platform, TestImage};
use crate::upstream::{PushedImage, Upstream};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Any seed works; a fixed one keeps digests stable between runs for post-mortems.
const SEED: u64 = 20_261_125;

/// An upstream holding the test images, and the layout they were built in.
pub struct Images {
    pub upstream: Upstream,
    /// A single-platform image of three layers, small to a few MiB.
    pub app: PushedImage,
    /// An index over amd64 and arm64.
    pub multi: PushedImage,
    /// Pulled only once the upstream has been stopped.
    pub later: PushedImage,
    pub layout: TempDir,
}

/// The small single-platform image every pull check starts with: three
/// layers, from 1 KiB to a few MiB.
fn add_app(layout: &mut OciLayout, host: &Platform) -> Result<TestImage> {
    layout.add_image(
        "app-v1",
        host,
        &[
            LayerSpec::gzip(KIB),
            LayerSpec::gzip(256 * KIB),
            LayerSpec::gzip(3 * MIB),
        ],
    )
}

/// Builds the images, starts an upstream and pushes them to it.
pub async fn images() -> Result<Images> {
    let upstream = Upstream::start().await?;
    let dir = tempfile::tempdir()?;
    let host = Platform::host()?;
    let mut layout = OciLayout::create(dir.path(), SEED)?;
    let app = add_app(&mut layout, &host)?;
    let multi = layout.add_index(
        "multi-v1",
        &[Platform::linux("amd64"), Platform::linux("arm64")],
        &[LayerSpec::gzip(64 * KIB), LayerSpec::gzip(MIB)],
    )?;
    let later = layout.add_image("later-v1", &host, &[LayerSpec::gzip(128 * KIB)])?;
    let (app, multi, later) = tokio::try_join!(
        upstream.push(&layout, &app, "e2e/app"),
        upstream.push(&layout, &multi, "e2e/multi"),
        upstream.push(&layout, &later, "e2e/later"),
    )?;
    Ok(Images {
        upstream,
        app,
        multi,
        later,
        layout: dir,
    })
}

/// The images the release matrix pulls, built once per run and pushed to
/// each cluster's own upstream.
pub struct Catalogue {
    pub layout: OciLayout,
    /// Small, pulled by tag.
    pub app: TestImage,
    /// Small, pulled by digest only.
    pub pinned: TestImage,
    /// Small, pulled from the upstream by one node only, after its
    /// containerd restarted: any other node can only get it from that one.
    pub later: TestImage,
    /// An index over linux/amd64 and linux/arm64.
    pub multi: TestImage,
    /// One uncompressed layer of [`LARGE_LAYER_MIB`] MiB, when asked for.
    pub large: Option<TestImage>,
    /// What the third node pulls under the faults that cut a transfer or
    /// fill its disk, when any cluster declares one.
    pub faults: Option<FaultImages>,
    _dir: TempDir,
}

/// One image per pull that meets a fault, each a single uncompressed layer
/// of [`FAULT_LAYER_MIB`] MiB: new to the puller every time, and big enough
/// that a throttled pull is surely mid-layer when the fault lands.
pub struct FaultImages {
    pub partition: TestImage,
    /// One per round of the kill loop.
    pub kills: Vec<TestImage>,
    pub disk_full: TestImage,
}

pub const FAULT_LAYER_MIB: u64 = 64;
/// Rounds of the agent-kill loop: pulls, each with its serving agent killed.
pub const KILL_ROUNDS: usize = 3;

impl Catalogue {
    /// Builds the images into a fresh layout; blocking, and a few seconds
    /// with the large image (256 MiB of seeded noise) or the fault images.
    pub fn build(with_large: bool, with_faults: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("reflektor-e2e-images-")
            .tempdir_in(crate::node::work_parent())?;
        let host = Platform::host()?;
        let mut layout = OciLayout::create(dir.path(), SEED)?;
        let app = add_app(&mut layout, &host)?;
        let pinned = layout.add_image("pinned-v1", &host, &[LayerSpec::gzip(MIB)])?;
        let later = layout.add_image("later-v1", &host, &[LayerSpec::gzip(512 * KIB)])?;
        let multi = layout.add_index(
            "multi-v1",
            &[Platform::linux("amd64"), Platform::linux("arm64")],
            &[LayerSpec::gzip(64 * KIB), LayerSpec::gzip(MIB)],
        )?;
        let large = if with_large {
            Some(layout.add_image(
                "large-v1",
                &host,
                &[LayerSpec::uncompressed(LARGE_LAYER_MIB * MIB)],
            )?)
        } else {
            None
        };
        let faults = if with_faults {
            let mut layer = |tag: &str| {
                layout.add_image(
                    tag,
                    &host,
                    &[LayerSpec::uncompressed(FAULT_LAYER_MIB * MIB)],
                )
            };
            Some(FaultImages {
                partition: layer("partition-v1")?,
                kills: (1..=KILL_ROUNDS)
                    .map(|round| layer(&format!("kill-{round}-v1")))
                    .collect::<Result<_>>()?,
                disk_full: layer("disk-full-v1")?,
            })
        } else {
            None
        };
        Ok(Self {
            layout,
            app,
            pinned,
            later,
            multi,
            large,
            faults,
            _dir: dir,
        })
    }
}

/// Bytes of the layers a node on `platform` fetches for `image`.
pub fn layer_bytes(image: &TestImage, platform: &Platform) -> Result<u64> {
    let image = image
        .platform(platform)
        .with_context(|| format!("{} has no {platform:?} manifest", image.tag))?;
    Ok(image.layers.iter().map(|l| l.blob.size).sum())
}

/// Digests a node holds once it pulled `image` for `platform`, and so
/// advertises: the index if any, the manifest, the config and the layers.
pub fn digests_held(image: &TestImage, platform: &Platform) -> Result<u64> {
    let held = image
        .platform(platform)
        .with_context(|| format!("{} has no {platform:?} manifest", image.tag))?;
    Ok(u64::from(image.is_index()) + 2 + held.layers.len() as u64)
}

/// Every digest a node on `platform` stores for `image`: the index if any,
/// the manifest, the config and the layers, for
/// [`ContainerdNode::verify_content`](crate::node::ContainerdNode::verify_content).
pub fn stored_digests(image: &TestImage, platform: &Platform) -> Result<Vec<String>> {
    let held = image
        .platform(platform)
        .with_context(|| format!("{} has no {platform:?} manifest", image.tag))?;
    let mut digests = Vec::new();
    if image.is_index() {
        digests.push(image.target.digest.clone());
    }
    digests.push(held.manifest.digest.clone());
    digests.push(held.config.digest.clone());
    digests.extend(held.layers.iter().map(|l| l.blob.digest.clone()));
    Ok(digests)
}

/// A fresh upstream holding one image, `repo:v1`, of `layers` uncompressed
/// layers of `bytes` each, from seeded noise: what the fault tests move.
/// Keep the layout directory while the image is in use.
pub async fn noise_image(
    repo: &str,
    layers: usize,
    bytes: u64,
    seed: u64,
) -> Result<(Upstream, PushedImage, TempDir)> {
    let (upstream, mut pushed, dir) = noise_images(repo, &["v1"], layers, bytes, seed).await?;
    Ok((upstream, pushed.remove(0), dir))
}

/// [`noise_image`] with one image per tag, none sharing a layer.
pub async fn noise_images(
    repo: &str,
    tags: &[&str],
    layers: usize,
    bytes: u64,
    seed: u64,
) -> Result<(Upstream, Vec<PushedImage>, TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("reflektor-e2e-noise-")
        .tempdir_in(crate::node::work_parent())?;
    let layout_dir = dir.path().to_owned();
    let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
    let build = tokio::task::spawn_blocking(move || {
        let mut layout = OciLayout::create(&layout_dir, seed)?;
        let specs = vec![LayerSpec::uncompressed(bytes); layers];
        let images = tags
            .iter()
            .map(|tag| layout.add_image(tag, &Platform::host()?, &specs))
            .collect::<Result<Vec<_>>>()?;
        anyhow::Ok((layout, images))
    });
    let (upstream, built) = tokio::join!(Upstream::start(), build);
    let (upstream, (layout, images)) = (upstream?, built.context("building the images")??);
    let mut pushed = Vec::new();
    for image in &images {
        pushed.push(upstream.push(&layout, image, repo).await?);
    }
    Ok((upstream, pushed, dir))
}
