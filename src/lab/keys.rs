//! SSH trust for the lab, made on the control side: one client key, one ed25519 host key per
//! node, and a `known_hosts` naming each node's address, so SSH is strict from the first
//! connection. Keys live under `<state>/ssh` and survive `down` (not `down --purge`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::host;
use super::topology::Node;

/// The lab's key directory and the files in it.
pub struct Keys {
    dir: PathBuf,
}

impl Keys {
    pub fn new(dir: PathBuf) -> Keys {
        Keys { dir }
    }

    /// The client private key authorised for `root` and `deploy` on every node.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The private host key of `node` (its `.pub` beside it).
    pub fn host_key(&self, node: &Node) -> PathBuf {
        self.dir
            .join("hosts")
            .join(node.name())
            .join("ssh_host_ed25519_key")
    }

    /// Create missing keys for the client and `nodes`, and rewrite `known_hosts`. Returns the
    /// keys it created (empty when everything existed).
    pub fn ensure(&self, nodes: &[Node]) -> Result<Vec<String>> {
        let mut created = Vec::new();
        if generate(&self.client_key(), "pgha-lab-client")? {
            created.push("client key".to_string());
        }
        let mut lines = String::new();
        for node in nodes {
            if generate(&self.host_key(node), &format!("root@{node}"))? {
                created.push(format!("host key of `{node}`"));
            }
            let public = read(&public_path(&self.host_key(node)))?;
            lines.push_str(&known_hosts_line(&node.address().to_string(), &public)?);
        }
        write_if_changed(&self.known_hosts(), &lines)?;
        Ok(created)
    }

    /// The client's public key line, for `authorized_keys`.
    pub fn client_public_key(&self) -> Result<String> {
        read(&public_path(&self.client_key()))
    }
}

fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("failed to read `{}`", path.display()))
}

/// Generate an unencrypted ed25519 key at `path` unless it exists; true if generated.
fn generate(path: &Path, comment: &str) -> Result<bool> {
    if path.exists() && public_path(path).exists() {
        return Ok(false);
    }
    let dir = path.parent().context("key path has no directory")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create `{}`", dir.display()))?;
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(public_path(path));
    host::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    )
    .with_context(|| format!("failed to generate the SSH key `{}`", path.display()))?;
    Ok(true)
}

/// A `known_hosts` line for `address` from a public key file's content (`type key comment`).
pub fn known_hosts_line(address: &str, public_key: &str) -> Result<String> {
    let mut fields = public_key.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(key)) => Ok(format!("{address} {kind} {key}\n")),
        _ => anyhow::bail!(
            "malformed public key for `{address}`: `{}`",
            public_key.trim()
        ),
    }
}

fn write_if_changed(path: &Path, content: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    std::fs::write(path, content).with_context(|| format!("failed to write `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_line_drops_the_comment() {
        let line = known_hosts_line("10.231.0.11", "ssh-ed25519 AAAAC3Nza root@node1\n");
        assert_eq!(
            line.ok().as_deref(),
            Some("10.231.0.11 ssh-ed25519 AAAAC3Nza\n")
        );
    }

    #[test]
    fn malformed_public_key_is_an_error() {
        assert!(known_hosts_line("10.231.0.11", "garbage").is_err());
    }

    #[test]
    fn public_key_sits_beside_the_private_one() {
        assert_eq!(
            public_path(Path::new("/s/id_ed25519")),
            PathBuf::from("/s/id_ed25519.pub")
        );
    }
}
