//! End-to-end: the pgha agent on a real 3-node lab, read like a spec:
//!
//! 1. `pgha deploy` installs the agent on every node; a second deploy changes nothing;
//!    every agent answers `/status`;
//! 2. a planned switchover through Patroni's REST API: every node's HAProxy routes writes to
//!    the new primary, the agent's journal says so ("routing writes to ...") and HAProxy's
//!    runtime state (`show servers state`) shows only the new primary up in `pgha_write`;
//!    the others are drained, so a check that marks the old primary up again (as a thawed old
//!    primary's `/primary` can for a moment) still sends it no write: every connection through
//!    that node's write port lands on the new primary. A stopped agent makes the drained
//!    servers ready again (the health checks route without it), a started one drains them; a
//!    SIGKILLed one too (the unit's ExecStopPost), and systemd's restart drains them again;
//! 3. HAProxy SIGKILLed (and masked) on the VIP holder: the VIP moves to another node;
//! 4. keepalived SIGKILLed on the new holder: its agent removes the VIP it holds, and another
//!    node takes it over (one holder, not two).
//!
//! Needs root and the machine's only lab: it starts with `pgha lab down` and ends with it.

mod common;

use common::{eventually, is_root, lab_inventory, pgha, pgha_ok, Lab};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const VIP: &str = "10.231.0.100";
const NODES: [(&str, &str); 3] = [
    ("node1", "10.231.0.11"),
    ("node2", "10.231.0.12"),
    ("node3", "10.231.0.13"),
];

/// `curl` from the host; extra arguments before the URL.
fn curl(args: &[&str]) -> Result<String, String> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|error| format!("{error}: {text}"))
}

/// Run `command` on one node through `pgha exec --limit`.
fn on_node(inventory: &Path, node: &str, command: &str) -> String {
    pgha_ok(&[
        "exec",
        "-i",
        inventory.to_str().unwrap(),
        "--limit",
        node,
        "--",
        command,
    ])
}

/// The nodes whose `eth0` holds the VIP. An error when any node could not be asked: a node
/// that did not answer is not a node without the VIP.
fn vip_holders(inventory: &Path) -> Result<Vec<String>, String> {
    let output = pgha(&[
        "exec",
        "-i",
        inventory.to_str().unwrap(),
        "--json",
        "--",
        "ip -o addr show dev eth0",
    ]);
    let results = json(&String::from_utf8_lossy(&output.stdout))?;
    let hosts = results
        .as_array()
        .ok_or_else(|| format!("`pgha exec --json` printed no list: {results}"))?;
    if hosts.len() != 3 {
        return Err(format!("{} of 3 nodes answered: {results}", hosts.len()));
    }
    let mut holders = Vec::new();
    for host in hosts {
        let name = host["host"].as_str().ok_or("a result without `host`")?;
        let stdout = match (host["exit_code"].as_i64(), host["stdout"].as_str()) {
            (Some(0), Some(stdout)) => stdout,
            _ => return Err(format!("`ip addr` failed on {name}: {host}")),
        };
        if stdout.contains(&format!(" {VIP}/")) {
            holders.push(name.to_string());
        }
    }
    Ok(holders)
}

/// One command to a node's HAProxy runtime socket; its answer (without `pgha exec`'s header).
fn haproxy_command(inventory: &Path, node: &str, line: &str) -> String {
    let script = format!(
        r#"python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect("/run/haproxy/admin.sock"); s.sendall(sys.argv[1].encode() + b"\n"); print(s.makefile().read())' '{line}'"#
    );
    let header = format!("{node} | ");
    on_node(inventory, node, &script)
        .lines()
        .filter(|text| !text.starts_with(&header))
        .map(|text| format!("{text}\n"))
        .collect()
}

/// `pgha_write`'s servers on a node as `server -> admin state` (0x08: drained by the agent).
fn write_backend_admin(inventory: &Path, node: &str) -> Vec<(String, u32)> {
    haproxy_command(inventory, node, "show servers state pgha_write")
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 6 && fields[1] == "pgha_write")
                .then(|| (fields[3].to_string(), fields[6].parse().unwrap_or(u32::MAX)))
        })
        .collect()
}

/// `select inet_server_addr()` through `address:5000` on a new connection, from the host
/// (the password in psql's environment, never on a command line).
fn write_port_server(address: &str, password: &str) -> String {
    let output = Command::new("psql")
        .args([
            "-h",
            address,
            "-p",
            "5000",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atc",
            "select host(inet_server_addr())",
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql through {address}:5000 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// HAProxy's `show servers state pgha_write` on a node, as `server -> operational state`.
fn write_backend_state(inventory: &Path, node: &str) -> Vec<(String, String)> {
    let script = r#"python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("/run/haproxy/admin.sock"); s.sendall(b"show servers state pgha_write\n"); print(s.makefile().read())'"#;
    on_node(inventory, node, script)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 6 && fields[1] == "pgha_write")
                .then(|| (fields[3].to_string(), fields[5].to_string()))
        })
        .collect()
}

#[test]
fn agent_routes_a_switchover_and_keeps_the_vip_honest() {
    assert!(
        is_root(),
        "the end-to-end test needs root (it runs the lab)"
    );
    let (dir, inventory) = lab_inventory();
    let inventory_arg = inventory.to_str().unwrap();

    let _lab = Lab;
    pgha(&["lab", "down"]);
    pgha_ok(&["lab", "up", "--nodes", "3"]);

    // 1. Deployed with the agent everywhere; a second deploy changes nothing.
    pgha_ok(&["deploy", "-i", inventory_arg]);
    let second: serde_json::Value =
        serde_json::from_str(&pgha_ok(&["deploy", "-i", inventory_arg, "--json"])).unwrap();
    let changed: u64 = second["hosts"]
        .as_object()
        .unwrap()
        .values()
        .map(|host| host["changed"].as_u64().unwrap())
        .sum();
    assert_eq!(
        changed, 0,
        "a second deploy must change nothing: {second:#}"
    );
    pgha_ok(&[
        "exec",
        "-i",
        inventory_arg,
        "--",
        "systemctl is-active pgha-agent",
    ]);
    for (node, address) in NODES {
        let status = eventually(
            &format!("{node}'s agent answers /status with a decision"),
            Duration::from_secs(20),
            || {
                let status = json(&curl(&[&format!("http://{address}:9650/status")])?)?;
                if status["decision"].is_null() {
                    return Err("no decision yet".into());
                }
                Ok(status)
            },
        );
        assert_eq!(status["node"], node);
        let metrics = curl(&[&format!("http://{address}:9650/metrics")]).unwrap();
        assert!(
            metrics.contains("pgha_cluster_has_leader{node=\""),
            "{metrics}"
        );
        // The node certificate's expiry, about 90 days ahead.
        let not_after: u64 = metrics
            .lines()
            .find(|line| line.starts_with("pgha_tls_certificate_not_after_seconds{"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no certificate expiry in the metrics:\n{metrics}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let days = (not_after as i64 - now as i64) / 86_400;
        assert!(
            (80..=90).contains(&days),
            "{node}'s certificate ends in {days} days"
        );
    }

    // 2. A planned switchover: writes are routed to the new primary by the agents.
    let tls = common::control_curl_tls(&inventory);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let cluster =
        json(&curl(&[&tls[..], &["https://10.231.0.11:8008/cluster"]].concat()).unwrap()).unwrap();
    let members = cluster["members"].as_array().unwrap();
    let leader = members
        .iter()
        .find(|member| member["role"] == "leader")
        .and_then(|member| member["name"].as_str())
        .expect("a leader")
        .to_string();
    let candidate = members
        .iter()
        .find(|member| member["role"] == "sync_standby")
        .or_else(|| members.iter().find(|member| member["role"] != "leader"))
        .and_then(|member| member["name"].as_str())
        .expect("a candidate")
        .to_string();
    let secrets: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.path().join("lab.secrets.yml")).unwrap())
            .unwrap();
    let password = secrets["restapi_password"].as_str().unwrap();
    // The credentials go to curl in a 0600 config file, never on its command line.
    let config = dir.path().join("curl-auth");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)
            .unwrap();
        writeln!(file, "user = \"pgha:{password}\"").unwrap();
    }
    let leader_address = NODES.iter().find(|(name, _)| *name == leader).unwrap().1;
    let body = format!(r#"{{"leader": "{leader}", "candidate": "{candidate}"}}"#);
    let url = format!("https://{leader_address}:8008/switchover");
    let answer = curl(
        &[
            &tls[..],
            &[
                "-K",
                config.to_str().unwrap(),
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                &body,
                "-w",
                " %{http_code}",
                &url,
            ],
        ]
        .concat(),
    )
    .unwrap();
    assert!(answer.ends_with(" 200"), "switchover refused: {answer}");

    for (node, _) in NODES {
        eventually(
            &format!("{node}'s HAProxy routes writes to {candidate} alone"),
            Duration::from_secs(30),
            || {
                let state = write_backend_state(&inventory, node);
                let up: Vec<&str> = state
                    .iter()
                    .filter(|(_, operational)| operational == "2")
                    .map(|(server, _)| server.as_str())
                    .collect();
                if up == [candidate.as_str()] {
                    Ok(())
                } else {
                    Err(format!("`show servers state`: {state:?}"))
                }
            },
        );
        let journal = on_node(
            &inventory,
            node,
            "journalctl -u pgha-agent --no-pager -o cat",
        );
        assert!(
            journal.contains(&format!("routing writes to {candidate}, the new leader")),
            "{node}'s agent journal does not say it routed writes to {candidate}:\n{journal}"
        );
        let admin = write_backend_admin(&inventory, node);
        assert_eq!(
            admin.len(),
            NODES.len(),
            "{node}: `show servers state`: {admin:?}"
        );
        for (server, admin) in admin {
            assert_eq!(
                admin & 0x08 != 0,
                server != candidate,
                "{node}: `{server}` has admin state {admin}: every write server but the leader {candidate} must be drained"
            );
        }
    }

    // 2b. A check that re-admits the old primary (forced here, as a thawed old primary's
    // `/primary` can for a moment) does not give it writes: it stays drained.
    let superuser_password = secrets["superuser_password"].as_str().unwrap();
    let candidate_address = NODES.iter().find(|(name, _)| *name == candidate).unwrap().1;
    let (router, router_address) = NODES[0];
    for attempt in 0..8 {
        // Forced up and read back in one exchange: the old primary is up (op state 2) and
        // drained (admin 0x08) right before the connection.
        let answer = haproxy_command(
            &inventory,
            router,
            &format!("set server pgha_write/{leader} health up; show servers state pgha_write"),
        );
        let state = answer
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.len() > 6 && fields[1] == "pgha_write" && fields[3] == leader)
            .map(|fields| (fields[5].to_string(), fields[6].parse::<u32>().unwrap_or(0)));
        assert!(
            matches!(&state, Some((operational, admin)) if operational == "2" && admin & 0x08 != 0),
            "{leader} is not up and drained on {router} before connection {attempt}: {answer}"
        );
        assert_eq!(
            write_port_server(router_address, superuser_password),
            candidate_address,
            "connection {attempt} through {router}'s write port did not land on the leader {candidate} while {leader} was up but drained"
        );
    }

    // 2c. A stopped agent makes the drained servers ready; a started one drains them again.
    on_node(&inventory, router, "systemctl stop pgha-agent");
    let admin = write_backend_admin(&inventory, router);
    assert_eq!(
        admin.len(),
        NODES.len(),
        "{router}: `show servers state`: {admin:?}"
    );
    let drained: Vec<(String, u32)> = admin
        .into_iter()
        .filter(|(_, admin)| admin & 0x08 != 0)
        .collect();
    assert!(
        drained.is_empty(),
        "{router}: a stopped agent left drained write servers: {drained:?}"
    );
    on_node(&inventory, router, "systemctl start pgha-agent");
    eventually(
        &format!("{router}'s restarted agent drains every write server but {candidate}"),
        Duration::from_secs(20),
        || {
            let admin = write_backend_admin(&inventory, router);
            let wrong: Vec<&(String, u32)> = admin
                .iter()
                .filter(|(server, admin)| (admin & 0x08 != 0) != (*server != candidate))
                .collect();
            if wrong.is_empty() && admin.len() == NODES.len() {
                Ok(())
            } else {
                Err(format!("admin states: {admin:?}"))
            }
        },
    );

    // 2d. A crashed agent (SIGKILL) leaves no drain behind either: the unit's ExecStopPost
    // releases them (its journal says so), and the restarted agent drains them again.
    let releases = || {
        on_node(
            &inventory,
            router,
            "journalctl -u pgha-agent -o cat --no-pager | grep -c '^write servers made ready (node' || true",
        )
        .lines()
        .filter_map(|line| line.trim().parse::<usize>().ok())
        .next()
        .unwrap_or(0)
    };
    let released_before = releases();
    on_node(&inventory, router, "systemctl kill -s KILL pgha-agent");
    eventually(
        &format!("{router}'s ExecStopPost releases the drains of the killed agent"),
        Duration::from_secs(20),
        || {
            let now = releases();
            if now > released_before {
                Ok(())
            } else {
                Err(format!("{now} releases in the journal"))
            }
        },
    );
    eventually(
        &format!(
            "{router}'s agent, restarted by systemd, drains every write server but {candidate}"
        ),
        Duration::from_secs(20),
        || {
            let admin = write_backend_admin(&inventory, router);
            let drained = admin.iter().filter(|(_, admin)| admin & 0x08 != 0).count();
            if drained == NODES.len() - 1 && admin.len() == NODES.len() {
                Ok(())
            } else {
                Err(format!("admin states: {admin:?}"))
            }
        },
    );

    // 3. HAProxy killed on the VIP holder: the VIP moves away.
    let holder = eventually(
        "one node holds the VIP",
        Duration::from_secs(20),
        || match vip_holders(&inventory)?.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("holders: {other:?}")),
        },
    );
    on_node(
        &inventory,
        &holder,
        "systemctl mask --runtime haproxy && systemctl kill -s KILL haproxy",
    );
    let killed = Instant::now();
    let new_holder = eventually(
        &format!("the VIP leaves {holder} after its HAProxy died"),
        Duration::from_secs(20),
        || match vip_holders(&inventory)?.as_slice() {
            [one] if *one != holder => Ok(one.clone()),
            other => Err(format!("holders: {other:?}")),
        },
    );
    eprintln!(
        "the VIP moved from {holder} to {new_holder} {:.1} s after HAProxy was killed",
        killed.elapsed().as_secs_f64()
    );

    // 4. keepalived SIGKILLed on the new holder: its agent removes the VIP it still holds.
    on_node(&inventory, &new_holder, "systemctl kill -s KILL keepalived");
    eventually(
        &format!("{new_holder}'s agent removes the VIP held without keepalived"),
        Duration::from_secs(20),
        || {
            let holders = vip_holders(&inventory)?;
            if holders.contains(&new_holder) {
                Err(format!("holders: {holders:?}"))
            } else {
                Ok(())
            }
        },
    );
    // Its journal says so (journald may write a busy node's lines a moment late).
    eventually(
        &format!("{new_holder}'s agent reports removing the VIP"),
        Duration::from_secs(20),
        || {
            let journal = on_node(
                &inventory,
                &new_holder,
                "journalctl -u pgha-agent --no-pager -o cat",
            );
            if journal.contains("removing the VIP") {
                Ok(())
            } else {
                Err(journal)
            }
        },
    );
}
