//! Templates and the per-node files rendered from them.
//!
//! One minijinja environment with strict undefined behaviour and no auto-escaping; the
//! templates in `templates/` are embedded in the binary, and a `--templates DIR` override
//! replaces any of them by name. This module renders text; it never talks to a host.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use crate::error::UserError;
use crate::inventory::{Inventory, Node, Parameter, Role, Secrets, SyncMode};

/// The embedded templates, by name.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "etcd.conf.yml.j2",
        include_str!("../templates/etcd.conf.yml.j2"),
    ),
    (
        "etcd.service.j2",
        include_str!("../templates/etcd.service.j2"),
    ),
    (
        "patroni.yml.j2",
        include_str!("../templates/patroni.yml.j2"),
    ),
    (
        "patroni.service.j2",
        include_str!("../templates/patroni.service.j2"),
    ),
    (
        "haproxy.cfg.j2",
        include_str!("../templates/haproxy.cfg.j2"),
    ),
    (
        "haproxy-reload.conf.j2",
        include_str!("../templates/haproxy-reload.conf.j2"),
    ),
    (
        "haproxy-hold.lua.j2",
        include_str!("../templates/haproxy-hold.lua.j2"),
    ),
    (
        "keepalived.conf.j2",
        include_str!("../templates/keepalived.conf.j2"),
    ),
    (
        "check-writes.sh.j2",
        include_str!("../templates/check-writes.sh.j2"),
    ),
    ("agent.yml.j2", include_str!("../templates/agent.yml.j2")),
    (
        "pgha-agent.service.j2",
        include_str!("../templates/pgha-agent.service.j2"),
    ),
];

/// One file destined for a node.
#[derive(Debug, Clone, Serialize)]
pub struct RenderedFile {
    /// The template it came from.
    pub template: &'static str,
    /// Absolute path on the node.
    pub path: &'static str,
    pub contents: String,
    pub owner: &'static str,
    pub group: &'static str,
    pub mode: u32,
    /// Whether the contents carry passwords (masked in diffs, never logged).
    pub secret: bool,
}

/// Where each template goes, with its owner, group and mode, and which nodes get it.
struct Destination {
    template: &'static str,
    path: &'static str,
    owner: &'static str,
    group: &'static str,
    mode: u32,
    secret: bool,
    wanted: fn(&Inventory, &Node) -> bool,
}

const DESTINATIONS: &[Destination] = &[
    Destination {
        template: "etcd.conf.yml.j2",
        path: "/etc/etcd/pgha.conf.yml",
        owner: "root",
        group: "etcd",
        mode: 0o640,
        secret: false,
        wanted: |_, node| node.has(Role::Etcd),
    },
    Destination {
        template: "etcd.service.j2",
        path: "/etc/systemd/system/etcd.service",
        owner: "root",
        group: "root",
        mode: 0o644,
        secret: false,
        wanted: |_, node| node.has(Role::Etcd),
    },
    Destination {
        template: "patroni.yml.j2",
        path: "/etc/patroni/patroni.yml",
        // Patroni reads it; only root may change it (it names commands Patroni runs).
        owner: "root",
        group: "postgres",
        mode: 0o640,
        secret: true,
        wanted: |_, node| node.has(Role::Postgres),
    },
    Destination {
        template: "patroni.service.j2",
        path: "/etc/systemd/system/patroni.service",
        owner: "root",
        group: "root",
        mode: 0o644,
        secret: false,
        wanted: |_, node| node.has(Role::Postgres),
    },
    Destination {
        template: "haproxy.cfg.j2",
        path: "/etc/haproxy/haproxy.cfg",
        owner: "root",
        group: "haproxy",
        mode: 0o640,
        secret: false,
        wanted: |_, node| node.has(Role::Haproxy),
    },
    Destination {
        template: "haproxy-hold.lua.j2",
        path: "/etc/haproxy/pgha-hold.lua",
        owner: "root",
        group: "haproxy",
        mode: 0o644,
        secret: false,
        wanted: |inventory, node| {
            node.has(Role::Haproxy) && inventory.cluster.haproxy.hold_connections_ms > 0
        },
    },
    Destination {
        template: "haproxy-reload.conf.j2",
        path: "/etc/systemd/system/haproxy.service.d/pgha.conf",
        owner: "root",
        group: "root",
        mode: 0o644,
        secret: false,
        wanted: |_, node| node.has(Role::Haproxy),
    },
    Destination {
        template: "keepalived.conf.j2",
        path: "/etc/keepalived/keepalived.conf",
        owner: "root",
        group: "root",
        mode: 0o640,
        secret: false,
        wanted: |inventory, node| inventory.cluster.vip.is_some() && node.has(Role::Keepalived),
    },
    Destination {
        template: "check-writes.sh.j2",
        path: "/usr/local/lib/pgha/check-writes",
        owner: "root",
        group: "root",
        mode: 0o755,
        secret: false,
        wanted: |inventory, node| inventory.cluster.vip.is_some() && node.has(Role::Keepalived),
    },
    Destination {
        template: "agent.yml.j2",
        path: "/etc/pgha/agent.yml",
        owner: "root",
        group: "root",
        mode: 0o640,
        secret: false,
        wanted: |_, _| true,
    },
    Destination {
        template: "pgha-agent.service.j2",
        path: "/etc/systemd/system/pgha-agent.service",
        owner: "root",
        group: "root",
        mode: 0o644,
        secret: false,
        wanted: |_, _| true,
    },
];

/// The standard place of a template's output: (path, owner, group, mode, secret).
pub fn destination(
    template: &str,
) -> Option<(&'static str, &'static str, &'static str, u32, bool)> {
    DESTINATIONS
        .iter()
        .find(|destination| destination.template == template)
        .map(|destination| {
            (
                destination.path,
                destination.owner,
                destination.group,
                destination.mode,
                destination.secret,
            )
        })
}

/// The template environment.
pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    /// The embedded templates, each replaced by `DIR/<name>` when `override_dir` has it.
    pub fn new(override_dir: Option<&Path>) -> anyhow::Result<Renderer> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_keep_trailing_newline(true);
        env.add_filter("url_host", url_host);
        env.add_function("host_prefix", host_prefix);
        if let Some(dir) = override_dir {
            if !dir.is_dir() {
                return Err(UserError(format!(
                    "template folder `{}` does not exist\nhint: `--templates` takes a folder of `*.j2` files named like the built-in ones",
                    dir.display()
                ))
                .into());
            }
        }
        for (name, embedded) in TEMPLATES {
            let source = match override_dir
                .map(|dir| dir.join(name))
                .filter(|path| path.exists())
            {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read template `{}`", path.display()))?,
                None => (*embedded).to_string(),
            };
            env.add_template_owned(*name, source)
                .map_err(|error| template_error(override_dir, &error))?;
        }
        Ok(Renderer { env })
    }

    /// Render template `name` with `context`.
    pub fn render_template(
        &self,
        name: &str,
        context: &minijinja::Value,
    ) -> anyhow::Result<String> {
        let template = self.env.get_template(name).map_err(|_| {
            UserError(format!(
                "no template named `{name}`\nhint: templates: {}",
                TEMPLATES
                    .iter()
                    .map(|(name, _)| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        template
            .render(context)
            .map_err(|error| template_error(None, &error))
    }

    /// Render a template string (a task argument) with `context`.
    pub fn render_str(&self, text: &str, context: &minijinja::Value) -> anyhow::Result<String> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(text.to_string());
        }
        self.env
            .render_str(text, context)
            .map_err(|error| UserError(format!("cannot render `{text}`: {error}")).into())
    }

    /// Evaluate a `when:` expression with `context`.
    pub fn evaluate(&self, expression: &str, context: &minijinja::Value) -> anyhow::Result<bool> {
        let compiled = self.env.compile_expression(expression)?;
        let value = compiled
            .eval(context)
            .map_err(|error| UserError(format!("cannot evaluate `when: {expression}`: {error}")))?;
        Ok(value.is_true())
    }

    /// Every file `node` needs, rendered.
    pub fn render_node(
        &self,
        inventory: &Inventory,
        secrets: &Secrets,
        node: &Node,
    ) -> anyhow::Result<Vec<RenderedFile>> {
        let context = context(inventory, secrets, node);
        let mut files = Vec::new();
        for destination in DESTINATIONS
            .iter()
            .filter(|destination| (destination.wanted)(inventory, node))
        {
            let template = self.env.get_template(destination.template)?;
            let contents = template
                .render(&context)
                .map_err(|error| template_error(None, &error))
                .with_context(|| {
                    format!(
                        "failed to render `{}` for `{}`",
                        destination.template, node.name
                    )
                })?;
            files.push(RenderedFile {
                template: destination.template,
                path: destination.path,
                contents,
                owner: destination.owner,
                group: destination.group,
                mode: destination.mode,
                secret: destination.secret,
            });
        }
        Ok(files)
    }
}

/// A template problem as a user error naming the template and line.
fn template_error(dir: Option<&Path>, error: &minijinja::Error) -> anyhow::Error {
    let name = error.name().unwrap_or("template");
    let place = match (dir, error.line()) {
        (Some(dir), Some(line)) => format!("{}:{line}", dir.join(name).display()),
        (None, Some(line)) => format!("{name}:{line}"),
        (_, None) => name.to_string(),
    };
    UserError(format!(
        "{place}: {}\nhint: templates use Jinja2 syntax; every variable must exist (see `pgha inventory show`)",
        error.detail().unwrap_or(&error.kind().to_string())
    ))
    .into()
}

/// `address` as the host part of a URL: `[addr]` for IPv6, IPv4 unchanged.
pub fn url_host_of(address: &IpAddr) -> String {
    url_host(address.to_string())
}

/// `[addr]` for IPv6 so `host:port` stays unambiguous; IPv4 unchanged.
fn url_host(address: String) -> String {
    if address.contains(':') {
        format!("[{address}]")
    } else {
        address
    }
}

/// The prefix length of a single-host network for `address`.
fn host_prefix(address: String) -> u8 {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => 128,
        _ => 32,
    }
}

#[derive(Serialize)]
struct Keepalived<'a> {
    router_id: u8,
    priority: u32,
    peers: Vec<&'a Node>,
}

/// VRRP router id from the cluster name, so clusters sharing a network do not collide by
/// default (1..=255).
pub fn vrrp_router_id(cluster_name: &str) -> u8 {
    let hash = cluster_name.bytes().fold(2166136261u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(16777619)
    });
    (hash % 255) as u8 + 1
}

/// PostgreSQL parameters pgha needs, then the user's (validation refuses overrides of the
/// managed ones).
fn postgresql_parameters(inventory: &Inventory) -> BTreeMap<String, Parameter> {
    let mut parameters: BTreeMap<String, Parameter> = [
        ("wal_level", Parameter::Text("replica".into())),
        ("hot_standby", Parameter::Text("on".into())),
        ("wal_log_hints", Parameter::Text("on".into())),
        (
            "password_encryption",
            Parameter::Text("scram-sha-256".into()),
        ),
        ("max_connections", Parameter::Integer(100)),
        ("max_wal_senders", Parameter::Integer(10)),
        ("max_replication_slots", Parameter::Integer(10)),
        ("wal_keep_size", Parameter::Text("256MB".into())),
        // A connection cut while it starts (a partition) leaves its backend waiting this long
        // for the client, and a fast shutdown waits for that backend: with PostgreSQL's 60 s,
        // a primary demoted by a partition came back as a replica 60 s after the heal.
        ("authentication_timeout", Parameter::Text("10s".into())),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    for (name, value) in &inventory.cluster.postgresql.parameters {
        parameters.insert(name.clone(), value.clone());
    }
    parameters
}

/// Patroni's dynamic configuration as the inventory wants it (what `PATCH /config` converges).
pub fn patroni_dynamic(inventory: &Inventory) -> serde_json::Value {
    let cluster = &inventory.cluster;
    serde_json::json!({
        "ttl": cluster.patroni.ttl,
        "loop_wait": cluster.patroni.loop_wait,
        "retry_timeout": cluster.patroni.retry_timeout,
        "maximum_lag_on_failover": cluster.patroni.maximum_lag_on_failover,
        "primary_start_timeout": cluster.patroni.primary_start_timeout,
        "synchronous_mode": cluster.synchronous_mode != SyncMode::Off,
        "synchronous_mode_strict": cluster.synchronous_mode == SyncMode::Strict,
        "postgresql": {"parameters": postgresql_parameters(inventory)},
    })
}

/// The Debian packages `node` needs for its roles, as `name=version` where the inventory pins
/// the component's version.
pub fn packages(inventory: &Inventory, node: &Node) -> Vec<String> {
    let major = inventory.cluster.postgres_version;
    let mut names = Vec::new();
    if node.has(Role::Etcd) {
        names.extend(["etcd-server".to_string(), "etcd-client".to_string()]);
    }
    if node.has(Role::Postgres) {
        names.push(format!("postgresql-{major}"));
        if inventory.cluster.versions.postgresql.is_some() {
            names.push(format!("postgresql-client-{major}"));
        }
        names.push("python3-venv".to_string());
    }
    if node.has(Role::Haproxy) {
        names.push("haproxy".to_string());
    }
    if node.has(Role::Keepalived) && inventory.cluster.vip.is_some() {
        names.push("keepalived".to_string());
    }
    names
        .into_iter()
        .map(
            |name| match inventory.cluster.versions.for_package(&name, major) {
                Some(version) => format!("{name}={version}"),
                None => name,
            },
        )
        .collect()
}

/// The etcd members in inventory order, but `node`'s own member first when it has one: the
/// member its clients should try first, since it is alive whenever they are.
fn etcd_nodes_local_first<'a>(inventory: &'a Inventory, node: &Node) -> Vec<&'a Node> {
    let (mut own, others): (Vec<&Node>, Vec<&Node>) = inventory
        .nodes_with(Role::Etcd)
        .partition(|member| member.name == node.name);
    own.extend(others);
    own
}

/// The variables every template and task expression sees for `node`.
pub fn context(inventory: &Inventory, secrets: &Secrets, node: &Node) -> minijinja::Value {
    let keepalived_nodes: Vec<&Node> = inventory.nodes_with(Role::Keepalived).collect();
    let rank = keepalived_nodes
        .iter()
        .position(|other| other.name == node.name)
        .unwrap_or(0);
    let keepalived = Keepalived {
        router_id: vrrp_router_id(&inventory.cluster.name),
        // High priorities: a backup takes over a VIP given away (a priority-0 advertisement)
        // after its skew time, (256 - priority) / 256 s. At 140 that was 0.45 s without a VIP
        // holder, and new connections to the VIP failed (an upgrade's VIP move); at 253 it is
        // 12 ms. 255 is reserved for the address owner.
        priority: 254u32.saturating_sub(rank as u32).max(1),
        peers: keepalived_nodes
            .iter()
            .copied()
            .filter(|other| other.name != node.name)
            .collect(),
    };
    minijinja::context! {
        cluster => &inventory.cluster,
        node => node,
        nodes => &inventory.nodes,
        etcd_nodes => inventory.nodes_with(Role::Etcd).collect::<Vec<_>>(),
        etcd_nodes_local_first => etcd_nodes_local_first(inventory, node),
        postgres_nodes => inventory.nodes_with(Role::Postgres).collect::<Vec<_>>(),
        keepalived => keepalived,
        postgresql_parameters => postgresql_parameters(inventory),
        patroni_dynamic => patroni_dynamic(inventory),
        packages => packages(inventory, node),
        vip_address => inventory.cluster.vip.map(|vip| vip.address.to_string()),
        // The nodes' release, named by the PostgreSQL major (the preflight holds them to it).
        debian => crate::debian::Release::for_postgres(inventory.cluster.postgres_version),
        secrets => secrets,
    }
}

/// Render every selected node's files into `out/<node>/<path on the node>`; returns the
/// files written.
pub fn render_to_dir(
    inventory: &Inventory,
    secrets: &Secrets,
    renderer: &Renderer,
    out: &Path,
    only_node: Option<&str>,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    if let Some(name) = only_node {
        if inventory.node(name).is_none() {
            let known: Vec<&str> = inventory
                .nodes
                .iter()
                .map(|node| node.name.as_str())
                .collect();
            return Err(UserError(format!(
                "node `{name}` is not in inventory `{}`\nhint: known nodes: {}",
                inventory.path.display(),
                known.join(", ")
            ))
            .into());
        }
    }
    let mut written = Vec::new();
    for node in inventory
        .nodes
        .iter()
        .filter(|node| only_node.is_none_or(|name| node.name == name))
    {
        for file in renderer.render_node(inventory, secrets, node)? {
            let target = out.join(&node.name).join(file.path.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create `{}`", parent.display()))?;
            }
            std::fs::write(&target, &file.contents)
                .with_context(|| format!("cannot write `{}`", target.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))?;
            written.push(target);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets {
            superuser_password: "test-superuser-secret".into(),
            replication_password: "test-replication-secret".into(),
            rewind_password: "test-rewind-secret".into(),
            restapi_password: "test-restapi-secret".into(),
        }
    }

    fn inventory(file: &str) -> Inventory {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("inventories")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        Inventory::parse(Path::new(file), &text).unwrap()
    }

    fn snapshot_all(file: &str) {
        let inventory = inventory(file);
        let renderer = Renderer::new(None).unwrap();
        for node in &inventory.nodes {
            let mut all = String::new();
            for rendered in renderer.render_node(&inventory, &secrets(), node).unwrap() {
                all.push_str(&format!(
                    "===== {} ({}:{} {:o}) =====\n{}",
                    rendered.path, rendered.owner, rendered.group, rendered.mode, rendered.contents
                ));
            }
            let name = format!("{}-{}", file.trim_end_matches(".yml"), node.name);
            insta::assert_snapshot!(name, all);
        }
    }

    #[test]
    fn lab_inventory_renders() {
        snapshot_all("lab.yml");
    }

    #[test]
    fn example_inventory_renders() {
        snapshot_all("example.yml");
    }

    #[test]
    fn patroni_nodes_watch_the_leader_and_get_the_fast_path_when_turned_on() {
        let mut inventory = inventory("lab.yml");
        let renderer = Renderer::new(None).unwrap();
        let agent_yml = |inventory: &Inventory| {
            renderer
                .render_node(inventory, &secrets(), &inventory.nodes[1])
                .unwrap()
                .into_iter()
                .find(|file| file.path == "/etc/pgha/agent.yml")
                .unwrap()
                .contents
        };
        let parse = |text: &str| serde_yaml::from_str::<serde_yaml::Value>(text).unwrap();
        // Every Patroni node watches the others, with or without the fast path.
        let text = agent_yml(&inventory);
        assert!(!text.contains("fast_path"), "{text}");
        let watch = &parse(&text)["leader_watch"];
        assert_eq!(watch["stale_after_ms"], 6000, "{text}");
        let names: Vec<&str> = watch["members"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|member| member["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["node1", "node3"]);
        assert_eq!(watch["members"][0]["etcd"], "https://10.231.0.11:2379");
        inventory.cluster.corroborated_failover = true;
        let text = agent_yml(&inventory);
        // node2 judges node1 and node3; both others must agree (a majority of two).
        assert_eq!(parse(&text)["fast_path"]["votes_needed"], 2, "{text}");
    }

    #[test]
    fn a_node_without_roles_gets_only_its_files() {
        let mut inventory = inventory("lab.yml");
        inventory.nodes[2].roles = [Role::Etcd].into_iter().collect();
        let renderer = Renderer::new(None).unwrap();
        let paths: Vec<&str> = renderer
            .render_node(&inventory, &secrets(), &inventory.nodes[2])
            .unwrap()
            .iter()
            .map(|file| file.path)
            .collect();
        assert_eq!(
            paths,
            [
                "/etc/etcd/pgha.conf.yml",
                "/etc/systemd/system/etcd.service",
                "/etc/pgha/agent.yml",
                "/etc/systemd/system/pgha-agent.service"
            ]
        );
    }

    #[test]
    fn patroni_asks_its_own_etcd_member_first() {
        let mut inventory = inventory("lab.yml");
        let renderer = Renderer::new(None).unwrap();
        let etcd3 = |inventory: &Inventory, node: usize| -> serde_yaml::Value {
            let text = renderer
                .render_node(inventory, &secrets(), &inventory.nodes[node])
                .unwrap()
                .into_iter()
                .find(|file| file.path == "/etc/patroni/patroni.yml")
                .unwrap()
                .contents;
            let parsed: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            parsed["etcd3"].clone()
        };
        let hosts = |etcd3: &serde_yaml::Value| -> Vec<String> {
            let hosts = etcd3["hosts"].as_sequence().unwrap();
            hosts
                .iter()
                .map(|host| host.as_str().unwrap().to_string())
                .collect()
        };
        let node2 = etcd3(&inventory, 1);
        assert_eq!(node2["use_proxies"], true);
        assert_eq!(
            hosts(&node2),
            ["10.231.0.12:2379", "10.231.0.11:2379", "10.231.0.13:2379"]
        );
        // A database node without an etcd member keeps Patroni's own choice among the members.
        inventory.nodes[2].roles.remove(&Role::Etcd);
        let node3 = etcd3(&inventory, 2);
        assert!(node3.get("use_proxies").is_none(), "{node3:?}");
        assert_eq!(hosts(&node3), ["10.231.0.11:2379", "10.231.0.12:2379"]);
    }

    #[test]
    fn override_templates_replace_by_name_and_report_errors_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("haproxy.cfg.j2"),
            "global\n# {{ cluster.name }}\n",
        )
        .unwrap();
        let inventory = inventory("lab.yml");
        let renderer = Renderer::new(Some(dir.path())).unwrap();
        let files = renderer
            .render_node(&inventory, &secrets(), &inventory.nodes[0])
            .unwrap();
        let haproxy = files
            .iter()
            .find(|file| file.template == "haproxy.cfg.j2")
            .unwrap();
        assert_eq!(haproxy.contents, "global\n# lab\n");

        std::fs::write(dir.path().join("haproxy.cfg.j2"), "ok\n{% if %}\n").unwrap();
        let error = Renderer::new(Some(dir.path())).err().unwrap().to_string();
        assert!(error.contains("haproxy.cfg.j2:2:"), "{error}");

        std::fs::write(
            dir.path().join("haproxy.cfg.j2"),
            "ok\n{{ cluster.nope }}\n",
        )
        .unwrap();
        let renderer = Renderer::new(Some(dir.path())).unwrap();
        let error = format!(
            "{:#}",
            renderer
                .render_node(&inventory, &secrets(), &inventory.nodes[0])
                .unwrap_err()
        );
        assert!(
            error.contains("haproxy.cfg.j2:2") && error.contains("`haproxy.cfg.j2` for `node1`"),
            "{error}"
        );
    }

    #[test]
    fn router_ids_are_in_range_and_stable() {
        assert_eq!(vrrp_router_id("lab"), vrrp_router_id("lab"));
        for name in ["a", "lab", "orders", "x-very-long-cluster-name"] {
            assert!((1..=255).contains(&vrrp_router_id(name)));
        }
    }
}
