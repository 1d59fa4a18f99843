//! One authenticated SSH connection to one host, shared by every task that works on that host.
//! Each command is its own channel on the connection, so a `Session` is cheap to clone and safe
//! to use from many tasks at once. It owns connecting (TCP, host key, authentication) and
//! running commands; it does not decide *what* to run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Sig};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::command::{CommandOutput, RemoteCommand};
use super::error::SshError;
use super::known_hosts::{self, Verdict};
use super::SshTarget;

/// Sent when the server has been silent this long; three unanswered ones close the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Channels open at once on one connection. OpenSSH's sshd refuses more than `MaxSessions`
/// (default 10) per connection, so callers may start any number of commands and the surplus
/// waits here instead of failing.
const MAX_CONCURRENT_CHANNELS: usize = 8;

/// An authenticated connection to one host. Clones share the connection.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    handle: Handle<HostKeyCheck>,
    host: String,
    user: String,
    channels: Semaphore,
}

impl Session {
    /// Connect, verify the host key against the target's known_hosts, and authenticate with the
    /// identity file (if any), then with the keys of `ssh-agent` (if `SSH_AUTH_SOCK` is set).
    /// Each stage (TCP connect, SSH handshake, authentication) gets `connect_timeout`.
    pub async fn connect(target: &SshTarget) -> Result<Session, SshError> {
        let timeout = target.connect_timeout;
        let timed_out = |stage| SshError::Timeout {
            host: target.host.clone(),
            port: target.port,
            stage,
            after: timeout,
        };
        let connect_error = |source| SshError::Connect {
            host: target.host.clone(),
            port: target.port,
            source,
        };

        let address = (target.host.as_str(), target.port);
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| timed_out("TCP connect"))?
            .map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;

        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: 3,
            nodelay: true,
            ..client::Config::default()
        });
        let handler = HostKeyCheck {
            host: target.host.clone(),
            port: target.port,
            known_hosts: target.known_hosts.clone(),
            accept_new: target.accept_new_host_keys,
        };
        let mut handle =
            tokio::time::timeout(timeout, client::connect_stream(config, tcp, handler))
                .await
                .map_err(|_| timed_out("SSH handshake"))?
                .map_err(|error| match error {
                    HandshakeError::HostKey(error) => error,
                    HandshakeError::Ssh(source) => SshError::Protocol {
                        host: target.host.clone(),
                        source,
                    },
                })?;

        tokio::time::timeout(timeout, authenticate(&mut handle, target))
            .await
            .map_err(|_| timed_out("authentication"))??;

        Ok(Session {
            inner: Arc::new(Inner {
                handle,
                host: target.host.clone(),
                user: target.user.clone(),
                channels: Semaphore::new(MAX_CONCURRENT_CHANNELS),
            }),
        })
    }

    /// The host this session is connected to, as given in the target.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The user this session logged in as.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// Run a command and collect its output. A non-zero exit is *not* an error here (see
    /// [`Session::run_checked`]); failing to run it at all is, and so is `sudo` asking for a
    /// password.
    pub async fn run(&self, command: &RemoteCommand) -> Result<CommandOutput, SshError> {
        let sudo = command.needs_root() && self.inner.user != "root";
        let line = command.command_line(sudo);
        let output = self.exec(&line, command).await?;
        if sudo {
            self.check_sudo(&output)?;
        }
        Ok(output)
    }

    /// Like [`Session::run`], but a non-zero exit becomes [`SshError::CommandFailed`] with the
    /// end of stderr.
    pub async fn run_checked(&self, command: &RemoteCommand) -> Result<CommandOutput, SshError> {
        let output = self.run(command).await?;
        if output.success() {
            Ok(output)
        } else {
            Err(SshError::CommandFailed {
                host: self.inner.host.clone(),
                command: command.summary(),
                status: output.status(),
                stderr: tail(&output.stderr_text(), 10),
            })
        }
    }

    /// Say goodbye to the server. Dropping the last clone also ends the connection, less
    /// politely.
    pub async fn close(&self) {
        // The connection may already be gone; there is nothing left to do about that.
        let _ = self
            .inner
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }

    async fn exec(&self, line: &str, command: &RemoteCommand) -> Result<CommandOutput, SshError> {
        let channel_error = |source| SshError::Channel {
            host: self.inner.host.clone(),
            command: command.summary(),
            source,
        };
        // The semaphore is never closed, so acquiring only waits.
        let _permit = self.inner.channels.acquire().await.ok();
        let channel = self
            .inner
            .handle
            .channel_open_session()
            .await
            .map_err(channel_error)?;
        channel
            .exec(true, line.as_bytes())
            .await
            .map_err(channel_error)?;
        let (mut reader, writer) = channel.split();

        // Feed stdin while reading output: doing one after the other deadlocks once both
        // directions fill their windows.
        let feed = async {
            if let Some(bytes) = command.stdin_bytes() {
                writer.data(bytes).await?;
            }
            writer.eof().await
        };
        tokio::pin!(feed);
        let mut feeding = true;
        let mut fed = Ok(());
        let mut refused = false;
        let mut output = CommandOutput {
            exit_code: None,
            signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        loop {
            tokio::select! {
                result = &mut feed, if feeding => {
                    feeding = false;
                    fed = result;
                }
                message = reader.wait() => match message {
                    Some(ChannelMsg::Data { data }) => output.stdout.extend_from_slice(&data),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                        output.stderr.extend_from_slice(&data)
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        output.exit_code = i32::try_from(exit_status).ok()
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                        output.signal = Some(signal_text(&signal_name))
                    }
                    // The exec request itself was refused: no exit status or close follows.
                    Some(ChannelMsg::Failure) => {
                        refused = true;
                        break;
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                },
            }
            // A command may exit without reading all its input (like `true < big`). Then the
            // server grants no more window and waits for our end-of-file: stop feeding and
            // send it, or both sides wait forever.
            let finished = output.exit_code.is_some() || output.signal.is_some();
            if feeding && finished {
                feeding = false;
                // The channel may already be closing; its close message still arrives.
                let _ = writer.eof().await;
            }
        }
        if refused {
            return Err(SshError::ExecRefused {
                host: self.inner.host.clone(),
                command: command.summary(),
            });
        }
        // A failed write matters only for a command that never finished.
        if output.exit_code.is_none() && output.signal.is_none() {
            fed.map_err(channel_error)?;
        }
        Ok(output)
    }

    /// Recognise `sudo -n`'s own failures, which would otherwise look like the command's.
    fn check_sudo(&self, output: &CommandOutput) -> Result<(), SshError> {
        let stderr = output.stderr_text();
        let host = self.inner.host.clone();
        let user = self.inner.user.clone();
        if output.exit_code == Some(1)
            && (stderr.starts_with("sudo: a password is required")
                || stderr.starts_with("sudo: a terminal is required"))
        {
            return Err(SshError::SudoPassword { host, user });
        }
        if output.exit_code == Some(127)
            && stderr.contains("sudo: ")
            && stderr.contains("not found")
        {
            return Err(SshError::SudoMissing { host, user });
        }
        Ok(())
    }
}

/// Try the identity file, then every key the agent offers.
async fn authenticate(
    handle: &mut Handle<HostKeyCheck>,
    target: &SshTarget,
) -> Result<(), SshError> {
    let protocol_error = |source| SshError::Protocol {
        host: target.host.clone(),
        source,
    };
    let mut tried = Vec::new();

    if let Some(path) = &target.identity_file {
        let key =
            russh::keys::load_secret_key(path, None).map_err(|source| SshError::Identity {
                path: path.clone(),
                source,
            })?;
        let hash = rsa_hash(handle, key.algorithm().is_rsa())
            .await
            .map_err(protocol_error)?;
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
        let result = handle
            .authenticate_publickey(target.user.as_str(), key)
            .await
            .map_err(protocol_error)?;
        if result.success() {
            return Ok(());
        }
        tried.push(format!("identity file `{}`", path.display()));
    }

    match AgentClient::connect_env().await {
        Ok(mut agent) => match agent.request_identities().await {
            Ok(keys) => {
                for key in &keys {
                    let hash = rsa_hash(handle, key.algorithm().is_rsa())
                        .await
                        .map_err(protocol_error)?;
                    let result = handle
                        .authenticate_publickey_with(
                            target.user.as_str(),
                            key.clone(),
                            hash,
                            &mut agent,
                        )
                        .await;
                    if result.is_ok_and(|result| result.success()) {
                        return Ok(());
                    }
                }
                tried.push(format!("{} key(s) from `ssh-agent`", keys.len()));
            }
            Err(error) => tried.push(format!("`ssh-agent`, which failed to list keys: {error}")),
        },
        Err(_) => tried.push("no usable `ssh-agent` (`SSH_AUTH_SOCK`)".to_string()),
    }

    Err(SshError::Auth {
        host: target.host.clone(),
        user: target.user.clone(),
        tried: tried.join(", "),
    })
}

/// The signature hash for an RSA key: the best one the server announces, SHA-256 when it
/// announces nothing (every OpenSSH since 7.2 accepts it).
async fn rsa_hash(
    handle: &Handle<HostKeyCheck>,
    is_rsa: bool,
) -> Result<Option<HashAlg>, russh::Error> {
    if !is_rsa {
        return Ok(None);
    }
    let best = handle.best_supported_rsa_hash().await?;
    Ok(best.unwrap_or(Some(HashAlg::Sha256)))
}

/// The russh handler: its only job is the host key verdict.
struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
}

#[derive(Debug)]
enum HandshakeError {
    Ssh(russh::Error),
    HostKey(SshError),
}

impl From<russh::Error> for HandshakeError {
    fn from(error: russh::Error) -> Self {
        HandshakeError::Ssh(error)
    }
}

impl client::Handler for HostKeyCheck {
    type Error = HandshakeError;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let name = known_hosts::host_name(&self.host, self.port);
        let file = known_hosts::load(&self.known_hosts).map_err(HandshakeError::HostKey)?;
        let error = match file.check(&self.host, self.port, key) {
            Verdict::Match => return Ok(true),
            Verdict::Unknown if self.accept_new => {
                let line = known_hosts::entry_line(&self.host, self.port, key).map_err(|e| {
                    SshError::KnownHostsFile {
                        action: "update",
                        path: self.known_hosts.clone(),
                        source: std::io::Error::other(e),
                    }
                });
                line.and_then(|line| known_hosts::append(&self.known_hosts, &line))
                    .map_err(HandshakeError::HostKey)?;
                return Ok(true);
            }
            Verdict::Unknown => SshError::HostKeyUnknown {
                host: name,
                fingerprint: format!(
                    "{} {}",
                    key.algorithm().as_str(),
                    known_hosts::fingerprint(key)
                ),
                known_hosts: self.known_hosts.clone(),
            },
            Verdict::Changed { expected, line } => SshError::HostKeyChanged {
                host: name,
                expected,
                actual: format!(
                    "{} {}",
                    key.algorithm().as_str(),
                    known_hosts::fingerprint(key)
                ),
                known_hosts: self.known_hosts.clone(),
                line,
            },
            Verdict::Revoked { line } => SshError::HostKeyRevoked {
                host: name,
                fingerprint: known_hosts::fingerprint(key),
                known_hosts: self.known_hosts.clone(),
                line,
            },
        };
        Err(HandshakeError::HostKey(error))
    }
}

fn signal_text(signal: &Sig) -> String {
    match signal {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
