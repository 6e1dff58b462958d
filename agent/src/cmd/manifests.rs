//! `reflektor manifests`: the options checked, then the objects printed or
//! written as a kustomize directory.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Toleration;

use crate::cli::ManifestsArgs;
use crate::manifests::{self, Options, Ports};

pub fn run(args: &ManifestsArgs) -> anyhow::Result<ExitCode> {
    let options = options(args)?;
    match &args.out_dir {
        Some(dir) => {
            for (name, text) in manifests::files(&options) {
                let path = dir.join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
        None if args.cleanup => print!("{}", manifests::to_yaml(&manifests::uninstall(&options))),
        None => print!("{}", manifests::to_yaml(&manifests::install(&options))),
    }
    Ok(ExitCode::SUCCESS)
}

fn options(args: &ManifestsArgs) -> anyhow::Result<Options> {
    let mut containerd = args.preset.containerd_paths();
    let overrides = [
        (
            &args.containerd_sock,
            &mut containerd.socket,
            "--containerd-sock",
        ),
        (
            &args.containerd_content_path,
            &mut containerd.content,
            "--containerd-content-path",
        ),
        (
            &args.containerd_registry_config_path,
            &mut containerd.certs_d,
            "--containerd-registry-config-path",
        ),
        (
            &args.containerd_config,
            &mut containerd.config,
            "--containerd-config",
        ),
    ];
    for (given, path, flag) in overrides {
        if let Some(given) = given {
            ensure!(
                given.starts_with('/'),
                "{flag} {given:?}: expected an absolute path on the nodes"
            );
            *path = given.clone();
        }
    }
    let ports = Ports {
        registry: args.registry_port,
        router: args.router_port,
        metrics: args.metrics_port,
        cleanup: args.cleanup_port,
    };
    check_ports(&ports)?;
    for (flag, value) in [
        ("--cpu-request", &args.cpu_request),
        ("--memory-request", &args.memory_request),
        ("--memory-limit", &args.memory_limit),
    ] {
        ensure!(
            is_quantity(value),
            "{flag} {value:?} is not a Kubernetes quantity; expected e.g. 10m, 64Mi or 1Gi"
        );
    }
    let defaults = Options::default();
    Ok(Options {
        namespace: dns_label(&args.namespace, "--namespace")?,
        image: match &args.image {
            Some(image) if image.trim().is_empty() => bail!("--image is empty"),
            Some(image) => image.clone(),
            None => defaults.image,
        },
        log_level: args.agent_log_level.clone(),
        containerd,
        ports,
        mirrored_registries: args.mirrored_registries.clone(),
        additional_mirror_targets: args.additional_mirror_targets.clone(),
        resolve_tags: args.resolve_tags,
        prepend_existing: args.prepend_existing,
        data_dir: args.data_dir.clone(),
        cluster_domain: args.cluster_domain.trim_end_matches('.').to_owned(),
        priority_class_name: Some(args.priority_class_name.clone()).filter(|p| !p.is_empty()),
        cpu_request: args.cpu_request.clone(),
        memory_request: args.memory_request.clone(),
        memory_limit: args.memory_limit.clone(),
        tolerations: if args.tolerations.is_empty() {
            defaults.tolerations
        } else {
            tolerations(&args.tolerations)?
        },
        node_selector: if args.node_selector.is_empty() {
            defaults.node_selector
        } else {
            node_selector(&args.node_selector)?
        },
        service_monitor: args.service_monitor,
        grafana_dashboard: args.grafana_dashboard,
        basic_auth_secret_name: args
            .basic_auth_secret_name
            .as_deref()
            .map(|name| dns_subdomain(name, "--basic-auth-secret-name"))
            .transpose()?,
    })
}

/// A Secret's name: a DNS subdomain (RFC 1123), as the API server checks.
fn dns_subdomain(name: &str, flag: &str) -> anyhow::Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    anyhow::ensure!(
        valid,
        "{flag} {name:?}: expected a Secret name, lowercase letters, digits, '-' and '.', \
         such as reflektor-basic-auth"
    );
    Ok(name.to_owned())
}

fn dns_label(name: &str, flag: &str) -> anyhow::Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    ensure!(
        valid,
        "{flag} {name:?} is not a DNS label; expected up to 63 lowercase letters, digits and \
         '-', such as \"reflektor\""
    );
    Ok(name.to_owned())
}

fn is_quantity(value: &str) -> bool {
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    number.parse::<f64>().is_ok()
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "Ki" | "Mi" | "Gi" | "Ti"
        )
}

/// `all`, `none`, or `KEY[=VALUE][:EFFECT]`.
fn tolerations(specs: &[String]) -> anyhow::Result<Vec<Toleration>> {
    let mut tolerations = Vec::new();
    for spec in specs {
        match spec.as_str() {
            "all" => tolerations.push(Toleration {
                operator: Some("Exists".to_owned()),
                ..Toleration::default()
            }),
            "none" => {}
            _ => {
                let (rest, effect) = match spec.rsplit_once(':') {
                    Some((rest, effect)) => (rest, Some(effect)),
                    None => (spec.as_str(), None),
                };
                if let Some(effect) = effect {
                    ensure!(
                        matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute"),
                        "--toleration {spec:?}: the effect {effect:?} is not NoSchedule, \
                         PreferNoSchedule or NoExecute"
                    );
                }
                let (key, value) = match rest.split_once('=') {
                    Some((key, value)) => (key, Some(value)),
                    None => (rest, None),
                };
                ensure!(
                    !key.is_empty(),
                    "--toleration {spec:?}: expected KEY[=VALUE][:EFFECT], \"all\" or \"none\""
                );
                tolerations.push(Toleration {
                    key: Some(key.to_owned()),
                    operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
                    value: value.map(str::to_owned),
                    effect: effect.map(str::to_owned),
                    ..Toleration::default()
                });
            }
        }
    }
    Ok(tolerations)
}

fn node_selector(specs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    specs
        .iter()
        .map(|spec| {
            let (key, value) = spec
                .split_once('=')
                .with_context(|| format!("--node-selector {spec:?}: expected KEY=VALUE"))?;
            ensure!(
                !key.is_empty(),
                "--node-selector {spec:?}: the key is empty"
            );
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The agent and its cleanup pod share each node's network: their ports
/// must differ.
fn check_ports(ports: &Ports) -> anyhow::Result<()> {
    let named = [
        ("--registry-port", ports.registry),
        ("--router-port", ports.router),
        ("--metrics-port", ports.metrics),
        ("--cleanup-port", ports.cleanup),
    ];
    for (i, (flag, port)) in named.iter().enumerate() {
        if let Some((other, _)) = named[i + 1..].iter().find(|(_, p)| p == port) {
            bail!(
                "{flag} and {other} are both {port}; they must differ, since the agent and its \
                 cleanup pod share each node's network"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_read_as_kubectl_taint_writes_them() {
        let parsed = tolerations(&[
            "dedicated=gpu:NoSchedule".to_owned(),
            "node.kubernetes.io/unreachable:NoExecute".to_owned(),
            "spot".to_owned(),
        ])
        .unwrap();
        assert_eq!(parsed[0].operator.as_deref(), Some("Equal"));
        assert_eq!(parsed[0].value.as_deref(), Some("gpu"));
        assert_eq!(parsed[1].effect.as_deref(), Some("NoExecute"));
        assert_eq!(parsed[2].operator.as_deref(), Some("Exists"));
        assert!(tolerations(&["none".to_owned()]).unwrap().is_empty());
        let error = tolerations(&["a:Never".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("NoSchedule"), "{error}");
    }

    #[test]
    fn ports_that_collide_are_named() {
        let ports = Ports {
            registry: 5000,
            router: 5001,
            metrics: 9090,
            cleanup: 5001,
        };
        let error = check_ports(&ports).unwrap_err().to_string();
        assert!(
            error.contains("--router-port and --cleanup-port are both 5001"),
            "{error}"
        );
        check_ports(&Ports {
            cleanup: 8080,
            ..ports
        })
        .unwrap();
    }

    #[test]
    fn quantities_and_names_are_checked() {
        for good in ["10m", "64Mi", "1Gi", "0.5", "128M"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "64MB", "lots", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        assert!(dns_label("Reflektor", "--namespace").is_err());
        assert!(dns_label("kube-system", "--namespace").is_ok());
    }
}
