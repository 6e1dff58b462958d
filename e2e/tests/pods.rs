//! Pods through a real containerd's CRI, as kubelet runs them: the
//! project's sandbox image and the agent's image, both pushed to a real
//! registry, a host-network sandbox, and the agent's binary run in a
//! container of it. What the release gate's pod mode builds on. Needs root.

use std::time::Duration;

use anyhow::{Result, ensure};
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::agent_image::{self, ImageSpec};
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::packages::{self, FetchError, PackageSource, Ubuntu};
use reflektor_e2e::pod::Pods;
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
