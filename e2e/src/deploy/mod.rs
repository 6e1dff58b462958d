//! How the agent runs on a cluster's nodes, the seam the release gate
//! varies: as a host process ([`ProcessRunner`], quick to start, for
//! development), or as the generated DaemonSet's pod through each node's
//! CRI ([`pod::PodRunner`], what users install).

pub mod pod;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use async_trait::async_trait;
use serde::Serialize;

use crate::agent::{Agent, Backend, Peering, Reflektor};
use crate::cluster::{self, Member};
use crate::node::{ContainerdNode, NodeConfig};
use crate::upstream::Upstream;

/// The two ways, as `--deploy` names them and the report records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Deploy {
    /// `reflektor registry` as a process on the host, with the node's paths.
    #[default]
    Process,
    /// The DaemonSet's pod from `reflektor manifests`, run through the node's
    /// CRI from the agent's image.
    Pod,
}

impl std::fmt::Display for Deploy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Deploy::Process => "process",
            Deploy::Pod => "pod",
        })
    }
}

/// An agent running on a node, however it was deployed.
#[async_trait]
pub trait RunningAgent: Send + Sync {
    /// Its registry: the mirror target containerd is pointed at.
    fn addr(&self) -> SocketAddr;

    fn metrics_addr(&self) -> SocketAddr;

    /// Its log so far.
    fn log(&self) -> String;

    /// An error saying why, once it no longer runs as it was started:
    /// exited, or restarted by kubelet.
    fn check_running(&mut self) -> Result<()>;

    /// Ready as a check means it: `/readyz` answers 200 and it has a peer.
    async fn wait_until_ready(&mut self) -> Result<()>;

    /// SIGKILL, as when its node dies. The log comes back either way.
    async fn kill(self: Box<Self>) -> (String, Result<()>);

    /// SIGKILL of the agent alone, as when it crashes or the OOM killer
    /// strikes, its node staying up; [`RunningAgent::restarted`] brings it
    /// back. Crashes made this way are not the hidden restarts that
    /// [`RunningAgent::check_running`] reports.
    async fn crash(&mut self) -> Result<()>;

    /// The crashed agent running and ready again with a peer, as kubelet
    /// brings a DaemonSet's pod back: started again on the same node, ports
    /// and identity, or, as a pod, restarted by the kubelet double after its
    /// crash-loop back-off.
    async fn restarted(&mut self, node: &ContainerdNode) -> Result<()>;

    /// Stopped as kubelet stops it (SIGTERM, then the grace period); an
    /// unclean exit is an error. The log comes back either way.
    async fn stop(self: Box<Self>) -> (String, Result<()>);

    /// What the report should say about how it runs.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// How long it took from start to Ready, where that is measured.
    fn ready_after(&self) -> Option<std::time::Duration> {
        None
    }

    /// A metric's value, summed over the lines of `/metrics` that contain
    /// every needle; 0 when none does.
    async fn metric(&self, needles: &[&str]) -> Result<f64> {
        crate::agent::metric_at(self.metrics_addr(), needles).await
    }
}

/// An agent as a host process, with what it takes to start it again as
/// the same node.
pub struct HostAgent {
    agent: Agent,
    reflektor: Reflektor,
    peering: Peering,
    /// The logs of the processes it crashed as, oldest first.
    earlier_logs: String,
}

impl HostAgent {
    pub fn new(agent: Agent, reflektor: Reflektor, peering: Peering) -> Self {
        HostAgent {
            agent,
            reflektor,
            peering,
            earlier_logs: String::new(),
        }
    }
}

#[async_trait]
impl RunningAgent for HostAgent {
    fn addr(&self) -> SocketAddr {
        self.agent.addr()
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.agent.metrics_addr()
    }

    fn log(&self) -> String {
        format!("{}{}", self.earlier_logs, self.agent.log())
    }

    fn check_running(&mut self) -> Result<()> {
        match self.agent.exited()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("the agent exited ({status}):\n{}", self.log()),
        }
    }

    async fn wait_until_ready(&mut self) -> Result<()> {
        self.agent.wait_until_ready().await
    }

    async fn kill(mut self: Box<Self>) -> (String, Result<()>) {
        let killed = self.agent.kill().map(|_| ());
        (self.log(), killed)
    }

    async fn crash(&mut self) -> Result<()> {
        self.agent.kill().map(|_| ())
    }

    async fn restarted(&mut self, node: &ContainerdNode) -> Result<()> {
        let agent = self
            .reflektor
            .restart_peer(Backend::Containerd(node), &self.agent, self.peering.clone())
            .await?;
        let crashed = std::mem::replace(&mut self.agent, agent);
        self.earlier_logs.push_str(&crashed.log());
        self.agent.wait_until_ready().await
    }

    async fn stop(mut self: Box<Self>) -> (String, Result<()>) {
        let status = self.agent.terminate().await;
        let log = self.log();
        let clean = status.and_then(|status| {
            ensure!(status.success(), "the agent exited {status} on SIGTERM");
            Ok(())
        });
        (log, clean)
    }
}

/// Starts, configures and uninstalls the agent on a cluster's nodes.
#[async_trait]
pub trait NodeRunner: Send + Sync {
    fn deploy(&self) -> Deploy;

    /// The config a member's containerd starts with, and what the report
    /// should say about it.
    async fn node_config(
        &self,
        cluster: &str,
        member: &Member,
    ) -> Result<(NodeConfig, Vec<String>)>;

    /// Starts the agent on each of `roles` and waits until every one is
    /// ready and has a peer.
    async fn start(&self, members: &mut [Member], roles: &[usize]) -> Result<()>;

    /// The digests each node holds once its agent runs, before it pulls
    /// anything: what the deployment itself brought (the pod's images).
    fn digests_held_at_start(&self) -> u64 {
        0
    }

    /// Points the member's containerd at its agent, if starting it did not:
    /// `reflektor configuration`, as the init container runs it.
    fn configure(&self, member: &Member, upstream: &Upstream) -> Result<()>;

    /// Uninstalls from a member whose agent was stopped: its certs.d must
    /// be the operator's again.
    async fn cleanup(&self, member: &mut Member) -> Result<()>;
}

/// Agents as host processes, bootstrapped with a static list of each
/// other's routers.
pub struct ProcessRunner {
    pub reflektor: Reflektor,
    /// Where each agent keeps its identity, a directory per node.
    pub data_dir: PathBuf,
}

#[async_trait]
impl NodeRunner for ProcessRunner {
    fn deploy(&self) -> Deploy {
        Deploy::Process
    }

    async fn node_config(
        &self,
        cluster: &str,
        member: &Member,
    ) -> Result<(NodeConfig, Vec<String>)> {
        Ok((member.node_config(cluster), Vec::new()))
    }

    async fn start(&self, members: &mut [Member], roles: &[usize]) -> Result<()> {
        cluster::start_agents(members, roles, &self.reflektor, &self.data_dir).await
    }

    fn configure(&self, member: &Member, upstream: &Upstream) -> Result<()> {
        self.reflektor
            .configure_mirror(member.node()?, member.agent()?.addr(), upstream.addr())
    }

    async fn cleanup(&self, member: &mut Member) -> Result<()> {
        self.reflektor
            .cleanup(member.node()?)
            .with_context(|| format!("uninstalling from {}", member.spec.name))
    }
}
