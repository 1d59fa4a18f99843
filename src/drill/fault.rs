//! Fault injection and healing for drills: through the local lab's API when the inventory is
//! the lab, over SSH for what can be done on real hosts. Every injected fault has a matching
//! heal; [`HealGuard`] heals a lab fault on any path out (including a panic) if the drill's own
//! heal step was not reached.

use std::sync::Arc;

use anyhow::{bail, Context};

use super::Scenario;
use crate::engine::runner::Connections;
use crate::inventory::{Inventory, Node, Role};
use crate::lab::Lab;
use crate::ssh::{RemoteCommand, Session};

/// How faults reach the nodes.
pub enum Injector {
    /// The inventory is the local lab: power cuts, partitions and freezes through `pgha lab`.
    Lab,
    /// Real hosts: only what SSH can do.
    Ssh,
}

/// A fault in place, with what it takes to undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injected {
    /// Nothing to undo (switchover).
    Nothing,
    /// PostgreSQL's postmaster on the node was killed (this pid); Patroni restarts it.
    PostmasterKilled(String, u32),
    PowerCut(String),
    Partition(String),
    Freeze(String),
    HaproxyMasked(String),
}

impl Injected {
    /// The node the heal step works on.
    pub fn node(&self) -> Option<&str> {
        match self {
            Injected::Nothing | Injected::PostmasterKilled(..) => None,
            Injected::PowerCut(node)
            | Injected::Partition(node)
            | Injected::Freeze(node)
            | Injected::HaproxyMasked(node) => Some(node),
        }
    }
}

/// Run `script` as root on `node` over a fresh SSH session (a cached one may belong to a node
/// that was powered off since). Fails on a non-zero exit.
pub async fn run_on(
    connections: &Arc<Connections>,
    node: &Node,
    script: &str,
) -> anyhow::Result<String> {
    let session = Session::connect(&connections.target(node))
        .await
        .with_context(|| format!("cannot connect to `{}` over SSH", node.name))?;
    let output = session
        .run(&RemoteCommand::script(script).as_root())
        .await
        .with_context(|| format!("failed to run a command on `{}`", node.name));
    session.close().await;
    let output = output?;
    if !output.success() {
        bail!(
            "`{}` on `{}` failed ({}): {}",
            script,
            node.name,
            output.status(),
            output.stderr_text().trim()
        );
    }
    Ok(output.stdout_text())
}

/// Every node holding the VIP (`ip -o addr show to VIP` is not empty there). Fails when a node
/// cannot be asked: a node that did not answer is not a node without the VIP.
pub async fn vip_holders(
    inventory: &Inventory,
    connections: &Arc<Connections>,
) -> anyhow::Result<Vec<String>> {
    let Some(vip) = inventory.cluster.vip else {
        bail!("the inventory has no `cluster.vip`; hint: `kill-haproxy` needs a VIP");
    };
    let script = format!("ip -o addr show to {}", vip.address);
    let mut holders = Vec::new();
    for node in inventory
        .nodes
        .iter()
        .filter(|node| node.has(Role::Keepalived))
    {
        let output = run_on(connections, node, &script)
            .await
            .with_context(|| format!("cannot ask `{}` whether it holds the VIP", node.name))?;
        if !output.trim().is_empty() {
            holders.push(node.name.clone());
        }
    }
    Ok(holders)
}

/// The one node holding the VIP; an error when none or several do.
pub async fn vip_holder(
    inventory: &Inventory,
    connections: &Arc<Connections>,
) -> anyhow::Result<String> {
    match vip_holders(inventory, connections).await?.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            bail!("no node holds the VIP\nhint: `pgha exec -i INV -- systemctl status keepalived`")
        }
        several => bail!(
            "the VIP is on several nodes: {}\nhint: `pgha verify -i INV`",
            several.join(", ")
        ),
    }
}

fn postmaster_pid_file(inventory: &Inventory) -> String {
    format!(
        "/var/lib/postgresql/{}/{}/postmaster.pid",
        inventory.cluster.postgres_version, inventory.cluster.name
    )
}

/// The pid of the running postmaster on `node`, from the pid file PostgreSQL writes (`None`
/// while there is none, or it names a dead process).
pub async fn postmaster_pid(
    inventory: &Inventory,
    connections: &Arc<Connections>,
    node: &Node,
) -> anyhow::Result<Option<u32>> {
    let script = format!(
        "pid=$(head -1 {} 2>/dev/null) && kill -0 \"$pid\" 2>/dev/null && echo \"$pid\" || true",
        postmaster_pid_file(inventory)
    );
    let output = run_on(connections, node, &script).await?;
    Ok(output.trim().parse().ok())
}

/// Inject `scenario`'s fault on `target` (the primary, or the VIP holder for `kill-haproxy`).
/// `Switchover` is done by the caller through Patroni's API.
pub async fn inject(
    injector: &Injector,
    scenario: Scenario,
    inventory: &Inventory,
    connections: &Arc<Connections>,
    target: &Node,
) -> anyhow::Result<Injected> {
    let name = target.name.clone();
    // The lab's operations block (they wait for the node); off the probes' worker threads.
    let with_lab = |action: fn(&mut Lab, &str) -> anyhow::Result<crate::lab::Report>| {
        let name = name.clone();
        tokio::task::spawn_blocking(move || {
            let mut lab = Lab::open()?;
            action(&mut lab, &name).map(|_| ())
        })
    };
    match (scenario, injector) {
        (Scenario::Switchover, _) => Ok(Injected::Nothing),
        (Scenario::KillPrimary, Injector::Lab) => {
            with_lab(Lab::kill).await??;
            Ok(Injected::PowerCut(name))
        }
        (Scenario::PartitionPrimary, Injector::Lab) => {
            with_lab(Lab::partition).await??;
            Ok(Injected::Partition(name))
        }
        (Scenario::FreezePrimary, Injector::Lab) => {
            with_lab(Lab::freeze).await??;
            Ok(Injected::Freeze(name))
        }
        (Scenario::KillPostgres, _) => {
            // The postmaster and its children die at once, as in a crash; Patroni lives on.
            let script = format!(
                // The postmaster must die; a child may have exited on its own in between.
                "set -e; pid=$(head -1 {}); \
                 children=$(pgrep -P \"$pid\" || true); kill -KILL \"$pid\"; \
                 kill -KILL $children 2>/dev/null || true; echo \"$pid\"",
                postmaster_pid_file(inventory)
            );
            let output = run_on(connections, target, &script).await?;
            let pid = output.trim().parse().with_context(|| {
                format!(
                    "the kill on `{name}` named no postmaster pid: `{}`",
                    output.trim()
                )
            })?;
            Ok(Injected::PostmasterKilled(name, pid))
        }
        (Scenario::KillHaproxy, _) => {
            // Masked for the runtime so that systemd does not restart it before the heal.
            run_on(
                connections,
                target,
                "systemctl mask --runtime haproxy && systemctl kill -s KILL haproxy",
            )
            .await?;
            Ok(Injected::HaproxyMasked(name))
        }
        (scenario, Injector::Ssh) => bail!(
            "`{scenario}` needs the local lab\nhint: on real hosts: {}",
            Scenario::over_ssh()
        ),
    }
}

/// Undo an injected fault.
pub async fn heal(
    injected: &Injected,
    inventory: &Inventory,
    connections: &Arc<Connections>,
) -> anyhow::Result<()> {
    match injected {
        Injected::Nothing | Injected::PostmasterKilled(..) => Ok(()),
        Injected::PowerCut(_) | Injected::Partition(_) | Injected::Freeze(_) => {
            // `start`, `heal` and `thaw` wait until the node answers: off the probes' threads.
            let injected = injected.clone();
            tokio::task::spawn_blocking(move || heal_lab(&injected)).await?
        }
        Injected::HaproxyMasked(name) => {
            let node = inventory
                .node(name)
                .with_context(|| format!("`{name}` is not in the inventory"))?;
            run_on(
                connections,
                node,
                "systemctl unmask --runtime haproxy && systemctl start haproxy",
            )
            .await
            .map(|_| ())
        }
    }
}

fn heal_lab(injected: &Injected) -> anyhow::Result<()> {
    let mut lab = Lab::open()?;
    match injected {
        Injected::PowerCut(node) => lab.start(node),
        Injected::Partition(node) => lab.heal(node),
        Injected::Freeze(node) => lab.thaw(node),
        Injected::Nothing | Injected::PostmasterKilled(..) | Injected::HaproxyMasked(_) => {
            return Ok(())
        }
    }
    .map(|_| ())
}

/// Heals a lab fault when dropped unless [`HealGuard::disarm`] was called after the drill's
/// own heal step. SSH faults are healed by that step only (it needs the async runtime).
pub struct HealGuard {
    injected: Option<Injected>,
}

impl HealGuard {
    pub fn new(injected: &Injected) -> HealGuard {
        HealGuard {
            injected: Some(injected.clone()),
        }
    }

    pub fn disarm(&mut self) {
        self.injected = None;
    }
}

impl Drop for HealGuard {
    fn drop(&mut self) {
        if let Some(injected) = self.injected.take() {
            if let Err(error) = heal_lab(&injected) {
                eprintln!("error: failed to heal after the drill: {error:#}");
            }
        }
    }
}
