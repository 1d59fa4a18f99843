//! A minimal client of Patroni's REST API (`GET /cluster`, `POST /switchover`) over plain
//! HTTP/1.0, and the typed view of `/cluster` a drill decides on. The REST password is only
//! ever in memory and in the `Authorization` header: never in argv or a log line.

use std::time::Duration;

use base64ct::Encoding;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connect and whole-request timeout of one REST call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed REST call.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("cannot reach the Patroni REST API on `{0}`: {1}")]
    Unreachable(String, String),
    #[error("the Patroni REST API on `{0}` answered something that is not HTTP")]
    Garbled(String),
    #[error("the Patroni REST API on `{address}` answered {status}: {body}")]
    Status {
        address: String,
        status: u16,
        body: String,
    },
    #[error("unexpected `/cluster` JSON from `{0}`: {1}")]
    Json(String, String),
}

/// One member of `GET /cluster`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub role: String,
    pub state: String,
    #[serde(default)]
    pub timeline: Option<u64>,
}

impl Member {
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }
}

/// The topology `GET /cluster` reports.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ClusterView {
    pub members: Vec<Member>,
}

impl ClusterView {
    pub fn parse(address: &str, body: &str) -> Result<ClusterView, RestError> {
        serde_json::from_str(body)
            .map_err(|error| RestError::Json(address.into(), error.to_string()))
    }

    /// The running leader, if exactly one member holds the leader role and runs.
    pub fn leader(&self) -> Option<&Member> {
        let mut leaders = self
            .members
            .iter()
            .filter(|member| member.is_leader() && member.state == "running");
        match (leaders.next(), leaders.next()) {
            (Some(leader), None) => Some(leader),
            _ => None,
        }
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|member| member.name == name)
    }

    /// `None` when healthy (one running leader, every other member of `expected` a streaming
    /// replica on the leader's timeline), otherwise the reason in one sentence.
    pub fn unhealthy_reason(&self, expected: &[String]) -> Option<String> {
        let Some(leader) = self.leader() else {
            return Some("no single running leader".to_string());
        };
        for name in expected {
            let Some(member) = self.member(name) else {
                return Some(format!("`{name}` is not a member"));
            };
            if member.name == leader.name {
                continue;
            }
            if member.state != "streaming" {
                return Some(format!("`{name}` is `{}`, not `streaming`", member.state));
            }
            if member.timeline != leader.timeline {
                return Some(format!(
                    "`{name}` is on timeline {:?}, the leader on {:?}",
                    member.timeline, leader.timeline
                ));
            }
        }
        None
    }
}

/// Where a node's REST API listens, and the credentials for its unsafe endpoints.
#[derive(Clone)]
pub struct RestApi {
    pub port: u16,
    pub username: String,
    pub password: String,
}

impl RestApi {
    /// `GET /cluster` from the node at `host`.
    pub async fn cluster(&self, host: &str) -> Result<ClusterView, RestError> {
        let address = format!("{host}:{}", self.port);
        let (status, body) = self.request(&address, "GET", "/cluster", None).await?;
        if status != 200 {
            return Err(RestError::Status {
                address,
                status,
                body,
            });
        }
        ClusterView::parse(&address, &body)
    }

    /// `POST /switchover` away from `leader` (Patroni picks the candidate; with
    /// synchronous_mode it is a sync standby). Returns Patroni's answer text.
    pub async fn switchover(&self, host: &str, leader: &str) -> Result<String, RestError> {
        let address = format!("{host}:{}", self.port);
        let body = serde_json::json!({ "leader": leader }).to_string();
        let (status, answer) = self
            .request(&address, "POST", "/switchover", Some(&body))
            .await?;
        if status != 200 {
            return Err(RestError::Status {
                address,
                status,
                body: answer,
            });
        }
        Ok(answer)
    }

    async fn request(
        &self,
        address: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), RestError> {
        let unreachable = |reason: String| RestError::Unreachable(address.to_string(), reason);
        let exchange = async {
            let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                .await
                .map_err(|_| unreachable("connect timed out".into()))?
                .map_err(|error| unreachable(error.to_string()))?;
            let credentials = base64ct::Base64::encode_string(
                format!("{}:{}", self.username, self.password).as_bytes(),
            );
            let body = body.unwrap_or("");
            let request = format!(
                "{method} {path} HTTP/1.0\r\nHost: {address}\r\nAuthorization: Basic {credentials}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|error| unreachable(error.to_string()))?;
            let mut response = Vec::new();
            stream
                .read_to_end(&mut response)
                .await
                .map_err(|error| unreachable(error.to_string()))?;
            Ok::<_, RestError>(response)
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable("no answer within 5 s".into()))??;
        parse_response(address, &response)
    }
}

/// Status code and body of an HTTP/1.x response.
fn parse_response(address: &str, response: &[u8]) -> Result<(u16, String), RestError> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| RestError::Garbled(address.into()))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| RestError::Garbled(address.into()))?;
    Ok((status, body.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"{"members": [
        {"name": "node1", "role": "leader", "state": "running", "api_url": "http://10.231.0.11:8008/patroni", "host": "10.231.0.11", "port": 5432, "timeline": 3},
        {"name": "node2", "role": "sync_standby", "state": "streaming", "host": "10.231.0.12", "port": 5432, "timeline": 3, "lag": 0},
        {"name": "node3", "role": "replica", "state": "streaming", "host": "10.231.0.13", "port": 5432, "timeline": 3, "lag": 0}
    ], "scope": "lab"}"#;

    fn names() -> Vec<String> {
        ["node1", "node2", "node3"].map(String::from).to_vec()
    }

    #[test]
    fn a_healthy_cluster_has_one_leader_and_streaming_replicas() {
        let view = ClusterView::parse("x", CLUSTER).expect("valid JSON");
        assert_eq!(
            view.leader().map(|leader| leader.name.as_str()),
            Some("node1")
        );
        assert_eq!(view.unhealthy_reason(&names()), None);
    }

    #[test]
    fn a_replica_that_does_not_stream_is_unhealthy() {
        let text = CLUSTER.replace(
            r#""state": "streaming", "host": "10.231.0.13""#,
            r#""state": "starting", "host": "10.231.0.13""#,
        );
        let view = ClusterView::parse("x", &text).expect("valid JSON");
        assert_eq!(
            view.unhealthy_reason(&names()).as_deref(),
            Some("`node3` is `starting`, not `streaming`")
        );
    }

    #[test]
    fn a_missing_member_or_leader_is_unhealthy() {
        let view = ClusterView::parse("x", CLUSTER).expect("valid JSON");
        let mut more = names();
        more.push("node4".into());
        assert_eq!(
            view.unhealthy_reason(&more).as_deref(),
            Some("`node4` is not a member")
        );
        let text = CLUSTER.replace(r#""role": "leader""#, r#""role": "replica""#);
        let view = ClusterView::parse("x", &text).expect("valid JSON");
        assert_eq!(
            view.unhealthy_reason(&names()).as_deref(),
            Some("no single running leader")
        );
    }

    #[test]
    fn http_status_and_body_are_parsed() {
        let response =
            b"HTTP/1.0 412 Precondition Failed\r\nServer: x\r\n\r\ncandidate name does not match\n";
        assert_eq!(
            parse_response("x", response).expect("parsed"),
            (412, "candidate name does not match".to_string())
        );
        assert!(parse_response("x", b"garbage").is_err());
    }
}
