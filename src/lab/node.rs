//! One node's life on the host: its overlay root (shared base below, own upper layer), its
//! cgroups (entered by the launcher before `systemd-nspawn` so nodes never share a payload
//! cgroup), launch, readiness, clean stop, power cut and freeze. Network faults are in
//! [`super::network`].

use std::fs::OpenOptions;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::base;
use super::host;
use super::topology::{self, Node};

/// The cgroup directory the lab's node cgroups live in, in every hierarchy.
const CGROUP_GROUP: &str = "pgha-lab";
/// The program whose process is a running node.
const LAUNCHER: &str = "systemd-nspawn";

/// The cgroup hierarchies this machine has, detected once.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// cgroup2: `/sys/fs/cgroup/unified` (hybrid) or `/sys/fs/cgroup` (unified).
    unified: PathBuf,
    /// cgroup1 `name=systemd` (hybrid only).
    named_systemd: Option<PathBuf>,
    /// cgroup1 freezer (hybrid and legacy).
    freezer: Option<PathBuf>,
}

impl Cgroups {
    pub fn detect() -> Result<Cgroups> {
        let root = Path::new("/sys/fs/cgroup");
        let unified = if root.join("unified/cgroup.procs").exists() {
            root.join("unified")
        } else if root.join("cgroup.controllers").exists() {
            root.to_path_buf()
        } else {
            bail!("no cgroup2 hierarchy at `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`; hint: mount cgroup2 (`mount -t cgroup2 none /sys/fs/cgroup/unified`)");
        };
        let present = |name: &str| Some(root.join(name)).filter(|dir| dir.join("tasks").exists());
        Ok(Cgroups {
            unified,
            named_systemd: present("systemd"),
            freezer: present("freezer"),
        })
    }

    fn hierarchies(&self) -> Vec<&Path> {
        let mut all = vec![self.unified.as_path()];
        all.extend(self.named_systemd.as_deref());
        all.extend(self.freezer.as_deref());
        all
    }

    fn node_dirs(&self, node: &Node) -> Vec<PathBuf> {
        self.hierarchies()
            .iter()
            .map(|root| root.join(CGROUP_GROUP).join(node.name()))
            .collect()
    }

    fn unified_dir(&self, node: &Node) -> PathBuf {
        self.unified.join(CGROUP_GROUP).join(node.name())
    }

    /// Processes in the node's cgroup2 subtree.
    fn process_count(&self, node: &Node) -> usize {
        let mut count = 0;
        walk(&self.unified_dir(node), &mut |dir| {
            count += std::fs::read_to_string(dir.join("cgroup.procs"))
                .map(|procs| procs.lines().count())
                .unwrap_or(0);
        });
        count
    }

    /// Create the node's cgroups, removing sub-cgroups left by a previous boot.
    fn prepare(&self, node: &Node) -> Result<()> {
        for dir in self.node_dirs(node) {
            remove_tree(&dir, false)?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create the cgroup `{}`", dir.display()))?;
        }
        Ok(())
    }

    /// Remove one node's cgroups (its processes must be gone).
    pub fn remove_node(&self, node: &Node) -> Result<()> {
        for dir in self.node_dirs(node) {
            remove_tree(&dir, true)?;
        }
        Ok(())
    }

    /// Remove every lab cgroup (processes must be gone).
    pub fn remove_all(&self) -> Result<()> {
        for root in self.hierarchies() {
            remove_tree(&root.join(CGROUP_GROUP), true)?;
        }
        Ok(())
    }
}

/// Call `visit` on `dir` and every directory below it.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    if !dir.is_dir() {
        return;
    }
    visit(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                walk(&entry.path(), visit);
            }
        }
    }
}

/// Remove the cgroups below `dir` (and `dir` itself if `itself`), deepest first.
fn remove_tree(dir: &Path, itself: bool) -> Result<()> {
    let mut dirs = Vec::new();
    walk(dir, &mut |found| dirs.push(found.to_path_buf()));
    if !itself && !dirs.is_empty() {
        dirs.remove(0);
    }
    dirs.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for found in dirs {
        std::fs::remove_dir(&found).with_context(|| {
            format!(
                "failed to remove the cgroup `{}` (processes still in it?)",
                found.display()
            )
        })?;
    }
    Ok(())
}

/// A node's directories under `<state>/nodes/<name>`.
pub struct NodeDirs {
    dir: PathBuf,
}

impl NodeDirs {
    pub fn new(nodes_dir: &Path, node: &Node) -> NodeDirs {
        NodeDirs {
            dir: nodes_dir.join(node.name()),
        }
    }

    /// The merged root the container boots from.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("nspawn.pid")
    }

    /// The running launcher's pid, if the node runs.
    pub fn pid(&self) -> Option<u32> {
        host::live_pid(&self.pid_file(), LAUNCHER)
    }

    fn mounted(&self) -> Result<bool> {
        Ok(host::mounts_under(&self.root())?.contains(&self.root()))
    }

    /// Mount the overlay of `base` with this node's upper layer, if not mounted.
    fn mount(&self, base: &Path) -> Result<()> {
        if self.mounted()? {
            return Ok(());
        }
        // The node's own layer lives in RAM (tmpfs): a deployed node writes hundreds of MB of
        // packages, and deleting that from disk made `lab down` take minutes; unmounting a
        // tmpfs takes milliseconds.
        let layer = self.dir.join("layer");
        std::fs::create_dir_all(&layer)
            .with_context(|| format!("failed to create `{}`", layer.display()))?;
        if !host::mounts_under(&layer)?.contains(&layer) {
            host::run(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "mode=755", "pgha-lab-layer"])
                    .arg(&layer),
            )
            .with_context(|| format!("failed to mount the node layer `{}`", layer.display()))?;
        }
        let (upper, work, root) = (layer.join("upper"), layer.join("work"), self.root());
        for dir in [&upper, &work, &root] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            upper.display(),
            work.display()
        );
        host::run(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&root),
        )
        .with_context(|| format!("failed to mount the overlay root `{}`", root.display()))?;
        Ok(())
    }
}

/// What a node needs written into its root before it boots.
pub struct Identity<'a> {
    pub all_nodes: &'a [Node],
    pub host_key: &'a Path,
    pub client_public_key: &'a str,
}

/// Mount the node's root, write its identity, and boot it in its own cgroups and namespace.
/// Returns the launcher's pid. The caller waits for SSH with [`wait_for_ssh`].
pub fn launch(
    node: &Node,
    dirs: &NodeDirs,
    base: &Path,
    cgroups: &Cgroups,
    identity: &Identity,
) -> Result<u32> {
    dirs.mount(base)?;
    write_identity(node, &dirs.root(), identity)
        .with_context(|| format!("failed to prepare the root of `{node}`"))?;
    cgroups.prepare(node)?;

    let console = dirs.console_log();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console)
        .with_context(|| format!("failed to open `{}`", console.display()))?;
    let procs: Vec<String> = cgroups
        .node_dirs(node)
        .iter()
        .map(|dir| dir.join("cgroup.procs").display().to_string())
        .collect();
    // The shell moves itself into the node's cgroups, then becomes systemd-nspawn; `setsid`
    // (not a group leader here, so it does not fork) detaches it from our session.
    let script =
        r#"for procs in $PGHA_CGROUP_PROCS; do echo $$ > "$procs" || exit 1; done; exec "$@""#;
    let mut command = Command::new("setsid");
    command
        .args([
            "sh",
            "-c",
            script,
            "sh",
            LAUNCHER,
            "--boot",
            "--keep-unit",
            "--register=no",
        ])
        .arg(format!(
            "--network-namespace-path=/run/netns/{}",
            node.namespace()
        ))
        .args([
            "--capability=CAP_NET_ADMIN",
            "--link-journal=no",
            "--console=read-only",
            // SIGTERM to nspawn then means `poweroff` inside (its default signal means `halt`).
            "--kill-signal=SIGRTMIN+4",
        ])
        .arg(format!("--machine={node}"))
        .arg("-D")
        .arg(dirs.root())
        .env("PGHA_CGROUP_PROCS", procs.join(" "))
        .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
        // No image lock files in `/run/systemd/nspawn/locks`: the lab keeps its own pid files.
        .env("SYSTEMD_NSPAWN_LOCK", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    host::close_inherited_descriptors(&mut command);
    let child = command.spawn().with_context(|| {
        format!(
            "failed to start `{node}` with `{}`",
            host::describe(&command)
        )
    })?;
    let pid = child.id();
    std::fs::write(dirs.pid_file(), format!("{pid}\n"))
        .with_context(|| format!("failed to write `{}`", dirs.pid_file().display()))?;
    Ok(pid)
}

/// Files that make the node itself: name, hosts, machine id, SSH host key, authorised client key.
fn write_identity(node: &Node, root: &Path, identity: &Identity) -> Result<()> {
    base::write(root, "etc/hostname", &format!("{node}\n"), 0o644)?;
    base::write(
        root,
        "etc/hosts",
        &topology::hosts_file(node, identity.all_nodes),
        0o644,
    )?;
    let machine_id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("failed to read a random id")?
        .trim()
        .replace('-', "");
    base::write(root, "etc/machine-id", &format!("{machine_id}\n"), 0o444)?;

    let private = std::fs::read_to_string(identity.host_key)
        .with_context(|| format!("failed to read `{}`", identity.host_key.display()))?;
    let public_path = identity.host_key.with_extension("pub");
    let public = std::fs::read_to_string(&public_path)
        .with_context(|| format!("failed to read `{}`", public_path.display()))?;
    base::write(root, "etc/ssh/ssh_host_ed25519_key", &private, 0o600)?;
    base::write(root, "etc/ssh/ssh_host_ed25519_key.pub", &public, 0o644)?;

    base::write(
        root,
        "root/.ssh/authorized_keys",
        identity.client_public_key,
        0o600,
    )?;
    std::fs::set_permissions(
        root.join("root/.ssh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let (uid, gid) = user_ids(root, "deploy")?;
    base::write(
        root,
        "home/deploy/.ssh/authorized_keys",
        identity.client_public_key,
        0o600,
    )?;
    let ssh_dir = root.join("home/deploy/.ssh");
    std::fs::set_permissions(
        &ssh_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    for path in [ssh_dir.clone(), ssh_dir.join("authorized_keys")] {
        chown(&path, Some(uid), Some(gid))
            .with_context(|| format!("failed to chown `{}`", path.display()))?;
    }
    Ok(())
}

/// A user's uid and gid from the node's `/etc/passwd`.
fn user_ids(root: &Path, user: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&user))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .with_context(|| format!("no user `{user}` in the node's `/etc/passwd`"))
}

/// Whether sshd on `node` answers with its banner.
pub fn ssh_answers(node: &Node) -> bool {
    let address = SocketAddr::from((node.address(), 22));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(300)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

/// Wait until sshd answers on every node in `nodes`, failing after `timeout` and naming the
/// nodes that did not come up and their console logs.
pub fn wait_for_ssh(nodes: &[(Node, PathBuf)], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<&(Node, PathBuf)> = nodes.iter().collect();
    while !waiting.is_empty() {
        waiting.retain(|(node, _)| !ssh_answers(node));
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let names: Vec<String> = waiting
                .iter()
                .map(|(node, console)| format!("`{node}` (console: `{}`)", console.display()))
                .collect();
            bail!(
                "sshd did not answer within {} s on {}",
                timeout.as_secs(),
                names.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Clean shutdown: SIGTERM makes systemd-nspawn ask the container's systemd to power off.
/// Falls back to a power cut after `grace`. Returns false if the power cut was needed.
pub fn stop(node: &Node, dirs: &NodeDirs, cgroups: &Cgroups, grace: Duration) -> Result<bool> {
    let Some(pid) = dirs.pid() else {
        return Ok(true);
    };
    if frozen(node, cgroups) {
        set_frozen(node, cgroups, false)?;
    }
    host::signal(pid, "TERM").with_context(|| format!("failed to ask `{node}` to power off"))?;
    let deadline = Instant::now() + grace;
    while host::process_alive(pid, LAUNCHER) {
        if Instant::now() > deadline {
            kill(node, cgroups)?;
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_empty(node, cgroups)?;
    Ok(true)
}

/// Remove the empty directory systemd-nspawn leaves in `/run` for a stopped node.
pub fn remove_runtime_leftovers(node: &Node) {
    let _ = std::fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(node.name()));
}

/// Power cut: kill every process of the node at once and wait until they are gone.
pub fn kill(node: &Node, cgroups: &Cgroups) -> Result<()> {
    let dir = cgroups.unified_dir(node);
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        std::fs::write(&kill_file, "1")
            .with_context(|| format!("failed to write `{}`", kill_file.display()))?;
    } else {
        // Kernels before 5.14 have no cgroup.kill: signal every process in the subtree.
        walk(&dir, &mut |cgroup| {
            let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|pid| pid.parse().ok()) {
                let _ = host::signal(pid, "KILL");
            }
        });
    }
    // SIGKILLed tasks of a cgroup1-frozen group only die once thawed.
    if frozen(node, cgroups) {
        set_frozen(node, cgroups, false)?;
    }
    wait_empty(node, cgroups)
}

fn wait_empty(node: &Node, cgroups: &Cgroups) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cgroups.process_count(node) > 0 {
        if Instant::now() > deadline {
            bail!(
                "processes of `{node}` did not exit within 10 s; hint: see `{}`",
                cgroups.unified_dir(node).display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Freeze or thaw every process of the node: cgroup2 `cgroup.freeze` when the kernel has it,
/// else the cgroup1 freezer.
pub fn set_frozen(node: &Node, cgroups: &Cgroups, frozen: bool) -> Result<()> {
    let freeze = cgroups.unified_dir(node).join("cgroup.freeze");
    if freeze.exists() {
        std::fs::write(&freeze, if frozen { "1" } else { "0" })
            .with_context(|| format!("failed to write `{}`", freeze.display()))?;
    }
    if let Some(root) = &cgroups.freezer {
        let state = root
            .join(CGROUP_GROUP)
            .join(node.name())
            .join("freezer.state");
        if state.exists() && (!freeze.exists() || !frozen) {
            std::fs::write(&state, if frozen { "FROZEN" } else { "THAWED" })
                .with_context(|| format!("failed to write `{}`", state.display()))?;
        }
    }
    if !freeze.exists() && cgroups.freezer.is_none() {
        bail!("no cgroup freezer for `{node}` (neither `cgroup.freeze` nor the cgroup1 freezer)");
    }
    Ok(())
}

/// Whether the node is frozen by either freezer.
pub fn frozen(node: &Node, cgroups: &Cgroups) -> bool {
    let unified = std::fs::read_to_string(cgroups.unified_dir(node).join("cgroup.freeze"))
        .is_ok_and(|value| value.trim() == "1");
    let legacy = cgroups.freezer.as_ref().is_some_and(|root| {
        std::fs::read_to_string(
            root.join(CGROUP_GROUP)
                .join(node.name())
                .join("freezer.state"),
        )
        .is_ok_and(|value| value.trim() != "THAWED")
    });
    unified || legacy
}
