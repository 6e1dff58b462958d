//! The mirror against real components: a real containerd pulls test images
//! from a real upstream (Debian's docker-registry) through CRI, as kubelet
//! does; the real agent serves them from that containerd's store; skopeo and
//! a second containerd pull from the agent, the second with the upstream
//! stopped and `hosts.toml` written by `reflektor configuration`.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use hyper::Method;
use reflektor::oci::Digest;
use reflektor::runtime::Containerd;
use reflektor::store::conformance::{self, Expected};
use reflektor::store::{ByteRange, ContainerdStore, ContentStore};
use reflektor_e2e::agent::{Agent, Backend, Reflektor};
use reflektor_e2e::cri::{Cri, K8sNamespace};
use reflektor_e2e::debian::Suite;
use reflektor_e2e::http;
use reflektor_e2e::image::Platform;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::scenario::{Images, images};
use reflektor_e2e::support::{self, eventually};
use reflektor_e2e::upstream::PushedImage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `<upstream addr>/<repo>:<tag>` split for the store API.
fn parts(pushed: &PushedImage) -> (String, String, String) {
    let (registry, rest) = pushed.by_tag.split_once('/').expect("addr/repo:tag");
    let (repo, tag) = rest.rsplit_once(':').expect("repo:tag");
    (registry.to_owned(), repo.to_owned(), tag.to_owned())
}

/// What a node holds after pulling `pushed`: the target, and the host
/// platform's manifest, config and layers (containerd fetches no others).
fn expected(pushed: &PushedImage) -> Result<Expected> {
    let (registry, repo, tag) = parts(pushed);
    let host = pushed
        .image
        .platform(&Platform::host()?)
        .context("the image has the host's platform")?;
    let mut manifests = vec![(
        pushed.image.target.digest.parse()?,
        pushed.image.target.media_type.clone(),
    )];
    if pushed.image.is_index() {
        manifests.push((
            host.manifest.digest.parse()?,
            host.manifest.media_type.clone(),
        ));
    }
    let mut blobs = vec![(host.config.digest.parse()?, host.config.size)];
    for layer in &host.layers {
        blobs.push((layer.blob.digest.parse()?, layer.blob.size));
    }
    Ok(Expected {
        registry: registry.parse()?,
        name: repo.parse()?,
        tag: tag.parse()?,
        root: pushed.image.target.digest.parse()?,
        manifests,
        blobs,
    })
}

/// A node with the app and the multi-arch index pulled from the upstream.
async fn seeded_node(suite: Suite, name: &str, images: &Images) -> Result<ContainerdNode> {
    let build = support::build(suite).await?;
    let node = ContainerdNode::start(&build, NodeConfig::new(name)).await?;
    images.upstream.configure_node(&node)?;
    let cri = Cri::connect(&node).await?;
    for reference in [&images.app.by_tag, &images.multi.by_tag] {
        cri.pull_image(reference).await?;
    }
    Ok(node)
}

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

async fn status_and_digest(
    agent: &Agent,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Option<String>, hyper::body::Bytes)> {
    let response = http::request(agent.addr(), method, path, headers).await?;
    let digest = response
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    Ok((response.status().as_u16(), digest, response.into_body()))
}

/// HEAD and GET by tag and by digest, with `ns` and registry-first, and
/// ranges: every answer matches what the upstream holds.
async fn serves_pulled_content(agent: &Agent, images: &Images) -> Result<()> {
    let accept = [(
        "accept",
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    )];
    for pushed in [&images.app, &images.multi] {
        let (registry, repo, tag) = parts(pushed);
        let target = &pushed.image.target;
        let paths = [
            format!("/v2/{repo}/manifests/{tag}?ns={registry}"),
            format!("/v2/{registry}/{repo}/manifests/{tag}"),
            format!("/v2/{repo}/manifests/{}?ns={registry}", target.digest),
            format!("/v2/{repo}/manifests/{}", target.digest),
        ];
        for path in &paths {
            for method in [Method::HEAD, Method::GET] {
                let (status, digest, body) =
                    status_and_digest(agent, method.clone(), path, &accept).await?;
                ensure!(status == 200, "{method} {path}: {status}");
                ensure!(
                    digest.as_deref() == Some(target.digest.as_str()),
                    "{path}: {digest:?}"
                );
                if method == Method::GET {
                    ensure!(
                        Digest::sha256_of(&body).to_string() == target.digest,
                        "{path}"
                    );
                }
            }
        }
        let host = pushed.image.platform(&Platform::host()?).context("host")?;
        let layer = host.layers.last().context("a layer")?;
        let path = format!("/v2/{repo}/blobs/{}?ns={registry}", layer.blob.digest);
        let (status, _, whole) = status_and_digest(agent, Method::GET, &path, &[]).await?;
        ensure!(
            status == 200 && whole.len() as u64 == layer.blob.size,
            "{path}: {status}"
        );
        ensure!(
            Digest::sha256_of(&whole).to_string() == layer.blob.digest,
            "{path}"
        );
        let range = [("range", "bytes=100-1099")];
        let (status, _, part) = status_and_digest(agent, Method::GET, &path, &range).await?;
        ensure!(
            status == 206 && part[..] == whole[100..1100],
            "{path} ranged: {status}"
        );
        let beyond = format!("bytes={}-", layer.blob.size);
        let (status, _, _) =
            status_and_digest(agent, Method::GET, &path, &[("range", &beyond)]).await?;
        ensure!(status == 416, "{path} beyond the end: {status}");
    }
    // The other platform of the index never reached this node.
    let other = images
        .multi
        .image
        .other_than(&Platform::host()?)
        .context("a second platform")?;
    let (registry, repo, _) = parts(&images.multi);
    let path = format!(
        "/v2/{repo}/manifests/{}?ns={registry}",
        other.manifest.digest
    );
    let (status, _, _) = status_and_digest(agent, Method::GET, &path, &accept).await?;
    ensure!(status == 404, "a platform the node never pulled: {status}");
    Ok(())
}

/// `skopeo copy` from the agent into an OCI layout keeps every digest. By
/// digest: a docker reference cannot carry the upstream's `host:port` as a
/// path component, and content addressing needs no registry.
fn skopeo_copies_byte_identical(agent: &Agent, pushed: &PushedImage) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, repo, tag) = parts(pushed);
    let target = &pushed.image.target.digest;
    let source = format!("docker://{}/{repo}@{target}", agent.addr());
    let output = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(&source)
        .arg(format!("oci:{}:{tag}", dir.path().display()))
        .output()?;
    ensure!(
        output.status.success(),
        "skopeo copy {source}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json"))?)?;
    let copied = index["manifests"][0]["digest"]
        .as_str()
        .context("a manifest")?;
    ensure!(
        copied == pushed.image.target.digest,
        "skopeo copied {copied}, the upstream has {}",
        pushed.image.target.digest
    );
    for layer in &pushed.image.platforms[0].layers {
        let (_, hex) = layer.blob.digest.split_once(':').context("a digest")?;
        let bytes = std::fs::read(dir.path().join("blobs/sha256").join(hex))?;
        ensure!(Digest::sha256_of(&bytes).to_string() == layer.blob.digest);
    }
    Ok(())
}

/// A second node whose hosts.toml, written by `reflektor configuration`,
/// points at the first node's agent pulls with the upstream stopped.
async fn peer_pulls_through_the_agent(
    suite: Suite,
    reflektor: &Reflektor,
    agent: &Agent,
    images: &Images,
) -> Result<()> {
    let build = support::build(suite).await?;
    let node = ContainerdNode::start(&build, NodeConfig::new(format!("peer-{suite}"))).await?;
    reflektor.configure_mirror(&node, agent.addr(), images.upstream.addr())?;
    let cri = Cri::connect(&node).await?;
    let k8s = K8sNamespace::connect(&node).await?;
    let before = served_bytes(agent).await?;
    for reference in [
        &images.app.by_tag,
        &images.app.by_digest,
        &images.multi.by_tag,
    ] {
        cri.pull_image(reference)
            .await
            .with_context(|| format!("{suite}: pulling {reference} through the agent"))?;
    }
    let image = k8s
        .image(&images.app.by_tag)
        .await?
        .context("the pulled image is in containerd")?;
    let target = image.target.context("a target")?;
    ensure!(
        target.digest == images.app.image.target.digest,
        "{suite}: {}",
        target.digest
    );
    let layers: u64 = images.app.image.platforms[0]
        .layers
        .iter()
        .map(|l| l.blob.size)
        .sum();
    // The agent counts a body's bytes once it has written them all, a moment
    // after containerd has read them.
    eventually("the agent counting the layers it served", || async {
        Ok(served_bytes(agent).await? - before >= layers)
    })
    .await
    .with_context(|| {
        format!("{suite}: the agent served less than the app's {layers} layer bytes")
    })?;
    node.stop().await
}

async fn served_bytes(agent: &Agent) -> Result<u64> {
    let response = http::get(agent.metrics_addr(), "/metrics", "*/*").await?;
    let text = String::from_utf8(response.into_body().to_vec())?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("reflektor_served_bytes_total{source=\"local\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Hostile requests against the live agent: each gets a 4xx, never a 5xx
/// or a hang, and the agent keeps serving.
async fn hostile_input_is_refused(agent: &Agent) -> Result<()> {
    let long = "a".repeat(20_000);
    let params: String = (0..5000).map(|i| format!("k{i}=v&")).collect();
    let requests = [
        "GET /v2/../../../etc/passwd/manifests/x HTTP/1.1\r\n\r\n".to_owned(),
        "GET /v2/a%2F..%2F..%2Fetc/manifests/x HTTP/1.1\r\n\r\n".to_owned(),
        "GET /v2/a/blobs/sha256:..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\n\r\n".to_owned(),
        "GET /v2/a/blobs/sha256:0000 HTTP/1.1\r\n\r\n".to_owned(),
        format!("GET /v2/a/manifests/x HTTP/1.1\r\nX-Long: {long}\r\n\r\n"),
        format!("GET /v2/a/manifests/x?{params} HTTP/1.1\r\n\r\n"),
        "GET /v2/a\0b/manifests/x HTTP/1.1\r\n\r\n".to_owned(),
        format!(
            "GET /v2/a/blobs/sha256:{} HTTP/1.1\r\nRange: bytes=oops\r\n\r\n",
            "0".repeat(64)
        ),
        "DELETE /v2/a/manifests/x HTTP/1.1\r\n\r\n".to_owned(),
        "NOT-HTTP\r\n\r\n".to_owned(),
    ];
    for request in requests {
        let mut stream = tokio::net::TcpStream::connect(agent.addr()).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_exact(&mut head),
        )
        .await
        .context("no answer within 5 s")??;
        let status = std::str::from_utf8(&head[9..12])?;
        let shown: String = request.chars().take(50).collect();
        ensure!(status.starts_with('4'), "{shown:?} got {status}");
    }
    let (status, _, _) = status_and_digest(agent, Method::GET, "/v2/", &[]).await?;
    ensure!(status == 200, "the agent still serves: {status}");
    Ok(())
}

/// containerd moves a finished download into `blobs/` before its metadata
/// records the blob: in that moment the blob is neither in the content
/// service nor in `ingest/`, and a peer that asks for it as a download in
/// progress must still get it, or it would fetch it from the upstream
/// again. A blob file containerd does not know of stands in for that
/// moment.
async fn committed_downloads_are_served_before_containerd_records_them(
    store: &ContainerdStore,
    node: &ContainerdNode,
) -> Result<()> {
    let bytes = b"a download containerd has just committed".to_vec();
    let digest = Digest::sha256_of(&bytes);
    let path = node.content_dir().join("blobs/sha256").join(digest.hex());
    std::fs::write(&path, &bytes)?;
    let checked = async {
        ensure!(
            store.blob_size(&digest).await.is_err(),
            "containerd does not know the blob yet"
        );
        let size = store.in_flight_size(&digest).await?;
        ensure!(size == bytes.len() as u64, "size {size}");
        let whole = ByteRange {
            start: 0,
            len: size,
        };
        let served = conformance::bytes(store.in_flight_blob(&digest, whole).await?).await;
        ensure!(served == bytes, "served {} bytes that differ", served.len());
        Ok(())
    }
    .await;
    std::fs::remove_file(&path)?;
    checked
}

async fn mirror(suite: Suite) -> Result<()> {
    if !support::root_or_skip(&format!("{suite} mirror")) {
        return Ok(());
    }
    let mut images = images().await?;
    let node = seeded_node(suite, &format!("seed-{suite}"), &images).await?;

    // The containerd store passes the same conformance suite as the OCI
    // layout store, against this real containerd.
    let containerd = Containerd::connect(node.socket()).await?;
    let namespace = reflektor::runtime::Namespace::new("k8s.io")?;
    let store = ContainerdStore::new(containerd.clone(), namespace.clone(), &node.content_dir());
    for pushed in [&images.app, &images.multi] {
        conformance::run(&format!("containerd {suite}"), &store, &expected(pushed)?).await;
    }
    committed_downloads_are_served_before_containerd_records_them(&store, &node).await?;
    // Without the content directory, bytes come through containerd's API.
    let no_dir = ContainerdStore::new(containerd, namespace, std::path::Path::new("/nonexistent"));
    conformance::run(
        &format!("containerd {suite} over gRPC"),
        &no_dir,
        &expected(&images.app)?,
    )
    .await;

    let reflektor = Reflektor::locate()?;
    let agent = reflektor
        .start_registry(Backend::Containerd(&node), loopback(2))
        .await?;
    serves_pulled_content(&agent, &images).await?;
    skopeo_copies_byte_identical(&agent, &images.app)?;
    hostile_input_is_refused(&agent).await?;

    images.upstream.stop().await?;
    peer_pulls_through_the_agent(suite, &reflektor, &agent, &images).await?;

    let status = agent.stop().await?;
    ensure!(
        status.success(),
        "the agent exited with {status} on SIGTERM"
    );
    node.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bookworm_node_serves_its_images() -> Result<()> {
    mirror(Suite::Bookworm).await
}

#[tokio::test]
async fn sid_node_serves_its_images() -> Result<()> {
    mirror(Suite::Sid).await
}

/// `reflektor registry` runs doctor's checks first: on bullseye's
/// containerd 1.4 it refuses to start, exits 1, and says why and what to do.
#[tokio::test]
async fn registry_refuses_to_start_on_bullseye() -> Result<()> {
    if !support::root_or_skip("registry on bullseye") {
        return Ok(());
    }
    let build = support::build(Suite::Bullseye).await?;
    let node = ContainerdNode::start(&build, NodeConfig::new("refuse-bullseye")).await?;
    let reflektor = Reflektor::locate()?;
    let error = reflektor
        .start_registry(Backend::Containerd(&node), loopback(3))
        .await
        .expect_err("the agent must refuse containerd 1.4");
    let message = format!("{error:#}");
    node.stop().await?;
    for needle in [
        "exited (exit status: 1)",
        "1.4.13~ds1",
        "1.5.0",
        "hosts.toml",
        "upgrade containerd",
    ] {
        ensure!(
            message.contains(needle),
            "{needle:?} missing from:\n{message}"
        );
    }
    Ok(())
}
