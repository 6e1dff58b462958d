//! `reflektor registry`: checks the node, opens the content store, and runs
//! the registry and metrics listeners until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use regex::Regex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{ContainerdArgs, RegistryArgs};
use crate::doctor::{self, Status};
use crate::metrics::{self, Metrics};
use crate::oci::Registry;
use crate::registry::{self, AppState, Filter};
use crate::runtime::Containerd;
use crate::store::{ContainerdStore, ContentStore, OciLayoutStore};

pub async fn run(args: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let filter = filter(args)?;
    let registry_listener = bind(&args.registry_addr, "--registry-addr").await?;
    let metrics_listener = bind(&args.metrics_addr, "--metrics-addr").await?;
    let store: Arc<dyn ContentStore> = match &args.oci_layout {
        Some(dir) => Arc::new(
            OciLayoutStore::open(dir)
                .await
                .with_context(|| format!("--oci-layout {}", dir.display()))?,
        ),
        None => {
            preflight(&args.containerd).await?;
            let containerd = Containerd::connect(&args.containerd.containerd_sock).await?;
            Arc::new(ContainerdStore::new(
                containerd,
                &args.containerd_namespace,
                &args.containerd_content_path,
            )?)
        }
    };
    let metrics = Arc::new(Metrics::new());
    let app = registry::router(Arc::new(AppState {
        store,
        filter,
        mirror: None,
    }));
    tracing::info!(
        registry = %registry_listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        "serving"
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let metrics_server = axum::serve(metrics_listener, metrics::router(Arc::clone(&metrics)))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let (registry_result, metrics_result) = tokio::join!(
        registry::server::serve(registry_listener, app, metrics, shutdown.clone()),
        metrics_server
    );
    registry_result.context("registry listener failed")?;
    metrics_result.context("metrics listener failed")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
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

/// Spegel's address syntax: `:5000` means every interface, else an IP and
/// a port. Every interface is tried as dual-stack IPv6 first, then IPv4 for
/// hosts with IPv6 disabled.
async fn bind(addr: &str, flag: &str) -> anyhow::Result<TcpListener> {
    let candidates: Vec<SocketAddr> = match addr.strip_prefix(':') {
        Some(port) => {
            let port: u16 = port.parse().with_context(|| {
                format!("{flag} {addr:?}: expected \":PORT\" or \"IP:PORT\", e.g. \":5000\"")
            })?;
            vec![
                SocketAddr::from(([0u16; 8], port)),
                SocketAddr::from(([0u8; 4], port)),
            ]
        }
        None => vec![addr.parse().with_context(|| {
            format!(
                "{flag} {addr:?}: expected \":PORT\" or \"IP:PORT\", e.g. \"127.0.0.1:5000\" \
                 or \"[::1]:5000\""
            )
        })?],
    };
    let mut last_error = None;
    for candidate in candidates {
        match TcpListener::bind(candidate).await {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("at least one candidate")).with_context(|| {
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
