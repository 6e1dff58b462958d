//! The load runner's results: what each phase sent, how many failed, its
//! latencies, and the agent's cost over the run, judged against the two
//! things a node can't do without (no failed request, no leaked file
//! descriptor).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::stats::percentile;

const MIB: f64 = 1024.0 * 1024.0;

/// Latencies of one phase's requests, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// `None` when no request completed.
    pub fn of(ms: &[f64]) -> Option<Self> {
        Some(Self {
            p50_ms: percentile(ms, 50.0)?,
            p99_ms: percentile(ms, 99.0)?,
            max_ms: percentile(ms, 100.0)?,
        })
    }
}

/// One phase of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    /// Requests sent and answered, failed ones included.
    pub requests: u64,
    pub errors: u64,
    /// The first failure, to start from when `errors` is not 0.
    pub first_error: Option<String>,
    pub seconds: f64,
    pub latency: Option<Latency>,
    /// What the phase measured beyond requests and latency: throughput,
    /// the rate it reached, the slow connections the agent cut.
    pub detail: String,
}

/// Collects one phase's outcomes as they come.
#[derive(Debug, Default)]
pub struct Tally {
    latencies_ms: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    pub fn ok(&mut self, ms: f64) {
        self.latencies_ms.push(ms);
    }

    pub fn failed(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{error:#}"));
    }

    pub fn merge(&mut self, other: Tally) {
        self.latencies_ms.extend(other.latencies_ms);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn requests(&self) -> u64 {
        self.latencies_ms.len() as u64 + self.errors
    }

    pub fn into_phase(self, name: impl Into<String>, seconds: f64, detail: String) -> Phase {
        Phase {
            name: name.into(),
            requests: self.requests(),
            errors: self.errors,
            first_error: self.first_error,
            seconds,
            latency: Latency::of(&self.latencies_ms),
            detail,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub release_build: bool,
    /// The containerd build the agent served from.
    pub containerd: String,
    pub phases: Vec<Phase>,
    /// The agent's peak RSS over every phase.
    pub peak_rss: u64,
    /// The agent's open file descriptors before the first phase and once
    /// the last one's connections were closed.
    pub fds_before: usize,
    pub fds_after: usize,
    /// `reflektor_limit_hits_total` by limit, over the run.
    pub limit_hits: Vec<(String, f64)>,
}

impl Report {
    pub fn errors(&self) -> u64 {
        self.phases.iter().map(|p| p.errors).sum()
    }

    /// What failed of the run's two goals, in words; empty when both held.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.errors() > 0 {
            failures.push(format!("{} requests failed", self.errors()));
        }
        if self.fds_before != self.fds_after {
            failures.push(format!(
                "the agent held {} file descriptors before and {} after",
                self.fds_before, self.fds_after
            ));
        }
        failures
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::runner::write_report(dir, "load", self.markdown(), self)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "One agent serving from containerd ({}){}, each phase after the last.\n",
            self.containerd,
            if self.release_build {
                ""
            } else {
                "; **the agent was a debug build**"
            }
        );
        let _ = writeln!(
            md,
            "| phase | requests | errors | seconds | p50 ms | p99 ms | max ms | |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for phase in &self.phases {
            let (p50, p99, max) = phase.latency.map_or_else(
                || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
                |l| {
                    (
                        format!("{:.2}", l.p50_ms),
                        format!("{:.2}", l.p99_ms),
                        format!("{:.2}", l.max_ms),
                    )
                },
            );
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {p50} | {p99} | {max} | {} |",
                phase.name,
                phase.requests,
                if phase.errors == 0 {
                    "0".to_owned()
                } else {
                    format!("**{}**", phase.errors)
                },
                phase.seconds,
                phase.detail
            );
        }
        let _ = writeln!(
            md,
            "\nAgent: peak RSS {:.1} MiB; open file descriptors {} before, {} after.",
            self.peak_rss as f64 / MIB,
            self.fds_before,
            self.fds_after
        );
        let hits: Vec<String> = self
            .limit_hits
            .iter()
            .filter(|(_, n)| *n > 0.0)
            .map(|(limit, n)| format!("{limit} {n}"))
            .collect();
        let _ = writeln!(
            md,
            "Limits hit (`reflektor_limit_hits_total`): {}.",
            if hits.is_empty() {
                "none".to_owned()
            } else {
                hits.join(", ")
            }
        );
        let failures = self.failures();
        if failures.is_empty() {
            let _ = writeln!(md, "\nNo request failed, and no file descriptor leaked.");
        } else {
            let _ = writeln!(md, "\n**Failed:** {}.", failures.join("; "));
            for phase in self.phases.iter().filter(|p| p.first_error.is_some()) {
                let _ = writeln!(
                    md,
                    "- {}: first error: {}",
                    phase.name,
                    phase.first_error.as_deref().unwrap_or_default()
                );
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(errors: u64, fds_after: usize) -> Report {
        let mut tally = Tally::default();
        for ms in 1..=100 {
            tally.ok(f64::from(ms));
        }
        for _ in 0..errors {
            tally.failed(&anyhow::anyhow!("connection reset"));
        }
        Report {
            release_build: true,
            containerd: "1.6.20~ds1".to_owned(),
            phases: vec![tally.into_phase("HEADs", 30.0, "10000/s".to_owned())],
            peak_rss: 20 << 20,
            fds_before: 20,
            fds_after,
            limit_hits: vec![("header_timeout".to_owned(), 300.0)],
        }
    }

    #[test]
    fn a_clean_run_has_no_failures() {
        let report = report(0, 20);
        assert!(report.failures().is_empty());
        let phase = &report.phases[0];
        assert_eq!(phase.requests, 100);
        let latency = phase.latency.unwrap();
        assert_eq!((latency.p50_ms, latency.p99_ms), (50.0, 99.0));
        let md = report.markdown();
        assert!(md.contains("No request failed"), "{md}");
        assert!(md.contains("header_timeout 300"), "{md}");
    }

    #[test]
    fn errors_and_leaked_descriptors_fail_the_run() {
        let report = report(2, 23);
        assert_eq!(report.phases[0].requests, 102);
        let failures = report.failures();
        assert_eq!(failures.len(), 2, "{failures:?}");
        let md = report.markdown();
        assert!(
            md.contains("**2**") && md.contains("20 file descriptors before and 23 after"),
            "{md}"
        );
        assert!(md.contains("first error: connection reset"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        report.write(dir.path()).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("load.json")).unwrap()).unwrap();
        assert_eq!(json["fds_after"], 23);
    }
}
