//! The CRI side of containerd: the API kubelet uses.
//!
//! We ask CRI v1 first and fall back to v1alpha2, because bullseye's
//! containerd 1.4 serves only v1alpha2. The verbose `Status` carries the CRI
//! plugin's effective config as JSON on containerd 1.x, which is the most
//! faithful source for the registry settings: it is what containerd actually
//! loaded, imports and defaults included.

use std::fmt;

use k8s_cri::{v1, v1alpha2};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriApi {
    V1,
    V1Alpha2,
}

impl fmt::Display for CriApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CriApi::V1 => "v1",
            CriApi::V1Alpha2 => "v1alpha2",
        })
    }
}

/// What the CRI plugin says about itself.
#[derive(Debug, Clone)]
pub struct CriStatus {
    pub api: CriApi,
    pub runtime_name: String,
    pub runtime_version: String,
    /// The plugin's effective config, when the runtime reports it.
    pub config: Option<Value>,
}

impl CriStatus {
    /// `registry.configPath`; `None` when this containerd does not report it
    /// (2.x) or does not know the setting (1.4).
    pub fn registry_config_path(&self) -> Option<String> {
        self.config
            .as_ref()?
            .pointer("/registry/configPath")?
            .as_str()
            .map(str::to_owned)
    }

    /// Whether CRI reports its registry settings but has no `configPath` among
    /// them: a containerd before 1.5, which ignores hosts.toml files whatever
    /// its config file says.
    pub fn lacks_config_path(&self) -> bool {
        self.config
            .as_ref()
            .and_then(|config| config.pointer("/registry"))
            .is_some_and(|registry| registry.get("configPath").is_none())
    }

    /// `containerd.discardUnpackedLayers`; `None` when not reported.
    pub fn discard_unpacked_layers(&self) -> Option<bool> {
        self.config
            .as_ref()?
            .pointer("/containerd/discardUnpackedLayers")?
            .as_bool()
    }
}

/// The CRI API version kubelet itself sends in `Version`.
const KUBELET_API_VERSION: &str = "v1";

pub(super) async fn status(channel: Channel) -> Result<CriStatus, Status> {
    match status_v1(channel.clone()).await {
        Err(status) if status.code() == Code::Unimplemented => status_v1alpha2(channel).await,
        other => other,
    }
}

async fn status_v1(channel: Channel) -> Result<CriStatus, Status> {
    let mut client = v1::runtime_service_client::RuntimeServiceClient::new(channel);
    let version = client
        .version(v1::VersionRequest {
            version: KUBELET_API_VERSION.to_owned(),
        })
        .await?
        .into_inner();
    let status = client
        .status(v1::StatusRequest { verbose: true })
        .await?
        .into_inner();
    Ok(CriStatus {
        api: CriApi::V1,
        runtime_name: version.runtime_name,
        runtime_version: version.runtime_version,
        config: status.info.get("config").and_then(|c| parse_config(c)),
    })
}

async fn status_v1alpha2(channel: Channel) -> Result<CriStatus, Status> {
    let mut client = v1alpha2::runtime_service_client::RuntimeServiceClient::new(channel);
    let version = client
        .version(v1alpha2::VersionRequest {
            version: KUBELET_API_VERSION.to_owned(),
        })
        .await?
        .into_inner();
    let status = client
        .status(v1alpha2::StatusRequest { verbose: true })
        .await?
        .into_inner();
    Ok(CriStatus {
        api: CriApi::V1Alpha2,
        runtime_name: version.runtime_name,
        runtime_version: version.runtime_version,
        config: status.info.get("config").and_then(|c| parse_config(c)),
    })
}

/// A config that is not JSON is treated as not reported: the config file is
/// the fallback, so there is nothing to gain from failing here.
fn parse_config(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}
