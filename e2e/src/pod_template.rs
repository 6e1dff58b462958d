//! A pod template, as kubelet would run it: the generated DaemonSet's
//! `PodSpec` turned into CRI configs, with the downward API resolved and
//! `$(VAR)` expanded in arguments. Every field the template sets is either
//! translated or refused by name, so nothing in it is silently dropped: the
//! set of fields understood is checked against the template's JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, Mount,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use serde_json::Value;

/// What kubelet knows of the pod's node and cluster: the downward API's
/// values, and the cluster DNS it points `ClusterFirst*` pods at.
#[derive(Debug, Clone)]
pub struct Downward {
    pub node_ip: String,
    pub node_name: String,
    /// The pod's namespace, first in its DNS search path.
    pub namespace: String,
    /// The cluster DNS server's address and the cluster domain; `None` where
    /// no cluster DNS runs, and a pod that needs it is refused.
    pub cluster_dns: Option<(String, String)>,
}

/// The pod's `/etc/resolv.conf`, as kubelet sets it through CRI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What happens to a container that exits: the pod's `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

/// An HTTP probe, resolved to a port number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

/// One container, ready for `CreateContainer`, and its probes.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub config: ContainerConfig,
    pub startup: Option<HttpProbe>,
    pub readiness: Option<HttpProbe>,
    pub liveness: Option<HttpProbe>,
}

/// A whole pod.
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub host_network: bool,
    /// `None`: the node's own resolv.conf.
    pub dns: Option<Dns>,
    pub restart: Restart,
    /// How long a container has between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub init_containers: Vec<ContainerPlan>,
    pub containers: Vec<ContainerPlan>,
    /// Host directories a `Directory` volume needs to exist, as kubelet
    /// checks before it starts the pod.
    pub required_dirs: Vec<String>,
    /// Host directories a `DirectoryOrCreate` volume asks for.
    pub create_dirs: Vec<String>,
}

/// Fields of a PodSpec this translation handles. Scheduling fields only
/// decide which node runs the pod, which the harness has already decided.
const POD_FIELDS: [&str; 12] = [
    "containers",
    "initContainers",
    "volumes",
    "hostNetwork",
    "dnsPolicy",
    "serviceAccountName",
    "automountServiceAccountToken",
    "priorityClassName",
    "tolerations",
    "nodeSelector",
    "terminationGracePeriodSeconds",
    "restartPolicy",
];
const CONTAINER_FIELDS: [&str; 11] = [
    "name",
    "image",
    "args",
    "env",
    "ports",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "volumeMounts",
    "securityContext",
    "resources",
];
const PROBE_FIELDS: [&str; 4] = [
    "httpGet",
    "periodSeconds",
    "failureThreshold",
    "timeoutSeconds",
];
const PORT_FIELDS: [&str; 3] = ["name", "containerPort", "protocol"];
const HTTP_GET_FIELDS: [&str; 2] = ["path", "port"];
const RESOURCE_FIELDS: [&str; 2] = ["requests", "limits"];
/// What CRI can enforce; a request for anything else has no effect on the
/// node, so a template asking for it is refused rather than ignored.
const RESOURCE_NAMES: [&str; 2] = ["cpu", "memory"];
const SECURITY_FIELDS: [&str; 4] = [
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "runAsUser",
    "capabilities",
];

/// Refuses a JSON object with a key outside `known`, naming it.
fn only(value: &Value, known: &[&str], what: &str) -> Result<()> {
    let keys: BTreeSet<&str> = value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let unknown: Vec<&str> = keys.into_iter().filter(|k| !known.contains(k)).collect();
    ensure!(
        unknown.is_empty(),
        "{what} sets {unknown:?}, which the harness cannot run as kubelet would; teach \
         e2e/src/pod_template.rs, or leave them out of the template"
    );
    Ok(())
}

/// kubelet's name for attempt `attempt` of a container's log, under the
/// pod's log directory.
pub fn log_path(container: &str, attempt: u32) -> String {
    format!("{container}/{attempt}.log")
}

/// A count of seconds from the template, for a field `what` names.
fn seconds(value: Option<i64>, default: u64, what: &str) -> Result<Duration> {
    let Some(value) = value else {
        return Ok(Duration::from_secs(default));
    };
    let secs = u64::try_from(value)
        .with_context(|| format!("{what} is {value}; expected 0 or more seconds"))?;
    Ok(Duration::from_secs(secs))
}

pub fn plan(spec: &PodSpec, downward: &Downward) -> Result<PodPlan> {
    only(&serde_json::to_value(spec)?, &POD_FIELDS, "the pod")?;
    ensure!(
        spec.automount_service_account_token == Some(false),
        "the pod mounts a service account token; the harness has no API server to issue one"
    );
    let mut volumes = BTreeMap::new();
    let mut create_dirs = Vec::new();
    let mut required_dirs = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        let host = volume.host_path.as_ref().with_context(|| {
            format!(
                "volume {} is not a hostPath; only hostPath volumes are supported",
                volume.name
            )
        })?;
        match host.type_.as_deref() {
            Some("Directory") => required_dirs.push(host.path.clone()),
            Some("DirectoryOrCreate") => create_dirs.push(host.path.clone()),
            other => bail!(
                "volume {}: hostPath type {other:?} is not supported (Directory, \
                 DirectoryOrCreate)",
                volume.name
            ),
        }
        volumes.insert(volume.name.clone(), host.path.clone());
    }
    let plan_all = |containers: &[Container]| {
        containers
            .iter()
            .map(|c| container(c, &volumes, downward))
            .collect::<Result<Vec<_>>>()
    };
    let host_network = spec.host_network == Some(true);
    let restart = match spec.restart_policy.as_deref() {
        None | Some("Always") => Restart::Always,
        Some("OnFailure") => Restart::OnFailure,
        Some("Never") => Restart::Never,
        Some(other) => bail!("restartPolicy {other:?} is not Always, OnFailure or Never"),
    };
    Ok(PodPlan {
        host_network,
        dns: dns(spec.dns_policy.as_deref(), host_network, downward)?,
        restart,
        grace: seconds(
            spec.termination_grace_period_seconds,
            30,
            "terminationGracePeriodSeconds",
        )?,
        init_containers: plan_all(spec.init_containers.as_deref().unwrap_or_default())?,
        containers: plan_all(&spec.containers)?,
        required_dirs,
        create_dirs,
    })
}

/// kubelet's resolv.conf for a pod: cluster DNS first for `ClusterFirst`
/// (`ClusterFirstWithHostNet` on the host network, where plain
/// `ClusterFirst` falls back to the node's), else the node's own.
fn dns(policy: Option<&str>, host_network: bool, downward: &Downward) -> Result<Option<Dns>> {
    let cluster = match policy.unwrap_or("ClusterFirst") {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        "Default" => false,
        other => bail!(
            "dnsPolicy {other:?} is not supported (ClusterFirst, ClusterFirstWithHostNet, Default)"
        ),
    };
    if !cluster {
        return Ok(None);
    }
    let (server, domain) = downward.cluster_dns.clone().with_context(|| {
        format!(
            "the pod's dnsPolicy {policy:?} asks for cluster DNS, and the harness was given none"
        )
    })?;
    let namespace = &downward.namespace;
    Ok(Some(Dns {
        servers: vec![server],
        searches: vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ],
        options: vec!["ndots:5".to_owned()],
    }))
}

fn container(
    c: &Container,
    volumes: &BTreeMap<String, String>,
    downward: &Downward,
) -> Result<ContainerPlan> {
    let what = format!("container {}", c.name);
    only(&serde_json::to_value(c)?, &CONTAINER_FIELDS, &what)?;
    let mut env = BTreeMap::new();
    for var in c.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) => {
                let field = from
                    .field_ref
                    .as_ref()
                    .with_context(|| format!("{what}: env {} is not a fieldRef", var.name))?;
                match field.field_path.as_str() {
                    "status.hostIP" => downward.node_ip.clone(),
                    "spec.nodeName" => downward.node_name.clone(),
                    other => bail!("{what}: env {} reads {other}, not supported", var.name),
                }
            }
            _ => bail!("{what}: env {} has neither value nor valueFrom", var.name),
        };
        env.insert(var.name.clone(), value);
    }
    let args = c
        .args
        .iter()
        .flatten()
        .map(|arg| expand(arg, &env))
        .collect();
    let mut mounts = Vec::new();
    for mount in c.volume_mounts.iter().flatten() {
        let host = volumes
            .get(&mount.name)
            .with_context(|| format!("{what} mounts {}, which is not a volume", mount.name))?;
        mounts.push(Mount {
            container_path: mount.mount_path.clone(),
            host_path: host.clone(),
            readonly: mount.read_only == Some(true),
            ..Default::default()
        });
    }
    let mut ports = BTreeMap::new();
    for port in c.ports.iter().flatten() {
        only(
            &serde_json::to_value(port)?,
            &PORT_FIELDS,
            &format!("{what}'s ports"),
        )?;
        ensure!(
            port.protocol.as_deref().unwrap_or("TCP") == "TCP",
            "{what}: port {:?} is {:?}; only TCP ports are probed",
            port.name,
            port.protocol
        );
        let number = u16::try_from(port.container_port).with_context(|| {
            format!(
                "{what}: containerPort {} is not a port",
                port.container_port
            )
        })?;
        if let Some(name) = &port.name {
            ports.insert(name.clone(), number);
        }
    }
    let probe = |probe: &Option<Probe>, kind: &str| -> Result<Option<HttpProbe>> {
        let Some(probe) = probe else { return Ok(None) };
        only(
            &serde_json::to_value(probe)?,
            &PROBE_FIELDS,
            &format!("{what}'s {kind} probe"),
        )?;
        let http = probe
            .http_get
            .as_ref()
            .with_context(|| format!("{what}'s {kind} probe is not httpGet"))?;
        only(
            &serde_json::to_value(http)?,
            &HTTP_GET_FIELDS,
            &format!("{what}'s {kind} probe's httpGet"),
        )?;
        let port = match &http.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => u16::try_from(*n)?,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => *ports
                .get(name)
                .with_context(|| format!("{what}'s {kind} probe names port {name}"))?,
        };
        Ok(Some(HttpProbe {
            path: http.path.clone().unwrap_or_else(|| "/".to_owned()),
            port,
            period: seconds(
                probe.period_seconds.map(i64::from),
                10,
                &format!("{what}'s {kind} periodSeconds"),
            )?,
            timeout: seconds(
                probe.timeout_seconds.map(i64::from),
                1,
                &format!("{what}'s {kind} timeoutSeconds"),
            )?,
            failure_threshold: u32::try_from(probe.failure_threshold.unwrap_or(3))?,
        }))
    };
    let security = match &c.security_context {
        Some(sc) => {
            only(
                &serde_json::to_value(sc)?,
                &SECURITY_FIELDS,
                &format!("{what}'s securityContext"),
            )?;
            LinuxContainerSecurityContext {
                readonly_rootfs: sc.read_only_root_filesystem == Some(true),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                run_as_user: sc.run_as_user.map(|value| Int64Value { value }),
                capabilities: sc.capabilities.as_ref().map(|caps| Capability {
                    add_capabilities: caps.add.clone().unwrap_or_default(),
                    drop_capabilities: caps.drop.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
        None => LinuxContainerSecurityContext::default(),
    };
    let mut memory_limit = 0;
    let mut cpu_shares = 0;
    if let Some(resources) = &c.resources {
        only(
            &serde_json::to_value(resources)?,
            &RESOURCE_FIELDS,
            &format!("{what}'s resources"),
        )?;
        for (kind, amounts) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            for name in amounts.iter().flat_map(|a| a.keys()) {
                ensure!(
                    RESOURCE_NAMES.contains(&name.as_str()),
                    "{what}'s resources.{kind} names {name}; only cpu and memory reach CRI"
                );
            }
        }
        if let Some(limit) = resources.limits.as_ref().and_then(|l| l.get("memory")) {
            memory_limit = bytes(&limit.0)?;
        }
        // kubelet's cgroup v1 conversion: 1024 shares per CPU, 2 at least.
        if let Some(request) = resources.requests.as_ref().and_then(|r| r.get("cpu")) {
            cpu_shares = (millicpu(&request.0)? * 1024 / 1000).max(2);
        }
        ensure!(
            resources
                .limits
                .as_ref()
                .is_none_or(|l| !l.contains_key("cpu")),
            "{what} sets a CPU limit, which the harness does not translate (CFS quota)"
        );
    }
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c.name.clone(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: c.image.clone().context("a container without an image")?,
            ..Default::default()
        }),
        args,
        envs: env
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
        mounts,
        log_path: log_path(&c.name, 0),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: memory_limit,
                cpu_shares,
                ..Default::default()
            }),
            security_context: Some(security),
        }),
        ..Default::default()
    };
    Ok(ContainerPlan {
        config,
        startup: probe(&c.startup_probe, "startup")?,
        readiness: probe(&c.readiness_probe, "readiness")?,
        liveness: probe(&c.liveness_probe, "liveness")?,
    })
}

/// Kubernetes' `$(VAR)` expansion in arguments: a defined variable is
/// replaced, an undefined one left as it is, and `$$` is a literal `$`.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(close) = rest.strip_prefix("$(").and_then(|r| r.find(')')) {
            let name = &rest[2..2 + close];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&rest[..3 + close]),
            }
            rest = &rest[3 + close..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A CPU quantity in thousandths of a CPU: `10m`, `0.5`, `2`.
fn millicpu(quantity: &str) -> Result<i64> {
    let parsed = match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<i64>().ok(),
        None => quantity
            .parse::<f64>()
            .ok()
            .map(|cpus| (cpus * 1000.0).round() as i64),
    };
    parsed.with_context(|| format!("CPU quantity {quantity:?}: expected e.g. 10m, 0.5 or 2"))
}

/// A memory quantity in bytes: `256Mi`, `1Gi`, `128M`, `1000`.
fn bytes(quantity: &str) -> Result<i64> {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let number: i64 = number
        .parse()
        .with_context(|| format!("memory quantity {quantity:?}"))?;
    let factor: i64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => bail!("memory quantity {quantity:?}: unit {unit:?} is not supported"),
    };
    Ok(number * factor)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use reflektor::manifests::{self, Object, Options};

    use super::*;

    fn generated_pod() -> PodSpec {
        manifests::install(&Options::default())
            .into_iter()
            .find_map(|object| match object {
                Object::DaemonSet(daemonset) => {
                    let DaemonSet { spec, .. } = *daemonset;
                    spec?.template.spec
                }
                _ => None,
            })
            .expect("the install has the agent's DaemonSet")
    }

    fn downward() -> Downward {
        Downward {
            node_ip: "127.0.1.7".to_owned(),
            node_name: "node-7".to_owned(),
            namespace: "reflektor".to_owned(),
            cluster_dns: Some(("127.0.53.53".to_owned(), "cluster.local".to_owned())),
        }
    }

    /// Every mount, env var, argument and probe of the generated template
    /// reaches the CRI config: nothing in it is dropped on the way.
    #[test]
    fn the_generated_template_is_translated_whole() {
        let pod = generated_pod();
        let plan = plan(&pod, &downward()).unwrap();
        assert!(plan.host_network);
        let sources = pod
            .init_containers
            .iter()
            .flatten()
            .chain(pod.containers.iter());
        let plans = plan.init_containers.iter().chain(plan.containers.iter());
        for (source, planned) in sources.zip(plans) {
            let config = &planned.config;
            assert_eq!(
                config.mounts.len(),
                source.volume_mounts.as_ref().map_or(0, Vec::len),
                "{}: mounts",
                source.name
            );
            for mount in source.volume_mounts.iter().flatten() {
                let cri = config
                    .mounts
                    .iter()
                    .find(|m| m.container_path == mount.mount_path)
                    .unwrap_or_else(|| panic!("{} lost {}", source.name, mount.mount_path));
                assert_eq!(cri.readonly, mount.read_only == Some(true));
                assert_eq!(
                    cri.host_path, mount.mount_path,
                    "host paths are mounted in place"
                );
            }
            for var in source.env.iter().flatten() {
                assert!(
                    config.envs.iter().any(|kv| kv.key == var.name),
                    "{} lost env {}",
                    source.name,
                    var.name
                );
            }
            assert_eq!(config.args.len(), source.args.as_ref().map_or(0, Vec::len));
            assert!(
                config.args.iter().all(|a| !a.contains("$(")),
                "{}: unexpanded {:?}",
                source.name,
                config.args
            );
            assert_eq!(planned.startup.is_some(), source.startup_probe.is_some());
            assert_eq!(
                planned.readiness.is_some(),
                source.readiness_probe.is_some()
            );
            assert_eq!(planned.liveness.is_some(), source.liveness_probe.is_some());
        }
        let registry = &plan.containers[0];
        assert_eq!(
            registry.readiness,
            Some(HttpProbe {
                path: "/readyz".to_owned(),
                port: 5000,
                period: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                failure_threshold: 3,
            })
        );
        assert_eq!(
            plan.dns.as_ref().map(|dns| dns.servers.clone()),
            Some(vec!["127.0.53.53".to_owned()]),
            "ClusterFirstWithHostNet resolves through cluster DNS"
        );
        let resources = registry
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .unwrap();
        assert_eq!(resources.memory_limit_in_bytes, 256 << 20);
        assert_eq!(
            resources.cpu_shares, 10,
            "10m of CPU, as kubelet converts it"
        );
        assert_eq!(plan.restart, Restart::Always);
        assert_eq!(plan.grace, Duration::from_secs(30));
        assert!(
            registry
                .config
                .args
                .contains(&"--registry-addr=127.0.1.7:5000".to_owned()),
            "{:?}",
            registry.config.args
        );
        let init = &plan.init_containers[0].config;
        assert!(
            init.args.contains(&"http://127.0.1.7:5000".to_owned()),
            "{:?}",
            init.args
        );
    }

    #[test]
    fn what_cannot_be_run_is_refused_by_name() {
        let mut pod = generated_pod();
        pod.host_pid = Some(true);
        let error = plan(&pod, &downward()).unwrap_err().to_string();
        assert!(error.contains("hostPID"), "{error}");

        let mut pod = generated_pod();
        pod.containers[0].command = Some(vec!["/bin/sh".to_owned()]);
        let error = plan(&pod, &downward()).unwrap_err().to_string();
        assert!(error.contains("command"), "{error}");

        let mut pod = generated_pod();
        if let Some(port) = pod.containers[0].ports.as_mut().and_then(|p| p.first_mut()) {
            port.host_port = Some(5000);
        }
        let error = plan(&pod, &downward()).unwrap_err().to_string();
        assert!(error.contains("hostPort"), "{error}");

        let without_dns = Downward {
            cluster_dns: None,
            ..downward()
        };
        let error = plan(&generated_pod(), &without_dns)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cluster DNS"), "{error}");
    }

    #[test]
    fn arguments_expand_as_kubernetes_expands_them() {
        let env = BTreeMap::from([("NODE_IP".to_owned(), "10.0.0.7".to_owned())]);
        assert_eq!(
            expand("http://$(NODE_IP):5000", &env),
            "http://10.0.0.7:5000"
        );
        assert_eq!(expand("$(UNSET)", &env), "$(UNSET)");
        assert_eq!(expand("$$(NODE_IP)", &env), "$(NODE_IP)");
        assert_eq!(expand("cost: $5", &env), "cost: $5");
        assert_eq!(bytes("256Mi").unwrap(), 256 << 20);
        assert_eq!(millicpu("10m").unwrap(), 10);
        assert_eq!(millicpu("0.5").unwrap(), 500);
        assert!(millicpu("lots").is_err());
    }
}
