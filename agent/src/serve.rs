//! `reflektor registry`: checks the node, opens the content store, and runs
//! the registry and metrics listeners until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use regex::Regex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bootstrap::{self, Bootstrapper, DnsPeers, HttpPeers, StaticPeers, SystemResolver};
use crate::cli::{BootstrapKind, ContainerdArgs, PeerArgs, RegistryArgs};
use crate::doctor::{self, Status};
use crate::metrics::{self, Metrics};
use crate::oci::Registry;
use crate::registry::{self, AppState, Filter, Mirror, MirrorConfig};
use crate::routing::{Multiaddr, Router, RouterConfig, read_psk};
use crate::runtime::Containerd;
use crate::state::StateSync;
use crate::store::{ContainerdStore, ContentStore, OciLayoutStore};

pub async fn run(args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let filter = filter(args)?;
    let registry_listener = bind(&args.registry_addr, "--registry-addr").await?;
    let metrics_listener = bind(&args.metrics_addr, "--metrics-addr").await?;
    let (store, containerd): (Arc<dyn ContentStore>, _) = match &args.oci_layout {
        Some(dir) => {
            let store = OciLayoutStore::open(dir)
                .await
                .with_context(|| format!("--oci-layout {}", dir.display()))?;
            (Arc::new(store), None)
        }
        None => {
            preflight(&args.containerd).await?;
            let containerd = Containerd::connect(&args.containerd.containerd_sock).await?;
            let store = ContainerdStore::new(
                containerd.clone(),
                &args.containerd_namespace,
                &args.containerd_content_path,
            )?;
            (Arc::new(store), Some(containerd))
        }
    };
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let registry_port = registry_listener.local_addr()?.port();
    let router = match args.peers.bootstrap_kind {
        None => {
            tracing::info!("no --bootstrap-kind: serving this node's content only");
            None
        }
        Some(kind) => Some(start_peers(&args.peers, kind, registry_port, &shutdown).await?),
    };
    if let Some(router) = &router {
        let sync = StateSync::new(
            Arc::clone(&store),
            Arc::new(router.clone()),
            filter.clone(),
            Arc::clone(&metrics),
        );
        match containerd {
            Some(containerd) => {
                let namespace = args.containerd_namespace.clone();
                tokio::spawn(sync.run(containerd, namespace, shutdown.clone()));
            }
            None => {
                tokio::spawn(sync.run_without_events(shutdown.clone()));
            }
        }
    }
    if let Some(router) = &router {
        tokio::spawn(export_router_stats(
            router.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    let mirror = router.as_ref().map(|router| {
        Mirror::new(
            Arc::new(router.clone()),
            MirrorConfig {
                resolve_timeout: args.peers.mirror_resolve_timeout,
                retries: args.peers.mirror_resolve_retries.max(1),
                resolve_tags: args.peers.resolve_tags,
            },
            Arc::clone(&metrics),
        )
    });
    let peers = router
        .clone()
        .map(|router| Arc::new(router) as Arc<dyn registry::Readiness>);
    let app = registry::router(Arc::new(AppState {
        store,
        filter,
        mirror,
        peers,
    }));
    tracing::info!(
        registry = %registry_listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        "serving"
    );

    let metrics_server = axum::serve(metrics_listener, metrics::router(Arc::clone(&metrics)))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let (registry_result, metrics_result) = tokio::join!(
        registry::server::serve(registry_listener, app, metrics, shutdown.clone()),
        metrics_server
    );
    if let Some(router) = router {
        router.shutdown().await;
    }
    registry_result.context("registry listener failed")?;
    metrics_result.context("metrics listener failed")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Starts the router, the bootstrap loop and, if asked, the `/id`
/// endpoint for other nodes' HTTP bootstrap.
async fn start_peers(
    args: &PeerArgs,
    kind: BootstrapKind,
    registry_port: u16,
    shutdown: &CancellationToken,
) -> anyhow::Result<Router> {
    let bootstrapper: Arc<dyn Bootstrapper> = match kind {
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
            let Some(url) = args.http_bootstrap_url.clone() else {
                bail!("--bootstrap-kind http needs --http-bootstrap-url");
            };
            Arc::new(HttpPeers { url })
        }
    };
    let listen = listen_addr(&args.router_addr, "--router-addr")?;
    let mut config = RouterConfig::new(
        bootstrap::socket_multiaddr(listen),
        args.data_dir.clone(),
        registry_port,
    );
    if let Some(file) = &args.router_psk_file {
        config.psk = Some(read_psk(file)?);
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("--data-dir {}: cannot create it", args.data_dir.display()))?;
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
    tokio::spawn(bootstrap::keep_connected(
        router.clone(),
        bootstrapper,
        shutdown.clone(),
    ));
    Ok(router)
}

/// Copies the router's figures into the metrics every second: cheap (one
/// message to the router), and fresh enough to watch a node's announcements
/// drain after start.
async fn export_router_stats(router: Router, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {
                let Ok(stats) = router.stats().await else {
                    tracing::warn!("the router stopped: reflektor_peers and \
                        reflektor_announcements_pending keep their last values");
                    return;
                };
                let in_flight = stats
                    .announcements_started
                    .saturating_sub(stats.announcements_finished);
                metrics.set_router(
                    stats.routing_table_size,
                    stats.announcements_queued as u64 + in_flight,
                );
            }
        }
    }
}

/// Doctor's checks, as a gate: refuse what cannot work, warn about what
/// might not, and say why either way.
async fn preflight(containerd: &ContainerdArgs) -> anyhow::Result<()> {
    let report = doctor::run(&containerd.doctor_target()).await;
    let mut failures = Vec::new();
    for check in &report.checks {
        match check.status {
            Status::Ok => {
                tracing::info!(check = %check.check, source = %check.source, "{}", check.detail)
            }
            Status::Warn => {
                tracing::warn!(check = %check.check, source = %check.source, "{}", check.detail)
            }
            Status::Fail => {
                let fix = check.fix.as_deref().unwrap_or("see `reflektor doctor`");
                failures.push(format!("{}: {}\n  fix: {fix}", check.check, check.detail));
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "containerd on this node cannot work with reflektor:\n{}",
            failures.join("\n")
        );
    }
    Ok(())
}

fn filter(args: &RegistryArgs) -> anyhow::Result<Filter> {
    let mirrored = args
        .mirrored_registries
        .iter()
        .filter(|r| !r.is_empty())
        .map(|url| {
            let host = url
                .split_once("://")
                .map_or(url.as_str(), |(_, rest)| rest)
                .trim_end_matches('/');
            host.parse::<Registry>().with_context(|| {
                format!(
                    "--mirrored-registries {url:?}: expected a registry URL such as \
                     https://docker.io or a host such as ghcr.io"
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let exclude = args
        .registry_filters
        .iter()
        .filter(|f| !f.is_empty())
        .map(|pattern| {
            Regex::new(pattern).with_context(|| {
                format!("--registry-filters {pattern:?} is not a valid regular expression")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Filter { mirrored, exclude })
}

/// Spegel's address syntax: `:5000` means every interface (IPv4 here;
/// `[::]:5000` asks for dual-stack IPv6), else an IP and a port.
fn listen_addr(addr: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    match addr.strip_prefix(':') {
        Some(port) => {
            let port: u16 = port.parse().with_context(|| {
                format!("{flag} {addr:?}: expected \":PORT\" or \"IP:PORT\", e.g. \":5000\"")
            })?;
            Ok(SocketAddr::from(([0u8; 4], port)))
        }
        None => addr.parse().with_context(|| {
            format!(
                "{flag} {addr:?}: expected \":PORT\" or \"IP:PORT\", e.g. \"127.0.0.1:5000\" \
                 or \"[::1]:5000\""
            )
        }),
    }
}

async fn bind(addr: &str, flag: &str) -> anyhow::Result<TcpListener> {
    let addr_parsed = listen_addr(addr, flag)?;
    TcpListener::bind(addr_parsed).await.with_context(|| {
        format!("{flag} {addr:?}: cannot listen; is another process using the port?")
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
}
