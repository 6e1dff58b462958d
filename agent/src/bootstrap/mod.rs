//! How a node finds its first peers, with Spegel's three kinds:
//! - `static`: multiaddrs given on the command line;
//! - `dns`: every A/AAAA record of a name, e.g. a headless Service, with
//!   the port of `--router-addr`;
//! - `http`: another node's `/id` endpoint, which lists its addresses.
//!
//! A bootstrapper only names addresses; the router dials them, and the
//! agent keeps asking (with backoff) until the routing table is non-empty.
//! The end of the first round is what `/readyz` waits for.

mod id_server;
mod keep_connected;
mod sources;

pub use id_server::id_router;
pub use keep_connected::{FirstRound, keep_connected};
pub use sources::{DnsPeers, HttpPeers, Resolver, StaticPeers, SystemResolver};

use std::net::SocketAddr;

use async_trait::async_trait;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot resolve {domain:?} for bootstrap peers: {error}")]
    Dns {
        domain: String,
        error: std::io::Error,
    },
    #[error("cannot fetch bootstrap peers from {url}: {message}")]
    Http { url: String, message: String },
}

/// The seam between the agent and where bootstrap addresses come from.
#[async_trait]
pub trait Bootstrapper: Send + Sync {
    async fn peers(&self) -> Result<Vec<Multiaddr>, BootstrapError>;
}

/// A TCP socket address as a multiaddr: `/ip4/…/tcp/…` or `/ip6/…/tcp/…`.
pub fn socket_multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => Protocol::Ip4(ip),
        std::net::IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}
