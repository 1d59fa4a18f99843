//! The inventory: the user's declarative description of one cluster.
//!
//! Loading goes YAML text → [`raw::RawInventory`] (serde, unknown keys refused) → [`Inventory`]
//! (typed, every default filled in). Validation collects *every* problem with its
//! file:line:column and a hint before returning; nothing past this module sees raw strings.
//! This module never touches a host.

pub mod edit;
mod net;
mod raw;
mod secrets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::UserError;
pub use crate::yaml_position::Position;
pub use net::Cidr;
pub use raw::RawParameter as Parameter;
pub use secrets::Secrets;

/// The Patroni release pgha ships when the inventory names none.
pub const DEFAULT_PATRONI_VERSION: &str = "4.1.5";
/// Parameters pgha sets itself; a user value would break replication, rewind or security.
const MANAGED_PARAMETERS: &[&str] = &[
    // Where PostgreSQL listens and finds its files: Patroni's `postgresql` section.
    "listen_addresses",
    "port",
    "hba_file",
    "ident_file",
    "config_file",
    "data_directory",
    "unix_socket_directories",
    "cluster_name",
    // Replication, rewind and failover: set by Patroni for every member alike.
    "wal_level",
    "hot_standby",
    "wal_log_hints",
    "max_wal_senders",
    "max_replication_slots",
    "synchronous_standby_names",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_timeline",
    // scram-sha-256 only.
    "password_encryption",
];

/// Whether pgha (through Patroni) owns the parameter `name`; PostgreSQL's names are
/// case-insensitive, so `WAL_LEVEL` is `wal_level`.
fn is_managed_parameter(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MANAGED_PARAMETERS.contains(&lower.as_str())
}

/// A PostgreSQL parameter name: a letter or `_`, then letters, digits, `_` or `$`; a custom
/// (extension) parameter has one `.` (`auto_explain.log_min_duration`).
fn is_parameter_name(name: &str) -> bool {
    let part = |text: &str| {
        let mut chars = text.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    name.len() <= 63 && {
        let mut parts = name.split('.');
        let first = parts.next().is_some_and(part);
        let rest: Vec<&str> = parts.collect();
        first && rest.len() <= 1 && rest.iter().all(|text| part(text))
    }
}

/// Why a parameter value cannot be written into `postgresql.conf` as it is, if it cannot.
fn parameter_value_problem(value: &raw::RawParameter) -> Option<&'static str> {
    match value {
        raw::RawParameter::Float(number) if !number.is_finite() => Some("is not a finite number"),
        raw::RawParameter::Text(text) if text.len() > 1024 => Some("is longer than 1024 bytes"),
        raw::RawParameter::Text(text) if text.chars().any(char::is_control) => {
            Some("holds a control character (a newline, a tab, ...)")
        }
        _ => None,
    }
}

/// A Patroni release pgha supports: `4.MINOR.PATCH`, digits only.
fn is_patroni_version(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts[0] == "4"
        && parts[1..].iter().all(|part| {
            !part.is_empty() && part.len() <= 3 && part.bytes().all(|b| b.is_ascii_digit())
        })
}

/// A Debian package version (`[epoch:]upstream[-revision]`): starts with a digit, then
/// letters, digits and `.+~:-`, at most 64 bytes; nothing a shell or apt would read as more.
fn is_debian_version(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b))
}

/// Pinned Debian package versions (`None`: what the nodes' sources offer).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Versions {
    pub postgresql: Option<String>,
    pub etcd: Option<String>,
    pub haproxy: Option<String>,
    pub keepalived: Option<String>,
}

impl Versions {
    /// The pin of the component a Debian package belongs to.
    pub fn for_package(&self, package: &str, postgres_version: u32) -> Option<&str> {
        let pin = match package {
            "etcd-server" | "etcd-client" => &self.etcd,
            "haproxy" => &self.haproxy,
            "keepalived" => &self.keepalived,
            name if name == format!("postgresql-{postgres_version}")
                || name == format!("postgresql-client-{postgres_version}") =>
            {
                &self.postgresql
            }
            _ => &None,
        };
        pin.as_deref()
    }
}

/// A Linux interface name: 1 to 15 bytes of letters, digits, `_`, `.` and `-`, not `.`/`..`.
fn is_interface_name(text: &str) -> bool {
    (1..=15).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && text != "."
        && text != ".."
}

/// A POSIX login name as Debian's `adduser` accepts it by default.
fn is_user_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    (1..=32).contains(&text.len())
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// A component a node runs.
#[derive(
    Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Etcd,
    Postgres,
    Haproxy,
    Keepalived,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Etcd, Role::Postgres, Role::Haproxy, Role::Keepalived];

    pub fn name(self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::Postgres => "postgres",
            Role::Haproxy => "haproxy",
            Role::Keepalived => "keepalived",
        }
    }
}

/// Failover timing preset (Pigsty's presets; see REFERENCE.md's failover-time model).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailoverProfile {
    Fast,
    #[default]
    Normal,
    Safe,
}

impl FailoverProfile {
    /// The profile's Patroni timings.
    pub fn patroni(self) -> PatroniTiming {
        let (ttl, loop_wait, retry_timeout, primary_start_timeout) = match self {
            FailoverProfile::Fast => (20, 5, 5, 15),
            FailoverProfile::Normal => (30, 5, 10, 25),
            FailoverProfile::Safe => (60, 10, 20, 45),
        };
        PatroniTiming {
            ttl,
            loop_wait,
            retry_timeout,
            primary_start_timeout,
            maximum_lag_on_failover: 1_048_576,
        }
    }

    /// The profile's HAProxy health-check timings.
    pub fn haproxy(self) -> HaproxyChecks {
        let (inter_ms, fastinter_ms) = match self {
            FailoverProfile::Fast => (1000, 500),
            FailoverProfile::Normal => (2000, 1000),
            FailoverProfile::Safe => (3000, 1500),
        };
        HaproxyChecks {
            inter_ms,
            fastinter_ms,
            rise: 3,
            fall: 3,
            hold_connections_ms: HOLD_CONNECTIONS_MS,
        }
    }
}

/// Synchronous replication mode.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    #[default]
    Off,
    On,
    Strict,
}

/// A validated inventory with every default filled in.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    #[serde(skip)]
    pub path: PathBuf,
    pub cluster: Cluster,
    pub ssh: SshSettings,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    pub postgres_version: u32,
    pub vip: Option<Cidr>,
    pub vip_interface: String,
    pub failover_profile: FailoverProfile,
    pub synchronous_mode: SyncMode,
    pub ports: Ports,
    pub patroni: PatroniTiming,
    pub haproxy: HaproxyChecks,
    pub postgresql: Postgresql,
    pub single_node_trial: bool,
    /// The agents' corroborated fast path (off by default).
    pub corroborated_failover: bool,
    pub patroni_version: String,
    /// Debian package version pins by component.
    pub versions: Versions,
    pub secrets_file: PathBuf,
    /// The binary installed as the agent; `None`: the running pgha.
    pub agent_binary: Option<PathBuf>,
}

impl Cluster {
    /// The Debian release the nodes run: the one that ships `postgres_version` (validated).
    pub fn release(&self) -> crate::debian::Release {
        crate::debian::Release::for_postgres(self.postgres_version)
            .expect("postgres_version is validated against the supported releases")
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Ports {
    pub write: u16,
    pub read: u16,
    pub postgres: u16,
    pub patroni_api: u16,
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub haproxy_stats: u16,
    pub agent: u16,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PatroniTiming {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    pub primary_start_timeout: u32,
    pub maximum_lag_on_failover: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct HaproxyChecks {
    pub inter_ms: u32,
    pub fastinter_ms: u32,
    pub rise: u32,
    pub fall: u32,
    /// New connections wait this long for a server of their backend (0: refused at once).
    pub hold_connections_ms: u32,
}

/// The default of `cluster.haproxy.hold_connections_ms`: longer than a switchover's hand-over
/// (about 1.6 s on the lab), short enough that a failover's clients fail fast and retry.
pub const HOLD_CONNECTIONS_MS: u32 = 5000;
/// Its upper bound: HAProxy's `tcp-request inspect-delay` keeps the connection that long.
const HOLD_CONNECTIONS_MAX_MS: u32 = 30_000;

#[derive(Debug, Clone, Serialize)]
pub struct Postgresql {
    pub parameters: BTreeMap<String, Parameter>,
    pub client_cidrs: Vec<Cidr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SshSettings {
    pub user: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub address: IpAddr,
    pub roles: BTreeSet<Role>,
    pub tags: Tags,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Tags {
    pub nofailover: bool,
    pub noloadbalance: bool,
    pub nosync: bool,
}

impl Node {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

impl Inventory {
    /// Read, parse and validate an inventory file. Every problem is reported at once, as a
    /// [`UserError`] (exit code 2).
    pub fn load(path: &Path) -> anyhow::Result<Inventory> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read inventory `{}`", path.display()))
            .map_err(|error| {
                UserError(format!("{error:#}\nhint: pass an existing file with `-i`"))
            })?;
        Inventory::parse(path, &text).map_err(anyhow::Error::from)
    }

    /// Parse and validate inventory text; `path` names the file in messages and anchors
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Inventory, UserError> {
        let raw: raw::RawInventory = serde_yaml::from_str(text).map_err(|error| {
            let place = match error.location() {
                Some(location) => {
                    format!(
                        "{}:{}:{}",
                        path.display(),
                        location.line(),
                        location.column()
                    )
                }
                None => path.display().to_string(),
            };
            let message = error.to_string();
            let message = match message.rfind(" at line ") {
                Some(cut) => message[..cut].to_string(),
                None => message,
            };
            UserError(format!(
                "{place}: {message}\nhint: see `pgha inventory schema` for every key and its type"
            ))
        })?;
        let mut problems = Problems::default();
        let inventory = validate(path, raw, &mut problems);
        if problems.list.is_empty() {
            Ok(inventory)
        } else {
            Err(UserError(problems.render(
                path,
                &crate::yaml_position::Positions::index(text),
            )))
        }
    }

    /// Nodes that run `role`, in inventory order.
    pub fn nodes_with(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |node| node.has(role))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// The resolved inventory as YAML: the input shape with every default filled in.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// The JSON Schema of the inventory file, for editors.
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawInventory);
    serde_json::to_value(schema).unwrap_or_default()
}

/// One validation problem at a YAML path such as `nodes[1].address`.
#[derive(Debug)]
struct Problem {
    path: String,
    message: String,
    hint: Option<String>,
}

#[derive(Debug, Default)]
struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>, hint: Option<&str>) {
        self.list.push(Problem {
            path: path.into(),
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }

    fn render(&self, file: &Path, positions: &crate::yaml_position::Positions) -> String {
        let mut problems: Vec<(Position, &Problem)> = self
            .list
            .iter()
            .map(|problem| (positions.find(&problem.path), problem))
            .collect();
        problems.sort_by_key(|(position, _)| (position.line, position.column));
        let mut out = format!(
            "inventory `{}` has {} problem{}",
            file.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for (position, problem) in problems {
            out.push_str(&format!(
                "\n{}:{}:{}: {}: {}",
                file.display(),
                position.line,
                position.column,
                problem.path,
                problem.message
            ));
            if let Some(hint) = &problem.hint {
                out.push_str(&format!("\n  hint: {hint}"));
            }
        }
        out
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn is_simple_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Expand a leading `~/` with `$HOME`; anchor other relative paths at the inventory's folder.
fn resolve_path(base: &Path, text: &str) -> PathBuf {
    if let Some(rest) = text.strip_prefix("~/") {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/root".into());
        return home.join(rest);
    }
    let path = PathBuf::from(text);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

fn validate(path: &Path, raw: raw::RawInventory, problems: &mut Problems) -> Inventory {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let nodes = validate_nodes(&raw.nodes, problems);
    let cluster = validate_cluster(path, &base, raw.cluster, &nodes, problems);
    let ssh = SshSettings {
        user: raw.ssh.user.unwrap_or_else(|| "root".to_string()),
        port: raw.ssh.port.unwrap_or(22),
        identity_file: raw
            .ssh
            .identity_file
            .as_deref()
            .map(|text| resolve_path(&base, text)),
        known_hosts: resolve_path(
            &base,
            raw.ssh
                .known_hosts
                .as_deref()
                .unwrap_or("~/.ssh/known_hosts"),
        ),
    };
    if !is_user_name(&ssh.user) {
        problems.add(
            "ssh.user",
            format!("{:?} is not a login name", ssh.user),
            Some("use `root` or a user with passwordless sudo: lowercase letters, digits, `_` and `-`"),
        );
    }
    if ssh.port == 0 {
        problems.add(
            "ssh.port",
            "port 0 is not a usable SSH port",
            Some("the usual port is 22"),
        );
    }
    Inventory {
        path: path.to_path_buf(),
        cluster,
        ssh,
        nodes,
    }
}

fn validate_nodes(raw_nodes: &[raw::RawNode], problems: &mut Problems) -> Vec<Node> {
    if raw_nodes.is_empty() {
        problems.add(
            "nodes",
            "no nodes are listed",
            Some("list at least three nodes with `name` and `address`"),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
    let mut nodes = Vec::new();
    for (index, raw_node) in raw_nodes.iter().enumerate() {
        let at = format!("nodes[{index}]");
        if !is_simple_name(&raw_node.name) {
            problems.add(
                format!("{at}.name"),
                format!("`{}` is not a valid node name", raw_node.name),
                Some("use lowercase letters, digits and `-` (at most 63), e.g. `node1`"),
            );
        }
        if let Some(first) = names.insert(&raw_node.name, index) {
            problems.add(
                format!("{at}.name"),
                format!(
                    "node name `{}` is used twice (also by nodes[{first}])",
                    raw_node.name
                ),
                Some("give every node its own name"),
            );
        }
        let address = match raw_node.address.parse::<IpAddr>() {
            Ok(address) => address,
            Err(_) => {
                problems.add(
                    format!("{at}.address"),
                    format!("`{}` is not an IP address", raw_node.address),
                    Some("write the node's IPv4 or IPv6 address, e.g. `10.0.0.11` (host names are not resolved)"),
                );
                IpAddr::from([0, 0, 0, 0])
            }
        };
        if !address.is_unspecified() {
            if let Some(first) = addresses.insert(address, index) {
                problems.add(
                    format!("{at}.address"),
                    format!("address `{address}` is used twice (also by nodes[{first}])"),
                    Some("every node needs its own address"),
                );
            }
        }
        let roles: BTreeSet<Role> = match &raw_node.roles {
            Some(roles) => roles.iter().copied().collect(),
            None => Role::ALL.into_iter().collect(),
        };
        if raw_node
            .roles
            .as_ref()
            .is_some_and(|roles| roles.is_empty())
        {
            problems.add(
                format!("{at}.roles"),
                "the role list is empty",
                Some("leave `roles` out for all four roles"),
            );
        }
        let tags = raw_node.tags.as_ref().map(|tags| Tags {
            nofailover: tags.nofailover.unwrap_or(false),
            noloadbalance: tags.noloadbalance.unwrap_or(false),
            nosync: tags.nosync.unwrap_or(false),
        });
        nodes.push(Node {
            name: raw_node.name.clone(),
            address,
            roles,
            tags: tags.unwrap_or_default(),
        });
    }
    nodes
}

fn validate_cluster(
    path: &Path,
    base: &Path,
    raw: raw::RawCluster,
    nodes: &[Node],
    problems: &mut Problems,
) -> Cluster {
    if !is_simple_name(&raw.name) {
        problems.add(
            "cluster.name",
            format!("`{}` is not a valid cluster name", raw.name),
            Some(
                "use lowercase letters, digits and `-`, e.g. `demo`; it becomes the Patroni scope",
            ),
        );
    }
    if crate::debian::Release::for_postgres(raw.postgres_version).is_none() {
        problems.add(
            "cluster.postgres_version",
            format!(
                "PostgreSQL {} is not supported: no supported Debian release ships it",
                raw.postgres_version
            ),
            Some(&format!(
                "supported: {}; the nodes run that release",
                crate::debian::postgres_choices()
            )),
        );
    }

    let profile = raw.failover_profile.unwrap_or_default();
    let patroni = {
        let preset = profile.patroni();
        let overrides = raw.patroni.unwrap_or_default();
        PatroniTiming {
            ttl: overrides.ttl.unwrap_or(preset.ttl),
            loop_wait: overrides.loop_wait.unwrap_or(preset.loop_wait),
            retry_timeout: overrides.retry_timeout.unwrap_or(preset.retry_timeout),
            primary_start_timeout: overrides
                .primary_start_timeout
                .unwrap_or(preset.primary_start_timeout),
            maximum_lag_on_failover: overrides
                .maximum_lag_on_failover
                .unwrap_or(preset.maximum_lag_on_failover),
        }
    };
    check_patroni_timing(&patroni, problems);
    let haproxy = {
        let preset = profile.haproxy();
        let overrides = raw.haproxy.unwrap_or_default();
        HaproxyChecks {
            inter_ms: overrides.inter_ms.unwrap_or(preset.inter_ms),
            fastinter_ms: overrides.fastinter_ms.unwrap_or(preset.fastinter_ms),
            rise: overrides.rise.unwrap_or(preset.rise),
            fall: overrides.fall.unwrap_or(preset.fall),
            hold_connections_ms: overrides
                .hold_connections_ms
                .unwrap_or(preset.hold_connections_ms),
        }
    };
    if haproxy.hold_connections_ms > HOLD_CONNECTIONS_MAX_MS {
        problems.add(
            "cluster.haproxy.hold_connections_ms",
            format!(
                "{} ms is longer than the {HOLD_CONNECTIONS_MAX_MS} ms a new connection may be held",
                haproxy.hold_connections_ms
            ),
            Some("0 refuses new connections at once while no server takes them"),
        );
    }
    for (key, value) in [
        ("inter_ms", haproxy.inter_ms),
        ("fastinter_ms", haproxy.fastinter_ms),
        ("rise", haproxy.rise),
        ("fall", haproxy.fall),
    ] {
        if value == 0 {
            problems.add(
                format!("cluster.haproxy.{key}"),
                "must be greater than 0",
                None,
            );
        }
    }

    let raw_ports = raw.ports.unwrap_or_default();
    let ports = Ports {
        write: raw_ports.write.unwrap_or(5000),
        read: raw_ports.read.unwrap_or(5001),
        postgres: raw_ports.postgres.unwrap_or(5432),
        patroni_api: raw_ports.patroni_api.unwrap_or(8008),
        etcd_client: raw_ports.etcd_client.unwrap_or(2379),
        etcd_peer: raw_ports.etcd_peer.unwrap_or(2380),
        haproxy_stats: raw_ports.haproxy_stats.unwrap_or(7000),
        agent: raw_ports.agent.unwrap_or(9650),
    };
    check_ports(&ports, problems);

    let synchronous_mode = raw.synchronous_mode.unwrap_or_default();
    let single_node_trial = raw.single_node_trial.unwrap_or(false);
    check_roles(nodes, synchronous_mode, single_node_trial, problems);
    let corroborated_failover = raw.corroborated_failover.unwrap_or(false);
    if corroborated_failover && synchronous_mode == SyncMode::Off {
        // Without a synchronous standby a wrong verdict could lose acknowledged commits.
        problems.add(
            "cluster.corroborated_failover",
            "the corroborated fast path needs synchronous replication",
            Some("set `synchronous_mode: \"on\"` (or `strict`), or remove `corroborated_failover`"),
        );
    }

    let vip = raw
        .vip
        .as_deref()
        .and_then(|text| match text.parse::<Cidr>() {
            Ok(vip) => Some(vip),
            Err(reason) => {
                problems.add(
                    "cluster.vip",
                    format!("`{text}` is not a valid VIP: {reason}"),
                    Some("write an address with its prefix length, e.g. `10.0.0.100/24`"),
                );
                None
            }
        });
    if let Some(vip) = vip {
        check_vip(vip, nodes, problems);
    }

    let postgresql = raw.postgresql.unwrap_or_default();
    for (name, value) in &postgresql.parameters {
        let at = format!("cluster.postgresql.parameters.{name}");
        if !is_parameter_name(name) {
            problems.add(
                at,
                format!("{name:?} is not a PostgreSQL parameter name"),
                Some("names are letters, digits, `_` and `$` (one `.` for an extension's parameter), e.g. `work_mem`"),
            );
        } else if is_managed_parameter(name) {
            problems.add(
                at,
                format!("`{name}` is managed by pgha"),
                Some(
                    "remove it; pgha and Patroni set it for replication, pg_rewind, failover and scram-sha-256 to work",
                ),
            );
        } else if let Some(reason) = parameter_value_problem(value) {
            problems.add(
                at,
                format!("the value {reason}"),
                Some("write the value on one line, as `postgresql.conf` would hold it"),
            );
        }
    }
    let mut client_cidrs = Vec::new();
    for (index, text) in postgresql.client_cidrs.iter().enumerate() {
        let at = format!("cluster.postgresql.client_cidrs[{index}]");
        match text.parse::<Cidr>() {
            Ok(cidr) if cidr.prefix == 0 => problems.add(
                at,
                format!("`{text}` would let the whole internet try passwords"),
                Some("name your application networks, e.g. `10.1.0.0/16`"),
            ),
            Ok(cidr) => client_cidrs.push(cidr.network()),
            Err(reason) => problems.add(
                at,
                format!("`{text}` is not a network: {reason}"),
                Some("e.g. `10.1.0.0/16`"),
            ),
        }
    }

    let secrets_file = match &raw.secrets_file {
        Some(text) => resolve_path(base, text),
        None => {
            let stem = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or("inventory");
            base.join(format!("{stem}.secrets.yml"))
        }
    };
    let agent_binary = raw
        .agent_binary
        .as_ref()
        .map(|text| resolve_path(base, text));
    let patroni_version = raw
        .patroni_version
        .unwrap_or_else(|| DEFAULT_PATRONI_VERSION.to_string());
    if !is_patroni_version(&patroni_version) {
        problems.add(
            "cluster.patroni_version",
            format!("{patroni_version:?} is not a supported Patroni version"),
            Some("write a 4.x release as MAJOR.MINOR.PATCH, e.g. `4.1.5`; 3.0.2 lost an acknowledged write in a freeze/thaw drill"),
        );
    }
    let raw_versions = raw.versions.unwrap_or_default();
    for (component, pin) in [
        ("postgresql", &raw_versions.postgresql),
        ("etcd", &raw_versions.etcd),
        ("haproxy", &raw_versions.haproxy),
        ("keepalived", &raw_versions.keepalived),
    ] {
        if let Some(pin) = pin.as_deref().filter(|pin| !is_debian_version(pin)) {
            problems.add(
                format!("cluster.versions.{component}"),
                format!("{pin:?} is not a Debian package version"),
                Some("write it as `apt-cache policy` lists it, e.g. `15.18-0+deb12u1`; leave it out for what the package sources offer"),
            );
        }
    }
    let versions = Versions {
        postgresql: raw_versions.postgresql,
        etcd: raw_versions.etcd,
        haproxy: raw_versions.haproxy,
        keepalived: raw_versions.keepalived,
    };
    let vip_interface = raw.vip_interface.unwrap_or_else(|| "eth0".to_string());
    if !is_interface_name(&vip_interface) {
        problems.add(
            "cluster.vip_interface",
            format!("{vip_interface:?} is not an interface name"),
            Some("1 to 15 letters, digits, `_`, `.` or `-`, e.g. `eth0`"),
        );
    }

    Cluster {
        name: raw.name,
        postgres_version: raw.postgres_version,
        vip,
        vip_interface,
        failover_profile: profile,
        synchronous_mode,
        ports,
        patroni,
        haproxy,
        postgresql: Postgresql {
            parameters: postgresql.parameters,
            client_cidrs,
        },
        single_node_trial,
        corroborated_failover,
        patroni_version,
        versions,
        secrets_file,
        agent_binary,
    }
}

fn check_patroni_timing(timing: &PatroniTiming, problems: &mut Problems) {
    if timing.ttl < 20 {
        problems.add(
            "cluster.patroni.ttl",
            format!("ttl {} is below Patroni's minimum of 20", timing.ttl),
            Some("use `failover_profile: fast` for the shortest safe timings"),
        );
    }
    if timing.loop_wait < 1 {
        problems.add(
            "cluster.patroni.loop_wait",
            "loop_wait must be at least 1",
            None,
        );
    }
    if timing.retry_timeout < 3 {
        problems.add(
            "cluster.patroni.retry_timeout",
            "retry_timeout must be at least 3",
            None,
        );
    }
    if timing.loop_wait + 2 * timing.retry_timeout > timing.ttl {
        problems.add(
            "cluster.patroni",
            format!(
                "loop_wait + 2 * retry_timeout = {} + 2 * {} = {} exceeds ttl {}",
                timing.loop_wait,
                timing.retry_timeout,
                timing.loop_wait + 2 * timing.retry_timeout,
                timing.ttl
            ),
            Some("Patroni needs `loop_wait + 2 * retry_timeout <= ttl`; raise ttl or lower the others"),
        );
    }
}

fn check_ports(ports: &Ports, problems: &mut Problems) {
    let named = [
        ("write", ports.write),
        ("read", ports.read),
        ("postgres", ports.postgres),
        ("patroni_api", ports.patroni_api),
        ("etcd_client", ports.etcd_client),
        ("etcd_peer", ports.etcd_peer),
        ("haproxy_stats", ports.haproxy_stats),
        ("agent", ports.agent),
    ];
    let mut seen: HashMap<u16, &str> = HashMap::new();
    for (name, port) in named {
        if port == 0 {
            problems.add(
                format!("cluster.ports.{name}"),
                "port 0 is not usable",
                None,
            );
        } else if let Some(other) = seen.insert(port, name) {
            problems.add(
                format!("cluster.ports.{name}"),
                format!("port {port} is already used by `{other}`"),
                Some("every service needs its own port"),
            );
        }
    }
}

fn check_roles(
    nodes: &[Node],
    synchronous_mode: SyncMode,
    single_node_trial: bool,
    problems: &mut Problems,
) {
    let count = |role: Role| nodes.iter().filter(|node| node.has(role)).count();
    let etcd = count(Role::Etcd);
    // An even count of 4 or more is allowed, and `pgha deploy` says what it costs: growing
    // from 3 to 5 members goes through 4, one `add-node` at a time.
    let etcd_ok = if single_node_trial {
        etcd == 1 || etcd >= 3
    } else {
        etcd >= 3
    };
    if !etcd_ok && !nodes.is_empty() {
        problems.add(
            "nodes",
            format!(
                "{etcd} etcd member{} listed; etcd needs at least 3 (an odd number)",
                if etcd == 1 { " is" } else { "s are" }
            ),
            Some(if etcd == 1 {
                "add etcd members, or set `cluster.single_node_trial: true` for a trial without HA"
            } else {
                "give the `etcd` role to 3 or 5 nodes"
            }),
        );
    }
    let postgres = count(Role::Postgres);
    if postgres == 0 && !nodes.is_empty() {
        problems.add(
            "nodes",
            "no node has the `postgres` role",
            Some("give the `postgres` role to at least two nodes"),
        );
    }
    if synchronous_mode != SyncMode::Off && postgres < 2 {
        problems.add(
            "cluster.synchronous_mode",
            format!("synchronous replication needs at least 2 postgres nodes, {postgres} listed"),
            Some("add a postgres node or set `synchronous_mode: off`"),
        );
    }
    if count(Role::Haproxy) == 0 && !nodes.is_empty() {
        problems.add("nodes", "no node has the `haproxy` role", Some("applications reach the cluster through HAProxy; give the role to the postgres nodes"));
    }
}

fn check_vip(vip: Cidr, nodes: &[Node], problems: &mut Problems) {
    let keepalived: Vec<&Node> = nodes
        .iter()
        .filter(|node| node.has(Role::Keepalived))
        .collect();
    if keepalived.is_empty() {
        problems.add(
            "cluster.vip",
            "a VIP is set but no node has the `keepalived` role",
            Some("give `keepalived` to the HAProxy nodes, or remove `vip`"),
        );
    }
    for node in &keepalived {
        if node.address == vip.address {
            problems.add(
                "cluster.vip",
                format!("the VIP equals the address of `{}`", node.name),
                Some("pick an unused address in the nodes' subnet"),
            );
        } else if !node.address.is_unspecified() && !vip.contains(node.address) {
            problems.add(
                "cluster.vip",
                format!("VIP `{vip}` is not in the subnet of `{}` ({})", node.name, node.address),
                Some("the VIP must be in the same subnet as every keepalived node (check the prefix length)"),
            );
        }
    }
    if keepalived.iter().any(|node| !node.has(Role::Haproxy)) {
        problems.add(
            "cluster.vip",
            "a keepalived node without the `haproxy` role could hold the VIP and route nothing",
            Some("give `haproxy` to every keepalived node"),
        );
    }
}

#[cfg(test)]
mod tests;
