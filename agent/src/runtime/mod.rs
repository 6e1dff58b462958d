//! Talking to containerd over its unix socket: its own API for the version,
//! CRI for what kubelet sees, and the config file where CRI is silent.

mod config_file;
mod cri;
mod events;

pub use config_file::{
    ConfigFile, ConfigFileError, GlobBase, discard_table, registry_table, table_header,
};
pub use cri::{CriApi, CriStatus};

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::Channel;

/// containerd can be slow right after a node boots, but a doctor or an agent
/// start-up that hangs forever on a wedged socket helps nobody.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "containerd socket {} does not exist. Fix: start containerd, or point \
         --containerd-sock at the socket in containerd's [grpc] address",
        path.display()
    )]
    SocketMissing { path: PathBuf },
    #[error("cannot connect to containerd at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
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
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(socket))
            .await
            .map_err(|_| RuntimeError::Timeout {
                path: socket.to_owned(),
                timeout: CONNECT_TIMEOUT,
            })?
            .map_err(|source| RuntimeError::Connect {
                path: socket.to_owned(),
                source,
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
        tokio::time::timeout(CONNECT_TIMEOUT, future)
            .await
            .map_err(|_| RuntimeError::Timeout {
                path: self.socket.clone(),
                timeout: CONNECT_TIMEOUT,
            })?
            .map_err(|status| RuntimeError::Rpc {
                path: self.socket.clone(),
                rpc,
                status: Box::new(status),
            })
    }
}
