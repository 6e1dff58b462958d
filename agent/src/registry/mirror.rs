//! The mirror path: what this node does not hold, a peer may. The router
//! names the peers that advertise a key; the request is forwarded to one of
//! them, marked so that it is never forwarded again, and the body streams
//! through without being buffered.
//!
//! Failure handling is what keeps a pull from hanging or breaking:
//! - no provider within `--mirror-resolve-timeout`: 404 at once, so
//!   containerd moves on to the next mirror or the upstream;
//! - a peer that fails before its response head: the next provider, up to
//!   `--mirror-resolve-retries`;
//! - a peer that fails in the middle of a body: the rest is fetched from
//!   the next provider with a `Range` request at the same offset, so the
//!   client sees one intact response;
//! - a blob nobody provides, which other nodes miss at the same moment:
//!   one of them is chosen to fetch it from the upstream (`routing::herd`)
//!   and the others wait up to `--mirror-herd-wait` for its download to be
//!   advertised, then stream it; without it in time, 404.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::RegistryError;
use super::limits::{Limit, LimitHits};
use super::peer_health::{self, PeerHealth};
use super::target::{Kind, Target};
use crate::auth::BasicAuth;
use crate::http_client::PeerClient;
use crate::metrics::{HerdOutcome, Metrics, PeerFailure, Source};
use crate::oci::{Digest, Reference, Verifier};
use crate::store::{PeerFed, Relay};

/// Marks a request one agent forwarded to another. A request carrying it
/// is answered from local content only, so two nodes can never bounce a
/// request between them.
pub const FORWARDED_HEADER: &str = "x-reflektor-forwarded";

/// How long a peer may take to accept a connection. Inside a cluster a
/// connect takes a millisecond; one that takes a second is a dropped SYN,
/// and waiting for the kernel's retransmits would hold the pull.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a peer may take to send its response head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the mirror waits for a peer's head before it asks the next
/// provider as well. A peer answers from its own store in milliseconds;
/// one that has said nothing by now is likely a silent one.
const HEDGE_AFTER: Duration = Duration::from_millis(300);
/// How long a body may stall before the peer counts as failed.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the wanters of a blob are given to say whether one serves it
/// already: a peer answers a HEAD from its store in milliseconds.
const FIRST_PROBE: Duration = Duration::from_millis(250);
/// How often a follower asks its herd's leader whether the download has
/// begun: a HEAD costs the leader a look at its ingest directory.
const LEADER_PROBE_AGAIN: Duration = Duration::from_millis(50);

/// The nodes that miss a blob nobody provides, as this one sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Herd {
    /// The registry of the node chosen to fetch it from the upstream, which
    /// serves its download from the first byte; `None`: this node, which
    /// may be alone.
    pub leader: Option<SocketAddr>,
    /// The registries of the other nodes that miss it, the leader among
    /// them.
    pub others: Vec<SocketAddr>,
}

/// The router, as the mirror sees it: who provides a key.
#[async_trait]
pub trait ProviderLookup: Send + Sync {
    /// Registry addresses of up to `limit` peers that advertise `key`,
    /// waiting at most `timeout` for the first.
    async fn providers(&self, key: &str, limit: usize, timeout: Duration) -> Vec<SocketAddr>;

    /// Tells the nodes that miss `key` now that this one does too, and
    /// who is to fetch it. A lookup that cannot tell leads, alone.
    async fn join_herd(&self, _key: &str) -> Herd {
        Herd::default()
    }

    /// Registry addresses of up to `limit` providers of `key` as soon as
    /// there is one, looking afresh until `until`; empty when none appeared.
    async fn wait_for_providers(
        &self,
        _key: &str,
        _limit: usize,
        _until: Instant,
    ) -> Vec<SocketAddr> {
        Vec::new()
    }
}

pub struct MirrorConfig {
    pub resolve_timeout: Duration,
    /// How many providers are tried for one request, the first included.
    pub retries: usize,
    /// Whether tags are resolved through peers; without it, only digests
    /// are, which is what containerd asks for after resolving a tag upstream.
    pub resolve_tags: bool,
    /// Requests forwarded at once, bodies included.
    pub max_peer_requests: usize,
    /// Sent to peers, which require the same credentials.
    pub auth: Option<BasicAuth>,
    /// Whether whole bodies from peers are checked against their digest.
    pub verify: bool,
    /// How long a node that follows a herd's leader waits for its
    /// download; zero: nodes never wait for each other.
    pub herd_wait: Duration,
}

pub struct Mirror {
    lookup: Arc<dyn ProviderLookup>,
    client: PeerClient,
    config: MirrorConfig,
    metrics: Arc<Metrics>,
    health: Arc<PeerHealth>,
    /// One permit per forwarded request, held until its body is done.
    slots: Arc<Semaphore>,
    hits: Arc<LimitHits>,
    /// The `Authorization` header for peers, encoded once.
    authorization: Option<HeaderValue>,
    /// Where the blobs relayed to this node's containerd are marked.
    peer_fed: Option<Arc<PeerFed>>,
}

/// The headers a peer's answer may pass on to the client.
const PASSED_HEADERS: [header::HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::HeaderName::from_static("docker-content-digest"),
];

impl Mirror {
    pub fn new(
        lookup: Arc<dyn ProviderLookup>,
        config: MirrorConfig,
        metrics: Arc<Metrics>,
        hits: Arc<LimitHits>,
    ) -> Self {
        let client = crate::http_client::client(CONNECT_TIMEOUT);
        let authorization = config.auth.as_ref().map(|auth| {
            HeaderValue::from_str(&auth.header_value()).expect("base64 is a valid header value")
        });
        Self {
            authorization,
            lookup,
            client,
            slots: Arc::new(Semaphore::new(config.max_peer_requests.max(1))),
            config,
            metrics,
            health: Arc::default(),
            hits,
            peer_fed: None,
        }
    }

    /// Marks each blob in `set` while it looks for and relays the blob, so
    /// that the store does not share a download that peers feed.
    pub fn marking(mut self, set: Arc<PeerFed>) -> Self {
        self.peer_fed = Some(set);
        self
    }

    /// Answers from a peer, or returns `miss`, the local answer, when no
    /// peer can.
    pub async fn forward(
        &self,
        target: &Target,
        method: &Method,
        headers: &HeaderMap,
        miss: RegistryError,
    ) -> Result<Response<Body>, RegistryError> {
        let Some(key) = self.key(target) else {
            return Err(miss);
        };
        // From before the lookup: containerd's ingest for it exists already.
        let relay = match (&target.kind, &self.peer_fed) {
            (Kind::Blob(digest), Some(set)) if *method == Method::GET => {
                Some(set.hold(digest.clone()))
            }
            _ => None,
        };
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.hits.hit(
                Limit::PeerRequests,
                "answered a request for content only peers hold with 404, every peer-request slot being taken",
            );
            return Err(miss);
        };
        let registry = target
            .registry
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        let started = Instant::now();
        let mut providers = Providers::new(Arc::clone(&self.lookup), key.clone(), &self.config);
        let path = peer_path(target);
        let request = |peer| PeerRequest {
            peer,
            method: method.clone(),
            path: path.clone(),
            range: headers.get(header::RANGE).cloned(),
            accept: headers.get(header::ACCEPT).cloned(),
            authorization: self.authorization.clone(),
        };
        let mut first = providers.next(&self.health).await;
        self.metrics.observe_resolve(started.elapsed());
        if first.is_none() && self.herds(target, method) {
            first = self
                .follow_herd(&mut providers, |leader| PeerRequest {
                    method: Method::HEAD,
                    range: None,
                    ..request(leader)
                })
                .await;
        }
        let Some(first) = first else {
            self.metrics.mirror_request(&registry, false);
            return Err(miss);
        };
        match self.race(request(first), &mut providers, request).await {
            Some((request, response)) => {
                self.metrics.mirror_request(&registry, true);
                let digest = match &target.kind {
                    Kind::Manifest(Reference::Digest(digest)) | Kind::Blob(digest) => Some(digest),
                    Kind::Manifest(Reference::Tag(_)) => None,
                };
                let relay = relay.map(|mut relay| {
                    relay.fed();
                    relay
                });
                Ok(self.relay(request, response, providers, digest, (slot, relay)))
            }
            None => {
                self.metrics.mirror_request(&registry, false);
                Err(miss)
            }
        }
    }

    /// Sends `first`, and when it has no answer after [`HEDGE_AFTER`] (or
    /// fails), the same request to the next provider too, and so on: the
    /// first success wins and the others are dropped. A healthy peer
    /// answers a head in milliseconds, so the wait is the cost of a silent
    /// one, which would otherwise hold the request for [`HEAD_TIMEOUT`].
    /// A peer that failed or lost the race without a word is suspect.
    async fn race(
        &self,
        first: PeerRequest,
        providers: &mut Providers,
        request: impl Fn(SocketAddr) -> PeerRequest,
    ) -> Option<(PeerRequest, Response<Incoming>)> {
        let mut waiting = vec![first.peer];
        let mut racing = FuturesUnordered::new();
        racing.push(first.sent(&self.client));
        let mut more = true;
        while !racing.is_empty() || more {
            let hedge = tokio::time::sleep(HEDGE_AFTER);
            tokio::select! {
                Some((request, result)) = racing.next() => {
                    waiting.retain(|peer| *peer != request.peer);
                    match result {
                        Ok(response) if response.status().is_success() => {
                            self.health.cleared(request.peer);
                            for loser in waiting {
                                self.metrics.peer_failure(PeerFailure::Silent);
                                self.suspect(loser, "no response head while another peer answered");
                            }
                            return Some((request, response));
                        }
                        Ok(response) => {
                            // A peer without the key is a stale record, not a fault.
                            tracing::debug!(peer = %request.peer, status = %response.status(), key = %providers.key, "peer refused");
                        }
                        Err(error) => {
                            self.metrics.peer_failure(if error.kind() == io::ErrorKind::TimedOut {
                                PeerFailure::NoHead
                            } else {
                                PeerFailure::Unreachable
                            });
                            self.suspect(request.peer, &error.to_string());
                        }
                    }
                    if !racing.is_empty() {
                        // The others are still in the race; a hedge comes
                        // in its time.
                        continue;
                    }
                }
                () = hedge, if more => {}
            }
            match providers.next(&self.health).await {
                Some(peer) => {
                    waiting.push(peer);
                    racing.push(request(peer).sent(&self.client));
                }
                None => more = false,
            }
        }
        None
    }

    /// Whether a miss joins a herd: a blob's body, which is worth waiting
    /// for; manifests and HEADs are small, and cost the upstream little.
    /// Only where downloads in progress are shared (`marking`): a leader
    /// that shares nothing until its download is whole would only make
    /// its followers wait. Nodes of one DaemonSet share the setting.
    fn herds(&self, target: &Target, method: &Method) -> bool {
        !self.config.herd_wait.is_zero()
            && self.peer_fed.is_some()
            && *method == Method::GET
            && matches!(target.kind, Kind::Blob(_))
    }

    /// The first provider of the blob once the herd's leader has begun
    /// its download; `None` when this node leads, or nobody had it in
    /// time. The leader is asked directly (`probe`, a HEAD) as well as
    /// looked for in the DHT: its download is advertised only once the
    /// store's poll finds it, and a blob small enough to be whole before
    /// that (an image config) only once its image is recorded, after the
    /// last layer, which would leave every follower waiting out the bound.
    /// Every other wanter is asked once first: one that came earlier may
    /// have begun as a leader of fewer wanters (module `routing::herd`).
    async fn follow_herd(
        &self,
        providers: &mut Providers,
        probe: impl Fn(SocketAddr) -> PeerRequest,
    ) -> Option<SocketAddr> {
        let waited = Instant::now();
        let herd = self.lookup.join_herd(&providers.key).await;
        if let Some(serving) = self.first_serving(&herd.others, &probe).await {
            self.metrics.herd(HerdOutcome::Followed);
            tracing::debug!(key = %providers.key, %serving, "following a node that began first");
            providers.found(vec![serving], &self.health);
            return providers.next(&self.health).await;
        }
        let Some(leader) = herd.leader else {
            self.metrics.herd(HerdOutcome::Led);
            return None;
        };
        let until = waited + self.config.herd_wait;
        let advertised = async {
            let found = self
                .lookup
                .wait_for_providers(&providers.key, providers.attempts, until)
                .await;
            if found.is_empty() {
                // A lookup that failed at once must not end the probing.
                std::future::pending::<()>().await;
            }
            found
        };
        let from_leader = async {
            let probe = probe(leader);
            loop {
                match probe.send(&self.client).await {
                    Ok(response) if response.status().is_success() => return vec![leader],
                    _ => tokio::time::sleep(LEADER_PROBE_AGAIN).await,
                }
            }
        };
        let found = tokio::time::timeout_at(until.into(), async {
            tokio::select! {
                found = advertised => found,
                found = from_leader => found,
            }
        })
        .await
        .unwrap_or_default();
        if found.is_empty() {
            self.metrics.herd(HerdOutcome::WaitedOut);
            tracing::info!(
                key = %providers.key,
                %leader,
                waited = ?waited.elapsed(),
                "the node chosen to fetch this blob had not begun its download in time; the \
                 upstream is asked instead"
            );
            return None;
        }
        self.metrics.herd(HerdOutcome::Followed);
        tracing::debug!(key = %providers.key, waited = ?waited.elapsed(), "following the herd's leader");
        providers.found(found, &self.health);
        providers.next(&self.health).await
    }

    /// The first of `wanters` to answer `probe` with success within
    /// [`FIRST_PROBE`]: one serving the blob already.
    async fn first_serving(
        &self,
        wanters: &[SocketAddr],
        probe: &impl Fn(SocketAddr) -> PeerRequest,
    ) -> Option<SocketAddr> {
        let mut asked: FuturesUnordered<_> = wanters
            .iter()
            .map(|peer| probe(*peer).sent(&self.client))
            .collect();
        tokio::time::timeout(FIRST_PROBE, async {
            while let Some((request, result)) = asked.next().await {
                if result.is_ok_and(|response| response.status().is_success()) {
                    return Some(request.peer);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Marks a peer suspect, with a warning the first time.
    fn suspect(&self, peer: SocketAddr, why: &str) {
        if self.health.suspect(peer) {
            tracing::warn!(
                %peer,
                why,
                "peer failed; it is tried after every other provider for {}s",
                peer_health::SUSPECT_FOR.as_secs()
            );
        }
    }

    /// The router key for a target: a digest, or with `--resolve-tags` a
    /// full tag reference.
    fn key(&self, target: &Target) -> Option<String> {
        match &target.kind {
            Kind::Manifest(Reference::Digest(digest)) | Kind::Blob(digest) => {
                Some(digest.to_string())
            }
            Kind::Manifest(Reference::Tag(tag)) if self.config.resolve_tags => {
                let registry = target.registry.as_ref()?;
                Some(format!("{registry}/{}:{tag}", target.name))
            }
            Kind::Manifest(Reference::Tag(_)) => None,
        }
    }

    /// Passes a peer's answer on, its body wrapped so that a failure midway
    /// resumes from the next provider.
    /// A whole body whose digest the request named is hashed as it passes,
    /// and its last byte is held back unless the hash matches: a peer with
    /// corrupt content (or a lying one) must not get its bytes handed on
    /// as good. Ranges cannot be checked and pass as they are.
    fn relay(
        &self,
        request: PeerRequest,
        response: Response<Incoming>,
        spare: Providers,
        digest: Option<&Digest>,
        held: (OwnedSemaphorePermit, Option<Relay>),
    ) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let mut relayed = Response::builder().status(parts.status);
        for name in PASSED_HEADERS {
            if let Some(value) = parts.headers.get(&name) {
                relayed = relayed.header(name, value);
            }
        }
        let body = if request.method == Method::HEAD {
            Body::empty()
        } else {
            let length = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let first = first_byte(&parts.status, &parts.headers);
            let verifier = digest
                .filter(|_| self.config.verify && parts.status == StatusCode::OK)
                .map(Digest::verifier);
            let resume = Resume {
                client: self.client.clone(),
                health: Arc::clone(&self.health),
                metrics: Arc::clone(&self.metrics),
                senders: vec![request.peer],
                verifier,
                _held: held,
                request,
                spare,
                body,
                first,
                length,
                delivered: 0,
            };
            Body::from_stream(resume.into_stream())
        };
        let mut response = relayed.body(body).expect("valid response parts");
        response.extensions_mut().insert(Source::Peer);
        response
    }
}

/// The providers of one key, found as they are needed. The first lookup
/// asks for one provider, so it returns as soon as the DHT names any,
/// instead of waiting for the query to find `attempts` of them when fewer
/// exist (which it cannot tell until the query ends: several milliseconds
/// even on loopback). Only a failure, before the head or in the middle of
/// a body, pays for one wider lookup.
struct Providers {
    lookup: Arc<dyn ProviderLookup>,
    key: String,
    /// Providers tried at most, over the request's whole life.
    attempts: usize,
    timeout: Duration,
    tried: Vec<SocketAddr>,
    found: VecDeque<SocketAddr>,
    lookups: u8,
}

impl Providers {
    fn new(lookup: Arc<dyn ProviderLookup>, key: String, config: &MirrorConfig) -> Self {
        Self {
            lookup,
            key,
            attempts: config.retries.max(1),
            timeout: config.resolve_timeout,
            tried: Vec::new(),
            found: VecDeque::new(),
            lookups: 0,
        }
    }

    /// The next provider not tried yet, or `None` when the attempts are
    /// spent or nobody else has the key. Suspects come last; when the one
    /// provider of the narrow lookup is a suspect, the wide lookup runs at
    /// once, so that a healthy holder is tried first.
    async fn next(&mut self, health: &PeerHealth) -> Option<SocketAddr> {
        while self.tried.len() < self.attempts {
            if let Some(&peer) = self.found.front() {
                let suspect_only = self.lookups == 1 && health.is_suspect(peer);
                if !suspect_only || !self.widen(health).await {
                    self.found.pop_front();
                    if !self.tried.contains(&peer) {
                        self.tried.push(peer);
                        return Some(peer);
                    }
                }
                continue;
            }
            // One narrow lookup, then at most one wide one.
            if self.lookups == 2 {
                return None;
            }
            let limit = if self.lookups == 0 { 1 } else { self.attempts };
            self.lookups += 1;
            let mut found = self.lookup.providers(&self.key, limit, self.timeout).await;
            health.order(&mut found);
            self.found = found.into();
            if self.found.is_empty() {
                return None;
            }
        }
        None
    }

    /// Providers found by a lookup of the caller's, counted as the narrow
    /// one.
    fn found(&mut self, mut found: Vec<SocketAddr>, health: &PeerHealth) {
        health.order(&mut found);
        self.found = found.into();
        self.lookups = self.lookups.max(1);
    }

    /// The wide lookup, ahead of its turn; false when it finds no one
    /// besides the providers already known.
    async fn widen(&mut self, health: &PeerHealth) -> bool {
        self.lookups += 1;
        let mut found = self
            .lookup
            .providers(&self.key, self.attempts, self.timeout)
            .await;
        found.retain(|peer| !self.tried.contains(peer));
        health.order(&mut found);
        let news = found.iter().any(|peer| !self.found.contains(peer));
        if news {
            self.found = found.into();
        }
        news
    }
}

/// One request to one peer; kept to repeat it at an offset against another.
#[derive(Clone)]
struct PeerRequest {
    peer: SocketAddr,
    method: Method,
    path: String,
    range: Option<HeaderValue>,
    accept: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
}

impl PeerRequest {
    /// Sends it, marked as forwarded, and waits at most [`HEAD_TIMEOUT`]
    /// for the response head: the first try and every resume alike.
    async fn send(&self, client: &PeerClient) -> io::Result<Response<Incoming>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(format!("http://{}{}", self.peer, self.path))
            .header(FORWARDED_HEADER, "1");
        if let Some(range) = &self.range {
            builder = builder.header(header::RANGE, range);
        }
        if let Some(accept) = &self.accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, authorization);
        }
        let outgoing = builder.body(Empty::new()).map_err(io::Error::other)?;
        tokio::time::timeout(HEAD_TIMEOUT, client.request(outgoing))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response head in time"))?
            .map_err(io::Error::other)
    }

    /// [`Self::send`], its answer paired with the request: the form a race
    /// of several requests needs.
    async fn sent(self, client: &PeerClient) -> (Self, io::Result<Response<Incoming>>) {
        let result = self.send(client).await;
        (self, result)
    }
}

fn peer_path(target: &Target) -> String {
    let (kind, reference) = match &target.kind {
        Kind::Manifest(reference) => ("manifests", reference.to_string()),
        Kind::Blob(digest) => ("blobs", digest.to_string()),
    };
    let mut path = format!("/v2/{}/{kind}/{reference}", target.name);
    if let Some(registry) = &target.registry {
        path.push_str("?ns=");
        path.extend(form_urlencoded::byte_serialize(
            registry.as_str().as_bytes(),
        ));
    }
    path
}

/// The offset of the first byte of a body: 0, or the start of a 206 range.
fn first_byte(status: &StatusCode, headers: &HeaderMap) -> u64 {
    if *status != StatusCode::PARTIAL_CONTENT {
        return 0;
    }
    headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A body that survives its peer: on an error or a stall it asks the next
/// provider for the rest, from the byte it stopped at.
struct Resume {
    client: PeerClient,
    health: Arc<PeerHealth>,
    metrics: Arc<Metrics>,
    /// Every peer that sent part of the body, for the blame when it does
    /// not match its digest.
    senders: Vec<SocketAddr>,
    verifier: Option<Verifier>,
    /// The peer-request slot and the blob's mark as peer-fed, held while
    /// the body streams.
    _held: (OwnedSemaphorePermit, Option<Relay>),
    request: PeerRequest,
    spare: Providers,
    body: Incoming,
    /// Offset in the blob of the body's first byte.
    first: u64,
    /// The body's length, when the peer said; resuming needs it.
    length: Option<u64>,
    delivered: u64,
}

impl Resume {
    fn into_stream(self) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures::stream::unfold(Some(self), |state| async move {
            let mut state = state?;
            loop {
                match tokio::time::timeout(STALL_TIMEOUT, state.body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            state.delivered += data.len() as u64;
                            if let Some(verifier) = &mut state.verifier {
                                verifier.update(&data);
                            }
                            if state.length.is_some_and(|l| state.delivered >= l)
                                && let Err(error) = state.verify()
                            {
                                return Some((Err(error), None));
                            }
                            return Some((Ok(data), Some(state)));
                        }
                    }
                    Ok(None) if state.length.is_none_or(|l| state.delivered >= l) => {
                        // Without a length, the end is the first moment to
                        // check; failing now still breaks the response.
                        return state.verify().err().map(|error| (Err(error), None));
                    }
                    failure => {
                        let error = match failure {
                            Ok(Some(Err(error))) => error.to_string(),
                            Ok(None) => "the peer closed the body early".to_owned(),
                            _ => "the peer stalled".to_owned(),
                        };
                        tracing::warn!(peer = %state.request.peer, %error, delivered = state.delivered, "resuming from another provider");
                        state.metrics.peer_failure(PeerFailure::Body);
                        state.health.suspect(state.request.peer);
                        if let Err(error) = state.resume().await {
                            return Some((Err(error), None));
                        }
                    }
                }
            }
        })
    }

    /// Checks the whole body against its digest, once; on a mismatch every
    /// peer that sent part of it is suspect.
    fn verify(&mut self) -> io::Result<()> {
        let Some(actual) = self.verifier.take().and_then(Verifier::mismatch) else {
            return Ok(());
        };
        self.metrics.peer_failure(PeerFailure::DigestMismatch);
        for peer in &self.senders {
            self.health.suspect(*peer);
        }
        tracing::warn!(
            peers = ?self.senders,
            path = %self.request.path,
            %actual,
            "peer sent content that does not match its digest; the response is cut short"
        );
        Err(io::Error::other(format!(
            "the body from {:?} has digest {actual}, not the one requested",
            self.senders
        )))
    }

    /// Asks the spare providers, in turn, for the rest of the body.
    async fn resume(&mut self) -> io::Result<()> {
        let Some(length) = self.length else {
            return Err(io::Error::other("cannot resume a body of unknown length"));
        };
        // A peer's Content-Range is not trusted to stay in range.
        let (Some(from), Some(to)) = (
            self.first.checked_add(self.delivered),
            self.first
                .checked_add(length)
                .and_then(|end| end.checked_sub(1)),
        ) else {
            return Err(io::Error::other("a peer sent an impossible range"));
        };
        while let Some(peer) = self.spare.next(&self.health).await {
            let mut request = self.request.clone();
            request.peer = peer;
            request.range =
                Some(HeaderValue::from_str(&format!("bytes={from}-{to}")).expect("an ASCII range"));
            let response = match request.send(&self.client).await {
                Ok(response) if response.status() == StatusCode::PARTIAL_CONTENT => response,
                _ => continue,
            };
            if first_byte(&response.status(), response.headers()) != from {
                continue;
            }
            self.senders.push(request.peer);
            self.request = request;
            self.body = response.into_body();
            return Ok(());
        }
        Err(io::Error::other(format!(
            "every provider failed before byte {from} of the body"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A test double for the router: `held` peers provide every key, and
    /// each lookup's limit is recorded.
    struct Counting {
        held: Vec<SocketAddr>,
        limits: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl ProviderLookup for Counting {
        async fn providers(&self, _: &str, limit: usize, _: Duration) -> Vec<SocketAddr> {
            self.limits.lock().unwrap().push(limit);
            self.held.iter().take(limit.max(1)).copied().collect()
        }
    }

    fn providers(held: &[u16], retries: usize) -> (Arc<Counting>, Providers) {
        let lookup = Arc::new(Counting {
            held: held
                .iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                .collect(),
            limits: Mutex::default(),
        });
        let config = MirrorConfig {
            resolve_timeout: Duration::from_secs(1),
            retries,
            resolve_tags: true,
            max_peer_requests: 8,
            auth: None,
            verify: true,
            herd_wait: Duration::ZERO,
        };
        let providers = Providers::new(lookup.clone(), "sha256:k".to_owned(), &config);
        (lookup, providers)
    }

    #[tokio::test]
    async fn the_first_provider_needs_one_and_a_failure_widens_once() {
        let healthy = PeerHealth::default();
        let (lookup, mut p) = providers(&[1, 2, 3, 4], 3);
        assert_eq!(p.next(&healthy).await.map(|a| a.port()), Some(1));
        assert_eq!(*lookup.limits.lock().unwrap(), vec![1]);
        assert_eq!(p.next(&healthy).await.map(|a| a.port()), Some(2));
        assert_eq!(p.next(&healthy).await.map(|a| a.port()), Some(3));
        assert_eq!(p.next(&healthy).await, None, "three attempts in all");
        assert_eq!(*lookup.limits.lock().unwrap(), vec![1, 3]);
    }

    #[tokio::test]
    async fn nobody_or_nobody_else_ends_it() {
        let healthy = PeerHealth::default();
        let (lookup, mut p) = providers(&[], 3);
        assert_eq!(p.next(&healthy).await, None);
        assert_eq!(*lookup.limits.lock().unwrap(), vec![1]);
        let (lookup, mut p) = providers(&[7], 3);
        assert_eq!(p.next(&healthy).await.map(|a| a.port()), Some(7));
        assert_eq!(p.next(&healthy).await, None, "only the peer already tried");
        assert_eq!(*lookup.limits.lock().unwrap(), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_suspect_found_alone_widens_the_lookup_at_once() {
        let health = PeerHealth::default();
        health.suspect(SocketAddr::from(([127, 0, 0, 1], 1)));
        let (lookup, mut p) = providers(&[1, 2, 3], 3);
        assert_eq!(p.next(&health).await.map(|a| a.port()), Some(2));
        assert_eq!(*lookup.limits.lock().unwrap(), vec![1, 3]);
        assert_eq!(p.next(&health).await.map(|a| a.port()), Some(3));
        assert_eq!(
            p.next(&health).await.map(|a| a.port()),
            Some(1),
            "still tried, last"
        );
        assert_eq!(p.next(&health).await, None);

        let (_, mut p) = providers(&[1], 3);
        assert_eq!(
            p.next(&health).await.map(|a| a.port()),
            Some(1),
            "a suspect that is the only holder is still tried"
        );
    }
}
