//! Prometheus metrics, served on `--metrics-addr`. Counters are recorded by
//! the registry server after each response is written, so byte counts are
//! what really left the node, including `sendfile` bodies.

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use prometheus_client::registry::Registry;

/// Where a response's bytes came from: the label of the served-bytes
/// metric, set by the registry on each response it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Peer,
    /// To a peer, from a download in progress on this node.
    InFlight,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peer => "peer",
            Source::InFlight => "in_flight",
        }
    }
}

/// How a peer let the mirror down: the label of the peer-failures metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFailure {
    /// No connection: refused, reset, or no answer to the SYN in time.
    Unreachable,
    /// Connected, but no response head within the head timeout.
    NoHead,
    /// Still silent when another provider answered the same request.
    Silent,
    /// The body broke off or stalled; the rest came from another provider.
    Body,
    /// The whole body did not hash to the digest it was asked for.
    DigestMismatch,
}

impl PeerFailure {
    fn label(self) -> &'static str {
        match self {
            PeerFailure::Unreachable => "unreachable",
            PeerFailure::NoHead => "no_head",
            PeerFailure::Silent => "silent",
            PeerFailure::Body => "body",
            PeerFailure::DigestMismatch => "digest_mismatch",
        }
    }
}

/// What became of a blob's miss that joined a herd: the label of the herd
/// metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HerdOutcome {
    /// This node was chosen, and fetched it from the upstream.
    Led,
    /// It streamed the chosen node's download.
    Followed,
    /// The chosen node advertised nothing in time; it went to the upstream.
    WaitedOut,
}

impl HerdOutcome {
    fn label(self) -> &'static str {
        match self {
            HerdOutcome::Led => "led",
            HerdOutcome::Followed => "followed",
            HerdOutcome::WaitedOut => "waited_out",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: String,
}

/// Clients choose the method token; a label per token would let them grow
/// the metric without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    registry: String,
    cache: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    served_bytes: Family<SourceLabels, Counter>,
    pub in_flight: Gauge,
    advertised: Family<KindLabels, Gauge>,
    mirror_requests: Family<MirrorLabels, Counter>,
    peer_failures: Family<ReasonLabels, Counter>,
    herd: Family<OutcomeLabels, Counter>,
    limit_hits: Family<LimitLabels, Counter>,
    resolve_duration: Histogram,
    peers: Gauge,
    announcements_pending: Gauge,
    registries: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct registry labels kept on mirror metrics.
const MAX_REGISTRY_LABELS: usize = 32;

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("reflektor");
        let requests = Family::<RequestLabels, Counter>::default();
        let response_bytes = Family::<RouteLabels, Counter>::default();
        let served_bytes = Family::<SourceLabels, Counter>::default();
        let in_flight = Gauge::default();
        let advertised = Family::<KindLabels, Gauge>::default();
        let mirror_requests = Family::<MirrorLabels, Counter>::default();
        let peer_failures = Family::<ReasonLabels, Counter>::default();
        let herd = Family::<OutcomeLabels, Counter>::default();
        let limit_hits = Family::<LimitLabels, Counter>::default();
        let peers = Gauge::default();
        let announcements_pending = Gauge::default();
        // 0.5 ms to ~4 s: a lookup answered from cache up to one that timed out.
        let resolve_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
        );
        registry.register(
            "http_requests",
            "Registry requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_response_bytes",
            "Response body bytes written, by route",
            response_bytes.clone(),
        );
        registry.register(
            "served_bytes",
            "Manifest and blob bytes served, by where they came from (local, peer, or in_flight: a download in progress here, to a peer)",
            served_bytes.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Registry requests being answered now",
            in_flight.clone(),
        );
        registry.register(
            "advertised_keys",
            "Keys this node advertises to its peers, by kind (digest or tag)",
            advertised.clone(),
        );
        registry.register(
            "mirror_requests",
            "Requests for content this node lacks, by registry and whether a peer had it",
            mirror_requests.clone(),
        );
        registry.register(
            "peer_failures",
            "Peers that failed a mirrored request, by how (unreachable, no_head, silent, \
             body, digest_mismatch); each makes the peer tried last for a while",
            peer_failures.clone(),
        );
        registry.register(
            "herd_misses",
            "Blob misses that other nodes may share, by outcome: led (this node was chosen \
             to fetch from the upstream), followed (it streamed the chosen node's download), \
             waited_out (the chosen node advertised nothing in time)",
            herd.clone(),
        );
        registry.register(
            "limit_hits",
            "Times a bound was hit, by limit (connections, header_timeout, idle_timeout, \
             header_bytes, peer_requests)",
            limit_hits.clone(),
        );
        registry.register(
            "resolve_duration_seconds",
            "Time to find the peers that provide a key",
            resolve_duration.clone(),
        );
        registry.register("peers", "Peers in this node's routing table", peers.clone());
        registry.register(
            "announcements_pending",
            "Keys advertised here whose provider announcement has not gone out yet \
             (queued, waiting for a peer, or in flight)",
            announcements_pending.clone(),
        );
        Self {
            registry,
            requests,
            response_bytes,
            served_bytes,
            in_flight,
            advertised,
            mirror_requests,
            peer_failures,
            herd,
            limit_hits,
            resolve_duration,
            peers,
            announcements_pending,
            registries: Default::default(),
        }
    }

    /// One answered request. Manifest and blob bytes count as served from
    /// their source: this node's store, or a peer.
    pub fn record(
        &self,
        route: &'static str,
        method: &Method,
        status: u16,
        bytes: u64,
        source: Option<Source>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(method),
                status: status.to_string(),
            })
            .inc();
        self.response_bytes
            .get_or_create(&RouteLabels { route })
            .inc_by(bytes);
        if let Some(source) = source.filter(|_| (200..300).contains(&status)) {
            self.served_bytes
                .get_or_create(&SourceLabels {
                    source: source.label(),
                })
                .inc_by(bytes);
        }
    }

    /// One request for content this node lacks; `hit` when a peer had it.
    /// Registries come from requests, so past [`MAX_REGISTRY_LABELS`]
    /// distinct ones the rest are counted as `other`.
    pub fn mirror_request(&self, registry: &str, hit: bool) {
        let cache = if hit { "hit" } else { "miss" };
        let registry = {
            let mut seen = self.registries.lock().expect("label set poisoned");
            if seen.contains(registry) || seen.len() < MAX_REGISTRY_LABELS {
                seen.insert(registry.to_owned());
                registry.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.mirror_requests
            .get_or_create(&MirrorLabels { registry, cache })
            .inc();
    }

    pub fn peer_failure(&self, failure: PeerFailure) {
        self.peer_failures
            .get_or_create(&ReasonLabels {
                reason: failure.label(),
            })
            .inc();
    }

    pub fn herd(&self, outcome: HerdOutcome) {
        self.herd
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// One hit of a bound; the label comes from the registry's limits.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.get_or_create(&LimitLabels { limit }).inc();
    }

    pub fn observe_resolve(&self, duration: std::time::Duration) {
        self.resolve_duration.observe(duration.as_secs_f64());
    }

    /// What the router reports: its routing table and the announcements
    /// not yet out.
    pub fn set_router(&self, peers: usize, announcements_pending: u64) {
        self.peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
        self.announcements_pending
            .set(i64::try_from(announcements_pending).unwrap_or(i64::MAX));
    }

    /// What state sync advertises now.
    pub fn set_advertised(&self, digests: usize, tags: usize) {
        let gauge = |kind| self.advertised.get_or_create(&KindLabels { kind }).clone();
        gauge("digest").set(i64::try_from(digests).unwrap_or(i64::MAX));
        gauge("tag").set(i64::try_from(tags).unwrap_or(i64::MAX));
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `/metrics` endpoint, for the metrics listener.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
                    .into_response()
            }
        }),
    )
}
