//! Operations over the engine that commands call: run a playbook, run an ad-hoc command.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Serialize;

use super::playbook::Playbook;
use super::report::{Reporter, RunResult};
use super::runner::{select, Connections, Run, RunOptions};
use crate::error::UserError;
use crate::inventory::{Inventory, Secrets};
use crate::render::Renderer;
use crate::ssh::RemoteCommand;

/// What `pgha run` and `pgha deploy` need.
#[derive(Debug, Clone)]
pub struct PlaybookRequest {
    pub inventory: PathBuf,
    pub playbook: String,
    pub playbooks_dir: Option<PathBuf>,
    pub templates_dir: Option<PathBuf>,
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
        crate::wheels::ensure_archive(&inventory.cluster.patroni_version)?
            .display()
            .to_string()
    } else {
        String::new()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // The agent binary the deploy installs: the inventory's choice, else this very program.
    let pgha_binary = match &inventory.cluster.agent_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find the running `pgha` binary")?,
    };
    let control = minijinja::context! {
        time => now,
        wheels_archive => wheels_archive,
        pgha_binary => pgha_binary.display().to_string(),
    };
    let run = Run::new(inventory, secrets, renderer, request.options).with_control(control);
    run.check_patterns(&playbook)?;
    Ok(run.run(&playbook).await)
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
