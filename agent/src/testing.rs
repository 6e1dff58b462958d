//! Waiting in tests, shared by the agent's own tests and the harness: a
//! condition polled until it holds or patience runs out, with a message
//! that names what did not happen. Tests wait on conditions, never on
//! fixed sleeps, so they are as fast as the machine and no faster.

use std::time::Duration;

use anyhow::{Result, bail};

/// Polls `check` until it answers `true`, fails at once if it fails, and
/// fails after `patience` naming `what`.
pub async fn eventually(
    what: &str,
    patience: Duration,
    mut check: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    // Often enough that a quick condition costs little waiting, seldom
    // enough that a check doing real work (HTTP, gRPC) is not a load.
    let poll = (patience / 500).clamp(Duration::from_millis(20), Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what} did not happen within {patience:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn it_waits_for_the_condition_and_names_what_never_happened() {
        let mut calls = 0;
        eventually("the third call", Duration::from_secs(1), async || {
            calls += 1;
            Ok(calls == 3)
        })
        .await
        .unwrap();
        assert_eq!(calls, 3);

        let error = eventually("never", Duration::from_secs(1), async || Ok(false))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "never did not happen within 1s");
    }
}
