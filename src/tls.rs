//! The cluster's certificate authority, the certificates it issues, and the TLS clients pgha
//! itself uses (Patroni's REST API, etcd, PostgreSQL).
//!
//! The CA lives on the control machine beside the secrets file, in `<secrets file>.tls/`
//! (0700; private keys 0600). It signs, per node, one ECDSA P-256 certificate with both server
//! and client use, valid [`NODE_DAYS`] days and renewed by `pgha deploy` once fewer than
//! [`RENEW_DAYS`] days are left or the names it must carry changed. The control machine has its
//! own client certificate (`control.crt`). On a node the files live in [`NODE_DIR`].

use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode;

use crate::inventory::{Inventory, Node, Role};

/// Where a node keeps its TLS files.
pub const NODE_DIR: &str = "/etc/pgha/tls";
/// The cluster CA's certificate on a node.
pub const NODE_CA: &str = "/etc/pgha/tls/ca.crt";
/// The node's certificate.
pub const NODE_CERT: &str = "/etc/pgha/tls/node.crt";
/// The node's key, root's alone (the agent, curl and etcdctl run as root).
pub const NODE_KEY: &str = "/etc/pgha/tls/node.key";

/// Shell lines that give `etcdctl` and `curl` on a node the cluster CA and the node's
/// certificate: `etcdctl` through its environment, `curl` through `$CURL_TLS`.
pub const SHELL_CLIENTS: &str = "export ETCDCTL_CACERT=/etc/pgha/tls/ca.crt ETCDCTL_CERT=/etc/pgha/tls/node.crt ETCDCTL_KEY=/etc/pgha/tls/node.key\nCURL_TLS='--cacert /etc/pgha/tls/ca.crt --cert /etc/pgha/tls/node.crt --key /etc/pgha/tls/node.key'\n";

/// A node certificate's lifetime, and how long before its end `pgha deploy` renews it.
pub const NODE_DAYS: u64 = 90;
pub const RENEW_DAYS: u64 = 30;
/// The CA's lifetime (its rotation is not automatic).
const CA_DAYS: u64 = 3650;
const DAY: Duration = Duration::from_secs(86_400);

/// The subject of every pgha CA; issued certificates name it as their issuer.
fn ca_name() -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "pgha");
    name.push(DnType::CommonName, "pgha cluster CA");
    name
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The control machine's directory of a cluster's TLS files.
pub fn control_dir(inventory: &Inventory) -> PathBuf {
    inventory.cluster.secrets_file.with_extension("tls")
}

/// Beside the CA while a cluster deployed before TLS is to be moved onto it: written when the
/// CA is made for a cluster that already had its secrets file, removed by the deploy that
/// finished the move (or found nothing to move).
pub fn moving_marker(inventory: &Inventory) -> PathBuf {
    control_dir(inventory).join("moving-onto-tls")
}

/// The names a node's certificate carries: its name and address, loopback (local clients),
/// the VIP, and every HAProxy node's address: a client of the write or read port of any
/// HAProxy (or of the VIP) reaches PostgreSQL through it, and verifies the name it dialled.
pub fn node_names(inventory: &Inventory, node: &Node) -> Vec<String> {
    let mut names = vec![
        node.name.clone(),
        node.address.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    if let Some(vip) = &inventory.cluster.vip {
        names.push(vip.address.to_string());
    }
    if node.roles.contains(&Role::Postgres) {
        for haproxy in inventory.nodes_with(Role::Haproxy) {
            names.push(haproxy.address.to_string());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|name| seen.insert(name.clone()));
    names
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Seconds since the epoch.
    pub not_after: u64,
    /// DNS names and IP addresses, as text.
    pub names: Vec<String>,
}

impl CertInfo {
    /// Whole days left at `now` (negative once expired).
    pub fn days_left(&self, now: u64) -> i64 {
        (self.not_after as i64 - now as i64).div_euclid(86_400)
    }
}

/// Read the first certificate of a PEM text.
pub fn inspect_pem(pem: &str) -> anyhow::Result<CertInfo> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| anyhow::anyhow!("not a PEM certificate: {error}"))?;
    inspect_der(&der)
}

/// Read a DER certificate (what a TLS server presented).
pub fn inspect_der(der: &[u8]) -> anyhow::Result<CertInfo> {
    use x509_cert::ext::pkix::{name::GeneralName, SubjectAltName};
    let cert = x509_cert::Certificate::from_der(der).context("not an X.509 certificate")?;
    let tbs = &cert.tbs_certificate;
    let not_after = tbs.validity.not_after.to_unix_duration().as_secs();
    let mut names = Vec::new();
    if let Ok(Some((_, SubjectAltName(general)))) = tbs.get::<SubjectAltName>() {
        for name in general {
            match name {
                GeneralName::DnsName(dns) => names.push(dns.to_string()),
                GeneralName::IpAddress(octets) => {
                    let bytes = octets.as_bytes();
                    let address = match bytes.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()),
                        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()),
                        _ => continue,
                    };
                    names.push(address.to_string());
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo { not_after, names })
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The first 8 bytes of a DER certificate's SHA-256, in hex (as `pgha verify` shows it).
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(der)[..16].to_string()
}

/// Why a certificate must be (re)issued, or `None` when the one there does.
pub fn renewal_reason(existing: Option<&CertInfo>, wanted: &[String], now: u64) -> Option<String> {
    let Some(existing) = existing else {
        return Some("no certificate yet".into());
    };
    let days = existing.days_left(now);
    if days < RENEW_DAYS as i64 {
        return Some(format!("{days} days left (renewed below {RENEW_DAYS})"));
    }
    let mut have = existing.names.clone();
    let mut want = wanted.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return Some(format!(
            "its names changed ({} → {})",
            have.join(","),
            want.join(",")
        ));
    }
    None
}

/// The cluster CA on the control machine.
pub struct Authority {
    dir: PathBuf,
    key: KeyPair,
    pub ca_pem: String,
}

/// One certificate (re)issued by [`Authority::ensure`].
#[derive(Debug, Clone)]
pub struct Issued {
    pub name: String,
    pub reason: String,
}

impl Authority {
    /// The cluster's CA, made the first time. A CA made for a cluster that already has its
    /// secrets file (deployed before TLS, most likely) leaves [`moving_marker`]: whichever
    /// command makes it (`deploy --check`, `render`, `run`), the next deploy moves the cluster.
    pub fn for_cluster(inventory: &Inventory) -> anyhow::Result<Authority> {
        let dir = control_dir(inventory);
        let first = !dir.join("ca.key").exists();
        let secrets_before = inventory.cluster.secrets_file.exists();
        let authority = Authority::open(&dir)?;
        if first && secrets_before {
            std::fs::write(
                moving_marker(inventory),
                "pgha deploy moves this cluster onto TLS (it had secrets before it had a CA)\n",
            )?;
        }
        Ok(authority)
    }

    /// Open the CA in `dir`, creating the directory and the CA the first time.
    pub fn open(dir: &Path) -> anyhow::Result<Authority> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        if !key_path.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            let key = KeyPair::generate().context("cannot generate the CA key")?;
            let mut params = ca_params();
            let now = SystemTime::now();
            params.not_before = (now - DAY).into();
            params.not_after = (now + DAY * CA_DAYS as u32).into();
            let cert = params.self_signed(&key).context("cannot sign the CA")?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_public(&cert_path, cert.pem().as_bytes())?;
        }
        let mode = std::fs::metadata(&key_path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(crate::error::UserError(format!(
                "the CA key `{}` is readable by others (mode {:o})\nhint: `chmod 600 {}`",
                key_path.display(),
                mode & 0o777,
                key_path.display()
            )));
        }
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)
            .with_context(|| format!("`{}` is not a private key", key_path.display()))?;
        let ca_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read `{}`", cert_path.display()))?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            key,
            ca_pem,
        })
    }

    /// The directory of the CA and the certificates it issued.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Make sure every node of `inventory` and the control machine have a current
    /// certificate; returns the ones (re)issued and why.
    pub fn ensure(&self, inventory: &Inventory, now: SystemTime) -> anyhow::Result<Vec<Issued>> {
        let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut issued = Vec::new();
        for node in &inventory.nodes {
            let names = node_names(inventory, node);
            if let Some(reason) = self.ensure_one(&node.name, &names, true, now, seconds)? {
                issued.push(Issued {
                    name: node.name.clone(),
                    reason,
                });
            }
        }
        if let Some(reason) =
            self.ensure_one("control", &["pgha-control".into()], false, now, seconds)?
        {
            issued.push(Issued {
                name: "control".into(),
                reason,
            });
        }
        Ok(issued)
    }

    fn ensure_one(
        &self,
        name: &str,
        names: &[String],
        server: bool,
        now: SystemTime,
        seconds: u64,
    ) -> anyhow::Result<Option<String>> {
        let cert_path = self.dir.join(format!("{name}.crt"));
        let cert_pem = std::fs::read_to_string(&cert_path).ok();
        let existing = cert_pem.as_deref().and_then(|pem| inspect_pem(pem).ok());
        let reason = match renewal_reason(existing.as_ref(), names, seconds) {
            Some(reason) => reason,
            // An issuance cut off between its files leaves a new key beside the old
            // certificate (the certificate is written last): issue again.
            None if !self.matching_files(name, cert_pem.as_deref().unwrap_or("")) => {
                "its key or combined file does not match the certificate".to_string()
            }
            None => return Ok(None),
        };
        let key = KeyPair::generate().context("cannot generate a key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(address) => Ok(SanType::IpAddress(address)),
                Err(_) => Ok(SanType::DnsName(name.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        // A clock a little behind the control machine's must already accept it.
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + DAY * NODE_DAYS as u32).into();
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("cannot sign the certificate of `{name}`"))?;
        let key_pem = key.serialize_pem();
        write_private(&self.dir.join(format!("{name}.key")), key_pem.as_bytes())?;
        // HAProxy wants certificate and key in one file.
        write_private(
            &self.dir.join(format!("{name}.pem")),
            format!("{}{key_pem}", cert.pem()).as_bytes(),
        )?;
        write_public(&cert_path, cert.pem().as_bytes())?;
        Ok(Some(reason))
    }
}

impl Authority {
    /// `<name>.key` holds the private key of `cert_pem`, and `<name>.pem` (certificate and
    /// key for HAProxy and etcd, if issued) holds both.
    fn matching_files(&self, name: &str, cert_pem: &str) -> bool {
        let Ok(cert) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
            return false;
        };
        let Ok(parsed) = x509_cert::Certificate::from_der(&cert) else {
            return false;
        };
        let public = parsed
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            .to_vec();
        // The key's block (in the combined file it follows the certificate).
        let key_matches = |path: PathBuf| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| {
                    let start = text.find("-----BEGIN PRIVATE KEY-----")?;
                    KeyPair::from_pem(&text[start..]).ok()
                })
                .is_some_and(|key| key.public_key_raw() == public.as_slice())
        };
        let combined = self.dir.join(format!("{name}.pem"));
        let combined_matches = !combined.exists()
            || (key_matches(combined.clone())
                && std::fs::read_to_string(&combined)
                    .is_ok_and(|text| text.contains(cert_pem.trim())));
        key_matches(self.dir.join(format!("{name}.key"))) && combined_matches
    }
}

/// Replace `path` atomically with a file only its owner reads.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, bytes, 0o644)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("pgha-new");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("cannot write `{}`", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot replace `{}`", path.display()))?;
    Ok(())
}

/// Where a TLS client finds the CA, its certificate and its key.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientFiles {
    /// A node's own files (the agent).
    pub fn node() -> ClientFiles {
        ClientFiles {
            ca: NODE_CA.into(),
            cert: NODE_CERT.into(),
            key: NODE_KEY.into(),
        }
    }

    /// The control machine's client certificate for `inventory`'s cluster.
    pub fn control(inventory: &Inventory) -> ClientFiles {
        let dir = control_dir(inventory);
        ClientFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("control.crt"),
            key: dir.join("control.key"),
        }
    }

    fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
        std::fs::read(path).with_context(|| {
            format!(
                "cannot read `{}`\nhint: `pgha deploy` creates the cluster's CA and certificates",
                path.display()
            )
        })
    }

    pub fn ca_pem(&self) -> anyhow::Result<Vec<u8>> {
        Self::read(&self.ca)
    }

    pub fn identity_pem(&self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        Ok((Self::read(&self.cert)?, Self::read(&self.key)?))
    }

    /// A rustls client that trusts only the cluster CA and presents this certificate.
    pub fn rustls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let (cert, key) = self.identity_pem()?;
        let certs = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| anyhow::anyhow!("`{}`: {error}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&key)
            .map_err(|error| anyhow::anyhow!("`{}`: {error}", self.key.display()))?;
        let config = builder()?
            .with_root_certificates(roots(&self.ca_pem()?, &self.ca)?)
            .with_client_auth_cert(certs, key)
            .context("the client certificate and key do not match")?;
        Ok(Arc::new(config))
    }

    /// A rustls client that trusts the cluster CA and presents no certificate.
    pub fn anonymous(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(Arc::new(
            builder()?
                .with_root_certificates(roots(&self.ca_pem()?, &self.ca)?)
                .with_no_client_auth(),
        ))
    }

    /// A PostgreSQL connector verifying the server's name against the cluster CA
    /// (`sslmode=verify-full`); PostgreSQL authenticates by password, not certificate.
    pub fn postgres(&self) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let config = builder()?
            .with_root_certificates(roots(&self.ca_pem()?, &self.ca)?)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

fn builder() -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")
}

fn roots(pem: &[u8], path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|error| anyhow::anyhow!("`{}`: {error}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("`{}` holds an unusable CA certificate", path.display()))?;
    }
    if roots.is_empty() {
        bail!("`{}` holds no certificate", path.display());
    }
    Ok(roots)
}

/// Connect to `host:port` over TLS with `config`, verifying the name `host`.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    stream: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yml");
        std::fs::write(
            &path,
            "cluster:\n  name: c\n  postgres_version: 15\n  vip: 10.0.0.100/24\n  vip_interface: eth0\nssh: {user: root}\nnodes:\n  - {name: a, address: 10.0.0.1, roles: [etcd, postgres, haproxy, keepalived]}\n  - {name: b, address: 10.0.0.2, roles: [etcd, postgres, haproxy, keepalived]}\n  - {name: e, address: 10.0.0.3, roles: [etcd]}\n",
        )
        .unwrap();
        let inventory = Inventory::load(&path).unwrap();
        std::mem::forget(dir);
        inventory
    }

    #[test]
    fn a_postgres_node_is_named_by_every_address_a_client_dials_to_reach_it() {
        let inventory = inventory();
        let a = node_names(&inventory, &inventory.nodes[0]);
        assert_eq!(
            a,
            [
                "a",
                "10.0.0.1",
                "localhost",
                "127.0.0.1",
                "10.0.0.100",
                "10.0.0.2"
            ]
        );
        let e = node_names(&inventory, &inventory.nodes[2]);
        assert_eq!(e, ["e", "10.0.0.3", "localhost", "127.0.0.1", "10.0.0.100"]);
    }

    #[test]
    fn certificates_are_renewed_when_old_or_misnamed_and_only_then() {
        let now = 1_000_000_000;
        let names = vec!["a".to_string(), "10.0.0.1".to_string()];
        let fresh = CertInfo {
            not_after: now + 89 * 86_400,
            names: vec!["10.0.0.1".into(), "a".into()],
        };
        assert_eq!(renewal_reason(Some(&fresh), &names, now), None);
        let old = CertInfo {
            not_after: now + 29 * 86_400,
            ..fresh.clone()
        };
        assert!(renewal_reason(Some(&old), &names, now)
            .unwrap()
            .contains("29 days left"));
        let grown = vec!["a".into(), "10.0.0.1".into(), "10.0.0.9".into()];
        assert!(renewal_reason(Some(&fresh), &grown, now)
            .unwrap()
            .contains("names changed"));
        assert!(renewal_reason(None, &names, now).is_some());
    }

    #[test]
    fn the_authority_issues_certificates_that_chain_to_it_and_keeps_them_while_current() {
        let inventory = inventory();
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("c.tls");
        let authority = Authority::open(&ca_dir).unwrap();
        let now = SystemTime::now();
        let issued = authority.ensure(&inventory, now).unwrap();
        assert_eq!(issued.len(), 4, "{issued:?}");
        assert_eq!(
            std::fs::metadata(ca_dir.join("a.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A second run, and a reopened CA, issue nothing.
        let again = Authority::open(&ca_dir).unwrap();
        assert!(again.ensure(&inventory, now).unwrap().is_empty());
        // The node certificate names what it must and expires in 90 days.
        let info = inspect_pem(&std::fs::read_to_string(ca_dir.join("a.crt")).unwrap()).unwrap();
        assert!(info.names.contains(&"10.0.0.100".to_string()), "{info:?}");
        let seconds = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(info.days_left(seconds), NODE_DAYS as i64);
        // It verifies against the CA (rustls builds the client; webpki checks the chain).
        let files = ClientFiles {
            ca: ca_dir.join("ca.crt"),
            cert: ca_dir.join("a.crt"),
            key: ca_dir.join("a.key"),
        };
        files.rustls().unwrap();
        let ca = CertificateDer::from_pem_slice(authority.ca_pem.as_bytes()).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
        let leaf = CertificateDer::from_pem_file(ca_dir.join("a.crt")).unwrap();
        let end = webpki::EndEntityCert::try_from(&leaf).unwrap();
        end.verify_for_usage(
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all,
            &[anchor],
            &[],
            rustls::pki_types::UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap();
        end.verify_is_valid_for_subject_name(
            &rustls::pki_types::ServerName::try_from("10.0.0.100").unwrap(),
        )
        .unwrap();
        // A key that does not belong to the certificate (an issuance cut off) is reissued.
        std::fs::copy(ca_dir.join("b.key"), ca_dir.join("a.key")).unwrap();
        let fixed = again.ensure(&inventory, now).unwrap();
        assert_eq!(fixed.len(), 1, "{fixed:?}");
        assert!(fixed[0].reason.contains("does not match"), "{fixed:?}");
        assert!(again.ensure(&inventory, now).unwrap().is_empty());
        // Nine days before the end of the renewal window, it is renewed.
        let later = now + DAY * (NODE_DAYS - RENEW_DAYS + 9) as u32;
        let renewed = again.ensure(&inventory, later).unwrap();
        assert_eq!(renewed.len(), 4, "{renewed:?}");
    }
}
