//! `pgha agent timeline`: what this node sees during a drill, sampled every 50 ms and printed as
//! one JSON line whenever it changes, stamped with the wall clock (ms since the epoch): the
//! DCS leader key as the local etcd member answers it, the local Patroni's role and state (and,
//! on a primary, which standbys are attached synchronously), the servers the local HAProxy
//! routes writes to, and whether the node holds the VIP.
//!
//! The drills run it on every node for the length of a repetition and read the failover's
//! phases from the lines (`drill::phases`). It only reads. It stops when the stop file exists,
//! or after `max` at the latest.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::config::Config;
use super::{haproxy, probe};
use crate::patroni::Patroni;

/// Every probe of a sample gives up after this long (a frozen or cut-off peer must not stall
/// the clock).
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Between two samples.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// One sample; `None` fields did not answer (or do not exist on this node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The leader key's value (`""`: no key), as the local etcd member says.
    pub leader_key: Option<String>,
    pub patroni_role: Option<String>,
    pub patroni_state: Option<String>,
    /// On a primary: standbys streaming with `sync_state` `sync` or `quorum`.
    #[serde(default)]
    pub sync_attached: Vec<String>,
    /// The write backend's servers that take new connections.
    pub routes_writes_to: Option<Vec<String>>,
    pub vip_held: Option<bool>,
}

/// A line of the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Wall clock, ms since the epoch.
    pub at_ms: u64,
    pub node: String,
    #[serde(flatten)]
    pub sample: Sample,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Sample until `stop_file` exists or `max` has passed; lines appended to `output` (each
/// written through at once: a node whose power is cut keeps what it wrote) or on stdout.
pub async fn run(
    config_path: &Path,
    stop_file: &Path,
    max: Duration,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let config = Config::load(config_path)?;
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open `{}`", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let address = config.listen.ip();
    let api = crate::patroni::model::api_at(address, config.patroni_api_port);
    // The node's own etcd member, when it runs one.
    let local_etcd = config.local_etcd_endpoint();
    let leader_key = format!("{}leader", config.prefix);
    let mut etcd: Option<etcd_client::Client> = None;
    let started = Instant::now();
    let mut last: Option<Sample> = None;
    while !stop_file.exists() && started.elapsed() < max {
        let tick = Instant::now();
        // The moment the sample is taken (its probes may take up to their timeout).
        let at_ms = epoch_ms();
        let leader = async {
            let endpoint = local_etcd.as_ref()?;
            if etcd.is_none() {
                etcd = connect(endpoint).await;
            }
            let client = etcd.as_mut()?;
            let answer =
                tokio::time::timeout(PROBE_TIMEOUT, client.get(leader_key.as_str(), None)).await;
            match answer {
                Ok(Ok(response)) => Some(
                    response
                        .kvs()
                        .first()
                        .and_then(|kv| kv.value_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                ),
                _ => {
                    etcd = None;
                    None
                }
            }
        };
        let patroni = async {
            Patroni::anonymous(PROBE_TIMEOUT, probe::node_tls())
                .call(&api, "GET", "/patroni", None)
                .await
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        };
        let routes = async {
            let socket = config.haproxy_socket.as_ref()?;
            let view = tokio::time::timeout(
                PROBE_TIMEOUT,
                haproxy::read_view(socket, &config.write_backend, &config.read_backend),
            )
            .await
            .ok()?
            .ok()?;
            Some(
                view.write_targets()
                    .into_iter()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )
        };
        let vip = async {
            let vip = config.vip.as_ref()?;
            tokio::time::timeout(
                PROBE_TIMEOUT,
                probe::vip_held(&config.vip_interface, &vip.address),
            )
            .await
            .ok()?
            .ok()
        };
        let (leader_key_value, patroni, routes, vip) = tokio::join!(leader, patroni, routes, vip);
        let sample = Sample {
            leader_key: leader_key_value,
            patroni_role: patroni
                .as_ref()
                .and_then(|value| value["role"].as_str().map(str::to_string)),
            patroni_state: patroni
                .as_ref()
                .and_then(|value| value["state"].as_str().map(str::to_string)),
            sync_attached: patroni.as_ref().map(sync_attached).unwrap_or_default(),
            routes_writes_to: routes,
            vip_held: vip,
        };
        if last.as_ref() != Some(&sample) {
            let line = Line {
                at_ms,
                node: config.node.clone(),
                sample: sample.clone(),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
            out.flush()?;
            last = Some(sample);
        }
        tokio::time::sleep(INTERVAL.saturating_sub(tick.elapsed())).await;
    }
    Ok(())
}

/// The standbys a primary's `/patroni` lists as streaming synchronously.
fn sync_attached(status: &serde_json::Value) -> Vec<String> {
    status["replication"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|row| {
                    row["state"] == "streaming"
                        && matches!(row["sync_state"].as_str(), Some("sync" | "quorum"))
                })
                .filter_map(|row| row["application_name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn connect(endpoint: &str) -> Option<etcd_client::Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(PROBE_TIMEOUT)
        .with_timeout(PROBE_TIMEOUT);
    let options = if endpoint.starts_with("https://") {
        options.with_tls(super::etcd::tls_options().ok()?)
    } else {
        options
    };
    tokio::time::timeout(
        PROBE_TIMEOUT * 2,
        etcd_client::Client::connect([endpoint], Some(options)),
    )
    .await
    .ok()?
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_standbys_are_read_from_the_primarys_replication_rows() {
        let status = serde_json::json!({
            "role": "primary",
            "replication": [
                {"application_name": "node2", "state": "streaming", "sync_state": "sync"},
                {"application_name": "node3", "state": "streaming", "sync_state": "async"},
                {"application_name": "node4", "state": "catchup", "sync_state": "sync"}
            ]
        });
        assert_eq!(sync_attached(&status), ["node2"]);
        assert!(sync_attached(&serde_json::json!({"role": "replica"})).is_empty());
    }

    #[test]
    fn a_line_round_trips_flat() {
        let line = Line {
            at_ms: 5,
            node: "node1".into(),
            sample: Sample {
                leader_key: Some("node1".into()),
                routes_writes_to: Some(vec!["node1".into()]),
                ..Sample::default()
            },
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains("\"leader_key\":\"node1\""), "{text}");
        assert_eq!(serde_json::from_str::<Line>(&text).unwrap(), line);
    }
}
