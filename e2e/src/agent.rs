//! The `reflektor` binary as users run it: a real process with real flags,
//! never the library called in-process, so that the tests cover flag parsing,
//! exit codes and output formats too.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reflektor::doctor::Report;

use crate::http;
use crate::netns::Netns;
use crate::node::ContainerdNode;

/// Overrides where the agent binary is looked for.
const BIN_ENV: &str = "REFLEKTOR_BIN";

#[derive(Debug, Clone)]
pub struct Reflektor {
    bin: PathBuf,
    /// `--log-level` of the agents it starts: `debug` for tests, whose
    /// failures the logs explain; benchmarks measure with the default.
    log_level: &'static str,
    /// `--basic-auth-dir` for agents started and mirrors configured.
    basic_auth_dir: Option<PathBuf>,
}

/// What `reflektor doctor --output json` exited with and printed.
#[derive(Debug, Clone)]
pub struct DoctorRun {
    pub exit_code: i32,
    pub report: Report,
}

/// What `reflektor check-version` exited with and printed.
#[derive(Debug, Clone)]
pub struct CheckVersionRun {
    pub exit_code: i32,
    pub output: serde_json::Value,
}

impl Reflektor {
    /// Finds the binary that `cargo build -p reflektor` made. `just test` and
    /// `just e2e` build it first; a plain `cargo test` does not.
    pub fn locate() -> Result<Self> {
        if let Some(bin) = std::env::var_os(BIN_ENV) {
            return Ok(Self {
                bin: bin.into(),
                log_level: "debug",
                basic_auth_dir: None,
            });
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let bin = target.join("debug/reflektor");
        if !bin.is_file() {
            bail!(
                "the agent binary {} is missing. Fix: run `cargo build -p reflektor` first \
                 (`just test` and `just e2e` do), or set {BIN_ENV}",
                bin.display()
            );
        }
        Ok(Self {
            bin,
            log_level: "debug",
            basic_auth_dir: None,
        })
    }

    /// Agents started and mirrors configured from now on read basic-auth
    /// credentials from `dir` (files `username` and `password`).
    pub fn with_basic_auth(mut self, dir: &Path) -> Self {
        self.basic_auth_dir = Some(dir.to_owned());
        self
    }

    /// Agents started from now on log at `level` (e.g. `info`, as users run
    /// them) instead of `debug`.
    pub fn with_log_level(mut self, level: &'static str) -> Self {
        self.log_level = level;
        self
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `reflektor configuration` so that `node`'s containerd asks the
    /// agent at `mirror` first for images of the `upstream` registry, as a
    /// DaemonSet's init container would.
    pub fn configure_mirror(
        &self,
        node: &ContainerdNode,
        mirror: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<()> {
        let output = self.run(|cmd| {
            cmd.arg("configuration")
                .arg("--containerd-registry-config-path")
                .arg(node.certs_dir())
                .arg("--containerd-sock")
                .arg(node.socket())
                .arg("--containerd-config")
                .arg(node.config_file())
                .arg(format!("--mirrored-registries=http://{upstream}"))
                .arg(format!("--mirror-targets=http://{mirror}"));
            if let Some(dir) = &self.basic_auth_dir {
                cmd.arg("--basic-auth-dir").arg(dir);
            }
            cmd
        })?;
        if !output.status.success() {
            bail!(
                "reflektor configuration failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Runs `reflektor cleanup` on `node`'s certs.d, as a DaemonSet's
    /// pre-stop or an uninstall would.
    pub fn cleanup(&self, node: &ContainerdNode) -> Result<()> {
        let output = self.run(|cmd| {
            cmd.arg("cleanup")
                .arg("--containerd-registry-config-path")
                .arg(node.certs_dir())
        })?;
        if !output.status.success() {
            bail!(
                "reflektor cleanup exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Runs doctor against a node, with the node's own config file and the
    /// registry config path reflektor would write to on that node.
    pub fn doctor(&self, node: &ContainerdNode, registry_config_path: &Path) -> Result<DoctorRun> {
        let output = self.run(|cmd| {
            cmd.arg("doctor")
                .arg("--output=json")
                .arg("--containerd-sock")
                .arg(node.socket())
                .arg("--containerd-config")
                .arg(node.config_file())
                .arg("--containerd-registry-config-path")
                .arg(registry_config_path)
        })?;
        let report = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "reflektor doctor printed something that is not its JSON report:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok(DoctorRun {
            exit_code: exit_code(&output)?,
            report,
        })
    }

    pub fn check_version(&self, version: &str) -> Result<CheckVersionRun> {
        let output = self.run(|cmd| cmd.arg("check-version").arg("--").arg(version))?;
        let parsed = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "reflektor check-version {version:?} printed no JSON object; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok(CheckVersionRun {
            exit_code: exit_code(&output)?,
            output: parsed,
        })
    }

    fn run(&self, args: impl FnOnce(&mut Command) -> &mut Command) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        args(&mut cmd);
        cmd.output()
            .with_context(|| format!("cannot run {}", self.bin.display()))
    }
}

/// A signal instead of an exit code means the agent crashed, which is
/// exactly what this project exists to prevent.
fn exit_code(output: &Output) -> Result<i32> {
    match output.status.code() {
        Some(code) => Ok(code),
        None => bail!(
            "reflektor was killed by a signal ({:?}); stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The value of a metric at an agent's metrics address `metrics`, summed
/// over the lines of `/metrics` that contain every needle; 0 when none does.
pub async fn metric_at(metrics: SocketAddr, needles: &[&str]) -> Result<f64> {
    let response = http::get(metrics, "/metrics", "*/*").await?;
    let text = String::from_utf8(response.into_body().to_vec())
        .context("the agent's /metrics is not UTF-8")?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#') && needles.iter().all(|n| line.contains(n)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Waits until the agent whose metrics are at `metrics` has a peer
/// (`reflektor_peers`), within the harness's patience.
pub async fn wait_for_peer(metrics: SocketAddr) -> Result<()> {
    crate::support::eventually("the agent has a peer", move || async move {
        Ok(metric_at(metrics, &["reflektor_peers "])
            .await
            .unwrap_or(0.0)
            >= 1.0)
    })
    .await
}

/// A running `reflektor registry`, stopped with SIGTERM by [`Agent::stop`]
/// and killed on drop, so a failing test leaves no agent behind.
#[derive(Debug)]
pub struct Agent {
    child: std::process::Child,
    /// Whether it was started to find peers.
    peering: bool,
    registry: SocketAddr,
    metrics: SocketAddr,
    log_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// What an agent serves from.
pub enum Backend<'a> {
    Containerd(&'a ContainerdNode),
    OciLayout(&'a Path),
}

/// An agent's part in a cluster: where its router listens, where it keeps
/// its identity, and how it finds the others (`--bootstrap-kind …` flags).
#[derive(Debug, Clone)]
pub struct Peering {
    pub router: SocketAddr,
    pub data_dir: PathBuf,
    pub bootstrap: Vec<String>,
}

/// The bootstrap flags of member `me` of a cluster whose routers listen on
/// `routers`: every other member listed, as a DaemonSet's static list would.
/// A `me` past the end lists them all: a node that bootstraps from seeds.
pub fn static_bootstrap(routers: &[SocketAddr], me: usize) -> Vec<String> {
    let others: Vec<String> = routers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, router)| format!("/ip4/{}/tcp/{}", router.ip(), router.port()))
        .collect();
    vec![
        "--bootstrap-kind=static".to_owned(),
        format!("--static-bootstrap-peers={}", others.join(",")),
    ]
}

/// Agents on loopback, member `i` at 127.0.`net`.`i + 1`, each bootstrapping
/// from the first `seeds` members (a seed from the other seeds): the one
/// launcher for agent clusters without containerd, shared by the
/// benchmarks and runners. Members start when asked, so a runner can time
/// one that joins late.
pub struct LoopbackPeers<'a> {
    reflektor: &'a Reflektor,
    net: u8,
    routers: Vec<SocketAddr>,
    seeds: usize,
    data: tempfile::TempDir,
}

impl<'a> LoopbackPeers<'a> {
    /// Picks a router port for each of `count` members.
    pub fn new(reflektor: &'a Reflektor, net: u8, count: usize, seeds: usize) -> Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("reflektor-peers-")
            .tempdir_in(crate::node::work_parent())
            .context("creating the agents' data directory")?;
        let routers = (0..count)
            .map(|i| http::free_port(member_ip(net, i)))
            .collect::<Result<_>>()?;
        Ok(LoopbackPeers {
            reflektor,
            net,
            routers,
            seeds: seeds.min(count),
            data,
        })
    }

    pub fn ip(&self, i: usize) -> IpAddr {
        member_ip(self.net, i)
    }

    /// Starts member `i` serving `backend`, once it is alive; it is ready
    /// only once it has a peer ([`Agent::wait_until_ready`]).
    pub async fn start(&self, i: usize, backend: Backend<'_>) -> Result<Agent> {
        let peering = Peering {
            router: self.routers[i],
            data_dir: self.data.path().join(format!("agent-{i}")),
            bootstrap: static_bootstrap(&self.routers[..self.seeds], i),
        };
        self.reflektor
            .start_peer(backend, self.ip(i), peering)
            .await
    }
}

fn member_ip(net: u8, i: usize) -> IpAddr {
    let host = u8::try_from(i + 1).expect("at most 254 members on one loopback net");
    IpAddr::V4(std::net::Ipv4Addr::new(127, 0, net, host))
}

/// Spegel's defaults, which every node of a namespaced cluster uses.
pub const NODE_REGISTRY_PORT: u16 = 5000;
pub const NODE_METRICS_PORT: u16 = 9090;
const NODE_ROUTER_PORT: u16 = 5001;

/// Where the agent in `netns` runs its router, for [`Peering::router`].
pub fn node_router(netns: &Netns) -> SocketAddr {
    SocketAddr::new(netns.ip(), NODE_ROUTER_PORT)
}

/// Where an agent listens, and the network namespace it runs in when not
/// the host's.
struct Placement<'a> {
    registry: SocketAddr,
    metrics: SocketAddr,
    netns: Option<&'a Netns>,
}

impl Placement<'_> {
    /// Fresh ports on a loopback address of the host's.
    fn loopback(ip: IpAddr) -> Result<Self> {
        Ok(Placement {
            registry: http::free_port(ip)?,
            metrics: http::free_port(ip)?,
            netns: None,
        })
    }
}

impl Reflektor {
    /// Starts `reflektor registry` on `ip` (a 127.0.0.N of its own) with
    /// fresh ports, serving its own content only, and waits until `/readyz`
    /// answers 200.
    pub async fn start_registry(&self, backend: Backend<'_>, ip: IpAddr) -> Result<Agent> {
        let mut agent = self.start(backend, Placement::loopback(ip)?, None).await?;
        agent.wait_for("/readyz").await?;
        Ok(agent)
    }

    /// Starts an agent that joins a cluster, and waits until it serves
    /// (`/livez`); it is ready only once it has a peer, which is for the
    /// caller to wait for with [`Agent::wait_until_ready`].
    pub async fn start_peer(
        &self,
        backend: Backend<'_>,
        ip: IpAddr,
        peering: Peering,
    ) -> Result<Agent> {
        let mut agent = self
            .start(backend, Placement::loopback(ip)?, Some(peering))
            .await?;
        agent.wait_for("/livez").await?;
        Ok(agent)
    }

    /// An agent started again where `crashed` listened, with `peering`'s
    /// identity: the same node come back, as kubelet restarts a crashed
    /// host-network pod. Waits until it serves (`/livez`).
    pub async fn restart_peer(
        &self,
        backend: Backend<'_>,
        crashed: &Agent,
        peering: Peering,
    ) -> Result<Agent> {
        let placement = Placement {
            registry: crashed.addr(),
            metrics: crashed.metrics_addr(),
            netns: None,
        };
        let mut agent = self.start(backend, placement, Some(peering)).await?;
        agent.wait_for("/livez").await?;
        Ok(agent)
    }

    /// [`Reflektor::start_peer`] inside `netns`, on the ports every node of
    /// a cluster uses ([`NODE_REGISTRY_PORT`], [`NODE_METRICS_PORT`]; its
    /// router on [`node_router`]), as a DaemonSet's pods do. Started again
    /// with the same `peering`, it is the same node come back.
    pub async fn start_peer_in(
        &self,
        netns: &Netns,
        backend: Backend<'_>,
        peering: Peering,
    ) -> Result<Agent> {
        let placement = Placement {
            registry: SocketAddr::new(netns.ip(), NODE_REGISTRY_PORT),
            metrics: SocketAddr::new(netns.ip(), NODE_METRICS_PORT),
            netns: Some(netns),
        };
        let mut agent = self.start(backend, placement, Some(peering)).await?;
        agent.wait_for("/livez").await?;
        Ok(agent)
    }

    async fn start(
        &self,
        backend: Backend<'_>,
        placement: Placement<'_>,
        peering: Option<Peering>,
    ) -> Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("reflektor-agent-")
            .tempdir_in(crate::node::work_parent())
            .context("creating the agent's directory")?;
        let log_file = dir.path().join("reflektor.log");
        let Placement {
            registry,
            metrics,
            netns,
        } = placement;
        let mut cmd = match netns {
            Some(netns) => netns.command(&self.bin),
            None => Command::new(&self.bin),
        };
        cmd.arg("registry")
            .arg(format!("--registry-addr={registry}"))
            .arg(format!("--metrics-addr={metrics}"))
            .arg(format!("--log-level={}", self.log_level))
            .env_clear()
            // Plain text: colour escapes would split the `key=value` fields tests read.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        let log = File::create(&log_file)?;
        cmd.stderr(log.try_clone()?).stdout(log);
        if let Some(dir) = &self.basic_auth_dir {
            cmd.arg("--basic-auth-dir").arg(dir);
        }
        if let Some(peering) = &peering {
            cmd.arg(format!("--router-addr={}", peering.router))
                .arg("--data-dir")
                .arg(&peering.data_dir)
                .args(&peering.bootstrap);
        }
        match backend {
            Backend::Containerd(node) => {
                let certs = node
                    .registry_config_path()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| node.certs_dir().to_owned());
                cmd.arg("--containerd-sock")
                    .arg(node.socket())
                    .arg("--containerd-config")
                    .arg(node.config_file())
                    .arg("--containerd-registry-config-path")
                    .arg(certs)
                    .arg("--containerd-content-path")
                    .arg(node.content_dir());
            }
            Backend::OciLayout(dir) => {
                cmd.arg("--oci-layout").arg(dir);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(Agent {
            child,
            peering: peering.is_some(),
            registry,
            metrics,
            log_file,
            _dir: dir,
        })
    }
}

impl Agent {
    pub fn addr(&self) -> SocketAddr {
        self.registry
    }

    /// The agent's process: benchmarks read its cost from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// The agent's log so far; lossy, because a log line may quote bytes a
    /// peer sent.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_file).unwrap_or_default()).into_owned()
    }

    /// The lines the agent logged from one of its modules, e.g.
    /// `reflektor::registry`, for failure messages: its whole debug log is
    /// mostly libp2p and HTTP/2.
    pub fn logged(&self, module: &str) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|line| line.contains(module)).collect();
        format!("the agent's {module} logged:\n{}", lines.join("\n"))
    }

    /// The libp2p peer id the agent logged when its router started
    /// (`router started peer_id=…`); with peers, that line is written before
    /// the agent serves, so it is there once [`Reflektor::start_peer`] returns.
    pub fn peer_id(&self) -> Result<String> {
        let log = self.log();
        log.lines()
            .filter(|line| line.contains("router started"))
            .find_map(|line| {
                let (_, rest) = line.split_once("peer_id=")?;
                rest.split_whitespace().next().map(str::to_owned)
            })
            .with_context(|| format!("the agent logged no `router started peer_id=…`:\n{log}"))
    }

    /// A metric's value summed over the lines of `/metrics` that contain
    /// every needle, e.g. `["reflektor_advertised_keys", "digest"]`; 0 when
    /// none does, as for a counter nothing has incremented yet.
    pub async fn metric(&self, needles: &[&str]) -> Result<f64> {
        metric_at(self.metrics, needles).await
    }

    /// The exit status if the agent has exited, `None` while it runs.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.child
            .try_wait()
            .context("checking on the reflektor registry process")
    }

    /// SIGKILL, as when a node dies or the OOM killer strikes: no graceful
    /// shutdown, open connections are cut wherever they are. The agent's log
    /// stays readable until it is dropped.
    pub fn kill(&mut self) -> Result<std::process::ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        self.child
            .kill()
            .context("sending SIGKILL to reflektor registry")?;
        self.child
            .wait()
            .context("reaping the killed reflektor registry")
    }

    /// Waits for `/readyz`, and for an agent started to find peers, until
    /// it has one too (`reflektor_peers`): what a test means by ready. The
    /// agent itself is Ready once it can serve, peers or not.
    pub async fn wait_until_ready(&mut self) -> Result<()> {
        self.wait_for("/readyz").await?;
        if self.peering {
            wait_for_peer(self.metrics)
                .await
                .with_context(|| self.log())?;
        }
        Ok(())
    }

    async fn wait_for(&mut self, path: &str) -> Result<()> {
        let deadline = Instant::now() + crate::node::patience()?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "reflektor registry exited ({status}) before {path} answered:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = http::get(self.registry, path, "*/*").await
                && response.status() == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "reflektor registry's {path} did not answer 200 in time:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, as kubelet stops a pod; the agent must exit cleanly.
    pub async fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.terminate().await
    }

    /// [`Agent::stop`] that keeps the handle, so the log, shutdown lines
    /// included, can still be read.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // Once reaped, the pid may belong to another process: never signal it.
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "reflektor registry ignored SIGTERM for 10 s:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
