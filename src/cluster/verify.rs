//! `pgha verify`: end-to-end assertions about a live cluster, each with its evidence. The
//! assessment of node observations is a pure function ([`assess`]); the routing checks run real
//! SQL through every HAProxy and the VIP.

use serde::Serialize;
use serde_json::Value;

use super::observe::{members, NodeView};
use crate::inventory::{Inventory, Role, SyncMode};
use crate::patroni::{Role as PatroniRole, State};

/// One assertion and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    pub evidence: String,
}

impl Check {
    pub fn new(name: impl Into<String>, pass: bool, evidence: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            pass,
            evidence: evidence.into(),
        }
    }
}

/// The name of the node holding the Patroni leader role, as `/cluster` reports it.
pub fn leader_name(views: &[NodeView]) -> Option<String> {
    members(views)
        .into_iter()
        .find(|member| member.is_leader())
        .map(|member| member.name)
}

/// Everything that can be judged from node observations alone.
pub fn assess(inventory: &Inventory, views: &[NodeView]) -> Vec<Check> {
    let mut checks = Vec::new();
    for view in views {
        if let Some(reason) = &view.unreachable {
            checks.push(Check::new(
                format!("ssh.{}", view.name),
                false,
                format!("unreachable: {reason}"),
            ));
        }
    }
    let reachable: Vec<&NodeView> = views
        .iter()
        .filter(|view| view.unreachable.is_none())
        .collect();
    let is = |role: Role, view: &NodeView| {
        inventory
            .node(&view.name)
            .is_some_and(|node| node.has(role))
    };

    // etcd
    let etcd_views: Vec<&NodeView> = reachable
        .iter()
        .copied()
        .filter(|view| is(Role::Etcd, view))
        .collect();
    let unhealthy: Vec<&str> = etcd_views
        .iter()
        .filter(|view| view.etcd_health != Some(true))
        .map(|view| view.name.as_str())
        .collect();
    let etcd_count = inventory.nodes_with(Role::Etcd).count();
    checks.push(Check::new(
        "etcd.members_healthy",
        unhealthy.is_empty() && etcd_views.len() == etcd_count,
        if unhealthy.is_empty() {
            format!(
                "{} of {etcd_count} members answer healthy",
                etcd_views.len()
            )
        } else {
            format!("unhealthy: {}", unhealthy.join(", "))
        },
    ));
    let leaders: std::collections::BTreeSet<u64> = etcd_views
        .iter()
        .filter_map(|view| view.etcd_status.as_ref())
        .filter_map(|status| status[0]["Status"]["leader"].as_u64())
        .filter(|leader| *leader != 0)
        .collect();
    checks.push(Check::new(
        "etcd.one_leader",
        leaders.len() == 1,
        format!("leader ids seen by members: {leaders:?}"),
    ));
    let expected: std::collections::BTreeSet<String> = inventory
        .nodes_with(Role::Etcd)
        .map(|node| node.name.clone())
        .collect();
    let listed: Option<std::collections::BTreeSet<String>> = etcd_views
        .iter()
        .find_map(|view| view.etcd_members.as_ref())
        .map(|members| {
            members["members"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|member| {
                            let name = member["name"].as_str()?;
                            // A learner (a member still joining) is not a voter yet.
                            Some(if member["isLearner"] == true {
                                format!("{name} (learner)")
                            } else {
                                name.to_string()
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()
        });
    checks.push(Check::new(
        "etcd.member_list",
        listed.as_ref() == Some(&expected),
        format!(
            "voting members: {:?}, inventory: {expected:?}",
            listed.unwrap_or_default()
        ),
    ));

    // Patroni
    let members = members(views);
    let primaries: Vec<&str> = members
        .iter()
        .filter(|member| member.is_leader() && member.state == State::Running)
        .map(|member| member.name.as_str())
        .collect();
    checks.push(Check::new(
        "patroni.one_primary",
        primaries.len() == 1,
        format!("running leaders: {primaries:?}"),
    ));
    let primary = primaries.first().map(|name| name.to_string());
    let postgres_names: Vec<String> = inventory
        .nodes_with(Role::Postgres)
        .map(|node| node.name.clone())
        .collect();
    let not_streaming: Vec<String> = postgres_names
        .iter()
        .filter(|name| Some(*name) != primary.as_ref())
        .filter(|name| {
            !members
                .iter()
                .any(|member| &member.name == *name && member.state == State::Streaming)
        })
        .cloned()
        .collect();
    checks.push(Check::new(
        "patroni.replicas_streaming",
        not_streaming.is_empty() && !members.is_empty(),
        if not_streaming.is_empty() {
            format!(
                "{} replica(s) streaming",
                postgres_names.len().saturating_sub(1)
            )
        } else {
            format!("not streaming: {}", not_streaming.join(", "))
        },
    ));
    // Patroni's stored configuration is not what runs: a setting that needs a restart stays at
    // its old value until then, and PostgreSQL says so (`pg_settings.pending_restart`).
    let pending: Vec<String> = members
        .iter()
        .filter(|member| member.pending_restart)
        .map(|member| member.name.clone())
        .collect();
    checks.push(Check::new(
        "patroni.no_pending_restart",
        pending.is_empty() && !members.is_empty(),
        if pending.is_empty() {
            "every member runs its configured settings".to_string()
        } else {
            format!(
                "pending restart (a changed setting not in effect yet): {}; hint: `pgha deploy` rolls it out",
                pending.join(", ")
            )
        },
    ));
    let threshold = inventory.cluster.patroni.maximum_lag_on_failover;
    let lagging: Vec<String> = members
        .iter()
        .filter(|member| !member.is_leader())
        .filter(|member| member.lag.is_none_or(|lag| lag > threshold))
        .map(|member| {
            format!(
                "{} ({})",
                member.name,
                member
                    .lag
                    .map_or("unknown".to_string(), |lag| format!("{lag} bytes"))
            )
        })
        .collect();
    checks.push(Check::new(
        "patroni.replication_lag",
        lagging.is_empty() && !members.is_empty(),
        if lagging.is_empty() {
            format!("every replica within {threshold} bytes")
        } else {
            format!("lagging: {}", lagging.join(", "))
        },
    ));
    let timelines: std::collections::BTreeSet<u64> = members
        .iter()
        .filter_map(|member| member.timeline)
        .collect();
    checks.push(Check::new(
        "patroni.same_timeline",
        timelines.len() == 1,
        format!("timelines: {timelines:?}"),
    ));
    let answering_primary: Vec<&str> = reachable
        .iter()
        .filter(|view| view.primary_status == Some(200))
        .map(|view| view.name.as_str())
        .collect();
    let dcs_leader = reachable.iter().find_map(|view| view.dcs_leader.clone());
    checks.push(Check::new(
        "patroni.leader_key",
        answering_primary.len() == 1 && dcs_leader.as_deref() == answering_primary.first().copied(),
        format!(
            "etcd `leader` = {:?}; `/primary` 200 on {answering_primary:?}",
            dcs_leader.unwrap_or_default()
        ),
    ));
    let system_identifier = primary
        .as_ref()
        .and_then(|name| reachable.iter().find(|view| &view.name == name))
        .and_then(|view| view.patroni.as_ref())
        .and_then(|patroni| {
            patroni["database_system_identifier"]
                .as_str()
                .map(str::to_string)
        });
    let initialize = reachable
        .iter()
        .find_map(|view| view.dcs_initialize.clone());
    checks.push(Check::new(
        "patroni.initialize_key",
        initialize.is_some() && initialize == system_identifier,
        format!(
            "etcd `initialize` = {:?}, primary's system identifier = {:?}",
            initialize.unwrap_or_default(),
            system_identifier.unwrap_or_default()
        ),
    ));
    let config = reachable
        .iter()
        .find_map(|view| view.config.clone())
        .unwrap_or(Value::Null);
    let timing = &inventory.cluster.patroni;
    let wanted = [
        ("ttl", Value::from(timing.ttl)),
        ("loop_wait", Value::from(timing.loop_wait)),
        ("retry_timeout", Value::from(timing.retry_timeout)),
        (
            "maximum_lag_on_failover",
            Value::from(timing.maximum_lag_on_failover),
        ),
        (
            "primary_start_timeout",
            Value::from(timing.primary_start_timeout),
        ),
        (
            "synchronous_mode",
            Value::from(inventory.cluster.synchronous_mode != SyncMode::Off),
        ),
        (
            "synchronous_mode_strict",
            Value::from(inventory.cluster.synchronous_mode == SyncMode::Strict),
        ),
    ];
    let differing: Vec<String> = wanted
        .iter()
        .filter(|(key, value)| {
            config[*key] != *value && !(config[*key].is_null() && value.as_bool() == Some(false))
        })
        .map(|(key, value)| format!("{key}: {} (inventory {value})", config[*key]))
        .collect();
    checks.push(Check::new(
        "patroni.dynamic_config",
        differing.is_empty() && !config.is_null(),
        if differing.is_empty() {
            "ttl, loop_wait, retry_timeout, lag limit, start timeout and sync mode match"
                .to_string()
        } else {
            differing.join("; ")
        },
    ));
    if inventory.cluster.synchronous_mode != SyncMode::Off {
        let sync: Vec<&str> = members
            .iter()
            .filter(|member| member.role == PatroniRole::SyncStandby)
            .map(|member| member.name.as_str())
            .collect();
        checks.push(Check::new(
            "patroni.sync_standbys",
            !sync.is_empty(),
            format!("synchronous standbys: {sync:?} (expected 1)"),
        ));
    }

    // VIP
    if let Some(vip) = inventory.cluster.vip {
        let holders: Vec<&str> = reachable
            .iter()
            .filter(|view| view.holds_vip == Some(true))
            .map(|view| view.name.as_str())
            .collect();
        checks.push(Check::new(
            "vip.one_holder",
            holders.len() == 1,
            format!("{} held by {holders:?}", vip.address),
        ));
    }

    // HAProxy's own view of the write backend.
    for view in reachable.iter().filter(|view| is(Role::Haproxy, view)) {
        let up: Vec<&str> = view
            .haproxy
            .get("pgha_write")
            .map(|servers| {
                servers
                    .iter()
                    .filter(|(_, status)| status.starts_with("UP"))
                    .map(|(name, _)| name.as_str())
                    .collect()
            })
            .unwrap_or_default();
        checks.push(Check::new(
            format!("haproxy.{}.write_backend", view.name),
            up.len() == 1 && primary.as_deref() == up.first().copied(),
            format!(
                "servers UP in `pgha_write`: {up:?}; primary: {:?}",
                primary.clone().unwrap_or_default()
            ),
        ));
    }

    // What PostgreSQL runs, not only what Patroni stores: a setting that needs a restart
    // keeps its old value until then.
    for view in reachable.iter().filter(|view| is(Role::Postgres, view)) {
        let (pass, detail) = match &view.not_in_effect {
            None => (false, "PostgreSQL could not be asked (`pg_file_settings`)".to_string()),
            Some(pending) if pending.is_empty() => {
                (true, "PostgreSQL runs every configured setting".to_string())
            }
            Some(pending) => (
                false,
                format!(
                    "configured but not in effect (running → configured): {}; hint: `pgha deploy` restarts members in a safe order",
                    pending.join(", ")
                ),
            ),
        };
        checks.push(Check::new(
            format!("postgresql.{}.settings_in_effect", view.name),
            pass,
            detail,
        ));
    }

    // Security
    for view in reachable.iter().filter(|view| is(Role::Postgres, view)) {
        let weak = weak_hba_rules(&view.hba);
        checks.push(Check::new(
            format!("security.{}.pg_hba", view.name),
            weak.is_empty() && !view.hba.is_empty(),
            if weak.is_empty() {
                format!(
                    "{} rules: scram-sha-256/peer only, over the network TLS only (hostssl; hostnossl rejected)",
                    view.hba.len()
                )
            } else {
                format!("weak rules: {weak:?}")
            },
        ));
        let open: Vec<String> = view
            .secret_file_modes
            .iter()
            .filter(|(_, mode)| !secret_file_is_private(mode))
            .map(|(file, mode)| format!("{file} {mode}"))
            .collect();
        checks.push(Check::new(
            format!("security.{}.secret_files", view.name),
            open.is_empty() && !view.secret_file_modes.is_empty(),
            if open.is_empty() {
                format!("{:?}", view.secret_file_modes)
            } else {
                format!("readable by others: {open:?}")
            },
        ));
        checks.push(Check::new(
            format!("security.{}.rest_auth", view.name),
            view.unauthenticated_patch == Some(401),
            format!(
                "unauthenticated PATCH /config (no body, changes nothing) answered {:?}",
                view.unauthenticated_patch
            ),
        ));
    }
    checks
}

/// The pg_hba rules (`type database user address netmask method`, as `pg_hba_file_rules`
/// lists them) that let a client in too easily: a weak method, every address, or a network
/// rule that does not require TLS (plain `host`, except on loopback).
pub fn weak_hba_rules(rules: &[String]) -> Vec<&String> {
    rules
        .iter()
        .filter(|rule| {
            let fields: Vec<&str> = rule.split_whitespace().collect();
            let (Some(kind), Some(method)) = (fields.first(), fields.last()) else {
                return true;
            };
            if *method == "reject" {
                return false;
            }
            let everyone = rule.contains("0.0.0.0 0.0.0.0") || rule.contains(":: ::");
            let loopback = fields
                .get(3)
                .is_some_and(|address| *address == "127.0.0.1" || *address == "::1");
            matches!(*method, "md5" | "password" | "trust")
                || everyone
                || (*kind == "host" && !loopback)
        })
        .collect()
}

/// A file holding secrets (`mode:owner:group`, octal mode) is private when no one but its
/// owner can read it, or when root owns it and only the `postgres` group may also read it (the
/// Patroni configuration: Patroni reads it, only root may change it).
fn secret_file_is_private(value: &str) -> bool {
    let mut parts = value.split(':');
    let (Some(mode), Some(owner), Some(group)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(mode) = u32::from_str_radix(mode, 8) else {
        return false;
    };
    mode & 0o007 == 0
        && (mode & 0o070 == 0 || (mode & 0o070 == 0o040 && owner == "root" && group == "postgres"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_hba_rules_without_tls_or_with_weak_methods_are_named() {
        let rules: Vec<String> = [
            "local {all} {all}   peer",
            "host {all} {all} 127.0.0.1 255.255.255.255 scram-sha-256",
            "hostnossl {all} {all} 0.0.0.0 0.0.0.0 reject",
            "hostssl {all} {all} 10.0.0.1 255.255.255.255 scram-sha-256",
            "host {all} {all} 10.0.0.0 255.255.255.0 scram-sha-256",
            "hostssl {all} {all} 10.0.0.0 255.255.255.0 md5",
            "hostssl {all} {all} 0.0.0.0 0.0.0.0 scram-sha-256",
        ]
        .iter()
        .map(|rule| rule.to_string())
        .collect();
        let weak: Vec<&str> = weak_hba_rules(&rules)
            .iter()
            .map(|rule| rule.as_str())
            .collect();
        assert_eq!(
            weak,
            [rules[4].as_str(), rules[5].as_str(), rules[6].as_str()]
        );
    }
    use serde_json::json;

    fn inventory() -> Inventory {
        Inventory::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/lab.yml"),
        )
        .unwrap()
    }

    fn healthy() -> Vec<NodeView> {
        let cluster = json!({"members": [
            {"name": "node1", "role": "leader", "state": "running", "host": "10.231.0.11", "timeline": 1},
            {"name": "node2", "role": "sync_standby", "state": "streaming", "host": "10.231.0.12", "timeline": 1, "lag": 0},
            {"name": "node3", "role": "replica", "state": "streaming", "host": "10.231.0.13", "timeline": 1, "lag": 0}
        ]});
        let config = json!({"ttl": 30, "loop_wait": 5, "retry_timeout": 10, "maximum_lag_on_failover": 1048576, "primary_start_timeout": 25, "synchronous_mode": true, "synchronous_mode_strict": false});
        ["node1", "node2", "node3"]
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let mut view = NodeView {
                    name: name.to_string(),
                    ..NodeView::default()
                };
                view.cluster = Some(cluster.clone());
                view.config = Some(config.clone());
                view.primary_status = Some(if index == 0 { 200 } else { 503 });
                view.patroni = Some(json!({"database_system_identifier": "7300"}));
                view.etcd_health = Some(true);
                view.etcd_status = Some(json!([{"Status": {"leader": 42}}]));
                view.etcd_members = Some(
                    json!({"members": [{"name": "node1"}, {"name": "node2"}, {"name": "node3"}]}),
                );
                view.dcs_leader = Some("node1".into());
                view.dcs_initialize = Some("7300".into());
                view.holds_vip = Some(index == 1);
                view.haproxy.insert(
                    "pgha_write".into(),
                    [
                        ("node1".to_string(), "UP".to_string()),
                        ("node2".into(), "DOWN".into()),
                        ("node3".into(), "DOWN".into()),
                    ]
                    .into_iter()
                    .collect(),
                );
                view.hba = vec!["hostssl all all 10.231.0.11 255.255.255.255 scram-sha-256".into()];
                view.secret_file_modes.insert(
                    "/etc/patroni/patroni.yml".into(),
                    "640:root:postgres".into(),
                );
                view.unauthenticated_patch = Some(401);
                view.not_in_effect = Some(Vec::new());
                view
            })
            .collect()
    }

    fn failing(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|check| !check.pass)
            .map(|check| format!("{}: {}", check.name, check.evidence))
            .collect()
    }

    #[test]
    fn a_healthy_cluster_passes_everything() {
        let checks = assess(&inventory(), &healthy());
        assert!(failing(&checks).is_empty(), "{:#?}", failing(&checks));
        assert!(checks.len() > 20);
    }

    #[test]
    fn a_setting_not_in_effect_or_unasked_fails_on_that_node() {
        let mut views = healthy();
        views[1].not_in_effect = Some(vec!["max_connections 120 → 100".into()]);
        views[2].not_in_effect = None;
        let failed = failing(&assess(&inventory(), &views)).join("\n");
        assert!(
            failed.contains("postgresql.node2.settings_in_effect: configured but not in effect (running → configured): max_connections 120 → 100"),
            "{failed}"
        );
        assert!(
            failed.contains("postgresql.node3.settings_in_effect"),
            "{failed}"
        );
        assert!(!failed.contains("postgresql.node1."), "{failed}");
    }

    #[test]
    fn each_broken_part_is_named() {
        let inventory = inventory();
        let mut views = healthy();
        views[2].cluster = None;
        views[1].cluster = Some(json!({"members": [
            {"name": "node1", "role": "leader", "state": "running", "timeline": 2},
            {"name": "node2", "role": "replica", "state": "stopped", "timeline": 1},
            {"name": "node3", "role": "replica", "state": "streaming", "timeline": 2, "lag": 99999999, "pending_restart": true}
        ]}));
        views[0].cluster = None;
        views[0].holds_vip = Some(true);
        views[2].haproxy.clear();
        views[1].hba.push("host all all 0.0.0.0 0.0.0.0 md5".into());
        views[0].secret_file_modes.insert(
            "/etc/patroni/patroni.yml".into(),
            "640:postgres:postgres".into(),
        );
        views[2].dcs_leader = Some("node2".into());
        views[0].dcs_leader = Some("node2".into());
        views[1].dcs_leader = Some("node2".into());
        let failed = failing(&assess(&inventory, &views)).join("\n");
        for name in [
            "patroni.replicas_streaming",
            "patroni.no_pending_restart",
            "patroni.replication_lag",
            "patroni.same_timeline",
            "patroni.sync_standbys",
            "vip.one_holder",
            "haproxy.node3.write_backend",
            "security.node2.pg_hba",
            "security.node1.secret_files",
            "patroni.leader_key",
        ] {
            assert!(failed.contains(name), "{name} should fail:\n{failed}");
        }
        assert!(!failed.contains("etcd."), "{failed}");
    }

    #[test]
    fn unreachable_nodes_fail_loudly() {
        let mut views = healthy();
        views[1] = NodeView {
            name: "node2".into(),
            unreachable: Some("connection refused".into()),
            ..NodeView::default()
        };
        let failed = failing(&assess(&inventory(), &views)).join("\n");
        assert!(
            failed.contains("ssh.node2: unreachable") && failed.contains("etcd.members_healthy"),
            "{failed}"
        );
    }
}
