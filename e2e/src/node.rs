//! One containerd daemon, a "node", isolated from the host and from its siblings.
//!
//! The release gate runs several containerd versions side by side, often from parallel
//! test threads, so everything a node writes (root, state, sockets, config, log) lives in
//! its own temporary directory and plugins that insist on host-global paths are disabled
//! (see `toml_config`). Teardown also runs on drop, because a panicking test must not leave
//! daemons or mounts behind for the next run to trip over.

mod toml_config;

use std::{
    env,
    ffi::OsString,
    fs::{self, File},
    os::unix::ffi::{OsStrExt, OsStringExt},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use containerd_client::Client;
use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::{
        signal::{Signal, kill, killpg},
        wait::{Id, WaitPidFlag, WaitStatus, waitid},
    },
    unistd::Pid,
};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::packages::ContainerdBuild;

/// The content store under containerd's root.
const CONTENT_DIR: &str = "io.containerd.content.v1.content";
/// Any value but empty or `0` keeps node directories after stop.
const KEEP_ENV: &str = "REFLEKTOR_E2E_KEEP";
/// Parent of node directories instead of the system temp dir.
const WORK_ENV: &str = "REFLEKTOR_E2E_WORK";
/// Seconds a node may take to answer Version after spawn; slow CI hosts raise it.
const PATIENCE_ENV: &str = "REFLEKTOR_E2E_PATIENCE_SECS";
const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);
/// How long containerd gets to shut down on SIGTERM before the process group is killed.
const GRACE: Duration = Duration::from_secs(10);
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const LOG_TAIL_LINES: usize = 40;

/// Which hosts directory (`certs.d` layout) the node's CRI plugin reads registry
/// configuration from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryConfigPath {
    /// Leave `config_path` out of the config, as many real deployments do.
    Unset,
    /// The node's private `<dir>/certs.d`, so `hosts.toml` files a test writes there
    /// affect only this node.
    NodeDefault,
    /// Verbatim, possibly a `:`-separated list as containerd accepts.
    Custom(String),
}

/// The knobs of a node's config that the release gate varies.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Names the node in its directory and in errors; `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Ignored by containerd before 1.5, which has no `config_path`.
    pub registry_config_path: RegistryConfigPath,
    /// containerd 2.x falls back from the transfer service to local image pulls when
    /// this is set (it logs so), which changes how images reach the registry.
    pub discard_unpacked_layers: bool,
    /// The pod sandbox ("pause") image CRI starts pods with; containerd's default
    /// otherwise, which no registry reachable here carries.
    pub sandbox_image: Option<String>,
    /// The runc the node's shims run containers with, in place of the build's own:
    /// for a build whose runc cannot run on this host (see [`ContainerdBuild::runc_version`]).
    pub runc: Option<PathBuf>,
    /// The content store on a tmpfs of this many bytes, for a node whose disk
    /// fills up; on the node's own disk otherwise.
    pub content_store_bytes: Option<u64>,
}

impl NodeConfig {
    /// A node with its private `certs.d` and containerd's default of keeping layers.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            registry_config_path: RegistryConfigPath::NodeDefault,
            discard_unpacked_layers: false,
            sandbox_image: None,
            runc: None,
            content_store_bytes: None,
        }
    }
}

/// Where node directories, and the harness's other scratch directories, are created:
/// `$REFLEKTOR_E2E_WORK`, else the system temp dir.
pub fn work_parent() -> PathBuf {
    env::var_os(WORK_ENV)
        .filter(|dir| !dir.is_empty())
        .map_or_else(env::temp_dir, PathBuf::from)
}

/// Whether `REFLEKTOR_E2E_KEEP` (any value but empty or `0`) asks to keep node
/// directories after stop, for a post-mortem of configs and logs.
pub fn keep_requested() -> bool {
    env::var_os(KEEP_ENV).is_some_and(|value| !value.is_empty() && value != "0")
}

/// A running containerd with its own directory, config and socket.
///
/// Stop it with [`ContainerdNode::stop`] to get errors reported; dropping it kills the
/// daemon and cleans up best-effort.
#[derive(Debug)]
pub struct ContainerdNode {
    name: String,
    build: ContainerdBuild,
    layout: Layout,
    registry_config_path: Option<String>,
    // Field order is drop order: the daemon must be dead before its directory goes.
    daemon: Daemon,
    workdir: Workdir,
}

impl ContainerdNode {
    /// Writes the node's config, spawns containerd and waits until it answers Version.
    pub async fn start(build: &ContainerdBuild, config: NodeConfig) -> Result<Self> {
        let name = config.name;
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "node name {name:?} must be non-empty and use only [A-Za-z0-9_-]: it becomes part of a directory name"
        );
        let major = build.major()?;
        let workdir = Workdir::create(&name)?;
        let layout = Layout::new(workdir.path());
        layout.create()?;
        if let Some(bytes) = config.content_store_bytes {
            let content = layout.root.join(CONTENT_DIR);
            fs::create_dir_all(&content)
                .with_context(|| format!("creating {}", content.display()))?;
            // Unmounted with the node's other mounts when its directory goes.
            mount(
                Some("tmpfs"),
                &content,
                Some("tmpfs"),
                MsFlags::empty(),
                Some(format!("size={bytes}").as_str()),
            )
            .with_context(|| format!("mounting a {bytes}-byte tmpfs on {}", content.display()))?;
        }
        let registry_config_path = match config.registry_config_path {
            RegistryConfigPath::Unset => None,
            RegistryConfigPath::NodeDefault => {
                Some(toml_config::utf8(&layout.certs_dir)?.to_owned())
            }
            RegistryConfigPath::Custom(path) => Some(path),
        };
        let rendered = toml_config::render(
            major,
            &toml_config::Settings {
                layout: &layout,
                registry_config_path: registry_config_path.as_deref(),
                discard_unpacked_layers: config.discard_unpacked_layers,
                sandbox_image: config.sandbox_image.as_deref(),
            },
        )
        .with_context(|| format!("generating the config of node {name}"))?;
        fs::write(&layout.config_file, rendered)
            .with_context(|| format!("writing {}", layout.config_file.display()))?;
        if let Some(runc) = &config.runc {
            let link = layout.runc_dir.join("runc");
            std::os::unix::fs::symlink(runc, &link)
                .with_context(|| format!("linking {} to {}", link.display(), runc.display()))?;
        }
        let daemon = Daemon::spawn(build, &layout)?;

        let node = Self {
            name,
            build: build.clone(),
            layout,
            registry_config_path,
            daemon,
            workdir,
        };
        node.wait_until_ready().await?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn build(&self) -> &ContainerdBuild {
        &self.build
    }

    /// The node's private directory; everything the node writes is under it.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// containerd's gRPC socket; the ttrpc one is next to it with a `.ttrpc` suffix.
    pub fn socket(&self) -> &Path {
        &self.layout.socket
    }

    pub fn config_file(&self) -> &Path {
        &self.layout.config_file
    }

    /// containerd's stdout and stderr.
    pub fn log_file(&self) -> &Path {
        &self.layout.log_file
    }

    /// The node's private hosts directory (`certs.d` layout); containerd reads it only
    /// when the node was started with [`RegistryConfigPath::NodeDefault`].
    pub fn certs_dir(&self) -> &Path {
        &self.layout.certs_dir
    }

    /// containerd's content store directory, where the agent reads blobs.
    pub fn content_dir(&self) -> PathBuf {
        self.layout.root.join(CONTENT_DIR)
    }

    /// Gives a tmpfs content store ([`NodeConfig::content_store_bytes`])
    /// a new size, as an operator frees or adds disk; what it holds stays.
    pub fn resize_content_store(&self, bytes: u64) -> Result<()> {
        let content = self.content_dir();
        mount(
            None::<&str>,
            &content,
            None::<&str>,
            MsFlags::MS_REMOUNT,
            Some(format!("size={bytes}").as_str()),
        )
        .with_context(|| {
            format!(
                "resizing the tmpfs on {} to {bytes} bytes",
                content.display()
            )
        })
    }

    /// Bytes in use on the content store's filesystem: with a tmpfs store,
    /// the least it can be shrunk to.
    pub fn content_store_used(&self) -> Result<u64> {
        let content = self.content_dir();
        let stats = nix::sys::statvfs::statvfs(&content)
            .with_context(|| format!("statvfs of {}", content.display()))?;
        Ok((stats.blocks() - stats.blocks_free()) * stats.fragment_size())
    }

    /// Bytes containerd has written into its ingest files so far: how far
    /// the downloads in progress have come.
    pub fn ingest_bytes(&self) -> u64 {
        let Ok(entries) = fs::read_dir(self.content_dir().join("ingest")) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| fs::metadata(e.path().join("data")).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Checks that the content store holds each of `digests` whole, its
    /// bytes hashing to the digest, and that nothing is left half-written
    /// in its ingest directory: what no fault may leave behind.
    pub fn verify_content(&self, digests: &[String]) -> Result<()> {
        let blobs = self.content_dir().join("blobs/sha256");
        for digest in digests {
            let hex = digest
                .strip_prefix("sha256:")
                .with_context(|| format!("{digest} is not a sha256 digest"))?;
            let mut file = File::open(blobs.join(hex)).with_context(|| {
                format!("opening {digest} in node {}'s content store", self.name)
            })?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher)
                .with_context(|| format!("reading {digest} from node {}", self.name))?;
            let stored = hex::encode(hasher.finalize());
            ensure!(
                stored == hex,
                "node {} stored {digest} with bytes that hash to sha256:{stored}",
                self.name
            );
        }
        let ingest = self.content_dir().join("ingest");
        let leftovers: Vec<_> = fs::read_dir(&ingest)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            leftovers.is_empty(),
            "node {} left {} half-written entries in {}: {leftovers:?}",
            self.name,
            leftovers.len(),
            ingest.display()
        );
        Ok(())
    }

    /// The CRI `config_path` written into the config, if any.
    pub fn registry_config_path(&self) -> Option<&str> {
        self.registry_config_path.as_deref()
    }

    /// The daemon's pid, also its process group id.
    pub fn pid(&self) -> u32 {
        self.daemon.child.id()
    }

    /// Shuts containerd down gracefully (SIGTERM, then SIGKILL to its process group after
    /// 10 s), unmounts anything left under the node directory and removes it, unless
    /// [`keep_requested`].
    pub async fn stop(self) -> Result<()> {
        let Self {
            name,
            daemon,
            workdir,
            ..
        } = self;
        daemon.shutdown(&name).await?;
        workdir.remove()
    }

    /// Restarts containerd as a node's init system would after a crash or an upgrade:
    /// SIGTERM (SIGKILL to the process group after 10 s), then the same binary on the
    /// same root, state, socket and config, and waits until it answers Version again.
    /// Content and images survive; clients such as the agent see their connections
    /// and event streams break and must reconnect on their own. The log keeps both runs.
    pub async fn restart(&mut self) -> Result<()> {
        self.daemon.terminate(&self.name).await?;
        self.daemon = Daemon::spawn(&self.build, &self.layout)
            .with_context(|| format!("restarting containerd of node {}", self.name))?;
        self.wait_until_ready().await
    }

    async fn wait_until_ready(&self) -> Result<()> {
        let patience = patience()?;
        let started = Instant::now();
        let mut last_error = String::from("the socket never appeared");
        loop {
            if let Some(status) = self.daemon.exit_status()? {
                bail!(
                    "containerd {} of node {} exited ({status}) before it answered on {}\n{}",
                    self.build.package_version,
                    self.name,
                    self.layout.socket.display(),
                    self.log_excerpt()
                );
            }
            if self.layout.socket.exists() {
                match answers_version(&self.layout.socket).await {
                    Ok(()) => return Ok(()),
                    Err(err) => last_error = format!("{err:#}"),
                }
            }
            if started.elapsed() >= patience {
                bail!(
                    "containerd {} of node {} did not answer Version on {} within {patience:?} \
                     (last attempt: {last_error}); raise {PATIENCE_ENV} on a slow host\n{}",
                    self.build.package_version,
                    self.name,
                    self.layout.socket.display(),
                    self.log_excerpt()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The end of containerd's log, for startup errors: the failed node is dropped, and
    /// its directory with it, before anyone could read the file.
    fn log_excerpt(&self) -> String {
        let tail = match fs::read(&self.layout.log_file) {
            Ok(log) => {
                let log = String::from_utf8_lossy(&log);
                let lines: Vec<_> = log.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(err) => format!("(unreadable: {err})"),
        };
        format!(
            "{} (kept only with {KEEP_ENV}=1) ends with:\n{tail}",
            self.layout.log_file.display()
        )
    }
}

/// How long a daemon of the harness may take to become ready: `REFLEKTOR_E2E_PATIENCE_SECS`,
/// else 30 s.
pub(crate) fn patience() -> Result<Duration> {
    let Some(secs) = env::var_os(PATIENCE_ENV) else {
        return Ok(DEFAULT_PATIENCE);
    };
    secs.to_str()
        .and_then(|secs| secs.trim().parse().ok())
        .map(Duration::from_secs)
        .with_context(|| format!("{PATIENCE_ENV}={secs:?} is not a whole number of seconds"))
}

/// Ready means serving the API, not merely having created the socket file.
async fn answers_version(socket: &Path) -> Result<()> {
    let probe = async {
        let client = Client::from_path(socket).await.context("connecting")?;
        client
            .version()
            .version(())
            .await
            .context("calling Version")?;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .context("Version did not answer within 2s")?
}

/// Where a node keeps what: derived from its directory alone.
#[derive(Debug)]
struct Layout {
    dir: PathBuf,
    root: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    ttrpc_socket: PathBuf,
    config_file: PathBuf,
    certs_dir: PathBuf,
    cni_bin_dir: PathBuf,
    cni_conf_dir: PathBuf,
    /// First on containerd's PATH: empty, or a `runc` standing in for the build's.
    runc_dir: PathBuf,
    log_file: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        let socket = dir.join("containerd.sock");
        let mut ttrpc_socket = socket.clone().into_os_string();
        ttrpc_socket.push(".ttrpc");
        Self {
            dir: dir.to_owned(),
            root: dir.join("root"),
            state: dir.join("state"),
            socket,
            ttrpc_socket: ttrpc_socket.into(),
            config_file: dir.join("config.toml"),
            certs_dir: dir.join("certs.d"),
            cni_bin_dir: dir.join("cni/bin"),
            cni_conf_dir: dir.join("cni/net.d"),
            runc_dir: dir.join("runc"),
            log_file: dir.join("containerd.log"),
        }
    }

    fn create(&self) -> Result<()> {
        let longest = self.ttrpc_socket.as_os_str().len();
        ensure!(
            longest <= MAX_SOCKET_PATH,
            "socket path {} is {longest} bytes, over the {MAX_SOCKET_PATH}-byte limit of unix sockets; \
             point {WORK_ENV} at a shorter directory or use a shorter node name",
            self.ttrpc_socket.display()
        );
        for dir in [
            &self.root,
            &self.state,
            &self.certs_dir,
            &self.cni_bin_dir,
            &self.cni_conf_dir,
            &self.runc_dir,
        ] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }
}

/// The containerd process, leader of its own process group so that it and anything it
/// spawned into the group can be killed together.
#[derive(Debug)]
struct Daemon {
    child: Child,
    /// Once reaped, the pid may be reused: never signal it again.
    reaped: bool,
}

impl Daemon {
    fn spawn(build: &ContainerdBuild, layout: &Layout) -> Result<Self> {
        // Appending keeps the output of every run, across restarts.
        let log = File::options()
            .create(true)
            .append(true)
            .open(&layout.log_file)
            .with_context(|| format!("opening {}", layout.log_file.display()))?;
        let stderr = log
            .try_clone()
            .with_context(|| format!("sharing {}", layout.log_file.display()))?;
        let bin = build.containerd_bin();
        // containerd finds its shim, and the shim runc, on PATH: the build's own,
        // unless the node's runc directory holds a replacement.
        let path = std::env::join_paths(
            [
                layout.runc_dir.clone(),
                build.root.join("usr/bin"),
                build.root.join("usr/sbin"),
            ]
            .into_iter()
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
        )
        .context("a PATH with the build's directories")?;
        let child = Command::new(&bin)
            .env("PATH", path)
            .arg("--config")
            .arg(&layout.config_file)
            .current_dir(&layout.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Ok(Self {
            child,
            reaped: false,
        })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().try_into().expect("pids fit in pid_t"))
    }

    /// The exit status if containerd has exited, without reaping it: as long as the
    /// zombie exists its pid, and so its process group id, cannot be reused.
    fn exit_status(&self) -> Result<Option<String>> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let status = waitid(Id::Pid(self.pid()), flags)
            .with_context(|| format!("checking on containerd (pid {})", self.pid()))?;
        Ok(match status {
            WaitStatus::StillAlive => None,
            WaitStatus::Exited(_, code) => Some(format!("exit code {code}")),
            WaitStatus::Signaled(_, signal, _) => Some(format!("killed by {signal}")),
            other => Some(format!("{other:?}")),
        })
    }

    async fn shutdown(mut self, name: &str) -> Result<()> {
        self.terminate(name).await
    }

    /// SIGTERM, a grace period, then [`Daemon::kill`]; afterwards the daemon is reaped
    /// and may be replaced.
    async fn terminate(&mut self, name: &str) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        match kill(self.pid(), Signal::SIGTERM) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("sending SIGTERM to node {name}"));
            }
        }
        let deadline = Instant::now() + GRACE;
        while self.exit_status()?.is_none() {
            if Instant::now() >= deadline {
                eprintln!(
                    "node {name}: containerd ignored SIGTERM for {GRACE:?}; killing its process group"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        Ok(())
    }

    /// SIGKILLs the whole process group, leftovers of a graceful exit included, then reaps.
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // ESRCH: the group is already empty but for the zombie leader.
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The node's temporary directory, canonicalized because `/proc/self/mountinfo` reports
/// mount points with symlinks resolved.
#[derive(Debug)]
struct Workdir {
    /// `None` once removed or kept.
    dir: Option<TempDir>,
    path: PathBuf,
}

impl Workdir {
    fn create(name: &str) -> Result<Self> {
        let parent = work_parent();
        fs::create_dir_all(&parent)
            .with_context(|| format!("creating the node parent directory {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("reflektor-node-{name}-"))
            .tempdir_in(&parent)
            .with_context(|| format!("creating a node directory in {}", parent.display()))?;
        let path = dir
            .path()
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.path().display()))?;
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn remove(mut self) -> Result<()> {
        self.release()
    }

    /// Unmounts what is left under the directory, then deletes it or, if asked, keeps it.
    fn release(&mut self) -> Result<()> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        kill_shims_of(&self.path);
        if let Err(err) = unmount_under(&self.path) {
            // Deleting recursively would reach into whatever is still mounted.
            let kept = dir.keep();
            return Err(err.context(format!("left {} in place", kept.display())));
        }
        if keep_requested() {
            eprintln!("kept node directory {}", dir.keep().display());
            return Ok(());
        }
        dir.close()
            .with_context(|| format!("removing node directory {}", self.path.display()))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Err(err) = self.release() {
            eprintln!(
                "cleaning up node directory {}: {err:#}",
                self.path.display()
            );
        }
    }
}

/// Kills every shim the node's containerd started, and everything under
/// each (the pod's containers: a shim is their subreaper), so that a failed
/// or interrupted run leaves no pod behind. Shims are made to outlive
/// containerd, for its restarts, so stopping containerd does not end them;
/// a shim names its containerd's socket, under `dir`, on its command line.
/// Pods deleted through CRI have no shim left, and this finds nothing.
fn kill_shims_of(dir: &Path) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    // (pid, parent pid) of every process, and which ones are this node's shims.
    let mut parents = Vec::new();
    let mut shims = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<i32>().ok())
        else {
            continue;
        };
        parents.push((pid, ppid));
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let mut args = cmdline
            .split(|&b| b == 0)
            .map(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)));
        let is_shim = args
            .next()
            .and_then(|argv0| argv0.file_name())
            .is_some_and(|name| name.to_string_lossy().starts_with("containerd-shim"));
        if is_shim && args.any(|arg| arg.starts_with(dir)) {
            shims.push(pid);
        }
    }
    let mut doomed = shims.clone();
    let mut next = 0;
    while next < doomed.len() {
        let parent = doomed[next];
        doomed.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    if !shims.is_empty() {
        eprintln!(
            "node directory {}: killing {} leftover shim(s) and the {} process(es) under them",
            dir.display(),
            shims.len(),
            doomed.len() - shims.len()
        );
    }
    for pid in doomed {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Detaches every mount at or below `dir`, deepest first, e.g. overlay rootfs a shim
/// left behind; otherwise deleting the directory would fail or reach into the mounts.
fn unmount_under(dir: &Path) -> Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo to find mounts under a node directory")?;
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mount| mount.starts_with(dir))
        .collect();
    mounts.sort_by_key(|mount| std::cmp::Reverse(mount.components().count()));
    for mount in mounts {
        match umount2(&mount, MntFlags::MNT_DETACH) {
            // Already gone with a parent that was detached first.
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("unmounting {}", mount.display()));
            }
        }
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash in paths as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsString::from_vec(out).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mountinfo(r"/tmp/a\040b\134c"),
            Path::new(r"/tmp/a b\c")
        );
        assert_eq!(unescape_mountinfo("/plain"), Path::new("/plain"));
    }

    #[test]
    fn layout_puts_ttrpc_next_to_grpc() {
        let layout = Layout::new(Path::new("/w"));
        assert_eq!(layout.socket, Path::new("/w/containerd.sock"));
        assert_eq!(layout.ttrpc_socket, Path::new("/w/containerd.sock.ttrpc"));
    }
}
