//! The bounds that keep an agent serving when clients or peers misbehave:
//! a flood of connections, heads sent a byte at a time (slowloris), idle
//! connections held open, a burst of requests for content only peers hold.
//! Each is a flag with a default that no well-behaved client comes near.
//! Hitting one is counted in `reflektor_limit_hits_total{limit}` and logged,
//! at most once per [`LOG_EVERY`] for each limit, with the count since the
//! last line, so a flood cannot also flood the log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// The server's bounds on connections and request heads.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections open at once; past it, new ones wait in the kernel's
    /// accept queue until one closes.
    pub max_connections: usize,
    /// How long a connection may take to send a whole request head,
    /// counted from its first byte (from the accept for a new connection).
    pub header_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// The largest request head, in bytes; larger ones get 431.
    pub max_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Which bound was hit: the metric's label and the flag that moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    HeaderTimeout,
    IdleTimeout,
    HeaderBytes,
    PeerRequests,
    /// The process's open-file limit, hit at accept(2) (EMFILE, ENFILE):
    /// not a flag of ours, but the bound --max-connections must fit in.
    OpenFiles,
}

const LIMITS: usize = 6;

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::HeaderTimeout => "header_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::HeaderBytes => "header_bytes",
            Limit::PeerRequests => "peer_requests",
            Limit::OpenFiles => "open_files",
        }
    }

    /// The flag that moves it; none for the open-file limit, which is the
    /// process's.
    fn flag(self) -> Option<&'static str> {
        match self {
            Limit::Connections => Some("--max-connections"),
            Limit::HeaderTimeout => Some("--request-header-timeout"),
            Limit::IdleTimeout => Some("--idle-timeout"),
            Limit::HeaderBytes => Some("--max-request-header-bytes"),
            Limit::PeerRequests => Some("--max-peer-requests"),
            Limit::OpenFiles => None,
        }
    }

    /// What to change when the hits are legitimate load.
    fn remedy(self) -> String {
        match self.flag() {
            Some(flag) => format!("raise {flag} if this is legitimate load"),
            None => "raise the hard open-file limit (the container runtime's LimitNOFILE, \
                     `ulimit -Hn`) or lower --max-connections"
                .to_owned(),
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether hitting it says something is wrong: an idle connection
    /// closed on time is the bound working as meant, so it is counted but
    /// logged only at debug level.
    fn is_warning(self) -> bool {
        self != Limit::IdleTimeout
    }
}

/// How often each limit may log.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts and logs limit hits; one per agent, shared by the server and the
/// mirror.
pub struct LimitHits {
    metrics: std::sync::Arc<Metrics>,
    /// Per limit: when it last logged, and the hits since.
    logged: Mutex<[(Option<Instant>, u64); LIMITS]>,
}

impl LimitHits {
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        Self {
            metrics,
            logged: Mutex::new([(None, 0); LIMITS]),
        }
    }

    /// One hit of `limit`; `what` says what happened to whom, in a few words.
    pub fn hit(&self, limit: Limit, what: &str) {
        self.metrics.limit_hit(limit.label());
        let times = {
            let mut logged = self.logged.lock().expect("limit log poisoned");
            let (last, since) = &mut logged[limit.index()];
            *since += 1;
            let now = Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
                return;
            }
            *last = Some(now);
            std::mem::take(since)
        };
        if limit.is_warning() {
            tracing::warn!(
                limit = limit.label(),
                times,
                "{what} ({times} since the last report); {}",
                limit.remedy()
            );
        } else {
            tracing::debug!(limit = limit.label(), times, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn every_hit_is_counted_and_the_log_is_rate_limited() {
        let metrics = Arc::new(Metrics::new());
        let hits = LimitHits::new(Arc::clone(&metrics));
        for _ in 0..50 {
            hits.hit(Limit::HeaderBytes, "a request head was too large");
        }
        hits.hit(Limit::Connections, "every connection slot is taken");
        for _ in 0..3 {
            hits.hit(Limit::OpenFiles, "accept failed: too many open files");
        }
        let text = metrics.encode();
        assert!(
            text.contains(r#"reflektor_limit_hits_total{limit="header_bytes"} 50"#),
            "{text}"
        );
        assert!(
            text.contains(r#"reflektor_limit_hits_total{limit="connections"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"reflektor_limit_hits_total{limit="open_files"} 3"#),
            "{text}"
        );
        let logged = hits.logged.lock().unwrap();
        assert_eq!(
            logged[Limit::HeaderBytes.index()].1,
            49,
            "one line logged, 49 hits held for the next"
        );
    }
}
