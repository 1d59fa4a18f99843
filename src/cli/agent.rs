//! `pgha agent run`: the node daemon (deployed as the `pgha-agent` systemd service).

use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Run the agent in the foreground until SIGTERM (systemd runs it as `pgha-agent`)
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The agent's configuration (rendered by `pgha deploy`)
    #[arg(long, default_value = "/etc/pgha/agent.yml")]
    config: PathBuf,
}

pub fn run(command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::Run(args) => super::run::runtime()?.block_on(crate::agent::run(&args.config)),
    }
}
