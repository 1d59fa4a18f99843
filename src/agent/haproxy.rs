//! The local HAProxy's runtime API (the admin stats socket): read `show servers state`, force a
//! server's health, drain a server or make it ready. One command line per connection
//! (non-interactive mode); never `maint`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::decide::{HaproxyView, ServerState};

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("cannot talk to HAProxy's socket `{}`: {source}", .socket.display())]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("HAProxy's socket `{}` did not answer within 1 s", .socket.display())]
    Timeout { socket: PathBuf },
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
}

/// Send one command line, return HAProxy's whole answer.
pub async fn command(socket: &Path, line: &str) -> Result<String, HaproxyError> {
    let io = |source| HaproxyError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.map_err(io)?;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.map_err(io)?;
        Ok(answer)
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .map_err(|_| HaproxyError::Timeout {
            socket: socket.to_path_buf(),
        })?
}

/// `scur` (open sessions) of `backend/server` in `show stat` CSV.
pub fn current_sessions(csv: &str, backend: &str, server: &str) -> Option<u64> {
    csv.lines()
        .map(|line| line.split(',').collect::<Vec<_>>())
        .find(|fields| fields.len() > 4 && fields[0] == backend && fields[1] == server)
        .and_then(|fields| fields[4].parse().ok())
}

/// The servers of the write and read backends.
pub async fn read_view(
    socket: &Path,
    write_backend: &str,
    read_backend: &str,
) -> Result<HaproxyView, HaproxyError> {
    let answer = command(socket, "show servers state").await?;
    Ok(parse_servers_state(&answer, write_backend, read_backend))
}

/// Force `backend/server` up or down. With `make_ready`, out of any administrative state
/// first (the write backend, where only the agent sets one); without it, the administrative
/// state is left as it is (the read backend, where a drain or maintenance is an operator's or
/// `pgha upgrade`'s). The health checks keep running and override it, which is the safety net.
pub async fn set_health(
    socket: &Path,
    backend: &str,
    server: &str,
    up: bool,
    make_ready: bool,
) -> Result<(), HaproxyError> {
    let health = if up { "up" } else { "down" };
    let line = if make_ready {
        format!(
            "set server {backend}/{server} state ready; set server {backend}/{server} health {health}"
        )
    } else {
        format!("set server {backend}/{server} health {health}")
    };
    expect_silence(socket, line).await
}

/// Drain `backend/server` and force it down: no new connection, whatever its health checks say
/// later; the existing ones are shut down (`on-marked-down shutdown-sessions`).
pub async fn keep_out(socket: &Path, backend: &str, server: &str) -> Result<(), HaproxyError> {
    let line = format!(
        "set server {backend}/{server} state drain; set server {backend}/{server} health down"
    );
    expect_silence(socket, line).await
}

/// Drain `backend/server`, health untouched: no new connection, the open ones go on.
pub async fn drain(socket: &Path, backend: &str, server: &str) -> Result<(), HaproxyError> {
    expect_silence(socket, format!("set server {backend}/{server} state drain")).await
}

/// Stop (`disable health`) or restart (`enable health`) the health checks of `backend/server`.
/// While stopped HAProxy keeps the server as it is (up), whatever its check would say.
pub async fn set_checks(
    socket: &Path,
    backend: &str,
    server: &str,
    on: bool,
) -> Result<(), HaproxyError> {
    let verb = if on { "enable" } else { "disable" };
    expect_silence(socket, format!("{verb} health {backend}/{server}")).await
}

/// Make `backend/server` ready (out of drain): its health checks decide again.
pub async fn make_ready(socket: &Path, backend: &str, server: &str) -> Result<(), HaproxyError> {
    expect_silence(socket, format!("set server {backend}/{server} state ready")).await
}

/// Send `line`; success prints nothing, any text is HAProxy explaining a refusal.
async fn expect_silence(socket: &Path, line: String) -> Result<(), HaproxyError> {
    let answer = command(socket, &line).await?;
    if answer.trim().is_empty() {
        Ok(())
    } else {
        Err(HaproxyError::Refused {
            command: line,
            answer: answer.trim().to_string(),
        })
    }
}

/// Parse `show servers state` (format 1): columns `be_id be_name srv_id srv_name srv_addr
/// srv_op_state srv_admin_state ...`. Unknown lines are skipped.
pub fn parse_servers_state(answer: &str, write_backend: &str, read_backend: &str) -> HaproxyView {
    let mut view = HaproxyView::default();
    for line in answer.lines() {
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 7 {
            continue;
        }
        let (Ok(operational), Ok(admin)) = (fields[5].parse::<u32>(), fields[6].parse::<u32>())
        else {
            continue;
        };
        // op 2 = running; admin bits: forced/inherited/config/resolution/hostname maintenance
        // (0x01 0x02 0x04 0x20 0x80) and forced/inherited drain (0x08 0x10).
        let state = ServerState {
            up: operational == 2,
            maint: admin & 0xA7 != 0,
            drain: admin & 0x18 != 0,
        };
        let backend = fields[1];
        let server = fields[3].to_string();
        if backend == write_backend {
            view.write.insert(server, state);
        } else if backend == read_backend {
            view.read.insert(server, state);
        }
    }
    view
}

/// The saved `show servers state` with a line added for each server of `backends` that the
/// new configuration has and the saved state lacks (a node added to the cluster): such a server
/// starts DOWN and comes up only when its health checks pass, instead of HAProxy's default
/// for a server it has no state for, UP, which sends a write to a new replica until its first
/// checks fail. A backend the saved state does not know is left alone (nothing was saved, or
/// the backend is new: HAProxy's defaults apply as on a first start).
pub fn with_new_servers_down(saved: &str, config: &str, backends: &[&str]) -> String {
    let mut out = saved.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for backend in backends {
        let known: Vec<Vec<&str>> = saved
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split_whitespace().collect::<Vec<&str>>())
            .filter(|fields| fields.len() >= 7 && fields[1] == *backend)
            .collect();
        let Some(backend_id) = known.first().map(|fields| fields[0]) else {
            continue;
        };
        for (position, server) in config_servers(config, backend).iter().enumerate() {
            if known.iter().any(|fields| fields[3] == server.name) {
                continue;
            }
            // Columns of format 1 (see `parse_servers_state`): DOWN (op 0), no admin state,
            // health 0, the last check failed; the ID HAProxy gives it (its position).
            out.push_str(&format!(
                "{backend_id} {backend} {id} {name} {address} 0 0 1 1 0 17 2 0 6 0 0 0 - {port} - 0 {check} - - {check}\n",
                id = position + 1,
                name = server.name,
                address = server.address,
                port = server.port,
                check = server.check_port.unwrap_or(server.port),
            ));
        }
    }
    out
}

/// A `server` line of a HAProxy configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigServer {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub check_port: Option<u16>,
}

/// The servers of `listen NAME` or `backend NAME` in a configuration, in order.
pub fn config_servers(config: &str, backend: &str) -> Vec<ConfigServer> {
    let mut servers = Vec::new();
    let mut inside = false;
    for line in config.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && !words.is_empty() {
            inside = matches!(words.as_slice(), [kind, name, ..] if (*kind == "listen" || *kind == "backend") && *name == backend);
            continue;
        }
        if !inside || words.first() != Some(&"server") || words.len() < 3 {
            continue;
        }
        let Some((address, port)) = words[2].rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        let check_port = words
            .windows(2)
            .find(|pair| pair[0] == "port")
            .and_then(|pair| pair[1].parse().ok());
        servers.push(ConfigServer {
            name: words[1].to_string(),
            address: address
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            check_port,
        });
    }
    servers
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_server_new_to_the_configuration_starts_down_and_known_ones_keep_their_state() {
        let saved = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n\
3 pgha_write 1 node1 10.0.0.1 2 0 1 1 53 15 3 5 6 0 0 0 - 5432 - 0 8008 - - 8008\n\
3 pgha_write 2 node2 10.0.0.2 0 8 1 1 41 17 2 0 6 0 0 0 - 5432 - 0 8008 - - 8008\n\
4 pgha_read 1 node1 10.0.0.1 0 0 1 1 52 17 2 0 6 0 0 0 - 5432 - 0 8008 - - 8008\n\
4 pgha_read 2 node2 10.0.0.2 2 0 1 1 53 15 3 5 6 0 0 0 - 5432 - 0 8008 - - 8008\n";
        let config = "global
    daemon

listen stats
    server x 1.1.1.1:1

listen pgha_write
    bind *:5000
    server node1 10.0.0.1:5432 maxconn 1000 check port 8008 check-ssl
    server node2 10.0.0.2:5432 check port 8008
    server node3 10.0.0.3:5432 maxconn 1000 check port 8008 check-ssl verify required

listen pgha_read
    server node1 10.0.0.1:5432 check port 8008
    server node2 10.0.0.2:5432 check port 8008
    server node3 10.0.0.3:5432 check port 8008
";
        let state = super::with_new_servers_down(saved, config, &["pgha_write", "pgha_read"]);
        assert!(state.starts_with(saved));
        let added: Vec<&str> = state[saved.len()..].lines().collect();
        assert_eq!(
            added,
            [
                "3 pgha_write 3 node3 10.0.0.3 0 0 1 1 0 17 2 0 6 0 0 0 - 5432 - 0 8008 - - 8008",
                "4 pgha_read 3 node3 10.0.0.3 0 0 1 1 0 17 2 0 6 0 0 0 - 5432 - 0 8008 - - 8008",
            ]
        );
        let view = super::parse_servers_state(&state, "pgha_write", "pgha_read");
        assert!(!view.write["node3"].up && view.write["node1"].up && view.write["node2"].drain);
        // Nothing saved: HAProxy's defaults, as on a first start.
        assert_eq!(
            super::with_new_servers_down("1\n", config, &["pgha_write"]),
            "1\n"
        );
    }

    #[test]
    fn open_sessions_come_from_show_stat() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax\npgha_read,node2,0,0,3,9\npgha_read,BACKEND,0,0,3,9\n";
        assert_eq!(current_sessions(csv, "pgha_read", "node2"), Some(3));
        assert_eq!(current_sessions(csv, "pgha_read", "node9"), None);
        assert_eq!(current_sessions("garbage", "pgha_read", "node2"), None);
    }

    use super::*;

    #[test]
    fn servers_state_is_parsed() {
        let answer = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
            3 pgha_write 1 node1 10.231.0.11 2 0 1 1 10 6 3 4 6 0 0 0 - 5432 - 0 0 - - 0\n\
            3 pgha_write 2 node2 10.231.0.12 0 1 1 1 10 6 3 4 6 0 0 0 - 5432 - 0 0 - - 0\n\
            3 pgha_write 3 node3 10.231.0.13 2 8 1 1 10 6 3 4 6 0 0 0 - 5432 - 0 0 - - 0\n\
            4 pgha_read 1 node1 10.231.0.11 0 0 1 1 10 6 3 4 6 0 0 0 - 5432 - 0 0 - - 0\n\
            garbage\n";
        let view = parse_servers_state(answer, "pgha_write", "pgha_read");
        assert_eq!(
            view.write["node1"],
            ServerState {
                up: true,
                ..ServerState::default()
            }
        );
        assert_eq!(
            view.write["node2"],
            ServerState {
                maint: true,
                ..ServerState::default()
            }
        );
        // Drained and up (its check passes): not a write target.
        assert_eq!(
            view.write["node3"],
            ServerState {
                up: true,
                drain: true,
                ..ServerState::default()
            }
        );
        assert_eq!(view.read["node1"], ServerState::default());
        assert_eq!(
            view.write_targets().into_iter().collect::<Vec<_>>(),
            ["node1"]
        );
    }
}
