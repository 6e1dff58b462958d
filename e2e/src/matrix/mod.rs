//! The release matrix: every cluster file run as a real cluster, each node
//! judged on every check, into one [`Report`].
//!
//! In a cluster whose agents run, the first three supported nodes take
//! roles, so that every check has a node that proves it:
//! - the *seed* pulls everything from the upstream;
//! - the *second* pulls through peers while the upstream is up, then has its
//!   containerd restarted and pulls one image only it will hold;
//! - the *third* pulls through peers once the upstream is offline, that one
//!   image included; pulls an image of its own under each of the faults a
//!   transfer can meet (its serving peer partitioned, its serving agent
//!   killed pull after pull, its own disk full); and loses the peer serving
//!   its large pull mid-transfer.
//!
//! Further nodes pull through peers like the second. Each check's cell is
//! recorded as it finishes; the first failure stops the cluster and marks
//! what is left as not run, so a failure is never hidden behind another.
//!
//! This module orchestrates: clusters, the upstream, nodes and agents, in
//! order. `scenarios` holds what each role does and the faults it meets;
//! `faults` the third node's pulls that are cut off, killed or find the disk
//! full; `cells` turns outcomes into the report's cells.

mod cells;
mod faults;
mod scenarios;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use reflektor::doctor::Status;
use reflektor::version::VerdictKind;
use tempfile::TempDir;

use crate::agent::{Backend, Reflektor};
use crate::cluster::{
    self, ADVERTISED_DIGESTS, Builds, ClusterSpec, Expect, Fault, ImageKind, LOCAL_BYTES, Member,
    PEER_BYTES,
};
use crate::deploy::pod::{PodImages, PodRunner};
use crate::deploy::{Deploy, NodeRunner, ProcessRunner};
use crate::image::{Platform, TestImage};
use crate::report::{Cell, Check, ClusterOutcome, ClusterResult, Column, Report, Row};
use crate::scenario::{self, Catalogue};
use crate::support::eventually;
use crate::upstream::{PushedImage, Upstream};

const MIB: u64 = 1024 * 1024;
const IN_FLIGHT: [&str; 1] = ["reflektor_http_requests_in_flight"];
/// How much of the large layer the puller must have before its provider is
/// lost: enough to be mid-transfer, far from the end.
const LOSS_AFTER: u64 = 32 * MIB;
/// Bytes of the large layer that may sit in buffers between the lost holder
/// and the puller's containerd (socket buffers on two loopback hops, the
/// agent's, containerd's), and so need not come from the survivor. Seen:
/// 18 MiB more at the puller's agent than in containerd's ingest file.
const RESUME_SLACK: u64 = 64 * MIB;

/// What to run and where to write.
pub struct Options {
    pub clusters: Vec<ClusterSpec>,
    /// Column keys (or parts of them) to run; empty runs all.
    pub filter: Vec<String>,
    pub out_dir: PathBuf,
    pub cache: PathBuf,
    pub deploy: Deploy,
    /// The images pod mode runs; required for it.
    pub images: Option<PodImages>,
}

impl Options {
    fn wants(&self, column: Column) -> bool {
        self.filter.is_empty()
            || self
                .filter
                .iter()
                .any(|f| column.key().contains(f.as_str()))
    }
}

/// Runs every cluster in order and writes the report and logs to
/// `options.out_dir`.
pub async fn run(reflektor: &Reflektor, options: &Options) -> Result<Report> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if options
        .clusters
        .iter()
        .any(|c| c.faults.contains(&Fault::Partition))
    {
        crate::packet_filter::Dropped::clear_leftovers()?;
    }
    // Nothing of an earlier run may pass for this one's.
    let logs = options.out_dir.join("logs");
    if logs.exists() {
        fs::remove_dir_all(&logs).with_context(|| format!("clearing {}", logs.display()))?;
    }
    for name in ["report.md", "report.json", "junit.xml"] {
        let path = options.out_dir.join(name);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let with_large = options
        .clusters
        .iter()
        .any(|c| c.images.contains(&ImageKind::Large));
    progress(
        "images",
        &format!(
            "building the test images{}",
            if with_large {
                " (with a 256 MiB layer)"
            } else {
                ""
            }
        ),
    );
    let with_faults = options.clusters.iter().any(ClusterSpec::wants_fault_images);
    let catalogue =
        tokio::task::spawn_blocking(move || Catalogue::build(with_large, with_faults)).await??;
    let mut clusters = Vec::new();
    for (i, spec) in options.clusters.iter().enumerate() {
        progress(
            &spec.name,
            &format!(
                "cluster {} of {}: {} node(s){}",
                i + 1,
                options.clusters.len(),
                spec.nodes.len(),
                if spec.description.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", spec.description)
                }
            ),
        );
        clusters.push(run_cluster(reflektor, options, spec, &catalogue, &logs).await?);
    }
    Ok(Report {
        generated_by: format!("reflektor-e2e {}", env!("CARGO_PKG_VERSION")),
        started_unix,
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        filter: options.filter.clone(),
        clusters,
    })
}

async fn run_cluster(
    reflektor: &Reflektor,
    options: &Options,
    spec: &ClusterSpec,
    catalogue: &Catalogue,
    logs: &Path,
) -> Result<ClusterResult> {
    let started = Instant::now();
    let rows: Vec<Row> = spec
        .nodes
        .iter()
        .map(|n| Row::new(&spec.name, &n.name, &n.source, n.expect))
        .collect();
    let fetched = cluster::fetch_builds(spec, &options.cache).await;
    let (outcome, rows) = match fetched {
        // A broken package (bad checksum, missing tool) fails this cluster,
        // not the whole run: the other rows and the report still come out.
        Err(error) => {
            let detail = format!("{error:#}");
            progress(&spec.name, &format!("FAIL: {detail}"));
            let rows = rows_not_started(
                rows,
                Cell::Fail {
                    detail: detail.clone(),
                },
                Cell::not_run("stopped", "not run: fetching the cluster's builds failed"),
            );
            (ClusterOutcome::Failed { error: detail }, rows)
        }
        Ok(Builds::Unavailable { source, reason }) => {
            progress(
                &spec.name,
                &format!("{source}: unavailable on this host: {reason}"),
            );
            let rows = unavailable_rows(spec, rows, &source, &reason);
            (ClusterOutcome::Unavailable { source, reason }, rows)
        }
        Ok(Builds::Ready(builds)) => {
            let mut run = Run {
                spec,
                reflektor,
                options,
                members: cluster::members(spec, builds)?,
                rows,
                upstream: None,
                runner: None,
                host: Platform::host()?,
                held: vec![0.0; spec.nodes.len()],
                logs: logs.to_owned(),
                data: tempfile::Builder::new()
                    .prefix("reflektor-e2e-data-")
                    .tempdir_in(crate::node::work_parent())?,
            };
            let result = run.scenario(catalogue).await;
            let stopped = run.stop().await;
            let error = match (result, stopped) {
                (Ok(()), Ok(())) => None,
                (Err(error), Ok(())) | (Ok(()), Err(error)) => Some(error),
                (Err(error), Err(stop)) => {
                    Some(error.context(format!("and stopping the cluster failed too: {stop:#}")))
                }
            };
            if let Some(error) = &error {
                run.mark_rest_not_run(error);
            }
            run.fill_unrecorded();
            let outcome = error.map_or(ClusterOutcome::Ran, |error| ClusterOutcome::Failed {
                error: format!("{error:#}"),
            });
            (outcome, run.rows)
        }
    };
    Ok(ClusterResult {
        name: spec.name.clone(),
        description: spec.description.clone(),
        seconds: started.elapsed().as_secs_f64().round(),
        outcome,
        rows,
    })
}

/// The rows of a cluster that did not start: `first` in the first row's
/// first cell, every other cell `rest`.
fn rows_not_started(mut rows: Vec<Row>, first: Cell, rest: Cell) -> Vec<Row> {
    for (i, row) in rows.iter_mut().enumerate() {
        for &column in Column::ALL {
            let cell = if i == 0 && column == Column::ALL[0] {
                &first
            } else {
                &rest
            };
            row.cells.insert(column, cell.clone());
        }
    }
    rows
}

/// What a cluster's rows say when a package source is out of reach:
/// unavailable if every node on that source is marked optional, else one
/// failure (the gate must not pass because an archive was down).
fn unavailable_rows(spec: &ClusterSpec, rows: Vec<Row>, source: &str, reason: &str) -> Vec<Row> {
    let why = format!("{source} is unavailable on this host: {reason}");
    let optional = spec
        .nodes
        .iter()
        .filter(|n| n.source == source)
        .all(|n| n.optional);
    if optional {
        let cell = Cell::Unavailable { reason: why };
        return rows_not_started(rows, cell.clone(), cell);
    }
    let fail = Cell::Fail {
        detail: format!(
            "{why}; its nodes in cluster {} are not marked optional, so they must run: \
             restore access to the archive, or point its mirror variable at a reachable copy",
            spec.name
        ),
    };
    rows_not_started(rows, fail, Cell::not_run("unavailable", why))
}

/// The images a cluster pushed to its upstream.
struct Pushed {
    app: PushedImage,
    pinned: PushedImage,
    later: PushedImage,
    multi: Option<PushedImage>,
    large: Option<PushedImage>,
    /// Each declared fault's images, see [`scenario::FaultImages`].
    partition: Option<PushedImage>,
    kills: Vec<PushedImage>,
    disk_full: Option<PushedImage>,
}

impl Pushed {
    /// The images the seed and the second hold for the third's faults.
    fn fault_images(&self) -> impl Iterator<Item = &PushedImage> {
        self.partition
            .iter()
            .chain(&self.kills)
            .chain(&self.disk_full)
    }
}

struct Run<'a> {
    spec: &'a ClusterSpec,
    reflektor: &'a Reflektor,
    options: &'a Options,
    members: Vec<Member>,
    rows: Vec<Row>,
    upstream: Option<Upstream>,
    /// How the agent runs on the nodes; chosen once the upstream is up.
    runner: Option<Arc<dyn NodeRunner>>,
    host: Platform,
    /// Digests each node holds, and so must advertise.
    held: Vec<f64>,
    /// Where node logs are copied: `<out>/logs`.
    logs: PathBuf,
    data: TempDir,
}

impl Run<'_> {
    async fn scenario(&mut self, catalogue: &Catalogue) -> Result<()> {
        let pushed = self.start_upstream(catalogue).await?;
        self.runner = Some(self.runner().await?);
        for i in 0..self.members.len() {
            self.start_and_judge(i).await?;
        }
        let roles: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].spec.expect == Expect::Supported)
            .collect();
        if roles.is_empty() {
            return Ok(());
        }
        for (fault, column) in [
            (Fault::ContainerdRestart, Column::ContainerdRestart),
            (Fault::UpstreamOffline, Column::UpstreamOffline),
            (Fault::NodeLoss, Column::NodeLoss),
            (Fault::Partition, Column::Partition),
            (Fault::AgentKill, Column::AgentKill),
            (Fault::DiskFull, Column::DiskFull),
        ] {
            if !self.spec.faults.contains(&fault) {
                for &i in &roles {
                    let reason = format!("the cluster file declares no {fault} fault");
                    self.record(i, column, Cell::not_run("n/a", reason), None);
                }
            }
        }
        self.start_agents(&roles).await?;
        for &i in &roles {
            self.configure_mirror(i)?;
        }
        let [seed, second, third, ..] = roles[..] else {
            bail!(
                "cluster {} runs the agent on {} node(s); it needs 3 or more (see \
                 ClusterSpec::validate)",
                self.spec.name,
                roles.len()
            );
        };
        self.record_roles(&roles, &pushed);
        self.seed(seed, &pushed).await?;
        for &puller in std::iter::once(&second).chain(&roles[3..]) {
            self.pull_small_images(puller, &pushed, "").await?;
        }
        self.hold_fault_images(second, &pushed).await?;
        if let Some(large) = &pushed.large
            && (self.options.wants(Column::Large) || self.options.wants(Column::NodeLoss))
        {
            let size = scenario::layer_bytes(&large.image, &self.host)?;
            self.check(second, Column::Large, async |run: &mut Self| {
                let pulled = run.members[second].pull(&large.by_tag, size).await?;
                Ok(format!("{} MiB from peers", pulled.from_peers / MIB))
            })
            .await?;
            self.wait_advertised(second, &large.image).await?;
        }
        self.restart_and_pull_later(second, &pushed).await?;
        let offline = self.spec.faults.contains(&Fault::UpstreamOffline)
            && self.options.wants(Column::UpstreamOffline);
        if offline {
            let upstream = self.upstream.as_mut().context("the upstream is running")?;
            upstream.stop().await?;
            progress(&self.spec.name, "upstream registry stopped");
        }
        let context = if offline {
            " with the upstream offline"
        } else {
            ""
        };
        let pulls = self.pull_small_images(third, &pushed, context).await?;
        self.pull_later_from(third, second, &pushed, offline, pulls)
            .await?;
        self.partition_mid_pull(third, [seed, second], &pushed)
            .await?;
        self.kill_loop(third, [seed, second], &pushed).await?;
        self.disk_full(third, &pushed).await?;
        self.large_with_node_loss(third, [seed, second], &pushed)
            .await?;
        self.cleanup(&roles).await
    }

    /// The runner for `--deploy`: pod mode pushes the agent's images to
    /// the upstream.
    async fn runner(&self) -> Result<Arc<dyn NodeRunner>> {
        Ok(match self.options.deploy {
            Deploy::Process => Arc::new(ProcessRunner {
                reflektor: self.reflektor.clone(),
                data_dir: self.data.path().to_owned(),
            }),
            Deploy::Pod => {
                let images = self
                    .options
                    .images
                    .as_ref()
                    .context("pod mode needs the agent's image")?;
                let upstream = self.upstream.as_ref().context("the upstream is running")?;
                let ips: Vec<_> = self.members.iter().map(|m| m.ip).collect();
                let runner = PodRunner::new(images, upstream, &ips, &self.options.cache).await?;
                progress(
                    &self.spec.name,
                    &format!("agent image {} pushed to the upstream", runner.image_digest),
                );
                Arc::new(runner)
            }
        })
    }

    fn runner_ref(&self) -> Result<Arc<dyn NodeRunner>> {
        self.runner
            .clone()
            .context("the cluster's runner is chosen")
    }

    /// Starts the cluster's upstream and pushes the images it declares.
    async fn start_upstream(&mut self, catalogue: &Catalogue) -> Result<Pushed> {
        let upstream = Upstream::start().await?;
        let images = &self.spec.images;
        let push = async |image: &TestImage, repo: &str| {
            upstream.push(&catalogue.layout, image, repo).await
        };
        let started = Instant::now();
        let mut pushed = Pushed {
            app: push(&catalogue.app, "e2e/app").await?,
            pinned: push(&catalogue.pinned, "e2e/pinned").await?,
            later: push(&catalogue.later, "e2e/later").await?,
            multi: match images.contains(&ImageKind::MultiArch) {
                true => Some(push(&catalogue.multi, "e2e/multi").await?),
                false => None,
            },
            large: match (images.contains(&ImageKind::Large), &catalogue.large) {
                (true, Some(large)) => Some(push(large, "e2e/large").await?),
                _ => None,
            },
            partition: None,
            kills: Vec::new(),
            disk_full: None,
        };
        if let Some(faults) = &catalogue.faults {
            // Pushed, and so pulled, only where the check runs.
            let declared =
                |fault, column| self.spec.faults.contains(&fault) && self.options.wants(column);
            if declared(Fault::Partition, Column::Partition) {
                pushed.partition = Some(push(&faults.partition, "e2e/partition").await?);
            }
            if declared(Fault::AgentKill, Column::AgentKill) {
                for (round, image) in faults.kills.iter().enumerate() {
                    let repo = format!("e2e/kill-{}", round + 1);
                    pushed.kills.push(push(image, &repo).await?);
                }
            }
            if declared(Fault::DiskFull, Column::DiskFull) {
                pushed.disk_full = Some(push(&faults.disk_full, "e2e/disk-full").await?);
            }
        }
        progress(
            &self.spec.name,
            &format!(
                "upstream {} holds the images ({:.1}s)",
                upstream.url(),
                started.elapsed().as_secs_f64()
            ),
        );
        self.upstream = Some(upstream);
        Ok(pushed)
    }

    /// Starts a node's containerd and records its version, the agent's
    /// verdict and doctor's findings.
    async fn start_and_judge(&mut self, i: usize) -> Result<()> {
        let build = self.members[i].build.clone();
        self.rows[i].package_version = Some(build.package_version.clone());
        self.check(i, Column::Version, async |run: &mut Self| {
            let reported = build.reported_version()?;
            run.rows[i].reported = Some(reported.clone());
            Ok(format!(
                "`containerd --version` reported {reported} (package {})",
                build.package_version
            ))
        })
        .await?;
        let (mut config, notes) = self
            .runner_ref()?
            .node_config(&self.spec.name, &self.members[i])
            .await?;
        self.rows[i].notes.extend(notes);
        if self.spec.faults.contains(&Fault::DiskFull) && self.spec.third_member() == Some(i) {
            config.content_store_bytes = Some(faults::ROOMY_STORE);
            self.rows[i].notes.push(format!(
                "content store on a {} MiB tmpfs, shrunk to fill up for the disk-full check",
                faults::ROOMY_STORE / MIB
            ));
        }
        self.members[i].start_node(config).await?;
        if self.members[i].spec.expect == Expect::Supported {
            let upstream = self.upstream.as_ref().context("the upstream is running")?;
            // The operator's own configuration, which `cleanup` must restore.
            upstream.configure_node(self.members[i].node()?)?;
        }
        let node = self.members[i].node()?;
        let doctor = self.reflektor.doctor(node, node.certs_dir())?;
        let verdict = doctor.report.verdict;
        self.rows[i].verdict = verdict.map(verdict_name);
        let expect = self.members[i].spec.expect;
        let failed: Vec<String> = doctor
            .report
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| format!("{}: {}", c.check, c.detail))
            .collect();
        let verdict_cell = match (expect, verdict) {
            (Expect::Supported, Some(VerdictKind::Supported)) => {
                Cell::pass("supported, as the cluster file expects", None)
            }
            (Expect::TooOld, Some(VerdictKind::TooOld)) => Cell::Expected {
                detail: "too old, as the cluster file declares".to_owned(),
            },
            (expect, verdict) => Cell::Fail {
                detail: format!(
                    "the agent's verdict is {verdict:?}; the cluster file expects {expect:?}"
                ),
            },
        };
        self.record(i, Column::Verdict, verdict_cell.clone(), None);
        ensure!(
            !verdict_cell.is_failure(),
            "verdict on node {}",
            self.members[i].spec.name
        );
        let doctor_cell = match expect {
            Expect::Supported if doctor.exit_code == 0 && failed.is_empty() => Cell::pass(
                format!("{} checks passed", doctor.report.checks.len()),
                None,
            ),
            Expect::Supported => Cell::Fail {
                detail: format!("doctor exited {}: {}", doctor.exit_code, failed.join("; ")),
            },
            Expect::TooOld => self.refusal(i, doctor.exit_code, &failed).await,
        };
        let failed_doctor = doctor_cell.is_failure();
        self.record(i, Column::Doctor, doctor_cell, None);
        ensure!(
            !failed_doctor,
            "doctor on node {}",
            self.members[i].spec.name
        );
        if expect == Expect::TooOld {
            let reported = self.rows[i].reported.clone().unwrap_or_default();
            for column in &Column::ALL[3..] {
                self.record(
                    i,
                    *column,
                    Cell::not_run(
                        "refused",
                        format!("containerd {reported} is refused, as declared: the agent does not run on it"),
                    ),
                    None,
                );
            }
        }
        Ok(())
    }

    /// A refused node: doctor must fail on the version check, and the agent
    /// must refuse to start with the reason.
    async fn refusal(&self, i: usize, doctor_exit: i32, failed: &[String]) -> Cell {
        let version_failed = failed.iter().any(|c| c.starts_with("containerd version"));
        if doctor_exit == 0 || !version_failed {
            return Cell::Fail {
                detail: format!(
                    "doctor exited {doctor_exit} with failed checks [{}]; a refused node must \
                     fail the containerd version check",
                    failed.join("; ")
                ),
            };
        }
        let Ok(node) = self.members[i].node() else {
            return Cell::Fail {
                detail: "the node is gone".to_owned(),
            };
        };
        match self
            .reflektor
            .start_registry(Backend::Containerd(node), self.members[i].ip)
            .await
        {
            Ok(_) => Cell::Fail {
                detail: "`reflektor registry` started on a containerd the policy refuses"
                    .to_owned(),
            },
            Err(error) => {
                let message = format!("{error:#}");
                let reason = message
                    .lines()
                    .find(|l| l.starts_with("reflektor: "))
                    .unwrap_or("")
                    .to_owned();
                if message.contains("exited (exit status: 1)") && !reason.is_empty() {
                    Cell::Expected {
                        detail: format!(
                            "doctor fails the version check; `reflektor registry` exits 1: {reason}"
                        ),
                    }
                } else {
                    Cell::Fail {
                        detail: format!("`reflektor registry` did not refuse cleanly: {message}"),
                    }
                }
            }
        }
    }

    async fn start_agents(&mut self, roles: &[usize]) -> Result<()> {
        let started = Instant::now();
        let runner = self.runner_ref()?;
        runner.start(&mut self.members, roles).await?;
        for &i in roles {
            let agent = self.members[i].agent()?;
            self.held[i] = runner.digests_held_at_start() as f64;
            self.rows[i].deploy = Some(runner.deploy());
            self.rows[i].notes.extend(agent.notes());
            self.rows[i].ready_seconds = agent
                .ready_after()
                .map(|t| (t.as_secs_f64() * 10.0).round() / 10.0);
        }
        progress(
            &self.spec.name,
            &format!(
                "{} agents up and peered, as {} ({:.1}s)",
                roles.len(),
                self.options.deploy,
                started.elapsed().as_secs_f64()
            ),
        );
        Ok(())
    }

    fn save_logs(&self, dir: &Path) {
        for member in &self.members {
            if let Err(error) = member.write_logs(&dir.join(&member.spec.name)) {
                eprintln!(
                    "reflektor-e2e: saving the logs of {}: {error:#}",
                    member.spec.name
                );
            }
        }
        if let Some(upstream) = &self.upstream
            && let Err(error) = fs::create_dir_all(dir)
                .and_then(|()| fs::copy(upstream.log_file(), dir.join("upstream.log")).map(|_| ()))
        {
            eprintln!("reflektor-e2e: saving the upstream's log: {error}");
        }
    }

    /// Saves every log into the report's directory, then stops everything.
    async fn stop(&mut self) -> Result<()> {
        self.save_logs(&self.logs.join(&self.spec.name));
        let mut first_error = None;
        for member in &mut self.members {
            if let Err(error) = member.stop().await {
                first_error.get_or_insert(error);
            }
        }
        if let Some(mut upstream) = self.upstream.take()
            && upstream.is_running()
            && let Err(error) = upstream.stop().await
        {
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

pub fn verdict_name(verdict: VerdictKind) -> String {
    match verdict {
        VerdictKind::Supported => "supported",
        VerdictKind::TooOld => "too_old",
        VerdictKind::Unknown => "unknown",
    }
    .to_owned()
}

/// One progress line on stderr, so a long run shows where it is.
pub fn progress(scope: &str, line: &str) {
    eprintln!("[{scope}] {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_source_gates_unless_its_nodes_are_optional() {
        let mut spec = ClusterSpec::new("x")
            .node("a", "ubuntu:noble")
            .node("b", "debian:sid");
        let rows = |spec: &ClusterSpec| {
            spec.nodes
                .iter()
                .map(|n| Row::new("x", &n.name, &n.source, n.expect))
                .collect::<Vec<_>>()
        };
        let failures = |rows: &[Row]| {
            rows.iter()
                .flat_map(|r| r.cells.values())
                .filter(|c| c.is_failure())
                .count()
        };
        let gated = unavailable_rows(&spec, rows(&spec), "ubuntu:noble", "no route");
        assert_eq!(failures(&gated), 1, "{gated:?}");
        spec.nodes[0].optional = true;
        let excused = unavailable_rows(&spec, rows(&spec), "ubuntu:noble", "no route");
        assert_eq!(failures(&excused), 0, "{excused:?}");
        assert!(excused.iter().all(|r| r.cells.len() == Column::ALL.len()));
        // An optional Ubuntu node does not excuse an unreachable Debian one.
        let debian = unavailable_rows(&spec, rows(&spec), "debian:sid", "no route");
        assert_eq!(failures(&debian), 1, "{debian:?}");
    }
}
