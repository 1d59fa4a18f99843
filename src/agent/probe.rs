//! Local probes of one cycle: Patroni's REST API (`GET /patroni` and `GET /primary`,
//! through the one Patroni client), the VIP on its interface and a live keepalived.
//! Probes only read; the one change they make is [`remove_vip`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::patroni::{MemberStatus, Patroni, Role};

/// The node's TLS client for Patroni's API (the cluster CA, the node's certificate), read on
/// first use and kept: a renewed certificate restarts the agent. A failed read is retried.
pub fn node_tls() -> Option<Arc<rustls::ClientConfig>> {
    static TLS: Mutex<Option<Arc<rustls::ClientConfig>>> = Mutex::new(None);
    let mut tls = TLS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if tls.is_none() {
        *tls = crate::tls::ClientFiles::node().rustls().ok();
    }
    tls.clone()
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
}

/// The API base (`http://host:port`) of a member's `api_url` (`http://host:port/patroni`).
pub use crate::patroni::model::api_base;

/// How long a probe of the local Patroni may take.
const PATRONI_TIMEOUT: Duration = Duration::from_millis(800);

/// The local Patroni's role from `GET /patroni`.
pub async fn patroni_role(base: &str) -> Option<String> {
    let (status, body) = Patroni::anonymous(PATRONI_TIMEOUT, node_tls())
        .call(base, "GET", "/patroni", None)
        .await
        .ok()?;
    if status != 200 && status != 503 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    value.get("role")?.as_str().map(str::to_string)
}

/// `Some(true)` when the leader takes writes: `/primary` answers 200 *and* says `role:
/// primary`. `Some(false)` otherwise, `None` when unreachable.
///
/// The status alone is not enough: Patroni answers `/primary` with 200 as soon as it holds the
/// leader lock, and a switchover's candidate takes the lock before PostgreSQL has left
/// recovery. The body's `role` comes from `pg_is_in_recovery()`; routing on the status alone
/// sent held connections to a server still read-only ("cannot execute INSERT in a read-only
/// transaction", 10 of them in one lab switchover).
pub async fn is_primary(base: &str) -> Option<bool> {
    Patroni::anonymous(PATRONI_TIMEOUT, node_tls())
        .call(base, "GET", "/primary", None)
        .await
        .ok()
        .map(|(status, body)| takes_writes(status, &body))
}

fn takes_writes(status: u16, body: &str) -> bool {
    status == 200 && MemberStatus::parse(body).is_ok_and(|member| member.role == Role::Leader)
}

/// This node holds `address` on `interface` (`ip -o addr show dev IFACE`).
pub async fn vip_held(interface: &str, address: &str) -> Result<bool, ProbeError> {
    let output = run(&["ip", "-o", "addr", "show", "dev", interface]).await?;
    Ok(holds(&output, address))
}

fn holds(ip_output: &str, address: &str) -> bool {
    ip_output.lines().any(|line| {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "inet" || word == "inet6" {
                if let Some(cidr) = words.next() {
                    if cidr.split('/').next() == Some(address) {
                        return true;
                    }
                }
            }
        }
        false
    })
}

/// Remove the VIP from this node's interface.
pub async fn remove_vip(interface: &str, vip_with_prefix: &str) -> Result<(), ProbeError> {
    run(&["ip", "addr", "del", vip_with_prefix, "dev", interface])
        .await
        .map(|_| ())
}

/// A process named `keepalived` runs (read from `/proc/*/comm`).
pub fn keepalived_alive() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|byte| byte.is_ascii_digit())
            && std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "keepalived")
    })
}

pub(super) async fn run(argv: &[&str]) -> Result<String, ProbeError> {
    let command = argv.join(" ");
    let output = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::process::Command::new(argv[0])
            .args(&argv[1..])
            // A command given up on (or whose caller stopped) must not land later.
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| ProbeError::Command {
        command: command.clone(),
        message: "timed out".into(),
    })?
    .map_err(|error| ProbeError::Command {
        command: command.clone(),
        message: error.to_string(),
    })?;
    if !output.status.success() {
        return Err(ProbeError::Command {
            command,
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_takes_writes_once_it_left_recovery() {
        // Patroni 4.1 holding the lock while PostgreSQL still replays: 200, role replica.
        assert!(!takes_writes(
            200,
            r#"{"state": "running", "role": "replica"}"#
        ));
        assert!(takes_writes(
            200,
            r#"{"state": "running", "role": "primary"}"#
        ));
        assert!(!takes_writes(
            503,
            r#"{"state": "running", "role": "primary"}"#
        ));
        assert!(!takes_writes(200, ""));
    }

    #[test]
    fn vip_is_found_in_ip_output() {
        let output = "2: eth0    inet 10.231.0.11/24 brd 10.231.0.255 scope global eth0\\       valid_lft forever\n\
                      2: eth0    inet 10.231.0.100/24 scope global secondary eth0\\       valid_lft forever\n";
        assert!(holds(output, "10.231.0.100"));
        assert!(!holds(output, "10.231.0.10"));
    }

    #[test]
    fn api_base_strips_the_path() {
        assert_eq!(
            api_base("http://10.231.0.12:8008/patroni").as_deref(),
            Some("http://10.231.0.12:8008")
        );
        assert_eq!(
            api_base("https://10.231.0.12:8008/patroni").as_deref(),
            Some("https://10.231.0.12:8008")
        );
        assert_eq!(api_base("ftp://x/patroni"), None);
    }
}
