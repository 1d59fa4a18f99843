//! End-to-end: a real 3-node lab on this machine (needs root, Linux and the lab's host packages).
//! One test, because only one lab can exist on a machine at a time. It reads like the spec of
//! `pgha lab`: nodes boot with systemd and strict SSH, apt works through the proxy, every fault
//! (power cut, partition, freeze, a blocked link, loss and delay) does what it says and is
//! undone, the running lab grows to 4 nodes and shrinks back without touching the others, a
//! second `up` changes nothing, `down` leaves nothing behind.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NODES: [(&str, &str); 3] = [
    ("node1", "10.231.0.11"),
    ("node2", "10.231.0.12"),
    ("node3", "10.231.0.13"),
];

fn state_dir() -> PathBuf {
    std::env::var_os("PGHA_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/pgha/lab".into())
}

fn pgha(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .output()
        .expect("run pgha");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("$ pgha {}\n{stdout}{stderr}", args.join(" "));
    assert!(
        output.status.success(),
        "`pgha {}` failed: {stderr}",
        args.join(" ")
    );
    stdout
}

/// Run a command on a node over SSH with strict host-key checking against the lab's known_hosts.
fn ssh(user: &str, address: &str, command: &str) -> Output {
    let keys = state_dir().join("ssh");
    Command::new("ssh")
        .arg("-i")
        .arg(keys.join("id_ed25519"))
        .arg(format!(
            "-oUserKnownHostsFile={}",
            keys.join("known_hosts").display()
        ))
        .args([
            "-oStrictHostKeyChecking=yes",
            "-oBatchMode=yes",
            "-oConnectTimeout=5",
            "-oLogLevel=ERROR",
        ])
        .arg(format!("{user}@{address}"))
        .arg(command)
        .output()
        .expect("run ssh")
}

fn ssh_ok(address: &str, command: &str) -> String {
    let output = ssh("root", address, command);
    assert!(
        output.status.success(),
        "`{command}` on {address} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Whether sshd on `address` sends its banner within a second.
fn sshd_answers(address: &str) -> bool {
    let socket: SocketAddr = format!("{address}:22").parse().expect("address");
    let Ok(mut stream) = TcpStream::connect_timeout(&socket, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

/// `systemctl is-system-running` on the node once it has left `starting`.
fn system_state(address: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = ssh("root", address, "systemctl is-system-running");
        let state = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !matches!(state.as_str(), "starting" | "initializing") || Instant::now() > deadline {
            if state == "degraded" {
                eprintln!(
                    "{}",
                    ssh_ok(address, "systemctl --failed --no-pager || true")
                );
            }
            return state;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn node_state(name: &str) -> String {
    let status: serde_json::Value =
        serde_json::from_str(&pgha(&["lab", "status", "--json"])).expect("status JSON");
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["name"] == name))
        .and_then(|node| node["state"].as_str())
        .unwrap_or("missing")
        .to_string()
}

/// Whether `from` reaches `to` with one ping (one second timeout).
fn reaches(from: &str, to: &str) -> bool {
    ssh("root", from, &format!("ping -c1 -W1 {to}"))
        .status
        .success()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .map(str::to_string)
        })
        .and_then(|ids| ids.split_whitespace().nth(1).map(|id| id == "0"))
        .unwrap_or(false)
}

/// Live (not zombie) processes whose command line mentions the lab's state directory.
fn lab_processes(dir: &Path) -> Vec<String> {
    processes_mentioning(&dir.display().to_string())
}

/// Live (not zombie) processes whose command line contains `needle`, except cargo's.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        if cmdline.contains(needle) && !zombie && !cmdline.contains("cargo") {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

fn assert_nothing_left(dir: &Path) {
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !namespaces.iter().any(|name| name.starts_with("pgha-")),
        "namespaces left: {namespaces:?}"
    );
    assert!(
        !Path::new("/sys/class/net/pgha-br0").exists(),
        "bridge `pgha-br0` left"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let needle = dir.display().to_string();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|line| line.contains(&needle))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    let processes = lab_processes(dir);
    assert!(processes.is_empty(), "processes left: {processes:?}");
    let workers = processes_mentioning("impair-worker");
    assert!(workers.is_empty(), "impair workers left: {workers:?}");
    assert!(
        !Path::new("/sys/fs/cgroup/unified/pgha-lab").exists(),
        "cgroups left"
    );
}

#[test]
fn lab_boots_real_nodes_injects_faults_and_leaves_nothing_behind() {
    assert!(
        is_root(),
        "the lab test needs root (network namespaces, mounts, cgroups): run it as root"
    );
    let dir = state_dir();
    pgha(&["lab", "down"]);
    // Down again however the test ends, so that a failure leaves no lab behind.
    let _lab = common::Lab;

    // Up: three nodes with systemd and strict SSH as root and as `deploy` with sudo.
    let up = pgha(&["lab", "up", "--nodes", "3"]);
    assert!(up.contains("booted"), "first `up` booted nothing: {up}");
    for (name, address) in NODES {
        assert_eq!(ssh_ok(address, "hostname"), name);
        assert_eq!(
            system_state(address),
            "running",
            "`{name}` is not running cleanly"
        );
        let deploy = ssh("deploy", address, "sudo -n id -u");
        assert_eq!(
            String::from_utf8_lossy(&deploy.stdout).trim(),
            "0",
            "`deploy` has no passwordless sudo on `{name}`"
        );
    }

    // Packages come through the proxy (nodes reach nothing else).
    let update = ssh_ok("10.231.0.11", "apt-get update -q 2>&1");
    assert!(
        update.contains("bookworm"),
        "apt-get update fetched nothing: {update}"
    );
    let routes = ssh_ok("10.231.0.11", "ip route");
    assert!(
        !routes.contains("default"),
        "node1 has a default route; it must reach packages only through the proxy: {routes}"
    );

    // Power cut of node2: unreachable, then back after `start`.
    pgha(&["lab", "kill", "node2"]);
    assert_eq!(node_state("node2"), "stopped");
    assert!(!sshd_answers("10.231.0.12"), "killed node2 still answers");
    assert!(
        !reaches("10.231.0.11", "10.231.0.12"),
        "killed node2 still answers ping"
    );
    pgha(&["lab", "start", "node2"]);
    assert_eq!(system_state("10.231.0.12"), "running");
    assert!(reaches("10.231.0.11", "10.231.0.12"));

    // Partition node3: cut off from node1 and the host while its processes keep running.
    ssh_ok("10.231.0.13", "systemd-run --unit=pgha-probe sleep 1000");
    pgha(&["lab", "partition", "node3"]);
    assert_eq!(node_state("node3"), "partitioned");
    assert!(
        !reaches("10.231.0.11", "10.231.0.13"),
        "node1 still reaches partitioned node3"
    );
    assert!(
        !sshd_answers("10.231.0.13"),
        "partitioned node3 answers the host"
    );
    pgha(&["lab", "heal", "node3"]);
    assert_eq!(node_state("node3"), "running");
    assert!(
        reaches("10.231.0.11", "10.231.0.13"),
        "node1 does not reach healed node3"
    );
    assert_eq!(
        ssh_ok("10.231.0.13", "systemctl is-active pgha-probe"),
        "active",
        "node3's processes did not survive"
    );

    // Freeze node1: its sshd stops answering; thaw: it answers again.
    pgha(&["lab", "freeze", "node1"]);
    assert_eq!(node_state("node1"), "frozen");
    assert!(!sshd_answers("10.231.0.11"), "frozen node1 still answers");
    pgha(&["lab", "thaw", "node1"]);
    assert_eq!(node_state("node1"), "running");
    assert!(sshd_answers("10.231.0.11"), "thawed node1 does not answer");

    // Block node1 – node2 only: both directions cut, node3 unaffected; unblock restores it.
    pgha(&["lab", "block", "node1", "node2"]);
    assert!(
        !reaches("10.231.0.11", "10.231.0.12"),
        "node1 still reaches node2"
    );
    assert!(
        !reaches("10.231.0.12", "10.231.0.11"),
        "node2 still reaches node1"
    );
    assert!(reaches("10.231.0.11", "10.231.0.13") && reaches("10.231.0.12", "10.231.0.13"));
    pgha(&["lab", "unblock", "node1", "node2"]);
    assert!(reaches("10.231.0.11", "10.231.0.12") && reaches("10.231.0.12", "10.231.0.11"));

    // Impair node2's link (netem's faults without netem): 300 ms each way makes a TCP connect
    // from this machine take a round trip of at least 600 ms; 100 % loss stops it; `unimpair`
    // brings it back to a bridge's speed; node3 is never touched.
    let connect_time = |address: &str| {
        let started = Instant::now();
        let to: SocketAddr = format!("{address}:22").parse().unwrap();
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| started.elapsed())
    };
    let clear = connect_time("10.231.0.12").expect("node2 answers before the impairment");
    assert!(
        clear < Duration::from_millis(100),
        "{clear:?} before any impairment"
    );
    let impaired = pgha(&["lab", "impair", "node2", "--delay", "300ms"]);
    assert!(impaired.contains("300 ms delay"), "{impaired}");
    let again = pgha(&["lab", "impair", "node2", "--delay", "300ms"]);
    assert!(
        again.contains("nothing changed"),
        "the same impairment again: {again}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&pgha(&["lab", "status", "--json"])).expect("status JSON");
    assert_eq!(status["nodes"][1]["impaired"], "300 ms delay each way");
    for _ in 0..3 {
        let slow = connect_time("10.231.0.12").expect("a delayed node2 still answers");
        assert!(
            slow >= Duration::from_millis(590) && slow < Duration::from_millis(1500),
            "a connect through 300 ms each way took {slow:?}"
        );
    }
    let neighbour = connect_time("10.231.0.13").expect("node3 answers");
    assert!(
        neighbour < Duration::from_millis(100),
        "node3 slowed to {neighbour:?}"
    );
    pgha(&["lab", "impair", "node2", "--loss", "100"]);
    assert!(
        connect_time("10.231.0.12").is_err(),
        "node2 answers through 100 % loss"
    );
    pgha(&["lab", "unimpair", "node2"]);
    let restored = connect_time("10.231.0.12").expect("node2 answers after unimpair");
    assert!(
        restored < Duration::from_millis(100),
        "{restored:?} after unimpair"
    );
    // Bad input is refused before anything is touched.
    let refused = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(["lab", "impair", "node2"])
        .output()
        .expect("run pgha");
    assert_eq!(refused.status.code(), Some(2), "an impairment of nothing");

    // The running lab grows by one node and shrinks back, leaving the others alone (their
    // PID 1 keeps its start time).
    let booted_at = |address: &str| ssh_ok(address, "ps -o lstart= -p 1");
    let before: Vec<String> = NODES
        .iter()
        .map(|(_, address)| booted_at(address))
        .collect();
    let grown = pgha(&["lab", "up", "--nodes", "4"]);
    assert!(grown.contains("booted `node4`"), "{grown}");
    assert!(
        !grown.contains("booted `node1`") && !grown.contains("booted `node2`"),
        "{grown}"
    );
    assert_eq!(ssh_ok("10.231.0.14", "hostname"), "node4");
    assert!(reaches("10.231.0.11", "10.231.0.14") && reaches("10.231.0.14", "10.231.0.13"));
    let refused = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(["lab", "remove", "node2"])
        .output()
        .expect("run pgha");
    assert_eq!(refused.status.code(), Some(2), "only the last node may go");
    pgha(&["lab", "remove", "node4"]);
    assert!(!sshd_answers("10.231.0.14"), "node4 still answers");
    assert!(
        !Path::new("/run/netns/pgha-node4").exists()
            && !Path::new("/sys/class/net/pgha-node4").exists(),
        "node4's network is left"
    );
    assert!(
        !state_dir().join("nodes/node4").exists(),
        "node4's files are left"
    );
    let known_hosts = std::fs::read_to_string(state_dir().join("ssh/known_hosts")).unwrap();
    assert!(!known_hosts.contains("10.231.0.14"), "{known_hosts}");
    let after: Vec<String> = NODES
        .iter()
        .map(|(_, address)| booted_at(address))
        .collect();
    assert_eq!(
        before, after,
        "growing or shrinking the lab restarted a node"
    );

    // Idempotent: a second `up` changes nothing.
    let again = pgha(&["lab", "up", "--nodes", "3"]);
    assert!(
        again.contains("nothing changed"),
        "second `up` changed something: {again}"
    );

    // Down: nothing left running, mounted or configured, an impair worker included (one is
    // left in place for it here).
    pgha(&["lab", "impair", "node3", "--loss", "10"]);
    pgha(&["lab", "down"]);
    assert_nothing_left(&dir);
    let status = pgha(&["lab", "status"]);
    assert!(status.contains("not up"), "status after down: {status}");
}
