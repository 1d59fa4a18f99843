//! The lab network: the host bridge, one network namespace per node with a veth into the bridge,
//! and the network faults (link down, address flush, one blocked link). No forwarding: nodes
//! reach nothing but the bridge address.
//!
//! Blocking one link pins the peer's address to an unused MAC address (a permanent neighbour
//! entry) in both namespaces: packets leave and vanish, so connections time out as on a cut
//! cable. (`tc` with the `prio` qdisc and `gact` drop action is not built into every kernel this
//! runs on; blackhole routes fail `connect` at once instead of timing out.)

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::host;
use super::topology::{Node, BRIDGE, BRIDGE_ADDRESS, NODE_INTERFACE, PREFIX_LENGTH};

fn ip() -> Command {
    Command::new("ip")
}

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether an interface is administratively up (`IFF_UP` in its flags).
fn interface_up(name: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("flags"))
        .ok()
        .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 1 == 1)
}

fn namespace_exists(node: &Node) -> bool {
    Path::new("/run/netns").join(node.namespace()).exists()
}

/// Open a TCP connection from inside `from`'s network namespace to `to`, within `timeout`: the
/// node's own view of the network, without logging in to it. Only a short-lived thread enters
/// the namespace, so the caller's threads stay where they are; the socket keeps the namespace
/// it was made in.
pub fn connect_from(from: &Node, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let path = Path::new("/run/netns").join(from.namespace());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let namespace = std::fs::File::open(&path)?;
                // SAFETY: setns on a valid descriptor changes only this thread's namespace.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpStream::connect_timeout(&to, timeout)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    })
}

/// Whether `from` reaches `to:port` over TCP within `timeout` (see [`connect_from`]).
pub fn connects_from(from: &Node, to: Ipv4Addr, port: u16, timeout: Duration) -> bool {
    connect_from(from, SocketAddr::from((to, port)), timeout).is_ok()
}

/// Fail if the lab's subnet is already used by an interface other than the lab's bridge.
pub fn check_subnet_free() -> Result<()> {
    let [a, b, c, _] = BRIDGE_ADDRESS.octets();
    let prefix = format!("{a}.{b}.{c}.");
    let listing = host::run(ip().args(["-o", "-4", "address", "show"]))?;
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let interface = fields.nth(1).unwrap_or_default();
        let address = fields.nth(1).unwrap_or_default();
        if address.starts_with(&prefix) && interface != BRIDGE {
            bail!(
                "address `{address}` on interface `{interface}` overlaps the lab network `{prefix}0/{PREFIX_LENGTH}`; \
                 hint: remove it (`ip address del {address} dev {interface}`) or run the lab on another machine"
            );
        }
    }
    Ok(())
}

/// Create the bridge with its address, if missing. True if anything was created.
pub fn ensure_bridge() -> Result<bool> {
    let address = format!("{BRIDGE_ADDRESS}/{PREFIX_LENGTH}");
    let mut changed = false;
    if !interface_exists(BRIDGE) {
        check_subnet_free()?;
        host::run(ip().args(["link", "add", BRIDGE, "type", "bridge"]))
            .with_context(|| format!("failed to create the bridge `{BRIDGE}`"))?;
        changed = true;
    }
    let addresses = host::run(ip().args(["-o", "-4", "address", "show", "dev", BRIDGE]))?;
    if !addresses.contains(&format!(" {address} ")) {
        host::run(ip().args(["address", "replace", &address, "dev", BRIDGE]))
            .with_context(|| format!("failed to give `{BRIDGE}` the address `{address}`"))?;
        changed = true;
    }
    if !interface_up(BRIDGE) {
        host::run(ip().args(["link", "set", BRIDGE, "up"]))?;
        changed = true;
    }
    Ok(changed)
}

/// Create the node's namespace and veth pair, if missing. Leaves the link state alone when they
/// exist (a partitioned node stays partitioned). True if anything was created.
pub fn ensure_node(node: &Node) -> Result<bool> {
    let namespace = node.namespace();
    let veth = node.host_interface();
    let mut changed = false;
    if !namespace_exists(node) {
        host::run(ip().args(["netns", "add", &namespace]))
            .with_context(|| format!("failed to create the network namespace of `{node}`"))?;
        host::run(ip().args(["-n", &namespace, "link", "set", "lo", "up"]))?;
        changed = true;
    }
    if !interface_exists(&veth) {
        host::run(ip().args([
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            NODE_INTERFACE,
            "netns",
            &namespace,
        ]))
        .with_context(|| format!("failed to create the veth pair of `{node}`"))?;
        host::run(ip().args(["link", "set", &veth, "master", BRIDGE, "up"]))?;
        host::run(ip().args(["-n", &namespace, "link", "set", NODE_INTERFACE, "up"]))?;
        add_address(node)?;
        changed = true;
    }
    Ok(changed)
}

/// Give the node its address again (after a power cut flushed it) and bring its link up.
pub fn restore(node: &Node) -> Result<()> {
    add_address(node)?;
    set_link(node, true)
}

fn add_address(node: &Node) -> Result<()> {
    let address = format!("{}/{PREFIX_LENGTH}", node.address());
    host::run(ip().args([
        "-n",
        &node.namespace(),
        "address",
        "replace",
        &address,
        "dev",
        NODE_INTERFACE,
    ]))
    .with_context(|| format!("failed to give `{node}` the address `{address}`"))?;
    host::run(ip().args(["-n", &node.namespace(), "link", "set", NODE_INTERFACE, "up"]))?;
    Ok(())
}

/// Bring the host side of the node's veth up or down (down = partitioned from everyone).
pub fn set_link(node: &Node, up: bool) -> Result<()> {
    let state = if up { "up" } else { "down" };
    host::run(ip().args(["link", "set", &node.host_interface(), state]))
        .with_context(|| format!("failed to set the link of `{node}` {state}"))?;
    Ok(())
}

/// Whether the node's host-side link is up; false if it does not exist.
pub fn link_up(node: &Node) -> bool {
    interface_up(&node.host_interface())
}

/// Remove every address of the node (a VIP it held must not outlive a power cut).
pub fn flush_addresses(node: &Node) -> Result<()> {
    host::run(ip().args([
        "-n",
        &node.namespace(),
        "address",
        "flush",
        "dev",
        NODE_INTERFACE,
    ]))
    .with_context(|| format!("failed to flush the addresses of `{node}`"))?;
    Ok(())
}

/// The MAC address a blocked peer's address is pinned to; no interface has it.
const NOWHERE_MAC: &str = "02:70:67:68:61:00";

/// Drop traffic from `node` to `peer` (true) or let it through again (false).
pub fn set_blocked(node: &Node, peer: &Node, blocked: bool) -> Result<()> {
    let address = peer.address().to_string();
    let namespace = node.namespace();
    let mut command = ip();
    if blocked {
        command
            .args([
                "-n",
                &namespace,
                "neigh",
                "replace",
                &address,
                "lladdr",
                NOWHERE_MAC,
            ])
            .args(["dev", NODE_INTERFACE, "nud", "permanent"]);
    } else {
        if !blocked_peers(node)?.contains(&peer.address()) {
            return Ok(());
        }
        command.args([
            "-n",
            &namespace,
            "neigh",
            "del",
            &address,
            "dev",
            NODE_INTERFACE,
        ]);
    }
    host::run(&mut command)
        .with_context(|| format!("failed to change the link from `{node}` to `{peer}`"))?;
    Ok(())
}

/// Peers whose traffic the node drops.
pub fn blocked_peers(node: &Node) -> Result<Vec<Ipv4Addr>> {
    if !namespace_exists(node) {
        return Ok(Vec::new());
    }
    let neighbours = host::run(ip().args([
        "-n",
        &node.namespace(),
        "-4",
        "neigh",
        "show",
        "dev",
        NODE_INTERFACE,
    ]))?;
    Ok(parse_blocked(&neighbours))
}

/// Addresses pinned to [`NOWHERE_MAC`] in `ip neigh show` output.
fn parse_blocked(neighbours: &str) -> Vec<Ipv4Addr> {
    neighbours
        .lines()
        .filter(|line| line.contains(NOWHERE_MAC))
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|address| address.parse().ok())
        .collect()
}

/// Delete one node's namespace and veth pair; true if anything was there.
pub fn remove_node(node: &Node) -> Result<bool> {
    let mut removed = false;
    if namespace_exists(node) {
        host::run(ip().args(["netns", "delete", &node.namespace()]))
            .with_context(|| format!("failed to delete the network namespace of `{node}`"))?;
        removed = true;
    }
    let veth = node.host_interface();
    // Deleting the namespace removes the pair asynchronously.
    if interface_exists(&veth)
        && !host::succeeds(ip().args(["link", "delete", &veth]))
        && interface_exists(&veth)
    {
        host::run(ip().args(["link", "delete", &veth]))?;
    }
    Ok(removed)
}

/// Delete every lab namespace (which deletes their veths) and the bridge.
pub fn remove_all() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("pgha-") {
                host::run(ip().args(["netns", "delete", &name]))
                    .with_context(|| format!("failed to delete the network namespace `{name}`"))?;
                removed.push(format!("network namespace `{name}`"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Deleting a namespace removes its veth pair asynchronously: the host side may
            // vanish between listing it and deleting it, which is what we want anyway.
            if name.starts_with("pgha-node")
                && !host::succeeds(ip().args(["link", "delete", &name]))
                && interface_exists(&name)
            {
                host::run(ip().args(["link", "delete", &name]))?;
            }
        }
    }
    if interface_exists(BRIDGE) {
        host::run(ip().args(["link", "delete", BRIDGE]))
            .with_context(|| format!("failed to delete the bridge `{BRIDGE}`"))?;
        removed.push(format!("bridge `{BRIDGE}`"));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pinned_neighbours_count_as_blocked() {
        let output = "10.231.0.12 lladdr 02:70:67:68:61:00 PERMANENT\n\
                      10.231.0.13 lladdr 9a:1b:2c:3d:4e:5f REACHABLE\n\
                      10.231.0.1 lladdr aa:bb:cc:dd:ee:ff STALE\n";
        assert_eq!(parse_blocked(output), vec![Ipv4Addr::new(10, 231, 0, 12)]);
    }
}
