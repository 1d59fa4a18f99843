//! The transport's typed errors. Each message names the host and, where the user can act, ends
//! with a `hint:` line. Callers wrap these in `anyhow` context at the edges.

use std::path::PathBuf;
use std::time::Duration;

use super::command::shell_quote;

/// Everything that can go wrong between this machine and one host.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to `{host}:{port}`: {source}\nhint: check that the host is up, that sshd listens on port {port} and that no firewall drops the connection")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },

    #[error("{stage} with `{host}:{port}` timed out after {}", humanize(*.after))]
    Timeout {
        host: String,
        port: u16,
        stage: &'static str,
        after: Duration,
    },

    #[error("unknown host key for `{host}`: {fingerprint}\nhint: re-run with `--accept-new-host-keys` to record it in `{}`", .known_hosts.display())]
    HostKeyUnknown {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },

    #[error("REMOTE HOST KEY CHANGED for `{host}`: expected {expected} ({}:{line}), got {actual}\nhint: if the host was rebuilt, remove its line with `ssh-keygen -f {} -R {}` and connect again with `--accept-new-host-keys`", .known_hosts.display(), shell_quote(&.known_hosts.to_string_lossy()), shell_quote(.host))]
    HostKeyChanged {
        host: String,
        expected: String,
        actual: String,
        known_hosts: PathBuf,
        line: usize,
    },

    #[error("host key of `{host}` is revoked: {fingerprint} (marked `@revoked` at {}:{line})", .known_hosts.display())]
    HostKeyRevoked {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },

    #[error("cannot {action} known hosts file `{}`: {source}", .path.display())]
    KnownHostsFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot load identity file `{}`: {source}\nhint: the key must be an unencrypted OpenSSH or PEM private key; load encrypted keys into `ssh-agent` instead", .path.display())]
    Identity {
        path: PathBuf,
        #[source]
        source: russh::keys::Error,
    },

    #[error("authentication failed for `{user}@{host}` (tried: {tried})\nhint: add the public key to `~{user}/.ssh/authorized_keys` on the host, or pass the right identity file")]
    Auth {
        host: String,
        user: String,
        tried: String,
    },

    #[error("ssh protocol error with `{host}`: {source}")]
    Protocol {
        host: String,
        #[source]
        source: russh::Error,
    },

    #[error("ssh channel to `{host}` failed while running `{command}`: {source}")]
    Channel {
        host: String,
        command: String,
        #[source]
        source: russh::Error,
    },

    #[error("the server `{host}` refused to run `{command}`")]
    ExecRefused { host: String, command: String },

    #[error("`sudo` on `{host}` needs a password for `{user}`\nhint: give `{user}` passwordless sudo (a `NOPASSWD:` rule in `/etc/sudoers.d/`) or connect as `root`")]
    SudoPassword { host: String, user: String },

    #[error("`sudo` is not installed on `{host}` but `{user}` is not root\nhint: install `sudo` on the host or connect as `root`")]
    SudoMissing { host: String, user: String },

    #[error("`{command}` failed on `{host}` with {status}{}", stderr_suffix(.stderr))]
    CommandFailed {
        host: String,
        command: String,
        status: String,
        stderr: String,
    },

    #[error("cannot upload to `{path}` on `{host}`: {reason}")]
    Upload {
        host: String,
        path: String,
        reason: String,
    },
}

fn humanize(duration: Duration) -> String {
    if duration.as_millis().is_multiple_of(1000) {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let tail = stderr.trim_end();
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}
