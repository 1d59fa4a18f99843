//! End-to-end: a rolling upgrade of a live cluster on the real 3-node lab, read like a spec:
//!
//! 1. the cluster is deployed at old pinned versions (PostgreSQL 15.18, HAProxy deb12u3,
//!    Patroni 4.0.11) and verified;
//! 2. a pin the package sources do not offer is refused by `pgha upgrade --check` and by
//!    `pgha upgrade` (exit 2, naming it), and nothing changes;
//! 3. Patroni alone is upgraded first (4.1.5): Patroni restarts in maintenance mode, no
//!    PostgreSQL restarts (postmaster start times), no write through the VIP fails, and the
//!    cluster is not left paused;
//! 4. with the new pins (15.20, deb12u4, 4.1.5) `--check` prints the plan and changes nothing;
//! 5. while a writer (a new connection per INSERT through VIP:5000) and a reader (VIP:5001)
//!    run, `pgha upgrade` is cut off (SIGKILL) after its first step, and a second run
//!    completes it (the VIP holder gives the VIP away before its HAProxy step);
//! 6. every node then runs the new versions (installed and running), the timeline moved
//!    exactly once, no acknowledged write is lost, the read port answered throughout (at most
//!    1% failed reads, none answered by a primary), a third
//!    `pgha upgrade` has nothing to do, `pgha deploy` changes nothing and `pgha verify` passes.
//!
//! Needs root. One test function: only one lab can exist at a time.

mod common;

use common::clients::Clients;
use common::{exec_everywhere, is_root, lab_inventory, pgha, pgha_ok, superuser_password, Lab};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const VIP: &str = "10.231.0.100";
const OLD: (&str, &str, &str) = ("15.18-0+deb12u1", "2.6.12-1+deb12u3", "4.0.11");
const NEW: (&str, &str, &str) = ("15.20-0+deb12u1", "2.6.12-1+deb12u4", "4.1.5");

fn pin(inventory: &Path, (postgresql, haproxy, patroni): (&str, &str, &str)) {
    let text = std::fs::read_to_string(inventory).unwrap();
    let mut kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("  versions:") && !line.starts_with("  patroni_version:"))
        .collect();
    let at = kept
        .iter()
        .position(|line| line.starts_with("  postgres_version:"))
        .unwrap()
        + 1;
    let versions = format!("  versions: {{postgresql: \"{postgresql}\", haproxy: \"{haproxy}\"}}");
    let patroni = format!("  patroni_version: \"{patroni}\"");
    kept.insert(at, &versions);
    kept.insert(at + 1, &patroni);
    std::fs::write(inventory, kept.join("\n") + "\n").unwrap();
}

/// SQL through `VIP:port`, giving up on the connection after 2 s.
fn psql(port: u16, password: &str, sql: &str) -> Result<String, String> {
    common::psql_at(VIP, port, password, 2, sql)
}

/// `stdout` of `command` on every node, by node name.
fn everywhere(inventory: &Path, command: &str) -> Vec<(String, String)> {
    let hosts = exec_everywhere(inventory, command);
    hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|host| {
            (
                host["host"].as_str().unwrap_or("?").to_string(),
                host["stdout"].as_str().unwrap_or("").trim().to_string(),
            )
        })
        .collect()
}

fn installed(inventory: &Path) -> Vec<(String, String)> {
    everywhere(
        inventory,
        "dpkg-query -W -f='${Version} ' postgresql-15 haproxy",
    )
}

#[test]
fn upgrade_moves_a_live_cluster_to_the_pinned_versions() {
    assert!(
        is_root(),
        "the end-to-end test needs root (it runs the lab)"
    );
    let (_dir, inventory) = lab_inventory();
    let inventory_arg = inventory.to_str().unwrap();
    pgha_ok(&["lab", "down"]);
    let _lab = Lab;
    pgha_ok(&["lab", "up", "--nodes", "3"]);

    // 1. The old versions, deployed and verified.
    pin(&inventory, OLD);
    pgha_ok(&["deploy", "-i", inventory_arg]);
    pgha_ok(&["verify", "-i", inventory_arg]);
    let old = installed(&inventory);
    for (node, versions) in &old {
        // dpkg-query lists packages in its own (name) order.
        assert_eq!(versions, &format!("{} {}", OLD.1, OLD.0), "{node}");
    }

    // 2. A pin the sources do not offer: refused before anything changes.
    pin(&inventory, ("15.99-0+deb12u1", NEW.1, NEW.2));
    for check in [true, false] {
        let mut args = vec!["upgrade", "-i", inventory_arg];
        if check {
            args.push("--check");
        }
        let output = pgha(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("postgresql-15 15.99-0+deb12u1 is not in its package sources")
                && stderr.contains("15.20-0+deb12u1"),
            "{stderr}"
        );
    }
    assert_eq!(
        installed(&inventory),
        old,
        "a refused upgrade changed a version"
    );

    // 3. Patroni alone (4.0.11 → 4.1.5): restarted in maintenance mode, so PostgreSQL keeps
    //    running on every node, the primary included (no switchover), and writes go on.
    let password = superuser_password(&inventory);
    psql(
        5000,
        &password,
        "create table if not exists upgrade_probe (id bigint primary key)",
    )
    .unwrap();
    let postmasters = "runuser -u postgres -- psql -XAtc 'select pg_postmaster_start_time()'";
    let started_before = everywhere(&inventory, postmasters);
    pin(&inventory, (OLD.0, OLD.1, NEW.2));
    let clients = Clients::start(&password, "require", "upgrade_probe");
    let patroni_only: serde_json::Value =
        serde_json::from_str(&pgha_ok(&["upgrade", "-i", inventory_arg, "--json"])).unwrap();
    let seen = clients.stop();
    let kinds: Vec<&str> = patroni_only["done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|done| done["step"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["patroni"; 3], "{patroni_only:#}");
    assert_eq!(
        everywhere(&inventory, postmasters),
        started_before,
        "PostgreSQL restarted during a Patroni-only upgrade"
    );
    for (node, status) in everywhere(
        &inventory,
        &format!(
            "{}curl -s $CURL_TLS https://$(hostname -I | cut -d' ' -f1):8008/patroni",
            common::NODE_TLS_ENV
        ),
    ) {
        assert!(
            status.contains("\"version\": \"4.1.5\""),
            "{node}: {status}"
        );
        assert!(
            !status.contains("\"pause\""),
            "{node} is left paused: {status}"
        );
    }
    eprintln!(
        "Patroni-only upgrade: writes {} acknowledged, {} failed; reads {} answered, {} failed",
        seen.acknowledged.len(),
        seen.failed_writes.len(),
        seen.reads,
        seen.failed_reads.len()
    );
    assert!(
        seen.failed_writes.is_empty(),
        "writes failed while only Patroni restarted: {:?}",
        seen.failed_writes
    );

    // 4. The new pins: the plan, and nothing changed by `--check`.
    pin(&inventory, NEW);
    let checked: serde_json::Value = serde_json::from_str(&pgha_ok(&[
        "upgrade",
        "-i",
        inventory_arg,
        "--check",
        "--json",
    ]))
    .unwrap();
    let kinds: Vec<&str> = checked["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "database",
            "database",
            "switchover",
            "database",
            "haproxy",
            "haproxy",
            "haproxy"
        ],
        "{checked:#}"
    );
    assert_eq!(
        installed(&inventory),
        old,
        "`upgrade --check` changed a version"
    );
    // The deploy never upgrades a running cluster: it keeps the versions and says so.
    let deploy = pgha(&["deploy", "-i", inventory_arg]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&deploy.stdout),
        String::from_utf8_lossy(&deploy.stderr)
    );
    assert!(deploy.status.success(), "{text}");
    assert!(
        text.contains("kept postgresql-15 15.18-0+deb12u1 (pinned 15.20-0+deb12u1)")
            && text.contains("pgha upgrade"),
        "the deploy must name the difference and `pgha upgrade`: {text}"
    );
    assert_eq!(
        installed(&inventory),
        old,
        "`pgha deploy` upgraded a package"
    );

    // 5. Clients through the VIP the whole time; the first run is cut off after one step.
    let timeline_before = psql(
        5000,
        &password,
        "select timeline_id from pg_control_checkpoint()",
    )
    .unwrap()
    .parse::<u64>()
    .unwrap();
    let clients = Clients::start(&password, "require", "upgrade_probe");

    let started = Instant::now();
    let mut first = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(["upgrade", "-i", inventory_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(first.stderr.take().unwrap());
    let mut log = Vec::new();
    for line in lines.lines() {
        let line = line.unwrap();
        log.push(line.clone());
        if line.contains("done in") {
            break;
        }
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        log.iter().any(|line| line.contains("done in")),
        "the first run never finished a step:\n{}",
        log.join("\n")
    );
    let second = pgha(&["upgrade", "-i", inventory_arg, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap_or_default();
    assert!(
        second.status.success(),
        "the second run did not complete the upgrade: {}\n{report:#}",
        String::from_utf8_lossy(&second.stderr)
    );
    // The VIP holder's HAProxy step ran with the VIP elsewhere (given away, Keepalived running).
    let progress = String::from_utf8_lossy(&second.stderr);
    assert!(
        progress.contains("gave the VIP away"),
        "the VIP holder did not give the VIP away before its step:\n{progress}"
    );
    let upgrade_seconds = started.elapsed().as_secs_f64();
    let seen = clients.stop();

    // 6. New versions everywhere, installed and running.
    for (node, versions) in installed(&inventory) {
        assert_eq!(versions, format!("{} {}", NEW.1, NEW.0), "{node}");
    }
    for (node, running) in everywhere(
        &inventory,
        &format!("{}runuser -u postgres -- psql -XAtc 'show server_version'; curl -s $CURL_TLS https://$(hostname -I | cut -d' ' -f1):8008/patroni; readlink /proc/$(systemctl show -p MainPID --value haproxy)/exe", common::NODE_TLS_ENV),
    ) {
        assert!(running.contains("15.20"), "{node} runs {running}");
        assert!(running.contains("\"version\": \"4.1.5\""), "{node} runs {running}");
        assert!(!running.contains("(deleted)"), "{node} runs {running}");
    }
    let timeline_after = psql(
        5000,
        &password,
        "select timeline_id from pg_control_checkpoint()",
    )
    .unwrap()
    .parse::<u64>()
    .unwrap();
    assert_eq!(
        timeline_after,
        timeline_before + 1,
        "the planned upgrade holds exactly one switchover (timeline {timeline_before} → {timeline_after})"
    );
    seen.assert_none_lost(&password, "upgrade_probe");
    let longest_gap = seen.longest_gap();
    eprintln!(
        "upgrade: {upgrade_seconds:.1} s (two runs); writes: {} acknowledged, {} failed, longest gap {:.2} s; reads: {} answered, {} failed",
        seen.acknowledged.len(),
        seen.failed_writes.len(),
        longest_gap.as_secs_f64(),
        seen.reads,
        seen.failed_reads.len()
    );
    // The goal is 0 failed reads; it is not met yet (BENCHMARKS.md: 0 to 5 failed of
    // 450–820 per upgrade, "server closed the connection unexpectedly", not located). What is
    // claimed and guarded: the read port keeps answering, with at most 1% failed reads and
    // none answered by the primary (the new primary in the read backend gave 7 of 457, 1.5%).
    let by_primary = seen
        .failed_reads
        .iter()
        .filter(|failure| failure.starts_with("answered"))
        .count();
    assert!(
        seen.failed_reads.len() * 100 <= seen.reads as usize && by_primary == 0,
        "the read port failed {} of {} reads ({by_primary} answered by a primary): {:?}",
        seen.failed_reads.len(),
        seen.reads,
        seen.failed_reads.iter().take(5).collect::<Vec<_>>()
    );

    let again: serde_json::Value =
        serde_json::from_str(&pgha_ok(&["upgrade", "-i", inventory_arg, "--json"])).unwrap();
    assert_eq!(again["plan"].as_array().map(Vec::len), Some(0), "{again:#}");
    let deploy: serde_json::Value =
        serde_json::from_str(&pgha_ok(&["deploy", "-i", inventory_arg, "--json"])).unwrap();
    let changes = deploy["changes"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(usize::MAX);
    assert_eq!(changes, 0, "{:#}", deploy["changes"]);
    pgha_ok(&["verify", "-i", inventory_arg]);
}
