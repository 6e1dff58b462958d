//! The agent's DaemonSet: `configuration` as the init container, then
//! `registry`, with the host paths each reads and writes.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, ObjectFieldSelector, PodSpec, Probe, ResourceRequirements,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BOOTSTRAP_SERVICE, NAME, Options, daemon_set};

/// A host directory and where containers see it: always at the same path,
/// because what the agent writes (hosts.toml) and reads (config_path, the
/// socket) is named by host paths in containerd's own configuration.
pub(super) struct HostDir {
    pub(super) volume: &'static str,
    pub(super) path: String,
    pub(super) kind: &'static str,
}

impl HostDir {
    pub(super) fn volume(&self) -> Volume {
        Volume {
            name: self.volume.to_owned(),
            host_path: Some(HostPathVolumeSource {
                path: self.path.clone(),
                type_: Some(self.kind.to_owned()),
            }),
            ..Volume::default()
        }
    }

    pub(super) fn mount(&self, read_only: bool) -> VolumeMount {
        VolumeMount {
            name: self.volume.to_owned(),
            mount_path: self.path.clone(),
            read_only: Some(read_only),
            ..VolumeMount::default()
        }
    }
}

fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map_or_else(|| "/".to_owned(), |p| p.display().to_string())
}

struct HostDirs {
    /// The socket's directory: after a containerd restart the new socket
    /// appears in it, where a mounted socket file would stay the old one.
    socket: HostDir,
    content: HostDir,
    certs_d: HostDir,
    /// containerd's config directory, so that doctor's checks can read a
    /// containerd 2.x config (and its imports) from inside the pod.
    config: HostDir,
    data: HostDir,
}

impl HostDirs {
    fn new(options: &Options) -> Self {
        let c = &options.containerd;
        let mut dirs = HostDirs {
            socket: HostDir {
                volume: "containerd-socket-dir",
                path: parent(&c.socket),
                kind: "Directory",
            },
            content: HostDir {
                volume: "containerd-content",
                path: c.content.clone(),
                kind: "Directory",
            },
            certs_d: HostDir {
                volume: "containerd-certs-d",
                path: c.certs_d.clone(),
                kind: "DirectoryOrCreate",
            },
            config: HostDir {
                volume: "containerd-config-dir",
                path: parent(&c.config),
                kind: "Directory",
            },
            data: HostDir {
                volume: "data",
                path: options.data_dir.clone(),
                kind: "DirectoryOrCreate",
            },
        };
        // Two of them may be one directory (a socket kept beside the config,
        // say): they then share the first one's volume.
        let mut seen: Vec<(String, &'static str)> = Vec::new();
        for dir in dirs.all_mut() {
            match seen.iter().find(|(path, _)| *path == dir.path) {
                Some((_, volume)) => dir.volume = volume,
                None => seen.push((dir.path.clone(), dir.volume)),
            }
        }
        dirs
    }

    fn all_mut(&mut self) -> [&mut HostDir; 5] {
        [
            &mut self.socket,
            &mut self.content,
            &mut self.certs_d,
            &mut self.config,
            &mut self.data,
        ]
    }

    /// One volume per directory.
    fn volumes(&self) -> Vec<Volume> {
        let mut volumes: Vec<Volume> = Vec::new();
        for dir in [
            &self.socket,
            &self.content,
            &self.certs_d,
            &self.config,
            &self.data,
        ] {
            if volumes.iter().all(|v| v.name != dir.volume) {
                volumes.push(dir.volume());
            }
        }
        volumes
    }
}

/// One mount per path, read-write if any wanted it so.
fn merged(mounts: Vec<VolumeMount>) -> Vec<VolumeMount> {
    let mut merged: Vec<VolumeMount> = Vec::new();
    for mount in mounts {
        match merged.iter_mut().find(|m| m.mount_path == mount.mount_path) {
            Some(earlier) => {
                if mount.read_only == Some(false) {
                    earlier.read_only = Some(false);
                }
            }
            None => merged.push(mount),
        }
    }
    merged
}

/// The node's IP, for the mirror target and listen addresses.
pub(super) fn node_ip() -> EnvVar {
    EnvVar {
        name: "NODE_IP".to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.hostIP".to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Root without capabilities: the socket, the content store and certs.d are
/// root's files, which their owner reaches without any capability.
pub(super) fn security_context() -> SecurityContext {
    SecurityContext {
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        run_as_user: Some(0),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// An HTTP GET probe of `path` on the named container port.
pub(super) fn http_probe(path: &str, port_name: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port_name.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

/// A probe of the agent's registry port.
fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..http_probe(path, "registry", period)
    }
}

pub(super) fn port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn bool_flag(name: &str, value: bool) -> String {
    format!("--{name}={value}")
}

/// `--mirrored-registries A B`, the list form both commands take.
fn registries(options: &Options) -> Vec<String> {
    if options.mirrored_registries.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["--mirrored-registries".to_owned()];
    args.extend(options.mirrored_registries.iter().map(ToString::to_string));
    args
}

fn containerd_args(options: &Options) -> Vec<String> {
    let c = &options.containerd;
    vec![
        format!("--containerd-sock={}", c.socket),
        format!("--containerd-config={}", c.config),
        format!("--containerd-registry-config-path={}", c.certs_d),
    ]
}

fn init_container(options: &Options, dirs: &HostDirs) -> Container {
    let mut args = vec![
        "configuration".to_owned(),
        format!("--log-level={}", options.log_level),
    ];
    args.extend(containerd_args(options));
    args.push("--mirror-targets".to_owned());
    args.push(format!("http://$(NODE_IP):{}", options.ports.registry));
    args.extend(
        options
            .additional_mirror_targets
            .iter()
            .map(ToString::to_string),
    );
    args.extend(registries(options));
    args.push(bool_flag("resolve-tags", options.resolve_tags));
    args.push(bool_flag("prepend-existing", options.prepend_existing));
    Container {
        name: "configuration".to_owned(),
        image: Some(options.image.clone()),
        args: Some(args),
        env: Some(vec![node_ip()]),
        // A parent before what is mounted inside it (certs.d usually sits in
        // containerd's config directory).
        volume_mounts: Some(merged(vec![
            dirs.config.mount(true),
            dirs.certs_d.mount(false),
            dirs.socket.mount(false),
        ])),
        security_context: Some(security_context()),
        resources: Some(resources(options)),
        ..Container::default()
    }
}

fn registry_container(options: &Options, dirs: &HostDirs) -> Container {
    let p = options.ports;
    let mut args = vec![
        "registry".to_owned(),
        format!("--log-level={}", options.log_level),
        // The node's address only, not every interface of the host's
        // network: nothing else on the node needs these ports.
        format!("--registry-addr=$(NODE_IP):{}", p.registry),
        format!("--router-addr=$(NODE_IP):{}", p.router),
        format!("--metrics-addr=$(NODE_IP):{}", p.metrics),
    ];
    args.extend(containerd_args(options));
    args.extend([
        "--containerd-namespace=k8s.io".to_owned(),
        format!("--containerd-content-path={}", options.containerd.content),
        "--bootstrap-kind=dns".to_owned(),
        format!(
            "--dns-bootstrap-domain={BOOTSTRAP_SERVICE}.{}.svc.{}.",
            options.namespace, options.cluster_domain
        ),
        format!("--data-dir={}", options.data_dir),
    ]);
    args.extend(registries(options));
    args.push(bool_flag("resolve-tags", options.resolve_tags));
    Container {
        name: "registry".to_owned(),
        image: Some(options.image.clone()),
        args: Some(args),
        env: Some(vec![node_ip()]),
        ports: Some(vec![
            port("registry", p.registry),
            port("router", p.router),
            port("metrics", p.metrics),
        ]),
        // Start-up gets a minute: doctor's checks, the store, and the first
        // bootstrap round. Then readiness is "can serve", liveness "runs".
        startup_probe: Some(probe("/readyz", 2, 30)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/livez", 10, 3)),
        volume_mounts: Some(merged(vec![
            dirs.config.mount(true),
            dirs.certs_d.mount(true),
            dirs.socket.mount(false),
            dirs.content.mount(true),
            dirs.data.mount(false),
        ])),
        security_context: Some(security_context()),
        resources: Some(resources(options)),
        ..Container::default()
    }
}

fn resources(options: &Options) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(options.cpu_request.clone())),
            (
                "memory".to_owned(),
                Quantity(options.memory_request.clone()),
            ),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(options.memory_limit.clone()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The basic-auth Secret's volume and its mount, read-only, where both
/// containers read the credentials (as in Spegel's chart).
fn basic_auth(options: &Options) -> Option<(Volume, VolumeMount)> {
    let secret = options.basic_auth_secret_name.as_ref()?;
    let volume = Volume {
        name: "basic-auth".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.clone()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "basic-auth".to_owned(),
        mount_path: crate::auth::DEFAULT_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

pub fn agent(options: &Options) -> DaemonSet {
    let dirs = HostDirs::new(options);
    let mut volumes = dirs.volumes();
    let mut init = init_container(options, &dirs);
    let mut registry = registry_container(options, &dirs);
    if let Some((volume, mount)) = basic_auth(options) {
        volumes.push(volume);
        for container in [&mut init, &mut registry] {
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount.clone());
        }
    }
    let mut agent = daemon_set(
        NAME,
        options,
        "agent",
        PodSpec {
            service_account_name: Some(NAME.to_owned()),
            host_network: Some(true),
            // Cluster DNS for the bootstrap Service, from the host network.
            dns_policy: Some("ClusterFirstWithHostNet".to_owned()),
            termination_grace_period_seconds: Some(30),
            init_containers: Some(vec![init]),
            containers: vec![registry],
            volumes: Some(volumes),
            ..PodSpec::default()
        },
    );
    if let Some(spec) = agent.spec.as_mut() {
        spec.update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::String("10%".to_owned())),
                ..RollingUpdateDaemonSet::default()
            }),
        });
    }
    agent
}
