//! Every command line Spegel's Helm chart renders (`fixtures/spegel-chart`,
//! its defaults and the variants its values produce) parses, so a Spegel
//! DaemonSet can switch its image to reflektor and keep its chart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use reflektor::cli::{Cli, Command};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/spegel-chart")
}

/// `NAME=value` lines.
fn read_env(path: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The container's arguments as kubelet hands them over: `$(NODE_IP)`
/// expanded from the matching environment file, else the container's own.
fn argv(args_file: &Path) -> Vec<String> {
    let name = args_file.file_name().unwrap().to_string_lossy();
    let stem = name.trim_end_matches(".args");
    let container = stem.split('.').next().unwrap();
    let mut env = read_env(&dir().join(format!("{container}.env")));
    env.extend(read_env(&dir().join(format!("{stem}.env"))));
    let text = std::fs::read_to_string(args_file).unwrap();
    let mut argv = vec!["reflektor".to_owned()];
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut arg = line.to_owned();
        for (name, value) in &env {
            arg = arg.replace(&format!("$({name})"), value);
        }
        assert!(!arg.contains("$("), "{name}: {arg} left unexpanded");
        argv.push(arg);
    }
    argv
}

fn args_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "args"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_rendered_command_line_parses() {
    let files = args_files();
    assert!(files.len() >= 20, "chart fixtures: {files:?}");
    let mut refused = Vec::new();
    for file in &files {
        let argv = argv(file);
        if let Err(error) = Cli::try_parse_from(&argv) {
            refused.push(format!("{}: {argv:?}\n{error}", file.display()));
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n\n"));
}

/// The defaults mean what they mean to Spegel.
#[test]
fn the_default_command_lines_read_as_spegel_reads_them() {
    let parse = |name: &str| {
        Cli::try_parse_from(argv(&dir().join(name)))
            .unwrap()
            .command
    };
    let Command::Configuration(configuration) = parse("configuration.args") else {
        panic!("configuration");
    };
    let targets: Vec<String> = configuration
        .mirror_targets
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(targets, ["http://10.0.0.7:30020"]);
    assert!(configuration.mirror.resolve_tags);
    assert!(!configuration.prepend_existing);

    let Command::Registry(registry) = parse("registry.args") else {
        panic!("registry");
    };
    assert_eq!(registry.registry_addr, ":5000");
    assert_eq!(
        registry.peers.mirror_resolve_timeout.get(),
        std::time::Duration::from_millis(20)
    );
    assert_eq!(
        registry.peers.data_dir.0.as_deref(),
        Some(Path::new("/var/lib/spegel"))
    );
    assert_eq!(
        registry.peers.dns_bootstrap_domain.as_deref(),
        Some("release-name-spegel-bootstrap.default.svc.cluster.local.")
    );

    let Command::CleanupWait(wait) = parse("cleanup-wait.args") else {
        panic!("cleanup-wait");
    };
    assert_eq!(
        wait.probe_endpoint,
        "release-name-spegel-cleanup.default.svc.cluster.local.:8080"
    );
    assert_eq!(wait.threshold, 3);
    let Command::Cleanup(cleanup) = parse("cleanup.args") else {
        panic!("cleanup");
    };
    assert_eq!(cleanup.addr.as_deref(), Some(":8080"));
}
