//! Finding which node has what: a Kademlia DHT over libp2p, private to the
//! cluster.
//!
//! Each node advertises the keys it can serve (digests `sha256:<hex>` and
//! tags `registry/repo:tag`) as provider records, and asks the DHT which
//! peers provide a key before it mirrors from them. The design follows
//! Spegel's `pkg/routing/p2p.go` (Kademlia in server mode under a protocol
//! of our own, short-lived provider records) and rust-libp2p's file-sharing
//! example: a cloneable [`Router`] sends commands to one task that owns the
//! swarm, so no lock is shared with the network.
//!
//! What differs from Spegel, and why:
//! - a peer's registry port travels in its identify agent version
//!   (`peers`), so nodes need not share a port;
//! - libp2p's record store is replaced by one sized for real nodes and
//!   swept of expired records (`store`);
//! - renewals are spread over the interval, not sent in one burst
//!   (`republish`);
//! - concurrent lookups of a key share one query, and a few seconds of
//!   results are remembered (`lookup`).

mod error;
mod event_loop;
mod herd;
mod identity;
mod lookup;
mod peers;
mod republish;
mod store;
#[cfg(test)]
mod tests;

pub use error::RoutingError;
pub use herd::Herd;
pub use identity::read_psk;
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
pub use store::StoreLimits;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use libp2p::kad::RecordKey;
use libp2p::multihash::Multihash;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use event_loop::{Command, EventLoop};

/// How long other nodes keep our provider records: a node that dies
/// without withdrawing its keys is forgotten within this time.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(20 * 60);
/// How often each key is announced again, well within the record TTL.
pub const DEFAULT_REPUBLISH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// How long a new connection may take to agree on encryption and
/// multiplexing (libp2p's own default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a lookup's result is reused: long enough to absorb a burst of
/// requests for one image's layers, short enough to notice a new provider.
pub const DEFAULT_LOOKUP_CACHE_TTL: Duration = Duration::from_secs(5);

/// How many commands may wait for the event loop; callers beyond this wait
/// for room.
const COMMAND_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Where libp2p listens, e.g. `/ip4/0.0.0.0/tcp/5001`.
    pub listen: Multiaddr,
    /// Where the node identity (`identity.key`) is kept.
    /// `None` keeps the identity in memory: a new peer id at every start.
    pub data_dir: Option<PathBuf>,
    /// Only nodes with the same key can connect, when set.
    pub psk: Option<PreSharedKey>,
    /// The port this node's registry serves on, told to peers.
    pub registry_port: u16,
    pub record_ttl: Duration,
    pub republish_interval: Duration,
    pub lookup_cache_ttl: Duration,
    /// A peer with another pre-shared key fails only at this timeout: its
    /// garbled handshake can pass for the start of a long message.
    pub connect_timeout: Duration,
    pub store_limits: StoreLimits,
}

impl RouterConfig {
    /// A configuration with the default timings and limits.
    pub fn new(listen: Multiaddr, data_dir: Option<PathBuf>, registry_port: u16) -> Self {
        RouterConfig {
            listen,
            data_dir,
            psk: None,
            registry_port,
            record_ttl: DEFAULT_RECORD_TTL,
            republish_interval: DEFAULT_REPUBLISH_INTERVAL,
            lookup_cache_ttl: DEFAULT_LOOKUP_CACHE_TTL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            store_limits: StoreLimits::default(),
        }
    }
}

/// What a [`Router::sync`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOutcome {
    pub advertised: usize,
    pub withdrawn: usize,
}

/// A peer that provides a key, and where its registry answers HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Provider {
    pub peer_id: PeerId,
    pub registry: SocketAddr,
}

/// Counters of what the router has done, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Peers in the Kademlia routing table: `reflektor_peers`, the way to
    /// tell a node that found nobody (a wrong pre-shared key, say), since it
    /// is Ready all the same.
    pub routing_table_size: usize,
    /// Peers with an open connection, in the routing table or not.
    pub connected_peers: usize,
    /// Keys this node advertises.
    pub provided_keys: usize,
    /// Announcements waiting for a free slot.
    pub announcements_queued: usize,
    /// Announcement queries started and ended (whether or not they reached
    /// every peer they meant to).
    pub announcements_started: u64,
    pub announcements_finished: u64,
    /// Republish timer ticks that renewed at least one key, and the most
    /// keys one renewed.
    pub republish_batches: u64,
    pub largest_republish_batch: usize,
    /// Lookups that started a query, joined one already running, or were
    /// answered from the cache.
    pub lookups_started: u64,
    pub lookups_joined: u64,
    pub lookups_cached: u64,
    /// Queries stopped because every caller had its answer.
    pub lookups_finished_early: u64,
}

/// The Kademlia key of a digest or tag: the sha2-256 multihash of the
/// string's bytes. Keys are opaque strings of any length; a fixed-size hash
/// spreads them evenly over the keyspace, so each node keeps a fair share of
/// the records. (It is also the multihash of the CID Spegel makes.)
pub fn record_key(key: &str) -> RecordKey {
    const SHA2_256: u64 = 0x12;
    let digest = Sha256::digest(key.as_bytes());
    let hash = Multihash::<64>::wrap(SHA2_256, &digest).expect("32 bytes fit in 64");
    RecordKey::from(hash)
}

/// A handle on the router; clones share it. The router stops when
/// [`Router::shutdown`] is called or every handle is dropped.
///
/// Cancellation: every method sends a command and awaits its reply.
/// Dropping the future before the command is sent changes nothing; after
/// that, the command still takes effect (an advertisement is still made),
/// only its reply is lost. So the methods are safe to cancel, except that a
/// cancelled `advertise` or `withdraw` may or may not have happened.
#[derive(Debug, Clone)]
pub struct Router {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
}

impl Router {
    /// Loads or creates the node identity, listens, and starts the event
    /// loop. Returns once the listener is bound, so [`Router::listen_addrs`]
    /// has the real port. The handle ends when the router stops.
    pub async fn start(config: RouterConfig) -> Result<(Router, JoinHandle<()>), RoutingError> {
        if config.republish_interval >= config.record_ttl {
            return Err(RoutingError::RepublishTooSlow {
                republish: config.republish_interval,
                ttl: config.record_ttl,
            });
        }
        let keypair = match &config.data_dir {
            Some(dir) => identity::load_or_create(dir)?,
            None => libp2p::identity::Keypair::generate_ed25519(),
        };
        let peer_id = keypair.public().to_peer_id();
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let mut event_loop = EventLoop::new(keypair, &config, receiver)?;
        event_loop.listen(config.listen.clone()).await?;
        tracing::info!(%peer_id, listen = %config.listen, "p2p router started");
        let handle = tokio::spawn(event_loop.run());
        Ok((Router { peer_id, commands }, handle))
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses libp2p listens on; empty once the router has stopped.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.request(Command::ListenAddrs).await.unwrap_or_default()
    }

    /// Connects to a peer, e.g. a bootstrap node, and adds it to the routing
    /// table. The address may end in `/p2p/<peer id>`; without it, the peer
    /// id is learnt from the connection. Returns the peer's id once
    /// connected.
    pub async fn add_peer(&self, addr: Multiaddr) -> Result<PeerId, RoutingError> {
        self.request(|reply| Command::AddPeer { addr, reply })
            .await?
    }

    /// Fills the routing table by asking the known peers for the peers
    /// closest to us. Returns when that query ends.
    pub async fn bootstrap(&self) -> Result<(), RoutingError> {
        self.request(Command::Bootstrap).await?
    }

    /// Peers in the routing table; 0 once the router has stopped.
    pub async fn routing_table_size(&self) -> usize {
        self.stats().await.map_or(0, |s| s.routing_table_size)
    }

    /// Makes `keys` the whole set this node advertises, and renews them
    /// until a later sync drops them: keys not in it are withdrawn, new ones
    /// advertised. The router alone keeps the advertised set, so its
    /// callers only say what they hold. Returns once the change is recorded
    /// locally; announcements to the network go out in the background, a
    /// few at a time. Peers that already hold a withdrawn key's record keep
    /// finding us for it until the record expires (the record TTL):
    /// Kademlia has no way to recall it.
    pub async fn sync(&self, keys: Vec<String>) -> Result<SyncOutcome, RoutingError> {
        let record_keys = keys.iter().map(|k| record_key(k)).collect();
        let synced = self
            .request(|reply| Command::Sync {
                keys: record_keys,
                reply,
            })
            .await?;
        match synced.refused {
            None => Ok(SyncOutcome {
                advertised: synced.advertised,
                withdrawn: synced.withdrawn,
            }),
            Some(refused) => Err(RoutingError::StoreFull {
                key: keys[refused.first].clone(),
                limit: refused.limit,
                not_stored: refused.count,
            }),
        }
    }

    /// The peers that provide `key`, never this node. Returns as soon as
    /// `limit` providers with a known registry address are found (0: all the
    /// query finds), when the query ends, or at `timeout` with what was
    /// found by then, which may be nothing.
    pub async fn find_providers(
        &self,
        key: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<Provider>, RoutingError> {
        self.lookup(record_key(key), limit, Instant::now() + timeout, true)
            .await
    }

    /// The providers of `key` as soon as there is one, looking again until
    /// `until`: a node that follows a herd's leader waits here for the
    /// leader's download to be advertised. Empty when none appeared.
    pub async fn wait_for_providers(
        &self,
        key: &str,
        limit: usize,
        until: Instant,
    ) -> Result<Vec<Provider>, RoutingError> {
        let key = record_key(key);
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(Vec::new());
            }
            let found = self.lookup(key.clone(), limit, until, false).await?;
            if !found.is_empty() {
                return Ok(found);
            }
            // The lookup ended without a provider; the next asks afresh.
            tokio::time::sleep_until(until.min(Instant::now() + herd::LOOK_AGAIN).into()).await;
        }
    }

    /// Joins the nodes that want `key` now, none of which provides it, and
    /// tells who is to fetch it (module `herd`). Takes
    /// [`herd::SETTLE`] and a lookup.
    pub async fn join_herd(&self, key: &str) -> Result<Herd, RoutingError> {
        let started = Instant::now();
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let keys = herd::want_keys(key, since_epoch);
        let announced = futures::future::join_all(keys.announce.iter().map(|want| {
            self.request(|reply| Command::Want {
                key: record_key(want),
                reply,
            })
        }));
        // An announcement slower than the settle time goes on regardless;
        // the wanters it had not reached may pick another leader.
        let _ = tokio::time::timeout(herd::SETTLE, announced).await;
        tokio::time::sleep_until((started + herd::SETTLE).into()).await;
        let deadline = Instant::now() + herd::SETTLE;
        let wanters = self
            .lookup(record_key(&keys.lookup), 0, deadline, false)
            .await?;
        let others: Vec<PeerId> = wanters.iter().map(|p| p.peer_id).collect();
        let leader = herd::leader(key, self.peer_id, &others);
        Ok(Herd {
            leader: wanters
                .iter()
                .find(|p| p.peer_id == leader && leader != self.peer_id)
                .copied(),
            others: wanters,
        })
    }

    pub async fn stats(&self) -> Result<RouterStats, RoutingError> {
        self.request(Command::Stats).await
    }

    /// Stops the router for every handle and closes its connections.
    /// Returns when the event loop has ended.
    pub async fn shutdown(self) {
        // An error means it has stopped already.
        let _ = self.request(Command::Shutdown).await;
    }

    async fn lookup(
        &self,
        key: RecordKey,
        limit: usize,
        deadline: Instant,
        cached: bool,
    ) -> Result<Vec<Provider>, RoutingError> {
        self.request(|reply| Command::FindProviders {
            key,
            limit,
            deadline,
            cached,
            reply,
        })
        .await
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RoutingError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| RoutingError::Stopped)?;
        response.await.map_err(|_| RoutingError::Stopped)
    }
}
