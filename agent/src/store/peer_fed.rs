//! Which blobs this node's containerd has been getting from peers, through
//! the agent's own mirror. Their ingests grow only as fast as a peer sends,
//! so they are neither advertised nor served while they grow: two nodes
//! serving each other's downloads would each wait for the other. Nor
//! afterwards: an ingest a relay left behind is a pull that failed (a full
//! disk, say), and will not grow again until containerd retries through
//! the mirror. A digest is forgotten once its ingest is gone.
//! A blob containerd fetches from the upstream is not in here, and is
//! shared as it arrives (see [`super::ingest`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::oci::Digest;

#[derive(Debug, Default)]
pub struct PeerFed {
    /// Relays in progress per digest (containerd may ask twice at once),
    /// and whether any of them got bytes from a peer: such an entry stays,
    /// at 0 relays, until the ingest goes.
    relays: Mutex<HashMap<Digest, (usize, bool)>>,
}

impl PeerFed {
    /// Marks `digest` as fed by peers until the guard drops, which the
    /// mirror holds from the moment it looks for providers to the end of
    /// the body it relays.
    pub fn hold(self: &Arc<Self>, digest: Digest) -> Relay {
        self.lock().entry(digest.clone()).or_default().0 += 1;
        Relay {
            set: Arc::clone(self),
            digest,
            fed: false,
        }
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().contains_key(digest)
    }

    /// Forgets the digests no relay holds whose ingest is not among
    /// `ingests`: committed, or given up.
    pub fn forget_gone<'a>(&self, ingests: impl IntoIterator<Item = &'a Digest>) {
        let present: std::collections::HashSet<&Digest> = ingests.into_iter().collect();
        self.lock()
            .retain(|digest, (relays, _)| *relays > 0 || present.contains(digest));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, (usize, bool)>> {
        // The map stays whole whatever panicked while holding it.
        self.relays.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// See [`PeerFed::hold`].
#[derive(Debug)]
pub struct Relay {
    set: Arc<PeerFed>,
    digest: Digest,
    fed: bool,
}

impl Relay {
    /// A peer answered: bytes go into the ingest from now on. Without
    /// this, the relay was a lookup that found nobody, and containerd
    /// fetches from the upstream next.
    pub fn fed(&mut self) {
        self.fed = true;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let mut relays = self.set.lock();
        if let Some((count, fed)) = relays.get_mut(&self.digest) {
            *count = count.saturating_sub(1);
            *fed |= self.fed;
            if *count == 0 && !*fed {
                relays.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_peer_fed_from_its_lookup_and_after_a_peer_fed_it_until_its_ingest_is_gone() {
        let set = Arc::new(PeerFed::default());
        let digest = Digest::sha256_of(b"layer");
        // A lookup that found no peer leaves nothing behind.
        drop(set.hold(digest.clone()));
        assert!(!set.contains(&digest));
        let mut first = set.hold(digest.clone());
        let second = set.hold(digest.clone());
        first.fed();
        drop(first);
        set.forget_gone([]);
        assert!(set.contains(&digest), "a relay still holds it");
        drop(second);
        set.forget_gone([&digest]);
        assert!(set.contains(&digest), "its ingest is still there");
        set.forget_gone([]);
        assert!(!set.contains(&digest));
    }
}
