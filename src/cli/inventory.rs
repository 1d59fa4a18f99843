//! `pgha inventory ...`: check, show and describe inventories.

use std::path::PathBuf;

use clap::Subcommand;

use crate::inventory::{self, Inventory};

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Check an inventory; every problem is reported with file:line:column and a hint
    Validate {
        /// Inventory file
        #[arg(short, long)]
        inventory: PathBuf,
    },
    /// Print the inventory with every default filled in (YAML, or JSON with --json)
    Show {
        /// Inventory file
        #[arg(short, long)]
        inventory: PathBuf,
        /// Print JSON instead of YAML
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of inventory files (for editors)
    Schema,
}

pub fn run(command: InventoryCommand) -> anyhow::Result<()> {
    match command {
        InventoryCommand::Validate { inventory } => {
            let loaded = Inventory::load(&inventory)?;
            eprintln!(
                "inventory `{}` is valid: cluster `{}`, {} nodes",
                inventory.display(),
                loaded.cluster.name,
                loaded.nodes.len()
            );
        }
        InventoryCommand::Show { inventory, json } => {
            let loaded = Inventory::load(&inventory)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&loaded)?);
            } else {
                print!("{}", loaded.to_yaml()?);
            }
        }
        InventoryCommand::Schema => {
            println!("{}", serde_json::to_string_pretty(&inventory::schema())?);
        }
    }
    Ok(())
}
