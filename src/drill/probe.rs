//! The drill's measuring instruments, run from the control machine while a fault is injected:
//! - the write probes through `VIP:<write port>`: one opens a **new connection for every
//!   attempt**, started every 100 ms whether or not the earlier ones have finished, so the moment
//!   writes come back is seen to 0.1 s; the other keeps **one persistent connection** and
//!   reopens it after a failure, as a pooled application would;
//! - on the lab, for a partition, a write probe **inside the cut-off primary's own network**:
//!   whether an isolated old primary still acknowledges commits;
//! - the primary probe (on every node every 200 ms: out of recovery? and could it acknowledge a
//!   commit?), which on the lab connects from inside each node's network, so a partitioned node
//!   is still seen.
//!
//! All only record; the pure functions below turn their logs into numbers (outage, lost writes,
//! double primaries) and [`super::verdict`] into the verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Interval between two write attempts.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(100);
/// Interval between two rounds of the primary probe. Finer than a switchover: on Debian 13
/// the old primary's last writable answer and the new one's first came within one 200 ms
/// round, which the round-based check counted as two primaries at once (2 of 5 switchovers),
/// although the old primary had shut down its sessions before the new one was promoted.
pub const PRIMARY_INTERVAL: Duration = Duration::from_millis(50);
/// Interval between two write attempts of the isolated write probe.
const ISOLATED_INTERVAL: Duration = Duration::from_millis(200);
/// Connect timeout of every probe connection (a real application's short timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The persistent connection gives up on a write after this long and reconnects.
const PERSISTENT_WRITE_TIMEOUT: Duration = Duration::from_millis(1500);
/// A new-connection attempt (connect and commit) may take this long before it counts as failed:
/// long enough that a slow commit is seen as latency, with its real completion time.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The primary probe's answer timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// The table the write probe fills; created (if missing) through the VIP before the drill.
pub const TABLE_DDL: &str = "create table if not exists pgha_drill \
    (run text not null, id bigint not null, at timestamptz not null default now(), \
    primary key (run, id))";

const INSERT: &str = "insert into pgha_drill (run, id, at) values ($1, $2, now())";

/// Which write probe made an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteClient {
    /// A new connection through the VIP for every attempt: the outage's instrument.
    NewConnection,
    /// One connection through the VIP, reopened after a failure.
    Persistent,
    /// Straight to the old primary from inside its own network (lab partitions).
    Isolated,
}

/// One write attempt: when it started and ended (ms since the probes' start) and whether the
/// server acknowledged the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteAttempt {
    pub id: i64,
    pub client: WriteClient,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// A connection to the server was open for the attempt (it may still have failed).
    pub connected: bool,
    pub acknowledged: bool,
    /// Why it failed, as the client saw it (`None` when acknowledged).
    pub error: Option<String>,
}

/// One answer of the primary probe: at round `round`, `node` was out of recovery or not
/// (`None`: no answer), and whether it could then acknowledge a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimarySample {
    pub round: u64,
    pub node: String,
    pub writable: Option<bool>,
    /// With the server's own settings, a commit there would be acknowledged: synchronous
    /// commit is off or local, no synchronous standby is required, or one is attached. False
    /// for an old primary that resumed after its standbys moved on: its commits wait.
    pub can_acknowledge: bool,
    /// The synchronous standbys listed as attached that its commits wait for (empty when its
    /// commits wait for none). A standby that is itself out of recovery in the same round no
    /// longer replicates from it, whatever the walsender still shows (see [`primaries`]).
    pub waits_for: Vec<String>,
}

/// Whether a commit on the answering server would be acknowledged now (see
/// [`PrimarySample::can_acknowledge`]).
const PRIMARY_QUERY: &str = "select not pg_is_in_recovery(), \
    current_setting('synchronous_commit') in ('off', 'local') \
    or current_setting('synchronous_standby_names') = '' \
    or exists (select 1 from pg_stat_replication where sync_state in ('sync', 'quorum')), \
    case when current_setting('synchronous_commit') in ('off', 'local') \
    or current_setting('synchronous_standby_names') = '' then '{}'::text[] \
    else array(select application_name::text from pg_stat_replication \
    where sync_state in ('sync', 'quorum')) end";

/// How to reach PostgreSQL as the superuser. `Debug` hides the password.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Connect from inside this lab node's network namespace instead of from here.
    pub inside: Option<String>,
    /// TLS verifying the server's certificate and name against the cluster CA
    /// (`sslmode=verify-full`; pg_hba refuses connections without TLS).
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}@{}:{}", self.user, self.host, self.port)?;
        if let Some(node) = &self.inside {
            write!(formatter, " (from inside `{node}`)")?;
        }
        Ok(())
    }
}

/// A failed probe connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0:#}")]
    Inside(anyhow::Error),
}

impl Endpoint {
    fn config(&self) -> Config {
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname("postgres")
            .application_name("pgha-drill")
            .ssl_mode(SslMode::Require)
            .connect_timeout(CONNECT_TIMEOUT);
        config
    }

    /// Open a connection; its driver task ends with the connection.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let client = match &self.inside {
            None => {
                let (client, connection) = self.config().connect(self.tls.clone()).await?;
                tokio::spawn(connection);
                client
            }
            Some(node) => {
                let address = format!("{}:{}", self.host, self.port)
                    .parse()
                    .map_err(|error| ConnectError::Inside(anyhow::anyhow!("{error}")))?;
                let node = node.clone();
                let stream = tokio::task::spawn_blocking(move || {
                    crate::lab::connect_inside(&node, address, CONNECT_TIMEOUT)
                })
                .await
                .map_err(|error| ConnectError::Inside(error.into()))?
                .map_err(ConnectError::Inside)?;
                stream
                    .set_nonblocking(true)
                    .map_err(|error| ConnectError::Inside(error.into()))?;
                let stream = tokio::net::TcpStream::from_std(stream)
                    .map_err(|error| ConnectError::Inside(error.into()))?;
                let tls = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                    &mut self.tls.clone(),
                    &self.host,
                )
                .map_err(|error| ConnectError::Inside(anyhow::anyhow!("TLS: {error}")))?;
                let (client, connection) = self.config().connect_raw(stream, tls).await?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(client)
    }
}

/// What [`Probes::start`] probes.
pub struct Targets {
    /// The run's tag in the probe table.
    pub run: String,
    /// The write port through the VIP.
    pub vip: Endpoint,
    /// Every PostgreSQL node, for the primary probe.
    pub nodes: Vec<(String, Endpoint)>,
    /// The old primary reached from inside its own network, for the isolated write probe.
    pub isolated: Option<Endpoint>,
    /// The read port through the VIP, for the read probe (a new connection per read).
    pub reads: Option<Endpoint>,
}

/// One read attempt through the read port: a new connection and `select pg_is_in_recovery()`;
/// `answered` when a replica answered (a primary answering the read port counts as failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadAttempt {
    pub started_ms: u64,
    pub ended_ms: u64,
    pub answered: bool,
    /// Why it failed, as the client saw it (`None` when answered by a replica).
    pub error: Option<String>,
}

/// The running probes; [`Probes::stop`] ends them and returns their logs.
pub struct Probes {
    started: Instant,
    stop: watch::Sender<bool>,
    writes: Arc<Mutex<Vec<WriteAttempt>>>,
    reads: Arc<Mutex<Vec<ReadAttempt>>>,
    samples: Arc<Mutex<Vec<PrimarySample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the probes recorded.
#[derive(Debug, Clone, Default)]
pub struct ProbeLog {
    pub writes: Vec<WriteAttempt>,
    pub reads: Vec<ReadAttempt>,
    pub samples: Vec<PrimarySample>,
}

/// What every write probe shares: the clock, the stop signal, the log and unique ids.
#[derive(Clone)]
struct WriteLog {
    run: String,
    started: Instant,
    stopped: watch::Receiver<bool>,
    log: Arc<Mutex<Vec<WriteAttempt>>>,
    ids: Arc<AtomicI64>,
}

impl WriteLog {
    fn next_id(&self) -> i64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn record(&self, attempt: WriteAttempt) {
        if let Ok(mut log) = self.log.lock() {
            log.push(attempt);
        }
    }
}

impl Probes {
    /// Start every probe on `targets`.
    pub fn start(targets: Targets) -> Probes {
        let started = Instant::now();
        let (stop, stopped) = watch::channel(false);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let reads = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let shared = WriteLog {
            run: targets.run,
            started,
            stopped: stopped.clone(),
            log: writes.clone(),
            ids: Arc::new(AtomicI64::new(0)),
        };
        let mut tasks = vec![
            tokio::spawn(new_connection_probe(
                targets.vip.clone(),
                WriteClient::NewConnection,
                WRITE_INTERVAL,
                shared.clone(),
            )),
            tokio::spawn(persistent_probe(targets.vip, shared.clone())),
        ];
        if let Some(endpoint) = targets.reads {
            tasks.push(tokio::spawn(read_probe(
                endpoint,
                started,
                stopped.clone(),
                reads.clone(),
            )));
        }
        if let Some(isolated) = targets.isolated {
            tasks.push(tokio::spawn(new_connection_probe(
                isolated,
                WriteClient::Isolated,
                ISOLATED_INTERVAL,
                shared,
            )));
        }
        for (name, endpoint) in targets.nodes {
            tasks.push(tokio::spawn(primary_probe(
                name,
                endpoint,
                started,
                stopped.clone(),
                samples.clone(),
            )));
        }
        Probes {
            started,
            stop,
            writes,
            reads,
            samples,
            tasks,
        }
    }

    /// Milliseconds since the probes started (the time base of their logs).
    pub fn now_ms(&self) -> u64 {
        elapsed_ms(self.started)
    }

    /// A copy of the write log so far.
    pub fn writes(&self) -> Vec<WriteAttempt> {
        self.writes
            .lock()
            .map(|log| log.clone())
            .unwrap_or_default()
    }

    /// Stop every probe (attempts under way finish or time out) and return what they recorded.
    pub async fn stop(self) -> ProbeLog {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let mut writes = self
            .writes
            .lock()
            .map(|log| log.clone())
            .unwrap_or_default();
        writes.sort_by_key(|attempt| (attempt.started_ms, attempt.id));
        ProbeLog {
            writes,
            reads: self.reads.lock().map(|log| log.clone()).unwrap_or_default(),
            samples: self
                .samples
                .lock()
                .map(|log| log.clone())
                .unwrap_or_default(),
        }
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An attempt every `interval` on a connection of its own, each running until it is
/// acknowledged, fails or times out, independent of the others.
async fn new_connection_probe(
    endpoint: Endpoint,
    client: WriteClient,
    interval: Duration,
    shared: WriteLog,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopped = shared.stopped.clone();
    let mut attempts = JoinSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => break,
        }
        let id = shared.next_id();
        let endpoint = endpoint.clone();
        let shared = shared.clone();
        attempts.spawn(async move {
            let started_ms = elapsed_ms(shared.started);
            let mut connected = false;
            let attempt = async {
                let connection = endpoint
                    .connect()
                    .await
                    .map_err(|error| format!("connect: {error}"))?;
                connected = true;
                connection
                    .execute(INSERT, &[&shared.run, &id])
                    .await
                    .map_err(|error| format!("insert: {error}"))
            };
            let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok(_)) => None,
                Ok(Err(error)) => Some(error),
                Err(_) => Some(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
            };
            shared.record(WriteAttempt {
                id,
                client,
                started_ms,
                ended_ms: elapsed_ms(shared.started),
                connected,
                acknowledged: error.is_none(),
                error,
            });
        });
        // Reap finished attempts so the set holds only those under way.
        while attempts.try_join_next().is_some() {}
    }
    while attempts.join_next().await.is_some() {}
}

/// One connection, one attempt at a time; a failed or hung attempt drops the connection and
/// the next one reconnects, as a real application's pool would.
async fn persistent_probe(endpoint: Endpoint, shared: WriteLog) {
    let mut ticker = tokio::time::interval(WRITE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopped = shared.stopped.clone();
    let mut client: Option<Client> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        let id = shared.next_id();
        let started_ms = elapsed_ms(shared.started);
        let mut connected = false;
        let attempt = async {
            if client.as_ref().is_none_or(|client| client.is_closed()) {
                client = Some(
                    endpoint
                        .connect()
                        .await
                        .map_err(|error| format!("connect: {error}"))?,
                );
            }
            connected = true;
            let Some(connected) = client.as_ref() else {
                return Err("no connection".to_string());
            };
            connected
                .execute(INSERT, &[&shared.run, &id])
                .await
                .map(|_| ())
                .map_err(|error| format!("insert: {error}"))
        };
        let error = match tokio::time::timeout(PERSISTENT_WRITE_TIMEOUT, attempt).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(_) => Some(format!(
                "no answer within {} ms",
                PERSISTENT_WRITE_TIMEOUT.as_millis()
            )),
        };
        if error.is_some() {
            client = None;
        }
        shared.record(WriteAttempt {
            id,
            client: WriteClient::Persistent,
            started_ms,
            ended_ms: elapsed_ms(shared.started),
            connected,
            acknowledged: error.is_none(),
            error,
        });
    }
}

/// A read every [`WRITE_INTERVAL`] on a connection of its own, as a client that connects for
/// each query would (the read port's outage instrument).
async fn read_probe(
    endpoint: Endpoint,
    started: Instant,
    mut stopped: watch::Receiver<bool>,
    log: Arc<Mutex<Vec<ReadAttempt>>>,
) {
    let mut ticker = tokio::time::interval(WRITE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut attempts = JoinSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => break,
        }
        let endpoint = endpoint.clone();
        let log = log.clone();
        attempts.spawn(async move {
            let started_ms = elapsed_ms(started);
            let read = async {
                let connection = endpoint
                    .connect()
                    .await
                    .map_err(|error| format!("connect: {error}"))?;
                let row = connection
                    .query_one("select pg_is_in_recovery()", &[])
                    .await
                    .map_err(|error| format!("select: {error}"))?;
                row.try_get::<_, bool>(0)
                    .map_err(|error| format!("select: {error}"))
            };
            let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, read).await {
                Ok(Ok(true)) => None,
                Ok(Ok(false)) => Some("answered by a primary".to_string()),
                Ok(Err(error)) => Some(error),
                Err(_) => Some(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
            };
            if let Ok(mut log) = log.lock() {
                log.push(ReadAttempt {
                    started_ms,
                    ended_ms: elapsed_ms(started),
                    answered: error.is_none(),
                    error,
                });
            }
        });
        while attempts.try_join_next().is_some() {}
    }
    while attempts.join_next().await.is_some() {}
}

async fn primary_probe(
    node: String,
    endpoint: Endpoint,
    started: Instant,
    mut stopped: watch::Receiver<bool>,
    log: Arc<Mutex<Vec<PrimarySample>>>,
) {
    let mut ticker = tokio::time::interval(PRIMARY_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut client: Option<Client> = None;
    let period = u64::try_from(PRIMARY_INTERVAL.as_millis()).unwrap_or(200);
    loop {
        // The round is the tick's scheduled time, not the time it ran: a late tick must not
        // land in the round of the next one (two answers of one node in one round).
        let tick = tokio::select! {
            tick = ticker.tick() => tick,
            _ = stopped.changed() => return,
        };
        let since_start = u64::try_from(
            tick.into_std()
                .saturating_duration_since(started)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let round = (since_start + period / 2) / period;
        let query = async {
            if client.as_ref().is_none_or(|client| client.is_closed()) {
                client = Some(endpoint.connect().await.map_err(|_| ())?);
            }
            let Some(connected) = client.as_ref() else {
                return Err(());
            };
            let row = connected
                .query_one(PRIMARY_QUERY, &[])
                .await
                .map_err(|_| ())?;
            Ok::<_, ()>((
                row.try_get::<_, bool>(0).map_err(|_| ())?,
                row.try_get::<_, bool>(1).map_err(|_| ())?,
                row.try_get::<_, Vec<String>>(2).map_err(|_| ())?,
            ))
        };
        let (writable, can_acknowledge, waits_for) =
            match tokio::time::timeout(QUERY_TIMEOUT, query).await {
                Ok(Ok((writable, can_acknowledge, waits_for))) => {
                    (Some(writable), can_acknowledge, waits_for)
                }
                _ => {
                    client = None;
                    (None, false, Vec::new())
                }
            };
        if let Ok(mut log) = log.lock() {
            log.push(PrimarySample {
                round,
                node: node.clone(),
                writable,
                can_acknowledge,
                waits_for,
            });
        }
    }
}

/// A stretch without an acknowledged commit, in ms on the probes' clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub from_ms: u64,
    pub to_ms: u64,
}

impl Gap {
    pub fn ms(&self) -> u64 {
        self.to_ms.saturating_sub(self.from_ms)
    }
}

/// The longest write outage `client` saw: the longest time from one acknowledged commit to the
/// next, each taken when the acknowledgement arrived (completion times, not the start of the
/// attempt, so a probe's timeout does not become the measurement). Before the first
/// acknowledgement the gap starts at the first attempt; one still open at the end of the log
/// (attempts started after the last acknowledgement) runs to the end of the last of them. `None` without any attempt of `client`.
pub fn longest_gap(writes: &[WriteAttempt], client: WriteClient) -> Option<Gap> {
    let mine: Vec<&WriteAttempt> = writes
        .iter()
        .filter(|attempt| attempt.client == client)
        .collect();
    let first_start = mine.iter().map(|attempt| attempt.started_ms).min()?;
    let mut boundaries: Vec<u64> = mine
        .iter()
        .filter(|attempt| attempt.acknowledged)
        .map(|attempt| attempt.ended_ms)
        .collect();
    boundaries.sort_unstable();
    boundaries.insert(0, first_start);
    // Attempts started after the last acknowledgement all failed: the log ends in an outage.
    let last_ack = boundaries.last().copied().unwrap_or(first_start);
    if let Some(end) = mine
        .iter()
        .filter(|attempt| attempt.started_ms > last_ack)
        .map(|attempt| attempt.ended_ms)
        .max()
    {
        boundaries.push(end);
    }
    boundaries
        .windows(2)
        .map(|pair| Gap {
            from_ms: pair[0],
            to_ms: pair[1],
        })
        .max_by_key(|gap| (gap.ms(), std::cmp::Reverse(gap.from_ms)))
}

/// Number of failed write attempts of `client`.
pub fn failed_writes(writes: &[WriteAttempt], client: WriteClient) -> usize {
    writes
        .iter()
        .filter(|attempt| attempt.client == client && !attempt.acknowledged)
        .count()
}

/// Writes acknowledged through the VIP (either client) whose ids are missing from `stored`
/// (the ids the surviving primary holds), in order.
pub fn lost_writes(writes: &[WriteAttempt], stored: &BTreeSet<i64>) -> Vec<i64> {
    let mut lost: Vec<i64> = writes
        .iter()
        .filter(|attempt| {
            attempt.client != WriteClient::Isolated
                && attempt.acknowledged
                && !stored.contains(&attempt.id)
        })
        .map(|attempt| attempt.id)
        .collect();
    lost.sort_unstable();
    lost
}

/// Ids that were not acknowledged but committed anyway (the answer was lost, not the row):
/// harmless, but an application that retries would write them twice.
pub fn unacknowledged_but_stored(writes: &[WriteAttempt], stored: &BTreeSet<i64>) -> usize {
    writes
        .iter()
        .filter(|attempt| {
            attempt.client != WriteClient::Isolated
                && !attempt.acknowledged
                && stored.contains(&attempt.id)
        })
        .count()
}

/// What the isolated write probe saw of the old primary for attempts started in
/// `[from_ms, to_ms)`: how many opened a connection (the probe could see it at all), and how
/// many commits it acknowledged (writes a client cut off with it would believe were saved).
pub fn isolated_writes(writes: &[WriteAttempt], from_ms: u64, to_ms: u64) -> (usize, usize) {
    let window: Vec<&WriteAttempt> = writes
        .iter()
        .filter(|attempt| {
            attempt.client == WriteClient::Isolated
                && (from_ms..to_ms).contains(&attempt.started_ms)
        })
        .collect();
    (
        window.iter().filter(|attempt| attempt.connected).count(),
        window.iter().filter(|attempt| attempt.acknowledged).count(),
    )
}

/// What the primary probe saw of nodes out of recovery at the same moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Primaries {
    /// Rounds in which two or more nodes were out of recovery and could acknowledge commits:
    /// a split brain.
    pub double_moments: usize,
    pub double_nodes: BTreeSet<String>,
    /// Rounds in which two or more nodes were out of recovery but only one could acknowledge
    /// a commit, and not the old primary: a resumed old primary not yet demoted, whose commits
    /// wait for a synchronous standby that follows the new primary.
    pub fenced_moments: usize,
    pub fenced_nodes: BTreeSet<String>,
}

/// Sort the rounds of the primary probe with more than one node out of recovery. Such a round
/// is a split brain when two of them could acknowledge a commit, or when the one that could is
/// `old_primary` (its acknowledged writes would be rewound away once it is demoted).
///
/// A node whose commits wait for synchronous standbys cannot acknowledge one when every such
/// standby it lists answered out of recovery in the same round: a promoted standby has
/// stopped receiving WAL, so it confirms nothing newer, while a cut-off walsender can go on
/// listing it for `wal_sender_timeout`. A standby that did not answer counts as attached.
pub fn primaries(samples: &[PrimarySample], old_primary: &str) -> Primaries {
    let mut rounds: BTreeMap<u64, Vec<&PrimarySample>> = BTreeMap::new();
    for sample in samples
        .iter()
        .filter(|sample| sample.writable == Some(true))
    {
        let round = rounds.entry(sample.round).or_default();
        // One answer per node and round: two of one node are not two primaries.
        if !round.iter().any(|seen| seen.node == sample.node) {
            round.push(sample);
        }
    }
    let mut result = Primaries::default();
    for out_of_recovery in rounds.values().filter(|nodes| nodes.len() >= 2) {
        let promoted = |standby: &String| out_of_recovery.iter().any(|seen| &seen.node == standby);
        let acknowledging: Vec<&str> = out_of_recovery
            .iter()
            .filter(|sample| {
                sample.can_acknowledge
                    && (sample.waits_for.is_empty()
                        || sample.waits_for.iter().any(|standby| !promoted(standby)))
            })
            .map(|sample| sample.node.as_str())
            .collect();
        let names = out_of_recovery.iter().map(|sample| sample.node.clone());
        if acknowledging.len() >= 2 || acknowledging.contains(&old_primary) {
            result.double_moments += 1;
            result.double_nodes.extend(names);
        } else {
            result.fenced_moments += 1;
            result.fenced_nodes.extend(names);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempts(pattern: &str) -> Vec<WriteAttempt> {
        // One new-connection attempt per 100 ms, each taking 10 ms; `.` acknowledged, `x` failed.
        pattern
            .chars()
            .enumerate()
            .map(|(index, mark)| {
                let index = index as u64;
                WriteAttempt {
                    id: index as i64 + 1,
                    client: WriteClient::NewConnection,
                    started_ms: index * 100,
                    ended_ms: index * 100 + 10,
                    connected: true,
                    acknowledged: mark == '.',
                    error: None,
                }
            })
            .collect()
    }

    fn outage(writes: &[WriteAttempt]) -> u64 {
        longest_gap(writes, WriteClient::NewConnection).map_or(0, |gap| gap.ms())
    }

    #[test]
    fn without_failures_the_outage_is_the_probe_interval() {
        assert_eq!(outage(&attempts("......")), 100);
        assert_eq!(longest_gap(&[], WriteClient::NewConnection), None);
    }

    #[test]
    fn outage_runs_from_the_last_acknowledgement_to_the_next() {
        // Acks end at 110 and 410 around the first run of failures (300 ms), at 610 and 1210
        // around the second (600 ms).
        let writes = attempts("..xx...xxxxx..");
        assert_eq!(
            longest_gap(&writes, WriteClient::NewConnection),
            Some(Gap {
                from_ms: 610,
                to_ms: 1_210
            })
        );
        assert_eq!(failed_writes(&writes, WriteClient::NewConnection), 7);
        assert_eq!(failed_writes(&writes, WriteClient::Persistent), 0);
    }

    #[test]
    fn an_outage_that_never_ended_runs_to_the_last_attempt() {
        // Last ack at 110, the last (failed) attempt ended at 510.
        assert_eq!(outage(&attempts("..xxxx")), 400);
    }

    #[test]
    fn a_slow_acknowledgement_is_measured_when_it_arrives_not_when_it_started() {
        // Attempt 3 started at 200 and was acknowledged only at 1 700: clients saw no commit
        // from 110 to 1 700, although no attempt failed.
        let mut writes = attempts("....");
        writes[2].ended_ms = 1_700;
        writes[3].ended_ms = 1_710;
        assert_eq!(outage(&writes), 1_590);
        assert_eq!(failed_writes(&writes, WriteClient::NewConnection), 0);
    }

    #[test]
    fn overlapping_attempts_tell_0_2_s_from_1_5_s() {
        // Attempts every 100 ms; those started in [300, 500) fail after 1.5 s (a timeout), the
        // one started at 500 succeeds at once: writes were back 0.2 s after they stopped,
        // whatever the failed attempts' timeout.
        let mut writes = attempts("...xx.....");
        for attempt in writes.iter_mut().filter(|attempt| !attempt.acknowledged) {
            attempt.ended_ms = attempt.started_ms + 1_500;
        }
        assert_eq!(
            longest_gap(&writes, WriteClient::NewConnection),
            Some(Gap {
                from_ms: 210,
                to_ms: 510
            })
        );
    }

    #[test]
    fn each_client_is_measured_on_its_own_attempts() {
        let mut writes = attempts("....");
        writes.push(WriteAttempt {
            id: 99,
            client: WriteClient::Persistent,
            started_ms: 0,
            ended_ms: 2_000,
            connected: true,
            acknowledged: true,
            error: None,
        });
        assert_eq!(outage(&writes), 100);
        assert_eq!(
            longest_gap(&writes, WriteClient::Persistent).map(|gap| gap.ms()),
            Some(2_000)
        );
    }

    #[test]
    fn lost_writes_are_acknowledged_ids_missing_on_the_new_primary() {
        let writes = attempts("..x..");
        let stored: BTreeSet<i64> = [1, 3, 4].into_iter().collect();
        assert_eq!(lost_writes(&writes, &stored), vec![2, 5]);
        assert_eq!(unacknowledged_but_stored(&writes, &stored), 1);
        let all: BTreeSet<i64> = (1..=5).collect();
        assert!(lost_writes(&writes, &all).is_empty());
    }

    #[test]
    fn the_isolated_primary_counts_only_inside_the_window_and_never_as_lost() {
        let mut writes = attempts("...");
        for attempt in &mut writes {
            attempt.client = WriteClient::Isolated;
        }
        // Rewound away later, so missing from the new primary: not "lost", but a finding.
        assert!(lost_writes(&writes, &BTreeSet::new()).is_empty());
        writes[2].connected = false;
        assert_eq!(isolated_writes(&writes, 100, 300), (1, 2));
        assert_eq!(isolated_writes(&writes, 300, 900), (0, 0));
    }

    fn sample(round: u64, node: &str, writable: Option<bool>) -> PrimarySample {
        PrimarySample {
            round,
            node: node.to_string(),
            writable,
            can_acknowledge: writable == Some(true),
            waits_for: Vec::new(),
        }
    }

    #[test]
    fn two_writable_nodes_in_one_round_are_a_double_primary_moment() {
        let samples = vec![
            sample(1, "node1", Some(true)),
            sample(1, "node2", Some(false)),
            sample(2, "node1", None),
            sample(2, "node2", Some(true)),
            sample(3, "node1", Some(true)),
            sample(3, "node2", Some(true)),
            sample(3, "node3", Some(false)),
        ];
        let seen = primaries(&samples, "node1");
        assert_eq!(seen.double_moments, 1);
        assert_eq!(
            seen.double_nodes.into_iter().collect::<Vec<_>>(),
            vec!["node1".to_string(), "node2".to_string()]
        );
        assert_eq!(seen.fenced_moments, 0);
        assert_eq!(primaries(&samples[..4], "node1"), Primaries::default());
        // Two answers of one node in one round are one primary, not two.
        let twice = vec![
            sample(5, "node2", Some(true)),
            sample(5, "node2", Some(true)),
        ];
        assert_eq!(primaries(&twice, "node1"), Primaries::default());
    }

    #[test]
    fn a_primary_whose_only_synchronous_standby_was_promoted_cannot_acknowledge() {
        // node1 is cut off: its walsender still lists node2 as its synchronous standby, but
        // node2 answers as a primary in the same round.
        let mut cut_off = sample(7, "node1", Some(true));
        cut_off.waits_for = vec!["node2".to_string()];
        let promoted = sample(7, "node2", Some(true));
        let seen = primaries(&[cut_off.clone(), promoted.clone()], "node1");
        assert_eq!((seen.double_moments, seen.fenced_moments), (0, 1));
        // Another synchronous standby still in recovery could acknowledge its commits.
        let mut two_standbys = cut_off.clone();
        two_standbys.waits_for.push("node3".to_string());
        let seen = primaries(&[two_standbys, promoted.clone()], "node1");
        assert_eq!((seen.double_moments, seen.fenced_moments), (1, 0));
        // A standby that did not answer this round counts as attached.
        let mut unseen = cut_off;
        unseen.waits_for = vec!["node3".to_string()];
        let seen = primaries(&[unseen, promoted], "node1");
        assert_eq!((seen.double_moments, seen.fenced_moments), (1, 0));
    }

    #[test]
    fn a_resumed_primary_that_cannot_acknowledge_is_fenced_not_double() {
        let mut stale = sample(4, "node1", Some(true));
        stale.can_acknowledge = false;
        let samples = vec![stale.clone(), sample(4, "node3", Some(true))];
        let seen = primaries(&samples, "node1");
        assert_eq!((seen.double_moments, seen.fenced_moments), (0, 1));
        assert!(seen.fenced_nodes.contains("node1") && seen.fenced_nodes.contains("node3"));
        // Two that cannot acknowledge are no split brain either.
        let mut other = sample(4, "node3", Some(true));
        other.can_acknowledge = false;
        assert_eq!(
            primaries(&[stale.clone(), other.clone()], "node1").double_moments,
            0
        );
        // But an old primary that can acknowledge beside a new one that cannot is: writes
        // acknowledged there would be rewound away.
        let mut old_acknowledging = stale;
        old_acknowledging.can_acknowledge = true;
        let seen = primaries(&[old_acknowledging, other], "node1");
        assert_eq!((seen.double_moments, seen.fenced_moments), (1, 0));
    }
}
