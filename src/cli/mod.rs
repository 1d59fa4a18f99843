//! Command-line interface. Each subcommand turns its arguments into an options value and calls
//! one operation; this module owns printing errors and choosing the exit code.

mod agent;
mod cluster;
mod drill;
mod inventory;
mod lab;
mod render;
mod run;
mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pgha builds a PostgreSQL high-availability cluster (Patroni, etcd, HAProxy, Keepalived and
/// the pgha agent) on plain Linux hosts over SSH, and proves that it works.
#[derive(Debug, Parser)]
#[command(name = "pgha", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, show and describe inventories (the cluster description)
    #[command(subcommand)]
    Inventory(inventory::InventoryCommand),
    /// Render every node's configuration files into a directory for inspection
    Render(render::RenderArgs),
    /// Converge the whole cluster (the built-in `deploy` playbook); a second run changes nothing
    Deploy(run::DeployArgs),
    /// Run a playbook on the inventory's hosts
    Run(run::RunArgs),
    /// Run an ad-hoc shell command on the inventory's hosts (as root)
    Exec(run::ExecArgs),
    /// End-to-end assertions about the live cluster (etcd, Patroni, routing, VIP, security)
    Verify(cluster::VerifyArgs),
    /// The live cluster at a glance: members, etcd, VIP holder, write routing
    Status(cluster::StatusArgs),
    /// Planned switchover through Patroni, checked before and after
    Switchover(cluster::SwitchoverArgs),
    /// Rolling upgrade to the inventory's pinned versions, one node at a time (`--check`: plan
    /// and preconditions only)
    Upgrade(upgrade::UpgradeArgs),
    /// A throw-away cluster of real Debian nodes on this machine (needs root)
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// The node agent: event-driven HAProxy routing, the VIP verdict, `/status` and `/metrics`
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Failure drill: inject a fault, measure write outage, lost writes and double primaries
    Drill(drill::DrillArgs),
}

/// Parse the command line, run the command, print any error and return the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inventory(command) => inventory::run(command),
        Command::Render(args) => render::run(args),
        Command::Deploy(args) => run::deploy(args),
        Command::Run(args) => run::run(args),
        Command::Exec(args) => run::exec(args),
        Command::Verify(args) => cluster::verify(args),
        Command::Status(args) => cluster::status(args),
        Command::Switchover(args) => cluster::switchover(args),
        Command::Upgrade(args) => upgrade::run(args),
        Command::Lab(command) => lab::run(command),
        Command::Agent(command) => agent::run(command),
        Command::Drill(args) => drill::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::from(crate::error::exit_code(&error))
        }
    }
}

/// Print an error and its causes on stderr, `error:` first, causes indented.
fn report(error: &anyhow::Error) {
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
