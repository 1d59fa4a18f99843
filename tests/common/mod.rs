//! Helpers shared by the end-to-end tests that run the `pgha` binary against the local lab.
//! Each test binary uses a subset, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod clients;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Run `pgha` with `args`, echoing its stderr for the test log.
pub fn pgha(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .output()
        .expect("run pgha");
    eprintln!(
        "$ pgha {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Run `pgha`, fail the test if it fails, return its stdout.
pub fn pgha_ok(args: &[&str]) -> String {
    let output = pgha(args);
    assert!(
        output.status.success(),
        "`pgha {}` failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A copy of `inventories/lab.yml` in a fresh temporary folder, so that the secrets file the
/// test generates lands beside the copy, not in the repository. Keep the folder alive.
pub fn lab_inventory() -> (tempfile::TempDir, PathBuf) {
    shipped_inventory("lab.yml")
}

/// A copy of `inventories/<file>` in a fresh temporary folder (see [`lab_inventory`]).
pub fn shipped_inventory(file: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let inventory = dir.path().join(file);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("inventories")
            .join(file),
        &inventory,
    )
    .expect("copy the lab inventory");
    (dir, inventory)
}

/// Tears the lab down however the test ends.
pub struct Lab;

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_pgha"))
            .args(["lab", "down"])
            .status();
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Poll `probe` every 0.2 s until it succeeds; fail the test with its last error after `timeout`.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(error) if start.elapsed() > timeout => {
                panic!("{what} did not happen within {timeout:?}: {error}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The superuser password from the secrets file beside a lab inventory.
pub fn superuser_password(inventory: &Path) -> String {
    let path = inventory
        .parent()
        .expect("the inventory's folder")
        .join("lab.secrets.yml");
    let text = std::fs::read_to_string(&path).expect("the secrets file");
    let secrets: serde_yaml::Value = serde_yaml::from_str(&text).expect("secrets YAML");
    secrets["superuser_password"]
        .as_str()
        .expect("superuser_password")
        .to_string()
}

/// `psql` from this machine to `host:port` as `postgres`, giving up on the connection after
/// `connect_timeout` seconds; the password travels in the environment, never on a command
/// line. Its trimmed output, or its error.
pub fn psql_at(
    host: &str,
    port: u16,
    password: &str,
    connect_timeout: u32,
    sql: &str,
) -> Result<String, String> {
    // pg_hba admits network clients over TLS only.
    psql_with(host, port, password, connect_timeout, "require", sql)
}

/// `psql` from this machine with libpq's `sslmode`.
pub fn psql_with(
    host: &str,
    port: u16,
    password: &str,
    connect_timeout: u32,
    sslmode: &str,
    sql: &str,
) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", connect_timeout.to_string())
        .env("PGSSLMODE", sslmode)
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Run `command` as root on every node with `pgha exec --json`; its results.
pub fn exec_everywhere(inventory: &Path, command: &str) -> serde_json::Value {
    let stdout = pgha_ok(&[
        "exec",
        "-i",
        inventory.to_str().expect("a UTF-8 path"),
        "--json",
        "--",
        command,
    ]);
    serde_json::from_str(&stdout).expect("`pgha exec --json` prints JSON")
}

/// The last `lines` lines of `unit`'s journal on every node, for a failure message (what the
/// nodes said is the evidence a CI log otherwise lacks).
pub fn journal_tails(inventory: &Path, unit: &str, lines: u32) -> String {
    let output = pgha(&[
        "exec",
        "-i",
        inventory.to_str().expect("a UTF-8 path"),
        "--json",
        "--",
        &format!("journalctl -u {unit} -n {lines} --no-pager -o short-precise"),
    ]);
    let Ok(hosts) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        return format!(
            "(no journal: {})",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    };
    hosts
        .as_array()
        .into_iter()
        .flatten()
        .map(|host| {
            format!(
                "--- {} `journalctl -u {unit}`:\n{}",
                host["host"].as_str().unwrap_or("?"),
                host["stdout"].as_str().unwrap_or_default().trim_end()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The curl options of the control machine's client certificate for a lab inventory's cluster
/// (`<inventory dir>/lab.secrets.tls`): Patroni's API wants a certificate from the cluster CA.
pub fn control_curl_tls(inventory: &Path) -> Vec<String> {
    let dir = inventory
        .parent()
        .expect("the inventory's folder")
        .join("lab.secrets.tls");
    let path = |file: &str| dir.join(file).display().to_string();
    vec![
        "--cacert".into(),
        path("ca.crt"),
        "--cert".into(),
        path("control.crt"),
        "--key".into(),
        path("control.key"),
    ]
}

/// Shell words that give `etcdctl` and `curl` on a lab node its certificate (as pgha's own
/// scripts do).
pub const NODE_TLS_ENV: &str = "export ETCDCTL_CACERT=/etc/pgha/tls/ca.crt ETCDCTL_CERT=/etc/pgha/tls/node.crt ETCDCTL_KEY=/etc/pgha/tls/node.key; CURL_TLS='--cacert /etc/pgha/tls/ca.crt --cert /etc/pgha/tls/node.crt --key /etc/pgha/tls/node.key';";

/// `pgha deploy -i INVENTORY --json EXTRA...`: its JSON result (whether it succeeded or not).
pub fn deploy_result(inventory: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "deploy",
        "-i",
        inventory.to_str().expect("a UTF-8 path"),
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = pgha(&args);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "deploy printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The changed tasks of a deploy result, summed over its hosts.
pub fn changed_tasks(result: &serde_json::Value) -> u64 {
    result["hosts"]
        .as_object()
        .expect("hosts in the result")
        .values()
        .map(|host| host["changed"].as_u64().unwrap_or(0))
        .sum()
}
