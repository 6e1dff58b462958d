//! The Kubernetes objects that deploy the agent, built as typed k8s-openapi
//! objects from one set of options, so that the YAML users apply cannot
//! drift from the flags the agent takes: `reflektor manifests` prints them,
//! and `deploy/` is their default output, checked in for `kubectl apply -k`.
//!
//! The shape, and why:
//! - `hostNetwork`: containerd on the node reaches the agent at the node's
//!   IP with no CNI `portmap` plugin, no kube-proxy and no routable pod IP,
//!   which is what a hostPort (Spegel's way) needs. There is one mirror
//!   target, the node's own agent; while it restarts, containerd falls back
//!   to the upstream after `dial_timeout`.
//! - The containerd socket's *directory* is mounted, not the socket file:
//!   a file mount keeps the old, deleted socket after containerd restarts,
//!   and the pod never recovers.
//! - `/readyz` means "this node can serve" (store answers, bootstrap tried);
//!   the startup probe bounds how long that may take.

mod cleanup;
mod daemonset;
mod observability;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PodSpec, PodTemplateSpec, Service, ServiceAccount, ServicePort,
    ServiceSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

pub use observability::ServiceMonitor;

use crate::mirror_config::{MirrorTarget, MirroredRegistry};

/// Where containerd keeps what the agent needs on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdPaths {
    pub socket: String,
    pub content: String,
    pub certs_d: String,
    pub config: String,
}

impl ContainerdPaths {
    /// containerd as most distributions and kubeadm install it.
    pub fn standard() -> Self {
        ContainerdPaths {
            socket: "/run/containerd/containerd.sock".to_owned(),
            content: "/var/lib/containerd/io.containerd.content.v1.content".to_owned(),
            certs_d: "/etc/containerd/certs.d".to_owned(),
            config: "/etc/containerd/config.toml".to_owned(),
        }
    }

    /// The containerd embedded in k3s (`distribution` "k3s") or rke2.
    pub fn rancher(distribution: &str) -> Self {
        let agent = format!("/var/lib/rancher/{distribution}/agent");
        ContainerdPaths {
            socket: "/run/k3s/containerd/containerd.sock".to_owned(),
            content: format!("{agent}/containerd/io.containerd.content.v1.content"),
            certs_d: format!("{agent}/etc/containerd/certs.d"),
            config: format!("{agent}/etc/containerd/config.toml"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub registry: u16,
    pub router: u16,
    pub metrics: u16,
    /// Where each node's cleanup pod answers the cleanup-wait Job.
    pub cleanup: u16,
}

/// Everything a user may change; [`Options::default`] is `deploy/`.
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    pub image: String,
    pub log_level: String,
    pub containerd: ContainerdPaths,
    pub ports: Ports,
    /// Empty: every registry.
    pub mirrored_registries: Vec<MirroredRegistry>,
    /// Tried after the node's own agent.
    pub additional_mirror_targets: Vec<MirrorTarget>,
    pub resolve_tags: bool,
    pub prepend_existing: bool,
    /// Where the node identity is kept on the host.
    pub data_dir: String,
    pub cluster_domain: String,
    pub priority_class_name: Option<String>,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub tolerations: Vec<Toleration>,
    pub node_selector: BTreeMap<String, String>,
    pub service_monitor: bool,
    pub grafana_dashboard: bool,
    /// A Secret with `username` and `password`, mounted where the agent
    /// (and Spegel) read basic-auth credentials.
    pub basic_auth_secret_name: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "reflektor".to_owned(),
            image: format!("ghcr.io/reflektor/reflektor:{}", env!("CARGO_PKG_VERSION")),
            log_level: "info".to_owned(),
            containerd: ContainerdPaths::standard(),
            ports: Ports {
                registry: 5000,
                router: 5001,
                metrics: 9090,
                cleanup: 8080,
            },
            mirrored_registries: Vec::new(),
            additional_mirror_targets: Vec::new(),
            resolve_tags: true,
            prepend_existing: false,
            data_dir: "/var/lib/reflektor".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            priority_class_name: Some("system-node-critical".to_owned()),
            cpu_request: "10m".to_owned(),
            memory_request: "64Mi".to_owned(),
            memory_limit: "256Mi".to_owned(),
            // A node the agent skips pulls everything from the upstream.
            tolerations: vec![Toleration {
                operator: Some("Exists".to_owned()),
                ..Toleration::default()
            }],
            node_selector: BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]),
            service_monitor: false,
            grafana_dashboard: false,
            basic_auth_secret_name: None,
        }
    }
}

/// One object of the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    ConfigMap(ConfigMap),
    Job(Box<Job>),
    ServiceMonitor(ServiceMonitor),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Service(_) => "Service",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Job(_) => "Job",
            Object::ServiceMonitor(_) => "ServiceMonitor",
        }
    }

    /// Reads one YAML document back as the type its `kind` names.
    pub fn from_yaml(document: &str) -> Result<Object, String> {
        #[derive(Deserialize)]
        struct Kind {
            kind: String,
        }
        let kind: Kind = serde_saphyr::from_str(document).map_err(|e| e.to_string())?;
        let typed = |e: serde_saphyr::Error| format!("a {}: {e}", kind.kind);
        Ok(match kind.kind.as_str() {
            "Namespace" => Object::Namespace(serde_saphyr::from_str(document).map_err(typed)?),
            "ServiceAccount" => {
                Object::ServiceAccount(serde_saphyr::from_str(document).map_err(typed)?)
            }
            "DaemonSet" => Object::DaemonSet(serde_saphyr::from_str(document).map_err(typed)?),
            "Service" => Object::Service(serde_saphyr::from_str(document).map_err(typed)?),
            "ConfigMap" => Object::ConfigMap(serde_saphyr::from_str(document).map_err(typed)?),
            "Job" => Object::Job(serde_saphyr::from_str(document).map_err(typed)?),
            "ServiceMonitor" => {
                Object::ServiceMonitor(serde_saphyr::from_str(document).map_err(typed)?)
            }
            other => return Err(format!("kind {other:?} is not one reflektor generates")),
        })
    }
}

/// The names every object shares.
pub const NAME: &str = "reflektor";
const BOOTSTRAP_SERVICE: &str = "reflektor-bootstrap";
const METRICS_SERVICE: &str = "reflektor-metrics";

fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), NAME.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ])
}

fn metadata(name: &str, options: &Options, component: &str) -> ObjectMeta {
    let mut labels = labels(component);
    labels.insert(
        "app.kubernetes.io/version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(options.namespace.clone()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// A DaemonSet of `component`'s pods, with what every reflektor pod shares:
/// its selector and labels, no service account token, and the options'
/// priority class, tolerations and node selector.
fn daemon_set(name: &str, options: &Options, component: &str, pod: PodSpec) -> DaemonSet {
    DaemonSet {
        metadata: metadata(name, options, component),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels(component)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(component)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    priority_class_name: options.priority_class_name.clone(),
                    tolerations: Some(options.tolerations.clone()),
                    node_selector: Some(options.node_selector.clone()),
                    ..pod
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    }
}

/// What `kubectl apply` installs.
pub fn install(options: &Options) -> Vec<Object> {
    let mut objects: Vec<Object> = namespace(options)
        .into_iter()
        .map(Object::Namespace)
        .collect();
    objects.extend([
        Object::ServiceAccount(ServiceAccount {
            metadata: metadata(NAME, options, "agent"),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }),
        Object::DaemonSet(Box::new(daemonset::agent(options))),
        // DNS bootstrap: every agent's address, Ready or not, since an
        // agent becomes Ready only after its first bootstrap round.
        Object::Service(Box::new(service(
            BOOTSTRAP_SERVICE,
            options,
            "agent",
            ServiceSpec {
                cluster_ip: Some("None".to_owned()),
                publish_not_ready_addresses: Some(true),
                ..ServiceSpec::default()
            },
            ("router", options.ports.router),
        ))),
        Object::Service(Box::new(service(
            METRICS_SERVICE,
            options,
            "agent",
            ServiceSpec::default(),
            ("metrics", options.ports.metrics),
        ))),
    ]);
    if options.service_monitor {
        objects.push(Object::ServiceMonitor(observability::service_monitor(
            options,
        )));
    }
    if options.grafana_dashboard {
        objects.push(Object::ConfigMap(observability::dashboard(options)));
    }
    objects
}

/// What an uninstall applies after deleting the agent: `cleanup` on every
/// node, and a Job that completes once every node is clean.
pub fn uninstall(options: &Options) -> Vec<Object> {
    cleanup::objects(options)
}

/// Namespaces every cluster has: never created, labelled or, through
/// `kubectl delete -k`, deleted by reflektor's manifests.
const CLUSTER_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The agent needs host networking and host paths: the namespace must
/// admit privileged pods under Pod Security admission. `None` for a
/// namespace the cluster owns.
fn namespace(options: &Options) -> Option<Namespace> {
    if CLUSTER_NAMESPACES.contains(&options.namespace.as_str()) {
        return None;
    }
    let mut labels = labels("namespace");
    labels.insert(
        "pod-security.kubernetes.io/enforce".to_owned(),
        "privileged".to_owned(),
    );
    Some(Namespace {
        metadata: ObjectMeta {
            name: Some(options.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    })
}

fn service(
    name: &str,
    options: &Options,
    component: &str,
    spec: ServiceSpec,
    (port_name, port): (&str, u16),
) -> Service {
    Service {
        metadata: metadata(name, options, component),
        spec: Some(ServiceSpec {
            selector: Some(labels(component)),
            ports: Some(vec![ServicePort {
                name: Some(port_name.to_owned()),
                port: i32::from(port),
                target_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        port_name.to_owned(),
                    ),
                ),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..spec
        }),
        ..Service::default()
    }
}

/// Multi-document YAML, with a header saying where it came from.
pub fn to_yaml(objects: &[Object]) -> String {
    let mut text = format!(
        "# Generated by `reflektor manifests` ({}); do not edit: change the options instead.\n",
        env!("CARGO_PKG_VERSION")
    );
    for object in objects {
        text.push_str("---\n");
        text.push_str(
            &serde_saphyr::to_string(object).expect("Kubernetes objects serialise to YAML"),
        );
    }
    text
}

/// Every document of a multi-document YAML text, read back.
pub fn from_yaml(text: &str) -> Result<Vec<Object>, String> {
    text.split("\n---\n")
        .skip(1)
        .map(Object::from_yaml)
        .collect()
}

/// The files of an output directory: `deploy/` is this with the defaults.
pub fn files(options: &Options) -> Vec<(&'static str, String)> {
    let kustomization = |resource: &str| {
        format!(
            "# Generated by `reflektor manifests --out-dir`; do not edit.\n\
             apiVersion: kustomize.config.k8s.io/v1beta1\n\
             kind: Kustomization\n\
             resources:\n- {resource}\n"
        )
    };
    vec![
        ("reflektor.yaml", to_yaml(&install(options))),
        ("kustomization.yaml", kustomization("reflektor.yaml")),
        ("cleanup/cleanup.yaml", to_yaml(&uninstall(options))),
        ("cleanup/kustomization.yaml", kustomization("cleanup.yaml")),
    ]
}
