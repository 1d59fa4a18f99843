//! End-to-end: a real 3-node lab (systemd, sshd, etcd, PostgreSQL, Patroni, HAProxy,
//! Keepalived), deployed by `pgha deploy`, read like a spec:
//!
//! 0. a node that already runs PostgreSQL's own `main` cluster holding a table is refused
//!    (running: by the port preflight, naming the unit; stopped: by the default-data step,
//!    which cannot prove it empty), and the table is still there;
//! 1. a first deploy interrupted with Ctrl-C part-way converges when re-run, and removes a
//!    `policy-rc.d` an earlier interrupted run left (recognised by its marker line);
//! 2. a row written through VIP:5000 lands on the primary and is read back through VIP:5001
//!    from a replica;
//! 3. a second deploy reports 0 changed and restarts no service (unit start times unchanged);
//!    a run that fails after changing haproxy.cfg is followed by one that reloads HAProxy
//!    (counted in HAProxy's journal) although nothing is left to change; a changed etcd
//!    configuration restarts the members one at a time; a narrowed `client_cidrs` refuses this
//!    machine on every node as soon as the deploy returns, and `--diff` only names the file
//!    that holds secrets (an old password on the host is not printed);
//! 4. `pgha verify` passes, and fails naming the assertion when HAProxy on one node or a
//!    replica's Patroni is stopped, or a setting waits for a restart (Patroni's flag and the
//!    settings PostgreSQL runs); `pgha switchover` moves the primary, checked after; a raised
//!    `max_connections` is rolled out replicas first, the primary via switchover, and a lowered
//!    one primary first, in place, until every member runs it;
//! 5. the same inventory deployed as the non-root `deploy` user (sudo) also changes nothing;
//!    certificates removed from the CA folder are renewed by a deploy, served on every TLS
//!    port, with no restart of etcd, Patroni or PostgreSQL;
//! 6. a node killed with `pgha lab kill` makes the deploy fail on that node only, and after
//!    `pgha lab start` a re-run converges with every member streaming again;
//! 7. a copy of the inventory with a new secrets file (so a new CA) is refused by the
//!    preflight, as is a foreign `initialize` key in etcd by the DCS preflight, changing nothing;
//! 8. hostile inventory values (a shell command in `patroni_version`, a keepalived line in
//!    `vip_interface`, a YAML line in a parameter name, `WAL_LEVEL`) exit 2 before any login.
//!
//! Needs root. One test function: only one lab can exist at a time.

mod common;

use common::{
    eventually, exec_everywhere, is_root, lab_inventory, pgha, pgha_ok, superuser_password, Lab,
};

use rustls::pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const VIP: &str = "10.231.0.100";

/// Every secret of the cluster beside `inventory`, to prove none is ever printed. A secrets
/// file that cannot be read fails the test: an empty list would prove nothing.
fn secret_values(inventory: &Path) -> Vec<String> {
    let path = inventory.with_file_name(format!(
        "{}.secrets.yml",
        inventory.file_stem().unwrap().to_str().unwrap()
    ));
    let secrets = pgha::inventory::Secrets::load(&path)
        .unwrap_or_else(|error| panic!("cannot read the secrets `{}`: {error:#}", path.display()));
    secrets.values().map(str::to_string).to_vec()
}

fn assert_no_secret(inventory: &Path, output: &Output) {
    for stream in [&output.stdout, &output.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains("PRIVATE KEY"),
            "a private key was printed"
        );
    }
    for secret in secret_values(inventory) {
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains(&secret),
            "a secret was printed on stdout"
        );
        assert!(
            !String::from_utf8_lossy(&output.stderr).contains(&secret),
            "a secret was printed on stderr"
        );
    }
}

fn deploy_json(inventory: &Path) -> serde_json::Value {
    let output = pgha(&["deploy", "-i", inventory.to_str().unwrap(), "--json"]);
    assert_no_secret(inventory, &output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "deploy printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    json
}

fn changed(result: &serde_json::Value) -> u64 {
    result["hosts"]
        .as_object()
        .unwrap()
        .values()
        .map(|host| host["changed"].as_u64().unwrap())
        .sum()
}

/// curl from this machine with no certificate of the cluster; the body, or why it failed
/// (an HTTP error status counts as a failure).
fn curl_outsider(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5"])
        .args(args)
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let error = String::from_utf8_lossy(&output.stderr).into_owned();
    // A refusal is the service's own answer; a port nothing listens on, or no answer at all,
    // would prove nothing about it.
    assert!(
        !error.contains("Failed to connect") && !error.contains("timed out"),
        "curl {args:?} reached no service: {error}"
    );
    Err(error)
}

/// Run SQL through `VIP:port` with psql.
fn psql(port: u16, password: &str, sql: &str) -> Result<String, String> {
    psql_at(VIP, port, password, sql)
}

/// `psql` from this machine to `host:port`.
fn psql_at(host: &str, port: u16, password: &str, sql: &str) -> Result<String, String> {
    common::psql_at(host, port, password, 3, sql)
}

/// `unit -> ActiveEnterTimestampMonotonic` on every node.
fn start_times(inventory: &Path) -> serde_json::Value {
    exec_everywhere(
        inventory,
        "systemctl show -p Id,ActiveEnterTimestampMonotonic etcd patroni haproxy keepalived",
    )
}

fn verify(inventory: &Path) -> serde_json::Value {
    let output = pgha(&["verify", "-i", inventory.to_str().unwrap(), "--json"]);
    assert_no_secret(inventory, &output);
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("verify printed no JSON ({error})"))
}

/// Wait until `pgha verify` passes, failing with the checks that still fail.
fn verify_eventually(inventory: &Path, what: &str, timeout: Duration) {
    eventually(what, timeout, || {
        let result = verify(inventory);
        if result["success"] == true {
            Ok(())
        } else {
            Err(format!("{:?}", failed_checks(&result)))
        }
    });
}

/// The certificate each `tls.*` check of a verify result saw (its fingerprint).
fn served_fingerprints(result: &serde_json::Value) -> BTreeMap<String, String> {
    result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["name"].as_str().unwrap().starts_with("tls."))
        .map(|check| {
            let evidence = check["evidence"].as_str().unwrap();
            let fingerprint = evidence
                .split("certificate ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no certificate in {evidence}"));
            (
                check["name"].as_str().unwrap().to_string(),
                fingerprint.to_string(),
            )
        })
        .collect()
}

fn failed_checks(result: &serde_json::Value) -> Vec<String> {
    result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["pass"] == false)
        .map(|check| check["name"].as_str().unwrap().to_string())
        .collect()
}

/// Sleep into the next whole second and return it (Unix time): a boundary that no SSH login
/// before the call and none after it can share with what happens in between.
fn next_whole_second() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(Duration::from_millis(
        1_100 - u64::from(now.subsec_millis()),
    ));
    now.as_secs() + 1
}

/// The SSH logins each node's sshd accepted in `[since, until)` (Unix seconds), read from the
/// node's journal afterwards. Fails the test when a node cannot be asked.
fn accepted_logins(inventory: &Path, since: u64, until: u64) -> BTreeMap<String, usize> {
    let command = format!(
        "journalctl -u ssh -o cat --since @{since} --until @{until} | grep -c 'Accepted publickey' || true"
    );
    exec_everywhere(inventory, &command)
        .as_array()
        .unwrap()
        .iter()
        .map(|host| {
            let name = host["host"].as_str().unwrap().to_string();
            let count = host["stdout"]
                .as_str()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or_else(|| panic!("no login count from {name}: {host}"));
            (name, count)
        })
        .collect()
}

/// Run a shell command as root on one node.
fn exec(inventory: &Path, node: &str, command: &str) {
    pgha_ok(&[
        "exec",
        "-i",
        inventory.to_str().unwrap(),
        "--limit",
        node,
        "--",
        command,
    ]);
}

/// A replica: the last member that is not the leader, from `pgha status --json`.
fn second_replica(inventory: &Path) -> String {
    let status: serde_json::Value = serde_json::from_str(&pgha_ok(&[
        "status",
        "-i",
        inventory.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|member| member["role"] != "leader")
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

fn all_members_streaming(password: &str) -> Result<(), String> {
    let count = psql(
        5000,
        password,
        "select count(*) from pg_stat_replication where state = 'streaming'",
    )?;
    if count == "2" {
        Ok(())
    } else {
        Err(format!("{count} replicas streaming"))
    }
}

#[test]
fn deploy_converges_routes_and_is_idempotent() {
    assert!(
        is_root(),
        "the end-to-end test needs root (it runs the lab)"
    );
    let (dir, inventory) = lab_inventory();
    let inventory_arg = inventory.to_str().unwrap();

    // A clean slate: fresh nodes from the cached base.
    pgha_ok(&["lab", "down"]);
    let _lab = Lab;
    pgha_ok(&["lab", "up", "--nodes", "3"]);

    // 0. A reused host: node3 already runs PostgreSQL's own `main` cluster, holding a table.
    //    pgha refuses it, running (the port preflight names its unit) and stopped (the
    //    default-data step cannot prove it empty), and the table is still there.
    exec(
        &inventory,
        "node3",
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends postgresql-15 >/dev/null && su postgres -c \"psql -qc 'create table keepme (x int); insert into keepme values (42)'\"",
    );
    let refused = |expected: &[&str]| {
        let output = pgha(&["deploy", "-i", inventory_arg, "--limit", "node3"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success(),
            "a host with a foreign `main` cluster was deployed:\n{text}"
        );
        for part in expected {
            assert!(
                text.contains(part),
                "the refusal does not say `{part}`:\n{text}"
            );
        }
    };
    refused(&[
        "port 5432 is used by postgres",
        "unit postgresql@15-main.service",
    ]);
    exec(&inventory, "node3", "pg_ctlcluster 15 main stop");
    refused(&[
        "pgha did not create and cannot prove empty",
        "NextOID",
        "--force-remove-stray-data",
    ]);
    let kept: serde_json::Value = serde_json::from_str(&pgha_ok(&[
        "exec",
        "-i",
        inventory_arg,
        "--limit",
        "node3",
        "--json",
        "--",
        "pg_ctlcluster 15 main start && su postgres -c \"psql -Atc 'select x from keepme'\"",
    ]))
    .unwrap();
    assert_eq!(
        kept[0]["stdout"].as_str().map(str::trim),
        Some("42"),
        "the foreign cluster's table is gone: {kept}"
    );
    // Its owner moves it away; then the deploy may go on.
    exec(&inventory, "node3", "pg_dropcluster --stop 15 main");

    // A `policy-rc.d` an interrupted pgha run left behind (its marker line) is recognised as
    // pgha's: replaced while installing and removed afterwards, not kept as a foreign one.
    exec(
        &inventory,
        "node1",
        "printf '#!/bin/sh\\n# pgha: no service starts while pgha installs packages\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d",
    );

    // 1. A first deploy cut off part-way (Ctrl-C) converges when run again.
    let mut interrupted = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(["deploy", "-i", inventory_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(25));
    // SIGINT, as a terminal's Ctrl-C would send.
    let _ = Command::new("kill")
        .args(["-INT", &interrupted.id().to_string()])
        .status();
    let _ = interrupted.wait();
    let first = deploy_json(&inventory);
    assert_eq!(
        first["success"],
        true,
        "deploy after an interrupted one failed: {}\n{first:#}",
        common::journal_tails(&inventory, "etcd", 40)
    );
    let policies = exec_everywhere(&inventory, "test ! -e /usr/sbin/policy-rc.d && echo none");
    for host in policies.as_array().unwrap() {
        assert_eq!(
            host["stdout"].as_str().map(str::trim),
            Some("none"),
            "a policy-rc.d was left behind: {host}"
        );
    }
    // The deploy ends by checking that exactly one node holds the VIP, and names it.
    let holder = first["vip_holder"].as_str().unwrap_or_default().to_string();
    assert!(
        ["node1", "node2", "node3"].contains(&holder.as_str()),
        "no single VIP holder reported: {first:#}"
    );

    // 2. Writes through VIP:5000 reach the primary; reads through VIP:5001 come from a replica.
    let password = superuser_password(&inventory);
    let marker = format!("e2e-{}", std::process::id());
    psql(
        5000,
        &password,
        "create table if not exists pgha_e2e (id text primary key)",
    )
    .unwrap();
    psql(
        5000,
        &password,
        &format!("insert into pgha_e2e values ('{marker}')"),
    )
    .unwrap();
    assert_eq!(
        psql(5000, &password, "select pg_is_in_recovery()").unwrap(),
        "f",
        "VIP:5000 must land on the primary"
    );
    let on_replica = eventually(
        "the row shows up through VIP:5001",
        Duration::from_secs(20),
        || {
            let recovery = psql(5001, &password, "select pg_is_in_recovery()")?;
            let rows = psql(
                5001,
                &password,
                &format!("select count(*) from pgha_e2e where id = '{marker}'"),
            )?;
            if recovery == "t" && rows == "1" {
                Ok(true)
            } else {
                Err(format!("recovery={recovery} rows={rows}"))
            }
        },
    );
    assert!(on_replica);
    eventually("both replicas stream", Duration::from_secs(60), || {
        all_members_streaming(&password)
    });

    // 3. A second deploy changes nothing and restarts nothing.
    let before = start_times(&inventory);
    let since = next_whole_second();
    let second = deploy_json(&inventory);
    let until = next_whole_second();
    assert_eq!(second["success"], true, "{second:#}");
    assert_eq!(
        changed(&second),
        0,
        "a converged cluster must report 0 changed: {:#}",
        second["changes"]
    );
    // One SSH connection per host, counted by each node's sshd (its journal), not by pgha.
    let logins = accepted_logins(&inventory, since, until);
    assert_eq!(
        logins,
        ["node1", "node2", "node3"]
            .into_iter()
            .map(|node| (node.to_string(), 1))
            .collect::<BTreeMap<_, _>>(),
        "each node's sshd must accept exactly one login during the no-op deploy"
    );
    let after = start_times(&inventory);
    assert_eq!(before, after, "a no-op deploy must restart no service");

    // A pgha `policy-rc.d` left on a node with nothing to install is removed too (it would
    // keep blocking every later package's services).
    exec(
        &inventory,
        "node2",
        "printf '#!/bin/sh\\n# pgha: no service starts while pgha installs packages\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d",
    );
    let cleaned = deploy_json(&inventory);
    assert_eq!(cleaned["success"], true, "{cleaned:#}");
    assert_eq!(
        changed(&cleaned),
        1,
        "only the leftover goes: {:#}",
        cleaned["changes"]
    );
    let policies = exec_everywhere(&inventory, "test ! -e /usr/sbin/policy-rc.d && echo none");
    for host in policies.as_array().unwrap() {
        assert_eq!(
            host["stdout"].as_str().map(str::trim),
            Some("none"),
            "{host}"
        );
    }

    // What a `pg_createcluster` cut off part-way during pgha's own install leaves: pgha's
    // claim, a configuration directory without its `postgresql.conf`, an unfinished data
    // directory. `pg_dropcluster` does not list such a cluster and would leave its data
    // directory behind (or, as CI once saw after the Ctrl-C above, fail outright when the
    // configuration directory was gone by then); the deploy removes the leftovers itself.
    exec(
        &inventory,
        "node2",
        "mkdir -p /etc/postgresql/15/main /var/lib/postgresql/15/main /var/lib/pgha/created && echo 15 > /var/lib/postgresql/15/main/PG_VERSION && : > /var/lib/pgha/created/postgresql-15-main",
    );
    let leftovers = deploy_json(&inventory);
    assert_eq!(leftovers["success"], true, "{leftovers:#}");
    assert_eq!(
        changed(&leftovers),
        1,
        "only the leftovers go: {:#}",
        leftovers["changes"]
    );
    let gone = exec_everywhere(
        &inventory,
        "for p in /etc/postgresql/15/main /var/lib/postgresql/15/main /var/lib/pgha/created/postgresql-15-main; do [ -e $p ] && echo $p; done; true",
    );
    for host in gone.as_array().unwrap() {
        assert_eq!(host["stdout"].as_str().map(str::trim), Some(""), "{host}");
    }

    // Hostile inventory values are refused with exit 2 before any host is contacted: no
    // login in any node's sshd journal, and the injected command left no trace.
    let lab_text = std::fs::read_to_string(&inventory).unwrap();
    let hostile = [
        (
            "cluster.patroni_version",
            lab_text.replace(
                "  postgres_version: 15\n",
                "  postgres_version: 15\n  patroni_version: \"4.1.5; touch /tmp/pgha-pwned\"\n",
            ),
        ),
        (
            "cluster.vip_interface",
            lab_text.replace(
                "vip_interface: eth0",
                "vip_interface: \"eth0\\n    notify /tmp/pgha-pwned\"",
            ),
        ),
        (
            "cluster.postgresql.parameters",
            lab_text.replace(
                "parameters: {max_connections: 100}",
                "parameters: {\"max_connections: 100\\n  archive_command\": \"touch /tmp/pgha-pwned\"}",
            ),
        ),
        (
            "cluster.postgresql.parameters.WAL_LEVEL",
            lab_text.replace(
                "parameters: {max_connections: 100}",
                "parameters: {WAL_LEVEL: minimal}",
            ),
        ),
    ];
    let hostile_path = dir.path().join("hostile.yml");
    let since = next_whole_second();
    for (place, text) in &hostile {
        assert_ne!(text, &lab_text, "the attempt on `{place}` was not written");
        std::fs::write(&hostile_path, text).unwrap();
        let output = pgha(&["deploy", "-i", hostile_path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "a hostile `{place}` must be refused with exit 2: {stderr}"
        );
        assert!(
            stderr.contains(place),
            "the refusal does not name `{place}`: {stderr}"
        );
    }
    let until = next_whole_second();
    let logins = accepted_logins(&inventory, since, until);
    assert!(
        logins.values().all(|count| *count == 0),
        "a refused inventory must contact no host; sshd accepted: {logins:?}"
    );
    let traces = exec_everywhere(&inventory, "test ! -e /tmp/pgha-pwned && echo clean");
    for host in traces.as_array().unwrap() {
        assert_eq!(
            host["stdout"].as_str().map(str::trim),
            Some("clean"),
            "{host}"
        );
    }

    // A run that fails after changing haproxy.cfg (before its reload) is followed by one that
    // reloads HAProxy although it finds nothing left to change; HAProxy's journal counts the
    // reloads. The deploy then puts the inventory's haproxy.cfg back.
    let reloads = |node: &str| -> usize {
        let output: serde_json::Value = serde_json::from_str(&pgha_ok(&[
            "exec",
            "-i",
            inventory_arg,
            "--limit",
            node,
            "--json",
            "--",
            "journalctl -u haproxy -o cat | grep -c '^Reloaded' || true",
        ]))
        .unwrap();
        output[0]["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let cut_playbook = dir.path().join("cut-reload.yml");
    std::fs::write(
        &cut_playbook,
        r#"- name: a haproxy change whose reload is cut off
  hosts: node1
  tasks:
    - name: haproxy.cfg changes
      command:
        cmd: "grep -q '^    timeout check 3s$' /etc/haproxy/haproxy.cfg && sed -i 's/^    timeout check 3s$/    timeout check 2900ms/' /etc/haproxy/haproxy.cfg && echo changed || true"
        changed_when: "'changed' in stdout"
      notify: reload haproxy
    - name: a later task fails while the flag file exists
      command: {cmd: "test ! -e /run/pgha-test-fail", changed_when: false}
  handlers:
    - name: reload haproxy
      service: {name: haproxy, state: reloaded}
"#,
    )
    .unwrap();
    let before = reloads("node1");
    exec(&inventory, "node1", "touch /run/pgha-test-fail");
    let failed = pgha(&["run", "-i", inventory_arg, cut_playbook.to_str().unwrap()]);
    assert!(!failed.status.success(), "the cut run must fail");
    assert_eq!(reloads("node1"), before, "the failed run reloaded HAProxy");
    exec(&inventory, "node1", "rm -f /run/pgha-test-fail");
    let owed = pgha_ok(&[
        "run",
        "-i",
        inventory_arg,
        cut_playbook.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        reloads("node1"),
        before + 1,
        "the next run did not reload HAProxy for the change the failed run made: {owed}"
    );
    let restored = deploy_json(&inventory);
    assert_eq!(restored["success"], true, "{restored:#}");
    assert_eq!(
        reloads("node1"),
        before + 2,
        "the deploy did not reload the restored haproxy.cfg"
    );
    assert_eq!(changed(&deploy_json(&inventory)), 0);

    // A member running another configuration than the deploy's is restarted, one at a time:
    // each member stops only after the one before it is running again (systemd's monotonic
    // timestamps, one kernel clock for every lab node). Here every member's record of what it
    // started with says `heartbeat-interval: 120` (as an older template would have had it).
    exec_everywhere(
        &inventory,
        "sed -i 's/^heartbeat-interval: 100$/heartbeat-interval: 120/' /etc/etcd/pgha.conf.yml /etc/etcd/pgha.conf.yml.applied",
    );
    let rolled = deploy_json(&inventory);
    assert_eq!(rolled["success"], true, "{rolled:#}");
    let stamps = exec_everywhere(
        &inventory,
        "systemctl show etcd -p ActiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic",
    );
    let mut windows: Vec<(u64, u64, String)> = stamps
        .as_array()
        .unwrap()
        .iter()
        .map(|host| {
            let stdout = host["stdout"].as_str().unwrap();
            let value = |key: &str| -> u64 {
                stdout
                    .lines()
                    .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no {key} in {host}"))
            };
            (
                value("ActiveExitTimestampMonotonic"),
                value("ActiveEnterTimestampMonotonic"),
                host["host"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    windows.sort();
    for pair in windows.windows(2) {
        let ((_, previous_up, previous), (next_down, _, next)) = (&pair[0], &pair[1]);
        assert!(
            next_down > previous_up,
            "etcd on {next} stopped before {previous} was running again: {windows:?}"
        );
    }

    // A narrowed client_cidrs is in force when the deploy returns: this machine (10.231.0.1,
    // outside the new network) is refused by every node's PostgreSQL and every HAProxy at
    // once, and admitted again at once when the network is widened back.
    let password = superuser_password(&inventory);
    std::fs::write(
        &inventory,
        lab_text.replace(
            "client_cidrs: [10.231.0.0/24]",
            "client_cidrs: [10.231.0.200/32]",
        ),
    )
    .unwrap();
    // A file holding secrets is only named in --diff/--json, so a password the mask does not
    // know (an old one still on the host) is not printed either.
    exec(
        &inventory,
        "node1",
        "echo '# an old password: pgha-old-secret-4711' >> /etc/patroni/patroni.yml",
    );
    let planned = pgha(&["deploy", "-i", inventory_arg, "--check", "--diff", "--json"]);
    let planned_text = format!(
        "{}{}",
        String::from_utf8_lossy(&planned.stdout),
        String::from_utf8_lossy(&planned.stderr)
    );
    assert!(
        planned_text.contains("/etc/patroni/patroni.yml")
            && planned_text.contains("secret file changed; its contents are not shown"),
        "{planned_text}"
    );
    assert!(
        !planned_text.contains("pgha-old-secret-4711"),
        "{planned_text}"
    );
    assert_no_secret(&inventory, &planned);
    let narrowed = deploy_json(&inventory);
    std::fs::write(&inventory, &lab_text).unwrap();
    assert_eq!(narrowed["success"], true, "{narrowed:#}");
    for address in ["10.231.0.11", "10.231.0.12", "10.231.0.13"] {
        let refused = psql_at(address, 5432, &password, "select 1").expect_err("admitted");
        assert!(
            refused.contains("no pg_hba.conf entry"),
            "{address} right after the narrowing deploy: {refused}"
        );
    }
    // Nor does any HAProxy let it through: PostgreSQL would see the HAProxy node's address,
    // which pg_hba admits for every user, so the frontends refuse it themselves.
    for (host, port) in [
        (VIP, 5000),
        (VIP, 5001),
        ("10.231.0.12", 5000),
        ("10.231.0.13", 5001),
    ] {
        let through = psql_at(host, port, &password, "select 1");
        assert!(
            through.is_err(),
            "{host}:{port} let a client outside client_cidrs through: {through:?}"
        );
    }
    // From outside `client_cidrs` (this machine, now) the control plane answers no one
    // without the cluster's certificate: etcd neither in plain HTTP nor over TLS without a
    // client certificate, Patroni's API not in plain HTTP, PostgreSQL not without TLS.
    for address in ["10.231.0.11", "10.231.0.12", "10.231.0.13"] {
        for url in [
            format!("http://{address}:2379/v3/kv/put"),
            format!("https://{address}:2379/v3/kv/put"),
        ] {
            let written = curl_outsider(&[
                "-k",
                "-X",
                "POST",
                "-d",
                r#"{"key": "L3NlcnZpY2UvbGFiL2xlYWRlcg==", "value": "aW50cnVkZXI="}"#,
                &url,
            ]);
            assert!(
                written.is_err(),
                "{url} took a write from an outsider: {written:?}"
            );
        }
        let deleted = curl_outsider(&[
            "-k",
            "-X",
            "POST",
            "-d",
            r#"{"key": "L3NlcnZpY2UvbGFiL2xlYWRlcg=="}"#,
            &format!("https://{address}:2379/v3/kv/deleterange"),
        ]);
        assert!(
            deleted.is_err(),
            "{address}: etcd deleted for an outsider: {deleted:?}"
        );
        let plain = curl_outsider(&[&format!("http://{address}:8008/cluster")]);
        assert!(
            plain.is_err(),
            "{address}: Patroni answered plain HTTP: {plain:?}"
        );
        let anonymous = curl_outsider(&["-k", &format!("https://{address}:8008/cluster")]);
        assert!(
            anonymous.is_err(),
            "{address}: Patroni answered without a certificate: {anonymous:?}"
        );
        let output = std::process::Command::new("psql")
            .args(["-XAtq", "-c", "select 1"])
            .env("PGHOST", address)
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .env("PGPASSWORD", &password)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "3")
            .output()
            .unwrap();
        let refused = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && refused.contains("no encryption"),
            "{address}: sslmode=disable was not refused: {refused}"
        );
    }
    let widened = deploy_json(&inventory);
    assert_eq!(widened["success"], true, "{widened:#}");
    // Inside `client_cidrs`, an application connects with `verify-full` and the cluster CA
    // (`<secrets>.tls/ca.crt`): through the VIP, whichever node serves it; a client that does
    // not trust the cluster CA is refused by its own TLS check.
    let ca = inventory.parent().unwrap().join("lab.secrets.tls/ca.crt");
    for port in [5000, 5001] {
        for (root, works) in [
            (ca.display().to_string(), true),
            ("/etc/ssl/certs/ca-certificates.crt".to_string(), false),
        ] {
            let output = std::process::Command::new("psql")
                .args(["-XAtq", "-c", "select 1"])
                .env("PGHOST", VIP)
                .env("PGPORT", port.to_string())
                .env("PGUSER", "postgres")
                .env("PGDATABASE", "postgres")
                .env("PGPASSWORD", &password)
                .env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", &root)
                .env("PGCONNECT_TIMEOUT", "3")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.success(),
                works,
                "VIP:{port} with verify-full and sslrootcert={root}: {stderr}"
            );
            assert!(
                works || stderr.contains("certificate verify failed"),
                "VIP:{port} refused for another reason than the server's certificate: {stderr}"
            );
        }
    }
    for address in ["10.231.0.11", "10.231.0.12", "10.231.0.13"] {
        assert_eq!(
            psql_at(address, 5432, &password, "select 1").as_deref(),
            Ok("1"),
            "{address} right after the widening deploy"
        );
    }
    for port in [5000, 5001] {
        assert_eq!(
            psql_at(VIP, port, &password, "select 1").as_deref(),
            Ok("1"),
            "VIP:{port} right after the widening deploy"
        );
    }

    // A VIP claimed by a second node (a duplicate address) fails the deploy, naming both.
    let holder = second["vip_holder"].as_str().unwrap().to_string();
    let intruder = ["node1", "node2", "node3"]
        .into_iter()
        .find(|node| *node != holder)
        .unwrap();
    exec(
        &inventory,
        intruder,
        &format!("ip addr add {VIP}/32 dev eth0"),
    );
    let split = pgha(&["deploy", "-i", inventory.to_str().unwrap(), "--json"]);
    exec(
        &inventory,
        intruder,
        &format!("ip addr del {VIP}/32 dev eth0"),
    );
    // This machine may have learnt the intruder's MAC for the VIP meanwhile.
    let _ = Command::new("ip")
        .args(["neigh", "flush", "to", VIP])
        .status();
    let split: serde_json::Value = serde_json::from_slice(&split.stdout).unwrap();
    assert_eq!(split["success"], false, "{split:#}");
    let reason = split["stopped"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&holder) && reason.contains(intruder) && reason.contains("exactly one"),
        "{reason}"
    );
    assert_eq!(changed(&split), 0, "{:#}", split["changes"]);

    // `pgha verify` passes on the fresh cluster, and names what breaks.
    verify_eventually(
        &inventory,
        "verify passes once the duplicate VIP is gone",
        Duration::from_secs(60),
    );
    exec(&inventory, "node3", "systemctl stop haproxy");
    let broken = verify(&inventory);
    assert_eq!(broken["success"], false);
    let failed = failed_checks(&broken);
    assert!(
        failed.iter().any(|name| name == "routing.node3.write"),
        "stopped HAProxy must fail routing.node3.write: {failed:?}"
    );
    exec(&inventory, "node3", "systemctl start haproxy");
    let replica = second_replica(&inventory);
    exec(&inventory, &replica, "systemctl stop patroni");
    let broken = verify(&inventory);
    let failed = failed_checks(&broken);
    assert!(
        failed
            .iter()
            .any(|name| name == "patroni.replicas_streaming"),
        "a stopped replica must fail patroni.replicas_streaming: {failed:?}"
    );
    exec(&inventory, &replica, "systemctl start patroni");
    verify_eventually(&inventory, "verify passes again", Duration::from_secs(90));

    // A planned switchover: a new leader, routed by every HAProxy, the old primary streaming.
    let switched: serde_json::Value =
        serde_json::from_str(&pgha_ok(&["switchover", "-i", inventory_arg, "--json"])).unwrap();
    assert_ne!(switched["from"], switched["to"]);
    assert_eq!(
        psql(5000, &password, "select pg_is_in_recovery()").unwrap(),
        "f"
    );
    verify_eventually(
        &inventory,
        "verify passes after the switchover",
        Duration::from_secs(60),
    );

    // A parameter that needs a restart: patched into Patroni, replicas restarted first, the
    // primary only after a switchover; no blind restart, and then nothing left to do.
    let text = std::fs::read_to_string(&inventory)
        .unwrap()
        .replace("max_connections: 100", "max_connections: 150");
    std::fs::write(&inventory, text).unwrap();
    let restarted = deploy_json(&inventory);
    assert_eq!(restarted["success"], true, "{restarted:#}");
    assert_eq!(
        psql(5000, &password, "show max_connections").unwrap(),
        "150"
    );
    eventually(
        "replicas run with the new setting",
        Duration::from_secs(30),
        || {
            let value = psql(5001, &password, "show max_connections")?;
            if value == "150" {
                Ok(())
            } else {
                Err(value)
            }
        },
    );
    let after_restart = deploy_json(&inventory);
    assert_eq!(changed(&after_restart), 0, "{:#}", after_restart["changes"]);
    verify_eventually(
        &inventory,
        "verify passes after the rolling restart",
        Duration::from_secs(60),
    );

    // Lowering a hot-standby limit: a standby cannot run below its primary, so the primary
    // restarts first, in place, then the replicas; every member then runs the lower value.
    let text = std::fs::read_to_string(&inventory)
        .unwrap()
        .replace("max_connections: 150", "max_connections: 100");
    std::fs::write(&inventory, text).unwrap();
    let lowered = deploy_json(&inventory);
    assert_eq!(lowered["success"], true, "{lowered:#}");
    assert!(
        lowered.to_string().contains("(primary, in place)"),
        "a lowered max_connections must restart the primary first: {lowered:#}"
    );
    let running = exec_everywhere(
        &inventory,
        "runuser -u postgres -- psql -XAtc 'show max_connections'",
    );
    let values: Vec<&str> = running
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["stdout"].as_str().unwrap_or("?").trim())
        .collect();
    assert_eq!(values, ["100", "100", "100"], "{running:#}");
    let after_lowering = deploy_json(&inventory);
    assert_eq!(
        changed(&after_lowering),
        0,
        "{:#}",
        after_lowering["changes"]
    );
    verify_eventually(
        &inventory,
        "verify passes after lowering max_connections",
        Duration::from_secs(60),
    );

    // The configuration changed behind pgha's back: PostgreSQL keeps the old value until a
    // restart, and verify says so instead of reading Patroni's stored configuration alone.
    exec(
        &inventory,
        "node1",
        "/opt/pgha/patroni-*/bin/patronictl -c /etc/patroni/patroni.yml edit-config --force -p max_connections=130 >/dev/null",
    );
    eventually(
        "verify reports the pending restart",
        Duration::from_secs(30),
        || {
            let failed = failed_checks(&verify(&inventory));
            if failed
                .iter()
                .any(|name| name == "patroni.no_pending_restart")
            {
                Ok(())
            } else {
                Err(format!("failing: {failed:?}"))
            }
        },
    );
    let pending = failed_checks(&verify(&inventory));
    assert!(
        pending
            .iter()
            .any(|name| name.starts_with("postgresql.") && name.ends_with(".settings_in_effect")),
        "verify must compare the settings PostgreSQL runs: {pending:?}"
    );
    let restored = deploy_json(&inventory);
    assert_eq!(restored["success"], true, "{restored:#}");
    verify_eventually(
        &inventory,
        "verify passes once deploy put the inventory's value back",
        Duration::from_secs(60),
    );

    // 4. The same cluster through the non-root `deploy` user with sudo: still nothing to do.
    let as_deploy = dir.path().join("lab-as-deploy.yml");
    let text = std::fs::read_to_string(&inventory)
        .unwrap()
        .replace("user: root", "user: deploy");
    std::fs::write(&as_deploy, text).unwrap();
    std::fs::copy(
        dir.path().join("lab.secrets.yml"),
        dir.path().join("lab-as-deploy.secrets.yml"),
    )
    .unwrap();
    // The same cluster: the same CA and certificates.
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("lab.secrets.tls"))
        .arg(dir.path().join("lab-as-deploy.secrets.tls"))
        .status()
        .unwrap();
    assert!(copied.success());
    let via_sudo = deploy_json(&as_deploy);
    assert_eq!(via_sudo["success"], true, "{via_sudo:#}");
    assert_eq!(changed(&via_sudo), 0, "{:#}", via_sudo["changes"]);

    // 4b. Certificate rotation: certificates gone from the control machine's CA folder are
    //     issued anew, and the deploy puts them in force with reloads only: every TLS port
    //     (etcd client and peer, Patroni, PostgreSQL) serves the new certificate while no
    //     PostgreSQL, etcd or Patroni restarted.
    let tls_dir = dir.path().join("lab.secrets.tls");
    let served_before = served_fingerprints(&verify(&inventory));
    let units_before = exec_everywhere(
        &inventory,
        "systemctl show -p Id,ActiveEnterTimestampMonotonic,MainPID etcd patroni",
    );
    let postmasters = "runuser -u postgres -- psql -XAtc 'select pg_postmaster_start_time()'";
    let postmasters_before = exec_everywhere(&inventory, postmasters);
    for node in ["node1", "node2", "node3"] {
        std::fs::remove_file(tls_dir.join(format!("{node}.crt"))).unwrap();
    }
    // The new keys are named by --diff, never shown.
    let planned = pgha(&["deploy", "-i", inventory_arg, "--check", "--diff", "--json"]);
    assert_no_secret(&inventory, &planned);
    assert!(
        String::from_utf8_lossy(&planned.stdout).contains("/etc/pgha/tls/node.key"),
        "the rotation's check run names the new key"
    );
    let rotated = deploy_json(&inventory);
    assert_eq!(rotated["success"], true, "{rotated:#}");
    assert!(changed(&rotated) > 0, "{rotated:#}");
    verify_eventually(
        &inventory,
        "verify passes with the renewed certificates",
        Duration::from_secs(60),
    );
    let new: BTreeMap<String, String> = ["node1", "node2", "node3"]
        .into_iter()
        .map(|node| {
            let pem = std::fs::read(tls_dir.join(format!("{node}.crt"))).unwrap();
            let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
            (format!("tls.{node}."), pgha::tls::fingerprint(&der))
        })
        .collect();
    // etcd reads its certificate per handshake and HAProxy reloads at once, but Patroni
    // applies a reload (its API's certificate, PostgreSQL's SIGHUP) in its next loop, up to
    // `loop_wait` after the deploy returned: both old and new are valid meanwhile.
    let served_after = eventually(
        "every TLS port serves its node's new certificate",
        Duration::from_secs(30),
        || {
            let served = served_fingerprints(&verify(&inventory));
            let stale: Vec<String> = served
                .iter()
                .filter(|(check, fingerprint)| {
                    new.iter()
                        .any(|(prefix, new)| check.starts_with(prefix) && *fingerprint != new)
                })
                .map(|(check, fingerprint)| format!("{check} serves {fingerprint}"))
                .collect();
            if stale.is_empty() {
                Ok(served)
            } else {
                Err(format!("{stale:?}"))
            }
        },
    );
    assert_eq!(
        served_before.keys().collect::<Vec<_>>(),
        served_after.keys().collect::<Vec<_>>()
    );
    for (check, fingerprint) in &served_after {
        if new.keys().any(|prefix| check.starts_with(prefix)) {
            assert_ne!(
                fingerprint, &served_before[check],
                "{check} still serves the old one"
            );
        }
    }
    assert_eq!(
        exec_everywhere(
            &inventory,
            "systemctl show -p Id,ActiveEnterTimestampMonotonic,MainPID etcd patroni",
        ),
        units_before,
        "a certificate rotation restarted etcd or Patroni"
    );
    assert_eq!(
        exec_everywhere(&inventory, postmasters),
        postmasters_before,
        "a certificate rotation restarted PostgreSQL"
    );

    // 5. A node lost mid-way: the deploy fails on that node only; once it is back, a re-run
    //    converges and every member streams again.
    pgha_ok(&["lab", "kill", "node3"]);
    let degraded = deploy_json(&inventory);
    assert_eq!(degraded["success"], false);
    assert_eq!(degraded["hosts"]["node3"]["unreachable"], 1, "{degraded:#}");
    assert_eq!(degraded["hosts"]["node1"]["failed"], 0, "{degraded:#}");
    pgha_ok(&["lab", "start", "node3"]);
    let healed = deploy_json(&inventory);
    assert_eq!(healed["success"], true, "{healed:#}");
    eventually(
        "both replicas stream after node3 is back",
        Duration::from_secs(90),
        || all_members_streaming(&password),
    );
    let rows = psql(
        5000,
        &password,
        &format!("select count(*) from pgha_e2e where id = '{marker}'"),
    )
    .unwrap();
    assert_eq!(rows, "1", "the acknowledged row survived");

    // 7. The same cluster deployed from a copy of its inventory that has no secrets file yet
    //    (so a new CA): the nodes trust the old CA, so the preflight refuses before any
    //    certificate is replaced (replacing them cut etcd's peers apart: every member failed
    //    its health check). The DCS preflight below still reaches etcd over the old TLS.
    let (_other_dir, other_copy) = lab_inventory();
    let foreign = deploy_json(&other_copy);
    assert_eq!(foreign["success"], false, "{foreign:#}");
    assert_eq!(
        changed(&foreign),
        0,
        "nothing may change when the CA differs"
    );
    assert!(
        foreign.to_string().contains("trusts another CA"),
        "{foreign:#}"
    );

    // 7. DCS preflight (last: Patroni may stop on a foreign `initialize`): a key that does not
    //    match the cluster's data is refused before anything changes.
    exec(
        &inventory,
        "node1",
        &format!(
            "{}etcdctl --endpoints=https://127.0.0.1:2379 put /service/lab/initialize 1234567890 >/dev/null",
            common::NODE_TLS_ENV
        ),
    );
    let refused = deploy_json(&inventory);
    assert_eq!(refused["success"], false);
    assert_eq!(
        changed(&refused),
        0,
        "nothing may change after a failed preflight"
    );
    let message = refused.to_string();
    assert!(
        message.contains("initialized with system identifier 1234567890"),
        "{refused:#}"
    );
}
