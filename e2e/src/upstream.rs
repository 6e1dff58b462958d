//! The upstream registry the mirror fronts: Debian's `docker-registry` (the CNCF
//! distribution registry) as a real process on loopback, filled with `skopeo copy`.
//!
//! A mirror's tests are only as good as the registry behind them: real status codes,
//! headers, redirects and digests come from a real registry, not a fake. The upstream can
//! be stopped and restarted on the same storage and port, because the interesting tests
//! prove that pulls keep working from peers while the upstream is down.

use std::{
    fs::{self, File},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use hyper::StatusCode;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::json;
use tempfile::TempDir;

use crate::{
    http,
    image::{OCI_INDEX, OCI_MANIFEST, OciLayout, TestImage, sha256_digest},
    node::{self, ContainerdNode},
};

/// Shipped by Debian's `docker-registry` package.
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// Shipped by Debian's `skopeo` package.
const SKOPEO_BIN: &str = "skopeo";
/// How long the registry gets to exit on SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);
/// Fresh ports to try when another process takes the chosen one before the registry
/// binds it.
const PORT_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 20;
/// What the registry answers manifest requests with, in the order a client prefers them.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A running, or stopped, `docker-registry` with its own storage, config, log and port.
///
/// Dropping it kills the registry and removes its directory, unless
/// [`node::keep_requested`].
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    config_file: PathBuf,
    log_file: PathBuf,
    // Field order is drop order: the registry must be dead before its storage goes.
    process: Option<Registry>,
    dir: Scratch,
}

/// An image as pushed: its description and the references a client pulls it by.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub image: TestImage,
    /// `<addr>/<repo>:<tag>`.
    pub by_tag: String,
    /// `<addr>/<repo>@<target digest>`.
    pub by_digest: String,
}

impl PushedImage {
    /// The path a mirror is asked for one of the image's blobs, as
    /// containerd asks: the repository, with the registry in `?ns=`.
    pub fn mirror_blob_path(&self, digest: &str) -> Result<String> {
        let (registry, rest) = self
            .by_tag
            .split_once('/')
            .context("an image reference is <registry>/<repo>:<tag>")?;
        let (repo, _) = rest
            .rsplit_once(':')
            .context("an image reference is <registry>/<repo>:<tag>")?;
        Ok(format!("/v2/{repo}/blobs/{digest}?ns={registry}"))
    }
}

/// How long one push may take: the largest test image is 256 MiB.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(300);

/// `skopeo copy` from `source` (e.g. `oci:<dir>:<tag>`) to `by_tag`
/// (`host:port/repo:tag`), digests kept, TLS not verified: the registries
/// the harness pushes to are its own or a test registry.
pub async fn skopeo_copy(source: &str, by_tag: &str, multi_arch: bool) -> Result<()> {
    let mut skopeo = tokio::process::Command::new(SKOPEO_BIN);
    // The host's policy.json is not ours to depend on; the images are our own.
    skopeo.args(["--insecure-policy", "copy", "--preserve-digests"]);
    skopeo.args(["--dest-tls-verify=false", "--quiet"]);
    if multi_arch {
        skopeo.args(["--multi-arch", "all"]);
    }
    skopeo.arg(source).arg(format!("docker://{by_tag}"));
    // A registry that stops answering must not hang the run.
    let output = tokio::time::timeout(
        SKOPEO_TIMEOUT,
        skopeo.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("{skopeo:?} did not finish within {SKOPEO_TIMEOUT:?}"))?
    .with_context(|| format!("could not run {SKOPEO_BIN}; install Debian's skopeo package"))?;
    ensure!(
        output.status.success(),
        "{skopeo:?} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

impl Upstream {
    /// Starts an empty registry on a free loopback port and waits until it answers.
    pub async fn start() -> Result<Self> {
        let parent = node::work_parent();
        fs::create_dir_all(&parent)
            .with_context(|| format!("creating the parent directory {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("reflektor-upstream-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating an upstream directory in {}", parent.display()))?;
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).with_context(|| format!("creating {}", storage.display()))?;
        let mut upstream = Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            config_file: dir.path().join("config.yml"),
            log_file: dir.path().join("registry.log"),
            process: None,
            dir: Scratch {
                path: dir.path().to_owned(),
                dir: Some(dir),
            },
        };
        let mut attempt = 1;
        loop {
            upstream.addr = http::free_port(Ipv4Addr::LOCALHOST.into())?;
            upstream.write_config(&storage)?;
            match upstream.run().await {
                Err(_) if attempt < PORT_ATTEMPTS && upstream.lost_port_race() => attempt += 1,
                result => return result.map(|()| upstream),
            }
        }
    }

    /// Starts the registry again after [`Upstream::stop`], on the same storage and port,
    /// so every image pushed before is served again under the same references.
    pub async fn restart(&mut self) -> Result<()> {
        ensure!(
            self.process.is_none(),
            "the upstream on {} is already running; stop it before restarting it",
            self.addr
        );
        self.run().await.with_context(|| {
            format!(
                "restarting the upstream on {}; if another process took the port while the \
                 upstream was stopped, restart sooner",
                self.addr
            )
        })
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 5 s), keeping storage and port
    /// for [`Upstream::restart`]. Pulls fail with connection refused until then.
    pub async fn stop(&mut self) -> Result<()> {
        let registry = self
            .process
            .take()
            .with_context(|| format!("the upstream on {} is already stopped", self.addr))?;
        registry.shutdown().await
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The registry process, while it runs: benchmarks read its cost from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|registry| registry.child.id())
    }

    /// `127.0.0.1:<port>`, which is also the registry host in image references.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the upstream keeps: `config.yml`, `registry.log` and `storage/`.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The registry's output, across restarts.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Body bytes the upstream has sent for GETs of blob `digest`, across
    /// restarts: what pulling it cost the upstream in egress. Read from the
    /// registry's access log (`"GET <path> HTTP/1.1" <status> <bytes> …`),
    /// which counts what it wrote, a body cut short included.
    pub fn blob_bytes_sent(&self, digest: &str) -> Result<u64> {
        let log = fs::read_to_string(&self.log_file)
            .with_context(|| format!("reading {}", self.log_file.display()))?;
        let blob = format!("/blobs/{digest} ");
        let mut sent = 0;
        for line in log.lines() {
            let Some((_, request)) = line.split_once("\"GET ") else {
                continue;
            };
            let Some((path, rest)) = request.split_once('"') else {
                continue;
            };
            if !path.contains(&blob) {
                continue;
            }
            let bytes = rest
                .split_whitespace()
                .nth(1)
                .and_then(|b| b.parse::<u64>().ok());
            sent += bytes.with_context(|| format!("an access log line without a size: {line}"))?;
        }
        Ok(sent)
    }

    /// The `hosts.toml` that has containerd pull from this upstream over plain HTTP.
    pub fn hosts_toml(&self) -> String {
        let url = self.url();
        format!(
            "server = \"{url}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        )
    }

    /// Writes [`Upstream::hosts_toml`] to `<certs.d>/<addr>/hosts.toml` of the node and
    /// returns its path. containerd reads it on every pull, so no restart is needed.
    pub fn configure_node(&self, node: &ContainerdNode) -> Result<PathBuf> {
        let certs = node.certs_dir();
        let listed = node
            .registry_config_path()
            .is_some_and(|paths| paths.split(':').any(|path| Path::new(path) == certs));
        ensure!(
            listed,
            "node {} reads hosts.toml from {:?}, not from its own {}; start it with \
             RegistryConfigPath::NodeDefault to let it reach the upstream",
            node.name(),
            node.registry_config_path(),
            certs.display()
        );
        let dir = certs.join(self.addr.to_string());
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("hosts.toml");
        fs::write(&path, self.hosts_toml())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Pushes `image` from `layout` to `<repo>:<tag>` with `skopeo copy`, every platform
    /// of an index included, and checks that the registry serves it under the digests
    /// the layout has.
    pub async fn push(
        &self,
        layout: &OciLayout,
        image: &TestImage,
        repo: &str,
    ) -> Result<PushedImage> {
        ensure!(
            self.is_running(),
            "cannot push {repo}:{} to the upstream on {}: it is stopped; restart it first",
            image.tag,
            self.addr
        );
        let dir = layout.dir().to_str().filter(|dir| !dir.contains(':'));
        let dir = dir.with_context(|| {
            format!(
                "skopeo cannot name the layout {}: the path must be UTF-8 without ':'",
                layout.dir().display()
            )
        })?;
        let by_tag = format!("{}/{repo}:{}", self.addr, image.tag);
        self.copy(
            &format!("oci:{dir}:{}", image.tag),
            &by_tag,
            image.is_index(),
        )
        .await?;

        let served = self.manifest(repo, &image.tag).await?;
        ensure!(
            served == (image.target.digest.clone(), image.target.media_type.clone()),
            "after pushing {by_tag}, the upstream serves {served:?}, not the layout's {:?}; \
             skopeo must have rewritten the image",
            image.target
        );
        for platform in &image.platforms {
            let served = self.manifest(repo, &platform.manifest.digest).await?;
            ensure!(
                served.1 == OCI_MANIFEST,
                "{repo}@{} is served as {}, not {OCI_MANIFEST}",
                platform.manifest.digest,
                served.1
            );
        }
        Ok(PushedImage {
            image: image.clone(),
            by_digest: format!("{}/{repo}@{}", self.addr, image.target.digest),
            by_tag,
        })
    }

    /// Pushes an OCI image-layout archive (such as the agent's own image) to
    /// `<repo>:<tag>`; returns the reference and the manifest digest served.
    pub async fn push_archive(
        &self,
        archive: &Path,
        repo: &str,
        tag: &str,
    ) -> Result<(String, String)> {
        let path = archive
            .to_str()
            .filter(|p| !p.contains(':'))
            .with_context(|| {
                format!(
                    "skopeo cannot name the archive {}: the path must be UTF-8 without ':'",
                    archive.display()
                )
            })?;
        let by_tag = format!("{}/{repo}:{tag}", self.addr);
        self.copy(&format!("oci-archive:{path}"), &by_tag, false)
            .await?;
        let (digest, _) = self.manifest(repo, tag).await?;
        Ok((by_tag, digest))
    }

    /// `skopeo copy` from `source` to this registry, digests kept.
    async fn copy(&self, source: &str, by_tag: &str, multi_arch: bool) -> Result<()> {
        skopeo_copy(source, by_tag, multi_arch)
            .await
            .with_context(|| {
                format!(
                    "registry log {}:\n{}",
                    self.log_file.display(),
                    log_tail(&self.log_file)
                )
            })
    }

    /// `GET` of `repo:reference`'s manifest, which must answer 200: the
    /// request path and the response.
    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(String, hyper::Response<hyper::body::Bytes>)> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let response = http::get(self.addr, &path, MANIFEST_ACCEPT).await?;
        ensure!(
            response.status() == StatusCode::OK,
            "GET {}{path} answered {}; expected 200",
            self.url(),
            response.status()
        );
        Ok((path, response))
    }

    /// The image manifest the registry serves for `repo:reference`.
    pub async fn image_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<oci_spec::image::ImageManifest> {
        let (path, response) = self.get_manifest(repo, reference).await?;
        oci_spec::image::ImageManifest::from_reader(response.body().as_ref())
            .with_context(|| format!("GET {}{path} is not an image manifest", self.url()))
    }

    /// The digest and media type the registry serves `repo:reference` as, after
    /// checking that the digest header matches the body.
    pub async fn manifest(&self, repo: &str, reference: &str) -> Result<(String, String)> {
        let (path, response) = self.get_manifest(repo, reference).await?;
        let text = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
                .with_context(|| format!("GET {}{path} sent no {name} header", self.url()))
        };
        let digest = text("docker-content-digest")?;
        let media_type = text("content-type")?;
        let body_digest = sha256_digest(response.body());
        ensure!(
            digest == body_digest,
            "GET {}{path}: Docker-Content-Digest {digest} but the body hashes to {body_digest}",
            self.url()
        );
        ensure!(
            [OCI_INDEX, OCI_MANIFEST].contains(&media_type.as_str()),
            "GET {}{path} is {media_type}; the layout has only OCI manifests and indexes",
            self.url()
        );
        Ok((digest, media_type))
    }

    fn write_config(&self, storage: &Path) -> Result<()> {
        // JSON is YAML, and needs no escaping rules of its own.
        let config = json!({
            "version": "0.1",
            "log": { "level": "info", "formatter": "text" },
            "storage": {
                "filesystem": { "rootdirectory": storage },
                "delete": { "enabled": true },
                // Purging would delete uploads of a paused test behind its back.
                "maintenance": { "uploadpurging": { "enabled": false } },
            },
            "http": {
                "addr": self.addr.to_string(),
                // Without one the registry makes up a random secret and warns.
                "secret": "reflektor-e2e",
            },
        });
        fs::write(&self.config_file, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", self.config_file.display()))
    }

    /// Spawns the registry and waits until `GET /v2/` answers 200.
    async fn run(&mut self) -> Result<()> {
        let mut registry = Registry::spawn(&self.config_file, &self.log_file, self.addr)?;
        let patience = node::patience()?;
        let started = Instant::now();
        loop {
            if let Some(status) = registry.exited()? {
                bail!(
                    "{REGISTRY_BIN} on {} exited ({status}) before it answered; {} ends with:\n{}",
                    self.addr,
                    self.log_file.display(),
                    log_tail(&self.log_file)
                );
            }
            let last_error = match http::get(self.addr, "/v2/", "application/json").await {
                Ok(response) if response.status() == StatusCode::OK => break,
                Ok(response) => format!("GET /v2/ answered {}", response.status()),
                Err(err) => format!("{err:#}"),
            };
            if started.elapsed() >= patience {
                bail!(
                    "{REGISTRY_BIN} on {} did not answer GET /v2/ with 200 within {patience:?} \
                     (last attempt: {last_error}); raise REFLEKTOR_E2E_PATIENCE_SECS on a slow \
                     host; {} ends with:\n{}",
                    self.addr,
                    self.log_file.display(),
                    log_tail(&self.log_file)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.process = Some(registry);
        Ok(())
    }

    fn lost_port_race(&self) -> bool {
        fs::read_to_string(&self.log_file).is_ok_and(|log| log.contains("address already in use"))
    }
}

fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(log) => {
            let log = String::from_utf8_lossy(&log);
            let lines: Vec<_> = log.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(err) => format!("(unreadable: {err})"),
    }
}

/// The registry process. Killed on drop, so a failing test leaves no registry behind.
#[derive(Debug)]
struct Registry {
    child: Child,
    /// Once reaped, the pid may be reused: never signal it again.
    reaped: bool,
}

impl Registry {
    fn spawn(config: &Path, log_file: &Path, addr: SocketAddr) -> Result<Self> {
        ensure!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing; install Debian's docker-registry package"
        );
        // Appending keeps the output of every run since start.
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_file)
            .with_context(|| format!("opening {}", log_file.display()))?;
        let stderr = log
            .try_clone()
            .with_context(|| format!("sharing {}", log_file.display()))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(config)
            // REGISTRY_* variables would override the config file.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {REGISTRY_BIN} for {addr}"))?;
        Ok(Self {
            child,
            reaped: false,
        })
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let status = self
            .child
            .try_wait()
            .context("checking on the registry process")?;
        self.reaped |= status.is_some();
        Ok(status)
    }

    async fn shutdown(mut self) -> Result<()> {
        // A reaped registry's pid may belong to another process by now.
        if self.exited()?.is_none() {
            let pid = Pid::from_raw(self.child.id().try_into().expect("pids fit in pid_t"));
            kill(pid, Signal::SIGTERM).context("sending SIGTERM to the registry")?;
        }
        let deadline = Instant::now() + GRACE;
        while self.exited()?.is_none() {
            if Instant::now() >= deadline {
                eprintln!("the registry ignored SIGTERM for {GRACE:?}; killing it");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        Ok(())
    }

    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The upstream's directory: removed on drop, unless [`node::keep_requested`].
#[derive(Debug)]
struct Scratch {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if node::keep_requested() {
            eprintln!("kept upstream directory {}", dir.keep().display());
        } else if let Err(err) = dir.close() {
            eprintln!("removing the upstream directory: {err:#}");
        }
    }
}
