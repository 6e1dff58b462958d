//! Command-line interface. Flag and environment variable names follow
//! Spegel's, so that a Spegel DaemonSet can switch to reflektor without a
//! rewrite.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::doctor;
use crate::mirror_config::{self, DialTimeout, MirrorRequest, MirrorTarget, Registry};
use crate::version::{ContainerdPolicy, VerdictKind};

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
    /// upstream. The first run moves the existing files into _backup, which
    /// `reflektor cleanup` restores; files reflektor did not write are never
    /// deleted. Exit code: 0 done, 1 a filesystem error, 2 a usage error.
    Configuration(ConfigurationArgs),

    /// Undo `configuration`: restore _backup exactly and remove reflektor's files.
    ///
    /// Without a backup, removes only the hosts.toml files reflektor marked
    /// as its own. Safe to run twice.
    Cleanup(CleanupArgs),

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

    /// Where reflektor writes hosts.toml mirror files; containerd's registry
    /// config_path must include it.
    #[arg(
        long,
        env = "CONTAINERD_REGISTRY_CONFIG_PATH",
        default_value = "/etc/containerd/certs.d"
    )]
    pub containerd_registry_config_path: PathBuf,
}

impl ContainerdArgs {
    pub fn doctor_target(&self) -> doctor::Target {
        doctor::Target {
            containerd_sock: self.containerd_sock.clone(),
            containerd_config: self.containerd_config.clone(),
            registry_config_path: self.containerd_registry_config_path.clone(),
        }
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

    /// Registries to serve, e.g. https://docker.io,https://ghcr.io; empty
    /// serves every registry.
    #[arg(long, env = "MIRRORED_REGISTRIES", value_delimiter = ',')]
    pub mirrored_registries: Vec<String>,

    /// Regular expressions; a reference such as docker.io/library/nginx:latest
    /// that matches one is not served.
    #[arg(long, env = "REGISTRY_FILTERS", value_delimiter = ',')]
    pub registry_filters: Vec<String>,

    #[command(flatten)]
    pub peers: PeerArgs,
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
    /// peer id.
    #[arg(long, env = "DATA_DIR", default_value = "/var/lib/reflektor")]
    pub data_dir: PathBuf,

    /// A libp2p pre-shared key file (/key/swarm/psk/1.0.0/): only nodes with
    /// the same key can join.
    #[arg(long, env = "ROUTER_PSK_FILE", value_name = "FILE")]
    pub router_psk_file: Option<PathBuf>,

    /// Multiaddrs of peers, e.g. /ip4/10.0.0.5/tcp/5001 (a /p2p/<id> suffix
    /// is optional).
    #[arg(long, env = "STATIC_BOOTSTRAP_PEERS", value_delimiter = ',')]
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

    /// How long to wait for the first peer that has a key before answering
    /// 404, so containerd falls back to the next mirror or the upstream.
    #[arg(long, env = "MIRROR_RESOLVE_TIMEOUT", default_value = "20ms", value_parser = parse_duration)]
    pub mirror_resolve_timeout: std::time::Duration,

    /// How many peers to try for one request.
    #[arg(long, env = "MIRROR_RESOLVE_RETRIES", default_value_t = 3)]
    pub mirror_resolve_retries: usize,

    /// Resolve tags through peers as well as digests.
    #[arg(long, env = "RESOLVE_TAGS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub resolve_tags: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootstrapKind {
    Static,
    Dns,
    Http,
}

/// Go-style durations as Spegel takes them: 20ms, 1s, 1.5s, 2m.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit; expected e.g. 20ms, 1s or 2m"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; expected e.g. 20ms, 1s or 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?} has unit {unit:?}; expected ms, s or m")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Debug, Args)]
pub struct ConfigurationArgs {
    /// Where to write hosts.toml mirror files; containerd's registry
    /// config_path must include it.
    #[arg(
        long,
        env = "CONTAINERD_REGISTRY_CONFIG_PATH",
        default_value = "/etc/containerd/certs.d"
    )]
    pub containerd_registry_config_path: PathBuf,

    /// Registries to mirror, such as https://docker.io or http://10.0.0.5:5000,
    /// comma-separated or repeated. None (or empty) means every registry,
    /// through _default.
    #[arg(
        long,
        env = "MIRRORED_REGISTRIES",
        value_name = "URL",
        num_args = 1..,
        value_delimiter = ',',
        value_parser = Registry::parse_item
    )]
    pub mirrored_registries: Vec<Option<Registry>>,

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

    /// Let mirrors resolve tags to digests. With --resolve-tags=false, tags
    /// are resolved by the upstream and mirrors serve content by digest only.
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
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The directory `configuration` wrote to.
    #[arg(
        long,
        env = "CONTAINERD_REGISTRY_CONFIG_PATH",
        default_value = "/etc/containerd/certs.d"
    )]
    pub containerd_registry_config_path: PathBuf,
}

/// What `check-version` prints.
#[derive(Debug, Serialize)]
struct VersionReport {
    input: String,
    components: Option<Vec<u64>>,
    version: Option<String>,
    suffix: Option<String>,
    /// Whether the suffix is valid SemVer; shown, never used.
    suffix_semver: Option<bool>,
    verdict: VerdictKind,
    minimum: String,
    message: String,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckVersion(args) => Ok(check_version(&args)),
        Command::Doctor(args) => doctor(&args).await,
        Command::Configuration(args) => configuration(args),
        Command::Cleanup(args) => cleanup(&args),
        Command::Registry(args) => crate::serve::run(&args).await,
    }
}

fn check_version(args: &CheckVersionArgs) -> ExitCode {
    let Runtime::Containerd = args.runtime;
    let policy = ContainerdPolicy::new();
    // Bytes that are not UTF-8 become U+FFFD: the numbers a runtime could
    // mean are ASCII, so the verdict is the same as for the raw bytes.
    let input = args.version.to_string_lossy();
    let verdict = policy.evaluate(&input);
    let mut message = verdict.message.clone();
    if args.version.to_str().is_none() {
        message =
            format!("the version is not valid UTF-8; invalid bytes are shown as U+FFFD. {message}");
    }
    let parsed = verdict.parsed.as_ref().ok();
    let report = VersionReport {
        input: input.into_owned(),
        components: parsed.map(|v| v.components().to_vec()),
        version: parsed.map(ToString::to_string),
        suffix: parsed.map(|v| v.suffix().to_owned()),
        suffix_semver: parsed.map(|v| v.suffix_is_semver()),
        verdict: verdict.kind,
        minimum: verdict.minimum.to_string(),
        message,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("a report of strings and numbers serialises")
    );
    match verdict.kind {
        VerdictKind::TooOld => ExitCode::from(1),
        VerdictKind::Supported | VerdictKind::Unknown => ExitCode::SUCCESS,
    }
}

async fn doctor(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = doctor::run(&args.containerd.doctor_target()).await;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            let width = (!std::io::stdout().is_terminal()).then_some(140);
            print!("{}", report.render_table(width));
        }
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn configuration(args: ConfigurationArgs) -> anyhow::Result<ExitCode> {
    let request = MirrorRequest {
        registries: args.mirrored_registries.into_iter().flatten().collect(),
        targets: args.mirror_targets,
        resolve_tags: args.resolve_tags,
        prepend_existing: args.prepend_existing,
        dial_timeout: args.dial_timeout,
    };
    let config = match request.validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("reflektor: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = mirror_config::configure(&args.containerd_registry_config_path, &config)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn cleanup(args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    let report = mirror_config::cleanup(&args.containerd_registry_config_path)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}
