//! `pgha agent run`: the node daemon (deployed as the `pgha-agent` systemd service);
//! `pgha agent release`: make drained write servers ready (the unit's `ExecStopPost`, so it
//! runs after any exit of the daemon, a crash included); `pgha agent read-server`: drain or
//! ready one server of the local read backend (a rolling upgrade's drain); `pgha agent
//! hold-writes`: announce a switchover so new writes wait in HAProxy for the next leader.

use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Run the agent in the foreground until SIGTERM (systemd runs it as `pgha-agent`)
    Run(RunArgs),
    /// Make every drained server of the write backend ready again, so HAProxy's health checks
    /// route while no agent runs (systemd runs it after the agent exits, however it exited)
    Release(RunArgs),
    /// Drain a server of the local HAProxy's read backend (no new reads; running ones finish),
    /// make it ready again, or only show it; prints its open sessions (`pgha upgrade` uses it)
    ReadServer(ReadServerArgs),
    /// Announce a switchover away from SERVER: drain it in the local write backend at once and
    /// keep it drained (the agent) until the hold is released or expires, so new writes wait
    /// in HAProxy for the next leader instead of meeting a stopping primary
    HoldWrites(HoldWritesArgs),
    /// Stop HAProxy's health checks of SERVER in both local backends (it keeps its state) or
    /// start them again (`pgha upgrade` restarts a primary's Patroni with PostgreSQL running)
    Checks(ChecksArgs),
    /// Save the local HAProxy's server states (`show servers state`) to the file its
    /// configuration loads on start, so a reload keeps them (the haproxy unit runs it first)
    SaveHaproxyState(SaveStateArgs),
    /// Sample what this node sees (the leader key, Patroni's role, HAProxy's write routing, the
    /// VIP) every 50 ms and write a JSON line on each change, until STOP_FILE exists (the
    /// drills run it on every node to time a failover's phases)
    Timeline(TimelineArgs),
}

#[derive(Debug, clap::Args)]
pub struct TimelineArgs {
    /// The agent's configuration (rendered by `pgha deploy`)
    #[arg(long, default_value = "/etc/pgha/agent.yml")]
    config: PathBuf,
    /// Stop once this file exists
    #[arg(long)]
    stop_file: PathBuf,
    /// Append the lines to this file (default: stdout)
    #[arg(long)]
    output: Option<PathBuf>,
    /// Stop after this many seconds at the latest
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
}

#[derive(Debug, clap::Args)]
pub struct SaveStateArgs {
    /// The agent's configuration (rendered by `pgha deploy`)
    #[arg(long, default_value = "/etc/pgha/agent.yml")]
    config: PathBuf,
    /// Where HAProxy's `server-state-file` points
    #[arg(long, default_value = "/var/lib/haproxy/pgha-server-state")]
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ReadServerArgs {
    /// The agent's configuration (rendered by `pgha deploy`)
    #[arg(long, default_value = "/etc/pgha/agent.yml")]
    config: PathBuf,
    /// The server (node name) in the read backend
    server: String,
    #[arg(long, value_enum, default_value = "show")]
    state: crate::agent::ReadServerState,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["server", "release"])))]
pub struct HoldWritesArgs {
    /// The agent's configuration (rendered by `pgha deploy`)
    #[arg(long, default_value = "/etc/pgha/agent.yml")]
    config: PathBuf,
    /// The write server (node name) that is about to hand over
    server: Option<String>,
    /// The hold ends on its own after this long, whatever happens to the caller
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// End the hold: the agent routes writes as usual again
    #[arg(long, conflicts_with = "server")]
    release: bool,
}

#[derive(Debug, clap::Args)]
pub struct ChecksArgs {
    /// The agent's configuration (rendered by `pgha deploy`)
    #[arg(long, default_value = "/etc/pgha/agent.yml")]
    config: PathBuf,
    /// The server (node name) in the write and read backends
    server: String,
    #[arg(long, value_enum)]
    state: Switch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
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
        AgentCommand::Timeline(args) => {
            super::run::runtime()?.block_on(crate::agent::timeline::run(
                &args.config,
                &args.stop_file,
                std::time::Duration::from_secs(args.max_seconds),
                args.output.as_deref(),
            ))
        }
        AgentCommand::SaveHaproxyState(args) => super::run::runtime()?
            .block_on(crate::agent::save_haproxy_state(&args.config, &args.file)),
        AgentCommand::Checks(args) => super::run::runtime()?.block_on(crate::agent::server_checks(
            &args.config,
            &args.server,
            args.state == Switch::On,
        )),
        AgentCommand::HoldWrites(args) => {
            let hold = match args.server {
                Some(server) => crate::agent::WriteHold::From {
                    server,
                    for_seconds: args.seconds,
                },
                None => crate::agent::WriteHold::Release,
            };
            super::run::runtime()?.block_on(crate::agent::hold_writes(&args.config, &hold))
        }
        AgentCommand::ReadServer(args) => {
            let sessions = super::run::runtime()?.block_on(crate::agent::read_server(
                &args.config,
                &args.server,
                args.state,
            ))?;
            println!("{sessions}");
            Ok(())
        }
    }
}
