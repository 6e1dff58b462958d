//! What a node must know about a peer to send it an HTTP request.
//!
//! libp2p tells where a peer's libp2p port is, not its registry. Spegel adds
//! its own registry port to the peer's IP, which assumes every node uses the
//! same port. reflektor says its registry port in the identify agent
//! version instead (`reflektor/0.1.0 registry-port=5000`), so nodes may run
//! with different ports, as they do in tests and during a port change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// The identify agent version a node sends: our name, version and the
/// port its registry listens on.
pub fn agent_version(registry_port: u16) -> String {
    format!(
        "reflektor/{} registry-port={registry_port}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The registry port in a peer's agent version; `None` for a peer that is
/// not reflektor, or a version of it that does not say.
pub fn registry_port(agent_version: &str) -> Option<u16> {
    let mut words = agent_version.split_whitespace();
    if !words.next()?.starts_with("reflektor/") {
        return None;
    }
    words.find_map(|word| word.strip_prefix("registry-port=")?.parse().ok())
}

/// What we learnt about one connected peer.
#[derive(Debug, Default)]
struct Peer {
    /// The IP we dialed it at: proven to reach it.
    dialed: Option<IpAddr>,
    /// The IP its connection to us came from.
    remote: Option<IpAddr>,
    /// The addresses it says it listens on, and its registry port, once
    /// identify has run.
    identified: Option<(Vec<Multiaddr>, Option<u16>)>,
}

/// The peers we are connected to, forgotten when the last connection closes:
/// a peer that comes back may have a new address or port.
#[derive(Debug, Default)]
pub struct Peers {
    peers: HashMap<PeerId, Peer>,
}

/// Whether a peer's registry address is known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRegistry {
    /// Identified: here is its registry.
    Known(SocketAddr),
    /// Connected, but identify has not answered yet.
    Identifying,
    /// Not connected: dial it first.
    Disconnected,
    /// It answered identify without a registry port, or with no address.
    Unusable,
}

impl Peers {
    pub fn connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        let entry = self.peers.entry(peer).or_default();
        match endpoint {
            ConnectedPoint::Dialer { address, .. } => entry.dialed = ip_of(address),
            ConnectedPoint::Listener { send_back_addr, .. } => entry.remote = ip_of(send_back_addr),
        }
    }

    /// `remaining` is how many connections to the peer are still open.
    pub fn disconnected(&mut self, peer: &PeerId, remaining: u32) {
        if remaining == 0 {
            self.peers.remove(peer);
        }
    }

    pub fn identified(&mut self, peer: PeerId, listen_addrs: Vec<Multiaddr>, agent_version: &str) {
        if let Some(entry) = self.peers.get_mut(&peer) {
            entry.identified = Some((listen_addrs, registry_port(agent_version)));
        }
    }

    /// Identify failed: unless it worked on another connection, the peer
    /// cannot be used until it reconnects.
    pub fn identify_failed(&mut self, peer: PeerId) {
        if let Some(entry) = self.peers.get_mut(&peer) {
            entry.identified.get_or_insert_with(|| (Vec::new(), None));
        }
    }

    pub fn registry(&self, peer: &PeerId) -> PeerRegistry {
        let Some(entry) = self.peers.get(peer) else {
            return PeerRegistry::Disconnected;
        };
        let Some((listen_addrs, port)) = &entry.identified else {
            return PeerRegistry::Identifying;
        };
        let ip = registry_ip(entry.dialed, listen_addrs, entry.remote);
        match (ip, port) {
            (Some(ip), Some(port)) => PeerRegistry::Known(SocketAddr::new(ip, *port)),
            _ => PeerRegistry::Unusable,
        }
    }
}

/// The IP a peer's registry is reached at: the one we dialed it at, proven
/// to reach it; else the first it says it listens on (each node announces
/// only the addresses others should use, see `announced`); else the one its
/// connection to us came from.
fn registry_ip(
    dialed: Option<IpAddr>,
    listen_addrs: &[Multiaddr],
    remote: Option<IpAddr>,
) -> Option<IpAddr> {
    dialed
        .or_else(|| {
            listen_addrs
                .iter()
                .filter_map(ip_of)
                .find(|ip| !ip.is_unspecified())
        })
        .or(remote)
}

/// Whether a listen address should be announced to peers. A node listening
/// on every interface skips its loopback addresses, which would lead peers
/// to themselves; a node told to listen on loopback (a test, a single-node
/// cluster) means it.
pub fn announced(listen: &Multiaddr, address: &Multiaddr) -> bool {
    let wildcard = ip_of(listen).is_some_and(|ip| ip.is_unspecified());
    !(wildcard && ip_of(address).is_some_and(|ip| ip.is_loopback()))
}

fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|protocol| match protocol {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use libp2p::core::Endpoint;
    use libp2p::core::transport::PortUse;

    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn the_registry_port_rides_in_the_agent_version() {
        assert_eq!(registry_port(&agent_version(5000)), Some(5000));
        assert_eq!(
            registry_port("reflektor/9.9.9 registry-port=30020 extra"),
            Some(30020)
        );
        assert_eq!(registry_port("reflektor/0.1.0"), None);
        assert_eq!(registry_port("reflektor/0.1.0 registry-port=70000"), None);
        assert_eq!(registry_port("go-ipfs/0.1 registry-port=5000"), None);
        assert_eq!(registry_port(""), None);
    }

    #[test]
    fn the_registry_ip_prefers_what_reached_the_peer() {
        let dialed = Some("10.0.0.2".parse().unwrap());
        let remote = Some("10.0.0.9".parse().unwrap());
        let listen = [
            addr("/ip4/0.0.0.0/tcp/5001"),
            addr("/ip4/10.0.0.3/tcp/5001"),
        ];
        assert_eq!(registry_ip(dialed, &listen, remote), dialed);
        assert_eq!(
            registry_ip(None, &listen, remote),
            Some("10.0.0.3".parse().unwrap())
        );
        assert_eq!(registry_ip(None, &[], remote), remote);
        assert_eq!(registry_ip(None, &[], None), None);
    }

    #[test]
    fn a_peer_is_usable_once_identified_and_forgotten_when_gone() {
        let mut peers = Peers::default();
        let peer = PeerId::random();
        assert_eq!(peers.registry(&peer), PeerRegistry::Disconnected);

        let endpoint = ConnectedPoint::Dialer {
            address: addr("/ip4/127.0.0.2/tcp/4001"),
            role_override: Endpoint::Dialer,
            port_use: PortUse::New,
        };
        peers.connected(peer, &endpoint);
        assert_eq!(peers.registry(&peer), PeerRegistry::Identifying);

        peers.identified(
            peer,
            vec![addr("/ip4/127.0.0.2/tcp/4001")],
            &agent_version(5002),
        );
        assert_eq!(
            peers.registry(&peer),
            PeerRegistry::Known("127.0.0.2:5002".parse().unwrap())
        );

        peers.identify_failed(peer);
        assert!(
            matches!(peers.registry(&peer), PeerRegistry::Known(_)),
            "kept"
        );
        peers.identified(peer, vec![], "someone-else/1.0");
        assert_eq!(peers.registry(&peer), PeerRegistry::Unusable);

        let other = PeerId::random();
        peers.connected(other, &endpoint);
        peers.identify_failed(other);
        assert_eq!(peers.registry(&other), PeerRegistry::Unusable);

        peers.disconnected(&peer, 0);
        assert_eq!(peers.registry(&peer), PeerRegistry::Disconnected);
    }

    #[test]
    fn wildcard_listeners_do_not_announce_loopback() {
        let wildcard = addr("/ip4/0.0.0.0/tcp/5001");
        assert!(!announced(&wildcard, &addr("/ip4/127.0.0.1/tcp/5001")));
        assert!(announced(&wildcard, &addr("/ip4/10.1.2.3/tcp/5001")));
        let loopback = addr("/ip4/127.0.0.2/tcp/0");
        assert!(announced(&loopback, &addr("/ip4/127.0.0.2/tcp/41234")));
    }
}
