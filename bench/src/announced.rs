//! Waiting until an agent's keys are findable: advertised locally, and
//! every provider announcement out to the DHT. The first alone is not
//! enough: with thousands of keys the announcements take seconds to drain.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use reflektor_e2e::agent::Agent;
use reflektor_e2e::cluster::ADVERTISED_DIGESTS;

const PENDING: [&str; 1] = ["reflektor_announcements_pending"];

/// Waits until `agent` advertises at least `digests` digests and has no
/// announcement pending, for at most `patience`.
pub async fn wait_announced(agent: &Agent, digests: usize, patience: Duration) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let advertised = agent.metric(&ADVERTISED_DIGESTS).await?;
        if advertised >= digests as f64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the agent advertised {advertised} of {digests} digests within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The pending gauge is refreshed once a second: let it see the keys.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    loop {
        let pending = agent.metric(&PENDING).await?;
        if pending == 0.0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{pending} announcements still pending after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
