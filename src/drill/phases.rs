//! Where a failover's seconds go: the phases of one repetition, read from what every node saw
//! (`pgha agent timeline` lines: the leader key, Patroni's role, HAProxy's write routing, the
//! VIP) on the probes' clock. Pure; the drill gathers the lines.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::agent::timeline::Line;

/// One node's sample, placed on the probes' clock (ms since the probes started; negative:
/// before them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub ms: i64,
    #[serde(flatten)]
    pub line: Line,
}

/// Times from the fault, in ms; `None`: not seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Phases {
    /// The leader key no longer names the old primary (deleted, expired or handed over), as
    /// the first etcd member that answered it said.
    pub leader_key_changed_ms: Option<u64>,
    /// The node that became primary.
    pub new_leader: Option<String>,
    /// Its Patroni says `primary`, `running` (PostgreSQL out of recovery).
    pub new_leader_running_ms: Option<u64>,
    /// Every HAProxy that outlives the fault routes writes to the new leader (and only to it).
    pub routed_everywhere_ms: Option<u64>,
    /// The VIP moved from `vip_from` to `vip_to` (the first other node to take it).
    pub vip_from: Option<String>,
    pub vip_to: Option<String>,
    /// A node holds the VIP and its HAProxy routes to the new leader alone: clients through
    /// the VIP reach the primary.
    pub vip_routed_ms: Option<u64>,
    /// A synchronous standby streams from the new leader (synchronous mode).
    pub sync_standby_ms: Option<u64>,
    /// The first acknowledged write after the outage.
    pub first_write_ms: Option<u64>,
}

impl Phases {
    /// The phases as `(label, ms)` in the order they happen, for tables and the timeline.
    pub fn marks(&self) -> Vec<(&'static str, Option<u64>)> {
        vec![
            ("leader key changed", self.leader_key_changed_ms),
            ("new leader running", self.new_leader_running_ms),
            ("every HAProxy routes", self.routed_everywhere_ms),
            ("VIP on a routing node", self.vip_routed_ms),
            ("sync standby", self.sync_standby_ms),
            ("first write", self.first_write_ms),
        ]
    }
}

/// Parse the lines of every node (bad lines, such as one cut short by a power cut, are
/// skipped) and place them on the probes' clock (`probes_epoch_ms`: the wall clock at the
/// probes' start).
pub fn place(text: &str, probes_epoch_ms: u64) -> Vec<Seen> {
    let mut seen: Vec<Seen> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Line>(line).ok())
        .map(|line| Seen {
            ms: line.at_ms as i64 - probes_epoch_ms as i64,
            line,
        })
        .collect();
    seen.sort_by_key(|seen| seen.ms);
    seen
}

/// The phases after a fault at `fault_ms` on a cluster led by `old_primary`. `faulted`: the
/// node the fault took away (its HAProxy does not count among those that must route).
/// `first_write_ms`: the end of the outage, from the probe.
pub fn phases(
    seen: &[Seen],
    fault_ms: u64,
    old_primary: &str,
    faulted: Option<&str>,
    first_write_ms: Option<u64>,
) -> Phases {
    let fault = fault_ms as i64;
    let since = |ms: i64| Some(ms.saturating_sub(fault).max(0) as u64);
    let after: Vec<&Seen> = seen.iter().filter(|seen| seen.ms >= fault).collect();
    let mut phases = Phases {
        first_write_ms: first_write_ms.map(|ms| ms.saturating_sub(fault_ms)),
        ..Phases::default()
    };
    phases.leader_key_changed_ms = after
        .iter()
        .find(|seen| {
            seen.line
                .sample
                .leader_key
                .as_deref()
                .is_some_and(|value| value != old_primary)
        })
        .and_then(|seen| since(seen.ms));
    let running = after.iter().find(|seen| {
        seen.line.node != old_primary
            && matches!(
                seen.line.sample.patroni_role.as_deref(),
                Some("primary" | "master")
            )
            && seen.line.sample.patroni_state.as_deref() == Some("running")
    });
    let Some(running) = running else {
        return phases;
    };
    let new_leader = running.line.node.clone();
    phases.new_leader_running_ms = since(running.ms);
    phases.sync_standby_ms = after
        .iter()
        .find(|seen| seen.line.node == new_leader && !seen.line.sample.sync_attached.is_empty())
        .and_then(|seen| since(seen.ms));

    // Per HAProxy node: when it last began routing to the new leader alone (and still does
    // at its last sample).
    let mut routing: BTreeMap<&str, Option<i64>> = BTreeMap::new();
    let mut last_routes: BTreeMap<&str, Option<&Vec<String>>> = BTreeMap::new();
    for seen in seen {
        let Some(routes) = seen.line.sample.routes_writes_to.as_ref() else {
            continue;
        };
        let node = seen.line.node.as_str();
        let alone = routes.len() == 1 && routes[0] == new_leader;
        let was = last_routes.get(node).copied().flatten();
        let was_alone = was.is_some_and(|was| was.len() == 1 && was[0] == new_leader);
        if alone && !was_alone {
            routing.insert(node, Some(seen.ms.max(fault)));
        } else if !alone {
            routing.insert(node, None);
        }
        last_routes.insert(node, Some(routes));
    }
    let counted: Vec<Option<i64>> = routing
        .iter()
        .filter(|(node, _)| Some(**node) != faulted)
        .map(|(_, since)| *since)
        .collect();
    if !counted.is_empty() && counted.iter().all(Option::is_some) {
        phases.routed_everywhere_ms = counted.iter().flatten().max().and_then(|ms| since(*ms));
    }

    // The VIP: its holder at the fault, the first node after it to hold it, and the first
    // moment a node holds it while its HAProxy routes to the new leader alone (clients
    // through the VIP reach a primary). The faulted node's last samples do not count: it
    // stopped reporting, not holding.
    let mut vip: BTreeMap<&str, bool> = BTreeMap::new();
    let mut alone: BTreeMap<&str, bool> = BTreeMap::new();
    let mut holder_at_fault = None;
    let mut fault_passed = false;
    for seen in seen {
        let node = seen.line.node.as_str();
        if seen.ms >= fault && !fault_passed {
            fault_passed = true;
            holder_at_fault = vip
                .iter()
                .find(|(_, held)| **held)
                .map(|(node, _)| node.to_string());
        }
        if let Some(held) = seen.line.sample.vip_held {
            vip.insert(node, held);
        }
        if let Some(routes) = &seen.line.sample.routes_writes_to {
            alone.insert(node, routes.len() == 1 && routes[0] == new_leader);
        }
        if seen.ms < fault || (fault_passed && Some(node) == faulted) {
            continue;
        }
        if seen.line.sample.vip_held == Some(true)
            && phases.vip_to.is_none()
            && holder_at_fault.as_deref() != Some(node)
        {
            phases.vip_to = Some(node.to_string());
        }
        let routed = vip.iter().any(|(holder, held)| {
            *held && Some(*holder) != faulted && alone.get(holder).copied().unwrap_or(false)
        });
        if routed && phases.vip_routed_ms.is_none() && phases.new_leader_running_ms.is_some() {
            phases.vip_routed_ms = since(seen.ms);
        }
    }
    if phases.vip_to.is_some() {
        phases.vip_from = holder_at_fault;
    }
    phases.new_leader = Some(new_leader);
    phases
}

/// Who held the leader key over time, as the first etcd member to answer said: `(ms, name)`
/// at each change (`""`: no leader key).
pub fn leaders(seen: &[Seen]) -> Vec<(i64, String)> {
    let mut changes: Vec<(i64, String)> = Vec::new();
    for seen in seen {
        let Some(value) = seen.line.sample.leader_key.as_ref() else {
            continue;
        };
        if changes.last().map(|(_, last)| last) != Some(value) {
            changes.push((seen.ms, value.clone()));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::timeline::Sample;

    fn at(ms: i64, node: &str, sample: Sample) -> Seen {
        Seen {
            ms,
            line: Line {
                at_ms: 0,
                node: node.into(),
                sample,
            },
        }
    }

    fn routes(to: &str) -> Option<Vec<String>> {
        Some(if to.is_empty() {
            vec![]
        } else {
            vec![to.to_string()]
        })
    }

    fn sample(key: &str, role: &str, routes_to: &str, vip: bool) -> Sample {
        Sample {
            leader_key: Some(key.into()),
            patroni_role: Some(role.into()),
            patroni_state: Some("running".into()),
            sync_attached: vec![],
            routes_writes_to: routes(routes_to),
            vip_held: Some(vip),
        }
    }

    /// node1 leads and holds the VIP; its power is cut at 1000 ms.
    fn power_cut() -> Vec<Seen> {
        vec![
            at(0, "node1", sample("node1", "primary", "node1", true)),
            at(0, "node2", sample("node1", "replica", "node1", false)),
            at(0, "node3", sample("node1", "replica", "node1", false)),
            // The key expires.
            at(28_000, "node2", sample("", "replica", "node1", false)),
            at(28_050, "node3", sample("", "replica", "", false)),
            at(28_100, "node2", sample("", "replica", "", true)),
            // node2 wins, promotes, routes; node3 follows later.
            at(29_000, "node2", sample("node2", "primary", "", true)),
            at(29_500, "node2", sample("node2", "primary", "node2", true)),
            at(30_200, "node3", sample("node2", "replica", "node2", false)),
            at(
                31_000,
                "node2",
                Sample {
                    sync_attached: vec!["node3".into()],
                    ..sample("node2", "primary", "node2", true)
                },
            ),
        ]
    }

    #[test]
    fn a_power_cut_is_split_into_its_phases() {
        let phases = phases(&power_cut(), 1000, "node1", Some("node1"), Some(32_500));
        assert_eq!(phases.leader_key_changed_ms, Some(27_000));
        assert_eq!(phases.new_leader.as_deref(), Some("node2"));
        assert_eq!(phases.new_leader_running_ms, Some(28_000));
        // node1's HAProxy died with it and does not count; node3 routes last.
        assert_eq!(phases.routed_everywhere_ms, Some(29_200));
        assert_eq!(phases.vip_from.as_deref(), Some("node1"));
        assert_eq!(phases.vip_to.as_deref(), Some("node2"));
        // The VIP came first (28.1 s), node2's routing after it (29.5 s).
        assert_eq!(phases.vip_routed_ms, Some(28_500));
        assert_eq!(phases.sync_standby_ms, Some(30_000));
        assert_eq!(phases.first_write_ms, Some(31_500));
        assert_eq!(
            leaders(&power_cut()),
            [
                (0, "node1".to_string()),
                (28_000, String::new()),
                (29_000, "node2".to_string())
            ]
        );
    }

    #[test]
    fn a_vip_dropped_everywhere_counts_from_when_a_routing_node_takes_it_again() {
        let mut seen = power_cut();
        // node2 took the VIP at 28.1 s; here it gives it away at 29.2 s (its check failed) and
        // node3 takes it at 33 s, routing since 30.2 s.
        seen.push(at(29_200, "node2", sample("node2", "primary", "", false)));
        seen.retain(|seen| !(seen.line.node == "node2" && seen.ms >= 29_500));
        seen.push(at(
            29_500,
            "node2",
            sample("node2", "primary", "node2", false),
        ));
        seen.push(at(
            33_000,
            "node3",
            sample("node2", "replica", "node2", true),
        ));
        seen.sort_by_key(|seen| seen.ms);
        let phases = phases(&seen, 1000, "node1", Some("node1"), None);
        assert_eq!(phases.vip_to.as_deref(), Some("node2"));
        assert_eq!(phases.vip_routed_ms, Some(32_000));
    }

    #[test]
    fn a_haproxy_that_never_routes_to_the_new_leader_leaves_the_phase_unseen() {
        let mut seen = power_cut();
        seen.retain(|seen| !(seen.line.node == "node3" && seen.ms == 30_200));
        let phases = phases(&seen, 1000, "node1", Some("node1"), None);
        assert_eq!(phases.routed_everywhere_ms, None);
        assert_eq!(phases.new_leader_running_ms, Some(28_000));
        // Without the faulted node left out, node1's last routing (to itself) counts against.
        let all = super::phases(&power_cut(), 1000, "node1", None, None);
        assert_eq!(all.routed_everywhere_ms, None);
    }

    #[test]
    fn no_new_leader_means_no_later_phase() {
        let seen = vec![at(0, "node1", sample("node1", "primary", "node1", true))];
        let none = phases(&seen, 1000, "node1", Some("node1"), Some(1500));
        assert_eq!(none.new_leader, None);
        assert_eq!(none.routed_everywhere_ms, None);
        assert_eq!(none.first_write_ms, Some(500));
    }

    #[test]
    fn lines_are_placed_on_the_probes_clock_and_bad_ones_skipped() {
        let text = "{\"at_ms\":10500,\"node\":\"node1\",\"leader_key\":\"node1\",\"patroni_role\":null,\"patroni_state\":null,\"routes_writes_to\":null,\"vip_held\":null}\n{\"at_ms\":10";
        let seen = place(text, 10_000);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].ms, 500);
    }
}
