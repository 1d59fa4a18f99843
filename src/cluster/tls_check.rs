//! `pgha verify`'s TLS checks, made from this machine against every node's ports, the way
//! a client or an intruder on the network would meet them:
//! - etcd (client and peer port) and Patroni's API answer over TLS with a certificate that
//!   chains to the cluster CA, refuse a TLS client without a certificate, and serve nothing
//!   over plain HTTP;
//! - PostgreSQL offers TLS with a certificate valid for the node's address and refuses a
//!   login without TLS (`sslmode=disable`).
//!
//! Each certificate's days left are part of the evidence; fewer than [`MIN_DAYS`] fail.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::verify::Check;
use crate::inventory::{Inventory, Role};
use crate::tls::{inspect_der, ClientFiles};

/// Fewer days left than this fail `pgha verify` (`pgha deploy` renews at 30).
pub const MIN_DAYS: i64 = 14;
const TIMEOUT: Duration = Duration::from_secs(3);

/// What one TLS conversation showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub version: String,
    pub days_left: i64,
    /// The first 8 bytes of the certificate's SHA-256, in hex: tells a renewed one apart.
    pub fingerprint: String,
    /// The first line of the HTTP answer (or the PostgreSQL answer), when there is one.
    pub answer: Option<String>,
}

/// How a port met a client that should be refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing useful came back (closed, a TLS alert, a non-HTTP answer, an error status).
    Refused(String),
    /// The port served the request.
    Served(String),
}

impl Refusal {
    fn refused(&self) -> bool {
        matches!(self, Refusal::Refused(_))
    }
}

/// An HTTP answer's status line serves the request when its status is 2xx.
fn judge_plain(answer: &[u8]) -> Refusal {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    let status = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(code) if (200..300).contains(&code) => Refusal::Served(line),
        Some(_) => Refusal::Refused(format!("answered `{line}`")),
        None if answer.is_empty() => Refusal::Refused("closed without an answer".into()),
        None => Refusal::Refused("answered something that is not HTTP".into()),
    }
}

async fn tcp(address: IpAddr, port: u16) -> Result<TcpStream, String> {
    tokio::time::timeout(TIMEOUT, TcpStream::connect((address, port)))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|error| error.to_string())
}

async fn read_some<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer)).await;
    match read {
        Ok(Ok(_)) | Err(_) => Ok(answer),
        Ok(Err(_)) if !answer.is_empty() => Ok(answer),
        Ok(Err(error)) => Err(error.to_string()),
    }
}

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: pgha-verify\r\nConnection: close\r\n\r\n")
}

/// A plain HTTP request to a TLS-only port.
async fn plain_http(address: IpAddr, port: u16, path: &str) -> Refusal {
    let mut stream = match tcp(address, port).await {
        Ok(stream) => stream,
        Err(error) => return Refusal::Refused(error),
    };
    if let Err(error) = stream.write_all(request(path).as_bytes()).await {
        return Refusal::Refused(error.to_string());
    }
    match read_some(&mut stream).await {
        Ok(answer) => judge_plain(&answer),
        Err(error) => Refusal::Refused(error),
    }
}

/// An HTTPS request with `config`; the server certificate must chain to the cluster CA and
/// carry `address`.
async fn https(
    config: Arc<rustls::ClientConfig>,
    address: IpAddr,
    port: u16,
    path: &str,
) -> Result<Served, String> {
    let stream = tcp(address, port).await?;
    let mut stream = tokio::time::timeout(
        TIMEOUT,
        crate::tls::connect(config, &address.to_string(), stream),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|error| format!("TLS: {error}"))?;
    let served = served(stream.get_ref().1)?;
    stream
        .write_all(request(path).as_bytes())
        .await
        .map_err(|error| format!("TLS: {error}"))?;
    let answer = read_some(&mut stream)
        .await
        .map_err(|error| format!("TLS: {error}"))?;
    let line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(Served {
        answer: (!line.is_empty()).then_some(line),
        ..served
    })
}

fn served(connection: &rustls::ClientConnection) -> Result<Served, String> {
    let version = connection
        .protocol_version()
        .map(|version| format!("{version:?}").replace('_', "."))
        .unwrap_or_default();
    let leaf = connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or("no server certificate")?;
    let info = inspect_der(leaf).map_err(|error| error.to_string())?;
    let fingerprint = crate::tls::fingerprint(leaf);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(Served {
        version,
        days_left: info.days_left(now),
        fingerprint,
        answer: None,
    })
}

/// An HTTPS request without a client certificate must not be served.
async fn https_without_certificate(
    config: Arc<rustls::ClientConfig>,
    address: IpAddr,
    port: u16,
    path: &str,
) -> Refusal {
    match https(config, address, port, path).await {
        Ok(Served {
            answer: Some(line), ..
        }) => judge_plain(line.as_bytes()),
        Ok(_) => Refusal::Refused("closed without an answer".into()),
        Err(error) => Refusal::Refused(error),
    }
}

/// PostgreSQL's TLS: `SSLRequest`, then the handshake verifying the node's address.
async fn postgres_tls(
    config: Arc<rustls::ClientConfig>,
    address: IpAddr,
    port: u16,
) -> Result<Served, String> {
    let mut stream = tcp(address, port).await?;
    // SSLRequest: length 8, code 80877103.
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(|error| error.to_string())?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut answer))
        .await
        .map_err(|_| "no answer to SSLRequest".to_string())?
        .map_err(|error| error.to_string())?;
    if answer[0] != b'S' {
        return Err(format!(
            "PostgreSQL declined TLS (answered `{}`)",
            answer[0] as char
        ));
    }
    let stream = tokio::time::timeout(
        TIMEOUT,
        crate::tls::connect(config, &address.to_string(), stream),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|error| format!("TLS: {error}"))?;
    served(stream.get_ref().1)
}

/// A login without TLS (`sslmode=disable`) must be refused by pg_hba. The password offered is
/// a made-up one, never a real one over a connection without TLS: pg_hba refuses before any
/// password is asked, and a server that asks for one instead counts as admitting the client.
async fn postgres_plain(address: IpAddr, port: u16) -> Refusal {
    let password = "pgha-verify-not-a-password";
    let mut config = tokio_postgres::Config::new();
    config
        .host(address.to_string())
        .port(port)
        .user("postgres")
        .password(password)
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(TIMEOUT);
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => Refusal::Served("a login without TLS succeeded".into()),
        Err(error) => match error.as_db_error() {
            // pg_hba's refusal (`invalid_authorization_specification`).
            Some(db)
                if *db.code()
                    == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                Refusal::Refused(db.message().to_string())
            }
            Some(db) => Refusal::Served(format!(
                "it went on to authentication without TLS: {}",
                db.message()
            )),
            None => Refusal::Refused(error.to_string()),
        },
    }
}

/// Pass/fail and evidence of one TLS port.
fn judge_port(served: &Result<Served, String>, refusals: &[(&str, &Refusal)]) -> (bool, String) {
    let mut pass = true;
    let mut evidence = match served {
        Ok(served) => {
            let fresh = served.days_left >= MIN_DAYS;
            pass &= fresh;
            format!(
                "{}, certificate {} from the cluster CA, {} days left{}",
                served.version,
                served.fingerprint,
                served.days_left,
                if fresh {
                    ""
                } else {
                    " (run `pgha deploy` to renew)"
                }
            )
        }
        Err(error) => {
            pass = false;
            format!("with the cluster CA and a client certificate: {error}")
        }
    };
    for (what, refusal) in refusals {
        pass &= refusal.refused();
        let text = match refusal {
            Refusal::Refused(how) => format!("refused ({how})"),
            Refusal::Served(how) => format!("SERVED ({how})"),
        };
        evidence.push_str(&format!("; {what}: {text}"));
    }
    (pass, evidence)
}

/// Every node's TLS ports, as seen from here.
pub async fn checks(inventory: &Inventory) -> Vec<Check> {
    let files = ClientFiles::control(inventory);
    let (with_cert, without_cert) = match (files.rustls(), files.anonymous()) {
        (Ok(with), Ok(without)) => (with, without),
        (Err(error), _) | (_, Err(error)) => {
            return vec![Check::new(
                "tls.control_certificate",
                false,
                format!("{error:#}"),
            )]
        }
    };
    let ports = inventory.cluster.ports;
    let mut checks = Vec::new();
    for node in &inventory.nodes {
        let address = node.address;
        let mut ports_to_check: Vec<(&str, u16, &str)> = Vec::new();
        if node.has(Role::Etcd) {
            ports_to_check.push(("etcd", ports.etcd_client, "/version"));
            ports_to_check.push(("etcd_peer", ports.etcd_peer, "/version"));
        }
        if node.has(Role::Postgres) {
            ports_to_check.push(("patroni", ports.patroni_api, "/patroni"));
        }
        for (what, port, path) in ports_to_check {
            let (served, anonymous, plain) = tokio::join!(
                https(with_cert.clone(), address, port, path),
                https_without_certificate(without_cert.clone(), address, port, path),
                plain_http(address, port, path),
            );
            let (pass, evidence) = judge_port(
                &served,
                &[
                    ("TLS without a client certificate", &anonymous),
                    ("plain HTTP", &plain),
                ],
            );
            checks.push(Check::new(
                format!("tls.{}.{what}", node.name),
                pass,
                format!("{address}:{port} {evidence}"),
            ));
        }
        if node.has(Role::Postgres) {
            let (served, plain) = tokio::join!(
                postgres_tls(without_cert.clone(), address, ports.postgres),
                postgres_plain(address, ports.postgres),
            );
            let (pass, evidence) = judge_port(&served, &[("sslmode=disable", &plain)]);
            checks.push(Check::new(
                format!("tls.{}.postgresql", node.name),
                pass,
                format!("{address}:{} {evidence}", ports.postgres),
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_successful_http_answer_counts_as_served() {
        assert!(matches!(
            judge_plain(b"HTTP/1.0 200 OK\r\n\r\n{}"),
            Refusal::Served(_)
        ));
        assert!(judge_plain(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server."
        )
        .refused());
        assert!(judge_plain(b"").refused());
        assert!(judge_plain(b"\x15\x03\x03\x00\x02\x02\x28").refused());
    }

    #[test]
    fn a_port_passes_with_a_fresh_certificate_and_every_refusal() {
        let served = Ok(Served {
            version: "TLSv1.3".into(),
            days_left: 89,
            fingerprint: "00aa".into(),
            answer: Some("HTTP/1.1 200 OK".into()),
        });
        let refused = Refusal::Refused("closed".into());
        let (pass, evidence) = judge_port(&served, &[("plain HTTP", &refused)]);
        assert!(pass, "{evidence}");
        assert!(evidence.contains("89 days left"), "{evidence}");
        let open = Refusal::Served("HTTP/1.0 200 OK".into());
        assert!(!judge_port(&served, &[("plain HTTP", &open)]).0);
        let old = Ok(Served {
            days_left: 3,
            ..served.clone().unwrap()
        });
        let (pass, evidence) = judge_port(&old, &[]);
        assert!(!pass && evidence.contains("pgha deploy"), "{evidence}");
        assert!(!judge_port(&Err("TLS: bad certificate".into()), &[]).0);
    }
}
