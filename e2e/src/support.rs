//! Shared pieces of the integration tests: the cached build of a suite,
//! nodes with peered agents, the root check and polling, so that each test
//! file says only what it tests.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Result;

use crate::agent::{self, Agent, Backend, Peering, Reflektor};
use crate::debian::Suite;
use crate::http;
use crate::node::{self, ContainerdNode, NodeConfig};
use crate::packages::{ContainerdBuild, PackageSource, default_cache_dir};

/// The suite's containerd from the shared cache, fetched on first use.
pub async fn build(suite: Suite) -> Result<ContainerdBuild> {
    tokio::task::spawn_blocking(move || Ok(suite.fetch(&default_cache_dir()?)?)).await?
}

/// A node and its agent, peered with the others of its test.
pub struct Peered {
    pub node: ContainerdNode,
    pub agent: Agent,
}

/// Starts one node per suite, named `{prefix}-<suite>` (and `-<n>` for the
/// suite's n-th repeat), on 127.0.0.`net`,
/// `net + 1` and on, each agent bootstrapped with all the others, and waits
/// until every agent is ready; tests that run at once pick apart `net`s.
pub async fn peered(
    reflektor: &Reflektor,
    data: &Path,
    prefix: &str,
    net: u8,
    suites: &[Suite],
) -> Result<Vec<Peered>> {
    let ips: Vec<IpAddr> = (0..suites.len())
        .map(|i| Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, net + u8::try_from(i)?))))
        .collect::<Result<_>>()?;
    let routers = ips
        .iter()
        .map(|ip| http::free_port(*ip))
        .collect::<Result<Vec<_>>>()?;
    let nodes =
        futures::future::try_join_all(suites.iter().enumerate().map(|(i, &suite)| async move {
            let repeat = suites[..i].iter().filter(|s| **s == suite).count();
            let name = match repeat {
                0 => format!("{prefix}-{suite:?}").to_lowercase(),
                n => format!("{prefix}-{suite:?}-{n}").to_lowercase(),
            };
            ContainerdNode::start(&build(suite).await?, NodeConfig::new(name)).await
        }))
        .await?;
    let mut members = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        let peering = Peering {
            router: routers[i],
            data_dir: data.join(node.name()),
            bootstrap: agent::static_bootstrap(&routers, i),
        };
        let agent = reflektor
            .start_peer(Backend::Containerd(&node), ips[i], peering)
            .await?;
        members.push(Peered { node, agent });
    }
    for member in &mut members {
        member.agent.wait_until_ready().await?;
    }
    Ok(members)
}

/// Whether a test that starts containerd may run. Without root it fails
/// loudly, unless `REFLEKTOR_E2E_ALLOW_SKIP=1` says skipping is fine, so a
/// green run never hides tests that did not run.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("REFLEKTOR_E2E_ALLOW_SKIP").as_deref() == Ok("1"),
        "{test} runs containerd and needs root; run as root, or set \
         REFLEKTOR_E2E_ALLOW_SKIP=1 to skip"
    );
    eprintln!("SKIPPED {test}: not root and REFLEKTOR_E2E_ALLOW_SKIP=1");
    false
}

/// The value at a dotted path of tables, e.g. `["plugins", cri, "registry",
/// "config_path"]`, in a parsed containerd config.
pub fn toml_value<'a>(config: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, tables) = path.split_last()?;
    let mut table = config;
    for key in tables {
        table = table.get(*key)?.as_table()?;
    }
    table.get(*last)
}

/// Polls `check` until it holds, failing after the harness's
/// patience (`REFLEKTOR_E2E_PATIENCE_SECS`, 30 s by default): for what a
/// cluster does in the background, such as advertising what a node pulled.
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    reflektor::testing::eventually(what, node::patience()?, check).await
}
