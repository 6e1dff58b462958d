//! The compatibility report: one row per node of each cluster, one cell per
//! check, written for people (terminal table, `report.md`), for tools
//! (`report.json`) and for CI systems (`junit.xml`).
//!
//! A cell says what happened and, when it did not pass, why: a failure, a
//! refusal the policy demands, a check that did not apply to that node's
//! role, or a package source this host cannot reach. Only failures gate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;

use crate::cluster::Expect;
use crate::deploy::Deploy;

/// A report's checks, the columns of its table: the release matrix's
/// ([`Column`]) or the cluster suite's. Everything else about a report
/// (rows, cells, Markdown, JSON, JUnit) is shared.
pub trait Check: Copy + Ord + std::fmt::Debug + Serialize + 'static {
    /// Every check, in table order.
    const ALL: &'static [Self];
    /// The report's title.
    const HEADING: &'static str;
    /// What the table's words mean.
    const LEGEND: &'static str;

    /// The name filters match and JSON and JUnit use.
    fn key(self) -> &'static str;
    /// A short table header.
    fn title(self) -> &'static str;
    /// What the check proves, for the report's legend.
    fn meaning(self) -> &'static str;
    /// The table's text for a passed cell, where it says more than `ok`.
    fn passed_text(self, _row: &Row<Self>) -> Option<String> {
        None
    }
}

/// The release matrix's checks, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Column {
    Version,
    Verdict,
    Doctor,
    MirrorConfig,
    ByTag,
    ByDigest,
    MultiArch,
    Large,
    UpstreamOffline,
    NodeLoss,
    Partition,
    AgentKill,
    DiskFull,
    ContainerdRestart,
    Cleanup,
}

impl Check for Column {
    const ALL: &'static [Column] = &[
        Column::Version,
        Column::Verdict,
        Column::Doctor,
        Column::MirrorConfig,
        Column::ByTag,
        Column::ByDigest,
        Column::MultiArch,
        Column::Large,
        Column::UpstreamOffline,
        Column::NodeLoss,
        Column::Partition,
        Column::AgentKill,
        Column::DiskFull,
        Column::ContainerdRestart,
        Column::Cleanup,
    ];
    const HEADING: &'static str = "reflektor compatibility report";
    const LEGEND: &'static str = "`ok` passed, `expected` is a refusal the cluster file \
        declares, `FAIL` gates the release, `unavailable` means this host cannot reach the \
        package source, and any other word says why the check did not run on that node.";

    fn key(self) -> &'static str {
        match self {
            Column::Version => "version",
            Column::Verdict => "verdict",
            Column::Doctor => "doctor",
            Column::MirrorConfig => "mirror-config",
            Column::ByTag => "by-tag",
            Column::ByDigest => "by-digest",
            Column::MultiArch => "multi-arch",
            Column::Large => "large",
            Column::UpstreamOffline => "upstream-offline",
            Column::NodeLoss => "node-loss",
            Column::Partition => "partition",
            Column::AgentKill => "agent-kill",
            Column::DiskFull => "disk-full",
            Column::ContainerdRestart => "containerd-restart",
            Column::Cleanup => "cleanup",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Column::Version => "containerd",
            Column::Verdict => "verdict",
            Column::Doctor => "doctor",
            Column::MirrorConfig => "mirror cfg",
            Column::ByTag => "by tag",
            Column::ByDigest => "by digest",
            Column::MultiArch => "multi-arch",
            Column::Large => "256 MiB",
            Column::UpstreamOffline => "upstream off",
            Column::NodeLoss => "node loss",
            Column::Partition => "partition",
            Column::AgentKill => "agent kill",
            Column::DiskFull => "disk full",
            Column::ContainerdRestart => "ctrd restart",
            Column::Cleanup => "cleanup",
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            Column::Version => "what `containerd --version` reported",
            Column::Verdict => {
                "the agent's version policy, against the verdict the cluster file expects"
            }
            Column::Doctor => {
                "`reflektor doctor` on the live node; a refused node must also make `reflektor registry` exit non-zero"
            }
            Column::MirrorConfig => {
                "`reflektor configuration` wrote hosts.toml with the agent ahead of the upstream, and kept the original in _backup"
            }
            Column::ByTag => "a small image pulled by tag through CRI, its layers served by a peer",
            Column::ByDigest => {
                "a small image pulled by digest through CRI, its layers served by a peer"
            }
            Column::MultiArch => {
                "an OCI index (linux/amd64 + linux/arm64) pulled by tag, the host platform's layers served by a peer"
            }
            Column::Large => "a 256 MiB layer pulled through a peer",
            Column::UpstreamOffline => {
                "with the upstream registry stopped, pulls by tag and digest still succeed from peers"
            }
            Column::NodeLoss => {
                "the node serving a large pull is killed mid-transfer; the pull still completes, resumed from another holder"
            }
            Column::Partition => {
                "the node serving a 64 MiB layer is cut off mid-transfer (its packets dropped); the pull resumes from another holder within the stall bound, and the layer is stored whole"
            }
            Column::AgentKill => {
                "pull after pull, the serving agent is SIGKILLed mid-layer and restarted as kubelet restarts it; every pull completes from the other holder, every layer whole, and the restarted agents advertise again"
            }
            Column::DiskFull => {
                "the puller's content store fills up mid-pull: the pull fails with \"no space left on device\", nothing of the layer is stored or served, and the same pull succeeds once there is room"
            }
            Column::ContainerdRestart => {
                "containerd restarts under the agent; the agent keeps serving and advertises what is pulled afterwards"
            }
            Column::Cleanup => "`reflektor cleanup` restores certs.d byte for byte",
        }
    }

    fn passed_text(self, row: &Row) -> Option<String> {
        match self {
            Column::Version => row.reported.clone(),
            Column::Verdict => {
                let verdict = row.verdict.clone().unwrap_or_default();
                Some(if row.expect == Expect::TooOld {
                    format!("{verdict} (expected)")
                } else {
                    verdict
                })
            }
            _ => None,
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Cell {
    Pass {
        detail: String,
        seconds: Option<f64>,
    },
    /// A refusal the version policy demands, seen as declared.
    Expected {
        detail: String,
    },
    Fail {
        detail: String,
    },
    /// Did not run here; `short` is the table's word for why.
    NotRun {
        short: String,
        reason: String,
    },
    /// The node's package source cannot be reached from this host.
    Unavailable {
        reason: String,
    },
}

impl Cell {
    pub fn pass(detail: impl Into<String>, took: Option<Duration>) -> Self {
        Cell::Pass {
            detail: detail.into(),
            seconds: took.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
        }
    }

    pub fn not_run(short: &str, reason: impl Into<String>) -> Self {
        Cell::NotRun {
            short: short.to_owned(),
            reason: reason.into(),
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, Cell::Fail { .. })
    }

    /// The word in the terminal table.
    fn short(&self) -> String {
        match self {
            Cell::Pass {
                seconds: Some(s), ..
            } if *s >= 0.1 => format!("ok {s:.1}s"),
            Cell::Pass { .. } => "ok".to_owned(),
            Cell::Expected { .. } => "expected".to_owned(),
            Cell::Fail { .. } => "FAIL".to_owned(),
            Cell::NotRun { short, .. } => short.clone(),
            Cell::Unavailable { .. } => "unavailable".to_owned(),
        }
    }

    pub fn explanation(&self) -> &str {
        match self {
            Cell::Pass { detail, .. } | Cell::Expected { detail } | Cell::Fail { detail } => detail,
            Cell::NotRun { reason, .. } | Cell::Unavailable { reason } => reason,
        }
    }
}

/// How the agent ran, with the pod's start-to-Ready time where measured.
fn deploy_cell<C: Check>(row: &Row<C>) -> String {
    match (row.deploy, row.ready_seconds) {
        (None, _) => "-".to_owned(),
        (Some(deploy), None) => deploy.to_string(),
        (Some(deploy), Some(ready)) => format!("{deploy}, Ready {ready:.1}s"),
    }
}

/// One node of one cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Row<C: Check = Column> {
    pub cluster: String,
    pub node: String,
    /// Where the node's containerd came from: the package source id, e.g.
    /// `debian:bookworm`, or a live cluster node's kubelet version.
    pub source: String,
    pub package_version: Option<String>,
    /// What `containerd --version` reported.
    pub reported: Option<String>,
    /// The agent's verdict on it.
    pub verdict: Option<String>,
    pub expect: Expect,
    /// How the agent ran on the node; `None` where it never started.
    pub deploy: Option<Deploy>,
    /// From start to Ready, where the mode measures it (pods do).
    pub ready_seconds: Option<f64>,
    /// How the node was set up and how its agent ran, for whoever reads
    /// a failure (which runc, image pull time).
    pub notes: Vec<String>,
    pub cells: BTreeMap<C, Cell>,
}

impl<C: Check> Row<C> {
    pub fn new(cluster: &str, node: &str, source: &str, expect: Expect) -> Self {
        Self {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            source: source.to_owned(),
            package_version: None,
            reported: None,
            verdict: None,
            expect,
            deploy: None,
            ready_seconds: None,
            notes: Vec::new(),
            cells: BTreeMap::new(),
        }
    }

    fn cell(&self, column: C) -> Option<&Cell> {
        self.cells.get(&column)
    }
}

/// How a cluster's run ended as a whole.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ClusterOutcome {
    Ran,
    Unavailable {
        source: String,
        reason: String,
    },
    /// Stopped early; the failing cell says where.
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterResult<C: Check = Column> {
    pub name: String,
    pub description: String,
    pub seconds: f64,
    pub outcome: ClusterOutcome,
    pub rows: Vec<Row<C>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report<C: Check = Column> {
    /// `reflektor-e2e <version>`.
    pub generated_by: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub seconds: f64,
    /// Columns `--filter` kept; empty means all.
    pub filter: Vec<String>,
    pub clusters: Vec<ClusterResult<C>>,
}

impl<C: Check> Report<C> {
    pub fn rows(&self) -> impl Iterator<Item = &Row<C>> {
        self.clusters.iter().flat_map(|c| &c.rows)
    }

    /// Cells that gate the release: every failure.
    pub fn failures(&self) -> Vec<(&Row<C>, C, &Cell)> {
        self.rows()
            .flat_map(|row| {
                row.cells
                    .iter()
                    .filter(|(_, cell)| cell.is_failure())
                    .map(move |(column, cell)| (row, *column, cell))
            })
            .collect()
    }

    /// Clusters that stopped early; their failing cell, if any, says where.
    pub fn clusters_stopped(&self) -> Vec<String> {
        self.clusters
            .iter()
            .filter(|c| matches!(c.outcome, ClusterOutcome::Failed { .. }))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Writes report.md, report.json and junit.xml into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write("report.md", self.markdown())?;
        write("report.json", serde_json::to_string_pretty(self)? + "\n")?;
        write("junit.xml", self.junit()?)?;
        Ok(())
    }

    /// The table a person reads at the end of the run.
    pub fn table(&self) -> String {
        let mut table = Table::new();
        table
            .load_style(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic);
        let mut header = vec!["cluster/node".to_owned(), "deploy".to_owned()];
        header.extend(C::ALL.iter().map(|c| c.title().to_owned()));
        table.set_header(header);
        for row in self.rows() {
            let mut line = vec![format!("{}/{}", row.cluster, row.node), deploy_cell(row)];
            line.extend(C::ALL.iter().map(|c| table_cell(row, *c)));
            table.add_row(line);
        }
        table.to_string()
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let failures = self.failures();
        let rows = self.rows().count();
        let _ = writeln!(md, "# {}\n", C::HEADING);
        let _ = writeln!(
            md,
            "Generated by {} in {:.0} s. {} rows in {} clusters; **{}**.\n",
            self.generated_by,
            self.seconds,
            rows,
            self.clusters.len(),
            match (failures.len(), self.clusters_stopped().len()) {
                (0, 0) => "no gated check failed".to_owned(),
                (failed, stopped) =>
                    format!("{failed} gated checks failed, {stopped} clusters stopped early"),
            }
        );
        if !self.filter.is_empty() {
            let _ = writeln!(
                md,
                "Checks selected with `--filter` (setup checks always run): {}.\n",
                self.filter.join(", ")
            );
        }
        let mut header = vec!["cluster/node", "source", "deploy"];
        header.extend(C::ALL.iter().map(|c| c.title()));
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
        for row in self.rows() {
            let mut line = vec![
                format!("{}/{}", row.cluster, row.node),
                row.source.clone(),
                deploy_cell(row),
            ];
            line.extend(C::ALL.iter().map(|c| table_cell(row, *c)));
            let _ = writeln!(md, "| {} |", line.join(" | ").replace('\n', " "));
        }
        let _ = writeln!(md, "\n## Checks\n");
        for column in C::ALL {
            let _ = writeln!(md, "- **{}**: {}.", column.title(), column.meaning());
        }
        let _ = writeln!(md, "\n{}\n", C::LEGEND);
        for cluster in &self.clusters {
            let _ = writeln!(md, "## Cluster `{}`\n", cluster.name);
            if !cluster.description.is_empty() {
                let _ = writeln!(md, "{}\n", cluster.description);
            }
            let _ = writeln!(
                md,
                "Took {:.0} s. {}\n",
                cluster.seconds,
                outcome_line(&cluster.outcome)
            );
            for row in &cluster.rows {
                let _ = writeln!(
                    md,
                    "### {} ({}{})\n",
                    row.node,
                    row.source,
                    row.package_version
                        .as_deref()
                        .map(|v| format!(", package {v}"))
                        .unwrap_or_default()
                );
                for note in &row.notes {
                    let _ = writeln!(md, "- {note}");
                }
                for (column, cell) in &row.cells {
                    let _ = writeln!(
                        md,
                        "- {} — {}: {}",
                        column.title(),
                        cell.short(),
                        cell.explanation().replace('\n', "\n  ")
                    );
                }
                let _ = writeln!(md);
            }
        }
        md
    }

    pub fn junit(&self) -> Result<String> {
        let mut report = quick_junit::Report::new("reflektor-e2e");
        for cluster in &self.clusters {
            let mut suite = TestSuite::new(cluster.name.as_str());
            for row in &cluster.rows {
                for (column, cell) in &row.cells {
                    let mut status = match cell {
                        Cell::Pass { .. } | Cell::Expected { .. } => TestCaseStatus::success(),
                        Cell::Fail { .. } => TestCaseStatus::non_success(NonSuccessKind::Failure),
                        Cell::NotRun { .. } | Cell::Unavailable { .. } => TestCaseStatus::skipped(),
                    };
                    if !matches!(cell, Cell::Pass { .. } | Cell::Expected { .. }) {
                        status.set_message(cell.short());
                        status.set_description(cell.explanation());
                    }
                    let mut case = TestCase::new(format!("{} {}", row.node, column.key()), status);
                    case.set_classname(format!("{}.{}", cluster.name, row.node));
                    if let Cell::Pass {
                        seconds: Some(s), ..
                    } = cell
                    {
                        case.set_time(Duration::from_secs_f64(*s));
                    }
                    if matches!(cell, Cell::Pass { .. } | Cell::Expected { .. }) {
                        case.set_system_out(cell.explanation());
                    }
                    suite.add_test_case(case);
                }
            }
            report.add_test_suite(suite);
        }
        report.to_string().context("serialising the JUnit report")
    }
}

fn table_cell<C: Check>(row: &Row<C>, column: C) -> String {
    match row.cell(column) {
        Some(cell @ (Cell::Pass { .. } | Cell::Expected { .. })) => {
            column.passed_text(row).unwrap_or_else(|| cell.short())
        }
        Some(cell) => cell.short(),
        None => "·".to_owned(),
    }
}

fn outcome_line(outcome: &ClusterOutcome) -> String {
    match outcome {
        ClusterOutcome::Ran => "Ran to the end.".to_owned(),
        ClusterOutcome::Unavailable { source, reason } => {
            format!("Not run: `{source}` is unavailable on this host ({reason}).")
        }
        ClusterOutcome::Failed { error } => format!("Stopped early: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut ok = Row::new("c", "a", "debian:bookworm", Expect::Supported);
        ok.reported = Some("1.6.20~ds1".into());
        ok.verdict = Some("supported".into());
        ok.cells
            .insert(Column::Version, Cell::pass("reported", None));
        ok.cells
            .insert(Column::Verdict, Cell::pass("supported", None));
        ok.cells.insert(
            Column::ByTag,
            Cell::pass("3 MiB from peers", Some(Duration::from_millis(1234))),
        );
        let mut bad = Row::new("c", "b", "debian:sid", Expect::Supported);
        bad.cells.insert(
            Column::ByDigest,
            Cell::Fail {
                detail: "no <bytes> & such".into(),
            },
        );
        let mut gone = Row::new("u", "x", "ubuntu:noble", Expect::Supported);
        gone.cells.insert(
            Column::Version,
            Cell::Unavailable {
                reason: "cannot resolve archive.ubuntu.com".into(),
            },
        );
        Report {
            generated_by: "test".into(),
            started_unix: 0,
            seconds: 1.0,
            filter: vec![],
            clusters: vec![
                ClusterResult {
                    name: "c".into(),
                    description: String::new(),
                    seconds: 1.0,
                    outcome: ClusterOutcome::Ran,
                    rows: vec![ok, bad],
                },
                ClusterResult {
                    name: "u".into(),
                    description: String::new(),
                    seconds: 0.0,
                    outcome: ClusterOutcome::Unavailable {
                        source: "ubuntu:noble".into(),
                        reason: "cannot resolve archive.ubuntu.com".into(),
                    },
                    rows: vec![gone],
                },
            ],
        }
    }

    #[test]
    fn only_failures_gate() {
        let report = sample();
        let failures = report.failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0.node, "b");
        assert_eq!(failures[0].1, Column::ByDigest);
    }

    #[test]
    fn every_format_names_the_unavailable_source_and_the_failure() {
        let report = sample();
        let table = report.table();
        assert!(
            table.contains("1.6.20~ds1") && table.contains("ok 1.2s"),
            "{table}"
        );
        assert!(
            table.contains("unavailable") && table.contains("FAIL"),
            "{table}"
        );
        let md = report.markdown();
        assert!(
            md.contains("1 gated checks failed, 0 clusters stopped early"),
            "{md}"
        );
        assert!(md.contains("unavailable on this host"), "{md}");
        let junit = report.junit().unwrap();
        assert!(
            junit.contains("<failure") && junit.contains("&lt;bytes&gt; &amp; such"),
            "{junit}"
        );
        assert!(junit.contains("<skipped"), "{junit}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["clusters"][0]["rows"][1]["cells"]["by-digest"]["status"],
            "fail"
        );
        assert_eq!(json["clusters"][1]["outcome"]["status"], "unavailable");
    }
}
