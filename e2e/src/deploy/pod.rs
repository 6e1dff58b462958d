//! The agent as users install it: the generated DaemonSet's pod, taken from
//! the k8s-openapi objects `reflektor manifests` prints, run through each
//! node's CRI by the kubelet test double, from the agent's image pulled
//! from the cluster's upstream registry. Uninstalling runs the cleanup
//! DaemonSet's pod the same way.
//!
//! Where a cluster differs from the harness, the template is given what a
//! real node would give it: the node's containerd paths (each node here
//! keeps them in its own directory), one set of ports for every node (the
//! nodes share the host's network, on addresses of their own), and cluster
//! DNS from a stand-in that answers the bootstrap Service's name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::PodSpec;
use reflektor::manifests::{self, ContainerdPaths, Object, Options, Ports};
use reflektor::mirror_config::MirroredRegistry;

use super::{Deploy, NodeRunner, RunningAgent};
use crate::cluster::Member;
use crate::cluster_dns::ClusterDns;
use crate::cri::Cri;
use crate::kubelet::KubeletPod;
use crate::node::{ContainerdNode, NodeConfig};
use crate::packages::{self, ContainerdBuild, FetchError};
use crate::pod::Pods;
use crate::pod_template::{self, Downward, PodPlan};
use crate::upstream::Upstream;

/// The images a pod-mode cluster runs, as OCI archives.
#[derive(Debug, Clone)]
pub struct PodImages {
    /// `just image`'s `reflektor.oci.tar`.
    pub agent: PathBuf,
    /// The sandbox image built from `reflektor-pause`.
    pub pause: PathBuf,
}

/// A cluster's nodes run the agent as the DaemonSet's pod.
pub struct PodRunner {
    /// The agent's image as the nodes pull it from the upstream.
    image: String,
    /// Its manifest digest, for the report.
    pub image_digest: String,
    pause: String,
    /// Manifest, config and layers of both images: every node holds them.
    image_digests: u64,
    dns: ClusterDns,
    ports: Ports,
    upstream: SocketAddr,
    cache: PathBuf,
    /// The runc for builds whose own cannot run here, found once.
    fallback_runc: tokio::sync::OnceCell<(PathBuf, String)>,
}

impl PodRunner {
    /// Pushes the images to the cluster's upstream and starts its cluster
    /// DNS; `ips` are the nodes' addresses, which share the ports chosen.
    pub async fn new(
        images: &PodImages,
        upstream: &Upstream,
        ips: &[IpAddr],
        cache: &Path,
    ) -> Result<Self> {
        let (image, image_digest) = upstream
            .push_archive(&images.agent, "reflektor/reflektor", "e2e")
            .await
            .with_context(|| format!("pushing {}", images.agent.display()))?;
        let (pause, _) = upstream
            .push_archive(&images.pause, "reflektor/pause", "e2e")
            .await
            .with_context(|| format!("pushing {}", images.pause.display()))?;
        let mut image_digests = 0;
        for repo in ["reflektor/reflektor", "reflektor/pause"] {
            let manifest = upstream.image_manifest(repo, "e2e").await?;
            image_digests += 2 + manifest.layers().len() as u64;
        }
        Ok(PodRunner {
            image,
            image_digest,
            pause,
            image_digests,
            dns: ClusterDns::start().await?,
            ports: shared_ports(ips)?,
            upstream: upstream.addr(),
            cache: cache.to_owned(),
            fallback_runc: tokio::sync::OnceCell::new(),
        })
    }

    /// What `reflektor manifests` would be given for this node: its
    /// containerd's paths, the cluster's ports, the upstream mirrored.
    fn options(&self, node: &ContainerdNode) -> Result<Options> {
        let path = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .with_context(|| format!("{} is not UTF-8", p.display()))
        };
        Ok(Options {
            image: self.image.clone(),
            log_level: "debug".to_owned(),
            containerd: ContainerdPaths {
                socket: path(node.socket())?,
                content: path(&node.content_dir())?,
                certs_d: path(node.certs_dir())?,
                config: path(node.config_file())?,
            },
            ports: self.ports,
            mirrored_registries: vec![self.mirrored()?],
            data_dir: path(&node.dir().join("reflektor-data"))?,
            ..Options::default()
        })
    }

    /// The upstream, as `--mirrored-registries` names it.
    fn mirrored(&self) -> Result<MirroredRegistry> {
        let url = format!("http://{}", self.upstream);
        url.parse()
            .with_context(|| format!("the upstream {url} as a mirrored registry"))
    }

    fn downward(&self, member: &Member, options: &Options) -> Downward {
        Downward {
            node_ip: member.ip.to_string(),
            node_name: member.spec.name.clone(),
            namespace: options.namespace.clone(),
            cluster_dns: Some((
                crate::cluster_dns::ADDRESS.to_string(),
                options.cluster_domain.clone(),
            )),
        }
    }

    /// A runc that runs here, for a build whose own does not: Ubuntu
    /// jammy's (1.3), else Debian bookworm's (1.1), whichever is the first
    /// this host can fetch and run.
    async fn fallback_runc(&self) -> Result<&(PathBuf, String)> {
        self.fallback_runc
            .get_or_try_init(|| self.find_fallback_runc())
            .await
    }

    async fn find_fallback_runc(&self) -> Result<(PathBuf, String)> {
        let mut tried = Vec::new();
        for id in ["ubuntu:jammy", "debian:bookworm"] {
            let source = packages::parse_source(id)?;
            let cache = self.cache.clone();
            let fetched = tokio::task::spawn_blocking(move || source.fetch(&cache)).await?;
            let build: ContainerdBuild = match fetched {
                Ok(build) => build,
                Err(FetchError::Unavailable { reason }) => {
                    tried.push(format!("{id}: {reason}"));
                    continue;
                }
                Err(FetchError::Failed(error)) => {
                    tried.push(format!("{id}: {error:#}"));
                    continue;
                }
            };
            match runc_version(&build).await {
                Ok(version) => return Ok((build.runc_bin(), format!("{id}'s {version}"))),
                Err(error) => tried.push(format!("{id}: {error:#}")),
            }
        }
        bail!("no runc runs on this host: {}", tried.join("; "))
    }
}

#[async_trait]
impl NodeRunner for PodRunner {
    fn deploy(&self) -> Deploy {
        Deploy::Pod
    }

    async fn node_config(
        &self,
        cluster: &str,
        member: &Member,
    ) -> Result<(NodeConfig, Vec<String>)> {
        let mut config = member.node_config(cluster);
        config.sandbox_image = Some(self.pause.clone());
        let mut notes = Vec::new();
        match runc_version(&member.build).await {
            Ok(version) => notes.push(format!("runc: the build's own, {version}")),
            Err(error) => {
                let (runc, which) = self.fallback_runc().await?;
                let why = format!("{error:#}");
                let why = why.lines().last().unwrap_or_default().to_owned();
                notes.push(format!(
                    "runc: {which}, since the build's own cannot run here ({why})"
                ));
                config.runc = Some(runc.clone());
            }
        }
        Ok((config, notes))
    }

    async fn start(&self, members: &mut [Member], roles: &[usize]) -> Result<()> {
        // The headless Service lists every agent pod, ready or not
        // (publishNotReadyAddresses), as soon as it is scheduled.
        let ips = roles
            .iter()
            .map(|&i| match members[i].ip {
                IpAddr::V4(ip) => Ok(ip),
                IpAddr::V6(ip) => bail!(
                    "node {} is at {ip}; the agent's manifests are IPv4 only",
                    members[i].spec.name
                ),
            })
            .collect::<Result<Vec<Ipv4Addr>>>()?;
        let mut named = None;
        for &i in roles {
            let member = &mut members[i];
            let node = member.node()?;
            let options = self.options(node)?;
            let template = daemonset_pod(&manifests::install(&options), "reflektor")?;
            let domain = bootstrap_domain(&template)?;
            if named.as_ref() != Some(&domain) {
                self.dns.set(&domain, ips.clone())?;
                named = Some(domain);
            }
            let plan = pod_template::plan(&template, &self.downward(member, &options))?;
            let agent = PodAgent::start(node, member.ip, &self.image, &plan, self.ports).await?;
            member.agent = Some(Box::new(agent));
        }
        crate::cluster::wait_until_ready(members, roles).await
    }

    fn digests_held_at_start(&self) -> u64 {
        self.image_digests
    }

    /// The init container ran `configuration` before the agent started.
    fn configure(&self, _member: &Member, _upstream: &Upstream) -> Result<()> {
        Ok(())
    }

    /// The cleanup DaemonSet's pod on this node, until its readiness probe
    /// passes (it is Ready once `cleanup` has restored certs.d), then
    /// deleted, as the uninstall's Job waits for and kubectl ends it.
    async fn cleanup(&self, member: &mut Member) -> Result<()> {
        let node = member.node()?;
        let options = self.options(node)?;
        let template = daemonset_pod(&manifests::uninstall(&options), "reflektor-cleanup")?;
        let plan = pod_template::plan(&template, &self.downward(member, &options))?;
        let pods = Pods::connect(node).await?;
        let mut pod = KubeletPod::start(
            &pods,
            "reflektor-cleanup",
            &plan,
            member.ip,
            crate::node::patience()?,
        )
        .await?;
        let ready = pod
            .wait_ready(startup_budget(&plan))
            .await
            .and_then(|_| pod.ensure_never_restarted());
        let deleted = pod.delete().await;
        member.keep_log("reflektor-cleanup.log", pod.log());
        match (ready, deleted) {
            (Ok(()), deleted) => deleted,
            (Err(error), Ok(())) => Err(error),
            (Err(error), Err(deleting)) => {
                Err(error.context(format!("and deleting the cleanup pod failed: {deleting:#}")))
            }
        }
    }
}

/// [`ContainerdBuild::runc_version`], off the async threads.
async fn runc_version(build: &ContainerdBuild) -> Result<String> {
    let build = build.clone();
    tokio::task::spawn_blocking(move || build.runc_version()).await?
}

/// The pod template of the DaemonSet `name` among `objects`.
fn daemonset_pod(objects: &[Object], name: &str) -> Result<PodSpec> {
    objects
        .iter()
        .find_map(|object| match object {
            Object::DaemonSet(daemonset) if daemonset.metadata.name.as_deref() == Some(name) => {
                daemonset.spec.as_ref()?.template.spec.clone()
            }
            _ => None,
        })
        .with_context(|| format!("the manifests have no DaemonSet {name} with a pod template"))
}

/// The name the agent's `--dns-bootstrap-domain` asks cluster DNS for.
fn bootstrap_domain(template: &PodSpec) -> Result<String> {
    template
        .containers
        .iter()
        .flat_map(|c| c.args.iter().flatten())
        .find_map(|arg| arg.strip_prefix("--dns-bootstrap-domain="))
        .map(str::to_owned)
        .context("the agent's container has no --dns-bootstrap-domain")
}

/// How long a container may take to pass its startup probe, as the
/// template allows it (its first container's probe), plus a readiness
/// period.
fn startup_budget(plan: &PodPlan) -> Duration {
    plan.containers
        .first()
        .map(|c| {
            let startup = c
                .startup
                .as_ref()
                .map_or(Duration::ZERO, |p| p.period * p.failure_threshold);
            let readiness = c.readiness.as_ref().map_or(Duration::ZERO, |p| p.period);
            startup + readiness
        })
        .unwrap_or_default()
        .max(Duration::from_secs(10))
}

/// Ports free on every one of `ips`, distinct from each other: the
/// DaemonSet's ports are the same on every node.
fn shared_ports(ips: &[IpAddr]) -> Result<Ports> {
    let first = *ips.first().context("a cluster without nodes")?;
    let mut chosen: Vec<u16> = Vec::new();
    for _ in 0..100 {
        if chosen.len() == 4 {
            break;
        }
        let port = crate::http::free_port(first)?.port();
        let free_everywhere = ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        if free_everywhere && !chosen.contains(&port) {
            chosen.push(port);
        }
    }
    let [registry, router, metrics, cleanup] = chosen[..] else {
        bail!(
            "found no 4 ports free on every node address {ips:?} in 100 tries; is the host \
             short of ports (see /proc/sys/net/ipv4/ip_local_port_range)?"
        );
    };
    Ok(Ports {
        registry,
        router,
        metrics,
        cleanup,
    })
}

/// The DaemonSet's pod on one node, watched by the kubelet double.
struct PodAgent {
    pod: KubeletPod,
    registry: SocketAddr,
    metrics: SocketAddr,
    startup_budget: Duration,
    /// The image, by reference and digest.
    image: String,
    /// How long the node took to pull the agent's image.
    pulled_in: Duration,
}

impl PodAgent {
    /// Pulls the image as kubelet does before it starts a pod, then runs
    /// the pod.
    async fn start(
        node: &ContainerdNode,
        ip: IpAddr,
        image: &str,
        plan: &PodPlan,
        ports: Ports,
    ) -> Result<Self> {
        let pulling = Instant::now();
        Cri::connect(node).await?.pull_image(image).await?;
        let pulled_in = pulling.elapsed();
        let pods = Pods::connect(node).await?;
        let pod = KubeletPod::start(&pods, "reflektor", plan, ip, crate::node::patience()?).await?;
        Ok(PodAgent {
            pod,
            registry: SocketAddr::new(ip, ports.registry),
            metrics: SocketAddr::new(ip, ports.metrics),
            startup_budget: startup_budget(plan),
            image: image.to_owned(),
            pulled_in,
        })
    }
}

#[async_trait]
impl RunningAgent for PodAgent {
    fn addr(&self) -> SocketAddr {
        self.registry
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    fn log(&self) -> String {
        self.pod.log()
    }

    fn check_running(&mut self) -> Result<()> {
        self.pod.ensure_never_restarted()
    }

    async fn wait_until_ready(&mut self) -> Result<()> {
        self.pod.wait_ready(self.startup_budget).await?;
        crate::agent::wait_for_peer(self.metrics)
            .await
            .with_context(|| self.pod.log())
    }

    fn notes(&self) -> Vec<String> {
        vec![format!(
            "agent: the DaemonSet's pod through CRI, from {}; image pulled in {:.1} s",
            self.image,
            self.pulled_in.as_secs_f64()
        )]
    }

    fn ready_after(&self) -> Option<Duration> {
        self.pod.status().first_ready
    }

    async fn kill(mut self: Box<Self>) -> (String, Result<()>) {
        let killed = self.pod.kill().await;
        (self.pod.log(), killed)
    }

    async fn crash(&mut self) -> Result<()> {
        self.pod.crash().await
    }

    /// The back-off before a second restart is kubelet's 10 s, doubling.
    async fn restarted(&mut self, _node: &ContainerdNode) -> Result<()> {
        let within = self.startup_budget + crate::kubelet::MAX_BACKOFF;
        self.pod.wait_restarted(within).await?;
        crate::agent::wait_for_peer(self.metrics)
            .await
            .with_context(|| self.pod.log())
    }

    /// A crash kubelet's restart hid fails here too: in process mode it
    /// would have failed the checks that ran since.
    async fn stop(mut self: Box<Self>) -> (String, Result<()>) {
        let steady = self.pod.ensure_never_restarted();
        let deleted = self.pod.delete().await;
        (self.pod.log(), steady.and(deleted))
    }
}
