//! `pgha render`
#[derive(Debug, clap::Args)]
pub struct RenderArgs {}

pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("not implemented yet")
}
