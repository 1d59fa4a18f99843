//! End-to-end on the local lab: a cluster deployed before TLS moves onto TLS with `pgha
//! deploy`, online.
//!
//! The "before" cluster is deployed by this pgha with the playbook and templates of the last
//! release before TLS (`tests/fixtures/pre-tls/`, copied from git), and without the CA folder
//! that release never made. Then, under a writer and a reader through the VIP (`sslmode=prefer`,
//! libpq's default, as applications of the old cluster connect):
//! - `pgha deploy` succeeds, and a second one changes nothing;
//! - `pgha verify` passes, its TLS checks included (plain ports closed, certificates from the
//!   cluster CA);
//! - no acknowledged write is lost, and no PostgreSQL restarted (postmaster start times);
//! - the longest write gap and the failed attempts are printed (BENCHMARKS.md records them).

mod common;

use common::clients::Clients;
use common::{exec_everywhere, is_root, lab_inventory, pgha, pgha_ok, superuser_password, Lab};
use std::path::Path;
use std::time::Instant;

#[test]
fn a_cluster_deployed_before_tls_moves_onto_it_online() {
    assert!(
        is_root(),
        "the end-to-end test needs root (it runs the lab)"
    );
    let (dir, inventory) = lab_inventory();
    let inventory_arg = inventory.to_str().unwrap();
    let _lab = Lab;
    pgha(&["lab", "down"]);
    pgha_ok(&["lab", "up", "--nodes", "3"]);

    // The cluster as the release before TLS deployed it.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pre-tls");
    let fixtures = fixtures.to_str().unwrap();
    let before = common::deploy_result(
        &inventory,
        &["--playbooks", fixtures, "--templates", fixtures],
    );
    assert_eq!(before["success"], true, "{before:#}");
    std::fs::remove_dir_all(dir.path().join("lab.secrets.tls")).unwrap();
    let plain = std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "3", "http://10.231.0.11:8008/patroni"])
        .output()
        .unwrap();
    assert!(
        plain.status.success(),
        "the cluster before TLS answers plain HTTP: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let password = superuser_password(&inventory);
    common::psql_with(
        "10.231.0.100",
        5000,
        &password,
        3,
        "prefer",
        "create table if not exists tls_probe (id bigint primary key)",
    )
    .unwrap();
    let postmasters = "runuser -u postgres -- psql -XAtc 'select pg_postmaster_start_time()'";
    let started_before = exec_everywhere(&inventory, postmasters);

    // A check run first makes the CA (as `render` or `run` would): the move must still come.
    let checked = pgha(&["deploy", "-i", inventory_arg, "--check"]);
    assert!(
        !String::from_utf8_lossy(&checked.stdout).contains("PRIVATE KEY")
            && !String::from_utf8_lossy(&checked.stderr).contains("PRIVATE KEY")
    );
    assert!(
        dir.path().join("lab.secrets.tls/moving-onto-tls").exists(),
        "the CA made for a cluster with secrets notes the move"
    );

    // The move.
    let clients = Clients::start(&password, "prefer", "tls_probe");
    let started = Instant::now();
    let moved = common::deploy_result(&inventory, &[]);
    let seconds = started.elapsed().as_secs_f64();
    let seen = clients.stop();
    assert_eq!(moved["success"], true, "{moved:#}");
    assert!(
        !dir.path().join("lab.secrets.tls/moving-onto-tls").exists(),
        "the finished move leaves no marker"
    );

    let again = common::deploy_result(&inventory, &[]);
    assert_eq!(again["success"], true, "{again:#}");
    assert_eq!(common::changed_tasks(&again), 0, "{:#}", again["changes"]);
    let verified = pgha(&["verify", "-i", inventory_arg, "--json"]);
    let result: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    let failed: Vec<&serde_json::Value> = result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["pass"] == false)
        .collect();
    assert!(failed.is_empty(), "verify after the move: {failed:#?}");
    assert!(
        result["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|check| check["name"] == "tls.node1.etcd_peer"),
        "verify checks the TLS ports"
    );
    assert_eq!(
        exec_everywhere(&inventory, postmasters),
        started_before,
        "PostgreSQL restarted during the move onto TLS"
    );
    seen.assert_none_lost(&password, "tls_probe");
    assert!(
        seen.acknowledged.len() > 20,
        "the writer barely wrote: {:?}",
        seen.failed_writes
    );
    eprintln!(
        "move onto TLS: {seconds:.1} s; writes: {} acknowledged, {} failed, longest gap {:.2} s; reads: {} answered, {} failed; failures: {:?} {:?}",
        seen.acknowledged.len(),
        seen.failed_writes.len(),
        seen.longest_gap().as_secs_f64(),
        seen.reads,
        seen.failed_reads.len(),
        seen.failed_writes.iter().take(5).collect::<Vec<_>>(),
        seen.failed_reads.iter().take(5).collect::<Vec<_>>(),
    );
}
