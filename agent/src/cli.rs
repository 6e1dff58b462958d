//! Command-line interface: argument definitions only; `cmd` runs them.
//! Flag and environment variable names follow Spegel's, so that a Spegel
//! DaemonSet can switch to reflektor without a rewrite.
//!
//! Every input that more than one command reads is declared once, in a
//! struct the commands flatten, and parsed into one typed value: a DaemonSet
//! sets the same environment for all its containers, and each must read it
//! alike.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::duration::GoDuration;
use crate::manifests::ContainerdPaths;
use crate::mirror_config::{DialTimeout, MirrorTarget, MirroredRegistry};

#[derive(Debug, Parser)]
#[command(
    name = "reflektor",
    version,
    about = "A stateless, cluster-local OCI registry mirror for containerd nodes",
    long_about = "A stateless, cluster-local OCI registry mirror for containerd nodes.\n\n\
        It runs on every node, serves the images already in the node's containerd content \
        store to the other nodes, and points containerd at itself through hosts.toml mirror \
        files. Start with `reflektor doctor` to see whether this node's containerd can work \
        with it."
)]
pub struct Cli {
    /// Minimum level of log lines written to stderr: error, warn, info, debug or trace.
    /// debug and trace apply to reflektor's own modules (libraries stay at info);
    /// a filter such as "info,libp2p_kad=debug" is taken as written.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,

    /// Log line format on stderr.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Judge a runtime version string the way the agent does at start-up.
    ///
    /// Prints one JSON object. Versions are parsed like Kubernetes'
    /// ParseGeneric, so distribution suffixes such as ~ds1, +unknown or -k3s1
    /// are accepted. Exit code: 0 supported or unknown, 1 too old, 2 usage
    /// error.
    CheckVersion(CheckVersionArgs),

    /// Check whether this node's containerd can work with reflektor.
    ///
    /// Connects to containerd, judges its version, and checks the CRI
    /// registry config_path and discard_unpacked_layers, from CRI where
    /// containerd reports them (1.x) and from its config file otherwise (2.x).
    /// Every failed check comes with the fix. Exit code: 0 when nothing failed,
    /// 1 otherwise.
    Doctor(DoctorArgs),

    /// Point containerd at the mirror with hosts.toml files.
    ///
    /// Writes <config path>/<registry>/hosts.toml for each mirrored registry
    /// (or _default/hosts.toml for all), listing the mirror targets before the
    /// upstream. First it runs doctor's config_path check: when containerd
    /// does not read the directory, it writes nothing and says how to fix
    /// it. The first run moves the existing files into _backup, which
    /// `reflektor cleanup` restores; files reflektor did not write are never
    /// deleted. Exit code: 0 done, 1 containerd would not read the files or a
    /// filesystem error, 2 a usage error.
    Configuration(ConfigurationArgs),

    /// Undo `configuration`: restore _backup exactly and remove reflektor's files.
    ///
    /// Without a backup, removes only the hosts.toml files reflektor marked
    /// as its own. Safe to run twice. With --addr it then answers GET
    /// /readyz with 200 until stopped, so that `cleanup-wait` (or a
    /// DaemonSet's rollout) can tell that this node is clean.
    Cleanup(CleanupArgs),

    /// Wait until every node's `cleanup --addr` answers: the last step of an
    /// uninstall.
    ///
    /// Resolves --probe-endpoint's host (a headless Service naming every
    /// cleanup pod) every --period, asks each address for /readyz, and
    /// exits 0 once every one answered 200 in --threshold rounds in a row.
    /// Runs until then, or until stopped.
    CleanupWait(CleanupWaitArgs),

    /// Print the Kubernetes objects that install reflektor on every node.
    ///
    /// `reflektor manifests | kubectl apply -f -` installs the DaemonSet
    /// (init container `configuration`, container `registry`), its Services
    /// and ServiceAccount; --cleanup prints what uninstalls it cleanly. The
    /// defaults are `deploy/` in the source tree.
    Manifests(Box<ManifestsArgs>),

    /// Run the mirror: serve this node's images to the other nodes.
    ///
    /// Serves the OCI distribution pull API (GET and HEAD of manifests and
    /// blobs) from containerd's content store, or from an OCI image-layout
    /// directory with --oci-layout. Before serving it runs doctor's checks:
    /// a containerd older than 1.5 or a failed configuration check stops it
    /// with the fix; an unknown version is a warning.
    Registry(Box<RegistryArgs>),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Runtime {
    Containerd,
}

#[derive(Debug, Args)]
pub struct CheckVersionArgs {
    /// The runtime whose policy applies.
    #[arg(long, value_enum, default_value = "containerd")]
    pub runtime: Runtime,

    /// The version string as the runtime reports it, e.g. "1.6.20~ds1".
    #[arg(value_name = "VERSION", allow_hyphen_values = true)]
    pub version: OsString,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where reflektor writes `hosts.toml` files; read by every command that
/// touches them.
#[derive(Debug, Args)]
pub struct RegistryConfigPathArgs {
    /// Where reflektor writes hosts.toml mirror files; containerd's registry
    /// config_path must include it.
    #[arg(
        long,
        env = "CONTAINERD_REGISTRY_CONFIG_PATH",
        default_value = "/etc/containerd/certs.d"
    )]
    pub containerd_registry_config_path: PathBuf,
}

/// Where containerd is and how it is set up; shared by doctor and registry.
#[derive(Debug, Args)]
pub struct ContainerdArgs {
    /// containerd's gRPC socket.
    #[arg(
        long,
        env = "CONTAINERD_SOCK",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_sock: PathBuf,

    /// containerd's config file, read when CRI does not report its settings.
    #[arg(
        long,
        env = "CONTAINERD_CONFIG",
        default_value = "/etc/containerd/config.toml"
    )]
    pub containerd_config: PathBuf,

    #[command(flatten)]
    pub registry_config_path: RegistryConfigPathArgs,
}

/// What is mirrored, and how tags are treated: `configuration` writes it
/// into hosts.toml and `registry` serves and advertises by it, from the
/// same environment.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// Registries to mirror, such as https://docker.io or http://10.0.0.5:5000,
    /// comma-separated or repeated. None (or empty), "_default" or "*" means
    /// every registry.
    #[arg(
        long,
        env = "MIRRORED_REGISTRIES",
        value_name = "URL",
        num_args = 1..,
        value_delimiter = ',',
        value_parser = MirroredRegistry::parse_item
    )]
    pub mirrored_registries: Vec<Option<MirroredRegistry>>,

    /// Let mirrors resolve tags to digests: `configuration` gives mirror
    /// hosts the resolve capability, and `registry` looks tags up on peers.
    /// With --resolve-tags=false, tags are resolved by the upstream and
    /// mirrors serve content by digest only.
    #[arg(
        long,
        env = "RESOLVE_TAGS",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub resolve_tags: bool,
}

impl MirrorArgs {
    /// The registries named, without the empty items a manifest uses to
    /// say "none".
    pub fn registries(&self) -> Vec<MirroredRegistry> {
        self.mirrored_registries.iter().flatten().cloned().collect()
    }
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub containerd: ContainerdArgs,

    /// How to print the report.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Address the registry listens on; ":5000" means every interface.
    #[arg(long, env = "REGISTRY_ADDR", default_value = ":5000")]
    pub registry_addr: String,

    /// Address /metrics is served on.
    #[arg(long, env = "METRICS_ADDR", default_value = ":9090")]
    pub metrics_addr: String,

    #[command(flatten)]
    pub containerd: ContainerdArgs,

    /// containerd namespace whose images are served; kubelet's is k8s.io.
    #[arg(long, env = "CONTAINERD_NAMESPACE", default_value = "k8s.io")]
    pub containerd_namespace: String,

    /// containerd's content store directory; blobs are sent from here with
    /// sendfile(2), or through containerd's API when it is not readable.
    #[arg(
        long,
        env = "CONTAINERD_CONTENT_PATH",
        default_value = "/var/lib/containerd/io.containerd.content.v1.content"
    )]
    pub containerd_content_path: PathBuf,

    /// Serve an OCI image-layout directory instead of containerd (development,
    /// benchmarks, air-gapped seeding); skips the containerd checks.
    #[arg(long, env = "OCI_LAYOUT", value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,

    #[command(flatten)]
    pub mirror: MirrorArgs,

    /// Regular expressions, comma-separated or repeated; a reference such as
    /// docker.io/library/nginx:latest that matches one is neither served nor
    /// advertised.
    #[arg(long, env = "REGISTRY_FILTERS", num_args = 1.., value_delimiter = ',')]
    pub registry_filters: Vec<String>,

    /// Answer `:latest` tags, from this node or its peers. With
    /// --resolve-latest-tag=false they are neither served nor advertised,
    /// so containerd resolves them upstream: "latest" moves, and a peer may
    /// hold an older one.
    #[arg(
        long,
        env = "RESOLVE_LATEST_TAG",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub resolve_latest_tag: bool,

    #[command(flatten)]
    pub peers: PeerArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub ignored: SpegelOnlyArgs,
}

/// Basic-auth credentials, where Spegel reads them.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// Directory holding the files `username` and `password`: a mounted
    /// Secret, as Spegel's chart mounts basicAuthSecretName. With them,
    /// /v2/ requires these credentials, peers are sent them, and
    /// `configuration` writes them into hosts.toml for containerd. Missing
    /// or empty files mean no auth.
    #[arg(long, env = "BASIC_AUTH_DIR", value_name = "DIR", default_value = crate::auth::DEFAULT_DIR)]
    pub basic_auth_dir: PathBuf,
}

/// Bounds on what clients and peers may make the agent hold; each hit is
/// counted in reflektor_limit_hits_total and logged, rate-limited.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Registry connections open at once; more wait in the kernel's accept
    /// queue until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// How long a client may take to send a whole request head, from its
    /// first byte; a slower one (slowloris) is disconnected. A Go duration.
    #[arg(long, env = "REQUEST_HEADER_TIMEOUT", default_value = "10s")]
    pub request_header_timeout: GoDuration,

    /// How long a kept-alive connection may sit idle between requests.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s")]
    pub idle_timeout: GoDuration,

    /// The largest request head in bytes; a larger one gets 431.
    #[arg(long, env = "MAX_REQUEST_HEADER_BYTES", default_value_t = 16384,
        value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_request_header_bytes: u32,

    /// Requests forwarded to peers at once, bodies included; past it, a
    /// request for content this node lacks is answered 404 at once, so
    /// containerd goes to the next mirror or the upstream.
    #[arg(long, env = "MAX_PEER_REQUESTS", default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_peer_requests: u32,
}

/// Flags Spegel's chart passes that reflektor has no use for. They are
/// accepted so that a Spegel DaemonSet runs unchanged, and do nothing.
#[derive(Debug, Args)]
#[command(next_help_heading = "Accepted from Spegel and ignored")]
pub struct SpegelOnlyArgs {
    /// Ignored: reflektor has no debug web page; its state is in the
    /// metrics and, at --log-level debug, one log line per request.
    #[arg(
        long,
        env = "DEBUG_WEB_ENABLED",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub debug_web_enabled: bool,

    /// Ignored: reflektor exports no OpenTelemetry traces (a warning says
    /// so when an endpoint is set).
    #[arg(long, env = "OTEL_ENDPOINT", value_name = "URL")]
    pub otel_endpoint: Option<String>,

    /// Ignored, as --otel-endpoint.
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub otel_service_name: Option<String>,

    /// Ignored, as --otel-endpoint.
    #[arg(long, env = "OTEL_SAMPLER", value_name = "SAMPLER")]
    pub otel_sampler: Option<String>,

    /// Ignored, as --otel-endpoint.
    #[arg(
        long,
        env = "OTEL_INSECURE",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub otel_insecure: bool,
}

/// Peer-to-peer routing: how nodes find each other and which has what.
/// Without --bootstrap-kind the node serves only its own content.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// How to find the first peers: static (--static-bootstrap-peers), dns
    /// (--dns-bootstrap-domain) or http (--http-bootstrap-url).
    #[arg(long, env = "BOOTSTRAP_KIND", value_enum)]
    pub bootstrap_kind: Option<BootstrapKind>,

    /// Address the libp2p router listens on; ":5001" means every interface.
    #[arg(long, env = "ROUTER_ADDR", default_value = ":5001")]
    pub router_addr: String,

    /// Where the node keeps its identity key, so a restarted agent keeps its
    /// peer id. Empty (as Spegel's chart sets DATA_DIR="") keeps the key in
    /// memory only: a new peer id at every start.
    #[arg(long, env = "DATA_DIR", default_value = "/var/lib/reflektor")]
    pub data_dir: DataDir,

    /// A libp2p pre-shared key file (/key/swarm/psk/1.0.0/): only nodes with
    /// the same key can join.
    #[arg(long, env = "ROUTER_PSK_FILE", value_name = "FILE")]
    pub router_psk_file: Option<PathBuf>,

    /// Multiaddrs of peers, e.g. /ip4/10.0.0.5/tcp/5001 (a /p2p/<id> suffix
    /// is optional).
    #[arg(
        long,
        env = "STATIC_BOOTSTRAP_PEERS",
        num_args = 1..,
        value_delimiter = ','
    )]
    pub static_bootstrap_peers: Vec<String>,

    /// A name whose A/AAAA records are the peers, e.g. a headless Service;
    /// the port is --router-addr's.
    #[arg(long, env = "DNS_BOOTSTRAP_DOMAIN")]
    pub dns_bootstrap_domain: Option<String>,

    /// Serve this node's addresses at http://ADDR/id for other nodes'
    /// --http-bootstrap-url.
    #[arg(long, env = "HTTP_BOOTSTRAP_ADDR")]
    pub http_bootstrap_addr: Option<String>,

    /// Another node's /id endpoint, e.g. http://10.0.0.5:5002/id.
    #[arg(long, env = "HTTP_BOOTSTRAP_URL")]
    pub http_bootstrap_url: Option<String>,

    /// Spegel's name for --http-bootstrap-url.
    #[arg(
        long,
        env = "HTTP_BOOTSTRAP_PEER",
        hide = true,
        conflicts_with = "http_bootstrap_url"
    )]
    pub http_bootstrap_peer: Option<String>,

    /// How long to wait for the first peer that has a key before answering
    /// 404, so containerd falls back to the next mirror or the upstream; a
    /// Go duration.
    #[arg(long, env = "MIRROR_RESOLVE_TIMEOUT", default_value = "20ms")]
    pub mirror_resolve_timeout: GoDuration,

    /// How many peers to try for one request.
    #[arg(long, env = "MIRROR_RESOLVE_RETRIES", default_value_t = 3)]
    pub mirror_resolve_retries: usize,

    /// How long a node that misses a blob nobody provides waits for the
    /// node chosen to fetch it from the upstream. When several nodes miss
    /// the same blob at once (a rollout), one of them, picked the same way
    /// by all through the DHT, fetches it, and the others stream its
    /// download as it arrives, so the upstream sends the blob once. A node
    /// whose leader advertises nothing in this time goes to the upstream
    /// itself. Every such miss first waits 150 ms for the others to say
    /// they want the blob too. 0s turns this off: each node that misses
    /// goes to the upstream at once. A Go duration.
    #[arg(long, env = "MIRROR_HERD_WAIT", default_value = "3s")]
    pub mirror_herd_wait: GoDuration,

    /// Hash every whole body relayed from a peer and cut the response short
    /// when it does not match the digest asked for, so that a corrupt or
    /// lying peer's bytes never pass as good. Costs about 0.8 CPU-seconds
    /// per GiB on the relaying node; containerd checks digests itself, so
    /// --verify-peer-content=false is safe where only containerd pulls.
    #[arg(
        long,
        env = "VERIFY_PEER_CONTENT",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub verify_peer_content: bool,
}

/// `--data-dir`: a directory, or nothing at all when given empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir(pub Option<PathBuf>);

impl std::str::FromStr for DataDir {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(DataDir((!text.is_empty()).then(|| PathBuf::from(text))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootstrapKind {
    Static,
    Dns,
    Http,
}

#[derive(Debug, Args)]
pub struct ConfigurationArgs {
    /// containerd is asked (or its config file read) whether its registry
    /// config_path includes the directory written to, before anything is.
    #[command(flatten)]
    pub containerd: ContainerdArgs,

    #[command(flatten)]
    pub mirror: MirrorArgs,

    /// Where containerd tries first, in this order, such as
    /// http://127.0.0.1:30020; comma-separated or repeated.
    #[arg(
        long,
        env = "MIRROR_TARGETS",
        value_name = "URL",
        num_args = 1..,
        value_delimiter = ',',
        required = true
    )]
    pub mirror_targets: Vec<MirrorTarget>,

    /// Keep the existing configuration in effect after reflektor's hosts,
    /// instead of only in _backup.
    #[arg(
        long,
        env = "PREPEND_EXISTING",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub prepend_existing: bool,

    /// How long containerd waits to connect to a mirror before trying the
    /// next host, as a Go duration. Not a Spegel flag; Spegel always
    /// writes 200ms.
    #[arg(long, env = "DIAL_TIMEOUT", default_value = "200ms")]
    pub dial_timeout: DialTimeout,

    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub registry_config_path: RegistryConfigPathArgs,

    /// After cleaning up, answer GET /readyz here until stopped, e.g. ":8080".
    #[arg(long, env = "ADDR")]
    pub addr: Option<String>,
}

#[derive(Debug, Args)]
pub struct CleanupWaitArgs {
    /// HOST:PORT of the cleanup pods, e.g. a headless Service such as
    /// reflektor-cleanup.kube-system.svc.cluster.local.:8080.
    #[arg(long, env = "PROBE_ENDPOINT")]
    pub probe_endpoint: String,

    /// Rounds in a row in which every address answers, before it is done.
    #[arg(long, env = "THRESHOLD", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub threshold: u32,

    /// Time between rounds, a Go duration.
    #[arg(long, env = "PERIOD", default_value = "2s")]
    pub period: GoDuration,
}

/// Where a Kubernetes distribution runs containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// /run/containerd, /var/lib/containerd, /etc/containerd: kubeadm,
    /// kind, most distributions.
    Standard,
    /// The containerd embedded in k3s.
    K3s,
    /// The containerd embedded in rke2.
    Rke2,
}

impl Preset {
    /// The containerd paths this distribution uses.
    pub fn containerd_paths(self) -> ContainerdPaths {
        match self {
            Preset::Standard => ContainerdPaths::standard(),
            Preset::K3s => ContainerdPaths::rancher("k3s"),
            Preset::Rke2 => ContainerdPaths::rancher("rke2"),
        }
    }
}

/// `reflektor manifests`. None of these read the environment: a DaemonSet's
/// variables are the agent's, not the generator's.
#[derive(Debug, Args)]
pub struct ManifestsArgs {
    /// Namespace for every object; created with the Pod Security label that
    /// admits host networking and host paths.
    #[arg(long, default_value = "reflektor")]
    pub namespace: String,

    /// The agent's image [default: ghcr.io/reflektor/reflektor:<this version>].
    #[arg(long)]
    pub image: Option<String>,

    /// Where containerd's socket, content store, certs.d and config are.
    #[arg(long, value_enum, default_value = "standard")]
    pub preset: Preset,

    /// containerd's socket, overriding the preset.
    #[arg(long, value_name = "PATH")]
    pub containerd_sock: Option<String>,

    /// containerd's content store, overriding the preset.
    #[arg(long, value_name = "PATH")]
    pub containerd_content_path: Option<String>,

    /// The certs.d directory in containerd's registry config_path,
    /// overriding the preset.
    #[arg(long, value_name = "PATH")]
    pub containerd_registry_config_path: Option<String>,

    /// containerd's config file, overriding the preset.
    #[arg(long, value_name = "PATH")]
    pub containerd_config: Option<String>,

    /// Registries to mirror, such as https://docker.io; none means every
    /// registry.
    #[arg(long, value_name = "URL", num_args = 1.., value_delimiter = ',')]
    pub mirrored_registries: Vec<MirroredRegistry>,

    /// Mirrors containerd tries after the node's own agent.
    #[arg(long, value_name = "URL", num_args = 1.., value_delimiter = ',')]
    pub additional_mirror_targets: Vec<MirrorTarget>,

    /// As the agent's --resolve-tags.
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub resolve_tags: bool,

    /// As `configuration`'s --prepend-existing.
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub prepend_existing: bool,

    /// The agent's registry port on every node (host network).
    #[arg(long, default_value_t = 5000)]
    pub registry_port: u16,

    /// The agent's libp2p port on every node.
    #[arg(long, default_value_t = 5001)]
    pub router_port: u16,

    /// The agent's metrics port on every node.
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,

    /// The port each node's cleanup pod answers on while an uninstall runs
    /// (host network, the node's address only).
    #[arg(long, default_value_t = 8080)]
    pub cleanup_port: u16,

    /// The host directory that keeps each node's identity.
    #[arg(long, default_value = "/var/lib/reflektor")]
    pub data_dir: String,

    /// The cluster's DNS domain, for the bootstrap Service's name.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The agents' priority class; empty for none.
    #[arg(long, default_value = "system-node-critical")]
    pub priority_class_name: String,

    #[arg(long, default_value = "10m")]
    pub cpu_request: String,

    #[arg(long, default_value = "64Mi")]
    pub memory_request: String,

    #[arg(long, default_value = "256Mi")]
    pub memory_limit: String,

    /// Taints to tolerate, repeated: KEY, KEY=VALUE, either with :EFFECT,
    /// "all" (the default: a node the agent skips pulls everything from
    /// the upstream) or "none".
    #[arg(long = "toleration", value_name = "SPEC")]
    pub tolerations: Vec<String>,

    /// Node labels the agents need, repeated KEY=VALUE
    /// [default: kubernetes.io/os=linux].
    #[arg(long = "node-selector", value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,

    /// Add a Prometheus Operator ServiceMonitor.
    #[arg(long)]
    pub service_monitor: bool,

    /// Add a Grafana dashboard, as a ConfigMap Grafana's sidecar picks up.
    #[arg(long)]
    pub grafana_dashboard: bool,

    /// Mount this Secret (keys `username` and `password`, e.g. of type
    /// kubernetes.io/basic-auth) at /etc/secrets/basic-auth in both
    /// containers, as Spegel's chart does with basicAuthSecretName: the
    /// mirror then requires those credentials. Create the Secret yourself.
    #[arg(long, value_name = "NAME")]
    pub basic_auth_secret_name: Option<String>,

    /// The agents' log level.
    #[arg(long, default_value = "info")]
    pub agent_log_level: String,

    /// Print the uninstall objects instead: `cleanup` on every node, and a
    /// Job that completes once every node is clean.
    #[arg(long)]
    pub cleanup: bool,

    /// Write reflektor.yaml, cleanup/cleanup.yaml and their
    /// kustomization.yaml files here instead of printing.
    #[arg(long, value_name = "DIR", conflicts_with = "cleanup")]
    pub out_dir: Option<PathBuf>,
}
