//! A rollout: every node starts pulling the same new image at the same
//! moment, when nobody holds it yet. The nodes must agree on who fetches
//! each layer from the upstream, so that the upstream sends the image
//! about once rather than once per node. How much longer the slowest
//! node's pull takes than a pull alone is reported.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::image::Platform;
use reflektor_e2e::scenario;
use reflektor_e2e::support;
use reflektor_e2e::throttle::Throttle;

const MIB: u64 = 1024 * 1024;
/// Four layers, so that leadership can spread over the nodes.
const LAYERS: usize = 4;
const LAYER: u64 = 32 * MIB;
/// The target: the upstream sends the image at most 1.5 times. (The other
/// target, no node's pull over 1.3 times a lone pull, is reported, not
/// yet met: on 2 cores six containerds and agents hashing the same bytes
/// take several times one pull.)
const MAX_EGRESS: f64 = 1.5;

/// Six nodes with peered agents. One node first pulls an image alone, for
/// the time a pull takes; then all six pull another image of the same
/// shape at once. The upstream is slowed down (SIGSTOP for 40 ms in every
/// 50), as an upstream behind a cluster's internet link is slower than
/// the links between nodes.
#[tokio::test]
async fn six_nodes_that_pull_a_new_image_at_once_fetch_it_about_once() -> Result<()> {
    if !support::root_or_skip("six nodes pulling one new image at once") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let data = tempfile::tempdir()?;
    let suites = [
        Suite::Bookworm,
        Suite::Trixie,
        Suite::Sid,
        Suite::Bookworm,
        Suite::Trixie,
        Suite::Sid,
    ];
    let ((upstream, pushed, _layout), members) = tokio::try_join!(
        scenario::noise_images("e2e/herd", &["lone", "herd"], LAYERS, LAYER, 20_261_207),
        support::peered(&reflektor, data.path(), "herd", 81, &suites),
    )?;
    for member in &members {
        upstream.configure_node(&member.node)?;
        reflektor.configure_mirror(&member.node, member.agent.addr(), upstream.addr())?;
    }
    let host = Platform::host()?;
    let (lone, herd) = (&pushed[0], &pushed[1]);
    let layers = |image: &reflektor_e2e::upstream::PushedImage| -> Result<Vec<(String, u64)>> {
        Ok(image
            .image
            .platform(&host)
            .context("the image has the host's platform")?
            .layers
            .iter()
            .map(|l| (l.blob.digest.clone(), l.blob.size))
            .collect())
    };
    let herd_layers = layers(herd)?;
    ensure!(
        layers(lone)?.iter().all(|l| !herd_layers.contains(l)),
        "the lone and the herd image share a layer"
    );
    let crawling = Throttle::start(upstream.pid().context("the upstream runs")?);

    let started = Instant::now();
    Cri::connect(&members[0].node)
        .await?
        .pull_image(&lone.by_tag)
        .await
        .context("the lone pull")?;
    let alone = started.elapsed();

    let pulls = members.iter().map(|member| {
        let reference = herd.by_tag.clone();
        async move {
            let cri = Cri::connect(&member.node).await?;
            let started = Instant::now();
            cri.pull_image(&reference)
                .await
                .with_context(|| format!("{}'s pull", member.node.name()))?;
            anyhow::Ok(started.elapsed())
        }
    });
    let took = futures::future::try_join_all(pulls).await?;
    drop(crawling);

    let digests = scenario::stored_digests(&herd.image, &host)?;
    for member in &members {
        member.node.verify_content(&digests)?;
    }
    let mut sent = 0;
    for (digest, _) in &herd_layers {
        sent += upstream.blob_bytes_sent(digest)?;
    }
    let size: u64 = herd_layers.iter().map(|(_, size)| size).sum();
    let egress = sent as f64 / size as f64;
    let slowest = took.iter().max().copied().unwrap_or_default();
    let slowdown = slowest.as_secs_f64() / alone.as_secs_f64();
    let mut outcomes = Vec::new();
    for member in &members {
        let mut counts = Vec::new();
        for outcome in ["led", "followed", "waited_out"] {
            let label = format!("outcome=\"{outcome}\"");
            let count = member
                .agent
                .metric(&["reflektor_herd_misses_total", &label])
                .await?;
            counts.push(format!("{outcome} {}", count as u64));
        }
        outcomes.push(format!("{}: {}", member.node.name(), counts.join(", ")));
    }
    eprintln!(
        "herd of {}: the upstream sent the image's {} MiB {egress:.2} times; a lone pull took \
         {alone:.2?}, the herd's {:.2?} (slowest {slowdown:.2}x the lone pull); {}",
        members.len(),
        size / MIB,
        took,
        outcomes.join("; ")
    );
    ensure!(
        egress <= MAX_EGRESS,
        "the upstream sent the image {egress:.2} times to a herd of {} nodes; at most \
         {MAX_EGRESS} was expected. {}",
        members.len(),
        outcomes.join("; ")
    );
    // Waiting out a leader is the fallback, not the way a herd goes.
    ensure!(
        !outcomes.iter().any(|o| !o.contains("waited_out 0")),
        "a node waited out its leader: {}",
        outcomes.join("; ")
    );
    Ok(())
}
