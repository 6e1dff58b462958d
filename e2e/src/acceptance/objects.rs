//! The generated objects on the cluster: server-side apply, rollouts
//! waited for with a deadline and progress, a stuck rollout explained by
//! its pods, and the uninstall through the cleanup path.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams, Patch,
    PatchParams, PostParams,
};
use kube::{Client, Resource};
use reflektor::manifests::{self, Object};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{KubeCheck, Suite, progress};
use crate::report::Cell;

/// The field manager the suite's server-side applies are recorded under.
pub const FIELD_MANAGER: &str = "reflektor-e2e";

/// Server-side apply of one generated object, forced: the suite owns what
/// it installs.
pub async fn apply(client: &Client, object: &Object) -> Result<()> {
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    match object {
        Object::Namespace(o) => {
            let api: Api<Namespace> = Api::all(client.clone());
            patch(api, o, &ssa).await
        }
        Object::ServiceAccount(o) => patch(namespaced::<ServiceAccount>(client, o)?, o, &ssa).await,
        Object::DaemonSet(o) => patch(namespaced::<DaemonSet>(client, o)?, o, &ssa).await,
        Object::Service(o) => patch(namespaced::<Service>(client, o)?, o, &ssa).await,
        Object::ConfigMap(o) => patch(namespaced::<ConfigMap>(client, o)?, o, &ssa).await,
        Object::Job(o) => patch(namespaced::<Job>(client, o)?, o, &ssa).await,
        Object::ServiceMonitor(o) => {
            // A CRD of the Prometheus operator: no k8s-openapi type.
            let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
            let resource = ApiResource::from_gvk_with_plural(&gvk, "servicemonitors");
            let namespace = o
                .metadata
                .namespace
                .as_deref()
                .context("a generated ServiceMonitor without a namespace")?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            let name = o.metadata.name.as_deref().unwrap_or_default();
            api.patch(name, &ssa, &Patch::Apply(o))
                .await
                .with_context(|| format!("applying ServiceMonitor {name}; is the Prometheus operator's CRD installed?"))?;
            Ok(())
        }
    }
}

fn namespaced<K>(client: &Client, object: &K) -> Result<Api<K>>
where
    K: Resource<Scope = NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    let namespace = object
        .meta()
        .namespace
        .as_deref()
        .context("a generated namespaced object without a namespace")?;
    Ok(Api::namespaced(client.clone(), namespace))
}

async fn patch<K>(api: Api<K>, object: &K, ssa: &PatchParams) -> Result<()>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
    <K as Resource>::DynamicType: Default,
{
    let name = object
        .meta()
        .name
        .clone()
        .context("a generated object without a name")?;
    let kind = K::kind(&Default::default()).into_owned();
    api.patch(&name, ssa, &Patch::Apply(object))
        .await
        .with_context(|| format!("applying {kind} {name} (server-side apply)"))?;
    Ok(())
}

/// Whether `daemonset` has rolled out: every node it should run on has an
/// updated, Ready pod, as `kubectl rollout status` judges it.
pub fn rolled_out(daemonset: &DaemonSet) -> bool {
    let Some(status) = &daemonset.status else {
        return false;
    };
    let generation = daemonset.metadata.generation.unwrap_or(0);
    status.observed_generation.unwrap_or(0) >= generation
        && status.desired_number_scheduled > 0
        && status.updated_number_scheduled.unwrap_or(0) == status.desired_number_scheduled
        && status.number_ready == status.desired_number_scheduled
}

/// Every pod carrying `selector`, terminating ones included.
pub async fn pods(client: &Client, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(pods
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing pods {selector} in {namespace}"))?
        .items)
}

/// The node a DaemonSet's pod is for: where it runs, or, before the
/// scheduler has bound it, the node its affinity names (the DaemonSet
/// controller pins each pod to one node by `metadata.name`).
pub fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = &spec.node_name {
        return Some(node.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|term| term.match_fields.iter().flatten())
        .find(|field| field.key == "metadata.name")
        .and_then(|field| field.values.as_ref()?.first().cloned())
}

/// Each node's pod of the DaemonSet whose pods carry `selector`, by node;
/// pods on their way out are left out.
pub async fn pods_by_node(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<BTreeMap<String, Pod>> {
    Ok(pods(client, namespace, selector)
        .await?
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| Some((node_of(&pod)?, pod)))
        .collect())
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Why a pod is not Ready, as `kubectl describe` would show it: each
/// container's waiting reason and message, its last exit, and for a
/// container that crashed, the last lines its previous run wrote (where
/// the agent says why it refuses a node).
pub async fn why_not_ready(client: &Client, pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let Some(status) = &pod.status else {
        return format!("pod {name} has no status yet");
    };
    let mut parts = vec![format!(
        "pod {name} is {}",
        status.phase.as_deref().unwrap_or("Unknown")
    )];
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status != "True");
    if let Some(condition) = unscheduled {
        parts.push(format!(
            "not scheduled: {} {}",
            condition.reason.as_deref().unwrap_or(""),
            condition.message.as_deref().unwrap_or("")
        ));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in containers {
        let state = container.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            parts.push(format!(
                "{} waiting: {} {}",
                container.name,
                waiting.reason.as_deref().unwrap_or(""),
                waiting.message.as_deref().unwrap_or("")
            ));
        }
        let last = container
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref());
        if let Some(terminated) = last {
            parts.push(format!(
                "{} last exited {}{}",
                container.name,
                terminated.exit_code,
                terminated
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let previous = LogParams {
                container: Some(container.name.clone()),
                previous: true,
                tail_lines: Some(5),
                ..LogParams::default()
            };
            if let Ok(log) = pods.logs(&name, &previous).await {
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                if !lines.is_empty() {
                    parts.push(format!("its last words: {}", lines.join(" / ")));
                }
            }
        }
    }
    parts.join("; ")
}

impl Suite {
    fn namespace(&self) -> &str {
        &self.options.namespace
    }

    /// Applies the install, then waits for the agent's rollout: a
    /// `Installed` cell per node.
    pub(super) async fn install(&mut self) -> Result<()> {
        let objects = manifests::install(&self.manifests);
        progress(&format!(
            "installing {} objects into namespace {} (server-side apply, field manager {FIELD_MANAGER})",
            objects.len(),
            self.namespace()
        ));
        self.refuse_beside_another_install().await?;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for object in &objects {
            match object {
                // Created, not applied: an apply would take over a
                // namespace someone else made meanwhile, and the uninstall
                // would delete it.
                Object::Namespace(namespace) => {
                    match namespaces.create(&PostParams::default(), namespace).await {
                        Ok(_) => self.created_namespace = true,
                        Err(kube::Error::Api(status)) if status.is_already_exists() => bail!(
                            "namespace {} already exists; the suite installs into a fresh one \
                             and deletes it afterwards. Fix: pass another --namespace, or \
                             delete that one",
                            self.namespace()
                        ),
                        Err(error) => {
                            return Err(error).with_context(|| {
                                format!("creating namespace {}", self.namespace())
                            });
                        }
                    }
                }
                _ => apply(&self.client, object).await?,
            }
        }
        let agent = self.agent.clone();
        self.wait_rollout(&agent, KubeCheck::Installed).await
    }

    /// Refuses a cluster where reflektor or Spegel already runs: the suite's
    /// agents would want the same host ports, and its uninstall would
    /// restore the same certs.d backup, undoing that install's mirrors.
    async fn refuse_beside_another_install(&self) -> Result<()> {
        let daemonsets: Api<DaemonSet> = Api::all(self.client.clone());
        for name in [manifests::NAME, "spegel"] {
            let found = daemonsets
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={name}")))
                .await
                .with_context(|| format!("looking for DaemonSets of {name} in every namespace"))?;
            if let Some(existing) = found.items.first() {
                bail!(
                    "{name} already runs on this cluster (DaemonSet {}/{}); the suite's agents \
                     would want its host ports, and the suite's uninstall would restore the \
                     certs.d backup it shares, removing that install's mirrors. Fix: run the \
                     suite on a cluster without it",
                    existing.metadata.namespace.as_deref().unwrap_or_default(),
                    existing.metadata.name.as_deref().unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// Polls the DaemonSet `name` until it has rolled out or the deadline
    /// passes, printing each change; then records a cell per node.
    pub(super) async fn wait_rollout(
        &mut self,
        workload: &Workload,
        check: KubeCheck,
    ) -> Result<()> {
        let (name, selector) = (workload.name.as_str(), workload.selector.as_str());
        let daemonsets: Api<DaemonSet> = Api::namespaced(self.client.clone(), self.namespace());
        let started = Instant::now();
        let deadline = started + self.options.deadline;
        let mut last = String::new();
        let done = loop {
            let daemonset = daemonsets
                .get(name)
                .await
                .with_context(|| format!("reading DaemonSet {name}"))?;
            let status = daemonset.status.clone().unwrap_or_default();
            let line = format!(
                "{name}: {}/{} pods Ready, {} updated",
                status.number_ready,
                status.desired_number_scheduled,
                status.updated_number_scheduled.unwrap_or(0)
            );
            if line != last {
                progress(&line);
                last = line;
            }
            if rolled_out(&daemonset) {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(self.options.poll).await;
        };
        let took = started.elapsed();
        let pods = pods_by_node(&self.client, self.namespace(), selector).await?;
        let nodes: Vec<String> = self.rows.iter().map(|r| r.node.clone()).collect();
        let mut stuck = Vec::new();
        for node in nodes {
            let cell = match pods.get(&node) {
                Some(pod) if !is_ready(pod) && self.not_ready.contains_key(&node) => {
                    let why = format!(
                        "{}; its pod {} cannot become Ready there",
                        self.not_ready[&node],
                        pod.metadata.name.as_deref().unwrap_or_default()
                    );
                    stuck.push(format!("{node}: {why}"));
                    Cell::Fail { detail: why }
                }
                Some(pod) if is_ready(pod) => Cell::pass(
                    format!(
                        "pod {} Ready",
                        pod.metadata.name.as_deref().unwrap_or_default()
                    ),
                    Some(took),
                ),
                Some(pod) => {
                    let why = why_not_ready(&self.client, pod).await;
                    stuck.push(format!("{node}: {why}"));
                    Cell::Fail { detail: why }
                }
                None => {
                    let why = format!(
                        "no pod of DaemonSet {name} on this node; check its taints and the \
                         DaemonSet's tolerations and nodeSelector"
                    );
                    stuck.push(format!("{node}: {why}"));
                    Cell::Fail { detail: why }
                }
            };
            self.record(&node, check, cell);
        }
        if done && stuck.is_empty() {
            return Ok(());
        }
        bail!(
            "DaemonSet {name} did not roll out within {:?} ({last}): {}",
            self.options.deadline,
            stuck.join("; ")
        )
    }

    /// Uninstalls as the README says: the agent's DaemonSet deleted, the
    /// cleanup path applied and waited for (a `Cleanup` cell per node),
    /// then the namespace deleted with everything in it. Only a namespace
    /// this run created is touched; where the cleanup fails, the namespace
    /// is kept, since its cleanup DaemonSet may still be restoring nodes.
    pub(super) async fn uninstall(&mut self) -> Result<()> {
        if !self.created_namespace {
            return Ok(());
        }
        let namespace = self.namespace().to_owned();
        let daemonsets: Api<DaemonSet> = Api::namespaced(self.client.clone(), &namespace);
        // A failed read counts as installed: better one cleanup too many.
        let installed = !matches!(daemonsets.get_opt(&self.agent.name).await, Ok(None));
        if installed && let Err(error) = self.clean_nodes().await {
            return Err(error.context(format!(
                "the nodes may still point at the agent, so namespace {namespace} is kept with \
                 the cleanup in it: wait for Job reflektor-cleanup-wait there, then `kubectl \
                 delete namespace {namespace}`"
            )));
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces
            .delete(&namespace, &DeleteParams::background())
            .await
        {
            Ok(_) => {
                progress(&format!("namespace {namespace} deleted"));
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error).with_context(|| format!("deleting namespace {namespace}")),
        }
    }

    async fn clean_nodes(&mut self) -> Result<()> {
        let agent = self.agent.clone();
        let daemonsets: Api<DaemonSet> = Api::namespaced(self.client.clone(), self.namespace());
        match daemonsets
            .delete(&agent.name, &DeleteParams::foreground())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(error) => {
                return Err(error).with_context(|| format!("deleting DaemonSet {}", agent.name));
            }
        }
        // The cleanup goes on even if agents linger: their nodes need it most.
        let gone = self.wait_gone(&agent.selector).await;
        let objects = manifests::uninstall(&self.manifests);
        for object in &objects {
            apply(&self.client, object).await?;
        }
        let cleanup = objects
            .iter()
            .find_map(|object| match object {
                Object::DaemonSet(daemonset) => daemonset.metadata.name.clone(),
                _ => None,
            })
            .context("the uninstall has no DaemonSet")?;
        let cleanup = Workload::daemonset(&objects, &cleanup)?;
        self.wait_rollout(&cleanup, KubeCheck::Cleanup).await?;
        let job = objects
            .iter()
            .find_map(|object| match object {
                Object::Job(job) => job.metadata.name.clone(),
                _ => None,
            })
            .context("the uninstall has no Job")?;
        // A node's cleanup passes only once the Job has seen every node clean.
        if let Err(error) = self.wait_job(&job).await {
            let why = format!("its cleanup pod was Ready, but {error:#}");
            for row in &mut self.rows {
                if let Some(cell @ Cell::Pass { .. }) = row.cells.get_mut(&KubeCheck::Cleanup) {
                    *cell = Cell::Fail {
                        detail: why.clone(),
                    };
                }
            }
            return Err(error);
        }
        gone
    }

    /// Waits until no pod matches `selector`, terminating ones included.
    async fn wait_gone(&self, selector: &str) -> Result<()> {
        let deadline = Instant::now() + self.options.deadline;
        loop {
            let left = pods(&self.client, self.namespace(), selector).await?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "pods {selector} still exist {:?} after their DaemonSet was deleted: {:?}",
                    self.options.deadline,
                    left.iter()
                        .filter_map(|pod| pod.metadata.name.clone())
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    /// Waits until the Job `name` has succeeded; its failure is an error
    /// naming the Job's last condition.
    async fn wait_job(&self, name: &str) -> Result<()> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), self.namespace());
        let deadline = Instant::now() + self.options.deadline;
        loop {
            let job = jobs
                .get(name)
                .await
                .with_context(|| format!("reading Job {name}"))?;
            let status = job.status.unwrap_or_default();
            if status.succeeded.unwrap_or(0) >= 1 {
                progress(&format!("Job {name} completed: every node is clean"));
                return Ok(());
            }
            let failed = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Failed" && c.status == "True");
            if let Some(failed) = failed {
                bail!(
                    "Job {name} failed: {} {}",
                    failed.reason.as_deref().unwrap_or(""),
                    failed.message.as_deref().unwrap_or("")
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "Job {name} did not complete within {:?}",
                    self.options.deadline
                );
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }
}

/// A generated DaemonSet: its name, and the label selector of its pods.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub selector: String,
}

impl Workload {
    pub fn daemonset(objects: &[Object], name: &str) -> Result<Self> {
        let daemonset = objects
            .iter()
            .find_map(|object| match object {
                Object::DaemonSet(d) if d.metadata.name.as_deref() == Some(name) => Some(d),
                _ => None,
            })
            .with_context(|| format!("the manifests have no DaemonSet {name}"))?;
        let labels = daemonset
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .with_context(|| format!("DaemonSet {name} selects its pods by no label"))?;
        let selector = labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Workload {
            name: name.to_owned(),
            selector,
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DaemonSetStatus;

    use super::*;

    #[test]
    fn a_rollout_is_done_when_every_scheduled_pod_is_updated_and_ready() {
        let daemonset = |ready, updated, observed| DaemonSet {
            metadata: kube::api::ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            status: Some(DaemonSetStatus {
                desired_number_scheduled: 3,
                number_ready: ready,
                updated_number_scheduled: Some(updated),
                observed_generation: Some(observed),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(rolled_out(&daemonset(3, 3, 2)));
        assert!(!rolled_out(&daemonset(2, 3, 2)), "a pod not Ready");
        assert!(!rolled_out(&daemonset(3, 2, 2)), "an old pod");
        assert!(!rolled_out(&daemonset(3, 3, 1)), "status of an older spec");
    }
}
