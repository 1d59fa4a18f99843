//! `pgha lab ...`: arguments for the local lab; the work is in [`crate::lab`]. This module only
//! turns arguments into calls and renders the reports (data on stdout, progress on stderr).

use clap::Subcommand;

use crate::debian::Release;
use crate::lab::{DownOptions, Lab, Report, UpOptions};

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
}

pub fn run(command: LabCommand) -> anyhow::Result<()> {
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
    println!("{:<8} {:<12} {:<12} BLOCKED", "NODE", "ADDRESS", "STATE");
    for node in &status.nodes {
        let blocked = if node.blocked.is_empty() {
            "-".to_string()
        } else {
            node.blocked.join(",")
        };
        println!(
            "{:<8} {:<12} {:<12} {blocked}",
            node.name,
            node.address,
            node.state.to_string()
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
