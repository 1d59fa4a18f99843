//! End-to-end on Debian 13 (trixie): the lab boots trixie nodes, and `pgha deploy` builds the
//! cluster on the components trixie ships (PostgreSQL 17, etcd 3.5, HAProxy 3.0, keepalived
//! 2.3, Python 3.13 with wheels made on this Debian 12 machine), read like a spec:
//! 1. a cluster whose `postgres_version` is another release's is refused by the preflight,
//!    which names the release and why, and nothing is installed;
//! 2. the deploy converges, each component is the version trixie ships, and the files pgha
//!    rendered pass that version's own checkers (`haproxy -c`, `keepalived --config-test`);
//!    Each Patroni talks to its own node's etcd member; with that member stopped, a Patroni
//!    restarted there does not start, and systemd starts it until it does once the member is
//!    back;
//! 3. `pgha verify` passes and a second deploy changes nothing;
//! 4. a switchover and a power cut of the primary keep every acknowledged write and one
//!    primary, within the failover model;
//! 5. with `corroborated_failover` set (by `pgha inventory set`, with `loop_wait: 2` and
//!    `retry_timeout: 5`), the agents' probes leave nothing in the leader's PostgreSQL log, a
//!    live primary behind a slow link (300 ms each way) keeps its leadership, and a power cut
//!    is ended by the agents' fast path: one of them deletes the dead leader's key, and the
//!    drill passes.
//!
//! Needs root. One test function: only one lab can exist at a time.

mod common;

use common::{changed_tasks, deploy_result, exec_everywhere, pgha, pgha_ok, shipped_inventory};

/// The sum over the nodes of the count `command` prints (`grep -c … || true`).
fn count_everywhere(inventory: &std::path::Path, command: &str) -> usize {
    stdouts(inventory, command)
        .iter()
        .map(|count| count.parse::<usize>().unwrap_or(0))
        .sum()
}

/// Each node's Patroni role and timeline (`replica 3`, empty where Patroni does not answer),
/// in node order.
fn patroni_roles(inventory: &std::path::Path) -> Vec<String> {
    stdouts(
        inventory,
        // Patroni's API listens on the node's address (the first on eth0; a VIP comes after).
        "address=$(ip -4 -o address show dev eth0 | awk 'NR == 1 { sub(\"/.*\", \"\", $4); print $4 }'); \
         curl -s --cacert /etc/pgha/tls/ca.crt --cert /etc/pgha/tls/node.crt --key /etc/pgha/tls/node.key https://$address:8008/patroni \
         | /opt/pgha/patroni/bin/python3 -c 'import json, sys; p = json.load(sys.stdin); print(p[\"role\"], p.get(\"timeline\"))' \
         || true",
    )
}

/// The first node whose Patroni has `role`, from `patroni_roles`' answers, which must all be
/// there (a baseline with a silent node would compare equal to a later silent one).
fn node_in_role(roles: &[String], role: &str) -> String {
    assert!(
        roles.iter().all(|answer| !answer.is_empty()),
        "a Patroni did not answer: {roles:?}"
    );
    roles
        .iter()
        .position(|answer| answer.starts_with(role))
        .map(|index| format!("node{}", index + 1))
        .unwrap_or_else(|| panic!("no {role} among {roles:?}"))
}

/// The stdout of `command` on one node; it must succeed.
fn stdout_on(inventory: &std::path::Path, node: &str, command: &str) -> String {
    let inventory = inventory.to_str().expect("a UTF-8 path");
    let output = pgha_ok(&[
        "exec", "-i", inventory, "--limit", node, "--json", "--", command,
    ]);
    let result: serde_json::Value = serde_json::from_str(&output).expect("exec --json");
    let host = &result[0];
    assert_eq!(
        host["exit_code"], 0,
        "`{command}` failed on {node}: {host:#}"
    );
    host["stdout"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Each node's stdout of `command`, in node order.
fn stdouts(inventory: &std::path::Path, command: &str) -> Vec<String> {
    exec_everywhere(inventory, command)
        .as_array()
        .expect("one result per node")
        .iter()
        .map(|host| {
            assert_eq!(host["exit_code"], 0, "`{command}` failed: {host:#}");
            host["stdout"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn a_debian_13_cluster_deploys_verifies_and_fails_over() {
    assert!(
        common::is_root(),
        "the end-to-end test needs root (it runs the lab)"
    );
    let (_dir, inventory) = shipped_inventory("lab-trixie.yml");
    let inventory_arg = inventory.to_str().expect("a UTF-8 path");

    pgha_ok(&["lab", "down"]);
    let _lab = common::Lab;
    pgha_ok(&["lab", "up", "--release", "trixie", "--nodes", "3"]);
    let status: serde_json::Value =
        serde_json::from_str(&pgha_ok(&["lab", "status", "--json"])).unwrap();
    assert_eq!(status["release"], "trixie", "{status:#}");
    for version in stdouts(&inventory, ". /etc/os-release; echo $VERSION_ID") {
        assert_eq!(version, "13");
    }
    // The running lab keeps its release: growing it with another is refused.
    let mixed = pgha(&["lab", "up", "--release", "bookworm", "--nodes", "4"]);
    assert!(!mixed.status.success());
    assert!(
        String::from_utf8_lossy(&mixed.stderr).contains("Debian 13 (trixie)"),
        "{}",
        String::from_utf8_lossy(&mixed.stderr)
    );

    // 1. PostgreSQL 15 is Debian 12's: the preflight refuses before anything is installed.
    let (_wrong_dir, wrong) = shipped_inventory("lab.yml");
    let refused = deploy_result(&wrong, &[]);
    assert_eq!(refused["success"], false, "{refused:#}");
    let text = refused.to_string();
    assert!(
        text.contains("Debian 13 (trixie)")
            && text.contains("PostgreSQL of Debian 12 (bookworm)")
            && text.contains("streaming replication needs one PostgreSQL major"),
        "the refusal names both releases and why: {refused:#}"
    );
    assert_eq!(changed_tasks(&refused), 0, "{refused:#}");
    for installed in stdouts(
        &inventory,
        "dpkg-query -W -f='${Status}' postgresql-15 etcd-server 2>/dev/null | grep -c 'install ok' || true",
    ) {
        assert_eq!(installed, "0", "a refused deploy installed packages");
    }

    // 2. The deploy on trixie's components.
    let deployed = deploy_result(&inventory, &[]);
    assert_eq!(deployed["success"], true, "{deployed:#}");
    eprintln!(
        "first deploy on Debian 13: {} ms",
        deployed["duration_ms"].as_u64().unwrap_or(0)
    );
    let versions = stdouts(
        &inventory,
        "etcd --version | sed -n 's/^etcd Version: //p'; \
         haproxy -v | sed -n 's/^HAProxy version \\([0-9.]*\\).*/\\1/p'; \
         keepalived --version 2>&1 | sed -n 's/^Keepalived v\\([0-9.]*\\).*/\\1/p'; \
         /opt/pgha/patroni/bin/python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'; \
         su postgres -c \"psql -Atc 'show server_version_num'\"",
    );
    for node in &versions {
        let lines: Vec<&str> = node.lines().collect();
        assert_eq!(lines.len(), 5, "{node}");
        assert!(lines[0].starts_with("3.5."), "etcd {node}");
        assert!(lines[1].starts_with("3.0."), "HAProxy {node}");
        assert!(lines[2].starts_with("2.3."), "keepalived {node}");
        assert_eq!(lines[3], "3.13", "Patroni's Python {node}");
        assert!(lines[4].starts_with("17"), "PostgreSQL {node}");
    }
    // The files pgha rendered, checked by the programs that read them, in the version trixie
    // ships (`-c`/`--config-test` parse only; the running services are not touched).
    stdouts(
        &inventory,
        "haproxy -c -q -f /etc/haproxy/haproxy.cfg && keepalived --config-test -f /etc/keepalived/keepalived.conf",
    );
    // Each Patroni talks to its own node's etcd member (its journal names the member it
    // selected), not one picked at random that may be on the node that dies next.
    for node in stdouts(
        &inventory,
        "sed -n 's/^  connect_address: \\(.*\\):[0-9]*$/\\1/p' /etc/patroni/patroni.yml | head -1; \
         journalctl -u patroni --no-pager -o cat | sed -n 's|.*Selected new etcd server https://\\(.*\\):[0-9]*$|\\1|p' | tail -1",
    ) {
        let lines: Vec<&str> = node.lines().collect();
        assert_eq!(lines.len(), 2, "own address and selected etcd member: {node:?}");
        assert_eq!(lines[0], lines[1], "Patroni selected another node's etcd member: {node:?}");
    }
    // The cost of that order: Patroni asks its first member for etcd's version when it starts.
    // On a replica with its etcd member stopped, a restarted Patroni exits and systemd starts
    // it again; once the member is back, it comes up and replicates.
    let roles_before_restart = patroni_roles(&inventory);
    let replica = node_in_role(&roles_before_restart, "replica");
    stdout_on(&inventory, &replica, "systemctl stop etcd");
    let restarts = stdout_on(
        &inventory,
        &replica,
        "systemctl restart patroni; sleep 15; systemctl show -p NRestarts --value patroni",
    );
    let restarts: u32 = restarts
        .parse()
        .unwrap_or_else(|_| panic!("NRestarts: {restarts:?}"));
    stdout_on(&inventory, &replica, "systemctl start etcd");
    assert!(
        restarts >= 1,
        "Patroni on {replica} started without its own etcd member (no restart in 15 s)"
    );
    common::eventually(
        "the replica's Patroni back",
        std::time::Duration::from_secs(120),
        || {
            let roles = patroni_roles(&inventory);
            if roles == roles_before_restart {
                Ok(())
            } else {
                Err(format!("{roles:?}"))
            }
        },
    );

    // 3. Verified, and a second deploy changes nothing.
    let verified: serde_json::Value =
        serde_json::from_str(&pgha_ok(&["verify", "-i", inventory_arg, "--json"])).unwrap();
    assert_eq!(verified["success"], true, "{verified:#}");
    let again = deploy_result(&inventory, &[]);
    assert_eq!(again["success"], true, "{again:#}");
    assert_eq!(
        changed_tasks(&again),
        0,
        "the second deploy changed: {again:#}"
    );
    eprintln!(
        "no-op deploy on Debian 13: {} ms",
        again["duration_ms"].as_u64().unwrap_or(0)
    );

    // 4. The drills.
    for scenario in ["switchover", "kill-primary"] {
        let output = pgha(&["drill", "-i", inventory_arg, scenario, "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("`pgha drill {scenario}` printed no JSON ({error})"));
        eprintln!("{scenario} on Debian 13: {}", report["summary"]);
        assert!(report["error"].is_null(), "{scenario}: {report:#}");
        let run = &report["runs"][0];
        assert_eq!(run["acknowledged_writes_lost"], 0, "{scenario}: {run:#}");
        assert_eq!(run["double_primary_moments"], 0, "{scenario}: {run:#}");
        assert_eq!(run["failover"], true, "{scenario}: {run:#}");
        assert_ne!(run["new_primary"], run["old_primary"], "{scenario}");
        assert!(
            run["outage_ms"].as_u64().unwrap_or(0) > 0,
            "{scenario}: a failover without a failed write is not credible: {run:#}"
        );
        assert_eq!(report["summary"]["passed"], true, "{scenario}: {report:#}");
    }

    // 5. The corroborated fast path, turned on with the inventory editor: the agents end the
    // dead primary's leadership themselves (their journals say so), and the drill's verdict,
    // read against the fast path's model, passes.
    // With the timings README recommends for it (`loop_wait: 2`, `retry_timeout: 5`), applied
    // by the same deploy through Patroni's dynamic configuration.
    for (key, value) in [
        ("cluster.corroborated_failover", "true"),
        ("cluster.patroni.loop_wait", "2"),
        ("cluster.patroni.retry_timeout", "5"),
    ] {
        pgha_ok(&["inventory", "set", "-i", inventory_arg, key, value]);
    }
    let turned_on = deploy_result(&inventory, &[]);
    assert_eq!(turned_on["success"], true, "{turned_on:#}");
    // The agents probe the leader's PostgreSQL four times a second each; a probe that left
    // after the `S` of its `SSLRequest` made PostgreSQL log "could not accept SSL connection:
    // EOF detected" every time. Each now finishes the handshake and closes it.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(
        count_everywhere(
            &inventory,
            "journalctl -u pgha-agent -o cat | grep -c 'corroborated fast path on' || true"
        ) >= 2,
        "the agents run the fast path (and so probe the leader's PostgreSQL)"
    );
    let noise = count_everywhere(
        &inventory,
        "journalctl -u patroni --since '-4s' -o cat | grep -c 'could not accept SSL connection\\|could not receive data from client\\|SSL error' || true",
    );
    assert_eq!(
        noise, 0,
        "the fast path's probes fill the leader's PostgreSQL log"
    );
    // A live primary behind a slow link (300 ms each way, `pgha lab impair`) for 15 s: its
    // probes answer late, its lease keeps being refreshed; no agent may end its leadership.
    let roles = || patroni_roles(&inventory);
    let before = roles();
    let primary = node_in_role(&before, "primary");
    pgha_ok(&["lab", "impair", &primary, "--delay", "300ms"]);
    std::thread::sleep(std::time::Duration::from_secs(15));
    pgha_ok(&["lab", "unimpair", &primary]);
    std::thread::sleep(std::time::Duration::from_secs(8));
    assert_eq!(
        roles(),
        before,
        "300 ms each way on {primary}'s link changed the roles or the timeline"
    );
    assert_eq!(
        count_everywhere(
            &inventory,
            "journalctl -u pgha-agent -o cat | grep -c 'fast path: deleted the leader key' || true",
        ),
        0,
        "an agent deleted the key of a live primary behind a slow link"
    );
    let output = pgha(&["drill", "-i", inventory_arg, "kill-primary", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("the fast-path drill printed no JSON ({error})"));
    eprintln!("kill-primary with the fast path: {}", report["summary"]);
    let run = &report["runs"][0];
    assert_eq!(run["acknowledged_writes_lost"], 0, "{run:#}");
    assert_eq!(run["double_primary_moments"], 0, "{run:#}");
    assert_eq!(report["summary"]["passed"], true, "{report:#}");
    let deletes = count_everywhere(
        &inventory,
        "journalctl -u pgha-agent -o cat | grep -c 'fast path: deleted the leader key' || true",
    );
    assert_eq!(
        deletes, 1,
        "exactly one agent deletes the dead leader's key"
    );
}
