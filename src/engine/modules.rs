//! What each task module plans from facts and how it applies that plan.
//!
//! `plan` only reads facts (and renders its arguments) and returns either "no change" with the
//! reason or one concrete [`Action`]; `apply` performs an action over the host's SSH session.
//! Keeping the decision pure makes `--check` and `--diff` mere renderings of the plan.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{bail, Context};

use super::facts::{unit_key, Facts, FileFact, Probe};
use super::playbook::{ChangedWhen, FileState, Module, PackageState, ServiceState};
use crate::render::{self, Renderer};
use crate::ssh::{sha256_hex, CommandOutput, RemoteCommand, Session, Upload};

/// The outcome of planning one task on one host.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Nothing to do, and why.
    NoChange(String),
    /// Something to do. `changes` says whether doing it counts as a change (a read-only command
    /// or a wait does not).
    Act {
        summary: String,
        action: Action,
        changes: bool,
    },
}

/// One concrete effect on a host.
#[derive(Debug, Clone)]
pub enum Action {
    Packages {
        install: Vec<String>,
        remove: Vec<String>,
        policy_rc_d: Option<u8>,
        /// A `policy-rc.d` an interrupted pgha run left is on the host: remove it.
        policy_rc_d_leftover: bool,
    },
    WriteFile {
        upload: Upload,
        secret: bool,
        validate: Option<String>,
    },
    Directory {
        path: String,
        owner: Option<String>,
        group: Option<String>,
        mode: Option<u32>,
    },
    Remove {
        path: String,
    },
    Systemctl {
        steps: Vec<Vec<String>>,
    },
    Command {
        cmd: String,
        stdin: Option<String>,
        changed_when: Option<String>,
    },
    WaitFor {
        script: String,
        timeout: u64,
        what: String,
    },
    User {
        name: String,
        system: bool,
        home: Option<String>,
        shell: Option<String>,
    },
    DefaultData {
        component: super::default_data::Component,
        version: String,
        force: bool,
    },
    PatroniConfig {
        api: String,
        desired: serde_json::Value,
        credentials: crate::patroni::Credentials,
        settle: u64,
    },
    PatroniRestart {
        api: String,
        steps: Vec<crate::patroni::RestartStep>,
        credentials: crate::patroni::Credentials,
    },
    PatroniWait {
        api: String,
        until: super::playbook::WaitUntil,
        member: String,
        timeout: u64,
    },
    EtcdJoin(super::etcd_join::Join),
    EtcdRestart(super::etcd_restart::Restart),
    EtcdPromoteLearners {
        endpoint: String,
    },
}

/// The rendered arguments a task needs and the facts it reads.
pub struct Planner<'a> {
    pub renderer: &'a Renderer,
    pub context: &'a minijinja::Value,
}

impl Planner<'_> {
    fn text(&self, text: &str) -> anyhow::Result<String> {
        self.renderer.render_str(text, self.context)
    }

    fn port(&self, text: &str) -> anyhow::Result<u16> {
        let port = self.text(text)?;
        port.trim()
            .parse()
            .with_context(|| format!("`postgres_port` must render to a port number, not `{port}`"))
    }

    /// Add the units and paths `module` reads to `probe`.
    pub fn wants(&self, module: &Module, probe: &mut Probe) -> anyhow::Result<()> {
        match module {
            Module::Template(args) => {
                probe.paths.insert(self.template_target(args)?.0);
            }
            Module::Copy(args) => {
                let dest = self.text(&args.dest)?;
                if args.src.is_some() {
                    probe.quick.insert(dest);
                } else {
                    probe.paths.insert(dest);
                }
            }
            Module::File(args) => {
                probe.paths.insert(self.text(&args.path)?);
            }
            Module::Service(args) => {
                probe.units.insert(self.text(&args.name)?);
            }
            Module::Command(args) => {
                for path in [&args.creates, &args.removes].into_iter().flatten() {
                    probe.paths.insert(self.text(path)?);
                }
            }
            Module::DefaultData(args) => {
                let version = self.text(&args.version)?;
                probe
                    .paths
                    .insert(super::default_data::marker_path(args.component, &version));
            }
            Module::Package(args) => {
                if args.policy_rc_d.is_some() {
                    probe.paths.insert(POLICY_RC_D.to_string());
                }
            }
            Module::PatroniConfig(args) | Module::PatroniRestart(args) => {
                probe.patroni = Some((self.text(&args.api)?, self.port(&args.postgres_port)?));
            }
            Module::EtcdJoin(args) => {
                probe
                    .paths
                    .insert(format!("{}/member", self.text(&args.data_dir)?));
            }
            Module::WaitFor(_)
            | Module::User(_)
            | Module::PatroniWait(_)
            | Module::EtcdRestart(_)
            | Module::EtcdPromoteLearners(_) => {}
        }
        Ok(())
    }

    fn template_target(
        &self,
        args: &super::playbook::TemplateArgs,
    ) -> anyhow::Result<(String, String, String, u32, bool)> {
        let standard = render::destination(&args.src);
        let dest = match (&args.dest, standard) {
            (Some(dest), _) => self.text(dest)?,
            (None, Some((path, ..))) => path.to_string(),
            (None, None) => bail!(
                "template `{}` has no standard destination; give `dest`",
                args.src
            ),
        };
        let owner = args
            .owner
            .clone()
            .or(standard.map(|s| s.1.to_string()))
            .unwrap_or_else(|| "root".into());
        let group = args
            .group
            .clone()
            .or(standard.map(|s| s.2.to_string()))
            .unwrap_or_else(|| "root".into());
        let mode = args
            .mode
            .map(|mode| mode.0)
            .or(standard.map(|s| s.3))
            .unwrap_or(0o644);
        let secret = standard.is_some_and(|s| s.4);
        Ok((dest, owner, group, mode, secret))
    }

    /// Decide what `module` would change on a host with `facts`.
    pub fn plan(&self, module: &Module, facts: &Facts) -> anyhow::Result<Plan> {
        Ok(match module {
            Module::Package(args) => {
                // A rendered name may expand to several (`"{{ packages | join(' ') }}"`).
                let mut names: Vec<String> = Vec::new();
                for name in args.name.to_vec() {
                    names.extend(self.text(&name)?.split_whitespace().map(str::to_string));
                }
                // Installed at another version than pinned, and kept (`keep_installed`).
                let kept: Vec<String> = names
                    .iter()
                    .filter(|_| args.keep_installed && args.state == PackageState::Present)
                    .filter_map(|spec| {
                        let (name, pin) = spec.split_once('=')?;
                        let installed = facts.packages.get(name)?;
                        (installed != pin).then(|| format!("{name} {installed} (pinned {pin})"))
                    })
                    .collect();
                let (install, remove) = match args.state {
                    PackageState::Present => (
                        names
                            .iter()
                            .filter(|spec| !package_satisfied(spec, facts))
                            .filter(|spec| {
                                !spec.split_once('=').is_some_and(|(name, _)| {
                                    kept.iter().any(|kept| kept.split(' ').next() == Some(name))
                                })
                            })
                            .cloned()
                            .collect::<Vec<_>>(),
                        Vec::new(),
                    ),
                    PackageState::Absent => (
                        Vec::new(),
                        names
                            .iter()
                            .filter(|name| facts.packages.contains_key(*name))
                            .cloned()
                            .collect(),
                    ),
                };
                // A `policy-rc.d` with pgha's exact bytes is one an interrupted run left.
                let leftover = args.policy_rc_d.is_some_and(|code| {
                    matches!(
                        facts.files.get(POLICY_RC_D),
                        Some(FileFact::File { sha256: Some(sha256), .. })
                            if *sha256 == crate::ssh::sha256_hex(policy_rc_d_contents(code).as_bytes())
                    )
                });
                if install.is_empty() && remove.is_empty() && leftover {
                    Plan::Act {
                        summary: format!("remove the `{POLICY_RC_D}` an interrupted pgha run left"),
                        action: Action::Packages {
                            install,
                            remove,
                            policy_rc_d: args.policy_rc_d,
                            policy_rc_d_leftover: true,
                        },
                        changes: true,
                    }
                } else if install.is_empty() && remove.is_empty() {
                    Plan::NoChange(format!(
                        "{} {}{}",
                        names.join(", "),
                        if args.state == PackageState::Present {
                            "installed"
                        } else {
                            "absent"
                        },
                        kept_note(&kept)
                    ))
                } else {
                    let summary = [("install", &install), ("remove", &remove)]
                        .iter()
                        .filter(|(_, list)| !list.is_empty())
                        .map(|(verb, list)| format!("{verb} {}", list.join(", ")))
                        .collect::<Vec<_>>()
                        .join("; ")
                        + &kept_note(&kept);
                    Plan::Act {
                        summary,
                        action: Action::Packages {
                            install,
                            remove,
                            policy_rc_d: args.policy_rc_d,
                            policy_rc_d_leftover: leftover,
                        },
                        changes: true,
                    }
                }
            }
            Module::Template(args) => {
                let (dest, owner, group, mode, secret) = self.template_target(args)?;
                let contents = self.renderer.render_template(&args.src, self.context)?;
                let validate = args
                    .validate
                    .as_ref()
                    .map(|text| self.text(text))
                    .transpose()?;
                file_plan(
                    Upload {
                        path: dest,
                        contents: contents.into_bytes(),
                        owner,
                        group,
                        mode,
                        mtime: None,
                    },
                    secret,
                    validate,
                    facts,
                )
            }
            Module::Copy(args) => {
                let dest = self.text(&args.dest)?;
                let mode = args.mode.map(|mode| mode.0).unwrap_or(0o644);
                let upload = |contents: Vec<u8>| Upload {
                    path: dest.clone(),
                    contents,
                    owner: args.owner.clone(),
                    group: args.group.clone(),
                    mode,
                    mtime: None,
                };
                match (&args.content, &args.src) {
                    (Some(content), _) => file_plan(
                        upload(self.text(content)?.into_bytes()),
                        args.secret,
                        None,
                        facts,
                    ),
                    (None, Some(src)) => {
                        let src = self.text(src)?;
                        let (size, mtime) = local_size_and_time(&src)?;
                        let upload = Upload {
                            mtime: Some(mtime),
                            ..upload(Vec::new())
                        };
                        match compare_file(
                            upload,
                            Content::SizeAndTime { size, mtime },
                            args.secret,
                            None,
                            facts,
                        ) {
                            // Only a planned write needs the bytes themselves.
                            Plan::Act {
                                summary,
                                action:
                                    Action::WriteFile {
                                        mut upload,
                                        secret,
                                        validate,
                                    },
                                changes,
                            } => {
                                // The bytes and the time stamped on them come from one read,
                                // even if the file was replaced since the size check above.
                                let (bytes, mtime) = read_local(&src)?;
                                upload.contents = bytes.as_ref().clone();
                                upload.mtime = Some(mtime);
                                Plan::Act {
                                    summary,
                                    action: Action::WriteFile {
                                        upload,
                                        secret,
                                        validate,
                                    },
                                    changes,
                                }
                            }
                            other => other,
                        }
                    }
                    (None, None) => unreachable!("the parser requires content or src"),
                }
            }
            Module::File(args) => {
                let path = self.text(&args.path)?;
                let fact = facts.files.get(&path).cloned().unwrap_or(FileFact::Absent);
                match (args.state, fact) {
                    (FileState::Absent, FileFact::Absent) => {
                        Plan::NoChange(format!("`{path}` is absent"))
                    }
                    (FileState::Absent, _) => Plan::Act {
                        summary: format!("remove `{path}`"),
                        action: Action::Remove { path },
                        changes: true,
                    },
                    (FileState::Directory, FileFact::Directory { owner, group, mode }) => {
                        let mut wrong = Vec::new();
                        if args.owner.as_ref().is_some_and(|want| *want != owner) {
                            wrong.push(format!("owner {owner}"));
                        }
                        if args.group.as_ref().is_some_and(|want| *want != group) {
                            wrong.push(format!("group {group}"));
                        }
                        if args.mode.is_some_and(|want| want.0 != mode) {
                            wrong.push(format!("mode {mode:o}"));
                        }
                        if wrong.is_empty() {
                            Plan::NoChange(format!("directory `{path}` is as wanted"))
                        } else {
                            Plan::Act {
                                summary: format!("fix `{path}` ({})", wrong.join(", ")),
                                action: Action::Directory {
                                    path,
                                    owner: args.owner.clone(),
                                    group: args.group.clone(),
                                    mode: args.mode.map(|m| m.0),
                                },
                                changes: true,
                            }
                        }
                    }
                    (FileState::Directory, FileFact::Absent) => Plan::Act {
                        summary: format!("create directory `{path}`"),
                        action: Action::Directory {
                            path,
                            owner: args.owner.clone(),
                            group: args.group.clone(),
                            mode: args.mode.map(|m| m.0),
                        },
                        changes: true,
                    },
                    (FileState::Directory, _) => bail!("`{path}` exists and is not a directory"),
                }
            }
            Module::Service(args) => {
                let name = self.text(&args.name)?;
                let unit = facts
                    .units
                    .get(unit_key(&name))
                    .cloned()
                    .unwrap_or_default();
                let mut steps: Vec<Vec<String>> = Vec::new();
                let mut what = Vec::new();
                if let Some(enabled) = args.enabled {
                    let is_enabled = matches!(
                        unit.unit_file_state.as_str(),
                        "enabled" | "enabled-runtime" | "static" | "alias"
                    );
                    if enabled != is_enabled {
                        steps.push(vec![
                            if enabled { "enable" } else { "disable" }.into(),
                            name.clone(),
                        ]);
                        what.push(if enabled { "enable" } else { "disable" });
                    }
                }
                let running = matches!(
                    unit.active_state.as_str(),
                    "active" | "activating" | "reloading"
                );
                let no_block = if args.no_block {
                    vec!["--no-block".to_string()]
                } else {
                    Vec::new()
                };
                let verb = match args.state {
                    Some(ServiceState::Started) if !running => Some("start"),
                    Some(ServiceState::Stopped) if running => Some("stop"),
                    Some(ServiceState::Restarted) => Some("restart"),
                    Some(ServiceState::Reloaded) if running => Some("reload"),
                    _ => None,
                };
                if let Some(verb) = verb {
                    let mut step = no_block;
                    step.push(verb.to_string());
                    step.push(name.clone());
                    steps.push(step);
                    what.push(verb);
                }
                if steps.is_empty() {
                    Plan::NoChange(format!(
                        "`{name}` is {}{}",
                        unit.active_state,
                        if unit.unit_file_state.is_empty() {
                            String::new()
                        } else {
                            format!(", {}", unit.unit_file_state)
                        }
                    ))
                } else {
                    Plan::Act {
                        summary: format!("{} `{name}`", what.join(" and ")),
                        action: Action::Systemctl { steps },
                        changes: true,
                    }
                }
            }
            Module::Command(args) => {
                let cmd = self.text(&args.cmd)?;
                if let Some(creates) = &args.creates {
                    let creates = self.text(creates)?;
                    if !matches!(facts.files.get(&creates), None | Some(FileFact::Absent)) {
                        return Ok(Plan::NoChange(format!("`{creates}` exists")));
                    }
                }
                if let Some(removes) = &args.removes {
                    let removes = self.text(removes)?;
                    if matches!(facts.files.get(&removes), None | Some(FileFact::Absent)) {
                        return Ok(Plan::NoChange(format!("`{removes}` is absent")));
                    }
                }
                let stdin = args
                    .stdin
                    .as_ref()
                    .map(|text| self.text(text))
                    .transpose()?;
                let (changes, changed_when) = match &args.changed_when {
                    None => (true, None),
                    Some(ChangedWhen::Always(flag)) => (*flag, None),
                    Some(ChangedWhen::Expression(expression)) => (true, Some(expression.clone())),
                };
                Plan::Act {
                    summary: format!("run {}", describe_command(&cmd)),
                    action: Action::Command {
                        cmd,
                        stdin,
                        changed_when,
                    },
                    changes,
                }
            }
            Module::WaitFor(args) => {
                let (script, what) = if let Some(port) = &args.port {
                    let port: u16 = self.text(&port.as_text())?.trim().parse().map_err(|_| {
                        anyhow::anyhow!("`wait_for` port `{}` is not a port number", port.as_text())
                    })?;
                    let host = args
                        .host
                        .as_ref()
                        .map(|host| self.text(host))
                        .transpose()?
                        .unwrap_or_else(|| "127.0.0.1".into());
                    (
                        format!(
                            "bash -c {} 2>/dev/null",
                            crate::ssh::shell_quote(&format!("exec 3<>/dev/tcp/{host}/{port}"))
                        ),
                        format!("port {host}:{port}"),
                    )
                } else if let Some(url) = &args.http {
                    let url = self.text(url)?;
                    let status = args.status.unwrap_or(200);
                    (
                        format!("[ \"$(curl -s -o /dev/null --max-time 2 -w '%{{http_code}}' {})\" = {status} ]", crate::ssh::shell_quote(&url)),
                        format!("{url} answering {status}"),
                    )
                } else {
                    // A block scalar ends in a newline, which `until ...; do` would not survive.
                    let command = self
                        .text(args.command.as_deref().unwrap_or("true"))?
                        .trim_end()
                        .to_string();
                    let what = format!("{} to succeed", describe_command(&command));
                    (command, what)
                };
                Plan::Act {
                    summary: format!("wait for {what}"),
                    action: Action::WaitFor {
                        script,
                        timeout: args.timeout,
                        what,
                    },
                    changes: false,
                }
            }
            Module::DefaultData(args) => {
                let version = self.text(&args.version)?;
                let path = super::default_data::marker_path(args.component, &version);
                let force = match self.text(&args.force)?.trim().to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" | "" => false,
                    other => {
                        bail!("`default_data` force must render to true or false, not `{other}`")
                    }
                };
                if matches!(facts.files.get(&path), None | Some(FileFact::Absent)) {
                    Plan::NoChange(format!("`{path}` is absent"))
                } else {
                    Plan::Act {
                        summary: format!(
                            "remove `{path}` if pgha installed it or it is provably empty{}",
                            if force { " (forced)" } else { "" }
                        ),
                        action: Action::DefaultData {
                            component: args.component,
                            version,
                            force,
                        },
                        changes: true,
                    }
                }
            }
            Module::PatroniConfig(args) => {
                let settings = self.text(&args.settings)?;
                let desired: serde_json::Value = serde_json::from_str(&settings)
                    .context("`patroni_config` settings must render to JSON")?;
                let settle = match self.text(&args.settle)?.trim() {
                    "" => 0,
                    text => text.parse().with_context(|| {
                        format!("`patroni_config` settle must render to seconds, not `{text}`")
                    })?,
                };
                super::patroni_tasks::plan_config(
                    self.text(&args.api)?,
                    desired,
                    crate::patroni::Credentials::pgha(&self.text(&args.password)?),
                    settle,
                    facts,
                )
            }
            Module::PatroniRestart(args) => super::patroni_tasks::plan_restart(
                self.text(&args.api)?,
                crate::patroni::Credentials::pgha(&self.text(&args.password)?),
                facts,
            ),
            Module::PatroniWait(args) => super::patroni_tasks::plan_wait(
                self.text(&args.api)?,
                args.until,
                self.text(&args.member)?,
                args.timeout,
            ),
            Module::EtcdJoin(args) => {
                let member = format!("{}/member", self.text(&args.data_dir)?);
                if !matches!(facts.files.get(&member), None | Some(FileFact::Absent)) {
                    Plan::NoChange(format!("`{member}` exists: a member of its cluster"))
                } else {
                    let (config_path, ..) = render::destination("etcd.conf.yml.j2")
                        .context("the etcd template has no destination")?;
                    let node = self
                        .context
                        .get_attr("node")
                        .ok()
                        .and_then(|node| node.get_attr("name").ok())
                        .map(|name| name.to_string())
                        .unwrap_or_default();
                    Plan::Act {
                        summary: "join a running etcd cluster as a learner and be promoted (a new cluster: nothing)".into(),
                        action: Action::EtcdJoin(super::etcd_join::Join {
                            name: node,
                            peer_url: self.text(&args.peer_url)?,
                            endpoints: self.text(&args.endpoints)?,
                            config: self
                                .renderer
                                .render_template("etcd.conf.yml.j2", self.context)?,
                            config_path: config_path.to_string(),
                        }),
                        changes: true,
                    }
                }
            }
            Module::EtcdRestart(args) => Plan::Act {
                summary:
                    "restart the member if it runs an older configuration than the one on disk"
                        .into(),
                action: Action::EtcdRestart(super::etcd_restart::Restart {
                    config: self.text(&args.config)?,
                    unit: self.text(&args.unit)?,
                }),
                changes: true,
            },
            Module::EtcdPromoteLearners(args) => Plan::Act {
                summary: "promote every learner once it is in sync".into(),
                action: Action::EtcdPromoteLearners {
                    endpoint: self.text(&args.endpoint)?,
                },
                changes: true,
            },
            Module::User(args) => {
                let name = self.text(&args.name)?;
                if facts.users.contains(&name) {
                    Plan::NoChange(format!("user `{name}` exists"))
                } else {
                    Plan::Act {
                        summary: format!("create user `{name}`"),
                        action: Action::User {
                            name,
                            system: args.system,
                            home: args.home.clone(),
                            shell: args.shell.clone(),
                        },
                        changes: true,
                    }
                }
            }
        })
    }
}

/// A command for progress lines: a one-liner in backquotes, a script by its length (its first
/// line is often a comment that would read as a claim).
fn describe_command(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    match lines[..] {
        [] => "an empty command".to_string(),
        [line] => format!("`{line}`"),
        _ => format!("a {}-line script", lines.len()),
    }
}

/// `name` or `name=version` is installed (at that version).
/// What a deploy left at another version than pinned, and what changes it.
fn kept_note(kept: &[String]) -> String {
    if kept.is_empty() {
        String::new()
    } else {
        format!(
            "; kept {}: a deploy never changes an installed version, `pgha upgrade -i INVENTORY` does",
            kept.join(", ")
        )
    }
}

fn package_satisfied(spec: &str, facts: &Facts) -> bool {
    match spec.split_once('=') {
        Some((name, version)) => facts
            .packages
            .get(name)
            .is_some_and(|installed| installed == version),
        None => facts.packages.contains_key(spec),
    }
}

/// The bytes of a local file for `copy` and their modification time, read once per run however
/// many hosts need them.
fn read_local(path: &str) -> anyhow::Result<(std::sync::Arc<Vec<u8>>, i64)> {
    type Cache = std::collections::HashMap<String, (std::sync::Arc<Vec<u8>>, i64)>;
    static CACHE: std::sync::OnceLock<std::sync::Mutex<Cache>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(path)
    {
        return Ok(hit.clone());
    }
    let before = local_size_and_time(path)?;
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read local file `{path}` for `copy`"))?;
    let after = local_size_and_time(path)?;
    anyhow::ensure!(
        before == after && after.0 == bytes.len() as u64,
        "local file `{path}` for `copy` changed while it was read; hint: run again once it is written"
    );
    let entry = (std::sync::Arc::new(bytes), after.1);
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(path.to_string(), entry.clone());
    Ok(entry)
}

/// Size and modification time (whole seconds since the epoch) of a local file for `copy`.
fn local_size_and_time(path: &str) -> anyhow::Result<(u64, i64)> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read local file `{path}` for `copy`"))?;
    anyhow::ensure!(
        metadata.is_file(),
        "local file `{path}` for `copy` is not a regular file"
    );
    let mtime = metadata
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0);
    Ok((metadata.len(), mtime))
}

/// How a planned file is compared with the host's.
enum Content {
    /// By SHA-256: rendered templates and inline content.
    Checksum(String),
    /// By size and modification time (rsync's quick check): files copied from the control
    /// machine, which the upload stamps with the local file's time.
    SizeAndTime { size: u64, mtime: i64 },
}

fn file_plan(upload: Upload, secret: bool, validate: Option<String>, facts: &Facts) -> Plan {
    let sha256 = sha256_hex(&upload.contents);
    compare_file(upload, Content::Checksum(sha256), secret, validate, facts)
}

fn compare_file(
    upload: Upload,
    wanted: Content,
    secret: bool,
    validate: Option<String>,
    facts: &Facts,
) -> Plan {
    let mut reasons = Vec::new();
    match facts.files.get(&upload.path) {
        Some(FileFact::File {
            owner,
            group,
            mode,
            size,
            mtime,
            sha256,
        }) => {
            match &wanted {
                Content::Checksum(wanted) if sha256.as_ref() != Some(wanted) => {
                    reasons.push("content".to_string())
                }
                Content::SizeAndTime {
                    size: wanted_size,
                    mtime: wanted_mtime,
                } if size != wanted_size || mtime != wanted_mtime => {
                    reasons.push("size or modification time".to_string())
                }
                _ => {}
            }
            if *owner != upload.owner || *group != upload.group {
                reasons.push(format!("owner {owner}:{group}"));
            }
            if *mode != upload.mode {
                reasons.push(format!("mode {mode:o}"));
            }
        }
        _ => reasons.push("new file".to_string()),
    }
    if reasons.is_empty() {
        Plan::NoChange(format!("`{}` is up to date", upload.path))
    } else {
        Plan::Act {
            summary: format!("write `{}` ({})", upload.path, reasons.join(", ")),
            action: Action::WriteFile {
                upload,
                secret,
                validate,
            },
            changes: true,
        }
    }
}

/// A unified diff of a file change, secrets replaced by `********`.
pub fn file_diff(path: &str, old: &str, new: &str, secrets: &[&str]) -> String {
    let mask = |text: &str| {
        secrets
            .iter()
            .filter(|secret| !secret.is_empty())
            .fold(text.to_string(), |text, secret| {
                text.replace(secret, "********")
            })
    };
    let (masked_old, masked_new) = (mask(old), mask(new));
    if masked_old == masked_new && old != new {
        return format!("--- {path}\n+++ {path}\n(only secret values differ; not shown)\n");
    }
    let (old, new) = (masked_old, masked_new);
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{path} (on host)"), &format!("{path} (planned)"))
        .to_string()
}

/// The marker line of the `policy-rc.d` pgha writes: a file with it is pgha's own (left by an
/// interrupted run) and is replaced and removed; any other file is left as it is.
pub const POLICY_RC_D_MARKER: &str = "# pgha: no service starts while pgha installs packages";

/// Where `policy-rc.d` lives.
pub const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// The exact `policy-rc.d` pgha writes for exit `code` (facts recognise a leftover by its
/// checksum).
pub fn policy_rc_d_contents(code: u8) -> String {
    format!("#!/bin/sh\n{POLICY_RC_D_MARKER}\nexit {code}\n")
}

/// Where pgha records default data its own package step created (an empty file each):
/// `postgresql-<version>-main` and `etcd-default` (see `engine::default_data`).
pub const CREATED_BY_PGHA_DIR: &str = "/var/lib/pgha/created";

/// Shell lines that install a blocking `policy-rc.d` exiting `code`, unless a foreign one is
/// there, and remove it on every way out of the script (signals included).
fn policy_rc_d_script(code: u8) -> String {
    format!(
        r#"policy={POLICY_RC_D}
if [ ! -e "$policy" ] || grep -qxF '{POLICY_RC_D_MARKER}' "$policy" 2>/dev/null; then
  trap 'rm -f "$policy"' EXIT
  trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM
  printf '#!/bin/sh\n%s\nexit {code}\n' '{POLICY_RC_D_MARKER}' > "$policy.pgha-new" && chmod 755 "$policy.pgha-new" && mv -f "$policy.pgha-new" "$policy"
fi
"#
    )
}

/// Before installing: for each package (the script's arguments) whose scripts create default
/// data, note the data that does not exist yet (PostgreSQL's `/etc/postgresql/<v>/main` and
/// `/var/lib/postgresql/<v>/main`, etcd's `/var/lib/etcd/default`). Data that was there before
/// pgha's install (a removed but not purged package's cluster) is never claimed.
const NOTE_ABSENT_DEFAULT_DATA: &str = r#"absent=""
mkdir -p /var/lib/pgha/created
# Noted on disk before apt runs: an install cut off by a signal cannot claim what it created,
# and the next run must still know the data was not there before pgha's install.
note() { # claim, whether the data exists
  if [ "$2" = no ]; then absent="$absent $1"; : > "/var/lib/pgha/created/$1.pending"
  elif [ -e "/var/lib/pgha/created/$1.pending" ]; then absent="$absent $1"; fi
}
for spec in "$@"; do
  name=${spec%%=*}
  case "$name" in
    postgresql-[0-9]*) version=${name#postgresql-}; exists=no; { [ -e "/etc/postgresql/$version/main" ] || [ -e "/var/lib/postgresql/$version/main" ]; } && exists=yes; note "$name-main" "$exists" ;;
    etcd-server) exists=no; [ -e /var/lib/etcd/default ] && exists=yes; note etcd-default "$exists" ;;
  esac
done
"#;

/// After the install (whatever its outcome, but not after a signal): claim for pgha the noted
/// default data that the install created, any part of it (the same paths the note looked at).
/// The note is dropped only when the data is claimed or the install provably finished without
/// creating it: apt succeeded and dpkg has nothing left half-done (`dpkg --audit` is silent).
/// After an install cut off part-way (say apt-get killed by the closed SSH channel while dpkg
/// goes on) the data may still appear, or the next run's `dpkg --configure -a` may create it,
/// and the note must still say it was not there before.
const CLAIM_CREATED_DEFAULT_DATA: &str = r#"settled=no
[ "$status" = 0 ] && [ -z "$(dpkg --audit 2>&1)" ] && settled=yes
for claim in $absent; do
  exists=no
  case "$claim" in
    postgresql-*-main) version=${claim#postgresql-}; version=${version%-main}; { [ -e "/etc/postgresql/$version/main" ] || [ -e "/var/lib/postgresql/$version/main" ]; } && exists=yes ;;
    etcd-default) [ -e /var/lib/etcd/default ] && exists=yes ;;
  esac
  if [ "$exists" = yes ]; then : > "/var/lib/pgha/created/$claim"; rm -f "/var/lib/pgha/created/$claim.pending"
  elif [ "$settled" = yes ]; then rm -f "/var/lib/pgha/created/$claim.pending"; fi
done
"#;

/// Installs the packages given as arguments. An earlier run cut off mid-install leaves dpkg
/// half-configured, so that is finished first; a hung index download is cut off and retried
/// (on the lab, apt-cacher-ng answered one of three nodes updating at once with a truncated
/// `InRelease`, and that node's apt waited on it past its own timeouts). Sets `status`.
const APT_INSTALL: &str = r#"
dpkg --configure -a >/dev/null 2>&1 || true
apt_options="-o DPkg::Lock::Timeout=120 -o Acquire::Retries=3 -o Acquire::http::Timeout=30"
updated=no
# A hung first try is cut off after 30 s (a lab update takes 2 s); a slow mirror gets longer tries.
for limit in 30 180 180; do
  if timeout "$limit" apt-get $apt_options update -q >/dev/null; then updated=yes; break; fi
  sleep 2
done
if [ "$updated" != yes ]; then echo "apt-get update failed 3 times" >&2; exit 1; fi
status=0
timeout 1200 apt-get $apt_options install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "$@" || status=$?
"#;

/// Perform `action`; returns the command's output for `register` where there is one.
/// What applying an action found on the host.
#[derive(Debug)]
pub enum Applied {
    /// Done as planned; a command's output when the action ran one.
    Done(Option<CommandOutput>),
    /// The host turned out to hold the planned state already (why, for the progress line):
    /// e.g. a copied file with the same bytes and only another modification time.
    AlreadyThere(String),
    /// Done, and why it was safe or needed (for the progress line).
    DoneBecause(String),
}

/// Write `contents` to `path` as the deploy writes files (atomically, owner and mode set before
/// it appears), as a secret copy: the contents are never shown. For orchestrators (the move
/// onto TLS, scale-in) that write one file outside a playbook.
pub async fn write_secret_file(
    session: &Arc<Session>,
    path: &str,
    contents: Vec<u8>,
    (owner, group, mode): (&str, &str, u32),
) -> anyhow::Result<()> {
    apply(
        session,
        &Action::WriteFile {
            upload: Upload {
                path: path.to_string(),
                contents,
                owner: owner.to_string(),
                group: group.to_string(),
                mode,
                mtime: None,
            },
            secret: true,
            validate: None,
        },
    )
    .await
    .map(drop)
}

pub async fn apply(session: &Arc<Session>, action: &Action) -> anyhow::Result<Applied> {
    match action {
        Action::Packages {
            install,
            remove,
            policy_rc_d,
            policy_rc_d_leftover,
        } => {
            let mut script = String::from("export DEBIAN_FRONTEND=noninteractive\n");
            if let Some(code) = policy_rc_d {
                script.push_str(&policy_rc_d_script(*code));
            }
            if !install.is_empty() {
                script.push_str(NOTE_ABSENT_DEFAULT_DATA);
                script.push_str(APT_INSTALL);
                script.push_str(CLAIM_CREATED_DEFAULT_DATA);
                script.push_str("exit \"$status\"\n");
            }
            let mut command = RemoteCommand::script(script).as_root();
            for name in install {
                command = command.arg(name.clone());
            }
            // With nothing to install the script still runs when a `policy-rc.d` left by an
            // interrupted pgha run must go (it replaces and removes it).
            if !install.is_empty() || *policy_rc_d_leftover {
                checked(session, command).await?;
            }
            if !remove.is_empty() {
                let mut command = RemoteCommand::script(
                    "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q \"$@\"",
                )
                .as_root();
                for name in remove {
                    command = command.arg(name.clone());
                }
                checked(session, command).await?;
            }
            Ok(Applied::Done(None))
        }
        Action::WriteFile {
            upload, validate, ..
        } => {
            let parent = upload
                .path
                .rsplit_once('/')
                .map(|(parent, _)| parent)
                .filter(|parent| !parent.is_empty())
                .unwrap_or("/");
            checked(
                session,
                RemoteCommand::argv(["mkdir", "-p", parent]).as_root(),
            )
            .await?;
            let Some(validate) = validate else {
                let written = session
                    .upload(upload)
                    .await
                    .with_context(|| format!("cannot write `{}`", upload.path))?;
                if !written {
                    let time = if upload.mtime.is_some() {
                        " (only its modification time was set)"
                    } else {
                        ""
                    };
                    return Ok(Applied::AlreadyThere(format!(
                        "`{}` already held these bytes{time}",
                        upload.path
                    )));
                }
                return Ok(Applied::Done(None));
            };
            // Write the candidate beside the target, let the program check it, and only then
            // rename it into place: a refused file never replaces a working one.
            let candidate = Upload {
                path: format!("{}.pgha-candidate", upload.path),
                ..upload.clone()
            };
            session
                .upload(&candidate)
                .await
                .with_context(|| format!("cannot write `{}`", candidate.path))?;
            let check = validate.replace("%s", &crate::ssh::shell_quote(&candidate.path));
            let output = session
                .run(&RemoteCommand::script(check.clone()).as_root())
                .await?;
            if !output.success() {
                let _ = session
                    .run(&RemoteCommand::argv(["rm", "-f", &candidate.path]).as_root())
                    .await;
                bail!(
                    "`{check}` refused the new `{}` ({}):\n{}",
                    upload.path,
                    output.status(),
                    tail(&format!("{}{}", output.stdout_text(), output.stderr_text()))
                );
            }
            checked(
                session,
                RemoteCommand::argv(["mv", "-f", &candidate.path, &upload.path]).as_root(),
            )
            .await?;
            Ok(Applied::Done(None))
        }
        Action::Directory {
            path,
            owner,
            group,
            mode,
        } => {
            // Never through a symbolic link: chown and chmod would change its target.
            let mut script = String::from(
                "if [ -L \"$1\" ]; then echo \"\\`$1\\` is a symbolic link; pgha never changes one\" >&2; exit 1; fi\nmkdir -p \"$1\"",
            );
            if let Some(owner) = owner {
                script.push_str(&format!(
                    " && chown -h {} \"$1\"",
                    crate::ssh::shell_quote(owner)
                ));
            }
            if let Some(group) = group {
                script.push_str(&format!(
                    " && chgrp -h {} \"$1\"",
                    crate::ssh::shell_quote(group)
                ));
            }
            if let Some(mode) = mode {
                script.push_str(&format!(" && chmod {mode:o} \"$1\""));
            }
            checked(
                session,
                RemoteCommand::script(script).arg(path.clone()).as_root(),
            )
            .await?;
            Ok(Applied::Done(None))
        }
        Action::Remove { path } => {
            checked(
                session,
                RemoteCommand::argv(["rm", "-rf", "--", path]).as_root(),
            )
            .await?;
            Ok(Applied::Done(None))
        }
        Action::Systemctl { steps } => {
            for step in steps {
                let mut argv = vec!["systemctl".to_string()];
                argv.extend(step.iter().cloned());
                checked(session, RemoteCommand::argv(argv).as_root()).await?;
            }
            Ok(Applied::Done(None))
        }
        Action::Command { cmd, stdin, .. } => {
            let mut command = RemoteCommand::script(cmd.clone()).as_root();
            if let Some(stdin) = stdin {
                command = command.stdin(stdin.clone().into_bytes());
            }
            Ok(Applied::Done(Some(checked(session, command).await?)))
        }
        Action::WaitFor {
            script,
            timeout,
            what,
        } => {
            let deadline_script = format!(
                "deadline=$(( $(date +%s) + {timeout} ))\nuntil {script}; do\n  if [ \"$(date +%s)\" -ge \"$deadline\" ]; then exit 124; fi\n  sleep 0.2\ndone"
            );
            let output = session
                .run(&RemoteCommand::script(deadline_script).as_root())
                .await?;
            if output.exit_code == Some(124) {
                bail!("timed out after {timeout} s waiting for {what}");
            }
            if !output.success() {
                bail!(
                    "waiting for {what} failed ({}): {}",
                    output.status(),
                    tail(&output.stderr_text())
                );
            }
            Ok(Applied::Done(Some(output)))
        }
        Action::DefaultData {
            component,
            version,
            force,
        } => super::default_data::apply(session, *component, version, *force).await,
        Action::PatroniConfig {
            api,
            desired,
            credentials,
            settle,
        } => super::patroni_tasks::apply_config(session, api, desired, credentials, *settle).await,
        Action::PatroniRestart {
            api,
            steps,
            credentials,
        } => super::patroni_tasks::apply_restart(session, api, steps, credentials).await,
        Action::PatroniWait {
            api,
            until,
            member,
            timeout,
        } => super::patroni_tasks::apply_wait(session, api, *until, member, *timeout).await,
        Action::EtcdJoin(join) => super::etcd_join::apply(session, join).await,
        Action::EtcdRestart(restart) => super::etcd_restart::apply(session, restart).await,
        Action::EtcdPromoteLearners { endpoint } => {
            super::etcd_join::promote_learners(session, endpoint).await
        }
        Action::User {
            name,
            system,
            home,
            shell,
        } => {
            let mut argv = vec!["useradd".to_string()];
            if *system {
                argv.push("--system".into());
            }
            if let Some(home) = home {
                argv.extend(["--home-dir".into(), home.clone(), "--create-home".into()]);
            }
            if let Some(shell) = shell {
                argv.extend(["--shell".into(), shell.clone()]);
            }
            argv.push(name.clone());
            checked(session, RemoteCommand::argv(argv).as_root()).await?;
            Ok(Applied::Done(None))
        }
    }
}

/// The last lines of a command's stderr, for failure reports.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Run `command`; a non-zero exit is an error carrying the command, status and stderr tail.
pub(super) async fn checked(
    session: &Session,
    command: RemoteCommand,
) -> anyhow::Result<CommandOutput> {
    let output = session.run(&command).await?;
    if !output.success() {
        let stderr = tail(&output.stderr_text());
        let stdout = tail(&output.stdout_text());
        bail!(
            "`{}` failed with {}\n{}",
            command.summary(),
            output.status(),
            if stderr.is_empty() { stdout } else { stderr }
        );
    }
    Ok(output)
}

/// Units a set of actions touched on disk (so the runner knows to `daemon-reload`).
pub fn writes_unit_file(action: &Action) -> bool {
    matches!(action, Action::WriteFile { upload, .. } if upload.path.starts_with("/etc/systemd/") || upload.path.starts_with("/lib/systemd/"))
}

/// Names of packages in `specs` (without version pins).
pub fn package_names(specs: &[String]) -> BTreeSet<String> {
    specs
        .iter()
        .map(|spec| spec.split('=').next().unwrap_or(spec).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::facts::{Facts, FileFact, Unit};
    use crate::engine::playbook::Playbook;
    use crate::inventory::{Inventory, Secrets};

    fn setup() -> (Renderer, minijinja::Value) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/lab.yml");
        let inventory = Inventory::load(&path).unwrap();
        let secrets = Secrets {
            superuser_password: "s1".into(),
            replication_password: "s2".into(),
            rewind_password: "s3".into(),
            restapi_password: "s4".into(),
        };
        let context = render::context(&inventory, &secrets, &inventory.nodes[0]);
        (Renderer::new(None).unwrap(), context)
    }

    fn module(yaml: &str) -> Module {
        let text = format!("- name: p\n  hosts: all\n  tasks:\n    - {yaml}\n");
        Playbook::parse("t.yml", &text)
            .unwrap()
            .plays
            .remove(0)
            .tasks
            .remove(0)
            .module
    }

    fn plan(yaml: &str, facts: &Facts) -> Plan {
        let (renderer, context) = setup();
        Planner {
            renderer: &renderer,
            context: &context,
        }
        .plan(&module(yaml), facts)
        .unwrap()
    }

    #[test]
    fn packages_plan_only_what_is_missing_or_pinned_differently() {
        let mut facts = Facts::default();
        facts.packages.insert("etcd-server".into(), "3.4.23".into());
        assert!(matches!(
            plan("package: {name: [etcd-server]}", &facts),
            Plan::NoChange(_)
        ));
        match plan(
            "package: {name: [etcd-server, haproxy, etcd-server=3.4.30]}",
            &facts,
        ) {
            Plan::Act {
                action: Action::Packages { install, .. },
                ..
            } => assert_eq!(install, ["haproxy", "etcd-server=3.4.30"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan("package: {name: etcd-server, state: absent}", &facts),
            Plan::Act { .. }
        ));
    }

    #[test]
    fn a_deploy_keeps_an_installed_version_and_names_pgha_upgrade() {
        let mut facts = Facts::default();
        facts
            .packages
            .insert("haproxy".into(), "2.6.12-1+deb12u4".into());
        match plan(
            "package: {name: [haproxy=2.6.12-1+deb12u3], keep_installed: true}",
            &facts,
        ) {
            Plan::NoChange(reason) => assert!(
                reason.contains("kept haproxy 2.6.12-1+deb12u4 (pinned 2.6.12-1+deb12u3)")
                    && reason.contains("pgha upgrade"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        match plan(
            "package: {name: [haproxy=2.6.12-1+deb12u3, keepalived=1:2.2.7-1+b2], keep_installed: true}",
            &facts,
        ) {
            Plan::Act {
                action: Action::Packages { install, .. },
                summary,
                ..
            } => {
                assert_eq!(install, ["keepalived=1:2.2.7-1+b2"]);
                assert!(summary.contains("kept haproxy"), "{summary}");
            }
            other => panic!("{other:?}"),
        }
        // Without `keep_installed` a pin is installed as given (a playbook's own choice).
        assert!(matches!(
            plan("package: {name: [haproxy=2.6.12-1+deb12u3]}", &facts),
            Plan::Act { .. }
        ));
    }

    #[test]
    fn a_policy_rc_d_left_by_pgha_is_removed_even_with_nothing_to_install() {
        let mut facts = Facts::default();
        facts.packages.insert("etcd-server".into(), "3.4.23".into());
        let file = |contents: &str| FileFact::File {
            owner: "root".into(),
            group: "root".into(),
            mode: 0o755,
            size: contents.len() as u64,
            mtime: 0,
            sha256: Some(crate::ssh::sha256_hex(contents.as_bytes())),
        };
        let yaml = "package: {name: [etcd-server], policy_rc_d: 101}";
        assert!(matches!(plan(yaml, &facts), Plan::NoChange(_)));
        facts
            .files
            .insert(POLICY_RC_D.into(), file(&policy_rc_d_contents(101)));
        match plan(yaml, &facts) {
            Plan::Act {
                action:
                    Action::Packages {
                        install,
                        policy_rc_d_leftover,
                        ..
                    },
                ..
            } => assert!(install.is_empty() && policy_rc_d_leftover),
            other => panic!("{other:?}"),
        }
        // Someone else's policy file is theirs.
        facts
            .files
            .insert(POLICY_RC_D.into(), file("#!/bin/sh\nexit 101\n"));
        assert!(matches!(plan(yaml, &facts), Plan::NoChange(_)));
    }

    #[test]
    fn files_change_on_content_owner_or_mode_only() {
        let content = "hello node1\n";
        let mut facts = Facts::default();
        let yaml = "copy: {dest: /etc/x, content: \"hello {{ node.name }}\\n\", mode: \"0640\"}";
        assert!(
            matches!(plan(yaml, &facts), Plan::Act { ref summary, .. } if summary.contains("new file"))
        );
        facts.files.insert(
            "/etc/x".into(),
            FileFact::File {
                owner: "root".into(),
                group: "root".into(),
                mode: 0o640,
                size: content.len() as u64,
                mtime: 0,
                sha256: Some(sha256_hex(content.as_bytes())),
            },
        );
        assert!(matches!(plan(yaml, &facts), Plan::NoChange(_)));
        facts.files.insert(
            "/etc/x".into(),
            FileFact::File {
                owner: "root".into(),
                group: "root".into(),
                mode: 0o644,
                size: content.len() as u64,
                mtime: 0,
                sha256: Some(sha256_hex(content.as_bytes())),
            },
        );
        assert!(
            matches!(plan(yaml, &facts), Plan::Act { ref summary, .. } if summary.contains("mode 644"))
        );
    }

    #[test]
    fn files_copied_from_the_control_machine_compare_size_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("agent");
        std::fs::write(&local, b"binary v1").unwrap();
        let (size, mtime) = local_size_and_time(local.to_str().unwrap()).unwrap();
        let yaml = format!(
            "copy: {{src: \"{}\", dest: /usr/local/bin/agent, mode: \"0755\"}}",
            local.display()
        );
        let mut probe = Probe::default();
        let (renderer, context) = setup();
        Planner {
            renderer: &renderer,
            context: &context,
        }
        .wants(&module(&yaml), &mut probe)
        .unwrap();
        assert!(probe.quick.contains("/usr/local/bin/agent") && probe.paths.is_empty());
        let on_host = |size: u64, mtime: i64| {
            let mut facts = Facts::default();
            facts.files.insert(
                "/usr/local/bin/agent".into(),
                FileFact::File {
                    owner: "root".into(),
                    group: "root".into(),
                    mode: 0o755,
                    size,
                    mtime,
                    sha256: None,
                },
            );
            facts
        };
        assert!(matches!(
            plan(&yaml, &on_host(size, mtime)),
            Plan::NoChange(_)
        ));
        match plan(&yaml, &on_host(size, mtime - 1)) {
            Plan::Act {
                summary,
                action: Action::WriteFile { upload, .. },
                ..
            } => {
                assert!(summary.contains("size or modification time"), "{summary}");
                assert_eq!(upload.contents, b"binary v1");
                assert_eq!(upload.mtime, Some(mtime));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan(&yaml, &on_host(size + 1, mtime)),
            Plan::Act { .. }
        ));
    }

    #[test]
    fn templates_default_to_their_standard_place() {
        match plan("template: {src: patroni.yml.j2}", &Facts::default()) {
            Plan::Act {
                action: Action::WriteFile { upload, secret, .. },
                ..
            } => {
                assert_eq!(upload.path, "/etc/patroni/patroni.yml");
                assert_eq!(
                    (upload.owner.as_str(), upload.group.as_str(), upload.mode),
                    ("root", "postgres", 0o640)
                );
                assert!(secret);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services_start_enable_and_leave_running_units_alone() {
        let mut facts = Facts::default();
        match plan(
            "service: {name: etcd, state: started, enabled: true, no_block: true}",
            &facts,
        ) {
            Plan::Act {
                action: Action::Systemctl { steps },
                ..
            } => {
                assert_eq!(
                    steps,
                    vec![
                        vec!["enable".to_string(), "etcd".into()],
                        vec!["--no-block".into(), "start".into(), "etcd".into()]
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        facts.units.insert(
            "etcd".into(),
            Unit {
                load_state: "loaded".into(),
                active_state: "active".into(),
                unit_file_state: "enabled".into(),
                active_enter_monotonic: 1,
                needs_daemon_reload: false,
                fragment_path: "/etc/systemd/system/etcd.service".into(),
            },
        );
        assert!(matches!(
            plan(
                "service: {name: etcd.service, state: started, enabled: true}",
                &facts
            ),
            Plan::NoChange(_)
        ));
        assert!(matches!(
            plan("service: {name: etcd, state: restarted}", &facts),
            Plan::Act { .. }
        ));
        assert!(matches!(
            plan("service: {name: etcd, state: stopped}", &facts),
            Plan::Act { .. }
        ));
    }

    #[test]
    fn commands_respect_creates_removes_and_changed_when() {
        let mut facts = Facts::default();
        assert!(matches!(
            plan("command: {cmd: make, creates: /done}", &facts),
            Plan::Act { changes: true, .. }
        ));
        facts.files.insert(
            "/done".into(),
            FileFact::Directory {
                owner: "root".into(),
                group: "root".into(),
                mode: 0o755,
            },
        );
        assert!(matches!(
            plan("command: {cmd: make, creates: /done}", &facts),
            Plan::NoChange(_)
        ));
        assert!(matches!(
            plan("command: {cmd: rm /gone, removes: /gone}", &facts),
            Plan::NoChange(_)
        ));
        assert!(matches!(
            plan("command: {cmd: 'true', changed_when: false}", &facts),
            Plan::Act { changes: false, .. }
        ));
    }

    #[test]
    fn diffs_mask_secrets() {
        let diff = file_diff(
            "/etc/p",
            "password: old-secret\nx: 1\n",
            "password: new-secret\nx: 2\n",
            &["old-secret", "new-secret"],
        );
        assert!(
            diff.contains(" password: ********") && diff.contains("+x: 2"),
            "{diff}"
        );
        assert!(
            !diff.contains("old-secret") && !diff.contains("new-secret"),
            "{diff}"
        );
        let diff = file_diff(
            "/etc/p",
            "password: old-secret\n",
            "password: new-secret\n",
            &["old-secret", "new-secret"],
        );
        assert!(
            diff.contains("only secret values differ") && !diff.contains("new-secret"),
            "{diff}"
        );
    }
}
