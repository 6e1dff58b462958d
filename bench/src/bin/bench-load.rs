//! `bench-load`: one agent serving from a real containerd under three
//! loads in turn (many concurrent whole-layer GETs, a steady stream of
//! HEADs, and slowloris connections beside a normal client), counting
//! failed requests, latencies, the agent's peak RSS and its open file
//! descriptors before and after. Every phase has a bounded size and time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use reflektor_bench::client;
use reflektor_bench::load::{Phase, Report, Tally};
use reflektor_bench::process;
use reflektor_bench::runner;
use reflektor_e2e::agent::{Agent, Backend, metric_at};
use reflektor_e2e::cri::Cri;
use reflektor_e2e::image::{LayerSpec, OciLayout, Platform};
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::packages;
use reflektor_e2e::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;
/// Any seed works; a fixed one keeps the digests stable between runs.
const SEED: u64 = 20_261_207;
/// The small blob the normal client pulls beside the slow connections.
const SMALL_MIB: u64 = 1;
/// How long the agent gets to close the run's connections before the
/// descriptors are counted again.
const DRAIN: Duration = Duration::from_secs(30);
/// A slowloris connection sends one more header line this often: well
/// under the agent's 10 s header timeout, so only that timeout can end it.
const DRIP: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "bench-load",
    about = "Load one agent serving from containerd: concurrent GETs, a HEAD stream, slowloris",
    long_about = "Start Debian bookworm's containerd with an image of a large and a 1 MiB layer \
        pulled into it, and one reflektor agent serving from it, then in turn:\n\n\
        1. --gets concurrent GETs of the whole large layer, each on its own connection;\n\
        2. --head-rate HEADs per second for --head-seconds, from --head-concurrency keep-alive \
        connections, latency counted from when each was due (so a stalled agent shows);\n\
        3. the normal client pulling the small layer for --slow-seconds, then again with \
        --slowloris connections dripping one header line every 2 s (reconnecting when the \
        agent cuts them).\n\n\
        Reports each phase's requests, errors, p50/p99/max latency, the agent's peak RSS and \
        its open file descriptors before and after. Exits 1 when a request failed or a \
        descriptor leaked. Writes load.md and load.json into --out. Needs root; `just load` \
        builds the agent in release mode first."
)]
struct Args {
    /// Size of the large layer in MiB.
    #[arg(long, default_value_t = 64)]
    layer_mib: u64,
    /// Concurrent whole-layer GETs in phase 1.
    #[arg(long, default_value_t = 500)]
    gets: usize,
    /// HEADs per second in phase 2, across all its connections.
    #[arg(long, default_value_t = 10_000)]
    head_rate: u64,
    /// How long phase 2 lasts, in seconds.
    #[arg(long, default_value_t = 30)]
    head_seconds: u64,
    /// Keep-alive connections phase 2 sends its HEADs on.
    #[arg(long, default_value_t = 64)]
    head_concurrency: u64,
    /// Slow connections held open in phase 3.
    #[arg(long, default_value_t = 300)]
    slowloris: usize,
    /// How long the normal client pulls, without and then with the slow
    /// connections, in seconds.
    #[arg(long, default_value_t = 20)]
    slow_seconds: u64,
    /// Where the report goes.
    #[arg(long, default_value_os_t = runner::default_out_dir())]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    runner::main("bench-load", run(args)).await
}

/// Where to reach the agent's two blobs.
struct Target {
    addr: SocketAddr,
    large: String,
    large_size: u64,
    small: String,
    small_size: u64,
}

async fn run(args: Args) -> Result<()> {
    if args.gets == 0
        || args.head_rate == 0
        || args.head_seconds == 0
        || args.head_concurrency == 0
        || args.slow_seconds == 0
        || args.layer_mib == 0
    {
        bail!("every count, rate, size and duration must be at least 1 (--slowloris may be 0)");
    }
    let (reflektor, release) = runner::agent("bench-load")?;
    progress(&format!(
        "building an image of a {} MiB and a {SMALL_MIB} MiB layer",
        args.layer_mib
    ));
    let layout_dir = tempfile::Builder::new()
        .prefix("reflektor-load-layout-")
        .tempdir()?;
    let layout_path = layout_dir.path().to_owned();
    let layer = args.layer_mib * MIB;
    let (layout, image) = tokio::task::spawn_blocking(move || {
        let mut layout = OciLayout::create(&layout_path, SEED)?;
        let image = layout.add_image(
            "load-v1",
            &Platform::host()?,
            &[
                LayerSpec::uncompressed(layer),
                LayerSpec::uncompressed(SMALL_MIB * MIB),
            ],
        )?;
        anyhow::Ok((layout, image))
    })
    .await??;

    progress("starting docker-registry and containerd (Debian bookworm); pulling the image");
    let upstream = Upstream::start().await?;
    let pushed = upstream.push(&layout, &image, "load/image").await?;
    let cache = packages::default_cache_dir()?;
    let source = packages::parse_source("debian:bookworm")?;
    let build = tokio::task::spawn_blocking(move || source.fetch(&cache)).await??;
    let containerd = build.reported_version()?;
    let node = ContainerdNode::start(&build, NodeConfig::new("load")).await?;
    upstream.configure_node(&node)?;
    Cri::connect(&node)
        .await?
        .pull_image(&pushed.by_tag)
        .await?;
    // The agent serves from containerd alone from here on.
    drop(upstream);

    let agent = reflektor
        .start_registry(
            Backend::Containerd(&node),
            IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1)),
        )
        .await?;
    let (registry, repo) = pushed
        .by_tag
        .split_once('/')
        .and_then(|(registry, rest)| Some((registry, rest.split_once(':')?.0)))
        .context("a pushed reference is <registry>/<repo>:<tag>")?;
    let layers = &image.platforms[0].layers;
    let path = |digest: &str| format!("/v2/{repo}/blobs/{digest}?ns={registry}");
    let target = Arc::new(Target {
        addr: agent.addr(),
        large: path(&layers[0].blob.digest),
        large_size: layers[0].blob.size,
        small: path(&layers[1].blob.digest),
        small_size: layers[1].blob.size,
    });

    // Warm: the page cache holds both layers, and the agent has served once.
    get(&target, &target.large, target.large_size).await?;
    head(&target).await?;
    let fds_before = steady_fds(agent.pid()).await?;
    process::reset_peak_rss(agent.pid())?;

    let mut phases = vec![gets(&target, args.gets).await?];
    phases.push(heads(&target, &args).await?);
    phases.extend(slowloris(&target, &agent, &args).await?);

    let fds_after = settled_fds(agent.pid(), fds_before).await?;
    let mut limit_hits = Vec::new();
    for limit in [
        "connections",
        "header_timeout",
        "idle_timeout",
        "header_bytes",
        "peer_requests",
    ] {
        let label = format!("limit=\"{limit}\"");
        let hits = metric_at(
            agent.metrics_addr(),
            &["reflektor_limit_hits_total", &label],
        )
        .await?;
        limit_hits.push((limit.to_owned(), hits));
    }
    let report = Report {
        release_build: release,
        containerd,
        phases,
        peak_rss: process::peak_rss(agent.pid())?,
        fds_before,
        fds_after,
        limit_hits,
    };
    report.write(&args.out)?;
    println!("{}", report.markdown());
    eprintln!(
        "bench-load: wrote {}/load.md and load.json",
        args.out.display()
    );
    agent.stop().await?;
    node.stop().await?;
    let failures = report.failures();
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Phase 1: `count` whole-layer GETs at once, each on its own connection.
async fn gets(target: &Arc<Target>, count: usize) -> Result<Phase> {
    progress(&format!(
        "phase 1: {count} concurrent GETs of the {} MiB layer",
        target.large_size / MIB
    ));
    let start = Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (target, start) = (Arc::clone(target), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            let began = Instant::now();
            get(&target, &target.large, target.large_size)
                .await
                .map(|()| began.elapsed())
        });
    }
    let began = Instant::now();
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        match done.context("a GET task panicked")? {
            Ok(took) => tally.ok(ms(took)),
            Err(error) => tally.failed(&error),
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    let served = (tally.requests() * target.large_size) as f64 / (1024.0 * MIB as f64);
    let detail = format!(
        "{served:.1} GiB at {:.2} GiB/s in all",
        served / seconds.max(f64::EPSILON)
    );
    Ok(tally.into_phase(
        format!(
            "{count} concurrent GETs of a {} MiB layer",
            target.large_size / MIB
        ),
        seconds,
        detail,
    ))
}

/// Phase 2: HEADs at a fixed rate from keep-alive connections, each
/// request's latency counted from when it was due, not when it was sent,
/// so that an agent that falls behind shows it (no coordinated omission).
async fn heads(target: &Arc<Target>, args: &Args) -> Result<Phase> {
    let total = args.head_rate * args.head_seconds;
    progress(&format!(
        "phase 2: {} HEADs/s for {} s from {} connections ({total} in all)",
        args.head_rate, args.head_seconds, args.head_concurrency
    ));
    let period = Duration::from_secs_f64(args.head_concurrency as f64 / args.head_rate as f64);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.head_concurrency {
        let target = Arc::clone(target);
        // Workers take every head_concurrency-th request, staggered.
        let share =
            total / args.head_concurrency + u64::from(worker < total % args.head_concurrency);
        let first = t0 + period.mul_f64(worker as f64 / args.head_concurrency as f64);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut ticks = tokio::time::interval_at(first, period);
            let mut sender = None;
            for _ in 0..share {
                let due = ticks.tick().await;
                match keep_alive_head(&target, &mut sender).await {
                    Ok(()) => tally.ok(ms(due.elapsed())),
                    Err(error) => {
                        sender = None;
                        tally.failed(&error);
                    }
                }
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done.context("a HEAD task panicked")?);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let detail = format!(
        "{:.0} HEAD/s reached of {} asked",
        tally.requests() as f64 / seconds.max(f64::EPSILON),
        args.head_rate
    );
    Ok(tally.into_phase(
        format!(
            "HEADs at {}/s for {} s, {} keep-alive connections",
            args.head_rate, args.head_seconds, args.head_concurrency
        ),
        seconds,
        detail,
    ))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One HEAD of the large layer on `sender`'s connection, opened first if
/// there is none.
async fn keep_alive_head(target: &Target, sender: &mut Option<Sender>) -> Result<()> {
    if sender.is_none() {
        let stream = tokio::net::TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (s, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Ends when its sender is dropped.
        tokio::spawn(connection);
        *sender = Some(s);
    }
    let sender = sender.as_mut().context("a connection was just opened")?;
    sender.ready().await?;
    let request = Request::head(&target.large)
        .header(header::HOST, target.addr.to_string())
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    ensure!(
        response.status() == StatusCode::OK,
        "HEAD {} answered {}",
        target.large,
        response.status()
    );
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    ensure!(
        length == Some(target.large_size),
        "HEAD {} gave Content-Length {length:?}, not {}",
        target.large,
        target.large_size
    );
    response.into_body().collect().await?;
    Ok(())
}

/// Phase 3: the normal client alone, then beside `--slowloris` slow
/// connections.
async fn slowloris(target: &Arc<Target>, agent: &Agent, args: &Args) -> Result<[Phase; 2]> {
    let seconds = Duration::from_secs(args.slow_seconds);
    progress(&format!(
        "phase 3: the normal client pulls the {SMALL_MIB} MiB layer for {} s alone",
        args.slow_seconds
    ));
    let alone = normal_client(target, seconds).await;
    let alone = alone.into_phase(
        format!("normal client, {SMALL_MIB} MiB GETs, alone"),
        seconds.as_secs_f64(),
        String::new(),
    );

    progress(&format!(
        "phase 3: again, beside {} slowloris connections",
        args.slowloris
    ));
    let cut_before = metric_at(
        agent.metrics_addr(),
        &["reflektor_limit_hits_total", "limit=\"header_timeout\""],
    )
    .await?;
    let stop = CancellationToken::new();
    let reconnects = Arc::new(AtomicU64::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..args.slowloris {
        let (addr, stop, reconnects) = (target.addr, stop.clone(), Arc::clone(&reconnects));
        attackers.spawn(async move { drip(addr, stop, reconnects).await });
    }
    // Let every slow connection open before the client starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beside = normal_client(target, seconds).await;
    stop.cancel();
    while let Some(done) = attackers.join_next().await {
        done.context("a slowloris task panicked")??;
    }
    let cut = metric_at(
        agent.metrics_addr(),
        &["reflektor_limit_hits_total", "limit=\"header_timeout\""],
    )
    .await?
        - cut_before;
    let beside = beside.into_phase(
        format!(
            "normal client, {SMALL_MIB} MiB GETs, beside {} slowloris connections",
            args.slowloris
        ),
        seconds.as_secs_f64(),
        format!(
            "the agent cut {cut} slow connections at its header timeout; they reconnected {} \
             times",
            reconnects.load(Ordering::Relaxed)
        ),
    );
    Ok([alone, beside])
}

/// Back-to-back GETs of the small layer, each on a fresh connection, for `seconds`.
async fn normal_client(target: &Target, seconds: Duration) -> Tally {
    let mut tally = Tally::default();
    let until = Instant::now() + seconds;
    while Instant::now() < until {
        let began = Instant::now();
        match get(target, &target.small, target.small_size).await {
            Ok(()) => tally.ok(ms(began.elapsed())),
            Err(error) => tally.failed(&error),
        }
    }
    tally
}

/// One slowloris connection, reopened whenever the agent closes it: a
/// request head that never ends, one header line every [`DRIP`].
async fn drip(addr: SocketAddr, stop: CancellationToken, reconnects: Arc<AtomicU64>) -> Result<()> {
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("a slowloris connection to {addr}"))?;
        stream
            .write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
            .await?;
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                read = stream.read(&mut buf) => match read {
                    // The agent answered (408) or closed: it cut us.
                    Ok(_) | Err(_) => break,
                },
                () = tokio::time::sleep(DRIP) => {
                    if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A whole-blob GET on a fresh connection that must bring `size` bytes.
async fn get(target: &Target, path: &str, size: u64) -> Result<()> {
    let fetched = client::fetch(target.addr, Method::GET, path, None).await?;
    ensure!(
        fetched.bytes == size,
        "GET {path}: {} bytes of {size}",
        fetched.bytes
    );
    Ok(())
}

async fn head(target: &Target) -> Result<()> {
    keep_alive_head(target, &mut None).await
}

/// The agent's open file descriptors once two counts half a second apart
/// agree: the warm-up's connections may still be closing.
async fn steady_fds(pid: u32) -> Result<usize> {
    let mut last = open_fds(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = open_fds(pid)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    bail!("the agent's open file descriptors never settled (last {last})")
}

/// The agent's open file descriptors once they are back to `before`, or
/// what they are after [`DRAIN`].
async fn settled_fds(pid: u32, before: usize) -> Result<usize> {
    let deadline = Instant::now() + DRAIN;
    loop {
        let now = open_fds(pid)?;
        if now == before || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("listing {dir}"))?
        .count())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn progress(line: &str) {
    runner::progress("bench-load", line);
}
