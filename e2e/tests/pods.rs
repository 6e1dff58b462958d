//! Pods through a real containerd's CRI, as kubelet runs them: the
//! project's sandbox image and the agent's image, both pushed to a real
//! registry, a host-network sandbox, and the agent's binary run in a
//! container of it. What the release gate's pod mode builds on. Needs root.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reflektor::manifests::{self, ContainerdPaths, Object, Options, Ports};
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::agent_image::{self, ImageSpec};
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::http;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::packages::{self, FetchError, PackageSource, Ubuntu};
use reflektor_e2e::pod::Pods;
use reflektor_e2e::pod_template::{self, Downward};
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
    let dir = tempfile::tempdir()?;
    let build = match source.fetch(&packages::default_cache_dir()?) {
        Ok(build) => build,
        Err(FetchError::Unavailable { reason }) if optional => {
            eprintln!("{} unavailable on this host: {reason}", source.id());
            return Ok(());
        }
        Err(FetchError::Unavailable { reason }) => anyhow::bail!("{reason}"),
        Err(FetchError::Failed(error)) => return Err(error),
    };
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
    let (pause_ref, _) = upstream
        .push_archive(&pause.archive, "reflektor/pause", "test")
        .await?;
    let (agent_ref, _) = upstream
        .push_archive(&agent.archive, "reflektor/reflektor", "test")
        .await?;
    let node = ContainerdNode::start(
        &build,
        NodeConfig {
            sandbox_image: Some(pause_ref),
            ..NodeConfig::new(format!("pods-{}", source.id().replace(':', "-")))
        },
    )
    .await?;
    upstream.configure_node(&node)?;
    Cri::connect(&node).await?.pull_image(&agent_ref).await?;

    let pods = Pods::connect(&node).await?;
    let sandbox = pods.run_host_network_sandbox("agent").await?;
    let (code, log) = pods
        .run_to_completion(
            &sandbox,
            "check-version",
            &agent_ref,
            &["check-version", "1.6.20~ds1"],
            Duration::from_secs(60),
        )
        .await?;
    ensure!(code == 0, "exit code {code}:\n{log}");
    ensure!(log.contains("\"verdict\": \"supported\""), "{log}");
    pods.remove(sandbox).await?;
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
    let dir = tempfile::tempdir()?;
    let (build, upstream) = tokio::try_join!(support::build(Suite::Bookworm), Upstream::start())?;
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
    let (pause_ref, _) = upstream
        .push_archive(&pause.archive, "reflektor/pause", "test")
        .await?;
    let (agent_ref, _) = upstream
        .push_archive(&agent.archive, "reflektor/reflektor", "test")
        .await?;
    let node = ContainerdNode::start(
        &build,
        NodeConfig {
            sandbox_image: Some(pause_ref),
            ..NodeConfig::new("daemonset-pod-bookworm")
        },
    )
    .await?;
    upstream.configure_node(&node)?;
    Cri::connect(&node).await?.pull_image(&agent_ref).await?;

    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let path = |p: &std::path::Path| p.display().to_string();
    let options = Options {
        image: agent_ref,
        containerd: ContainerdPaths {
            socket: path(node.socket()),
            content: path(&node.content_dir()),
            certs_d: path(node.certs_dir()),
            config: path(node.config_file()),
        },
        ports: Ports {
            registry: http::free_port(loopback)?.port(),
            router: http::free_port(loopback)?.port(),
            metrics: http::free_port(loopback)?.port(),
        },
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
        },
    )?;
    let pods = Pods::connect(&node).await?;
    let pod = pods
        .run_pod("reflektor", &plan, Duration::from_secs(60))
        .await?;
    let log = || std::fs::read_to_string(&pod.containers[0].1).unwrap_or_default();

    let hosts = std::fs::read_to_string(node.certs_dir().join("_default/hosts.toml"))
        .context("the init container wrote no _default/hosts.toml")?;
    let target = format!("http://127.0.0.1:{}", options.ports.registry);
    ensure!(
        hosts.contains(&target),
        "hosts.toml lacks {target}:\n{hosts}"
    );

    let readiness = plan.containers[0]
        .readiness
        .clone()
        .context("the registry container declares a readiness probe")?;
    let startup = plan.containers[0]
        .startup
        .clone()
        .context("and a startup probe")?;
    let probe_addr = std::net::SocketAddr::new(loopback, startup.port);
    let budget = startup.period * startup.failure_threshold;
    let ready = tokio::time::timeout(budget, async {
        loop {
            if let Ok(response) = http::get(probe_addr, &readiness.path, "*/*").await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    ensure!(
        ready.is_ok(),
        "the agent's pod did not pass {} within the startup budget of {budget:?}:\n{}",
        readiness.path,
        log()
    );
    ensure!(
        log().contains("serving") && log().contains("registry config_path"),
        "the agent in the pod did not check containerd and serve:\n{}",
        log()
    );
    pods.remove(pod.sandbox).await?;
    Ok(())
}
