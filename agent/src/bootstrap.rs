//! How a node finds its first peers, with Spegel's three kinds:
//! - `static`: multiaddrs given on the command line;
//! - `dns`: every A/AAAA record of a name, e.g. a headless Service, with
//!   the port of `--router-addr`;
//! - `http`: another node's `/id` endpoint, which lists its addresses.
//!
//! A bootstrapper only names addresses; the router dials them, and the
//! agent keeps asking (with backoff) until the routing table is non-empty.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot resolve {domain:?} for bootstrap peers: {source}")]
    Dns {
        domain: String,
        source: std::io::Error,
    },
    #[error("cannot fetch bootstrap peers from {url}: {message}")]
    Http { url: String, message: String },
}

/// The seam between the agent and where bootstrap addresses come from.
#[async_trait]
pub trait Bootstrapper: Send + Sync {
    async fn peers(&self) -> Result<Vec<Multiaddr>, BootstrapError>;
}

/// `--static-bootstrap-peers`; `/p2p/<id>` is optional, the router learns
/// the id when it dials.
pub struct StaticPeers(pub Vec<Multiaddr>);

#[async_trait]
impl Bootstrapper for StaticPeers {
    async fn peers(&self) -> Result<Vec<Multiaddr>, BootstrapError> {
        Ok(self.0.clone())
    }
}

/// Name resolution, injectable so that tests can map names to loopback
/// addresses without touching the host's resolver.
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn resolve(&self, domain: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The host's resolver (getaddrinfo): in a pod, cluster DNS.
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, domain: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((domain, port)).await?.collect())
    }
}

/// `--dns-bootstrap-domain`: every address of the name, at the router port.
pub struct DnsPeers {
    pub domain: String,
    pub port: u16,
    pub resolver: Arc<dyn Resolver>,
}

#[async_trait]
impl Bootstrapper for DnsPeers {
    async fn peers(&self) -> Result<Vec<Multiaddr>, BootstrapError> {
        let addrs = self
            .resolver
            .resolve(&self.domain, self.port)
            .await
            .map_err(|source| BootstrapError::Dns {
                domain: self.domain.clone(),
                source,
            })?;
        Ok(addrs.into_iter().map(socket_multiaddr).collect())
    }
}

/// `--http-bootstrap-url`: the addresses another node's `/id` lists, one
/// multiaddr a line.
pub struct HttpPeers {
    pub url: String,
}

#[async_trait]
impl Bootstrapper for HttpPeers {
    async fn peers(&self) -> Result<Vec<Multiaddr>, BootstrapError> {
        let error = |message: String| BootstrapError::Http {
            url: self.url.clone(),
            message,
        };
        let body = fetch(&self.url).await.map_err(error)?;
        body.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| {
                line.parse::<Multiaddr>()
                    .map_err(|e| error(format!("{line:?} is not a multiaddr: {e}")))
            })
            .collect()
    }
}

/// A peer list is a few lines; anything larger is not one.
const MAX_ID_BODY: usize = 64 * 1024;

/// One GET, body included, with a deadline: bootstrap must not hang the
/// agent.
async fn fetch(url: &str) -> Result<String, String> {
    tokio::time::timeout(Duration::from_secs(5), fetch_unbounded(url))
        .await
        .map_err(|_| "no complete answer within 5 s".to_owned())?
}

async fn fetch_unbounded(url: &str) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://HOST:PORT/id"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported; expected http://HOST:PORT/id".to_owned());
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_ID_BODY)
        .collect()
        .await
        .map_err(|e| format!("{e} (a peer list is at most {MAX_ID_BODY} bytes)"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_owned())
}

/// `--http-bootstrap-addr`: serves this node's addresses at `/id`, as
/// `addrs` returns them when asked.
pub fn id_router<F, Fut>(addrs: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Multiaddr>> + Send,
{
    Router::new().route(
        "/id",
        get(move || {
            let addrs = addrs.clone();
            async move {
                addrs()
                    .await
                    .iter()
                    .map(|a| format!("{a}\n"))
                    .collect::<String>()
            }
        }),
    )
}

/// How often a node with peers bootstraps again, to heal partitions and
/// meet nodes that joined since.
const REBOOTSTRAP: Duration = Duration::from_secs(60);
/// Waits between attempts while a node has no peer at all.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Dials what the bootstrapper names until the node has a peer, retrying
/// with backoff, then again every minute, until `shutdown`.
pub async fn keep_connected(
    router: crate::routing::Router,
    bootstrapper: Arc<dyn Bootstrapper>,
    shutdown: CancellationToken,
) {
    let mut failures = 0usize;
    loop {
        let own = router.listen_addrs().await;
        match bootstrapper.peers().await {
            Ok(peers) => {
                for addr in peers.into_iter().filter(|a| !own.contains(a)) {
                    if let Err(error) = router.add_peer(addr.clone()).await {
                        tracing::debug!(%addr, %error, "bootstrap peer not reachable");
                    }
                }
                if let Err(error) = router.bootstrap().await {
                    tracing::debug!(%error, "bootstrap query failed");
                }
            }
            Err(error) => tracing::warn!(%error, "no bootstrap peers"),
        }
        let wait = if router.routing_table_size().await > 0 {
            failures = 0;
            REBOOTSTRAP
        } else {
            let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
            failures += 1;
            tracing::info!(?wait, "no peers yet; retrying bootstrap");
            wait
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A TCP socket address as a multiaddr: `/ip4/…/tcp/…` or `/ip6/…/tcp/…`.
pub fn socket_multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => Protocol::Ip4(ip),
        std::net::IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A resolver test double: names map to fixed addresses.
    struct FixedNames(HashMap<String, Vec<std::net::IpAddr>>);

    #[async_trait]
    impl Resolver for FixedNames {
        async fn resolve(&self, domain: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            self.0
                .get(domain)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))
        }
    }

    #[tokio::test]
    async fn dns_names_every_address_at_the_router_port() {
        let names = FixedNames(HashMap::from([(
            "reflektor.kube-system.svc".to_owned(),
            vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()],
        )]));
        let dns = DnsPeers {
            domain: "reflektor.kube-system.svc".to_owned(),
            port: 5001,
            resolver: Arc::new(names),
        };
        let peers = dns.peers().await.unwrap();
        let shown: Vec<String> = peers.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["/ip4/127.0.0.2/tcp/5001", "/ip6/::1/tcp/5001"]);
        let missing = DnsPeers {
            domain: "nope".to_owned(),
            ..dns
        };
        let error = missing.peers().await.unwrap_err().to_string();
        assert!(error.contains("\"nope\""), "{error}");
    }

    #[tokio::test]
    async fn the_system_resolver_knows_localhost() {
        let addrs = SystemResolver.resolve("localhost", 5001).await.unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 5001 && a.ip().is_loopback())
        );
        assert!(!addrs.is_empty());
    }

    #[tokio::test]
    async fn http_bootstrap_reads_another_nodes_id_endpoint() {
        let served: Vec<Multiaddr> = vec![
            "/ip4/127.0.0.3/tcp/5001/p2p/12D3KooWGBfq3QVmvSe6zQS2N6ADuHXXn2RsSJHi8ih1KJzFY2nE"
                .parse()
                .unwrap(),
        ];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let list = served.clone();
        let app = id_router(move || {
            let list = list.clone();
            async move { list }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = HttpPeers {
            url: format!("http://{addr}/id"),
        };
        assert_eq!(http.peers().await.unwrap(), served);

        let wrong = HttpPeers {
            url: format!("http://{addr}/nope"),
        };
        assert!(wrong.peers().await.unwrap_err().to_string().contains("404"));
        let https = HttpPeers {
            url: "https://example.com/id".to_owned(),
        };
        assert!(
            https
                .peers()
                .await
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
    }
}
