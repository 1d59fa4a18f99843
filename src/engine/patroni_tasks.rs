//! The deploy's Patroni tasks, planned from the local member's facts ([`PatroniFacts`]) and
//! applied through the one Patroni layer ([`crate::patroni`]):
//! - `patroni_config`: `PATCH /config` with only the settings that differ from the inventory;
//! - `patroni_restart`: members with a pending restart, in the order that is safe for the
//!   change (see [`crate::patroni::model::restart_order`]);
//! - `patroni_wait`: a running leader, or this member leading or streaming.
//!
//! Plans only read facts, so `--check` shows the patch and the restart order, and a no-op says
//! why; applying re-reads the cluster first, since a plan's facts may be older than a change.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::facts::Facts;
use super::modules::{Action, Applied, Plan};
use super::playbook::WaitUntil;
use crate::patroni::model::{config_patch, lowered_limits, patch_paths, restart_order};
use crate::patroni::{rolling, ClusterView, Credentials, Patroni, RestartStep, State};
use crate::ssh::Session;

/// `patroni_config`'s plan: what differs between `desired` and the stored configuration.
pub fn plan_config(
    api: String,
    desired: Value,
    credentials: Credentials,
    settle: u64,
    facts: &Facts,
) -> Plan {
    let action = |summary: String| Plan::Act {
        summary,
        action: Action::PatroniConfig {
            api: api.clone(),
            desired: desired.clone(),
            credentials: credentials.clone(),
            settle,
        },
        changes: true,
    };
    let Some(current) = facts.patroni.as_ref().and_then(|p| p.config.as_ref()) else {
        return action(format!(
            "set Patroni's dynamic configuration (`{api}/config` does not answer yet; compared when applied)"
        ));
    };
    let patch = config_patch(&desired, current);
    if patch.is_empty() {
        return Plan::NoChange("Patroni's dynamic configuration matches the inventory".into());
    }
    action(format!("set {}", describe_patch(&patch, current)))
}

/// `ttl 30 → 20, postgresql.parameters.max_connections 100 → 120`.
fn describe_patch(patch: &serde_json::Map<String, Value>, current: &Value) -> String {
    patch_paths(patch)
        .iter()
        .map(|path| {
            let lookup = |root: &Value| {
                path.split('.')
                    .try_fold(root.clone(), |value, key| value.get(key).cloned())
                    .map(|value| match value {
                        Value::String(text) => text,
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "unset".into())
            };
            format!(
                "{path} {} → {}",
                lookup(current),
                lookup(&Value::Object(patch.clone()))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `patroni_restart`'s plan: the members with a pending restart, in a safe order.
pub fn plan_restart(api: String, credentials: Credentials, facts: &Facts) -> Plan {
    let Some(patroni) = facts.patroni.as_ref() else {
        return Plan::NoChange("Patroni was not asked".into());
    };
    let Some(view) = patroni.cluster.as_ref() else {
        return Plan::NoChange(format!(
            "`{api}/cluster` does not answer: no running member to restart"
        ));
    };
    let lowered = match &patroni.config {
        Some(config) => lowered_limits(config, &patroni.logged_limits),
        None => Vec::new(),
    };
    let steps = restart_order(view, !lowered.is_empty());
    if steps.is_empty() {
        return Plan::NoChange("no member has a restart pending".into());
    }
    let order = steps
        .iter()
        .map(RestartStep::to_string)
        .collect::<Vec<_>>()
        .join(", then ");
    let why = if lowered.is_empty() {
        "replicas first, the primary through one switchover".to_string()
    } else {
        format!(
            "the primary first, in place: a standby cannot run lower than its primary ({})",
            lowered.join(", ")
        )
    };
    Plan::Act {
        summary: format!("{order} ({why})"),
        action: Action::PatroniRestart {
            api,
            steps,
            credentials,
        },
        changes: true,
    }
}

pub fn plan_wait(api: String, until: WaitUntil, member: String, timeout: u64) -> Plan {
    let what = match until {
        WaitUntil::Leader => "a running leader".to_string(),
        WaitUntil::MemberStreams => format!("{member} to lead or stream"),
    };
    Plan::Act {
        summary: format!("wait for {what}"),
        action: Action::PatroniWait {
            api,
            until,
            member,
            timeout,
        },
        changes: false,
    }
}

pub async fn apply_config(
    session: &Arc<Session>,
    api: &str,
    desired: &Value,
    credentials: &Credentials,
    settle: u64,
) -> anyhow::Result<Applied> {
    let patroni = Patroni::over_ssh(session.clone(), Some(credentials.clone()));
    let current = patroni.config(api).await?;
    let patch = config_patch(desired, &current);
    if patch.is_empty() {
        return Ok(Applied::AlreadyThere(
            "Patroni's dynamic configuration matches the inventory".into(),
        ));
    }
    let summary = describe_patch(&patch, &current);
    let touches_postgres = patch.contains_key("postgresql");
    patroni
        .patch_config(api, &Value::Object(patch))
        .await
        .context("cannot change Patroni's dynamic configuration")?;
    // Members apply it on their next HA loop; a restart it needs shows only after that.
    if touches_postgres {
        tokio::time::sleep(Duration::from_secs(settle)).await;
    }
    Ok(Applied::DoneBecause(format!("patched {summary}")))
}

pub async fn apply_restart(
    session: &Arc<Session>,
    api: &str,
    steps: &[RestartStep],
    credentials: &Credentials,
) -> anyhow::Result<Applied> {
    let patroni = Patroni::over_ssh(session.clone(), Some(credentials.clone()));
    let done = rolling::restart_pending(&patroni, api, steps).await?;
    if done.is_empty() {
        return Ok(Applied::AlreadyThere(
            "no member has a restart pending any more".into(),
        ));
    }
    Ok(Applied::DoneBecause(done.join(", ")))
}

pub async fn apply_wait(
    session: &Arc<Session>,
    api: &str,
    until: WaitUntil,
    member: &str,
    timeout: u64,
) -> anyhow::Result<Applied> {
    let patroni = Patroni::over_ssh(session.clone(), None);
    let test = |view: &ClusterView| match until {
        WaitUntil::Leader => view.leader().is_some(),
        WaitUntil::MemberStreams => view
            .member(member)
            .is_some_and(|m| (m.is_leader() && m.state == State::Running) || m.streams()),
    };
    let what = match until {
        WaitUntil::Leader => "a running leader".to_string(),
        WaitUntil::MemberStreams => format!("{member} to lead or stream"),
    };
    if timeout == 0 {
        bail!("`patroni_wait` needs a timeout above 0");
    }
    patroni
        .wait_for(api, &what, Duration::from_secs(timeout), test)
        .await?;
    Ok(Applied::Done(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::facts::PatroniFacts;

    fn facts(config: Value, cluster: &str, logged: &[(&str, i64)]) -> Facts {
        Facts {
            patroni: Some(PatroniFacts {
                config: Some(config),
                cluster: Some(ClusterView::parse(cluster).expect("valid")),
                logged_limits: logged
                    .iter()
                    .map(|(name, value)| (name.to_string(), *value))
                    .collect(),
            }),
            ..Facts::default()
        }
    }

    fn max_connections(value: i64) -> Value {
        serde_json::json!({"postgresql": {"parameters": {"max_connections": value}}})
    }

    const PENDING: &str = r#"{"members": [
        {"name": "node1", "role": "leader", "state": "running", "pending_restart": true},
        {"name": "node2", "role": "sync_standby", "state": "streaming", "pending_restart": true}]}"#;

    fn summary(plan: &Plan) -> String {
        match plan {
            Plan::NoChange(reason) => format!("no change: {reason}"),
            Plan::Act { summary, .. } => summary.clone(),
        }
    }

    #[test]
    fn config_plans_name_what_changes_and_why_nothing_does() {
        let current =
            serde_json::json!({"ttl": 30, "postgresql": {"parameters": {"max_connections": 100}}});
        let desired =
            serde_json::json!({"ttl": 30, "postgresql": {"parameters": {"max_connections": 120}}});
        let plan = plan_config(
            "http://n:8008".into(),
            desired,
            Credentials::pgha("secret"),
            8,
            &facts(current.clone(), PENDING, &[]),
        );
        assert_eq!(
            summary(&plan),
            "set postgresql.parameters.max_connections 100 → 120"
        );
        assert!(!format!("{plan:?}").contains("secret"));
        let same = plan_config(
            "http://n:8008".into(),
            current.clone(),
            Credentials::pgha("secret"),
            8,
            &facts(current, PENDING, &[]),
        );
        assert_eq!(
            summary(&same),
            "no change: Patroni's dynamic configuration matches the inventory"
        );
    }

    #[test]
    fn restart_plans_follow_the_direction_of_the_change() {
        let raised = plan_restart(
            "http://n:8008".into(),
            Credentials::pgha("x"),
            &facts(max_connections(120), PENDING, &[("max_connections", 100)]),
        );
        assert_eq!(
            summary(&raised),
            "restart node2, then switch over from node1, then restart it (replicas first, the primary through one switchover)"
        );
        let lowered = plan_restart(
            "http://n:8008".into(),
            Credentials::pgha("x"),
            &facts(max_connections(100), PENDING, &[("max_connections", 120)]),
        );
        assert_eq!(
            summary(&lowered),
            "restart node1, then restart node2 (the primary first, in place: a standby cannot run lower than its primary (max_connections 120 → 100))"
        );
        let quiet = PENDING.replace("true", "false");
        assert_eq!(
            summary(&plan_restart(
                "http://n:8008".into(),
                Credentials::pgha("x"),
                &facts(Value::Null, &quiet, &[])
            )),
            "no change: no member has a restart pending"
        );
    }
}
