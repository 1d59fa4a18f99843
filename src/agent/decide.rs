//! The agent's pure decision: from a cluster view (etcd) and a local view (HAProxy, Patroni,
//! keepalived, the VIP) to the actions to take and one human sentence. No I/O here: the
//! sentence is the log line, the `/status` field and the oracle of the unit tests.
//!
//! Safety rules it encodes:
//! - nothing is done before a full view is known (the first etcd read and one HAProxy read);
//! - writes are routed only to the etcd leader, and only once its `/primary` answers 200 with
//!   `role: primary` (out of recovery: Patroni answers 200 as soon as it holds the lock);
//! - every other write server is *drained* (and forced down): its health checks keep running but
//!   cannot send it new writes, so an old primary that comes back believing it still leads (a
//!   thawed or reconnected node whose `/primary` answers 200 for a moment) gets no write;
//! - the leader is made `ready` and forced up; the agent never sets `maint`, and on a graceful
//!   stop it makes every write server `ready` again, so a stopped agent leaves routing to the
//!   health checks and cannot keep writes away from a healthy primary;
//! - a hand-over announced by `pgha agent hold-writes LEADER` (a planned switchover) drains the
//!   leader too, so that no new write reaches a primary about to stop; HAProxy holds new write
//!   connections until the next leader is ready (its `pgha_hold` Lua action). The
//!   announcement expires on its own (60 s): from then on the leader is made ready again in
//!   the next cycle in which the agent acts (etcd reachable, the leader's `/primary` confirmed);
//! - no leader, or etcd unreachable: HAProxy is left as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

/// A Patroni member as its `members/<name>` key describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Member {
    /// `primary`, `replica`, `standby_leader`, ... (Patroni 3 says `master`).
    pub role: String,
    /// `running`, `streaming`, `starting`, `stopped`, ...
    pub state: String,
    pub api_url: String,
    /// Bytes behind the leader, when both positions are known.
    pub lag_bytes: Option<u64>,
    /// The member asked not to take read load (`noloadbalance` tag).
    pub noloadbalance: bool,
}

impl Member {
    /// A streaming replica that may take read load.
    pub fn serves_reads(&self) -> bool {
        matches!(self.role.as_str(), "replica" | "sync_standby")
            && matches!(self.state.as_str(), "running" | "streaming")
            && !self.noloadbalance
    }
}

/// What etcd says about the Patroni cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// The first full read of the scope succeeded (nothing is decided before).
    pub synced: bool,
    /// The last etcd call (watch, read) succeeded.
    pub etcd_reachable: bool,
    /// The `leader` key.
    pub leader: Option<String>,
    /// How long the `leader` key has had its current value, as seen by this agent.
    #[serde(skip)]
    pub leader_age: Option<Duration>,
    pub members: BTreeMap<String, Member>,
}

/// HAProxy's view of one server in one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerState {
    /// Operationally up (health checks, or a forced `health up`).
    pub up: bool,
    /// Administratively in maintenance (forced, or by configuration).
    pub maint: bool,
    /// Administratively drained: up or not, it receives no new connection.
    pub drain: bool,
}

/// The local HAProxy's two backends, server name → state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HaproxyView {
    pub write: BTreeMap<String, ServerState>,
    pub read: BTreeMap<String, ServerState>,
}

impl HaproxyView {
    /// Servers that receive new write connections.
    pub fn write_targets(&self) -> BTreeSet<&str> {
        self.write
            .iter()
            .filter(|(_, state)| state.up && !state.maint && !state.drain)
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// What this node sees of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalView {
    pub node: String,
    /// `None`: this node runs no HAProxy (no socket configured).
    pub haproxy_configured: bool,
    /// `None`: the runtime socket did not answer.
    pub haproxy: Option<HaproxyView>,
    /// The local Patroni's role from `GET /patroni`, `None` when it did not answer.
    pub patroni_role: Option<String>,
    /// The leader's `/primary` answer: `Some(true)` for 200 with `role: primary` (PostgreSQL
    /// out of recovery), `Some(false)` for anything else,
    /// `None` when not asked (no leader) or unreachable.
    pub leader_primary: Option<bool>,
    /// A VIP is configured for this node.
    pub vip_configured: bool,
    pub vip_held: bool,
    pub keepalived_alive: bool,
    /// The write server named by an unexpired `pgha agent hold-writes` (a switchover away from
    /// it is under way).
    pub write_hold: Option<String>,
    /// Asked only while this HAProxy routes writes nowhere: whether another node's HAProxy
    /// does (`Some(false)`: none of the peers that answered does, or none answered).
    pub peers_route_writes: Option<bool>,
}

/// What the previous cycle left behind (edge-triggered read routing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// The leader writes were last routed to by this agent.
    pub routed_leader: Option<String>,
    /// Read servers whose health this agent last forced: server → up.
    pub read_forced: BTreeMap<String, bool>,
}

/// One effect on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `set server <backend>/<server> state ready` then `health up|down`.
    SetHealth {
        backend: Backend,
        server: String,
        up: bool,
    },
    /// `set server <write backend>/<server> state drain` then `health down`: no new writes,
    /// whatever its health checks say later.
    KeepOutOfWrites { server: String },
    /// `set server <write backend>/<server> state drain`, health untouched: no new writes, the
    /// open sessions go on until their primary stops (a planned hand-over).
    HoldWrites { server: String },
    /// `ip addr del <vip> dev <interface>`.
    RemoveVip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Write,
    Read,
}

/// The outcome of one cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// One human sentence: what the agent does and why.
    pub sentence: String,
    /// The verdict for Keepalived: this node's HAProxy routes writes to a live primary.
    pub can_route_writes: bool,
    pub memory: Memory,
}

/// Decide what to do. `memory` is the previous decision's [`Decision::memory`].
pub fn decide(cluster: &ClusterView, local: &LocalView, memory: &Memory) -> Decision {
    let mut actions = Vec::new();
    let mut sentences = Vec::new();
    let mut memory = memory.clone();

    // The VIP guard does not need the cluster: a VIP without keepalived is a duplicate address.
    if local.vip_configured && local.vip_held && !local.keepalived_alive {
        actions.push(Action::RemoveVip);
        sentences.push(format!(
            "removing the VIP from {}: keepalived is not running, a peer may hold it too",
            local.node
        ));
    }

    let (routing, can_route_writes) = route(cluster, local, &mut memory, &mut actions);
    sentences.insert(0, routing);
    Decision {
        actions,
        sentence: sentences.join("; "),
        can_route_writes,
        memory,
    }
}

/// Routing decisions and the write verdict; returns the routing sentence.
fn route(
    cluster: &ClusterView,
    local: &LocalView,
    memory: &mut Memory,
    actions: &mut Vec<Action>,
) -> (String, bool) {
    if !local.haproxy_configured {
        return (
            format!("{} runs no HAProxy: nothing to route", local.node),
            false,
        );
    }
    let Some(haproxy) = &local.haproxy else {
        return (
            format!(
                "HAProxy does not answer on {}: this node cannot route writes",
                local.node
            ),
            false,
        );
    };
    let targets = haproxy.write_targets();
    // Without a trustworthy leader, HAProxy's own checks route; the verdict follows them.
    let fallback = !targets.is_empty();
    // ... unless no node can route (the primary is gone and no other is running yet): every
    // node's checks fail alike, and giving the VIP away everywhere would only add its
    // return (a check's rise and VRRP's master-down timer, ~4 s on the lab) to the outage.
    let nowhere = !fallback && local.peers_route_writes == Some(false);
    let keep = if nowhere {
        "; no other HAProxy routes writes either: the VIP stays where it is"
    } else {
        ""
    };
    if !cluster.synced {
        return (
            "waiting for a first full view of etcd before acting".to_string(),
            fallback,
        );
    }
    if !cluster.etcd_reachable {
        return (
            "etcd is unreachable: leaving HAProxy as it is (its health checks route)".to_string(),
            fallback,
        );
    }
    let Some(leader) = &cluster.leader else {
        return (
            format!("the cluster has no leader: leaving HAProxy as it is{keep}"),
            fallback || nowhere,
        );
    };
    let disagreement = match &local.patroni_role {
        Some(role) if is_primary_role(role) && *leader != local.node => format!(
            "; Patroni on {} says `{role}` but etcd's leader is {leader}",
            local.node
        ),
        _ => String::new(),
    };
    if !haproxy.write.contains_key(leader) {
        return (
            format!("the leader {leader} is not a server of the write backend{disagreement}"),
            fallback,
        );
    }
    match local.leader_primary {
        Some(true) => {}
        Some(false) => {
            return (
                format!(
                    "waiting for {leader}: it holds the leader key but its `/primary` does not answer 200 with `role: primary` yet{disagreement}"
                ),
                // Every node waits alike (a switchover's demotion): giving the VIP away now
                // would only add a VIP move to the outage.
                true,
            );
        }
        None => {
            return (
                format!(
                "cannot reach {leader}'s `/primary`: leaving HAProxy as it is{disagreement}{keep}"
            ),
                fallback || nowhere,
            )
        }
    }

    // The leader is a confirmed primary: it alone takes writes. The others go out first, so
    // there is no moment with two write targets.
    let mut changed = Vec::new();
    for (server, state) in &haproxy.write {
        if server != leader && !state.drain {
            actions.push(Action::KeepOutOfWrites {
                server: server.clone(),
            });
            changed.push(server.clone());
        }
    }
    let held = local.write_hold.as_deref() == Some(leader.as_str());
    if held {
        if haproxy.write.get(leader).is_some_and(|state| !state.drain) {
            actions.push(Action::HoldWrites {
                server: leader.clone(),
            });
        }
    } else if let Some(state) = haproxy.write.get(leader) {
        if !state.up || state.maint || state.drain {
            actions.push(Action::SetHealth {
                backend: Backend::Write,
                server: leader.clone(),
                up: true,
            });
            changed.push(leader.clone());
        }
    }
    let new_leader = memory.routed_leader.as_deref() != Some(leader.as_str());
    memory.routed_leader = Some(leader.clone());

    // Reads follow member state, edge-triggered: the agent forces a server only when what it
    // wants differs from what it last forced, so it never fights the health checks. The leader
    // key's holder never takes reads, whatever its member key still says: in a switchover the
    // candidate takes the key before it promotes, and its member key says `primary` only later
    // (the e2e upgrade test saw reads answered by a fresh primary for about half a second).
    for (server, state) in &haproxy.read {
        let want_up = cluster
            .members
            .get(server)
            .is_some_and(Member::serves_reads)
            && cluster.leader.as_deref() != Some(server.as_str());
        let last = memory.read_forced.get(server).copied();
        // Health only: a read server's administrative state (an operator's maintenance,
        // `pgha upgrade`'s drain) is not the agent's to clear.
        let differs = state.up != want_up;
        if last != Some(want_up) && differs {
            actions.push(Action::SetHealth {
                backend: Backend::Read,
                server: server.clone(),
                up: want_up,
            });
        }
        memory.read_forced.insert(server.clone(), want_up);
    }

    let age = cluster
        .leader_age
        .map(|age| format!(" since {:.1} s", age.as_secs_f64()))
        .unwrap_or_default();
    let sentence = if held {
        format!("holding new writes: {leader} hands over (`pgha agent hold-writes`); HAProxy keeps them waiting for the next leader{disagreement}")
    } else if changed.is_empty() {
        // No age here: a steady sentence stays the same, so it is logged once.
        format!("writes go to {leader}, the leader{disagreement}")
    } else if new_leader {
        format!("routing writes to {leader}, the new leader{age}{disagreement}")
    } else {
        format!(
            "correcting HAProxy: writes to {leader}, the leader{age} (was routing to {}){disagreement}",
            describe(&targets)
        )
    };
    (sentence, true)
}

/// Patroni's name for the role of a member that runs a primary (4.x and 3.x).
pub fn is_primary_role(role: &str) -> bool {
    matches!(role, "primary" | "master")
}

fn describe(targets: &BTreeSet<&str>) -> String {
    if targets.is_empty() {
        "no server".to_string()
    } else {
        targets.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(role: &str, state: &str) -> Member {
        Member {
            role: role.into(),
            state: state.into(),
            api_url: String::new(),
            lag_bytes: None,
            noloadbalance: false,
        }
    }

    /// node1 primary, node2 and node3 streaming; etcd says `leader`.
    fn cluster(leader: Option<&str>) -> ClusterView {
        let mut members = BTreeMap::new();
        for name in ["node1", "node2", "node3"] {
            let role = if Some(name) == leader {
                "primary"
            } else {
                "replica"
            };
            let state = if Some(name) == leader {
                "running"
            } else {
                "streaming"
            };
            members.insert(name.to_string(), member(role, state));
        }
        ClusterView {
            synced: true,
            etcd_reachable: true,
            leader: leader.map(str::to_string),
            leader_age: Some(Duration::from_millis(300)),
            members,
        }
    }

    /// HAProxy with `writer` up in the write backend and the others up in the read backend.
    fn haproxy(writer: Option<&str>) -> HaproxyView {
        let mut view = HaproxyView::default();
        for name in ["node1", "node2", "node3"] {
            let is_writer = Some(name) == writer;
            // What the agent leaves behind: the writer ready and up, the others drained.
            view.write.insert(
                name.into(),
                ServerState {
                    up: is_writer,
                    maint: false,
                    drain: writer.is_some() && !is_writer,
                },
            );
            view.read.insert(
                name.into(),
                ServerState {
                    up: !is_writer,
                    ..ServerState::default()
                },
            );
        }
        view
    }

    fn local(writer: Option<&str>) -> LocalView {
        LocalView {
            node: "node1".into(),
            haproxy_configured: true,
            haproxy: Some(haproxy(writer)),
            patroni_role: Some("replica".into()),
            leader_primary: Some(true),
            vip_configured: true,
            vip_held: true,
            keepalived_alive: true,
            write_hold: None,
            peers_route_writes: None,
        }
    }

    fn write(server: &str, up: bool) -> Action {
        Action::SetHealth {
            backend: Backend::Write,
            server: server.into(),
            up,
        }
    }

    fn keep_out(server: &str) -> Action {
        Action::KeepOutOfWrites {
            server: server.into(),
        }
    }

    fn read(server: &str, up: bool) -> Action {
        Action::SetHealth {
            backend: Backend::Read,
            server: server.into(),
            up,
        }
    }

    fn routed(leader: &str) -> Memory {
        Memory {
            routed_leader: Some(leader.into()),
            read_forced: BTreeMap::new(),
        }
    }

    struct Case {
        name: &'static str,
        cluster: ClusterView,
        local: LocalView,
        memory: Memory,
        actions: Vec<Action>,
        sentence: &'static str,
        verdict: bool,
    }

    #[test]
    fn decision_table() {
        let cases = vec![
            Case {
                name: "steady state: nothing to do",
                cluster: cluster(Some("node1")),
                local: local(Some("node1")),
                memory: routed("node1"),
                actions: vec![],
                sentence: "writes go to node1, the leader",
                verdict: true,
            },
            Case {
                name: "leader change: the new primary in, the old one out, reads follow",
                cluster: cluster(Some("node2")),
                local: local(Some("node1")),
                memory: routed("node1"),
                actions: vec![
                    keep_out("node1"),
                    write("node2", true),
                    read("node1", true),
                    read("node2", false),
                ],
                sentence: "routing writes to node2, the new leader since 0.3 s",
                verdict: true,
            },
            Case {
                name: "leader key moved but the new leader is not promoted yet",
                cluster: cluster(Some("node2")),
                local: LocalView {
                    leader_primary: Some(false),
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![],
                sentence: "waiting for node2: it holds the leader key but its `/primary` does not answer 200 with `role: primary` yet",
                verdict: true,
            },
            Case {
                name: "no leader: HAProxy left alone, the verdict follows its checks",
                cluster: cluster(None),
                local: local(Some("node1")),
                memory: routed("node1"),
                actions: vec![],
                sentence: "the cluster has no leader: leaving HAProxy as it is",
                verdict: true,
            },
            Case {
                name: "etcd unreachable: HAProxy left alone",
                cluster: ClusterView {
                    etcd_reachable: false,
                    ..cluster(Some("node2"))
                },
                local: local(Some("node1")),
                memory: routed("node1"),
                actions: vec![],
                sentence: "etcd is unreachable: leaving HAProxy as it is (its health checks route)",
                verdict: true,
            },
            Case {
                name: "before the first full view nothing is done",
                cluster: ClusterView {
                    synced: false,
                    ..cluster(Some("node2"))
                },
                local: local(Some("node1")),
                memory: Memory::default(),
                actions: vec![],
                sentence: "waiting for a first full view of etcd before acting",
                verdict: true,
            },
            Case {
                name: "Patroni disagrees with etcd: etcd's confirmed leader wins",
                cluster: cluster(Some("node2")),
                local: LocalView {
                    patroni_role: Some("primary".into()),
                    ..local(Some("node2"))
                },
                memory: routed("node2"),
                actions: vec![],
                sentence: "writes go to node2, the leader; Patroni on node1 says `primary` but etcd's leader is node2",
                verdict: true,
            },
            Case {
                name: "the leader is gone and no HAProxy routes anywhere: the VIP stays",
                cluster: cluster(Some("node1")),
                local: LocalView {
                    haproxy: Some(haproxy(None)),
                    leader_primary: None,
                    peers_route_writes: Some(false),
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![],
                sentence: "cannot reach node1's `/primary`: leaving HAProxy as it is; no other HAProxy routes writes either: the VIP stays where it is",
                verdict: true,
            },
            Case {
                name: "no leader, no route here, another HAProxy routes: the VIP goes there",
                cluster: cluster(None),
                local: LocalView {
                    haproxy: Some(haproxy(None)),
                    peers_route_writes: Some(true),
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![],
                sentence: "the cluster has no leader: leaving HAProxy as it is",
                verdict: false,
            },
            Case {
                name: "no leader, no route here, peers not asked: the checks decide",
                cluster: cluster(None),
                local: LocalView {
                    haproxy: Some(haproxy(None)),
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![],
                sentence: "the cluster has no leader: leaving HAProxy as it is",
                verdict: false,
            },
            Case {
                name: "HAProxy down: no routing, the verdict gives the VIP away",
                cluster: cluster(Some("node1")),
                local: LocalView {
                    haproxy: None,
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![],
                sentence: "HAProxy does not answer on node1: this node cannot route writes",
                verdict: false,
            },
            Case {
                name: "keepalived dead while the VIP is held: the VIP is removed",
                cluster: cluster(Some("node1")),
                local: LocalView {
                    keepalived_alive: false,
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![Action::RemoveVip],
                sentence: "writes go to node1, the leader; removing the VIP from node1: keepalived is not running, a peer may hold it too",
                verdict: true,
            },
            Case {
                name: "HAProxy restarted with every check down: the confirmed leader is forced up",
                cluster: cluster(Some("node1")),
                local: local(None),
                memory: routed("node1"),
                actions: vec![
                    keep_out("node2"),
                    keep_out("node3"),
                    write("node1", true),
                    read("node1", false),
                ],
                sentence: "correcting HAProxy: writes to node1, the leader since 0.3 s (was routing to no server)",
                verdict: true,
            },
            Case {
                name: "the leader is never taken out, even if HAProxy has it in maint",
                cluster: cluster(Some("node1")),
                local: LocalView {
                    haproxy: Some({
                        let mut view = haproxy(Some("node1"));
                        view.write.insert("node1".into(), ServerState { up: true, maint: true, drain: false });
                        view
                    }),
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![write("node1", true)],
                sentence: "correcting HAProxy: writes to node1, the leader since 0.3 s (was routing to no server)",
                verdict: true,
            },
            Case {
                name: "an old primary that its checks mark up again stays drained: no action",
                cluster: cluster(Some("node1")),
                local: LocalView {
                    haproxy: Some({
                        let mut view = haproxy(Some("node1"));
                        view.write.insert("node3".into(), ServerState { up: true, maint: false, drain: true });
                        view
                    }),
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![],
                sentence: "writes go to node1, the leader",
                verdict: true,
            },
            Case {
                name: "a non-leader that is ready (HAProxy reloaded) is drained even while its check is down",
                cluster: cluster(Some("node1")),
                local: LocalView {
                    haproxy: Some({
                        let mut view = haproxy(Some("node1"));
                        view.write.insert("node2".into(), ServerState::default());
                        view
                    }),
                    ..local(Some("node1"))
                },
                memory: routed("node1"),
                actions: vec![keep_out("node2")],
                sentence: "correcting HAProxy: writes to node1, the leader since 0.3 s (was routing to node1)",
                verdict: true,
            },
        ];
        for case in cases {
            let decision = decide(&case.cluster, &case.local, &case.memory);
            assert_eq!(decision.actions, case.actions, "{}", case.name);
            assert_eq!(decision.sentence, case.sentence, "{}", case.name);
            assert_eq!(decision.can_route_writes, case.verdict, "{}", case.name);
        }
    }

    #[test]
    fn the_new_leader_leaves_the_read_backend_before_its_member_key_says_primary() {
        // etcd: node2 holds the leader key, its member key still says `replica`/`streaming`.
        let mut view = cluster(Some("node1"));
        view.leader = Some("node2".into());
        let mut local_view = local(Some("node1"));
        if let Some(haproxy) = local_view.haproxy.as_mut() {
            haproxy.read.insert(
                "node2".into(),
                ServerState {
                    up: true,
                    ..ServerState::default()
                },
            );
        }
        let decision = decide(&view, &local_view, &routed("node1"));
        assert!(
            decision.actions.contains(&read("node2", false)),
            "{:?}",
            decision.actions
        );
    }

    #[test]
    fn a_hand_over_drains_the_leader_until_the_next_one_leads() {
        // `pgha agent hold-writes node1`: node1 is drained, health untouched (its open sessions
        // go on until Patroni stops it), nothing else changes, the VIP stays.
        let mut held = local(Some("node1"));
        held.write_hold = Some("node1".into());
        let decision = decide(&cluster(Some("node1")), &held, &routed("node1"));
        assert_eq!(
            decision.actions,
            [Action::HoldWrites {
                server: "node1".into()
            }]
        );
        assert!(decision.can_route_writes);
        assert!(
            decision.sentence.contains("holding new writes"),
            "{}",
            decision.sentence
        );

        // Already drained: nothing more to do, and the leader is not made ready.
        let mut drained = held.clone();
        if let Some(haproxy) = &mut drained.haproxy {
            haproxy.write.get_mut("node1").unwrap().drain = true;
        }
        let decision = decide(&cluster(Some("node1")), &drained, &routed("node1"));
        assert_eq!(decision.actions, []);

        // node2 takes the leader key and answers `/primary`: it is routed at once, the hold
        // naming node1 does not matter any more.
        let decision = decide(&cluster(Some("node2")), &drained, &routed("node1"));
        assert!(
            decision.actions.contains(&write("node2", true)),
            "{:?}",
            decision.actions
        );
        assert!(!decision
            .actions
            .iter()
            .any(|action| matches!(action, Action::HoldWrites { .. })));

        // The hold withdrawn (or expired) with node1 still leading: node1 is ready again.
        drained.write_hold = None;
        let decision = decide(&cluster(Some("node1")), &drained, &routed("node1"));
        assert_eq!(decision.actions, [write("node1", true)]);
    }

    #[test]
    fn reads_are_not_forced_twice() {
        let first = decide(
            &cluster(Some("node2")),
            &local(Some("node1")),
            &routed("node1"),
        );
        // HAProxy's check has since put node1 down again (say it lags): the agent lets it.
        let mut view = local(Some("node2"));
        if let Some(haproxy) = view.haproxy.as_mut() {
            haproxy.read.insert("node1".into(), ServerState::default());
        }
        let second = decide(&cluster(Some("node2")), &view, &first.memory);
        assert_eq!(second.actions, vec![]);
    }
}
