//! The order in which departed nodes leave a running cluster, decided from what the cluster
//! says (Patroni's `/cluster`, etcd's member list) and which departed nodes answer. Pure: the
//! apply is in the parent module.
//!
//! Before the deploy's playbook converges the remaining nodes:
//! 1. keepalived stops on each departed node (the VIP, if it held it, moves to a node that
//!    stays, before anything else changes);
//! 2. each departed database node that does not lead *leaves*: Patroni's tags `nofailover`,
//!    `nosync` and `noloadbalance` by a reload, so it is never promoted, another replica
//!    becomes the synchronous standby before it stops (the one a switchover then needs), and
//!    HAProxy's read checks take it out;
//! 3. a departed node that leads hands over (a switchover to a replica that stays), then
//!    leaves like the others;
//! 4. each departed etcd member is removed (`etcdctl member remove`), one at a time, through a
//!    member that stays, and only while every voter that stays is started.
//!
//! Then the playbook, rendered without the departed nodes, reloads every HAProxy (its servers
//! gone), keepalived's peers, pg_hba and the etcd endpoints; after it:
//! 5. the departed node's services are stopped and disabled (its PostgreSQL stops only now,
//!    when no HAProxy routes to it), its TLS keys deleted, and with `--purge` its data too.
//!
//! A departed node that does not answer over SSH is still taken out of etcd and of every
//! configuration; its own steps are skipped and reported, and it stays in the record, so the
//! next deploy that reaches it stops its services.

use std::collections::BTreeSet;

use serde::Serialize;

use super::record::DeployedNode;
use crate::etcd;
use crate::inventory::{Inventory, Role, SyncMode};
use crate::patroni::ClusterView;

/// One step of a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// `systemctl disable --now keepalived` on the departed node.
    StopKeepalived { node: String },
    /// A switchover away from the departed leader (to the replica Patroni picks among those
    /// that stay: with synchronous mode, the synchronous standby).
    Switchover { from: String },
    /// Patroni's tags on the departed member (by reload), then wait until it is no synchronous
    /// standby.
    Leave { node: String },
    /// `etcdctl member remove ID` through a member that stays.
    RemoveEtcdMember { node: String, id: String },
    /// After the playbook: stop and disable the node's services, delete its TLS keys.
    StopServices { node: String },
    /// After the playbook, with `--purge`: delete its PostgreSQL and etcd data and pgha's files.
    Purge { node: String },
}

impl Step {
    pub fn describe(&self) -> String {
        match self {
            Step::StopKeepalived { node } => {
                format!("{node}: stop keepalived (the VIP stays on the remaining nodes)")
            }
            Step::Switchover { from } => {
                format!("{from}: leads the cluster; switch over to a replica that stays")
            }
            Step::Leave { node } => format!(
                "{node}: Patroni tags nofailover, nosync, noloadbalance (reload); another replica becomes the synchronous standby"
            ),
            Step::RemoveEtcdMember { node, id } => {
                format!("{node}: etcdctl member remove {id}")
            }
            Step::StopServices { node } => format!(
                "{node}: stop and disable its services once no HAProxy routes to it; delete its TLS keys"
            ),
            Step::Purge { node } => {
                format!("{node}: delete its PostgreSQL and etcd data and pgha's files (--purge)")
            }
        }
    }
}

/// The removal: steps before the playbook, after it, and what is skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Removal {
    pub before: Vec<Step>,
    pub after: Vec<Step>,
    /// Departed nodes that do not answer, and what that leaves undone.
    pub unreachable: Vec<String>,
}

/// What the cluster said, gathered from the nodes that stay.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Patroni's `/cluster` (absent when the inventory has no Patroni member that answers).
    pub patroni: Option<ClusterView>,
    /// etcd's member list (absent when no member that stays answered).
    pub etcd: Option<Vec<etcd::Member>>,
    /// The departed nodes that answer over SSH.
    pub reachable: BTreeSet<String>,
}

/// The removal of `departed` from the cluster of `inventory`, or every reason it is refused
/// (each with a hint).
pub fn plan(
    inventory: &Inventory,
    departed: &[DeployedNode],
    observed: &Observed,
    purge: bool,
) -> Result<Removal, Vec<String>> {
    let mut problems = Vec::new();
    let mut removal = Removal::default();
    for node in departed {
        if let Some(other) = inventory
            .nodes
            .iter()
            .find(|other| other.address == node.address)
        {
            problems.push(format!(
                "`{}` was deployed at {} and is gone from the inventory, but `{}` has that address now; hint: renaming a node is a removal and an addition: deploy without the address first, then add `{}`",
                node.name, node.address, other.name, other.name
            ));
        }
    }
    let reachable = |name: &str| observed.reachable.contains(name);

    // 1. The VIP moves first.
    for node in departed {
        if node.has(Role::Keepalived) && reachable(&node.name) {
            removal.before.push(Step::StopKeepalived {
                node: node.name.clone(),
            });
        }
    }

    // 2-3. Patroni.
    let departed_postgres: Vec<&DeployedNode> = departed
        .iter()
        .filter(|node| node.has(Role::Postgres))
        .collect();
    if !departed_postgres.is_empty() {
        match &observed.patroni {
            None => problems.push(
                "no Patroni member of the inventory answered, so a departed database node cannot be taken out safely; hint: `pgha verify -i …` shows what is down".to_string(),
            ),
            Some(view) => {
                let staying: Vec<&str> = inventory
                    .nodes_with(Role::Postgres)
                    .map(|node| node.name.as_str())
                    .collect();
                let departing_leader = view
                    .leader()
                    .filter(|leader| departed_postgres.iter().any(|node| node.name == leader.name))
                    .map(|leader| leader.name.clone());
                // Departing replicas leave first: with synchronous mode a replica that stays
                // must be the synchronous standby before a switchover can pick it.
                for node in &departed_postgres {
                    if Some(&node.name) != departing_leader.as_ref()
                        && view.member(&node.name).is_some()
                        && reachable(&node.name)
                    {
                        removal.before.push(Step::Leave {
                            node: node.name.clone(),
                        });
                    }
                }
                let staying_replicas = view
                    .members
                    .iter()
                    .filter(|member| staying.contains(&member.name.as_str()) && member.streams())
                    .count();
                if inventory.cluster.synchronous_mode == SyncMode::Strict && staying_replicas == 0 {
                    problems.push(format!(
                        "with `synchronous_mode: strict` and no replica that stays streaming, taking {} out would stop every write; hint: deploy a new database node first",
                        departed_postgres.iter().map(|node| node.name.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
                if let Some(leader) = view
                    .leader()
                    .filter(|leader| Some(&leader.name) == departing_leader.as_ref())
                {
                    let candidate = view.members.iter().any(|member| {
                        staying.contains(&member.name.as_str()) && member.streams()
                    });
                    if !reachable(&leader.name) {
                        problems.push(format!(
                            "`{}` leads the cluster and does not answer over SSH; hint: bring it back or let Patroni fail over (its leader key expires after the TTL), then deploy again",
                            leader.name
                        ));
                    } else if !candidate {
                        problems.push(format!(
                            "`{}` leads the cluster and no database node that stays streams from it, so nothing can take over; hint: deploy the new nodes first, then remove `{}`",
                            leader.name, leader.name
                        ));
                    } else {
                        removal.before.push(Step::Switchover {
                            from: leader.name.clone(),
                        });
                    }
                }
                if let Some(leader) = departing_leader.filter(|leader| reachable(leader)) {
                    removal.before.push(Step::Leave { node: leader });
                }
            }
        }
    }

    // 4. etcd.
    let departed_etcd: Vec<&DeployedNode> = departed
        .iter()
        .filter(|node| node.has(Role::Etcd))
        .collect();
    if !departed_etcd.is_empty() {
        match &observed.etcd {
            None => problems.push(
                "no etcd member of the inventory answered with its member list, so a departed etcd member cannot be removed safely; hint: `pgha verify -i …` shows what is down".to_string(),
            ),
            Some(members) => {
                let leaving: BTreeSet<&str> =
                    departed_etcd.iter().map(|node| node.name.as_str()).collect();
                let voters_after: Vec<&etcd::Member> = members
                    .iter()
                    .filter(|member| {
                        !member.learner
                            && !departed_etcd
                                .iter()
                                .any(|node| member.is_node(&node.name, &node.address))
                    })
                    .collect();
                let not_started = voters_after.iter().filter(|member| !member.started()).count();
                let wanted = inventory.nodes_with(Role::Etcd).count();
                let majority = wanted / 2 + 1;
                if not_started > 0 {
                    problems.push(format!(
                        "{not_started} etcd voter(s) that stay are not started; removing a member now could cost the quorum; hint: start them (`pgha verify` shows which), then deploy again"
                    ));
                } else if voters_after.len() < majority {
                    problems.push(format!(
                        "removing {} would leave {} etcd voter(s), fewer than a majority of the inventory's {wanted}; hint: deploy the new etcd members first, then remove the old ones",
                        leaving.iter().copied().collect::<Vec<_>>().join(", "),
                        voters_after.len()
                    ));
                }
                for node in &departed_etcd {
                    if let Some(member) = members
                        .iter()
                        .find(|member| member.is_node(&node.name, &node.address))
                    {
                        removal.before.push(Step::RemoveEtcdMember {
                            node: node.name.clone(),
                            id: member.hex_id(),
                        });
                    }
                }
            }
        }
    }

    // 5. After the playbook.
    for node in departed {
        if reachable(&node.name) {
            removal.after.push(Step::StopServices {
                node: node.name.clone(),
            });
            if purge {
                removal.after.push(Step::Purge {
                    node: node.name.clone(),
                });
            }
        } else {
            removal.unreachable.push(format!(
                "{} does not answer: it is out of etcd and of every configuration, but its own services were not stopped; it stays in pgha's record and the next deploy that reaches it stops them (delete its entry from the record if the machine is gone for good)",
                node.name
            ));
        }
    }

    if problems.is_empty() {
        Ok(removal)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patroni::{Member, Role as PatroniRole, State};

    use crate::scale::test_inventory as inventory;

    const STAYING: &str = "  - {name: n1, address: 10.0.0.1}\n  - {name: n2, address: 10.0.0.2}\n  - {name: n3, address: 10.0.0.3}\n";

    fn departed(name: &str, address: &str, roles: &[Role]) -> DeployedNode {
        DeployedNode {
            name: name.into(),
            address: address.parse().unwrap(),
            roles: roles.iter().copied().collect(),
        }
    }

    fn all_roles() -> Vec<Role> {
        Role::ALL.to_vec()
    }

    fn member(name: &str, role: PatroniRole, state: State) -> Member {
        Member {
            name: name.into(),
            role,
            state,
            host: String::new(),
            api_url: None,
            timeline: Some(1),
            lag: Some(0),
            pending_restart: false,
        }
    }

    fn etcd_member(id: u64, name: &str) -> etcd::Member {
        etcd::Member {
            id,
            name: name.into(),
            peer_urls: vec![],
            learner: false,
        }
    }

    /// n1 leads, n2..n4 stream; etcd on n1..n4 started.
    fn observed(reachable: &[&str]) -> Observed {
        Observed {
            patroni: Some(ClusterView {
                members: vec![
                    member("n1", PatroniRole::Leader, State::Running),
                    member("n2", PatroniRole::SyncStandby, State::Streaming),
                    member("n3", PatroniRole::Replica, State::Streaming),
                    member("n4", PatroniRole::Replica, State::Streaming),
                ],
            }),
            etcd: Some(vec![
                etcd_member(1, "n1"),
                etcd_member(2, "n2"),
                etcd_member(3, "n3"),
                etcd_member(20, "n4"),
            ]),
            reachable: reachable.iter().map(|name| name.to_string()).collect(),
        }
    }

    #[test]
    fn a_replica_leaves_haproxy_and_etcd_before_it_stops() {
        let n4 = departed("n4", "10.0.0.4", &all_roles());
        let removal = plan(&inventory(STAYING), &[n4], &observed(&["n4"]), false).unwrap();
        assert_eq!(
            removal.before,
            [
                Step::StopKeepalived { node: "n4".into() },
                Step::Leave { node: "n4".into() },
                Step::RemoveEtcdMember {
                    node: "n4".into(),
                    id: "14".into()
                },
            ]
        );
        assert_eq!(removal.after, [Step::StopServices { node: "n4".into() }]);
        assert!(removal.unreachable.is_empty());
    }

    #[test]
    fn the_leader_hands_over_first_and_purge_comes_last() {
        let inventory = inventory(
            "  - {name: n2, address: 10.0.0.2}\n  - {name: n3, address: 10.0.0.3}\n  - {name: n4, address: 10.0.0.4}\n",
        );
        let n1 = departed("n1", "10.0.0.1", &[Role::Postgres, Role::Etcd]);
        let removal = plan(&inventory, &[n1], &observed(&["n1"]), true).unwrap();
        assert_eq!(removal.before[0], Step::Switchover { from: "n1".into() });
        assert_eq!(removal.before[1], Step::Leave { node: "n1".into() });
        assert_eq!(
            removal.after,
            [
                Step::StopServices { node: "n1".into() },
                Step::Purge { node: "n1".into() }
            ]
        );
    }

    #[test]
    fn a_departing_sync_standby_leaves_before_the_departing_leader_hands_over() {
        let inventory = inventory(
            "  - {name: n3, address: 10.0.0.3}\n  - {name: n4, address: 10.0.0.4}\n  - {name: n5, address: 10.0.0.5}\n",
        );
        let gone = [
            departed("n1", "10.0.0.1", &[Role::Postgres]),
            departed("n2", "10.0.0.2", &[Role::Postgres]),
        ];
        let removal = plan(&inventory, &gone, &observed(&["n1", "n2"]), false).unwrap();
        assert_eq!(
            removal.before,
            [
                Step::Leave { node: "n2".into() },
                Step::Switchover { from: "n1".into() },
                Step::Leave { node: "n1".into() },
            ]
        );
    }

    #[test]
    fn a_learner_that_never_started_is_found_by_its_peer_url() {
        let n4 = departed("n4", "10.0.0.4", &[Role::Etcd]);
        let mut seen = observed(&["n4"]);
        let learner = &mut seen.etcd.as_mut().unwrap()[3];
        learner.name.clear();
        learner.learner = true;
        learner.peer_urls = vec!["https://10.0.0.4:2380".into()];
        let removal = plan(&inventory(STAYING), &[n4], &seen, false).unwrap();
        assert_eq!(
            removal.before,
            [Step::RemoveEtcdMember {
                node: "n4".into(),
                id: "14".into()
            }]
        );
    }

    #[test]
    fn an_unreachable_departed_node_still_leaves_etcd_but_its_own_steps_are_reported() {
        let n4 = departed("n4", "10.0.0.4", &all_roles());
        let removal = plan(&inventory(STAYING), &[n4], &observed(&[]), true).unwrap();
        assert_eq!(
            removal.before,
            [Step::RemoveEtcdMember {
                node: "n4".into(),
                id: "14".into()
            }]
        );
        assert!(removal.after.is_empty());
        assert_eq!(removal.unreachable.len(), 1);
        assert!(removal.unreachable[0].starts_with("n4 does not answer"));
    }

    #[test]
    fn refusals_name_the_reason_and_a_hint() {
        // The leader cannot be reached: Patroni fails over by itself first.
        let inventory3 = inventory(
            "  - {name: n2, address: 10.0.0.2}\n  - {name: n3, address: 10.0.0.3}\n  - {name: n4, address: 10.0.0.4}\n",
        );
        let n1 = departed("n1", "10.0.0.1", &all_roles());
        let problems = plan(
            &inventory3,
            std::slice::from_ref(&n1),
            &observed(&[]),
            false,
        )
        .unwrap_err();
        assert!(problems[0].contains("does not answer") && problems[0].contains("hint:"));

        // No replica that stays streams.
        let mut lonely = observed(&["n1"]);
        if let Some(view) = lonely.patroni.as_mut() {
            for member in view.members.iter_mut().skip(1) {
                member.state = State::Stopped;
            }
        }
        let problems = plan(&inventory3, std::slice::from_ref(&n1), &lonely, false).unwrap_err();
        assert!(
            problems[0].contains("nothing can take over"),
            "{problems:?}"
        );

        // A voter that stays is not started.
        let mut half = observed(&["n1"]);
        half.etcd.as_mut().unwrap()[1].name.clear();
        let problems = plan(&inventory3, std::slice::from_ref(&n1), &half, false).unwrap_err();
        assert!(problems[0].contains("not started"), "{problems:?}");

        // Three voters to one: fewer than a majority of the inventory's three.
        let two = [
            departed("n2", "10.0.0.2", &[Role::Etcd]),
            departed("n3", "10.0.0.3", &[Role::Etcd]),
        ];
        let mut three = observed(&["n2", "n3"]);
        three.etcd.as_mut().unwrap().truncate(3);
        let inventory = inventory(
            "  - {name: n1, address: 10.0.0.1}\n  - {name: n5, address: 10.0.0.5, roles: [etcd]}\n  - {name: n6, address: 10.0.0.6, roles: [etcd]}\n",
        );
        let problems = plan(&inventory, &two, &three, false).unwrap_err();
        assert!(
            problems[0].contains("fewer than a majority"),
            "{problems:?}"
        );

        // An address taken by a node of another name.
        let renamed = departed("n3", "10.0.0.3", &[Role::Etcd]);
        let inventory = inventory3_with_renamed();
        let problems = plan(&inventory, &[renamed], &observed(&["n3"]), false).unwrap_err();
        assert!(problems[0].contains("renaming"), "{problems:?}");
    }

    fn inventory3_with_renamed() -> Inventory {
        inventory(
            "  - {name: n1, address: 10.0.0.1}\n  - {name: n2, address: 10.0.0.2}\n  - {name: x3, address: 10.0.0.3}\n",
        )
    }
}
