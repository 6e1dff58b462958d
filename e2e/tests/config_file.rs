//! reflektor reads containerd's config file where CRI is silent (2.x). Its
//! reading of `imports` must match containerd's own, so each case here is
//! also handed to the real `containerd config dump` of every supported
//! Debian build, and the two answers compared. containerd runs with `/` as
//! its working directory, as under systemd, because before 1.7 a relative glob
//! in `imports` resolves against it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use reflektor::runtime::{ConfigFile, GlobBase, discard_table, registry_table};
use reflektor::version::RuntimeVersion;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::support;
use toml::{Table, Value};

/// A main config and its drop-ins, in the dialect of one config version.
struct Case {
    name: &'static str,
    main: String,
    drop_ins: Vec<(&'static str, String)>,
}

fn header(keys: &[&str]) -> String {
    reflektor::runtime::table_header(keys)
}

fn cases(version: i64) -> Vec<Case> {
    let registry = header(&registry_table(version));
    let discard = header(&discard_table(version));
    vec![
        Case {
            name: "drop-in sets config_path over a main file that discards layers",
            main: format!(
                "version = {version}\nimports = [\"conf.d/*.toml\"]\n[{discard}]\n  \
                 discard_unpacked_layers = true\n[{registry}]\n  config_path = \"/main\"\n"
            ),
            drop_ins: vec![(
                "conf.d/10-registry.toml",
                format!("version = {version}\n[{registry}]\n  config_path = \"/imported\"\n"),
            )],
        },
        Case {
            name: "later drop-ins win",
            main: format!("version = {version}\nimports = [\"conf.d/*.toml\"]\n"),
            drop_ins: vec![
                (
                    "conf.d/10-a.toml",
                    format!("version = {version}\n[{registry}]\n  config_path = \"/a\"\n"),
                ),
                (
                    "conf.d/20-b.toml",
                    format!(
                        "version = {version}\n[{registry}]\n  config_path = \"/b:/etc/containerd/certs.d\"\n"
                    ),
                ),
            ],
        },
        Case {
            name: "a plain relative import, then a glob, each setting one key",
            main: format!("version = {version}\nimports = [\"discard.toml\", \"conf.d/*.toml\"]\n"),
            drop_ins: vec![
                (
                    "discard.toml",
                    format!("version = {version}\n[{discard}]\n  discard_unpacked_layers = true\n"),
                ),
                (
                    "conf.d/registry.toml",
                    format!("version = {version}\n[{registry}]\n  config_path = \"/glob\"\n"),
                ),
            ],
        },
        Case {
            name: "no CRI section anywhere: containerd's defaults",
            main: format!("version = {version}\n"),
            drop_ins: vec![],
        },
    ]
}

/// What the real containerd made of the files.
fn dumped(containerd: &Path, config: &Path) -> Result<Table> {
    let output = Command::new(containerd)
        .current_dir("/")
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .with_context(|| format!("running {}", containerd.display()))?;
    ensure!(
        output.status.success(),
        "containerd config dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.parse()?)
}

/// `plugins.<table…>.<key>` in a dumped config.
fn plugin_value<'a>(config: &'a Table, table: &[&str], key: &str) -> Option<&'a Value> {
    let path: Vec<&str> = std::iter::once("plugins")
        .chain(table.iter().copied())
        .chain(std::iter::once(key))
        .collect();
    support::toml_value(config, &path)
}

async fn agrees_with_containerd(suite: Suite) -> Result<()> {
    let build = support::build(suite).await?;
    let version = if build.major()? >= 2 { 3 } else { 2 };
    for case in cases(version) {
        let dir = tempfile::tempdir()?;
        let main = dir.path().join("config.toml");
        std::fs::write(&main, &case.main)?;
        for (name, text) in &case.drop_ins {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap())?;
            std::fs::write(path, text)?;
        }
        let reported = RuntimeVersion::parse(&build.reported_version()?)?;
        let ours = ConfigFile::load(&main, GlobBase::for_containerd(Some(&reported)))?;
        let theirs = dumped(&build.containerd_bin(), &main)?;
        let their_path = plugin_value(&theirs, &registry_table(version), "config_path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let their_discard =
            plugin_value(&theirs, &discard_table(version), "discard_unpacked_layers")
                .and_then(Value::as_bool)
                .unwrap_or_default();
        assert_eq!(
            ours.registry_config_path(),
            their_path,
            "{suite}, {}: config_path",
            case.name
        );
        assert_eq!(
            ours.discard_unpacked_layers(),
            their_discard,
            "{suite}, {}: discard_unpacked_layers",
            case.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn bookworm_imports_read_as_containerd_reads_them() -> Result<()> {
    agrees_with_containerd(Suite::Bookworm).await
}

#[tokio::test]
async fn trixie_imports_read_as_containerd_reads_them() -> Result<()> {
    agrees_with_containerd(Suite::Trixie).await
}

#[tokio::test]
async fn sid_imports_read_as_containerd_reads_them() -> Result<()> {
    agrees_with_containerd(Suite::Sid).await
}
