//! What the mirror remembers about peers that let it down. A peer whose
//! registry port silently drops packets (a dead hostPort, a node gone
//! without a goodbye) stays in the DHT as a provider until its records
//! expire, and without memory every request would try it first again and
//! wait for it: a pull of index, manifest, config and layers paid that wait
//! once per request. So a peer that fails, or that loses a hedged race
//! without a word, is *suspect* for a while: it is still tried, but after
//! every other provider, and the warning that names it is logged once per
//! suspicion rather than once per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so that tests can run a suspicion out with a paused clock.
use tokio::time::Instant;

/// How long a failed peer is tried last. Long enough to cover one image
/// pull; short enough that a peer back from a restart is used again soon.
pub const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// How many suspects are remembered; past it the oldest suspicion is
/// dropped, so a flood of bogus provider records cannot grow the map.
const MAX_SUSPECTS: usize = 1024;

#[derive(Default)]
pub struct PeerHealth {
    suspects: Mutex<HashMap<SocketAddr, Instant>>,
}

impl PeerHealth {
    /// Marks `peer` suspect until [`SUSPECT_FOR`] from now. True when it was
    /// not suspect already: the caller logs then, and only then.
    pub fn suspect(&self, peer: SocketAddr) -> bool {
        let now = Instant::now();
        let mut suspects = self.suspects.lock().expect("peer health poisoned");
        suspects.retain(|_, until| *until > now);
        if suspects.len() >= MAX_SUSPECTS && !suspects.contains_key(&peer) {
            let oldest = suspects
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(peer, _)| *peer);
            if let Some(oldest) = oldest {
                suspects.remove(&oldest);
            }
        }
        suspects.insert(peer, now + SUSPECT_FOR).is_none()
    }

    /// A peer that answered is trusted again at once.
    pub fn cleared(&self, peer: SocketAddr) {
        self.suspects
            .lock()
            .expect("peer health poisoned")
            .remove(&peer);
    }

    pub fn is_suspect(&self, peer: SocketAddr) -> bool {
        let suspects = self.suspects.lock().expect("peer health poisoned");
        suspects
            .get(&peer)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Puts the suspects behind every other provider, keeping the order
    /// within each group (the DHT's, closest first).
    pub fn order(&self, providers: &mut [SocketAddr]) {
        providers.sort_by_key(|peer| self.is_suspect(*peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn suspects_go_last_until_they_answer() {
        let health = PeerHealth::default();
        assert!(health.suspect(peer(1)), "the first suspicion is news");
        assert!(!health.suspect(peer(1)), "a second one is not logged again");
        let mut providers = vec![peer(1), peer(2), peer(3)];
        health.order(&mut providers);
        assert_eq!(providers, vec![peer(2), peer(3), peer(1)]);
        health.cleared(peer(1));
        let mut providers = vec![peer(1), peer(2)];
        health.order(&mut providers);
        assert_eq!(providers, vec![peer(1), peer(2)]);
        assert!(health.suspect(peer(1)), "news again after it was cleared");
    }

    #[test]
    fn the_suspects_remembered_are_bounded() {
        let health = PeerHealth::default();
        for port in 0..(MAX_SUSPECTS as u16 + 10) {
            health.suspect(peer(port));
        }
        let held = health.suspects.lock().unwrap().len();
        assert_eq!(held, MAX_SUSPECTS);
        assert!(health.is_suspect(peer(MAX_SUSPECTS as u16 + 9)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspicion_expires() {
        let health = PeerHealth::default();
        health.suspect(peer(1));
        tokio::time::advance(SUSPECT_FOR - Duration::from_secs(1)).await;
        assert!(health.is_suspect(peer(1)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!health.is_suspect(peer(1)));
        assert!(
            health.suspect(peer(1)),
            "an expired suspicion is news again"
        );
    }
}
