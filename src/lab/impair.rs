//! A degraded link on one node (`pgha lab impair`): a share of its packets lost and the rest
//! delayed, both ways, the faults `tc netem` makes, for kernels without `sch_netem`.
//!
//! In the node's namespace an iptables chain (`PGHA-IMPAIR`, legacy iptables, so that it never
//! touches a node's own nftables rules) sends every packet in and out of its interface to a
//! netfilter queue; a worker process (`pgha lab impair-worker`, see [`super::nfqueue`]) bound
//! to that queue gives the verdicts. The worker's PID and the fault live in a file in the lab's
//! state directory, so `unimpair`, `status` and `down` find it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::host;
use super::nfqueue::Impairment;
use super::topology::{Node, NODE_INTERFACE};

const CHAIN: &str = "PGHA-IMPAIR";
/// What a worker's command line contains (to recognise it before signalling a recorded PID).
const WORKER_MARK: &str = "impair-worker";

/// The file recording `node`'s worker: "PID LOSS_PERCENT DELAY_MS".
fn record_path(state_dir: &Path, node: &Node) -> PathBuf {
    state_dir.join("impair").join(node.name())
}

/// The netfilter queue of `node`: its address's last byte (unique in the lab).
fn queue_number(node: &Node) -> u16 {
    u16::from(node.address().octets()[3])
}

fn iptables(node: &Node) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &node.namespace(), "iptables-legacy", "-w"]);
    command
}

/// The jumps into the chain: every packet in and out of the node's interface.
fn jumps() -> [[&'static str; 5]; 2] {
    [
        ["INPUT", "-i", NODE_INTERFACE, "-j", CHAIN],
        ["OUTPUT", "-o", NODE_INTERFACE, "-j", CHAIN],
    ]
}

/// The fault recorded for `node`, with its worker's PID, if a worker is still running.
pub fn current(state_dir: &Path, node: &Node) -> Option<(u32, Impairment)> {
    let record = std::fs::read_to_string(record_path(state_dir, node)).ok()?;
    let mut fields = record.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(loss)), Some(Ok(delay))) =
        (fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    let pid = u32::try_from(pid).ok()?;
    worker_alive(pid, queue_number(node)).then_some((
        pid,
        Impairment {
            loss_percent: u8::try_from(loss).ok()?,
            delay: Duration::from_millis(delay),
        },
    ))
}

/// Whether `pid` is a live impair worker of `queue` (not a reused PID, not a zombie).
fn worker_alive(pid: u32, queue: u16) -> bool {
    let proc = Path::new("/proc").join(pid.to_string());
    let is_worker = std::fs::read(proc.join("cmdline")).is_ok_and(|cmdline| {
        let words: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
        let queue = queue.to_string();
        words.iter().any(|word| *word == WORKER_MARK.as_bytes())
            && words
                .windows(2)
                .any(|pair| pair[0] == b"--queue" && pair[1] == queue.as_bytes())
    });
    let zombie = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true);
    is_worker && !zombie
}

/// Degrade `node`'s link: start the worker, then send the interface's packets to it. Replaces a
/// fault already there.
pub fn apply(state_dir: &Path, node: &Node, impairment: Impairment) -> Result<()> {
    clear(state_dir, node)?;
    let record = record_path(state_dir, node);
    let directory = record.parent().expect("the record has a directory");
    std::fs::create_dir_all(directory)
        .with_context(|| format!("failed to create `{}`", directory.display()))?;
    let log_path = directory.join(format!("{}.log", node.name()));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("failed to create `{}`", log_path.display()))?;
    let program = std::env::current_exe().context("cannot find this program to run its worker")?;
    let mut worker = Command::new("ip")
        .args(["netns", "exec", &node.namespace()])
        .arg(&program)
        .args([
            "lab",
            WORKER_MARK,
            "--queue",
            &queue_number(node).to_string(),
            "--loss",
            &impairment.loss_percent.to_string(),
            "--delay-ms",
            &impairment.delay.as_millis().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: it outlives this command and a Ctrl-C of it.
        .process_group(0)
        .spawn()
        .context("failed to start the impair worker")?;
    // Recorded at once, so that `unimpair`, `remove` and `down` find a worker whatever happens
    // to this command from here on.
    let recorded = std::fs::write(
        &record,
        format!(
            "{} {} {}\n",
            worker.id(),
            impairment.loss_percent,
            impairment.delay.as_millis()
        ),
    );
    if let Err(error) = recorded {
        let _ = worker.kill();
        let _ = worker.wait();
        return Err(error).with_context(|| format!("failed to write `{}`", record.display()));
    }
    // The worker says "ready" once the queue is bound (it gives up after a few seconds); before
    // that no packet may go to it.
    let mut line = String::new();
    let stdout = worker.stdout.take().expect("piped stdout");
    BufReader::new(stdout).read_line(&mut line).ok();
    if line.trim() != "ready" {
        let _ = worker.kill();
        let _ = worker.wait();
        let _ = std::fs::remove_file(&record);
        let said = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!(
            "the impair worker for `{node}` did not start: {}\nhint: the kernel needs nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE)",
            said.trim()
        );
    }
    let queue = queue_number(node).to_string();
    let rules = (|| -> Result<()> {
        host::run(iptables(node).args(["-N", CHAIN]))?;
        host::run(iptables(node).args([
            "-A",
            CHAIN,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
            // Should the worker be gone, packets pass rather than vanish.
            "--queue-bypass",
        ]))?;
        for jump in jumps() {
            host::run(iptables(node).arg("-I").args(jump))?;
        }
        Ok(())
    })();
    if let Err(error) = rules {
        clear(state_dir, node)?;
        return Err(error.context(format!(
            "failed to send `{node}`'s packets to its impair worker; hint: `iptables-legacy` comes with Debian's `iptables` package (scripts/setup-host.sh installs it)"
        )));
    }
    Ok(())
}

/// Restore `node`'s link: remove the chain, let the worker pass what it holds, stop it. True if
/// there was anything to remove.
pub fn clear(state_dir: &Path, node: &Node) -> Result<bool> {
    let mut changed = false;
    if host::succeeds(iptables(node).args(["-n", "-L", CHAIN])) {
        for jump in jumps() {
            while host::succeeds(iptables(node).arg("-C").args(jump)) {
                host::run(iptables(node).arg("-D").args(jump))?;
            }
        }
        host::run(iptables(node).args(["-F", CHAIN]))?;
        host::run(iptables(node).args(["-X", CHAIN]))?;
        changed = true;
    }
    let record = record_path(state_dir, node);
    if let Some((pid, impairment)) = current(state_dir, node) {
        // Packets already queued get their verdicts before the worker goes.
        std::thread::sleep(impairment.delay + Duration::from_millis(100));
        stop_worker(pid, queue_number(node))?;
        changed = true;
    }
    if record.exists() {
        std::fs::remove_file(&record)
            .with_context(|| format!("failed to remove `{}`", record.display()))?;
    }
    Ok(changed)
}

/// Stop the worker of `node` without touching its namespace (for `down`, which removes the
/// namespace and its rules anyway). True if one was running.
pub fn stop(state_dir: &Path, node: &Node) -> Result<bool> {
    let stopped = match current(state_dir, node) {
        Some((pid, _)) => {
            stop_worker(pid, queue_number(node))?;
            true
        }
        None => false,
    };
    let _ = std::fs::remove_file(record_path(state_dir, node));
    Ok(stopped)
}

/// SIGTERM, then SIGKILL after 2 s.
fn stop_worker(pid: u32, queue: u16) -> Result<()> {
    for (signal, wait) in [(libc::SIGTERM, 2), (libc::SIGKILL, 3)] {
        // SAFETY: kill(2) on a PID just checked to be this queue's impair worker.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(wait);
        while worker_alive(pid, queue) {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !worker_alive(pid, queue) {
            return Ok(());
        }
    }
    bail!("the impair worker {pid} did not stop, even on SIGKILL")
}

/// The worker itself (`pgha lab impair-worker`, started by [`apply`] inside the node's
/// namespace): bind the queue, say "ready" on stdout, give verdicts until stopped.
pub fn run_worker(queue: u16, impairment: Impairment) -> Result<()> {
    let bound = super::nfqueue::Queue::bind(queue)
        .with_context(|| format!("cannot bind netfilter queue {queue}"))?;
    println!("ready");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut shaper = super::nfqueue::Shaper::new(impairment, seed);
    bound
        .run(&mut shaper)
        .with_context(|| format!("netfilter queue {queue} failed"))
}
