//! The uninstall path: after the agent is deleted, a DaemonSet runs
//! `cleanup` on every node (restoring certs.d, then answering /readyz), and
//! a Job runs `cleanup-wait`, which completes once every node answers. No
//! node is left with hosts.toml files pointing at a mirror that is gone.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, HostPathVolumeSource, PodSpec, PodTemplateSpec, Probe,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Object, Options, labels, metadata, namespace, service};

const CLEANUP: &str = "reflektor-cleanup";
const PORT: u16 = 8080;

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
            ("readyz", PORT),
        ))),
        Object::Job(Box::new(wait_job(options))),
    ]);
    objects
}

fn daemonset(options: &Options) -> DaemonSet {
    let certs_d = &options.containerd.certs_d;
    let container = Container {
        name: "cleanup".to_owned(),
        image: Some(options.image.clone()),
        args: Some(vec![
            "cleanup".to_owned(),
            format!("--log-level={}", options.log_level),
            format!("--containerd-registry-config-path={certs_d}"),
            format!("--addr=:{PORT}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("readyz".to_owned()),
            container_port: i32::from(PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".to_owned()),
                port: IntOrString::String("readyz".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            ..Probe::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "containerd-certs-d".to_owned(),
            mount_path: certs_d.clone(),
            ..VolumeMount::default()
        }]),
        security_context: Some(super::daemonset::security_context()),
        ..Container::default()
    };
    DaemonSet {
        metadata: metadata(CLEANUP, options, "cleanup"),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels("cleanup")),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels("cleanup")),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    priority_class_name: options.priority_class_name.clone(),
                    tolerations: Some(options.tolerations.clone()),
                    node_selector: Some(options.node_selector.clone()),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "containerd-certs-d".to_owned(),
                        host_path: Some(HostPathVolumeSource {
                            path: certs_d.clone(),
                            type_: Some("DirectoryOrCreate".to_owned()),
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    }
}

fn wait_job(options: &Options) -> Job {
    let endpoint = format!(
        "{CLEANUP}.{}.svc.{}.:{PORT}",
        options.namespace, options.cluster_domain
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
                        security_context: Some(super::daemonset::security_context()),
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
