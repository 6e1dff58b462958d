//! The standard test images on a fresh upstream, shared by the pull tests
//! and the mirror tests so that both exercise the same content.

use anyhow::Result;
use tempfile::TempDir;

use crate::image::{LayerSpec, OciLayout, Platform};
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

/// Builds the images, starts an upstream and pushes them to it.
pub async fn images() -> Result<Images> {
    let upstream = Upstream::start().await?;
    let dir = tempfile::tempdir()?;
    let host = Platform::host()?;
    let mut layout = OciLayout::create(dir.path(), SEED)?;
    let app = layout.add_image(
        "app-v1",
        &host,
        &[
            LayerSpec::gzip(KIB),
            LayerSpec::gzip(256 * KIB),
            LayerSpec::gzip(3 * MIB),
        ],
    )?;
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
