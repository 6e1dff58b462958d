//! Pods through a real containerd's CRI, as kubelet runs them: the
//! project's sandbox image and the agent's image, both pushed to a real
//! registry, a host-network sandbox, and the agent's binary run in a
//! container of it. What the release gate's pod mode builds on. Needs root.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::Mount;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use reflektor::manifests::{self, ContainerdPaths, Object, Options, Ports};
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::agent_image::{self, ImageSpec};
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::http;
use reflektor_e2e::kubelet::KubeletPod;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::packages::{self, ContainerdBuild, FetchError, PackageSource, Ubuntu};
use reflektor_e2e::pod::Pods;
use reflektor_e2e::pod_template::{self, Downward, PodPlan};
use reflektor_e2e::support;
use reflektor_e2e::upstream::Upstream;

#[tokio::test]
async fn bookworm_runs_the_agent_image_in_a_host_network_pod() -> Result<()> {
    if !support::root_or_skip("bookworm_runs_the_agent_image_in_a_host_network_pod") {
        return Ok(());
    }
    runs_the_agent_image_in_a_host_network_pod(&Suite::Bookworm, false).await
}

/// containerd 2.2, whose config (version 3) keeps the sandbox image and the
/// oom setting elsewhere. Jammy's runc runs on this host; noble's does not.
#[tokio::test]
async fn jammy_runs_the_agent_image_in_a_host_network_pod() -> Result<()> {
    if !support::root_or_skip("jammy_runs_the_agent_image_in_a_host_network_pod") {
        return Ok(());
    }
    runs_the_agent_image_in_a_host_network_pod(&Ubuntu::Jammy, true).await
}

/// An `optional` source that cannot be reached here says so and passes, as
/// the release gate reports it unavailable; any other source fails.
async fn runs_the_agent_image_in_a_host_network_pod(
    source: &dyn PackageSource,
    optional: bool,
) -> Result<()> {
    let build = match source.fetch(&packages::default_cache_dir()?) {
        Ok(build) => build,
        Err(FetchError::Unavailable { reason }) if optional => {
            eprintln!("{} unavailable on this host: {reason}", source.id());
            return Ok(());
        }
        Err(FetchError::Unavailable { reason }) => anyhow::bail!("{reason}"),
        Err(FetchError::Failed(error)) => return Err(error),
    };
    let images = images().await?;
    let node = node(
        &images,
        &build,
        &format!("pods-{}", source.id().replace(':', "-")),
    )
    .await?;
    let pods = Pods::connect(&node).await?;
    let sandbox = pods.run_host_network_sandbox("agent").await?;
    let checks = async {
        let (code, log) = pods
            .run_to_completion(
                &sandbox,
                "check-version",
                &images.agent,
                &["check-version", "1.6.20~ds1"],
                Duration::from_secs(60),
            )
            .await?;
        ensure!(code == 0, "exit code {code}:\n{log}");
        ensure!(log.contains("\"verdict\": \"supported\""), "{log}");
        Ok(())
    }
    .await;
    // Removed whatever happened: a pod's shim outlives its containerd.
    let removed = pods.remove(sandbox).await;
    checks?;
    removed
}

/// Images pushed to a real upstream: the sandbox image and the agent's.
struct Images {
    upstream: Upstream,
    pause: String,
    agent: String,
    _dir: tempfile::TempDir,
}

async fn images() -> Result<Images> {
    let dir = tempfile::tempdir()?;
    let upstream = Upstream::start().await?;
    let pause = agent_image::build(
        &ImageSpec::pause(
            env!("CARGO_BIN_EXE_reflektor-pause").into(),
            "reflektor.test/pause:test".to_owned(),
        ),
        &dir.path().join("pause.oci.tar"),
    )?;
    let agent = agent_image::build(
        &ImageSpec::agent(
            Reflektor::locate()?.bin().to_owned(),
            "reflektor.test/reflektor:test".to_owned(),
        ),
        &dir.path().join("reflektor.oci.tar"),
    )?;
    let (pause, _) = upstream
        .push_archive(&pause.archive, "reflektor/pause", "test")
        .await?;
    let (agent, _) = upstream
        .push_archive(&agent.archive, "reflektor/reflektor", "test")
        .await?;
    Ok(Images {
        upstream,
        pause,
        agent,
        _dir: dir,
    })
}

/// A node whose CRI pulls the sandbox image from the upstream, with the
/// agent's image already pulled.
async fn node(images: &Images, build: &ContainerdBuild, name: &str) -> Result<ContainerdNode> {
    let node = ContainerdNode::start(
        build,
        NodeConfig {
            sandbox_image: Some(images.pause.clone()),
            ..NodeConfig::new(name)
        },
    )
    .await?;
    images.upstream.configure_node(&node)?;
    Cri::connect(&node).await?.pull_image(&images.agent).await?;
    Ok(node)
}

/// The generated DaemonSet's pod for `node`: its containerd paths, free
/// ports, the agent's image, as `reflektor manifests --containerd-*` would
/// write it for such a node.
fn agent_pod_plan(images: &Images, node: &ContainerdNode) -> Result<(PodPlan, Ports)> {
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let path = |p: &std::path::Path| p.display().to_string();
    let ports = Ports {
        registry: http::free_port(loopback)?.port(),
        router: http::free_port(loopback)?.port(),
        metrics: http::free_port(loopback)?.port(),
        cleanup: http::free_port(loopback)?.port(),
    };
    let options = Options {
        image: images.agent.clone(),
        containerd: ContainerdPaths {
            socket: path(node.socket()),
            content: path(&node.content_dir()),
            certs_d: path(node.certs_dir()),
            config: path(node.config_file()),
        },
        ports,
        data_dir: path(&node.dir().join("reflektor-data")),
        log_level: "debug".to_owned(),
        ..Options::default()
    };
    let template = manifests::install(&options)
        .into_iter()
        .find_map(|object| match object {
            Object::DaemonSet(daemonset) => daemonset.spec.and_then(|s| s.template.spec),
            _ => None,
        })
        .context("the install has a DaemonSet")?;
    let plan = pod_template::plan(
        &template,
        &Downward {
            node_ip: loopback.to_string(),
            node_name: node.name().to_owned(),
            namespace: options.namespace.clone(),
            // One node bootstraps from nobody: its resolv.conf names a
            // server that does not answer, and bootstrap gives up at once.
            cluster_dns: Some((loopback.to_string(), options.cluster_domain.clone())),
        },
    )?;
    Ok((plan, ports))
}

/// The registry container's `/readyz` status, or `None` while nothing answers.
async fn readyz(port: u16) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let response = http::get(addr, "/readyz", "*/*").await.ok()?;
    Some(response.status().as_u16())
}

/// Polls `/readyz` until it answers `status`, for at most `within`.
async fn until_readyz(port: u16, status: u16, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        while readyz(port).await != Some(status) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .is_ok()
}

/// containerd restarts under a running agent pod. With the socket's
/// directory mounted (what the manifests do) the agent reaches the new
/// socket and is Ready again; with the socket file mounted (Spegel's chart,
/// `type: Socket`) it keeps the old, deleted socket and stays unready.
#[tokio::test]
async fn the_socket_directory_mount_survives_a_containerd_restart_a_socket_file_does_not()
-> Result<()> {
    if !support::root_or_skip("the_socket_directory_mount_survives_a_containerd_restart") {
        return Ok(());
    }
    let images = images().await?;
    let build = support::build(Suite::Bookworm).await?;
    let mut by_dir = node(&images, &build, "socket-dir-bookworm").await?;
    let mut by_file = node(&images, &build, "socket-file-bookworm").await?;
    let (dir_plan, dir_ports) = agent_pod_plan(&images, &by_dir)?;
    let (mut file_plan, file_ports) = agent_pod_plan(&images, &by_file)?;
    // The socket file mounted alone, as Spegel's chart does, in place of
    // the directory it sits in (the harness keeps it in the node's own
    // directory, beside the config: containerd 1.6 reports its settings
    // through CRI, so the agent needs no file from there).
    let socket = by_file.socket().display().to_string();
    let socket_dir = by_file.dir().display().to_string();
    let mounts = &mut file_plan.containers[0].config.mounts;
    mounts.retain(|m| m.container_path != socket_dir);
    mounts.push(Mount {
        container_path: socket.clone(),
        host_path: socket,
        ..Default::default()
    });
    let dir_pods = Pods::connect(&by_dir).await?;
    let file_pods = Pods::connect(&by_file).await?;
    let dir_pod = dir_pods
        .run_pod("reflektor", &dir_plan, Duration::from_secs(60))
        .await?;
    let file_pod = file_pods
        .run_pod("reflektor", &file_plan, Duration::from_secs(60))
        .await?;
    let checks = async {
        for (name, port) in [("dir", dir_ports.registry), ("file", file_ports.registry)] {
            ensure!(
                until_readyz(port, 200, Duration::from_secs(60)).await,
                "the {name}-mounted agent never became Ready"
            );
        }
        by_dir.restart().await?;
        by_file.restart().await?;
        ensure!(
            until_readyz(dir_ports.registry, 200, Duration::from_secs(30)).await,
            "with the socket's directory mounted, the agent did not recover: {:?}",
            readyz(dir_ports.registry).await
        );
        // Alive (it answers) but cut off from containerd, for good.
        ensure!(
            until_readyz(file_ports.registry, 503, Duration::from_secs(30)).await,
            "with the socket file mounted, /readyz answered {:?}",
            readyz(file_ports.registry).await
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        ensure!(
            readyz(file_ports.registry).await == Some(503),
            "with the socket file mounted, the agent reached the restarted containerd"
        );
        Ok(())
    }
    .await;
    // Removed whatever happened: a pod's shim outlives its containerd.
    let removed = (
        dir_pods.remove(dir_pod.sandbox).await,
        file_pods.remove(file_pod.sandbox).await,
    );
    checks?;
    removed.0?;
    removed.1?;
    Ok(())
}

/// The generated DaemonSet's pod, as kubelet would run it on a bookworm
/// node: its init container writes the node's hosts.toml, and its registry
/// container passes the readiness probe the template declares. The
/// template points at the node's own containerd paths and free ports, as
/// `reflektor manifests --containerd-*` would for such a node.
#[tokio::test]
async fn bookworm_runs_the_generated_daemonset_pod_until_ready() -> Result<()> {
    if !support::root_or_skip("bookworm_runs_the_generated_daemonset_pod_until_ready") {
        return Ok(());
    }
    let images = images().await?;
    let build = support::build(Suite::Bookworm).await?;
    let node = node(&images, &build, "daemonset-pod-bookworm").await?;
    let (plan, ports) = agent_pod_plan(&images, &node)?;
    let pods = Pods::connect(&node).await?;
    let pod = pods
        .run_pod("reflektor", &plan, Duration::from_secs(60))
        .await?;
    let log = || std::fs::read_to_string(&pod.containers[0].1).unwrap_or_default();
    let checks = async {
        let hosts = std::fs::read_to_string(node.certs_dir().join("_default/hosts.toml"))
            .context("the init container wrote no _default/hosts.toml")?;
        let target = format!("http://127.0.0.1:{}", ports.registry);
        ensure!(
            hosts.contains(&target),
            "hosts.toml lacks {target}:\n{hosts}"
        );
        let startup = plan.containers[0]
            .startup
            .clone()
            .context("the registry container declares a startup probe")?;
        let budget = startup.period * startup.failure_threshold;
        ensure!(
            until_readyz(startup.port, 200, budget).await,
            "the agent's pod did not pass /readyz within the startup budget of {budget:?}:\n{}",
            log()
        );
        ensure!(
            log().contains("serving") && log().contains("registry config_path"),
            "the agent in the pod did not check containerd and serve:\n{}",
            log()
        );
        Ok(())
    }
    .await;
    // Removed whatever happened: a pod's shim outlives its containerd.
    let removed = pods.remove(pod.sandbox).await;
    checks?;
    removed
}

/// The kubelet test double restarts a container as kubelet does: one
/// that exits under `restartPolicy: Always` at once, then after a 10 s
/// back-off; one that fails its liveness probe is killed and restarted; and
/// under `Never`, one that exits stays down.
#[tokio::test]
async fn containers_restart_per_the_restart_policy_and_the_liveness_probe() -> Result<()> {
    if !support::root_or_skip("containers_restart_per_the_restart_policy_and_the_liveness_probe") {
        return Ok(());
    }
    let images = images().await?;
    let build = support::build(Suite::Bookworm).await?;
    let node = node(&images, &build, "restart-policy-bookworm").await?;
    let pods = Pods::connect(&node).await?;
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let downward = Downward {
        node_ip: loopback.to_string(),
        node_name: node.name().to_owned(),
        namespace: "reflektor".to_owned(),
        cluster_dns: None,
    };
    let pod = |policy: &str, container: Container| PodSpec {
        host_network: Some(true),
        dns_policy: Some("Default".to_owned()),
        automount_service_account_token: Some(false),
        restart_policy: Some(policy.to_owned()),
        containers: vec![container],
        ..PodSpec::default()
    };
    // `check-version` prints its verdict and exits at once.
    let exits = Container {
        name: "exits".to_owned(),
        image: Some(images.agent.clone()),
        args: Some(vec!["check-version".to_owned(), "not a version".to_owned()]),
        ..Container::default()
    };
    // The sandbox program runs until stopped; nothing answers its probes.
    let silent = http::free_port(loopback)?.port();
    let probe = |failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/livez".to_owned()),
            port: IntOrString::Int(i32::from(silent)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let unhealthy = Container {
        name: "unhealthy".to_owned(),
        image: Some(images.pause.clone()),
        liveness_probe: Some(probe(2)),
        readiness_probe: Some(probe(1)),
        ..Container::default()
    };
    let patience = Duration::from_secs(60);
    let mut started = Vec::new();
    for (name, spec) in [
        ("always", pod("Always", exits.clone())),
        ("never", pod("Never", exits)),
        ("unhealthy", pod("Always", unhealthy)),
    ] {
        let plan = pod_template::plan(&spec, &downward)?;
        started.push(KubeletPod::start(&pods, name, &plan, loopback, patience).await?);
    }
    let [always, never, unhealthy] = &started[..] else {
        unreachable!("three pods were started");
    };
    let until = async |pod: &KubeletPod, restarts: u32| {
        tokio::time::timeout(Duration::from_secs(30), async {
            while pod.status().restarts < restarts {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .is_ok()
    };
    let checks = async {
        let twice = until(always, 2).await;
        let status = always.status();
        ensure!(
            twice,
            "under Always, the container was not restarted twice within 30 s: {status:?}"
        );
        let waits: Vec<&String> = status
            .events
            .iter()
            .filter(|e| e.contains("restarting in"))
            .collect();
        ensure!(
            waits
                .first()
                .is_some_and(|e| e.ends_with("restarting in 0ns"))
                && waits
                    .get(1)
                    .is_some_and(|e| e.ends_with("restarting in 10s")),
            "expected a restart at once, then after 10 s: {waits:?}"
        );
        ensure!(!status.ready, "a container that keeps exiting is not Ready");
        let log = always.log();
        ensure!(
            log.matches("\"input\": \"not a version\"").count() >= 2,
            "the log of every attempt is kept:\n{log}"
        );
        let status = never.status();
        ensure!(
            status.exits == 1 && status.restarts == 0,
            "under Never, the container must stay down: {status:?}"
        );
        let killed = until(unhealthy, 1).await;
        let status = unhealthy.status();
        ensure!(
            killed
                && status
                    .events
                    .iter()
                    .any(|e| e.contains("failed its liveness probe")),
            "a container failing its liveness probe was not restarted: {status:?}"
        );
        ensure!(!status.ready, "a container failing readiness is not Ready");
        Ok(())
    }
    .await;
    // Removed whatever happened (a pod's shim outlives its containerd), at
    // once: a container mid-restart would not exit 0 on SIGTERM.
    let mut removed = Ok(());
    for mut pod in started {
        removed = removed.and(pod.kill().await);
    }
    checks?;
    removed
}

/// A node stopped while its pod still runs (a failed or interrupted run)
/// leaves no shim and no container process behind: shims outlive their
/// containerd by design, so the node ends them itself.
#[tokio::test]
async fn a_node_stopped_under_a_running_pod_leaves_no_process_behind() -> Result<()> {
    if !support::root_or_skip("a_node_stopped_under_a_running_pod_leaves_no_process_behind") {
        return Ok(());
    }
    let images = images().await?;
    let build = support::build(Suite::Bookworm).await?;
    let node = node(&images, &build, "leftovers-bookworm").await?;
    let dir = node.dir().to_owned();
    let pods = Pods::connect(&node).await?;
    let sandbox = pods.run_host_network_sandbox("left-running").await?;
    let shims = processes_naming(&dir, "containerd-shim");
    ensure!(
        !shims.is_empty(),
        "no shim of {} runs: the test would prove nothing",
        dir.display()
    );
    let _left_running = sandbox;
    node.stop().await?;
    // Killed, they linger as zombies until init reaps them.
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    };
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        while shims.iter().any(running) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    ensure!(gone.is_ok(), "the shims {shims:?} still run");
    let left = processes_naming(&dir, "");
    ensure!(
        left.iter().all(|pid| !running(pid)),
        "processes naming {} outlived the node: {left:?}",
        dir.display()
    );
    Ok(())
}

/// Pids whose command line names something under `dir`, and whose program
/// name starts with `program`.
fn processes_naming(dir: &std::path::Path, program: &str) -> Vec<u32> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let name = args.first()?.rsplit('/').next()?.to_owned();
            (name.starts_with(program) && args.iter().any(|a| a.contains(&dir))).then_some(pid)
        })
        .collect()
}
