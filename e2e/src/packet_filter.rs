//! Packets dropped with iptables while a guard lives, for faults that
//! loopback nodes can meet without namespaces of their own: a dead port,
//! or a node cut off from everyone.
//!
//! DROP, not REJECT: a dead link or hostPort sends nothing back, so the
//! other side learns of it only by its own timeouts, which is what these
//! faults test.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Marks every rule this module inserts, so that rules a killed run could
/// not delete are found by [`Dropped::clear_leftovers`].
const COMMENT: &str = "reflektor-e2e";

/// Rules in the INPUT chain, deleted on drop. Every loopback packet passes
/// INPUT, so one chain covers both directions of a connection.
pub struct Dropped {
    rules: Vec<Vec<String>>,
}

impl Dropped {
    /// Deletes the rules of an earlier run that was killed before its
    /// guards dropped: left in place, they would cut off this run's nodes,
    /// which reuse the same addresses.
    pub fn clear_leftovers() -> Result<()> {
        let listed = Command::new("iptables")
            .args(["-S", "INPUT"])
            .output()
            .context("running iptables (Debian's iptables package)")?;
        ensure!(
            listed.status.success(),
            "`iptables -S INPUT` exited with {}: {}",
            listed.status,
            String::from_utf8_lossy(&listed.stderr).trim()
        );
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            if !rule.contains(COMMENT) {
                continue;
            }
            // `-S` prints the rule as it was given; comments here have no spaces.
            let rule: Vec<&str> = rule.split_whitespace().collect();
            let status = Command::new("iptables").arg("-D").args(&rule).status()?;
            ensure!(
                status.success(),
                "deleting a leftover rule with `iptables -D {}` exited with {status}",
                rule.join(" ")
            );
            eprintln!(
                "deleted an iptables rule an earlier run left: {}",
                rule.join(" ")
            );
        }
        Ok(())
    }

    /// Every TCP packet to `target`, as a blackholed hostPort drops them.
    pub fn port(target: SocketAddr) -> Result<Self> {
        let (ip, port) = (target.ip().to_string(), target.port().to_string());
        Self::insert(vec![vec!["-p", "tcp", "-d", &ip, "--dport", &port]])
    }

    /// Every packet from or to `ip`: the node's link is down. Its
    /// established connections stall rather than close.
    pub fn node(ip: IpAddr) -> Result<Self> {
        let ip = ip.to_string();
        Self::insert(vec![vec!["-s", &ip], vec!["-d", &ip]])
    }

    fn insert(matches: Vec<Vec<&str>>) -> Result<Self> {
        let mut dropped = Dropped { rules: Vec::new() };
        for matched in matches {
            let mut rule = vec!["INPUT".to_owned()];
            rule.extend(matched.iter().map(ToString::to_string));
            rule.extend(["-m", "comment", "--comment", COMMENT, "-j", "DROP"].map(String::from));
            let status = Command::new("iptables")
                .arg("-I")
                .args(&rule)
                .status()
                .context("running iptables (Debian's iptables package)")?;
            ensure!(
                status.success(),
                "`iptables -I {}` exited with {status}",
                rule.join(" ")
            );
            // Kept as soon as it is in, so that a later failure still deletes it.
            dropped.rules.push(rule);
        }
        Ok(dropped)
    }
}

impl Drop for Dropped {
    fn drop(&mut self) {
        for rule in &self.rules {
            let deleted = Command::new("iptables").arg("-D").args(rule).status();
            if !deleted.is_ok_and(|s| s.success()) {
                eprintln!(
                    "could not delete an iptables rule; run `iptables -D {}` by hand",
                    rule.join(" ")
                );
            }
        }
    }
}
