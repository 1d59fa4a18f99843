//! The lab's fixed network plan: bridge, node names, addresses, namespace and interface names.
//! Pure data and validation; nothing here touches the system.

use std::fmt;
use std::net::Ipv4Addr;

use crate::error::UserError;

/// The host bridge every node's veth is attached to.
pub const BRIDGE: &str = "pgha-br0";
/// The bridge's (and the apt proxy's) address.
pub const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// Prefix length of the lab network.
pub const PREFIX_LENGTH: u8 = 24;
/// Reserved for keepalived's virtual IP; no node may get it.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 100);
/// Last octet of `node1`'s address; `nodeN` gets `FIRST_HOST + N - 1`.
const FIRST_HOST: u8 = 11;
/// The most nodes that fit below the VIP.
pub const MAX_NODES: usize = (VIP.octets()[3] - FIRST_HOST) as usize;
/// Name of the interface inside every node's namespace.
pub const NODE_INTERFACE: &str = "eth0";

/// One node of the lab: `node<index>` with its fixed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    index: usize,
}

impl Node {
    /// The node with 1-based `index`; callers validate the range.
    fn new(index: usize) -> Node {
        Node { index }
    }

    pub fn name(&self) -> String {
        format!("node{}", self.index)
    }

    pub fn address(&self) -> Ipv4Addr {
        let [a, b, c, _] = BRIDGE_ADDRESS.octets();
        // `index` is at most MAX_NODES, so this stays below the VIP.
        Ipv4Addr::new(a, b, c, FIRST_HOST + (self.index - 1) as u8)
    }

    /// Network namespace name, also the file under `/run/netns`.
    pub fn namespace(&self) -> String {
        format!("pgha-{}", self.name())
    }

    /// Host side of the node's veth pair (at most 15 characters for MAX_NODES).
    pub fn host_interface(&self) -> String {
        self.namespace()
    }
}

impl fmt::Display for Node {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.name())
    }
}

/// Check a requested node count.
pub fn validate_count(count: usize) -> Result<(), UserError> {
    if count == 0 || count > MAX_NODES {
        return Err(UserError(format!(
            "`--nodes {count}` is out of range; hint: the lab has room for 1 to {MAX_NODES} nodes"
        )));
    }
    Ok(())
}

/// All nodes of a lab with `count` nodes.
pub fn nodes(count: usize) -> Vec<Node> {
    (1..=count).map(Node::new).collect()
}

/// Resolve a node name given on the command line against a lab with `count` nodes.
pub fn node(name: &str, count: usize) -> Result<Node, UserError> {
    let index = name
        .strip_prefix("node")
        .filter(|digits| !digits.starts_with('0'))
        .and_then(|digits| digits.parse::<usize>().ok());
    match index {
        Some(index) if (1..=count).contains(&index) => Ok(Node::new(index)),
        _ => Err(UserError(format!(
            "no node `{name}` in the lab; hint: its nodes are {}",
            node_range(count)
        ))),
    }
}

fn node_range(count: usize) -> String {
    match count {
        1 => "`node1`".to_string(),
        _ => format!("`node1` to `node{count}`"),
    }
}

/// `/etc/hosts` for a node: localhost, its own name, and every lab node.
pub fn hosts_file(own: &Node, all: &[Node]) -> String {
    let mut text = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{own}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    for node in all {
        text.push_str(&format!("{}\t{}\n", node.address(), node));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_start_at_eleven_and_stay_below_the_vip() {
        let all = nodes(MAX_NODES);
        assert_eq!(all[0].address(), Ipv4Addr::new(10, 231, 0, 11));
        assert_eq!(all[2].address(), Ipv4Addr::new(10, 231, 0, 13));
        assert!(all
            .iter()
            .all(|node| node.address() != VIP && node.address() != BRIDGE_ADDRESS));
        assert_eq!(
            all.last().map(Node::address),
            Some(Ipv4Addr::new(10, 231, 0, 99))
        );
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        assert!(nodes(MAX_NODES)
            .iter()
            .all(|node| node.host_interface().len() <= 15));
        assert_eq!(nodes(1)[0].namespace(), "pgha-node1");
    }

    #[test]
    fn node_names_are_validated_against_the_lab() {
        assert_eq!(
            node("node3", 3).map(|node| node.address()).ok(),
            Some(Ipv4Addr::new(10, 231, 0, 13))
        );
        for bad in ["node4", "node0", "node01", "nodeX", "n1", ""] {
            let error = node(bad, 3).expect_err(bad);
            assert!(error.0.contains("`node1` to `node3`"), "{}", error.0);
        }
    }

    #[test]
    fn node_counts_are_bounded() {
        assert!(validate_count(0).is_err());
        assert!(validate_count(1).is_ok());
        assert!(validate_count(MAX_NODES).is_ok());
        assert!(validate_count(MAX_NODES + 1).is_err());
    }

    #[test]
    fn hosts_file_names_every_node() {
        let all = nodes(2);
        let text = hosts_file(&all[1], &all);
        assert!(text.contains("127.0.1.1\tnode2\n"));
        assert!(text.contains("10.231.0.11\tnode1\n"));
        assert!(text.contains("10.231.0.12\tnode2\n"));
    }
}
