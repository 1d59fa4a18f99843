//! End-to-end: every failure drill once against a freshly deployed 3-node lab, read like a spec.
//! For each scenario the drill's JSON verdict says: no acknowledged write was lost (the lab
//! inventory has synchronous_mode on), never two primaries that could both acknowledge a
//! commit, a measured outage inside the failover model, evidence that the fault happened (a new
//! postmaster pid, a VIP on another node, an isolated old primary reached from inside its own
//! network that acknowledged nothing), and for the failover scenarios another node is primary
//! afterwards on a new timeline while the old one streams again.
//!
//! Needs root. One test function: only one lab can exist at a time.

mod common;

use common::{is_root, lab_inventory, pgha, pgha_ok, Lab};

/// Run one drill with `--json` and return its report (printed by the drill even on a failed
/// verdict, so the assertions below name what went wrong).
fn drill(inventory: &str, scenario: &str) -> serde_json::Value {
    let output = pgha(&["drill", "-i", inventory, scenario, "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "`pgha drill {scenario}` printed no JSON ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
    eprintln!("{scenario}: {}", report["summary"]);
    report
}

#[test]
fn every_drill_keeps_acknowledged_writes_and_one_primary() {
    assert!(
        is_root(),
        "the end-to-end test needs root (it runs the lab)"
    );
    let (_dir, inventory) = lab_inventory();
    let inventory = inventory.to_str().expect("utf-8 path");

    pgha_ok(&["lab", "down"]);
    let _lab = Lab;
    pgha_ok(&["lab", "up", "--nodes", "3"]);
    pgha_ok(&["deploy", "-i", inventory]);

    for scenario in [
        "switchover",
        "kill-postgres",
        "kill-haproxy",
        "kill-primary",
        "partition-primary",
        "freeze-primary",
    ] {
        let report = drill(inventory, scenario);
        assert!(
            report["error"].is_null(),
            "{scenario} did not complete: {report:#}"
        );
        let run = &report["runs"][0];
        assert_eq!(report["synchronous_mode"], true);
        assert_eq!(
            run["acknowledged_writes_lost"], 0,
            "{scenario} lost acknowledged writes: {run:#}"
        );
        assert_eq!(
            run["double_primary_moments"], 0,
            "{scenario} had two writable primaries: {run:#}"
        );
        assert!(
            run["writes"].as_u64().unwrap_or(0) > 20,
            "{scenario}: the write probe hardly ran: {run:#}"
        );
        assert!(
            run["outage_ms"].is_u64() && run["outage"]["to_ms"].is_u64(),
            "{scenario}: no outage measured: {run:#}"
        );
        assert_eq!(
            run["within_model"], true,
            "{scenario}: outage outside the failover model: {report:#}"
        );
        match scenario {
            "kill-postgres" => assert!(
                run["postmaster_pid_after"].is_u64()
                    && run["postmaster_pid_after"] != run["postmaster_pid_before"],
                "kill-postgres: PostgreSQL was not killed and restarted: {run:#}"
            ),
            "kill-haproxy" => {
                let holders = run["vip_holders_after"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    holders.len() == 1 && holders[0] != run["target"],
                    "kill-haproxy: the VIP did not move to exactly one other node: {run:#}"
                );
            }
            "partition-primary" => {
                assert!(
                    run["isolated_connected_writes"].as_u64() > Some(0),
                    "partition-primary: the isolated probe never reached the old primary: {run:#}"
                );
                assert_eq!(
                    run["isolated_acknowledged_writes"], 0,
                    "partition-primary: the cut-off old primary acknowledged commits: {run:#}"
                );
            }
            _ => {}
        }
        if [
            "switchover",
            "kill-primary",
            "partition-primary",
            "freeze-primary",
        ]
        .contains(&scenario)
        {
            assert_eq!(run["failover"], true, "{scenario}: no new primary: {run:#}");
            assert_ne!(run["new_primary"], run["old_primary"]);
            assert!(
                run["old_primary_streaming_after_ms"].is_u64(),
                "{scenario}: the old primary did not stream again: {run:#}"
            );
            assert!(
                run["outage_ms"].as_u64().unwrap_or(0) > 0,
                "{scenario}: a failover without any failed write is not credible: {run:#}"
            );
            assert!(
                run["timeline_after"].as_u64() > run["timeline_before"].as_u64(),
                "{scenario}: a failover must start a new timeline: {run:#}"
            );
        }
        assert_eq!(report["summary"]["passed"], true, "{scenario}: {report:#}");
    }
}
