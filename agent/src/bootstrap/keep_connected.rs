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
/// The most one round of asking and dialing may take: above the router's
/// 10 s connect timeout, well below the manifests' 60 s startup probe.
const ROUND_LIMIT: Duration = Duration::from_secs(15);

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
        // Bounded, so that addresses that never answer (nodes powered off,
        // a firewalled port) cannot hold `/readyz` past the startup probe.
        if tokio::time::timeout(ROUND_LIMIT, dial(&router, bootstrapper.as_ref()))
            .await
            .is_err()
        {
            tracing::warn!(
                limit = ?ROUND_LIMIT,
                "not every bootstrap address answered in time; going on with those that did"
            );
        }
        if !first_round.ended() {
            first_round.0.store(true, Ordering::Release);
            let peers = router.routing_table_size().await;
            if peers > 0 {
                tracing::info!(peers, "bootstrapped");
            } else {
                tracing::warn!(
                    "bootstrap found no peer yet: serving this node's content, and looking \
                     for peers with backoff (a cluster of one stays like this)"
                );
            }
        }
        // Fills the routing table from the peers just met; after the first
        // round is marked, since its query may take libp2p's own timeout.
        if let Err(error) = router.bootstrap().await {
            tracing::debug!(%error, "bootstrap query failed");
        }
        let peers = router.routing_table_size().await;
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

/// Asks the bootstrapper and dials every address it names at once.
async fn dial(router: &Router, bootstrapper: &dyn Bootstrapper) {
    let own = router.listen_addrs().await;
    let peers = match bootstrapper.peers().await {
        Ok(peers) => peers,
        Err(error) => {
            tracing::warn!(%error, "no bootstrap peers");
            return;
        }
    };
    let dials = peers
        .into_iter()
        .filter(|a| !own.contains(a))
        .map(|addr| async move {
            if let Err(error) = router.add_peer(addr.clone()).await {
                tracing::debug!(%addr, %error, "bootstrap peer not reachable");
            }
        });
    futures::future::join_all(dials).await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::bootstrap::{StaticPeers, socket_multiaddr};
    use crate::routing::RouterConfig;

    /// Five addresses that accept a connection and never answer, as a node
    /// that hangs or a middlebox would: dialed one after the other they
    /// would hold the first round for five connect timeouts.
    #[tokio::test]
    async fn silent_bootstrap_addresses_hold_the_first_round_for_one_timeout_at_most() {
        let mut silent = Vec::new();
        let mut held = Vec::new();
        for _ in 0..5 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            silent.push(socket_multiaddr(listener.local_addr().unwrap()));
            held.push(tokio::spawn(async move {
                let mut open = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    open.push(stream);
                }
            }));
        }
        let listen = socket_multiaddr("127.0.0.1:0".parse().unwrap());
        let mut config = RouterConfig::new(listen, None, 5000);
        config.connect_timeout = Duration::from_millis(800);
        let (router, _loop) = Router::start(config).await.unwrap();
        let first_round = FirstRound::default();
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        tokio::spawn(keep_connected(
            router,
            Arc::new(StaticPeers(silent)),
            first_round.clone(),
            shutdown.clone(),
        ));
        while !first_round.ended() {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the first round is still going after {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        held.iter().for_each(tokio::task::JoinHandle::abort);
    }
}
