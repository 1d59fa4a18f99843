//! Scale-in: nodes removed from the inventory (`pgha inventory remove-node`) are taken out of the
//! running cluster by the next `pgha deploy`. pgha tells a removed node from an unreachable one
//! by its record of what it deployed ([`record`]); the order of the removal is [`plan`]'s, and
//! this module applies it over SSH, through the Patroni and etcd layers.

pub mod plan;
pub mod record;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cluster::Cluster;
use crate::engine::modules;
use crate::engine::report::Reporter;
use crate::engine::runner::Connections;
use crate::error::UserError;
use crate::inventory::Secrets;
use crate::inventory::{Inventory, Node, Role, SyncMode, Tags};
use crate::patroni::{ClusterView, Credentials, Patroni, Role as PatroniRole};
use crate::render::{self, Renderer};
use crate::ssh::{RemoteCommand, Session};
use crate::tls::SHELL_CLIENTS;
pub use plan::{Observed, Removal, Step};
pub use record::{DeployedNode, Record};

/// A valid inventory with `nodes` (YAML list items) for the unit tests.
#[cfg(test)]
fn test_inventory(nodes: &str) -> Inventory {
    let text = format!(
        "cluster: {{name: t, postgres_version: 15, secrets_file: /tmp/t.secrets.yml}}\nssh: {{user: root}}\nnodes:\n{nodes}"
    );
    Inventory::parse(std::path::Path::new("t.yml"), &text).expect("a valid inventory")
}

/// The services a departed node may run, stopped in this order (its PostgreSQL stops with
/// Patroni, after HAProxy and the agent).
const UNITS: [&str; 5] = ["pgha-agent", "keepalived", "haproxy", "patroni", "etcd"];

/// A removal about to be applied: the cluster as deployed (the inventory's nodes and the
/// departed ones, so every one can be reached) and the plan.
pub struct Departure {
    /// The inventory as the user left it.
    inventory: Arc<Inventory>,
    /// The cluster with the departed nodes added back, to reach them.
    deployed: Cluster,
    departed: Vec<DeployedNode>,
    pub removal: Removal,
    reporter: Reporter,
    progress: bool,
}

/// Add the inventory's nodes to the record of deployed nodes (before a deploy touches them).
pub fn record_inventory(inventory: &Inventory) -> anyhow::Result<()> {
    let file = record::path(inventory);
    let record = Record::load(&file)?;
    let merged = record.with_inventory(inventory);
    if merged != record {
        merged.save(&file)?;
    }
    Ok(())
}

/// The nodes deployed earlier and gone from the inventory.
pub fn departed(inventory: &Inventory) -> anyhow::Result<Vec<DeployedNode>> {
    Ok(Record::load(&record::path(inventory))?.departed(inventory))
}

impl Departure {
    /// Observe the cluster and plan the removal of `departed` (from [`departed`]); `None` when
    /// there are none. A refused plan is a [`UserError`] listing every reason.
    pub async fn prepare(
        inventory: Inventory,
        departed: Vec<DeployedNode>,
        purge: bool,
        progress: bool,
    ) -> anyhow::Result<Option<Departure>> {
        if departed.is_empty() {
            return Ok(None);
        }
        let inventory = Arc::new(inventory);
        let secrets = Secrets::load(&inventory.cluster.secrets_file)
            .context("the cluster's secrets file is needed to take nodes out of it")?;
        let mut as_deployed = (*inventory).clone();
        as_deployed
            .nodes
            .extend(departed.iter().map(DeployedNode::node));
        let as_deployed = Arc::new(as_deployed);
        let deployed = Cluster {
            connections: Arc::new(Connections::new(as_deployed.clone(), false)),
            inventory: as_deployed,
            secrets,
        };
        let mut departure = Departure {
            inventory,
            deployed,
            departed,
            removal: Removal::default(),
            reporter: Reporter::new(true, Vec::new(), Vec::new()),
            progress,
        };
        let observed = departure.observe().await;
        match plan::plan(&departure.inventory, &departure.departed, &observed, purge) {
            Ok(removal) => departure.removal = removal,
            Err(problems) => {
                departure.deployed.connections.close().await;
                bail!(UserError(format!(
                    "cannot take {} out of the cluster:\n  - {}",
                    departure.names(),
                    problems.join("\n  - ")
                )));
            }
        }
        Ok(Some(departure))
    }

    fn names(&self) -> String {
        self.departed
            .iter()
            .map(|node| node.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn say(&self, text: &str) {
        if self.progress {
            eprintln!("scale-in: {text}");
        }
    }

    /// The plan in words, one step per line.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.removal.before.iter().map(Step::describe).collect();
        lines.push("the deploy converges the remaining nodes (HAProxy, keepalived, pg_hba, etcd endpoints by reload)".into());
        lines.extend(self.removal.after.iter().map(Step::describe));
        lines.extend(self.removal.unreachable.iter().cloned());
        lines
    }

    async fn observe(&self) -> Observed {
        let mut observed = Observed::default();
        for node in &self.departed {
            if self.session_of(&node.node()).await.is_ok() {
                observed.reachable.insert(node.name.clone());
            }
        }
        for node in self.inventory.nodes_with(Role::Postgres) {
            if let Ok((patroni, api)) = self.patroni_at(node).await {
                if let Ok(view) = patroni.cluster(&api).await {
                    observed.patroni = Some(view);
                    break;
                }
            }
        }
        for node in self.inventory.nodes_with(Role::Etcd) {
            if let Ok(text) = self.etcdctl(node, "member list -w json").await {
                if let Some(members) = crate::etcd::parse_members(&text) {
                    observed.etcd = Some(members);
                    break;
                }
            }
        }
        observed
    }

    async fn session_of(&self, node: &Node) -> anyhow::Result<Arc<Session>> {
        self.deployed
            .connections
            .get(node, &self.reporter)
            .await
            .map_err(|reason| anyhow::anyhow!("cannot reach {}: {reason}", node.name))
    }

    async fn root(&self, node: &Node, script: &str) -> anyhow::Result<String> {
        let session = self.session_of(node).await?;
        let output = session
            .run_checked(&RemoteCommand::script(script.to_string()).as_root())
            .await
            .with_context(|| format!("on {}", node.name))?;
        Ok(output.stdout_text())
    }

    /// `etcdctl ARGS` against the local member of `node`, with the node's certificate.
    async fn etcdctl(&self, node: &Node, args: &str) -> anyhow::Result<String> {
        let port = self.inventory.cluster.ports.etcd_client;
        self.root(
            node,
            &format!(
                "{SHELL_CLIENTS}etcdctl --endpoints=https://127.0.0.1:{port} --command-timeout=5s {args}"
            ),
        )
        .await
    }

    /// Patroni's client over `node`'s SSH session, and `node`'s API.
    async fn patroni_at(&self, node: &Node) -> anyhow::Result<(Patroni, String)> {
        let session = self.session_of(node).await?;
        let patroni = Patroni::over_ssh(
            session,
            Some(Credentials::pgha(&self.deployed.secrets.restapi_password)),
        );
        let api =
            crate::patroni::model::api_at(node.address, self.inventory.cluster.ports.patroni_api);
        Ok((patroni, api))
    }

    /// `/cluster` from the first database node that stays and answers.
    async fn view(&self) -> anyhow::Result<ClusterView> {
        let mut last = None;
        for node in self.inventory.nodes_with(Role::Postgres) {
            match self.patroni_at(node).await {
                Ok((patroni, api)) => match patroni.cluster(&api).await {
                    Ok(view) => return Ok(view),
                    Err(error) => last = Some(anyhow::Error::from(error)),
                },
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the inventory has no database node")))
    }

    fn departed_node(&self, name: &str) -> Node {
        self.departed
            .iter()
            .find(|node| node.name == name)
            .map(DeployedNode::node)
            .expect("a step names a departed node")
    }

    /// The steps before the deploy's playbook.
    pub async fn before(&self) -> anyhow::Result<()> {
        for step in &self.removal.before {
            self.say(&step.describe());
            let started = Instant::now();
            self.apply(step)
                .await
                .with_context(|| format!("taking nodes out: {}", step.describe()))?;
            self.say(&format!(
                "  done in {:.1} s",
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }

    /// The steps after the playbook; each departed node leaves the record once its steps are
    /// done (an unreachable one too: it is out of etcd and of every configuration).
    pub async fn after(&self) -> anyhow::Result<()> {
        for step in &self.removal.after {
            self.say(&step.describe());
            self.apply(step)
                .await
                .with_context(|| format!("taking nodes out: {}", step.describe()))?;
        }
        for line in &self.removal.unreachable {
            eprintln!("warning: {line}");
        }
        let file = record::path(&self.inventory);
        let mut record = Record::load(&file)?;
        for node in &self.departed {
            // One that did not answer stays: the next deploy that reaches it stops its services.
            let stopped = self.removal.after.contains(&Step::StopServices {
                node: node.name.clone(),
            });
            if stopped {
                record = record.without(&node.name);
            }
            // Its certificate and key on the control machine: a node added again gets new ones.
            let dir = crate::tls::control_dir(&self.inventory);
            for extension in ["crt", "key", "pem"] {
                let _ = std::fs::remove_file(dir.join(format!("{}.{extension}", node.name)));
            }
        }
        record.save(&file)?;
        self.say(&format!("{} out of the cluster", self.names()));
        if !self.removal.unreachable.is_empty() {
            eprintln!(
                "note: pgha's record of deployed nodes is `{}`",
                file.display()
            );
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.deployed.connections.close().await;
    }

    async fn apply(&self, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::StopKeepalived { node } => {
                self.root(
                    &self.departed_node(node),
                    "systemctl disable --now keepalived 2>&1",
                )
                .await?;
            }
            Step::Switchover { from } => self.switchover(from).await?,
            Step::Leave { node } => self.leave(&self.departed_node(node)).await?,
            Step::RemoveEtcdMember { node, id } => self.remove_member(node, id).await?,
            Step::StopServices { node } => {
                let units = UNITS.join(" ");
                self.root(
                    &self.departed_node(node),
                    &format!(
                        "for unit in {units}; do
  if systemctl cat \"$unit.service\" >/dev/null 2>&1; then systemctl disable --now \"$unit\" 2>&1; fi
done
rm -f /etc/pgha/tls/*.key /etc/pgha/tls/*.pem"
                    ),
                )
                .await?;
                if self.departed_node(node).has(Role::Postgres) {
                    self.forget_patroni_member(node).await?;
                }
            }
            Step::Purge { node } => {
                let cluster = &self.inventory.cluster;
                self.root(
                    &self.departed_node(node),
                    &format!(
                        "rm -rf /var/lib/postgresql/{version}/{name} /var/lib/etcd/pgha-{name} /etc/patroni /etc/etcd/pgha.conf.yml /etc/etcd/pgha.conf.yml.applied /etc/pgha /var/lib/haproxy/pgha-server-state",
                        version = cluster.postgres_version,
                        name = cluster.name
                    ),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Hand the leadership to a replica that stays (the synchronous standby with synchronous
    /// mode), with the hold on new writes a planned switchover uses.
    async fn switchover(&self, from: &str) -> anyhow::Result<()> {
        let view = self.view().await?;
        let sync = self.inventory.cluster.synchronous_mode != SyncMode::Off;
        let candidate = view
            .members
            .iter()
            .filter(|member| member.streams() && self.inventory.node(&member.name).is_some())
            .filter(|member| {
                !self
                    .inventory
                    .node(&member.name)
                    .is_some_and(|node| node.tags.nofailover)
            })
            .max_by_key(|member| (!sync || member.role == PatroniRole::SyncStandby) as u8)
            .map(|member| member.name.clone())
            .with_context(|| format!("no replica that stays can take over from {from}"))?;
        let done = crate::cluster::switchover(&self.deployed, Some(&candidate)).await?;
        self.say(&format!(
            "  {candidate} leads (writes routed after {} ms)",
            done.routed_ms
        ));
        Ok(())
    }

    /// Patroni's tags on `node` so it is never promoted, never the synchronous standby and
    /// never read from; waits until another member is the synchronous standby.
    async fn leave(&self, node: &Node) -> anyhow::Result<()> {
        let leaving = Node {
            tags: Tags {
                nofailover: true,
                noloadbalance: true,
                nosync: true,
            },
            ..node.clone()
        };
        let renderer = Renderer::new(None)?;
        let context = render::context(&self.inventory, &self.deployed.secrets, &leaving);
        let text = renderer.render_template("patroni.yml.j2", &context)?;
        let (path, owner, group, mode, _) =
            render::destination("patroni.yml.j2").expect("patroni.yml has a standard destination");
        let session = self.session_of(node).await?;
        modules::write_secret_file(&session, path, text.into_bytes(), (owner, group, mode))
            .await
            .with_context(|| format!("writing {path} on {}", node.name))?;
        self.root(node, "systemctl reload patroni").await?;
        let sync = self.inventory.cluster.synchronous_mode != SyncMode::Off;
        let others_stream = self.inventory.nodes_with(Role::Postgres).count() > 1;
        let started = Instant::now();
        loop {
            let view = self.view().await?;
            let still_sync = view
                .member(&node.name)
                .is_some_and(|member| member.role == PatroniRole::SyncStandby);
            let another_sync = view
                .members
                .iter()
                .any(|member| member.name != node.name && member.role == PatroniRole::SyncStandby);
            if !still_sync && (!sync || !others_stream || another_sync) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(90) {
                bail!(
                    "{} is still the synchronous standby 90 s after its `nosync` tag; hint: see `journalctl -u patroni` on the primary",
                    node.name
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Delete the stopped member's key from the DCS: Patroni leaves it to expire with its
    /// lease (the TTL), listed as `stopped` until then, which `pgha verify` would count.
    async fn forget_patroni_member(&self, name: &str) -> anyhow::Result<()> {
        let key = format!("/service/{}/members/{name}", self.inventory.cluster.name);
        let mut last = None;
        for node in self.inventory.nodes_with(Role::Etcd) {
            match self.etcdctl(node, &format!("del {key}")).await {
                Ok(_) => return Ok(()),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd member stays")))
            .with_context(|| format!("deleting Patroni's key {key}"))
    }

    /// `etcdctl member remove` through a member that stays, then the departed member stopped
    /// (a removed member exits by itself; disabled so it is not started again).
    async fn remove_member(&self, name: &str, id: &str) -> anyhow::Result<()> {
        let mut via = None;
        for node in self.inventory.nodes_with(Role::Etcd) {
            if let Ok(text) = self.etcdctl(node, "member list -w json").await {
                if let Some(members) = crate::etcd::parse_members(&text) {
                    via = Some((node.clone(), members));
                    break;
                }
            }
        }
        let (via, members) = via.context("no etcd member that stays answers")?;
        if members.iter().any(|member| member.hex_id() == id) {
            self.etcdctl(&via, &format!("member remove {id}")).await?;
        }
        let departed = self.departed_node(name);
        if self.session_of(&departed).await.is_ok() {
            self.root(
                &departed,
                "if systemctl cat etcd.service >/dev/null 2>&1; then systemctl disable --now etcd 2>&1; fi",
            )
            .await?;
        }
        let started = Instant::now();
        let expected: BTreeSet<String> = self
            .inventory
            .nodes_with(Role::Etcd)
            .map(|node| node.name.clone())
            .collect();
        loop {
            let healthy = self
                .etcdctl(&via, "endpoint health --cluster")
                .await
                .is_ok();
            let listed = self
                .etcdctl(&via, "member list -w json")
                .await
                .ok()
                .and_then(|text| crate::etcd::parse_members(&text));
            if healthy
                && listed.is_some_and(|members| !members.iter().any(|member| member.hex_id() == id))
            {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "etcd is not healthy 60 s after removing {name} (members that should stay: {expected:?}); hint: `pgha verify` shows which member is down"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
