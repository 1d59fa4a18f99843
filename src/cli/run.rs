//! `pgha run`, `pgha deploy` and `pgha exec`: playbooks and ad-hoc commands over SSH.

use std::path::PathBuf;

use anyhow::bail;

use crate::engine::ops::{self, PlaybookRequest};
use crate::engine::report::RunResult;
use crate::engine::RunOptions;

/// Options shared by every command that runs a playbook.
#[derive(Debug, clap::Args)]
pub struct PlaybookArgs {
    /// Inventory file
    #[arg(short, long)]
    inventory: PathBuf,
    /// Plan only: report what would change, change nothing
    #[arg(long)]
    check: bool,
    /// Show unified diffs of files that change (secrets masked)
    #[arg(long)]
    diff: bool,
    /// Only these hosts: a node, a role, a glob (`node*`) or a comma list
    #[arg(long)]
    limit: Option<String>,
    /// Hosts worked on at once
    #[arg(long, default_value_t = 10)]
    forks: usize,
    /// Print the result as JSON on stdout (progress lines are not printed)
    #[arg(long)]
    json: bool,
    /// Record the host keys of hosts not yet in known_hosts (a changed key is always refused)
    #[arg(long)]
    accept_new_host_keys: bool,
    /// Folder whose `<name>.yml` playbooks replace the built-in ones
    #[arg(long)]
    playbooks: Option<PathBuf>,
    /// Folder whose templates replace the built-in ones by name
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Let the deploy remove a default PostgreSQL `main` cluster or etcd `default` member that
    /// pgha did not create and cannot prove empty (its data is lost); without it such a host
    /// is refused
    #[arg(long)]
    force_remove_stray_data: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    common: PlaybookArgs,
    /// Nodes removed from the inventory lose their PostgreSQL and etcd data and pgha's files
    /// too (without it their data stays on disk, their services stopped and disabled)
    #[arg(long)]
    purge: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A built-in playbook name (`deploy`) or a path to a playbook file
    playbook: String,
    #[command(flatten)]
    common: PlaybookArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Inventory file
    #[arg(short, long)]
    inventory: PathBuf,
    /// Only these hosts: a node, a role, a glob or a comma list
    #[arg(long)]
    limit: Option<String>,
    /// Hosts worked on at once
    #[arg(long, default_value_t = 10)]
    forks: usize,
    /// Print results as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Record the host keys of hosts not yet in known_hosts
    #[arg(long)]
    accept_new_host_keys: bool,
    /// The command line, run by `sh -c` as root on each host
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    run_playbook(args.playbook, args.common)
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let DeployArgs {
        common: args,
        purge,
    } = args;
    let inventory = crate::inventory::Inventory::load(&args.inventory)?;
    // A cluster deployed before TLS is moved onto it first, online, step by step (see
    // `upgrade::tls`); the deploy then converges as always. Known without asking the hosts
    // (a no-op deploy opens one SSH connection per host): the CA was made for a cluster that
    // already had secrets (`tls::moving_marker`). The marker stays until a deploy finishes the
    // move, so a run cut off part-way is finished by the next one.
    if !args.check {
        crate::tls::Authority::for_cluster(&inventory)?
            .ensure(&inventory, std::time::SystemTime::now())?;
        let moving = crate::tls::moving_marker(&inventory);
        if moving.exists() {
            let runtime = runtime()?;
            if runtime.block_on(crate::upgrade::tls::needed(&args.inventory))? {
                runtime.block_on(crate::upgrade::tls::migrate(&args.inventory, !args.json))?;
            }
            std::fs::remove_file(&moving)?;
        }
    }
    // Nodes deployed before and gone from the inventory are taken out (`scale`): planned from
    // the cluster, partly before the playbook (the VIP, the leadership, Patroni's tags, etcd's
    // member list), partly after it (the node's services, once no HAProxy routes to it).
    let departed = crate::scale::departed(&inventory)?;
    if !departed.is_empty() && args.limit.is_some() {
        // A limited run would render HAProxy and keepalived without nodes that still run
        // (a departed leader among them) on some nodes only.
        bail!(crate::error::UserError(format!(
            "{} left the inventory and are not taken out yet; hint: run `pgha deploy` without `--limit` first (it takes them out), then limit later runs",
            departed
                .iter()
                .map(|node| node.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // One runtime for the removal: its SSH sessions live on it.
    let runtime = runtime()?;
    let departure = if departed.is_empty() {
        None
    } else {
        runtime.block_on(crate::scale::Departure::prepare(
            inventory.clone(),
            departed,
            purge,
            !args.json,
        ))?
    };
    if let Some(departure) = &departure {
        if args.check || !args.json {
            eprintln!("nodes gone from the inventory are taken out of the cluster:");
            for line in departure.describe() {
                eprintln!("  {line}");
            }
        }
    }
    if args.check {
        if let Some(departure) = departure {
            runtime.block_on(departure.close());
        }
        return run_playbook("deploy".to_string(), args);
    }
    crate::scale::record_inventory(&inventory)?;
    let Some(departure) = departure else {
        return run_playbook("deploy".to_string(), args);
    };
    // The result (and `--json`) is printed once the departed nodes are out, so it tells
    // whether they are.
    let json = args.json;
    let result = runtime
        .block_on(departure.before())
        .and_then(|()| playbook_result("deploy".to_string(), args));
    let result = match result {
        Ok(mut result) => {
            if result.success {
                if let Err(error) = runtime.block_on(departure.after()) {
                    result.success = false;
                    result.stopped = Some(format!(
                        "taking the nodes gone from the inventory out: {error:#}"
                    ));
                }
            }
            Ok(result)
        }
        Err(error) => Err(error),
    };
    runtime.block_on(departure.close());
    report(result?, json)
}

fn run_playbook(playbook: String, args: PlaybookArgs) -> anyhow::Result<()> {
    let json = args.json;
    report(playbook_result(playbook, args)?, json)
}

/// Run `playbook` without printing its result.
fn playbook_result(playbook: String, args: PlaybookArgs) -> anyhow::Result<RunResult> {
    let request = PlaybookRequest {
        inventory: args.inventory,
        playbook,
        playbooks_dir: args.playbooks,
        templates_dir: args.templates,
        force_remove_stray_data: args.force_remove_stray_data,
        keep_agent_binary: false,
        options: RunOptions {
            check: args.check,
            diff: args.diff,
            limit: args.limit,
            forks: args.forks,
            accept_new_host_keys: args.accept_new_host_keys,
            quiet: args.json,
        },
    };
    runtime()?.block_on(ops::run_playbook(request))
}

/// Print a run's result (`--json`: as JSON) and turn a failed run into an error naming hosts.
fn report(result: RunResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    if !result.success {
        let failed: Vec<&String> = result
            .hosts
            .iter()
            .filter(|(_, host)| host.failed > 0 || host.unreachable > 0)
            .map(|(name, _)| name)
            .collect();
        let names: Vec<&str> = failed.iter().map(|name| name.as_str()).collect();
        match (&result.stopped, names.is_empty()) {
            (Some(reason), true) => bail!("the run failed: {reason}"),
            (Some(reason), false) => bail!(
                "the run failed on {} host(s): {}; {reason}",
                names.len(),
                names.join(", ")
            ),
            (None, _) => bail!(
                "the run failed on {} host(s): {}",
                names.len(),
                names.join(", ")
            ),
        }
    }
    Ok(())
}

pub fn exec(args: ExecArgs) -> anyhow::Result<()> {
    let command = args.command.join(" ");
    let results = runtime()?.block_on(ops::exec(
        args.inventory,
        args.limit,
        command,
        args.accept_new_host_keys,
        args.forks,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for result in &results {
            match (&result.error, result.exit_code) {
                (Some(error), _) => println!("{} | UNREACHABLE | {error}", result.host),
                (None, code) => {
                    println!(
                        "{} | exit {} |",
                        result.host,
                        code.map_or("?".to_string(), |code| code.to_string())
                    );
                    print!("{}", result.stdout);
                    eprint!("{}", result.stderr);
                }
            }
        }
    }
    let failed = results
        .iter()
        .filter(|result| result.error.is_some() || result.exit_code != Some(0))
        .count();
    if failed > 0 {
        bail!(
            "the command failed on {failed} of {} host(s)",
            results.len()
        );
    }
    Ok(())
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
