//! `pgha drill`: failure drills that measure the truth. A drill checks that the cluster is
//! healthy, starts the probes ([`probe`]), injects one fault ([`fault`]), waits for a primary
//! that accepts writes through the VIP, heals, waits until the old primary streams again and
//! reports what clients saw: the write outage, acknowledged writes lost, moments with two
//! writable primaries, next to the failover-time model's range ([`model`]).
//!
//! This module owns the flow of one repetition and the result types; it never prints (progress
//! goes to a callback, results are returned). Whatever it broke it heals on every path out.

pub mod fault;
pub mod model;
pub mod phases;
pub mod probe;
pub mod svg;
pub mod verdict;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::engine::runner::Connections;
use crate::error::UserError;
use crate::inventory::{Inventory, Role, Secrets, SyncMode};
use crate::patroni::{ClusterView, Credentials, Patroni};
use fault::{HealGuard, Injected, Injector};
use model::ExpectedOutage;
use probe::{Endpoint, Probes, Targets};
use verdict::Observed;

/// A drill scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Planned switchover through Patroni's `POST /switchover`.
    Switchover,
    /// Power cut of the primary's node.
    KillPrimary,
    /// SIGKILL of PostgreSQL on the primary (Patroni lives on).
    KillPostgres,
    /// The primary's node cut off the network.
    PartitionPrimary,
    /// The primary's node frozen (a hung machine), thawed after the failover.
    FreezePrimary,
    /// HAProxy killed (and kept down) on the node holding the VIP.
    KillHaproxy,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Switchover,
        Scenario::KillPrimary,
        Scenario::KillPostgres,
        Scenario::PartitionPrimary,
        Scenario::FreezePrimary,
        Scenario::KillHaproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Switchover => "switchover",
            Scenario::KillPrimary => "kill-primary",
            Scenario::KillPostgres => "kill-postgres",
            Scenario::PartitionPrimary => "partition-primary",
            Scenario::FreezePrimary => "freeze-primary",
            Scenario::KillHaproxy => "kill-haproxy",
        }
    }

    /// Whether the scenario can be done on real hosts (over SSH or the REST API).
    pub fn works_over_ssh(self) -> bool {
        matches!(
            self,
            Scenario::Switchover | Scenario::KillPostgres | Scenario::KillHaproxy
        )
    }

    /// The scenarios real hosts allow, as a sentence fragment.
    pub fn over_ssh() -> String {
        let names: Vec<String> = Scenario::ALL
            .iter()
            .filter(|scenario| scenario.works_over_ssh())
            .map(|scenario| format!("`{scenario}`"))
            .collect();
        names.join(", ")
    }

    /// Whether another node must become primary for the drill to pass.
    pub fn requires_new_primary(self) -> bool {
        matches!(
            self,
            Scenario::Switchover
                | Scenario::KillPrimary
                | Scenario::PartitionPrimary
                | Scenario::FreezePrimary
        )
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = UserError;

    fn from_str(text: &str) -> Result<Scenario, UserError> {
        Scenario::ALL
            .into_iter()
            .find(|scenario| scenario.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                UserError(format!(
                    "unknown drill scenario `{text}`\nhint: one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// What `pgha drill` needs.
pub struct DrillOptions {
    pub inventory: PathBuf,
    pub scenario: Scenario,
    pub repeat: usize,
    /// The user confirmed a drill on real hosts (`--yes` or a prompt).
    pub confirmed_real_hosts: bool,
    pub progress: Box<dyn Fn(&str) + Send + Sync>,
}

/// One repetition's measurements and verdict.
#[derive(Debug, Clone, Serialize)]
pub struct DrillRun {
    pub repetition: usize,
    pub old_primary: String,
    pub new_primary: Option<String>,
    pub failover: bool,
    /// The fault's target: the primary, or the VIP holder for `kill-haproxy`.
    pub target: String,
    pub timeline_before: Option<u64>,
    pub timeline_after: Option<u64>,
    /// The longest time without an acknowledged commit through the VIP for a client that opens
    /// a new connection for every write (attempts every 100 ms, overlapping): from the last
    /// acknowledgement before the gap to the first one after it.
    pub outage_ms: u64,
    /// Where that gap lies, in ms since the probes started (the fault is at `fault_ms`).
    pub outage: Option<probe::Gap>,
    pub fault_ms: u64,
    /// The same for a client on one persistent connection (reopened after a failure; its
    /// 1.5 s write timeout limits its resolution).
    pub persistent_outage_ms: u64,
    /// From the fault to the end of the outage.
    pub recovery_ms: u64,
    /// Write attempts of both clients through the VIP.
    pub writes: usize,
    /// Failed attempts of the new-connection client, and of the persistent one.
    pub failed_writes: usize,
    pub persistent_failed_writes: usize,
    pub acknowledged_writes_lost: usize,
    pub lost_ids: Vec<i64>,
    pub unacknowledged_but_stored: usize,
    /// Probe rounds with two nodes out of recovery that could both acknowledge commits.
    pub double_primary_moments: usize,
    pub double_primary_nodes: Vec<String>,
    /// Probe rounds with a second node out of recovery that could not acknowledge a commit
    /// (a resumed old primary before Patroni demotes it; its synchronous standbys moved on).
    pub fenced_primary_moments: usize,
    pub fenced_primary_nodes: Vec<String>,
    /// `partition-primary` on the lab: commits the cut-off old primary acknowledged while
    /// isolated, probed from inside its own network (`None`: not probed).
    pub isolated_acknowledged_writes: Option<usize>,
    /// Of the isolated probe's attempts while the node was cut off, those that opened a
    /// connection to it: the probe could see it.
    pub isolated_connected_writes: Option<usize>,
    /// `kill-postgres`: the postmaster's pid before the kill and once PostgreSQL is back.
    pub postmaster_pid_before: Option<u32>,
    pub postmaster_pid_after: Option<u32>,
    /// `kill-haproxy`: the nodes holding the VIP after recovery (the target held it before).
    pub vip_holders_after: Option<Vec<String>>,
    /// From the fault until the old primary streams from the new one (`None`: it stayed
    /// primary). For faults healed by the drill this includes the time until the heal.
    pub old_primary_streaming_after_ms: Option<u64>,
    /// From the heal (right after writes resumed) until the old primary streams.
    pub old_primary_streaming_after_heal_ms: Option<u64>,
    /// Where the seconds went, from what every node saw (`pgha agent timeline`).
    pub phases: phases::Phases,
    /// What every node saw, each change of its sample (ms on the probes' clock).
    pub node_samples: Vec<phases::Seen>,
    pub within_model: bool,
    pub passed: bool,
    /// Why the verdict failed, one sentence each.
    pub problems: Vec<String>,
    /// What `--timeline` draws (not in the JSON: every attempt is there already as counts).
    #[serde(skip)]
    pub panel: svg::Panel,
}

/// The median and worst of all repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct DrillSummary {
    pub repetitions: usize,
    pub median_outage_ms: u64,
    pub worst_outage_ms: u64,
    pub median_persistent_outage_ms: u64,
    pub acknowledged_writes_lost: usize,
    pub double_primary_moments: usize,
    pub fenced_primary_moments: usize,
    /// The median of each phase over the repetitions that saw it.
    pub phase_medians: Vec<PhaseMedian>,
    pub passed: bool,
}

/// One phase's median (ms from the fault) over the repetitions that saw it.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseMedian {
    pub phase: &'static str,
    pub median_ms: Option<u64>,
    /// Repetitions that saw the phase.
    pub seen: usize,
}

/// The whole drill.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub scenario: Scenario,
    pub cluster: String,
    pub profile: String,
    pub synchronous_mode: bool,
    pub lab: bool,
    pub expected: ExpectedOutage,
    pub runs: Vec<DrillRun>,
    pub summary: DrillSummary,
    /// Set when a repetition could not complete (the fault was healed all the same).
    pub error: Option<String>,
}

/// How long to wait for a healthy cluster before a repetition.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the old primary may take to stream again after the heal.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(180);
/// Probing before the fault (a baseline of acknowledged writes).
const BASELINE: Duration = Duration::from_secs(2);
/// Probing after the old primary streams again (catches a late second primary).
const SETTLE: Duration = Duration::from_secs(2);
/// With no failover expected and no failed write this long after the fault, clients saw none.
const QUIET_AFTER_FAULT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(250);

/// Everything a repetition needs, resolved once.
struct Drill {
    inventory: Arc<Inventory>,
    connections: Arc<Connections>,
    rest: Patroni,
    /// Port of every member's REST API.
    api_port: u16,
    vip: Endpoint,
    nodes: Vec<(String, Endpoint)>,
    injector: Injector,
    expected: ExpectedOutage,
    progress: Box<dyn Fn(&str) + Send + Sync>,
}

impl Drill {
    /// `https://host:port` of the REST API of the member at `address`.
    fn api(&self, address: &std::net::IpAddr) -> String {
        crate::patroni::model::api_at(*address, self.api_port)
    }
}

/// Validate, then run the drill `repeat` times. Returns the report even when a repetition
/// failed (its `error` says why); an `Err` means nothing was injected.
pub async fn run(options: DrillOptions) -> anyhow::Result<DrillReport> {
    if options.repeat == 0 {
        bail!(UserError("`--repeat` must be at least 1".into()));
    }
    let inventory = Arc::new(Inventory::load(&options.inventory)?);
    let lab = is_lab(&inventory);
    let scenario = options.scenario;
    if !lab {
        if !scenario.works_over_ssh() {
            bail!(UserError(format!(
                "`{scenario}` needs the local lab; these hosts are not the lab\nhint: on real hosts: {}",
                Scenario::over_ssh()
            )));
        }
        if !options.confirmed_real_hosts {
            bail!(UserError(
                "a drill on real hosts breaks the cluster on purpose and needs confirmation\nhint: pass `--yes`".into()
            ));
        }
    }
    let secrets = Secrets::load(&inventory.cluster.secrets_file).with_context(|| {
        "the drill needs the cluster's passwords\nhint: deploy first: `pgha deploy -i INV`"
    })?;
    let Some(vip) = inventory.cluster.vip else {
        bail!(UserError(
            "the drill probes writes through the VIP and the inventory has none\nhint: set `cluster.vip`".into()
        ));
    };
    let tls = crate::tls::ClientFiles::control(&inventory);
    let postgres_tls = tls.postgres()?;
    let endpoint = |host: String, port: u16| Endpoint {
        host,
        port,
        user: "postgres".into(),
        password: secrets.superuser_password.clone(),
        inside: None,
        tls: postgres_tls.clone(),
    };
    let expected = model::expected_outage(
        scenario,
        &inventory.cluster.patroni,
        &inventory.cluster.haproxy,
        inventory.cluster.corroborated_failover,
    );
    let context = Drill {
        connections: Arc::new(Connections::new(inventory.clone(), false)),
        rest: Patroni::direct(
            Credentials::pgha(&secrets.restapi_password),
            Some(tls.rustls()?),
        ),
        api_port: inventory.cluster.ports.patroni_api,
        vip: endpoint(vip.address.to_string(), inventory.cluster.ports.write),
        // On the lab each node is probed from inside its own network, so that a partitioned
        // node is still seen.
        nodes: inventory
            .nodes_with(Role::Postgres)
            .map(|node| {
                let mut on_node =
                    endpoint(node.address.to_string(), inventory.cluster.ports.postgres);
                on_node.inside = lab.then(|| node.name.clone());
                (node.name.clone(), on_node)
            })
            .collect(),
        injector: if lab { Injector::Lab } else { Injector::Ssh },
        expected,
        progress: options.progress,
        inventory: inventory.clone(),
    };
    let mut runs = Vec::new();
    let mut error = None;
    for repetition in 1..=options.repeat {
        (context.progress)(&format!(
            "drill `{scenario}` {repetition}/{}",
            options.repeat
        ));
        match run_once(&context, scenario, repetition).await {
            Ok(run) => runs.push(run),
            Err(failure) => {
                error = Some(format!("repetition {repetition}: {failure:#}"));
                break;
            }
        }
    }
    let summary = summarize(&runs, error.is_none());
    Ok(DrillReport {
        scenario,
        cluster: inventory.cluster.name.clone(),
        profile: format!("{:?}", inventory.cluster.failover_profile).to_lowercase(),
        synchronous_mode: inventory.cluster.synchronous_mode != SyncMode::Off,
        lab,
        expected,
        runs,
        summary,
        error,
    })
}

/// Whether the inventory's nodes are the local lab's nodes (same names and addresses).
fn is_lab(inventory: &Inventory) -> bool {
    let Ok(lab) = crate::lab::Lab::open() else {
        return false;
    };
    let lab_nodes = lab.nodes();
    !lab_nodes.is_empty()
        && inventory.nodes.iter().all(|node| {
            lab_nodes.iter().any(|lab_node| {
                lab_node.name() == node.name
                    && std::net::IpAddr::V4(lab_node.address()) == node.address
            })
        })
}

/// Median and worst outage of the runs.
pub fn summarize(runs: &[DrillRun], completed: bool) -> DrillSummary {
    let mut outages: Vec<u64> = runs.iter().map(|run| run.outage_ms).collect();
    outages.sort_unstable();
    let mut persistent: Vec<u64> = runs.iter().map(|run| run.persistent_outage_ms).collect();
    persistent.sort_unstable();
    DrillSummary {
        repetitions: runs.len(),
        median_outage_ms: median(&outages),
        worst_outage_ms: outages.last().copied().unwrap_or(0),
        median_persistent_outage_ms: median(&persistent),
        acknowledged_writes_lost: runs.iter().map(|run| run.acknowledged_writes_lost).sum(),
        double_primary_moments: runs.iter().map(|run| run.double_primary_moments).sum(),
        fenced_primary_moments: runs.iter().map(|run| run.fenced_primary_moments).sum(),
        phase_medians: phase_medians(runs),
        passed: completed && !runs.is_empty() && runs.iter().all(|run| run.passed),
    }
}

fn phase_medians(runs: &[DrillRun]) -> Vec<PhaseMedian> {
    phases::Phases::default()
        .marks()
        .into_iter()
        .enumerate()
        .map(|(index, (phase, _))| {
            let mut values: Vec<u64> = runs
                .iter()
                .filter_map(|run| run.phases.marks()[index].1)
                .collect();
            values.sort_unstable();
            PhaseMedian {
                phase,
                median_ms: (!values.is_empty()).then(|| median(&values)),
                seen: values.len(),
            }
        })
        .collect()
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(sorted: &[u64]) -> u64 {
    match sorted.len() {
        0 => 0,
        length if length % 2 == 1 => sorted[length / 2],
        length => (sorted[length / 2 - 1] + sorted[length / 2]) / 2,
    }
}

/// `/cluster` from the first node that answers, skipping `avoid` (a node under a fault).
async fn cluster_view(context: &Drill, avoid: Option<&str>) -> anyhow::Result<ClusterView> {
    let mut last_error = None;
    for node in context.inventory.nodes_with(Role::Postgres) {
        if Some(node.name.as_str()) == avoid {
            continue;
        }
        match context.rest.cluster(&context.api(&node.address)).await {
            Ok(view) => return Ok(view),
            Err(error) => last_error = Some(error),
        }
    }
    match last_error {
        Some(error) => Err(error.into()),
        None => bail!("no node to ask for `/cluster`"),
    }
}

/// Wait until the cluster is healthy; the view then.
async fn wait_healthy(context: &Drill) -> anyhow::Result<ClusterView> {
    let names: Vec<String> = context
        .inventory
        .nodes_with(Role::Postgres)
        .map(|node| node.name.clone())
        .collect();
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        let reason = match cluster_view(context, None).await {
            Ok(view) => match view.unhealthy_reason(&names) {
                None => return Ok(view),
                Some(reason) => reason,
            },
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "the cluster is not healthy after {} s: {reason}\nhint: `pgha exec -i INV -- patronictl -c /etc/patroni/patroni.yml list`",
                HEALTHY_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Create the probe table through the VIP (retrying while routing settles).
async fn ensure_table(context: &Drill) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let client = context.vip.connect().await?;
            client.batch_execute(probe::TABLE_DDL).await?;
            Ok::<_, probe::ConnectError>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                return Err(error).with_context(|| {
                    format!(
                        "cannot create the probe table through the VIP `{:?}`",
                        context.vip
                    )
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// The ids of `run` the primary holds (read through the VIP).
async fn stored_ids(context: &Drill, run: &str) -> anyhow::Result<BTreeSet<i64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let client = context.vip.connect().await?;
            let rows = client
                .query("select id from pgha_drill where run = $1", &[&run])
                .await?;
            let ids = rows
                .iter()
                .map(|row| row.try_get::<_, i64>(0))
                .collect::<Result<BTreeSet<i64>, _>>()?;
            Ok::<_, probe::ConnectError>(ids)
        };
        match attempt.await {
            Ok(ids) => return Ok(ids),
            Err(error) if Instant::now() > deadline => {
                return Err(error).context("cannot read the probe's rows back through the VIP")
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// One repetition: healthy → probes → fault → recovery → heal → rejoin → verdict.
async fn run_once(
    context: &Drill,
    scenario: Scenario,
    repetition: usize,
) -> anyhow::Result<DrillRun> {
    let progress = &context.progress;
    let before = wait_healthy(context).await?;
    let old_primary = before
        .leader()
        .map(|leader| leader.name.clone())
        .context("no leader")?;
    let timeline_before = before.leader().and_then(|leader| leader.timeline);
    let target_name = if scenario == Scenario::KillHaproxy {
        fault::vip_holder(&context.inventory, &context.connections).await?
    } else {
        old_primary.clone()
    };
    let target = context
        .inventory
        .node(&target_name)
        .with_context(|| format!("`{target_name}` is not in the inventory"))?
        .clone();
    ensure_table(context).await?;
    let run_id = format!(
        "{scenario}-{}-{repetition}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    progress(&format!(
        "healthy: `{old_primary}` is primary (timeline {}); probing writes through the VIP",
        timeline_before.map_or("?".into(), |timeline| timeline.to_string())
    ));
    // A partition on the lab: the old primary is also probed from inside its own network,
    // where a client cut off with it would still reach it.
    let isolated = (scenario == Scenario::PartitionPrimary
        && matches!(context.injector, Injector::Lab))
    .then(|| {
        context
            .nodes
            .iter()
            .find(|(name, _)| *name == old_primary)
            .map(|(_, endpoint)| Endpoint {
                inside: Some(old_primary.clone()),
                ..endpoint.clone()
            })
    })
    .flatten();
    let isolated_probed = isolated.is_some();
    let probes = Probes::start(Targets {
        run: run_id.clone(),
        vip: context.vip.clone(),
        nodes: context.nodes.clone(),
        isolated,
        reads: None,
    });
    // Every node writes what it sees from here on; the phases are read from it at the end.
    let probes_epoch_ms = epoch_ms().saturating_sub(probes.now_ms());
    let timelines = Timelines::start(context, &run_id).await;
    tokio::time::sleep(BASELINE).await;
    if !probes
        .writes()
        .iter()
        .any(|attempt| attempt.client == probe::WriteClient::NewConnection && attempt.acknowledged)
    {
        probes.stop().await;
        timelines.collect(context).await;
        bail!(
            "no write through the VIP `{:?}` was acknowledged before the fault\nhint: `pgha verify -i INV`",
            context.vip
        );
    }

    let fault_ms = probes.now_ms();
    progress(&format!("injecting `{scenario}` on `{target_name}`"));
    let injected = if scenario == Scenario::Switchover {
        context
            .rest
            .switchover(
                &context.api(&target.address),
                &old_primary,
                None,
                Duration::ZERO,
            )
            .await
            .map(|_| Injected::Nothing)
            .map_err(anyhow::Error::from)
    } else {
        fault::inject(
            &context.injector,
            scenario,
            &context.inventory,
            &context.connections,
            &target,
        )
        .await
    };
    let injected = match injected {
        Ok(injected) => injected,
        Err(error) => {
            probes.stop().await;
            timelines.collect(context).await;
            return Err(error.context(format!("failed to inject `{scenario}`")));
        }
    };
    // From here until the heal starts the fault is certainly in place.
    let injected_ms = probes.now_ms();
    let mut guard = HealGuard::new(&injected);
    let avoid = injected.node().map(str::to_string);

    let recovered = tokio::select! {
        recovered = wait_recovery(context, scenario, &probes, fault_ms, &old_primary, avoid.as_deref()) => recovered,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let recovered_at = probes.now_ms();
    // What the fault must have done, seen from the node before the heal: a new postmaster, or
    // the VIP elsewhere.
    let postmaster = match &injected {
        Injected::PostmasterKilled(_, before) if recovered.is_ok() => Some((
            *before,
            restarted_postmaster(context, &target, *before).await,
        )),
        _ => None,
    };
    let vip_after = if scenario == Scenario::KillHaproxy && recovered.is_ok() {
        Some(
            fault::vip_holders(&context.inventory, &context.connections)
                .await
                .map_err(|error| format!("{error:#}")),
        )
    } else {
        None
    };
    match &recovered {
        Ok(Some(primary)) => progress(&format!(
            "writes resumed on `{primary}` {:.1} s after the fault; healing",
            (recovered_at - fault_ms) as f64 / 1000.0
        )),
        Ok(None) => progress("writes resumed; healing"),
        Err(_) => progress("recovery failed; healing"),
    }
    // Heal on every path out; the guard covers panics and early returns before this line.
    let heal_started_ms = probes.now_ms();
    let healed = fault::heal(&injected, &context.inventory, &context.connections).await;
    guard.disarm();
    let heal_ms = probes.now_ms();
    let new_primary = match recovered {
        Ok(primary) => primary,
        Err(error) => {
            probes.stop().await;
            timelines.collect(context).await;
            if let Err(heal_error) = healed {
                return Err(error.context(format!("and the heal failed: {heal_error:#}")));
            }
            return Err(error);
        }
    };
    if let Err(error) = healed {
        probes.stop().await;
        timelines.collect(context).await;
        return Err(error.context(format!("failed to heal `{scenario}` on `{target_name}`")));
    }

    // The old primary streams again (when another node took over), then a little more probing.
    let failover = new_primary.as_deref().is_some_and(|new| new != old_primary);
    let mut problems = Vec::new();
    // A rejoin that fails is a finding, not a reason to skip counting lost writes.
    let rejoined_ms = if failover {
        match wait_streaming(context, &old_primary).await {
            Ok(()) => Some(probes.now_ms()),
            Err(error) => {
                problems.push(format!("{error:#}").replace('\n', "; "));
                None
            }
        }
    } else {
        None
    };
    tokio::time::sleep(SETTLE).await;
    let log = probes.stop().await;
    let seen = phases::place(&timelines.collect(context).await, probes_epoch_ms);
    let after = cluster_view(context, None).await.ok();
    let leader_after = after.as_ref().and_then(|view| view.leader());
    let timeline_after = leader_after.and_then(|leader| leader.timeline);
    // Writes may resume before `/cluster` shows the restarted leader as running.
    let new_primary = new_primary.or_else(|| leader_after.map(|leader| leader.name.clone()));
    let stored = stored_ids(context, &run_id).await?;

    let probed_nodes: Vec<String> = context.nodes.iter().map(|(name, _)| name.clone()).collect();
    let verdict = verdict::judge(&Observed {
        scenario,
        synchronous: context.inventory.cluster.synchronous_mode != SyncMode::Off,
        expected: context.expected,
        old_primary: &old_primary,
        failover,
        fault_ms,
        in_place: (injected_ms, heal_started_ms),
        log: &log,
        stored: &stored,
        nodes: &probed_nodes,
        postmaster,
        vip: vip_after
            .clone()
            .map(|holders| (target_name.clone(), holders)),
        isolated_probed,
    });
    problems.extend(verdict.problems);
    // The node the fault takes away: its HAProxy need not route to the new leader.
    let faulted = matches!(
        scenario,
        Scenario::KillPrimary | Scenario::PartitionPrimary | Scenario::FreezePrimary
    )
    .then_some(target_name.as_str());
    let first_write = (verdict.recovery_ms > 0).then_some(fault_ms + verdict.recovery_ms);
    let phases = phases::phases(&seen, fault_ms, &old_primary, faulted, first_write);
    let panel = svg::Panel {
        title: format!(
            "repetition {repetition}: {scenario} on {target_name}, outage {:.2} s",
            verdict.outage.map_or(0, |gap| gap.ms()) as f64 / 1000.0
        ),
        fault_ms,
        writes: log.writes.clone(),
        leaders: phases::leaders(&seen),
        phases: phases.clone(),
    };
    Ok(DrillRun {
        repetition,
        old_primary,
        new_primary,
        failover,
        target: target_name,
        timeline_before,
        timeline_after,
        outage_ms: verdict.outage.map_or(0, |gap| gap.ms()),
        outage: verdict.outage,
        fault_ms,
        persistent_outage_ms: verdict.persistent_outage.map_or(0, |gap| gap.ms()),
        recovery_ms: verdict.recovery_ms,
        writes: log
            .writes
            .iter()
            .filter(|attempt| attempt.client != probe::WriteClient::Isolated)
            .count(),
        isolated_connected_writes: verdict.isolated_connected,
        failed_writes: verdict.failed_writes,
        persistent_failed_writes: verdict.persistent_failed_writes,
        acknowledged_writes_lost: verdict.lost_ids.len(),
        unacknowledged_but_stored: verdict.unacknowledged_but_stored,
        lost_ids: verdict.lost_ids.into_iter().take(20).collect(),
        double_primary_moments: verdict.primaries.double_moments,
        double_primary_nodes: verdict.primaries.double_nodes.into_iter().collect(),
        fenced_primary_moments: verdict.primaries.fenced_moments,
        fenced_primary_nodes: verdict.primaries.fenced_nodes.into_iter().collect(),
        isolated_acknowledged_writes: verdict.isolated_acknowledged,
        postmaster_pid_before: postmaster.map(|(before, _)| before),
        postmaster_pid_after: postmaster.and_then(|(_, after)| after),
        vip_holders_after: vip_after.and_then(Result::ok),
        old_primary_streaming_after_ms: rejoined_ms.map(|at| at.saturating_sub(fault_ms)),
        old_primary_streaming_after_heal_ms: rejoined_ms.map(|at| at.saturating_sub(heal_ms)),
        phases,
        node_samples: seen,
        within_model: verdict.within_model,
        passed: problems.is_empty(),
        problems,
        panel,
    })
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// `pgha agent timeline` on every node for one repetition: started as a transient systemd unit
/// writing to a file (a node whose power is cut keeps what it wrote), stopped by a file, read
/// back at the end. A node that cannot be reached leaves a gap in the phases, never a failure.
struct Timelines {
    run: String,
}

impl Timelines {
    fn files(run: &str) -> (String, String) {
        (
            format!("/var/tmp/pgha-timeline-{run}.jsonl"),
            format!("/run/pgha-timeline-{run}.stop"),
        )
    }

    async fn start(context: &Drill, run: &str) -> Timelines {
        let (output, stop) = Timelines::files(run);
        let script = format!(
            "systemd-run --quiet --collect --unit pgha-timeline-{run} /usr/local/bin/pgha agent timeline --stop-file {stop} --output {output} --max-seconds 900"
        );
        for node in &context.inventory.nodes {
            if let Err(error) = fault::run_on(&context.connections, node, &script).await {
                (context.progress)(&format!(
                    "warning: no timeline from `{}` (phases may be missing): {error:#}",
                    node.name
                ));
            }
        }
        Timelines {
            run: run.to_string(),
        }
    }

    /// Stop every node's sampler and read its lines (all nodes' lines, concatenated).
    async fn collect(&self, context: &Drill) -> String {
        let (output, stop) = Timelines::files(&self.run);
        let script = format!(
            "touch {stop}; for attempt in $(seq 20); do systemctl -q is-active pgha-timeline-{run} || break; sleep 0.1; done; systemctl stop pgha-timeline-{run} 2>/dev/null; cat {output} 2>/dev/null; rm -f {output} {stop}",
            run = self.run
        );
        let mut lines = String::new();
        for node in &context.inventory.nodes {
            if let Ok(text) = fault::run_on(&context.connections, node, &script).await {
                lines.push_str(&text);
                lines.push('\n');
            }
        }
        lines
    }
}

/// The postmaster pid on `node` once it differs from `killed` (PostgreSQL came back), waiting
/// up to 30 s; `None` if none runs by then. Read from the node, not inferred from writes.
async fn restarted_postmaster(
    context: &Drill,
    node: &crate::inventory::Node,
    killed: u32,
) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        // A failed read (SSH) keeps the last answer rather than reading as "no postmaster".
        if let Ok(pid) = fault::postmaster_pid(&context.inventory, &context.connections, node).await
        {
            last = pid;
        }
        if last.is_some_and(|pid| pid != killed) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    last
}

/// When the first write of the new-connection probe that started after its last failure since
/// the fault was acknowledged: writes are back, and no later attempt failed.
fn first_ack_after_outage(writes: &[probe::WriteAttempt], fault_ms: u64) -> Option<u64> {
    let probed = || {
        writes
            .iter()
            .filter(|attempt| attempt.client == probe::WriteClient::NewConnection)
    };
    let last_failure = probed()
        .filter(|attempt| !attempt.acknowledged && attempt.started_ms >= fault_ms)
        .map(|attempt| attempt.started_ms)
        .max()?;
    probed()
        .filter(|attempt| attempt.acknowledged && attempt.started_ms > last_failure)
        .map(|attempt| attempt.ended_ms)
        .min()
}

/// Wait until writes are acknowledged through the VIP again after the fault (and, when the
/// scenario needs one, another node leads). Returns the primary then, if known.
async fn wait_recovery(
    context: &Drill,
    scenario: Scenario,
    probes: &Probes,
    fault_ms: u64,
    old_primary: &str,
    avoid: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let limit = Duration::from_millis(context.expected.max_ms) + Duration::from_secs(60);
    let started = Instant::now();
    loop {
        let writes = probes.writes();
        let failed_since_fault = writes.iter().any(|attempt| {
            attempt.client == probe::WriteClient::NewConnection
                && !attempt.acknowledged
                && attempt.started_ms >= fault_ms
        });
        let resumed = first_ack_after_outage(&writes, fault_ms).is_some();
        let quiet = !failed_since_fault && started.elapsed() >= QUIET_AFTER_FAULT;
        if resumed || quiet {
            let leader = cluster_view(context, avoid)
                .await
                .ok()
                .and_then(|view| view.leader().map(|leader| leader.name.clone()));
            let moved = leader
                .as_deref()
                .is_some_and(|leader| leader != old_primary);
            if !scenario.requires_new_primary() || moved {
                return Ok(leader);
            }
        }
        if started.elapsed() > limit {
            bail!(
                "no recovery within {} s of `{scenario}` (writes resumed: {resumed})\nhint: `pgha exec -i INV -- journalctl -u patroni -n 50`",
                limit.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Wait until `node` is a streaming replica again.
async fn wait_streaming(context: &Drill, node: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(view) = cluster_view(context, None).await {
            if view
                .member(node)
                .is_some_and(crate::patroni::Member::streams)
            {
                return Ok(());
            }
        }
        if started.elapsed() > REJOIN_TIMEOUT {
            bail!(
                "`{node}` does not stream again {} s after the heal\nhint: `pgha exec -i INV --limit {node} -- journalctl -u patroni -n 50`",
                REJOIN_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_from_their_names_and_nothing_else() {
        for scenario in Scenario::ALL {
            assert_eq!(scenario.name().parse::<Scenario>().ok(), Some(scenario));
        }
        let error = "kill-everything".parse::<Scenario>().expect_err("unknown");
        assert!(error.0.contains("unknown drill scenario `kill-everything`"));
        assert!(error.0.contains("hint: one of switchover, kill-primary"));
    }

    #[test]
    fn real_hosts_allow_only_what_ssh_can_do() {
        assert_eq!(
            Scenario::over_ssh(),
            "`switchover`, `kill-postgres`, `kill-haproxy`"
        );
        assert!(!Scenario::FreezePrimary.works_over_ssh());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), 0);
        assert_eq!(median(&[1, 5, 9]), 5);
        assert_eq!(median(&[1, 5, 9, 11]), 7);
    }

    fn run(outage_ms: u64, lost: usize, passed: bool) -> DrillRun {
        DrillRun {
            repetition: 1,
            old_primary: "node1".into(),
            new_primary: Some("node2".into()),
            failover: true,
            target: "node1".into(),
            timeline_before: Some(1),
            timeline_after: Some(2),
            outage_ms,
            outage: None,
            fault_ms: 2_000,
            persistent_outage_ms: outage_ms,
            recovery_ms: outage_ms,
            writes: 100,
            failed_writes: 10,
            persistent_failed_writes: 5,
            acknowledged_writes_lost: lost,
            lost_ids: Vec::new(),
            unacknowledged_but_stored: 0,
            double_primary_moments: 0,
            double_primary_nodes: Vec::new(),
            fenced_primary_moments: 0,
            fenced_primary_nodes: Vec::new(),
            isolated_acknowledged_writes: None,
            isolated_connected_writes: None,
            postmaster_pid_before: None,
            postmaster_pid_after: None,
            vip_holders_after: None,
            old_primary_streaming_after_ms: None,
            old_primary_streaming_after_heal_ms: None,
            phases: phases::Phases {
                new_leader_running_ms: Some(outage_ms / 2),
                first_write_ms: (outage_ms > 3_000).then_some(outage_ms),
                ..phases::Phases::default()
            },
            within_model: true,
            passed,
            problems: Vec::new(),
            node_samples: Vec::new(),
            panel: svg::Panel::default(),
        }
    }

    #[test]
    fn the_summary_has_median_worst_and_every_loss() {
        let runs = vec![
            run(4_000, 0, true),
            run(9_000, 2, false),
            run(3_000, 0, true),
        ];
        let summary = summarize(&runs, true);
        assert_eq!(summary.median_outage_ms, 4_000);
        assert_eq!(summary.worst_outage_ms, 9_000);
        assert_eq!(summary.acknowledged_writes_lost, 2);
        assert!(!summary.passed);
        assert!(summarize(&runs[..1], true).passed);
        assert!(
            !summarize(&runs[..1], false).passed,
            "an unfinished drill never passes"
        );
        assert!(!summarize(&[], true).passed);
        // Phase medians over the repetitions that saw each phase.
        let running = &summary.phase_medians[1];
        assert_eq!(
            (running.phase, running.median_ms, running.seen),
            ("new leader running", Some(2_000), 3)
        );
        let first = &summary.phase_medians[5];
        assert_eq!(
            (first.phase, first.median_ms, first.seen),
            ("first write", Some(6_500), 2)
        );
        let vip = &summary.phase_medians[3];
        assert_eq!((vip.median_ms, vip.seen), (None, 0));
    }

    #[test]
    fn recovery_is_the_first_ack_after_the_last_failure_after_the_fault() {
        let write = |id: i64, started_ms: u64, acknowledged: bool| probe::WriteAttempt {
            id,
            client: probe::WriteClient::NewConnection,
            started_ms,
            ended_ms: started_ms + 5,
            connected: true,
            acknowledged,
            error: None,
        };
        let writes = vec![
            write(1, 0, false),
            write(2, 100, true),
            write(3, 200, false),
            write(4, 300, false),
            write(5, 400, true),
            write(6, 500, true),
        ];
        assert_eq!(first_ack_after_outage(&writes, 150), Some(405));
        assert_eq!(first_ack_after_outage(&writes[..2], 50), None);
    }
}
