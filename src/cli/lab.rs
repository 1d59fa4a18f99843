//! `pgha lab ...`: arguments for the local lab; the work is in [`crate::lab`]. This module only
//! turns arguments into calls and renders the reports (data on stdout, progress on stderr).

use std::time::Duration;

use clap::Subcommand;

use crate::debian::Release;
use crate::lab::{DownOptions, Impairment, Lab, Report, UpOptions};

fn parse_release(name: &str) -> Result<Release, String> {
    Release::named(name).ok_or_else(|| {
        format!(
            "`{name}` is not a Debian release the lab boots; choose {}",
            crate::debian::codenames()
        )
    })
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build (once) the Debian base and boot the nodes; changes nothing when already up, and
    /// on a running lab boots only the nodes it lacks
    Up {
        /// Number of nodes
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The nodes' Debian release: `bookworm` (12) or `trixie` (13). Default: the running
        /// lab's, else bookworm. Each release has its own cached base
        #[arg(long, value_parser = parse_release)]
        release: Option<Release>,
    },
    /// Stop every node and remove the lab's mounts, namespaces, bridge and processes
    Down {
        /// Also delete the cached Debian base filesystem, the package cache and the SSH keys
        #[arg(long)]
        purge: bool,
    },
    /// Each node's state and address
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Take the lab's last node away (stopped, its network, cgroups, files and host key gone);
    /// the others are left alone. `up --nodes N` with a larger N adds nodes to a running lab
    Remove { node: String },
    /// Power cut: kill every process of NODE at once, take its link down, flush its addresses
    Kill { node: String },
    /// Clean shutdown of NODE (poweroff inside), waiting until it has stopped
    Stop { node: String },
    /// Boot a stopped or killed NODE again and wait for its sshd
    Start { node: String },
    /// Cut NODE off the network; its processes keep running
    Partition { node: String },
    /// Reconnect a partitioned NODE
    Heal { node: String },
    /// Freeze every process of NODE (a hung machine)
    Freeze { node: String },
    /// Let a frozen NODE run again
    Thaw { node: String },
    /// Cut the link between two nodes (both directions)
    Block { a: String, b: String },
    /// Restore the link between two nodes
    Unblock { a: String, b: String },
    /// Degrade NODE's link both ways, as `tc netem` would (which some kernels lack): drop
    /// PERCENT of its packets, each independently, and delay the rest
    Impair {
        node: String,
        /// Percent of packets lost, each way (0-100)
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        loss: u8,
        /// Extra latency each way, e.g. `300ms` or `1s` (a bare number is milliseconds)
        #[arg(long, default_value = "0ms", value_parser = parse_delay)]
        delay: Duration,
    },
    /// Restore NODE's link after `impair`
    Unimpair { node: String },
    /// The worker behind `impair` (started by it inside the node's namespace)
    #[command(hide = true)]
    ImpairWorker {
        #[arg(long)]
        queue: u16,
        #[arg(long)]
        loss: u8,
        #[arg(long)]
        delay_ms: u64,
    },
}

/// `300ms`, `1s`, `1.5s` or a bare number of milliseconds.
fn parse_delay(text: &str) -> Result<Duration, String> {
    let problem = || format!("`{text}` is not a delay; write e.g. `300ms` or `1s`");
    let (number, unit) = match text.strip_suffix("ms") {
        Some(number) => (number, 1.0),
        None => match text.strip_suffix('s') {
            Some(number) => (number, 1000.0),
            None => (text, 1.0),
        },
    };
    let value: f64 = number.trim().parse().map_err(|_| problem())?;
    if !value.is_finite() || value < 0.0 || value * unit > 60_000.0 {
        return Err(format!("{}, at most 60 s", problem()));
    }
    // Whole milliseconds, as the worker takes them.
    let millis = (value * unit).round() as u64;
    if millis == 0 && value > 0.0 {
        return Err(format!(
            "`{text}` is under a millisecond; write at least `1ms`"
        ));
    }
    Ok(Duration::from_millis(millis))
}

pub fn run(command: LabCommand) -> anyhow::Result<()> {
    if let LabCommand::ImpairWorker {
        queue,
        loss,
        delay_ms,
    } = command
    {
        let impairment = Impairment {
            loss_percent: loss,
            delay: Duration::from_millis(delay_ms),
        };
        return crate::lab::impair_worker(queue, impairment);
    }
    let mut lab = Lab::open()?;
    lab.on_progress(|message| eprintln!("{message}"));
    let report = match command {
        LabCommand::Status { json } => return status(&lab, json),
        LabCommand::Up { nodes, release } => {
            let report = lab.up(&UpOptions { nodes, release })?;
            print_report(&report);
            if let Some(first) = lab.nodes().first() {
                println!(
                    "connect: ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes root@{}",
                    lab.client_key().display(),
                    lab.known_hosts().display(),
                    first.address()
                );
            }
            return Ok(());
        }
        LabCommand::Down { purge } => lab.down(&DownOptions { purge })?,
        LabCommand::Remove { node } => lab.remove(&node)?,
        LabCommand::Kill { node } => lab.kill(&node)?,
        LabCommand::Stop { node } => lab.stop(&node)?,
        LabCommand::Start { node } => lab.start(&node)?,
        LabCommand::Partition { node } => lab.partition(&node)?,
        LabCommand::Heal { node } => lab.heal(&node)?,
        LabCommand::Freeze { node } => lab.freeze(&node)?,
        LabCommand::Thaw { node } => lab.thaw(&node)?,
        LabCommand::Block { a, b } => lab.block(&a, &b)?,
        LabCommand::Unblock { a, b } => lab.unblock(&a, &b)?,
        LabCommand::Impair { node, loss, delay } => lab.impair(
            &node,
            Impairment {
                loss_percent: loss,
                delay,
            },
        )?,
        LabCommand::Unimpair { node } => lab.unimpair(&node)?,
        LabCommand::ImpairWorker { .. } => unreachable!("handled above"),
    };
    print_report(&report);
    Ok(())
}

fn print_report(report: &Report) {
    for change in &report.changes {
        println!("{change}");
    }
    if let Some(reason) = &report.unchanged_reason {
        println!("{reason}; nothing changed");
    }
    println!("done in {:.1} s", report.elapsed.as_secs_f64());
}

fn status(lab: &Lab, json: bool) -> anyhow::Result<()> {
    let status = lab.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    if !status.up {
        println!("the lab is not up (state: {})", status.state_dir.display());
        return Ok(());
    }
    println!(
        "{:<8} {:<12} {:<12} {:<12} IMPAIRED",
        "NODE", "ADDRESS", "STATE", "BLOCKED"
    );
    for node in &status.nodes {
        let blocked = if node.blocked.is_empty() {
            "-".to_string()
        } else {
            node.blocked.join(",")
        };
        println!(
            "{:<8} {:<12} {:<12} {blocked:<12} {}",
            node.name,
            node.address,
            node.state.to_string(),
            node.impaired.as_deref().unwrap_or("-")
        );
    }
    println!(
        "release: {}",
        status.release.as_deref().unwrap_or("unknown")
    );
    println!(
        "proxy: {}",
        status.proxy.as_deref().unwrap_or("not running")
    );
    println!("ssh key: {}", status.client_key.display());
    println!("known_hosts: {}", status.known_hosts.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_read_as_a_tc_user_writes_them() {
        assert_eq!(parse_delay("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_delay("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_delay("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_delay("250"), Ok(Duration::from_millis(250)));
        assert!(parse_delay("fast")
            .unwrap_err()
            .contains("`fast` is not a delay"));
        assert!(parse_delay("-5ms").is_err());
        assert!(parse_delay("2m").is_err());
        assert_eq!(parse_delay("1.4ms"), Ok(Duration::from_millis(1)));
        assert!(parse_delay("0.4ms")
            .unwrap_err()
            .contains("under a millisecond"));
    }
}
