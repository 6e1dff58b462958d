//! The generated manifests: `deploy/` is exactly the generator's default
//! output, every object reads back as the k8s-openapi type it was written
//! as, and every container's arguments parse with the agent's own flags and
//! mean what the options said, so the two cannot drift apart.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use reflektor::cli::{Cli, Command};
use reflektor::manifests::{self, ContainerdPaths, Object, Options, Ports};

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn deploy_is_the_default_output() {
    for (name, expected) in manifests::files(&Options::default()) {
        let path = deploy_dir().join(name);
        let found = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `just manifests`", path.display()));
        assert!(
            found == expected,
            "{} differs from `reflektor manifests`' output; run `just manifests` and review the \
             diff",
            path.display()
        );
    }
}

/// Options that set everything a user may set, to exercise every branch.
fn everything() -> Options {
    Options {
        namespace: "kube-system".to_owned(),
        image: "registry.example/reflektor:test".to_owned(),
        containerd: ContainerdPaths::rancher("k3s"),
        mirrored_registries: vec![
            "https://docker.io".parse().unwrap(),
            "https://ghcr.io".parse().unwrap(),
        ],
        additional_mirror_targets: vec!["http://10.0.0.9:30020".parse().unwrap()],
        resolve_tags: false,
        prepend_existing: true,
        priority_class_name: None,
        service_monitor: true,
        grafana_dashboard: true,
        basic_auth_secret_name: Some("reflektor-basic-auth".to_owned()),
        ports: Ports {
            registry: 5000,
            router: 5001,
            metrics: 9090,
            cleanup: 5002,
        },
        ..Options::default()
    }
}

#[test]
fn every_object_reads_back_as_the_type_it_was_written_as() {
    for options in [Options::default(), everything()] {
        for objects in [manifests::install(&options), manifests::uninstall(&options)] {
            let text = manifests::to_yaml(&objects);
            let read = manifests::from_yaml(&text).expect("the output reads back");
            assert_eq!(
                read, objects,
                "a field was lost or changed on the way:\n{text}"
            );
        }
    }
}

fn pod(objects: &[Object], name: &str) -> PodSpec {
    objects
        .iter()
        .find_map(|o| match o {
            Object::DaemonSet(daemonset) => {
                let DaemonSet { metadata, spec, .. } = daemonset.as_ref();
                (metadata.name.as_deref() == Some(name))
                    .then(|| spec.as_ref()?.template.spec.clone())
                    .flatten()
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no DaemonSet {name}"))
}

/// A container's command line as kubelet runs it: `$(NODE_IP)` expanded.
fn command(container: &Container) -> Command {
    let mut argv = vec!["reflektor".to_owned()];
    argv.extend(
        container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.replace("$(NODE_IP)", "10.1.2.3")),
    );
    Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{} does not parse: {argv:?}\n{e}", container.name))
        .command
}

#[test]
fn container_arguments_parse_and_mean_what_the_options_say() {
    let options = everything();
    let objects = manifests::install(&options);
    let agent = pod(&objects, "reflektor");

    let Command::Configuration(configuration) = command(&agent.init_containers.unwrap()[0]) else {
        panic!("the init container runs configuration");
    };
    let targets: Vec<String> = configuration
        .mirror_targets
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(targets, ["http://10.1.2.3:5000", "http://10.0.0.9:30020"]);
    assert_eq!(
        configuration.mirror.registries(),
        options.mirrored_registries
    );
    assert!(!configuration.mirror.resolve_tags);
    assert!(configuration.prepend_existing);
    let c = &configuration.containerd;
    assert_eq!(
        c.containerd_sock.to_str(),
        Some("/run/k3s/containerd/containerd.sock")
    );
    assert_eq!(
        c.registry_config_path
            .containerd_registry_config_path
            .to_str(),
        Some(options.containerd.certs_d.as_str())
    );

    let Command::Registry(registry) = command(&agent.containers[0]) else {
        panic!("the container runs registry");
    };
    // The node's address only (the test resolves NODE_IP to 10.1.2.3).
    assert_eq!(registry.registry_addr, "10.1.2.3:5000");
    assert_eq!(registry.mirror.registries(), options.mirrored_registries);
    assert_eq!(
        registry.containerd_content_path.to_str(),
        Some(options.containerd.content.as_str())
    );
    assert_eq!(
        registry.peers.dns_bootstrap_domain.as_deref(),
        Some("reflektor-bootstrap.kube-system.svc.cluster.local.")
    );

    let cleanup = manifests::uninstall(&options);
    let Command::Cleanup(args) = command(&pod(&cleanup, "reflektor-cleanup").containers[0]) else {
        panic!("the cleanup DaemonSet runs cleanup");
    };
    assert_eq!(args.addr.as_deref(), Some("10.1.2.3:5002"));
}

/// Every mount names a volume, every volume is mounted, and containerd's
/// socket comes in as its directory (a mounted socket file goes stale when
/// containerd restarts).
#[test]
fn mounts_and_volumes_agree_and_the_socket_is_a_directory() {
    let options = everything();
    let agent = pod(&manifests::install(&options), "reflektor");
    let volumes: BTreeSet<String> = agent
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    let mut mounted = BTreeSet::new();
    for container in agent
        .containers
        .iter()
        .chain(agent.init_containers.iter().flatten())
    {
        for mount in container.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains(&mount.name),
                "{} mounts {}",
                container.name,
                mount.name
            );
            mounted.insert(mount.name.clone());
        }
    }
    assert_eq!(mounted, volumes, "a volume nobody mounts");
    for volume in agent.volumes.iter().flatten() {
        if let Some(secret) = &volume.secret {
            assert_eq!(volume.name, "basic-auth");
            assert_eq!(secret.secret_name.as_deref(), Some("reflektor-basic-auth"));
            continue;
        }
        let host = volume
            .host_path
            .as_ref()
            .expect("host paths and the basic-auth Secret only");
        assert_ne!(host.type_.as_deref(), Some("Socket"), "{}", volume.name);
        assert!(
            !host.path.ends_with(".sock"),
            "{} mounts a socket file",
            volume.name
        );
    }
    assert_eq!(agent.host_network, Some(true));
    assert_eq!(agent.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
}

/// `kubectl delete -k` deletes what was applied: a namespace every cluster
/// has must never be among it.
#[test]
fn a_namespace_the_cluster_owns_is_never_emitted() {
    let options = everything();
    assert_eq!(options.namespace, "kube-system");
    for objects in [manifests::install(&options), manifests::uninstall(&options)] {
        assert!(objects.iter().all(|o| o.kind() != "Namespace"));
    }
    let own = manifests::install(&Options::default());
    assert_eq!(own[0].kind(), "Namespace");
}

/// A node whose socket sits beside containerd's config (one directory):
/// one volume, mounted once, read-write since the socket needs it.
#[test]
fn directories_that_coincide_share_a_volume_and_a_mount() {
    let options = Options {
        containerd: ContainerdPaths {
            socket: "/srv/node/containerd.sock".to_owned(),
            content: "/srv/node/root/content".to_owned(),
            certs_d: "/srv/node/certs.d".to_owned(),
            config: "/srv/node/config.toml".to_owned(),
        },
        ..Options::default()
    };
    let agent = pod(&manifests::install(&options), "reflektor");
    let node_volumes = agent
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.as_ref().is_some_and(|h| h.path == "/srv/node"))
        .count();
    assert_eq!(node_volumes, 1);
    for container in agent
        .containers
        .iter()
        .chain(agent.init_containers.iter().flatten())
    {
        let at_node: Vec<_> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path == "/srv/node")
            .collect();
        assert_eq!(at_node.len(), 1, "{}", container.name);
        assert_eq!(at_node[0].read_only, Some(false), "{}", container.name);
    }
}

#[test]
fn a_k3s_install_with_every_option() {
    insta::assert_snapshot!(manifests::to_yaml(&manifests::install(&everything())));
}

#[test]
fn a_k3s_uninstall_with_every_option() {
    insta::assert_snapshot!(manifests::to_yaml(&manifests::uninstall(&everything())));
}
