//! The one component that prints a run: tasks send it events; it writes progress lines to
//! stderr (quiet with `--json`), the recap, and the machine-readable result. Every message
//! passes through the secret mask first.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How a task ended on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Changed,
    Skipped,
    Failed,
    Unreachable,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostRecap {
    pub ok: usize,
    pub changed: usize,
    pub skipped: usize,
    pub failed: usize,
    pub unreachable: usize,
    pub connections: usize,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub play: String,
    pub task: String,
    pub place: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub host: String,
    pub play: String,
    pub task: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The result of a whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub success: bool,
    pub check: bool,
    pub duration_ms: u128,
    pub hosts: BTreeMap<String, HostRecap>,
    pub changes: Vec<Change>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The slowest task runs (at most five), to show where a run spent its time.
    pub slowest: Vec<TaskTime>,
    /// After a deploy with a VIP: the one node holding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip_holder: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskTime {
    pub host: String,
    pub play: String,
    pub task: String,
    pub duration_ms: u128,
}

/// Task runs at least this long get their time on their progress line.
const SHOW_TIME_FROM: Duration = Duration::from_millis(500);
const SLOWEST_SHOWN: usize = 5;

impl RunResult {
    pub fn changed_total(&self) -> usize {
        self.hosts.values().map(|host| host.changed).sum()
    }
}

pub struct Reporter {
    quiet: bool,
    secrets: Vec<String>,
    started: Instant,
    state: Mutex<(BTreeMap<String, HostRecap>, Vec<Change>)>,
    /// When each host began its current task, and every finished task's time.
    timing: Mutex<(BTreeMap<String, Instant>, Vec<TaskTime>)>,
    /// Spinners, one per host, when stderr is a terminal; plain lines otherwise.
    progress: Option<Progress>,
}

/// A spinner per host showing the task it works on; finished lines print above them.
struct Progress {
    multi: indicatif::MultiProgress,
    spinners: Mutex<BTreeMap<String, indicatif::ProgressBar>>,
}

impl Progress {
    fn new() -> Option<Progress> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal()
            || std::env::var_os("TERM").is_some_and(|term| term == "dumb")
        {
            return None;
        }
        Some(Progress {
            multi: indicatif::MultiProgress::new(),
            spinners: Mutex::new(BTreeMap::new()),
        })
    }

    fn show(&self, host: &str, text: &str) {
        let mut spinners = self
            .spinners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let spinner = spinners.entry(host.to_string()).or_insert_with(|| {
            let spinner = self.multi.add(indicatif::ProgressBar::new_spinner());
            // No colours in the template: output must read the same without them (NO_COLOR).
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("  {spinner} {prefix:<10} {wide_msg}")
            {
                spinner.set_style(style);
            }
            spinner.set_prefix(host.to_string());
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            spinner
        });
        spinner.set_message(text.to_string());
    }

    fn clear(&self) {
        let spinners = self
            .spinners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for spinner in spinners.values() {
            spinner.finish_and_clear();
        }
    }
}

impl Reporter {
    pub fn new(
        quiet: bool,
        secrets: Vec<String>,
        hosts: impl IntoIterator<Item = String>,
    ) -> Reporter {
        let recaps = hosts
            .into_iter()
            .map(|host| (host, HostRecap::default()))
            .collect();
        Reporter {
            quiet,
            secrets,
            started: Instant::now(),
            state: Mutex::new((recaps, Vec::new())),
            timing: Mutex::new((BTreeMap::new(), Vec::new())),
            progress: if quiet { None } else { Progress::new() },
        }
    }

    /// `text` with every secret replaced by `********`.
    pub fn mask(&self, text: &str) -> String {
        self.secrets
            .iter()
            .filter(|secret| !secret.is_empty())
            .fold(text.to_string(), |text, secret| {
                text.replace(secret.as_str(), "********")
            })
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.progress {
            Some(progress) => progress.multi.suspend(|| eprintln!("{}", self.mask(text))),
            None => eprintln!("{}", self.mask(text)),
        }
    }

    /// `host` starts working on `task` (shown on its spinner on a terminal).
    pub fn working(&self, host: &str, play: &str, task: &str) {
        self.timing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .insert(host.to_string(), Instant::now());
        if let Some(progress) = &self.progress {
            progress.show(host, &self.mask(&format!("{play} › {task}")));
        }
    }

    pub fn play(&self, name: &str, hosts: &[String]) {
        self.line(&format!("\nPLAY {name} [{}]", hosts.join(", ")));
    }

    pub fn connected(&self, host: &str) {
        self.with(host, |recap| recap.connections += 1);
    }

    pub fn task(
        &self,
        host: &str,
        play: &str,
        task: &str,
        status: Status,
        detail: &str,
        diff: Option<String>,
    ) {
        let label = match status {
            Status::Ok => "ok",
            Status::Changed => "changed",
            Status::Skipped => "skipped",
            Status::Failed => "FAILED",
            Status::Unreachable => "UNREACHABLE",
        };
        let took = self.took(host, play, task);
        let took = match took {
            Some(took) if took >= SHOW_TIME_FROM => format!(" ({:.1} s)", took.as_secs_f64()),
            _ => String::new(),
        };
        self.line(&format!("  {host:<10} {label:<8} {task}: {detail}{took}"));
        if let Some(diff) = &diff {
            self.line(diff.trim_end());
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if status == Status::Changed {
            state.1.push(Change {
                host: host.into(),
                play: play.into(),
                task: task.into(),
                summary: self.mask(detail),
                diff: diff.map(|diff| self.mask(&diff)),
            });
        }
        let recap = state.0.entry(host.to_string()).or_default();
        match status {
            Status::Ok => recap.ok += 1,
            Status::Changed => recap.changed += 1,
            Status::Skipped => recap.skipped += 1,
            Status::Failed => recap.failed += 1,
            Status::Unreachable => recap.unreachable += 1,
        }
    }

    /// How long `host` has worked on `task`, recorded for the slowest-tasks list.
    fn took(&self, host: &str, play: &str, task: &str) -> Option<Duration> {
        let mut timing = self
            .timing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let took = timing.0.remove(host)?.elapsed();
        timing.1.push(TaskTime {
            host: host.into(),
            play: play.into(),
            task: task.into(),
            duration_ms: took.as_millis(),
        });
        Some(took)
    }

    pub fn failure(&self, host: &str, failure: Failure) {
        let failure = Failure {
            message: self.mask(&failure.message),
            ..failure
        };
        self.with(host, |recap| recap.failures.push(failure));
    }

    fn with(&self, host: &str, change: impl FnOnce(&mut HostRecap)) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(state.0.entry(host.to_string()).or_default());
    }

    /// The final result; also prints the recap unless quiet.
    pub fn finish(&self, check: bool, stopped: Option<String>) -> RunResult {
        if let Some(progress) = &self.progress {
            progress.clear();
        }
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (hosts, changes) = state.clone();
        let mut slowest = std::mem::take(
            &mut self
                .timing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .1,
        );
        slowest.sort_by(|a, b| b.duration_ms.cmp(&a.duration_ms));
        slowest.truncate(SLOWEST_SHOWN);
        let success = stopped.is_none()
            && hosts
                .values()
                .all(|host| host.failed == 0 && host.unreachable == 0);
        let result = RunResult {
            success,
            check,
            duration_ms: self.started.elapsed().as_millis(),
            hosts,
            changes,
            stopped,
            slowest,
            vip_holder: None,
        };
        if !self.quiet {
            eprintln!(
                "\nRECAP{}",
                if check {
                    " (check mode: nothing was changed)"
                } else {
                    ""
                }
            );
            for (host, recap) in &result.hosts {
                eprintln!(
                    "  {host:<10} ok={:<3} changed={:<3} skipped={:<3} failed={:<3} unreachable={}",
                    recap.ok, recap.changed, recap.skipped, recap.failed, recap.unreachable
                );
                for failure in &recap.failures {
                    eprintln!(
                        "    failed: {} ({}) in play `{}`\n      {}",
                        failure.task,
                        failure.place,
                        failure.play,
                        failure.message.replace('\n', "\n      ")
                    );
                }
            }
            let slow: Vec<&TaskTime> = result
                .slowest
                .iter()
                .filter(|time| time.duration_ms >= SHOW_TIME_FROM.as_millis())
                .collect();
            if !slow.is_empty() {
                eprintln!("  slowest tasks:");
                for time in slow {
                    eprintln!(
                        "    {:>6.1} s  {:<10} {} › {}",
                        time.duration_ms as f64 / 1000.0,
                        time.host,
                        time.play,
                        time.task
                    );
                }
            }
            if let Some(reason) = &result.stopped {
                eprintln!("  rollout stopped: {reason}");
            }
            eprintln!(
                "  {} changed in {:.1} s",
                result.changed_total(),
                result.duration_ms as f64 / 1000.0
            );
        }
        result
    }
}
