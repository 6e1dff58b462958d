//! Where bootstrap addresses come from: the command line, DNS, or another
//! node's `/id` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt;
use libp2p::Multiaddr;

use super::{BootstrapError, Bootstrapper, socket_multiaddr};

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
            .map_err(|error| BootstrapError::Dns {
                domain: self.domain.clone(),
                error,
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

/// The whole fetch, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer list is a few lines; anything larger is not one.
const MAX_ID_BODY: usize = 64 * 1024;

/// One GET, body included, with a deadline: bootstrap must not hang the
/// agent.
async fn fetch(url: &str) -> Result<String, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_unbounded(url))
        .await
        .map_err(|_| "no complete answer within 5 s".to_owned())?
}

async fn fetch_unbounded(url: &str) -> Result<String, String> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://HOST:PORT/id"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported; expected http://HOST:PORT/id".to_owned());
    }
    let response = crate::http_client::client(FETCH_TIMEOUT)
        .get(uri)
        .await
        .map_err(|e| crate::errors::chain(&e))?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::bootstrap::id_router;

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
