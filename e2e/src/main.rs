//! `reflektor-e2e`: the harness's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use reflektor::cli::Preset;
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::cluster::{self, ClusterSpec};
use reflektor_e2e::deploy::Deploy;
use reflektor_e2e::deploy::pod::PodImages;
use reflektor_e2e::report::{Check, Column};
use reflektor_e2e::{acceptance, agent_image, demo, matrix, packages};

#[derive(Debug, Parser)]
#[command(
    name = "reflektor-e2e",
    version,
    about = "Runs real containerd builds from distribution packages against the reflektor agent",
    long_about = "Runs real containerd builds from distribution packages against the reflektor agent.\n\n\
        Builds are fetched once (apt-get download with a private apt configuration, or an rpm \
        repository over HTTPS; the system's package state is left alone) into \
        $REFLEKTOR_E2E_CACHE, $XDG_CACHE_HOME/reflektor-e2e or ~/.cache/reflektor-e2e. Each \
        node is a containerd with its own root, state, socket, config and 127.0.1.N address. \
        Needs root. Everything started is stopped at the end, on failure and on Ctrl-C."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the release matrix and write the compatibility report.
    ///
    /// Every cluster file runs as a real cluster; each node gets a row and each
    /// check a cell. Writes report.md, report.json, junit.xml and logs/<cluster>/<node>/
    /// into --out. Exit code 0 when no gated check failed (an expected refusal and an
    /// unavailable package source do not gate), 1 when one did, 2 on a usage or setup
    /// error, 130 when interrupted.
    Matrix {
        /// The directory of cluster files (*.toml), run in file name order.
        #[arg(long, value_name = "DIR", default_value_os_t = cluster::default_cluster_dir())]
        clusters: PathBuf,
        /// Run only this cluster (by name); repeatable.
        #[arg(long, value_name = "CLUSTER")]
        only: Vec<String>,
        /// Run only checks whose key contains this text (e.g. `by-digest`, `node-loss`,
        /// `by-`); repeatable. Version, verdict, doctor and mirror config always run:
        /// the others need them.
        #[arg(long, value_name = "CHECK")]
        filter: Vec<String>,
        /// Where the report and logs go.
        #[arg(long, value_name = "DIR", default_value_os_t = cluster::default_out_dir())]
        out: PathBuf,
        /// How the agent runs on each node: `process`, the binary on the host (quick, for
        /// development), or `pod`, the DaemonSet's pod from `reflektor manifests` run
        /// through the node's CRI from the agent's image (`just image` builds it), as
        /// users install it.
        #[arg(long, value_enum, default_value_t = Deploy::Process)]
        deploy: Deploy,
        /// The agent's image for `--deploy pod` [default: target/image/reflektor.oci.tar].
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
    },
    /// A three-node cluster (Debian bookworm, trixie, sid): one node pulls from the
    /// upstream, the upstream goes offline, the other two pull through their peers.
    Demo,
    /// Build the agent's image: an OCI image-layout archive holding the binary and the
    /// libraries it links, reproducible from the same binary.
    Image {
        /// The agent binary to package.
        #[arg(long, value_name = "FILE", default_value_os_t = workspace_path("target/release/reflektor"))]
        binary: PathBuf,
        /// Where the archive goes.
        #[arg(long, value_name = "FILE", default_value_os_t = workspace_path("target/image/reflektor.oci.tar"))]
        out: PathBuf,
        /// The reference the image is named by when imported.
        #[arg(long, default_value = concat!("ghcr.io/reflektor/reflektor:", env!("CARGO_PKG_VERSION")))]
        name: String,
    },
    /// Run the acceptance suite against a real cluster: kind, k3s, rke2 or a managed one.
    ///
    /// Installs the generated manifests into a fresh namespace with server-side apply, waits
    /// for the DaemonSet's rollout on every Linux node, then checks that every agent has a peer
    /// (through the API server's pod proxy), that a test image pushed to --registry reaches a
    /// second node through its peer, that a deleted agent pod keeps its peer id, and that a
    /// rollout restart rewrites hosts.toml (read on the nodes with --node-shell). Then it
    /// uninstalls through the cleanup path and deletes the namespace, on failure and on the
    /// first Ctrl-C too. Refuses a cluster where reflektor or Spegel already runs. Writes
    /// report.md, report.json and junit.xml into --out. Exit code 0 when every check passed,
    /// 1 when one failed, 2 on a usage or setup error (a wrong kubeconfig, context or
    /// credentials), 3 when no cluster is reachable (nothing was checked).
    Kube {
        /// The kubeconfig to use [default: KUBECONFIG, ~/.kube/config, or in-cluster].
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// The kubeconfig context [default: its current context].
        #[arg(long)]
        context: Option<String>,
        /// The agent's image as the cluster's nodes pull it (for kind: after `kind load
        /// image-archive target/image/reflektor.oci.tar`).
        #[arg(long, default_value = concat!("ghcr.io/reflektor/reflektor:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// Where the nodes run containerd: `k3s` and `rke2` have their own paths, as
        /// `reflektor manifests --preset` knows them.
        #[arg(long, value_enum, default_value = "standard")]
        preset: Preset,
        /// A registry this machine can push to and the nodes pull from: HOST:PORT (HTTPS), or
        /// http://HOST:PORT (for kind: its local registry, http://localhost:5001). With it, a test image is pushed there and pulled by two nodes,
        /// the second through its peer; without it, that check does not run.
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_registry)]
        registry: Option<acceptance::TestRegistry>,
        /// The namespace to install into; it must not exist [default: reflektor-e2e-<random>].
        #[arg(long)]
        namespace: Option<String>,
        /// How to run a shell on a node as root, with {node} for its name: "docker exec -i
        /// {node}" for kind, "ssh root@{node}" elsewhere (the script goes to its standard input). With it, hosts.toml is read on every node throughout the rollout restart, and
        /// the registry is blocked on the node that pulls through its peer.
        #[arg(long, value_name = "COMMAND", value_parser = acceptance::CommandShell::parse)]
        node_shell: Option<acceptance::CommandShell>,
        /// Seconds each wait may take: a rollout, a pod's replacement, a peer, a pull, the
        /// cleanup Job.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        deadline: u64,
        /// Where the report goes.
        #[arg(long, value_name = "DIR", default_value_os_t = workspace_path("target/e2e-kube"))]
        out: PathBuf,
    },
    /// List the clusters and the checks that --only and --filter select from.
    List {
        #[arg(long, value_name = "DIR", default_value_os_t = cluster::default_cluster_dir())]
        clusters: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let finish = |result: Result<ExitCode>| match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("reflektor-e2e: {error:#}");
            ExitCode::from(2)
        }
    };
    // What the cluster suite installed lives in the cluster, not in this
    // process: it handles Ctrl-C itself, uninstalling first.
    if matches!(cli.command, Command::Kube { .. }) {
        return finish(run(cli).await);
    }
    tokio::select! {
        result = run(cli) => finish(result),
        _ = tokio::signal::ctrl_c() => {
            // Returning drops the run: every node, agent and registry it
            // started is killed and its directory removed on the way out.
            eprintln!("reflektor-e2e: interrupted; stopping everything this run started");
            ExitCode::from(130)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::List { clusters } => {
            for spec in ClusterSpec::load_dir(&clusters)? {
                let nodes: Vec<_> = spec
                    .nodes
                    .iter()
                    .map(|n| format!("{} ({})", n.name, n.source))
                    .collect();
                println!("{:<12} {}", spec.name, nodes.join(", "));
            }
            let checks: Vec<_> = Column::ALL.iter().map(|c| c.key()).collect();
            println!("\nchecks: {}", checks.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { binary, out, name } => {
            let built = agent_image::build(&agent_image::ImageSpec::agent(binary, name), &out)?;
            println!("image: {}", built.archive.display());
            println!("manifest: {}", built.manifest_digest);
            println!(
                "size: {:.2} MiB compressed (layer {:.2} MiB)",
                built.archive_bytes as f64 / 1048576.0,
                built.layer_bytes as f64 / 1048576.0
            );
            for library in &built.libraries {
                println!(
                    "library: {} from {} {}",
                    library.path.display(),
                    library.package,
                    library.version
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Kube {
            kubeconfig,
            context,
            image,
            preset,
            registry,
            node_shell,
            namespace,
            deadline,
            out,
        } => {
            if let Some(namespace) = &namespace {
                acceptance::check_namespace(namespace)?;
            }
            let options = acceptance::SuiteOptions {
                kubeconfig,
                context,
                image,
                containerd: preset.containerd_paths(),
                registry,
                node_shell,
                namespace: namespace.unwrap_or_else(|| {
                    format!("reflektor-e2e-{:06x}", rand::random::<u32>() & 0xff_ffff)
                }),
                deadline: std::time::Duration::from_secs(deadline),
                poll: std::time::Duration::from_secs(2),
            };
            match acceptance::run(&options).await? {
                acceptance::Outcome::Unavailable { cluster, reason } => {
                    eprintln!(
                        "reflektor-e2e kube: unavailable: no cluster reachable at {cluster}: {reason}"
                    );
                    eprintln!(
                        "nothing was checked; exit code {}",
                        acceptance::EXIT_UNAVAILABLE
                    );
                    Ok(ExitCode::from(acceptance::EXIT_UNAVAILABLE))
                }
                acceptance::Outcome::Ran(report) => {
                    report.write(&out)?;
                    println!("{}", report.table());
                    let failures = report.failures();
                    for (row, check, cell) in &failures {
                        eprintln!("FAIL {} {}: {}", row.node, check.key(), cell.explanation());
                    }
                    eprintln!(
                        "report: {} (also report.json, junit.xml)",
                        out.join("report.md").display()
                    );
                    let stopped = !report.clusters_stopped().is_empty();
                    Ok(if failures.is_empty() && !stopped {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
            }
        }
        Command::Demo => {
            demo::run(&Reflektor::locate()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Matrix {
            clusters,
            only,
            filter,
            out,
            deploy,
            image,
        } => {
            let mut specs = ClusterSpec::load_dir(&clusters)?;
            for name in &only {
                if !specs.iter().any(|s| &s.name == name) {
                    let known: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
                    bail!(
                        "--only {name}: no such cluster in {}; known: {}",
                        clusters.display(),
                        known.join(", ")
                    );
                }
            }
            if !only.is_empty() {
                specs.retain(|s| only.contains(&s.name));
            }
            for f in &filter {
                if !Column::ALL.iter().any(|c| c.key().contains(f.as_str())) {
                    let keys: Vec<_> = Column::ALL.iter().map(|c| c.key()).collect();
                    bail!(
                        "--filter {f}: matches no check; checks are {}",
                        keys.join(", ")
                    );
                }
            }
            // The sandbox image is built here; it lives as long as the run.
            let scratch = tempfile::tempdir()?;
            let images = match (deploy, image) {
                (Deploy::Process, None) => None,
                (Deploy::Process, Some(image)) => bail!(
                    "--image {} is for --deploy pod; with --deploy process the agent runs \
                     from the binary `cargo build -p reflektor` makes",
                    image.display()
                ),
                (Deploy::Pod, image) => Some(pod_images(
                    image.unwrap_or_else(|| workspace_path("target/image/reflektor.oci.tar")),
                    scratch.path(),
                )?),
            };
            let options = matrix::Options {
                clusters: specs,
                filter,
                out_dir: out.clone(),
                cache: packages::default_cache_dir()?,
                deploy,
                images,
            };
            let report = matrix::run(&Reflektor::locate()?, &options).await?;
            report.write(&out)?;
            println!("{}", report.table());
            let failures = report.failures();
            let stopped = report.clusters_stopped();
            for (row, column, cell) in &failures {
                eprintln!(
                    "FAIL {}/{} {}: {}",
                    row.cluster,
                    row.node,
                    column.key(),
                    cell.explanation()
                );
            }
            eprintln!(
                "report: {} (also report.json, junit.xml, logs/)",
                out.join("report.md").display()
            );
            if failures.is_empty() && stopped.is_empty() {
                eprintln!("matrix: no gated check failed");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "matrix: {} gated checks failed; clusters that stopped early: {}",
                    failures.len(),
                    if stopped.is_empty() {
                        "none".to_owned()
                    } else {
                        stopped.join(", ")
                    }
                );
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// The images `--deploy pod` runs: the agent's, which must exist, and the
/// sandbox image, built into `scratch` from `reflektor-pause`, which cargo
/// builds beside this binary.
fn pod_images(agent: PathBuf, scratch: &std::path::Path) -> Result<PodImages> {
    if !agent.is_file() {
        bail!(
            "--deploy pod runs the agent's image, and {} does not exist. Fix: run `just \
             image` (it builds the release binary and the image), or pass --image",
            agent.display()
        );
    }
    let pause_bin = std::env::current_exe()?.with_file_name("reflektor-pause");
    if !pause_bin.is_file() {
        bail!(
            "--deploy pod needs the sandbox program {}. Fix: run `cargo build -p \
             reflektor-e2e --bins` (`just e2e` does)",
            pause_bin.display()
        );
    }
    let pause = agent_image::build(
        &agent_image::ImageSpec::pause(pause_bin, "reflektor.test/pause:e2e".to_owned()),
        &scratch.join("pause.oci.tar"),
    )?;
    Ok(PodImages {
        agent,
        pause: pause.archive,
    })
}

fn parse_registry(given: &str) -> Result<acceptance::TestRegistry> {
    acceptance::TestRegistry::parse(given)
}

/// A path inside the workspace, wherever the command runs from.
fn workspace_path(relative: &str) -> PathBuf {
    let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent().unwrap_or(e2e).join(relative)
}
