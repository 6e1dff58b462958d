//! Nodes with network stacks of their own: a network namespace per node,
//! each joined to one bridge in the host's namespace by a veth pair, as a
//! cluster's nodes share a LAN.
//!
//! Loopback addresses share one stack, so a fault there is a rule per port
//! (iptables) or a stopped process. A node's own link can be cut, which
//! partitions every connection it has at once, with no RST or FIN: packets
//! simply go nowhere, as when a switch port or a node's NIC dies. It can
//! also be slowed with tc's token bucket, so that a transfer is surely in
//! progress when a fault lands.
//!
//! Built with iproute2's `ip` and `tc` (Debian's `iproute2`, on every
//! Debian and Ubuntu system): `ip netns add` also sets up the bind mount
//! under /run/netns that `ip netns exec` enters, which a netlink crate
//! would leave to us. Needs root.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// The private range the bridges use: 10.231.`net`.0/24.
const PREFIX: [u8; 2] = [10, 231];

/// A bridge and its subnet, 10.231.`net`.0/24, with the host at .1: the
/// host's processes (containerd, the upstream, the test) reach every node
/// through it. Deleted on drop, after its nodes.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    net: u8,
}

impl Network {
    /// A bridge named `rfk<tag>`; `tag` is at most 8 characters, since a
    /// link name is at most 15, and each test uses its own `tag` and `net`.
    /// A bridge left by a killed run of the same test is replaced.
    pub fn create(tag: &str, net: u8) -> Result<Self> {
        ensure!(
            !tag.is_empty() && tag.len() <= 8 && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "network tag {tag:?} must be 1 to 8 ASCII letters or digits: it becomes a link name"
        );
        let bridge = format!("rfk{tag}");
        // A leftover of a killed run; there is usually none.
        let _ = quiet(Command::new("ip").args(["link", "del", &bridge]));
        run(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]))?;
        let network = Network { bridge, net };
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/24", network.host_ip()),
            "dev",
            &network.bridge,
        ]))?;
        run(Command::new("ip").args(["link", "set", &network.bridge, "up"]))?;
        Ok(network)
    }

    /// The host's address on the bridge.
    pub fn host_ip(&self) -> IpAddr {
        self.ip(1)
    }

    fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(PREFIX[0], PREFIX[1], self.net, host))
    }

    /// Node `i`'s namespace, at 10.231.`net`.`i + 2`.
    pub fn node(&self, i: u8) -> Result<Netns> {
        ensure!(i < 200, "node {i}: at most 200 nodes on one network");
        let name = format!("{}-{i}", self.bridge);
        let host_link = format!("{}v{i}", self.bridge);
        let _ = quiet(Command::new("ip").args(["netns", "del", &name]));
        let _ = quiet(Command::new("ip").args(["link", "del", &host_link]));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Netns {
            name,
            host_link,
            ip: self.ip(i + 2),
        };
        run(Command::new("ip").args([
            "link",
            "add",
            &netns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ]))?;
        run(Command::new("ip").args([
            "link",
            "set",
            &netns.host_link,
            "master",
            &self.bridge,
            "up",
        ]))?;
        let inside = |args: &[&str]| {
            run(Command::new("ip")
                .args(["-n", netns.name.as_str()])
                .args(args))
        };
        inside(&["addr", "add", &format!("{}/24", netns.ip), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if quiet(Command::new("ip").args(["link", "del", &self.bridge])).is_err() {
            eprintln!(
                "could not delete bridge {}; run `ip link del {}` by hand",
                self.bridge, self.bridge
            );
        }
    }
}

/// One node's namespace and its link to the bridge. Deleted on drop; a
/// process still inside keeps the stack alive until it exits.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// The veth end on the bridge, in the host's namespace: what a fault
    /// acts on, since the node's processes cannot undo it from inside.
    host_link: String,
    ip: IpAddr,
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// `program` run inside the namespace: `ip netns exec` enters it and
    /// execs the program, so the child's pid is the program's.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Cuts the node off: its link goes down, and every packet to or from
    /// it is lost, established connections' too, until [`Netns::heal`].
    pub fn partition(&self) -> Result<()> {
        run(Command::new("ip").args(["link", "set", &self.host_link, "down"]))
    }

    pub fn heal(&self) -> Result<()> {
        run(Command::new("ip").args(["link", "set", &self.host_link, "up"]))
    }

    /// Limits what reaches the node to `mbit` megabits per second, with
    /// tc's token bucket on its link: what it downloads, from peers and
    /// from the host alike.
    pub fn limit_ingress(&self, mbit: u32) -> Result<()> {
        run(Command::new("tc").args([
            "qdisc",
            "replace",
            "dev",
            &self.host_link,
            "root",
            "tbf",
            "rate",
            &format!("{mbit}mbit"),
            "burst",
            "256kb",
            "latency",
            "100ms",
        ]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth pair with it.
        if quiet(Command::new("ip").args(["netns", "del", &self.name])).is_err() {
            eprintln!(
                "could not delete network namespace {}; run `ip netns del {}` by hand",
                self.name, self.name
            );
        }
    }
}

/// Runs a setup command, failing with what it printed.
fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("running {shown} (Debian's iproute2 package)"))?;
    ensure!(
        output.status.success(),
        "{shown} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Runs a clean-up command whose failure only matters to the caller.
fn quiet(command: &mut Command) -> Result<()> {
    let status = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    ensure!(status.success(), "exited with {status}");
    Ok(())
}
