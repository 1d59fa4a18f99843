//! One client of Patroni's REST API, over one of two transports:
//! - [`Transport::Direct`]: HTTP/1.0 from this process (the agent on its node, the drills and
//!   the control machine when it reaches the nodes' API port);
//! - [`Transport::Ssh`]: `curl` run on a node over its SSH session (the deploy's modules and
//!   the cluster operations, which reach every node through SSH only).
//!
//! The REST password is only ever in memory, in the `Authorization` header, or on curl's stdin
//! as a config line: never in argv or a log line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64ct::Encoding;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::model::{ClusterView, MemberStatus};
use crate::ssh::{RemoteCommand, Session};

/// Connect and whole-request timeouts of one direct call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed REST call.
#[derive(Debug, thiserror::Error)]
pub enum PatroniError {
    #[error("cannot reach the Patroni REST API at `{0}`: {1}")]
    Unreachable(String, String),
    #[error("the Patroni REST API at `{0}` answered something that is not HTTP")]
    Garbled(String),
    #[error("the Patroni REST API at `{url}` answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("unexpected JSON from `{0}`: {1}")]
    Json(String, String),
    #[error("{0}")]
    Stuck(String),
    #[error("timed out after {seconds} s waiting for {what} (last: {last})")]
    Timeout {
        seconds: u64,
        what: String,
        last: String,
    },
}

/// Basic-auth credentials of the REST API's unsafe endpoints. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:<hidden>)", self.username)
    }
}

impl Credentials {
    pub fn pgha(password: &str) -> Credentials {
        Credentials {
            username: "pgha".into(),
            password: password.into(),
        }
    }
}

#[derive(Clone)]
pub enum Transport {
    /// From this process; HTTPS calls present this client (the cluster CA's trust and a
    /// certificate it issued).
    Direct(Option<Arc<rustls::ClientConfig>>),
    Ssh(Arc<Session>),
}

/// The Patroni REST API of any member, reached over one transport.
#[derive(Clone)]
pub struct Patroni {
    transport: Transport,
    /// `None`: read-only use (GET endpoints need no authentication).
    credentials: Option<Credentials>,
    /// Whole-request timeout of a direct call (the connect timeout is at most 1 s of it).
    timeout: Duration,
}

impl Patroni {
    pub fn direct(credentials: Credentials, tls: Option<Arc<rustls::ClientConfig>>) -> Patroni {
        Patroni {
            transport: Transport::Direct(tls),
            credentials: Some(credentials),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Direct and without credentials: for the read-only endpoints (the agent's probes).
    pub fn anonymous(timeout: Duration, tls: Option<Arc<rustls::ClientConfig>>) -> Patroni {
        Patroni {
            transport: Transport::Direct(tls),
            credentials: None,
            timeout,
        }
    }

    pub fn over_ssh(session: Arc<Session>, credentials: Option<Credentials>) -> Patroni {
        Patroni {
            transport: Transport::Ssh(session),
            credentials,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// One request to `base` (`http://host:port`); the status and the body.
    pub async fn call(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), PatroniError> {
        let url = format!("{base}{path}");
        let body = body.map(Value::to_string);
        match &self.transport {
            Transport::Direct(tls) => {
                direct(
                    tls.as_ref(),
                    self.credentials.as_ref(),
                    self.timeout,
                    &url,
                    method,
                    body.as_deref(),
                )
                .await
            }
            Transport::Ssh(session) => {
                over_ssh(
                    session,
                    self.credentials.as_ref(),
                    &url,
                    method,
                    body.as_deref(),
                )
                .await
            }
        }
    }

    async fn expect_ok(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<String, PatroniError> {
        let (status, answer) = self.call(base, method, path, body).await?;
        if status == 200 {
            Ok(answer)
        } else {
            Err(PatroniError::Status {
                url: format!("{base}{path}"),
                status,
                body: answer,
            })
        }
    }

    /// `GET /cluster`.
    pub async fn cluster(&self, base: &str) -> Result<ClusterView, PatroniError> {
        let text = self.expect_ok(base, "GET", "/cluster", None).await?;
        ClusterView::parse(&text)
            .map_err(|error| PatroniError::Json(format!("{base}/cluster"), error.to_string()))
    }

    /// `GET /config`: the dynamic configuration stored in the DCS.
    pub async fn config(&self, base: &str) -> Result<Value, PatroniError> {
        let text = self.expect_ok(base, "GET", "/config", None).await?;
        serde_json::from_str(&text)
            .map_err(|error| PatroniError::Json(format!("{base}/config"), error.to_string()))
    }

    /// `PATCH /config` with `patch` (merged into the stored configuration by Patroni).
    pub async fn patch_config(&self, base: &str, patch: &Value) -> Result<(), PatroniError> {
        self.expect_ok(base, "PATCH", "/config", Some(patch))
            .await
            .map(drop)
    }

    /// `GET /patroni` on a member's own API: its version, state, role and whether the cluster
    /// is paused. Patroni answers 503 with the same body while PostgreSQL is not running.
    pub async fn status(&self, base: &str) -> Result<MemberStatus, PatroniError> {
        let (status, body) = self.call(base, "GET", "/patroni", None).await?;
        if status != 200 && status != 503 {
            return Err(PatroniError::Status {
                url: format!("{base}/patroni"),
                status,
                body,
            });
        }
        MemberStatus::parse(&body)
            .map_err(|error| PatroniError::Json(format!("{base}/patroni"), error.to_string()))
    }

    /// Ask the member at `base` until its `/primary` answers 200 (what HAProxy's write check
    /// asks).
    pub async fn wait_for_primary(
        &self,
        base: &str,
        timeout: Duration,
    ) -> Result<(), PatroniError> {
        poll(
            &format!("{base}/primary to answer 200"),
            timeout,
            Duration::from_millis(200),
            || async {
                self.call(base, "OPTIONS", "/primary", None)
                    .await
                    .map(|(status, _)| status)
            },
            |status| *status == 200,
        )
        .await
        .map(drop)
    }

    /// Maintenance mode on or off for the whole cluster (`PATCH /config` with `pause`). While
    /// paused Patroni changes nothing in PostgreSQL, and a Patroni that stops leaves PostgreSQL
    /// running (and a leader keeps its key).
    pub async fn set_pause(&self, base: &str, paused: bool) -> Result<(), PatroniError> {
        self.patch_config(base, &serde_json::json!({ "pause": paused }))
            .await
    }

    /// `POST /switchover` on the leader's API, away from `leader` (to `candidate`, or the one
    /// Patroni picks: with synchronous mode a synchronous standby). Patroni answers 412 while
    /// no candidate is ready yet (e.g. no synchronous standby right after a restart): asked
    /// again until `patience` runs out. A 503 is not retried: Patroni also says it when it
    /// cannot tell whether the switchover it started has finished (callers look at `/cluster`).
    pub async fn switchover(
        &self,
        base: &str,
        leader: &str,
        candidate: Option<&str>,
        patience: Duration,
    ) -> Result<String, PatroniError> {
        let mut body = serde_json::json!({ "leader": leader });
        if let Some(candidate) = candidate {
            body["candidate"] = candidate.into();
        }
        self.post_until_accepted(base, "/switchover", &body, patience, &[412])
            .await
    }

    /// `POST /restart` on the member at `base`: PostgreSQL restarts in place, Patroni keeps
    /// running (and a leader keeps its lock).
    pub async fn restart(&self, base: &str, patience: Duration) -> Result<String, PatroniError> {
        self.post_until_accepted(
            base,
            "/restart",
            &serde_json::json!({}),
            patience,
            &[412, 503],
        )
        .await
    }

    async fn post_until_accepted(
        &self,
        base: &str,
        path: &str,
        body: &Value,
        patience: Duration,
        retry_on: &[u16],
    ) -> Result<String, PatroniError> {
        let started = Instant::now();
        loop {
            match self.expect_ok(base, "POST", path, Some(body)).await {
                Err(PatroniError::Status { status, .. })
                    if retry_on.contains(&status) && started.elapsed() < patience =>
                {
                    tokio::time::sleep(Duration::from_secs(2)).await
                }
                other => return other,
            }
        }
    }

    /// Ask `base` for `/cluster` until `test` holds; the view then.
    pub async fn wait_for(
        &self,
        base: &str,
        what: &str,
        timeout: Duration,
        test: impl Fn(&ClusterView) -> bool,
    ) -> Result<ClusterView, PatroniError> {
        poll(
            what,
            timeout,
            Duration::from_millis(500),
            || self.cluster(base),
            test,
        )
        .await
    }

    /// Ask a member's own `/patroni` at `base` until `test` holds; its status then.
    pub async fn wait_for_status(
        &self,
        base: &str,
        what: &str,
        timeout: Duration,
        test: impl Fn(&MemberStatus) -> bool,
    ) -> Result<MemberStatus, PatroniError> {
        poll(
            what,
            timeout,
            Duration::from_millis(300),
            || self.status(base),
            test,
        )
        .await
    }
}

/// Call `ask` every `every` until its answer passes `test`, or fail after `timeout` with the
/// last answer (or error) in the message.
async fn poll<T: std::fmt::Debug, F: std::future::Future<Output = Result<T, PatroniError>>>(
    what: &str,
    timeout: Duration,
    every: Duration,
    ask: impl Fn() -> F,
    test: impl Fn(&T) -> bool,
) -> Result<T, PatroniError> {
    let started = Instant::now();
    loop {
        let last = match ask().await {
            Ok(answer) if test(&answer) => return Ok(answer),
            Ok(answer) => format!("{answer:?}"),
            Err(error) => error.to_string(),
        };
        if started.elapsed() > timeout {
            return Err(PatroniError::Timeout {
                seconds: timeout.as_secs(),
                what: what.to_string(),
                last: last.chars().take(400).collect(),
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// One HTTP/1.0 exchange from this process.
async fn direct(
    tls: Option<&Arc<rustls::ClientConfig>>,
    credentials: Option<&Credentials>,
    timeout: Duration,
    url: &str,
    method: &str,
    body: Option<&str>,
) -> Result<(u16, String), PatroniError> {
    let unreachable = |reason: String| PatroniError::Unreachable(url.to_string(), reason);
    let (rest, secure) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (rest, true),
        (None, Some(rest)) => (rest, false),
        _ => {
            return Err(unreachable(
                "only http:// and https:// are supported".into(),
            ))
        }
    };
    let tls = match (secure, tls) {
        (true, Some(tls)) => Some(tls.clone()),
        (true, None) => {
            return Err(unreachable(
                "no TLS client certificate to call it with".into(),
            ))
        }
        (false, _) => None,
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let exchange = async {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT.min(timeout), TcpStream::connect(authority))
                .await
                .map_err(|_| unreachable("connect timed out".into()))?
                .map_err(|error| unreachable(error.to_string()))?;
        let authorization = credentials
            .map(|credentials| {
                let token = base64ct::Base64::encode_string(
                    format!("{}:{}", credentials.username, credentials.password).as_bytes(),
                );
                format!("Authorization: Basic {token}\r\n")
            })
            .unwrap_or_default();
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {authority}\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = match tls {
            Some(tls) => {
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let stream = crate::tls::connect(tls, host, stream)
                    .await
                    .map_err(|error| unreachable(format!("TLS: {error}")))?;
                exchange(stream, request.as_bytes()).await
            }
            None => exchange(stream, request.as_bytes()).await,
        };
        response.map_err(|error| unreachable(error.to_string()))
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} ms", timeout.as_millis())))??;
    parse_response(url, &response)
}

/// Send `request` and read the answer until the server closes. A TLS server that closes
/// without `close_notify` (Python's `ssl` does) ends the answer too.
async fn exchange<S>(mut stream: S, request: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response).await {
        Ok(_) => Ok(response),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
            Ok(response)
        }
        Err(error) => Err(error),
    }
}

/// One exchange by `curl` on the node behind `session`: the body in argv (never secret), the
/// credentials on stdin as a curl config line.
async fn over_ssh(
    session: &Session,
    credentials: Option<&Credentials>,
    url: &str,
    method: &str,
    body: Option<&str>,
) -> Result<(u16, String), PatroniError> {
    let config = credentials
        .map(|credentials| {
            format!(
                "user = \"{}:{}\"\n",
                curl_escape(&credentials.username),
                curl_escape(&credentials.password)
            )
        })
        .unwrap_or_default();
    let script = format!("if [ -n \"$3\" ]; then set -- \"$1\" \"$2\" -H 'Content-Type: application/json' --data-binary \"$3\"; else set -- \"$1\" \"$2\"; fi
method=\"$1\"; url=\"$2\"; shift 2
curl -s -K - --max-time 150 --cacert {ca} --cert {cert} --key {key} -X \"$method\" \"$@\" -w '\\n%{{http_code}}' \"$url\"",
        ca = crate::tls::NODE_CA,
        cert = crate::tls::NODE_CERT,
        key = crate::tls::NODE_KEY
    );
    // As root: the node's TLS key, which Patroni's API asks of every caller, is root's alone.
    let command = RemoteCommand::script(script)
        .arg(method)
        .arg(url)
        .arg(body.unwrap_or(""))
        .stdin(config.into_bytes())
        .as_root();
    let output = session
        .run(&command)
        .await
        .map_err(|error| PatroniError::Unreachable(url.to_string(), error.to_string()))?;
    let text = output.stdout_text();
    let (answer, code) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", text.trim()));
    match code.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(PatroniError::Unreachable(
            url.to_string(),
            format!("curl on {}: {}", session.host(), output.status()),
        )),
        Ok(status) => Ok((status, answer.trim().to_string())),
    }
}

/// A value inside double quotes in a curl config file.
fn curl_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Status code and body of an HTTP/1.x response.
fn parse_response(url: &str, response: &[u8]) -> Result<(u16, String), PatroniError> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| PatroniError::Garbled(url.into()))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| PatroniError::Garbled(url.into()))?;
    Ok((status, body.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn credentials_stay_hidden_and_escape_for_curl() {
        let credentials = Credentials::pgha("s3\"cr\\et");
        assert_eq!(format!("{credentials:?}"), "Credentials(pgha:<hidden>)");
        assert_eq!(curl_escape(&credentials.password), "s3\\\"cr\\\\et");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let patroni = Patroni::direct(Credentials::pgha("x"), None);
        let error = patroni
            .cluster(&format!("http://127.0.0.1:{port}"))
            .await
            .expect_err("nothing listens");
        assert!(matches!(error, PatroniError::Unreachable(..)), "{error}");
    }
}
