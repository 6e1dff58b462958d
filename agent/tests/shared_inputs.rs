//! A DaemonSet sets one environment for all its containers: every command
//! must read a shared variable the same way, or one container runs while
//! another refuses to start (`MIRRORED_REGISTRIES=_default` once stopped
//! `registry` while `configuration` took it).
//!
//! clap reads the environment of the process, and this crate forbids the
//! `unsafe` that setting it in-process takes, so each parse runs in a child:
//! this test binary again, running only [`parse_in_child`] with the
//! environment under test, which prints what each command parsed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use clap::{CommandFactory, Parser};
use reflektor::cli::{Cli, Command as Sub, ContainerdArgs, MirrorArgs, RegistryConfigPathArgs};
use serde_json::{Value, json};

/// Set in the child: the command line to parse, as a JSON array.
const ARGS_VAR: &str = "REFLEKTOR_TEST_PARSE_ARGS";

/// Every variable a command reads, taken from the flags themselves, so the
/// parent's own environment cannot leak into a case.
fn read_vars() -> BTreeSet<String> {
    fn collect(command: &clap::Command, vars: &mut BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                vars.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            collect(sub, vars);
        }
    }
    let mut vars = BTreeSet::new();
    collect(&Cli::command(), &mut vars);
    assert!(
        vars.contains("MIRRORED_REGISTRIES") && vars.contains("PROBE_ENDPOINT"),
        "the flags name no environment variables: {vars:?}"
    );
    vars
}

/// The subcommands, each with the arguments it cannot run without.
const COMMANDS: &[&[&str]] = &[
    &["doctor"],
    &[
        "configuration",
        "--mirror-targets",
        "http://127.0.0.1:30020",
    ],
    &["cleanup"],
    &["registry"],
    &["cleanup-wait", "--probe-endpoint", "cleanup.example:8080"],
];

/// The child's half: parses and prints the inputs more than one command
/// reads. Without [`ARGS_VAR`] (an ordinary test run) it has nothing to do.
#[test]
fn parse_in_child() {
    let Ok(args) = std::env::var(ARGS_VAR) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).expect("the parent sends a JSON array");
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            println!("PARSED {}", json!({ "error": error.to_string() }));
            return;
        }
    };
    let mut shared = BTreeMap::new();
    match &cli.command {
        Sub::Doctor(args) => containerd(&mut shared, &args.containerd),
        Sub::Registry(args) => {
            containerd(&mut shared, &args.containerd);
            mirror(&mut shared, &args.mirror);
        }
        Sub::Configuration(args) => {
            containerd(&mut shared, &args.containerd);
            mirror(&mut shared, &args.mirror);
        }
        Sub::Cleanup(args) => config_path(&mut shared, &args.registry_config_path),
        Sub::CheckVersion(_) | Sub::CleanupWait(_) | Sub::Manifests(_) => {}
    }
    println!("PARSED {}", json!(shared));
}

type Shared = BTreeMap<&'static str, Value>;

fn containerd(shared: &mut Shared, args: &ContainerdArgs) {
    let sock = args.containerd_sock.display().to_string();
    shared.insert("containerd_sock", json!(sock));
    config_path(shared, &args.registry_config_path);
}

fn config_path(shared: &mut Shared, args: &RegistryConfigPathArgs) {
    let path = args.containerd_registry_config_path.display().to_string();
    shared.insert("registry_config_path", json!(path));
}

fn mirror(shared: &mut Shared, args: &MirrorArgs) {
    let registries: Vec<String> = args.registries().iter().map(ToString::to_string).collect();
    shared.insert("mirrored_registries", json!(registries));
    shared.insert("resolve_tags", json!(args.resolve_tags));
}

/// Parses `args` in a child with exactly `env` set among [`read_vars`].
fn parse(args: &[&str], env: &[(String, String)]) -> Value {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    for name in read_vars() {
        command.env_remove(name);
    }
    let mut full = vec!["reflektor"];
    full.extend_from_slice(args);
    let output = command
        .args([
            "--exact",
            "parse_in_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ARGS_VAR, serde_json::to_string(&full).unwrap())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("the test binary runs again");
    // libtest may write a child's `--nocapture` output to either stream.
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let line = printed
        .lines()
        .find_map(|l| l.split_once("PARSED ").map(|(_, json)| json))
        .unwrap_or_else(|| panic!("the child printed no parse: {printed}"));
    serde_json::from_str(line).expect("the child prints JSON")
}

/// Runs every subcommand with `env`; each must parse, and every input that
/// two commands read must come out the same in both.
fn same_everywhere(env: &[(String, String)]) -> BTreeMap<String, Value> {
    let mut seen: BTreeMap<String, (String, Value)> = BTreeMap::new();
    for args in COMMANDS {
        let parsed = parse(args, env);
        let name = args[0];
        assert!(
            parsed.get("error").is_none(),
            "{name} refused the environment {env:?}: {}",
            parsed["error"]
        );
        for (input, value) in parsed.as_object().expect("an object") {
            match seen.get(input) {
                Some((first, earlier)) => assert_eq!(
                    earlier, value,
                    "{input} is {earlier} in {first} but {value} in {name}, under {env:?}"
                ),
                None => {
                    seen.insert(input.clone(), (name.to_owned(), value.clone()));
                }
            }
        }
    }
    seen.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_command_reads_mirrored_registries_alike() {
    for (value, expected) in [
        ("", json!([])),
        ("_default", json!(["_default"])),
        ("*", json!(["_default"])),
        (
            "https://docker.io,https://ghcr.io",
            json!(["https://docker.io", "https://ghcr.io"]),
        ),
        (
            "https://docker.io,_default",
            json!(["https://docker.io", "_default"]),
        ),
        ("http://10.0.0.5:5000", json!(["http://10.0.0.5:5000"])),
    ] {
        let parsed = same_everywhere(&env(&[("MIRRORED_REGISTRIES", value)]));
        assert_eq!(parsed["mirrored_registries"], expected, "{value:?}");
    }
}

#[test]
fn every_command_reads_resolve_tags_alike() {
    for (value, expected) in [
        ("true", true),
        ("false", false),
        ("1", true),
        ("0", false),
        ("yes", true),
        ("off", false),
    ] {
        let parsed = same_everywhere(&env(&[("RESOLVE_TAGS", value)]));
        assert_eq!(parsed["resolve_tags"], json!(expected), "{value:?}");
    }
}

#[test]
fn every_command_reads_the_config_path_alike() {
    let parsed = same_everywhere(&env(&[
        ("CONTAINERD_REGISTRY_CONFIG_PATH", "/etc/k3s/certs.d"),
        ("CONTAINERD_SOCK", "/run/k3s/containerd/containerd.sock"),
    ]));
    assert_eq!(parsed["registry_config_path"], json!("/etc/k3s/certs.d"));
    assert_eq!(
        parsed["containerd_sock"],
        json!("/run/k3s/containerd/containerd.sock")
    );
}

/// A value one command would refuse is refused by every command that reads
/// it, with the same words.
#[test]
fn a_bad_value_is_refused_alike() {
    let bad = env(&[("MIRRORED_REGISTRIES", "ftp://docker.io")]);
    let errors: Vec<String> = COMMANDS
        .iter()
        .filter(|args| matches!(args[0], "configuration" | "registry"))
        .map(|args| {
            let parsed = parse(args, &bad);
            let error = parsed["error"].as_str().expect("refused").to_owned();
            assert!(
                error.contains("containerd only speaks http and https"),
                "{error}"
            );
            error.lines().next().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(errors[0], errors[1]);
}

/// The environment each container of Spegel's Helm chart gets
/// (`fixtures/spegel-chart/*.env`, defaults and variants), given to every
/// subcommand: each parses it, and alike.
#[test]
fn spegel_chart_environments_parse_alike_in_every_command() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/spegel-chart");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/spegel-chart")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "env"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "chart env fixtures: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let pairs: Vec<(String, String)> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').expect("NAME=value");
                (k.to_owned(), v.to_owned())
            })
            .collect();
        same_everywhere(&pairs);
    }
}
