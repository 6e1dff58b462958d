//! The bootstrap loop: ask, dial, and keep asking.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Bootstrapper;
use crate::backoff::Backoff;
use crate::routing::Router;

/// How often a node with peers bootstraps again, to heal partitions and
/// meet nodes that joined since.
const REBOOTSTRAP: Duration = Duration::from_secs(60);

/// Whether the first bootstrap round has ended, whatever it found. Until
/// then a node cannot tell a cluster of one from peers it has not reached
/// yet; after it, the node serves what it can, and keeps looking.
#[derive(Debug, Clone, Default)]
pub struct FirstRound(Arc<AtomicBool>);

impl FirstRound {
    pub fn ended(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Dials what the bootstrapper names until the node has a peer, retrying
/// with backoff, then again every minute, until `shutdown`. Marks
/// `first_round` when the first attempt is over.
pub async fn keep_connected(
    router: Router,
    bootstrapper: Arc<dyn Bootstrapper>,
    first_round: FirstRound,
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
        let peers = router.routing_table_size().await;
        if !first_round.ended() {
            first_round.0.store(true, Ordering::Release);
            if peers > 0 {
                tracing::info!(peers, "bootstrapped");
            } else {
                tracing::warn!(
                    "bootstrap found no peer yet: serving this node's content, and looking \
                     for peers with backoff (a cluster of one stays like this)"
                );
            }
        }
        let wait = if peers > 0 {
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
