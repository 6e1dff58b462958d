//! The running agents, seen through the API server: their metrics through
//! the pod proxy, their peer ids and hosts.toml writes from their logs (and
//! hosts.toml itself on the nodes, with `--node-shell`).
//!
//! Why the pod proxy and not a port-forward: it is one plain HTTP GET, it
//! needs only `pods/proxy` on the suite's credentials, and it reaches an
//! agent that listens on the node's address alone (a port-forward connects
//! to the pod's localhost, where a host-network agent bound to `NODE_IP`
//! does not listen).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams};

use super::node_shell::NodeShell;
use super::objects::{is_ready, pods_by_node};
use super::{KubeCheck, Suite, progress};
use crate::report::Cell;

/// Whether a hosts.toml names the agent: TOML with a `[host."http://…:<port>"]`
/// table for the agent's registry port; why not otherwise.
pub fn names_the_agent(text: &str, port: u16) -> Result<(), String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("not TOML ({e}):\n{text}"))?;
    let hosts = table
        .get("host")
        .and_then(|h| h.as_table())
        .ok_or_else(|| format!("no [host.\"…\"] table:\n{text}"))?;
    let suffix = format!(":{port}");
    if hosts
        .keys()
        .any(|key| key.starts_with("http") && key.ends_with(&suffix))
    {
        Ok(())
    } else {
        Err(format!(
            "no host entry for the agent's port {port}, only {:?}",
            hosts.keys().collect::<Vec<_>>()
        ))
    }
}

/// What the hosts.toml watcher saw: reads per node, those that found no
/// file, and each problem.
#[derive(Debug, Default)]
pub struct Watched {
    reads: BTreeMap<String, usize>,
    missing: BTreeMap<String, usize>,
    problems: Vec<(String, String)>,
}

impl Watched {
    /// A node's outcome: how often hosts.toml was read and valid, or the
    /// first problem seen there.
    fn verdict(&self, node: &str) -> Result<String, String> {
        if let Some((_, why)) = self.problems.iter().find(|(n, _)| n == node) {
            return Err(format!("during the rollout, hosts.toml on {node}: {why}"));
        }
        let reads = self.reads.get(node).copied().unwrap_or(0);
        if reads == 0 {
            return Err(format!(
                "hosts.toml was never read on {node} during the rollout"
            ));
        }
        Ok(format!(
            "hosts.toml read {reads} times on the node during the rollout, naming the agent every time"
        ))
    }
}

/// What the watcher's script prints for a hosts.toml that is not there.
const ABSENT: &str = "#absent";

/// Reads `path` on every node through `shell`, every `poll`, until `stop`.
async fn watch_hosts_toml(
    shell: Arc<dyn NodeShell>,
    nodes: Vec<String>,
    path: String,
    port: u16,
    poll: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Watched {
    let mut watched = Watched::default();
    loop {
        for node in &nodes {
            // One read, judged by its own error: testing for the file before
            // or after reading it races a removal or a new file in between.
            let script = format!(
                "if text=$(LC_ALL=C cat '{path}' 2>&1); then printf '%s\\n' \"$text\"; \
                 else case \"$text\" in \
                 *'No such file or directory'*) echo '{ABSENT}' ;; \
                 *) printf '%s\\n' \"$text\" >&2; exit 1 ;; esac; fi"
            );
            let problem = match shell.run(node, &script).await {
                Ok(text) if text.trim() == ABSENT => {
                    *watched.missing.entry(node.clone()).or_default() += 1;
                    None
                }
                Ok(text) => names_the_agent(&text, port).err(),
                Err(error) => Some(format!("{error:#}")),
            };
            *watched.reads.entry(node.clone()).or_default() += 1;
            if let Some(why) = problem {
                watched.problems.push((node.clone(), why));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return watched,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// The API server's proxy path to a pod's port.
pub fn proxy_path(namespace: &str, pod: &str, port: u16, path: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}")
}

/// A metric's value from a `/metrics` text: the sum over the lines that
/// start with `name` and contain every needle.
pub fn metric(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The agent's `/metrics`, through the API server.
pub async fn metrics(client: &Client, namespace: &str, pod: &str, port: u16) -> Result<String> {
    let path = proxy_path(namespace, pod, port, "/metrics");
    let request = http::Request::get(&path)
        .body(Vec::new())
        .context("building the proxy request")?;
    client
        .request_text(request)
        .await
        .with_context(|| format!("GET {path} through the API server's pod proxy"))
}

/// The libp2p peer id the agent logged when its router started.
pub async fn peer_id(client: &Client, pod: &Pod) -> Result<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let log = pods
        .logs(
            &name,
            &LogParams {
                container: Some("registry".to_owned()),
                ..LogParams::default()
            },
        )
        .await
        .with_context(|| format!("reading the log of pod {name}"))?;
    log.lines()
        .filter(|line| line.contains("router started"))
        .find_map(|line| {
            let (_, rest) = line.split_once("peer_id=")?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .with_context(|| format!("pod {name} logged no `router started peer_id=…`"))
}

impl Suite {
    /// Every agent has a peer: a `Peers` cell per node. A one-node cluster
    /// has nobody to find, and says so.
    pub(super) async fn check_peers(&mut self) -> Result<()> {
        let agent = self.agent.clone();
        let pods = pods_by_node(&self.client, &self.options.namespace, &agent.selector).await?;
        let port = self.manifests.ports.metrics;
        let alone = pods.len() < 2;
        let mut failed = Vec::new();
        for (node, pod) in &pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let cell = if alone {
                Cell::not_run("alone", "a one-node cluster: the agent has no peer to find")
            } else {
                let deadline = Instant::now() + self.options.deadline;
                loop {
                    let text = metrics(&self.client, &self.options.namespace, &name, port).await;
                    let peers = text.as_ref().map(|t| metric(t, "reflektor_peers", &[]));
                    match peers {
                        Ok(peers) if peers >= 1.0 => {
                            break Cell::pass(
                                format!("{peers} peer(s), read from pod {name}"),
                                None,
                            );
                        }
                        _ if Instant::now() >= deadline => {
                            failed.push(node.clone());
                            let detail = match peers {
                                Ok(peers) => format!(
                                    "no peer within {:?}: reflektor_peers is {peers}; check that \
                                     the reflektor-bootstrap Service resolves in cluster DNS and \
                                     that the router port ({}) is open between nodes",
                                    self.options.deadline, self.manifests.ports.router
                                ),
                                // The agent may be fine: the API server could not reach it.
                                Err(error) => format!(
                                    "could not read the agent's metrics through the API server: \
                                     {error:#}. The API server must reach the node's address on \
                                     port {port} (a control plane firewalled from the nodes, as \
                                     on private managed clusters, cannot)"
                                ),
                            };
                            break Cell::Fail { detail };
                        }
                        _ => tokio::time::sleep(self.options.poll).await,
                    }
                }
            };
            self.record(node, KubeCheck::Peers, cell);
        }
        if !failed.is_empty() {
            bail!("agents without a peer on {failed:?}");
        }
        Ok(())
    }

    /// One node's agent pod is deleted; the pod that replaces it must log
    /// the same peer id, kept in the hostPath data directory.
    pub(super) async fn check_identity(&mut self) -> Result<()> {
        let agent = self.agent.clone();
        let namespace = self.options.namespace.clone();
        let before = pods_by_node(&self.client, &namespace, &agent.selector).await?;
        let Some((node, pod)) = before.into_iter().next() else {
            bail!("no agent pod to delete");
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let id = peer_id(&self.client, &pod).await?;
        progress(&format!("deleting pod {name} on {node} (peer id {id})"));
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        pods.delete(&name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting pod {name}"))?;
        let started = Instant::now();
        let deadline = started + self.options.deadline;
        let replacement = loop {
            let now = pods_by_node(&self.client, &namespace, &agent.selector).await?;
            match now.get(&node) {
                Some(next) if next.metadata.name != pod.metadata.name && is_ready(next) => {
                    break next.clone();
                }
                _ if Instant::now() >= deadline => {
                    let cell = Cell::Fail {
                        detail: format!(
                            "no Ready replacement for pod {name} within {:?}",
                            self.options.deadline
                        ),
                    };
                    self.record(&node, KubeCheck::Identity, cell);
                    bail!("pod {name} on {node} was not replaced");
                }
                _ => tokio::time::sleep(self.options.poll).await,
            }
        };
        let again = peer_id(&self.client, &replacement).await?;
        let cell = if again == id {
            Cell::pass(
                format!(
                    "pod {} came back as {} with peer id {id}",
                    name,
                    replacement.metadata.name.as_deref().unwrap_or_default()
                ),
                Some(started.elapsed()),
            )
        } else {
            Cell::Fail {
                detail: format!(
                    "pod {name} had peer id {id}; its replacement logged {again}: the data \
                     directory did not keep the identity"
                ),
            }
        };
        let failed = cell.is_failure();
        self.record(&node, KubeCheck::Identity, cell);
        for row in &mut self.rows {
            if row.node != node {
                row.cells.entry(KubeCheck::Identity).or_insert_with(|| {
                    Cell::not_run("n/a", format!("the pod on {node} is the one deleted"))
                });
            }
        }
        if failed {
            bail!("the agent on {node} lost its peer id");
        }
        Ok(())
    }
}

impl Suite {
    /// The agent restarted by a rollout, as `kubectl rollout restart` does
    /// it: every node's new pod Ready, and its `configuration` init
    /// container having rewritten hosts.toml for the agent, read from its
    /// log, and, with a node shell, on the node all through the rollout.
    pub(super) async fn check_rollout_restart(&mut self) -> Result<()> {
        let agent = self.agent.clone();
        let namespace = self.options.namespace.clone();
        let before = pods_by_node(&self.client, &namespace, &agent.selector).await?;
        let daemonsets: Api<DaemonSet> = Api::namespaced(self.client.clone(), &namespace);
        // Any new value restarts the pods; kubectl writes the time.
        let restarted_at = super::unix_now().to_string();
        let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": restarted_at}}}}});
        daemonsets
            .patch(&agent.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("restarting DaemonSet {}", agent.name))?;
        progress(&format!("DaemonSet {} restarted by a rollout", agent.name));
        // With a way into the nodes, hosts.toml is read on each of them all
        // through the rollout: it must name the agent every time.
        let stop = tokio_util::sync::CancellationToken::new();
        let watcher = self.shell.clone().map(|shell| {
            let nodes: Vec<String> = before.keys().cloned().collect();
            let path = format!("{}/_default/hosts.toml", self.manifests.containerd.certs_d);
            let port = self.manifests.ports.registry;
            tokio::spawn(watch_hosts_toml(
                shell,
                nodes,
                path,
                port,
                self.options.poll,
                stop.clone(),
            ))
        });
        let rolled = self.wait_rollout(&agent, KubeCheck::Restart).await;
        stop.cancel();
        let watched = match watcher {
            Some(watcher) => Some(watcher.await.context("the hosts.toml watcher failed")?),
            None => None,
        };
        rolled?;
        let after = pods_by_node(&self.client, &namespace, &agent.selector).await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let mut failed = Vec::new();
        for (node, pod) in &after {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if before.get(node).and_then(|p| p.metadata.name.as_ref()) == Some(&name) {
                failed.push(node.clone());
                let cell = Cell::Fail {
                    detail: format!("pod {name} was not replaced by the rollout"),
                };
                self.record(node, KubeCheck::Restart, cell);
                continue;
            }
            let log = pods
                .logs(
                    &name,
                    &LogParams {
                        container: Some("configuration".to_owned()),
                        ..LogParams::default()
                    },
                )
                .await;
            let log = match log {
                Ok(log) => log,
                Err(error) => {
                    failed.push(node.clone());
                    let cell = Cell::Fail {
                        detail: format!(
                            "could not read the configuration container's log of pod {name}: \
                             {error}"
                        ),
                    };
                    self.record(node, KubeCheck::Restart, cell);
                    continue;
                }
            };
            let wrote: Vec<&str> = log
                .lines()
                .filter(|line| line.contains("wrote ") && line.contains("hosts.toml"))
                .collect();
            let on_node = match &watched {
                None => Ok("no --node-shell, so hosts.toml was not read on the node".to_owned()),
                Some(watched) => watched.verdict(node),
            };
            let cell = match (wrote.is_empty(), on_node) {
                (true, _) => Cell::Fail {
                    detail: format!(
                        "pod {name}'s configuration container wrote no hosts.toml:\n{log}"
                    ),
                },
                (false, Err(why)) => Cell::Fail { detail: why },
                (false, Ok(seen)) => {
                    Cell::pass(format!("pod {name}: {}; {seen}", wrote.join("; ")), None)
                }
            };
            if cell.is_failure() {
                failed.push(node.clone());
            }
            self.record(node, KubeCheck::Restart, cell);
        }
        if !failed.is_empty() {
            bail!("the rollout restart left {failed:?} without a fresh hosts.toml");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watcher on node-a, through a real shell, for the agent's port
    /// 5000; cancel the token to have what it saw.
    fn watch(
        path: &std::path::Path,
        poll: Duration,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Watched>,
    ) {
        let shell: Arc<dyn NodeShell> =
            Arc::new(super::super::CommandShell::parse("env NODE={node}").unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let watcher = tokio::spawn(watch_hosts_toml(
            shell,
            vec!["node-a".to_owned()],
            path.display().to_string(),
            5000,
            poll,
            stop.clone(),
        ));
        (stop, watcher)
    }

    /// The watcher's script run by a real shell: a file that is there and
    /// names the agent, then one that is gone, are told apart.
    #[tokio::test]
    async fn the_watcher_tells_a_missing_hosts_toml_from_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.toml");
        std::fs::write(&path, "[host.\"http://10.0.0.1:5000\"]\n").unwrap();
        let (stop, watcher) = watch(&path, Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Written whole, as the agent writes it: a read of a file still
        // being written would be a different problem.
        let next = dir.path().join("hosts.toml.next");
        std::fs::write(&next, "[host.\"https://elsewhere\"]\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.cancel();
        let watched = watcher.await.unwrap();
        assert!(
            watched.missing.get("node-a").copied().unwrap_or(0) > 0,
            "{watched:?}"
        );
        let error = watched.verdict("node-a").unwrap_err();
        assert!(
            error.contains("no host entry for the agent's port 5000"),
            "{error}"
        );
    }

    /// A hosts.toml removed and written again over and over, as a rollout
    /// does, is only ever read as valid or as absent, never as a failed read.
    #[tokio::test]
    async fn the_watcher_does_not_race_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.toml");
        let (stop, watcher) = watch(&path, Duration::ZERO);
        let churn = {
            let (dir, path) = (dir.path().to_owned(), path.clone());
            tokio::task::spawn_blocking(move || {
                let next = dir.join("hosts.toml.next");
                let until = std::time::Instant::now() + Duration::from_millis(600);
                while std::time::Instant::now() < until {
                    std::fs::write(&next, "[host.\"http://10.0.0.1:5000\"]\n").unwrap();
                    std::fs::rename(&next, &path).unwrap();
                    std::fs::remove_file(&path).unwrap();
                }
            })
        };
        churn.await.unwrap();
        stop.cancel();
        let watched = watcher.await.unwrap();
        assert!(watched.problems.is_empty(), "{watched:?}");
        assert!(
            watched.missing.get("node-a").copied().unwrap_or(0) > 0,
            "{watched:?}"
        );
    }

    #[test]
    fn metrics_are_read_by_name_not_prefix() {
        let text = "# HELP reflektor_peers x\nreflektor_peers 2\nreflektor_peers_total 9\n";
        assert_eq!(metric(text, "reflektor_peers", &[]), 2.0);
        assert_eq!(
            proxy_path("ns", "reflektor-abc", 9090, "/metrics"),
            "/api/v1/namespaces/ns/pods/reflektor-abc:9090/proxy/metrics"
        );
    }
}
