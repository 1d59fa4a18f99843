//! `pgha lab ...`: arguments for the local lab; the work is in [`crate::lab`].

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build (once) the Debian base and boot the nodes; changes nothing when already up
    Up {
        /// Number of nodes
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Stop every node and remove the lab's mounts, namespaces, bridge and processes
    Down {
        /// Also delete the cached Debian base filesystem
        #[arg(long)]
        purge: bool,
    },
    /// Each node's state and address
    Status,
}

pub fn run(command: LabCommand) -> anyhow::Result<()> {
    let _ = command;
    anyhow::bail!("`pgha lab` is not implemented yet")
}
