//! Real pulls from a real upstream, before any mirror is involved: images built here,
//! pushed with skopeo to Debian's docker-registry, and pulled through CRI, as kubelet
//! does, by every Debian containerd that reads `hosts.toml`. The mirror's tests build on
//! each step proven here, so a failure here points at the harness, not the mirror.
//! These start real daemons, so they need root.

use std::{fs, net::TcpListener};

use anyhow::{Context, Result, ensure};
use reflektor_e2e::{
    cri::{Cri, K8sNamespace},
    debian::Suite,
    image::{Platform, TestImage},
    node::{ContainerdNode, NodeConfig},
    scenario::{Images, images},
    support,
    upstream::{PushedImage, Upstream},
};

#[tokio::test]
async fn bookworm_pulls_from_the_upstream() -> Result<()> {
    pulls_from_the_upstream(Suite::Bookworm).await
}

#[tokio::test]
async fn trixie_pulls_from_the_upstream() -> Result<()> {
    pulls_from_the_upstream(Suite::Trixie).await
}

#[tokio::test]
async fn sid_pulls_from_the_upstream() -> Result<()> {
    pulls_from_the_upstream(Suite::Sid).await
}

/// Pull by digest, by tag and an index by tag; then the upstream goes down, a pull of a
/// new image fails, and after a restart on the same port it succeeds.
async fn pulls_from_the_upstream(suite: Suite) -> Result<()> {
    if !support::root_or_skip(&format!("{suite}_pulls_from_the_upstream")) {
        return Ok(());
    }
    let (build, images) = tokio::try_join!(support::build(suite), images())?;
    let Images {
        mut upstream,
        app,
        multi,
        later,
        layout: _layout,
    } = images;
    let node = ContainerdNode::start(&build, NodeConfig::new(format!("pull-{suite}"))).await?;
    let cri = Cri::connect(&node).await?;
    let k8s = K8sNamespace::connect(&node).await?;
    let host = Platform::host()?;

    assert_hosts_toml_decides(&upstream, &node, &cri, &app).await?;
    upstream.configure_node(&node)?;
    for (pushed, reference) in [
        (&app, &app.by_digest),
        (&app, &app.by_tag),
        (&multi, &multi.by_tag),
    ] {
        let id = cri.pull_image(reference).await?;
        let config = &pushed
            .image
            .platform(&host)
            .context("host platform")?
            .config;
        assert_eq!(id, config.digest, "{suite}: image ID of {reference}");
        assert_stored(&k8s, reference, &pushed.image, &host).await?;
    }
    assert_only_host_platform_fetched(&k8s, &multi.image, &host).await?;
    let status = cri
        .image_status(&multi.by_tag)
        .await?
        .context("ImageStatus of the index")?;
    assert!(
        status.repo_digests.contains(&multi.by_digest),
        "{suite}: {:?}",
        status.repo_digests
    );

    upstream.stop().await?;
    let err = cri
        .pull_image(&later.by_tag)
        .await
        .expect_err("a pull with the upstream stopped must fail");
    assert!(
        format!("{err:#}").contains("connection refused"),
        "{suite}: pull with the upstream stopped failed otherwise: {err:#}"
    );
    assert!(cri.image_status(&later.by_tag).await?.is_none());
    upstream.restart().await?;
    cri.pull_image(&later.by_tag).await?;
    assert_stored(&k8s, &later.by_tag, &later.image, &host).await?;

    let listed = cri.list_images().await?;
    assert!(
        listed
            .iter()
            .any(|image| image.repo_tags.contains(&app.by_tag)),
        "{suite}: ListImages lacks {}: {listed:#?}",
        app.by_tag
    );
    cri.remove_image(&app.by_tag).await?;
    assert!(cri.image_status(&app.by_tag).await?.is_none());
    assert!(k8s.image(&app.by_tag).await?.is_none());
    node.stop().await
}

/// Every containerd here pulls from a loopback registry over plain HTTP with no
/// hosts.toml at all, so only a hosts.toml that sends the pull elsewhere proves that the
/// node reads its certs.d, and reads it afresh on each pull. The decoy has the
/// upstream's shape: containerd 1.x ignores a file without `[host]` tables ("invalid
/// `host` tree") and pulls as if it were absent.
async fn assert_hosts_toml_decides(
    upstream: &Upstream,
    node: &ContainerdNode,
    cri: &Cri,
    image: &PushedImage,
) -> Result<()> {
    let dead = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let path = upstream.configure_node(node)?;
    let decoy = upstream
        .hosts_toml()
        .replace(&upstream.addr().to_string(), &dead.to_string());
    fs::write(&path, decoy)?;
    let err = cri
        .pull_image(&image.by_tag)
        .await
        .expect_err("a pull sent to a dead port by hosts.toml must fail");
    ensure!(
        format!("{err:#}").contains(&dead.to_string()),
        "{}: the pull did not go where {} said: {err:#}",
        node.name(),
        path.display()
    );
    Ok(())
}

/// CRI fetches only the node's platform out of an index: a node can never serve the
/// other platforms' manifests or blobs to its peers.
async fn assert_only_host_platform_fetched(
    k8s: &K8sNamespace,
    index: &TestImage,
    host: &Platform,
) -> Result<()> {
    for other in index
        .platforms
        .iter()
        .filter(|image| image.platform != *host)
    {
        let blobs = [&other.manifest, &other.config]
            .into_iter()
            .chain(other.layers.iter().map(|layer| &layer.blob));
        for blob in blobs {
            ensure!(
                k8s.content(&blob.digest).await?.is_none(),
                "{} blob {} of {} was fetched on a {} node",
                other.platform.architecture,
                blob.digest,
                index.tag,
                host.architecture
            );
        }
    }
    Ok(())
}

/// containerd's own records: the image named `name` points at the pushed manifest or
/// index, and the content store holds the host platform's manifest, config and layers.
async fn assert_stored(
    k8s: &K8sNamespace,
    name: &str,
    image: &TestImage,
    host: &Platform,
) -> Result<()> {
    let record = k8s
        .image(name)
        .await?
        .with_context(|| format!("containerd has no image named {name}"))?;
    let target = record.target.context("image record without target")?;
    ensure!(
        (target.digest.as_str(), target.media_type.as_str())
            == (&image.target.digest, &image.target.media_type),
        "{name} points at {} ({}), not the pushed {} ({})",
        target.digest,
        target.media_type,
        image.target.digest,
        image.target.media_type
    );
    let platform = image.platform(host).context("host platform")?;
    let blobs = [&image.target, &platform.manifest, &platform.config]
        .into_iter()
        .chain(platform.layers.iter().map(|layer| &layer.blob));
    for blob in blobs {
        let info = k8s
            .content(&blob.digest)
            .await?
            .with_context(|| format!("{name}: containerd lacks blob {}", blob.digest))?;
        ensure!(
            u64::try_from(info.size) == Ok(blob.size),
            "{name}: blob {} is {} bytes in containerd, {} pushed",
            blob.digest,
            info.size,
            blob.size
        );
    }
    Ok(())
}
