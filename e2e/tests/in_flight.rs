//! A blob a node is still downloading from the upstream, shared with a
//! peer as it arrives: the peer's pull starts on it at once, and the
//! upstream sends it only once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hyper::Method;
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::http;
use reflektor_e2e::image::Platform;
use reflektor_e2e::scenario;
use reflektor_e2e::support::{self, eventually};
use reflektor_e2e::throttle::Throttle;

const MIB: u64 = 1024 * 1024;
const LAYER: u64 = 128 * MIB;
const ADVERTISED_DIGESTS: [&str; 2] = ["reflektor_advertised_keys", "kind=\"digest\""];
const PEER_BYTES: [&str; 2] = ["reflektor_served_bytes_total", "source=\"peer\""];
const IN_FLIGHT_BYTES: [&str; 2] = ["reflektor_served_bytes_total", "source=\"in_flight\""];

/// Two nodes with peered agents, each containerd pointed at its agent
/// ahead of the upstream. The leader pulls a 128 MiB layer from the
/// upstream with its containerd slowed down; with 16 MiB of it in, the
/// follower pulls the same image. The follower's layer must come whole
/// from the leader's download in progress, the upstream must have sent the
/// layer once, and both nodes must hold it whole.
#[tokio::test]
async fn a_peer_pulls_a_layer_while_its_holder_is_still_downloading_it() -> Result<()> {
    if !support::root_or_skip("a layer shared while it downloads") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let data = tempfile::tempdir()?;
    let suites = [Suite::Bookworm, Suite::Sid];
    let ((upstream, pushed, _layout), members) = tokio::try_join!(
        scenario::noise_image("e2e/in-flight", 1, LAYER, 20_261_208),
        support::peered(&reflektor, data.path(), "inflight", 71, &suites),
    )?;
    for member in &members {
        upstream.configure_node(&member.node)?;
        reflektor.configure_mirror(&member.node, member.agent.addr(), upstream.addr())?;
    }
    let (leader, follower) = (&members[0], &members[1]);
    let host = Platform::host()?;
    let blob = &pushed
        .image
        .platform(&host)
        .context("the image has the host's platform")?
        .layers[0]
        .blob;
    let (layer, size) = (blob.digest.clone(), blob.size);

    let started = Instant::now();
    let throttle = Throttle::start(leader.node.pid());
    let leading = tokio::spawn({
        let cri = Cri::connect(&leader.node).await?;
        let reference = pushed.by_tag.clone();
        async move { cri.pull_image(&reference).await }
    });
    while leader.node.ingest_bytes() < 16 * MIB {
        ensure!(
            !leading.is_finished(),
            "the leader's pull ended before 16 MiB of the layer were in"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the leader has {} MiB of the layer after 60 s",
            leader.node.ingest_bytes() / MIB
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("the leader advertising its download", || async {
        Ok(leader.agent.metric(&ADVERTISED_DIGESTS).await? >= 1.0)
    })
    .await?;
    // To peers the download is there; to its own containerd, which is the
    // one making it, never.
    let path = pushed.mirror_blob_path(&layer)?;
    let forwarded = [("x-reflektor-forwarded", "1")];
    let to_peer = http::request(leader.agent.addr(), Method::HEAD, &path, &forwarded).await?;
    ensure!(
        to_peer.status() == 200
            && to_peer
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                == Some(size.to_string().as_str()),
        "a peer asking the leader for the layer in flight got {} {:?}",
        to_peer.status(),
        to_peer.headers()
    );
    let to_itself = http::request(leader.agent.addr(), Method::HEAD, &path, &[]).await?;
    ensure!(
        to_itself.status() == 404,
        "the leader's agent answered its own containerd {} for the layer that containerd is \
         downloading",
        to_itself.status()
    );
    let behind = leader.node.ingest_bytes();
    let follower_started = Instant::now();
    let following = tokio::spawn({
        let cri = Cri::connect(&follower.node).await?;
        let reference = pushed.by_tag.clone();
        async move { cri.pull_image(&reference).await }
    });
    // The follower is on the layer once bytes reach it; the rest of the
    // leader's download may then go at full speed.
    while follower.node.ingest_bytes() < 4 * MIB {
        if following.is_finished() {
            break;
        }
        ensure!(
            follower_started.elapsed() < Duration::from_secs(60),
            "the follower received {} MiB in 60 s; its agent {}",
            follower.node.ingest_bytes() / MIB,
            follower.agent.logged("reflektor::registry")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(throttle);
    let led = leading.await?;
    let followed = following.await?;
    led.context("the leader's pull")?;
    if let Err(error) = followed {
        bail!(
            "the follower's pull failed: {error:#}; its agent {}; the leader's {}",
            follower.agent.logged("reflektor::registry"),
            leader.agent.logged("reflektor::registry")
        );
    }
    let took = follower_started.elapsed();

    let digests = scenario::stored_digests(&pushed.image, &host)?;
    leader.node.verify_content(&digests)?;
    follower.node.verify_content(&digests)?;
    eventually("the follower counting the layer from its peer", || async {
        Ok(follower.agent.metric(&PEER_BYTES).await? >= size as f64)
    })
    .await?;
    let shared = leader.agent.metric(&IN_FLIGHT_BYTES).await?;
    let sent = upstream.blob_bytes_sent(&layer)?;
    eprintln!(
        "the follower started {} MiB behind the leader and pulled in {took:?}; the leader \
         served {} MiB of it from its download in progress; the upstream sent the layer's \
         {} MiB {:.2} times",
        behind / MIB,
        shared as u64 / MIB,
        LAYER / MIB,
        sent as f64 / size as f64
    );
    ensure!(
        shared >= size as f64,
        "the leader served {shared} bytes from its download in progress; the layer has {size}"
    );
    ensure!(
        sent == size,
        "the upstream sent {sent} bytes of the layer; one download is {size}"
    );
    Ok(())
}
