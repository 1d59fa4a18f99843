//! `pgha inventory ...`
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Check an inventory and report every problem with its place
    Validate,
}

pub fn run(command: InventoryCommand) -> anyhow::Result<()> {
    let _ = command;
    anyhow::bail!("not implemented yet")
}
