//! The machine the lab runs on: the up-front checks (Linux, root, tools present, each missing
//! tool named with its package) and the one way the lab runs external tools, signals processes
//! and finds its mounts. It knows nothing about nodes or the network plan.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Every program the lab runs, with the Debian package that provides it.
const TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("systemd-nspawn", "systemd-container"),
    ("apt-cacher-ng", "apt-cacher-ng"),
    ("ip", "iproute2"),
    ("ssh-keygen", "openssh-client"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("setsid", "util-linux"),
    ("kill", "procps"),
    ("chroot", "coreutils"),
];

/// Check everything the lab needs from this machine before touching it: Linux, root, and every
/// external tool. Reports all missing tools at once.
pub fn preflight() -> Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("the lab needs Linux (network namespaces, overlayfs, systemd-nspawn)");
    }
    if effective_uid()? != 0 {
        bail!("the lab needs root; hint: run `sudo pgha lab ...`");
    }
    ensure_sbin_on_path();
    let missing: Vec<(&str, &str)> = TOOLS
        .iter()
        .copied()
        .filter(|(program, _)| find_program(program).is_none())
        .collect();
    match missing_tools_message(&missing) {
        Some(message) => bail!(message),
        None => Ok(()),
    }
}

/// "`a`, `b` are not found; hint: apt-get install pa pb", or None if nothing is missing.
fn missing_tools_message(missing: &[(&str, &str)]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let programs: Vec<String> = missing
        .iter()
        .map(|(program, _)| format!("`{program}`"))
        .collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    let verb = if missing.len() == 1 { "is" } else { "are" };
    Some(format!(
        "{} {verb} not found; hint: apt-get install {}",
        programs.join(", "),
        packages.join(" ")
    ))
}

/// Put the sbin directories on `PATH` (a plain `sudo` or cron `PATH` may lack them), so every
/// tool found by [`preflight`] is also found when it is run.
pub fn ensure_sbin_on_path() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for sbin in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !dirs.iter().any(|dir| dir == Path::new(sbin)) {
            dirs.push(PathBuf::from(sbin));
        }
    }
    if let Ok(joined) = std::env::join_paths(dirs) {
        std::env::set_var("PATH", joined);
    }
}

/// The effective user id of this process, read from `/proc/self/status`.
pub fn effective_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("failed to read `/proc/self/status`")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .context("no effective uid in `/proc/self/status`")
}

/// Where `program` is on `PATH` or in the sbin directories (root's tools are there).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A command line as the user would type it, for error messages.
pub fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    words.join(" ")
}

/// Run a command to completion; on failure the error names the command and quotes its stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run `{}`", describe(command)))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`{}` failed ({}): {}",
            describe(command),
            output.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Run a command and tell whether it succeeded, for probes and best-effort cleanup.
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Whether a process is alive (not a zombie) and runs `program`, so a reused pid is not
/// mistaken for one of the lab's processes.
pub fn process_alive(pid: u32, program: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: comm may contain spaces, so split at the last `)`.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head
        .split_once('(')
        .map(|(_, comm)| comm)
        .unwrap_or_default();
    let state = tail.trim_start().chars().next().unwrap_or('Z');
    // The kernel truncates comm to 15 characters.
    let expected: String = program.chars().take(15).collect();
    comm == expected && state != 'Z' && state != 'X'
}

/// Send a signal to a process with the system `kill` (std has no portable API for it).
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    run(Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string()))?;
    Ok(())
}

/// Mount points at or under `dir`, deepest first, from `/proc/mounts`.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mounts =
        std::fs::read_to_string("/proc/mounts").context("failed to read `/proc/mounts`")?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(unescape_mount_path)
        .map(PathBuf::from)
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect();
    // Deepest first; at equal depth the later mount first (an overlay before the tmpfs that
    // holds its upper layer). /proc/mounts lists mounts in the order they were made.
    found.reverse();
    found.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    found.dedup();
    Ok(found)
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Unmount every mount at or under `dir`, deepest first.
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    for mount_point in mounts_under(dir)? {
        if !succeeds(Command::new("umount").arg(&mount_point)) {
            // Something still holds it (a process of a killed node being reaped): detach it
            // now so the directory can go; the kernel frees it when the last user leaves.
            run(Command::new("umount").arg("--lazy").arg(&mount_point))
                .with_context(|| format!("failed to unmount `{}`", mount_point.display()))?;
        }
    }
    Ok(())
}

/// The pid in `pid_file` if that process is alive and runs `program`.
pub fn live_pid(pid_file: &Path, program: &str) -> Option<u32> {
    let pid = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    process_alive(pid, program).then_some(pid)
}

/// Make `command` start with only stdin, stdout and stderr open. The lab's daemons (nodes, the
/// proxy) outlive the `pgha` that started them; an inherited descriptor — such as a lock held
/// by the caller's shell — would otherwise stay open as long as they run.
pub fn close_inherited_descriptors(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls `close`, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            for descriptor in 3..1024 {
                libc::close(descriptor);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_named_with_their_packages() {
        assert_eq!(missing_tools_message(&[]), None);
        assert_eq!(
            missing_tools_message(&[("debootstrap", "debootstrap")]).as_deref(),
            Some("`debootstrap` is not found; hint: apt-get install debootstrap")
        );
        assert_eq!(
            missing_tools_message(&[("mount", "mount"), ("umount", "mount"), ("ip", "iproute2")])
                .as_deref(),
            Some("`mount`, `umount`, `ip` are not found; hint: apt-get install mount iproute2")
        );
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/var/lib/a\\040b"), "/var/lib/a b");
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_name_is_not() {
        let pid = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        assert!(process_alive(pid, comm.trim()));
        assert!(!process_alive(pid, "certainly-not-this"));
    }
}
