//! `bench-compare`: one blob served by nginx (`sendfile on`), Debian's
//! docker-registry and the reflektor agent (from an OCI layout, from
//! containerd's content store, and proxied through a peer), fetched by the
//! same client in interleaved rounds on the same machine. Reports
//! throughput, server CPU-seconds per GiB and peak RSS per server, and the
//! ratios a user compares, with their spread over the rounds.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hyper::Method;
use reflektor_bench::announced::wait_announced;
use reflektor_bench::client;
use reflektor_bench::compare::{self, Report, Sample, ServerResult};
use reflektor_bench::layout;
use reflektor_bench::nginx::Nginx;
use reflektor_bench::process;
use reflektor_bench::runner;
use reflektor_e2e::agent::{Backend, LoopbackPeers};
use reflektor_e2e::cri::Cri;
use reflektor_e2e::http::free_port;
use reflektor_e2e::image::{LayerSpec, OciLayout, Platform};
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::packages;
use reflektor_e2e::upstream::Upstream;

const MIB: u64 = 1024 * 1024;
/// Any seed works; a fixed one keeps the blob's digest stable between runs.
const SEED: u64 = 20_261_126;

#[derive(Debug, Parser)]
#[command(
    name = "bench-compare",
    about = "Serve one blob with nginx, docker-registry and reflektor; compare throughput, CPU and memory",
    long_about = "Serve one blob with nginx (sendfile on), Debian's docker-registry and the reflektor \
        agent (OCI layout store, containerd store, and through a peer), fetch it from each with \
        the same client in interleaved rounds, and report throughput, server CPU-seconds per GiB \
        (from /proc/<pid>/stat) and peak RSS (VmHWM), with the ratios agent/nginx and \
        agent/docker-registry as min, median and max over the rounds.\n\n\
        Writes compare.md, compare.json and compare.svg into --out. Needs root (it starts \
        containerd) and nginx, docker-registry and skopeo installed; `just bench-compare` \
        installs what is missing and builds the agent in release mode first."
)]
struct Args {
    /// Size of the blob in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Measured rounds; each fetches the blob once from every server.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Where the report goes.
    #[arg(long, default_value_os_t = runner::default_out_dir())]
    out: PathBuf,
    /// After the rounds, fetch once more from the agent's local and peer
    /// paths under `perf record` and add their top symbols to the report.
    #[arg(long)]
    profile: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    runner::main("bench-compare", run(args)).await
}

/// A server under test: where to fetch the blob, and whose CPU to count.
struct Server {
    name: &'static str,
    addr: std::net::SocketAddr,
    path: String,
    pids: Vec<u32>,
}

async fn run(args: Args) -> Result<()> {
    if args.rounds == 0 || args.size_mib == 0 {
        bail!("--rounds and --size-mib must be at least 1");
    }
    let (reflektor, release) = runner::agent("bench-compare")?;
    let noise = args.size_mib * MIB;
    progress(&format!("building a {} MiB blob", args.size_mib));
    let layout_dir = tempfile::Builder::new()
        .prefix("reflektor-bench-layout-")
        .tempdir()?;
    let layout_path = layout_dir.path().to_owned();
    let (layout, image) = tokio::task::spawn_blocking(move || {
        let mut layout = OciLayout::create(&layout_path, SEED)?;
        let image = layout.add_image(
            "blob-v1",
            &Platform::host()?,
            &[LayerSpec::uncompressed(noise)],
        )?;
        anyhow::Ok((layout, image))
    })
    .await??;
    let blob = image.platforms[0].layers[0].blob.clone();
    // A layer is a tar: a little larger than the noise in it.
    let size = blob.size;
    layout::name_images(layout.dir())?;

    progress("starting docker-registry and pushing the blob");
    let upstream = Upstream::start().await?;
    let pushed = upstream.push(&layout, &image, "bench/blob").await?;

    progress("starting containerd (Debian bookworm) and pulling the blob into it");
    let cache = packages::default_cache_dir()?;
    let source = packages::parse_source("debian:bookworm")?;
    let build = tokio::task::spawn_blocking(move || source.fetch(&cache)).await??;
    let node = ContainerdNode::start(&build, NodeConfig::new("bench")).await?;
    upstream.configure_node(&node)?;
    Cri::connect(&node)
        .await?
        .pull_image(&pushed.by_tag)
        .await?;

    progress("starting nginx and the agents");
    let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 2, n));
    let nginx_root = tempfile::Builder::new()
        .prefix("reflektor-bench-www-")
        .tempdir()?;
    let nginx_blob = nginx_root.path().join("v2/bench/blob/blobs");
    std::fs::create_dir_all(&nginx_blob)?;
    // The same file, so every server reads the same pages from the page cache.
    std::fs::hard_link(
        layout.blob_path(&blob.digest)?,
        nginx_blob.join(&blob.digest),
    )
    .context("hard-linking the blob into nginx's root")?;
    let nginx = Nginx::start(nginx_root.path(), free_port(ip(1))?).await?;

    let empty_layout = tempfile::Builder::new()
        .prefix("reflektor-bench-empty-")
        .tempdir()?;
    OciLayout::create(empty_layout.path(), SEED)?;
    let peers = LoopbackPeers::new(&reflektor, 6, 2, 2)?;
    let mut holder = peers.start(0, Backend::OciLayout(layout.dir())).await?;
    let mut proxy = peers
        .start(1, Backend::OciLayout(empty_layout.path()))
        .await?;
    holder.wait_until_ready().await?;
    proxy.wait_until_ready().await?;
    let from_containerd = reflektor
        .start_registry(Backend::Containerd(&node), ip(4))
        .await?;
    wait_announced(&holder, 3, Duration::from_secs(60)).await?;

    let (registry, repo) = pushed
        .by_tag
        .split_once('/')
        .and_then(|(registry, rest)| Some((registry, rest.split_once(':')?.0)))
        .context("a pushed reference is <registry>/<repo>:<tag>")?;
    let agent_path = format!("/v2/{repo}/blobs/{}?ns={registry}", blob.digest);
    let registry_pid = upstream.pid().context("docker-registry runs")?;
    let servers = [
        Server {
            name: compare::NGINX,
            addr: nginx.addr(),
            path: format!("/v2/bench/blob/blobs/{}", blob.digest),
            pids: vec![nginx.pid()],
        },
        Server {
            name: compare::REGISTRY,
            addr: upstream.addr(),
            path: format!("/v2/{repo}/blobs/{}", blob.digest),
            pids: vec![registry_pid],
        },
        Server {
            name: compare::AGENT_LAYOUT,
            addr: holder.addr(),
            path: agent_path.clone(),
            pids: vec![holder.pid()],
        },
        Server {
            name: compare::AGENT_CONTAINERD,
            addr: from_containerd.addr(),
            path: agent_path.clone(),
            pids: vec![from_containerd.pid()],
        },
        Server {
            // Both agents' CPU: the peer path costs the cluster both.
            name: compare::AGENT_PEER,
            addr: proxy.addr(),
            path: agent_path,
            pids: vec![proxy.pid(), holder.pid()],
        },
    ];

    progress("warm-up: one fetch from each server (page cache, connections)");
    for server in &servers {
        fetch_one(server, size).await?;
    }
    // Peak RSS from here on: serving, not pushing or pulling the blob.
    for pid in servers.iter().flat_map(|s| &s.pids) {
        process::reset_peak_rss(*pid)?;
    }
    let mut samples: Vec<Vec<Sample>> = servers.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        // A different server goes first each round, so none always gets a
        // cold CPU or follows the same neighbour.
        for k in 0..servers.len() {
            let i = (round + k) % servers.len();
            let sample = fetch_one(&servers[i], size).await?;
            samples[i].push(sample);
        }
        progress(&format!("round {} of {} done", round + 1, args.rounds));
    }
    let mut results = Vec::new();
    for (server, samples) in servers.iter().zip(samples) {
        let mut peak = 0;
        for pid in &server.pids {
            peak += process::peak_rss(*pid)?;
        }
        results.push(ServerResult {
            name: server.name.to_owned(),
            samples,
            peak_rss: peak,
        });
    }
    let mut report = Report::new(args.size_mib, args.rounds, release, results)?;
    if args.profile {
        for server in servers.iter().filter(|s| s.name.starts_with("reflektor")) {
            progress(&format!("profiling {}", server.name));
            // A profile supports the report; without perf it says why.
            let top = profile(server, size, &args.out)
                .await
                .unwrap_or_else(|error| format!("no profile: {error:#}"));
            report.profiles.push((server.name.to_owned(), top));
        }
    }
    report.write(&args.out)?;
    println!("{}", report.markdown());
    eprintln!(
        "bench-compare: wrote {}/compare.md, compare.json and compare.svg",
        args.out.display()
    );

    for agent in [holder, proxy, from_containerd] {
        agent.stop().await?;
    }
    drop(nginx);
    node.stop().await?;
    Ok(())
}

async fn fetch_one(server: &Server, size: u64) -> Result<Sample> {
    let cpu =
        |pids: &[u32]| -> Result<f64> { pids.iter().map(|pid| process::cpu_seconds(*pid)).sum() };
    let before = cpu(&server.pids)?;
    let fetched = client::fetch(server.addr, Method::GET, &server.path, None)
        .await
        .with_context(|| format!("fetching the blob from {}", server.name))?;
    // The last bytes may still be in flight in the server's kernel work
    // when the client has read them; let that be charged first. (CPU is
    // counted in 10 ms ticks: about 2% of a 1 GiB fetch.)
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = cpu(&server.pids)?;
    if fetched.bytes != size {
        bail!("{} sent {} bytes of the {size}", server.name, fetched.bytes);
    }
    Ok(Sample {
        bytes: fetched.bytes,
        seconds: fetched.took.as_secs_f64(),
        cpu_seconds: after - before,
    })
}

/// One more fetch from `server` with `perf record` attached to its
/// processes; returns the symbols that took at least 2% of the samples.
async fn profile(server: &Server, size: u64, out: &std::path::Path) -> Result<String> {
    std::fs::create_dir_all(out)?;
    let slug: String = server
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let data = out.join(format!("perf-{slug}.data"));
    let pids: Vec<String> = server.pids.iter().map(ToString::to_string).collect();
    let mut perf = std::process::Command::new("perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pids.join(",")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting perf record; install Debian's linux-perf")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fetched = fetch_one(server, size).await;
    // SIGINT makes perf write its data; if that fails, it must not outlive us.
    if nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .is_err()
    {
        let _ = perf.kill();
    }
    perf.wait()?;
    fetched?;
    let report = std::process::Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(&data)
        .args([
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--sort",
            "comm,symbol",
        ])
        .args(["--percent-limit", "2"])
        .output()
        .context("running perf report")?;
    let text = String::from_utf8_lossy(&report.stdout);
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n"))
}

fn progress(line: &str) {
    runner::progress("bench-compare", line);
}
