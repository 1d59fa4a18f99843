//! The agent's configuration file (`/etc/pgha/agent.yml`, rendered by the deploy from
//! `templates/agent.yml.j2`): parsed strictly, then checked into typed values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file as written (`deny_unknown_fields`: a typo is an error, not a silent default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: String,
    scope: String,
    namespace: String,
    etcd_endpoints: Vec<String>,
    patroni_api_port: u16,
    haproxy_socket: Option<PathBuf>,
    write_backend: String,
    read_backend: String,
    listen: String,
    verdict_file: PathBuf,
    vip: Option<String>,
    vip_interface: String,
    /// Other agents (`host:port`), asked whether their HAProxy routes writes.
    #[serde(default)]
    peers: Vec<String>,
    /// On a Patroni node: the other Patroni nodes, watched while one of them leads; absent or
    /// null on other nodes.
    #[serde(default)]
    leader_watch: Option<LeaderWatch>,
    /// The corroborated fast path (`cluster.corroborated_failover`); absent or null: off.
    #[serde(default)]
    fast_path: Option<FastPath>,
}

/// What the agent on a Patroni node needs to judge whether the leader's node is gone: when a
/// leader's lease counts as stale, and the other Patroni nodes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeaderWatch {
    /// The leader's lease not refreshed for this long (Patroni's `loop_wait` plus a margin).
    pub stale_after_ms: u64,
    pub postgres_port: u16,
    /// Every other Patroni node.
    pub members: Vec<FastPathMember>,
}

/// The corroborated fast path: how many agents must agree.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FastPath {
    /// Agents (this one included) that must suspect the same leader key: a majority of the
    /// Patroni nodes other than the leader's.
    pub votes_needed: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FastPathMember {
    pub name: String,
    /// The node's address (an IP).
    pub address: String,
    /// The node's etcd member (`https://host:port`), when it runs one.
    pub etcd: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// The Patroni key prefix, `/<namespace>/<scope>/`.
    pub prefix: String,
    pub etcd_endpoints: Vec<String>,
    pub patroni_api_port: u16,
    pub haproxy_socket: Option<PathBuf>,
    pub write_backend: String,
    pub read_backend: String,
    pub listen: SocketAddr,
    pub verdict_file: PathBuf,
    /// The VIP as `ip addr` takes it (`10.0.0.100/24`) and its bare address.
    pub vip: Option<Vip>,
    pub vip_interface: String,
    pub peers: Vec<String>,
    pub leader_watch: Option<LeaderWatch>,
    pub fast_path: Option<FastPath>,
}

impl Config {
    /// The node's own etcd member among the endpoints (`None`: the node runs none).
    pub fn local_etcd_endpoint(&self) -> Option<String> {
        let host = crate::render::url_host_of(&self.listen.ip());
        self.etcd_endpoints
            .iter()
            .find(|endpoint| endpoint.contains(&format!("//{host}:")))
            .cloned()
    }

    /// Where `pgha agent hold-writes` announces a hand-over: beside the verdict, under `/run`
    /// so that a reboot forgets it.
    pub fn write_hold_file(&self) -> PathBuf {
        self.verdict_file.with_file_name("write-hold")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub with_prefix: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{}`: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` is not a valid agent configuration: {source}", .path.display())]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("`{}`: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|error| match error {
            ParseError::Yaml(source) => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            ParseError::Invalid(message) => ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            },
        })
    }

    fn parse(text: &str) -> Result<Config, ParseError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(ParseError::Yaml)?;
        let mut problems = Vec::new();
        if raw.node.is_empty() {
            problems.push("`node` is empty".to_string());
        }
        if raw.scope.is_empty() {
            problems.push("`scope` is empty".to_string());
        }
        if raw.etcd_endpoints.is_empty() {
            problems.push("`etcd_endpoints` is empty".to_string());
        }
        if raw.fast_path.is_some() && raw.leader_watch.is_none() {
            problems.push("`fast_path` needs `leader_watch` (the nodes it judges)".to_string());
        }
        let listen = raw.listen.parse::<SocketAddr>().map_err(|error| {
            problems.push(format!("`listen` `{}`: {error}", raw.listen));
        });
        let vip = raw.vip.as_ref().map(|vip| Vip {
            with_prefix: vip.clone(),
            address: vip.split('/').next().unwrap_or(vip).to_string(),
        });
        match listen {
            Ok(listen) if problems.is_empty() => {
                let namespace = raw.namespace.trim_matches('/');
                Ok(Config {
                    node: raw.node,
                    prefix: format!("/{namespace}/{}/", raw.scope),
                    etcd_endpoints: raw.etcd_endpoints,
                    patroni_api_port: raw.patroni_api_port,
                    haproxy_socket: raw.haproxy_socket,
                    write_backend: raw.write_backend,
                    read_backend: raw.read_backend,
                    listen,
                    verdict_file: raw.verdict_file,
                    vip,
                    vip_interface: raw.vip_interface,
                    peers: raw.peers,
                    leader_watch: raw.leader_watch,
                    fast_path: raw.fast_path,
                })
            }
            _ => Err(ParseError::Invalid(problems.join("; "))),
        }
    }
}

enum ParseError {
    Yaml(serde_yaml::Error),
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_lab_configuration_parses() {
        let text = r#"
node: node3
scope: lab
namespace: /service/
etcd_endpoints:
  - https://10.231.0.11:2379
  - https://10.231.0.13:2379
patroni_api_port: 8008
haproxy_socket: /run/haproxy/admin.sock
write_backend: pgha_write
read_backend: pgha_read
listen: 10.231.0.13:9650
verdict_file: /run/pgha/can-route-writes
vip: "10.231.0.100/24"
vip_interface: eth0
peers:
  - 10.231.0.11:9650
leader_watch:
  stale_after_ms: 6500
  postgres_port: 5432
  members:
    - {name: node1, address: 10.231.0.11, etcd: "https://10.231.0.11:2379"}
    - {name: node2, address: 10.231.0.12, etcd: null}
fast_path:
  votes_needed: 2
"#;
        let config = Config::parse(text).ok().expect("valid");
        assert_eq!(config.prefix, "/service/lab/");
        let fast = config.fast_path.as_ref().expect("fast path on");
        assert_eq!(fast.votes_needed, 2);
        let watch = config.leader_watch.as_ref().expect("a Patroni node");
        assert_eq!(watch.members[1].etcd, None);
        // The fast path without the nodes it judges.
        let (head, tail) = text.split_once("leader_watch:").unwrap();
        let without_watch = format!(
            "{head}fast_path:{}",
            tail.split_once("fast_path:").unwrap().1
        );
        assert!(matches!(
            Config::parse(&without_watch),
            Err(ParseError::Invalid(message)) if message.contains("needs `leader_watch`")
        ));
        assert_eq!(config.peers, ["10.231.0.11:9650"]);
        assert_eq!(
            config.local_etcd_endpoint().as_deref(),
            Some("https://10.231.0.13:2379")
        );
        assert_eq!(
            config.vip,
            Some(Vip {
                with_prefix: "10.231.0.100/24".into(),
                address: "10.231.0.100".into()
            })
        );
    }

    #[test]
    fn unknown_keys_and_bad_addresses_are_refused() {
        assert!(Config::parse("node: a\nbogus: 1\n").is_err());
        let text = "node: a\nscope: s\nnamespace: /service/\netcd_endpoints: [http://x:2379]\npatroni_api_port: 8008\nhaproxy_socket: null\nwrite_backend: w\nread_backend: r\nlisten: nonsense\nverdict_file: /run/v\nvip: null\nvip_interface: eth0\n";
        assert!(matches!(Config::parse(text), Err(ParseError::Invalid(_))));
    }
}
