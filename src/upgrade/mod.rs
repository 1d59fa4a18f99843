//! `pgha upgrade`: move a running cluster to the inventory's pinned versions, one node at a
//! time, with the cluster healthy between steps. The order and the checks are pure
//! ([`plan`]); this module gathers facts over SSH, runs the steps and reports.
//!
//! It is an orchestrator in Rust rather than a playbook: each step waits on the cluster's own
//! state (a replica streaming again, a switchover landing) through the Patroni layer, and
//! drains are undone on every path out, which a task list cannot express. Per node it reuses
//! the deploy itself (`pgha deploy --limit NODE`) for files, Patroni's virtualenv and the agent.

pub mod plan;
pub mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::drill::probe::{self, Endpoint, Probes, Targets, WriteClient};
use crate::engine::modules::{self, Action};
use crate::engine::ops::{run_playbook, PlaybookRequest};
use crate::engine::report::Reporter;
use crate::engine::runner::RunOptions;
use crate::error::UserError;
use crate::inventory::{Node, Role, SyncMode};
use crate::patroni::{
    rolling, ClusterView, Member as PatroniMember, Patroni, PatroniError, Role as PatroniRole,
    State as PatroniState,
};
use crate::ssh::{RemoteCommand, Session};
pub use plan::{Limits, NodeFacts, Precondition, Step, StepKind};

/// What `pgha upgrade` was asked.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub inventory: PathBuf,
    pub check: bool,
    pub limits: Limits,
    /// Print progress lines on stderr.
    pub progress: bool,
    /// Run the drills' client probes through the VIP during the steps and report what they saw.
    pub measure: bool,
}

/// What clients through the VIP saw during the steps (`--measure`): the drills' probes.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// A new connection per INSERT every 100 ms through VIP:write.
    pub new_connection: ClientSeen,
    /// One connection, reopened after a failure, an INSERT every 100 ms.
    pub persistent: ClientSeen,
    /// Acknowledged INSERTs missing afterwards.
    pub lost_writes: usize,
    /// A new connection per `select pg_is_in_recovery()` every 100 ms through VIP:read.
    pub reads: usize,
    pub failed_reads: usize,
    /// Every failed attempt, located: which client, when (ms on the probes' clock), during
    /// which step, and what the client was told.
    pub failures: Vec<Failure>,
}

/// One failed probe attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// `new_connection`, `persistent` or `read`.
    pub client: &'static str,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// The step under way when the attempt started (`None`: between steps).
    pub step: Option<String>,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientSeen {
    pub attempts: usize,
    pub failed: usize,
    /// The longest stretch without an acknowledged commit, in ms.
    pub longest_gap_ms: u64,
}

/// One step done, and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct StepDone {
    pub step: Step,
    pub seconds: f64,
    /// Start and end on the probes' clock (ms), with `--measure`.
    pub probe_window_ms: Option<(u64, u64)>,
}

/// The result of `pgha upgrade`.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub check: bool,
    pub plan: Vec<Step>,
    pub preconditions: Vec<Precondition>,
    pub done: Vec<StepDone>,
    /// Where the run stopped and why; running `pgha upgrade` again continues from there.
    pub stopped: Option<String>,
    pub success: bool,
    pub seconds: f64,
    pub measured: Option<Measured>,
}

/// The Debian packages whose versions the upgrade reads on every node.
fn package_names(major: u32) -> Vec<String> {
    vec![
        format!("postgresql-{major}"),
        format!("postgresql-client-{major}"),
        "etcd-server".into(),
        "etcd-client".into(),
        "haproxy".into(),
        "keepalived".into(),
    ]
}

/// The read-only facts script: `$1` data directory, `$2` etcd client port, `$3` VIP address
/// (or empty), `$4` whether to refresh the package lists, `$5` the local Patroni API (or
/// empty), then package names.
const FACTS: &str = r#"data="$1"; etcd_port="$2"; vip="$3"; refresh="$4"; api="$5"; shift 5
if [ "$refresh" = yes ]; then timeout 120 apt-get update -q >/dev/null 2>&1 || true; fi
echo '### installed'
dpkg-query -W -f='${db:Status-Abbrev}\t${Package}\t${Version}\n' "$@" 2>/dev/null | awk -F'\t' '$1 ~ /^ii/ { print $2 "\t" $3 }'
echo '### candidates'
for package in "$@"; do
  LC_ALL=C apt-cache policy "$package" 2>/dev/null | sed -n '/Version table:/,$p' | tail -n +2 | while read -r line; do printf '%s\t%s\n' "$package" "$line"; done
done
echo '### stale'
for unit in etcd haproxy keepalived; do
  pid=$(systemctl show -p MainPID --value "$unit" 2>/dev/null)
  if [ -n "$pid" ] && [ "$pid" != 0 ] && readlink "/proc/$pid/exe" 2>/dev/null | grep -q '(deleted)'; then echo "$unit"; fi
done
pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ] && readlink "/proc/$pid/exe" 2>/dev/null | grep -q '(deleted)'; then echo postgresql; fi
echo '### patroni'
if [ -n "$api" ]; then curl -s $CURL_TLS --max-time 3 "$api/patroni"; echo; fi
echo '### etcd_leader'
if command -v etcdctl >/dev/null && systemctl -q is-active etcd; then
  etcdctl --endpoints="https://127.0.0.1:$etcd_port" --command-timeout=3s endpoint status 2>/dev/null | awk -F', ' '{ print $5 }'
fi
echo '### vip'
if [ -n "$vip" ] && ip -o addr show 2>/dev/null | grep -q " $vip/"; then echo true; else echo false; fi
echo '### agent'
stat -c '%s %Y' /usr/local/bin/pgha 2>/dev/null || true
"#;

fn say(options: &UpgradeOptions, text: &str) {
    if options.progress {
        eprintln!("upgrade: {text}");
    }
}

struct Upgrade {
    cluster: Cluster,
    options: UpgradeOptions,
    reporter: Reporter,
}

impl Upgrade {
    async fn session(&self, node: &Node) -> anyhow::Result<Arc<Session>> {
        self.cluster
            .connections
            .get(node, &self.reporter)
            .await
            .map_err(|reason| anyhow::anyhow!("cannot reach {}: {reason}", node.name))
    }

    fn node(&self, name: &str) -> anyhow::Result<Node> {
        self.cluster
            .inventory
            .node(name)
            .cloned()
            .with_context(|| format!("`{name}` is not a node of the inventory"))
    }

    fn api(&self, node: &Node) -> String {
        crate::patroni::model::api_at(
            node.address,
            self.cluster.inventory.cluster.ports.patroni_api,
        )
    }

    /// The Patroni client over the SSH session of the first postgres node that answers, and
    /// that node's API.
    async fn patroni(&self) -> anyhow::Result<(Patroni, String)> {
        let mut last = None;
        for node in self.cluster.inventory.nodes_with(Role::Postgres) {
            let Ok(session) = self.session(node).await else {
                continue;
            };
            let patroni = Patroni::over_ssh(
                session,
                Some(crate::patroni::Credentials::pgha(
                    &self.cluster.secrets.restapi_password,
                )),
            );
            let api = self.api(node);
            match patroni.cluster(&api).await {
                Ok(_) => return Ok((patroni, api)),
                Err(error) => last = Some(error),
            }
        }
        match last {
            Some(error) => Err(error.into()),
            None => bail!("no postgres node is reachable"),
        }
    }

    async fn view(&self) -> anyhow::Result<ClusterView> {
        let (patroni, api) = self.patroni().await?;
        Ok(patroni.cluster(&api).await?)
    }

    async fn facts(&self, refresh: bool) -> anyhow::Result<BTreeMap<String, NodeFacts>> {
        let inventory = &self.cluster.inventory;
        let cluster = &inventory.cluster;
        let data = format!(
            "/var/lib/postgresql/{}/{}",
            cluster.postgres_version, cluster.name
        );
        let vip = cluster
            .vip
            .map(|vip| vip.address.to_string())
            .unwrap_or_default();
        // Every node at once: one SSH round trip each (the `apt-get update` of a refresh is
        // the slow part).
        let mut handles = Vec::new();
        for node in inventory.nodes.iter().cloned() {
            let mut command =
                RemoteCommand::script(format!("{}{FACTS}", crate::tls::SHELL_CLIENTS))
                    .as_root()
                    .arg(data.clone())
                    .arg(cluster.ports.etcd_client.to_string())
                    .arg(vip.clone())
                    .arg(if refresh { "yes" } else { "no" })
                    .arg(if node.has(Role::Postgres) {
                        self.api(&node)
                    } else {
                        String::new()
                    });
            for name in package_names(cluster.postgres_version) {
                command = command.arg(name);
            }
            let connections = self.cluster.connections.clone();
            let reporter = Reporter::new(true, Vec::new(), Vec::new());
            handles.push(tokio::spawn(async move {
                let session = connections
                    .get(&node, &reporter)
                    .await
                    .map_err(|reason| anyhow::anyhow!("cannot reach {}: {reason}", node.name))?;
                let output = session
                    .run_checked(&command)
                    .await
                    .with_context(|| format!("reading the facts of {}", node.name))?;
                Ok::<_, anyhow::Error>((node.name.clone(), output.stdout_text()))
            }));
        }
        let mut all = BTreeMap::new();
        for handle in handles {
            let (name, output) = handle.await.context("a facts task failed")??;
            let mut facts = plan::parse_facts(&output);
            // The candidates section carries raw `apt-cache policy` lines: keep the versions.
            facts.candidates = facts
                .candidates
                .into_iter()
                .map(|(package, lines)| {
                    let versions = lines
                        .iter()
                        .filter_map(|line| plan::policy_version(line).map(str::to_string))
                        .collect();
                    (package, versions)
                })
                .collect();
            all.insert(name, facts);
        }
        Ok(all)
    }

    /// Run `script` as root on `node` until it succeeds, at most `timeout`.
    async fn wait_remote(
        &self,
        node: &Node,
        script: &str,
        timeout: Duration,
        what: &str,
    ) -> anyhow::Result<()> {
        let session = self.session(node).await?;
        let started = Instant::now();
        loop {
            let output = session
                .run(&RemoteCommand::script(script.to_string()).as_root())
                .await?;
            if output.success() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "timed out after {} s waiting for {what} on {}: {}",
                    timeout.as_secs(),
                    node.name,
                    output.stderr_text().trim()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn root(&self, node: &Node, script: &str) -> anyhow::Result<String> {
        let session = self.session(node).await?;
        let output = session
            .run_checked(&RemoteCommand::script(script.to_string()).as_root())
            .await
            .with_context(|| format!("on {}", node.name))?;
        Ok(output.stdout_text())
    }

    async fn install(&self, node: &Node, specs: &[String]) -> anyhow::Result<()> {
        if specs.is_empty() {
            return Ok(());
        }
        let session = self.session(node).await?;
        modules::apply(
            &session,
            &Action::Packages {
                install: specs.to_vec(),
                remove: Vec::new(),
                policy_rc_d: Some(101),
                policy_rc_d_leftover: false,
            },
        )
        .await
        .with_context(|| format!("installing {} on {}", specs.join(" "), node.name))?;
        Ok(())
    }

    /// Drain (or make ready) `server` in the read backend of every HAProxy, in parallel; the
    /// open read sessions it still has, summed. Every HAProxy is asked even when one fails (a
    /// `ready` must reach all of them).
    async fn read_server(&self, server: &str, state: &str) -> anyhow::Result<u64> {
        let outputs = self
            .cluster
            .agent_on_haproxy_nodes(&["read-server", server, "--state", state])
            .await
            .with_context(|| format!("read server {server} {state}"))?;
        Ok(outputs
            .iter()
            .map(|output| output.trim().parse::<u64>().unwrap_or(0))
            .sum())
    }

    /// HAProxy's health checks of `server` stopped (it keeps its state, up) or running again,
    /// on every HAProxy: a primary whose Patroni restarts stays routed.
    async fn server_checks(&self, server: &str, on: bool) -> anyhow::Result<()> {
        let state = if on { "on" } else { "off" };
        self.cluster
            .agent_on_haproxy_nodes(&["checks", server, "--state", state])
            .await
            .map(drop)
    }

    /// Make every server of every read backend ready, end any write hold, let every node take
    /// the VIP again, and end a maintenance mode this upgrade began (with the health checks it
    /// stopped): a run cut off anywhere leaves nothing behind once the next run starts.
    async fn release_leftovers(&self) -> anyhow::Result<()> {
        let names: Vec<String> = self
            .cluster
            .inventory
            .nodes_with(Role::Postgres)
            .map(|node| node.name.clone())
            .collect();
        let mut result = Ok(());
        for name in &names {
            if let Err(error) = self.read_server(name, "ready").await {
                result = result.and(Err(error));
            }
        }
        // HAProxy's health checks of every database server running (a primary's are stopped
        // while its Patroni restarts; starting running checks changes nothing).
        for name in &names {
            if let Err(error) = self.server_checks(name, true).await {
                result = result.and(Err(error));
            }
        }
        // A maintenance mode this upgrade began (the marker is on the node it was for).
        let mut paused = Vec::new();
        for name in &names {
            let node = self.node(name)?;
            match self
                .root(
                    &node,
                    "test -e /run/pgha-upgrade-paused && echo paused || true",
                )
                .await
            {
                Ok(output) if output.trim() == "paused" => paused.push(name.clone()),
                Ok(_) => {}
                Err(error) => result = result.and(Err(error)),
            }
        }
        if !paused.is_empty() {
            if let Err(error) = self.resume().await {
                result = result.and(Err(error));
            }
        }
        // No write hold left behind (it would expire on its own within a minute).
        if let Err(error) = self.cluster.hold_writes(None).await {
            result = result.and(Err(error));
        }
        // And no node left refusing the VIP.
        let keepalived: Vec<Node> = self
            .cluster
            .inventory
            .nodes_with(Role::Keepalived)
            .cloned()
            .collect();
        for node in &keepalived {
            if let Err(error) = self.root(node, "rm -f /run/pgha-vip-yield").await {
                result = result.and(Err(error));
            }
        }
        result
    }

    /// `pgha deploy --limit NODE`, keeping the installed pgha binary or not.
    async fn deploy_node(&self, node: &Node, keep_agent_binary: bool) -> anyhow::Result<()> {
        let deploy = run_playbook(PlaybookRequest {
            inventory: self.options.inventory.clone(),
            playbook: "deploy".into(),
            playbooks_dir: None,
            templates_dir: None,
            force_remove_stray_data: false,
            keep_agent_binary,
            options: RunOptions {
                check: false,
                diff: false,
                limit: Some(node.name.clone()),
                forks: 5,
                accept_new_host_keys: false,
                quiet: true,
            },
        })
        .await?;
        if !deploy.success {
            bail!(
                "the deploy limited to {} failed: {}",
                node.name,
                deploy.stopped.clone().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The pgha binary and the agent's restart come from the deploy itself.
    async fn agent_step(&self, step: &Step) -> anyhow::Result<()> {
        let node = self.node(&step.node)?;
        self.deploy_node(&node, false).await
    }

    async fn etcd_step(&self, step: &Step) -> anyhow::Result<()> {
        let node = self.node(&step.node)?;
        self.install(&node, &step.install).await?;
        self.root(&node, "systemctl restart etcd").await?;
        let port = self.cluster.inventory.cluster.ports.etcd_client;
        let members = self.cluster.inventory.nodes_with(Role::Etcd).count();
        self.wait_remote(
            &node,
            &format!(
                "{env}etcdctl --endpoints=https://127.0.0.1:{port} --command-timeout=2s endpoint health >/dev/null 2>&1 && [ \"$(etcdctl --endpoints=https://127.0.0.1:{port} --command-timeout=2s member list 2>/dev/null | grep -c started)\" -eq {members} ]",
                env = crate::tls::SHELL_CLIENTS
            ),
            Duration::from_secs(90),
            "etcd healthy with every member",
        )
        .await
    }

    async fn database_step(&self, step: &Step) -> anyhow::Result<()> {
        let node = self.node(&step.node)?;
        let view = self.view().await?;
        if view.leader().is_some_and(|leader| leader.name == node.name) {
            bail!(
                "{} leads the cluster: it is upgraded after a switchover, not before",
                node.name
            );
        }
        self.read_server(&node.name, "drain").await?;
        let result = self.database_drained(step, &node).await;
        // Undrained on every path out, failure included.
        let released = self.read_server(&node.name, "ready").await;
        result?;
        released.map(drop)
    }

    async fn database_drained(&self, step: &Step, node: &Node) -> anyhow::Result<()> {
        // Running reads finish (at most 30 s); new ones already go elsewhere.
        let started = Instant::now();
        while self.read_server(&node.name, "show").await? > 0
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.install(node, &step.install).await?;
        // The deploy, limited to this node, lays down what the new versions need (Patroni's
        // virtualenv, its unit) without restarting anything; the agent waits for the end.
        self.deploy_node(node, true).await?;
        // A failover since the step began must not make this a restart of the primary.
        if self
            .view()
            .await?
            .leader()
            .is_some_and(|leader| leader.name == node.name)
        {
            bail!(
                "{} became the leader during its step: not restarted",
                node.name
            );
        }
        self.restart_patroni_on_pin(node).await?;
        let (patroni, api) = self.patroni().await?;
        let max_lag = self.options.limits.max_lag_bytes;
        patroni
            .wait_for(
                &api,
                &format!("{} to stream again", node.name),
                Duration::from_secs(180),
                |view| {
                    view.member(&node.name).is_some_and(|member| {
                        member.streams()
                            && !member.pending_restart
                            && member.lag.is_some_and(|lag| lag <= max_lag)
                    })
                },
            )
            .await?;
        Ok(())
    }

    /// Patroni's version in use moves here, and only here: the link to the pinned virtualenv
    /// (laid down by the deploy), then a restart of Patroni.
    async fn restart_patroni_on_pin(&self, node: &Node) -> anyhow::Result<()> {
        let version = &self.cluster.inventory.cluster.patroni_version;
        self.root(
            node,
            &format!(
                "test -e /opt/pgha/patroni-{version}/.pgha-complete && ln -sfn patroni-{version} /opt/pgha/patroni && systemctl daemon-reload && systemctl restart patroni"
            ),
        )
        .await
        .map(drop)
    }

    /// Patroni's version alone: a replica is drained from the reads first, the primary stays
    /// where it is; either way PostgreSQL keeps running.
    async fn patroni_step(&self, step: &Step) -> anyhow::Result<()> {
        let node = self.node(&step.node)?;
        let leads = self
            .view()
            .await?
            .leader()
            .is_some_and(|leader| leader.name == node.name);
        if leads {
            return self.patroni_in_place(&node, true).await;
        }
        self.read_server(&node.name, "drain").await?;
        let result = async {
            let started = Instant::now();
            while self.read_server(&node.name, "show").await? > 0
                && started.elapsed() < Duration::from_secs(30)
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            self.patroni_in_place(&node, false).await
        }
        .await;
        let released = self.read_server(&node.name, "ready").await;
        result?;
        released.map(drop)
    }

    /// Restart Patroni onto the pinned version with the cluster in maintenance mode: a Patroni
    /// that stops while paused leaves PostgreSQL running and a leader keeps its key, and the
    /// new one takes the running PostgreSQL over. On the primary, HAProxy's health checks of
    /// it stop meanwhile (its `/primary` does not answer while Patroni restarts) and it stays
    /// routed. Maintenance mode and the checks come back on every path; a run cut off in
    /// between leaves `/run/pgha-upgrade-paused` on the node, and the next run resumes.
    async fn patroni_in_place(&self, node: &Node, leads: bool) -> anyhow::Result<()> {
        self.deploy_node(node, true).await?;
        let base = self.api(node);
        let (patroni, api) = self.patroni().await?;
        let before = patroni.status(&base).await?;
        if before.paused {
            bail!(
                "the cluster is already in maintenance mode (paused), and not by this upgrade: \
                 pgha does not end a pause it did not begin; hint: resume it (`patronictl resume`) \
                 and run `pgha upgrade` again"
            );
        }
        self.root(node, "touch /run/pgha-upgrade-paused").await?;
        let want = self.cluster.inventory.cluster.patroni_version.clone();
        // From the pause request on, whatever its answer, the way out resumes.
        let result = async {
            patroni.set_pause(&api, true).await?;
            patroni
                .wait_for_status(
                    &base,
                    "the member to see maintenance mode",
                    Duration::from_secs(60),
                    |status| status.paused,
                )
                .await?;
            if leads {
                self.server_checks(&node.name, false).await?;
            }
            self.restart_patroni_on_pin(node).await?;
            let status = patroni
                .wait_for_status(
                    &base,
                    &format!("Patroni {want} to run PostgreSQL"),
                    Duration::from_secs(60),
                    |status| {
                        status.version.as_deref() == Some(want.as_str())
                            && status.state == PatroniState::Running
                            && (!leads || status.role == PatroniRole::Leader)
                    },
                )
                .await?;
            // What HAProxy's check asks, before its checks start again.
            if leads {
                patroni
                    .wait_for_primary(&base, Duration::from_secs(60))
                    .await?;
            }
            Ok::<_, anyhow::Error>(status)
        }
        .await;
        let checks = if leads {
            self.server_checks(&node.name, true).await
        } else {
            Ok(())
        };
        let resumed = self.resume().await;
        let after = result?;
        checks?;
        resumed?;
        let kept = after.postmaster_start_time.is_some()
            && after.postmaster_start_time == before.postmaster_start_time;
        say(
            &self.options,
            &format!(
                "Patroni {} → {want} on {}: PostgreSQL {}",
                before.version.as_deref().unwrap_or("?"),
                node.name,
                if kept {
                    format!(
                        "kept running (started {})",
                        after.postmaster_start_time.unwrap_or_default()
                    )
                } else {
                    "restarted".to_string()
                }
            ),
        );
        Ok(())
    }

    /// Maintenance mode off (through the first member whose API answers), then the markers
    /// gone from every database node.
    async fn resume(&self) -> anyhow::Result<()> {
        let resumed = async {
            let (patroni, api) = self.patroni().await?;
            patroni.set_pause(&api, false).await?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        resumed.context(
            "maintenance mode could not be ended; hint: `patronictl resume` on a database node",
        )?;
        let nodes: Vec<Node> = self
            .cluster
            .inventory
            .nodes_with(Role::Postgres)
            .cloned()
            .collect();
        for node in &nodes {
            self.root(node, "rm -f /run/pgha-upgrade-paused").await?;
        }
        Ok(())
    }

    async fn switchover_step(&self, step: &Step, remaining: &[Step]) -> anyhow::Result<()> {
        let (patroni, api) = self.patroni().await?;
        let sync = self.cluster.inventory.cluster.synchronous_mode != SyncMode::Off;
        let pending: Vec<&str> = remaining
            .iter()
            .filter(|other| other.kind == StepKind::Database)
            .map(|other| other.node.as_str())
            .collect();
        let view = patroni
            .wait_for(
                &api,
                "an upgraded standby to take over",
                Duration::from_secs(60),
                |view| {
                    view.leader().is_some_and(|leader| leader.name != step.node)
                        || view.members.iter().any(|member| {
                            member.streams()
                                && !pending.contains(&member.name.as_str())
                                && (!sync || member.role == PatroniRole::SyncStandby)
                        })
                },
            )
            .await?;
        if view.leader().is_some_and(|leader| leader.name != step.node) {
            return Ok(());
        }
        let candidate = view
            .members
            .iter()
            .find(|member| {
                member.streams()
                    && !pending.contains(&member.name.as_str())
                    && (!sync || member.role == PatroniRole::SyncStandby)
            })
            .map(|member| member.name.clone())
            .context("no upgraded standby to hand the primary role to")?;
        // The candidate leaves the read backends first: it is about to take writes, and reads
        // running on it finish rather than meet a promotion.
        self.read_server(&candidate, "drain").await?;
        let switched = async {
            let started = Instant::now();
            while self.read_server(&candidate, "show").await? > 0
                && started.elapsed() < Duration::from_secs(30)
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let base = view
                .member(&step.node)
                .and_then(PatroniMember::api_base)
                .with_context(|| format!("{} publishes no `api_url`", step.node))?;
            // New writes wait in HAProxy during each request (the agents drain the old primary
            // before it stops and route the new one once it is out of recovery). Patroni
            // answers once the switchover is over or refused, so the hold ends with each
            // answer: a refusal (412, no candidate ready yet) holds nothing while we wait.
            let asked = Instant::now();
            loop {
                self.cluster.hold_writes(Some(&step.node)).await?;
                let answer = patroni
                    .switchover(&base, &step.node, Some(&candidate), Duration::ZERO)
                    .await;
                self.cluster.hold_writes(None).await?;
                match answer {
                    // 503: "switchover status unknown", `/cluster` decides below.
                    Ok(_) | Err(PatroniError::Status { status: 503, .. }) => break,
                    Err(PatroniError::Status { status: 412, .. })
                        if asked.elapsed() < Duration::from_secs(90) =>
                    {
                        tokio::time::sleep(Duration::from_secs(2)).await
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Ok::<_, anyhow::Error>(
                rolling::await_other_leader(&patroni, &base, &step.node, Some(&candidate)).await?,
            )
        }
        .await;
        // On every path: no hold left (each answer above ended it; a failure may have left one)
        // and the candidate ready again in the reads (as the leader, the agents keep it out).
        let unheld = match &switched {
            Ok(_) => Ok(false),
            Err(_) => self.cluster.hold_writes(None).await,
        };
        let released = self.read_server(&candidate, "ready").await;
        let new_leader = switched?;
        unheld?;
        released?;
        say(
            &self.options,
            &format!("switched over from {} to {new_leader}", step.node),
        );
        Ok(())
    }

    /// Whether `node` holds the VIP now.
    async fn holds_vip(&self, node: &Node) -> anyhow::Result<bool> {
        let Some(vip) = self.cluster.inventory.cluster.vip else {
            return Ok(false);
        };
        let output = self.root(node, "ip -o addr show").await?;
        Ok(output.contains(&format!(" {}/", vip.address)))
    }

    /// Run `work` on `node` with the VIP elsewhere: a holder gives it away first (its
    /// Keepalived check script fails while `/run/pgha-vip-yield` exists, so Keepalived goes to
    /// FAULT and a peer takes the VIP; Keepalived keeps running) and takes part again after,
    /// on every path out. With `nopreempt` the VIP then stays where it went.
    async fn with_vip_elsewhere<F, T>(&self, node: &Node, work: F) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        if !self.holds_vip(node).await? {
            return work.await;
        }
        self.root(node, "touch /run/pgha-vip-yield").await?;
        let result = async {
            let started = Instant::now();
            loop {
                let mut elsewhere = false;
                for other in self.cluster.inventory.nodes_with(Role::Keepalived) {
                    if other.name != node.name && self.holds_vip(other).await.unwrap_or(false) {
                        elsewhere = true;
                    }
                }
                if elsewhere && !self.holds_vip(node).await? {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("{} did not give the VIP away within 30 s", node.name);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            say(&self.options, &format!("{} gave the VIP away", node.name));
            work.await
        }
        .await;
        let back = self.root(node, "rm -f /run/pgha-vip-yield").await;
        let value = result?;
        back?;
        Ok(value)
    }

    async fn haproxy_step(&self, step: &Step) -> anyhow::Result<()> {
        let node = self.node(&step.node)?;
        self.with_vip_elsewhere(&node, self.haproxy_work(step, &node))
            .await
    }

    async fn haproxy_work(&self, step: &Step, node: &Node) -> anyhow::Result<()> {
        let node = node.clone();
        self.install(&node, &step.install).await?;
        // HAProxy's master re-executes the binary on disk when reloaded: no connection drops.
        self.root(&node, "systemctl reload haproxy").await?;
        let port = self.cluster.inventory.cluster.ports.write;
        self.wait_remote(
            &node,
            &format!(
                "pid=$(systemctl show -p MainPID --value haproxy) && [ \"$pid\" != 0 ] && ! readlink /proc/$pid/exe | grep -q deleted && ss -Hltn 'sport = :{port}' | grep -q ."
            ),
            Duration::from_secs(30),
            "HAProxy running the new binary",
        )
        .await
    }

    async fn keepalived_step(&self, step: &Step) -> anyhow::Result<()> {
        let node = self.node(&step.node)?;
        let work = async {
            self.install(&node, &step.install).await?;
            self.root(&node, "systemctl restart keepalived").await?;
            self.wait_remote(
                &node,
                "systemctl -q is-active keepalived",
                Duration::from_secs(30),
                "keepalived running",
            )
            .await
        };
        self.with_vip_elsewhere(&node, work).await
    }

    async fn preconditions(&self, view: &ClusterView) -> Vec<Precondition> {
        let inventory = &self.cluster.inventory;
        let mut checks = vec![plan::cluster_ready(inventory, view, self.options.limits)];
        // etcd: every member healthy.
        let port = inventory.cluster.ports.etcd_client;
        let endpoints: Vec<String> = inventory
            .nodes_with(Role::Etcd)
            .map(|node| {
                format!(
                    "https://{}:{port}",
                    crate::render::url_host_of(&node.address)
                )
            })
            .collect();
        let etcd = match inventory.nodes_with(Role::Etcd).next() {
            Some(node) => self
                .root(
                    node,
                    &format!(
                        "{}etcdctl --endpoints={} --command-timeout=3s endpoint health 2>&1",
                        crate::tls::SHELL_CLIENTS,
                        endpoints.join(",")
                    ),
                )
                .await
                .map(|text| text.lines().count()),
            None => Ok(0),
        };
        checks.push(Precondition {
            name: "etcd.members_healthy".into(),
            pass: matches!(&etcd, Ok(count) if *count == endpoints.len()),
            detail: match etcd {
                Ok(count) => format!("{count} of {} members healthy", endpoints.len()),
                Err(error) => format!("{error:#}"),
            },
        });
        // The nodes run this pgha's helpers: `pgha agent read-server` (drains) and `hold-writes`
        // (the switchover's hold) on HAProxy nodes
        // and the check script that honours the VIP yield on Keepalived nodes. A cluster last
        // deployed by an older pgha gets them from `pgha deploy`.
        let mut missing = Vec::new();
        for node in &inventory.nodes {
            let mut script = String::from("true");
            if node.has(Role::Haproxy) {
                script.push_str(" && /usr/local/bin/pgha agent read-server --help >/dev/null 2>&1 && /usr/local/bin/pgha agent hold-writes --help >/dev/null 2>&1 && /usr/local/bin/pgha agent checks --help >/dev/null 2>&1");
            }
            if node.has(Role::Keepalived) && inventory.cluster.vip.is_some() {
                script.push_str(" && grep -q pgha-vip-yield /usr/local/lib/pgha/check-writes");
            }
            if self.root(node, &script).await.is_err() {
                missing.push(node.name.clone());
            }
        }
        checks.push(Precondition {
            name: "pgha.helpers_installed".into(),
            pass: missing.is_empty(),
            detail: if missing.is_empty() {
                "every node has this pgha's drain and VIP-yield helpers".into()
            } else {
                format!(
                    "{} lack(s) this pgha's drain or VIP-yield helpers; hint: run `pgha deploy -i INVENTORY` first (it changes no version)",
                    missing.join(", ")
                )
            },
        });
        // No long transaction on the primary: a switchover would cut it off.
        let limit = self.options.limits.max_transaction_seconds;
        let oldest = match view.leader().and_then(|leader| inventory.node(&leader.name)) {
            Some(node) => self
                .root(
                    node,
                    &format!(
                        "runuser -u postgres -- psql -XAtq -p {} -c \"select coalesce(max(extract(epoch from now() - xact_start))::bigint, 0) from pg_stat_activity where xact_start is not null and backend_type = 'client backend' and pid <> pg_backend_pid()\"",
                        inventory.cluster.ports.postgres
                    ),
                )
                .await
                .and_then(|text| text.trim().parse::<u64>().context("not a number")),
            None => Err(anyhow::anyhow!("no leader")),
        };
        checks.push(Precondition {
            name: "postgresql.no_long_transaction".into(),
            pass: matches!(&oldest, Ok(seconds) if *seconds <= limit),
            detail: match oldest {
                Ok(seconds) => {
                    format!("the oldest open transaction is {seconds} s old (limit {limit} s)")
                }
                Err(error) => format!("{error:#}"),
            },
        });
        checks
    }
}

/// The drills' write probes and a read probe through the VIP; the write endpoint and run tag.
async fn start_probes(upgrade: &Upgrade) -> anyhow::Result<(Probes, Endpoint, String)> {
    let cluster = &upgrade.cluster.inventory.cluster;
    let Some(vip) = cluster.vip else {
        bail!(UserError(
            "`--measure` probes through the VIP and the inventory has none".into()
        ));
    };
    let tls = crate::tls::ClientFiles::control(&upgrade.cluster.inventory).postgres()?;
    let endpoint = |port: u16| Endpoint {
        host: vip.address.to_string(),
        port,
        user: "postgres".into(),
        password: upgrade.cluster.secrets.superuser_password.clone(),
        inside: None,
        tls: tls.clone(),
    };
    let write = endpoint(cluster.ports.write);
    write
        .connect()
        .await
        .context("`--measure` cannot write through the VIP")?
        .batch_execute(crate::drill::probe::TABLE_DDL)
        .await?;
    let run = format!(
        "upgrade-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    );
    let probes = Probes::start(Targets {
        run: run.clone(),
        vip: write.clone(),
        nodes: Vec::new(),
        isolated: None,
        reads: Some(endpoint(cluster.ports.read)),
    });
    // A baseline before the first step.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((probes, write, run))
}

async fn finish_probes(
    probes: Probes,
    vip: &Endpoint,
    run: &str,
    windows: &[(String, (u64, u64))],
) -> anyhow::Result<Measured> {
    let log = probes.stop().await;
    let client = vip
        .connect()
        .await
        .context("reading the probe's rows back")?;
    let stored = client
        .query("select id from pgha_drill where run = $1", &[&run])
        .await?
        .iter()
        .map(|row| row.try_get::<_, i64>(0))
        .collect::<Result<std::collections::BTreeSet<i64>, _>>()?;
    let seen = |kind: WriteClient| ClientSeen {
        attempts: log.writes.iter().filter(|a| a.client == kind).count(),
        failed: probe::failed_writes(&log.writes, kind),
        longest_gap_ms: probe::longest_gap(&log.writes, kind)
            .map(|gap| gap.ms())
            .unwrap_or(0),
    };
    let step_at = |ms: u64| {
        windows
            .iter()
            .find(|(_, (from, to))| (*from..=*to).contains(&ms))
            .map(|(step, _)| step.clone())
    };
    let mut failures: Vec<Failure> = log
        .writes
        .iter()
        .filter_map(|attempt| {
            Some(Failure {
                client: match attempt.client {
                    WriteClient::NewConnection => "new_connection",
                    WriteClient::Persistent => "persistent",
                    WriteClient::Isolated => "isolated",
                },
                started_ms: attempt.started_ms,
                ended_ms: attempt.ended_ms,
                step: step_at(attempt.started_ms),
                error: attempt.error.clone()?,
            })
        })
        .chain(log.reads.iter().filter_map(|read| {
            Some(Failure {
                client: "read",
                started_ms: read.started_ms,
                ended_ms: read.ended_ms,
                step: step_at(read.started_ms),
                error: read.error.clone()?,
            })
        }))
        .collect();
    failures.sort_by_key(|failure| failure.started_ms);
    Ok(Measured {
        failures,
        new_connection: seen(WriteClient::NewConnection),
        persistent: seen(WriteClient::Persistent),
        lost_writes: probe::lost_writes(&log.writes, &stored).len(),
        reads: log.reads.len(),
        failed_reads: log.reads.iter().filter(|read| !read.answered).count(),
    })
}

/// Size and modification time of the binary the deploy installs as the agent.
fn local_agent_binary(inventory: &crate::inventory::Inventory) -> anyhow::Result<(u64, i64)> {
    let path = match &inventory.cluster.agent_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find the running `pgha` binary")?,
    };
    let metadata =
        std::fs::metadata(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let time = metadata
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0);
    Ok((metadata.len(), time))
}

/// Plan from facts, check, and (unless `--check`) run the upgrade.
pub async fn upgrade(options: UpgradeOptions) -> anyhow::Result<UpgradeReport> {
    let started = Instant::now();
    let cluster = Cluster::open(&options.inventory, false)?;
    // Patroni's pinned version must exist as wheels pgha can ship, before any host is read.
    crate::wheels::ensure_archive(
        &cluster.inventory.cluster.patroni_version,
        cluster.inventory.cluster.release(),
    )
    .map_err(|error| {
        UserError(format!(
            "Patroni {} cannot be shipped: {error:#}\nhint: check `cluster.patroni_version`",
            cluster.inventory.cluster.patroni_version
        ))
    })?;
    let upgrade = Upgrade {
        cluster,
        reporter: Reporter::new(true, Vec::new(), Vec::new()),
        options: options.clone(),
    };
    let facts = upgrade.facts(true).await?;
    let view = upgrade.view().await?;
    let agent = local_agent_binary(&upgrade.cluster.inventory)?;
    let steps = plan::plan(&upgrade.cluster.inventory, &facts, &view, Some(agent));
    let missing = plan::unavailable(&steps, &facts);
    if !missing.is_empty() {
        upgrade.cluster.connections.close().await;
        bail!(UserError(format!(
            "a pinned version is not available, nothing was changed:\n  {}\nhint: `apt-cache policy PACKAGE` on the node lists what its sources offer; fix `cluster.versions`",
            missing.join("\n  ")
        )));
    }
    let preconditions = upgrade.preconditions(&view).await;
    for step in &steps {
        say(&options, &format!("plan: {step}"));
    }
    for check in &preconditions {
        say(
            &options,
            &format!(
                "{} {}: {}",
                if check.pass { "PASS" } else { "FAIL" },
                check.name,
                check.detail
            ),
        );
    }
    // Whatever an earlier run cut off left behind (a drained read server, a node refusing the
    // VIP) is undone by any run that may change something, even one with nothing left to do.
    let ready = preconditions.iter().all(|check| check.pass);
    if !options.check && ready {
        upgrade
            .release_leftovers()
            .await
            .context("cannot undo an earlier run's drains")?;
    }
    let mut report = UpgradeReport {
        check: options.check,
        plan: steps.clone(),
        preconditions,
        done: Vec::new(),
        stopped: None,
        success: ready,
        seconds: 0.0,
        measured: None,
    };
    if options.check || steps.is_empty() || !ready {
        if !ready {
            report.stopped = Some("a precondition failed; nothing was changed".into());
        } else if steps.is_empty() {
            say(
                &options,
                "every node runs the pinned versions: nothing to upgrade",
            );
        }
        upgrade.cluster.connections.close().await;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let probes = if options.measure {
        Some(start_probes(&upgrade).await?)
    } else {
        None
    };
    let mut windows: Vec<(String, (u64, u64))> = Vec::new();
    let outcome = async {
        for (index, step) in steps.iter().enumerate() {
            say(
                &options,
                &format!("step {}/{}: {step}", index + 1, steps.len()),
            );
            let began = Instant::now();
            let began_ms = probes.as_ref().map(|(probes, _, _)| probes.now_ms());
            let result = match step.kind {
                StepKind::Etcd => upgrade.etcd_step(step).await,
                StepKind::Database => upgrade.database_step(step).await,
                StepKind::Patroni => upgrade.patroni_step(step).await,
                StepKind::Switchover => upgrade.switchover_step(step, &steps[index + 1..]).await,
                StepKind::Haproxy => upgrade.haproxy_step(step).await,
                StepKind::Keepalived => upgrade.keepalived_step(step).await,
                StepKind::Agent => upgrade.agent_step(step).await,
            };
            // Every step's window, a failed one's too, so that failures during it are located.
            let window = began_ms.zip(probes.as_ref().map(|(probes, _, _)| probes.now_ms()));
            if let Some(window) = window {
                windows.push((step.to_string(), window));
            }
            if let Err(error) = result {
                return Err(format!(
                    "step {}/{} ({step}) failed: {error:#}; run `pgha upgrade` again to continue from there",
                    index + 1,
                    steps.len()
                ));
            }
            let seconds = began.elapsed().as_secs_f64();
            say(&options, &format!("done in {seconds:.1} s"));
            report.done.push(StepDone {
                step: step.clone(),
                seconds,
                probe_window_ms: window,
            });
        }
        Ok(())
    }
    .await;
    if let Some((probes, vip, run)) = probes {
        // A moment after the last step, so the tail of the run is measured too.
        tokio::time::sleep(Duration::from_secs(2)).await;
        report.measured = Some(finish_probes(probes, &vip, &run, &windows).await?);
    }
    if let Err(reason) = outcome {
        report.stopped = Some(reason);
        report.success = false;
    }
    upgrade.cluster.connections.close().await;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
