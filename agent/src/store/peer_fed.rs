//! Which blobs this node's containerd is getting from peers right now,
//! through the agent's own mirror. Their ingests grow only as fast as a
//! peer sends, so they are neither advertised nor served while they grow:
//! two nodes serving each other's downloads would each wait for the other.
//! A blob containerd fetches from the upstream is not in here, and is
//! shared as it arrives (see [`super::ingest`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::oci::Digest;

#[derive(Debug, Default)]
pub struct PeerFed {
    /// Relays in progress per digest: containerd may ask twice at once.
    relays: Mutex<HashMap<Digest, usize>>,
}

impl PeerFed {
    /// Marks `digest` as fed by peers until the guard drops, which the
    /// mirror holds from the moment it looks for providers to the end of
    /// the body it relays.
    pub fn hold(self: &Arc<Self>, digest: Digest) -> Relay {
        *self.lock().entry(digest.clone()).or_default() += 1;
        Relay {
            set: Arc::clone(self),
            digest,
        }
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().contains_key(digest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, usize>> {
        // The map stays whole whatever panicked while holding it.
        self.relays.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// See [`PeerFed::hold`].
#[derive(Debug)]
pub struct Relay {
    set: Arc<PeerFed>,
    digest: Digest,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let mut relays = self.set.lock();
        if let Some(count) = relays.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                relays.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_peer_fed_while_any_of_its_relays_lasts() {
        let set = Arc::new(PeerFed::default());
        let digest = Digest::sha256_of(b"layer");
        let first = set.hold(digest.clone());
        let second = set.hold(digest.clone());
        drop(first);
        assert!(set.contains(&digest));
        drop(second);
        assert!(!set.contains(&digest));
    }
}
