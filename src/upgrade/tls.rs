//! Moving a cluster deployed before TLS onto TLS, online. `pgha deploy` runs this when an
//! etcd member's configuration still serves plain HTTP, then converges as always.
//!
//! PostgreSQL keeps running and keeps its routing throughout; each step is decided from the
//! nodes, so a run cut off part-way is finished by the next one:
//! 1. the TLS files on every node;
//! 2. Patroni in maintenance mode (marked `/run/pgha-upgrade-paused`, as the upgrade does) and
//!    HAProxy's health checks of every server stopped (servers keep their state): from here
//!    on, a Patroni cut off from etcd does not demote its primary, and HAProxy routes as
//!    before whatever the API answers;
//! 3. etcd, one member at a time: TLS to clients, and certificates for peers, its peer URL
//!    still plain (the old Patroni and agents lose etcd meanwhile: Patroni is paused, the
//!    agents leave HAProxy as it is);
//! 4. etcd, one member at a time: its peer URL moved to `https://` (`member update`, then the
//!    restart that listens there; every peer can already dial it with a certificate);
//! 5. per database node, the new `patroni.yml` and a Patroni restart (it reads its etcd
//!    settings only at start, and finds etcd and the pause at once), then a Patroni reload
//!    (PostgreSQL's `ssl`, certificate and hostssl-only pg_hba, by SIGHUP); HAProxy's
//!    configuration checking over TLS; every agent on `https://` etcd;
//! 6. checks and Patroni back, on every path.
//!
//! Plain clients of etcd cannot be served beside TLS ones on one port during the move: etcd
//! 3.4 accepts both URLs but its gRPC gateway and gRPC then refuse plain requests ("first
//! record does not look like a TLS handshake"), which is why step 2 comes first.

use std::time::Duration;

use anyhow::{bail, Context};

use super::{say, Upgrade, UpgradeOptions};
use super::{PatroniRole, PatroniState};
use crate::cluster::Cluster;
use crate::engine::modules;
use crate::engine::report::Reporter;
use crate::inventory::{Node, Role};
use crate::patroni::{Credentials, Patroni};
use crate::render::{self, Renderer};
use crate::tls::SHELL_CLIENTS;

/// How one etcd member's configuration on disk serves clients and peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EtcdTls {
    /// Deployed before TLS: plain clients and peers.
    Plain,
    /// Plain clients, TLS peers (left by an earlier attempt at the move).
    PlainClients,
    /// Step 3 done: TLS clients, plain peer URL.
    PlainPeers,
    /// TLS only.
    Tls,
}

/// Read `listen-client-urls` and `listen-peer-urls` of an etcd configuration file.
pub fn etcd_tls(config: &str) -> Option<EtcdTls> {
    let value = |key: &str| {
        config
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
    };
    let clients = value("listen-client-urls:")?;
    let peers = value("listen-peer-urls:")?;
    Some(
        match (clients.contains("http://"), peers.starts_with("https://")) {
            (true, false) => EtcdTls::Plain,
            (true, true) => EtcdTls::PlainClients,
            (false, false) => EtcdTls::PlainPeers,
            (false, true) => EtcdTls::Tls,
        },
    )
}

/// The etcd members' states, read from their configuration files (absent: not deployed).
async fn etcd_states(upgrade: &Upgrade) -> anyhow::Result<Vec<(Node, Option<EtcdTls>)>> {
    let mut states = Vec::new();
    for node in upgrade.cluster.inventory.nodes_with(Role::Etcd) {
        let text = upgrade
            .root(node, "cat /etc/etcd/pgha.conf.yml 2>/dev/null || true")
            .await?;
        states.push((node.clone(), etcd_tls(&text)));
    }
    Ok(states)
}

/// Whether any etcd member of the inventory still serves plain HTTP (a cluster deployed before
/// TLS, or a move onto TLS cut off part-way).
pub async fn needed(inventory: &std::path::Path) -> anyhow::Result<bool> {
    let upgrade = open(inventory, false)?;
    let needed = async {
        let etcd = etcd_states(&upgrade).await?;
        if etcd
            .iter()
            .any(|(_, state)| state.is_some_and(|state| state != EtcdTls::Tls))
        {
            return Ok(true);
        }
        for node in upgrade.cluster.inventory.nodes_with(Role::Postgres) {
            if upgrade.plain_patroni(node).await? || upgrade.paused_by_pgha(node).await? {
                return Ok(true);
            }
        }
        Ok::<_, anyhow::Error>(false)
    }
    .await;
    upgrade.cluster.connections.close().await;
    needed
}

fn open(inventory: &std::path::Path, progress: bool) -> anyhow::Result<Upgrade> {
    Ok(Upgrade {
        cluster: Cluster::open(inventory, false)?,
        reporter: Reporter::new(true, Vec::new(), Vec::new()),
        options: UpgradeOptions {
            inventory: inventory.to_path_buf(),
            check: false,
            // Unused: the move onto TLS checks no upgrade preconditions.
            limits: super::plan::Limits {
                max_lag_bytes: 0,
                max_transaction_seconds: 0,
            },
            progress,
            measure: false,
        },
    })
}

/// Move the cluster of `inventory` onto TLS (see the module's steps).
pub async fn migrate(inventory: &std::path::Path, progress: bool) -> anyhow::Result<()> {
    let upgrade = open(inventory, progress)?;
    let result = migrate_with(&upgrade).await;
    upgrade.cluster.connections.close().await;
    result.context("moving the cluster onto TLS")
}

async fn migrate_with(upgrade: &Upgrade) -> anyhow::Result<()> {
    let inventory = upgrade.cluster.inventory.clone();
    let renderer = Renderer::new(None)?;
    say(
        &upgrade.options,
        "TLS: the cluster was deployed before TLS; moving it, online",
    );
    for node in &inventory.nodes {
        upgrade.install_tls_files(node).await?;
    }
    upgrade.paused_and_unchecked(&renderer).await
}

/// Where the deploy writes a template's file, and its owner, group and mode.
fn destination(template: &str) -> (&'static str, (&'static str, &'static str, u32)) {
    let (path, owner, group, mode, _) =
        render::destination(template).expect("a built-in template with a standard destination");
    (path, (owner, group, mode))
}

impl Upgrade {
    /// Patroni's configuration on `node` is from before TLS (no API certificate).
    async fn plain_patroni(&self, node: &Node) -> anyhow::Result<bool> {
        let text = self
            .root(
                node,
                "grep -c '^  certfile:' /etc/patroni/patroni.yml || true",
            )
            .await?;
        Ok(text.trim() == "0")
    }

    /// pgha's maintenance-mode marker is on `node` (a run cut off left the cluster paused).
    async fn paused_by_pgha(&self, node: &Node) -> anyhow::Result<bool> {
        let text = self
            .root(node, "test -e /run/pgha-upgrade-paused && echo yes || true")
            .await?;
        Ok(text.trim() == "yes")
    }

    /// Write `contents` to `path` on `node` the way the deploy writes files (atomically, the
    /// owner and mode set before it appears), never showing the contents.
    async fn put(
        &self,
        node: &Node,
        path: &str,
        contents: Vec<u8>,
        owner_group_mode: (&str, &str, u32),
    ) -> anyhow::Result<()> {
        let session = self.session(node).await?;
        modules::write_secret_file(&session, path, contents, owner_group_mode)
            .await
            .with_context(|| format!("writing {path} on {}", node.name))
    }

    /// The CA, the node's certificate and its keys, where the deploy's `tls` play puts them.
    async fn install_tls_files(&self, node: &Node) -> anyhow::Result<()> {
        let dir = crate::tls::control_dir(&self.cluster.inventory);
        let read = |file: String| {
            std::fs::read(dir.join(&file)).with_context(|| format!("cannot read {file}"))
        };
        self.root(
            node,
            "mkdir -p /etc/pgha/tls && chmod 755 /etc/pgha /etc/pgha/tls",
        )
        .await?;
        let name = &node.name;
        let mut files = vec![
            (
                "ca.crt".to_string(),
                "/etc/pgha/tls/ca.crt",
                ("root", "root", 0o644),
            ),
            (
                format!("{name}.crt"),
                "/etc/pgha/tls/node.crt",
                ("root", "root", 0o644),
            ),
            (
                format!("{name}.key"),
                "/etc/pgha/tls/node.key",
                ("root", "root", 0o600),
            ),
        ];
        if node.has(Role::Postgres) {
            files.push((
                format!("{name}.key"),
                "/etc/pgha/tls/postgres.key",
                ("root", "postgres", 0o640),
            ));
        }
        if node.has(Role::Etcd) {
            files.push((
                format!("{name}.pem"),
                "/etc/pgha/tls/etcd.pem",
                ("root", "etcd", 0o640),
            ));
        }
        if node.has(Role::Haproxy) {
            files.push((
                format!("{name}.pem"),
                "/etc/pgha/tls/haproxy.pem",
                ("root", "root", 0o600),
            ));
        }
        for (source, path, owner_group_mode) in files {
            self.put(node, path, read(source)?, owner_group_mode)
                .await?;
        }
        Ok(())
    }

    /// A template as the deploy renders it for `node`.
    fn render_for(
        &self,
        renderer: &Renderer,
        template: &str,
        node: &Node,
        extra: minijinja::Value,
    ) -> anyhow::Result<Vec<u8>> {
        let base = render::context(&self.cluster.inventory, &self.cluster.secrets, node);
        let context = minijinja::context! { ..extra, ..base };
        Ok(renderer.render_template(template, &context)?.into_bytes())
    }

    /// The member's configuration with its peer URL in `peer_scheme` (`https`: the final one).
    fn render_etcd(
        &self,
        renderer: &Renderer,
        node: &Node,
        peer_scheme: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let extra = match peer_scheme {
            "https" => minijinja::context! {},
            scheme => minijinja::context! { etcd_peer_scheme => scheme },
        };
        self.render_for(renderer, "etcd.conf.yml.j2", node, extra)
    }

    /// Write the member's configuration, restart it, and wait until it is healthy with every
    /// member started (asked over TLS, which the member serves from step 3 on).
    async fn restart_etcd_with(&self, node: &Node, text: Vec<u8>) -> anyhow::Result<()> {
        let (path, owner_group_mode) = destination("etcd.conf.yml.j2");
        self.put(node, path, text, owner_group_mode).await?;
        self.root(node, "systemctl restart etcd").await?;
        let port = self.cluster.inventory.cluster.ports.etcd_client;
        let members = self.cluster.inventory.nodes_with(Role::Etcd).count();
        self.wait_remote(
            node,
            &format!(
                "{SHELL_CLIENTS}etcdctl --endpoints=https://127.0.0.1:{port} --command-timeout=2s endpoint health >/dev/null 2>&1 && [ \"$(etcdctl --endpoints=https://127.0.0.1:{port} --command-timeout=2s member list 2>/dev/null | grep -c started)\" -eq {members} ]"
            ),
            Duration::from_secs(90),
            "etcd healthy with every member",
        )
        .await
    }

    /// `etcdctl member update`: the cluster knows the member by its `https://` peer URL (its
    /// peers dial it over TLS from now on; it listens there once restarted).
    async fn move_peer_url(&self, node: &Node) -> anyhow::Result<()> {
        let port = self.cluster.inventory.cluster.ports.etcd_client;
        let peer = format!(
            "https://{}:{}",
            render::url_host_of(&node.address),
            self.cluster.inventory.cluster.ports.etcd_peer
        );
        self.root(
            node,
            &format!(
                "{SHELL_CLIENTS}id=$(etcdctl --endpoints=https://127.0.0.1:{port} member list | awk -F', ' '$3 == \"{name}\" {{ print $1 }}')
[ -n \"$id\" ] || {{ echo 'no etcd member named {name}' >&2; exit 1; }}
etcdctl --endpoints=https://127.0.0.1:{port} member update \"$id\" --peer-urls={peer} >/dev/null",
                name = node.name
            ),
        )
        .await
        .map(drop)
    }

    /// Steps 2 to 6 (see the module).
    async fn paused_and_unchecked(&self, renderer: &Renderer) -> anyhow::Result<()> {
        let inventory = self.cluster.inventory.clone();
        let ports = inventory.cluster.ports;
        let postgres: Vec<Node> = inventory.nodes_with(Role::Postgres).cloned().collect();
        let plain_api = |node: &Node| {
            format!(
                "http://{}:{}",
                render::url_host_of(&node.address),
                ports.patroni_api
            )
        };
        // Which members run a configuration from before TLS (a restarted one serves HTTPS).
        let mut plain = Vec::new();
        for node in &postgres {
            if self.plain_patroni(node).await? {
                plain.push(node.clone());
            }
        }
        let credentials = Credentials::pgha(&self.cluster.secrets.restapi_password);
        // Maintenance mode through any member, in whichever scheme it serves.
        let mut entry = None;
        for node in &postgres {
            let session = self.session(node).await?;
            let patroni = Patroni::over_ssh(session, Some(credentials.clone()));
            for api in [self.api(node), plain_api(node)] {
                if patroni.status(&api).await.is_ok() {
                    entry = Some((patroni.clone(), api));
                    break;
                }
            }
            if entry.is_some() {
                break;
            }
        }
        let Some((patroni, api)) = entry else {
            bail!("no Patroni API answers, in HTTP or HTTPS");
        };
        // Maintenance mode while any Patroni is to restart, or when a run cut off left its own.
        let paused = patroni.status(&api).await?.paused;
        let ours = self.paused_by_pgha(&postgres[0]).await?;
        if paused && !ours {
            bail!("the cluster is in maintenance mode, and not by pgha; hint: resume it (`patronictl resume`) and deploy again");
        }
        let etcd = etcd_states(self).await?;
        let pausing =
            !plain.is_empty() || ours || etcd.iter().any(|(_, state)| *state != Some(EtcdTls::Tls));
        if pausing {
            for node in &postgres {
                self.root(node, "touch /run/pgha-upgrade-paused").await?;
            }
            // Already paused (a run cut off): a Patroni that lost etcd could not answer anyway.
            if !paused {
                patroni.set_pause(&api, true).await?;
            }
        }
        let result = async {
            for node in &postgres {
                self.server_checks(&node.name, false).await?;
            }
            // Steps 3 and 4, one member at a time per pass.
            for (wanted, peer_scheme) in [(EtcdTls::PlainPeers, "http"), (EtcdTls::Tls, "https")] {
                for (node, state) in etcd_states(self).await? {
                    let Some(state) = state else {
                        bail!("{} has no etcd configuration; deploy it first", node.name)
                    };
                    if state >= wanted {
                        continue;
                    }
                    if wanted == EtcdTls::Tls {
                        self.move_peer_url(&node).await?;
                    }
                    // A peer URL already moved stays moved.
                    let peer_scheme = if state == EtcdTls::PlainClients { "https" } else { peer_scheme };
                    let text = self.render_etcd(renderer, &node, peer_scheme)?;
                    self.restart_etcd_with(&node, text).await?;
                    say(
                        &self.options,
                        &format!("TLS: etcd on {} serves TLS clients, peers over {peer_scheme}", node.name),
                    );
                }
            }
            // Step 5: the primary first (its PostgreSQL serves TLS before the replicas'
            // replication connections ask for it); a member whose configuration is already
            // the new one and whose Patroni runs is left alone.
            let mut members = Vec::new();
            for node in &postgres {
                let session = self.session(node).await?;
                let asked = Patroni::over_ssh(session, None);
                let mut leads = false;
                for api in [self.api(node), plain_api(node)] {
                    if let Ok(status) = asked.status(&api).await {
                        leads = status.role == PatroniRole::Leader;
                        break;
                    }
                }
                members.push((!leads, node.clone()));
            }
            members.sort_by_key(|(replica, _)| *replica);
            for (_, node) in &members {
                let text =
                    self.render_for(renderer, "patroni.yml.j2", node, minijinja::context! {})?;
                // First with pg_hba still admitting clients without TLS: its clients (libpq's
                // default `prefer`) move to TLS once it is on, before the next reload requires it.
                let before_tls = self.render_for(
                    renderer,
                    "patroni.yml.j2",
                    node,
                    minijinja::context! { hba_before_tls => true },
                )?;
                let current = self
                    .root(node, "cat /etc/patroni/patroni.yml 2>/dev/null || true")
                    .await?;
                // Done only when PostgreSQL runs it too: TLS on, and clients without it refused
                // (a run cut off between writing the file and the reload is finished here).
                let in_force = self
                    .root(
                        node,
                        &format!(
                            "systemctl is-active patroni; runuser -u postgres -- psql -p {} -XAtc \"select current_setting('ssl'), count(*) from pg_hba_file_rules where type = 'hostnossl'\" 2>/dev/null || true",
                            ports.postgres
                        ),
                    )
                    .await?;
                let in_force = in_force.lines().map(str::trim).collect::<Vec<_>>();
                let done = in_force.first() == Some(&"active")
                    && in_force.get(1).is_some_and(|line| line.starts_with("on|") && line != &"on|0");
                if current.as_bytes() == text.as_slice() && done {
                    continue;
                }
                let (path, owner_group_mode) = destination("patroni.yml.j2");
                self.put(node, path, before_tls, owner_group_mode).await?;
                self.root(node, "systemctl restart patroni").await?;
                let session = self.session(node).await?;
                Patroni::over_ssh(session, None)
                    .wait_for_status(
                        &self.api(node),
                        "Patroni over HTTPS running PostgreSQL",
                        Duration::from_secs(60),
                        |status| status.state == PatroniState::Running,
                    )
                    .await?;
                // Patroni writes PostgreSQL's files and reloads it on SIGHUP: `ssl`, the
                // certificate and the hostssl-only pg_hba take effect without a restart.
                self.root(node, "systemctl reload patroni").await?;
                self.wait_remote(
                    node,
                    &format!(
                        "[ \"$(runuser -u postgres -- psql -p {} -XAtc 'show ssl' 2>/dev/null)\" = on ]",
                        ports.postgres
                    ),
                    Duration::from_secs(60),
                    "PostgreSQL serving TLS",
                )
                .await?;
                self.put(node, path, text, owner_group_mode).await?;
                self.root(node, "systemctl reload patroni").await?;
                self.wait_remote(
                    node,
                    &format!(
                        "[ \"$(runuser -u postgres -- psql -p {} -XAtc \"select count(*) from pg_hba_file_rules where type = 'hostnossl'\" 2>/dev/null)\" -gt 0 ]",
                        ports.postgres
                    ),
                    Duration::from_secs(60),
                    "PostgreSQL refusing clients without TLS",
                )
                .await?;
                say(&self.options, &format!("TLS: Patroni on {} serves HTTPS, talks TLS to etcd", node.name));
            }
            for node in inventory.nodes_with(Role::Haproxy) {
                let text = self.render_for(renderer, "haproxy.cfg.j2", node, minijinja::context! {})?;
                let (_, owner_group_mode) = destination("haproxy.cfg.j2");
                self.put(node, "/etc/haproxy/haproxy.cfg.pgha-new", text, owner_group_mode)
                    .await?;
                self.root(
                    node,
                    "haproxy -c -q -f /etc/haproxy/haproxy.cfg.pgha-new && mv /etc/haproxy/haproxy.cfg.pgha-new /etc/haproxy/haproxy.cfg && systemctl reload haproxy",
                )
                .await?;
            }
            for node in &inventory.nodes {
                let text = self.render_for(renderer, "agent.yml.j2", node, minijinja::context! {})?;
                let (path, owner_group_mode) = destination("agent.yml.j2");
                self.put(node, path, text, owner_group_mode).await?;
                self.root(node, "systemctl restart pgha-agent").await?;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        // Checks and Patroni back on every path.
        let mut back = Ok(());
        for node in &postgres {
            if let Err(error) = self.server_checks(&node.name, true).await {
                back = Err(error);
            }
        }
        let resumed = if pausing { self.resume().await } else { Ok(()) };
        result?;
        back?;
        resumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etcd_configuration_tells_how_far_its_move_onto_tls_got() {
        let config = |clients: &str, peers: &str| {
            format!("name: a\nlisten-client-urls: {clients}\nlisten-peer-urls: {peers}\n")
        };
        assert_eq!(
            etcd_tls(&config(
                "http://a:2379,http://127.0.0.1:2379",
                "http://a:2380"
            )),
            Some(EtcdTls::Plain)
        );
        assert_eq!(
            etcd_tls(&config(
                "https://a:2379,https://127.0.0.1:2379",
                "http://a:2380"
            )),
            Some(EtcdTls::PlainPeers)
        );
        assert_eq!(
            etcd_tls(&config(
                "https://a:2379,https://127.0.0.1:2379",
                "https://a:2380"
            )),
            Some(EtcdTls::Tls)
        );
        assert_eq!(
            etcd_tls(&config("http://a:2379,https://a:2379", "https://a:2380")),
            Some(EtcdTls::PlainClients)
        );
        assert_eq!(etcd_tls(""), None);
    }

    #[test]
    fn the_etcd_configuration_of_the_move_keeps_the_peer_url_plain_and_nothing_else() {
        let inventory = crate::inventory::Inventory::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/lab.yml"),
        )
        .unwrap();
        let secrets = crate::inventory::Secrets::generate().unwrap();
        let renderer = Renderer::new(None).unwrap();
        let base = render::context(&inventory, &secrets, &inventory.nodes[0]);
        let moving = minijinja::context! { etcd_peer_scheme => "http", ..base.clone() };
        let during = renderer
            .render_template("etcd.conf.yml.j2", &moving)
            .unwrap();
        let last = renderer.render_template("etcd.conf.yml.j2", &base).unwrap();
        assert_eq!(etcd_tls(&during), Some(EtcdTls::PlainPeers), "{during}");
        assert_eq!(etcd_tls(&last), Some(EtcdTls::Tls), "{last}");
        let differing: Vec<(&str, &str)> = during
            .lines()
            .zip(last.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            differing,
            [
                (
                    "listen-peer-urls: http://10.231.0.11:2380",
                    "listen-peer-urls: https://10.231.0.11:2380"
                ),
                (
                    "initial-advertise-peer-urls: http://10.231.0.11:2380",
                    "initial-advertise-peer-urls: https://10.231.0.11:2380"
                ),
            ]
        );
    }
}
