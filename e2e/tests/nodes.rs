//! Every Debian containerd build run as a node: fetched, started with the generated
//! config, answering on its own socket with CRI loaded, and gone without a trace after
//! stop. These start real daemons, so they need root.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, ensure};
use containerd_client::{Client, services::v1::PluginsRequest};
use reflektor_e2e::{
    debian::Suite,
    node::{self, ContainerdNode, NodeConfig, RegistryConfigPath},
    packages::major_minor,
    support,
};
use toml::{Table, Value};

#[tokio::test]
async fn bullseye_node_lifecycle() -> Result<()> {
    node_lifecycle(Suite::Bullseye).await
}

#[tokio::test]
async fn bookworm_node_lifecycle() -> Result<()> {
    node_lifecycle(Suite::Bookworm).await
}

#[tokio::test]
async fn trixie_node_lifecycle() -> Result<()> {
    node_lifecycle(Suite::Trixie).await
}

#[tokio::test]
async fn sid_node_lifecycle() -> Result<()> {
    node_lifecycle(Suite::Sid).await
}

/// Different majors side by side, as the release gate runs them: neither may take the
/// other's socket, ports or host paths. Also covers the two non-default registry modes.
#[tokio::test]
async fn nodes_of_different_suites_run_side_by_side() -> Result<()> {
    if !support::root_or_skip("nodes_of_different_suites_run_side_by_side") {
        return Ok(());
    }
    let (old, new) = tokio::try_join!(support::build(Suite::Bookworm), support::build(Suite::Sid))?;
    let custom = "/etc/reflektor-e2e/certs.d:/etc/docker/certs.d";
    let old_node = ContainerdNode::start(
        &old,
        NodeConfig {
            registry_config_path: RegistryConfigPath::Unset,
            ..NodeConfig::new("pair-bookworm")
        },
    )
    .await?;
    let new_node = ContainerdNode::start(
        &new,
        NodeConfig {
            registry_config_path: RegistryConfigPath::Custom(custom.to_owned()),
            ..NodeConfig::new("pair-sid")
        },
    )
    .await?;
    assert_ne!(old_node.socket(), new_node.socket());

    for node in [&old_node, &new_node] {
        assert_eq!(
            served_version(node).await?,
            node.build().reported_version()?
        );
        assert_cri_loaded(node).await?;
    }
    assert_eq!(old_node.registry_config_path(), None);
    let old_config = dumped_config(&old_node)?;
    let old_path = support::toml_value(&old_config, &cri_images_path(1, "registry.config_path"));
    assert!(
        old_path.is_none_or(|path| path.as_str() == Some("")),
        "unset config_path reached bookworm's containerd as {old_path:?}"
    );
    assert_eq!(new_node.registry_config_path(), Some(custom));
    let new_config = dumped_config(&new_node)?;
    assert_eq!(
        support::toml_value(&new_config, &cri_images_path(2, "registry.config_path")),
        Some(&Value::from(custom))
    );

    for node in [old_node, new_node] {
        stop_and_assert_gone(node).await?;
    }
    Ok(())
}

/// Fetch, start, check what the daemon says about itself and its config, stop.
async fn node_lifecycle(suite: Suite) -> Result<()> {
    if !support::root_or_skip(&format!("{suite}_node_lifecycle")) {
        return Ok(());
    }
    let build = support::build(suite).await?;
    let reported = build.reported_version()?;
    let expected = suite.expected_version();
    ensure!(
        major_minor(&reported)? == major_minor(expected)?,
        "Debian {suite}'s containerd reports {reported}, not the {expected} release line; \
         if the archive really moved, update Suite::expected_version"
    );
    if reported != expected {
        eprintln!(
            "note: Debian {suite} now serves containerd {reported} (expected_version says {expected})"
        );
    }

    let node = ContainerdNode::start(
        &build,
        NodeConfig {
            discard_unpacked_layers: true,
            ..NodeConfig::new(suite.name())
        },
    )
    .await?;
    assert_eq!(
        served_version(&node).await?,
        reported,
        "Version RPC of the Debian {suite} node"
    );
    assert_cri_loaded(&node).await?;
    assert_config_reached_containerd(&node)?;
    stop_and_assert_gone(node).await
}

async fn client(node: &ContainerdNode) -> Result<Client> {
    Client::from_path(node.socket())
        .await
        .with_context(|| format!("connecting to {}", node.socket().display()))
}

async fn served_version(node: &ContainerdNode) -> Result<String> {
    let response = client(node).await?.version().version(()).await?;
    Ok(response.into_inner().version)
}

/// containerd starts even when CRI fails to initialise, e.g. on a config key in the
/// wrong place, so a node answering Version proves little about CRI.
async fn assert_cri_loaded(node: &ContainerdNode) -> Result<()> {
    let plugins = client(node)
        .await?
        .introspection()
        .plugins(PluginsRequest::default())
        .await?
        .into_inner()
        .plugins;
    let mut wanted = vec![
        ("io.containerd.grpc.v1", "cri"),
        ("io.containerd.snapshotter.v1", "overlayfs"),
    ];
    if node.build().major()? >= 2 {
        wanted.push(("io.containerd.cri.v1", "images"));
        wanted.push(("io.containerd.cri.v1", "runtime"));
    }
    for (kind, id) in wanted {
        let plugin = plugins
            .iter()
            .find(|plugin| plugin.r#type == kind && plugin.id == id)
            .with_context(|| format!("{} lists no {kind}.{id} plugin", node.name()))?;
        ensure!(
            plugin.init_err.is_none(),
            "{kind}.{id} of node {} failed to initialise: {:?}; see {}",
            node.name(),
            plugin.init_err,
            node.log_file().display()
        );
    }
    Ok(())
}

/// Reads the settings back through `containerd config dump`, i.e. the daemon's own
/// parser, to prove each key sits where this containerd version looks for it.
fn assert_config_reached_containerd(node: &ContainerdNode) -> Result<()> {
    let major = node.build().major()?;
    let config = dumped_config(node)?;
    let socket = node.socket().to_str().context("socket path is UTF-8")?;
    assert_eq!(
        support::toml_value(&config, &["grpc", "address"]),
        Some(&Value::from(socket))
    );
    assert_eq!(
        support::toml_value(&config, &["ttrpc", "address"]),
        Some(&Value::from(format!("{socket}.ttrpc")))
    );
    assert_eq!(
        support::toml_value(
            &config,
            &["plugins", "io.containerd.grpc.v1.cri", "stream_server_port"]
        ),
        Some(&Value::from("0"))
    );
    let disabled = support::toml_value(&config, &["disabled_plugins"]).and_then(Value::as_array);
    assert!(
        disabled.is_some_and(|names| names.contains(&Value::from("io.containerd.internal.v1.opt"))),
        "disabled_plugins did not reach containerd: {disabled:?}"
    );
    assert_eq!(
        support::toml_value(&config, &cri_images_path(major, "discard_unpacked_layers")),
        Some(&Value::from(true))
    );

    let config_path = support::toml_value(&config, &cri_images_path(major, "registry.config_path"));
    let (release_major, release_minor) = major_minor(&node.build().reported_version()?)?;
    if (release_major, release_minor) < (1, 5) {
        // containerd before 1.5 has no hosts directory support and drops the key.
        assert_eq!(config_path, None);
    } else {
        let certs = node.dir().join("certs.d");
        assert_eq!(node.registry_config_path(), certs.to_str());
        assert_eq!(config_path, certs.to_str().map(Value::from).as_ref());
    }
    Ok(())
}

fn dumped_config(node: &ContainerdNode) -> Result<Table> {
    let output = Command::new(node.build().containerd_bin())
        .arg("--config")
        .arg(node.config_file())
        .args(["config", "dump"])
        .output()
        .context("running containerd config dump")?;
    ensure!(
        output.status.success(),
        "containerd config dump of {} failed: {}",
        node.config_file().display(),
        String::from_utf8_lossy(&output.stderr)
    );
    toml::from_str(&String::from_utf8(output.stdout)?).context("parsing containerd config dump")
}

/// Where CRI image settings live: the v2 CRI plugin's `containerd` table kept
/// `discard_unpacked_layers`, 2.x moved everything image-related to its images plugin.
fn cri_images_path(major: u64, key: &str) -> Vec<&str> {
    let mut path = match (major, key) {
        (1, "discard_unpacked_layers") => {
            vec!["plugins", "io.containerd.grpc.v1.cri", "containerd"]
        }
        (1, _) => vec!["plugins", "io.containerd.grpc.v1.cri"],
        _ => vec!["plugins", "io.containerd.cri.v1.images"],
    };
    path.extend(key.split('.'));
    path
}

/// After stop neither the daemon nor any process started with the node's paths may
/// survive, and the directory must be gone unless kept on request.
async fn stop_and_assert_gone(node: ContainerdNode) -> Result<()> {
    let pid = node.pid();
    let dir = node.dir().to_owned();
    node.stop().await?;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "containerd pid {pid} survived stop"
    );
    let survivors = processes_mentioning(&dir)?;
    assert!(
        survivors.is_empty(),
        "processes still refer to {}: {survivors:?}",
        dir.display()
    );
    assert_eq!(
        dir.exists(),
        node::keep_requested(),
        "node directory {} after stop",
        dir.display()
    );
    Ok(())
}

fn processes_mentioning(dir: &Path) -> Result<Vec<String>> {
    let needle = dir.to_str().context("node directory is UTF-8")?;
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let proc_dir = entry?.path();
        // Processes exit while we look; an unreadable cmdline is not a survivor.
        let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{}: {cmdline}", proc_dir.display()));
        }
    }
    Ok(found)
}
