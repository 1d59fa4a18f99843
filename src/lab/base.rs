//! The cached Debian base root filesystem every node's overlay sits on. Built once with
//! debootstrap through the lab's proxy into `<state>/base.partial`, configured, then renamed to
//! `<state>/base`: a build that fails half-way leaves only the partial directory, which the next
//! `up` discards and redoes (downloads come from the proxy's cache). Nothing node-specific lives
//! here: no machine id, no SSH host keys.

use std::fs::OpenOptions;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::host;
use super::mirror::{self, Mirrors};
use super::proxy;
use crate::debian::Release;

/// Packages on top of `minbase`: a booting systemd host reachable over SSH, plus tools tests use.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "sudo",
    "procps",
    "ca-certificates",
    "python3",
    "curl",
    "gnupg",
    "iputils-ping",
    "netcat-openbsd",
];

/// Units that do nothing useful in a lab node (timers that fetch or scrub) and are masked.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
];

/// Marks a finished base; its content is the base format version.
const MARKER: &str = "etc/pgha-lab-base";
const FORMAT: &str = "1\n";

/// The base directory of one Debian release and its partial sibling.
pub struct Base {
    dir: PathBuf,
    release: Release,
}

impl Base {
    pub fn new(dir: PathBuf, release: Release) -> Base {
        Base { dir, release }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn partial(&self) -> PathBuf {
        self.dir.with_extension("partial")
    }

    fn log(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Whether a complete base exists.
    pub fn ready(&self) -> bool {
        std::fs::read_to_string(self.dir.join(MARKER))
            .ok()
            .as_deref()
            == Some(FORMAT)
    }

    /// Build the base unless it is ready. Returns true if it was built; `resumed` reports a
    /// leftover partial build being redone.
    pub fn ensure(&self, mirrors: &Mirrors, resumed: &mut bool) -> Result<bool> {
        if self.ready() {
            return Ok(false);
        }
        let partial = self.partial();
        if partial.exists() || self.dir.exists() {
            *resumed = true;
            for dir in [&partial, &self.dir] {
                host::unmount_all_under(dir)?;
                if dir.exists() {
                    std::fs::remove_dir_all(dir).with_context(|| {
                        format!("failed to remove the unfinished base `{}`", dir.display())
                    })?;
                }
            }
        }
        self.debootstrap(mirrors, &partial)?;
        configure(&partial, mirrors, self.release.codename)
            .with_context(|| format!("failed to configure the base in `{}`", partial.display()))?;
        std::fs::write(partial.join(MARKER), FORMAT)?;
        std::fs::rename(&partial, &self.dir)
            .with_context(|| format!("failed to move the base into `{}`", self.dir.display()))?;
        Ok(true)
    }

    fn debootstrap(&self, mirrors: &Mirrors, target: &Path) -> Result<()> {
        let log_path = self.log();
        let log = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&log_path)
            .with_context(|| format!("failed to open `{}`", log_path.display()))?;
        let mut command = Command::new("debootstrap");
        command
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(self.release.codename)
            .arg(target)
            .arg(&mirrors.debian)
            .env("http_proxy", proxy::url())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let status = command
            .status()
            .with_context(|| format!("failed to run `{}`", host::describe(&command)))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "`debootstrap` of {} failed ({status}):\n{}\nhint: see `{}`; `pgha lab up` redoes the build (downloads are cached)",
                self.release.codename,
                tail.join("\n"),
                log_path.display()
            );
        }
        // debootstrap leaves nothing mounted on success, but be sure before the rename.
        host::unmount_all_under(target)
    }
}

/// Make the debootstrapped tree a lab base: the `deploy` user, no per-host identity, the proxy
/// and the host's mirrors for apt, and masked noise units.
fn configure(root: &Path, mirrors: &Mirrors, suite: &str) -> Result<()> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    if !passwd.lines().any(|line| line.starts_with("deploy:")) {
        host::run(Command::new("chroot").arg(root).args([
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "deploy",
        ]))?;
    }
    write(
        root,
        "etc/sudoers.d/pgha-deploy",
        "deploy ALL=(ALL:ALL) NOPASSWD: ALL\n",
        0o440,
    )?;

    for entry in std::fs::read_dir(root.join("etc/ssh"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("ssh_host_") {
            std::fs::remove_file(&path)
                .with_context(|| format!("failed to remove `{}`", path.display()))?;
        }
    }
    write(
        root,
        "etc/ssh/sshd_config.d/pgha-lab.conf",
        "HostKey /etc/ssh/ssh_host_ed25519_key\n",
        0o644,
    )?;
    write(root, "etc/machine-id", "", 0o444)?;
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    let _ = std::fs::remove_file(root.join("etc/hostname"));

    for unit in MASKED_UNITS {
        let link = root.join("etc/systemd/system").join(unit);
        let _ = std::fs::remove_file(&link);
        symlink("/dev/null", &link).with_context(|| format!("failed to mask `{unit}`"))?;
    }

    write(
        root,
        "etc/apt/apt.conf.d/01pgha-proxy",
        &format!("Acquire::http::Proxy \"{}\";\n", proxy::url()),
        0o644,
    )?;
    write(
        root,
        "etc/apt/sources.list.d/debian.sources",
        &mirror::node_sources(mirrors, suite),
        0o644,
    )?;
    let _ = std::fs::remove_file(root.join("etc/apt/sources.list"));
    host::run(Command::new("chroot").arg(root).args(["apt-get", "clean"]))?;
    Ok(())
}

/// Write a file below `root` with `mode`, creating its directory.
pub fn write(root: &Path, relative: &str, content: &str, mode: u32) -> Result<()> {
    let path = root.join(relative);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create `{}`", dir.display()))?;
    }
    std::fs::write(&path, content)
        .with_context(|| format!("failed to write `{}`", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to set the mode of `{}`", path.display()))
}
