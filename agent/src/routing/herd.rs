//! Who fetches a blob from the upstream when several nodes miss it at the
//! same moment: the herd of a rollout, where every node starts pulling a
//! new image together and nobody holds it yet.
//!
//! A node sharing its download in progress (`store::ingest`) covers the
//! nodes that ask after it started. The ones that ask together need a
//! tie-break, and it must not need a coordinator, since the agent keeps no
//! state of its own. Each node that misses a blob advertises a *want*
//! record for it, waits a moment for the others to do the same, and looks
//! the wanters up. Every node sees the same set of wanters, so every node
//! picks the same leader: the wanter whose peer id is closest to the
//! digest by Kademlia's XOR metric. The leader goes to the upstream; the
//! others wait, bounded, for the leader's download to begin and then
//! stream it from the leader as it grows. Leadership spreads over the
//! nodes, since each digest has a different closest peer, and a leader
//! that fails costs the others only the bounded wait.
//!
//! Wanters that come later (their containerd asked after a blob of its
//! own) see more wanters than the first ones did, and may pick another
//! leader; the first leader's download may not be advertised yet either.
//! So the mirror asks every other wanter once whether it serves the blob
//! already, and follows one that does, whoever the XOR metric picks.
//!
//! Want records cannot be recalled (Kademlia has no delete), so their key
//! carries the minute: a want from a pull long done is under a key nobody
//! looks up any more. A node near a minute's boundary wants under both
//! minutes, so that nodes whose clocks or requests straddle it still see
//! each other.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::KBucketKey;

use super::{Provider, record_key};

/// The time that names a want record's key.
const EPOCH: Duration = Duration::from_secs(60);
/// How near an epoch's edge a want is made under the neighbouring epoch
/// too: more than the clock skew between nodes and the spread of one
/// herd's requests.
const EDGE: Duration = Duration::from_secs(5);
/// How long a node that misses a blob waits for the others that miss it
/// at the same moment to say so, before it looks them up. It covers the
/// spread of one herd's requests; every miss of a blob pays it once.
pub const SETTLE: Duration = Duration::from_millis(150);
/// How soon a follower looks again for its leader's download after a
/// lookup found nobody.
pub const LOOK_AGAIN: Duration = Duration::from_millis(50);
/// How long this node keeps a want record of its own: past its epoch and
/// its neighbour, nobody looks it up.
pub const WANT_LIFETIME: Duration = Duration::from_secs(3 * 60);

/// The keys of one want.
#[derive(Debug, PartialEq, Eq)]
pub struct WantKeys {
    /// Where this node advertises that it wants the key.
    pub announce: Vec<String>,
    /// Where it looks up who else does.
    pub lookup: String,
}

/// The want keys for `key` at `since_epoch`, the time since the Unix
/// epoch.
pub fn want_keys(key: &str, since_epoch: Duration) -> WantKeys {
    let epoch = since_epoch.as_secs() / EPOCH.as_secs();
    let into = Duration::from_secs(since_epoch.as_secs() % EPOCH.as_secs());
    let name = |epoch: u64| format!("want/{epoch}/{key}");
    let mut announce = vec![name(epoch)];
    if into < EDGE && epoch > 0 {
        announce.push(name(epoch - 1));
    }
    if into + EDGE >= EPOCH {
        announce.push(name(epoch + 1));
    }
    WantKeys {
        announce,
        lookup: name(epoch),
    }
}

/// The wanter that fetches `key`: of `local` and `others`, the one whose
/// peer id is closest to the key.
pub fn leader(key: &str, local: PeerId, others: &[PeerId]) -> PeerId {
    let target = KBucketKey::new(record_key(key).to_vec());
    std::iter::once(local)
        .chain(others.iter().copied())
        .min_by_key(|peer| KBucketKey::from(*peer).distance(&target))
        .expect("the local node is a wanter")
}

/// The nodes that miss a blob at the same moment, as this one found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Herd {
    /// The wanter to fetch it from the upstream, no other being closer to
    /// it; `None`: this node.
    pub leader: Option<Provider>,
    /// The other wanters, the leader among them.
    pub others: Vec<Provider>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4f3ac9ab1b2c8f8e59c1d2a3e4b5f60718293a4b5c6d7e8f90a1b2c3d4e5f607";

    #[test]
    fn a_want_is_looked_up_under_its_minute() {
        let keys = want_keys(DIGEST, Duration::from_secs(60 * 1000 + 30));
        assert_eq!(keys.lookup, format!("want/1000/{DIGEST}"));
        assert_eq!(keys.announce, vec![keys.lookup.clone()]);
    }

    #[test]
    fn a_want_near_the_edge_of_a_minute_is_made_under_its_neighbour_too() {
        let early = want_keys(DIGEST, Duration::from_secs(60 * 1000 + 2));
        assert_eq!(
            early.announce,
            [format!("want/1000/{DIGEST}"), format!("want/999/{DIGEST}")]
        );
        let late = want_keys(DIGEST, Duration::from_secs(60 * 1000 + 57));
        assert_eq!(late.lookup, format!("want/1000/{DIGEST}"));
        assert_eq!(
            late.announce,
            [format!("want/1000/{DIGEST}"), format!("want/1001/{DIGEST}")]
        );
    }

    /// Two nodes that straddle a boundary, one 3 s before it and one 2 s
    /// after: each looks up a key the other announced under.
    #[test]
    fn nodes_that_straddle_an_edge_see_each_other() {
        let before = want_keys(DIGEST, Duration::from_secs(60 * 1000 - 3));
        let after = want_keys(DIGEST, Duration::from_secs(60 * 1000 + 2));
        assert!(after.announce.contains(&before.lookup));
        assert!(before.announce.contains(&after.lookup));
    }

    #[test]
    fn every_wanter_picks_the_same_leader_and_leaders_vary_by_digest() {
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let mut leaders = std::collections::HashSet::new();
        for layer in 0..32 {
            let key = format!("sha256:{layer:064x}");
            let chosen: Vec<PeerId> = peers
                .iter()
                .map(|local| {
                    let others: Vec<PeerId> =
                        peers.iter().copied().filter(|p| p != local).collect();
                    leader(&key, *local, &others)
                })
                .collect();
            assert!(chosen.iter().all(|c| *c == chosen[0]), "{key}: {chosen:?}");
            leaders.insert(chosen[0]);
        }
        assert!(leaders.len() > 1, "one node led all 32 digests");
    }

    #[test]
    fn a_lone_wanter_leads() {
        let local = PeerId::random();
        assert_eq!(leader(DIGEST, local, &[]), local);
    }
}
