//! The agent's HTTP endpoints: `GET /status` (JSON) and `GET /metrics` (Prometheus text),
//! answered from the last cycle's snapshot by a minimal HTTP/1.1 responder. Read-only.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::decide::{ClusterView, Decision, LocalView};

/// What the last cycle saw and decided, plus counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub node: String,
    pub cluster: ClusterView,
    /// Seconds the `leader` key has had its value, as seen by this agent.
    pub leader_age_seconds: Option<f64>,
    /// etcd has a raft leader (from its status call).
    pub etcd_has_leader: Option<bool>,
    pub etcd_error: Option<String>,
    pub local: LocalView,
    pub decision: Option<Decision>,
    /// The last sentence that came with actions (what the agent last changed).
    pub last_change: Option<String>,
    pub decisions_total: u64,
    pub actions_total: u64,
    pub action_errors_total: u64,
}

/// Serve until the process ends.
pub async fn serve(listener: TcpListener, status: Arc<Mutex<Status>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            // A slow or silent client must not hold a task forever.
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, status)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, status: Arc<Mutex<Status>>) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 4096];
    let mut length = 0;
    while length < buffer.len() {
        let read = stream.read(&mut buffer[length..]).await?;
        if read == 0 {
            break;
        }
        length += read;
        if buffer[..length]
            .windows(4)
            .any(|window| window == b"\r\n\r\n")
        {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buffer[..length]);
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let snapshot = status
        .lock()
        .map(|status| status.clone())
        .unwrap_or_default();
    let (code, content_type, body) = match (method, path) {
        ("GET", "/status") => (
            "200 OK",
            "application/json",
            serde_json::to_string_pretty(&snapshot).unwrap_or_else(|_| "{}".into()),
        ),
        // Asked by the other agents (`decide`'s `peers_route_writes`).
        // Before the first cycle it knows nothing: no answer rather than a "no".
        ("GET", "/routes-writes") if snapshot.decisions_total == 0 => {
            ("503 Service Unavailable", "text/plain", "not yet\n".into())
        }
        ("GET", "/routes-writes") => {
            let routes = snapshot
                .local
                .haproxy
                .as_ref()
                .is_some_and(|view| !view.write_targets().is_empty());
            (
                "200 OK",
                "text/plain",
                if routes { "yes\n" } else { "no\n" }.into(),
            )
        }
        ("GET", "/metrics") => {
            // Read at each scrape: a renewed certificate shows at once.
            let not_after = std::fs::read_to_string(crate::tls::NODE_CERT)
                .ok()
                .and_then(|pem| crate::tls::inspect_pem(&pem).ok())
                .map(|info| info.not_after);
            let mut body = metrics(&snapshot);
            body.push_str(&certificate_metrics(&snapshot.node, not_after));
            ("200 OK", "text/plain; version=0.0.4", body)
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /status, /metrics or /routes-writes\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn flag(value: bool) -> u8 {
    u8::from(value)
}

/// The node certificate's end of validity (`/etc/pgha/tls/node.crt`), when it can be read.
pub fn certificate_metrics(node: &str, not_after: Option<u64>) -> String {
    match not_after {
        Some(seconds) => format!(
            "# HELP pgha_tls_certificate_not_after_seconds end of validity of this node's certificate (Unix time); pgha deploy renews it 30 days before\n# TYPE pgha_tls_certificate_not_after_seconds gauge\npgha_tls_certificate_not_after_seconds{{node=\"{node}\",file=\"{}\"}} {seconds}\n",
            crate::tls::NODE_CERT
        ),
        None => String::new(),
    }
}

/// The Prometheus text exposition of a snapshot.
pub fn metrics(status: &Status) -> String {
    let mut out = String::new();
    let node = &status.node;
    let mut family = |name: &str, help: &str, kind: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{node=\"{node}\"{labels}}} {value}");
        }
    };
    let cluster = &status.cluster;
    family(
        "pgha_etcd_reachable",
        "1 when this agent's last etcd call succeeded",
        "gauge",
        vec![(String::new(), flag(cluster.etcd_reachable).to_string())],
    );
    if let Some(has_leader) = status.etcd_has_leader {
        family(
            "pgha_etcd_has_leader",
            "1 when etcd has a raft leader",
            "gauge",
            vec![(String::new(), flag(has_leader).to_string())],
        );
    }
    family(
        "pgha_cluster_has_leader",
        "1 when the Patroni leader key exists",
        "gauge",
        vec![(String::new(), flag(cluster.leader.is_some()).to_string())],
    );
    family(
        "pgha_member_role",
        "1 for each Patroni member's role and state in etcd",
        "gauge",
        cluster
            .members
            .iter()
            .map(|(name, member)| {
                (
                    format!(
                        ",member=\"{name}\",role=\"{}\",state=\"{}\"",
                        member.role, member.state
                    ),
                    "1".to_string(),
                )
            })
            .collect(),
    );
    family(
        "pgha_replication_lag_bytes",
        "bytes a replica is behind the leader (from the member keys)",
        "gauge",
        cluster
            .members
            .iter()
            .filter_map(|(name, member)| {
                member
                    .lag_bytes
                    .map(|lag| (format!(",member=\"{name}\""), lag.to_string()))
            })
            .collect(),
    );
    let local = &status.local;
    if let Some(role) = &local.patroni_role {
        family(
            "pgha_patroni_primary",
            "1 when the local Patroni says it runs as primary",
            "gauge",
            vec![(
                String::new(),
                flag(matches!(role.as_str(), "primary" | "master")).to_string(),
            )],
        );
    }
    if local.haproxy_configured {
        family(
            "pgha_haproxy_up",
            "1 when the local HAProxy's runtime socket answers",
            "gauge",
            vec![(String::new(), flag(local.haproxy.is_some()).to_string())],
        );
        let mut samples = Vec::new();
        if let Some(haproxy) = &local.haproxy {
            for (backend, servers) in [("pgha_write", &haproxy.write), ("pgha_read", &haproxy.read)]
            {
                for (server, state) in servers {
                    samples.push((
                        format!(",backend=\"{backend}\",server=\"{server}\""),
                        flag(state.up && !state.maint && !state.drain).to_string(),
                    ));
                }
            }
        }
        family(
            "pgha_haproxy_server_up",
            "1 when the local HAProxy sends new connections to the server",
            "gauge",
            samples,
        );
    }
    if local.vip_configured {
        family(
            "pgha_vip_held",
            "1 when this node holds the VIP",
            "gauge",
            vec![(String::new(), flag(local.vip_held).to_string())],
        );
        family(
            "pgha_keepalived_running",
            "1 when a keepalived process runs on this node",
            "gauge",
            vec![(String::new(), flag(local.keepalived_alive).to_string())],
        );
    }
    let verdict = status
        .decision
        .as_ref()
        .is_some_and(|decision| decision.can_route_writes);
    family(
        "pgha_can_route_writes",
        "the agent's verdict for Keepalived",
        "gauge",
        vec![(String::new(), flag(verdict).to_string())],
    );
    family(
        "pgha_decisions_total",
        "decision cycles run",
        "counter",
        vec![(String::new(), status.decisions_total.to_string())],
    );
    family(
        "pgha_actions_total",
        "actions taken (HAProxy changes, VIP removals)",
        "counter",
        vec![(String::new(), status.actions_total.to_string())],
    );
    family(
        "pgha_action_errors_total",
        "actions that failed",
        "counter",
        vec![(String::new(), status.action_errors_total.to_string())],
    );
    out
}

/// Whether another agent's HAProxy routes writes (`GET /routes-writes` on `peer`, `host:port`);
/// `None` when it does not answer within `timeout`.
pub async fn peer_routes_writes(peer: &str, timeout: Duration) -> Option<bool> {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(peer).await.ok()?;
        stream
            .write_all(b"GET /routes-writes HTTP/1.0\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&answer);
        if !text.starts_with("HTTP/1.1 200") {
            return None;
        }
        let body = text.split("\r\n\r\n").nth(1)?.trim();
        match body {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        }
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_the_node_and_the_leader() {
        let mut status = Status {
            node: "node1".into(),
            ..Status::default()
        };
        status.cluster.leader = Some("node2".into());
        let text = metrics(&status);
        assert!(
            text.contains("pgha_cluster_has_leader{node=\"node1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pgha_decisions_total counter"),
            "{text}"
        );
    }
}
