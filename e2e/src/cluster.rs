//! A cluster as the release gate runs it: containerd nodes built from package
//! sources, one agent on each node that may run one, and one upstream
//! registry they all pull through.
//!
//! Clusters are data, declared in code or in `fixtures/clusters/*.toml`, so a
//! platform team can add a row for the builds it runs without writing Rust.
//! Starting one starts real processes only; everything started is stopped on
//! drop, so a failing or interrupted run leaves no process, mount or
//! directory behind (loopback addresses need no setup on Linux: all of
//! 127/8 reaches `lo`).

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::agent::{self, Backend, Peering, Reflektor};
use crate::cri::Cri;
use crate::deploy::{HostAgent, RunningAgent};
use crate::http;
use crate::node::{ContainerdNode, NodeConfig};
use crate::packages::ContainerdBuild;
use crate::packages::{self, FetchError};
use crate::support::eventually;

/// What a node's containerd must get from the version policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// Accepted: the agent runs on it.
    #[default]
    Supported,
    /// Refused as too old, e.g. containerd 1.4, which cannot read hosts.toml.
    TooOld,
}

/// The images a cluster pulls. `small` is several small single-platform
/// images (by tag, by digest, and one only a restarted node holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    Small,
    MultiArch,
    /// One layer of [`LARGE_LAYER_MIB`] MiB.
    Large,
}

pub const LARGE_LAYER_MIB: u64 = 256;

/// What the scenario does to a running cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// containerd restarts under a running agent.
    ContainerdRestart,
    /// The upstream registry stops; pulls must come from peers.
    UpstreamOffline,
    /// The node serving a large pull dies mid-transfer.
    NodeLoss,
    /// The node serving a pull is cut off from every other mid-transfer:
    /// its packets vanish, and nothing tells the puller.
    Partition,
    /// The serving agent is SIGKILLed mid-transfer, pull after pull, and
    /// comes back as kubelet restarts it.
    AgentKill,
    /// The puller's content store fills up during a pull.
    DiskFull,
}

impl Fault {
    /// The faults the third node pulls its own images under, each a new
    /// single-layer image of [`FAULT_LAYER_MIB`](crate::scenario::FAULT_LAYER_MIB) MiB.
    pub const WITH_IMAGES: [Fault; 3] = [Fault::Partition, Fault::AgentKill, Fault::DiskFull];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// `[A-Za-z0-9-]+`; becomes part of directory names.
    pub name: String,
    /// A package source id, e.g. `debian:bookworm` (see [`packages::parse_source`]).
    pub source: String,
    #[serde(default)]
    pub expect: Expect,
    /// Whether a host that cannot reach this node's package source may skip
    /// the cluster, reported as unavailable. Off by default: the gate must
    /// not pass because Debian's archive was down.
    #[serde(default)]
    pub optional: bool,
}

/// A cluster as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub images: BTreeSet<ImageKind>,
    #[serde(default)]
    pub faults: BTreeSet<Fault>,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeSpec>,
}

impl ClusterSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            images: BTreeSet::new(),
            faults: BTreeSet::new(),
            nodes: Vec::new(),
        }
    }

    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    pub fn node(mut self, name: impl Into<String>, source: impl Into<String>) -> Self {
        self.nodes.push(NodeSpec {
            name: name.into(),
            source: source.into(),
            expect: Expect::Supported,
            optional: false,
        });
        self
    }

    pub fn refused_node(mut self, name: impl Into<String>, source: impl Into<String>) -> Self {
        self.nodes.push(NodeSpec {
            name: name.into(),
            source: source.into(),
            expect: Expect::TooOld,
            optional: false,
        });
        self
    }

    pub fn images(mut self, images: impl IntoIterator<Item = ImageKind>) -> Self {
        self.images.extend(images);
        self
    }

    pub fn faults(mut self, faults: impl IntoIterator<Item = Fault>) -> Self {
        self.faults.extend(faults);
        self
    }

    /// Whether the third node pulls images of its own under a fault.
    pub fn wants_fault_images(&self) -> bool {
        Fault::WITH_IMAGES.iter().any(|f| self.faults.contains(f))
    }

    /// The member that pulls last and meets the faults: the third that runs
    /// the agent, by declaration order.
    pub fn third_member(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.expect == Expect::Supported)
            .nth(2)
            .map(|(i, _)| i)
    }

    /// Parses and checks a cluster file; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let spec: Self = toml::from_str(text).with_context(|| {
            format!(
                "{origin} is not a cluster file; expected `name`, optional `description`, \
                 `images` (small, multi-arch, large), `faults` (containerd-restart, \
                 upstream-offline, node-loss, partition, agent-kill, disk-full) and [[node]] tables with `name`, `source`, \
                 optional `expect` (supported, too-old) and optional `optional` (true lets a \
                 host that cannot reach the node's package source skip the cluster)"
            )
        })?;
        spec.validate().with_context(|| format!("in {origin}"))?;
        Ok(spec)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Every `*.toml` in `dir`, in file name order, which is the matrix's row order.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                paths.push(path);
            }
        }
        paths.sort();
        ensure!(
            !paths.is_empty(),
            "{} holds no *.toml cluster file",
            dir.display()
        );
        let specs = paths
            .iter()
            .map(|path| Self::load(path))
            .collect::<Result<Vec<_>>>()?;
        let mut names = BTreeSet::new();
        for spec in &specs {
            ensure!(
                names.insert(&spec.name),
                "two cluster files in {} are named {:?}; names select rows with --only, so \
                 they must differ",
                dir.display(),
                spec.name
            );
        }
        Ok(specs)
    }

    /// The nodes the agent runs on: those expected to be supported.
    pub fn members(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.iter().filter(|n| n.expect == Expect::Supported)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            is_name(&self.name),
            "cluster name {:?} must be non-empty and use only [A-Za-z0-9-]",
            self.name
        );
        ensure!(
            !self.nodes.is_empty(),
            "cluster {} has no [[node]]",
            self.name
        );
        let mut names = BTreeSet::new();
        for node in &self.nodes {
            ensure!(
                is_name(&node.name),
                "node name {:?} must be non-empty and use only [A-Za-z0-9-]",
                node.name
            );
            ensure!(
                names.insert(&node.name),
                "two nodes of cluster {} are named {:?}",
                self.name,
                node.name
            );
            packages::parse_source(&node.source)
                .with_context(|| format!("node {} of cluster {}", node.name, self.name))?;
        }
        let members = self.members().count();
        // Roles: one node seeds from the upstream, one pulls through it and is
        // restarted, one pulls with the upstream gone and loses its provider.
        ensure!(
            members == 0 || members >= 3,
            "cluster {} runs the agent on {members} node(s); it needs 3 or more (one seeds \
             from the upstream, two pull through peers), or none to check refusals only",
            self.name
        );
        if members > 0 {
            ensure!(
                self.images.contains(&ImageKind::Small),
                "cluster {} lists images {:?}; `small` is required, every pull check uses it",
                self.name,
                self.images
            );
        }
        if self.faults.contains(&Fault::NodeLoss) {
            ensure!(
                self.images.contains(&ImageKind::Large),
                "cluster {}: the node-loss fault cuts a large pull, so `large` must be in images",
                self.name
            );
        }
        Ok(())
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The builds of a cluster's nodes, fetched before anything starts, so a
/// source this host cannot reach marks the cluster unavailable instead of
/// failing it halfway.
pub enum Builds {
    Ready(Vec<ContainerdBuild>),
    /// `(source id, reason)` of the first source that cannot be reached.
    Unavailable {
        source: String,
        reason: String,
    },
}

pub async fn fetch_builds(spec: &ClusterSpec, cache: &Path) -> Result<Builds> {
    let mut builds: Vec<ContainerdBuild> = Vec::new();
    for node in &spec.nodes {
        if let Some(build) = builds.iter().find(|b| b.source == node.source) {
            builds.push(build.clone());
            continue;
        }
        let source = packages::parse_source(&node.source)?;
        let cache = cache.to_owned();
        let fetched = tokio::task::spawn_blocking(move || source.fetch(&cache)).await?;
        match fetched {
            Ok(build) => builds.push(build),
            Err(FetchError::Unavailable { reason }) => {
                return Ok(Builds::Unavailable {
                    source: node.source.clone(),
                    reason,
                });
            }
            Err(FetchError::Failed(error)) => {
                return Err(error.context(format!(
                    "fetching {} for node {} of cluster {}",
                    node.source, node.name, spec.name
                )));
            }
        }
    }
    Ok(Builds::Ready(builds))
}

/// Loopback addresses for the nodes of the clusters this process runs, from
/// 127.0.1.1 on: apart from the integration tests' 127.0.0.N, and distinct
/// between clusters so a dying cluster's sockets never meet the next one's.
fn next_ip() -> Result<IpAddr> {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ensure!(n < 255, "this process ran out of 127.0.1.N node addresses");
    Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 1, n)))
}

/// One node of a running cluster.
pub struct Member {
    pub spec: NodeSpec,
    pub build: ContainerdBuild,
    pub ip: IpAddr,
    pub router: SocketAddr,
    /// `None` once the node is lost.
    pub node: Option<ContainerdNode>,
    pub agent: Option<Box<dyn RunningAgent>>,
    /// Logs kept past the processes that wrote them, by file name: the
    /// agent's once stopped or killed, a cleanup pod's, containerd's once
    /// the node is lost.
    pub saved_logs: Vec<(String, Vec<u8>)>,
}

impl Member {
    pub fn node(&self) -> Result<&ContainerdNode> {
        self.node
            .as_ref()
            .with_context(|| format!("node {} is gone", self.spec.name))
    }

    pub fn node_mut(&mut self) -> Result<&mut ContainerdNode> {
        let name = &self.spec.name;
        self.node
            .as_mut()
            .with_context(|| format!("node {name} is gone"))
    }

    pub fn agent(&self) -> Result<&dyn RunningAgent> {
        self.agent
            .as_deref()
            .with_context(|| format!("node {} runs no agent", self.spec.name))
    }

    pub fn agent_mut(&mut self) -> Result<&mut (dyn RunningAgent + 'static)> {
        let name = &self.spec.name;
        self.agent
            .as_deref_mut()
            .with_context(|| format!("node {name} runs no agent"))
    }

    /// The containerd config of this member of `cluster`, named after both.
    pub fn node_config(&self, cluster: &str) -> NodeConfig {
        NodeConfig::new(format!("{cluster}-{}", self.spec.name))
    }

    /// Starts containerd for this member.
    pub async fn start_node(&mut self, config: NodeConfig) -> Result<()> {
        self.node = Some(ContainerdNode::start(&self.build, config).await?);
        Ok(())
    }

    /// Starts this member's agent, bootstrapped with every member router.
    pub async fn start_agent(
        &mut self,
        reflektor: &Reflektor,
        data_dir: &Path,
        routers: &[SocketAddr],
        me: usize,
    ) -> Result<()> {
        let peering = Peering {
            router: self.router,
            data_dir: data_dir.join(&self.spec.name),
            bootstrap: agent::static_bootstrap(routers, me),
        };
        let node = self.node()?;
        let agent = reflektor
            .start_peer(Backend::Containerd(node), self.ip, peering.clone())
            .await?;
        self.agent = Some(Box::new(HostAgent::new(agent, reflektor.clone(), peering)));
        Ok(())
    }

    /// Pulls `reference` through CRI, as kubelet would, and waits until the
    /// agent has counted at least `expect_from_peers` bytes fetched from
    /// peers for it (the count lands a moment after containerd has read the
    /// last byte).
    pub async fn pull(&self, reference: &str, expect_from_peers: u64) -> Result<Pulled> {
        let agent = self.agent()?;
        let before = agent.metric(&PEER_BYTES).await?;
        let cri = Cri::connect(self.node()?).await?;
        cri.pull_image(reference).await?;
        let counted = || async { anyhow::Ok(agent.metric(&PEER_BYTES).await? - before) };
        let waited = eventually(
            "the agent counting the bytes it fetched from peers",
            || async { Ok(counted().await? >= expect_from_peers as f64) },
        )
        .await;
        let from_peers = counted().await? as u64;
        waited.with_context(|| {
            format!(
                "{} pulled {reference}, but its agent fetched only {from_peers} bytes from \
                 peers, fewer than the {expect_from_peers} layer bytes: the layers came from \
                 elsewhere",
                self.spec.name
            )
        })?;
        Ok(Pulled { from_peers })
    }

    /// SIGKILLs the agent and stops containerd: the node is gone.
    pub async fn lose(&mut self) -> Result<()> {
        let mut killed = Ok(());
        if let Some(agent) = self.agent.take() {
            let log;
            (log, killed) = agent.kill().await;
            self.keep_log("reflektor.log", log);
        }
        if let Some(node) = self.node.take() {
            self.saved_logs.push((
                "containerd.log".to_owned(),
                fs::read(node.log_file()).unwrap_or_default(),
            ));
            let stopped = node.stop().await;
            killed = killed.and(stopped);
        }
        killed
    }

    /// Stops the agent as kubelet does (SIGTERM, then the grace period),
    /// keeping its log, shutdown lines included; an unclean exit is an
    /// error.
    pub async fn stop_agent(&mut self) -> Result<()> {
        let Some(agent) = self.agent.take() else {
            return Ok(());
        };
        let (log, stopped) = agent.stop().await;
        self.keep_log("reflektor.log", log);
        stopped
    }

    /// Keeps a log for the report's directory, past the process that wrote it.
    pub fn keep_log(&mut self, name: &str, log: String) {
        self.saved_logs.push((name.to_owned(), log.into_bytes()));
    }

    /// Copies the member's logs into `dir`: what was saved when it was lost,
    /// else the live files.
    pub fn write_logs(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut logs = self.saved_logs.clone();
        if let Some(node) = &self.node {
            logs.push((
                "containerd.log".to_owned(),
                fs::read(node.log_file()).unwrap_or_default(),
            ));
        }
        if let Some(agent) = &self.agent {
            logs.push(("reflektor.log".to_owned(), agent.log().into_bytes()));
        }
        for (name, bytes) in logs {
            let path = dir.join(name);
            fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Stops the agent (SIGTERM) and containerd; the first error is returned
    /// after both were tried.
    pub async fn stop(&mut self) -> Result<()> {
        let agent = self.stop_agent().await;
        let node = match self.node.take() {
            Some(node) => node.stop().await,
            None => Ok(()),
        };
        agent.and(node)
    }
}

/// `reflektor_advertised_keys` for digests: what a node has told the DHT it holds.
pub const ADVERTISED_DIGESTS: [&str; 2] = ["reflektor_advertised_keys", "kind=\"digest\""];
/// `reflektor_served_bytes_total` of bodies this agent fetched from peers.
pub const PEER_BYTES: [&str; 2] = ["reflektor_served_bytes_total", "source=\"peer\""];
/// `reflektor_served_bytes_total` of bodies this agent read from its own store.
pub const LOCAL_BYTES: [&str; 2] = ["reflektor_served_bytes_total", "source=\"local\""];

/// How many bytes the node's agent fetched from peers for a pull.
#[derive(Debug, Clone, Copy)]
pub struct Pulled {
    pub from_peers: u64,
}

/// Members for `spec` with their builds, addresses and router ports; nothing
/// runs yet.
pub fn members(spec: &ClusterSpec, builds: Vec<ContainerdBuild>) -> Result<Vec<Member>> {
    ensure!(
        builds.len() == spec.nodes.len(),
        "{} builds for {} nodes",
        builds.len(),
        spec.nodes.len()
    );
    spec.nodes
        .iter()
        .zip(builds)
        .map(|(node, build)| {
            let ip = next_ip()?;
            Ok(Member {
                spec: node.clone(),
                build,
                ip,
                router: http::free_port(ip)?,
                node: None,
                agent: None,
                saved_logs: Vec::new(),
            })
        })
        .collect()
}

/// Starts the agents of `roles`, each bootstrapped with all the others, and
/// waits until every one has found a peer.
pub async fn start_agents(
    members: &mut [Member],
    roles: &[usize],
    reflektor: &Reflektor,
    data_dir: &Path,
) -> Result<()> {
    let routers: Vec<_> = roles.iter().map(|&i| members[i].router).collect();
    for (me, &i) in roles.iter().enumerate() {
        members[i]
            .start_agent(reflektor, data_dir, &routers, me)
            .await?;
    }
    wait_until_ready(members, roles).await
}

/// Waits until the agent of each of `roles` is ready and has a peer.
pub async fn wait_until_ready(members: &mut [Member], roles: &[usize]) -> Result<()> {
    for &i in roles {
        let member = &mut members[i];
        let name = member.spec.name.clone();
        member
            .agent_mut()?
            .wait_until_ready()
            .await
            .with_context(|| format!("the agent of {name} becoming ready with a peer"))?;
    }
    Ok(())
}

/// Where reports and logs go: `<target>/e2e`.
pub fn default_out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
        .join("e2e")
}

/// The cluster files shipped with the repository.
pub fn default_cluster_dir() -> PathBuf {
    workspace_dir().join("fixtures/clusters")
}

fn workspace_dir() -> &'static Path {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent().unwrap_or(e2e)
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::ContainerdRestart => "containerd-restart",
            Fault::UpstreamOffline => "upstream-offline",
            Fault::NodeLoss => "node-loss",
            Fault::Partition => "partition",
            Fault::AgentKill => "agent-kill",
            Fault::DiskFull => "disk-full",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_cluster_files_load() {
        let specs = ClusterSpec::load_dir(&default_cluster_dir()).unwrap();
        assert!(specs.iter().any(|s| s.name == "mixed"));
        let mixed = specs.iter().find(|s| s.name == "mixed").unwrap();
        assert_eq!(mixed.nodes.len(), 4);
        assert_eq!(mixed.members().count(), 3);
    }

    #[test]
    fn a_cluster_declared_in_code_equals_its_file() {
        let code = ClusterSpec::new("x")
            .node("a", "debian:bookworm")
            .node("b", "debian:trixie")
            .node("c", "debian:sid")
            .refused_node("d", "debian:bullseye")
            .images([ImageKind::Small, ImageKind::Large])
            .faults([Fault::NodeLoss]);
        let file = ClusterSpec::from_toml(
            r#"
            name = "x"
            images = ["small", "large"]
            faults = ["node-loss"]
            [[node]]
            name = "a"
            source = "debian:bookworm"
            [[node]]
            name = "b"
            source = "debian:trixie"
            [[node]]
            name = "c"
            source = "debian:sid"
            [[node]]
            name = "d"
            source = "debian:bullseye"
            expect = "too-old"
            "#,
            "test",
        )
        .unwrap();
        assert_eq!(code, file);
        code.validate().unwrap();
    }

    #[test]
    fn the_third_member_skips_refused_nodes_and_faults_choose_their_images() {
        let spec = ClusterSpec::new("x")
            .refused_node("old", "debian:bullseye")
            .node("a", "debian:sid")
            .node("b", "debian:trixie")
            .node("c", "debian:bookworm")
            .node("d", "debian:bookworm")
            .images([ImageKind::Small]);
        assert_eq!(spec.third_member(), Some(3));
        assert!(!spec.clone().faults([Fault::NodeLoss]).wants_fault_images());
        for fault in Fault::WITH_IMAGES {
            assert!(spec.clone().faults([fault]).wants_fault_images(), "{fault}");
        }
        let two = ClusterSpec::new("y")
            .node("a", "debian:sid")
            .node("b", "debian:sid");
        assert_eq!(two.third_member(), None);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = |text: &str| format!("{:#}", ClusterSpec::from_toml(text, "f.toml").unwrap_err());
        let e = err("name = \"x\"\n[[node]]\nname = \"a\"\nsource = \"gentoo:1\"\n");
        assert!(e.contains("gentoo"), "{e}");
        let e = err(
            "name = \"x\"\nimages = [\"huge\"]\n[[node]]\nname = \"a\"\nsource = \"debian:sid\"\n",
        );
        assert!(e.contains("not a cluster file"), "{e}");
        let e = err(
            "name = \"x\"\nimages = [\"small\"]\n[[node]]\nname = \"a\"\nsource = \"debian:sid\"\n",
        );
        assert!(e.contains("needs 3 or more"), "{e}");
        let e = err(
            "name = \"x\"\nimages = [\"small\"]\nfaults = [\"node-loss\"]\n\
             [[node]]\nname = \"a\"\nsource = \"debian:sid\"\n\
             [[node]]\nname = \"b\"\nsource = \"debian:sid\"\n\
             [[node]]\nname = \"c\"\nsource = \"debian:sid\"\n",
        );
        assert!(e.contains("`large` must be in images"), "{e}");
        let e = err("name = \"x y\"\n[[node]]\nname = \"a\"\nsource = \"debian:sid\"\n");
        assert!(e.contains("[A-Za-z0-9-]"), "{e}");
    }
}
