//! `pgha agent run`: the node daemon (deployed as the `pgha-agent` systemd service);
//! `pgha agent release`: make drained write servers ready (the unit's `ExecStopPost`, so it
//! runs after any exit of the daemon, a crash included).

use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Run the agent in the foreground until SIGTERM (systemd runs it as `pgha-agent`)
    Run(RunArgs),
    /// Make every drained server of the write backend ready again, so HAProxy's health checks
    /// route while no agent runs (systemd runs it after the agent exits, however it exited)
    Release(RunArgs),
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
        AgentCommand::Release(args) => {
            super::run::runtime()?.block_on(crate::agent::release(&args.config))
        }
    }
}
