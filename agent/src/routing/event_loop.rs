//! The one task that owns the libp2p swarm: it carries out the commands
//! `Router` handles send, and turns swarm events into their replies.
//!
//! Replies that wait on the network are kept by what they wait for: a
//! dial's connection id, a bootstrap's query id, a lookup's key (many
//! callers can share one lookup). Nothing here blocks or awaits but the
//! `select!` in `run`, so one slow peer never holds up the rest.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::Either;
use libp2p::core::transport::TransportError;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{
    self, GetProvidersError, GetProvidersOk, ProviderRecord, QueryId, QueryResult, RecordKey,
};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PnetConfig;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport, identify, noise, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::herd;
use super::lookup::{Cache, Lookup};
use super::peers::{PeerRegistry, Peers, agent_version, announced};
use super::republish::{Provided, SLICES};
use super::store::ProviderStore;
use super::{Provider, RouterConfig, RouterStats, RoutingError};

/// Our own Kademlia protocol, so a node can never join a public DHT (or a
/// Spegel one) by mistake.
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/reflektor/kad/1.0.0");
const IDENTIFY_PROTOCOL: &str = "/reflektor/1.0.0";
/// Connections nobody uses are closed after this; a node keeps talking to
/// the peers it pulls from.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How many announcement queries run at once; the rest wait their turn, so
/// advertising 100 000 keys at start-up is a stream, not a flood.
const MAX_ANNOUNCING: usize = 32;

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<ProviderStore>,
    identify: identify::Behaviour,
}

/// What one sync changed in the advertised set.
pub struct Synced {
    pub advertised: usize,
    pub withdrawn: usize,
    /// Set when the store could not hold every key.
    pub refused: Option<Refused>,
}

/// Why an advertisement stopped part-way: the store holds no more keys.
pub struct Refused {
    /// The index of the first key not stored.
    pub first: usize,
    /// How many keys of the batch were not stored.
    pub count: usize,
    pub limit: usize,
}

pub enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    AddPeer {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, RoutingError>>,
    },
    Bootstrap(oneshot::Sender<Result<(), RoutingError>>),
    Sync {
        keys: Vec<RecordKey>,
        reply: oneshot::Sender<Synced>,
    },
    FindProviders {
        key: RecordKey,
        limit: usize,
        deadline: Instant,
        /// Whether a remembered result may answer: not when waiting for a
        /// provider to appear.
        cached: bool,
        reply: oneshot::Sender<Vec<Provider>>,
    },
    /// Advertises a want record at once, ahead of the queue, and replies
    /// when the announcement has gone out.
    Want {
        key: RecordKey,
        reply: oneshot::Sender<()>,
    },
    Stats(oneshot::Sender<RouterStats>),
    Shutdown(oneshot::Sender<()>),
}

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    local: PeerId,
    /// The configured listen address, to tell which addresses to announce.
    listen: Multiaddr,
    max_provided_keys: usize,
    republish_tick: Duration,
    purge_interval: Duration,
    peers: Peers,
    provided: Provided,
    /// Keys waiting to be announced, each once.
    announce_queue: VecDeque<RecordKey>,
    queued: HashSet<RecordKey>,
    announcing: HashSet<QueryId>,
    lookups: HashMap<RecordKey, Lookup>,
    lookup_queries: HashMap<QueryId, RecordKey>,
    cache: Cache,
    dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, RoutingError>>)>,
    bootstraps: HashMap<QueryId, oneshot::Sender<Result<(), RoutingError>>>,
    /// Want announcements under way, and who waits for each.
    wanting: HashMap<QueryId, oneshot::Sender<()>>,
    /// Our want records, oldest first, with when each is dropped.
    wants: VecDeque<(Instant, RecordKey)>,
    stats: RouterStats,
}

impl EventLoop {
    pub fn new(
        keypair: Keypair,
        config: &RouterConfig,
        commands: mpsc::Receiver<Command>,
    ) -> Result<Self, RoutingError> {
        let local = keypair.public().to_peer_id();
        let swarm = build_swarm(keypair, config)?;
        Ok(EventLoop {
            swarm,
            commands,
            local,
            listen: config.listen.clone(),
            max_provided_keys: config.store_limits.max_provided_keys,
            republish_tick: (config.republish_interval / SLICES as u32)
                .max(Duration::from_millis(1)),
            // Expired records are invisible to lookups already; sweeping
            // them only returns their memory, so it need not be prompt.
            purge_interval: (config.record_ttl / 4).max(Duration::from_millis(1)),
            peers: Peers::default(),
            provided: Provided::default(),
            announce_queue: VecDeque::new(),
            queued: HashSet::new(),
            announcing: HashSet::new(),
            lookups: HashMap::new(),
            lookup_queries: HashMap::new(),
            cache: Cache::new(config.lookup_cache_ttl),
            dials: HashMap::new(),
            bootstraps: HashMap::new(),
            wanting: HashMap::new(),
            wants: VecDeque::new(),
            stats: RouterStats::default(),
        })
    }

    /// Starts listening, and returns once the listener is bound (or could
    /// not be).
    pub async fn listen(&mut self, addr: Multiaddr) -> Result<(), RoutingError> {
        self.swarm.listen_on(addr.clone()).map_err(|e| match e {
            TransportError::MultiaddrNotSupported(addr) => RoutingError::ListenUnsupported { addr },
            TransportError::Other(source) => RoutingError::Listen {
                addr: addr.clone(),
                error: source,
            },
        })?;
        loop {
            match self.swarm.select_next_some().await {
                SwarmEvent::ListenerError { error, .. }
                | SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                } => {
                    return Err(RoutingError::Listen { addr, error });
                }
                event @ SwarmEvent::NewListenAddr { .. } => {
                    self.on_swarm_event(event);
                    return Ok(());
                }
                event => self.on_swarm_event(event),
            }
        }
    }

    pub async fn run(mut self) {
        let mut republish = tokio::time::interval(self.republish_tick);
        republish.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut purge = tokio::time::interval(self.purge_interval);
        purge.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stopped_by = loop {
            // With nobody waiting, wake up in an hour to find that out again.
            let wake = self
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => {
                    let Some(command) = command else { break None };
                    if let ControlFlow::Break(reply) = self.on_command(command) {
                        break Some(reply);
                    }
                }
                _ = republish.tick() => self.republish(),
                _ = purge.tick() => {
                    self.swarm.behaviour_mut().kad.store_mut().purge_expired(Instant::now());
                }
                () = tokio::time::sleep_until(wake.into()) => self.answer_due(),
            }
            self.announce_queued();
        };
        let local = self.local;
        // Dropping the swarm closes every connection and the listener.
        drop(self);
        tracing::info!(peer_id = %local, "p2p router stopped");
        if let Some(reply) = stopped_by {
            let _ = reply.send(());
        }
    }

    fn on_command(&mut self, command: Command) -> ControlFlow<oneshot::Sender<()>> {
        // A reply that cannot be sent went to a caller who gave up.
        match command {
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::AddPeer { addr, reply } => self.add_peer(addr, reply),
            Command::Bootstrap(reply) => match self.swarm.behaviour_mut().kad.bootstrap() {
                Ok(query) => {
                    self.bootstraps.insert(query, reply);
                }
                Err(kad::NoKnownPeers()) => {
                    let _ = reply.send(Err(RoutingError::NoKnownPeers));
                }
            },
            Command::Sync { keys, reply } => {
                let _ = reply.send(self.sync(&keys));
            }
            Command::FindProviders {
                key,
                limit,
                deadline,
                cached,
                reply,
            } => self.find_providers(key, limit, deadline, cached, reply),
            Command::Want { key, reply } => self.want(key, reply),
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::Shutdown(reply) => return ControlFlow::Break(reply),
        }
        ControlFlow::Continue(())
    }

    fn add_peer(&mut self, addr: Multiaddr, reply: oneshot::Sender<Result<PeerId, RoutingError>>) {
        // A trailing `/p2p/<peer id>` is checked against the peer's key. The
        // peer enters the routing table only once connected, so a node that
        // cannot reach its peers (a wrong pre-shared key) shows no peer.
        let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(connection, (addr, reply));
            }
            Err(error) => {
                let _ = reply.send(Err(RoutingError::Dial {
                    addr,
                    error: Box::new(error),
                }));
            }
        }
    }

    /// Withdraws what `keys` lacks first, so that a full store makes room
    /// for the new keys, then advertises the new ones.
    fn sync(&mut self, keys: &[RecordKey]) -> Synced {
        let wanted: HashSet<&RecordKey> = keys.iter().collect();
        let gone = self.provided.not_in(&wanted);
        for key in &gone {
            self.provided.remove(key);
            self.swarm.behaviour_mut().kad.stop_providing(key);
        }
        let mut synced = Synced {
            advertised: 0,
            withdrawn: gone.len(),
            refused: None,
        };
        synced.refused = self.advertise(keys, &mut synced.advertised);
        synced
    }

    /// Counts the keys it adds in `added`.
    fn advertise(&mut self, keys: &[RecordKey], added: &mut usize) -> Option<Refused> {
        for (index, key) in keys.iter().enumerate() {
            if self.provided.contains(key) {
                continue;
            }
            // Kademlia stores our own records without an expiry or
            // addresses, as `start_providing` does: addresses are filled in
            // when the record is handed out.
            let record = ProviderRecord::new(key.clone(), self.local, Vec::new());
            let kad = &mut self.swarm.behaviour_mut().kad;
            if kad.store_mut().add_provider(record).is_err() {
                let count = keys[index..]
                    .iter()
                    .filter(|k| !self.provided.contains(k))
                    .collect::<HashSet<_>>()
                    .len();
                return Some(Refused {
                    first: index,
                    count,
                    limit: self.max_provided_keys,
                });
            }
            self.provided.insert(key.clone());
            *added += 1;
            self.queue_announcement(key.clone());
        }
        None
    }

    fn queue_announcement(&mut self, key: RecordKey) {
        if self.queued.insert(key.clone()) {
            self.announce_queue.push_back(key);
        }
    }

    /// Starts queued announcements while there is room.
    ///
    /// Not while the routing table is empty: an announcement would reach
    /// nobody and finish at once, and the key would stay unfindable until
    /// its republish slice came round, up to an interval later. That is the
    /// usual start on a node that already holds images: the first walk
    /// advertises before bootstrap has found a peer. The keys wait in the
    /// queue, and go out once a peer is in the table.
    fn announce_queued(&mut self) {
        if self.announce_queue.is_empty() || self.routing_table_is_empty() {
            return;
        }
        while self.announcing.len() < MAX_ANNOUNCING {
            let Some(key) = self.announce_queue.pop_front() else {
                break;
            };
            self.queued.remove(&key);
            if !self.provided.contains(&key) {
                continue;
            }
            match self.swarm.behaviour_mut().kad.start_providing(key) {
                Ok(query) => {
                    self.announcing.insert(query);
                    self.stats.announcements_started += 1;
                }
                Err(error) => tracing::warn!(%error, "cannot renew a provider record"),
            }
        }
    }

    fn routing_table_is_empty(&mut self) -> bool {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .all(|bucket| bucket.num_entries() == 0)
    }

    /// Queues the next slice of our keys for renewal.
    fn republish(&mut self) {
        let due = self.provided.next_slice();
        if due.is_empty() {
            return;
        }
        self.stats.republish_batches += 1;
        self.stats.largest_republish_batch = self.stats.largest_republish_batch.max(due.len());
        for key in due {
            self.queue_announcement(key);
        }
    }

    /// Our want records are kept apart from the advertised set, so that a
    /// sync never withdraws one, and dropped after their lifetime.
    fn want(&mut self, key: RecordKey, reply: oneshot::Sender<()>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match kad.start_providing(key.clone()) {
            Ok(query) => {
                self.wanting.insert(query, reply);
                self.wants
                    .push_back((Instant::now() + herd::WANT_LIFETIME, key));
            }
            // The store is full of our own keys: the want goes unannounced,
            // and the others may pick a leader without this node.
            Err(error) => {
                tracing::debug!(%error, "cannot advertise a want");
                let _ = reply.send(());
            }
        }
    }

    fn drop_expired_wants(&mut self, now: Instant) {
        while let Some((expires, _)) = self.wants.front()
            && *expires <= now
        {
            let Some((_, key)) = self.wants.pop_front() else {
                break;
            };
            if !self.wants.iter().any(|(_, k)| *k == key) {
                self.swarm.behaviour_mut().kad.stop_providing(&key);
            }
        }
    }

    fn find_providers(
        &mut self,
        key: RecordKey,
        limit: usize,
        deadline: Instant,
        cached: bool,
        reply: oneshot::Sender<Vec<Provider>>,
    ) {
        if let Some(providers) = self
            .cache
            .get(&key, limit, Instant::now())
            .filter(|_| cached)
        {
            self.stats.lookups_cached += 1;
            let _ = reply.send(providers);
            return;
        }
        match self.lookups.entry(key.clone()) {
            Entry::Occupied(mut lookup) => {
                lookup.get_mut().wait(limit, deadline, reply);
                self.stats.lookups_joined += 1;
            }
            Entry::Vacant(entry) => {
                let query = self.swarm.behaviour_mut().kad.get_providers(key.clone());
                self.lookup_queries.insert(query, key.clone());
                entry
                    .insert(Lookup::new(query))
                    .wait(limit, deadline, reply);
                self.stats.lookups_started += 1;
            }
        }
        self.drive(&key);
    }

    /// Moves a lookup along after anything happened to it: dials the
    /// providers it still needs, answers whoever is ready, and ends it when
    /// nobody waits or nothing more can be learnt.
    fn drive(&mut self, key: &RecordKey) {
        let Some(lookup) = self.lookups.get_mut(key) else {
            return;
        };
        while let Some(peer) = lookup.next_dial() {
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => {}
                // Connected or being dialed already: its connection or its
                // identify will tell, unless that has happened.
                Err(DialError::DialPeerConditionFalse(_)) => {
                    let registry = self.peers.registry(&peer);
                    if matches!(registry, PeerRegistry::Known(_) | PeerRegistry::Unusable) {
                        lookup.settled(&peer, registry);
                    }
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "cannot dial a provider");
                    lookup.settled(&peer, PeerRegistry::Unusable);
                }
            }
        }
        lookup.answer_ready(Instant::now());
        if lookup.is_abandoned() {
            let Some(mut lookup) = self.lookups.remove(key) else {
                return;
            };
            if let Some(query) = lookup.take_query() {
                self.lookup_queries.remove(&query);
                if let Some(mut running) = self.swarm.behaviour_mut().kad.query_mut(&query) {
                    running.finish();
                }
                self.stats.lookups_finished_early += 1;
            }
            self.cache.insert(key.clone(), lookup.finish());
        } else if lookup.is_settled()
            && let Some(lookup) = self.lookups.remove(key)
        {
            self.cache.insert(key.clone(), lookup.finish());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let want = self.wants.front().map(|(expires, _)| *expires);
        self.lookups
            .values()
            .filter_map(Lookup::next_deadline)
            .chain(want)
            .min()
    }

    /// Answers the callers whose deadline has come, and drops the want
    /// records whose time is up.
    fn answer_due(&mut self) {
        let now = Instant::now();
        self.drop_expired_wants(now);
        let due: Vec<RecordKey> = self
            .lookups
            .iter()
            .filter(|(_, lookup)| lookup.next_deadline().is_some_and(|d| d <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            self.drive(&key);
        }
    }

    /// Tells the lookups waiting on `peer` what became of it.
    fn peer_settled(&mut self, peer: PeerId) {
        let registry = self.peers.registry(&peer);
        let changed: Vec<RecordKey> = self
            .lookups
            .iter_mut()
            .filter_map(|(key, lookup)| lookup.settled(&peer, registry).then(|| key.clone()))
            .collect();
        for key in changed {
            self.drive(&key);
        }
    }

    fn stats(&mut self) -> RouterStats {
        let connected_peers = self.swarm.connected_peers().count();
        let kad = &mut self.swarm.behaviour_mut().kad;
        RouterStats {
            routing_table_size: kad.kbuckets().map(|bucket| bucket.num_entries()).sum(),
            connected_peers,
            provided_keys: kad.store_mut().provided_keys(),
            announcements_queued: self.announce_queue.len(),
            ..self.stats.clone()
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.on_identify_event(event),
            SwarmEvent::NewListenAddr { address, .. } if announced(&self.listen, &address) => {
                self.swarm.add_external_address(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.peers.connected(peer_id, &endpoint);
                if let Some((_, reply)) = self.dials.remove(&connection_id) {
                    let address = without_peer_id(endpoint.get_remote_address());
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, address);
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                self.peers.disconnected(&peer_id, num_established);
                if num_established == 0 {
                    tracing::debug!(peer = %peer_id, "peer disconnected");
                    self.peer_settled(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(RoutingError::Dial {
                        addr,
                        error: Box::new(error),
                    }));
                }
                if let Some(peer) = peer_id
                    && !self.swarm.is_connected(&peer)
                {
                    self.peer_settled(peer);
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(
                    from = %send_back_addr,
                    %error,
                    "refused a connection (a node with another pre-shared key?)"
                );
            }
            _ => {}
        }
    }

    fn on_identify_event(&mut self, event: identify::Event) {
        match event {
            identify::Event::Received { peer_id, info, .. } => {
                if info.protocols.contains(&KAD_PROTOCOL) {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    for address in &info.listen_addrs {
                        kad.add_address(&peer_id, address.clone());
                    }
                }
                self.peers
                    .identified(peer_id, info.listen_addrs, &info.agent_version);
                self.peer_settled(peer_id);
            }
            identify::Event::Error { peer_id, error, .. } => {
                tracing::debug!(peer = %peer_id, %error, "identify failed");
                self.peers.identify_failed(peer_id);
                self.peer_settled(peer_id);
            }
            identify::Event::Sent { .. } | identify::Event::Pushed { .. } => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return;
        };
        match result {
            QueryResult::GetProviders(result) => self.on_providers(id, result, step.last),
            QueryResult::StartProviding(result) => self.on_announced(id, result),
            QueryResult::Bootstrap(result) if step.last || result.is_err() => {
                if let Some(reply) = self.bootstraps.remove(&id) {
                    let _ = reply.send(result.map(|_| ()).map_err(RoutingError::Bootstrap));
                }
            }
            _ => {}
        }
    }

    fn on_announced(&mut self, query: QueryId, result: kad::AddProviderResult) {
        if let Some(reply) = self.wanting.remove(&query) {
            let _ = reply.send(());
            return;
        }
        if !self.announcing.remove(&query) {
            return;
        }
        self.stats.announcements_finished += 1;
        if let Err(error) = result {
            tracing::debug!(%error, "an announcement reached fewer peers than meant");
        }
    }

    fn on_providers(
        &mut self,
        query: QueryId,
        result: Result<GetProvidersOk, GetProvidersError>,
        last: bool,
    ) {
        let Some(key) = self.lookup_queries.get(&query).cloned() else {
            return;
        };
        let Some(lookup) = self.lookups.get_mut(&key) else {
            return;
        };
        if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = &result {
            for peer in providers.iter().filter(|p| **p != self.local) {
                lookup.found(*peer, self.peers.registry(peer));
            }
        }
        if last {
            self.lookup_queries.remove(&query);
            lookup.query_ended(result.is_ok());
        }
        self.drive(&key);
    }
}

fn build_swarm(keypair: Keypair, config: &RouterConfig) -> Result<Swarm<Behaviour>, RoutingError> {
    let local = keypair.public().to_peer_id();
    let noise = noise::Config::new(&keypair).map_err(RoutingError::Transport)?;
    let psk = config.psk;
    // With a pre-shared key, every byte after the first 24 (a nonce) is
    // encrypted with it, so a node without the key fails the protocol
    // negotiation that follows and never reaches noise, let alone Kademlia.
    let transport = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .and_then(move |socket, _| async move {
            match psk {
                Some(psk) => PnetConfig::new(psk)
                    .handshake(socket)
                    .await
                    .map(Either::Left),
                None => Ok(Either::Right(socket)),
            }
        })
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(config.connect_timeout)
        .boxed();

    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        .set_provider_record_ttl(Some(config.record_ttl))
        // Renewals are ours, spread over the interval (`republish`).
        .set_provider_publication_interval(None)
        // No value records: nothing to replicate, publish or cache.
        .set_replication_interval(None)
        .set_publication_interval(None)
        .set_caching(kad::Caching::Disabled);
    let store = ProviderStore::new(local, config.store_limits);
    let mut kad = kad::Behaviour::with_config(local, store, kad_config);
    // Serve the DHT whatever our addresses look like: left to itself, a node
    // with only private or loopback addresses stays a client, and a cluster
    // of clients finds nothing.
    kad.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), keypair.public())
            .with_agent_version(agent_version(config.registry_port))
            // Tell peers only the addresses chosen for them (`announced`).
            .with_hide_listen_addrs(true),
    );

    let Ok(builder) = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|_| transport);
    let Ok(builder) = builder.with_behaviour(|_| Behaviour { kad, identify });
    Ok(builder
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build())
}

/// `addr` without a trailing `/p2p/<peer id>`: Kademlia keeps the peer id
/// apart.
fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}
