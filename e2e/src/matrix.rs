//! The doctor matrix: every Debian containerd build as a node, judged by the
//! real agent binary, in one table. This is what `just e2e` runs until the
//! full release matrix (pulls, peers, faults) grows around it.

use std::fmt;

use anyhow::Result;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use reflektor::doctor::Status;
use reflektor::version::VerdictKind;
use serde::Serialize;

use crate::agent::Reflektor;
use crate::debian::{self, Suite};
use crate::node::{ContainerdNode, NodeConfig};

/// One suite's outcome.
#[derive(Debug, Serialize)]
pub struct Row {
    pub suite: String,
    pub package_version: String,
    pub reported: String,
    pub verdict: Option<VerdictKind>,
    pub expected: VerdictKind,
    /// Names of the doctor checks that failed.
    pub failed_checks: Vec<String>,
    pub outcome: Outcome,
    /// The doctor table as a person would read it.
    #[serde(skip)]
    pub doctor_table: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Accepted, and doctor found nothing wrong.
    Pass,
    /// Refused exactly as the policy says it must be.
    ExpectedRefusal,
    Fail,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::ExpectedRefusal => "refused, as expected",
            Outcome::Fail => "FAIL",
        })
    }
}

/// What each suite's containerd must get: bullseye's 1.4 cannot read
/// hosts.toml mirrors; everything newer can.
pub fn expected_verdict(suite: Suite) -> VerdictKind {
    match suite {
        Suite::Bullseye => VerdictKind::TooOld,
        Suite::Bookworm | Suite::Trixie | Suite::Sid => VerdictKind::Supported,
    }
}

pub async fn run_suite(reflektor: &Reflektor, suite: Suite) -> Result<Row> {
    eprintln!("==> {suite}: containerd build");
    let build =
        tokio::task::spawn_blocking(move || debian::fetch(suite, &debian::default_cache_dir()?))
            .await??;
    let reported = build.reported_version()?;
    eprintln!("==> {suite}: starting containerd {reported}");
    let node = ContainerdNode::start(&build, NodeConfig::new(format!("matrix-{suite}"))).await?;
    eprintln!("==> {suite}: reflektor doctor");
    let registry_config_path = node
        .registry_config_path()
        .map(Into::into)
        .unwrap_or_else(|| node.dir().join("certs.d"));
    let doctor = reflektor.doctor(&node, &registry_config_path);
    node.stop().await?;
    let doctor = doctor?;
    let expected = expected_verdict(suite);
    let failed_checks: Vec<String> = doctor
        .report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.check.clone())
        .collect();
    let outcome = match (doctor.report.verdict, doctor.exit_code) {
        (Some(v), 0) if v == expected && failed_checks.is_empty() => Outcome::Pass,
        // An old containerd fails other checks too (1.4 has no config_path);
        // what makes the refusal the expected one is the version check.
        (Some(VerdictKind::TooOld), 1)
            if expected == VerdictKind::TooOld
                && failed_checks.iter().any(|c| c == "containerd version") =>
        {
            Outcome::ExpectedRefusal
        }
        _ => Outcome::Fail,
    };
    Ok(Row {
        suite: suite.to_string(),
        package_version: build.package_version.clone(),
        reported,
        verdict: doctor.report.verdict,
        expected,
        failed_checks,
        outcome,
        doctor_table: doctor.report.render_table(Some(140)),
    })
}

pub fn render(rows: &[Row]) -> String {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "suite",
            "package",
            "containerd reports",
            "verdict",
            "expected",
            "doctor failed",
            "outcome",
        ]);
    for row in rows {
        table.add_row([
            row.suite.clone(),
            row.package_version.clone(),
            row.reported.clone(),
            verdict_name(row.verdict),
            verdict_name(Some(row.expected)),
            if row.failed_checks.is_empty() {
                "-".to_owned()
            } else {
                row.failed_checks.join(", ")
            },
            row.outcome.to_string(),
        ]);
    }
    table.to_string()
}

fn verdict_name(verdict: Option<VerdictKind>) -> String {
    match verdict {
        Some(VerdictKind::Supported) => "supported",
        Some(VerdictKind::TooOld) => "too_old",
        Some(VerdictKind::Unknown) => "unknown",
        None => "-",
    }
    .to_owned()
}
