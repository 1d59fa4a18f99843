//! Operations over the engine that commands call: run a playbook, run an ad-hoc command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::playbook::Playbook;
use super::report::{Reporter, RunResult};
use super::runner::{select, Connections, Run, RunOptions};
use crate::error::UserError;
use crate::inventory::{Inventory, Role, Secrets};
use crate::render::Renderer;
use crate::ssh::RemoteCommand;

/// What `pgha run` and `pgha deploy` need.
#[derive(Debug, Clone)]
pub struct PlaybookRequest {
    pub inventory: PathBuf,
    pub playbook: String,
    pub playbooks_dir: Option<PathBuf>,
    pub templates_dir: Option<PathBuf>,
    /// `--force-remove-stray-data`: default data pgha did not create may be removed.
    pub force_remove_stray_data: bool,
    /// Leave the pgha binary on the hosts as it is (`pgha upgrade` updates the agent last).
    pub keep_agent_binary: bool,
    pub options: RunOptions,
}

/// Validate everything locally (inventory, playbook, templates, host patterns), then run.
pub async fn run_playbook(request: PlaybookRequest) -> anyhow::Result<RunResult> {
    let inventory = Inventory::load(&request.inventory)?;
    let playbook = Playbook::load(&request.playbook, request.playbooks_dir.as_deref())?;
    let renderer = Renderer::new(request.templates_dir.as_deref())?;
    let secrets = Secrets::load_or_create(&inventory.cluster.secrets_file)?;
    // The deploy ships Patroni wheels; get them (once) before any host is touched.
    let wheels_archive = if request.playbook == "deploy" {
        crate::wheels::ensure_archive(
            &inventory.cluster.patroni_version,
            inventory.cluster.release(),
        )?
        .display()
        .to_string()
    } else {
        String::new()
    };
    // The cluster's CA and every node's certificate, (re)issued on this machine as needed.
    let authority = crate::tls::Authority::for_cluster(&inventory)?;
    for issued in authority.ensure(&inventory, std::time::SystemTime::now())? {
        if !request.options.quiet {
            eprintln!(
                "  certificate of `{}` issued: {}",
                issued.name, issued.reason
            );
        }
    }
    let etcd_members = inventory.nodes_with(Role::Etcd).count();
    if request.playbook == "deploy" && etcd_members % 2 == 0 && !request.options.quiet {
        eprintln!(
            "  note: {etcd_members} etcd members: an even count survives no more failures than {} would (quorum {}); add or remove one (growing 3 → 5 passes through 4)",
            etcd_members - 1,
            etcd_members / 2 + 1
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // The agent binary the deploy installs: the inventory's choice, else this very program.
    let pgha_binary = match &inventory.cluster.agent_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find the running `pgha` binary")?,
    };
    // The nodes compare the CA they trust (the bytes of `ca.crt`, as the deploy copies it)
    // with this one before anything changes.
    let ca_sha256 = crate::tls::sha256_hex(authority.ca_pem.as_bytes());
    let control = minijinja::context! {
        time => now,
        tls_dir => authority.dir().display().to_string(),
        ca_sha256 => ca_sha256,
        wheels_archive => wheels_archive,
        pgha_binary => pgha_binary.display().to_string(),
        force_remove_stray_data => request.force_remove_stray_data,
        keep_agent_binary => request.keep_agent_binary,
    };
    // The VIP is the whole cluster's: a run limited to some hosts does not judge it.
    let settle =
        request.playbook == "deploy" && !request.options.check && request.options.limit.is_none();
    let quiet = request.options.quiet;
    let inventory = Arc::new(inventory);
    let run =
        Run::new((*inventory).clone(), secrets, renderer, request.options).with_control(control);
    run.check_patterns(&playbook)?;
    let mut result = run.run_keeping_connections(&playbook).await;
    if settle && result.success && inventory.cluster.vip.is_some() {
        match wait_single_vip_holder(&inventory, &run.connections(), VIP_SETTLE_TIMEOUT).await {
            Ok(holder) => {
                if !quiet {
                    eprintln!("  the VIP is held by `{holder}` alone");
                }
                result.vip_holder = Some(holder);
            }
            Err(problem) => {
                result.success = false;
                result.stopped = Some(problem);
            }
        }
    }
    run.close().await;
    Ok(result)
}

/// How long a deploy waits for the VIP to settle on one node.
const VIP_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one node may take to say whether it holds the VIP.
const VIP_ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Wait until exactly one Keepalived node holds the VIP: every task can succeed while two
/// nodes claim the address (or none does), and applications would then not reach one primary.
/// Returns the holder, or what was seen last.
async fn wait_single_vip_holder(
    inventory: &Arc<Inventory>,
    connections: &Arc<Connections>,
    timeout: Duration,
) -> Result<String, String> {
    let Some(vip) = inventory
        .cluster
        .vip
        .as_ref()
        .map(|vip| vip.address.to_string())
    else {
        return Err("no VIP in the inventory".into());
    };
    // The run's sessions are open already; this reporter only absorbs bookkeeping.
    let reporter = Arc::new(Reporter::new(true, Vec::new(), Vec::new()));
    let started = Instant::now();
    loop {
        let mut asks = tokio::task::JoinSet::new();
        for node in inventory.nodes_with(Role::Keepalived) {
            let (node, connections, reporter, vip) = (
                node.clone(),
                connections.clone(),
                reporter.clone(),
                vip.clone(),
            );
            asks.spawn(async move {
                let ask = async {
                    let session = connections.get(&node, &reporter).await?;
                    session
                        .run(&RemoteCommand::argv([
                            "ip",
                            "-o",
                            "addr",
                            "show",
                            "to",
                            vip.as_str(),
                        ]))
                        .await
                        .map_err(|error| format!("{error:#}"))
                };
                let answer = tokio::time::timeout(VIP_ASK_TIMEOUT, ask)
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer within {} s", VIP_ASK_TIMEOUT.as_secs()))
                    });
                (node.name, answer)
            });
        }
        let mut holders = Vec::new();
        let mut unknown = Vec::new();
        while let Some(joined) = asks.join_next().await {
            let Ok((name, answer)) = joined else {
                unknown.push("a check crashed".to_string());
                continue;
            };
            match answer {
                Ok(output) if output.success() => {
                    if !output.stdout_text().trim().is_empty() {
                        holders.push(name);
                    }
                }
                Ok(output) => unknown.push(format!("{name}: {}", output.status())),
                Err(error) => unknown.push(format!("{name}: {error}")),
            }
        }
        holders.sort();
        if holders.len() == 1 && unknown.is_empty() {
            return Ok(holders.remove(0));
        }
        if started.elapsed() >= timeout {
            let seen = if holders.is_empty() {
                "no node".to_string()
            } else {
                holders.join(", ")
            };
            let unknown = if unknown.is_empty() {
                String::new()
            } else {
                format!("; not answered: {}", unknown.join(", "))
            };
            return Err(format!(
                "the VIP {vip} is held by {seen} {} s after the deploy (expected exactly one node){unknown}\nhint: `pgha status -i INV` and `journalctl -u keepalived` on the nodes",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One host's answer to an ad-hoc command.
#[derive(Debug, Clone, Serialize)]
pub struct ExecResult {
    pub host: String,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
}

/// Run `command` (a shell command line) on the selected hosts in parallel, as root.
pub async fn exec(
    inventory_path: PathBuf,
    limit: Option<String>,
    command: String,
    accept_new_host_keys: bool,
    forks: usize,
) -> anyhow::Result<Vec<ExecResult>> {
    if command.trim().is_empty() {
        bail!(UserError(
            "no command given\nhint: `pgha exec -i INV -- uptime`".into()
        ));
    }
    let inventory = Arc::new(Inventory::load(&inventory_path)?);
    let nodes: Vec<String> = select(&inventory, limit.as_deref().unwrap_or("all"))
        .map_err(|message| UserError(format!("--limit: {message}")))?
        .iter()
        .map(|node| node.name.clone())
        .collect();
    let connections = Arc::new(Connections::new(inventory.clone(), accept_new_host_keys));
    let reporter = Arc::new(Reporter::new(true, Vec::new(), Vec::new()));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(forks.max(1)));
    let mut handles = Vec::new();
    for name in nodes {
        let (inventory, connections, reporter, semaphore, command) = (
            inventory.clone(),
            connections.clone(),
            reporter.clone(),
            semaphore.clone(),
            command.clone(),
        );
        handles.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let node = inventory.node(&name).expect("selected from the inventory");
            let failed = |error: String| ExecResult {
                host: name.clone(),
                exit_code: None,
                stdout: String::new(),
                stderr: String::new(),
                error: Some(error),
            };
            let session = match connections.get(node, &reporter).await {
                Ok(session) => session,
                Err(error) => return failed(error),
            };
            match session.run(&RemoteCommand::script(command).as_root()).await {
                Ok(output) => ExecResult {
                    host: name.clone(),
                    exit_code: output.exit_code,
                    stdout: output.stdout_text(),
                    stderr: output.stderr_text(),
                    error: None,
                },
                Err(error) => failed(format!("{error:#}")),
            }
        }));
    }
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await?);
    }
    connections.close().await;
    Ok(results)
}
