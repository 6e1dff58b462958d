//! A process's cost as the kernel accounts it: CPU time and resident memory
//! from `/proc/<pid>`, so that nginx, docker-registry and the agent are all
//! measured by the same ruler, without instrumenting any of them.

use std::fs;

use anyhow::{Context, Result};

/// User plus system CPU seconds `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .with_context(|| format!("{path} has no `(comm)`: {stat:?}"))?;
    // After `(comm)`: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second()?)
}

fn clock_ticks_per_second() -> Result<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(_SC_CLK_TCK)")?
        .context("_SC_CLK_TCK is not set")?;
    Ok(ticks as f64)
}

/// Peak resident set size in bytes (`VmHWM`).
pub fn peak_rss(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// Resets the peak RSS to the current RSS, so that `VmHWM` covers only
/// what follows (e.g. serving, not the upload before it).
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    fs::write(&path, "5").with_context(|| format!("writing 5 to {path}"))
}

/// Resident set size in bytes now (`VmRSS`).
pub fn rss(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path} has no `{key} <n> kB` line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cost() {
        let me = std::process::id();
        // Burn a little CPU so the count cannot stay at zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(me).unwrap() > 0.0);
        let rss = rss(me).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(peak_rss(me).unwrap() >= rss);
    }
}
