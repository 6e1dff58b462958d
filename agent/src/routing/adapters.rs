//! The router behind the seams the rest of the agent uses: state sync
//! advertises through it, the mirror path asks it for providers, and
//! `/readyz` asks it whether the node has any peer.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;

use super::Router;
use crate::registry::{ProviderLookup, Readiness};
use crate::state::Advertiser;

#[async_trait]
impl Advertiser for Router {
    async fn advertise(&self, keys: Vec<String>) -> anyhow::Result<()> {
        Ok(Router::advertise(self, keys).await?)
    }

    async fn withdraw(&self, keys: Vec<String>) -> anyhow::Result<()> {
        Ok(Router::withdraw(self, keys).await?)
    }
}

#[async_trait]
impl ProviderLookup for Router {
    async fn providers(&self, key: &str, limit: usize, timeout: Duration) -> Vec<SocketAddr> {
        match self.find_providers(key, limit, timeout).await {
            Ok(providers) => providers.into_iter().map(|p| p.registry).collect(),
            Err(error) => {
                tracing::warn!(%error, key, "provider lookup failed");
                Vec::new()
            }
        }
    }
}

#[async_trait]
impl Readiness for Router {
    async fn ready(&self) -> Result<(), String> {
        if self.routing_table_size().await > 0 {
            Ok(())
        } else {
            Err("no peers yet: the routing table is empty".to_owned())
        }
    }
}
