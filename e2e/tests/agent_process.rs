//! The agent as a process, without containerd: what `/readyz` means on a
//! cluster of one and of two, the line it logs per request, and the
//! uninstall path (`cleanup --addr`, `cleanup-wait`). Agents serve OCI
//! layouts on loopback addresses of their own.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reflektor_e2e::agent::{Backend, LoopbackPeers, Peering, Reflektor};
use reflektor_e2e::http;
use reflektor_e2e::image::{LayerSpec, OciLayout, Platform};
use reflektor_e2e::support::eventually;

/// An OCI layout holding one small image; its directory and its layer's
/// digest.
fn one_layer_layout(seed: u64) -> Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let mut layout = OciLayout::create(dir.path(), seed)?;
    let image = layout.add_image("v1", &Platform::host()?, &[LayerSpec::gzip(4096)])?;
    let layer = image.platforms[0].layers[0].blob.digest.clone();
    Ok((dir, layer))
}

async fn ready(agent: &reflektor_e2e::agent::Agent) -> Result<bool> {
    Ok(http::get(agent.addr(), "/readyz", "*/*").await?.status() == 200)
}

/// A DaemonSet on a one-node cluster: DNS names only the node itself, so
/// there is never a peer. It must still become Ready, or a rollout never
/// ends; and it says in its log why it has no peer.
#[tokio::test]
async fn a_node_without_peers_is_ready_once_bootstrap_was_tried() -> Result<()> {
    let reflektor = Reflektor::locate()?;
    let layout_dir = tempfile::tempdir()?;
    OciLayout::create(layout_dir.path(), 11)?;
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 8, 1));
    let data = tempfile::tempdir()?;
    let peering = Peering {
        router: http::free_port(ip)?,
        data_dir: data.path().join("agent"),
        bootstrap: vec![
            "--bootstrap-kind=dns".to_owned(),
            "--dns-bootstrap-domain=localhost".to_owned(),
        ],
    };
    let agent = reflektor
        .start_peer(Backend::OciLayout(layout_dir.path()), ip, peering)
        .await?;
    eventually("the lone node becoming Ready", || ready(&agent)).await?;
    ensure!(agent.metric(&["reflektor_peers "]).await? == 0.0);
    ensure!(
        agent.log().contains("bootstrap found no peer yet"),
        "no word on the missing peer:\n{}",
        agent.log()
    );
    Ok(())
}

/// Two nodes: both Ready with a peer; when one goes (its connection
/// closed), the other still serves its own content, so it stays Ready.
#[tokio::test]
async fn a_node_whose_peer_left_stays_ready_and_serves() -> Result<()> {
    let reflektor = Reflektor::locate()?;
    let (layout_dir, layer) = one_layer_layout(12)?;
    let peers = LoopbackPeers::new(&reflektor, 9, 2, 2)?;
    let mut a = peers
        .start(0, Backend::OciLayout(layout_dir.path()))
        .await?;
    let mut b = peers
        .start(1, Backend::OciLayout(layout_dir.path()))
        .await?;
    a.wait_until_ready().await?;
    b.wait_until_ready().await?;
    let b_id = b.peer_id()?;
    b.kill()?;
    // Kademlia keeps a dead peer in its table for a while, so the peer
    // count says little; the connection is gone, and readiness must not
    // follow live connections either.
    eventually("a seeing its peer's connection close", async || {
        Ok(a.log()
            .lines()
            .any(|l| l.contains("peer disconnected") && l.contains(&b_id)))
    })
    .await
    .with_context(|| a.log())?;
    let path = format!("/v2/e2e/app/blobs/{layer}");
    for _ in 0..3 {
        ensure!(ready(&a).await?, "a lost its Readiness with its peer");
        let blob = http::get(a.addr(), &path, "*/*").await?;
        ensure!(blob.status() == 200, "a stopped serving: {}", blob.status());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// At --log-level debug (the harness's default) every request leaves one
/// line: route, status, where the bytes came from, and how long it took.
#[tokio::test]
async fn each_request_is_logged_at_debug() -> Result<()> {
    let reflektor = Reflektor::locate()?;
    let (layout_dir, layer) = one_layer_layout(13)?;
    let agent = reflektor
        .start_registry(
            Backend::OciLayout(layout_dir.path()),
            IpAddr::V4(Ipv4Addr::new(127, 0, 8, 2)),
        )
        .await?;
    let path = format!("/v2/e2e/app/blobs/{layer}");
    ensure!(http::get(agent.addr(), &path, "*/*").await?.status() == 200);
    let missing = "/v2/e2e/app/blobs/sha256:".to_owned() + &"0".repeat(64);
    ensure!(http::get(agent.addr(), &missing, "*/*").await?.status() == 404);
    eventually("both requests in the log", async || {
        let log = agent.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(" request ")).collect();
        let served = lines
            .iter()
            .any(|l| l.contains(&path) && l.contains("status=200") && l.contains("local"));
        let missed = lines
            .iter()
            .any(|l| l.contains(&missing) && l.contains("status=404"));
        Ok(served && missed && lines.iter().all(|l| l.contains("duration_ms=")))
    })
    .await
    .with_context(|| agent.log())
}

/// Uninstall: `cleanup-wait` waits while a node has not answered, and is
/// done once every node's `cleanup --addr` has answered in enough rounds
/// in a row.
#[tokio::test]
async fn cleanup_wait_ends_once_every_node_is_clean() -> Result<()> {
    let reflektor = Reflektor::locate()?;
    let addr = http::free_port(IpAddr::V4(Ipv4Addr::new(127, 0, 8, 3)))?;
    let mut wait = Command::new(reflektor.bin())
        .args([
            "cleanup-wait",
            &format!("--probe-endpoint={addr}"),
            "--period=100ms",
            "--threshold=3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    ensure!(
        wait.try_wait()?.is_none(),
        "cleanup-wait ended before any node was clean"
    );
    let certs = tempfile::tempdir()?;
    let mut cleanup = Command::new(reflektor.bin())
        .args([
            "cleanup",
            &format!(
                "--containerd-registry-config-path={}",
                certs.path().display()
            ),
            &format!("--addr={addr}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let outcome = eventually("cleanup-wait ending", async || {
        Ok(wait.try_wait()?.is_some())
    })
    .await;
    let _ = cleanup.kill();
    let _ = cleanup.wait();
    if outcome.is_err() {
        let _ = wait.kill();
    }
    outcome?;
    let output = wait.wait_with_output()?;
    ensure!(output.status.success(), "cleanup-wait: {}", output.status);
    let said = String::from_utf8_lossy(&output.stdout);
    ensure!(said.contains("cleanup done: every node (1)"), "{said}");
    Ok(())
}

/// Started under a soft open-file limit of 1024 (systemd's default) below
/// a higher hard one, the agent raises the soft limit to the hard one, as
/// Go's runtime does for Spegel: at 1024, 700 concurrent GETs stalled on
/// accept(2) failing (`just load`).
#[tokio::test]
async fn the_agent_raises_its_soft_open_file_limit() -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    let reflektor = Reflektor::locate()?;
    let layout_dir = tempfile::tempdir()?;
    OciLayout::create(layout_dir.path(), 13)?;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    ensure!(
        hard > 1024,
        "this test needs a hard open-file limit above 1024, not {hard}"
    );
    // The agent inherits the limit it is started under. Other tests in this
    // binary start theirs meanwhile; they raise it too.
    setrlimit(Resource::RLIMIT_NOFILE, 1024, hard)?;
    let started = reflektor
        .start_registry(
            Backend::OciLayout(layout_dir.path()),
            IpAddr::V4(Ipv4Addr::new(127, 0, 8, 9)),
        )
        .await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    let agent = started?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid()))?;
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .context("no `Max open files` in /proc/<pid>/limits")?
        .split_whitespace()
        .collect();
    let expected = hard.to_string();
    ensure!(
        open_files.get(..2) == Some(&[expected.as_str(), expected.as_str()][..]),
        "the agent's open-file limits are {open_files:?}, not {hard} soft and hard"
    );
    Ok(())
}

/// Out of file descriptors, accept(2) fails every 50 ms until one closes:
/// the agent counts it as a limit hit (`open_files`), logs it once per
/// 10 s with the fix, and serves again once connections close. The limit
/// is lowered on the running agent with util-linux's `prlimit`, since the
/// test process may lower its own hard limit but never raise it again.
#[tokio::test]
async fn running_out_of_open_files_is_a_rate_limited_limit_hit() -> Result<()> {
    let reflektor = Reflektor::locate()?;
    let layout_dir = tempfile::tempdir()?;
    OciLayout::create(layout_dir.path(), 14)?;
    let agent = reflektor
        .start_registry(
            Backend::OciLayout(layout_dir.path()),
            IpAddr::V4(Ipv4Addr::new(127, 0, 8, 10)),
        )
        .await?;
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", agent.pid()))
        .arg("--nofile=32:32")
        .status()
        .context("running prlimit (Debian's util-linux)")?;
    ensure!(status.success(), "prlimit exited with {status}");
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(tokio::net::TcpStream::connect(agent.addr()).await?);
    }
    let log_lines = |agent: &reflektor_e2e::agent::Agent| {
        agent
            .log()
            .lines()
            .filter(|line| line.contains("limit=\"open_files\""))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    eventually("the agent logging that it ran out of files", || async {
        Ok(!log_lines(&agent).is_empty())
    })
    .await?;
    // Ten or so more failed accepts, which must not log again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(held);
    eventually("the agent serving again", || async {
        Ok(http::get(agent.addr(), "/livez", "*/*")
            .await
            .is_ok_and(|r| r.status() == 200))
    })
    .await?;
    let lines = log_lines(&agent);
    ensure!(
        lines.len() == 1,
        "expected one rate-limited line, the agent logged:\n{}",
        lines.join("\n")
    );
    ensure!(
        lines[0].contains("Too many open files") && lines[0].contains("LimitNOFILE"),
        "the line names neither the error nor the fix: {}",
        lines[0]
    );
    let hits = agent
        .metric(&["reflektor_limit_hits_total", "limit=\"open_files\""])
        .await?;
    ensure!(hits >= 2.0, "open_files counted {hits} hits");
    Ok(())
}
