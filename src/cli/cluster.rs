//! `pgha verify`, `pgha status`, `pgha switchover`: the live cluster.

use std::path::PathBuf;

use anyhow::bail;

use super::run::runtime;
use crate::cluster::{self, Cluster};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Inventory file
    #[arg(short, long)]
    inventory: PathBuf,
    /// Print the checks as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Record the host keys of hosts not yet in known_hosts
    #[arg(long)]
    accept_new_host_keys: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Inventory file
    #[arg(short, long)]
    inventory: PathBuf,
    /// Print JSON on stdout
    #[arg(long)]
    json: bool,
    /// Refresh every 2 seconds until interrupted
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, clap::Args)]
pub struct SwitchoverArgs {
    /// Inventory file
    #[arg(short, long)]
    inventory: PathBuf,
    /// The node to promote (default: the first healthy candidate)
    #[arg(long)]
    to: Option<String>,
    /// Print the result as JSON on stdout
    #[arg(long)]
    json: bool,
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let cluster = Cluster::open(&args.inventory, args.accept_new_host_keys)?;
    let verification = runtime()?.block_on(cluster::verify(&cluster));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&verification)?);
    } else {
        for check in &verification.checks {
            println!(
                "{}  {:<34} {}",
                if check.pass { "PASS" } else { "FAIL" },
                check.name,
                check.evidence
            );
        }
    }
    let failed: Vec<&str> = verification
        .checks
        .iter()
        .filter(|check| !check.pass)
        .map(|check| check.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} checks failed: {}",
            failed.len(),
            verification.checks.len(),
            failed.join(", ")
        );
    }
    eprintln!("all {} checks passed", verification.checks.len());
    Ok(())
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let cluster = Cluster::open(&args.inventory, false)?;
    let runtime = runtime()?;
    loop {
        let status = runtime.block_on(cluster::status(&cluster));
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            println!("cluster `{}`", cluster.inventory.cluster.name);
            println!(
                "{:<10} {:<14} {:<10} {:>8} {:>10}",
                "MEMBER", "ROLE", "STATE", "TIMELINE", "LAG"
            );
            for member in &status.members {
                let lag = member.lag.map_or("-".to_string(), |lag| lag.to_string());
                let timeline = member
                    .timeline
                    .map_or("-".to_string(), |timeline| timeline.to_string());
                println!(
                    "{:<10} {:<14} {:<10} {:>8} {:>10}",
                    member.name, member.role, member.state, timeline, lag
                );
            }
            let etcd: Vec<String> = status
                .etcd
                .iter()
                .map(|(name, healthy)| {
                    format!(
                        "{name}={}",
                        match healthy {
                            Some(true) => "healthy",
                            Some(false) => "UNHEALTHY",
                            None => "?",
                        }
                    )
                })
                .collect();
            println!("etcd: {}", etcd.join(" "));
            if cluster.inventory.cluster.vip.is_some() {
                println!(
                    "VIP held by: {}",
                    if status.vip_holders.is_empty() {
                        "NOBODY".to_string()
                    } else {
                        status.vip_holders.join(", ")
                    }
                );
            }
            for (node, servers) in &status.write_routes {
                println!(
                    "haproxy on {node} routes writes to: {}",
                    if servers.is_empty() {
                        "NOTHING".to_string()
                    } else {
                        servers.join(", ")
                    }
                );
            }
            for (node, reason) in &status.unreachable {
                println!("{node}: UNREACHABLE ({reason})");
            }
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

pub fn switchover(args: SwitchoverArgs) -> anyhow::Result<()> {
    let cluster = Cluster::open(&args.inventory, false)?;
    let result = runtime()?.block_on(async {
        let result = cluster::switchover(&cluster, args.to.as_deref()).await;
        cluster.connections.close().await;
        result
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let held = match result.writes_held_ms {
            Some(ms) => format!("new writes held on every HAProxy after {ms} ms, "),
            None => "new writes not held, ".to_string(),
        };
        println!(
            "switched over from {} to {}: {held}new leader after {} ms, every HAProxy routing writes to it after {} ms, {} streaming from it after {} ms",
            result.from, result.to, result.leader_changed_ms, result.routed_ms, result.from, result.old_primary_streaming_ms
        );
    }
    Ok(())
}
