//! The verdict of one drill repetition, decided from what the probes and the cluster reported
//! and nothing else: pure, so that each way a drill can fail is unit-tested by feeding it a log
//! that shows that failure.

use std::collections::BTreeSet;

use super::model::ExpectedOutage;
use super::probe::{self, Gap, Primaries, ProbeLog, WriteClient};
use super::Scenario;

/// Tolerance beyond either end of the model's range before a measurement counts as out of it.
pub const MODEL_SLACK_MS: u64 = 2_000;

/// What one repetition observed.
pub struct Observed<'a> {
    pub scenario: Scenario,
    pub synchronous: bool,
    pub expected: ExpectedOutage,
    pub old_primary: &'a str,
    /// Another node leads after the fault.
    pub failover: bool,
    /// When the fault was injected, on the probes' clock, and the window in which it was
    /// certainly in place (from the injection's return to the start of the heal).
    pub fault_ms: u64,
    pub in_place: (u64, u64),
    pub log: &'a ProbeLog,
    /// The probe's ids the surviving primary holds.
    pub stored: &'a BTreeSet<i64>,
    /// The nodes the primary probe asked.
    pub nodes: &'a [String],
    /// `kill-postgres`: the postmaster's pid before the fault, and after recovery (`None`: no
    /// postmaster).
    pub postmaster: Option<(u32, Option<u32>)>,
    /// `kill-haproxy`: the VIP holder before the fault, and every holder after recovery (or
    /// why they could not be asked).
    pub vip: Option<(String, Result<Vec<String>, String>)>,
    /// Whether the isolated old primary was probed from inside its own network.
    pub isolated_probed: bool,
}

/// The numbers and the verdict of one repetition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The longest gap between acknowledged commits of the new-connection probe.
    pub outage: Option<Gap>,
    /// The same for the persistent connection.
    pub persistent_outage: Option<Gap>,
    /// From the fault to the end of the outage (0 when the outage ended before the fault).
    pub recovery_ms: u64,
    pub failed_writes: usize,
    pub persistent_failed_writes: usize,
    pub lost_ids: Vec<i64>,
    pub unacknowledged_but_stored: usize,
    pub primaries: Primaries,
    /// Commits the cut-off old primary acknowledged while isolated (`None`: not probed), and
    /// the attempts that reached it then.
    pub isolated_acknowledged: Option<usize>,
    pub isolated_connected: Option<usize>,
    pub within_model: bool,
    /// Why the verdict failed, one sentence each; empty when it passed.
    pub problems: Vec<String>,
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Judge one repetition.
pub fn judge(observed: &Observed) -> Verdict {
    let writes = &observed.log.writes;
    let outage = probe::longest_gap(writes, WriteClient::NewConnection);
    let outage_ms = outage.map_or(0, |gap| gap.ms());
    let lost_ids = probe::lost_writes(writes, observed.stored);
    let primaries = probe::primaries(&observed.log.samples, observed.old_primary);
    let isolated = observed
        .isolated_probed
        .then(|| probe::isolated_writes(writes, observed.in_place.0, observed.in_place.1));
    let isolated_acknowledged = isolated.map(|(_, acknowledged)| acknowledged);
    let within_model = observed.expected.contains(outage_ms, MODEL_SLACK_MS);

    let mut problems = Vec::new();
    // The primary probe must have seen every node before the fault, or "no double primary"
    // means nothing there.
    let round_ms = u64::try_from(probe::PRIMARY_INTERVAL.as_millis()).unwrap_or(200);
    for node in observed.nodes {
        let answered = observed.log.samples.iter().any(|sample| {
            sample.node == *node
                && sample.writable.is_some()
                && sample.round * round_ms < observed.fault_ms
        });
        if !answered {
            problems.push(format!(
                "the primary probe got no answer from `{node}` before the fault: it could not have seen a second primary there"
            ));
        }
    }
    if observed.synchronous && !lost_ids.is_empty() {
        problems.push(format!(
            "{} acknowledged write(s) lost with synchronous_mode on",
            lost_ids.len()
        ));
    }
    if primaries.double_moments > 0 {
        problems.push(format!(
            "{} moment(s) with two primaries able to acknowledge writes ({})",
            primaries.double_moments,
            primaries
                .double_nodes
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if isolated.is_some_and(|(connected, _)| connected == 0) {
        problems.push(format!(
            "the isolated write probe never reached `{}` while it was cut off: it cannot tell whether it acknowledged commits",
            observed.old_primary
        ));
    }
    if let Some(acknowledged) = isolated_acknowledged.filter(|count| *count > 0) {
        problems.push(format!(
            "the cut-off old primary `{}` acknowledged {acknowledged} commit(s) while isolated",
            observed.old_primary
        ));
    }
    if observed.scenario.requires_new_primary() && !observed.failover {
        problems.push(format!("`{}` is still the primary", observed.old_primary));
    }
    if !within_model {
        problems.push(format!(
            "the outage of {} is outside the model's range {}–{} (±{} slack)",
            seconds(outage_ms),
            seconds(observed.expected.min_ms),
            seconds(observed.expected.max_ms),
            seconds(MODEL_SLACK_MS)
        ));
    }
    match &observed.postmaster {
        Some((before, None)) => problems.push(format!(
            "PostgreSQL did not come back after its postmaster (pid {before}) was killed"
        )),
        Some((before, Some(after))) if before == after => problems.push(format!(
            "the postmaster still has pid {before}: PostgreSQL was not killed"
        )),
        _ => {}
    }
    match &observed.vip {
        Some((_, Err(error))) => problems.push(format!(
            "cannot tell where the VIP went: {}",
            error.replace('\n', "; ")
        )),
        Some((before, Ok(after))) => match after.as_slice() {
            [] => problems.push(format!(
                "no node holds the VIP after HAProxy on `{before}` died"
            )),
            [one] if one == before => problems.push(format!(
                "the VIP stayed on `{before}`, whose HAProxy is dead"
            )),
            [_] => {}
            several => problems.push(format!(
                "the VIP is on several nodes: {}",
                several.join(", ")
            )),
        },
        None => {}
    }
    Verdict {
        outage,
        persistent_outage: probe::longest_gap(writes, WriteClient::Persistent),
        recovery_ms: outage
            .filter(|gap| gap.to_ms > observed.fault_ms)
            .map_or(0, |gap| gap.to_ms - observed.fault_ms),
        failed_writes: probe::failed_writes(writes, WriteClient::NewConnection),
        persistent_failed_writes: probe::failed_writes(writes, WriteClient::Persistent),
        unacknowledged_but_stored: probe::unacknowledged_but_stored(writes, observed.stored),
        lost_ids,
        primaries,
        isolated_acknowledged,
        isolated_connected: isolated.map(|(connected, _)| connected),
        within_model,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::probe::{PrimarySample, WriteAttempt};

    const MODEL: ExpectedOutage = ExpectedOutage {
        min_ms: 25_000,
        avg_ms: 34_000,
        max_ms: 41_000,
    };

    /// A power cut of node1 at 1 s: writes every 100 ms on new connections, failing from
    /// `fail_from_ms` to `fail_until_ms`, every one stored on the new primary.
    fn power_cut(fail_from_ms: u64, fail_until_ms: u64) -> ProbeLog {
        let writes = (0..(fail_until_ms / 100 + 20))
            .map(|index| {
                let started_ms = index * 100;
                WriteAttempt {
                    id: index as i64 + 1,
                    client: WriteClient::NewConnection,
                    started_ms,
                    ended_ms: started_ms + 20,
                    connected: true,
                    acknowledged: !(fail_from_ms..fail_until_ms).contains(&started_ms),
                    error: None,
                }
            })
            .collect();
        ProbeLog {
            writes,
            reads: Vec::new(),
            samples: Vec::new(),
        }
    }

    fn stored_all(log: &ProbeLog) -> BTreeSet<i64> {
        log.writes.iter().map(|attempt| attempt.id).collect()
    }

    const NODES: &[String] = &[];

    fn observed<'a>(log: &'a ProbeLog, stored: &'a BTreeSet<i64>) -> Observed<'a> {
        Observed {
            scenario: Scenario::KillPrimary,
            synchronous: true,
            expected: MODEL,
            old_primary: "node1",
            failover: true,
            fault_ms: 1_000,
            in_place: (1_000, 40_000),
            log,
            stored,
            nodes: NODES,
            postmaster: None,
            vip: None,
            isolated_probed: false,
        }
    }

    #[test]
    fn a_clean_failover_inside_the_model_passes() {
        let log = power_cut(1_000, 31_000);
        let stored = stored_all(&log);
        let verdict = judge(&observed(&log, &stored));
        assert_eq!(verdict.problems, Vec::<String>::new());
        assert!(verdict.within_model);
        assert_eq!(verdict.outage.map(|gap| gap.ms()), Some(30_100));
        assert_eq!(verdict.recovery_ms, 30_020);
        assert_eq!(verdict.failed_writes, 300);
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        let log = power_cut(1_000, 31_000);
        let mut stored = stored_all(&log);
        stored.remove(&10);
        let verdict = judge(&observed(&log, &stored));
        assert_eq!(verdict.lost_ids, vec![10]);
        assert_eq!(
            verdict.problems,
            vec!["1 acknowledged write(s) lost with synchronous_mode on"]
        );
    }

    #[test]
    fn two_primaries_that_could_acknowledge_fail() {
        let mut log = power_cut(1_000, 31_000);
        for node in ["node1", "node2"] {
            log.samples.push(PrimarySample {
                round: 150,
                node: node.into(),
                writable: Some(true),
                can_acknowledge: true,
                waits_for: Vec::new(),
            });
        }
        let stored = stored_all(&log);
        let verdict = judge(&observed(&log, &stored));
        assert_eq!(verdict.primaries.double_moments, 1);
        assert_eq!(
            verdict.problems,
            vec!["1 moment(s) with two primaries able to acknowledge writes (node1, node2)"]
        );
    }

    #[test]
    fn outages_above_and_below_the_model_fail() {
        for (until, shown) in [(50_000, "49.1 s"), (10_000, "9.1 s")] {
            let log = power_cut(1_000, until);
            let stored = stored_all(&log);
            let verdict = judge(&observed(&log, &stored));
            assert!(!verdict.within_model, "{until}");
            assert_eq!(
                verdict.problems,
                vec![format!(
                    "the outage of {shown} is outside the model's range 25.0 s–41.0 s (±2.0 s slack)"
                )]
            );
        }
    }

    #[test]
    fn a_failover_drill_without_a_new_primary_fails() {
        let log = power_cut(1_000, 31_000);
        let stored = stored_all(&log);
        let mut input = observed(&log, &stored);
        input.failover = false;
        assert_eq!(judge(&input).problems, vec!["`node1` is still the primary"]);
    }

    #[test]
    fn an_isolated_primary_that_acknowledges_fails() {
        let mut log = power_cut(1_000, 31_000);
        log.writes.push(WriteAttempt {
            id: 9_999,
            client: WriteClient::Isolated,
            started_ms: 5_000,
            ended_ms: 5_010,
            connected: true,
            acknowledged: true,
            error: None,
        });
        let stored = stored_all(&log);
        let mut input = observed(&log, &stored);
        input.isolated_probed = true;
        let verdict = judge(&input);
        assert_eq!(verdict.isolated_acknowledged, Some(1));
        assert_eq!(
            verdict.problems,
            vec!["the cut-off old primary `node1` acknowledged 1 commit(s) while isolated"]
        );
        // Before the fault it was simply the primary; a probe that saw nothing while the node
        // was cut off cannot vouch for it.
        input.in_place = (6_000, 40_000);
        let blind = judge(&input);
        assert_eq!(blind.isolated_acknowledged, Some(0));
        assert_eq!(
            blind.problems,
            vec!["the isolated write probe never reached `node1` while it was cut off: it cannot tell whether it acknowledged commits"]
        );
    }

    #[test]
    fn a_postgres_kill_needs_a_new_postmaster_and_a_haproxy_kill_a_moved_vip() {
        let log = power_cut(1_000, 2_000);
        let stored = stored_all(&log);
        let mut input = observed(&log, &stored);
        input.scenario = Scenario::KillPostgres;
        input.failover = false;
        input.expected = ExpectedOutage {
            min_ms: 0,
            avg_ms: 30_000,
            max_ms: 36_000,
        };
        input.postmaster = Some((812, Some(2_041)));
        assert!(judge(&input).problems.is_empty());
        input.postmaster = Some((812, Some(812)));
        assert_eq!(
            judge(&input).problems,
            vec!["the postmaster still has pid 812: PostgreSQL was not killed"]
        );
        input.postmaster = Some((812, None));
        assert_eq!(judge(&input).problems.len(), 1);

        input.postmaster = None;
        input.scenario = Scenario::KillHaproxy;
        input.vip = Some(("node1".into(), Ok(vec!["node2".into()])));
        assert!(judge(&input).problems.is_empty());
        input.vip = Some(("node1".into(), Ok(vec!["node1".into()])));
        assert_eq!(
            judge(&input).problems,
            vec!["the VIP stayed on `node1`, whose HAProxy is dead"]
        );
        input.vip = Some(("node1".into(), Ok(vec!["node2".into(), "node3".into()])));
        assert_eq!(
            judge(&input).problems,
            vec!["the VIP is on several nodes: node2, node3"]
        );
        input.vip = Some(("node1".into(), Err("cannot ask `node3`".into())));
        assert_eq!(
            judge(&input).problems,
            vec!["cannot tell where the VIP went: cannot ask `node3`"]
        );
    }

    #[test]
    fn a_node_the_primary_probe_never_heard_before_the_fault_fails() {
        let mut log = power_cut(1_000, 31_000);
        let sample = |round: u64, node: &str, writable: Option<bool>| PrimarySample {
            round,
            node: node.into(),
            writable,
            can_acknowledge: writable == Some(true),
            waits_for: Vec::new(),
        };
        log.samples = vec![
            sample(1, "node1", Some(true)),
            sample(2, "node2", Some(false)),
            sample(2, "node3", None),
            sample(40, "node3", Some(false)),
        ];
        let stored = stored_all(&log);
        let nodes: Vec<String> = ["node1", "node2", "node3"].map(String::from).to_vec();
        let mut input = observed(&log, &stored);
        input.nodes = &nodes;
        assert_eq!(
            judge(&input).problems,
            vec!["the primary probe got no answer from `node3` before the fault: it could not have seen a second primary there"]
        );
        input.fault_ms = 2_500;
        assert!(judge(&input).problems.is_empty());
    }
}
