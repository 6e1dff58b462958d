//! The release matrix: every cluster file run as a real cluster, each node
//! judged on every check, into one [`Report`].
//!
//! In a cluster whose agents run, the first three supported nodes take
//! roles, so that every check has a node that proves it:
//! - the *seed* pulls everything from the upstream;
//! - the *second* pulls through peers while the upstream is up, then has its
//!   containerd restarted and pulls one image only it will hold;
//! - the *third* pulls through peers once the upstream is offline, that one
//!   image included, and loses the peer serving its large pull mid-transfer.
//!
//! Further nodes pull through peers like the second. Each check's cell is
//! recorded as it finishes; the first failure stops the cluster and marks
//! what is left as not run, so a failure is never hidden behind another.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
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
use crate::image::{Platform, TestImage};
use crate::report::{Cell, ClusterOutcome, ClusterResult, Column, Report, Row};
use crate::scenario::{self, Catalogue};
use crate::support::eventually;
use crate::throttle::Throttle;
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
    let catalogue = tokio::task::spawn_blocking(move || Catalogue::build(with_large)).await??;
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
        for column in Column::ALL {
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
}

struct Run<'a> {
    spec: &'a ClusterSpec,
    reflektor: &'a Reflektor,
    options: &'a Options,
    members: Vec<Member>,
    rows: Vec<Row>,
    upstream: Option<Upstream>,
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
        self.large_with_node_loss(third, [seed, second], &pushed)
            .await?;
        self.cleanup(&roles).await
    }

    /// The checks each role does not take part in, said once up front, so
    /// that a check the scenario forgets to record shows as a failure, not
    /// as "n/a" (see [`Run::fill_unrecorded`]).
    fn record_roles(&mut self, roles: &[usize], pushed: &Pushed) {
        let [seed, second, third, ..] = roles[..] else {
            return;
        };
        let mut roleless = Vec::new();
        for column in [
            Column::UpstreamOffline,
            Column::NodeLoss,
            Column::ContainerdRestart,
        ] {
            roleless.push((
                seed,
                column,
                "seeds from the upstream; the faults are others' roles",
            ));
        }
        roleless.push((
            second,
            Column::UpstreamOffline,
            "pulls while the upstream is up; the third node pulls with it offline",
        ));
        roleless.push((
            second,
            Column::NodeLoss,
            "holds the large layer the third node pulls while a holder is lost",
        ));
        roleless.push((
            third,
            Column::ContainerdRestart,
            "the second node's containerd is the one restarted",
        ));
        for &extra in &roles[3..] {
            for column in [
                Column::Large,
                Column::UpstreamOffline,
                Column::NodeLoss,
                Column::ContainerdRestart,
            ] {
                roleless.push((extra, column, "pulls the small images through peers only"));
            }
        }
        if pushed.multi.is_none() {
            roleless.push((
                seed,
                Column::MultiArch,
                "the cluster file lists no multi-arch image",
            ));
        }
        if pushed.large.is_none() {
            for node in [seed, second] {
                roleless.push((node, Column::Large, "the cluster file lists no large image"));
            }
        }
        for (i, column, reason) in roleless {
            // A fault the cluster file does not declare already says so.
            if !self.rows[i].cells.contains_key(&column) {
                self.record(i, column, Cell::not_run("n/a", reason), None);
            }
        }
    }

    /// Starts the cluster's upstream and pushes the images it declares.
    async fn start_upstream(&mut self, catalogue: &Catalogue) -> Result<Pushed> {
        let upstream = Upstream::start().await?;
        let images = &self.spec.images;
        let push = async |image: &TestImage, repo: &str| {
            upstream.push(&catalogue.layout, image, repo).await
        };
        let started = Instant::now();
        let pushed = Pushed {
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
        };
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
        let name = self.spec.name.clone();
        self.members[i].start_node(&name).await?;
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
        cluster::start_agents(&mut self.members, roles, self.reflektor, self.data.path()).await?;
        progress(
            &self.spec.name,
            &format!("{} agents up and peered", roles.len()),
        );
        Ok(())
    }

    /// `reflektor configuration`, then a look at what it wrote.
    fn configure_mirror(&mut self, i: usize) -> Result<()> {
        let started = Instant::now();
        let result = (|| {
            let upstream = self.upstream.as_ref().context("the upstream is running")?;
            let member = &self.members[i];
            let node = member.node()?;
            let agent = member.agent()?;
            let certs = node.certs_dir();
            let original = fs::read(certs.join(upstream.addr().to_string()).join("hosts.toml"))?;
            self.reflektor
                .configure_mirror(node, agent, upstream.addr())?;
            let dir = certs.join(upstream.addr().to_string());
            let written = fs::read_to_string(dir.join("hosts.toml"))
                .with_context(|| format!("reading {}/hosts.toml", dir.display()))?;
            let mirror = format!("[host.\"http://{}\"]", agent.addr());
            let origin = format!("[host.\"{}\"]", upstream.url());
            let at = |needle: &str| written.find(needle);
            match (at(&mirror), at(&origin)) {
                (Some(m), Some(o)) if m < o => {}
                (Some(_), None) => {}
                _ => bail!(
                    "hosts.toml for {} does not list the agent ({mirror}) ahead of the \
                     upstream:\n{written}",
                    upstream.addr()
                ),
            }
            ensure!(
                written.contains(&format!("server = \"{}\"", upstream.url())),
                "hosts.toml lost `server = \"{}\"`:\n{written}",
                upstream.url()
            );
            let backup = certs
                .join("_backup")
                .join(upstream.addr().to_string())
                .join("hosts.toml");
            let kept =
                fs::read(&backup).with_context(|| format!("reading {}", backup.display()))?;
            ensure!(
                kept == original,
                "{} differs from the operator's hosts.toml",
                backup.display()
            );
            Ok(format!(
                "agent {} ahead of upstream {}; original kept in _backup",
                agent.addr(),
                upstream.url()
            ))
        })();
        self.conclude(i, Column::MirrorConfig, started, result)
    }

    /// The seed pulls every image from the upstream through its mirror,
    /// which has nothing yet and lets containerd fall through.
    async fn seed(&mut self, seed: usize, pushed: &Pushed) -> Result<()> {
        let mut images = vec![&pushed.app, &pushed.pinned];
        images.extend(&pushed.multi);
        if self.options.wants(Column::Large) || self.options.wants(Column::NodeLoss) {
            images.extend(&pushed.large);
        }
        let started = Instant::now();
        for image in &images {
            self.members[seed].pull(&image.by_tag, 0).await?;
        }
        for image in &images {
            self.wait_advertised(seed, &image.image).await?;
        }
        progress(
            &self.spec.name,
            &format!(
                "{} pulled {} images from the upstream and advertised them ({:.1}s)",
                self.members[seed].spec.name,
                images.len(),
                started.elapsed().as_secs_f64()
            ),
        );
        let reason = "seeds the cluster: pulls from the upstream";
        let mut seeded = vec![Column::ByTag, Column::ByDigest];
        if pushed.multi.is_some() {
            seeded.push(Column::MultiArch);
        }
        if pushed.large.is_some() {
            seeded.push(Column::Large);
        }
        for column in seeded {
            self.record(seed, column, Cell::not_run("seed", reason), None);
        }
        Ok(())
    }

    /// By tag, by digest and the multi-arch index, each through peers.
    /// Returns how many pulls ran.
    async fn pull_small_images(
        &mut self,
        i: usize,
        pushed: &Pushed,
        context: &str,
    ) -> Result<usize> {
        let mut pulls = 0;
        let host = self.host.clone();
        let mut pulls_of = vec![
            (Column::ByTag, &pushed.app, pushed.app.by_tag.as_str()),
            (
                Column::ByDigest,
                &pushed.pinned,
                pushed.pinned.by_digest.as_str(),
            ),
        ];
        if let Some(multi) = &pushed.multi {
            pulls_of.push((Column::MultiArch, multi, multi.by_tag.as_str()));
        } else {
            self.record(
                i,
                Column::MultiArch,
                Cell::not_run("n/a", "the cluster file lists no multi-arch image"),
                None,
            );
        }
        for (column, image, reference) in pulls_of {
            if !self.options.wants(column) {
                continue;
            }
            let size = scenario::layer_bytes(&image.image, &host)?;
            self.check(i, column, async |run: &mut Self| {
                let pulled = run.members[i].pull(reference, size).await?;
                Ok(format!(
                    "{reference}: {:.1} MiB from peers{context}",
                    pulled.from_peers as f64 / MIB as f64
                ))
            })
            .await?;
            self.held[i] += scenario::digests_held(&image.image, &host)? as f64;
            pulls += 1;
        }
        Ok(pulls)
    }

    /// The second node's containerd restarts under its agent; the node then
    /// pulls `later` from the upstream, which only it will hold.
    async fn restart_and_pull_later(&mut self, second: usize, pushed: &Pushed) -> Result<()> {
        let restart = self.spec.faults.contains(&Fault::ContainerdRestart)
            && self.options.wants(Column::ContainerdRestart);
        if restart {
            let started = Instant::now();
            let result = async {
                let member = &mut self.members[second];
                member.node_mut()?.restart().await?;
                let agent = member.agent.as_mut().context("an agent runs")?;
                ensure!(
                    agent.exited()?.is_none(),
                    "the agent exited when containerd restarted:\n{}",
                    agent.log()
                );
                Ok(())
            }
            .await;
            if let Err(error) = result {
                return self.conclude(second, Column::ContainerdRestart, started, Err(error));
            }
            progress(
                &self.spec.name,
                &format!(
                    "{}: containerd restarted under the agent ({:.1}s)",
                    self.members[second].spec.name,
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        if restart || self.options.wants(Column::UpstreamOffline) {
            self.members[second].pull(&pushed.later.by_tag, 0).await?;
            self.wait_advertised(second, &pushed.later.image).await?;
        }
        Ok(())
    }

    /// The third node pulls `later`, which only the second holds: proof that
    /// the restarted node advertised it, and that pulls work with the
    /// upstream offline.
    async fn pull_later_from(
        &mut self,
        third: usize,
        second: usize,
        pushed: &Pushed,
        offline: bool,
        earlier_pulls: usize,
    ) -> Result<()> {
        let restart = self.spec.faults.contains(&Fault::ContainerdRestart)
            && self.options.wants(Column::ContainerdRestart);
        if !restart && !offline {
            return Ok(());
        }
        let size = scenario::layer_bytes(&pushed.later.image, &self.host)?;
        let served_before = self.members[second].agent()?.metric(&LOCAL_BYTES).await?;
        let started = Instant::now();
        let pulled = self.members[third].pull(&pushed.later.by_tag, size).await;
        let mut served = 0.0;
        if pulled.is_ok() {
            // The holder counts a body once it has written all of it.
            let holder = self.members[second].agent()?;
            let _ = eventually("the only holder counting what it served", || async {
                Ok(holder.metric(&LOCAL_BYTES).await? - served_before >= size as f64)
            })
            .await;
            served = holder.metric(&LOCAL_BYTES).await? - served_before;
        }
        let holder = self.members[second].spec.name.clone();
        let mut restarted = Ok(());
        if restart {
            let result = match &pulled {
                Ok(_) if served >= size as f64 => Ok(format!(
                    "after the restart, {holder} advertised {} and served it to {}",
                    pushed.later.by_tag, self.members[third].spec.name
                )),
                Ok(_) => Err(anyhow::anyhow!(
                    "{holder}, the only holder, served {served} bytes of the {size} the pull needed"
                )),
                Err(error) => Err(anyhow::anyhow!("{error:#}")),
            };
            restarted = self.conclude(second, Column::ContainerdRestart, started, result);
        }
        if offline {
            let result = pulled.map(|_| {
                format!(
                    "{} pulls through peers with the upstream stopped, the last from {holder} only",
                    earlier_pulls + 1
                )
            });
            self.conclude(third, Column::UpstreamOffline, started, result)?;
        }
        restarted
    }

    /// The third node pulls the large image from the two holders; with the
    /// node-loss fault, its containerd is slowed (SIGSTOP/SIGCONT) so that
    /// the pull is surely mid-transfer when the serving holder dies.
    async fn large_with_node_loss(
        &mut self,
        third: usize,
        holders: [usize; 2],
        pushed: &Pushed,
    ) -> Result<()> {
        let Some(large) = &pushed.large else {
            for column in [Column::Large, Column::NodeLoss] {
                if !self.rows[third].cells.contains_key(&column) {
                    let cell = Cell::not_run("n/a", "the cluster file lists no large image");
                    self.record(third, column, cell, None);
                }
            }
            return Ok(());
        };
        let loss =
            self.spec.faults.contains(&Fault::NodeLoss) && self.options.wants(Column::NodeLoss);
        if !loss {
            if self.options.wants(Column::Large) {
                let size = scenario::layer_bytes(&large.image, &self.host)?;
                self.check(third, Column::Large, async |run: &mut Self| {
                    let pulled = run.members[third].pull(&large.by_tag, size).await?;
                    Ok(format!("{} MiB from peers", pulled.from_peers / MIB))
                })
                .await?;
            }
            return Ok(());
        }
        let size = scenario::layer_bytes(&large.image, &self.host)?;
        let started = Instant::now();
        let result = self.lose_mid_pull(third, holders, large, size).await;
        let result = result.map(|(lost, survivor, received, took)| {
            format!(
                "{lost} died with {} MiB of {} MiB transferred; {survivor} served the rest; \
                 the pull took {:.1}s",
                received / MIB,
                size / MIB,
                took.as_secs_f64()
            )
        });
        let pull_result = match &result {
            Ok(_) => Ok(format!(
                "{} MiB through peers, across a provider's loss",
                size / MIB
            )),
            Err(error) => Err(anyhow::anyhow!("{error:#}")),
        };
        let large = self.conclude(third, Column::Large, started, pull_result);
        let loss = self.conclude(third, Column::NodeLoss, started, result);
        large.and(loss)
    }

    async fn lose_mid_pull(
        &mut self,
        third: usize,
        holders: [usize; 2],
        large: &PushedImage,
        size: u64,
    ) -> Result<(String, String, u64, Duration)> {
        let (pid, ingest, cri) = {
            let node = self.members[third].node()?;
            (
                node.pid(),
                node.content_dir().join("ingest"),
                crate::cri::Cri::connect(node).await?,
            )
        };
        let mut local_before = Vec::new();
        for h in holders {
            local_before.push(self.members[h].agent()?.metric(&LOCAL_BYTES).await?);
        }
        let peer_before = self.members[third].agent()?.metric(&PEER_BYTES).await?;
        let started = Instant::now();
        let throttle = Throttle::start(pid);
        let pull = cri.pull_image(&large.by_tag);
        tokio::pin!(pull);
        let members = &mut self.members;
        let watch = async {
            let deadline = Instant::now() + crate::node::patience()? * 4;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let received = ingest_bytes(&ingest);
                if received >= LOSS_AFTER {
                    for (k, &h) in holders.iter().enumerate() {
                        if members[h].agent()?.metric(&IN_FLIGHT).await? > 0.0 {
                            members[h].lose().await?;
                            return Ok::<_, anyhow::Error>((k, received));
                        }
                    }
                }
                ensure!(
                    Instant::now() < deadline,
                    "no holder was serving the large layer after {:?} ({} MiB at the puller); \
                     on a slow host raise REFLEKTOR_E2E_PATIENCE_SECS",
                    deadline - started,
                    received / MIB
                );
            }
        };
        let (lost, received) = tokio::select! {
            pulled = &mut pull => bail!(
                "the pull ended ({}) before a holder could be lost mid-transfer",
                match pulled { Ok(_) => "complete".to_owned(), Err(e) => format!("{e:#}") }
            ),
            watched = watch => watched?,
        };
        drop(throttle);
        let lost_name = self.members[holders[lost]].spec.name.clone();
        progress(
            &self.spec.name,
            &format!(
                "{lost_name} lost with {} MiB of the large layer at the puller",
                received / MIB
            ),
        );
        pull.await
            .with_context(|| format!("the large pull after {lost_name} died"))?;
        let took = started.elapsed();
        let survivor = holders[1 - lost];
        let survivor_agent = self.members[survivor].agent()?;
        // It resumes from what the puller's agent had, which is at least what
        // containerd had written, plus what sat in buffers on the way.
        let rest = size.saturating_sub(received + RESUME_SLACK) as f64;
        eventually(
            "the surviving holder counting the rest it served",
            || async {
                Ok(survivor_agent.metric(&LOCAL_BYTES).await? - local_before[1 - lost] >= rest)
            },
        )
        .await?;
        let agent = self.members[third].agent()?;
        eventually("the puller counting the layer from peers", || async {
            Ok(agent.metric(&PEER_BYTES).await? - peer_before >= size as f64)
        })
        .await?;
        Ok((
            lost_name,
            self.members[survivor].spec.name.clone(),
            received,
            took,
        ))
    }

    /// Stops each agent as kubelet would and runs `reflektor cleanup`: the
    /// node's certs.d must be what the operator had before `configuration`.
    async fn cleanup(&mut self, roles: &[usize]) -> Result<()> {
        for &i in roles {
            if self.members[i].node.is_none() {
                self.record(
                    i,
                    Column::Cleanup,
                    Cell::not_run("lost", "the node was lost on purpose"),
                    None,
                );
                continue;
            }
            if !self.options.wants(Column::Cleanup) {
                continue;
            }
            self.check(i, Column::Cleanup, async |run: &mut Self| {
                let member = &mut run.members[i];
                let certs = member.node()?.certs_dir().to_owned();
                let upstream = run.upstream.as_ref().context("the upstream exists")?;
                let dir = certs.join(upstream.addr().to_string());
                let expected = BTreeMap::from([
                    (dir.clone(), None),
                    (
                        dir.join("hosts.toml"),
                        Some(upstream.hosts_toml().into_bytes()),
                    ),
                ]);
                if let Some(status) = member.stop_agent().await? {
                    ensure!(status.success(), "the agent exited {status} on SIGTERM");
                }
                run.reflektor.cleanup(member.node()?)?;
                let found = tree(&certs)?;
                ensure!(
                    found == expected,
                    "certs.d after cleanup holds {:?}; expected only {}",
                    found.keys().collect::<Vec<_>>(),
                    dir.join("hosts.toml").display()
                );
                Ok("certs.d is the operator's again, byte for byte".to_owned())
            })
            .await?;
        }
        Ok(())
    }

    /// Waits until node `i` advertises every digest it holds, `image`'s
    /// now included: only then can a peer find it.
    async fn wait_advertised(&mut self, i: usize, image: &TestImage) -> Result<()> {
        self.held[i] += scenario::digests_held(image, &self.host)? as f64;
        let held = self.held[i];
        let agent = self.members[i].agent()?;
        eventually(
            &format!("{} advertising {}", self.members[i].spec.name, image.tag),
            || async { Ok(agent.metric(&ADVERTISED_DIGESTS).await? >= held) },
        )
        .await
    }

    /// Runs one check and records its cell.
    async fn check(
        &mut self,
        i: usize,
        column: Column,
        body: impl AsyncFnOnce(&mut Self) -> Result<String>,
    ) -> Result<()> {
        let started = Instant::now();
        let result = body(self).await;
        self.conclude(i, column, started, result)
    }

    /// Records a check's result; a failure is also returned, to stop the cluster.
    fn conclude(
        &mut self,
        i: usize,
        column: Column,
        started: Instant,
        result: Result<String>,
    ) -> Result<()> {
        let took = started.elapsed();
        match result {
            Ok(detail) => {
                self.record(i, column, Cell::pass(detail, Some(took)), Some(took));
                Ok(())
            }
            Err(error) => {
                let detail = format!("{error:#}");
                self.record(
                    i,
                    column,
                    Cell::Fail {
                        detail: detail.clone(),
                    },
                    Some(took),
                );
                Err(error.context(format!(
                    "{} on node {}",
                    column.key(),
                    self.members[i].spec.name
                )))
            }
        }
    }

    fn record(&mut self, i: usize, column: Column, cell: Cell, took: Option<Duration>) {
        let took = took
            .filter(|t| t.as_secs_f64() >= 0.05)
            .map(|t| format!(" {:.1}s", t.as_secs_f64()))
            .unwrap_or_default();
        let line = match &cell {
            Cell::Pass { detail, .. } => format!("ok{took}: {detail}"),
            Cell::Expected { detail } => format!("expected{took}: {detail}"),
            Cell::Fail { detail } => format!("FAIL{took}: {detail}"),
            Cell::NotRun { short, reason } => format!("{short}: {reason}"),
            Cell::Unavailable { reason } => format!("unavailable: {reason}"),
        };
        progress(
            &self.spec.name,
            &format!("{} {} {line}", self.members[i].spec.name, column.key()),
        );
        self.rows[i].cells.insert(column, cell);
    }

    /// After a failure: the step that failed gets a Fail cell if it did not
    /// record one (a setup step, say), in the first check not yet recorded,
    /// which is where the scenario was; the rest did not run.
    fn mark_rest_not_run(&mut self, error: &anyhow::Error) {
        let failed_cell = self
            .rows
            .iter()
            .any(|row| row.cells.values().any(Cell::is_failure));
        if !failed_cell {
            let missing = self.rows.iter_mut().find_map(|row| {
                let column = Column::ALL
                    .into_iter()
                    .find(|c| !row.cells.contains_key(c))?;
                Some((row, column))
            });
            if let Some((row, column)) = missing {
                row.cells.insert(
                    column,
                    Cell::Fail {
                        detail: format!("{error:#}"),
                    },
                );
            }
        }
        let why = format!("not run: the cluster stopped at an earlier failure ({error:#})");
        for row in &mut self.rows {
            for column in Column::ALL {
                row.cells
                    .entry(column)
                    .or_insert_with(|| Cell::not_run("stopped", why.clone()));
            }
        }
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

    /// Cells left without a result: filtered out, or a harness bug.
    fn fill_unrecorded(&mut self) {
        for (i, row) in self.rows.iter_mut().enumerate() {
            let name = &self.members[i].spec.name;
            for column in Column::ALL {
                row.cells.entry(column).or_insert_with(|| {
                    if !self.options.wants(column) {
                        Cell::not_run("filtered", "not selected by --filter")
                    } else {
                        Cell::Fail {
                            detail: format!(
                                "the scenario recorded no result for {} on {name}: a harness \
                                 bug, since every role's checks are recorded or said not to apply",
                                column.key()
                            ),
                        }
                    }
                });
            }
        }
    }
}

/// Bytes containerd has written into its ingest files so far.
fn ingest_bytes(ingest: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(ingest) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::metadata(e.path().join("data")).ok())
        .map(|m| m.len())
        .sum()
}

/// Everything under `dir`: each file with its bytes, each directory with
/// `None`, so that a leftover empty directory (an empty `_backup/`, say)
/// counts as a difference too.
fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, Option<Vec<u8>>>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                found.insert(path.clone(), None);
                pending.push(path);
            } else {
                let bytes =
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                found.insert(path, Some(bytes));
            }
        }
    }
    Ok(found)
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
