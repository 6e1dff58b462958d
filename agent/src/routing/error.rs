//! Every way routing can fail, each naming what was given, what was expected
//! and what to do about it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::identity::DecodingError;
use libp2p::kad::BootstrapError;
use libp2p::swarm::DialError;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(
        "cannot read or create the node identity {path}: {error}; the data directory \
         (--data-dir) must be a directory this process can write"
    )]
    Identity { path: PathBuf, error: io::Error },
    #[error(
        "the node identity {path} is not a libp2p key in protobuf encoding ({error}); \
         move it away to have a new one created (the node then gets a new peer id)"
    )]
    IdentityInvalid { path: PathBuf, error: DecodingError },
    #[error("cannot read the pre-shared key file {path}: {error}")]
    PskUnreadable { path: PathBuf, error: io::Error },
    #[error(
        "the pre-shared key file {path} is not a libp2p swarm key: {problem}; it must hold \
         three lines: `/key/swarm/psk/1.0.0/`, `/base16/` and 64 hex digits (32 random bytes)"
    )]
    PskInvalid {
        path: PathBuf,
        problem: &'static str,
    },
    #[error(
        "the republish interval ({republish:?}) must be shorter than the provider record \
         TTL ({ttl:?}), or a node's records expire before it renews them"
    )]
    RepublishTooSlow { republish: Duration, ttl: Duration },
    #[error("cannot set up encryption for the libp2p transport: {0}")]
    Transport(libp2p::noise::Error),
    #[error(
        "cannot listen on {addr}: it is not a TCP address; write it like /ip4/0.0.0.0/tcp/5001"
    )]
    ListenUnsupported { addr: Multiaddr },
    #[error("cannot listen on {addr}: {error}; choose a free port, or an address of this node")]
    Listen { addr: Multiaddr, error: io::Error },
    #[error(
        "cannot connect to the peer at {addr}: {}; check the address, and that both \
         nodes use the same pre-shared key",
        crate::errors::chain(error.as_ref())
    )]
    Dial {
        addr: Multiaddr,
        error: Box<DialError>,
    },
    #[error("no peer is known, so there is nothing to bootstrap from; add a peer first")]
    NoKnownPeers,
    #[error("bootstrapping the routing table failed: {0}; the peers known did not answer in time")]
    Bootstrap(BootstrapError),
    #[error(
        "cannot advertise {key}: this node already provides {limit} keys, the most its \
         provider store holds; {not_stored} keys of this batch were not advertised"
    )]
    StoreFull {
        key: String,
        limit: usize,
        not_stored: usize,
    },
    /// The event loop has ended: after `shutdown`, or because it panicked.
    #[error("the router has stopped, so it can no longer advertise or look up keys")]
    Stopped,
}
