//! Peer routing for `reflektor registry`: the router, how it finds its
//! first peers, and the router behind the seams that state sync, the
//! mirror path and `/readyz` declare.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::listen::{bind, listen_addr};
use crate::bootstrap::{
    self, Bootstrapper, DnsPeers, FirstRound, HttpPeers, StaticPeers, SystemResolver,
    socket_multiaddr,
};
use crate::cli::{BootstrapKind, PeerArgs};
use crate::registry::{Herd, ProviderLookup, Readiness};
use crate::routing::{Multiaddr, Router, RouterConfig, read_psk};
use crate::state::{AdvertiseError, Advertised, Advertiser};

/// The router, and what `/readyz` waits for on its side.
pub struct Peers {
    pub router: Router,
    pub readiness: Arc<dyn Readiness>,
}

/// Starts the router, the bootstrap loop and, if asked, the `/id`
/// endpoint for other nodes' HTTP bootstrap.
pub async fn start(
    args: &PeerArgs,
    kind: BootstrapKind,
    registry_port: u16,
    shutdown: &CancellationToken,
) -> anyhow::Result<Peers> {
    let bootstrapper = bootstrapper(args, kind)?;
    let listen = listen_addr(&args.router_addr, "--router-addr")?;
    let data_dir = args.data_dir.0.clone();
    match &data_dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .with_context(|| format!("--data-dir {}: cannot create it", dir.display()))?,
        None => tracing::warn!(
            "--data-dir is empty: the node identity lives in memory, so this node comes back \
             with a new peer id after every restart"
        ),
    }
    let mut config = RouterConfig::new(socket_multiaddr(listen), data_dir, registry_port);
    if let Some(file) = &args.router_psk_file {
        config.psk = Some(read_psk(file)?);
    }
    let (router, event_loop) = Router::start(config).await?;
    // A router that dies leaves a node that can neither advertise nor find
    // anything: stop, so that the DaemonSet restarts the agent.
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let ended = event_loop.await;
        if !stop.is_cancelled() {
            tracing::error!(?ended, "the p2p router stopped unexpectedly; shutting down");
            stop.cancel();
        }
    });
    tracing::info!(peer_id = %router.peer_id(), "router started");
    if let Some(addr) = &args.http_bootstrap_addr {
        let listener = bind(addr, "--http-bootstrap-addr").await?;
        let id_router = router.clone();
        let app = bootstrap::id_router(move || {
            let router = id_router.clone();
            async move {
                let peer = router.peer_id();
                router
                    .listen_addrs()
                    .await
                    .into_iter()
                    .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(peer)))
                    .collect()
            }
        });
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
    }
    let first_round = FirstRound::default();
    tokio::spawn(bootstrap::keep_connected(
        router.clone(),
        bootstrapper,
        first_round.clone(),
        shutdown.clone(),
    ));
    Ok(Peers {
        router,
        readiness: Arc::new(BootstrapTried(first_round)),
    })
}

fn bootstrapper(args: &PeerArgs, kind: BootstrapKind) -> anyhow::Result<Arc<dyn Bootstrapper>> {
    Ok(match kind {
        BootstrapKind::Static => {
            let peers = args
                .static_bootstrap_peers
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse::<Multiaddr>().with_context(|| {
                        format!(
                            "--static-bootstrap-peers {p:?}: expected a multiaddr such as \
                             /ip4/10.0.0.5/tcp/5001"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if peers.is_empty() {
                bail!("--bootstrap-kind static needs --static-bootstrap-peers");
            }
            Arc::new(StaticPeers(peers))
        }
        BootstrapKind::Dns => {
            let Some(domain) = args.dns_bootstrap_domain.clone() else {
                bail!("--bootstrap-kind dns needs --dns-bootstrap-domain");
            };
            let port = listen_addr(&args.router_addr, "--router-addr")?.port();
            Arc::new(DnsPeers {
                domain,
                port,
                resolver: Arc::new(SystemResolver),
            })
        }
        BootstrapKind::Http => {
            let url = args
                .http_bootstrap_url
                .as_ref()
                .or(args.http_bootstrap_peer.as_ref());
            let Some(url) = url.cloned() else {
                bail!("--bootstrap-kind http needs --http-bootstrap-url");
            };
            Arc::new(HttpPeers { url })
        }
    })
}

#[async_trait]
impl Advertiser for Router {
    async fn sync(&self, keys: Vec<String>) -> Result<Advertised, AdvertiseError> {
        let synced = Router::sync(self, keys).await?;
        Ok(Advertised {
            advertised: synced.advertised,
            withdrawn: synced.withdrawn,
        })
    }
}

#[async_trait]
impl ProviderLookup for Router {
    async fn providers(&self, key: &str, limit: usize, timeout: Duration) -> Vec<SocketAddr> {
        match self.find_providers(key, limit, timeout).await {
            Ok(providers) => providers.into_iter().map(|p| p.registry).collect(),
            Err(error) => {
                tracing::warn!(%error, key, "provider lookup failed");
                Vec::new()
            }
        }
    }

    async fn join_herd(&self, key: &str) -> Herd {
        match Router::join_herd(self, key).await {
            Ok(herd) => {
                tracing::debug!(
                    key,
                    leader = ?herd.leader.map(|l| l.peer_id),
                    others = herd.others.len(),
                    "joined the nodes that miss a blob"
                );
                Herd {
                    leader: herd.leader.map(|l| l.registry),
                    others: herd.others.iter().map(|p| p.registry).collect(),
                }
            }
            Err(error) => {
                tracing::warn!(%error, key, "cannot find the other nodes that want a blob");
                Herd::default()
            }
        }
    }

    async fn wait_for_providers(&self, key: &str, limit: usize, until: Instant) -> Vec<SocketAddr> {
        match Router::wait_for_providers(self, key, limit, until).await {
            Ok(providers) => providers.into_iter().map(|p| p.registry).collect(),
            Err(error) => {
                tracing::warn!(%error, key, "provider lookup failed");
                Vec::new()
            }
        }
    }
}

/// Ready once bootstrap has been tried: a node serves its own content and
/// answers 404 for the rest whether or not it has peers, so waiting for a
/// peer would keep a cluster of one from ever being Ready, and a node
/// whose peers all left would stay Ready anyway. Peers are in the
/// `reflektor_peers` metric and the log.
struct BootstrapTried(FirstRound);

#[async_trait]
impl Readiness for BootstrapTried {
    async fn ready(&self) -> Result<(), String> {
        if self.0.ended() {
            Ok(())
        } else {
            Err("the first bootstrap round has not ended yet".to_owned())
        }
    }
}
