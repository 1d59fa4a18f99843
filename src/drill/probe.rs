//! The drill's measuring instruments, run from the control machine while a fault is injected:
//! the write probe (a unique id through `VIP:<write port>` every 100 ms on one persistent
//! connection that reconnects on error, as an application would) and the primary probe (on
//! every node every 200 ms: out of recovery? and could it acknowledge a commit?). Both only
//! record; the pure functions below turn their logs into the verdict (outage, lost writes,
//! double primaries).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_postgres::{Client, Config, NoTls};

/// Interval between two write attempts.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(100);
/// Interval between two rounds of the primary probe.
pub const PRIMARY_INTERVAL: Duration = Duration::from_millis(200);
/// Connect timeout of every probe connection (a real application's short timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A write not acknowledged within this time counts as failed; its connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The primary probe's answer timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// The table the write probe fills; created (if missing) through the VIP before the drill.
pub const TABLE_DDL: &str = "create table if not exists pgha_drill \
    (run text not null, id bigint not null, at timestamptz not null default now(), \
    primary key (run, id))";

/// One write attempt: when it started and ended (ms since the probe's start) and whether the
/// server acknowledged the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WriteAttempt {
    pub id: i64,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub acknowledged: bool,
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
}

/// Whether a commit on the answering server would be acknowledged now (see
/// [`PrimarySample::can_acknowledge`]).
const PRIMARY_QUERY: &str = "select not pg_is_in_recovery(), \
    current_setting('synchronous_commit') in ('off', 'local') \
    or current_setting('synchronous_standby_names') = '' \
    or exists (select 1 from pg_stat_replication where sync_state in ('sync', 'quorum'))";

/// How to reach PostgreSQL as the superuser. `Debug` hides the password.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}@{}:{}", self.user, self.host, self.port)
    }
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
            .connect_timeout(CONNECT_TIMEOUT);
        config
    }

    /// Open a connection; its driver task ends with the connection.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config().connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// The running probes; [`Probes::stop`] ends them and returns their logs.
pub struct Probes {
    started: Instant,
    stop: watch::Sender<bool>,
    writes: Arc<Mutex<Vec<WriteAttempt>>>,
    samples: Arc<Mutex<Vec<PrimarySample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the probes recorded.
#[derive(Debug, Clone, Default)]
pub struct ProbeLog {
    pub writes: Vec<WriteAttempt>,
    pub samples: Vec<PrimarySample>,
}

impl Probes {
    /// Start the write probe on `vip` (ids tagged with `run`) and the primary probe on `nodes`.
    pub fn start(run: String, vip: Endpoint, nodes: Vec<(String, Endpoint)>) -> Probes {
        let started = Instant::now();
        let (stop, stopped) = watch::channel(false);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = vec![tokio::spawn(write_probe(
            run,
            vip,
            started,
            stopped.clone(),
            writes.clone(),
        ))];
        for (name, endpoint) in nodes {
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

    /// Stop both probes (each finishes its current attempt) and return what they recorded.
    pub async fn stop(self) -> ProbeLog {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        ProbeLog {
            writes: self
                .writes
                .lock()
                .map(|log| log.clone())
                .unwrap_or_default(),
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

async fn write_probe(
    run: String,
    vip: Endpoint,
    started: Instant,
    mut stopped: watch::Receiver<bool>,
    log: Arc<Mutex<Vec<WriteAttempt>>>,
) {
    let mut ticker = tokio::time::interval(WRITE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut client: Option<Client> = None;
    let mut id: i64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        id += 1;
        let started_ms = elapsed_ms(started);
        let attempt = async {
            if client.as_ref().is_none_or(|client| client.is_closed()) {
                client = Some(vip.connect().await.map_err(|_| ())?);
            }
            let Some(connected) = client.as_ref() else {
                return Err(());
            };
            connected
                .execute(
                    "insert into pgha_drill (run, id, at) values ($1, $2, now())",
                    &[&run, &id],
                )
                .await
                .map(|_| ())
                .map_err(|_| ())
        };
        let acknowledged = matches!(
            tokio::time::timeout(WRITE_TIMEOUT, attempt).await,
            Ok(Ok(()))
        );
        if !acknowledged {
            // A real application drops a connection that failed or hung, and reconnects.
            client = None;
        }
        if let Ok(mut log) = log.lock() {
            log.push(WriteAttempt {
                id,
                started_ms,
                ended_ms: elapsed_ms(started),
                acknowledged,
            });
        }
    }
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
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        let round = elapsed_ms(started) / period;
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
            ))
        };
        let (writable, can_acknowledge) = match tokio::time::timeout(QUERY_TIMEOUT, query).await {
            Ok(Ok((writable, can_acknowledge))) => (Some(writable), can_acknowledge),
            _ => {
                client = None;
                (None, false)
            }
        };
        if let Ok(mut log) = log.lock() {
            log.push(PrimarySample {
                round,
                node: node.clone(),
                writable,
                can_acknowledge,
            });
        }
    }
}

/// The longest write outage: from the start of the first failed attempt of a run of failures
/// to the start of the next acknowledged attempt (or the end of the log's last attempt when no
/// write succeeded after it). 0 when every write was acknowledged.
pub fn longest_outage_ms(writes: &[WriteAttempt]) -> u64 {
    let mut longest = 0;
    let mut failing_since: Option<u64> = None;
    for attempt in writes {
        match (attempt.acknowledged, failing_since) {
            (false, None) => failing_since = Some(attempt.started_ms),
            (true, Some(since)) => {
                longest = longest.max(attempt.started_ms.saturating_sub(since));
                failing_since = None;
            }
            _ => {}
        }
    }
    if let (Some(since), Some(last)) = (failing_since, writes.last()) {
        longest = longest.max(last.ended_ms.saturating_sub(since));
    }
    longest
}

/// Number of failed write attempts.
pub fn failed_writes(writes: &[WriteAttempt]) -> usize {
    writes
        .iter()
        .filter(|attempt| !attempt.acknowledged)
        .count()
}

/// Acknowledged ids missing from `stored` (the ids the surviving primary holds), in order.
pub fn lost_writes(writes: &[WriteAttempt], stored: &BTreeSet<i64>) -> Vec<i64> {
    writes
        .iter()
        .filter(|attempt| attempt.acknowledged && !stored.contains(&attempt.id))
        .map(|attempt| attempt.id)
        .collect()
}

/// Ids that were not acknowledged but committed anyway (the answer was lost, not the row):
/// harmless, but an application that retries would write them twice.
pub fn unacknowledged_but_stored(writes: &[WriteAttempt], stored: &BTreeSet<i64>) -> usize {
    writes
        .iter()
        .filter(|attempt| !attempt.acknowledged && stored.contains(&attempt.id))
        .count()
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
pub fn primaries(samples: &[PrimarySample], old_primary: &str) -> Primaries {
    let mut rounds: BTreeMap<u64, Vec<&PrimarySample>> = BTreeMap::new();
    for sample in samples
        .iter()
        .filter(|sample| sample.writable == Some(true))
    {
        rounds.entry(sample.round).or_default().push(sample);
    }
    let mut result = Primaries::default();
    for out_of_recovery in rounds.values().filter(|nodes| nodes.len() >= 2) {
        let acknowledging: Vec<&str> = out_of_recovery
            .iter()
            .filter(|sample| sample.can_acknowledge)
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
        // One attempt per 100 ms; `.` acknowledged, `x` failed.
        pattern
            .chars()
            .enumerate()
            .map(|(index, mark)| {
                let index = index as u64;
                WriteAttempt {
                    id: index as i64 + 1,
                    started_ms: index * 100,
                    ended_ms: index * 100 + 10,
                    acknowledged: mark == '.',
                }
            })
            .collect()
    }

    #[test]
    fn no_failure_is_no_outage() {
        assert_eq!(longest_outage_ms(&attempts("......")), 0);
        assert_eq!(longest_outage_ms(&[]), 0);
    }

    #[test]
    fn outage_is_the_longest_run_from_first_failure_to_next_success() {
        // A run of 2 failures (200 ms), then a run of 5 (500 ms).
        assert_eq!(longest_outage_ms(&attempts("..xx...xxxxx..")), 500);
        assert_eq!(failed_writes(&attempts("..xx...xxxxx..")), 7);
    }

    #[test]
    fn an_outage_that_never_ended_runs_to_the_last_attempt() {
        // Failing from 200 ms until the last attempt ended at 510 ms.
        assert_eq!(longest_outage_ms(&attempts("..xxxx")), 310);
    }

    #[test]
    fn a_hung_attempt_counts_for_its_whole_duration() {
        let mut writes = attempts("..x.");
        writes[2].ended_ms = 1_700;
        writes[3].started_ms = 1_700;
        writes[3].ended_ms = 1_710;
        assert_eq!(longest_outage_ms(&writes), 1_500);
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

    fn sample(round: u64, node: &str, writable: Option<bool>) -> PrimarySample {
        PrimarySample {
            round,
            node: node.to_string(),
            writable,
            can_acknowledge: writable == Some(true),
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
