//! The pgha agent (`pgha agent run`): one daemon per node that follows the Patroni leader in
//! etcd and routes the local HAProxy at once, tells Keepalived whether this node can route
//! writes (the verdict file), removes a VIP held without a live keepalived, and serves
//! `/status` and `/metrics`.
//!
//! - [`decide`]: the pure decision (views in, actions and one sentence out).
//! - [`etcd`]: the watch task. [`haproxy`]: the runtime socket. [`probe`]: Patroni, VIP,
//!   keepalived. [`server`]: the HTTP endpoints. [`config`]: `agent.yml`. [`timeline`]: what
//!   the node sees during a drill (`pgha agent timeline`). [`fastpath`]: on a Patroni node,
//!   the watch of the leader's node and the opt-in corroborated fast path; [`failfast`]: the
//!   `ip rule`s that refuse Patroni's connections to a leader suspected gone.
//!
//! This module owns the cycle: gather views, decide, apply, write the verdict, log the
//! sentence when something changes. On SIGTERM it makes every write server `ready` again (the
//! health checks route while no agent runs) and stops.

pub mod config;
pub mod decide;
pub mod etcd;
pub mod failfast;
pub mod fastpath;
pub mod haproxy;
pub mod probe;
pub mod server;
pub mod timeline;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;

use config::Config;
use decide::{Action, Backend, ClusterView, Decision, LocalView, Memory};
use etcd::EtcdState;
use server::Status;

/// The slow local check (HAProxy, Patroni, keepalived) when nothing happens.
const CYCLE: Duration = Duration::from_secs(1);
/// The cycle while a new leader is not yet confirmed by its `/primary`.
const URGENT_CYCLE: Duration = Duration::from_millis(100);
/// How long after a leader change the urgent cycle may last.
const URGENT_WINDOW: Duration = Duration::from_secs(30);

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on `{}`", config.listen))?;
    println!(
        "pgha agent on {} follows `{}` in etcd ({}); /status and /metrics on {}",
        config.node,
        config.prefix,
        config.etcd_endpoints.join(", "),
        config.listen
    );
    let etcd_state = Arc::new(Mutex::new(EtcdState::default()));
    let changed = Arc::new(Notify::new());
    let status = Arc::new(Mutex::new(Status {
        node: config.node.clone(),
        ..Status::default()
    }));
    // The node's own member first: it is alive whenever this agent is, unlike a peer's.
    let mut endpoints = config.etcd_endpoints.clone();
    if let Some(local) = config.local_etcd_endpoint() {
        endpoints.retain(|endpoint| *endpoint != local);
        endpoints.insert(0, local);
    }
    // On a Patroni node: the leader's node watched (Patroni's connections to it refused while
    // it is suspected gone), and the corroborated fast path when the inventory turned it on.
    let leader_watch = config.leader_watch.clone().map(|watch| {
        tokio::spawn(fastpath::run(
            Arc::new(config.clone()),
            watch,
            config.fast_path.clone(),
            endpoints.clone(),
        ))
    });
    let watcher = tokio::spawn(etcd::follow(
        endpoints,
        config.prefix.clone(),
        etcd_state.clone(),
        changed.clone(),
    ));
    let http = tokio::spawn(server::serve(listener, status.clone()));
    // On an etcd node: its member never leads etcd's raft while this node's Patroni leads.
    let raft_guard = config.local_etcd_endpoint().map(|endpoint| {
        let api = crate::patroni::model::api_at(config.listen.ip(), config.patroni_api_port);
        tokio::spawn(etcd::keep_raft_leader_away(endpoint, api))
    });

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let mut memory = Memory::default();
    let mut last_sentence = String::new();
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        let (cluster, etcd_has_leader, etcd_error) = match etcd_state.lock() {
            Ok(state) => (
                state.view(Instant::now()),
                state.has_raft_leader,
                state.last_error.clone(),
            ),
            Err(_) => anyhow::bail!("the etcd state lock is poisoned"),
        };
        // A new leader while the look is under way (a probe of the old one waiting out its
        // timeout) starts the look again at once, on the new view: routing follows a failover
        // without a dead node's timeout in between. Any other change is looked at next.
        let mut look_again = false;
        let local = {
            let observing = observe(&config, &cluster);
            tokio::pin!(observing);
            loop {
                tokio::select! {
                    local = &mut observing => break Some(local),
                    _ = changed.notified() => {
                        look_again = true;
                        let leader_now = etcd_state
                            .lock()
                            .ok()
                            .map(|state| state.view(Instant::now()).leader);
                        if leader_now.is_some_and(|leader| leader != cluster.leader) {
                            break None;
                        }
                    }
                }
            }
        };
        let Some(local) = local else {
            wait = Duration::ZERO;
            continue;
        };
        let decision = decide::decide(&cluster, &local, &memory);
        let (applied, failed) = apply(&config, &decision).await;
        write_verdict(&config.verdict_file, decision.can_route_writes);
        if !decision.actions.is_empty() || decision.sentence != last_sentence {
            println!("{}", decision.sentence);
            last_sentence = decision.sentence.clone();
        }
        memory = decision.memory.clone();
        wait = if (failed > 0 || (cluster.leader.is_some() && local.leader_primary != Some(true)))
            && cluster.leader_age.is_some_and(|age| age < URGENT_WINDOW)
        {
            URGENT_CYCLE
        } else {
            CYCLE
        };
        if look_again {
            wait = Duration::ZERO;
        }
        if let Ok(mut status) = status.lock() {
            status.leader_age_seconds = cluster.leader_age.map(|age| age.as_secs_f64());
            status.cluster = cluster;
            status.etcd_has_leader = etcd_has_leader;
            status.etcd_error = etcd_error;
            status.local = local;
            if !decision.actions.is_empty() {
                status.last_change = Some(decision.sentence.clone());
            }
            status.decisions_total += 1;
            status.actions_total += applied;
            status.action_errors_total += failed;
            status.decision = Some(decision);
        }
    }
    // Graceful: drained write servers are made ready, so HAProxy's health checks alone route
    // while no agent runs (a stopped agent must not keep writes away from a future primary).
    // The verdict is withdrawn so Keepalived's check falls back to HAProxy's own view at once.
    println!("pgha agent stopping");
    release_drains(&config).await;
    let _ = std::fs::remove_file(&config.verdict_file);
    watcher.abort();
    http.abort();
    if let Some(guard) = raft_guard {
        guard.abort();
    }
    if let Some(leader_watch) = leader_watch {
        leader_watch.abort();
        failfast::clear().await;
    }
    Ok(())
}

/// Probe the node: HAProxy's servers, the local Patroni, the leader's `/primary`, the VIP.
async fn observe(config: &Config, cluster: &ClusterView) -> LocalView {
    let local_base = cluster
        .members
        .get(&config.node)
        .and_then(|member| probe::api_base(&member.api_url))
        .unwrap_or_else(|| {
            crate::patroni::model::api_at(config.listen.ip(), config.patroni_api_port)
        });
    let leader_base = cluster
        .leader
        .as_ref()
        .and_then(|leader| cluster.members.get(leader))
        .and_then(|member| probe::api_base(&member.api_url));
    let haproxy = async {
        match &config.haproxy_socket {
            Some(socket) => haproxy::read_view(socket, &config.write_backend, &config.read_backend)
                .await
                .ok(),
            None => None,
        }
    };
    let leader_primary = async {
        match &leader_base {
            Some(base) => probe::is_primary(base).await,
            None => None,
        }
    };
    let vip_held = async {
        match &config.vip {
            Some(vip) => probe::vip_held(&config.vip_interface, &vip.address)
                .await
                .unwrap_or(false),
            None => false,
        }
    };
    let (haproxy, patroni_role, leader_primary, vip_held) = tokio::join!(
        haproxy,
        probe::patroni_role(&local_base),
        leader_primary,
        vip_held
    );
    // Only while this HAProxy routes writes nowhere and the leader is missing or cannot be
    // reached (the only cases the verdict uses it): does any other HAProxy route?
    let routes_nowhere = haproxy
        .as_ref()
        .is_some_and(|view| view.write_targets().is_empty());
    let leader_unconfirmed = cluster.leader.is_none() || leader_primary.is_none();
    let peers_route_writes = if routes_nowhere && leader_unconfirmed && !config.peers.is_empty() {
        peers_verdict(&ask_peers(&config.peers).await)
    } else {
        None
    };
    LocalView {
        node: config.node.clone(),
        haproxy_configured: config.haproxy_socket.is_some(),
        haproxy,
        patroni_role,
        leader_primary,
        vip_configured: config.vip.is_some(),
        vip_held,
        keepalived_alive: probe::keepalived_alive(),
        write_hold: read_write_hold(&config.write_hold_file(), std::time::SystemTime::now()),
        peers_route_writes,
    }
}

/// What the peers' answers say: `Some(true)` when one routes writes, `Some(false)` when at
/// least one answered and none routes (a peer that does not answer, such as a dead primary's
/// node, is left out), `None` when none answered (this node may be the one cut off).
fn peers_verdict(answers: &[Option<bool>]) -> Option<bool> {
    if answers.contains(&Some(true)) {
        Some(true)
    } else if answers.contains(&Some(false)) {
        Some(false)
    } else {
        None
    }
}

/// Every peer's `/routes-writes`, asked at once.
async fn ask_peers(peers: &[String]) -> Vec<Option<bool>> {
    let mut tasks = tokio::task::JoinSet::new();
    for peer in peers {
        let peer = peer.clone();
        tasks.spawn(async move { server::peer_routes_writes(&peer, PEER_TIMEOUT).await });
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.unwrap_or(None));
    }
    answers
}

/// The server an unexpired hold names. The file holds `<server> <deadline>` (seconds since the
/// epoch); a missing, unreadable or expired one holds nothing.
fn read_write_hold(path: &Path, now: std::time::SystemTime) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_write_hold(&text, now)
}

fn parse_write_hold(text: &str, now: std::time::SystemTime) -> Option<String> {
    let mut words = text.split_whitespace();
    let server = words.next()?;
    let deadline: u64 = words.next()?.parse().ok()?;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (now < deadline).then(|| server.to_string())
}

/// `pgha agent checks`: HAProxy's health checks of `server` stopped in both backends (the
/// server stays as it is: a primary whose Patroni restarts with PostgreSQL running keeps its
/// writes) or running again.
pub async fn server_checks(config_path: &Path, server: &str, on: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let Some(socket) = &config.haproxy_socket else {
        anyhow::bail!("this node runs no HAProxy (no `haproxy_socket` in its agent configuration)");
    };
    for backend in [&config.write_backend, &config.read_backend] {
        haproxy::set_checks(socket, backend, server, on).await?;
    }
    Ok(())
}

/// What `pgha agent hold-writes` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteHold {
    /// A switchover away from `server` is about to start: drain it for at most `for_seconds`.
    From { server: String, for_seconds: u64 },
    /// The switchover is over (or failed): the agent routes as usual again.
    Release,
}

/// Announce or withdraw a hand-over to this node's agent.
///
/// `From` needs the agent running (it is what routes the next leader): it writes the hold and
/// drains the server at once, and the agent keeps it drained while the hold lasts; if the
/// drain fails the hold is withdrawn. `Release` removes the hold: the agent makes the leader
/// ready on its next cycle (at most a second). If the agent no longer runs, the released
/// server is made ready here, so that HAProxy's health checks route as they do whenever no
/// agent runs, and a hand-over cut off cannot keep writes away from a primary.
pub async fn hold_writes(config_path: &Path, hold: &WriteHold) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let path = config.write_hold_file();
    let Some(socket) = &config.haproxy_socket else {
        anyhow::bail!("this node runs no HAProxy (no `haproxy_socket` in its agent configuration)");
    };
    match hold {
        WriteHold::Release => {
            let held = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.split_whitespace().next().map(str::to_string));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("cannot remove `{}`", path.display()))
                }
            }
            if let Some(server) = held {
                if !agent_runs() {
                    haproxy::make_ready(socket, &config.write_backend, &server).await?;
                }
            }
            Ok(())
        }
        WriteHold::From {
            server,
            for_seconds,
        } => {
            if !agent_runs() {
                anyhow::bail!(
                    "the pgha agent does not run on {}: nothing would route the next leader, so new writes are not held; hint: `systemctl status pgha-agent`",
                    config.node
                );
            }
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs()
                + for_seconds;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create `{}`", parent.display()))?;
            }
            let partial = path.with_extension("partial");
            std::fs::write(&partial, format!("{server} {deadline}\n"))
                .and_then(|()| std::fs::rename(&partial, &path))
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            if let Err(error) = haproxy::drain(socket, &config.write_backend, server).await {
                let _ = std::fs::remove_file(&path);
                return Err(error.into());
            }
            Ok(())
        }
    }
}

/// The agent's unit is active (`systemctl is-active pgha-agent`).
fn agent_runs() -> bool {
    std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", "pgha-agent"])
        .status()
        .is_ok_and(|status| status.success())
}

/// `pgha agent release`: make every drained write server ready again and withdraw the verdict
/// (after the agent exited, however it exited).
pub async fn release(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    release_drains(&config).await;
    // Nor its refusal of Patroni's connections to a suspected leader (the leader watch's rules).
    failfast::clear().await;
    // A crashed agent's last verdict must not outlive it either.
    let _ = std::fs::remove_file(&config.verdict_file);
    Ok(())
}

/// What `pgha agent read-server` does to a read server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadServerState {
    Drain,
    Ready,
    Show,
}

/// Drain, ready or only look at `server` in the local read backend; returns its open sessions.
/// The agent forces read servers' *health* only, never their administrative state, so a drain
/// set here stays until it is made ready again.
pub async fn read_server(
    config_path: &Path,
    server: &str,
    state: ReadServerState,
) -> anyhow::Result<u64> {
    let config = Config::load(config_path)?;
    let Some(socket) = &config.haproxy_socket else {
        anyhow::bail!("this node runs no HAProxy (no `haproxy_socket` in its agent configuration)");
    };
    let backend = &config.read_backend;
    let word = match state {
        ReadServerState::Drain => Some("drain"),
        ReadServerState::Ready => Some("ready"),
        ReadServerState::Show => None,
    };
    if let Some(word) = word {
        let answer = haproxy::command(
            socket,
            &format!("set server {backend}/{server} state {word}"),
        )
        .await?;
        if !answer.trim().is_empty() {
            anyhow::bail!(
                "HAProxy refused `{word}` for {backend}/{server}: {}",
                answer.trim()
            );
        }
    }
    let stat = haproxy::command(socket, "show stat").await?;
    haproxy::current_sessions(&stat, backend, server)
        .ok_or_else(|| anyhow::anyhow!("no server `{server}` in backend `{backend}`"))
}

/// How long another agent may take to say whether it routes writes.
const PEER_TIMEOUT: Duration = Duration::from_millis(300);

/// HAProxy's configuration file (the deploy writes it there).
const HAPROXY_CONFIG: &str = "/etc/haproxy/haproxy.cfg";

/// Write `show servers state` to `file` (a temporary file renamed over it), for HAProxy's
/// `server-state-file`: run just before a reload, the new process starts each server as the
/// old one had it. Nothing to save (no HAProxy socket, HAProxy not running) is not an error:
/// the file is emptied and the reload behaves as without it. A server the new configuration
/// adds starts DOWN (`haproxy::with_new_servers_down`).
pub async fn save_haproxy_state(config_path: &Path, file: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let Some(socket) = &config.haproxy_socket else {
        return Ok(());
    };
    let state = match haproxy::command(socket, "show servers state").await {
        Ok(state) => state,
        Err(error) => {
            // An older file would bring back states from before: an empty one (the format's
            // version line, no server) is better, and HAProxy does not warn about it.
            let _ = std::fs::write(file, "1\n");
            println!("no server state saved: {error}");
            return Ok(());
        }
    };
    // The new configuration is in place when the unit's reload runs this.
    let state = match std::fs::read_to_string(HAPROXY_CONFIG) {
        Ok(text) => haproxy::with_new_servers_down(
            &state,
            &text,
            &[&config.write_backend, &config.read_backend],
        ),
        Err(_) => state,
    };
    let partial = file.with_extension("partial");
    std::fs::write(&partial, state)
        .with_context(|| format!("cannot write `{}`", partial.display()))?;
    std::fs::rename(&partial, file)
        .with_context(|| format!("cannot replace `{}`", file.display()))?;
    Ok(())
}

/// Make every drained write server ready again; logs what it did.
async fn release_drains(config: &Config) {
    let Some(socket) = &config.haproxy_socket else {
        return;
    };
    let drained: Vec<String> =
        match haproxy::read_view(socket, &config.write_backend, &config.read_backend).await {
            Ok(view) => view
                .write
                .into_iter()
                .filter(|(_, state)| state.drain)
                .map(|(server, _)| server)
                .collect(),
            Err(error) => {
                println!("cannot release drained write servers: {error}");
                return;
            }
        };
    for server in &drained {
        if let Err(error) = haproxy::make_ready(socket, &config.write_backend, server).await {
            println!("cannot make `{server}` ready: {error}");
        }
    }
    println!(
        "write servers made ready ({}); HAProxy's health checks route",
        if drained.is_empty() {
            "none was drained".to_string()
        } else {
            drained.join(", ")
        }
    );
}

/// Perform the decision's actions; returns (succeeded, failed). Failures are logged.
async fn apply(config: &Config, decision: &Decision) -> (u64, u64) {
    let (mut applied, mut failed) = (0, 0);
    for action in &decision.actions {
        let result = match action {
            Action::SetHealth {
                backend,
                server,
                up,
            } => {
                let Some(socket) = &config.haproxy_socket else {
                    continue;
                };
                let (backend, make_ready) = match backend {
                    Backend::Write => (&config.write_backend, true),
                    Backend::Read => (&config.read_backend, false),
                };
                haproxy::set_health(socket, backend, server, *up, make_ready)
                    .await
                    .map_err(|error| error.to_string())
            }
            Action::KeepOutOfWrites { server } => {
                let Some(socket) = &config.haproxy_socket else {
                    continue;
                };
                haproxy::keep_out(socket, &config.write_backend, server)
                    .await
                    .map_err(|error| error.to_string())
            }
            Action::HoldWrites { server } => {
                let Some(socket) = &config.haproxy_socket else {
                    continue;
                };
                haproxy::drain(socket, &config.write_backend, server)
                    .await
                    .map_err(|error| error.to_string())
            }
            Action::RemoveVip => match &config.vip {
                Some(vip) => probe::remove_vip(&config.vip_interface, &vip.with_prefix)
                    .await
                    .map_err(|error| error.to_string()),
                None => continue,
            },
        };
        match result {
            Ok(()) => applied += 1,
            Err(error) => {
                println!("action failed: {error}");
                failed += 1;
            }
        }
    }
    (applied, failed)
}

/// Write `yes` or `no` for Keepalived's check (atomically: a temporary file renamed).
fn write_verdict(path: &Path, yes: bool) {
    let temporary = path.with_extension("tmp");
    let text = if yes { "yes\n" } else { "no\n" };
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let result = std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = result {
        println!("cannot write the verdict `{}`: {error}", path.display());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peers_keep_the_vip_only_when_one_answered_and_none_routes() {
        assert_eq!(super::peers_verdict(&[None, Some(false)]), Some(false));
        assert_eq!(super::peers_verdict(&[Some(false), Some(true)]), Some(true));
        assert_eq!(super::peers_verdict(&[None, None]), None);
        assert_eq!(super::peers_verdict(&[]), None);
    }

    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn a_write_hold_lasts_until_its_deadline() {
        let at = |seconds| UNIX_EPOCH + Duration::from_secs(seconds);
        assert_eq!(
            parse_write_hold("node1 1000\n", at(999)),
            Some("node1".to_string())
        );
        assert_eq!(parse_write_hold("node1 1000\n", at(1000)), None);
        assert_eq!(parse_write_hold("node1\n", at(1)), None);
        assert_eq!(parse_write_hold("node1 soon\n", at(1)), None);
        assert_eq!(parse_write_hold("", SystemTime::now()), None);
    }
}
