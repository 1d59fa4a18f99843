//! The etcd side: one task that reads the Patroni scope (`leader`, `members/`, ...) once,
//! then follows it with a watch, re-reads it every few seconds (a missed event cannot stick)
//! and reconnects with backoff when etcd is unreachable. It only reads etcd.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio::sync::Notify;

use super::decide::{ClusterView, Member};

/// etcd wants the cluster CA's trust and the node's certificate (read at each connect, so a
/// reconnect after a renewal presents the new one).
pub(super) fn tls_options() -> Result<etcd_client::TlsOptions, EtcdError> {
    let files = crate::tls::ClientFiles::node();
    let ca = files
        .ca_pem()
        .map_err(|error| EtcdError::Tls(format!("{error:#}")))?;
    let (cert, key) = files
        .identity_pem()
        .map_err(|error| EtcdError::Tls(format!("{error:#}")))?;
    Ok(etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(ca))
        .identity(etcd_client::Identity::from_pem(cert, key)))
}

/// How often the whole scope is read again, watch or not.
const RESYNC: Duration = Duration::from_secs(5);

/// What the watch task knows; the decision loop reads it.
#[derive(Debug, Default)]
pub struct EtcdState {
    pub synced: bool,
    pub reachable: bool,
    /// etcd itself has a raft leader (`None` before the first status call).
    pub has_raft_leader: Option<bool>,
    /// Keys under the prefix, without the prefix.
    pub keys: BTreeMap<String, String>,
    pub leader: Option<String>,
    pub leader_since: Option<Instant>,
    pub last_error: Option<String>,
}

impl EtcdState {
    /// Replace or update a key; tracks when the leader key changed.
    fn set(&mut self, key: String, value: Option<String>) {
        if key == "leader" {
            let leader = value.clone().filter(|value| !value.is_empty());
            if leader != self.leader {
                self.leader = leader;
                self.leader_since = Some(Instant::now());
            }
        }
        match value {
            Some(value) => self.keys.insert(key, value),
            None => self.keys.remove(&key),
        };
    }

    /// The cluster view the decision needs.
    pub fn view(&self, now: Instant) -> ClusterView {
        let mut members = BTreeMap::new();
        let mut positions = BTreeMap::new();
        for (key, value) in &self.keys {
            let Some(name) = key.strip_prefix("members/") else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(value) else {
                continue;
            };
            let text = |field: &str| {
                json.get(field)
                    .and_then(|value| value.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            if let Some(position) = json.get("xlog_location").and_then(|value| value.as_u64()) {
                positions.insert(name.to_string(), position);
            }
            let noloadbalance = json
                .get("tags")
                .and_then(|tags| tags.get("noloadbalance"))
                .is_some_and(|flag| flag.as_bool().unwrap_or(true));
            members.insert(
                name.to_string(),
                Member {
                    role: text("role"),
                    state: text("state"),
                    api_url: text("api_url"),
                    lag_bytes: None,
                    noloadbalance,
                },
            );
        }
        if let Some(head) = self
            .leader
            .as_ref()
            .and_then(|leader| positions.get(leader))
        {
            for (name, member) in members.iter_mut() {
                if Some(name) != self.leader.as_ref() {
                    member.lag_bytes = positions
                        .get(name)
                        .map(|position| head.saturating_sub(*position));
                }
            }
        }
        ClusterView {
            synced: self.synced,
            etcd_reachable: self.reachable,
            leader: self.leader.clone(),
            leader_age: self.leader_since.map(|since| now.duration_since(since)),
            members,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum EtcdError {
    #[error(transparent)]
    Client(#[from] etcd_client::Error),
    #[error("the watch was closed by etcd")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
}

/// Follow the scope until the process ends; `changed` is notified on every change.
///
/// One endpoint at a time, the first one first (the agent puts the node's own member there),
/// the next one after a quick failure, the first one again after a session that had worked: a client given every endpoint at once kept retrying a dead
/// member's (`tcp connect error … TimedOut`) through a whole failover, while its own member
/// answered.
pub async fn follow(
    endpoints: Vec<String>,
    prefix: String,
    state: Arc<Mutex<EtcdState>>,
    changed: Arc<Notify>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut next = 0;
    loop {
        let started = Instant::now();
        let endpoint = endpoints.get(next % endpoints.len().max(1)).cloned();
        next += 1;
        let error = session(endpoint.as_slice(), &prefix, &state, &changed).await;
        {
            let Ok(mut state) = state.lock() else { return };
            if state.reachable || state.last_error.is_none() {
                println!(
                    "etcd unreachable at {}: {error}; trying the next member, with backoff",
                    endpoint.as_deref().unwrap_or("(no endpoint)")
                );
            }
            state.reachable = false;
            state.last_error = Some(error.to_string());
        }
        changed.notify_one();
        if started.elapsed() > Duration::from_secs(10) {
            // A session that worked for a while: start again from the node's own member,
            // which may be back.
            backoff = Duration::from_millis(200);
            next = 0;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection: read, watch, resync; returns why it ended.
async fn session(
    endpoints: &[String],
    prefix: &str,
    state: &Mutex<EtcdState>,
    changed: &Notify,
) -> EtcdError {
    match watch_session(endpoints, prefix, state, changed).await {
        Ok(()) => EtcdError::Closed,
        Err(error) => error,
    }
}

async fn watch_session(
    endpoints: &[String],
    prefix: &str,
    state: &Mutex<EtcdState>,
    changed: &Notify,
) -> Result<(), EtcdError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    // Plain endpoints exist only on a cluster deployed before TLS, until `pgha deploy` moves it.
    let options = if endpoints
        .iter()
        .any(|endpoint| endpoint.starts_with("https://"))
    {
        options.with_tls(tls_options()?)
    } else {
        options
    };
    let mut client = Client::connect(endpoints, Some(options)).await?;
    let revision = resync(&mut client, prefix, state).await?;
    changed.notify_one();
    let mut stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    let mut timer = tokio::time::interval(RESYNC);
    timer.tick().await;
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(response) = message? else { return Err(EtcdError::Closed) };
                if response.canceled() {
                    return Err(EtcdError::Closed);
                }
                {
                    let Ok(mut state) = state.lock() else { return Ok(()) };
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        let Some(key) = key.strip_prefix(prefix) else { continue };
                        let value = match event.event_type() {
                            EventType::Put => Some(String::from_utf8_lossy(kv.value()).to_string()),
                            EventType::Delete => None,
                        };
                        state.set(key.to_string(), value);
                    }
                }
                changed.notify_one();
            }
            _ = timer.tick() => {
                resync(&mut client, prefix, state).await?;
                changed.notify_one();
            }
        }
    }
}

/// Read the whole scope and etcd's own leadership; returns the read's revision.
async fn resync(
    client: &mut Client,
    prefix: &str,
    state: &Mutex<EtcdState>,
) -> Result<i64, EtcdError> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let raft_leader = client
        .status()
        .await
        .map(|status| status.leader() != 0)
        .ok();
    let revision = response
        .header()
        .map(|header| header.revision())
        .unwrap_or(0);
    let mut fresh = BTreeMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        if let Some(key) = key.strip_prefix(prefix) {
            fresh.insert(
                key.to_string(),
                String::from_utf8_lossy(kv.value()).to_string(),
            );
        }
    }
    if let Ok(mut state) = state.lock() {
        let stale: Vec<String> = state
            .keys
            .keys()
            .filter(|key| !fresh.contains_key(*key))
            .cloned()
            .collect();
        for key in stale {
            state.set(key, None);
        }
        for (key, value) in fresh {
            state.set(key, Some(value));
        }
        if !state.reachable && state.last_error.is_some() {
            println!("etcd reachable again");
        }
        state.synced = true;
        state.reachable = true;
        state.has_raft_leader = raft_leader;
        state.last_error = None;
    }
    Ok(revision)
}

/// How often the primary's agent looks at who leads etcd's raft.
pub const RAFT_GUARD_INTERVAL: Duration = Duration::from_secs(2);

/// Keep etcd's raft leadership off the node whose Patroni leads (its local `GET /patroni`
/// says `primary`), for as long as the process runs.
///
/// A power cut of a node that leads both costs more than the TTL: etcd elects a new raft
/// leader, and a new raft leader extends every lease by its full TTL (etcd refreshes leases on
/// promotion), so the dead primary's leader key outlives it by the election as well — 32.6 s
/// instead of at most 30 with `ttl: 30` in the lab's drills. Moving the raft leadership away
/// beforehand (`move-leader`, a planned transfer that costs etcd a few ms) removes that.
pub async fn keep_raft_leader_away(local_endpoint: String, patroni_api: String) {
    // After a failed transfer (a target just restarted and behind, say) the next attempt
    // picks the next voter.
    let mut attempt = 0;
    loop {
        tokio::time::sleep(RAFT_GUARD_INTERVAL).await;
        // Asked of the local Patroni, not of the agent's view of etcd (which a failover may
        // leave behind for a moment).
        let role = super::probe::patroni_role(&patroni_api).await;
        if !role.as_deref().is_some_and(super::decide::is_primary_role) {
            continue;
        }
        match move_raft_leader_away(&local_endpoint, attempt).await {
            Ok(Some(target)) => println!(
                "etcd's raft leadership moved from this node (Patroni's leader) to member {target:x}: a failure of this node no longer needs a raft election before the leader key can expire"
            ),
            Ok(None) => {}
            Err(error) => {
                attempt += 1;
                println!("cannot move etcd's raft leadership away from this node: {error}; trying another member");
            }
        }
    }
}

/// `move-leader` to another voter when the local member leads the raft (the `attempt`-th of
/// them, in ID order, round robin); the new leader's ID.
async fn move_raft_leader_away(endpoint: &str, attempt: usize) -> Result<Option<u64>, EtcdError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    let options = if endpoint.starts_with("https://") {
        options.with_tls(tls_options()?)
    } else {
        options
    };
    let mut client = Client::connect([endpoint], Some(options)).await?;
    let status = client.status().await?;
    let me = status.header().map(|header| header.member_id());
    if me != Some(status.leader()) {
        return Ok(None);
    }
    let members = client.member_list().await?;
    let mut voters: Vec<u64> = members
        .members()
        .iter()
        .filter(|member| {
            Some(member.id()) != me && !member.is_learner() && !member.name().is_empty()
        })
        .map(|member| member.id())
        .collect();
    voters.sort_unstable();
    let Some(target) = voters.get(attempt % voters.len().max(1)).copied() else {
        return Ok(None);
    };
    client.move_leader(target).await?;
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_lag_come_from_the_member_keys() {
        let mut state = EtcdState::default();
        state.set("leader".into(), Some("node1".into()));
        state.set(
            "members/node1".into(),
            Some(r#"{"role":"primary","state":"running","api_url":"http://10.231.0.11:8008/patroni","xlog_location":5000}"#.into()),
        );
        state.set(
            "members/node2".into(),
            Some(r#"{"role":"replica","state":"streaming","api_url":"http://10.231.0.12:8008/patroni","xlog_location":4000,"tags":{"noloadbalance":true}}"#.into()),
        );
        let view = state.view(Instant::now());
        assert_eq!(view.leader.as_deref(), Some("node1"));
        assert_eq!(view.members["node2"].lag_bytes, Some(1000));
        assert!(view.members["node2"].noloadbalance);
        assert_eq!(view.members["node1"].lag_bytes, None);
        state.set("leader".into(), None);
        assert_eq!(state.view(Instant::now()).leader, None);
    }
}
