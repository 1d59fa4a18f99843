//! Operations on a live cluster: `verify` (end-to-end assertions), `status` (one screen) and
//! `switchover` (planned, through Patroni, with checks before and after). Observation is in
//! [`observe`], judgement in [`verify`]; this module sequences them and runs the SQL probes.

pub mod observe;
pub mod tls_check;
pub mod verify;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::engine::report::Reporter;
use crate::engine::runner::Connections;
use crate::error::UserError;
use crate::inventory::{Inventory, Role, Secrets, SyncMode};
use crate::patroni::{Credentials, Patroni, Role as PatroniRole, State};
use crate::ssh::RemoteCommand;
use observe::{members, observe, NodeView};
use verify::{assess, leader_name, Check};

/// A loaded inventory with its secrets and SSH connections.
pub struct Cluster {
    pub inventory: Arc<Inventory>,
    pub secrets: Secrets,
    pub connections: Arc<Connections>,
}

impl Cluster {
    pub fn open(path: &Path, accept_new_host_keys: bool) -> anyhow::Result<Cluster> {
        let inventory = Arc::new(Inventory::load(path)?);
        let secrets = Secrets::load(&inventory.cluster.secrets_file)
            .context("the cluster's secrets file is needed (it is made by `pgha deploy`)")?;
        let connections = Arc::new(Connections::new(inventory.clone(), accept_new_host_keys));
        Ok(Cluster {
            inventory,
            secrets,
            connections,
        })
    }

    pub async fn observe(&self) -> Vec<NodeView> {
        observe(self.inventory.clone(), self.connections.clone()).await
    }

    /// Run `pgha agent ARGS` as root on every HAProxy node, in parallel; the output of each.
    /// Every node is asked even when one fails (a release must reach all of them); the
    /// failures are returned together.
    pub async fn agent_on_haproxy_nodes(&self, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let reporter = Arc::new(Reporter::new(true, Vec::new(), Vec::new()));
        let mut argv = vec!["/usr/local/bin/pgha", "agent"];
        argv.extend_from_slice(args);
        let command = RemoteCommand::argv(argv).as_root();
        let mut handles = Vec::new();
        for node in self.inventory.nodes_with(Role::Haproxy).cloned() {
            let (connections, reporter, command) =
                (self.connections.clone(), reporter.clone(), command.clone());
            handles.push(tokio::spawn(async move {
                let session = connections
                    .get(&node, &reporter)
                    .await
                    .map_err(|reason| format!("{}: {reason}", node.name))?;
                session
                    .run_checked(&command)
                    .await
                    .map(|output| output.stdout_text())
                    .map_err(|error| format!("{}: {error:#}", node.name))
            }));
        }
        let (mut outputs, mut failures) = (Vec::new(), Vec::new());
        for handle in handles {
            match handle.await {
                Ok(Ok(output)) => outputs.push(output),
                Ok(Err(failure)) => failures.push(failure),
                Err(error) => failures.push(error.to_string()),
            }
        }
        if failures.is_empty() {
            Ok(outputs)
        } else {
            bail!(
                "`pgha agent {}` failed on {}",
                args.join(" "),
                failures.join("; ")
            )
        }
    }

    /// Announce a planned hand-over away from `from` to the agent on every HAProxy node
    /// (`pgha agent hold-writes FROM`: its write server is drained at once, so new writes wait
    /// in HAProxy for the next leader instead of meeting a stopping primary), or, with `None`,
    /// end it everywhere. Whether writes are held: not with `cluster.haproxy.hold_connections_ms: 0`
    /// (no HAProxy would hold them: draining early would only refuse them longer).
    pub async fn hold_writes(&self, from: Option<&str>) -> anyhow::Result<bool> {
        if self.inventory.cluster.haproxy.hold_connections_ms == 0 {
            return Ok(false);
        }
        let args = match from {
            // Long enough for Patroni's checkpoint and demotion; short enough that a run cut
            // off holds nothing for long.
            Some(server) => vec!["hold-writes", server, "--seconds", "60"],
            None => vec!["hold-writes", "--release"],
        };
        self.agent_on_haproxy_nodes(&args).await.map(|_| true)
    }

    /// Run SQL through `host:port` from this machine with `psql` (password in the environment).
    async fn sql(&self, host: &str, port: u16, sql: &str) -> Result<String, String> {
        let output = tokio::process::Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGHOST", host)
            .env("PGPORT", port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .env("PGPASSWORD", &self.secrets.superuser_password)
            .env("PGCONNECT_TIMEOUT", "3")
            // As applications should: TLS, the server's name checked against the cluster CA.
            .env("PGSSLMODE", "verify-full")
            .env(
                "PGSSLROOTCERT",
                crate::tls::ClientFiles::control(&self.inventory).ca,
            )
            .output()
            .await
            .map_err(|error| {
                format!("cannot run `psql` ({error}); hint: apt-get install postgresql-client")
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }

    /// Writes through every HAProxy and the VIP land on the primary, reads on a replica, and a
    /// row written through the write port reaches every replica.
    async fn routing_checks(&self, views: &[NodeView]) -> Vec<Check> {
        let mut checks = Vec::new();
        let primary = leader_name(views);
        let primary_address = primary
            .as_ref()
            .and_then(|name| self.inventory.node(name))
            .map(|node| node.address.to_string());
        let ports = self.inventory.cluster.ports;
        let mut entries: Vec<(String, String)> = self
            .inventory
            .nodes_with(Role::Haproxy)
            .map(|node| (node.name.clone(), node.address.to_string()))
            .collect();
        if let Some(vip) = self.inventory.cluster.vip {
            entries.push(("vip".to_string(), vip.address.to_string()));
        }
        let probe = "select host(inet_server_addr()) || ' ' || pg_is_in_recovery()";
        for (name, address) in &entries {
            let write = self.sql(address, ports.write, probe).await;
            let pass = matches!(&write, Ok(answer) if Some(answer.clone()) == primary_address.as_ref().map(|primary| format!("{primary} false")));
            checks.push(Check::new(
                format!("routing.{name}.write"),
                pass,
                format!(
                    "{address}:{} answered {write:?}; primary {primary_address:?}",
                    ports.write
                ),
            ));
            let read = self.sql(address, ports.read, probe).await;
            let pass = matches!(&read, Ok(answer) if answer.ends_with(" true") && primary_address.as_ref().is_none_or(|primary| !answer.starts_with(&format!("{primary} "))));
            checks.push(Check::new(
                format!("routing.{name}.read"),
                pass,
                format!("{address}:{} answered {read:?}", ports.read),
            ));
        }
        // A row written through the write port must reach every replica.
        let Some((_, entry)) = entries.last() else {
            return checks;
        };
        let marker = format!(
            "verify-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        );
        let written = self
            .sql(entry, ports.write, &format!("create table if not exists pgha_verify (id text primary key, at timestamptz default now()); delete from pgha_verify where at < now() - interval '1 day'; insert into pgha_verify (id) values ('{marker}')"))
            .await;
        if let Err(error) = written {
            checks.push(Check::new(
                "routing.replication",
                false,
                format!("write through {entry}:{} failed: {error}", ports.write),
            ));
            return checks;
        }
        let started = Instant::now();
        let reporter = Reporter::new(true, Vec::new(), Vec::new());
        let replicas: Vec<_> = self
            .inventory
            .nodes_with(Role::Postgres)
            .filter(|node| Some(&node.name) != primary.as_ref())
            .cloned()
            .collect();
        let mut missing: Vec<String> = replicas.iter().map(|node| node.name.clone()).collect();
        while !missing.is_empty() && started.elapsed() < Duration::from_secs(10) {
            let mut still = Vec::new();
            for node in replicas.iter().filter(|node| missing.contains(&node.name)) {
                let found = match self.connections.get(node, &reporter).await {
                    Ok(session) => session
                        .run(&RemoteCommand::script("runuser -u postgres -- psql -XAtqc \"select count(*) from pgha_verify where id = '$1'\"").arg(marker.clone()).as_root())
                        .await
                        .map(|output| output.stdout_text().trim() == "1")
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if !found {
                    still.push(node.name.clone());
                }
            }
            missing = still;
            if !missing.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        checks.push(Check::new(
            "routing.replication",
            missing.is_empty(),
            if missing.is_empty() {
                format!(
                    "a row written through {entry}:{} was on every replica after {} ms",
                    ports.write,
                    started.elapsed().as_millis()
                )
            } else {
                format!("not on {missing:?} within 10 s")
            },
        ));
        checks
    }
}

/// The result of `pgha verify`.
#[derive(Debug, Serialize)]
pub struct Verification {
    pub success: bool,
    pub checks: Vec<Check>,
}

pub async fn verify(cluster: &Cluster) -> Verification {
    let views = cluster.observe().await;
    let mut checks = assess(&cluster.inventory, &views);
    checks.extend(cluster.routing_checks(&views).await);
    checks.extend(tls_check::checks(&cluster.inventory).await);
    cluster.connections.close().await;
    Verification {
        success: checks.iter().all(|check| check.pass),
        checks,
    }
}

/// One screen about the live cluster.
#[derive(Debug, Serialize)]
pub struct Status {
    pub members: Vec<observe::Member>,
    pub etcd: Vec<(String, Option<bool>)>,
    pub vip_holders: Vec<String>,
    /// HAProxy node → servers UP in the write backend.
    pub write_routes: Vec<(String, Vec<String>)>,
    pub unreachable: Vec<(String, String)>,
}

pub async fn status(cluster: &Cluster) -> Status {
    let views = cluster.observe().await;
    let status = Status {
        members: members(&views),
        etcd: views
            .iter()
            .filter(|view| {
                cluster
                    .inventory
                    .node(&view.name)
                    .is_some_and(|node| node.has(Role::Etcd))
            })
            .map(|view| (view.name.clone(), view.etcd_health))
            .collect(),
        vip_holders: views
            .iter()
            .filter(|view| view.holds_vip == Some(true))
            .map(|view| view.name.clone())
            .collect(),
        write_routes: views
            .iter()
            .filter(|view| !view.haproxy.is_empty())
            .map(|view| {
                (
                    view.name.clone(),
                    view.haproxy
                        .get("pgha_write")
                        .map(|servers| {
                            servers
                                .iter()
                                .filter(|(_, status)| status.starts_with("UP"))
                                .map(|(name, _)| name.clone())
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            })
            .collect(),
        unreachable: views
            .iter()
            .filter_map(|view| {
                view.unreachable
                    .clone()
                    .map(|reason| (view.name.clone(), reason))
            })
            .collect(),
    };
    status
}

/// What a switchover did and how long each step took.
#[derive(Debug, Serialize)]
pub struct Switchover {
    pub from: String,
    pub to: String,
    /// New writes held on every HAProxy after this long (the moment the times below count
    /// from is just before); `None`: the hold could not be set and new writes were refused.
    pub writes_held_ms: Option<u128>,
    pub leader_changed_ms: u128,
    pub routed_ms: u128,
    /// The old primary streams from the new one (and, with synchronous replication, a
    /// synchronous standby is assigned again).
    pub old_primary_streaming_ms: u128,
}

/// Planned switchover through Patroni's API: checks a healthy candidate (a synchronous standby
/// when synchronous mode is on), asks the leader, then waits until the candidate leads, every
/// HAProxy routes writes to it and the old primary streams from it.
/// The caller closes the cluster's connections.
pub async fn switchover(cluster: &Cluster, to: Option<&str>) -> anyhow::Result<Switchover> {
    let views = cluster.observe().await;
    let members = members(&views);
    let Some(leader) = leader_name(&views) else {
        bail!("the cluster has no leader now; hint: see `pgha status`")
    };
    let sync = cluster.inventory.cluster.synchronous_mode != SyncMode::Off;
    let eligible = |name: &str| {
        members.iter().any(|member| {
            member.name == name
                && member.state == State::Streaming
                && (!sync || member.role == PatroniRole::SyncStandby)
        }) && cluster
            .inventory
            .node(name)
            .is_some_and(|node| !node.tags.nofailover)
    };
    let candidate = match to {
        Some(name) => {
            if cluster.inventory.node(name).is_none() {
                bail!(UserError(format!(
                    "`{name}` is not a node of this inventory"
                )));
            }
            if name == leader {
                bail!(UserError(format!("`{name}` is already the primary")));
            }
            if !eligible(name) {
                bail!("`{name}` cannot take over now: it must be streaming{}, without `nofailover`; hint: see `pgha status`", if sync { " as a synchronous standby" } else { "" });
            }
            name.to_string()
        }
        None => members
            .iter()
            .map(|member| member.name.clone())
            .find(|name| *name != leader && eligible(name))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no healthy candidate{}; hint: see `pgha status`",
                    if sync {
                        " (a streaming synchronous standby)"
                    } else {
                        ""
                    }
                )
            })?,
    };
    let leader_node = cluster
        .inventory
        .node(&leader)
        .context("the leader is not in the inventory")?
        .clone();
    let reporter = Reporter::new(true, Vec::new(), Vec::new());
    let session = cluster
        .connections
        .get(&leader_node, &reporter)
        .await
        .map_err(|reason| anyhow::anyhow!(reason))?;
    let base = crate::patroni::model::api_at(
        leader_node.address,
        cluster.inventory.cluster.ports.patroni_api,
    );
    let patroni = Patroni::over_ssh(
        session,
        Some(Credentials::pgha(&cluster.secrets.restapi_password)),
    );
    // The times reported count from here: new writes wait from the hold on.
    let started = Instant::now();
    let writes_held_ms = match cluster.hold_writes(Some(&leader)).await {
        Ok(true) => Some(started.elapsed().as_millis()),
        Ok(false) => None,
        // Set everywhere or nowhere: given up (and said), the switchover goes on without it.
        Err(error) => {
            eprintln!("warning: new writes are refused during this hand-over: {error:#}");
            let _ = cluster.hold_writes(None).await;
            None
        }
    };
    // Patroni answers once the switchover is over (or refused): the old primary has handed
    // the leader key over, or keeps it; either way the hold has done its work and ends here,
    // on every path.
    let requested = patroni
        .switchover(&base, &leader, Some(&candidate), Duration::ZERO)
        .await
        .context("Patroni refused the switchover");
    if writes_held_ms.is_some() {
        if let Err(error) = cluster.hold_writes(None).await {
            eprintln!("warning: the write hold could not be ended everywhere (it expires within 60 s): {error:#}");
        }
    }
    let result = match requested {
        Ok(_) => follow_switchover(cluster, &leader, &candidate, sync, started)
            .await
            .map(|switchover| Switchover {
                writes_held_ms,
                ..switchover
            }),
        Err(error) => Err(error),
    };
    result
}

/// Follow a switchover Patroni accepted until the candidate leads, every HAProxy routes to
/// it, and the old primary streams.
async fn follow_switchover(
    cluster: &Cluster,
    leader: &str,
    candidate: &str,
    sync: bool,
    started: Instant,
) -> anyhow::Result<Switchover> {
    let (mut leader_changed, mut routed, mut streaming) = (None, None, None);
    while started.elapsed() < Duration::from_secs(90) {
        let views = cluster.observe().await;
        let now = started.elapsed().as_millis();
        let members = observe::members(&views);
        if leader_changed.is_none()
            && members.iter().any(|member| {
                member.name == candidate && member.is_leader() && member.state == State::Running
            })
        {
            leader_changed = Some(now);
        }
        if leader_changed.is_some() && routed.is_none() {
            let all_routed = views
                .iter()
                .filter(|view| !view.haproxy.is_empty())
                .all(|view| {
                    view.haproxy.get("pgha_write").is_some_and(|servers| {
                        servers
                            .iter()
                            .filter(|(_, status)| status.starts_with("UP"))
                            .map(|(name, _)| name.as_str())
                            .eq([candidate])
                    })
                });
            if all_routed {
                routed = Some(now);
            }
        }
        // With synchronous replication, done means a synchronous standby is assigned again.
        let sync_ready = !sync
            || members
                .iter()
                .any(|member| member.role == PatroniRole::SyncStandby);
        if leader_changed.is_some()
            && streaming.is_none()
            && sync_ready
            && members
                .iter()
                .any(|member| member.name == leader && member.state == State::Streaming)
        {
            streaming = Some(now);
        }
        if let (Some(leader_changed), Some(routed), Some(streaming)) =
            (leader_changed, routed, streaming)
        {
            return Ok(Switchover {
                writes_held_ms: None,
                from: leader.to_string(),
                to: candidate.to_string(),
                leader_changed_ms: leader_changed,
                routed_ms: routed,
                old_primary_streaming_ms: streaming,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "switchover from `{leader}` to `{candidate}` did not complete within 90 s (leader changed: {}, routed: {}, old primary streaming: {})",
        leader_changed.is_some(),
        routed.is_some(),
        streaming.is_some()
    )
}
