//! Basic auth with real containerd, as Spegel's `basicAuthSecretName` sets
//! it up: the agent reads `username` and `password` from a directory,
//! refuses `/v2/` without them, and `configuration` writes them into
//! hosts.toml, so that containerd sends them. A node configured with the
//! credentials pulls through the agent with the upstream stopped; a node
//! configured without them cannot, and the agent counts its refusals.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, ensure};
use reflektor_e2e::agent::{Backend, Reflektor};
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::http;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::scenario::images;
use reflektor_e2e::support;

#[tokio::test]
async fn containerd_pulls_through_an_agent_that_requires_basic_auth() -> Result<()> {
    if !support::root_or_skip("basic auth") {
        return Ok(());
    }
    let mut images = images().await?;
    let build = support::build(Suite::Bookworm).await?;
    let seed = ContainerdNode::start(&build, NodeConfig::new("auth-seed")).await?;
    images.upstream.configure_node(&seed)?;
    Cri::connect(&seed)
        .await?
        .pull_image(&images.app.by_tag)
        .await?;

    let secret = tempfile::tempdir()?;
    std::fs::write(secret.path().join("username"), "puller")?;
    std::fs::write(secret.path().join("password"), "s3cret")?;
    let with_auth = Reflektor::locate()?.with_basic_auth(secret.path());
    let agent = with_auth
        .start_registry(
            Backend::Containerd(&seed),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 51)),
        )
        .await?;
    let bare = http::get(agent.addr(), "/v2/", "*/*").await?;
    ensure!(
        bare.status() == 401,
        "/v2/ without credentials answered {}",
        bare.status()
    );
    images.upstream.stop().await?;

    let allowed = ContainerdNode::start(&build, NodeConfig::new("auth-allowed")).await?;
    with_auth.configure_mirror(&allowed, agent.addr(), images.upstream.addr())?;
    let hosts = std::fs::read_to_string(
        allowed
            .certs_dir()
            .join(images.upstream.addr().to_string())
            .join("hosts.toml"),
    )
    .context("reading the hosts.toml configuration wrote")?;
    ensure!(
        hosts.contains("Authorization = \"Basic cHVsbGVyOnMzY3JldA==\""),
        "hosts.toml carries no credentials:\n{hosts}"
    );
    Cri::connect(&allowed)
        .await?
        .pull_image(&images.app.by_tag)
        .await
        .context("pulling through the agent with the credentials in hosts.toml")?;

    let refused = ContainerdNode::start(&build, NodeConfig::new("auth-refused")).await?;
    Reflektor::locate()?.configure_mirror(&refused, agent.addr(), images.upstream.addr())?;
    let pulled = Cri::connect(&refused)
        .await?
        .pull_image(&images.app.by_tag)
        .await;
    ensure!(
        pulled.is_err(),
        "a node without the credentials pulled through the agent, with the upstream stopped"
    );
    let refusals = agent
        .metric(&["reflektor_http_requests_total", "status=\"401\""])
        .await?;
    ensure!(refusals >= 1.0, "the agent counted {refusals} 401 answers");

    let status = agent.stop().await?;
    ensure!(status.success(), "the agent exited with {status}");
    for node in [seed, allowed, refused] {
        node.stop().await?;
    }
    Ok(())
}
