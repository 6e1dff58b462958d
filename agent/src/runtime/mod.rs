//! Talking to containerd over its unix socket: one client for its own API
//! (version, images, content, events), CRI for what kubelet sees, and the
//! config file where CRI is silent. Every unary call shares one deadline.

mod config_file;
mod content;
mod cri;
mod events;

pub use config_file::{
    ConfigFile, ConfigFileError, GlobBase, discard_table, registry_table, table_header,
};
pub use content::{ImageRecord, ImageTarget, Namespace};
pub use cri::{CriApi, CriStatus};

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Channel;

/// containerd can be slow right after a node boots, but a doctor or an agent
/// start-up that hangs forever on a wedged socket helps nobody; and a
/// registry request must fail (a 503, so the pulling containerd moves on)
/// rather than hang on one. Bounds connecting and every unary call.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "containerd socket {} does not exist. Fix: start containerd, or point \
         --containerd-sock at the socket in containerd's [grpc] address",
        path.display()
    )]
    SocketMissing { path: PathBuf },
    #[error("cannot connect to containerd at {}: {}", path.display(), crate::errors::chain(error))]
    Connect {
        path: PathBuf,
        error: tonic::transport::Error,
    },
    #[error(
        "containerd at {} did not answer within {timeout:?}; is it wedged or still starting?",
        path.display()
    )]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("containerd at {} failed the {rpc} call: {} ({:?})", path.display(), status.message(), status.code())]
    Rpc {
        path: PathBuf,
        rpc: &'static str,
        status: Box<tonic::Status>,
    },
    #[error(
        "containerd namespace {name:?} is not printable ASCII, so it cannot be sent to \
         containerd. Fix: set --containerd-namespace to the namespace kubelet uses, k8s.io"
    )]
    Namespace { name: String },
    #[error("a content read at {offset} is beyond what containerd's API can address")]
    Range { offset: u64 },
}

impl RuntimeError {
    /// containerd's own "not found", as opposed to a failure.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::Rpc { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

/// A connection to one containerd.
#[derive(Debug, Clone)]
pub struct Containerd {
    socket: PathBuf,
    channel: Channel,
}

impl Containerd {
    pub async fn connect(socket: &Path) -> Result<Self, RuntimeError> {
        if !socket.exists() {
            return Err(RuntimeError::SocketMissing {
                path: socket.to_owned(),
            });
        }
        let channel = tokio::time::timeout(DEADLINE, containerd_client::connect(socket))
            .await
            .map_err(|_| RuntimeError::Timeout {
                path: socket.to_owned(),
                timeout: DEADLINE,
            })?
            .map_err(|error| RuntimeError::Connect {
                path: socket.to_owned(),
                error,
            })?;
        Ok(Self {
            socket: socket.to_owned(),
            channel,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The gRPC channel, shared by every service client; cloning is cheap.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The version string exactly as containerd reports it, e.g. `1.6.20~ds1`.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let mut client = containerd_client::services::v1::version_client::VersionClient::new(
            self.channel.clone(),
        );
        let reply = self.call("containerd Version", client.version(())).await?;
        Ok(reply.into_inner().version)
    }

    pub async fn cri_status(&self) -> Result<CriStatus, RuntimeError> {
        self.call("CRI Version/Status", cri::status(self.channel.clone()))
            .await
    }

    async fn call<T>(
        &self,
        rpc: &'static str,
        future: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, RuntimeError> {
        tokio::time::timeout(DEADLINE, future)
            .await
            .map_err(|_| RuntimeError::Timeout {
                path: self.socket.clone(),
                timeout: DEADLINE,
            })?
            .map_err(|status| RuntimeError::Rpc {
                path: self.socket.clone(),
                rpc,
                status: Box::new(status),
            })
    }
}
