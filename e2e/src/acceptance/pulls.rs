//! A pull through a peer, on a real cluster: a fresh test image (random
//! layers, so no node can hold it already), pushed to `--registry`, pulled
//! by a pod pinned to one node and then by a pod pinned to another, whose
//! agent must count the image's layer bytes as fetched from a peer.
//!
//! The test image has no program: kubelet pulls it, then fails to create
//! the container ("no command specified"). The pull is all that is
//! measured, so that failure is the expected end of each probe pod.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Toleration};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use super::agents::{metric, metrics};
use super::objects::pods_by_node;
use super::{KubeCheck, Suite, progress};
use crate::image::{LayerSpec, OciLayout, Platform};
use crate::report::Cell;

const MIB: u64 = 1024 * 1024;
const PROBE_LABEL: (&str, &str) = ("app.kubernetes.io/name", "reflektor-e2e-probe");

/// Where a probe pod's pull stands, read from its container's state.
#[derive(Debug, PartialEq, Eq)]
pub enum Pull {
    Pending,
    Done,
    Failed(String),
}

/// A probe pod's pull, from its status: an image-pull error fails it; a
/// container that exists, or that kubelet tried to create, was pulled.
pub fn pull_state(pod: &Pod) -> Pull {
    let Some(status) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
    else {
        return Pull::Pending;
    };
    let Some(state) = &status.state else {
        return Pull::Pending;
    };
    if state.running.is_some() || state.terminated.is_some() {
        return Pull::Done;
    }
    let waiting = state.waiting.as_ref();
    match waiting.and_then(|w| w.reason.as_deref()) {
        Some("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull") => {
            Pull::Failed(format!(
                "{}: {}",
                waiting.and_then(|w| w.reason.clone()).unwrap_or_default(),
                waiting.and_then(|w| w.message.clone()).unwrap_or_default()
            ))
        }
        Some(
            "CreateContainerError"
            | "CreateContainerConfigError"
            | "RunContainerError"
            | "StartError"
            | "CrashLoopBackOff",
        ) => Pull::Done,
        _ => Pull::Pending,
    }
}

/// `--registry`: where the test image goes, as the nodes reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRegistry {
    /// With its scheme, as `--mirrored-registries` takes it.
    pub url: String,
    /// `host:port`, as image references name it.
    pub host_port: String,
    pub host: String,
    pub port: u16,
}

impl TestRegistry {
    /// `host:port` (HTTPS) or `http://host:port` / `https://host:port`.
    pub fn parse(given: &str) -> Result<Self> {
        let (scheme, rest) = match given.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
            Some((other, _)) => {
                bail!("--registry {given:?}: scheme {other:?} is not http or https")
            }
            None => ("https", given),
        };
        let host_port = rest.trim_end_matches('/');
        let (host, port) = host_port
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .filter(|(host, _)| !host.is_empty() && !host.contains('/'))
            .with_context(|| {
                format!("--registry {given:?}: expected HOST:PORT, or http://HOST:PORT for a plain-HTTP registry")
            })?;
        Ok(TestRegistry {
            url: format!("{scheme}://{host_port}"),
            host_port: host_port.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    /// Whether the address means each node itself (kind's `localhost:5001`),
    /// where blocking it on a node would block nothing the test means.
    fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The iptables rule (after the chain) that rejects a node's
    /// connections to the registry.
    fn reject_rule(&self) -> String {
        format!("-p tcp -d {} --dport {} -j REJECT", self.host, self.port)
    }
}

/// A pod that pulls `image` on `node` and nothing else.
fn probe_pod(name: &str, namespace: &str, node: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some([(PROBE_LABEL.0.to_owned(), PROBE_LABEL.1.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            // Bypasses the scheduler: this node and no other.
            node_name: Some(node.to_owned()),
            restart_policy: Some("Never".to_owned()),
            automount_service_account_token: Some(false),
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".to_owned()),
                ..Toleration::default()
            }]),
            containers: vec![Container {
                name: "probe".to_owned(),
                image: Some(image.to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

impl Suite {
    pub(super) async fn check_pull_through_peer(&mut self) -> Result<()> {
        let Some(registry) = self.options.registry.clone() else {
            self.not_run_everywhere(
                KubeCheck::PullThroughPeer,
                "no registry",
                "no --registry given: the suite needs a registry the nodes pull from to push its \
                 test image to",
            );
            return Ok(());
        };
        let agent = self.agent.clone();
        let namespace = self.options.namespace.clone();
        let agents = pods_by_node(&self.client, &namespace, &agent.selector).await?;
        // Two nodes of one architecture: the test image's layers differ
        // between architectures, and the second must find the first's.
        let mut by_arch: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for node in agents.keys() {
            by_arch
                .entry(self.architecture(node))
                .or_default()
                .push(node.clone());
        }
        let Some((arch, pair)) = by_arch.into_iter().find(|(_, nodes)| nodes.len() >= 2) else {
            self.not_run_everywhere(
                KubeCheck::PullThroughPeer,
                "alone",
                "no two nodes of one architecture run the agent: none has a peer holding its \
                 platform's layers",
            );
            return Ok(());
        };
        let (seed, puller) = (pair[0].clone(), pair[1].clone());
        // Fresh layers, for amd64 and arm64 nodes alike.
        let dir = tempfile::tempdir()?;
        let mut layout = OciLayout::create(dir.path(), rand::random())?;
        let tag = namespace.clone();
        let image = layout.add_index(
            &tag,
            &[Platform::linux("amd64"), Platform::linux("arm64")],
            &[LayerSpec::gzip(4 * MIB)],
        )?;
        let reference = format!("{}/reflektor-e2e/probe:{tag}", registry.host_port);
        let source = format!("oci:{}:{tag}", dir.path().display());
        crate::upstream::skopeo_copy(&source, &reference, true)
            .await
            .with_context(|| format!("pushing the test image to {}", registry.url))?;
        progress(&format!("pushed {reference}"));
        let bytes: u64 = image
            .platform(&Platform::linux(&arch))
            .with_context(|| format!("the test image has no linux/{arch} manifest"))?
            .layers
            .iter()
            .map(|l| l.blob.size)
            .sum();
        let port = self.manifests.ports.metrics;
        let puller_agent = agents[&puller].metadata.name.clone().unwrap_or_default();
        let peer_bytes = async |client: &kube::Client| -> Result<f64> {
            let text = metrics(client, &namespace, &puller_agent, port).await?;
            Ok(metric(
                &text,
                "reflektor_served_bytes_total",
                &["source=\"peer\""],
            ))
        };
        let before = peer_bytes(&self.client).await?;
        let started = Instant::now();
        let rule = registry.reject_rule();
        // With a way into the node, the registry is out of its reach, so
        // only the peer can serve the pull; a loopback address is the node
        // itself, and blocking it would prove nothing.
        let shell = self.shell.clone().filter(|_| !registry.is_loopback());
        let mut blocked = false;
        let pulled = async {
            self.probe_pull(&seed, &reference).await?;
            if let Some(shell) = &shell {
                shell
                    .run(&puller, &format!("iptables -I OUTPUT {rule}"))
                    .await?;
                blocked = true;
            }
            self.probe_pull(&puller, &reference).await
        }
        .await;
        if let (Some(shell), true) = (&shell, blocked) {
            shell
                .run(&puller, &format!("iptables -D OUTPUT {rule}"))
                .await
                .with_context(|| {
                    format!(
                        "unblocking {} on {puller}; run `iptables -D OUTPUT {rule}` there by hand",
                        registry.host_port
                    )
                })?;
        }
        let with = if blocked {
            format!(" with {} blocked on {puller}", registry.host_port)
        } else {
            String::new()
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let _ = pods
            .delete_collection(
                &DeleteParams::default(),
                &kube::api::ListParams::default()
                    .labels(&format!("{}={}", PROBE_LABEL.0, PROBE_LABEL.1)),
            )
            .await;
        let cell = match pulled {
            Err(error) => Cell::Fail {
                detail: format!("{error:#}"),
            },
            Ok(()) => {
                // The count lands once the agent has sent the last byte.
                let deadline = Instant::now() + self.options.deadline;
                let mut from_peers = peer_bytes(&self.client).await? - before;
                while from_peers < bytes as f64 && Instant::now() < deadline {
                    tokio::time::sleep(self.options.poll).await;
                    from_peers = peer_bytes(&self.client).await? - before;
                }
                if from_peers >= bytes as f64 {
                    Cell::pass(
                        format!(
                            "{reference}: {:.1} MiB from a peer after {seed} pulled it{with}",
                            from_peers / MIB as f64
                        ),
                        Some(started.elapsed()),
                    )
                } else {
                    Cell::Fail {
                        detail: format!(
                            "{puller} pulled {reference}, but its agent fetched {from_peers} bytes \
                             from peers, fewer than the {bytes} layer bytes: check that the \
                             nodes' hosts.toml name the agent for {}, and that containerd \
                             keeps unpacked layers (`reflektor doctor` on the seed says)",
                            registry.host_port
                        ),
                    }
                }
            }
        };
        let failed = cell.is_failure();
        self.record(&puller, KubeCheck::PullThroughPeer, cell);
        self.record(
            &seed,
            KubeCheck::PullThroughPeer,
            Cell::not_run(
                "seed",
                format!("pulled {reference} from {} first", registry.url),
            ),
        );
        if failed {
            bail!("the pull through a peer on {puller} failed");
        }
        Ok(())
    }

    /// Starts a probe pod on `node` and waits until its image is pulled.
    async fn probe_pull(&self, node: &str, image: &str) -> Result<()> {
        let namespace = &self.options.namespace;
        let name = format!("probe-{node}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.create(
            &PostParams::default(),
            &probe_pod(&name, namespace, node, image),
        )
        .await
        .with_context(|| format!("creating pod {name} on {node}"))?;
        let deadline = Instant::now() + self.options.deadline;
        loop {
            let pod = pods
                .get(&name)
                .await
                .with_context(|| format!("reading pod {name}"))?;
            let state = pull_state(&pod);
            if state == Pull::Done {
                return Ok(());
            }
            // kubelet retries a failed pull (ErrImagePull, then back-off):
            // only the deadline ends the wait.
            if Instant::now() >= deadline {
                let why = match state {
                    Pull::Failed(why) => why,
                    _ => super::objects::why_not_ready(&self.client, &pod).await,
                };
                bail!(
                    "{node} did not pull {image} within {:?}: {why}",
                    self.options.deadline
                );
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_state(state: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "probe", "ready": false,
                "restartCount": 0, "image": "x", "imageID": "", "state": state}]}}))
        .unwrap()
    }

    #[test]
    fn a_probe_is_pulled_once_kubelet_tries_to_create_its_container() {
        let waiting = |reason: &str| with_state(serde_json::json!({"waiting": {"reason": reason}}));
        assert_eq!(pull_state(&waiting("ContainerCreating")), Pull::Pending);
        assert_eq!(pull_state(&waiting("CreateContainerError")), Pull::Done);
        assert!(matches!(
            pull_state(&waiting("ImagePullBackOff")),
            Pull::Failed(_)
        ));
        let registry = TestRegistry::parse("10.0.0.5:5000").unwrap();
        assert_eq!(registry.url, "https://10.0.0.5:5000");
        assert_eq!(
            registry.reject_rule(),
            "-p tcp -d 10.0.0.5 --dport 5000 -j REJECT"
        );
        assert!(!registry.is_loopback());
        let kind = TestRegistry::parse("http://localhost:5001").unwrap();
        assert_eq!(
            (kind.url.as_str(), kind.host_port.as_str()),
            ("http://localhost:5001", "localhost:5001")
        );
        assert!(kind.is_loopback());
        assert!(TestRegistry::parse("no-port").is_err());
        assert!(TestRegistry::parse("ftp://x:1").is_err());
        let probe = probe_pod("probe-a", "ns", "node-a", "r/x:1");
        assert_eq!(
            probe.spec.unwrap().node_name.as_deref(),
            Some("node-a"),
            "pinned to its node"
        );
    }
}
