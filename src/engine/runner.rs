//! Running a playbook: host selection, `serial` batches bounded by `--forks`, one SSH
//! connection per host for the whole run, facts gathered once and re-gathered only after a
//! change, plan-then-apply per task, handlers at the end of each play.
//!
//! A handler is recorded on the host (an empty file under [`PENDING_HANDLERS_DIR`]) just before
//! a change that notifies it is applied (and the record dropped if the change turned out to
//! change nothing); the record is removed when the handler has run. A run that fails or is
//! interrupted in between leaves the record, and the next run runs the handler even though it
//! finds nothing left to change: a reload is never lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{OnceCell, Semaphore};

use super::facts::{self, Facts, Probe};
use super::modules::{self, Action, Applied, Plan, Planner};
use super::playbook::{Batch, Module, Play, Playbook, Task};
use super::report::{Failure, Reporter, RunResult, Status};
use crate::error::UserError;
use crate::inventory::{Inventory, Node, Role, Secrets};
use crate::render::{self, Renderer};
use crate::ssh::{RemoteCommand, Session, SshTarget};

/// Where notified handlers that have not run yet are recorded on each host.
pub const PENDING_HANDLERS_DIR: &str = "/var/lib/pgha/pending-handlers";

/// The record of `handler` of `play` notified on `node`: a file name made of the three names
/// (the node's own name too, so that inventory nodes sharing a machine do not share records).
pub fn pending_handler_path(node: &str, play: &str, handler: &str) -> String {
    let slug = |text: &str| {
        let mut out = String::new();
        for c in text.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        out.trim_matches('-').chars().take(80).collect::<String>()
    };
    format!(
        "{PENDING_HANDLERS_DIR}/{}--{}--{}",
        slug(node),
        slug(play),
        slug(handler)
    )
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub check: bool,
    pub diff: bool,
    pub limit: Option<String>,
    pub forks: usize,
    pub accept_new_host_keys: bool,
    pub quiet: bool,
}

/// One SSH session per host, opened on first use and kept for the run.
pub struct Connections {
    inventory: Arc<Inventory>,
    accept_new_host_keys: bool,
    sessions: HashMap<String, OnceCell<Result<Arc<Session>, String>>>,
}

impl Connections {
    pub fn new(inventory: Arc<Inventory>, accept_new_host_keys: bool) -> Connections {
        let sessions = inventory
            .nodes
            .iter()
            .map(|node| (node.name.clone(), OnceCell::new()))
            .collect();
        Connections {
            inventory,
            accept_new_host_keys,
            sessions,
        }
    }

    pub fn target(&self, node: &Node) -> SshTarget {
        SshTarget {
            host: node.address.to_string(),
            port: self.inventory.ssh.port,
            user: self.inventory.ssh.user.clone(),
            identity_file: self.inventory.ssh.identity_file.clone(),
            known_hosts: self.inventory.ssh.known_hosts.clone(),
            accept_new_host_keys: self.accept_new_host_keys,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The host's session; `Err` with the reason when it is unreachable (remembered for the run).
    pub async fn get(&self, node: &Node, reporter: &Reporter) -> Result<Arc<Session>, String> {
        let cell = &self.sessions[&node.name];
        cell.get_or_init(|| async {
            let session = Session::connect(&self.target(node))
                .await
                .map_err(|error| format!("{error:#}"))?;
            reporter.connected(&node.name);
            Ok(Arc::new(session))
        })
        .await
        .clone()
    }

    pub async fn close(&self) {
        for cell in self.sessions.values() {
            if let Some(Ok(session)) = cell.get() {
                session.close().await;
            }
        }
    }
}

/// Hosts matching `pattern`: `all`, a role, a node name, a glob with `*`, `role[0]`,
/// `role[1:]`, or a comma-separated list. Unknown names are an error, not an empty match.
pub fn select<'a>(inventory: &'a Inventory, pattern: &str) -> Result<Vec<&'a Node>, String> {
    let mut chosen: Vec<&Node> = Vec::new();
    for part in pattern
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (base, slice) = match part.split_once('[') {
            Some((base, rest)) => (base, Some(rest.trim_end_matches(']'))),
            None => (part, None),
        };
        let mut matched: Vec<&Node> = if base == "all" {
            inventory.nodes.iter().collect()
        } else if let Some(role) = Role::ALL.into_iter().find(|role| role.name() == base) {
            inventory.nodes_with(role).collect()
        } else if base.contains('*') {
            inventory
                .nodes
                .iter()
                .filter(|node| glob(base, &node.name))
                .collect()
        } else {
            inventory
                .nodes
                .iter()
                .filter(|node| node.name == base)
                .collect()
        };
        if matched.is_empty()
            && !base.contains('*')
            && base != "all"
            && Role::ALL.iter().all(|role| role.name() != base)
        {
            let names: Vec<&str> = inventory
                .nodes
                .iter()
                .map(|node| node.name.as_str())
                .collect();
            return Err(format!(
                "`{base}` is neither a node, a role nor `all` (nodes: {})",
                names.join(", ")
            ));
        }
        if let Some(slice) = slice {
            matched = apply_slice(matched, slice).ok_or_else(|| {
                format!("`[{slice}]` is not an index like `[0]` or a range like `[1:]`")
            })?;
        }
        for node in matched {
            if !chosen.iter().any(|known| known.name == node.name) {
                chosen.push(node);
            }
        }
    }
    Ok(chosen)
}

fn apply_slice<'a>(nodes: Vec<&'a Node>, slice: &str) -> Option<Vec<&'a Node>> {
    match slice.split_once(':') {
        None => {
            let index: usize = slice.trim().parse().ok()?;
            Some(nodes.get(index).copied().into_iter().collect())
        }
        Some((start, end)) => {
            let start: usize = if start.trim().is_empty() {
                0
            } else {
                start.trim().parse().ok()?
            };
            let end: usize = if end.trim().is_empty() {
                nodes.len()
            } else {
                end.trim().parse().ok()?
            };
            Some(
                nodes
                    .into_iter()
                    .skip(start)
                    .take(end.saturating_sub(start))
                    .collect(),
            )
        }
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (index, part) in parts.iter().enumerate() {
        if index == 0 {
            let Some(after) = rest.strip_prefix(part) else {
                return false;
            };
            rest = after;
        } else if index == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

/// Split `hosts` into `serial` batches; the last size repeats until every host is placed.
pub fn batches<T: Clone>(hosts: &[T], serial: &[Batch]) -> Vec<Vec<T>> {
    let size_of = |batch: &Batch| match *batch {
        Batch::Count(count) => count.max(1),
        Batch::Percent(percent) => ((hosts.len() * percent as usize) / 100).max(1),
    };
    let mut result = Vec::new();
    let mut index = 0;
    let mut step = 0;
    while index < hosts.len() {
        let size = size_of(&serial[step.min(serial.len() - 1)]);
        result.push(hosts[index..(index + size).min(hosts.len())].to_vec());
        index += size;
        step += 1;
    }
    result
}

/// Whether a batch's failures stop the rollout: more than `max_fail_percentage` percent of the
/// batch failed, i.e. `failed * 100 > max_fail_percentage * batch_size`. With the default 0,
/// any failure stops later batches.
pub fn batch_exceeds(failed: usize, batch_size: usize, max_fail_percentage: u32) -> bool {
    failed * 100 > max_fail_percentage as usize * batch_size
}

/// Everything a run shares across hosts.
pub struct Run {
    pub inventory: Arc<Inventory>,
    pub secrets: Arc<Secrets>,
    pub renderer: Arc<Renderer>,
    pub connections: Arc<Connections>,
    pub reporter: Arc<Reporter>,
    pub options: RunOptions,
    /// Values about the control machine every task sees as `control` (time, local paths).
    pub control: minijinja::Value,
}

impl Run {
    pub fn new(
        inventory: Inventory,
        secrets: Secrets,
        renderer: Renderer,
        options: RunOptions,
    ) -> Run {
        let inventory = Arc::new(inventory);
        let secret_values = secrets
            .values()
            .iter()
            .map(|value| value.to_string())
            .collect();
        let reporter = Arc::new(Reporter::new(options.quiet, secret_values, Vec::new()));
        Run {
            connections: Arc::new(Connections::new(
                inventory.clone(),
                options.accept_new_host_keys,
            )),
            inventory,
            secrets: Arc::new(secrets),
            renderer: Arc::new(renderer),
            reporter,
            options,
            control: minijinja::Value::UNDEFINED,
        }
    }

    /// Make `control` available to every task expression.
    pub fn with_control(mut self, control: minijinja::Value) -> Run {
        self.control = control;
        self
    }

    /// Check that every play's host pattern and the limit select known hosts, before any
    /// connection is made.
    pub fn check_patterns(&self, playbook: &Playbook) -> Result<(), UserError> {
        for play in &playbook.plays {
            select(&self.inventory, &play.hosts)
                .map_err(|message| UserError(format!("play `{}`: hosts: {message}", play.name)))?;
        }
        if let Some(limit) = &self.options.limit {
            select(&self.inventory, limit).map_err(|message| {
                UserError(format!(
                    "--limit: {message}\nhint: a node name, a role, a glob or a comma list"
                ))
            })?;
        }
        Ok(())
    }

    /// Run every play; per-host failures are collected, and a host that failed takes no part
    /// in later plays.
    pub async fn run(&self, playbook: &Playbook) -> RunResult {
        let result = self.run_keeping_connections(playbook).await;
        self.close().await;
        result
    }

    /// The run's SSH sessions, for checks after the plays ([`Run::run_keeping_connections`]).
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    pub async fn close(&self) {
        self.connections.close().await;
    }

    /// [`Run::run`] without closing the SSH sessions: the caller uses them, then calls
    /// [`Run::close`].
    pub async fn run_keeping_connections(&self, playbook: &Playbook) -> RunResult {
        let limit: Option<Vec<String>> = self
            .options
            .limit
            .as_ref()
            .and_then(|limit| select(&self.inventory, limit).ok())
            .map(|nodes| nodes.iter().map(|node| node.name.clone()).collect());
        let mut failed_hosts: Vec<String> = Vec::new();
        let mut stopped = None;
        let mut registered: HashMap<String, BTreeMap<String, minijinja::Value>> = HashMap::new();
        // Facts outlive a play: the next play on the host reuses them while they are fresh.
        let mut host_states: HashMap<String, HostState> = HashMap::new();
        // What each host's first probe asks for: every module of the plays it takes part in.
        let modules_by_host: HashMap<String, Arc<(Vec<Module>, Vec<String>)>> = self
            .inventory
            .nodes
            .iter()
            .map(|node| {
                let plays: Vec<&Play> = playbook
                    .plays
                    .iter()
                    .filter(|play| {
                        select(&self.inventory, &play.hosts)
                            .is_ok_and(|hosts| hosts.iter().any(|host| host.name == node.name))
                    })
                    .collect();
                let modules = plays
                    .iter()
                    .flat_map(|play| play.tasks.iter().chain(&play.handlers))
                    .map(|task| task.module.clone())
                    .collect();
                let pending = plays
                    .iter()
                    .flat_map(|play| {
                        play.handlers.iter().map(|handler| {
                            pending_handler_path(&node.name, &play.name, &handler.name)
                        })
                    })
                    .collect();
                (node.name.clone(), Arc::new((modules, pending)))
            })
            .collect();
        'plays: for play in &playbook.plays {
            let hosts: Vec<String> = select(&self.inventory, &play.hosts)
                .unwrap_or_default()
                .into_iter()
                .map(|node| node.name.clone())
                .filter(|name| limit.as_ref().is_none_or(|limit| limit.contains(name)))
                .filter(|name| !failed_hosts.contains(name))
                .collect();
            if hosts.is_empty() {
                continue;
            }
            self.reporter.play(&play.name, &hosts);
            for batch in batches(&hosts, &play.serial) {
                let semaphore = Arc::new(Semaphore::new(self.options.forks.max(1)));
                let mut handles = Vec::new();
                for host in &batch {
                    let play = play.clone();
                    let host = host.clone();
                    let semaphore = semaphore.clone();
                    let vars = registered.remove(&host).unwrap_or_default();
                    let state = host_states.remove(&host);
                    let modules = modules_by_host.get(&host).cloned().unwrap_or_default();
                    let this = self.clone_handles();
                    handles.push(tokio::spawn(async move {
                        let _permit = semaphore.acquire_owned().await;
                        let mut vars = vars;
                        let mut state = state;
                        let ok = this
                            .run_host(&play, &host, &mut vars, &mut state, &modules)
                            .await;
                        (host, ok, vars, state)
                    }));
                }
                let mut failed = 0;
                for handle in handles {
                    match handle.await {
                        Ok((host, ok, vars, state)) => {
                            registered.insert(host.clone(), vars);
                            if let Some(state) = state {
                                host_states.insert(host.clone(), state);
                            }
                            if !ok {
                                failed += 1;
                                failed_hosts.push(host);
                            }
                        }
                        Err(error) => {
                            failed += 1;
                            stopped = Some(format!("a host worker crashed: {error}"));
                        }
                    }
                }
                if failed > 0 && batch_exceeds(failed, batch.len(), play.max_fail_percentage) {
                    stopped = Some(format!(
                        "play `{}`: {failed} of {} hosts in the batch failed (max_fail_percentage {})",
                        play.name,
                        batch.len(),
                        play.max_fail_percentage
                    ));
                    break 'plays;
                }
            }
        }
        self.reporter.finish(self.options.check, stopped)
    }

    fn clone_handles(&self) -> Run {
        Run {
            inventory: self.inventory.clone(),
            secrets: self.secrets.clone(),
            renderer: self.renderer.clone(),
            connections: self.connections.clone(),
            reporter: self.reporter.clone(),
            options: self.options.clone(),
            control: self.control.clone(),
        }
    }

    /// One play on one host; false when the host failed or was unreachable. `state` carries
    /// the host's facts from play to play; on the host's first play it is `None`, and the
    /// probe then asks for everything the host's `modules` (of all its plays) read.
    async fn run_host(
        &self,
        play: &Play,
        host: &str,
        vars: &mut BTreeMap<String, minijinja::Value>,
        state: &mut Option<HostState>,
        wants: &(Vec<Module>, Vec<String>),
    ) -> bool {
        let (modules, pending_paths) = wants;
        let Some(node) = self.inventory.node(host) else {
            return false;
        };
        let session = match self.connections.get(node, &self.reporter).await {
            Ok(session) => session,
            Err(reason) => {
                self.reporter.task(
                    host,
                    &play.name,
                    "connect",
                    Status::Unreachable,
                    &reason,
                    None,
                );
                self.reporter.failure(
                    host,
                    Failure {
                        play: play.name.clone(),
                        task: "connect".into(),
                        place: String::new(),
                        message: reason,
                    },
                );
                return false;
            }
        };
        let state = state.get_or_insert_with(|| {
            // Gather what every task of the playbook will read in the first round trip (best
            // effort: arguments that depend on registered values are added when their task
            // comes).
            let mut state = HostState {
                facts: None,
                gathered: Instant::now(),
                probe: Probe::default(),
                daemon_reload: false,
            };
            let base = minijinja::context! { control => self.control.clone(), ..render::context(&self.inventory, &self.secrets, node) };
            let planner = Planner {
                renderer: &self.renderer,
                context: &base,
            };
            for module in modules {
                let _ = planner.wants(module, &mut state.probe);
            }
            state.probe.paths.extend(pending_paths.iter().cloned());
            state
        });
        let mut notified: Vec<String> =
            match self.pending_handlers(&session, host, play, state).await {
                Ok(pending) => pending,
                Err(error) => {
                    self.report_failure_at(host, play, "pending handlers", "", &error);
                    return false;
                }
            };
        for handler in &notified {
            self.reporter.task(
                host,
                &play.name,
                handler,
                Status::Ok,
                "notified by an earlier run that did not get to run it: it runs at the end of this play",
                None,
            );
        }
        for task in &play.tasks {
            // Handlers this task would notify for the first time: recorded on the host before
            // the change is applied, so no interruption can lose them.
            let new: Vec<String> = task
                .notify
                .iter()
                .filter(|handler| !notified.contains(handler))
                .cloned()
                .collect();
            match self
                .run_task(&session, play, node, task, state, vars, &new)
                .await
            {
                Ok(changed) => {
                    if changed {
                        notified.extend(new);
                    }
                }
                Err(error) => {
                    self.report_failure(host, play, task, &error);
                    return false;
                }
            }
        }
        for handler in play
            .handlers
            .iter()
            .filter(|handler| notified.contains(&handler.name))
        {
            let ran = self
                .run_task(&session, play, node, handler, state, vars, &[])
                .await;
            let ran = match ran {
                Ok(_) if self.options.check => Ok(()),
                Ok(_) => {
                    let path = pending_handler_path(host, &play.name, &handler.name);
                    modules::checked(
                        &session,
                        RemoteCommand::argv(["rm", "-f", "--", &path]).as_root(),
                    )
                    .await
                    .map(drop)
                }
                Err(error) => Err(error),
            };
            if let Err(error) = ran {
                self.report_failure(host, play, handler, &error);
                return false;
            }
        }
        true
    }

    /// The handlers of `play` an earlier run notified on this host and did not run (their
    /// records are among the facts).
    async fn pending_handlers(
        &self,
        session: &Session,
        node: &str,
        play: &Play,
        state: &mut HostState,
    ) -> anyhow::Result<Vec<String>> {
        if play.handlers.is_empty() {
            return Ok(Vec::new());
        }
        let mut wanted = Probe::default();
        for handler in &play.handlers {
            wanted
                .paths
                .insert(pending_handler_path(node, &play.name, &handler.name));
        }
        let facts = state.facts_covering(session, wanted).await?;
        Ok(play
            .handlers
            .iter()
            .filter(|handler| {
                !matches!(
                    facts
                        .files
                        .get(&pending_handler_path(node, &play.name, &handler.name)),
                    None | Some(facts::FileFact::Absent)
                )
            })
            .map(|handler| handler.name.clone())
            .collect())
    }

    /// Record on the host that `handlers` of `play` are notified (not in `--check`).
    async fn record_pending(
        &self,
        session: &Session,
        node: &str,
        play: &Play,
        handlers: &[String],
    ) -> anyhow::Result<()> {
        if self.options.check || handlers.is_empty() {
            return Ok(());
        }
        let mut command = RemoteCommand::script(
            "mkdir -p \"$1\" && chmod 700 \"$1\" && shift && for path in \"$@\"; do : > \"$path\"; done",
        )
        .arg(PENDING_HANDLERS_DIR);
        for handler in handlers {
            command = command.arg(pending_handler_path(node, &play.name, handler));
        }
        modules::checked(session, command.as_root()).await.map(drop)
    }

    /// Record a failed task (or handler) for the progress lines, the recap and `--json`.
    fn report_failure(&self, host: &str, play: &Play, task: &Task, error: &anyhow::Error) {
        self.report_failure_at(host, play, &task.name, &task.place, error);
    }

    fn report_failure_at(
        &self,
        host: &str,
        play: &Play,
        task: &str,
        place: &str,
        error: &anyhow::Error,
    ) {
        let message = format!("{error:#}");
        self.reporter
            .task(host, &play.name, task, Status::Failed, &message, None);
        self.reporter.failure(
            host,
            Failure {
                play: play.name.clone(),
                task: task.to_string(),
                place: place.to_string(),
                message,
            },
        );
    }

    /// Plan and (unless `--check`) apply one task; returns whether it changed the host.
    async fn run_task(
        &self,
        session: &Arc<Session>,
        play: &Play,
        node: &Node,
        task: &Task,
        state: &mut HostState,
        vars: &mut BTreeMap<String, minijinja::Value>,
        notifies: &[String],
    ) -> anyhow::Result<bool> {
        let host = node.name.as_str();
        self.reporter.working(host, &play.name, &task.name);
        let base = minijinja::context! { control => self.control.clone(), ..render::context(&self.inventory, &self.secrets, node) };
        let context_without_facts =
            minijinja::context! { ..minijinja::Value::from_serialize(&*vars), ..base.clone() };
        let planner = Planner {
            renderer: &self.renderer,
            context: &context_without_facts,
        };
        let mut wanted = Probe::default();
        planner.wants(&task.module, &mut wanted)?;
        let facts = state.facts_covering(session, wanted).await?;
        let context = minijinja::context! { facts => minijinja::Value::from_serialize(facts), ..context_without_facts };
        if let Some(when) = &task.when {
            if !self.renderer.evaluate(when, &context)? {
                self.reporter.task(
                    host,
                    &play.name,
                    &task.name,
                    Status::Skipped,
                    &format!("condition `{when}` is false"),
                    None,
                );
                // Like Ansible: a skipped task still registers, as unchanged and skipped.
                if let Some(name) = &task.register {
                    vars.insert(name.clone(), minijinja::context! { changed => false, skipped => true, rc => 0, stdout => "", stderr => "" });
                }
                return Ok(false);
            }
        }
        let planner = Planner {
            renderer: &self.renderer,
            context: &context,
        };
        let plan = planner.plan(&task.module, facts)?;
        let (summary, action, changes) = match plan {
            Plan::NoChange(reason) => {
                self.reporter.task(
                    host,
                    &play.name,
                    &task.name,
                    Status::Ok,
                    &format!("no change: {reason}"),
                    None,
                );
                if let Some(name) = &task.register {
                    vars.insert(name.clone(), minijinja::context! { changed => false, skipped => false, rc => 0, stdout => "", stderr => "" });
                }
                return Ok(false);
            }
            Plan::Act {
                summary,
                action,
                changes,
            } => (summary, action, changes),
        };
        if self.options.check {
            let diff = if self.options.diff {
                self.diff(session, &action).await
            } else {
                None
            };
            // A command whose effect is judged from its output cannot be judged unrun.
            let decided_at_run_time = matches!(
                action,
                Action::Command {
                    changed_when: Some(_),
                    ..
                }
            );
            let (status, detail) = if decided_at_run_time {
                (
                    Status::Skipped,
                    format!(
                        "would {summary} (whether it changes anything is decided when it runs)"
                    ),
                )
            } else if changes {
                (Status::Changed, format!("would {summary}"))
            } else {
                (Status::Skipped, format!("would {summary}"))
            };
            let changes = changes && !decided_at_run_time;
            self.reporter
                .task(host, &play.name, &task.name, status, &detail, diff);
            if let Some(name) = &task.register {
                // Nothing ran: later conditions see an empty, skipped result.
                vars.insert(
                    name.clone(),
                    minijinja::context! { changed => changes, skipped => true, rc => 0, stdout => "", stderr => "" },
                );
            }
            return Ok(changes);
        }
        let diff = if self.options.diff && changes {
            self.diff(session, &action).await
        } else {
            None
        };
        if matches!(action, Action::Systemctl { .. }) && state.daemon_reload {
            let output = session
                .run(&RemoteCommand::argv(["systemctl", "daemon-reload"]).as_root())
                .await?;
            anyhow::ensure!(
                output.success(),
                "`systemctl daemon-reload` failed: {}",
                output.stderr_text()
            );
            state.daemon_reload = false;
        }
        self.record_pending(session, host, play, notifies).await?;
        let applied = modules::apply(session, &action)
            .await
            .with_context(|| format!("{} ({})", task.name, task.place))?;
        let (output, summary, changes) = match applied {
            Applied::Done(output) => (output, summary, changes),
            Applied::AlreadyThere(reason) => (None, format!("no change: {reason}"), false),
            Applied::DoneBecause(reason) => (None, format!("{summary}: {reason}"), changes),
        };
        if changes && modules::writes_unit_file(&action) {
            state.daemon_reload = true;
        }
        let changes = match (&action, &output) {
            (
                Action::Command {
                    changed_when: Some(expression),
                    ..
                },
                Some(output),
            ) => {
                let result = minijinja::context! { rc => output.exit_code.unwrap_or(-1), stdout => output.stdout_text(), stderr => output.stderr_text() };
                self.renderer.evaluate(expression, &result)?
            }
            _ => changes,
        };
        if changes {
            state.facts = None;
        } else if !notifies.is_empty() {
            // It changed nothing after all: nothing is owed.
            let mut command = RemoteCommand::argv(["rm", "-f", "--"]);
            for handler in notifies {
                command = command.arg(pending_handler_path(host, &play.name, handler));
            }
            modules::checked(session, command.as_root()).await?;
        }
        let status = if changes { Status::Changed } else { Status::Ok };
        self.reporter
            .task(host, &play.name, &task.name, status, &summary, diff);
        if let Some(name) = &task.register {
            let (rc, stdout, stderr) = output
                .map(|output| {
                    (
                        output.exit_code.unwrap_or(-1),
                        output.stdout_text(),
                        output.stderr_text(),
                    )
                })
                .unwrap_or((0, String::new(), String::new()));
            vars.insert(name.clone(), minijinja::context! { changed => changes, skipped => false, rc => rc, stdout => stdout.trim_end(), stderr => stderr });
        }
        Ok(changes)
    }

    /// A unified diff for a planned file write (secrets masked; a file that holds secrets only
    /// named), reading the current file.
    async fn diff(&self, session: &Session, action: &Action) -> Option<String> {
        let Action::WriteFile { upload, secret, .. } = action else {
            return None;
        };
        // A file that holds secrets is named, never shown: a mask only knows today's secrets,
        // and an old password still on the host would be printed after a rotation.
        if *secret {
            return Some(format!(
                "--- {path}\n+++ {path}\n(secret file changed; its contents are not shown)\n",
                path = upload.path
            ));
        }
        // Like `git diff`: a binary or very large file, planned or on the host, is named, not
        // printed (a cut text could also cut a secret in two and slip past the mask).
        let not_shown = |which: &str| {
            Some(format!(
                "--- {path}\n+++ {path}\n({which} is binary or larger than {} KiB; not shown)\n",
                DIFF_LIMIT / 1024,
                path = upload.path
            ))
        };
        let Some(new) = diffable(&upload.contents) else {
            return not_shown("the planned file");
        };
        let old = session
            .run(
                &RemoteCommand::script("head -c \"$2\" -- \"$1\" 2>/dev/null || true")
                    .arg(upload.path.clone())
                    .arg((DIFF_LIMIT + 1).to_string())
                    .as_root(),
            )
            .await
            .map(|output| output.stdout)
            .unwrap_or_default();
        let Some(old) = diffable(&old) else {
            return not_shown("the file on the host");
        };
        Some(modules::file_diff(
            &upload.path,
            old,
            new,
            &self.secrets.values(),
        ))
    }
}

/// Files above this size are not diffed.
const DIFF_LIMIT: usize = 1024 * 1024;

/// `bytes` as text fit for a diff: UTF-8, no NUL, at most [`DIFF_LIMIT`] bytes.
fn diffable(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|text| text.len() <= DIFF_LIMIT && !text.contains('\0'))
}

/// Facts older than this are gathered again before a task reads them. Every change the run
/// makes on a host invalidates them at once; the age bounds what others change meanwhile.
const FACTS_MAX_AGE: Duration = Duration::from_secs(10);

struct HostState {
    /// `None` once a change made the facts stale.
    facts: Option<Facts>,
    /// When `facts` were gathered.
    gathered: Instant,
    probe: Probe,
    daemon_reload: bool,
}

impl HostState {
    /// Facts that cover `wanted`, gathered again when they do not, are stale, or are too old.
    async fn facts_covering(&mut self, session: &Session, wanted: Probe) -> anyhow::Result<&Facts> {
        if !self.probe.covers(&wanted)
            || self.facts.is_none()
            || self.gathered.elapsed() > FACTS_MAX_AGE
        {
            self.probe.extend(wanted);
            let facts = gather(session, &self.probe).await?;
            // A unit file changed by a run that was cut off before its `daemon-reload` is
            // reloaded before the next `systemctl` action, as if this run had written it.
            if facts.units.values().any(|unit| unit.needs_daemon_reload) {
                self.daemon_reload = true;
            }
            self.facts = Some(facts);
            self.gathered = Instant::now();
        }
        Ok(self.facts.as_ref().expect("facts were just gathered"))
    }
}

async fn gather(session: &Session, probe: &Probe) -> anyhow::Result<Facts> {
    let output = session
        .run(&probe.command())
        .await
        .context("cannot gather facts")?;
    anyhow::ensure!(
        output.success(),
        "gathering facts failed with {}: {}",
        output.status(),
        modules::tail(&output.stderr_text())
    );
    Ok(facts::parse(&output.stdout_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/example.yml");
        Inventory::load(&path).unwrap()
    }

    fn names(nodes: Vec<&Node>) -> Vec<&str> {
        nodes.iter().map(|node| node.name.as_str()).collect()
    }

    #[test]
    fn selects_by_role_name_glob_slice_and_list() {
        let inventory = inventory();
        assert_eq!(
            names(select(&inventory, "all").unwrap()),
            ["pg-a", "pg-b", "pg-c"]
        );
        assert_eq!(names(select(&inventory, "postgres[0]").unwrap()), ["pg-a"]);
        assert_eq!(
            names(select(&inventory, "postgres[1:]").unwrap()),
            ["pg-b", "pg-c"]
        );
        assert_eq!(
            names(select(&inventory, "pg-c, pg-a").unwrap()),
            ["pg-c", "pg-a"]
        );
        assert_eq!(names(select(&inventory, "pg-*").unwrap()).len(), 3);
        assert!(select(&inventory, "pg-x*").unwrap().is_empty());
        assert!(select(&inventory, "nosuch")
            .unwrap_err()
            .contains("neither a node"));
        assert!(select(&inventory, "etcd[x]").is_err());
    }

    #[test]
    fn batches_follow_serial_and_repeat_the_last_size() {
        let hosts = [1, 2, 3, 4, 5];
        assert_eq!(
            batches(&hosts, &[Batch::Count(1)]),
            vec![vec![1], vec![2], vec![3], vec![4], vec![5]]
        );
        assert_eq!(
            batches(&hosts, &[Batch::Count(1), Batch::Percent(50)]),
            vec![vec![1], vec![2, 3], vec![4, 5]]
        );
        assert_eq!(
            batches(&hosts, &[Batch::Percent(100)]),
            vec![vec![1, 2, 3, 4, 5]]
        );
        assert_eq!(batches(&hosts, &[Batch::Percent(10)]).len(), 5);
    }

    #[test]
    fn failure_threshold_arithmetic() {
        assert!(batch_exceeds(1, 3, 0));
        assert!(!batch_exceeds(1, 3, 34));
        assert!(batch_exceeds(2, 3, 34));
        assert!(!batch_exceeds(0, 3, 0));
        assert!(!batch_exceeds(1, 2, 50));
    }
}
