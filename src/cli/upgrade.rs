//! `pgha upgrade -i INV [--check] [--json]`: the plan, the preconditions, then the steps.

use std::path::PathBuf;

use super::run::runtime;
use crate::upgrade::{upgrade, Limits, UpgradeOptions};

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// Inventory file
    #[arg(short, long)]
    inventory: PathBuf,
    /// Show the plan and check the preconditions and pinned versions; change nothing
    #[arg(long)]
    check: bool,
    /// Print the report as JSON (progress lines still go to stderr)
    #[arg(long)]
    json: bool,
    /// Largest replication lag (bytes) a replica may have before the upgrade starts and
    /// after each restart
    #[arg(long, default_value_t = 1_048_576)]
    max_lag_bytes: u64,
    /// Longest open transaction (seconds) on the primary the upgrade starts with (a switchover
    /// would cut it off)
    #[arg(long, default_value_t = 300)]
    max_transaction_seconds: u64,
    /// Measure what clients saw: the drills' write probes (a new connection per INSERT, and
    /// one persistent connection) and a read probe, through the VIP, during the steps
    #[arg(long)]
    measure: bool,
}

pub fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    let options = UpgradeOptions {
        inventory: args.inventory,
        check: args.check,
        limits: Limits {
            max_lag_bytes: args.max_lag_bytes,
            max_transaction_seconds: args.max_transaction_seconds,
        },
        progress: true,
        measure: args.measure,
    };
    let report = runtime()?.block_on(upgrade(options))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if report.plan.is_empty() {
            println!("nothing to upgrade: every node runs the pinned versions");
        }
        for step in &report.plan {
            let done = report.done.iter().find(|done| done.step == *step);
            match done {
                Some(done) => println!("done     {step} ({:.1} s)", done.seconds),
                None if report.check => println!("planned  {step}"),
                None => println!("not done {step}"),
            }
        }
        for check in report.preconditions.iter().filter(|check| !check.pass) {
            println!("FAIL     {}: {}", check.name, check.detail);
        }
        if let Some(measured) = &report.measured {
            println!(
                "measured: writes (new connection each) {} failed of {}, longest gap {} ms; persistent connection {} failed of {}, longest gap {} ms; {} acknowledged writes lost; reads {} failed of {}",
                measured.new_connection.failed,
                measured.new_connection.attempts,
                measured.new_connection.longest_gap_ms,
                measured.persistent.failed,
                measured.persistent.attempts,
                measured.persistent.longest_gap_ms,
                measured.lost_writes,
                measured.failed_reads,
                measured.reads
            );
        }
        println!("{:.1} s", report.seconds);
    }
    match &report.stopped {
        Some(reason) => anyhow::bail!("{reason}"),
        None => Ok(()),
    }
}
