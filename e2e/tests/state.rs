//! State sync against a real containerd: pulling an image advertises its tag
//! and the digests the node holds; removing it withdraws them. The router is
//! replaced by a recording test double here; the router has its own tests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reflektor::metrics::Metrics;
use reflektor::oci::Filter;
use reflektor::runtime::{Containerd, Namespace};
use reflektor::state::{Recorder, StateSync};
use reflektor::store::ContainerdStore;
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::image::Platform;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::scenario::images;
use reflektor_e2e::support;
use tokio_util::sync::CancellationToken;

/// Polls `check` until it holds or patience runs out.
async fn eventually(what: &str, check: impl Fn() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn follows_pulls_and_removals(suite: Suite) -> Result<()> {
    if !support::root_or_skip(&format!("{suite} state sync")) {
        return Ok(());
    }
    let images = images().await?;
    let build = support::build(suite).await?;
    let node = ContainerdNode::start(&build, NodeConfig::new(format!("state-{suite}"))).await?;
    images.upstream.configure_node(&node)?;
    let containerd = Containerd::connect(node.socket()).await?;
    let namespace = Namespace::new("k8s.io")?;
    let store = ContainerdStore::new(containerd.clone(), namespace.clone(), &node.content_dir());
    let recorder = Arc::new(Recorder::default());
    let sync = StateSync::new(
        Arc::new(store),
        recorder.clone(),
        Filter::default(),
        Arc::new(Metrics::new()),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(sync.run(containerd, namespace, stop.clone()));

    let cri = Cri::connect(&node).await?;
    cri.pull_image(&images.multi.by_tag).await?;
    let host = images
        .multi
        .image
        .platform(&Platform::host()?)
        .context("host")?;
    let mut wanted = vec![
        images.multi.by_tag.clone(),
        images.multi.image.target.digest.clone(),
        host.manifest.digest.clone(),
        host.config.digest.clone(),
    ];
    wanted.extend(host.layers.iter().map(|l| l.blob.digest.clone()));
    let has_all = || {
        let keys = recorder.keys();
        wanted.iter().all(|k| keys.contains(k))
    };
    eventually("advertising the pulled image", has_all).await?;
    // The other platform was never pulled, so it is never advertised.
    let other = images
        .multi
        .image
        .other_than(&Platform::host()?)
        .context("another platform")?;
    ensure!(!recorder.keys().contains(&other.manifest.digest));

    cri.remove_image(&images.multi.by_tag).await?;
    eventually("withdrawing the removed tag", || {
        !recorder.keys().contains(&images.multi.by_tag)
    })
    .await?;

    stop.cancel();
    task.await?;
    node.stop().await
}

#[tokio::test]
async fn bookworm_state_follows_pulls_and_removals() -> Result<()> {
    follows_pulls_and_removals(Suite::Bookworm).await
}

#[tokio::test]
async fn sid_state_follows_pulls_and_removals() -> Result<()> {
    follows_pulls_and_removals(Suite::Sid).await
}
