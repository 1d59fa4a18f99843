//! The per-cluster secrets file: passwords pgha generates once, stores 0600 beside the
//! inventory and never writes into the inventory, a log line or a remote command line.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::error::UserError;

/// Passwords of one cluster. `Debug` never shows them.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub superuser_password: String,
    pub replication_password: String,
    pub rewind_password: String,
    pub restapi_password: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    /// Fresh random passwords.
    pub fn generate() -> anyhow::Result<Secrets> {
        Ok(Secrets {
            superuser_password: random_password()?,
            replication_password: random_password()?,
            rewind_password: random_password()?,
            restapi_password: random_password()?,
        })
    }

    /// Every secret value, for masking output.
    pub fn values(&self) -> [&str; 4] {
        [
            &self.superuser_password,
            &self.replication_password,
            &self.rewind_password,
            &self.restapi_password,
        ]
    }

    /// Read the secrets file; refuse one that others can read.
    pub fn load(path: &Path) -> anyhow::Result<Secrets> {
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("cannot read secrets file `{}`", path.display()))?;
        if metadata.permissions().mode() & 0o077 != 0 {
            bail!(UserError(format!(
                "secrets file `{}` is readable by others (mode {:o})\nhint: `chmod 600 {}`",
                path.display(),
                metadata.permissions().mode() & 0o777,
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read secrets file `{}`", path.display()))?;
        serde_yaml::from_str(&text).map_err(|error| {
            UserError(format!(
                "{}: {error}\nhint: the file holds `superuser_password`, `replication_password`, `rewind_password`, `restapi_password`",
                path.display()
            ))
            .into()
        })
    }

    /// Read the secrets file, creating it (0600, never overwriting) if it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Secrets> {
        if path.exists() {
            return Secrets::load(path);
        }
        let secrets = Secrets::generate()?;
        let text = format!(
            "# pgha secrets for this cluster: keep this file private and backed up.\n{}",
            serde_yaml::to_string(&secrets)?
        );
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create secrets file `{}`", path.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(secrets)
    }
}

/// 32 characters from [A-Za-z0-9], from the kernel's random source. Alphanumeric only, so the
/// password needs no quoting in any configuration format.
fn random_password() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut random = std::fs::File::open("/dev/urandom").context("cannot open `/dev/urandom`")?;
    let mut password = String::with_capacity(32);
    let mut byte = [0u8; 1];
    while password.len() < 32 {
        random.read_exact(&mut byte)?;
        // 248 = 4 * 62: rejecting the rest keeps every character equally likely.
        if byte[0] < 248 {
            password.push(ALPHABET[usize::from(byte[0]) % ALPHABET.len()] as char);
        }
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.secrets.yml");
        let first = Secrets::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let second = Secrets::load_or_create(&path).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.superuser_password.len(), 32);
        assert_ne!(first.superuser_password, first.replication_password);
        assert!(!format!("{first:?}").contains(&first.superuser_password));
    }

    #[test]
    fn refuses_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yml");
        Secrets::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Secrets::load(&path).unwrap_err();
        assert!(error.to_string().contains("readable by others"), "{error}");
    }
}
