//! Command-line interface. Flag and environment variable names follow
//! Spegel's, so that a Spegel DaemonSet can switch to reflektor without a
//! rewrite.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::doctor;
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
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
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

    /// How to print the report.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
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
    let target = doctor::Target {
        containerd_sock: args.containerd_sock.clone(),
        containerd_config: args.containerd_config.clone(),
        registry_config_path: args.containerd_registry_config_path.clone(),
    };
    let report = doctor::run(&target).await;
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
