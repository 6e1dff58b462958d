//! A test double for kubelet, for one pod: no kubelet can run here (no
//! registry reachable from this machine carries one), and what kubelet does
//! for a DaemonSet's pod is CRI calls and a probe loop. This module makes
//! those calls against the node's real containerd and polls the probes the
//! template declares, the way kubelet does:
//! - a startup probe gates the others, and exhausting its failures restarts
//!   the container;
//! - the readiness probe sets Ready, which turns false only after
//!   `failureThreshold` failures in a row;
//! - exhausting the liveness probe's failures restarts the container;
//! - a container that exits is restarted per the pod's `restartPolicy`:
//!   at once the first time, then with kubelet's back-off (10 s, doubling,
//!   at most 5 min).
//!
//! What it does not do: admission, eviction, resource accounting,
//! `successThreshold` other than 1, exec or TCP probes (the translation in
//! `pod_template` refuses templates that use them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1::ContainerConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http;
use crate::pod::{Pods, Sandbox};
use crate::pod_template::{ContainerPlan, HttpProbe, PodPlan, Restart};

/// How long after StopContainer a container's status may still say running.
const STATUS_SETTLE: Duration = Duration::from_secs(2);

/// kubelet's crash-loop back-off: the second restart waits this long, each
/// further one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often container states are looked at between probes.
const TICK: Duration = Duration::from_millis(100);

/// What kubelet would report of the pod, as `kubectl get pod` shows it.
#[derive(Debug, Clone, Default)]
pub struct PodStatus {
    /// Every container has passed its readiness probe and not failed it since.
    pub ready: bool,
    /// Restarts of all containers together.
    pub restarts: u32,
    /// Exits of all containers together, restarted or not.
    pub exits: u32,
    /// From `RunPodSandbox` to the first time the pod was Ready.
    pub first_ready: Option<Duration>,
    /// Probe failures, exits and restarts, oldest first: kubelet's events.
    pub events: Vec<String>,
}

/// A pod kubelet runs: sandbox, containers and the loop that watches them.
pub struct KubeletPod {
    name: String,
    pods: Pods,
    sandbox: Sandbox,
    grace: Duration,
    /// Container ids, shared with the loop, which replaces one on restart.
    ids: watch::Receiver<Vec<String>>,
    /// Each container's log directory (one file per attempt), init
    /// containers first.
    log_dirs: Vec<PathBuf>,
    status: watch::Receiver<PodStatus>,
    cancel: CancellationToken,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Crashes a test caused ([`KubeletPod::crash`]): each is one exit and
    /// one restart that are not a fault of the pod's.
    crashes: u32,
}

impl KubeletPod {
    /// Runs the pod as kubelet starts it ([`Pods::run_pod`]: host
    /// directories, sandbox, init containers to completion, containers),
    /// then watches it. Probes reach the pod at `pod_ip`, its node's
    /// address on the host network.
    pub async fn start(
        pods: &Pods,
        name: &str,
        plan: &PodPlan,
        pod_ip: std::net::IpAddr,
        patience: Duration,
    ) -> Result<Self> {
        let started = Instant::now();
        let pod = pods.run_pod(name, plan, patience).await?;
        let ids: Vec<String> = pod.containers.iter().map(|(id, _)| id.clone()).collect();
        let log_dirs = plan
            .init_containers
            .iter()
            .chain(&plan.containers)
            .map(|c| {
                pod.sandbox
                    .log(&c.config)
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default()
            })
            .collect();
        let (ids_tx, ids_rx) = watch::channel(ids.clone());
        let (status_tx, status_rx) = watch::channel(PodStatus::default());
        let cancel = CancellationToken::new();
        let watch = Watch {
            pods: pods.clone(),
            sandbox: pod.sandbox.clone(),
            restart: plan.restart,
            grace: plan.grace,
            pod_ip,
            started,
            containers: plan
                .containers
                .iter()
                .zip(ids)
                .map(|(plan, id)| Watched::new(plan.clone(), id))
                .collect(),
            ids: ids_tx,
            status: status_tx,
        };
        let watcher = tokio::spawn(watch.run(cancel.clone()));
        Ok(KubeletPod {
            name: name.to_owned(),
            pods: pods.clone(),
            sandbox: pod.sandbox,
            grace: plan.grace,
            ids: ids_rx,
            log_dirs,
            status: status_rx,
            cancel,
            watcher: Some(watcher),
            crashes: 0,
        })
    }

    pub fn status(&self) -> PodStatus {
        self.status.borrow().clone()
    }

    /// Waits until the pod is Ready, at most `within`; the error carries
    /// kubelet's events.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<Duration> {
        let waited = tokio::time::timeout(within, self.status.wait_for(|s| s.ready))
            .await
            .map(|ready| ready.is_ok());
        let status = self.status();
        match (waited, status.first_ready) {
            (Ok(true), Some(first)) => Ok(first),
            (Ok(_), _) => bail!(
                "pod {}: the kubelet double stopped watching it; its events: {}",
                self.name,
                status.events.join("; ")
            ),
            (Err(_), _) => bail!(
                "pod {} was not Ready within {within:?}; kubelet's events: {}",
                self.name,
                status.events.join("; ")
            ),
        }
    }

    /// An error naming them if any container has exited or been restarted
    /// since the pod started, beyond the crashes a test caused: a crash that
    /// kubelet's restart hid.
    pub fn ensure_never_restarted(&self) -> Result<()> {
        let status = self.status();
        let caused = self.crashes * self.ids.borrow().len() as u32;
        ensure!(
            status.exits <= caused && status.restarts <= caused,
            "pod {}: its containers exited {} time(s) and were restarted {} time(s), {caused} \
             of each caused on purpose; kubelet's events: {}",
            self.name,
            status.exits,
            status.restarts,
            status.events.join("; ")
        );
        Ok(())
    }

    /// SIGKILL of every container, the sandbox kept: the processes crash,
    /// and the watch loop restarts them per the restart policy, after
    /// kubelet's back-off from the second time on.
    pub async fn crash(&mut self) -> Result<()> {
        let ids = self.ids.borrow().clone();
        self.crashes += 1;
        for id in ids.iter().filter(|id| !id.is_empty()) {
            self.pods.stop_container(id, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Waits, at most `within`, until every crash [`KubeletPod::crash`]
    /// caused has been restarted and the pod is Ready again.
    pub async fn wait_restarted(&mut self, within: Duration) -> Result<()> {
        let caused = self.crashes * self.ids.borrow().len() as u32;
        let waited = tokio::time::timeout(
            within,
            self.status.wait_for(|s| s.restarts >= caused && s.ready),
        )
        .await
        .map(|ready| ready.is_ok());
        let status = self.status();
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "pod {}: the kubelet double stopped watching it; its events: {}",
                self.name,
                status.events.join("; ")
            ),
            Err(_) => bail!(
                "pod {} was not restarted and Ready within {within:?} of its crash; kubelet's \
                 events: {}",
                self.name,
                status.events.join("; ")
            ),
        }
    }

    /// Every container's log, every attempt, without CRI's `<time> <stream>
    /// <tag>` prefix.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for dir in &self.log_dirs {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            // `<attempt>.log`: in attempt order.
            files.sort_by_key(|f| {
                f.file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u32>().ok())
            });
            for file in files {
                let text =
                    String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()).into_owned();
                for line in text.lines() {
                    out.push_str(cri_log_message(line));
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Deletes the pod as kubelet does on `kubectl delete`: the loop stops,
    /// each container gets SIGTERM and the grace period, then the sandbox
    /// goes, whatever failed before. Every container must exit 0.
    pub async fn delete(&mut self) -> Result<()> {
        self.end(self.grace).await
    }

    /// The node dies under the pod: each container is SIGKILLed, then the
    /// sandbox is removed so that nothing of it outlives the node.
    pub async fn kill(&mut self) -> Result<()> {
        self.end(Duration::ZERO).await.map(|_| ())
    }

    /// Stops every container with `grace`, then removes the sandbox, each
    /// step tried whatever failed before; the first error is returned. With
    /// a grace period, a non-zero exit is an error too.
    async fn end(&mut self, grace: Duration) -> Result<()> {
        let watched = self.stop_watching().await;
        let ids = self.ids.borrow().clone();
        let mut first_error = watched.err();
        let mut codes = Vec::new();
        for id in ids.iter().filter(|id| !id.is_empty()) {
            let stopped = async {
                self.pods.stop_container(id, grace).await?;
                // containerd records the exit from the task's exit event,
                // which can land a moment after StopContainer returns: one
                // read right after it failed once in CI with the container
                // already dead.
                let deadline = std::time::Instant::now() + STATUS_SETTLE;
                loop {
                    if let Some(code) = self.pods.exit_code(id).await? {
                        break anyhow::Ok(code);
                    }
                    if std::time::Instant::now() >= deadline {
                        bail!("container {id} still runs {STATUS_SETTLE:?} after StopContainer");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            match stopped.await {
                Ok(code) => codes.push(code),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Err(error) = self.pods.remove(self.sandbox.clone()).await {
            first_error.get_or_insert(error);
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        ensure!(
            grace.is_zero() || codes.iter().all(|&code| code == 0),
            "pod {}: its containers exited {codes:?} on SIGTERM; expected 0",
            self.name
        );
        Ok(())
    }

    /// Stops the watch loop; a panic in it is an error, not a quiet end.
    async fn stop_watching(&mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(watcher) = self.watcher.take() {
            watcher
                .await
                .with_context(|| format!("pod {}: the kubelet double's loop failed", self.name))?;
        }
        Ok(())
    }
}

impl Drop for KubeletPod {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// `2026-11-29T03:04:05.123Z stderr F message` → `message`; a line in
/// another shape is kept whole.
fn cri_log_message(line: &str) -> &str {
    let mut parts = line.splitn(4, ' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some("stdout" | "stderr"), Some(_), Some(message)) => message,
        _ => line,
    }
}

/// One probe's schedule and its run of failures.
struct ProbeState {
    probe: HttpProbe,
    next: Instant,
    failures: u32,
}

impl ProbeState {
    fn new(probe: HttpProbe) -> Self {
        ProbeState {
            probe,
            next: Instant::now(),
            failures: 0,
        }
    }

    /// Probes if due: `Some(true)` on success, `Some(false)` once failures
    /// reach the threshold, `None` when nothing changed.
    async fn poll(&mut self, pod_ip: std::net::IpAddr, events: &mut Vec<String>) -> Option<bool> {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + self.probe.period;
        let addr = SocketAddr::new(pod_ip, self.probe.port);
        let outcome =
            tokio::time::timeout(self.probe.timeout, http::get(addr, &self.probe.path, "*/*"))
                .await;
        let failure = match outcome {
            Ok(Ok(response)) if (200..400).contains(&response.status().as_u16()) => None,
            Ok(Ok(response)) => Some(format!("status {}", response.status())),
            Ok(Err(error)) => Some(format!("{error:#}")),
            Err(_) => Some(format!("no answer within {:?}", self.probe.timeout)),
        };
        match failure {
            None => {
                self.failures = 0;
                Some(true)
            }
            Some(why) => {
                self.failures += 1;
                if self.failures == 1 || self.failures >= self.probe.failure_threshold {
                    events.push(format!(
                        "probe {addr}{} failed ({}/{}): {why}",
                        self.probe.path, self.failures, self.probe.failure_threshold
                    ));
                }
                (self.failures >= self.probe.failure_threshold).then_some(false)
            }
        }
    }
}

/// A container under watch: its current attempt and probes.
struct Watched {
    plan: ContainerPlan,
    id: String,
    attempt: u32,
    started: bool,
    ready: bool,
    startup: Option<ProbeState>,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    /// When an exited container may be restarted.
    restart_at: Option<Instant>,
    /// The wait before the next restart; `None` before the first, which
    /// is immediate.
    backoff: Option<Duration>,
    /// Exited for good (restart policy), with this code.
    terminated: Option<i32>,
}

impl Watched {
    fn new(plan: ContainerPlan, id: String) -> Self {
        let mut watched = Watched {
            id,
            attempt: 0,
            started: false,
            ready: false,
            startup: None,
            readiness: None,
            liveness: None,
            restart_at: None,
            backoff: None,
            terminated: None,
            plan,
        };
        watched.reset_probes();
        watched
    }

    fn reset_probes(&mut self) {
        self.started = self.plan.startup.is_none();
        self.ready = false;
        self.startup = self.plan.startup.clone().map(ProbeState::new);
        self.readiness = self.plan.readiness.clone().map(ProbeState::new);
        self.liveness = self.plan.liveness.clone().map(ProbeState::new);
    }

    fn name(&self) -> &str {
        self.plan.config.metadata.as_ref().map_or("", |m| &m.name)
    }
}

/// The loop's state: what kubelet's pod worker holds.
struct Watch {
    pods: Pods,
    sandbox: Sandbox,
    restart: Restart,
    grace: Duration,
    pod_ip: std::net::IpAddr,
    started: Instant,
    containers: Vec<Watched>,
    ids: watch::Sender<Vec<String>>,
    status: watch::Sender<PodStatus>,
}

impl Watch {
    async fn run(mut self, cancel: CancellationToken) {
        let mut events = Vec::new();
        let mut restarts = 0;
        let mut exits = 0;
        let mut first_ready = None;
        loop {
            for c in &mut self.containers {
                let step = Self::step(
                    &self.pods,
                    &self.sandbox,
                    self.restart,
                    self.grace,
                    self.pod_ip,
                    c,
                    &mut events,
                )
                .await;
                match step {
                    Ok(Step::Restarted) => restarts += 1,
                    Ok(Step::Exited) => exits += 1,
                    Ok(Step::Running) => {}
                    // containerd restarting, say: kubelet keeps trying too.
                    Err(error) => {
                        let event = format!("{}: {error:#}", c.name());
                        if events.last() != Some(&event) {
                            events.push(event);
                        }
                    }
                }
            }
            let ready = self.containers.iter().all(|c| c.ready);
            if ready && first_ready.is_none() {
                first_ready = Some(self.started.elapsed());
            }
            self.ids
                .send_replace(self.containers.iter().map(|c| c.id.clone()).collect());
            self.status.send_replace(PodStatus {
                ready,
                restarts,
                exits,
                first_ready,
                events: events.clone(),
            });
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// One look at a container: restart it if it exited and may restart,
    /// else run its due probes.
    async fn step(
        pods: &Pods,
        sandbox: &Sandbox,
        restart: Restart,
        grace: Duration,
        pod_ip: std::net::IpAddr,
        c: &mut Watched,
        events: &mut Vec<String>,
    ) -> Result<Step> {
        if c.terminated.is_some() {
            return Ok(Step::Running);
        }
        if c.id.is_empty() {
            // The last attempt was removed and its successor failed to start.
            let config = attempt(&c.plan.config, c.attempt);
            c.id = pods.start(sandbox, config).await?;
            c.reset_probes();
            return Ok(Step::Restarted);
        }
        if let Some(code) = pods.exit_code(&c.id).await? {
            c.ready = false;
            let again = match restart {
                Restart::Always => true,
                Restart::OnFailure => code != 0,
                Restart::Never => false,
            };
            if !again {
                c.terminated = Some(code);
                events.push(format!(
                    "{} exited {code}; restartPolicy keeps it down",
                    c.name()
                ));
                return Ok(Step::Exited);
            }
            let Some(at) = c.restart_at else {
                // kubelet restarts a container at once the first time, then
                // backs off: 10 s, 20 s, … up to 5 min.
                let wait = c.backoff.unwrap_or(Duration::ZERO);
                c.backoff = Some(match c.backoff {
                    None => FIRST_BACKOFF,
                    Some(previous) => (previous * 2).min(MAX_BACKOFF),
                });
                events.push(format!(
                    "{} exited {code}; restarting in {wait:?}",
                    c.name()
                ));
                c.restart_at = Some(Instant::now() + wait);
                return Ok(Step::Exited);
            };
            if Instant::now() < at {
                return Ok(Step::Running);
            }
            c.restart_at = None;
            c.attempt += 1;
            pods.remove_container(&c.id).await?;
            // Empty until the next attempt runs: a failed start is retried.
            c.id = String::new();
            let config = attempt(&c.plan.config, c.attempt);
            c.id = pods.start(sandbox, config).await?;
            c.reset_probes();
            return Ok(Step::Restarted);
        }
        if !c.started {
            if let Some(startup) = c.startup.as_mut() {
                match startup.poll(pod_ip, events).await {
                    Some(true) => c.started = true,
                    Some(false) => {
                        events.push(format!("{} failed its startup probe; killing it", c.name()));
                        pods.stop_container(&c.id, grace).await?;
                    }
                    None => {}
                }
            }
            return Ok(Step::Running);
        }
        match c.readiness.as_mut() {
            Some(readiness) => {
                if let Some(ready) = readiness.poll(pod_ip, events).await {
                    c.ready = ready;
                }
            }
            None => c.ready = true,
        }
        if let Some(liveness) = c.liveness.as_mut()
            && liveness.poll(pod_ip, events).await == Some(false)
        {
            events.push(format!(
                "{} failed its liveness probe; killing it",
                c.name()
            ));
            pods.stop_container(&c.id, grace).await?;
        }
        Ok(Step::Running)
    }
}

/// What one look at a container found or did.
enum Step {
    /// Running, or waiting out its back-off: nothing to count.
    Running,
    /// It exited, first seen now.
    Exited,
    /// A new attempt was started.
    Restarted,
}

/// The config of a container's next attempt: its number, and a log file
/// of its own.
fn attempt(config: &ContainerConfig, attempt: u32) -> ContainerConfig {
    let mut config = config.clone();
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    if let Some(metadata) = config.metadata.as_mut() {
        metadata.attempt = attempt;
    }
    config.log_path = crate::pod_template::log_path(&name, attempt);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_lose_their_prefix() {
        assert_eq!(
            cri_log_message("2026-11-29T03:04:05.1Z stderr F router started peer_id=12D"),
            "router started peer_id=12D"
        );
        assert_eq!(cri_log_message("plain line"), "plain line");
    }

    #[test]
    fn a_restart_is_a_new_attempt_with_its_own_log() {
        let config = ContainerConfig {
            metadata: Some(k8s_cri::v1::ContainerMetadata {
                name: "registry".to_owned(),
                attempt: 0,
            }),
            log_path: "registry/0.log".to_owned(),
            ..Default::default()
        };
        let next = attempt(&config, 2);
        assert_eq!(next.log_path, "registry/2.log");
        assert_eq!(next.metadata.unwrap().attempt, 2);
    }
}
