//! `bench-scale`: 3, 10 and 50 agents with OCI-layout stores on loopback,
//! as release builds, and what grows with their number: how long a new key
//! takes to be findable from every node, how long advertising 10 000 keys
//! takes, resolve latency (p50, p99) and each agent's RSS idle and with the
//! keys.
//!
//! Every agent bootstraps from the first three, as a DaemonSet would from a
//! DNS name, not from a full list: that is what makes the DHT do the work.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use hyper::Method;
use rand::seq::IndexedRandom;
use reflektor_bench::announced::wait_announced;
use reflektor_bench::client;
use reflektor_bench::layout::{self, DIGESTS_PER_IMAGE};
use reflektor_bench::process;
use reflektor_bench::runner;
use reflektor_bench::scale::{Scale, ScaleReport};
use reflektor_bench::stats::{Spread, percentile};
use reflektor_e2e::agent::{Agent, Backend, LoopbackPeers, Reflektor};

const MIB: f64 = 1024.0 * 1024.0;
/// Agents every other one bootstraps from.
const SEEDS: usize = 3;

#[derive(Debug, Parser)]
#[command(
    name = "bench-scale",
    about = "Start 3, 10 and 50 agents on loopback and measure findability, advertising, resolve latency and RSS",
    long_about = "Start clusters of agents (OCI-layout stores, release build) on 127.0.3.N and \
        measure, per cluster size: the time from a new node advertising a key to every other \
        node finding it; the time for one node to advertise 10 000 keys; resolve latency p50 and \
        p99 (HEAD of a blob another node holds, through a random agent); each agent's RSS idle \
        and with the keys. Writes scale.md and scale.json into --out."
)]
struct Args {
    /// Cluster sizes, in order.
    #[arg(long, value_delimiter = ',', default_values_t = [3, 10, 50])]
    agents: Vec<usize>,
    /// Keys (digests) the bulk node advertises.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Resolve requests per cluster size.
    #[arg(long, default_value_t = 300)]
    lookups: usize,
    #[arg(long, default_value_os_t = runner::default_out_dir())]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    runner::main("bench-scale", run(args)).await
}

async fn run(args: Args) -> Result<()> {
    ensure!(
        args.agents.iter().all(|&n| (SEEDS..=250).contains(&n)),
        "--agents {:?}: each size must be between {SEEDS} and 250",
        args.agents
    );
    ensure!(
        args.keys >= DIGESTS_PER_IMAGE && args.lookups > 0,
        "--keys and --lookups must be positive"
    );
    let (reflektor, release) = runner::agent("bench-scale")?;
    let images = args.keys.div_ceil(DIGESTS_PER_IMAGE);
    let bulk = tempfile::Builder::new()
        .prefix("reflektor-scale-bulk-")
        .tempdir()?;
    let single = tempfile::Builder::new()
        .prefix("reflektor-scale-new-")
        .tempdir()?;
    let empty = tempfile::Builder::new()
        .prefix("reflektor-scale-empty-")
        .tempdir()?;
    let (bulk_layers, single_layers) = {
        let (b, s, e) = (
            bulk.path().to_owned(),
            single.path().to_owned(),
            empty.path().to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            layout::write_many(&e, 0, "empty")?;
            anyhow::Ok((
                layout::write_many(&b, images, "bulk")?,
                layout::write_many(&s, 1, "new")?,
            ))
        })
        .await??
    };
    let mut scales = Vec::new();
    for &n in &args.agents {
        progress(&format!("{n} agents"));
        let scale = measure(
            &reflektor,
            n,
            &args,
            Layouts {
                empty: empty.path().to_owned(),
                single: single.path().to_owned(),
                single_layer: single_layers[0].to_string(),
                bulk: bulk.path().to_owned(),
                bulk_layers: bulk_layers.iter().map(ToString::to_string).collect(),
                bulk_keys: images * DIGESTS_PER_IMAGE,
            },
        )
        .await
        .with_context(|| format!("with {n} agents"))?;
        progress(&format!("{n} agents: {scale:?}"));
        scales.push(scale);
    }
    let report = ScaleReport {
        release_build: release,
        keys: images * DIGESTS_PER_IMAGE,
        lookups: args.lookups,
        scales,
    };
    report.write(&args.out)?;
    println!("{}", report.markdown());
    Ok(())
}

struct Layouts {
    empty: PathBuf,
    single: PathBuf,
    single_layer: String,
    bulk: PathBuf,
    bulk_layers: Vec<String>,
    bulk_keys: usize,
}

async fn measure(reflektor: &Reflektor, n: usize, args: &Args, layouts: Layouts) -> Result<Scale> {
    // n - 2 plain members, then the node with the new key, then the bulk node.
    let peers = LoopbackPeers::new(reflektor, 3, n, SEEDS)?;
    let start = |i: usize, dir: PathBuf| {
        let peers = &peers;
        async move { peers.start(i, Backend::OciLayout(&dir)).await }
    };
    let mut agents: Vec<Agent> = Vec::new();
    for i in 0..n - 2 {
        agents.push(start(i, layouts.empty.clone()).await?);
    }
    // With three agents the seeds include the two started below, so
    // readiness (a peer) is awaited only once the first of them runs.
    let mut newcomer = start(n - 2, layouts.single.clone()).await?;
    for agent in &mut agents {
        agent.wait_until_ready().await?;
    }
    // Let routing tables settle before measuring memory at rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = agents
        .iter()
        .map(|a| process::rss(a.pid()).map(|b| b as f64 / MIB))
        .collect::<Result<_>>()?;
    // What an idle agent costs: CPU over a few quiet seconds.
    let cpu = |agents: &[Agent]| -> Result<f64> {
        agents.iter().map(|a| process::cpu_seconds(a.pid())).sum()
    };
    let quiet = Duration::from_secs(5);
    let before = cpu(&agents)?;
    tokio::time::sleep(quiet).await;
    let idle_cpu_percent =
        (cpu(&agents)? - before) / quiet.as_secs_f64() / agents.len() as f64 * 100.0;

    // A node that joined holding a key: from its having advertised the key
    // to every other node finding it.
    newcomer.wait_until_ready().await?;
    wait_announced(&newcomer, DIGESTS_PER_IMAGE, Duration::from_secs(60)).await?;
    // Every other node asks at once, round after round, until all have
    // found it: the time to the last answer, not a sum of them.
    let announced_at = Instant::now();
    let path = blob_path(&layouts.single_layer);
    let mut pending: Vec<SocketAddr> = agents.iter().map(Agent::addr).collect();
    while !pending.is_empty() {
        let mut asks = tokio::task::JoinSet::new();
        for addr in pending {
            let path = path.clone();
            asks.spawn(async move { (addr, head(addr, &path).await) });
        }
        let mut still = Vec::new();
        while let Some(answer) = asks.join_next().await {
            let (addr, answer) = answer?;
            if !matches!(answer, Ok((status, _)) if status.is_success()) {
                still.push(addr);
            }
        }
        pending = still;
        if announced_at.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} nodes still could not find the new key 60 s after it was announced",
                pending.len()
            );
        }
    }
    let findable = announced_at.elapsed();
    agents.push(newcomer);

    // The bulk node starts with every key: from its start to all advertised.
    let started = Instant::now();
    let mut bulk = start(n - 1, layouts.bulk.clone()).await?;
    bulk.wait_until_ready().await?;
    wait_announced(&bulk, layouts.bulk_keys, Duration::from_secs(900)).await?;
    let advertise_all = started.elapsed();
    let bulk_rss = process::rss(bulk.pid())? as f64 / MIB;

    // Resolve: a random node asked for a random key only the bulk node holds.
    let mut rng = rand::rng();
    let lookups_before = lookup_totals(&agents).await?;
    // A lookup that takes longer than --mirror-resolve-timeout (20 ms by
    // default, as Spegel's) is answered 404 so containerd moves on to the
    // upstream: counted as a miss, its latency kept.
    let mut latencies = Vec::with_capacity(args.lookups);
    let mut misses = 0;
    for _ in 0..args.lookups {
        let via = agents.choose(&mut rng).context("agents")?;
        let key = layouts.bulk_layers.choose(&mut rng).context("keys")?;
        let (status, took) = head(via.addr(), &blob_path(key))
            .await
            .with_context(|| format!("resolving {key} through {}", via.addr()))?;
        match status.as_u16() {
            200 => {}
            404 => misses += 1,
            other => bail!("resolving {key} through {} answered {other}", via.addr()),
        }
        latencies.push(took.as_secs_f64() * 1000.0);
    }
    // The floor: the same HEAD asked of the holder itself.
    let mut direct = Vec::with_capacity(args.lookups);
    for _ in 0..args.lookups {
        let key = layouts.bulk_layers.choose(&mut rng).context("keys")?;
        let fetched = client::fetch(bulk.addr(), Method::HEAD, &blob_path(key), None).await?;
        direct.push(fetched.took.as_secs_f64() * 1000.0);
    }
    // Of that latency, the part the agents spent finding the holder: their
    // lookup histograms over the resolves alone.
    let lookups = lookup_totals(&agents).await?;
    let lookup_mean_ms = if lookups.1 > lookups_before.1 {
        (lookups.0 - lookups_before.0) / (lookups.1 - lookups_before.1) * 1000.0
    } else {
        f64::NAN
    };
    let after: Vec<f64> = agents
        .iter()
        .map(|a| process::rss(a.pid()).map(|b| b as f64 / MIB))
        .collect::<Result<_>>()?;
    agents.push(bulk);
    for agent in agents {
        agent.stop().await?;
    }
    Ok(Scale {
        agents: n,
        findable_ms: findable.as_secs_f64() * 1000.0,
        advertise_all_s: advertise_all.as_secs_f64(),
        resolve_p50_ms: percentile(&latencies, 50.0).unwrap_or(f64::NAN),
        resolve_p99_ms: percentile(&latencies, 99.0).unwrap_or(f64::NAN),
        lookup_mean_ms,
        misses,
        local_p50_ms: percentile(&direct, 50.0).unwrap_or(f64::NAN),
        idle_cpu_percent,
        rss_idle_mib: spread(&idle),
        rss_bulk_mib: bulk_rss,
        rss_others_after_mib: spread(&after),
    })
}

/// HEADs `path` and says how the agent answered and how long it took: a
/// 404 is an outcome to count, not an error.
async fn head(addr: SocketAddr, path: &str) -> Result<(hyper::StatusCode, Duration)> {
    let started = Instant::now();
    let response = reflektor_e2e::http::request(addr, Method::HEAD, path, &[]).await?;
    Ok((response.status(), started.elapsed()))
}

/// The sum (seconds) and count of every agent's lookup histogram.
async fn lookup_totals(agents: &[Agent]) -> Result<(f64, f64)> {
    let (mut sum, mut count) = (0.0, 0.0);
    for agent in agents {
        sum += agent
            .metric(&["reflektor_resolve_duration_seconds_sum"])
            .await?;
        count += agent
            .metric(&["reflektor_resolve_duration_seconds_count"])
            .await?;
    }
    Ok((sum, count))
}

fn spread(values: &[f64]) -> Spread {
    Spread::of(values).unwrap_or(Spread {
        min: f64::NAN,
        median: f64::NAN,
        max: f64::NAN,
    })
}

fn blob_path(digest: &str) -> String {
    format!("/v2/bench/blobs/{digest}?ns=bench.example")
}

fn progress(line: &str) {
    runner::progress("bench-scale", line);
}
