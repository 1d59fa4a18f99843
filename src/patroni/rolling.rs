//! Operations that change a running cluster one member at a time, each step waiting until the
//! cluster is healthy again before the next: pending restarts (in the order
//! [`super::model::restart_order`] decides) and the switchover they use.

use std::time::Duration;

use super::client::{Patroni, PatroniError};
use super::model::{ClusterView, Member, RestartStep, Role, State};

/// How long Patroni may keep answering 412/503 before a request counts as refused.
const PATIENCE: Duration = Duration::from_secs(90);
/// How long a member may take to run (and stream) again after a restart or a switchover.
const SETTLE: Duration = Duration::from_secs(120);

fn member_base(view: &ClusterView, name: &str) -> Result<String, PatroniError> {
    view.member(name)
        .and_then(Member::api_base)
        .ok_or_else(|| PatroniError::Json(name.to_string(), "no `api_url` in `/cluster`".into()))
}

/// Run `steps`, asking `entry` (any member's `http://host:port`) for the topology between them.
/// Returns one line per step done.
pub async fn restart_pending(
    patroni: &Patroni,
    entry: &str,
    steps: &[RestartStep],
) -> Result<Vec<String>, PatroniError> {
    let mut done = Vec::new();
    let before = patroni
        .wait_for(entry, "an answer to `/cluster`", SETTLE, |_| true)
        .await?;
    let had_sync = before
        .members
        .iter()
        .any(|member| member.role == Role::SyncStandby);
    for step in steps {
        let view = patroni
            .wait_for(entry, "an answer to `/cluster`", SETTLE, |_| true)
            .await?;
        match step {
            RestartStep::Restart { member } => {
                let Some(current) = view.member(member) else {
                    continue;
                };
                if !current.pending_restart {
                    continue;
                }
                let as_leader = current.is_leader();
                let attempts = restart_member(patroni, entry, &view, member, as_leader).await?;
                done.push(format!(
                    "restarted {member}{}{}",
                    if as_leader {
                        " (primary, in place)"
                    } else {
                        ""
                    },
                    if attempts > 1 {
                        format!(" ({attempts} times)")
                    } else {
                        String::new()
                    }
                ));
            }
            RestartStep::SwitchoverThenRestart { member } => {
                let Some(current) = view.member(member) else {
                    continue;
                };
                if current.is_leader() {
                    switchover(patroni, &view, member, None).await?;
                    done.push(format!("switched over from {member}"));
                }
                let view = patroni
                    .wait_for(
                        entry,
                        &format!("{member} to stream from the new primary"),
                        SETTLE,
                        |view| view.member(member).is_some_and(Member::streams),
                    )
                    .await?;
                if view.member(member).is_some_and(|m| m.pending_restart) {
                    restart_member(patroni, entry, &view, member, false).await?;
                    done.push(format!("restarted {member}"));
                }
            }
        }
    }
    // Done means healthy again: with synchronous replication, a synchronous standby assigned.
    if had_sync && !done.is_empty() {
        patroni
            .wait_for(entry, "a synchronous standby again", SETTLE, |view| {
                view.leader().is_some()
                    && view
                        .members
                        .iter()
                        .any(|member| member.role == Role::SyncStandby && member.streams())
            })
            .await?;
    }
    Ok(done)
}

/// A replica this close to the leader has replayed what the leader logged at its start.
const CAUGHT_UP_BYTES: u64 = 1_048_576;
/// How long a restarted member may take to report that it runs its configuration (its
/// next HA loops).
const PENDING_CLEARS: Duration = Duration::from_secs(30);
/// How many times a replica is restarted before its pending restart counts as stuck.
const REPLICA_ATTEMPTS: u32 = 3;

/// Restart `member` until it runs its configuration; returns how many restarts it took.
///
/// A replica can need a second one: Patroni starts a hot standby with at least the limits its
/// data directory last saw from the primary (`pg_controldata`), so a replica restarted before
/// it replayed the primary's lowered `max_connections` comes back with the old value and a
/// restart still pending. Each attempt waits until the replica streams (and so replays) first.
async fn restart_member(
    patroni: &Patroni,
    entry: &str,
    view: &ClusterView,
    member: &str,
    as_leader: bool,
) -> Result<u32, PatroniError> {
    let base = member_base(view, member)?;
    let attempts = if as_leader { 1 } else { REPLICA_ATTEMPTS };
    for attempt in 1..=attempts {
        if !as_leader {
            patroni
                .wait_for(
                    entry,
                    &format!("{member} to stream before its restart"),
                    SETTLE,
                    |view| {
                        view.member(member).is_some_and(|m| {
                            m.streams() && m.lag.is_some_and(|lag| lag <= CAUGHT_UP_BYTES)
                        })
                    },
                )
                .await?;
        }
        patroni.restart(&base, PATIENCE).await?;
        let up = |view: &ClusterView| {
            view.leader().is_some()
                && view.member(member).is_some_and(|m| {
                    if as_leader {
                        m.is_leader() && m.state == State::Running
                    } else {
                        m.streams()
                    }
                })
        };
        patroni
            .wait_for(
                entry,
                &format!("{member} to run again after its restart"),
                SETTLE,
                up,
            )
            .await?;
        // `pending_restart` in `/cluster` is what the member last wrote to the DCS: it clears
        // on the member's next HA loop, not at once.
        let cleared = patroni
            .wait_for(
                entry,
                &format!("{member} to report no pending restart"),
                PENDING_CLEARS,
                |view| up(view) && view.member(member).is_some_and(|m| !m.pending_restart),
            )
            .await;
        match cleared {
            Ok(_) => return Ok(attempt),
            Err(PatroniError::Timeout { .. }) => continue,
            Err(other) => return Err(other),
        }
    }
    Err(PatroniError::Stuck(format!(
        "{member} still has a restart pending after {attempts} restart(s); hint: see `journalctl -u patroni` on {member}"
    )))
}

/// One switchover away from `leader` (to `candidate` or Patroni's pick), through the leader's
/// own API; returns once another member leads and runs.
pub async fn switchover(
    patroni: &Patroni,
    view: &ClusterView,
    leader: &str,
    candidate: Option<&str>,
) -> Result<String, PatroniError> {
    let base = member_base(view, leader)?;
    match patroni.switchover(&base, leader, candidate, PATIENCE).await {
        Ok(_) => {}
        // "Switchover status unknown": it may still land; `/cluster` below decides.
        Err(PatroniError::Status { status: 503, .. }) => {}
        Err(error) => return Err(error),
    }
    await_other_leader(patroni, &base, leader, candidate).await
}

/// After a switchover request away from `leader`: wait until another member (`candidate`, if
/// named) leads and runs; its name.
pub async fn await_other_leader(
    patroni: &Patroni,
    base: &str,
    leader: &str,
    candidate: Option<&str>,
) -> Result<String, PatroniError> {
    let view = patroni
        .wait_for(base, "another member to lead", SETTLE, |view| {
            view.leader().is_some_and(|new| {
                new.name != leader && candidate.is_none_or(|candidate| new.name == candidate)
            })
        })
        .await?;
    Ok(view
        .leader()
        .map(|leader| leader.name.clone())
        .unwrap_or_default())
}
