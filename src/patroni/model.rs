//! What Patroni says about a cluster, typed: roles, states, members of `GET /cluster`, and the
//! pure decisions made from them (is it healthy, in which order do pending restarts go).

use serde::Serialize;
use serde_json::Value;

/// A member's role as `GET /cluster` names it. Patroni 3 says `master` where 4 says `primary`;
/// both, and `leader`, mean the member holding the leader lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Role {
    Leader,
    StandbyLeader,
    SyncStandby,
    QuorumStandby,
    Replica,
    Other(String),
}

impl Role {
    pub fn parse(text: &str) -> Role {
        match text {
            "leader" | "primary" | "master" => Role::Leader,
            "standby_leader" => Role::StandbyLeader,
            "sync_standby" => Role::SyncStandby,
            "quorum_standby" => Role::QuorumStandby,
            "replica" => Role::Replica,
            other => Role::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::Leader => "leader",
            Role::StandbyLeader => "standby_leader",
            Role::SyncStandby => "sync_standby",
            Role::QuorumStandby => "quorum_standby",
            Role::Replica => "replica",
            Role::Other(other) => other,
        }
    }
}

impl From<Role> for String {
    fn from(role: Role) -> String {
        role.as_str().to_string()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member's state (`running`, `streaming`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum State {
    Running,
    Streaming,
    Starting,
    Stopping,
    Stopped,
    Other(String),
}

impl State {
    pub fn parse(text: &str) -> State {
        match text {
            "running" => State::Running,
            "streaming" => State::Streaming,
            "starting" => State::Starting,
            "stopping" => State::Stopping,
            "stopped" => State::Stopped,
            other => State::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            State::Running => "running",
            State::Streaming => "streaming",
            State::Starting => "starting",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Other(other) => other,
        }
    }
}

impl From<State> for String {
    fn from(state: State) -> String {
        state.as_str().to_string()
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member of `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub name: String,
    pub role: Role,
    pub state: State,
    pub host: String,
    /// `http://host:port/patroni`, when the member published it.
    pub api_url: Option<String>,
    pub timeline: Option<u64>,
    /// Bytes behind the leader, when known (Patroni says `unknown` otherwise).
    pub lag: Option<u64>,
    /// PostgreSQL runs a setting other than its configuration until it restarts.
    pub pending_restart: bool,
}

impl Member {
    /// Lenient: a member without a name is skipped, every other field has a default.
    pub fn from_json(value: &Value) -> Option<Member> {
        let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
        let name = text("name");
        if name.is_empty() {
            return None;
        }
        Some(Member {
            role: Role::parse(&text("role")),
            state: State::parse(&text("state")),
            host: text("host"),
            api_url: value["api_url"].as_str().map(str::to_string),
            timeline: value["timeline"].as_u64(),
            lag: value["lag"].as_u64(),
            pending_restart: value["pending_restart"].as_bool().unwrap_or(false),
            name,
        })
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// A replica that replays from the leader.
    pub fn streams(&self) -> bool {
        self.role != Role::Leader && self.state == State::Streaming
    }

    /// `http://host:port` of the member's REST API.
    pub fn api_base(&self) -> Option<String> {
        api_base(self.api_url.as_deref()?)
    }
}

/// What a member says of itself (`GET /patroni` on its own API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    /// The Patroni version that answers.
    pub version: Option<String>,
    pub state: State,
    /// [`Role::Leader`] (`primary`) only once PostgreSQL is out of recovery: Patroni derives it
    /// from `pg_is_in_recovery()` (the leader lock alone does not make it `primary`).
    pub role: Role,
    /// The cluster is in maintenance mode (`pause`).
    pub paused: bool,
    /// The postmaster's start time: unchanged means PostgreSQL did not restart.
    pub postmaster_start_time: Option<String>,
}

impl MemberStatus {
    pub fn parse(text: &str) -> Result<MemberStatus, serde_json::Error> {
        let value: Value = serde_json::from_str(text)?;
        let text = |key: &str| value[key].as_str().map(str::to_string);
        Ok(MemberStatus {
            version: value["patroni"]["version"].as_str().map(str::to_string),
            state: State::parse(&text("state").unwrap_or_default()),
            role: Role::parse(&text("role").unwrap_or_default()),
            paused: value["pause"].as_bool().unwrap_or(false),
            postmaster_start_time: text("postmaster_start_time"),
        })
    }
}

/// `https://host:port` of an `api_url` such as `https://host:port/patroni` (`http://` too).
pub fn api_base(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest
        .split('/')
        .next()
        .filter(|authority| !authority.is_empty())?;
    Some(format!("{scheme}://{authority}"))
}

/// The REST API of the member at `address` (`https://host:port`): Patroni serves HTTPS only.
pub fn api_at(address: std::net::IpAddr, port: u16) -> String {
    match address {
        std::net::IpAddr::V4(v4) => format!("https://{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("https://[{v6}]:{port}"),
    }
}

/// The topology `GET /cluster` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub members: Vec<Member>,
}

impl ClusterView {
    pub fn parse(text: &str) -> Result<ClusterView, serde_json::Error> {
        let value: Value = serde_json::from_str(text)?;
        Ok(ClusterView::from_json(&value))
    }

    pub fn from_json(value: &Value) -> ClusterView {
        ClusterView {
            members: value["members"]
                .as_array()
                .map(|members| members.iter().filter_map(Member::from_json).collect())
                .unwrap_or_default(),
        }
    }

    /// The running leader, if exactly one member holds the leader role and runs.
    pub fn leader(&self) -> Option<&Member> {
        let mut leaders = self
            .members
            .iter()
            .filter(|member| member.is_leader() && member.state == State::Running);
        match (leaders.next(), leaders.next()) {
            (Some(leader), None) => Some(leader),
            _ => None,
        }
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|member| member.name == name)
    }

    /// `None` when healthy (one running leader, every other member of `expected` a streaming
    /// replica on the leader's timeline), otherwise the reason in one sentence.
    pub fn unhealthy_reason(&self, expected: &[String]) -> Option<String> {
        let Some(leader) = self.leader() else {
            return Some("no single running leader".to_string());
        };
        for name in expected {
            let Some(member) = self.member(name) else {
                return Some(format!("`{name}` is not a member"));
            };
            if member.name == leader.name {
                continue;
            }
            if member.state != State::Streaming {
                return Some(format!("`{name}` is `{}`, not `streaming`", member.state));
            }
            if member.timeline != leader.timeline {
                return Some(format!(
                    "`{name}` is on timeline {:?}, the leader on {:?}",
                    member.timeline, leader.timeline
                ));
            }
        }
        None
    }
}

/// Settings a hot standby cannot run lower than its primary: PostgreSQL refuses to replay (it
/// pauses recovery) while the standby's value is below the primary's.
pub const HOT_STANDBY_LIMITS: [&str; 5] = [
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// The hot-standby limits `desired` (Patroni's dynamic configuration) lowers below the values
/// the cluster last WAL-logged (`pg_controldata`'s `… setting:` lines, the same on every member
/// once replayed): `max_connections 120 → 100`. A limit the configuration does not set is
/// left out.
pub fn lowered_limits(
    desired: &Value,
    logged: &std::collections::BTreeMap<String, i64>,
) -> Vec<String> {
    HOT_STANDBY_LIMITS
        .iter()
        .filter_map(|name| {
            let want = match &desired["postgresql"]["parameters"][*name] {
                Value::Number(number) => number.as_i64(),
                Value::String(text) => text.trim().parse().ok(),
                _ => None,
            }?;
            let have = *logged.get(*name)?;
            (want < have).then(|| format!("{name} {have} → {want}"))
        })
        .collect()
}

/// `pg_controldata`'s name for a hot-standby limit → the setting's name.
pub fn controldata_limit(line: &str) -> Option<(String, i64)> {
    let (label, value) = line.split_once(" setting:")?;
    let name = match label.trim() {
        "max_prepared_xacts" => "max_prepared_transactions",
        "max_locks_per_xact" => "max_locks_per_transaction",
        other => other,
    };
    HOT_STANDBY_LIMITS
        .contains(&name)
        .then(|| Some((name.to_string(), value.trim().parse().ok()?)))?
}

/// One step of rolling out pending restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum RestartStep {
    /// Restart PostgreSQL on this member in place (Patroni's `POST /restart`).
    Restart { member: String },
    /// Hand the primary role to a streaming standby, then restart the old primary if it still
    /// needs it: one switchover instead of a primary restart.
    SwitchoverThenRestart { member: String },
}

impl std::fmt::Display for RestartStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartStep::Restart { member } => write!(f, "restart {member}"),
            RestartStep::SwitchoverThenRestart { member } => {
                write!(f, "switch over from {member}, then restart it")
            }
        }
    }
}

/// The order in which members with a pending restart restart.
/// - Usually replicas first, then the primary through a switchover: writes pause for one
///   switchover, not for a primary restart.
/// - When a hot-standby limit goes down (`lowering`), a standby cannot run the lower value
///   while its primary runs the higher one, and a switchover would promote a member still
///   running the higher value: so the primary restarts in place first, then the replicas.
pub fn restart_order(view: &ClusterView, lowering: bool) -> Vec<RestartStep> {
    let pending = view.members.iter().filter(|member| member.pending_restart);
    let (leaders, replicas): (Vec<&Member>, Vec<&Member>) =
        pending.partition(|member| member.is_leader());
    let restart = |member: &&Member| RestartStep::Restart {
        member: member.name.clone(),
    };
    let mut steps = Vec::new();
    if lowering {
        steps.extend(leaders.iter().map(restart));
        steps.extend(replicas.iter().map(restart));
    } else {
        steps.extend(replicas.iter().map(restart));
        steps.extend(
            leaders
                .iter()
                .map(|member| RestartStep::SwitchoverThenRestart {
                    member: member.name.clone(),
                }),
        );
    }
    steps
}

/// The keys of `desired` (recursively) whose value differs from `current`'s, as a patch for
/// `PATCH /config`. Values compare as text, case-insensitively (`on` = `On`, `30` = `"30"`).
pub fn config_patch(desired: &Value, current: &Value) -> serde_json::Map<String, Value> {
    let mut patch = serde_json::Map::new();
    if let Value::Object(desired) = desired {
        for (key, want) in desired {
            let have = current.get(key).unwrap_or(&Value::Null);
            if want.is_object() {
                let inner = config_patch(want, have);
                if !inner.is_empty() {
                    patch.insert(key.clone(), Value::Object(inner));
                }
            } else if !same_setting(want, have) {
                patch.insert(key.clone(), want.clone());
            }
        }
    }
    patch
}

fn same_setting(want: &Value, have: &Value) -> bool {
    let text = |value: &Value| match value {
        Value::String(text) => text.to_lowercase(),
        other => other.to_string().to_lowercase(),
    };
    !have.is_null() && text(want) == text(have)
}

/// `a.b.c` paths of every leaf of a patch, for a one-line summary.
pub fn patch_paths(patch: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut paths = Vec::new();
    for (key, value) in patch {
        match value {
            Value::Object(inner) => paths.extend(
                patch_paths(inner)
                    .into_iter()
                    .map(|path| format!("{key}.{path}")),
            ),
            _ => paths.push(key.clone()),
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_own_status_is_read() {
        let status = MemberStatus::parse(
            r#"{"state": "running", "postmaster_start_time": "2026-12-01 00:04:35.737375+00:00", "role": "replica", "pause": true, "patroni": {"version": "4.1.5", "scope": "lab", "name": "node2"}}"#,
        )
        .unwrap();
        assert_eq!(status.version.as_deref(), Some("4.1.5"));
        assert_eq!(status.state, State::Running);
        assert_eq!(status.role, Role::Replica);
        assert!(status.paused);
        assert_eq!(
            status.postmaster_start_time.as_deref(),
            Some("2026-12-01 00:04:35.737375+00:00")
        );
        let stopped =
            MemberStatus::parse(r#"{"state": "stopped", "role": "uninitialized"}"#).unwrap();
        assert!(!stopped.paused && stopped.version.is_none());
        assert!(MemberStatus::parse("not json").is_err());
    }

    const CLUSTER: &str = r#"{"members": [
        {"name": "node1", "role": "leader", "state": "running", "api_url": "http://10.231.0.11:8008/patroni", "host": "10.231.0.11", "port": 5432, "timeline": 3},
        {"name": "node2", "role": "sync_standby", "state": "streaming", "host": "10.231.0.12", "port": 5432, "timeline": 3, "lag": 0},
        {"name": "node3", "role": "replica", "state": "streaming", "host": "10.231.0.13", "port": 5432, "timeline": 3, "lag": "unknown"}
    ], "scope": "lab"}"#;

    fn names() -> Vec<String> {
        ["node1", "node2", "node3"].map(String::from).to_vec()
    }

    #[test]
    fn roles_and_states_are_typed() {
        let view = ClusterView::parse(CLUSTER).expect("valid JSON");
        assert_eq!(view.members[0].role, Role::Leader);
        assert_eq!(view.members[1].role, Role::SyncStandby);
        assert_eq!(view.members[2].state, State::Streaming);
        assert_eq!(view.members[2].lag, None);
        assert_eq!(Role::parse("master"), Role::Leader);
        assert_eq!(Role::parse("odd").as_str(), "odd");
        assert_eq!(
            view.members[0].api_base().as_deref(),
            Some("http://10.231.0.11:8008")
        );
        assert_eq!(
            serde_json::to_string(&view.members[1].role).expect("serializes"),
            "\"sync_standby\""
        );
    }

    #[test]
    fn a_healthy_cluster_has_one_leader_and_streaming_replicas() {
        let view = ClusterView::parse(CLUSTER).expect("valid JSON");
        assert_eq!(
            view.leader().map(|leader| leader.name.as_str()),
            Some("node1")
        );
        assert_eq!(view.unhealthy_reason(&names()), None);
    }

    #[test]
    fn a_replica_that_does_not_stream_or_a_missing_leader_is_unhealthy() {
        let text = CLUSTER.replace(
            r#""state": "streaming", "host": "10.231.0.13""#,
            r#""state": "starting", "host": "10.231.0.13""#,
        );
        let view = ClusterView::parse(&text).expect("valid JSON");
        assert_eq!(
            view.unhealthy_reason(&names()).as_deref(),
            Some("`node3` is `starting`, not `streaming`")
        );
        let mut more = names();
        more.push("node4".into());
        let view = ClusterView::parse(CLUSTER).expect("valid JSON");
        assert_eq!(
            view.unhealthy_reason(&more).as_deref(),
            Some("`node4` is not a member")
        );
        let text = CLUSTER.replace(r#""role": "leader""#, r#""role": "replica""#);
        let view = ClusterView::parse(&text).expect("valid JSON");
        assert_eq!(
            view.unhealthy_reason(&names()).as_deref(),
            Some("no single running leader")
        );
    }

    fn all_pending() -> ClusterView {
        let mut view = ClusterView::parse(CLUSTER).expect("valid JSON");
        for member in &mut view.members {
            member.pending_restart = true;
        }
        view
    }

    #[test]
    fn raised_limits_restart_replicas_first_and_switch_over_the_primary() {
        assert_eq!(
            restart_order(&all_pending(), false),
            [
                RestartStep::Restart {
                    member: "node2".into()
                },
                RestartStep::Restart {
                    member: "node3".into()
                },
                RestartStep::SwitchoverThenRestart {
                    member: "node1".into()
                },
            ]
        );
    }

    #[test]
    fn lowered_limits_restart_the_primary_first_in_place() {
        let steps = restart_order(&all_pending(), true);
        assert_eq!(
            steps[0],
            RestartStep::Restart {
                member: "node1".into()
            }
        );
        assert_eq!(steps.len(), 3);
        let logged = [
            ("max_connections".to_string(), 120),
            ("max_wal_senders".to_string(), 10),
        ]
        .into_iter()
        .collect();
        let lower = serde_json::json!({"postgresql": {"parameters": {"max_connections": 100, "max_wal_senders": "10"}}});
        assert_eq!(
            lowered_limits(&lower, &logged),
            ["max_connections 120 → 100"]
        );
        let higher = serde_json::json!({"postgresql": {"parameters": {"max_connections": "140"}}});
        assert!(lowered_limits(&higher, &logged).is_empty());
        assert!(lowered_limits(&Value::Null, &logged).is_empty());
        assert_eq!(
            controldata_limit("max_locks_per_xact setting:           64"),
            Some(("max_locks_per_transaction".to_string(), 64))
        );
        assert_eq!(
            controldata_limit("max_connections setting:              120"),
            Some(("max_connections".to_string(), 120))
        );
        assert_eq!(
            controldata_limit("wal_level setting:                    replica"),
            None
        );
        assert_eq!(
            controldata_limit("Database cluster state: in production"),
            None
        );
        let mut none = all_pending();
        none.members
            .iter_mut()
            .for_each(|member| member.pending_restart = false);
        assert!(restart_order(&none, true).is_empty());
    }

    #[test]
    fn a_config_patch_holds_only_what_differs() {
        let desired = serde_json::json!({"ttl": 30, "synchronous_mode": true,
            "postgresql": {"parameters": {"max_connections": 120, "wal_level": "replica"}}});
        let current = serde_json::json!({"ttl": 30, "synchronous_mode": "True",
            "postgresql": {"parameters": {"max_connections": "100", "wal_level": "replica"}}});
        let patch = config_patch(&desired, &current);
        assert_eq!(
            Value::Object(patch.clone()),
            serde_json::json!({"postgresql": {"parameters": {"max_connections": 120}}})
        );
        assert_eq!(
            patch_paths(&patch),
            ["postgresql.parameters.max_connections"]
        );
        assert!(config_patch(&desired, &desired).is_empty());
        let missing = config_patch(&desired, &serde_json::json!({}));
        assert_eq!(missing.len(), 3);
    }
}
