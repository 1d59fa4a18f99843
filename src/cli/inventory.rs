//! `pgha inventory ...`: check, show and describe inventories, and edit them losslessly
//! (`set`, `unset`, `add-node`, `remove-node`): the edited text is validated as an inventory
//! before it replaces the file (atomically); `--dry-run` prints the diff instead.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::error::UserError;
use crate::inventory::edit::{self, Edit};
use crate::inventory::{self, Inventory};

/// What every editing command takes besides its edit.
#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// Inventory file (edited in place, keeping every byte the edit does not concern)
    #[arg(short, long)]
    inventory: PathBuf,
    /// Print the diff and leave the file as it is
    #[arg(long)]
    dry_run: bool,
}

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
    /// Set a value by its dotted path, e.g. `cluster.postgresql.parameters.work_mem 64MB`
    Set {
        #[command(flatten)]
        edit: EditArgs,
        /// Dotted path (`cluster.failover_profile`)
        path: String,
        /// The new value (numbers stay numbers; text YAML would misread is quoted)
        value: String,
    },
    /// Remove a value by its dotted path (the default applies again)
    Unset {
        #[command(flatten)]
        edit: EditArgs,
        /// Dotted path (`cluster.vip_interface`)
        path: String,
    },
    /// Add a node to `nodes`, written like the nodes already listed
    AddNode {
        #[command(flatten)]
        edit: EditArgs,
        /// Node name (Patroni member name)
        name: String,
        /// IP address pgha and the cluster use to reach it
        address: String,
        /// Its components, comma-separated (default: all four)
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
        /// A Patroni tag, `key=value` (e.g. `nofailover=true`); repeat for more
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Remove a node from `nodes`
    RemoveNode {
        #[command(flatten)]
        edit: EditArgs,
        /// Node name
        name: String,
    },
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!("`{text}` is not `key=value`")),
    }
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
        InventoryCommand::Set { edit, path, value } => {
            edit_file(&edit, &Edit::Set { path, value })?
        }
        InventoryCommand::Unset { edit, path } => edit_file(&edit, &Edit::Unset { path })?,
        InventoryCommand::AddNode {
            edit,
            name,
            address,
            roles,
            tags,
        } => edit_file(
            &edit,
            &Edit::AddNode {
                name,
                address,
                roles,
                tags,
            },
        )?,
        InventoryCommand::RemoveNode { edit, name } => {
            edit_file(&edit, &Edit::RemoveNode { name })?
        }
    }
    Ok(())
}

/// Edit, validate, then print the diff (`--dry-run`) or replace the file atomically.
fn edit_file(args: &EditArgs, change: &Edit) -> anyhow::Result<()> {
    let path = &args.inventory;
    let old = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read inventory `{}`", path.display()))
        .map_err(|error| UserError(format!("{error:#}\nhint: pass an existing file with `-i`")))?;
    let new = edit::apply(&old, change).map_err(|error| {
        UserError(match &error.hint {
            Some(hint) => format!("{}: {}\nhint: {hint}", path.display(), error.message),
            None => format!("{}: {}", path.display(), error.message),
        })
    })?;
    // The edited inventory must be valid before anything is written.
    Inventory::parse(path, &new).map_err(|error| {
        UserError(format!(
            "the edit would make the inventory invalid; `{}` is unchanged\n{error}",
            path.display()
        ))
    })?;
    let diff = similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(1)
        .header(
            &format!("{} (now)", path.display()),
            &format!("{} (edited)", path.display()),
        )
        .to_string();
    if args.dry_run {
        print!("{diff}");
        eprintln!("dry run: `{}` is unchanged", path.display());
        return Ok(());
    }
    replace_atomically(path, &new)?;
    print!("{diff}");
    eprintln!("`{}` edited and valid", path.display());
    Ok(())
}

/// Write `text` to a temporary file beside `path` (the real file when `path` is a symbolic
/// link) created with `path`'s mode and given its owner, flush it to disk, rename it over the
/// file and flush the directory: readers see the old file or the new one, never half of one.
fn replace_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let target = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve `{}`", path.display()))?;
    let directory = target.parent().unwrap_or(Path::new("/"));
    let name = target
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("inventory");
    let temporary = directory.join(format!(".{name}.pgha-edit-{}", std::process::id()));
    let metadata = std::fs::metadata(&target)?;
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(metadata.mode() & 0o7777)
            .open(&temporary)?;
        // The umask may have narrowed the mode; an inventory keeps its owner.
        file.set_permissions(std::fs::Permissions::from_mode(metadata.mode() & 0o7777))?;
        std::os::unix::fs::fchown(&file, Some(metadata.uid()), Some(metadata.gid()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)?;
        std::fs::File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.with_context(|| format!("cannot replace `{}`", target.display()))
}
