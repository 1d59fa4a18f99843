//! Operations that change a running cluster one member at a time, each step waiting until the
//! cluster is healthy again before the next: pending restarts (in the order
//! [`super::model::restart_order`] decides) and the switchover they use.

use std::time::Duration;

use super::client::{Patroni, PatroniError};
use super::model::{ClusterView, Member, RestartStep, State};

/// How long Patroni may keep answering 412/503 before a request counts as refused.
const PATIENCE: Duration = Duration::from_secs(90);
/// How long a member may take to run (and stream) again after a restart or a switchover.
const SETTLE: Duration = Duration::from_secs(120);

fn member_base(view: &ClusterView, name: &str) -> Result<String, PatroniError> {
    view.member(name)
        .and_then(Member::api_base)
        .ok_or_else(|| PatroniError::Json(name.to_string(), "no `api_url` in `/cluster`".into()))
}

/// The member runs its configuration: the leader running, a replica streaming.
fn settled(view: &ClusterView, name: &str, as_leader: bool) -> bool {
    view.member(name).is_some_and(|member| {
        !member.pending_restart
            && if as_leader {
                member.is_leader() && member.state == State::Running
            } else {
                member.streams()
            }
    }) && view.leader().is_some()
}

/// Run `steps`, asking `entry` (any member's `http://host:port`) for the topology between them.
/// Returns one line per step done.
pub async fn restart_pending(
    patroni: &Patroni,
    entry: &str,
    steps: &[RestartStep],
) -> Result<Vec<String>, PatroniError> {
    let mut done = Vec::new();
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
                patroni
                    .restart(&member_base(&view, member)?, PATIENCE)
                    .await?;
                patroni
                    .wait_for(
                        entry,
                        &format!("{member} to run again after its restart"),
                        SETTLE,
                        |view| settled(view, member, as_leader),
                    )
                    .await?;
                done.push(format!(
                    "restarted {member}{}",
                    if as_leader {
                        " (primary, in place)"
                    } else {
                        ""
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
                    patroni
                        .restart(&member_base(&view, member)?, PATIENCE)
                        .await?;
                    done.push(format!("restarted {member}"));
                }
                patroni
                    .wait_for(
                        entry,
                        &format!("{member} to stream with its new settings"),
                        SETTLE,
                        |view| settled(view, member, false),
                    )
                    .await?;
            }
        }
    }
    Ok(done)
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
    patroni
        .switchover(&base, leader, candidate, PATIENCE)
        .await?;
    let view = patroni
        .wait_for(&base, "another member to lead", SETTLE, |view| {
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
