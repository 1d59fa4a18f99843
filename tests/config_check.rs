//! The rendered files must be accepted by the real programs: `haproxy -c`, `keepalived
//! --config-test` and the `patroni --validate-config` of the Patroni release pgha deploys.
//!
//! Patroni's validator binds the listen addresses and connects to the etcd hosts, and
//! keepalived wants the VIP interface and the check script to exist. Each node's files are
//! therefore checked inside a throw-away network and mount namespace (`unshare`) that has the
//! node addresses on an interface named like the inventory's `vip_interface`, a listener on
//! each etcd client port, and the rendered check script at its real path. Needs root and the
//! Patroni venv made by `scripts/setup-host.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn patroni_bin(version: &str) -> PathBuf {
    let cache = std::env::var_os("PGHA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/pgha".into());
    let bin = cache.join(format!("patroni-{version}/bin/patroni"));
    assert!(
        bin.exists(),
        "`{}` is missing; run `scripts/setup-host.sh` first",
        bin.display()
    );
    bin
}

fn render(inventory: &Path, out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(["render", "-i"])
        .arg(inventory)
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "pgha render failed for {}",
        inventory.display()
    );
}

fn check_inventory(file: &str, addresses: &[&str], interface: &str, etcd_port: u16) {
    let dir = tempfile::tempdir().unwrap();
    // Copy the inventory so its secrets file is generated in the temp folder, not the checkout.
    let inventory = dir.path().join(file);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("inventories")
            .join(file),
        &inventory,
    )
    .unwrap();
    let out = dir.path().join("out");
    render(&inventory, &out);
    let patroni = patroni_bin("4.1.5");

    for node in std::fs::read_dir(&out).unwrap() {
        let node_dir = node.unwrap().path();
        let name = node_dir.file_name().unwrap().to_string_lossy().to_string();
        let add_addresses: String = addresses
            .iter()
            .map(|address| format!("ip addr add {address}/24 dev {interface} && "))
            .collect();
        let listen_on: String = addresses
            .iter()
            .map(|address| format!("'{address}' "))
            .collect();
        let script = format!(
            "set -e
cd '{node_dir}'
ip link set lo up
ip link add {interface} type veth peer name pgha-peer
ip link set {interface} up
{add_addresses}true
python3 -c 'import socket, sys, time
held = []
for address in sys.argv[1:]:
    listener = socket.socket(); listener.bind((address, {etcd_port})); listener.listen(); held.append(listener)
time.sleep(120)' {listen_on} &
listener=$!
trap 'kill $listener' EXIT
sleep 0.5
mount -t tmpfs -o mode=755 tmpfs /usr/local/lib
mkdir -p /usr/local/lib/pgha
if [ -f usr/local/lib/pgha/check-writes ]; then install -m 755 usr/local/lib/pgha/check-writes /usr/local/lib/pgha/check-writes; fi
# HAProxy's server-state file as the unit's drop-in leaves it before a start.
mkdir -p /var/lib/haproxy && mount -t tmpfs -o mode=755 tmpfs /var/lib/haproxy && echo 1 > /var/lib/haproxy/pgha-server-state
# The node's TLS files, where the deploy puts them (issued by `pgha render` beside the secrets).
mkdir -p /etc/pgha && mount -t tmpfs -o mode=755 tmpfs /etc/pgha && mkdir -p /etc/pgha/tls
install -m 644 '{tls}/ca.crt' /etc/pgha/tls/ca.crt && install -m 644 '{tls}/{name}.crt' /etc/pgha/tls/node.crt
for key in node postgres; do install -m 600 '{tls}/{name}.key' /etc/pgha/tls/$key.key; done
for pem in haproxy etcd; do install -m 600 '{tls}/{name}.pem' /etc/pgha/tls/$pem.pem; done
# The Lua the configuration loads, where the deploy puts it.
mkdir -p /etc/haproxy && mount -t tmpfs -o mode=755 tmpfs /etc/haproxy
if [ -f etc/haproxy/pgha-hold.lua ]; then install -m 644 etc/haproxy/pgha-hold.lua /etc/haproxy/pgha-hold.lua; fi
if [ -f etc/haproxy/haproxy.cfg ]; then echo '>> haproxy'; haproxy -c -f etc/haproxy/haproxy.cfg; fi
if [ -f etc/keepalived/keepalived.conf ]; then echo '>> keepalived'; keepalived --config-test -f etc/keepalived/keepalived.conf; fi
if [ -f etc/patroni/patroni.yml ]; then echo '>> patroni'; '{patroni}' --validate-config etc/patroni/patroni.yml; fi
echo '>> all accepted'
",
            node_dir = node_dir.display(),
            patroni = patroni.display(),
            tls = inventory.with_extension("secrets.tls").display(),
        );
        let output = Command::new("unshare")
            .args(["--net", "--mount", "sh", "-c", &script])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "{file} {name}: a checker refused the rendered files:\n{text}"
        );
        assert!(text.contains(">> all accepted"), "{file} {name}:\n{text}");
        // keepalived exits 0 on some problems it only warns about; warnings count as failures.
        assert!(
            !text.contains("WARNING") && !text.contains("Disabling"),
            "{file} {name}: keepalived warned:\n{text}"
        );
        for checker in [">> haproxy", ">> keepalived", ">> patroni"] {
            assert!(
                text.contains(checker),
                "{file} {name}: {checker} did not run:\n{text}"
            );
        }
    }
}

#[test]
fn lab_inventory_files_pass_the_real_checkers() {
    check_inventory(
        "lab.yml",
        &["10.231.0.11", "10.231.0.12", "10.231.0.13"],
        "eth0",
        2379,
    );
}

#[test]
fn example_inventory_files_pass_the_real_checkers() {
    check_inventory(
        "example.yml",
        &["10.20.0.11", "10.20.0.12", "10.20.0.13"],
        "ens18",
        2379,
    );
}
