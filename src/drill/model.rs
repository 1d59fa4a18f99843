//! The failover-time model (REFERENCE.md, Pigsty's derivation): the write outage a scenario
//! should cost for an inventory's Patroni and HAProxy timings. Pure arithmetic, no I/O; it is
//! the oracle a drill's measurement is printed next to.

use serde::Serialize;

use super::Scenario;
use crate::inventory::{HaproxyChecks, PatroniTiming};

/// Expected write outage in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExpectedOutage {
    pub min_ms: u64,
    pub avg_ms: u64,
    pub max_ms: u64,
}

impl ExpectedOutage {
    /// Whether a measured outage lies within the range, give or take `slack_ms` at either
    /// end. Below the minimum nothing can be faster: a shorter outage means the measurement or
    /// the model is wrong (the slack covers a Patroni loop that ran a little late).
    pub fn contains(&self, measured_ms: u64, slack_ms: u64) -> bool {
        (self.min_ms.saturating_sub(slack_ms)..=self.max_ms + slack_ms).contains(&measured_ms)
    }
}

/// VIP move after the holder's HAProxy dies: keepalived's `check-writes` (`interval 1`,
/// `fall 2`, `timeout 2`) fails within 1–4 s; the holder then enters FAULT and gives the VIP up
/// at once (a priority-0 advert), so a backup takes over within one `advert_int` instead of the
/// 3 × advert_int + skew a silent holder would cost.
const VRRP_TAKEOVER_MIN_MS: u64 = 1_000;
const VRRP_TAKEOVER_AVG_MS: u64 = 2_500;
const VRRP_TAKEOVER_MAX_MS: u64 = 5_000;

/// Patroni asks every member's REST API before it takes the leader lock, and gives a dead
/// one 2 s (hard-coded); then the promotion.
const ELECTION_MS: u64 = 2_000 + 1_000;

/// The model's range for `scenario` under these timings; `corroborated`: the agents' fast
/// path is on (`cluster.corroborated_failover`).
pub fn expected_outage(
    scenario: Scenario,
    patroni: &PatroniTiming,
    haproxy: &HaproxyChecks,
    corroborated: bool,
) -> ExpectedOutage {
    let ttl = u64::from(patroni.ttl) * 1000;
    let loop_wait = u64::from(patroni.loop_wait) * 1000;
    let start_timeout = u64::from(patroni.primary_start_timeout) * 1000;
    let retry_timeout = u64::from(patroni.retry_timeout) * 1000;
    let inter = u64::from(haproxy.inter_ms);
    // HAProxy marks the new primary UP after `rise` successful checks, the later ones at
    // `fastinter` (a server that is DOWN and transitioning is checked at fastinter). The pgha
    // agent on every node routes at once when the leader key changes, so the minimum has no
    // check term: the average and maximum keep it, for a node whose agent is slow or down.
    let rise = u64::from(haproxy.rise.saturating_sub(1)) * u64::from(haproxy.fastinter_ms);
    match scenario {
        // The agents end a dead leader's leadership once its lease is `loop_wait` + 1 s
        // old and its node has answered nothing for `UNANSWERED_FOR` (3 s; both counted from
        // the fault, the lease from its last refresh, 0–`loop_wait` before), after a 250 ms
        // look, a vote, and a second look at which the other votes stand.
        Scenario::KillPrimary | Scenario::PartitionPrimary | Scenario::FreezePrimary
            if corroborated =>
        {
            let verdict_min =
                u64::try_from(crate::agent::fastpath::UNANSWERED_FOR.as_millis()).unwrap_or(3_000);
            let verdict_max = (loop_wait + 1_000).max(verdict_min) + 750;
            // A candidate whose Patroni used the dead node's etcd member first waits out a
            // read timeout there (`retry_timeout` / members) and may try it once more (a
            // connect timeout, half that): `retry_timeout` / 2 on three members, measured on
            // the lab's silent power cuts (BENCHMARKS.md, "A silent power cut").
            let stuck_dcs_client = retry_timeout / 2;
            ExpectedOutage {
                min_ms: verdict_min,
                avg_ms: (verdict_min + verdict_max) / 2 + ELECTION_MS + inter / 2,
                max_ms: verdict_max + ELECTION_MS + stuck_dcs_client + inter + rise,
            }
        }
        Scenario::KillPrimary | Scenario::PartitionPrimary | Scenario::FreezePrimary => {
            ExpectedOutage {
                // The lease was refreshed at most `loop_wait` before the fault.
                min_ms: ttl.saturating_sub(loop_wait),
                avg_ms: ttl + 1000 + inter / 2 + rise,
                // Every node also runs an etcd member, so the dead node's member is some
                // survivors' DCS endpoint: their Patroni waits out its request timeouts there
                // before it moves to a live member, a DCS step Patroni bounds by
                // `retry_timeout` (a freeze cost 43.3 s once, over the reference formula's
                // 41 s). The failover issue is to remove this term, not to keep it.
                max_ms: ttl + loop_wait + 2000 + inter + rise + retry_timeout,
            }
        }
        // Patroni restarts a crashed PostgreSQL in its next loop and stays primary; only when
        // PostgreSQL will not start does the lock go after `primary_start_timeout`.
        Scenario::KillPostgres => ExpectedOutage {
            min_ms: 0,
            avg_ms: loop_wait + start_timeout + 1000 + inter / 2 + rise,
            max_ms: loop_wait + start_timeout + 2000 + inter + rise,
        },
        // ~0–2 s for the command, 0–1 s for the promotion, then HAProxy's detection.
        Scenario::Switchover => ExpectedOutage {
            min_ms: 0,
            avg_ms: 1500 + inter / 2 + rise,
            max_ms: 3000 + inter + rise,
        },
        // The primary is untouched: the VIP moves to a node whose HAProxy routes writes.
        Scenario::KillHaproxy => ExpectedOutage {
            min_ms: VRRP_TAKEOVER_MIN_MS,
            avg_ms: VRRP_TAKEOVER_AVG_MS,
            max_ms: VRRP_TAKEOVER_MAX_MS,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::FailoverProfile;

    fn range(scenario: Scenario, profile: FailoverProfile) -> ExpectedOutage {
        expected_outage(scenario, &profile.patroni(), &profile.haproxy(), false)
    }

    #[test]
    fn node_death_with_the_corroborated_fast_path() {
        let profile = FailoverProfile::Normal;
        let expected = expected_outage(
            Scenario::KillPrimary,
            &profile.patroni(),
            &profile.haproxy(),
            true,
        );
        // Verdict 3–6.75 s after the fault, then Patroni's election (5 s more for a
        // candidate stuck on the dead node's etcd member) and HAProxy's checks.
        assert_eq!(
            (expected.min_ms, expected.avg_ms, expected.max_ms),
            (3_000, 8_875, 18_750)
        );
        // Planned and partial faults do not change.
        assert_eq!(
            expected_outage(
                Scenario::Switchover,
                &profile.patroni(),
                &profile.haproxy(),
                true
            ),
            range(Scenario::Switchover, profile)
        );
    }

    #[test]
    fn node_death_on_the_normal_profile_follows_the_reference_formula() {
        // ttl 30, loop 5, retry 10, inter 2 s, fastinter 1 s, rise 3: (rise − 1)·fastinter = 2 s.
        let expected = range(Scenario::KillPrimary, FailoverProfile::Normal);
        assert_eq!(
            expected,
            ExpectedOutage {
                min_ms: 25_000,
                avg_ms: 34_000,
                max_ms: 51_000
            }
        );
        assert_eq!(
            range(Scenario::FreezePrimary, FailoverProfile::Normal),
            expected
        );
    }

    #[test]
    fn node_death_on_the_fast_profile() {
        // ttl 20, loop 5, retry 5, inter 1 s, fastinter 0.5 s: (rise − 1)·fastinter = 1 s.
        let expected = range(Scenario::PartitionPrimary, FailoverProfile::Fast);
        assert_eq!(
            (expected.min_ms, expected.avg_ms, expected.max_ms),
            (15_000, 22_500, 34_000)
        );
    }

    #[test]
    fn postgres_crash_uses_primary_start_timeout() {
        // loop 5 + start 25 + 1 + inter/2 1 + 2 = 34 s on average.
        let expected = range(Scenario::KillPostgres, FailoverProfile::Normal);
        assert_eq!(expected.avg_ms, 34_000);
        assert_eq!(expected.min_ms, 0);
    }

    #[test]
    fn switchover_is_seconds() {
        let expected = range(Scenario::Switchover, FailoverProfile::Normal);
        assert_eq!(
            (expected.min_ms, expected.avg_ms, expected.max_ms),
            (0, 4_500, 7_000)
        );
        assert!(expected.contains(7_400, 500));
        assert!(!expected.contains(7_600, 500));
        let node_death = range(Scenario::KillPrimary, FailoverProfile::Normal);
        assert!(!node_death.contains(22_900, 2_000), "below the minimum");
        assert!(node_death.contains(23_000, 2_000));
    }
}
