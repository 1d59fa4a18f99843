//! `pgha lab`: a throw-away cluster of real Debian nodes on this machine, and fault injection.
//!
//! Each node is a Debian 12 or 13 root (an overlay on the cached base of its release) booted by `systemd-nspawn` with
//! systemd as PID 1, in its own network namespace on the bridge `pgha-br0`, reachable over SSH
//! with host keys the lab made. Nodes get packages only through the lab's apt-cacher-ng.
//!
//! Map: [`topology`] (names, addresses), [`mirror`] (the host's Debian mirror), [`base`]
//! (debootstrap image), [`proxy`] (apt-cacher-ng), [`keys`] (SSH trust), [`network`] (bridge,
//! namespaces, link faults), [`node`] (overlay, cgroups, boot, stop, kill, freeze), [`host`]
//! (preflight and running tools). This module owns the operations and the lab's small state
//! file; it never prints: operations return reports and send progress lines to a callback.

mod base;
mod host;
mod impair;
mod keys;
mod mirror;
mod network;
mod nfqueue;
mod node;
mod proxy;
mod topology;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::debian::Release;
use crate::error::UserError;
pub use mirror::Mirrors;
pub use nfqueue::Impairment;
pub use topology::{Node, BRIDGE, BRIDGE_ADDRESS, MAX_NODES, VIP};

/// Default state directory; `PGHA_LAB_DIR` overrides it.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pgha/lab";
/// How long `up` and `start` wait for sshd on booted nodes.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a clean stop may take before the node's power is cut.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long `heal`, `thaw` and `unblock` wait until the node answers again.
const REACH_TIMEOUT: Duration = Duration::from_secs(30);
/// The port every lab node answers on (sshd): what "the node answers" means.
const SSH_PORT: u16 = 22;
/// How long one reachability check may take.
const POLL_CONNECT: Duration = Duration::from_millis(500);
/// `down` is less patient: the nodes are thrown away anyway.
const DOWN_GRACE: Duration = Duration::from_secs(5);

/// The lab's state file: how many nodes the lab has while it is up, and their release.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    nodes: usize,
    /// The nodes' Debian codename; absent in a state written before trixie: bookworm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    release: Option<String>,
}

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: usize,
    /// The nodes' Debian release; `None`: the running lab's, or bookworm for a new lab.
    pub release: Option<Release>,
}

impl Default for UpOptions {
    fn default() -> UpOptions {
        UpOptions {
            nodes: 3,
            release: None,
        }
    }
}

/// Options of `down`.
#[derive(Debug, Clone, Default)]
pub struct DownOptions {
    /// Also delete the cached base, the proxy cache and the keys (the whole state directory).
    pub purge: bool,
}

/// What an operation changed; empty `changes` means it found everything as asked.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub changes: Vec<String>,
    /// Why nothing changed, when nothing did.
    pub unchanged_reason: Option<String>,
    #[serde(serialize_with = "as_seconds")]
    pub elapsed: Duration,
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl Report {
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// A node's state as seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Running,
    Stopped,
    Frozen,
    Partitioned,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            NodeState::Running => "running",
            NodeState::Stopped => "stopped",
            NodeState::Frozen => "frozen",
            NodeState::Partitioned => "partitioned",
        })
    }
}

/// One line of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub state: NodeState,
    /// Nodes this node's link to is blocked.
    pub blocked: Vec<String>,
    /// The loss and delay `impair` put on its link, e.g. "40 % loss each way".
    pub impaired: Option<String>,
}

/// The lab's overall status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub up: bool,
    /// The nodes' Debian codename while the lab is up.
    pub release: Option<String>,
    pub state_dir: PathBuf,
    pub proxy: Option<String>,
    pub known_hosts: PathBuf,
    pub client_key: PathBuf,
    pub nodes: Vec<NodeStatus>,
}

/// The lab on this machine, as recorded in its state directory.
pub struct Lab {
    dir: PathBuf,
    state: State,
    progress: Box<dyn Fn(&str)>,
}

impl Lab {
    /// Open the lab's state directory (`PGHA_LAB_DIR` or `/var/lib/pgha/lab`); it need not exist.
    pub fn open() -> Result<Lab> {
        let dir = std::env::var_os("PGHA_LAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        Lab::open_at(dir)
    }

    /// Open the lab at an explicit state directory.
    pub fn open_at(dir: PathBuf) -> Result<Lab> {
        host::ensure_sbin_on_path();
        let path = dir.join("lab.json");
        let state = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "failed to read the lab state `{}`; hint: `pgha lab down` resets it",
                    path.display()
                )
            })?,
            Err(_) => State::default(),
        };
        Ok(Lab {
            dir,
            state,
            progress: Box::new(|_| {}),
        })
    }

    /// Send progress lines (e.g. "building the Debian base") to `progress`.
    pub fn on_progress(&mut self, progress: impl Fn(&str) + 'static) {
        self.progress = Box::new(progress);
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The client key authorised for `root` and `deploy` on every node.
    pub fn client_key(&self) -> PathBuf {
        self.keys().client_key()
    }

    /// The `known_hosts` with every node's address and host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.keys().known_hosts()
    }

    /// Whether the lab is up (its nodes may be stopped by fault injection).
    pub fn is_up(&self) -> bool {
        self.state.nodes > 0
    }

    /// The lab's nodes (empty when it is down).
    pub fn nodes(&self) -> Vec<Node> {
        topology::nodes(self.state.nodes)
    }

    fn keys(&self) -> keys::Keys {
        keys::Keys::new(self.dir.join("ssh"))
    }

    /// The running lab's release (bookworm for a state written before there was a choice).
    pub fn release(&self) -> Release {
        self.state
            .release
            .as_deref()
            .and_then(Release::named)
            .unwrap_or(crate::debian::BOOKWORM)
    }

    /// The cached base of `release`: `base` for bookworm (its place before there was a
    /// choice), `base-<codename>` for the others.
    fn base(&self, release: Release) -> base::Base {
        let name = if release == crate::debian::BOOKWORM {
            "base".to_string()
        } else {
            format!("base-{}", release.codename)
        };
        base::Base::new(self.dir.join(name), release)
    }

    fn proxy(&self) -> proxy::Proxy {
        proxy::Proxy::new(self.dir.join("proxy"))
    }

    fn nodes_dir(&self) -> PathBuf {
        self.dir.join("nodes")
    }

    fn node_dirs(&self, node: &Node) -> node::NodeDirs {
        node::NodeDirs::new(&self.nodes_dir(), node)
    }

    fn save(&self) -> Result<()> {
        let path = self.dir.join("lab.json");
        let text = serde_json::to_string_pretty(&self.state)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("failed to write `{}`", path.display()))
    }

    /// Resolve a node name, failing if the lab is down or has no such node.
    pub fn node(&self, name: &str) -> Result<Node> {
        if !self.is_up() {
            return Err(UserError("the lab is not up; hint: run `pgha lab up`".to_string()).into());
        }
        Ok(topology::node(name, self.state.nodes)?)
    }

    /// Build the base if needed, start the network and proxy, boot every node that is not
    /// running and wait for sshd. With the lab up, changes nothing.
    pub fn up(&mut self, options: &UpOptions) -> Result<Report> {
        topology::validate_count(options.nodes)?;
        // A running lab grows (the new nodes boot, the others are left alone); it shrinks one
        // node at a time with `pgha lab remove`.
        if self.is_up() && options.nodes < self.state.nodes {
            return Err(UserError(format!(
                "the lab is up with {} nodes, more than {}; hint: `pgha lab remove node{}` takes the last node away (or `pgha lab down` to start over)",
                self.state.nodes, options.nodes, self.state.nodes
            ))
            .into());
        }
        let release = match options.release {
            Some(release) => release,
            None if self.is_up() => self.release(),
            None => crate::debian::BOOKWORM,
        };
        if self.is_up() && release != self.release() {
            return Err(UserError(format!(
                "the lab is up with {} nodes; all its nodes run one release\nhint: `pgha lab down`, then `pgha lab up --release {}`",
                self.release().title(),
                release.codename
            ))
            .into());
        }
        host::preflight()?;
        let started = Instant::now();
        let mut changes = Vec::new();
        let cgroups = node::Cgroups::detect()?;
        let mirrors = mirror::Mirrors::from_host()?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("failed to create `{}`", self.dir.display()))?;

        let nodes = topology::nodes(options.nodes);
        let keys = self.keys();
        changes.extend(
            keys.ensure(&nodes)?
                .into_iter()
                .map(|key| format!("generated the {key}")),
        );
        if network::ensure_bridge()? {
            changes.push(format!("created the bridge `{BRIDGE}` ({BRIDGE_ADDRESS})"));
        }
        if self.proxy().ensure(&mirrors)? {
            changes.push(format!("started the apt proxy on `{}`", proxy::url()));
        }
        let base = self.base(release);
        if !base.ready() {
            (self.progress)(&format!(
                "building the {} base (once; about a minute)",
                release.title()
            ));
            let build_started = Instant::now();
            let mut resumed = false;
            base.ensure(&mirrors, &mut resumed)?;
            let redo = if resumed {
                " (redoing an unfinished build)"
            } else {
                ""
            };
            changes.push(format!(
                "built the {} base in {:.1} s{redo}",
                release.title(),
                build_started.elapsed().as_secs_f64()
            ));
        }
        self.state.nodes = options.nodes;
        self.state.release = Some(release.codename.to_string());
        self.save()?;

        let client_public_key = keys.client_public_key()?;
        let mut booted = Vec::new();
        for node in &nodes {
            if network::ensure_node(node)? {
                changes.push(format!(
                    "created the network of `{node}` ({})",
                    node.address()
                ));
            }
            let dirs = self.node_dirs(node);
            if dirs.pid().is_some() {
                continue;
            }
            (self.progress)(&format!("booting `{node}`"));
            network::restore(node)?;
            let identity = node::Identity {
                all_nodes: &nodes,
                host_key: &keys.host_key(node),
                client_public_key: &client_public_key,
            };
            node::launch(node, &dirs, base.dir(), &cgroups, &identity)?;
            booted.push((node.clone(), dirs.console_log()));
        }
        let boot_started = Instant::now();
        node::wait_for_ssh(&booted, BOOT_TIMEOUT)?;
        if !booted.is_empty() {
            let names: Vec<String> = booted.iter().map(|(node, _)| format!("`{node}`")).collect();
            changes.push(format!(
                "booted {} (sshd answered after {:.1} s)",
                names.join(", "),
                boot_started.elapsed().as_secs_f64()
            ));
        }
        let unchanged_reason = changes
            .is_empty()
            .then(|| format!("the lab is already up with {} nodes", options.nodes));
        Ok(Report {
            changes,
            unchanged_reason,
            elapsed: started.elapsed(),
        })
    }

    /// Stop every node and remove the lab's mounts, namespaces, bridge, cgroups and proxy.
    /// Cleans up leftovers even when the state file says the lab is down.
    pub fn down(&mut self, options: &DownOptions) -> Result<Report> {
        host::preflight()?;
        let started = Instant::now();
        let mut changes = Vec::new();
        let cgroups = node::Cgroups::detect()?;
        // Stop every node that has a directory, not only those the state file names.
        let mut nodes = self.nodes();
        if let Ok(entries) = std::fs::read_dir(self.nodes_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Ok(found) = topology::node(&name, MAX_NODES) {
                    if !nodes.contains(&found) {
                        nodes.push(found);
                    }
                }
            }
        }
        for node in &nodes {
            if impair::stop(&self.dir, node)? {
                changes.push(format!("stopped the impair worker of `{node}`"));
            }
            let dirs = self.node_dirs(node);
            if dirs.pid().is_some() {
                (self.progress)(&format!("stopping `{node}`"));
                let clean = node::stop(node, &dirs, &cgroups, DOWN_GRACE)?;
                let how = if clean { "stopped" } else { "cut the power of" };
                changes.push(format!("{how} `{node}`"));
            } else {
                // Leftovers of a node whose launcher died (nothing happens if there are none).
                node::kill(node, &cgroups)?;
            }
            node::remove_runtime_leftovers(node);
        }
        if !host::mounts_under(&self.dir)?.is_empty() {
            host::unmount_all_under(&self.dir)?;
            changes.push("unmounted the node roots".to_string());
        }
        cgroups.remove_all()?;
        changes.extend(
            network::remove_all()?
                .into_iter()
                .map(|object| format!("deleted the {object}")),
        );
        if self.proxy().stop()? {
            changes.push("stopped the apt proxy".to_string());
        }
        let nodes_dir = self.nodes_dir();
        if nodes_dir.exists() {
            std::fs::remove_dir_all(&nodes_dir)
                .with_context(|| format!("failed to remove `{}`", nodes_dir.display()))?;
        }
        self.state = State::default();
        if options.purge {
            if self.dir.exists() {
                std::fs::remove_dir_all(&self.dir)
                    .with_context(|| format!("failed to remove `{}`", self.dir.display()))?;
                changes.push(format!(
                    "deleted `{}` (base, proxy cache, keys)",
                    self.dir.display()
                ));
            }
        } else if self.dir.exists() {
            self.save()?;
        }
        let unchanged_reason = changes.is_empty().then(|| "the lab is not up".to_string());
        Ok(Report {
            changes,
            unchanged_reason,
            elapsed: started.elapsed(),
        })
    }

    /// Each node's state and address.
    pub fn status(&self) -> Result<Status> {
        let cgroups = node::Cgroups::detect().ok();
        let mut nodes = Vec::new();
        for node in self.nodes() {
            let running = self.node_dirs(&node).pid().is_some();
            let state = if !running {
                NodeState::Stopped
            } else if cgroups
                .as_ref()
                .is_some_and(|cgroups| node::frozen(&node, cgroups))
            {
                NodeState::Frozen
            } else if !network::link_up(&node) {
                NodeState::Partitioned
            } else {
                NodeState::Running
            };
            let blocked = network::blocked_peers(&node)?
                .into_iter()
                .filter_map(|address| {
                    self.nodes()
                        .into_iter()
                        .find(|peer| peer.address() == address)
                })
                .map(|peer| peer.name())
                .collect();
            nodes.push(NodeStatus {
                name: node.name(),
                address: node.address().to_string(),
                state,
                blocked,
                impaired: impair::current(&self.dir, &node)
                    .map(|(_, impairment)| describe_impairment(impairment)),
            });
        }
        Ok(Status {
            up: self.is_up(),
            release: self.is_up().then(|| self.release().codename.to_string()),
            state_dir: self.dir.clone(),
            proxy: self.proxy().pid().map(|_| proxy::url()),
            known_hosts: self.known_hosts(),
            client_key: self.client_key(),
            nodes,
        })
    }

    /// Take the lab's last node away: stop it (a power cut if it does not stop in time),
    /// unmount its root, delete its cgroups, network namespace and directory, and forget its
    /// host key in `known_hosts`. The other nodes are left alone. Only the last node can go,
    /// so the nodes stay `node1`..`nodeN`.
    pub fn remove(&mut self, name: &str) -> Result<Report> {
        let node = self.node(name)?;
        host::preflight()?;
        let started = Instant::now();
        let last = self.state.nodes;
        if node.name() != format!("node{last}") || last < 2 {
            return Err(UserError(format!(
                "only the last node of a lab with more than one can be removed, here `node{last}`; hint: `pgha lab down` removes them all"
            ))
            .into());
        }
        let cgroups = node::Cgroups::detect()?;
        let dirs = self.node_dirs(&node);
        let mut changes = Vec::new();
        if impair::stop(&self.dir, &node)? {
            changes.push(format!("stopped the impair worker of `{node}`"));
        }
        if dirs.pid().is_some() {
            (self.progress)(&format!("stopping `{node}`"));
            let clean = node::stop(&node, &dirs, &cgroups, DOWN_GRACE)?;
            changes.push(format!(
                "{} `{node}`",
                if clean { "stopped" } else { "cut the power of" }
            ));
        } else {
            node::kill(&node, &cgroups)?;
        }
        node::remove_runtime_leftovers(&node);
        let node_dir = self.nodes_dir().join(node.name());
        if !host::mounts_under(&node_dir)?.is_empty() {
            host::unmount_all_under(&node_dir)?;
        }
        cgroups.remove_node(&node)?;
        if network::remove_node(&node)? {
            changes.push(format!("deleted the network of `{node}`"));
        }
        if node_dir.exists() {
            std::fs::remove_dir_all(&node_dir)
                .with_context(|| format!("failed to remove `{}`", node_dir.display()))?;
        }
        self.state.nodes = last - 1;
        self.save()?;
        self.keys().ensure(&topology::nodes(self.state.nodes))?;
        changes.push(format!(
            "removed `{node}`; the lab has {} nodes",
            self.state.nodes
        ));
        Ok(Report {
            changes,
            unchanged_reason: None,
            elapsed: started.elapsed(),
        })
    }

    /// Power cut: its link goes down, then every process of the node dies at once and its
    /// addresses (including a VIP it held) are flushed. The link goes first: a machine that
    /// loses power sends nothing, while a killed process's sockets would close with a FIN or RST
    /// that tells every peer at once (replication, etcd and Patroni clients) it is gone.
    pub fn kill(&mut self, name: &str) -> Result<Report> {
        let node = self.node(name)?;
        host::preflight()?;
        let started = Instant::now();
        let cgroups = node::Cgroups::detect()?;
        if self.node_dirs(&node).pid().is_none() {
            return Ok(unchanged(started, format!("`{node}` is not running")));
        }
        network::set_link(&node, false)?;
        node::kill(&node, &cgroups)?;
        network::flush_addresses(&node)?;
        Ok(changed(started, format!("cut the power of `{node}`")))
    }

    /// Clean shutdown (`poweroff` inside the node), waiting until it has exited.
    pub fn stop(&mut self, name: &str) -> Result<Report> {
        let node = self.node(name)?;
        host::preflight()?;
        let started = Instant::now();
        let cgroups = node::Cgroups::detect()?;
        let dirs = self.node_dirs(&node);
        if dirs.pid().is_none() {
            return Ok(unchanged(started, format!("`{node}` is not running")));
        }
        let clean = node::stop(&node, &dirs, &cgroups, STOP_GRACE)?;
        let message = if clean {
            format!("stopped `{node}`")
        } else {
            format!(
                "`{node}` did not power off within {} s: cut its power",
                STOP_GRACE.as_secs()
            )
        };
        Ok(changed(started, message))
    }

    /// Boot a stopped or killed node again and wait for its sshd.
    pub fn start(&mut self, name: &str) -> Result<Report> {
        let node = self.node(name)?;
        host::preflight()?;
        let started = Instant::now();
        let dirs = self.node_dirs(&node);
        if dirs.pid().is_some() {
            return Ok(unchanged(started, format!("`{node}` is already running")));
        }
        let cgroups = node::Cgroups::detect()?;
        let keys = self.keys();
        let nodes = self.nodes();
        network::ensure_node(&node)?;
        network::restore(&node)?;
        let identity = node::Identity {
            all_nodes: &nodes,
            host_key: &keys.host_key(&node),
            client_public_key: &keys.client_public_key()?,
        };
        node::launch(
            &node,
            &dirs,
            self.base(self.release()).dir(),
            &cgroups,
            &identity,
        )?;
        node::wait_for_ssh(&[(node.clone(), dirs.console_log())], BOOT_TIMEOUT)?;
        self.wait_reachable(&node, "its start")?;
        Ok(changed(
            started,
            format!(
                "started `{node}` (sshd answered after {:.1} s)",
                started.elapsed().as_secs_f64()
            ),
        ))
    }

    /// Cut the node off the network; its processes keep running.
    pub fn partition(&mut self, name: &str) -> Result<Report> {
        self.set_link(name, false)
    }

    /// Reconnect a partitioned node.
    pub fn heal(&mut self, name: &str) -> Result<Report> {
        self.set_link(name, true)
    }

    fn set_link(&mut self, name: &str, up: bool) -> Result<Report> {
        let node = self.node(name)?;
        host::preflight()?;
        let started = Instant::now();
        if network::link_up(&node) == up {
            let already = if up { "connected" } else { "partitioned" };
            return Ok(unchanged(started, format!("`{node}` is already {already}")));
        }
        network::set_link(&node, up)?;
        let message = if up {
            self.wait_reachable(&node, "the heal")?;
            format!("healed `{node}`")
        } else {
            format!("partitioned `{node}`")
        };
        Ok(changed(started, message))
    }

    /// Freeze every process of the node (a hung machine).
    pub fn freeze(&mut self, name: &str) -> Result<Report> {
        self.set_frozen(name, true)
    }

    /// Let a frozen node run again.
    pub fn thaw(&mut self, name: &str) -> Result<Report> {
        self.set_frozen(name, false)
    }

    fn set_frozen(&mut self, name: &str, frozen: bool) -> Result<Report> {
        let node = self.node(name)?;
        host::preflight()?;
        let started = Instant::now();
        let cgroups = node::Cgroups::detect()?;
        if self.node_dirs(&node).pid().is_none() {
            return Err(UserError(format!(
                "`{node}` is not running; hint: `pgha lab start {node}`"
            ))
            .into());
        }
        if node::frozen(&node, &cgroups) == frozen {
            let already = if frozen { "frozen" } else { "not frozen" };
            return Ok(unchanged(started, format!("`{node}` is already {already}")));
        }
        node::set_frozen(&node, &cgroups, frozen)?;
        let message = if frozen {
            format!("froze `{node}`")
        } else {
            self.wait_reachable(&node, "the thaw")?;
            format!("thawed `{node}`")
        };
        Ok(changed(started, message))
    }

    /// Degrade the node's link both ways: drop `loss_percent` of its packets, delay the rest.
    pub fn impair(&mut self, name: &str, impairment: Impairment) -> Result<Report> {
        let node = self.node(name)?;
        if impairment.loss_percent > 100 {
            return Err(UserError(format!(
                "a loss of {} % is not a share of packets; hint: give 0 to 100",
                impairment.loss_percent
            ))
            .into());
        }
        if impairment.loss_percent == 0 && impairment.delay.is_zero() {
            return Err(UserError(format!(
                "nothing to impair on `{node}`; hint: give --loss PERCENT, --delay MS or both"
            ))
            .into());
        }
        host::preflight()?;
        let started = Instant::now();
        if self.node_dirs(&node).pid().is_none() {
            return Err(UserError(format!(
                "`{node}` is not running; hint: `pgha lab start {node}`"
            ))
            .into());
        }
        if impair::current(&self.dir, &node).map(|(_, now)| now) == Some(impairment) {
            return Ok(unchanged(
                started,
                format!("`{node}` is already impaired so"),
            ));
        }
        impair::apply(&self.dir, &node, impairment)?;
        Ok(changed(
            started,
            format!(
                "impaired `{node}`'s link: {}",
                describe_impairment(impairment)
            ),
        ))
    }

    /// Restore a node's link after `impair`.
    pub fn unimpair(&mut self, name: &str) -> Result<Report> {
        let node = self.node(name)?;
        host::preflight()?;
        let started = Instant::now();
        if !impair::clear(&self.dir, &node)? {
            return Ok(unchanged(started, format!("`{node}` is not impaired")));
        }
        Ok(changed(started, format!("restored `{node}`'s link")))
    }

    /// Cut the link between two nodes in both directions.
    pub fn block(&mut self, a: &str, b: &str) -> Result<Report> {
        self.set_blocked(a, b, true)
    }

    /// Restore the link between two nodes.
    pub fn unblock(&mut self, a: &str, b: &str) -> Result<Report> {
        self.set_blocked(a, b, false)
    }

    fn set_blocked(&mut self, a: &str, b: &str, blocked: bool) -> Result<Report> {
        let (first, second) = (self.node(a)?, self.node(b)?);
        if first == second {
            return Err(UserError(format!(
                "`{first}` cannot be cut off from itself; hint: name two different nodes"
            ))
            .into());
        }
        host::preflight()?;
        let started = Instant::now();
        let is_blocked = network::blocked_peers(&first)?.contains(&second.address())
            && network::blocked_peers(&second)?.contains(&first.address());
        if is_blocked == blocked {
            let already = if blocked { "blocked" } else { "open" };
            return Ok(unchanged(
                started,
                format!("the link `{first}` – `{second}` is already {already}"),
            ));
        }
        network::set_blocked(&first, &second, blocked)?;
        network::set_blocked(&second, &first, blocked)?;
        // Wait only when both can answer: another fault on either (a power cut, a partition, a
        // freeze) is undone by its own command, which waits then.
        if !blocked && self.answers(&first)? && self.answers(&second)? {
            wait_until(
                || {
                    let reaches = |from: &Node, to: &Node| {
                        network::connects_from(from, to.address(), SSH_PORT, POLL_CONNECT)
                    };
                    reaches(&first, &second) && reaches(&second, &first)
                },
                || format!("`{first}` and `{second}` do not reach each other after the unblock"),
            )?;
        }
        let verb = if blocked { "blocked" } else { "unblocked" };
        Ok(changed(
            started,
            format!("{verb} the link `{first}` – `{second}`"),
        ))
    }

    /// Wait until `node` answers again after `what`: its sshd from this machine, and a TCP
    /// connection from every other node that is running, connected, not frozen and not cut off
    /// from it. A fault's undo returns only then, so that whoever relies on it (tests, drills)
    /// does not race the network.
    fn wait_reachable(&self, node: &Node, what: &str) -> Result<()> {
        if !self.answers(node)? {
            // Still under another fault (e.g. a thawed node that is also partitioned): that
            // fault's own undo waits.
            return Ok(());
        }
        let mut peers = Vec::new();
        for peer in self.nodes() {
            if peer == *node
                || !self.answers(&peer)?
                || network::blocked_peers(&peer)?.contains(&node.address())
            {
                continue;
            }
            peers.push(peer);
        }
        wait_until(
            || {
                node::ssh_answers(node)
                    && peers.iter().all(|peer| {
                        network::connects_from(peer, node.address(), SSH_PORT, POLL_CONNECT)
                    })
            },
            || {
                let silent: Vec<String> = peers
                    .iter()
                    .filter(|peer| {
                        !network::connects_from(peer, node.address(), SSH_PORT, POLL_CONNECT)
                    })
                    .map(|peer| format!("`{peer}`"))
                    .collect();
                if node::ssh_answers(node) && !silent.is_empty() {
                    format!(
                        "`{node}` does not answer {} after {what}",
                        silent.join(", ")
                    )
                } else {
                    format!("`{node}` does not answer this machine after {what}")
                }
            },
        )
    }

    /// Whether `node` is in a state to answer: running, connected and not frozen.
    fn answers(&self, node: &Node) -> Result<bool> {
        let cgroups = node::Cgroups::detect()?;
        Ok(self.node_dirs(node).pid().is_some()
            && network::link_up(node)
            && !node::frozen(node, &cgroups))
    }
}

/// Poll `ready` every 100 ms until it holds; after [`REACH_TIMEOUT`] fail with `problem()` and
/// a hint.
fn wait_until(mut ready: impl FnMut() -> bool, problem: impl Fn() -> String) -> Result<()> {
    let deadline = Instant::now() + REACH_TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} within {} s\nhint: `pgha lab status`; the node's console log is in the lab's state directory",
                problem(),
                REACH_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Open a TCP connection to `to` from inside the network namespace of the lab node `node`, as a
/// process on that node would (the drills' probes see a partitioned node this way). Fails when
/// `node` is not a lab node or the connection does not open within `timeout`.
pub fn connect_inside(
    node: &str,
    to: std::net::SocketAddr,
    timeout: Duration,
) -> Result<std::net::TcpStream> {
    let node = topology::node(node, MAX_NODES)?;
    network::connect_from(&node, to, timeout)
        .with_context(|| format!("cannot connect to `{to}` from inside `{node}`"))
}

/// "40 % loss, 300 ms delay each way".
pub fn describe_impairment(impairment: Impairment) -> String {
    let mut parts = Vec::new();
    if impairment.loss_percent > 0 {
        parts.push(format!("{} % loss", impairment.loss_percent));
    }
    if !impairment.delay.is_zero() {
        parts.push(format!("{} ms delay", impairment.delay.as_millis()));
    }
    format!("{} each way", parts.join(", "))
}

/// The impair worker's body (`pgha lab impair-worker`, run inside a node's namespace).
pub fn impair_worker(queue: u16, impairment: Impairment) -> Result<()> {
    impair::run_worker(queue, impairment)
}

fn changed(started: Instant, change: String) -> Report {
    Report {
        changes: vec![change],
        unchanged_reason: None,
        elapsed: started.elapsed(),
    }
}

fn unchanged(started: Instant, reason: String) -> Report {
    Report {
        changes: Vec::new(),
        unchanged_reason: Some(reason),
        elapsed: started.elapsed(),
    }
}
