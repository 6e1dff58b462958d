//! The agent's own image (`just image`): the same binary gives the same
//! archive byte for byte, it records what it is and where its libraries came
//! from, and a real containerd pulls it through CRI, as kubelet would, from
//! a real registry it was pushed to with skopeo. Needs root.

use std::io::Read;

use anyhow::{Context, Result, ensure};
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::agent_image::{self, ImageSpec};
use reflektor_e2e::cri::Cri;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::support;
use reflektor_e2e::upstream::Upstream;
use serde_json::Value;

/// A file of the OCI layout inside the archive.
fn archive_file(archive: &std::path::Path, name: &str) -> Result<Vec<u8>> {
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_str() == Some(name) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            return Ok(bytes);
        }
    }
    anyhow::bail!("{name} is not in {}", archive.display())
}

fn blob(archive: &std::path::Path, digest: &str) -> Result<Value> {
    let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
    Ok(serde_json::from_slice(&archive_file(
        archive,
        &format!("blobs/sha256/{hex}"),
    )?)?)
}

/// The layer of a single-layer image archive, unpacked into a directory.
fn unpack_layer(archive: &std::path::Path, manifest: &Value) -> Result<tempfile::TempDir> {
    let rootfs = tempfile::tempdir()?;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .context("a layer")?;
    let gz = archive_file(archive, &format!("blobs/sha256/{layer}"))?;
    tar::Archive::new(flate2::read::GzDecoder::new(&gz[..])).unpack(rootfs.path())?;
    Ok(rootfs)
}

/// The harness's sandbox image: its process runs from the image's own
/// files as a sandbox's PID 1 would, and ends cleanly on SIGTERM.
#[tokio::test]
async fn the_sandbox_image_waits_and_stops_on_sigterm() -> Result<()> {
    if !support::root_or_skip("the_sandbox_image_waits_and_stops_on_sigterm") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let spec = ImageSpec::pause(
        env!("CARGO_BIN_EXE_reflektor-pause").into(),
        "reflektor.test/pause:test".to_owned(),
    );
    let built = agent_image::build(&spec, &dir.path().join("pause.oci.tar"))?;
    let manifest = blob(&built.archive, &built.manifest_digest)?;
    let rootfs = unpack_layer(&built.archive, &manifest)?;
    let mut pause = std::process::Command::new("chroot")
        .arg(rootfs.path())
        .arg("/pause")
        .spawn()?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    ensure!(pause.try_wait()?.is_none(), "pause ended on its own");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pause.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = pause.wait()?;
    ensure!(status.success(), "pause ended with {status} on SIGTERM");
    Ok(())
}

#[tokio::test]
async fn the_agent_image_is_reproducible_labelled_and_pullable() -> Result<()> {
    if !support::root_or_skip("the_agent_image_is_reproducible_labelled_and_pullable") {
        return Ok(());
    }
    let binary = Reflektor::locate()?.bin().to_owned();
    let dir = tempfile::tempdir()?;
    let spec = ImageSpec::agent(binary, "ghcr.io/reflektor/reflektor:test".to_owned());
    let first = agent_image::build(&spec, &dir.path().join("a.oci.tar"))?;
    let second = agent_image::build(&spec, &dir.path().join("b.oci.tar"))?;
    ensure!(
        std::fs::read(&first.archive)? == std::fs::read(&second.archive)?,
        "two builds from one binary differ: {} and {}",
        first.manifest_digest,
        second.manifest_digest
    );
    ensure!(
        first
            .libraries
            .iter()
            .any(|l| l.package.starts_with("libc6") && !l.version.is_empty()),
        "libc's package is not recorded: {:?}",
        first.libraries
    );

    // What the layout says: one linux/amd64 manifest, named for containerd.
    let index: Value = serde_json::from_slice(&archive_file(&first.archive, "index.json")?)?;
    let entry = &index["manifests"][0];
    ensure!(entry["digest"] == first.manifest_digest.as_str());
    ensure!(entry["annotations"]["io.containerd.image.name"] == spec.name.as_str());
    let manifest = blob(&first.archive, &first.manifest_digest)?;
    let config = blob(
        &first.archive,
        manifest["config"]["digest"].as_str().context("a config")?,
    )?;
    ensure!(config["config"]["Entrypoint"][0] == "/usr/bin/reflektor");
    let labels = &config["config"]["Labels"];
    ensure!(labels["org.opencontainers.image.version"] == env!("CARGO_PKG_VERSION"));
    ensure!(labels["org.opencontainers.image.licenses"] == "Apache-2.0");
    ensure!(
        labels["io.reflektor.image.packages"]
            .as_str()
            .is_some_and(|p| p.contains("libc6")),
        "{labels}"
    );

    // Its own files are enough to run it: nothing is missing from the image.
    let rootfs = unpack_layer(&first.archive, &manifest)?;
    let run = std::process::Command::new("chroot")
        .arg(rootfs.path())
        .args(["/usr/bin/reflektor", "--version"])
        .output()?;
    ensure!(
        run.status.success() && String::from_utf8_lossy(&run.stdout).starts_with("reflektor "),
        "the image's binary does not run from the image alone: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Pushed as it is, and pulled by a real containerd through CRI.
    let (build, upstream) = tokio::try_join!(support::build(Suite::Bookworm), Upstream::start())?;
    let (by_tag, digest) = upstream
        .push_archive(&first.archive, "reflektor/reflektor", "test")
        .await?;
    ensure!(
        digest == first.manifest_digest,
        "the registry serves {digest}, the archive holds {}",
        first.manifest_digest
    );
    let node = ContainerdNode::start(&build, NodeConfig::new("image-bookworm")).await?;
    upstream.configure_node(&node)?;
    let cri = Cri::connect(&node).await?;
    let id = cri.pull_image(&by_tag).await?;
    ensure!(
        id == manifest["config"]["digest"],
        "containerd's image id {id} is not the config's digest"
    );
    Ok(())
}
