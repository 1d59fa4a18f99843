//! Fail fast toward a silent leader: while this agent suspects the leader's node is gone (its
//! lease not refreshed for `loop_wait` + 1 s and nothing on it answering for
//! [`super::fastpath::UNANSWERED_FOR`], the fast path's own test), the local Patroni's new
//! connections to that node's REST API and etcd member are refused by the kernel at once.
//!
//! Why: when the leader key goes (its TTL, or the fast path), Patroni's leader race asks every
//! member it knew, the dead leader included, for its WAL position, with a hard-coded 2 s
//! timeout (`Ha.fetch_node_status`), and waits for all answers. A powered-off, cut-off or frozen
//! node never answers, so every TTL failover cost 2 s more than the TTL. A Patroni whose etcd
//! client sits on the dead node's member (it does not go back to its own by itself) likewise
//! waits out its read timeout there before it tries another.
//!
//! How: one `ip rule` per port, matched on the destination address, the TCP port and the
//! Patroni user's uid, with the action `unreachable`: `connect()` fails with "Network is
//! unreachable" (ENETUNREACH) instead of waiting. Nothing else is refused: PostgreSQL's
//! replication port is not in it, the agent (root) still probes the node, and the rules go the
//! moment the node answers again, another leader holds the key, or the agent stops. Patroni treats a refused member exactly
//! as one that timed out (unknown, not a candidate), so the race's outcome is the one it would
//! have reached 2 s later.
//!
//! A rule only stops new connections. A request already in flight on an established one (the
//! etcd client's keep-alive connection, the watch stream of Patroni's key cache) would still
//! wait out its read timeout, and a watch stream to a dead member has none: Patroni then sleeps
//! through the leader key's deletion until its next loop. So once the rules are in, the agent
//! aborts this node's TCP connections to those ports of that node, established or still
//! connecting (`ss -K`, the kernel's socket destroy): the reads fail at once, and the
//! reconnects meet the rules, so Patroni's etcd client moves to the next member.

use std::net::IpAddr;

/// The rules' priority: before the main table (32766), and the agent's port as a mnemonic. Every
/// rule at this priority is the agent's; [`clear`] removes them all.
pub const PRIORITY: u32 = 9650;

/// What is refused: new TCP connections from `uid` to `address` on `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub address: IpAddr,
    pub ports: Vec<u16>,
    pub uid: u32,
}

impl Block {
    /// The `ip` argument lists that add the rules.
    pub fn add_commands(&self) -> Vec<Vec<String>> {
        let (family, host_bits) = match self.address {
            IpAddr::V4(_) => ("-4", 32),
            IpAddr::V6(_) => ("-6", 128),
        };
        self.ports
            .iter()
            .map(|port| {
                [
                    "ip",
                    family,
                    "rule",
                    "add",
                    "priority",
                    &PRIORITY.to_string(),
                    "to",
                    &format!("{}/{host_bits}", self.address),
                    "ipproto",
                    "tcp",
                    "dport",
                    &port.to_string(),
                    "uidrange",
                    &format!("{0}-{0}", self.uid),
                    "unreachable",
                ]
                .map(str::to_string)
                .to_vec()
            })
            .collect()
    }

    /// The `ss` argument list that aborts this node's TCP connections (established, or sent a
    /// SYN before the rules stood) to the blocked ports of `address`, whoever opened them
    /// (Patroni, and also HAProxy's checks and this agent's own etcd client: all of them are
    /// better off elsewhere while the node is suspected).
    pub fn abort_command(&self) -> Vec<String> {
        let address = match self.address {
            IpAddr::V4(address) => address.to_string(),
            IpAddr::V6(address) => format!("[{address}]"),
        };
        let ports = self
            .ports
            .iter()
            .map(|port| format!("dport = :{port}"))
            .collect::<Vec<_>>()
            .join(" or ");
        [
            "ss",
            "-K",
            "-t",
            "-n",
            "state",
            "established",
            "state",
            "syn-sent",
            "dst",
            &address,
            &format!("( {ports} )"),
        ]
        .map(str::to_string)
        .to_vec()
    }
}

/// The uid of `user` in an `/etc/passwd` text.
pub fn uid_of(passwd: &str, user: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == user)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

/// The port of an endpoint URL (`https://10.0.0.1:2379`).
pub fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// The uid Patroni runs as (the unit's `User=postgres`).
pub fn patroni_uid() -> Option<u32> {
    uid_of(&std::fs::read_to_string("/etc/passwd").ok()?, "postgres")
}

/// Put `block` in place (after removing whatever rule of the agent's stood before).
pub async fn install(block: &Block) -> Result<(), super::probe::ProbeError> {
    clear().await;
    for command in block.add_commands() {
        let argv: Vec<&str> = command.iter().map(String::as_str).collect();
        if let Err(error) = super::probe::run(&argv).await {
            clear().await;
            return Err(error);
        }
    }
    Ok(())
}

/// Abort the open connections `block` covers ([`Block::abort_command`]); the rules
/// must be in place first, or the reconnects would go straight back.
pub async fn abort_connections(block: &Block) -> Result<(), super::probe::ProbeError> {
    let command = block.abort_command();
    let argv: Vec<&str> = command.iter().map(String::as_str).collect();
    super::probe::run(&argv).await.map(|_| ())
}

/// Remove every rule at [`PRIORITY`], in both address families (a rule left by an agent that
/// was killed goes at the next start, or with `pgha agent release` after it exits). True when
/// `ip rule show` then lists none.
pub async fn clear() -> bool {
    for family in ["-4", "-6"] {
        let priority = PRIORITY.to_string();
        // One rule per delete; a handful at most (one per port).
        for _ in 0..16 {
            let deleted =
                super::probe::run(&["ip", family, "rule", "del", "priority", &priority]).await;
            if deleted.is_err() {
                break;
            }
        }
    }
    let mut left = false;
    for family in ["-4", "-6"] {
        let shown = super::probe::run(&[
            "ip",
            family,
            "rule",
            "show",
            "priority",
            &PRIORITY.to_string(),
        ])
        .await;
        left |= !matches!(shown, Ok(text) if text.trim().is_empty());
    }
    !left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_port_for_the_patroni_user_only() {
        let block = Block {
            address: "10.231.0.12".parse().unwrap(),
            ports: vec![8008, 2379],
            uid: 105,
        };
        let commands = block.add_commands();
        assert_eq!(
            commands[0].join(" "),
            "ip -4 rule add priority 9650 to 10.231.0.12/32 ipproto tcp dport 8008 uidrange 105-105 unreachable"
        );
        assert_eq!(commands[1][11], "2379");
        let v6 = Block {
            address: "fd00::12".parse().unwrap(),
            ports: vec![8008],
            uid: 105,
        };
        assert_eq!(
            v6.add_commands()[0][..8].join(" "),
            "ip -6 rule add priority 9650 to fd00::12/128"
        );
    }

    #[test]
    fn open_connections_to_the_blocked_ports_are_aborted() {
        let block = Block {
            address: "10.231.0.12".parse().unwrap(),
            ports: vec![8008, 2379],
            uid: 105,
        };
        assert_eq!(
            block.abort_command().join(" "),
            "ss -K -t -n state established state syn-sent dst 10.231.0.12 ( dport = :8008 or dport = :2379 )"
        );
        let v6 = Block {
            address: "fd00::12".parse().unwrap(),
            ports: vec![2379],
            uid: 105,
        };
        assert_eq!(v6.abort_command()[9], "[fd00::12]");
    }

    #[test]
    fn the_uid_and_the_port_are_read_exactly() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres2:x:7:7::/:/bin/sh\npostgres:x:105:111:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(uid_of(passwd, "postgres"), Some(105));
        assert_eq!(uid_of(passwd, "etcd"), None);
        assert_eq!(port_of("https://10.231.0.11:2379"), Some(2379));
        assert_eq!(port_of("https://[fd00::1]:2379/"), Some(2379));
        assert_eq!(port_of("https://host"), None);
    }
}
