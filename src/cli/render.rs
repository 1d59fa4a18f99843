//! `pgha render`: write every node's configuration files into a folder for inspection.

use std::path::PathBuf;

use crate::inventory::{Inventory, Secrets};
use crate::render::{render_to_dir, Renderer};

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Inventory file
    #[arg(short, long)]
    inventory: PathBuf,
    /// Output folder; files land in OUT/<node>/<path on the node>
    #[arg(long)]
    out: PathBuf,
    /// Render only this node
    #[arg(long)]
    node: Option<String>,
    /// Folder of templates that replace the built-in ones by name
    #[arg(long)]
    templates: Option<PathBuf>,
}

pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    let inventory = Inventory::load(&args.inventory)?;
    let renderer = Renderer::new(args.templates.as_deref())?;
    let secrets = Secrets::load_or_create(&inventory.cluster.secrets_file)?;
    // The files name the node certificates the deploy would install; issue them as it would.
    crate::tls::Authority::for_cluster(&inventory)?
        .ensure(&inventory, std::time::SystemTime::now())?;
    let written = render_to_dir(
        &inventory,
        &secrets,
        &renderer,
        &args.out,
        args.node.as_deref(),
    )?;
    eprintln!(
        "wrote {} files under `{}`",
        written.len(),
        args.out.display()
    );
    Ok(())
}
