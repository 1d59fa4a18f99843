//! The SSH transport (russh): one verified, authenticated connection per host, commands as
//! channels on it, and idempotent atomic uploads. It knows nothing about playbooks, facts or
//! inventories; callers build an [`SshTarget`] and hand it [`RemoteCommand`]s and [`Upload`]s.
//!
//! - [`session`]: connecting (TCP, host key, authentication) and running commands.
//! - [`known_hosts`]: the pure host key verdict and recording of accepted keys.
//! - [`command`]: remote commands as data and the shell quoting of every word.
//! - [`upload`]: checksum-first, temp-file-then-rename uploads.
//! - [`error`]: the typed [`SshError`].
//!
//! Security rules kept here: host keys are always checked (an unknown key is only recorded when
//! the caller asked for it, a changed or revoked key is always refused), every word of a command
//! line is quoted, and payloads such as secrets and file contents travel on stdin.

pub mod command;
pub mod error;
pub mod known_hosts;
pub mod session;
pub mod upload;

use std::path::PathBuf;
use std::time::Duration;

pub use command::{shell_quote, CommandOutput, RemoteCommand};
pub use error::SshError;
pub use session::Session;
pub use upload::{sha256_hex, Upload};

/// Where and how to connect to one host.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// IP address or DNS name.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// A private key file (ed25519, ECDSA or RSA, unencrypted); `ssh-agent` keys are tried
    /// after it.
    pub identity_file: Option<PathBuf>,
    /// The OpenSSH-format file that host keys are checked against (and recorded in).
    pub known_hosts: PathBuf,
    /// Record the key of a host that is not in `known_hosts` yet instead of refusing it.
    /// A changed key is refused regardless.
    pub accept_new_host_keys: bool,
    /// Limit for each connection stage: TCP connect, SSH handshake, authentication.
    pub connect_timeout: Duration,
}
