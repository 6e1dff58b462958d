//! The uninstall path: after the agent is deleted, a DaemonSet runs
//! `cleanup` on every node (restoring certs.d, then answering /readyz), and
//! a Job runs `cleanup-wait`, which completes once every node answers. No
//! node is left with hosts.toml files pointing at a mirror that is gone.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::daemonset::{HostDir, http_probe, node_ip, port, security_context};
use super::{Object, Options, daemon_set, labels, metadata, namespace, service};

const CLEANUP: &str = "reflektor-cleanup";

pub fn objects(options: &Options) -> Vec<Object> {
    // Applied after the install is deleted, the namespace may be gone.
    let mut objects: Vec<Object> = namespace(options)
        .into_iter()
        .map(Object::Namespace)
        .collect();
    objects.extend([
        Object::DaemonSet(Box::new(daemonset(options))),
        // Not-ready pods are listed too, so `cleanup-wait` waits for them.
        Object::Service(Box::new(service(
            CLEANUP,
            options,
            "cleanup",
            ServiceSpec {
                cluster_ip: Some("None".to_owned()),
                publish_not_ready_addresses: Some(true),
                ..ServiceSpec::default()
            },
            ("readyz", options.ports.cleanup),
        ))),
        Object::Job(Box::new(wait_job(options))),
    ]);
    objects
}

fn daemonset(options: &Options) -> DaemonSet {
    let certs_d = &options.containerd.certs_d;
    let dir = HostDir {
        volume: "containerd-certs-d",
        path: certs_d.clone(),
        kind: "DirectoryOrCreate",
    };
    let container = Container {
        name: "cleanup".to_owned(),
        image: Some(options.image.clone()),
        args: Some(vec![
            "cleanup".to_owned(),
            format!("--log-level={}", options.log_level),
            format!("--containerd-registry-config-path={certs_d}"),
            format!("--addr=$(NODE_IP):{}", options.ports.cleanup),
        ]),
        env: Some(vec![node_ip()]),
        ports: Some(vec![port("readyz", options.ports.cleanup)]),
        readiness_probe: Some(http_probe("/readyz", "readyz", 2)),
        volume_mounts: Some(vec![dir.mount(false)]),
        security_context: Some(security_context()),
        ..Container::default()
    };
    daemon_set(
        CLEANUP,
        options,
        "cleanup",
        PodSpec {
            // As the agent: no pod IP needed, so a node whose CNI is broken
            // is still cleaned.
            host_network: Some(true),
            containers: vec![container],
            volumes: Some(vec![dir.volume()]),
            ..PodSpec::default()
        },
    )
}

fn wait_job(options: &Options) -> Job {
    let endpoint = format!(
        "{CLEANUP}.{}.svc.{}.:{}",
        options.namespace, options.cluster_domain, options.ports.cleanup
    );
    Job {
        metadata: metadata("reflektor-cleanup-wait", options, "cleanup"),
        spec: Some(JobSpec {
            backoff_limit: Some(3),
            // Nodes that never run the cleanup pod fail the uninstall
            // rather than hang it.
            active_deadline_seconds: Some(600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels("cleanup-wait")),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    restart_policy: Some("Never".to_owned()),
                    containers: vec![Container {
                        name: "cleanup-wait".to_owned(),
                        image: Some(options.image.clone()),
                        args: Some(vec![
                            "cleanup-wait".to_owned(),
                            format!("--log-level={}", options.log_level),
                            format!("--probe-endpoint={endpoint}"),
                            "--threshold=3".to_owned(),
                            "--period=2s".to_owned(),
                        ]),
                        security_context: Some(security_context()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}
