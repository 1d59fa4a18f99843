//! Clients through the VIP while something changes the cluster: a writer and a reader, each a
//! new `psql` connection every 50 ms, recording what they were told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIP: &str = "10.231.0.100";

/// What the clients saw.
#[derive(Default)]
pub struct Seen {
    pub acknowledged: Vec<u64>,
    pub failed_writes: Vec<String>,
    pub ack_times: Vec<Instant>,
    pub reads: u64,
    pub failed_reads: Vec<String>,
}

/// A writer (a new connection per INSERT through VIP:5000, `PGCONNECT_TIMEOUT=2`) and a reader
/// (VIP:5001), each every 50 ms after the previous answer, until [`Clients::stop`].
pub struct Clients {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    /// Start both; `sslmode` as libpq takes it, `table` the writer's (`id bigint primary key`).
    pub fn start(password: &str, sslmode: &'static str, table: &'static str) -> Clients {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (seen, stop, password) = (seen.clone(), stop.clone(), password.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) + 1;
                    let result = super::psql_with(
                        VIP,
                        5000,
                        &password,
                        2,
                        sslmode,
                        &format!("insert into {table} values ({id})"),
                    );
                    let mut seen = seen.lock().unwrap();
                    match result {
                        Ok(_) => {
                            seen.acknowledged.push(id);
                            seen.ack_times.push(Instant::now());
                        }
                        Err(error) => seen.failed_writes.push(error),
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let reader = {
            let (seen, stop, password) = (seen.clone(), stop.clone(), password.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = super::psql_with(
                        VIP,
                        5001,
                        &password,
                        2,
                        sslmode,
                        "select pg_is_in_recovery()",
                    );
                    let mut seen = seen.lock().unwrap();
                    seen.reads += 1;
                    match result {
                        Ok(answer) if answer == "t" => {}
                        Ok(answer) => seen.failed_reads.push(format!("answered {answer}")),
                        Err(error) => seen.failed_reads.push(error),
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        // Both have answered before anything changes.
        std::thread::sleep(Duration::from_secs(3));
        Clients {
            seen,
            stop,
            threads: vec![writer, reader],
        }
    }

    /// Failed writes and failed reads so far.
    pub fn failures(&self) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        (seen.failed_writes.len(), seen.failed_reads.len())
    }

    /// What the writer was told by the writes that failed after the first `skip` failures.
    pub fn failed_writes_after(&self, skip: usize) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.failed_writes.iter().skip(skip).cloned().collect()
    }

    /// A moment more, then stop both; what they saw.
    pub fn stop(self) -> Seen {
        std::thread::sleep(Duration::from_secs(3));
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Seen {
    /// Fail the test when a write the writer saw acknowledged is not in `table` (read back
    /// through VIP:5000 over TLS).
    pub fn assert_none_lost(&self, password: &str, table: &str) {
        let ids: Vec<String> = self.acknowledged.iter().map(u64::to_string).collect();
        let stored: u64 = super::psql_at(
            VIP,
            5000,
            password,
            3,
            &format!(
                "select count(*) from {table} where id = any('{{{}}}'::bigint[])",
                ids.join(",")
            ),
        )
        .expect("the acknowledged writes can be read back")
        .parse()
        .expect("a count");
        assert_eq!(
            stored,
            self.acknowledged.len() as u64,
            "acknowledged writes were lost"
        );
    }

    /// The longest time between two acknowledged writes around `from..to`: from the last one
    /// before `from` to the first one after `to`.
    pub fn longest_gap_within(&self, from: Instant, to: Instant) -> Duration {
        let first = self
            .ack_times
            .iter()
            .rposition(|time| *time <= from)
            .unwrap_or(0);
        let last = self
            .ack_times
            .iter()
            .position(|time| *time >= to)
            .unwrap_or(self.ack_times.len().saturating_sub(1));
        self.ack_times
            .get(first..=last)
            .unwrap_or_default()
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    /// The longest time between two acknowledged writes.
    pub fn longest_gap(&self) -> Duration {
        self.ack_times
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }
}
