//! Playbooks as data: plays of typed tasks, parsed and checked completely (unknown module,
//! unknown argument, bad `serial`, unknown handler, invalid `when:` expression) before any host
//! is contacted, every problem with file:line:column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use crate::error::UserError;
use crate::yaml_position::Positions;

/// The playbooks embedded in the binary, by name.
pub const BUILT_IN: &[(&str, &str)] = &[("deploy", include_str!("../../playbooks/deploy.yml"))];

/// A parsed playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub name: String,
    pub plays: Vec<Play>,
}

#[derive(Debug, Clone)]
pub struct Play {
    pub name: String,
    /// Host pattern: `all`, a role, a node name, a glob (`node*`), `role[0]`, `role[1:]`, or a
    /// comma-separated list of these.
    pub hosts: String,
    pub serial: Vec<Batch>,
    /// A batch fails the rollout when more than this percentage of its hosts failed.
    pub max_fail_percentage: u32,
    pub tasks: Vec<Task>,
    pub handlers: Vec<Task>,
}

/// One `serial` step: a host count or a percentage of the play's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Count(usize),
    Percent(u32),
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub module: Module,
    pub when: Option<String>,
    pub notify: Vec<String>,
    pub register: Option<String>,
    /// Where the task starts, for messages: `file:line`.
    pub place: String,
}

/// A task's module with its arguments. String arguments are minijinja templates rendered per
/// host at plan time.
#[derive(Debug, Clone)]
pub enum Module {
    Package(PackageArgs),
    Template(TemplateArgs),
    Copy(CopyArgs),
    File(FileArgs),
    Service(ServiceArgs),
    Command(CommandArgs),
    WaitFor(WaitForArgs),
    User(UserArgs),
    DefaultData(DefaultDataArgs),
    PatroniConfig(PatroniArgs),
    PatroniRestart(PatroniArgs),
    PatroniWait(PatroniWaitArgs),
    EtcdJoin(EtcdJoinArgs),
    EtcdRestart(EtcdRestartArgs),
    EtcdPromoteLearners(EtcdPromoteLearnersArgs),
}

impl Module {
    pub fn name(&self) -> &'static str {
        match self {
            Module::Package(_) => "package",
            Module::Template(_) => "template",
            Module::Copy(_) => "copy",
            Module::File(_) => "file",
            Module::Service(_) => "service",
            Module::Command(_) => "command",
            Module::WaitFor(_) => "wait_for",
            Module::User(_) => "user",
            Module::DefaultData(_) => "default_data",
            Module::PatroniConfig(_) => "patroni_config",
            Module::PatroniRestart(_) => "patroni_restart",
            Module::PatroniWait(_) => "patroni_wait",
            Module::EtcdJoin(_) => "etcd_join",
            Module::EtcdRestart(_) => "etcd_restart",
            Module::EtcdPromoteLearners(_) => "etcd_promote_learners",
        }
    }
}

const MODULES: &[&str] = &[
    "package",
    "template",
    "copy",
    "file",
    "service",
    "command",
    "wait_for",
    "user",
    "default_data",
    "patroni_config",
    "patroni_restart",
    "patroni_wait",
    "etcd_join",
    "etcd_restart",
    "etcd_promote_learners",
];
const TASK_KEYS: &[&str] = &["name", "when", "notify", "register"];

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}

/// A file mode: `"0640"` (octal text) or a YAML integer written in octal (`0o640`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Mode, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u32),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|mode| *mode <= 0o7777)
                .map(Mode)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "`{text}` is not an octal file mode like \"0640\""
                    ))
                }),
            Raw::Number(number) => Err(serde::de::Error::custom(format!(
                "mode {number} is ambiguous; quote it as octal text, e.g. \"0640\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    #[default]
    Present,
    Absent,
}

/// `package`: apt packages; `name=version` pins a version.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageArgs {
    pub name: OneOrMany,
    #[serde(default)]
    pub state: PackageState,
    /// Exit code for a temporary `/usr/sbin/policy-rc.d` while installing (101 = packages do
    /// not start their services); removed again on every path out.
    pub policy_rc_d: Option<u8>,
    /// A `name=version` whose package is installed at another version is left as it is and
    /// reported (a deploy never upgrades a running cluster: `pgha upgrade` does).
    #[serde(default)]
    pub keep_installed: bool,
}

/// `template`: render one of pgha's templates; destination, owner, group and mode default to
/// the template's standard place (see `pgha render`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateArgs {
    pub src: String,
    /// A command that must accept the new file before it replaces the old one; `%s` is the
    /// path of the new file (e.g. `haproxy -c -f %s`).
    pub validate: Option<String>,
    pub dest: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
}

/// `copy`: a file from literal `content` (a template string) or a local `src` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyArgs {
    pub dest: String,
    pub content: Option<String>,
    pub src: Option<String>,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    pub mode: Option<Mode>,
    /// The file holds a secret (a private key): a diff names it and never shows it.
    #[serde(default)]
    pub secret: bool,
}

fn root() -> String {
    "root".to_string()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    Directory,
    Absent,
}

/// `file`: a directory with owner and mode, or a path that must not exist.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileArgs {
    pub path: String,
    pub state: FileState,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Started,
    Stopped,
    Restarted,
    Reloaded,
}

/// `service`: a systemd unit's state and enablement. `no_block` starts without waiting (etcd
/// members must start together).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceArgs {
    pub name: String,
    pub state: Option<ServiceState>,
    pub enabled: Option<bool>,
    #[serde(default)]
    pub no_block: bool,
}

/// `command`: a shell command. It changes something unless `creates` exists, `removes` is
/// absent, or `changed_when: false` says it only reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandArgs {
    pub cmd: String,
    pub creates: Option<String>,
    pub removes: Option<String>,
    /// `false` for a read-only command, or an expression over `rc`, `stdout` and `stderr`
    /// deciding after the run (e.g. `"'patched' in stdout"`).
    pub changed_when: Option<ChangedWhen>,
    /// Text fed on stdin (a template; secrets belong here, never in `cmd`).
    pub stdin: Option<String>,
}

/// A number or a text, read as text (so it can be a template).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Number(u64),
    Text(String),
}

impl Scalar {
    pub fn as_text(&self) -> String {
        match self {
            Scalar::Number(number) => number.to_string(),
            Scalar::Text(text) => text.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChangedWhen {
    Always(bool),
    Expression(String),
}

/// `wait_for`: poll until a TCP port opens, an HTTP URL answers a status, or a command succeeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitForArgs {
    /// A TCP port (a number, or a template rendering to one).
    pub port: Option<Scalar>,
    pub host: Option<String>,
    pub http: Option<String>,
    pub status: Option<u16>,
    pub command: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: u64,
}

fn default_timeout() -> u64 {
    60
}

/// `user`: a local account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserArgs {
    pub name: String,
    #[serde(default)]
    pub system: bool,
    pub home: Option<String>,
    pub shell: Option<String>,
}

/// `default_data`: remove the data a package's scripts created (PostgreSQL's `main` cluster,
/// etcd's `default` member) only when pgha installed the package, the data is provably empty,
/// or `force` renders to `true`; otherwise fail naming it (see `engine::default_data`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDataArgs {
    pub component: super::default_data::Component,
    /// The PostgreSQL major version (a template); not used for etcd.
    #[serde(default)]
    pub version: String,
    /// A template rendering to `true` or `false`.
    #[serde(default)]
    pub force: String,
}

/// `patroni_config` and `patroni_restart` (see `engine::patroni_tasks`): the local member's
/// REST API, its PostgreSQL port and the REST password, all templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatroniArgs {
    /// `http://host:port` of the local member's REST API.
    pub api: String,
    pub postgres_port: String,
    pub password: String,
    /// `patroni_config` only: the wanted dynamic configuration as JSON.
    #[serde(default)]
    pub settings: String,
    /// `patroni_config` only: seconds to let every member apply a changed PostgreSQL parameter
    /// (one HA loop) before the run goes on.
    #[serde(default)]
    pub settle: String,
}

/// `etcd_join`: a new member of a running etcd cluster joins it as a learner and is promoted
/// (see `engine::etcd_join`). All templates: this member's peer URL, the other members'
/// client URLs (comma-separated) and its data directory (a member with data is in already).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdJoinArgs {
    pub peer_url: String,
    pub endpoints: String,
    pub data_dir: String,
}

/// `etcd_restart`: restart the member if it runs an older configuration than the one on disk
/// (see `engine::etcd_restart`). Templates: the configuration file and the unit file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdRestartArgs {
    pub config: String,
    pub unit: String,
}

/// `etcd_promote_learners`: promote every learner once it is in sync (see
/// `engine::etcd_join::promote_learners`). Template: the local member's client URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdPromoteLearnersArgs {
    pub endpoint: String,
}

/// `patroni_wait`: wait until the cluster, as the local member's API reports it, has a running
/// leader (`until: leader`) or `member` leads or streams (`until: member_streams`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatroniWaitArgs {
    pub api: String,
    pub until: WaitUntil,
    #[serde(default)]
    pub member: String,
    #[serde(default = "default_timeout")]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitUntil {
    Leader,
    MemberStreams,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlay {
    name: String,
    hosts: String,
    serial: Option<Value>,
    max_fail_percentage: Option<u32>,
    #[serde(default)]
    tasks: Vec<Value>,
    #[serde(default)]
    handlers: Vec<Value>,
}

impl Playbook {
    /// A built-in playbook by name, or from `dir` when it holds `<name>.yml`, or a file path.
    pub fn load(reference: &str, dir: Option<&Path>) -> anyhow::Result<Playbook> {
        let as_path = PathBuf::from(reference);
        if reference.ends_with(".yml") || reference.ends_with(".yaml") || reference.contains('/') {
            let text = std::fs::read_to_string(&as_path).map_err(|error| {
                UserError(format!("cannot read playbook `{reference}`: {error}\nhint: give a playbook file or a built-in name ({})", built_in_names()))
            })?;
            return Ok(Playbook::parse(&as_path.display().to_string(), &text)?);
        }
        if let Some(dir) = dir {
            let path = dir.join(format!("{reference}.yml"));
            if path.exists() {
                let text = std::fs::read_to_string(&path)?;
                return Ok(Playbook::parse(&path.display().to_string(), &text)?);
            }
        }
        match BUILT_IN.iter().find(|(name, _)| *name == reference) {
            Some((name, text)) => Ok(Playbook::parse(&format!("playbooks/{name}.yml"), text)?),
            None => Err(UserError(format!(
                "no playbook named `{reference}`\nhint: built-in playbooks: {}; or give a path to a `.yml` file",
                built_in_names()
            ))
            .into()),
        }
    }

    /// Parse and check a playbook; `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<Playbook, UserError> {
        let positions = Positions::index(text);
        let place = |path: &str| {
            let position = positions.find(path);
            format!("{file}:{}:{}", position.line, position.column)
        };
        let raw: Vec<RawPlay> = serde_yaml::from_str(text).map_err(|error| {
            let location = error
                .location()
                .map(|location| format!("{file}:{}:{}", location.line(), location.column()))
                .unwrap_or_else(|| file.to_string());
            let message = error.to_string();
            let message = message.rsplit_once(" at line ").map(|(head, _)| head.to_string()).unwrap_or(message);
            UserError(format!("{location}: {message}\nhint: a playbook is a list of plays with `name`, `hosts`, `tasks`"))
        })?;
        let mut problems = Vec::new();
        let mut plays = Vec::new();
        for (play_index, raw_play) in raw.into_iter().enumerate() {
            let at = format!("[{play_index}]");
            let serial = match &raw_play.serial {
                None => vec![Batch::Percent(100)],
                Some(value) => parse_serial(value).unwrap_or_else(|message| {
                    problems.push(format!("{}: {message}\n  hint: `serial: 1`, `serial: \"50%\"` or `serial: [1, \"50%\"]`", place(&format!("{at}.serial"))));
                    vec![Batch::Percent(100)]
                }),
            };
            let parse_list =
                |key: &str, values: &[Value], problems: &mut Vec<String>| -> Vec<Task> {
                    values
                        .iter()
                        .enumerate()
                        .filter_map(|(index, value)| {
                            let path = format!("{at}.{key}[{index}]");
                            parse_task(value, &path, &place)
                                .map_err(|message| problems.push(message))
                                .ok()
                        })
                        .collect()
                };
            let tasks = parse_list("tasks", &raw_play.tasks, &mut problems);
            let handlers = parse_list("handlers", &raw_play.handlers, &mut problems);
            for (index, task) in tasks.iter().enumerate() {
                for notified in &task.notify {
                    if !handlers.iter().any(|handler| &handler.name == notified) {
                        problems.push(format!(
                            "{}: task `{}` notifies `{notified}`, which is not a handler of this play\n  hint: handlers: {}",
                            place(&format!("{at}.tasks[{index}].notify")),
                            task.name,
                            handlers.iter().map(|handler| format!("`{}`", handler.name)).collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
            plays.push(Play {
                name: raw_play.name,
                hosts: raw_play.hosts,
                serial,
                max_fail_percentage: raw_play.max_fail_percentage.unwrap_or(0),
                tasks,
                handlers,
            });
        }
        if problems.is_empty() {
            Ok(Playbook {
                name: file.to_string(),
                plays,
            })
        } else {
            Err(UserError(format!(
                "playbook `{file}` has {} problem(s)\n{}",
                problems.len(),
                problems.join("\n")
            )))
        }
    }
}

fn built_in_names() -> String {
    BUILT_IN
        .iter()
        .map(|(name, _)| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_batch(value: &Value) -> Result<Batch, String> {
    match value {
        Value::Number(number) => match number.as_u64() {
            Some(count) if count > 0 => Ok(Batch::Count(count as usize)),
            _ => Err(format!("`{number:?}` is not a positive host count")),
        },
        Value::String(text) => text
            .strip_suffix('%')
            .and_then(|percent| percent.trim().parse::<u32>().ok())
            .filter(|percent| (1..=100).contains(percent))
            .map(Batch::Percent)
            .ok_or_else(|| format!("`{text}` is not a percentage between 1% and 100%")),
        other => Err(format!("`{other:?}` is not a batch size")),
    }
}

fn parse_serial(value: &Value) -> Result<Vec<Batch>, String> {
    match value {
        Value::Sequence(items) if !items.is_empty() => items.iter().map(parse_batch).collect(),
        Value::Sequence(_) => Err("`serial` is an empty list".to_string()),
        single => Ok(vec![parse_batch(single)?]),
    }
}

fn parse_task(value: &Value, path: &str, place: &dyn Fn(&str) -> String) -> Result<Task, String> {
    let Value::Mapping(map) = value else {
        return Err(format!(
            "{}: a task must be a mapping with `name` and one module",
            place(path)
        ));
    };
    let mut name = None;
    let mut when = None;
    let mut notify = Vec::new();
    let mut register = None;
    let mut module = None;
    for (key, arguments) in map {
        let Some(key) = key.as_str() else {
            return Err(format!("{}: task keys must be text", place(path)));
        };
        let key_path = format!("{path}.{key}");
        match key {
            "name" => name = arguments.as_str().map(str::to_string),
            "when" => {
                let expression = match arguments {
                    Value::String(text) => text.clone(),
                    Value::Bool(flag) => flag.to_string(),
                    _ => {
                        return Err(format!(
                            "{}: `when` must be an expression string",
                            place(&key_path)
                        ))
                    }
                };
                let env = minijinja::Environment::new();
                env.compile_expression(&expression).map_err(|error| {
                    format!(
                        "{}: `when: {expression}` is not a valid expression: {error}",
                        place(&key_path)
                    )
                })?;
                when = Some(expression);
            }
            "notify" => {
                notify = serde_yaml::from_value::<OneOrMany>(arguments.clone())
                    .map_err(|_| {
                        format!(
                            "{}: `notify` takes a handler name or a list of them",
                            place(&key_path)
                        )
                    })?
                    .to_vec()
            }
            "register" => register = arguments.as_str().map(str::to_string),
            module_name if MODULES.contains(&module_name) => {
                if module.is_some() {
                    return Err(format!(
                        "{}: a task runs exactly one module; `{module_name}` is a second one",
                        place(&key_path)
                    ));
                }
                let parsed = parse_module(module_name, arguments.clone()).map_err(|message| {
                    format!("{}: `{module_name}`: {message}", place(&key_path))
                })?;
                module = Some(parsed);
            }
            unknown => {
                return Err(format!(
                "{}: unknown module or task key `{unknown}`\n  hint: modules: {}; task keys: {}",
                place(&key_path),
                MODULES.join(", "),
                TASK_KEYS.join(", ")
            ))
            }
        }
    }
    let Some(module) = module else {
        return Err(format!(
            "{}: the task has no module\n  hint: add one of: {}",
            place(path),
            MODULES.join(", ")
        ));
    };
    let name = name.unwrap_or_else(|| module.name().to_string());
    Ok(Task {
        name,
        module,
        when,
        notify,
        register,
        place: place(path),
    })
}

fn parse_module(name: &str, arguments: Value) -> Result<Module, String> {
    fn args<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
        serde_yaml::from_value(value).map_err(|error| error.to_string())
    }
    let module = match name {
        "package" => Module::Package(args(arguments)?),
        "template" => Module::Template(args(arguments)?),
        "copy" => {
            let copy: CopyArgs = args(arguments)?;
            if copy.content.is_some() == copy.src.is_some() {
                return Err("give exactly one of `content` and `src`".to_string());
            }
            Module::Copy(copy)
        }
        "file" => Module::File(args(arguments)?),
        "service" => {
            let service: ServiceArgs = args(arguments)?;
            if service.state.is_none() && service.enabled.is_none() {
                return Err("give `state`, `enabled` or both".to_string());
            }
            Module::Service(service)
        }
        "command" => match arguments {
            Value::String(cmd) => Module::Command(CommandArgs {
                cmd,
                creates: None,
                removes: None,
                changed_when: None,
                stdin: None,
            }),
            other => Module::Command(args(other)?),
        },
        "wait_for" => {
            let wait: WaitForArgs = args(arguments)?;
            let kinds = [
                wait.port.is_some(),
                wait.http.is_some(),
                wait.command.is_some(),
            ]
            .iter()
            .filter(|set| **set)
            .count();
            if kinds != 1 {
                return Err("give exactly one of `port`, `http` and `command`".to_string());
            }
            Module::WaitFor(wait)
        }
        "user" => Module::User(args(arguments)?),
        "default_data" => Module::DefaultData(args(arguments)?),
        "patroni_config" => {
            let patroni: PatroniArgs = args(arguments)?;
            if patroni.settings.is_empty() {
                return Err(
                    "`patroni_config` needs `settings` (the dynamic configuration as JSON)"
                        .to_string(),
                );
            }
            Module::PatroniConfig(patroni)
        }
        "patroni_restart" => Module::PatroniRestart(args(arguments)?),
        "etcd_join" => Module::EtcdJoin(args(arguments)?),
        "etcd_restart" => Module::EtcdRestart(args(arguments)?),
        "etcd_promote_learners" => Module::EtcdPromoteLearners(args(arguments)?),
        "patroni_wait" => {
            let wait: PatroniWaitArgs = args(arguments)?;
            if wait.until == WaitUntil::MemberStreams && wait.member.is_empty() {
                return Err("`until: member_streams` needs `member`".to_string());
            }
            Module::PatroniWait(wait)
        }
        _ => unreachable!("module names are checked by the caller"),
    };
    Ok(module)
}

/// Settings a run needs beyond the playbook: values available to every template expression.
pub type Vars = BTreeMap<String, minijinja::Value>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_playbooks_parse() {
        for (name, text) in BUILT_IN {
            Playbook::parse(name, text).unwrap_or_else(|error| panic!("{name}: {error}"));
        }
    }

    #[test]
    fn parses_tasks_handlers_and_serial() {
        let text = "\
- name: web
  hosts: haproxy
  serial: [1, \"50%\"]
  max_fail_percentage: 30
  tasks:
    - name: config
      template: {src: haproxy.cfg.j2}
      notify: reload haproxy
    - command: {cmd: 'true', changed_when: false}
      when: node.name == \"node1\"
  handlers:
    - name: reload haproxy
      service: {name: haproxy, state: reloaded}
";
        let playbook = Playbook::parse("p.yml", text).unwrap();
        let play = &playbook.plays[0];
        assert_eq!(play.serial, vec![Batch::Count(1), Batch::Percent(50)]);
        assert_eq!(play.max_fail_percentage, 30);
        assert_eq!(play.tasks[0].notify, vec!["reload haproxy"]);
        assert_eq!(play.tasks[1].name, "command");
        assert!(
            play.tasks[1].place.starts_with("p.yml:9:"),
            "{}",
            play.tasks[1].place
        );
        assert!(matches!(play.handlers[0].module, Module::Service(_)));
    }

    fn error(text: &str) -> String {
        Playbook::parse("p.yml", text).unwrap_err().0
    }

    #[test]
    fn unknown_modules_and_arguments_name_their_line() {
        let message = error("- name: x\n  hosts: all\n  tasks:\n    - name: t\n      shell: ls\n");
        assert!(
            message.contains("p.yml:5:14: unknown module or task key `shell`"),
            "{message}"
        );
        let message = error("- name: x\n  hosts: all\n  tasks:\n    - name: t\n      package: {name: etcd, version: 1}\n");
        assert!(
            message.contains("p.yml:5:16: `package`: unknown field `version`"),
            "{message}"
        );
        let message = error("- name: x\n  hosts: all\n  tasks:\n    - name: t\n      file: {path: /x, state: directory, mode: 640}\n");
        assert!(message.contains("ambiguous"), "{message}");
    }

    #[test]
    fn bad_serial_notify_and_when_are_refused() {
        let message = error("- name: x\n  hosts: all\n  serial: \"150%\"\n  tasks:\n    - {name: t, command: 'true', notify: nope, when: 'a =='}\n");
        assert!(
            message.contains("p.yml:3:11: `150%` is not a percentage"),
            "{message}"
        );
        assert!(message.contains("not a valid expression"), "{message}");
        let message = error(
            "- name: x\n  hosts: all\n  tasks:\n    - {name: t, command: 'true', notify: nope}\n",
        );
        assert!(
            message.contains("notifies `nope`, which is not a handler"),
            "{message}"
        );
    }

    #[test]
    fn modes_are_octal_text() {
        let mode: Mode = serde_yaml::from_str("\"0640\"").unwrap();
        assert_eq!(mode, Mode(0o640));
        assert!(serde_yaml::from_str::<Mode>("\"0999\"").is_err());
    }
}
