//! `reflektor-e2e kube`: the acceptance suite for a real cluster, any
//! cluster a kubeconfig reaches (kind, k3s, rke2, a managed one). What the
//! release gate's pod mode cannot prove is what only a control plane does:
//! a DaemonSet rollout on every schedulable node, DNS bootstrap through a
//! real headless Service, probes as kubelet runs them, and uninstall. This
//! suite proves those with the project's own generated manifests, applied
//! with server-side apply into a namespace it creates, and uninstalls them
//! at the end, on failure and Ctrl-C too (a failed cleanup keeps the
//! namespace, whose cleanup may still be restoring nodes).
//!
//! The suite talks to the cluster through the API server (kube-rs), polling
//! rather than watching, so that every step has a deadline and a progress
//! line; with `--node-shell` it also looks into the nodes. Where no cluster
//! answers, it says so and exits with [`EXIT_UNAVAILABLE`]; it never reports
//! a pass it did not see.

mod agents;
mod connect;
mod node_shell;
mod objects;
mod pulls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams};
use reflektor::manifests::Options;
use reflektor::version::ContainerdPolicy;
use serde::Serialize;

use crate::deploy::Deploy;
use crate::report::{Cell, Check, ClusterOutcome, ClusterResult, Report, Row};

pub use connect::{Connected, connect};
pub use node_shell::{CommandShell, NodeShell};
pub use pulls::TestRegistry;

/// The exit code when no cluster is reachable: neither a pass (0) nor a
/// failed check (1) nor a usage error (2).
pub const EXIT_UNAVAILABLE: u8 = 3;

/// The suite's checks, one cell per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeCheck {
    Verdict,
    Installed,
    Peers,
    PullThroughPeer,
    Identity,
    Restart,
    Cleanup,
}

impl Check for KubeCheck {
    const ALL: &'static [KubeCheck] = &[
        KubeCheck::Verdict,
        KubeCheck::Installed,
        KubeCheck::Peers,
        KubeCheck::PullThroughPeer,
        KubeCheck::Identity,
        KubeCheck::Restart,
        KubeCheck::Cleanup,
    ];
    const HEADING: &'static str = "reflektor cluster acceptance report";
    const LEGEND: &'static str = "`ok` passed, `FAIL` failed, and any other word says why the \
        check did not run on that node.";

    fn key(self) -> &'static str {
        match self {
            KubeCheck::Verdict => "verdict",
            KubeCheck::Installed => "installed",
            KubeCheck::Peers => "peers",
            KubeCheck::PullThroughPeer => "pull-through-peer",
            KubeCheck::Identity => "identity",
            KubeCheck::Restart => "rollout-restart",
            KubeCheck::Cleanup => "cleanup",
        }
    }

    fn title(self) -> &'static str {
        match self {
            KubeCheck::Verdict => "verdict",
            KubeCheck::Installed => "Ready",
            KubeCheck::Peers => "peers",
            KubeCheck::PullThroughPeer => "via peer",
            KubeCheck::Identity => "peer id kept",
            KubeCheck::Restart => "restart",
            KubeCheck::Cleanup => "cleanup",
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            KubeCheck::Verdict => {
                "the agent's version policy on the containerd version the node reports"
            }
            KubeCheck::Installed => {
                "the DaemonSet's pod on the node became Ready within the rollout deadline"
            }
            KubeCheck::Peers => {
                "the node's agent has a peer (`reflektor_peers`), read through the API server's pod proxy"
            }
            KubeCheck::PullThroughPeer => {
                "a fresh test image pushed to --registry, pulled by a pod pinned to one node, then by one pinned to another, whose agent counts its layer bytes as fetched from a peer"
            }
            KubeCheck::Identity => {
                "a deleted agent pod comes back on its node with the same libp2p peer id (the data directory is a hostPath)"
            }
            KubeCheck::Restart => {
                "the DaemonSet restarted by a rollout: the node's new pod Ready, its init container having rewritten hosts.toml for the agent (read from its log)"
            }
            KubeCheck::Cleanup => {
                "after the agent's DaemonSet is deleted, the cleanup DaemonSet's pod on the node became Ready, which it is once certs.d is restored, and the cleanup-wait Job completed"
            }
        }
    }

    fn passed_text(self, row: &Row<Self>) -> Option<String> {
        match self {
            KubeCheck::Verdict => row.verdict.clone(),
            _ => None,
        }
    }
}

/// What to run against.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// `None`: `KUBECONFIG`, `~/.kube/config`, or in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// The agent's image, as the cluster's nodes can pull it.
    pub image: String,
    /// Where the nodes run containerd (k3s and rke2 have their own).
    pub containerd: reflektor::manifests::ContainerdPaths,
    /// A registry the harness can push to and the nodes pull from, for the
    /// pull through a peer; `None` skips that check.
    pub registry: Option<pulls::TestRegistry>,
    /// The namespace to install into; it must not exist yet.
    pub namespace: String,
    /// `--node-shell`: how to run a command on a node (kind: `docker exec
    /// {node}`), for the checks that look into nodes.
    pub node_shell: Option<CommandShell>,
    /// How long each rollout (install, restart, cleanup) may take.
    pub deadline: Duration,
    /// How often the cluster is polled.
    pub poll: Duration,
}

/// A namespace name the API server accepts (a DNS-1123 label), or why not.
pub fn check_namespace(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    anyhow::ensure!(
        valid,
        "--namespace {name:?} is not a namespace name: expected at most 63 lowercase letters, \
         digits and '-', starting and ending with a letter or digit"
    );
    Ok(())
}

/// How a run ended.
pub enum Outcome {
    /// No cluster answered; nothing was checked.
    Unavailable {
        cluster: String,
        reason: String,
    },
    Ran(Report<KubeCheck>),
}

/// Connects, then runs the suite; see the module doc.
pub async fn run(options: &SuiteOptions) -> Result<Outcome> {
    let connected = match connect(options.kubeconfig.as_deref(), options.context.as_deref()).await {
        Ok(connected) => connected,
        Err(unreachable) if unreachable.nothing_there => {
            return Ok(Outcome::Unavailable {
                cluster: unreachable.cluster,
                reason: unreachable.reason,
            });
        }
        Err(wrong) => anyhow::bail!("{}: {}", wrong.cluster, wrong.reason),
    };
    progress(&format!(
        "cluster {} answers: Kubernetes {}",
        connected.url, connected.version
    ));
    let mut suite = Suite::new(connected.client, options.clone(), connected.url);
    if let Some(shell) = &options.node_shell {
        suite.shell = Some(std::sync::Arc::new(shell.clone()));
    }
    let report = suite.run().await?;
    Ok(Outcome::Ran(report))
}

/// One run against one cluster.
pub(crate) struct Suite {
    client: Client,
    options: SuiteOptions,
    cluster: String,
    manifests: Options,
    /// The agent's DaemonSet in those manifests.
    agent: objects::Workload,
    rows: Vec<Row<KubeCheck>>,
    /// Whether this run created the namespace, and so may delete it: never
    /// one that was there before.
    created_namespace: bool,
    /// Nodes whose kubelet is not Ready, with its last word on why.
    not_ready: BTreeMap<String, String>,
    /// Each node's architecture, as its kubelet reports it.
    architectures: BTreeMap<String, String>,
    /// Into the nodes, where the cluster allows it.
    shell: Option<std::sync::Arc<dyn NodeShell>>,
}

impl Suite {
    pub(crate) fn new(client: Client, options: SuiteOptions, cluster: String) -> Self {
        let mut manifests = Options {
            namespace: options.namespace.clone(),
            image: options.image.clone(),
            containerd: options.containerd.clone(),
            log_level: "debug".to_owned(),
            ..Options::default()
        };
        // A registry with a certs.d directory of its own (kind's local one
        // has) is not `_default`'s: name it, and keep what its directory
        // says after the agent.
        if let Some(registry) = &options.registry {
            manifests.mirrored_registries = ["_default", registry.url.as_str()]
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect();
            manifests.prepend_existing = true;
        }
        let agent = objects::Workload::daemonset(
            &reflektor::manifests::install(&manifests),
            reflektor::manifests::NAME,
        )
        .expect("the generated install has the agent's DaemonSet, selecting its pods by label");
        Suite {
            client,
            options,
            cluster,
            manifests,
            agent,
            rows: Vec::new(),
            created_namespace: false,
            not_ready: BTreeMap::new(),
            architectures: BTreeMap::new(),
            shell: None,
        }
    }

    async fn run(mut self) -> Result<Report<KubeCheck>> {
        let started = Instant::now();
        let started_unix = unix_now();
        self.node_rows().await?;
        let checked = tokio::select! {
            checked = self.install_and_check() => checked,
            _ = tokio::signal::ctrl_c() => {
                progress("interrupted: uninstalling what the suite installed; Ctrl-C again leaves it");
                Err(anyhow::anyhow!("interrupted by Ctrl-C"))
            }
        };
        // Whatever happened, nothing the suite created stays behind.
        let namespace = self.options.namespace.clone();
        let removed = tokio::select! {
            removed = self.uninstall() => removed,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!(
                "interrupted again during the uninstall: namespace {namespace} and the nodes' \
                 hosts.toml are left as they are. To clean up: `reflektor manifests --cleanup \
                 --namespace {namespace} | kubectl apply -f -`, wait for the \
                 reflektor-cleanup-wait Job, then `kubectl delete namespace {namespace}`"
            )),
        };
        let outcome = match (&checked, &removed) {
            (Ok(()), Ok(())) => ClusterOutcome::Ran,
            (Err(error), _) | (Ok(()), Err(error)) => ClusterOutcome::Failed {
                error: format!("{error:#}"),
            },
        };
        if let Err(error) = &removed {
            progress(&format!("uninstall: {error:#}"));
        }
        self.fill_not_run(&outcome);
        Ok(Report {
            generated_by: format!("reflektor-e2e {}", env!("CARGO_PKG_VERSION")),
            started_unix,
            seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            filter: Vec::new(),
            clusters: vec![ClusterResult {
                name: self.cluster.clone(),
                description: format!(
                    "the generated manifests in namespace {}, image {}",
                    self.options.namespace, self.options.image
                ),
                seconds: started.elapsed().as_secs_f64().round(),
                outcome,
                rows: self.rows,
            }],
        })
    }

    /// A row per Linux node: what its kubelet and containerd report, and
    /// the agent's verdict on that containerd.
    async fn node_rows(&mut self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes
            .list(&ListParams::default().labels("kubernetes.io/os=linux"))
            .await
            .context("listing the cluster's Linux nodes")?;
        anyhow::ensure!(
            !list.items.is_empty(),
            "the cluster has no node labelled kubernetes.io/os=linux, where the agent runs (its \
             DaemonSet's nodeSelector); kubelet sets that label on Linux nodes, so check that the \
             kubeconfig points at the cluster you mean"
        );
        let policy = ContainerdPolicy::new();
        let mut rows = Vec::new();
        for node in list.items {
            let name = node.metadata.name.clone().unwrap_or_default();
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"));
            if let Some(condition) = ready.filter(|c| c.status != "True") {
                let why = format!(
                    "node {name} is NotReady ({}: {})",
                    condition.reason.as_deref().unwrap_or("no reason"),
                    condition.message.as_deref().unwrap_or("no message")
                );
                progress(&why);
                self.not_ready.insert(name.clone(), why);
            }
            let info = node.status.and_then(|s| s.node_info);
            if let Some(info) = &info {
                self.architectures
                    .insert(name.clone(), info.architecture.clone());
            }
            let kubelet = info
                .as_ref()
                .map_or("unknown", |i| i.kubelet_version.as_str());
            let mut row = Row::new(
                &self.cluster,
                &name,
                &format!("kubelet {kubelet}"),
                crate::cluster::Expect::Supported,
            );
            row.deploy = Some(Deploy::Pod);
            let runtime = info
                .as_ref()
                .map(|i| i.container_runtime_version.clone())
                .unwrap_or_default();
            match runtime.strip_prefix("containerd://") {
                Some(version) => {
                    let verdict = policy.evaluate(version);
                    row.reported = Some(version.to_owned());
                    row.verdict = Some(crate::matrix::verdict_name(verdict.kind));
                    let cell = match verdict.kind {
                        reflektor::version::VerdictKind::TooOld => Cell::Fail {
                            detail: verdict.message,
                        },
                        // The agent goes on and judges by containerd's
                        // config; the version alone proves nothing.
                        reflektor::version::VerdictKind::Unknown => {
                            Cell::not_run("unknown", verdict.message)
                        }
                        reflektor::version::VerdictKind::Supported => {
                            Cell::pass(verdict.message, None)
                        }
                    };
                    row.cells.insert(KubeCheck::Verdict, cell);
                }
                None => {
                    row.cells.insert(
                        KubeCheck::Verdict,
                        Cell::Fail {
                            detail: format!(
                                "the node's runtime is {runtime:?}; reflektor serves containerd only"
                            ),
                        },
                    );
                }
            }
            if let Some(why) = self.not_ready.get(&name) {
                row.notes.push(why.clone());
            }
            rows.push(row);
        }
        self.rows = rows;
        Ok(())
    }

    async fn install_and_check(&mut self) -> Result<()> {
        self.install().await?;
        self.check_peers().await?;
        self.check_pull_through_peer().await?;
        self.check_identity().await?;
        self.check_rollout_restart().await
    }

    /// A node's architecture, `amd64` where its kubelet did not say.
    fn architecture(&self, node: &str) -> String {
        self.architectures
            .get(node)
            .cloned()
            .unwrap_or_else(|| "amd64".to_owned())
    }

    /// The same not-run cell for `check` on every node.
    fn not_run_everywhere(&mut self, check: KubeCheck, short: &str, reason: &str) {
        for row in &mut self.rows {
            row.cells.insert(check, Cell::not_run(short, reason));
        }
    }

    fn row_mut(&mut self, node: &str) -> Option<&mut Row<KubeCheck>> {
        self.rows.iter_mut().find(|row| row.node == node)
    }

    fn record(&mut self, node: &str, check: KubeCheck, cell: Cell) {
        progress(&format!("{node} {}: {}", check.key(), cell.explanation()));
        if let Some(row) = self.row_mut(node) {
            row.cells.insert(check, cell);
        }
    }

    /// Cells no step reached say why.
    fn fill_not_run(&mut self, outcome: &ClusterOutcome) {
        let why = match outcome {
            ClusterOutcome::Failed { error } => {
                format!("not run: the suite stopped at an earlier failure ({error})")
            }
            _ => "not run: no step of the suite reached this node".to_owned(),
        };
        for row in &mut self.rows {
            for &check in KubeCheck::ALL {
                row.cells
                    .entry(check)
                    .or_insert_with(|| Cell::not_run("stopped", why.clone()));
            }
        }
    }
}

/// One progress line on stderr.
fn progress(line: &str) {
    crate::matrix::progress("kube", line);
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
use reflektor::manifests::install as install_objects;

#[cfg(test)]
mod tests;

#[cfg(test)]
#[test]
fn namespaces_are_checked_before_anything_is_sent() {
    check_namespace("reflektor-e2e-1a2b3c").unwrap();
    for bad in ["", "Reflektor", "-x", "x-", "a_b", &"x".repeat(64)] {
        assert!(check_namespace(bad).is_err(), "{bad:?}");
    }
}
