//! Pods through a node's CRI runtime service, the calls kubelet makes: a
//! sandbox, then containers in it. The release gate's pod mode builds on
//! this; for now it runs a container to completion in a host-network
//! sandbox, which proves that a node of this machine can run pods at all.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

use crate::node::ContainerdNode;

/// A node's CRI runtime service.
pub struct Pods {
    runtime: RuntimeServiceClient<Channel>,
    /// Where container logs go, as kubelet's `/var/log/pods`.
    logs: PathBuf,
}

/// A running sandbox, and the config its containers are created with.
pub struct Sandbox {
    pub id: String,
    config: PodSandboxConfig,
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
        let config = PodSandboxConfig {
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
        let log = format!("{name}.log");
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
            log_path: log.clone(),
            ..Default::default()
        };
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
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let status = runtime
                .container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .context("ContainerStatus without a status")?;
            if status.state == ContainerState::ContainerExited as i32 {
                let path = PathBuf::from(&sandbox.config.log_directory).join(&log);
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                return Ok((status.exit_code, text));
            }
            if tokio::time::Instant::now() > deadline {
                bail!("container {name} did not exit within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
