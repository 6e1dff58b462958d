//! Peer to peer with real components: three nodes, each a Debian containerd
//! (bookworm 1.6, trixie 1.7, sid 2.1) with its own agent on its own
//! loopback address, mirrors configured by `reflektor configuration`. One
//! node pulls from the upstream; the upstream stops; the other two pull
//! through their own agents, which find the first node through the DHT.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use reflektor_e2e::agent::{self, Agent, Backend, Peering, Reflektor};
use reflektor_e2e::cri::{Cri, K8sNamespace};
use reflektor_e2e::debian::Suite;
use reflektor_e2e::http;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::scenario::{Images, images};
use reflektor_e2e::support::{self, eventually};

struct Member {
    node: ContainerdNode,
    agent: Agent,
}

/// Starts three members bootstrapped with `bootstrap(i, routers)`.
async fn cluster(
    reflektor: &Reflektor,
    images: &Images,
    data: &Path,
    bootstrap: impl Fn(usize, &[std::net::SocketAddr]) -> Vec<String>,
) -> Result<Vec<Member>> {
    let suites = [Suite::Bookworm, Suite::Trixie, Suite::Sid];
    let ips: Vec<IpAddr> = (0..3)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21 + i as u8)))
        .collect();
    let routers = ips
        .iter()
        .map(|ip| http::free_port(*ip))
        .collect::<Result<Vec<_>>>()?;
    let mut members = Vec::new();
    for (i, suite) in suites.into_iter().enumerate() {
        let build = support::build(suite).await?;
        let node = ContainerdNode::start(&build, NodeConfig::new(format!("p2p-{suite}"))).await?;
        let peering = Peering {
            router: routers[i],
            data_dir: data.join(suite.name()),
            bootstrap: bootstrap(i, &routers),
        };
        let agent = reflektor
            .start_peer(Backend::Containerd(&node), ips[i], peering)
            .await?;
        reflektor.configure_mirror(&node, agent.addr(), images.upstream.addr())?;
        members.push(Member { node, agent });
    }
    for member in &mut members {
        member.agent.wait_until_ready().await?;
    }
    Ok(members)
}

/// The basic pull: node 1 from the upstream, nodes 2 and 3 through peers
/// with the upstream stopped, by tag and by digest, identical digests.
async fn pull_through_peers(members: &[Member], images: &mut Images) -> Result<()> {
    let first = &members[0];
    Cri::connect(&first.node)
        .await?
        .pull_image(&images.app.by_tag)
        .await?;
    // Node 1's agent advertises what its containerd now holds.
    let layers = images.app.image.platforms[0].layers.len() as f64;
    eventually("node 1 advertising the image", || async {
        Ok(first
            .agent
            .metric(&["reflektor_advertised_keys", "digest"])
            .await?
            >= layers + 2.0)
    })
    .await?;

    images.upstream.stop().await?;
    for member in &members[1..] {
        let cri = Cri::connect(&member.node).await?;
        let source = &member.node.build().source;
        for reference in [&images.app.by_tag, &images.app.by_digest] {
            cri.pull_image(reference)
                .await
                .with_context(|| format!("{source}: pulling {reference} through peers"))?;
        }
        let image = K8sNamespace::connect(&member.node)
            .await?
            .image(&images.app.by_tag)
            .await?
            .context("the image is in containerd")?;
        let target = image.target.context("a target")?;
        ensure!(
            target.digest == images.app.image.target.digest,
            "{source}: {}",
            target.digest
        );
        let hits = member
            .agent
            .metric(&["reflektor_mirror_requests_total", "cache=\"hit\""])
            .await?;
        ensure!(hits > 0.0, "{source}: the agent recorded no mirror hit");
        let size: u64 = images.app.image.platforms[0]
            .layers
            .iter()
            .map(|l| l.blob.size)
            .sum();
        // The agent counts a body's bytes once it has written them all, a
        // moment after containerd has read them.
        let from_peers = || {
            member
                .agent
                .metric(&["reflektor_served_bytes_total", "source=\"peer\""])
        };
        eventually(
            "the agent counting the bytes it fetched from peers",
            || async { Ok(from_peers().await? >= size as f64) },
        )
        .await
        .with_context(|| format!("{source}: fewer bytes from peers than the {size} layer bytes"))?;
    }
    Ok(())
}

async fn stop(members: Vec<Member>) -> Result<()> {
    for member in members {
        let status = member.agent.stop().await?;
        ensure!(status.success(), "agent exited with {status}");
        member.node.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn three_nodes_bootstrapped_statically_pull_through_peers() -> Result<()> {
    if !support::root_or_skip("three nodes, static bootstrap") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let mut images = images().await?;
    let data = tempfile::tempdir()?;
    // Every node lists the others, as a DaemonSet's static list would.
    let members = cluster(&reflektor, &images, data.path(), |i, routers| {
        agent::static_bootstrap(routers, i)
    })
    .await?;
    pull_through_peers(&members, &mut images).await?;
    stop(members).await
}

#[tokio::test]
async fn three_nodes_bootstrapped_over_http_pull_through_peers() -> Result<()> {
    if !support::root_or_skip("three nodes, http bootstrap") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let mut images = images().await?;
    let data = tempfile::tempdir()?;
    // Node 1 serves /id; the others fetch it.
    let id = http::free_port(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21)))?;
    let members = cluster(&reflektor, &images, data.path(), |i, _| {
        let mut args = vec![
            "--bootstrap-kind=http".to_owned(),
            format!("--http-bootstrap-url=http://{id}/id"),
        ];
        if i == 0 {
            args.push(format!("--http-bootstrap-addr={id}"));
        }
        args
    })
    .await?;
    pull_through_peers(&members, &mut images).await?;
    stop(members).await
}

/// A libp2p pre-shared key file with 32 random-looking bytes from `seed`.
fn psk_file(dir: &Path, seed: u8) -> Result<std::path::PathBuf> {
    let key: String = (0..32u8)
        .map(|i| format!("{:02x}", i.wrapping_mul(37).wrapping_add(seed)))
        .collect();
    let path = dir.join(format!("psk-{seed}"));
    std::fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{key}\n"))?;
    Ok(path)
}

/// A node with a different pre-shared key never joins: its agent stays
/// unready and finds nothing, while a node with the right key fetches
/// through peers. Then the image is removed on the holder: it is
/// withdrawn there and no longer served from there.
#[tokio::test]
async fn a_different_psk_is_another_cluster_and_removed_images_are_withdrawn() -> Result<()> {
    if !support::root_or_skip("psk isolation and withdrawal") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let images = images().await?;
    let data = tempfile::tempdir()?;
    let ours = psk_file(data.path(), 1)?;
    let theirs = psk_file(data.path(), 2)?;
    let ips: Vec<IpAddr> = (0..3)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 31 + i)))
        .collect();
    let routers = ips
        .iter()
        .map(|ip| http::free_port(*ip))
        .collect::<Result<Vec<_>>>()?;
    let holder_router = format!("/ip4/{}/tcp/{}", routers[0].ip(), routers[0].port());
    let keys = [&ours, &ours, &theirs];
    let mut members = Vec::new();
    for (i, suite) in [Suite::Bookworm, Suite::Sid, Suite::Trixie]
        .into_iter()
        .enumerate()
    {
        let build = support::build(suite).await?;
        let node = ContainerdNode::start(&build, NodeConfig::new(format!("psk-{suite}"))).await?;
        let mut bootstrap = vec![format!("--router-psk-file={}", keys[i].display())];
        bootstrap.extend(match i {
            0 => agent::static_bootstrap(&routers[..2], 0),
            _ => vec![
                "--bootstrap-kind=static".to_owned(),
                format!("--static-bootstrap-peers={holder_router}"),
            ],
        });
        let peering = Peering {
            router: routers[i],
            data_dir: data.path().join(suite.name()),
            bootstrap,
        };
        let agent = reflektor
            .start_peer(Backend::Containerd(&node), ips[i], peering)
            .await?;
        reflektor.configure_mirror(&node, agent.addr(), images.upstream.addr())?;
        members.push(Member { node, agent });
    }
    let [holder, friend, stranger] = &mut members[..] else {
        unreachable!("three members")
    };
    holder.agent.wait_until_ready().await?;
    friend.agent.wait_until_ready().await?;
    Cri::connect(&holder.node)
        .await?
        .pull_image(&images.app.by_tag)
        .await?;
    let layer = images.app.image.platforms[0].layers[0].blob.digest.clone();
    let path = format!("/v2/e2e/app/blobs/{layer}");
    eventually(
        "the friend finding the layer through the holder",
        || async { Ok(http::get(friend.agent.addr(), &path, "*/*").await?.status() == 200) },
    )
    .await?;

    // The stranger's key garbles every handshake: no peer, nothing found.
    // It is Ready all the same once its first bootstrap round is over (it
    // can serve its own content), and says in its log that it has no peer.
    eventually("the stranger ending its first bootstrap round", || async {
        Ok(http::get(stranger.agent.addr(), "/readyz", "*/*")
            .await?
            .status()
            == 200)
    })
    .await?;
    ensure!(
        stranger.agent.log().contains("bootstrap found no peer yet"),
        "a node with another key does not say it has no peer:\n{}",
        stranger.agent.log()
    );
    let found = http::get(stranger.agent.addr(), &path, "*/*").await?;
    ensure!(
        found.status() == 404,
        "another cluster served {path}: {}",
        found.status()
    );
    ensure!(stranger.agent.metric(&["reflektor_peers "]).await? == 0.0);

    // Removing the image withdraws it on the holder and ends serving there.
    let before = holder
        .agent
        .metric(&["reflektor_advertised_keys", "digest"])
        .await?;
    Cri::connect(&holder.node)
        .await?
        .remove_image(&images.app.by_tag)
        .await?;
    eventually("withdrawing the removed image", || async {
        Ok(holder
            .agent
            .metric(&["reflektor_advertised_keys", "tag"])
            .await?
            == 0.0
            && holder
                .agent
                .metric(&["reflektor_advertised_keys", "digest"])
                .await?
                < before)
    })
    .await?;
    let gone = http::request(
        holder.agent.addr(),
        hyper::Method::GET,
        &path,
        &[("x-reflektor-forwarded", "1")],
    )
    .await?;
    ensure!(
        gone.status() == 404,
        "the holder still serves {path}: {}",
        gone.status()
    );
    stop(members).await
}

/// DNS bootstrap through the host's real resolver: `localhost` names both
/// 127.0.0.1 and ::1, so two nodes listening on the same router port, one
/// on each, find each other by the name alone, as pods behind a headless
/// Service do.
#[tokio::test]
async fn two_nodes_bootstrapped_by_dns_pull_through_peers() -> Result<()> {
    if !support::root_or_skip("dns bootstrap") {
        return Ok(());
    }
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    // One port free on both addresses: the name carries no port.
    let port = (0..20)
        .find_map(|_| {
            let port = http::free_port(v4).ok()?.port();
            std::net::TcpListener::bind((v6, port)).ok().map(|_| port)
        })
        .context("no port free on both 127.0.0.1 and ::1")?;
    let reflektor = Reflektor::locate()?;
    let mut images = images().await?;
    let data = tempfile::tempdir()?;
    let mut members = Vec::new();
    for (ip, suite) in [(v4, Suite::Bookworm), (v6, Suite::Sid)] {
        let build = support::build(suite).await?;
        let node = ContainerdNode::start(&build, NodeConfig::new(format!("dns-{suite}"))).await?;
        let peering = Peering {
            router: std::net::SocketAddr::new(ip, port),
            data_dir: data.path().join(suite.name()),
            bootstrap: vec![
                "--bootstrap-kind=dns".to_owned(),
                "--dns-bootstrap-domain=localhost".to_owned(),
            ],
        };
        let agent = reflektor
            .start_peer(Backend::Containerd(&node), ip, peering)
            .await?;
        reflektor.configure_mirror(&node, agent.addr(), images.upstream.addr())?;
        members.push(Member { node, agent });
    }
    for member in &mut members {
        member.agent.wait_until_ready().await?;
    }
    pull_through_peers(&members, &mut images).await?;
    stop(members).await
}
