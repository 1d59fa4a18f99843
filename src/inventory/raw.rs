//! The inventory exactly as the user writes it: serde structs that mirror the YAML, with
//! `deny_unknown_fields` so a typo is an error, and doc comments that become the JSON Schema's
//! descriptions. Nothing outside the inventory module uses these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FailoverProfile, Role, SyncMode};

/// A pgha inventory: one PostgreSQL HA cluster and the hosts it runs on.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub cluster: RawCluster,
    #[serde(default)]
    pub ssh: RawSsh,
    pub nodes: Vec<RawNode>,
}

/// Cluster-wide settings.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Cluster name, used as the Patroni scope: lowercase letters, digits and `-`.
    pub name: String,
    /// PostgreSQL major version: 15 on Debian 12 nodes, 17 on Debian 13 (each release ships one).
    pub postgres_version: u32,
    /// Virtual IP with prefix length (e.g. `10.0.0.100/24`); without it no Keepalived is deployed.
    pub vip: Option<String>,
    /// Interface the VIP is added to on keepalived nodes (default `eth0`).
    pub vip_interface: Option<String>,
    /// Failover timing preset: sets Patroni ttl/loop_wait/retry_timeout/primary_start_timeout
    /// and HAProxy check timings together (default `normal`).
    pub failover_profile: Option<FailoverProfile>,
    /// Synchronous replication: `off`, `on` (Patroni synchronous_mode) or `strict`
    /// (synchronous_mode_strict: no writes without a sync standby).
    pub synchronous_mode: Option<SyncMode>,
    /// Client-facing and internal ports.
    pub ports: Option<RawPorts>,
    /// Overrides of the failover profile's Patroni timings.
    pub patroni: Option<RawPatroni>,
    /// Overrides of the failover profile's HAProxy health-check timings.
    pub haproxy: Option<RawHaproxy>,
    /// PostgreSQL settings.
    pub postgresql: Option<RawPostgresql>,
    /// Allow a single etcd member (a one-node trial, not highly available).
    pub single_node_trial: Option<bool>,
    /// The corroborated fast path (default false): when the agents on a majority of the other
    /// Patroni nodes find the leader's node gone (its lease not refreshed for `loop_wait` +
    /// 1 s, its PostgreSQL, Patroni and etcd member unanswering), they delete its leader key
    /// instead of waiting for the TTL. Needs `synchronous_mode` on.
    pub corroborated_failover: Option<bool>,
    /// Patroni version installed from wheels shipped by pgha (default 4.1.5): Patroni's pin.
    /// `pgha deploy` installs it on a new node; `pgha upgrade` moves a running cluster to it.
    pub patroni_version: Option<String>,
    /// Debian package versions to install (e.g. `15.18-0+deb12u1`); a component without one
    /// gets what the nodes' package sources offer. `pgha deploy` never changes an installed
    /// version: it reports the difference, and `pgha upgrade` moves the cluster.
    pub versions: Option<RawVersions>,
    /// Secrets file (passwords), relative to the inventory; generated 0600 if missing
    /// (default `<inventory name>.secrets.yml` beside the inventory).
    pub secrets_file: Option<String>,
    /// The pgha binary the deploy installs on the nodes as the agent, relative to the
    /// inventory (default: the running `pgha` itself; set it when the nodes have another
    /// architecture).
    pub agent_binary: Option<String>,
}

/// Debian package version pins, exactly as `apt-cache policy` lists them.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVersions {
    /// `postgresql-<major>` and `postgresql-client-<major>`, e.g. `15.18-0+deb12u1`.
    pub postgresql: Option<String>,
    /// `etcd-server` and `etcd-client`, e.g. `3.4.23-4+b6`.
    pub etcd: Option<String>,
    /// `haproxy`, e.g. `2.6.12-1+deb12u3`.
    pub haproxy: Option<String>,
    /// `keepalived`, e.g. `1:2.2.7-1+b2`.
    pub keepalived: Option<String>,
}

/// TCP ports. `write` and `read` are what applications use (through the VIP or any HAProxy).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPorts {
    /// HAProxy port routed to the primary (default 5000).
    pub write: Option<u16>,
    /// HAProxy port balanced over replicas (default 5001).
    pub read: Option<u16>,
    /// PostgreSQL port on every postgres node (default 5432).
    pub postgres: Option<u16>,
    /// Patroni REST API (default 8008).
    pub patroni_api: Option<u16>,
    /// etcd client port (default 2379).
    pub etcd_client: Option<u16>,
    /// etcd peer port (default 2380).
    pub etcd_peer: Option<u16>,
    /// HAProxy statistics page, bound to 127.0.0.1 only (default 7000).
    pub haproxy_stats: Option<u16>,
    /// pgha agent `/status` and `/metrics` (default 9650).
    pub agent: Option<u16>,
}

/// Patroni timing overrides (seconds). Must hold `loop_wait + 2 * retry_timeout <= ttl`.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPatroni {
    pub ttl: Option<u32>,
    pub loop_wait: Option<u32>,
    pub retry_timeout: Option<u32>,
    pub primary_start_timeout: Option<u32>,
    /// Bytes a replica may lag and still be promoted (default 1048576).
    pub maximum_lag_on_failover: Option<u64>,
}

/// HAProxy health-check timing overrides (`inter`/`fastinter` in milliseconds).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHaproxy {
    pub inter_ms: Option<u32>,
    pub fastinter_ms: Option<u32>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// How long a new connection waits in HAProxy while its backend has no server (a
    /// switchover's hand-over, the last replica restarting) before it is refused; 0 refuses
    /// at once (default 5000).
    pub hold_connections_ms: Option<u32>,
}

/// PostgreSQL settings.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPostgresql {
    /// Extra `postgresql.conf` parameters (applied through Patroni's dynamic configuration).
    #[serde(default)]
    pub parameters: BTreeMap<String, RawParameter>,
    /// Application networks allowed to connect (pg_hba, scram-sha-256), e.g. `10.1.0.0/16`.
    #[serde(default)]
    pub client_cidrs: Vec<String>,
}

/// A PostgreSQL parameter value.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawParameter {
    Bool(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

/// How pgha logs in to the nodes.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    /// Remote user (default `root`); any other user needs passwordless sudo.
    pub user: Option<String>,
    /// SSH port (default 22).
    pub port: Option<u16>,
    /// Private key; `~` is expanded. Without it, keys from ssh-agent are used.
    pub identity_file: Option<String>,
    /// Host keys are checked against this file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<String>,
}

/// One host.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Node name (Patroni member name): lowercase letters, digits and `-`.
    pub name: String,
    /// IP address pgha and the cluster use to reach this node.
    pub address: String,
    /// Components on this node (default all four).
    pub roles: Option<Vec<Role>>,
    /// Patroni tags.
    pub tags: Option<RawTags>,
}

/// Patroni member tags.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTags {
    /// Never promote this node.
    pub nofailover: Option<bool>,
    /// Keep this node out of the read (`/replica`) pool.
    pub noloadbalance: Option<bool>,
    /// Never choose this node as synchronous standby.
    pub nosync: Option<bool>,
}
