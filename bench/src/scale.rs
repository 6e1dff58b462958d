//! The scale runs' results: how findability, advertising, resolve latency
//! and memory grow from a few agents to many, judged against the targets
//! at the largest size.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::stats::Spread;

/// Resolve latency targets at the largest cluster, in ms.
const P50_TARGET_MS: f64 = 2.0;
const P99_TARGET_MS: f64 = 20.0;
/// RSS target for the node advertising every key, in MiB.
const RSS_TARGET_MIB: f64 = 40.0;

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub agents: usize,
    /// From a new node's announcement of a key being out to every other
    /// node, asked at once, answering a HEAD for it.
    pub findable_ms: f64,
    /// From the bulk node's start to all its keys advertised.
    pub advertise_all_s: f64,
    pub resolve_p50_ms: f64,
    pub resolve_p99_ms: f64,
    /// Mean time the agents spent finding providers (their
    /// `reflektor_resolve_duration_seconds`), a part of the latency above.
    pub lookup_mean_ms: f64,
    /// Lookups that took longer than the agent's resolve timeout (20 ms)
    /// and were answered 404, as containerd would see them.
    pub misses: usize,
    /// p50 of the same HEAD asked of the holder itself: the HTTP floor.
    pub local_p50_ms: f64,
    /// Mean CPU of one plain member at rest, in percent of a core.
    pub idle_cpu_percent: f64,
    /// RSS of the plain members after joining, before any key.
    pub rss_idle_mib: Spread,
    /// RSS of the node advertising every key.
    pub rss_bulk_mib: f64,
    /// RSS of the other members once they store the bulk node's records.
    pub rss_others_after_mib: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub release_build: bool,
    pub keys: usize,
    pub lookups: usize,
    pub scales: Vec<Scale>,
}

impl ScaleReport {
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("scale.md");
        fs::write(&path, self.markdown()).with_context(|| format!("writing {}", path.display()))?;
        let path = dir.join("scale.json");
        fs::write(&path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Agents with OCI-layout stores on loopback{}; one node advertises {} digests; \
             {} resolves (HEAD of a blob only that node holds, through a random other agent).\n",
            if self.release_build {
                ""
            } else {
                " (**debug build**)"
            },
            self.keys,
            self.lookups
        );
        let _ = writeln!(
            md,
            "| agents | new key found by all, after its announcement (ms) | advertise {} keys (s) | resolve p50 (ms) | resolve p99 (ms) | of which DHT lookup, mean (ms) | misses (> 20 ms, 404) | same HEAD from the holder, p50 (ms) | idle CPU per agent (%) | RSS idle, median / max (MiB) | RSS with {} keys (MiB) | RSS of the others after, median / max (MiB) |",
            self.keys, self.keys
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for s in &self.scales {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} |",
                s.agents,
                s.findable_ms,
                s.advertise_all_s,
                s.resolve_p50_ms,
                s.resolve_p99_ms,
                s.lookup_mean_ms,
                s.misses,
                s.local_p50_ms,
                s.idle_cpu_percent,
                s.rss_idle_mib.median,
                s.rss_idle_mib.max,
                s.rss_bulk_mib,
                s.rss_others_after_mib.median,
                s.rss_others_after_mib.max
            );
        }
        if let Some(largest) = self.scales.iter().max_by_key(|s| s.agents) {
            let _ = writeln!(
                md,
                "\n| target, at {} agents | measured | met |\n|---|---|---|",
                largest.agents
            );
            let row = |md: &mut String, name: String, value: f64, met: bool| {
                let _ = writeln!(
                    md,
                    "| {name} | {value:.2} | {} |",
                    if met { "yes" } else { "**no**" }
                );
            };
            row(
                &mut md,
                format!("resolve p50 <= {P50_TARGET_MS} ms"),
                largest.resolve_p50_ms,
                largest.resolve_p50_ms <= P50_TARGET_MS,
            );
            row(
                &mut md,
                format!("resolve p99 <= {P99_TARGET_MS} ms"),
                largest.resolve_p99_ms,
                largest.resolve_p99_ms <= P99_TARGET_MS,
            );
            row(
                &mut md,
                format!("RSS with {} keys <= {RSS_TARGET_MIB} MiB", self.keys),
                largest.rss_bulk_mib,
                largest.rss_bulk_mib <= RSS_TARGET_MIB,
            );
        }
        md
    }
}
