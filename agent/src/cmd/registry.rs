//! `reflektor registry`: checks the node, opens the content store, and runs
//! the registry and metrics listeners until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use regex::Regex;
use tokio_util::sync::CancellationToken;

use super::doctor::preflight;
use super::listen::bind;
use super::open_files;
use super::peers;
use super::signals::stop_on_signal;
use crate::auth::BasicAuth;
use crate::cli::{LimitArgs, RegistryArgs};
use crate::metrics::{self, Metrics};
use crate::oci::Filter;
use crate::registry::{self, AppState, LimitHits, Mirror, MirrorConfig, ServerLimits};
use crate::routing::Router;
use crate::runtime::Namespace;
use crate::state::StateSync;
use crate::store::{ContainerdStore, ContentStore, OciLayoutStore};

pub async fn run(args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    if let Some(endpoint) = args
        .ignored
        .otel_endpoint
        .as_ref()
        .filter(|e| !e.is_empty())
    {
        tracing::warn!(
            endpoint,
            "--otel-endpoint is accepted for Spegel compatibility, but reflektor exports no \
             traces; use the metrics on --metrics-addr and --log-level debug instead"
        );
    }
    if let Err(error) = open_files::raise(args.limits.max_connections as usize) {
        tracing::warn!(%error, "could not read or raise the open-file limit; keeping it");
    }
    let filter = filter(args)?;
    let registry_listener = bind(&args.registry_addr, "--registry-addr").await?;
    let metrics_listener = bind(&args.metrics_addr, "--metrics-addr").await?;
    let (store, containerd, peer_fed): (Arc<dyn ContentStore>, _, _) = match &args.oci_layout {
        Some(dir) => {
            let store = OciLayoutStore::open(dir)
                .await
                .with_context(|| format!("--oci-layout {}", dir.display()))?;
            (Arc::new(store), None, None)
        }
        None => {
            let namespace = Namespace::new(&args.containerd_namespace)?;
            let containerd = preflight(&args.containerd).await?;
            let store = ContainerdStore::new(
                containerd.clone(),
                namespace.clone(),
                &args.containerd_content_path,
            );
            let peer_fed = store.peer_fed();
            (
                Arc::new(store),
                Some((containerd, namespace)),
                Some(peer_fed),
            )
        }
    };
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let registry_port = registry_listener.local_addr()?.port();
    let peers = match args.peers.bootstrap_kind {
        None => {
            tracing::info!("no --bootstrap-kind: serving this node's content only");
            None
        }
        Some(kind) => Some(peers::start(&args.peers, kind, registry_port, &shutdown).await?),
    };
    let (router, peers) = match peers {
        Some(peers) => (Some(peers.router), Some(peers.readiness)),
        None => (None, None),
    };
    if let Some(router) = &router {
        let sync = StateSync::new(
            Arc::clone(&store),
            Arc::new(router.clone()),
            filter.clone(),
            Arc::clone(&metrics),
        );
        match containerd {
            Some((containerd, namespace)) => {
                tokio::spawn(sync.run(containerd, namespace, shutdown.clone()));
            }
            None => {
                tokio::spawn(sync.run_without_events(shutdown.clone()));
            }
        }
        tokio::spawn(export_router_stats(
            router.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    let limits = server_limits(&args.limits)?;
    let auth = BasicAuth::load(&args.auth.basic_auth_dir)?;
    if auth.is_some() {
        tracing::info!(dir = %args.auth.basic_auth_dir.display(), "basic auth on: /v2/ requires the credentials, and peers are sent them");
    }
    let hits = Arc::new(LimitHits::new(Arc::clone(&metrics)));
    let mirror = router.as_ref().map(|router| {
        let mirror = Mirror::new(
            Arc::new(router.clone()),
            MirrorConfig {
                resolve_timeout: args.peers.mirror_resolve_timeout.get(),
                retries: args.peers.mirror_resolve_retries.max(1),
                herd_wait: args.peers.mirror_herd_wait.get(),
                resolve_tags: args.mirror.resolve_tags,
                max_peer_requests: args.limits.max_peer_requests as usize,
                auth: auth.clone(),
                verify: args.peers.verify_peer_content,
            },
            Arc::clone(&metrics),
            Arc::clone(&hits),
        );
        match peer_fed {
            Some(set) => mirror.marking(set),
            None => mirror,
        }
    });
    let app = registry::router(Arc::new(AppState {
        store,
        filter,
        mirror,
        peers,
        auth,
    }));
    tracing::info!(
        registry = %registry_listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        "serving"
    );

    let metrics_server = axum::serve(metrics_listener, metrics::router(Arc::clone(&metrics)))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let (registry_result, metrics_result) = tokio::join!(
        registry::server::serve(
            registry_listener,
            app,
            metrics,
            limits,
            hits,
            shutdown.clone()
        ),
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

/// The server's bounds from their flags; a zero timeout would close every
/// connection at once, so it is refused.
fn server_limits(args: &LimitArgs) -> anyhow::Result<ServerLimits> {
    for (flag, value) in [
        ("--request-header-timeout", &args.request_header_timeout),
        ("--idle-timeout", &args.idle_timeout),
    ] {
        anyhow::ensure!(
            !value.is_zero(),
            "{flag} {value}: expected a positive duration such as 10s; 0 would close every \
             connection before its first request"
        );
    }
    Ok(ServerLimits {
        max_connections: args.max_connections as usize,
        header_timeout: args.request_header_timeout.get(),
        idle_timeout: args.idle_timeout.get(),
        max_header_bytes: args.max_request_header_bytes as usize,
    })
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

/// What this node mirrors, from the same `--mirrored-registries` values
/// `configuration` reads: `_default` or `*` among them means every
/// registry, as it does in hosts.toml.
fn filter(args: &RegistryArgs) -> anyhow::Result<Filter> {
    let registries = args.mirror.registries();
    let mirrored = registries
        .iter()
        .map(|registry| registry.host())
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    let mut exclude: Vec<Regex> = args
        .registry_filters
        .iter()
        .filter(|f| !f.is_empty())
        .map(|pattern| {
            Regex::new(pattern).with_context(|| {
                format!("--registry-filters {pattern:?} is not a valid regular expression")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if !args.resolve_latest_tag {
        exclude.push(Regex::new(":latest$").expect("a valid pattern"));
    }
    Ok(Filter { mirrored, exclude })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::oci::RegistryHost;

    fn filter_of(args: &[&str]) -> Filter {
        let mut full = vec!["reflektor", "registry"];
        full.extend_from_slice(args);
        let Command::Registry(args) = Cli::try_parse_from(full).expect("parses").command else {
            panic!("not the registry command");
        };
        filter(&args).expect("a filter")
    }

    fn host(name: &str) -> RegistryHost {
        name.parse().unwrap()
    }

    /// Issue 9: `MIRRORED_REGISTRIES=_default`, which `configuration` takes
    /// as "every registry", stopped `registry` at start-up.
    #[test]
    fn default_and_star_mean_every_registry_as_in_configuration() {
        for value in ["_default", "*", "https://docker.io,_default", ""] {
            let filter = filter_of(&["--mirrored-registries", value]);
            assert!(filter.mirrored.is_empty(), "{value}: {:?}", filter.mirrored);
            assert!(filter.allows(&host("quay.io"), "quay.io/a/b:1"), "{value}");
        }
    }

    #[test]
    fn resolve_latest_tag_false_leaves_latest_to_the_upstream() {
        let filter = filter_of(&["--resolve-latest-tag=false"]);
        assert!(!filter.allows(&host("docker.io"), "docker.io/library/nginx:latest"));
        assert!(filter.allows(&host("docker.io"), "docker.io/library/nginx:1.27"));
        assert!(filter.allows(&host("docker.io"), "docker.io/library/nginx@sha256:ab"));
        let default = filter_of(&[]);
        assert!(default.allows(&host("docker.io"), "docker.io/library/nginx:latest"));
    }

    #[test]
    fn named_registries_limit_what_is_mirrored_by_host() {
        let filter = filter_of(&[
            "--mirrored-registries",
            "https://docker.io",
            "http://10.0.0.5:5000",
        ]);
        assert_eq!(filter.mirrored, [host("docker.io"), host("10.0.0.5:5000")]);
        assert!(filter.allows(&host("10.0.0.5:5000"), "10.0.0.5:5000/app:1"));
        assert!(!filter.allows(&host("ghcr.io"), "ghcr.io/app:1"));
    }
}
