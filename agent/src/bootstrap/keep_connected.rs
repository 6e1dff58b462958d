//! The bootstrap loop: ask, dial, and keep asking.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Bootstrapper;
use crate::backoff::Backoff;
use crate::routing::Router;

/// How often a node with peers bootstraps again, to heal partitions and
/// meet nodes that joined since.
const REBOOTSTRAP: Duration = Duration::from_secs(60);

/// Dials what the bootstrapper names until the node has a peer, retrying
/// with backoff, then again every minute, until `shutdown`.
pub async fn keep_connected(
    router: Router,
    bootstrapper: Arc<dyn Bootstrapper>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let own = router.listen_addrs().await;
        match bootstrapper.peers().await {
            Ok(peers) => {
                for addr in peers.into_iter().filter(|a| !own.contains(a)) {
                    if let Err(error) = router.add_peer(addr.clone()).await {
                        tracing::debug!(%addr, %error, "bootstrap peer not reachable");
                    }
                }
                if let Err(error) = router.bootstrap().await {
                    tracing::debug!(%error, "bootstrap query failed");
                }
            }
            Err(error) => tracing::warn!(%error, "no bootstrap peers"),
        }
        let wait = if router.routing_table_size().await > 0 {
            backoff.reset();
            REBOOTSTRAP
        } else {
            let wait = backoff.failed();
            tracing::info!(?wait, "no peers yet; retrying bootstrap");
            wait
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
