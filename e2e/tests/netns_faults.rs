//! Faults that need each node's network to itself: every agent runs in a
//! network namespace of its own, on one bridge, on the same ports (as a
//! DaemonSet's pods do), while containerd and the upstream stay on the
//! host. A link can then be cut, which loopback cannot do, and slowed with
//! tc so that a fault surely lands mid-transfer. Each case is checked by
//! what containerd stored: every blob hashes to its digest, and nothing is
//! left half-written in its ingest directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reflektor_e2e::agent::{self, Agent, Backend, Peering, Reflektor};
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::image::Platform;
use reflektor_e2e::netns::{Netns, Network};
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::scenario;
use reflektor_e2e::support::{self, eventually};
use reflektor_e2e::upstream::{PushedImage, Upstream};

const MIB: u64 = 1024 * 1024;
const SEED: u64 = 20_261_207;
const ADVERTISED_DIGESTS: [&str; 2] = ["reflektor_advertised_keys", "kind=\"digest\""];
const IN_FLIGHT: [&str; 1] = ["reflektor_http_requests_in_flight"];

/// A node: containerd on the host, its agent in the node's namespace.
/// Field order is drop order: the agent dies before its namespace goes.
struct Member {
    agent: Agent,
    node: ContainerdNode,
    peering: Peering,
    netns: Netns,
}

/// Members on one bridge; the bridge goes after them.
struct Cluster {
    members: Vec<Member>,
    _network: Network,
}

/// Starts one member per config, named `{tag}-<suite>`, on network
/// 10.231.`net`.0/24, each agent bootstrapped with all the others.
async fn cluster(
    reflektor: &Reflektor,
    data: &Path,
    tag: &str,
    net: u8,
    nodes: Vec<(Suite, NodeConfig)>,
) -> Result<Cluster> {
    let network = Network::create(tag, net)?;
    let namespaces = (0..nodes.len())
        .map(|i| network.node(u8::try_from(i)?))
        .collect::<Result<Vec<_>>>()?;
    let routers: Vec<_> = namespaces.iter().map(agent::node_router).collect();
    let mut members = Vec::new();
    for (i, ((suite, config), netns)) in nodes.into_iter().zip(namespaces).enumerate() {
        let node = ContainerdNode::start(&support::build(suite).await?, config).await?;
        let peering = Peering {
            router: routers[i],
            data_dir: data.join(node.name()),
            bootstrap: agent::static_bootstrap(&routers, i),
        };
        let agent = reflektor
            .start_peer_in(&netns, Backend::Containerd(&node), peering.clone())
            .await?;
        members.push(Member {
            agent,
            node,
            peering,
            netns,
        });
    }
    for member in &mut members {
        member.agent.wait_until_ready().await?;
    }
    Ok(Cluster {
        members,
        _network: network,
    })
}

/// Three nodes named after `tag`: two holders and the puller, last.
fn three(tag: &str) -> Vec<(Suite, NodeConfig)> {
    [Suite::Bookworm, Suite::Trixie, Suite::Sid]
        .into_iter()
        .map(|suite| {
            let name = format!("{tag}-{suite:?}").to_lowercase();
            (suite, NodeConfig::new(name))
        })
        .collect()
}

/// Pulls `pushed` on every holder from the upstream and waits until each
/// advertises all of it; then points `puller`'s containerd at its agent and
/// stops the upstream, so that the puller can get the image only from peers.
async fn hold_then_go_offline(
    reflektor: &Reflektor,
    holders: &[Member],
    puller: &Member,
    pushed: &PushedImage,
    upstream: &mut Upstream,
) -> Result<()> {
    let held = scenario::digests_held(&pushed.image, &Platform::host()?)? as f64;
    for holder in holders {
        upstream.configure_node(&holder.node)?;
        Cri::connect(&holder.node)
            .await?
            .pull_image(&pushed.by_tag)
            .await?;
    }
    for holder in holders {
        eventually(
            &format!("{} advertising {}", holder.node.name(), pushed.by_tag),
            || async { Ok(holder.agent.metric(&ADVERTISED_DIGESTS).await? >= held) },
        )
        .await?;
    }
    reflektor.configure_mirror(&puller.node, puller.agent.addr(), upstream.addr())?;
    upstream.stop().await
}

/// Which of `holders` is answering a request now, when exactly one is.
async fn serving(holders: &[Member]) -> Result<Option<usize>> {
    let mut serving = Vec::new();
    for (i, holder) in holders.iter().enumerate() {
        if holder.agent.metric(&IN_FLIGHT).await? > 0.0 {
            serving.push(i);
        }
    }
    Ok(match serving[..] {
        [one] => Some(one),
        _ => None,
    })
}

/// How long a partition may stall a pull: the puller's agent gives a peer
/// 10 s of silence in a body before it resumes from another holder, plus
/// slack for a loaded host. The measured stall is printed.
const PARTITION_BUDGET: Duration = Duration::from_secs(15);
/// The puller's link: 256 MiB take about 2.7 s at this rate, so a fault at
/// 64 MiB lands with most of the blob still to come.
const PULLER_MBIT: u32 = 800;
const BIG_BLOB: u64 = 256 * MIB;

/// Two nodes hold a 256 MiB layer; the upstream is stopped; the third
/// pulls it through CRI. When 64 MiB have reached its containerd, the
/// serving holder's link goes down: no RST, no FIN, its packets vanish.
/// The pull must finish from the other holder, resumed at the byte where
/// it broke off, within [`PARTITION_BUDGET`] of stall; the puller's agent
/// must name the lost peer; containerd must hold the layer whole with no
/// ingest left over.
#[tokio::test]
async fn a_partition_mid_transfer_resumes_from_the_other_holder() -> Result<()> {
    if !support::root_or_skip("partition mid-transfer") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let data = tempfile::tempdir()?;
    let ((mut upstream, pushed, _layout), cluster) = tokio::try_join!(
        scenario::noise_image("e2e/partition", 1, BIG_BLOB, SEED),
        cluster(&reflektor, data.path(), "part", 61, three("part")),
    )?;
    let (holders, puller) = cluster.members.split_at(2);
    let puller = &puller[0];
    hold_then_go_offline(&reflektor, holders, puller, &pushed, &mut upstream).await?;
    puller.netns.limit_ingress(PULLER_MBIT)?;

    let cri = Cri::connect(&puller.node).await?;
    let started = Instant::now();
    let pull = cri.pull_image(&pushed.by_tag);
    tokio::pin!(pull);
    let mut cut: Option<(usize, u64, Instant)> = None;
    let (mut last_bytes, mut last_growth, mut stall) = (0, Instant::now(), Duration::ZERO);
    let pulled = loop {
        tokio::select! {
            pulled = &mut pull => break pulled,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let bytes = puller.node.ingest_bytes();
        let now = Instant::now();
        if bytes != last_bytes {
            (last_bytes, last_growth) = (bytes, now);
        } else if cut.is_some() {
            stall = stall.max(now - last_growth);
        }
        if cut.is_none()
            && bytes >= 64 * MIB
            && let Some(victim) = serving(holders).await?
        {
            holders[victim].netns.partition()?;
            cut = Some((victim, bytes, now));
        }
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the pull has not finished after 120 s ({} MiB at the puller); {}",
            bytes / MIB,
            puller.agent.logged("reflektor::registry")
        );
    };
    let took = started.elapsed();
    let Some((victim, at, when)) = cut else {
        bail!("the pull finished before a holder could be cut off mid-transfer");
    };
    holders[victim].netns.heal()?;
    pulled.with_context(|| {
        format!(
            "pulling with {} partitioned; {}",
            holders[victim].node.name(),
            puller.agent.logged("reflektor::registry")
        )
    })?;
    eprintln!(
        "cut off {} with {} MiB of {} MiB at the puller; the pull finished {:?} later, \
         {took:?} in all; containerd's ingest stood still for at most {stall:?}",
        holders[victim].node.name(),
        at / MIB,
        BIG_BLOB / MIB,
        (started + took).duration_since(when),
    );
    ensure!(
        stall <= PARTITION_BUDGET,
        "the pull stood still for {stall:?} after the partition, over {PARTITION_BUDGET:?}"
    );
    let lost = holders[victim].agent.addr().to_string();
    ensure!(
        puller
            .agent
            .log()
            .lines()
            .any(|line| line.contains("WARN") && line.contains(&lost)),
        "the puller's agent did not name {lost} in a warning; {}",
        puller.agent.logged("reflektor::registry")
    );
    puller.node.verify_content(&scenario::stored_digests(
        &pushed.image,
        &Platform::host()?,
    )?)?;
    Ok(())
}

/// How many times the kill loop kills a serving holder, at least.
const KILLS: usize = 3;
/// The puller's link in the kill loop: slow enough that a 256 MiB pull
/// outlasts [`KILLS`] kills and restarts.
const KILL_LOOP_MBIT: u32 = 200;

/// Two nodes hold a 256 MiB layer; the upstream is stopped; the third
/// pulls it while, every 24 MiB, whichever holder's agent is serving gets
/// SIGKILL and is started again on the same node, ports and data dir, as
/// kubelet restarts a crashed pod. The pull must finish with the layer
/// whole, each kill resumed from the holder still up, and the restarted
/// agents must be found again: each advertises all it holds.
#[tokio::test]
async fn killing_the_serving_agent_in_a_loop_loses_nothing() -> Result<()> {
    if !support::root_or_skip("kill -9 loop during a pull") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let data = tempfile::tempdir()?;
    let ((mut upstream, pushed, _layout), mut cluster) = tokio::try_join!(
        scenario::noise_image("e2e/killloop", 1, BIG_BLOB, SEED + 1),
        cluster(&reflektor, data.path(), "kill", 62, three("kill")),
    )?;
    let (holders, puller) = cluster.members.split_at_mut(2);
    let puller = &puller[0];
    hold_then_go_offline(&reflektor, holders, puller, &pushed, &mut upstream).await?;
    puller.netns.limit_ingress(KILL_LOOP_MBIT)?;

    let cri = Cri::connect(&puller.node).await?;
    let started = Instant::now();
    let pull = cri.pull_image(&pushed.by_tag);
    tokio::pin!(pull);
    let mut kills = Vec::new();
    let mut next_kill_at = 24 * MIB;
    let pulled = loop {
        tokio::select! {
            pulled = &mut pull => break pulled,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let bytes = puller.node.ingest_bytes();
        if bytes >= next_kill_at
            && let Some(victim) = serving(holders).await?
        {
            let holder = &mut holders[victim];
            holder.agent.kill()?;
            let killed = Instant::now();
            holder.agent = reflektor
                .start_peer_in(
                    &holder.netns,
                    Backend::Containerd(&holder.node),
                    holder.peering.clone(),
                )
                .await?;
            holder.agent.wait_until_ready().await?;
            kills.push((holder.node.name().to_owned(), bytes, killed.elapsed()));
            next_kill_at = bytes + 24 * MIB;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(180),
            "the pull has not finished after 180 s ({} MiB at the puller, {} kills); {}",
            bytes / MIB,
            kills.len(),
            puller.agent.logged("reflektor::registry")
        );
    };
    let took = started.elapsed();
    pulled.with_context(|| {
        format!(
            "pulling across {} kills; {}",
            kills.len(),
            puller.agent.logged("reflektor::registry")
        )
    })?;
    for (name, bytes, back) in &kills {
        eprintln!(
            "killed {name}'s agent with {} MiB at the puller; it served again after {back:?}",
            bytes / MIB
        );
    }
    eprintln!(
        "pulled {} MiB across {} kills in {took:?}",
        BIG_BLOB / MIB,
        kills.len()
    );
    ensure!(
        kills.len() >= KILLS,
        "only {} kills landed before the pull finished; expected at least {KILLS}",
        kills.len()
    );
    puller.node.verify_content(&scenario::stored_digests(
        &pushed.image,
        &Platform::host()?,
    )?)?;
    let held = scenario::digests_held(&pushed.image, &Platform::host()?)? as f64;
    for holder in holders.iter() {
        eventually(
            &format!("{}'s restarted agent advertising again", holder.node.name()),
            || async { Ok(holder.agent.metric(&ADVERTISED_DIGESTS).await? >= held) },
        )
        .await?;
    }
    Ok(())
}

/// The puller's content store: room for the small blobs, not the layer.
const SMALL_STORE: u64 = 40 * MIB;
const FULL_LAYER: u64 = 64 * MIB;

/// A node whose disk is full: the puller's content store is a 40 MiB tmpfs
/// and the layer is 64 MiB, coming from its peer. The pull must fail with
/// containerd's "no space left on device", the puller must neither store
/// nor serve any part of the layer, and, once the disk has room, the same
/// pull must succeed and the node advertise the image.
#[tokio::test]
async fn a_full_disk_fails_the_pull_clearly_and_advertises_nothing_corrupt() -> Result<()> {
    if !support::root_or_skip("full content store") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let data = tempfile::tempdir()?;
    let nodes = vec![
        (Suite::Bookworm, NodeConfig::new("full-holder")),
        (
            Suite::Sid,
            NodeConfig {
                content_store_bytes: Some(SMALL_STORE),
                ..NodeConfig::new("full-puller")
            },
        ),
    ];
    let ((mut upstream, pushed, _layout), cluster) = tokio::try_join!(
        scenario::noise_image("e2e/full", 1, FULL_LAYER, SEED + 2),
        cluster(&reflektor, data.path(), "full", 63, nodes),
    )?;
    let (holder, puller) = (&cluster.members[0], &cluster.members[1]);
    hold_then_go_offline(
        &reflektor,
        std::slice::from_ref(holder),
        puller,
        &pushed,
        &mut upstream,
    )
    .await?;

    let cri = Cri::connect(&puller.node).await?;
    let error = match cri.pull_image(&pushed.by_tag).await {
        Ok(_) => bail!("a {FULL_LAYER}-byte layer fitted into a {SMALL_STORE}-byte store"),
        Err(error) => format!("{error:#}"),
    };
    eprintln!("the pull into a full store failed with: {error}");
    ensure!(
        error.contains("no space left on device"),
        "the pull failed, but not saying the disk is full: {error}"
    );
    let host = Platform::host()?;
    let layer = &pushed
        .image
        .platform(&host)
        .context("the image has the host's platform")?
        .layers[0]
        .blob
        .digest;
    let hex = layer.strip_prefix("sha256:").context("a sha256 digest")?;
    ensure!(
        !puller
            .node
            .content_dir()
            .join("blobs/sha256")
            .join(hex)
            .exists(),
        "containerd committed the layer that did not fit"
    );
    // Asked as a peer asks, the puller answers from its own store alone.
    let path = pushed.mirror_blob_path(layer)?;
    let answer = reflektor_e2e::http::request(
        puller.agent.addr(),
        hyper::Method::HEAD,
        &path,
        &[("x-reflektor-forwarded", "1")],
    )
    .await?;
    ensure!(
        answer.status() == 404,
        "the puller answered {} for the layer it could not store",
        answer.status()
    );

    puller.node.resize_content_store(4 * FULL_LAYER)?;
    cri.pull_image(&pushed.by_tag)
        .await
        .context("pulling again once the store has room")?;
    puller
        .node
        .verify_content(&scenario::stored_digests(&pushed.image, &host)?)?;
    let held = scenario::digests_held(&pushed.image, &host)? as f64;
    eventually("the puller advertising the image once stored", || async {
        Ok(puller.agent.metric(&ADVERTISED_DIGESTS).await? >= held)
    })
    .await?;
    Ok(())
}
