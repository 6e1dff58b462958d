//! Pods through a node's CRI runtime service, the calls kubelet makes: a
//! sandbox, then init containers to completion, then containers. The
//! release gate's pod mode builds on this.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, DnsConfig, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

use crate::node::ContainerdNode;
use crate::pod_template::{Dns, PodPlan};

/// A node's CRI runtime service.
#[derive(Clone)]
pub struct Pods {
    runtime: RuntimeServiceClient<Channel>,
    /// Where container logs go, as kubelet's `/var/log/pods`.
    logs: PathBuf,
}

/// A running sandbox, and the config its containers are created with.
#[derive(Clone)]
pub struct Sandbox {
    pub id: String,
    config: PodSandboxConfig,
}

impl Sandbox {
    /// Where CRI writes a container's log.
    pub fn log(&self, config: &ContainerConfig) -> PathBuf {
        PathBuf::from(&self.config.log_directory).join(&config.log_path)
    }
}

/// A pod whose containers run: each container's id and log.
pub struct Pod {
    pub sandbox: Sandbox,
    pub containers: Vec<(String, PathBuf)>,
}

impl Pods {
    pub async fn connect(node: &ContainerdNode) -> Result<Self> {
        let logs = node.dir().join("pod-logs");
        std::fs::create_dir_all(&logs)?;
        Ok(Pods {
            runtime: RuntimeServiceClient::new(crate::cri::channel(node).await?),
            logs,
        })
    }

    /// `RunPodSandbox` in the node's network namespace, as for a
    /// `hostNetwork` pod.
    pub async fn run_host_network_sandbox(&self, name: &str) -> Result<Sandbox> {
        self.run_sandbox(name, None).await
    }

    /// A host-network sandbox whose resolv.conf is `dns`, as kubelet sets
    /// it for a `ClusterFirstWithHostNet` pod; `None` keeps the node's.
    async fn run_sandbox(&self, name: &str, dns: Option<&Dns>) -> Result<Sandbox> {
        let config = PodSandboxConfig {
            dns_config: dns.map(|dns| DnsConfig {
                servers: dns.servers.clone(),
                searches: dns.searches.clone(),
                options: dns.options.clone(),
            }),
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("{name}-uid"),
                namespace: "reflektor".to_owned(),
                attempt: 0,
            }),
            log_directory: self.logs.join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        std::fs::create_dir_all(self.logs.join(name))?;
        let mut runtime = self.runtime.clone();
        let id = runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                ..Default::default()
            })
            .await
            .with_context(|| format!("CRI RunPodSandbox {name}"))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Sandbox { id, config })
    }

    /// Creates and starts a container of `image` with `args`, waits until
    /// it exits, and returns its exit code and log.
    pub async fn run_to_completion(
        &self,
        sandbox: &Sandbox,
        name: &str,
        image: &str,
        args: &[&str],
        patience: Duration,
    ) -> Result<(i32, String)> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        self.complete(sandbox, config, patience).await
    }

    /// Runs a container to its end: its exit code and log.
    async fn complete(
        &self,
        sandbox: &Sandbox,
        config: ContainerConfig,
        patience: Duration,
    ) -> Result<(i32, String)> {
        let log = sandbox.log(&config);
        let id = self.start(sandbox, config).await?;
        let code = self.wait_exited(&id, patience).await?;
        Ok((code, std::fs::read_to_string(log).unwrap_or_default()))
    }

    /// `CreateContainer` then `StartContainer`; the container's id.
    pub async fn start(&self, sandbox: &Sandbox, config: ContainerConfig) -> Result<String> {
        if let Some(dir) = sandbox.log(&config).parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let mut runtime = self.runtime.clone();
        let id = runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox.config.clone()),
            })
            .await
            .with_context(|| format!("CRI CreateContainer {name}"))?
            .into_inner()
            .container_id;
        runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("CRI StartContainer {name}"))?;
        Ok(id)
    }

    /// `ContainerStatus`: the exit code once the container has exited,
    /// `None` while it has not.
    pub async fn exit_code(&self, id: &str) -> Result<Option<i32>> {
        let mut runtime = self.runtime.clone();
        let status = runtime
            .container_status(ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
            .with_context(|| format!("CRI ContainerStatus {id}"))?
            .into_inner()
            .status
            .context("ContainerStatus without a status")?;
        Ok((status.state == ContainerState::ContainerExited as i32).then_some(status.exit_code))
    }

    /// `StopContainer`: SIGTERM, then SIGKILL after `grace` (at once for
    /// zero, as for a node that dies).
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let mut runtime = self.runtime.clone();
        runtime
            .stop_container(StopContainerRequest {
                container_id: id.to_owned(),
                timeout: i64::try_from(grace.as_secs())?,
            })
            .await
            .with_context(|| format!("CRI StopContainer {id}"))?;
        Ok(())
    }

    /// `RemoveContainer`, before kubelet creates the next attempt.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let mut runtime = self.runtime.clone();
        runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.to_owned(),
            })
            .await
            .with_context(|| format!("CRI RemoveContainer {id}"))?;
        Ok(())
    }

    async fn wait_exited(&self, id: &str, patience: Duration) -> Result<i32> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(code) = self.exit_code(id).await? {
                return Ok(code);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("container {id} did not exit within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A pod as kubelet starts it: its host directories checked or made,
    /// the sandbox, each init container run to a clean exit, then the
    /// containers started. Probes are the caller's to poll.
    pub async fn run_pod(&self, name: &str, plan: &PodPlan, patience: Duration) -> Result<Pod> {
        for dir in &plan.required_dirs {
            ensure!(
                Path::new(dir).is_dir(),
                "pod {name}: hostPath {dir} is not a directory on the node"
            );
        }
        for dir in &plan.create_dirs {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        }
        ensure!(
            plan.host_network,
            "pod {name}: only host-network pods are run here"
        );
        let sandbox = self.run_sandbox(name, plan.dns.as_ref()).await?;
        match self.start_containers(name, &sandbox, plan, patience).await {
            Ok(containers) => Ok(Pod {
                sandbox,
                containers,
            }),
            Err(error) => {
                // kubelet would retry; the harness reports, and leaves no
                // half-started pod behind.
                if let Err(removing) = self.remove(sandbox).await {
                    return Err(
                        error.context(format!("and removing the sandbox failed: {removing:#}"))
                    );
                }
                Err(error)
            }
        }
    }

    /// Each init container run to a clean exit, then the containers
    /// started: their ids and logs.
    async fn start_containers(
        &self,
        name: &str,
        sandbox: &Sandbox,
        plan: &PodPlan,
        patience: Duration,
    ) -> Result<Vec<(String, PathBuf)>> {
        for init in &plan.init_containers {
            let (code, log) = self
                .complete(sandbox, init.config.clone(), patience)
                .await?;
            ensure!(
                code == 0,
                "pod {name}: init container {} exited {code}:\n{log}",
                init.config.metadata.as_ref().map_or("", |m| &m.name)
            );
        }
        let mut containers = Vec::new();
        for container in &plan.containers {
            let id = self.start(sandbox, container.config.clone()).await?;
            containers.push((id, sandbox.log(&container.config)));
        }
        Ok(containers)
    }

    /// `StopPodSandbox` then `RemovePodSandbox`, as kubelet ends a pod.
    pub async fn remove(&self, sandbox: Sandbox) -> Result<()> {
        let mut runtime = self.runtime.clone();
        runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox.id.clone(),
            })
            .await
            .context("CRI StopPodSandbox")?;
        runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: sandbox.id,
            })
            .await
            .context("CRI RemovePodSandbox")?;
        Ok(())
    }
}
