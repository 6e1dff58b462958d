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
    Registry(RegistryArgs),
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
