//! One key's provider lookup, shared by everyone asking for that key, and a
//! short memory of finished ones.
//!
//! When a node pulls an image, many layers are asked for at once, and on a
//! busy node several pulls ask for the same ones. Each key gets one
//! Kademlia query however many callers wait on it. Every caller is answered
//! as soon as it has the number of providers it asked for, or at its own
//! deadline with what is known by then; the query is stopped once nobody
//! waits. A provider counts once its registry address is known, which may
//! take a connection and an identify exchange (`peers`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::{QueryId, RecordKey};
use tokio::sync::oneshot;

use super::Provider;
use super::peers::PeerRegistry;

/// How many providers of one key are dialed at once to learn their
/// registry address.
const MAX_DIALS: usize = 8;

/// How many finished lookups are remembered.
const MAX_CACHED: usize = 4_096;

struct Waiter {
    /// How many providers it wants; `usize::MAX` for all there are.
    limit: usize,
    deadline: Instant,
    reply: oneshot::Sender<Vec<Provider>>,
}

impl Waiter {
    fn answer(self, providers: &[Provider]) {
        let providers = providers.iter().take(self.limit).copied().collect();
        // The caller may have given up; that is its right.
        let _ = self.reply.send(providers);
    }
}

/// The state of one key's lookup.
pub struct Lookup {
    /// The Kademlia query, while it runs.
    query: Option<QueryId>,
    /// Whether the query ran to its end, rather than timing out.
    complete: bool,
    /// Every provider reported so far, whatever became of it.
    seen: HashSet<PeerId>,
    resolved: Vec<Provider>,
    /// Reported while disconnected, not dialed yet.
    candidates: VecDeque<PeerId>,
    /// Dialed or connected, waiting for identify.
    resolving: HashSet<PeerId>,
    waiters: Vec<Waiter>,
}

impl Lookup {
    pub fn new(query: QueryId) -> Self {
        Lookup {
            query: Some(query),
            complete: false,
            seen: HashSet::new(),
            resolved: Vec::new(),
            candidates: VecDeque::new(),
            resolving: HashSet::new(),
            waiters: Vec::new(),
        }
    }

    /// `limit` 0 asks for every provider the query finds.
    pub fn wait(&mut self, limit: usize, deadline: Instant, reply: oneshot::Sender<Vec<Provider>>) {
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.waiters.push(Waiter {
            limit,
            deadline,
            reply,
        });
    }

    /// The query reported `peer` as a provider, whose registry is `registry`.
    pub fn found(&mut self, peer: PeerId, registry: PeerRegistry) {
        if !self.seen.insert(peer) {
            return;
        }
        match registry {
            PeerRegistry::Known(addr) => self.resolved.push(Provider {
                peer_id: peer,
                registry: addr,
            }),
            PeerRegistry::Identifying => {
                self.resolving.insert(peer);
            }
            PeerRegistry::Disconnected => self.candidates.push_back(peer),
            PeerRegistry::Unusable => {}
        }
    }

    /// Something happened to `peer` (identified, failed, disconnected); if we
    /// were waiting on it, this is the outcome. Returns whether it was.
    pub fn settled(&mut self, peer: &PeerId, registry: PeerRegistry) -> bool {
        if registry == PeerRegistry::Identifying || !self.resolving.remove(peer) {
            return false;
        }
        if let PeerRegistry::Known(addr) = registry {
            self.resolved.push(Provider {
                peer_id: *peer,
                registry: addr,
            });
        }
        true
    }

    /// The next provider to dial, if more are wanted than are known or on
    /// their way. The caller dials it, and reports a failed dial through
    /// `settled`.
    pub fn next_dial(&mut self) -> Option<PeerId> {
        let wanted = self.waiters.iter().map(|w| w.limit).max().unwrap_or(0);
        let underway = self.resolved.len() + self.resolving.len();
        if self.resolving.len() >= MAX_DIALS || underway >= wanted {
            return None;
        }
        let peer = self.candidates.pop_front()?;
        self.resolving.insert(peer);
        Some(peer)
    }

    /// The query has ended; `complete` if it ran to its end.
    pub fn query_ended(&mut self, complete: bool) {
        self.query = None;
        self.complete = complete;
    }

    /// The running query, to stop it.
    pub fn take_query(&mut self) -> Option<QueryId> {
        self.query.take()
    }

    /// Answers everyone who has what they asked for, or whose deadline has
    /// come.
    pub fn answer_ready(&mut self, now: Instant) {
        let found = self.resolved.len();
        let (ready, waiting) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.limit <= found || w.deadline <= now);
        self.waiters = waiting;
        for waiter in ready {
            waiter.answer(&self.resolved);
        }
    }

    /// Nobody waits any more.
    pub fn is_abandoned(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Nothing more can be learnt: the query ended and no provider is on
    /// its way.
    pub fn is_settled(&self) -> bool {
        self.query.is_none() && self.resolving.is_empty()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
    }

    /// Answers everyone still waiting, and hands back what was found for
    /// the cache.
    pub fn finish(self) -> Cached {
        for waiter in self.waiters {
            waiter.answer(&self.resolved);
        }
        Cached {
            complete: self.complete && self.candidates.is_empty() && self.resolving.is_empty(),
            providers: self.resolved,
            at: Instant::now(),
        }
    }
}

/// A finished lookup's result.
pub struct Cached {
    providers: Vec<Provider>,
    /// Every provider the query found is here: the result answers any
    /// limit, not only limits up to its length.
    complete: bool,
    at: Instant,
}

/// Lookup results for a few seconds, so a burst of requests for the same
/// layers does not become a burst of queries.
pub struct Cache {
    ttl: Duration,
    entries: HashMap<RecordKey, Cached>,
}

impl Cache {
    pub fn new(ttl: Duration) -> Self {
        Cache {
            ttl,
            entries: HashMap::new(),
        }
    }

    /// The providers remembered for `key`, if they answer `limit` (0: all).
    pub fn get(&self, key: &RecordKey, limit: usize, now: Instant) -> Option<Vec<Provider>> {
        let cached = self.entries.get(key)?;
        let fresh = now.duration_since(cached.at) < self.ttl;
        let enough = if limit == 0 {
            cached.complete
        } else {
            cached.complete || cached.providers.len() >= limit
        };
        (fresh && enough).then(|| {
            let limit = if limit == 0 { usize::MAX } else { limit };
            cached.providers.iter().take(limit).copied().collect()
        })
    }

    pub fn insert(&mut self, key: RecordKey, cached: Cached) {
        if self.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= MAX_CACHED {
            let now = Instant::now();
            let ttl = self.ttl;
            self.entries.retain(|_, c| now.duration_since(c.at) < ttl);
        }
        if self.entries.len() >= MAX_CACHED {
            // Everything is fresh: a burst of distinct keys. Forget one.
            let victim = self.entries.keys().next().cloned();
            if let Some(victim) = victim {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(key, cached);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::routing::record_key;

    fn query_id() -> QueryId {
        // QueryIds come only from a Kademlia behaviour.
        let peer = PeerId::random();
        let store = libp2p::kad::store::MemoryStore::new(peer);
        libp2p::kad::Behaviour::new(peer, store).get_providers(record_key("k"))
    }

    fn addr(port: u16) -> PeerRegistry {
        PeerRegistry::Known(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    #[test]
    fn each_waiter_is_answered_when_it_has_enough() {
        let mut lookup = Lookup::new(query_id());
        let far = Instant::now() + Duration::from_secs(60);
        let (one, mut one_rx) = oneshot::channel();
        let (two, mut two_rx) = oneshot::channel();
        lookup.wait(1, far, one);
        lookup.wait(2, far, two);

        lookup.found(PeerId::random(), addr(5000));
        lookup.answer_ready(Instant::now());
        assert_eq!(one_rx.try_recv().expect("answered").len(), 1);
        assert!(two_rx.try_recv().is_err());
        assert!(!lookup.is_abandoned());

        lookup.found(PeerId::random(), addr(5001));
        lookup.answer_ready(Instant::now());
        assert_eq!(two_rx.try_recv().expect("answered").len(), 2);
        assert!(lookup.is_abandoned());
    }

    #[test]
    fn a_deadline_answers_with_what_is_known() {
        let mut lookup = Lookup::new(query_id());
        let now = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        lookup.wait(3, now + Duration::from_millis(10), tx);
        lookup.found(PeerId::random(), addr(5000));
        lookup.answer_ready(now);
        assert!(rx.try_recv().is_err());
        assert_eq!(
            lookup.next_deadline(),
            Some(now + Duration::from_millis(10))
        );
        lookup.answer_ready(now + Duration::from_millis(10));
        assert_eq!(rx.try_recv().expect("answered").len(), 1);
    }

    #[test]
    fn disconnected_providers_are_dialed_only_as_far_as_wanted() {
        let mut lookup = Lookup::new(query_id());
        let far = Instant::now() + Duration::from_secs(60);
        let (tx, mut rx) = oneshot::channel();
        lookup.wait(2, far, tx);
        let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        for peer in &peers {
            lookup.found(*peer, PeerRegistry::Disconnected);
        }
        lookup.found(peers[0], addr(1)); // reported twice: ignored

        assert_eq!(lookup.next_dial(), Some(peers[0]));
        assert_eq!(lookup.next_dial(), Some(peers[1]));
        assert_eq!(lookup.next_dial(), None, "two are on their way");

        lookup.settled(&peers[0], PeerRegistry::Disconnected);
        assert_eq!(
            lookup.next_dial(),
            Some(peers[2]),
            "replaces the failed one"
        );
        lookup.settled(&peers[1], addr(5001));
        lookup.settled(&peers[2], addr(5002));
        lookup.answer_ready(Instant::now());
        let providers = rx.try_recv().expect("answered");
        assert_eq!(
            providers.iter().map(|p| p.peer_id).collect::<Vec<_>>(),
            vec![peers[1], peers[2]]
        );
    }

    #[test]
    fn the_cache_answers_only_what_it_can() {
        let key = record_key("sha256:abc");
        let mut cache = Cache::new(Duration::from_secs(5));
        let mut lookup = Lookup::new(query_id());
        lookup.found(PeerId::random(), addr(5000));
        lookup.query_ended(false);
        cache.insert(key.clone(), lookup.finish());

        let now = Instant::now();
        assert_eq!(cache.get(&key, 1, now).map(|p| p.len()), Some(1));
        assert_eq!(cache.get(&key, 2, now), None, "partial result, more wanted");
        assert_eq!(
            cache.get(&key, 1, now + Duration::from_secs(5)),
            None,
            "expired"
        );

        let mut lookup = Lookup::new(query_id());
        lookup.query_ended(true);
        cache.insert(key.clone(), lookup.finish());
        assert_eq!(cache.get(&key, 3, now), Some(Vec::new()), "complete: none");
    }
}
