//! `reflektor cleanup` and `reflektor cleanup-wait`: taking the mirror
//! configuration back on every node when the agent is uninstalled, and
//! knowing when every node is done, so that no node is left with hosts.toml
//! files that point at a mirror that is gone.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::listen::bind;
use super::signals::stop_on_signal;
use crate::cli::{CleanupArgs, CleanupWaitArgs};
use crate::http_client;
use crate::mirror_config;

/// How long one probe of one address may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn cleanup(args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.registry_config_path.containerd_registry_config_path;
    let report = mirror_config::cleanup(dir)?;
    print!("{report}");
    let Some(addr) = &args.addr else {
        return Ok(ExitCode::SUCCESS);
    };
    let listener = bind(addr, "--addr").await?;
    tracing::info!(addr = %listener.local_addr()?, "clean; answering /readyz until stopped");
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let app = Router::new().route("/readyz", get(|| async { (StatusCode::OK, "clean\n") }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the /readyz listener failed")?;
    Ok(ExitCode::SUCCESS)
}

pub async fn wait(args: &CleanupWaitArgs) -> anyhow::Result<ExitCode> {
    let (host, port) = split_endpoint(&args.probe_endpoint)?;
    ensure!(
        !args.period.is_zero(),
        "--period {}: expected a positive duration such as 2s",
        args.period
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let mut rounds = tokio::time::interval(args.period.get());
    // A slow lookup must not make the next rounds fire back to back.
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_a_row = 0;
    let mut counted: Option<Vec<SocketAddr>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                bail!("stopped before every node was clean ({in_a_row} of {} rounds)", args.threshold)
            }
            _ = rounds.tick() => {}
        }
        match probe_round(host, port).await {
            // Rounds count only while the set of nodes stays the same: a
            // node whose pod just appeared must answer as often as the rest.
            Ok(nodes) if counted.as_ref().is_none_or(|before| *before == nodes) => {
                in_a_row += 1;
                tracing::info!(
                    nodes = nodes.len(),
                    round = in_a_row,
                    of = args.threshold,
                    "every node is clean"
                );
                if in_a_row >= args.threshold {
                    println!(
                        "cleanup done: every node ({}) answered in {in_a_row} rounds in a row",
                        nodes.len()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                counted = Some(nodes);
            }
            Ok(nodes) => {
                tracing::info!(
                    nodes = nodes.len(),
                    "the set of nodes changed; counting again"
                );
                in_a_row = 1;
                counted = Some(nodes);
            }
            Err(problem) => {
                in_a_row = 0;
                counted = None;
                tracing::info!(%problem, "not every node is clean yet");
            }
        }
    }
}

/// `host:port`, the host a name (with or without the trailing dot), an
/// IPv4 address or a bracketed IPv6 one.
fn split_endpoint(endpoint: &str) -> anyhow::Result<(&str, u16)> {
    let refused = || {
        format!(
            "--probe-endpoint {endpoint:?}: expected HOST:PORT, such as \
             reflektor-cleanup.kube-system.svc.cluster.local.:8080"
        )
    };
    let (host, port) = endpoint.rsplit_once(':').with_context(refused)?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(refused)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!(refused());
    }
    Ok((host, port))
}

/// Asks every address `host` resolves to; the addresses, sorted, when all
/// answered 200.
async fn probe_round(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host} has no addresses yet"));
    }
    let client = http_client::client(PROBE_TIMEOUT);
    let probes = addrs.iter().map(|addr| {
        let client = client.clone();
        async move {
            let uri = format!("http://{addr}/readyz");
            let uri: axum::http::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
            match tokio::time::timeout(PROBE_TIMEOUT, client.get(uri)).await {
                Ok(Ok(response)) if response.status() == StatusCode::OK => Ok(()),
                Ok(Ok(response)) => Err(format!("{addr} answered {}", response.status())),
                Ok(Err(error)) => Err(format!("{addr}: {}", crate::errors::chain(&error))),
                Err(_) => Err(format!("{addr} did not answer within {PROBE_TIMEOUT:?}")),
            }
        }
    });
    let failed: Vec<String> = futures::future::join_all(probes)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if failed.is_empty() {
        Ok(addrs)
    } else {
        Err(failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_as_the_chart_writes_them() {
        assert_eq!(
            split_endpoint("release-name-spegel-cleanup.default.svc.cluster.local.:8080").unwrap(),
            (
                "release-name-spegel-cleanup.default.svc.cluster.local.",
                8080
            )
        );
        assert_eq!(split_endpoint("[::1]:8080").unwrap(), ("::1", 8080));
        for bad in ["no-port", "host:", "host:0", ":8080", "host:http"] {
            let error = split_endpoint(bad).unwrap_err().to_string();
            assert!(error.contains("expected HOST:PORT"), "{bad}: {error}");
        }
    }

    /// Two clean nodes answer, one listener stands for a node still busy:
    /// a round passes only when every address answers.
    #[tokio::test]
    async fn a_round_passes_only_when_every_node_answers() {
        let clean = Router::new().route("/readyz", get(|| async { "clean\n" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, clean).await });
        assert_eq!(
            probe_round("127.0.0.1", port).await,
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
        );

        let busy = Router::new().route(
            "/readyz",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "busy\n") }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, busy).await });
        let error = probe_round("127.0.0.1", port).await.unwrap_err();
        assert!(error.contains("503"), "{error}");
    }
}
