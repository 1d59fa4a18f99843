//! End-to-end on the local lab: scaling a live cluster out with `pgha inventory add-node` and
//! `pgha deploy`, under a writer and a reader through the VIP.
//!
//! 1. node4 (etcd, postgres, haproxy) on a grown lab: it is cloned as a replica, joins etcd as
//!    a learner and is promoted, every HAProxy routes to it;
//! 2. node5 (etcd only): the fifth etcd member, again as a learner first;
//!
//! 3. a replica leaves (`pgha inventory remove-node`, then `pgha deploy`);
//! 4. the node that is primary leaves, with `--purge` (a switchover first);
//!
//! after each: `pgha verify` passes with the new member in every check (etcd's member list is
//! the inventory's), no PostgreSQL, etcd or Patroni of the existing members restarted
//! (postmaster start times, the units' main PIDs), and the next deploy changes nothing. At
//! the end no acknowledged write is lost; the longest write gap and the failed attempts of
//! each step are printed (BENCHMARKS.md records them).

mod common;

use common::clients::Clients;
use common::{
    eventually, exec_everywhere, is_root, lab_inventory, pgha, pgha_ok, superuser_password, Lab,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// `pgha verify` passes (eventually: a new replica needs a moment to stream).
fn verified(inventory: &Path) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    eventually("pgha verify passes", Duration::from_secs(90), || {
        let output = pgha(&["verify", "-i", inventory.to_str().unwrap(), "--json"]);
        last = serde_json::from_slice(&output.stdout).map_err(|error| error.to_string())?;
        if last["success"] == true {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                last["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|check| check["pass"] == false)
                    .map(|check| format!("{}: {}", check["name"], check["evidence"]))
                    .collect::<Vec<_>>()
            ))
        }
    });
    last
}

/// What `pgha verify`'s `etcd.member_list` check lists (before ", inventory: …"), and its
/// whole evidence.
fn etcd_listed(result: &serde_json::Value) -> (String, String) {
    let evidence = result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "etcd.member_list")
        .and_then(|check| check["evidence"].as_str())
        .unwrap_or_default()
        .to_string();
    let listed = evidence
        .split(", inventory:")
        .next()
        .unwrap_or_default()
        .to_string();
    (listed, evidence)
}

/// The next deploy succeeds and changes nothing; its result.
fn no_op(inventory: &Path, when: &str) -> serde_json::Value {
    let again = common::deploy_result(inventory, &[]);
    assert_eq!(again["success"], true, "{again:#}");
    assert_eq!(
        common::changed_tasks(&again),
        0,
        "{when}: {:#}",
        again["changes"]
    );
    again
}

/// Postmaster start times and etcd/Patroni main PIDs of `nodes`, by node.
fn running_since(inventory: &Path, nodes: &[&str]) -> Vec<(String, String)> {
    let hosts = exec_everywhere(
        inventory,
        "runuser -u postgres -- psql -XAtc 'select pg_postmaster_start_time()' 2>/dev/null; systemctl show -p MainPID etcd patroni",
    );
    hosts
        .as_array()
        .unwrap()
        .iter()
        .filter(|host| nodes.contains(&host["host"].as_str().unwrap_or("")))
        .map(|host| {
            (
                host["host"].as_str().unwrap().to_string(),
                host["stdout"].as_str().unwrap_or("").trim().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_live_cluster_scales_out_without_restarting_its_members() {
    assert!(
        is_root(),
        "the end-to-end test needs root (it runs the lab)"
    );
    let (_dir, inventory) = lab_inventory();
    let inventory_arg = inventory.to_str().unwrap();
    let _lab = Lab;
    pgha(&["lab", "down"]);
    pgha_ok(&["lab", "up", "--nodes", "3"]);
    let first = common::deploy_result(&inventory, &[]);
    assert_eq!(first["success"], true, "{first:#}");
    let password = superuser_password(&inventory);
    common::psql_at(
        "10.231.0.100",
        5000,
        &password,
        3,
        "create table if not exists scale_probe (id bigint primary key)",
    )
    .unwrap();
    let existing = ["node1", "node2", "node3"];
    let before = running_since(&inventory, &existing);

    let clients = Clients::start(&password, "require", "scale_probe");
    let mut report = Vec::new();
    for (node, address, roles, etcd_members) in [
        ("node4", "10.231.0.14", "etcd,postgres,haproxy", 4),
        ("node5", "10.231.0.15", "etcd", 5),
    ] {
        // 4 etcd members on the way to 5: allowed, and the deploy says what it costs.
        let count = node.trim_start_matches("node");
        pgha_ok(&["lab", "up", "--nodes", count]);
        pgha_ok(&[
            "inventory",
            "add-node",
            "-i",
            inventory_arg,
            node,
            address,
            "--roles",
            roles,
        ]);
        let failures_before = clients.failures();
        let started = Instant::now();
        let grown = common::deploy_result(&inventory, &[]);
        let seconds = started.elapsed().as_secs_f64();
        let failures_after = clients.failures();
        assert_eq!(grown["success"], true, "adding {node}: {grown:#}");
        // Scale-out reloads HAProxy, keepalived, Patroni and the agents, never restarts a
        // member: no application write may fail while it runs.
        assert_eq!(
            failures_after.0 - failures_before.0,
            0,
            "writes through the VIP failed while {node} was added: {:?}",
            clients.failed_writes_after(failures_before.0)
        );
        let (listed, evidence) = etcd_listed(&verified(&inventory));
        // The new member, a voter by now.
        if roles.contains("etcd") {
            assert!(
                listed.contains(&format!("\"{node}\"")) && !listed.contains("learner"),
                "etcd's voting members do not include {node}: {evidence}"
            );
        }
        assert_eq!(
            running_since(&inventory, &existing),
            before,
            "adding {node} restarted an existing member's PostgreSQL, etcd or Patroni"
        );
        let again = no_op(&inventory, &format!("after adding {node}"));
        report.push(format!(
            "{node} ({roles}, {etcd_members} etcd members): deploy {seconds:.1} s, {} changed, no-op after it {} ms",
            common::changed_tasks(&grown),
            again["duration_ms"]
        ));
    }

    // Scale in: a replica, then the node that is primary (with `--purge`).
    let mut windows = Vec::new();
    let mut members: Vec<String> = (1..=5).map(|number| format!("node{number}")).collect();
    for (what, purge) in [("replica", false), ("primary", true)] {
        let primary = primary_of(&inventory);
        let node = match what {
            "replica" if primary != "node4" => "node4".to_string(),
            "replica" => "node2".to_string(),
            _ => primary.clone(),
        };
        members.retain(|member| *member != node);
        let staying: Vec<&str> = members.iter().map(String::as_str).collect();
        let before = running_since(&inventory, &staying);
        pgha_ok(&["inventory", "remove-node", "-i", inventory_arg, &node]);
        let failures_before = clients.failures();
        let started = Instant::now();
        let extra: &[&str] = if purge { &["--purge"] } else { &[] };
        let shrunk = common::deploy_result(&inventory, extra);
        let seconds = started.elapsed().as_secs_f64();
        let ended = Instant::now();
        let failures_after = clients.failures();
        assert_eq!(shrunk["success"], true, "removing {node}: {shrunk:#}");
        let (listed, evidence) = etcd_listed(&verified(&inventory));
        assert!(
            !listed.contains(&format!("\"{node}\"")),
            "etcd still lists {node}: {evidence}"
        );
        if what == "primary" {
            assert_ne!(
                primary_of(&inventory),
                node,
                "the removed primary still leads"
            );
        }
        // Its services stopped and disabled, its data kept unless purged, its keys gone.
        let left = exec_on(
            &node,
            "for unit in etcd patroni haproxy pgha-agent; do echo \"$unit $(systemctl is-active $unit) $(systemctl is-enabled $unit 2>/dev/null)\"; done; test -e /var/lib/postgresql/15/lab/PG_VERSION && echo data kept || echo data gone; ls /etc/pgha/tls 2>/dev/null | grep -c key || true",
        );
        for unit in ["etcd", "patroni", "haproxy", "pgha-agent"] {
            assert!(
                left.contains(&format!("{unit} inactive disabled")),
                "{unit} on {node} is not stopped and disabled: {left}"
            );
        }
        assert!(
            left.contains(if purge { "data gone" } else { "data kept" }),
            "{node} (purge: {purge}): {left}"
        );
        assert!(
            left.trim_end().ends_with('0'),
            "{node} keeps TLS keys: {left}"
        );
        assert_eq!(
            running_since(&inventory, &staying),
            before,
            "removing {node} restarted a staying member's PostgreSQL, etcd or Patroni"
        );
        let again = no_op(&inventory, &format!("after removing {node}"));
        report.push(format!(
            "removing {node} (the {what}{}): deploy {seconds:.1} s, {} changed, no-op after it {} ms",
            if purge { ", --purge" } else { "" },
            common::changed_tasks(&shrunk),
            again["duration_ms"]
        ));
        windows.push((
            format!("removing {node} ({what})"),
            started,
            ended,
            failures_after.0 - failures_before.0,
            failures_after.1 - failures_before.1,
        ));
    }

    let seen = clients.stop();
    seen.assert_none_lost(&password, "scale_probe");
    for (step, from, to, failed_writes, failed_reads) in &windows {
        eprintln!(
            "{step}: longest write gap {:.2} s, {failed_writes} failed writes, {failed_reads} failed reads",
            seen.longest_gap_within(*from, *to).as_secs_f64()
        );
    }
    eprintln!(
        "scale out and in: {}; writes: {} acknowledged, {} failed, longest gap {:.2} s; reads: {} answered, {} failed; failures: {:?} {:?}",
        report.join("; "),
        seen.acknowledged.len(),
        seen.failed_writes.len(),
        seen.longest_gap().as_secs_f64(),
        seen.reads,
        seen.failed_reads.len(),
        seen.failed_writes.iter().take(3).collect::<Vec<_>>(),
        seen.failed_reads.iter().take(3).collect::<Vec<_>>(),
    );
}

/// The node whose PostgreSQL is not in recovery.
fn primary_of(inventory: &Path) -> String {
    let hosts = exec_everywhere(
        inventory,
        "runuser -u postgres -- psql -XAtc 'select pg_is_in_recovery()' 2>/dev/null || true",
    );
    let primaries: Vec<String> = hosts
        .as_array()
        .unwrap()
        .iter()
        .filter(|host| host["stdout"].as_str().unwrap_or("").trim() == "f")
        .map(|host| host["host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(primaries.len(), 1, "primaries: {primaries:?}");
    primaries[0].clone()
}

/// `command` on `node` (listed in the lab, maybe no longer in the inventory), as root over SSH.
fn exec_on(node: &str, command: &str) -> String {
    let number = node.trim_start_matches("node");
    let output = std::process::Command::new("ssh")
        .args([
            "-i",
            "/var/lib/pgha/lab/ssh/id_ed25519",
            "-o",
            "UserKnownHostsFile=/var/lib/pgha/lab/ssh/known_hosts",
            "-o",
            "BatchMode=yes",
            &format!("root@10.231.0.1{number}"),
            command,
        ])
        .output()
        .expect("ssh runs");
    String::from_utf8_lossy(&output.stdout).to_string()
}
