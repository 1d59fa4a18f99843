//! The upgrade's pure part: from what every node reports ([`NodeFacts`]) and the inventory's
//! pins to the ordered [`Step`]s, and the checks that must pass before anything changes. No I/O.
//!
//! A component needs a step on a node when its installed version differs from the pin, or when
//! it still runs a binary that was replaced on disk (`/proc/PID/exe` says `(deleted)`): so a
//! run cut off between installing and restarting is finished by the next one.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::inventory::{Inventory, Role};
use crate::patroni::ClusterView;

/// What one node reports for the upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeFacts {
    /// Installed Debian packages pgha manages → version.
    pub installed: BTreeMap<String, String>,
    /// Package → every version its sources offer (`apt-cache policy`).
    pub candidates: BTreeMap<String, BTreeSet<String>>,
    /// Components whose running process executes a binary replaced on disk.
    pub stale: BTreeSet<String>,
    /// The Patroni version the running Patroni was started from (its virtualenv).
    pub patroni_running: Option<String>,
    /// This node's etcd member leads the raft group.
    pub etcd_leader: bool,
    /// This node holds the VIP.
    pub holds_vip: bool,
    /// Size and modification time of the installed pgha binary (the agent).
    pub agent_binary: Option<(u64, i64)>,
}

/// Parse the facts script's output (sections `### name`).
pub fn parse_facts(output: &str) -> NodeFacts {
    let mut facts = NodeFacts::default();
    let mut section = "";
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            section = name.trim();
            continue;
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        match section {
            "installed" => {
                if let Some((name, version)) = line.split_once('\t') {
                    facts.installed.insert(name.into(), version.into());
                }
            }
            "candidates" => {
                if let Some((name, version)) = line.split_once('\t') {
                    facts
                        .candidates
                        .entry(name.into())
                        .or_default()
                        .insert(version.into());
                }
            }
            "stale" => {
                facts.stale.insert(line.trim().to_string());
            }
            // `GET /patroni` of the running member: `{"patroni": {"version": ...}, ...}`.
            "patroni" => {
                facts.patroni_running = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|value| value["patroni"]["version"].as_str().map(str::to_string))
            }
            "etcd_leader" => facts.etcd_leader = line.trim() == "true",
            "vip" => facts.holds_vip = line.trim() == "true",
            "agent" => {
                let mut words = line.split_whitespace();
                if let (Some(Ok(size)), Some(Ok(time))) = (
                    words.next().map(str::parse::<u64>),
                    words.next().map(str::parse::<i64>),
                ) {
                    facts.agent_binary = Some((size, time));
                }
            }
            _ => {}
        }
    }
    facts
}

/// The versions a line of `apt-cache policy`'s version table names: `*** 1.2-3 500` or
/// `1.2-3 500` (a source line starts with its priority, a number, and is skipped).
pub fn policy_version(line: &str) -> Option<&str> {
    let line = line.trim_start().trim_start_matches("*** ");
    let mut fields = line.split_whitespace();
    let (version, priority) = (fields.next()?, fields.next()?);
    let plain_number = |text: &str| text.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    (fields.next().is_none()
        && !plain_number(version)
        && version.starts_with(|c: char| c.is_ascii_digit())
        && plain_number(priority))
    .then_some(version)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// etcd-server and etcd-client, then a restart of the member.
    Etcd,
    /// PostgreSQL's packages and/or Patroni's version, then a restart of Patroni (and so of
    /// PostgreSQL) on a drained replica.
    Database,
    /// Patroni's version only: Patroni restarted onto it with the cluster paused, so PostgreSQL
    /// keeps running (on the primary too: no switchover).
    Patroni,
    /// The primary role handed to an upgraded (synchronous) standby.
    Switchover,
    /// HAProxy's package, then a reload (the master re-executes the new binary).
    Haproxy,
    /// Keepalived's package, then a restart (the VIP holder last).
    Keepalived,
    /// The pgha binary and a restart of the agent, last on every node.
    Agent,
}

/// One step of the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub kind: StepKind,
    pub node: String,
    pub from: String,
    pub to: String,
    /// Package specs (`name=version`) the step installs.
    pub install: Vec<String>,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            StepKind::Etcd => "etcd",
            StepKind::Database => "PostgreSQL/Patroni",
            StepKind::Patroni => "Patroni (PostgreSQL keeps running)",
            StepKind::Switchover => "switchover",
            StepKind::Haproxy => "HAProxy",
            StepKind::Keepalived => "Keepalived",
            StepKind::Agent => "pgha agent",
        };
        write!(f, "{kind} on {}: {} → {}", self.node, self.from, self.to)
    }
}

/// A check made before anything changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Precondition {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

/// Limits the preconditions apply.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_lag_bytes: u64,
    pub max_transaction_seconds: u64,
}

/// What one component on one node runs and should run.
struct Want<'a> {
    package: String,
    pin: Option<&'a str>,
}

fn differs(facts: &NodeFacts, want: &Want) -> Option<(String, String)> {
    let installed = facts
        .installed
        .get(&want.package)
        .cloned()
        .unwrap_or_else(|| "not installed".into());
    match want.pin {
        Some(pin) if installed != pin => Some((installed, pin.to_string())),
        _ => None,
    }
}

/// The whole upgrade in order:
/// 1. etcd members, followers first and the raft leader last;
/// 2. PostgreSQL/Patroni on replicas one at a time, then one switchover to an upgraded
///    standby, then the old primary like a replica; where only Patroni changes, Patroni is
///    restarted in maintenance mode instead, the primary in place and last;
/// 3. HAProxy, then Keepalived, on the node holding the VIP last;
/// 4. the agent (the pgha binary, `agent` = its size and modification time here), last.
pub fn plan(
    inventory: &Inventory,
    facts: &BTreeMap<String, NodeFacts>,
    view: &ClusterView,
    agent: Option<(u64, i64)>,
) -> Vec<Step> {
    let cluster = &inventory.cluster;
    let major = cluster.postgres_version;
    let empty = NodeFacts::default();
    let facts_of = |name: &str| facts.get(name).unwrap_or(&empty);
    let mut steps = Vec::new();

    // etcd: the leader last.
    let mut etcd: Vec<Step> = Vec::new();
    for node in inventory.nodes_with(Role::Etcd) {
        let node_facts = facts_of(&node.name);
        let want = Want {
            package: "etcd-server".into(),
            pin: cluster.versions.etcd.as_deref(),
        };
        let change = differs(node_facts, &want);
        if change.is_some() || node_facts.stale.contains("etcd") {
            let installed = node_facts
                .installed
                .get("etcd-server")
                .cloned()
                .unwrap_or_default();
            let (from, to) = change.unwrap_or_else(|| {
                (
                    format!("{installed} (running an older binary)"),
                    installed.clone(),
                )
            });
            let install = cluster
                .versions
                .etcd
                .iter()
                .flat_map(|pin| [format!("etcd-server={pin}"), format!("etcd-client={pin}")])
                .collect();
            etcd.push(Step {
                kind: StepKind::Etcd,
                node: node.name.clone(),
                from,
                to,
                install,
            });
        }
    }
    etcd.sort_by_key(|step| facts_of(&step.node).etcd_leader);
    steps.extend(etcd);

    // PostgreSQL and Patroni: replicas, then a switchover, then the old primary.
    let leader = view.leader().map(|leader| leader.name.clone());
    let mut database: Vec<Step> = Vec::new();
    for node in inventory.nodes_with(Role::Postgres) {
        let node_facts = facts_of(&node.name);
        let want = Want {
            package: format!("postgresql-{major}"),
            pin: cluster.versions.postgresql.as_deref(),
        };
        let postgres = differs(node_facts, &want);
        let postgres_stale = node_facts.stale.contains("postgresql");
        let patroni_from = node_facts
            .patroni_running
            .clone()
            .unwrap_or_else(|| "not running".into());
        let patroni = (patroni_from != cluster.patroni_version)
            .then(|| (patroni_from.clone(), cluster.patroni_version.clone()));
        if postgres.is_none() && !postgres_stale && patroni.is_none() {
            continue;
        }
        let installed = node_facts
            .installed
            .get(&want.package)
            .cloned()
            .unwrap_or_default();
        let (pg_from, pg_to) = postgres.clone().unwrap_or_else(|| {
            (
                if postgres_stale {
                    format!("{installed} (running an older binary)")
                } else {
                    installed.clone()
                },
                installed.clone(),
            )
        });
        let install = if postgres.is_some() {
            cluster
                .versions
                .postgresql
                .iter()
                .flat_map(|pin| {
                    [
                        format!("postgresql-{major}={pin}"),
                        format!("postgresql-client-{major}={pin}"),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        };
        // Patroni alone: restarted in maintenance mode, PostgreSQL untouched.
        if postgres.is_none() && !postgres_stale {
            if let Some((from, to)) = patroni {
                database.push(Step {
                    kind: StepKind::Patroni,
                    node: node.name.clone(),
                    from: format!("Patroni {from}"),
                    to: format!("Patroni {to}"),
                    install: Vec::new(),
                });
                continue;
            }
        }
        database.push(Step {
            kind: StepKind::Database,
            node: node.name.clone(),
            from: format!("PostgreSQL {pg_from}, Patroni {patroni_from}"),
            to: format!(
                "PostgreSQL {pg_to}, Patroni {}",
                patroni
                    .map(|(_, to)| to)
                    .unwrap_or_else(|| patroni_from.clone())
            ),
            install,
        });
    }
    let (primary, replicas): (Vec<Step>, Vec<Step>) = database
        .into_iter()
        .partition(|step| Some(&step.node) == leader.as_ref());
    steps.extend(replicas);
    for step in primary {
        if step.kind == StepKind::Patroni {
            steps.push(step);
            continue;
        }
        steps.push(Step {
            kind: StepKind::Switchover,
            node: step.node.clone(),
            from: step.node.clone(),
            to: "an upgraded streaming standby (a synchronous one with synchronous mode)".into(),
            install: Vec::new(),
        });
        steps.push(step);
    }

    // HAProxy, then Keepalived: the VIP holder last.
    for (kind, role, package, pin, unit) in [
        (
            StepKind::Haproxy,
            Role::Haproxy,
            "haproxy",
            cluster.versions.haproxy.as_deref(),
            "haproxy",
        ),
        (
            StepKind::Keepalived,
            Role::Keepalived,
            "keepalived",
            cluster.versions.keepalived.as_deref(),
            "keepalived",
        ),
    ] {
        if kind == StepKind::Keepalived && cluster.vip.is_none() {
            continue;
        }
        let mut these = Vec::new();
        for node in inventory.nodes_with(role) {
            let node_facts = facts_of(&node.name);
            let want = Want {
                package: package.into(),
                pin,
            };
            let change = differs(node_facts, &want);
            if change.is_none() && !node_facts.stale.contains(unit) {
                continue;
            }
            let installed = node_facts
                .installed
                .get(package)
                .cloned()
                .unwrap_or_default();
            let (from, to) = change.clone().unwrap_or_else(|| {
                (
                    format!("{installed} (running an older binary)"),
                    installed.clone(),
                )
            });
            these.push(Step {
                kind,
                node: node.name.clone(),
                from,
                to,
                install: match (change, pin) {
                    (Some(_), Some(pin)) => vec![format!("{package}={pin}")],
                    _ => Vec::new(),
                },
            });
        }
        these.sort_by_key(|step| facts_of(&step.node).holds_vip);
        steps.extend(these);
    }

    // The agent last: compared like the deploy's copy, by size and modification time.
    if let Some((size, time)) = agent {
        for node in &inventory.nodes {
            let installed = facts_of(&node.name).agent_binary;
            if installed != Some((size, time)) {
                steps.push(Step {
                    kind: StepKind::Agent,
                    node: node.name.clone(),
                    from: installed
                        .map(|(size, time)| format!("pgha of {size} bytes, modified at {time}"))
                        .unwrap_or_else(|| "no pgha".into()),
                    to: format!("pgha of {size} bytes, modified at {time}"),
                    install: Vec::new(),
                });
            }
        }
    }
    steps
}

/// Every pinned version the steps install must be offered by that node's package sources.
pub fn unavailable(steps: &[Step], facts: &BTreeMap<String, NodeFacts>) -> Vec<String> {
    let mut missing = Vec::new();
    for step in steps {
        for spec in &step.install {
            let Some((name, version)) = spec.split_once('=') else {
                continue;
            };
            let offered = facts
                .get(&step.node)
                .and_then(|facts| facts.candidates.get(name));
            if !offered.is_some_and(|versions| versions.contains(version)) {
                let list = offered
                    .map(|versions| versions.iter().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "none".into());
                missing.push(format!(
                    "{}: {name} {version} is not in its package sources (they offer: {list})",
                    step.node
                ));
            }
        }
    }
    missing
}

/// The cluster must be healthy before anything changes: every postgres node a member, one
/// leader, every replica streaming within `max_lag_bytes`.
pub fn cluster_ready(inventory: &Inventory, view: &ClusterView, limits: Limits) -> Precondition {
    let expected: Vec<String> = inventory
        .nodes_with(Role::Postgres)
        .map(|node| node.name.clone())
        .collect();
    let mut problem = view.unhealthy_reason(&expected);
    if problem.is_none() {
        let lagging: Vec<String> = view
            .members
            .iter()
            .filter(|member| !member.is_leader())
            .filter(|member| member.lag.is_none_or(|lag| lag > limits.max_lag_bytes))
            .map(|member| format!("{} ({:?} bytes)", member.name, member.lag))
            .collect();
        if !lagging.is_empty() {
            problem = Some(format!(
                "replication lag above {} bytes: {}",
                limits.max_lag_bytes,
                lagging.join(", ")
            ));
        }
    }
    Precondition {
        name: "patroni.members_streaming".into(),
        pass: problem.is_none(),
        detail: problem.unwrap_or_else(|| {
            format!(
                "one leader, {} replica(s) streaming within {} bytes",
                expected.len().saturating_sub(1),
                limits.max_lag_bytes
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(versions: &str) -> Inventory {
        let text = format!(
            "cluster:\n  name: lab\n  postgres_version: 15\n  vip: 10.231.0.100/24\n  patroni_version: 4.1.5\n  versions: {versions}\nnodes:\n  - {{name: node1, address: 10.231.0.11}}\n  - {{name: node2, address: 10.231.0.12}}\n  - {{name: node3, address: 10.231.0.13}}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.yml");
        std::fs::write(&path, text).unwrap();
        Inventory::load(&path).unwrap()
    }

    /// Each step's kind and node, in order.
    fn order(steps: &[Step]) -> Vec<(StepKind, &str)> {
        steps
            .iter()
            .map(|step| (step.kind, step.node.as_str()))
            .collect()
    }

    fn old_facts(leader_etcd: &str, vip: &str) -> BTreeMap<String, NodeFacts> {
        ["node1", "node2", "node3"]
            .iter()
            .map(|name| {
                let facts = NodeFacts {
                    installed: [
                        ("postgresql-15", "15.18-0+deb12u1"),
                        ("etcd-server", "3.4.23-4+b6"),
                        ("haproxy", "2.6.12-1+deb12u3"),
                        ("keepalived", "1:2.2.7-1+b2"),
                    ]
                    .into_iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                    candidates: [
                        ("postgresql-15", ["15.18-0+deb12u1", "15.20-0+deb12u1"]),
                        (
                            "postgresql-client-15",
                            ["15.18-0+deb12u1", "15.20-0+deb12u1"],
                        ),
                        ("haproxy", ["2.6.12-1+deb12u3", "2.6.12-1+deb12u4"]),
                    ]
                    .into_iter()
                    .map(|(a, b)| (a.to_string(), b.iter().map(|v| v.to_string()).collect()))
                    .collect(),
                    patroni_running: Some("4.0.7".into()),
                    etcd_leader: *name == leader_etcd,
                    holds_vip: *name == vip,
                    ..NodeFacts::default()
                };
                (name.to_string(), facts)
            })
            .collect()
    }

    fn view(leader: &str) -> ClusterView {
        let members: Vec<serde_json::Value> = ["node1", "node2", "node3"]
            .iter()
            .map(|name| {
                if *name == leader {
                    serde_json::json!({"name": name, "role": "leader", "state": "running", "timeline": 1})
                } else {
                    serde_json::json!({"name": name, "role": "replica", "state": "streaming", "timeline": 1, "lag": 0})
                }
            })
            .collect();
        ClusterView::from_json(&serde_json::json!({ "members": members }))
    }

    #[test]
    fn the_plan_orders_replicas_switchover_primary_and_the_vip_holder_last() {
        let inventory = inventory("{postgresql: 15.20-0+deb12u1, haproxy: 2.6.12-1+deb12u4}");
        let steps = plan(
            &inventory,
            &old_facts("node2", "node1"),
            &view("node2"),
            None,
        );
        assert_eq!(
            order(&steps),
            [
                (StepKind::Database, "node1"),
                (StepKind::Database, "node3"),
                (StepKind::Switchover, "node2"),
                (StepKind::Database, "node2"),
                (StepKind::Haproxy, "node2"),
                (StepKind::Haproxy, "node3"),
                (StepKind::Haproxy, "node1"),
            ]
        );
        assert_eq!(
            steps[0].to_string(),
            "PostgreSQL/Patroni on node1: PostgreSQL 15.18-0+deb12u1, Patroni 4.0.7 → PostgreSQL 15.20-0+deb12u1, Patroni 4.1.5"
        );
        assert_eq!(
            steps[0].install,
            [
                "postgresql-15=15.20-0+deb12u1",
                "postgresql-client-15=15.20-0+deb12u1"
            ]
        );
        assert!(unavailable(&steps, &old_facts("node2", "node1")).is_empty());
    }

    #[test]
    fn a_patroni_only_change_restarts_patroni_in_place_without_a_switchover() {
        // PostgreSQL already at its pin everywhere, Patroni 4.0.7 running, 4.1.5 pinned.
        let inventory = inventory("{postgresql: 15.18-0+deb12u1}");
        let facts = old_facts("node2", "node1");
        let steps = plan(&inventory, &facts, &view("node2"), None);
        assert_eq!(
            order(&steps),
            [
                (StepKind::Patroni, "node1"),
                (StepKind::Patroni, "node3"),
                (StepKind::Patroni, "node2"),
            ]
        );
        assert_eq!(
            steps[2].to_string(),
            "Patroni (PostgreSQL keeps running) on node2: Patroni 4.0.7 → Patroni 4.1.5"
        );
        assert!(steps.iter().all(|step| step.install.is_empty()));

        // A node whose PostgreSQL still runs a replaced binary needs the full step.
        let mut stale = facts.clone();
        stale
            .get_mut("node2")
            .unwrap()
            .stale
            .insert("postgresql".into());
        let kinds: Vec<StepKind> = plan(&inventory, &stale, &view("node2"), None)
            .iter()
            .map(|step| step.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                StepKind::Patroni,
                StepKind::Patroni,
                StepKind::Switchover,
                StepKind::Database
            ]
        );
    }

    #[test]
    fn etcd_followers_go_first_and_an_upgraded_cluster_plans_nothing() {
        let inventory = inventory("{etcd: 3.4.30-1}");
        let mut facts = old_facts("node1", "node1");
        for node in facts.values_mut() {
            node.patroni_running = Some("4.1.5".into());
        }
        let steps = plan(&inventory, &facts, &view("node1"), None);
        let nodes: Vec<&str> = steps.iter().map(|step| step.node.as_str()).collect();
        assert_eq!(nodes, ["node2", "node3", "node1"]);
        assert!(steps.iter().all(|step| step.kind == StepKind::Etcd));
        let missing = unavailable(&steps, &facts);
        assert_eq!(missing.len(), 6, "{missing:?}");
        assert!(
            missing[0]
                .contains("etcd-server 3.4.30-1 is not in its package sources (they offer: none)"),
            "{missing:?}"
        );
        for node in facts.values_mut() {
            node.installed
                .insert("etcd-server".into(), "3.4.30-1".into());
        }
        assert!(plan(&inventory, &facts, &view("node1"), None).is_empty());
    }

    #[test]
    fn a_binary_replaced_but_still_running_is_restarted() {
        let inventory = inventory("{}");
        let mut facts = old_facts("node1", "node1");
        for node in facts.values_mut() {
            node.patroni_running = Some("4.1.5".into());
        }
        facts
            .get_mut("node3")
            .unwrap()
            .stale
            .insert("haproxy".into());
        let steps = plan(&inventory, &facts, &view("node1"), None);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].kind, StepKind::Haproxy);
        assert!(steps[0].install.is_empty());
        assert!(steps[0].from.contains("running an older binary"));
    }

    #[test]
    fn the_agent_goes_last_where_its_binary_differs() {
        let inventory = inventory("{haproxy: 2.6.12-1+deb12u4}");
        let mut facts = old_facts("node1", "node2");
        for node in facts.values_mut() {
            node.patroni_running = Some("4.1.5".into());
            node.agent_binary = Some((100, 5));
        }
        facts.get_mut("node3").unwrap().agent_binary = Some((90, 4));
        let steps = plan(&inventory, &facts, &view("node1"), Some((100, 5)));
        let last = steps.last().unwrap();
        assert_eq!((last.kind, last.node.as_str()), (StepKind::Agent, "node3"));
        assert_eq!(
            steps
                .iter()
                .filter(|step| step.kind == StepKind::Agent)
                .count(),
            1
        );
        assert_eq!(steps[0].kind, StepKind::Haproxy);
    }

    #[test]
    fn facts_and_policy_lines_parse() {
        let facts = parse_facts("### installed\nhaproxy\t2.6.12-1+deb12u3\n### candidates\nhaproxy\t2.6.12-1+deb12u4\nhaproxy\t2.6.12-1+deb12u3\n### stale\npostgresql\n### patroni\n{\"state\": \"running\", \"patroni\": {\"version\": \"4.0.7\", \"scope\": \"lab\"}}\n### etcd_leader\ntrue\n### vip\nfalse\n### agent\n62000000 1764115200\n");
        assert_eq!(facts.installed["haproxy"], "2.6.12-1+deb12u3");
        assert_eq!(facts.candidates["haproxy"].len(), 2);
        assert!(facts.stale.contains("postgresql"));
        assert_eq!(facts.patroni_running.as_deref(), Some("4.0.7"));
        assert!(facts.etcd_leader && !facts.holds_vip);
        assert_eq!(facts.agent_binary, Some((62000000, 1764115200)));
        assert_eq!(
            policy_version(" *** 2.6.12-1+deb12u4 500"),
            Some("2.6.12-1+deb12u4")
        );
        assert_eq!(
            policy_version("     1:2.2.7-1+b2 500"),
            Some("1:2.2.7-1+b2")
        );
        assert_eq!(
            policy_version("        500 http://deb.debian.org/debian bookworm/main amd64 Packages"),
            None
        );
        assert_eq!(policy_version("        100 /var/lib/dpkg/status"), None);
        assert_eq!(policy_version("  Installed: 2.6.12"), None);
    }

    #[test]
    fn a_lagging_or_missing_replica_fails_the_precondition() {
        let inventory = inventory("{}");
        let limits = Limits {
            max_lag_bytes: 1000,
            max_transaction_seconds: 60,
        };
        assert!(cluster_ready(&inventory, &view("node1"), limits).pass);
        let mut lagging = view("node1");
        lagging.members[2].lag = Some(5000);
        let check = cluster_ready(&inventory, &lagging, limits);
        assert!(!check.pass && check.detail.contains("node3"), "{check:?}");
        let mut missing = view("node1");
        missing.members.pop();
        assert!(!cluster_ready(&inventory, &missing, limits).pass);
    }
}
