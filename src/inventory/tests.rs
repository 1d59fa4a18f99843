//! Validation cases: each broken inventory must be refused with its message and place.

use super::*;

const GOOD: &str = "\
cluster:
  name: demo
  postgres_version: 15
  vip: 10.231.0.100/24
nodes:
  - {name: node1, address: 10.231.0.11}
  - {name: node2, address: 10.231.0.12}
  - {name: node3, address: 10.231.0.13, tags: {nofailover: true}}
";

fn parse(text: &str) -> Result<Inventory, String> {
    Inventory::parse(Path::new("inv.yml"), text).map_err(|error| error.0)
}

fn problems(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected a problem in:\n{text}"),
        Err(message) => message,
    }
}

#[test]
fn a_minimal_inventory_gets_every_default() {
    let inventory = parse(GOOD).unwrap();
    assert_eq!(inventory.cluster.failover_profile, FailoverProfile::Normal);
    assert_eq!(inventory.cluster.patroni.ttl, 30);
    assert_eq!(inventory.cluster.patroni.primary_start_timeout, 25);
    assert_eq!(inventory.cluster.haproxy.inter_ms, 2000);
    assert_eq!(inventory.cluster.ports.write, 5000);
    assert_eq!(inventory.cluster.ports.read, 5001);
    assert_eq!(inventory.cluster.synchronous_mode, SyncMode::Off);
    assert_eq!(inventory.ssh.user, "root");
    assert_eq!(inventory.cluster.secrets_file, Path::new("inv.secrets.yml"));
    assert_eq!(inventory.nodes[0].roles.len(), 4);
    assert!(inventory.nodes[2].tags.nofailover);
}

#[test]
fn the_shipped_inventories_are_valid() {
    for file in [
        "inventories/lab.yml",
        "inventories/lab-trixie.yml",
        "inventories/example.yml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        Inventory::load(&path).unwrap_or_else(|error| panic!("{file}: {error:#}"));
    }
}

#[test]
fn show_output_is_a_valid_inventory_with_the_same_values() {
    let inventory = parse(GOOD).unwrap();
    let shown = inventory.to_yaml().unwrap();
    let again = parse(&shown).unwrap();
    assert_eq!(again.to_yaml().unwrap(), shown);
}

#[test]
fn syntax_errors_unknown_keys_and_wrong_types_name_their_place() {
    let message = problems("cluster: {name: demo\n");
    assert!(message.starts_with("inv.yml:"), "{message}");
    let message = problems(&GOOD.replace("  vip:", "  vipp:"));
    assert!(
        message.contains("inv.yml:4:3: cluster: unknown field `vipp`"),
        "{message}"
    );
    let message = problems(&GOOD.replace("postgres_version: 15", "postgres_version: fifteen"));
    assert!(
        message.contains("inv.yml:3:21:") && message.contains("invalid type"),
        "{message}"
    );
    let message = problems(&GOOD.replace("nofailover: true", "nofailover: yes please"));
    assert!(message.contains("inv.yml:8:"), "{message}");
}

#[test]
fn every_problem_is_reported_at_once_with_its_place() {
    let text = GOOD
        .replace("name: demo", "name: Demo_1")
        .replace("address: 10.231.0.12", "address: 10.231.0.11")
        .replace("name: node3", "name: node1");
    let message = problems(&text);
    assert!(message.contains("has 3 problems"), "{message}");
    assert!(
        message.contains("inv.yml:2:9: cluster.name: `Demo_1` is not a valid cluster name"),
        "{message}"
    );
    assert!(
        message.contains("inv.yml:7:28: nodes[1].address: address `10.231.0.11` is used twice"),
        "{message}"
    );
    assert!(
        message.contains("inv.yml:8:12: nodes[2].name: node name `node1` is used twice"),
        "{message}"
    );
    assert!(message.contains("hint:"), "{message}");
}

#[test]
fn invalid_addresses_are_refused() {
    let message = problems(&GOOD.replace("10.231.0.13", "10.231.0.300"));
    assert!(
        message.contains("inv.yml:8:28: nodes[2].address: `10.231.0.300` is not an IP address"),
        "{message}"
    );
}

#[test]
fn etcd_needs_at_least_three_members() {
    let two = GOOD.replace(
        "tags: {nofailover: true}",
        "roles: [postgres, haproxy, keepalived]",
    );
    assert!(problems(&two).contains("2 etcd members are listed"));
    let one =
        "cluster: {name: solo, postgres_version: 15}\nnodes:\n  - {name: n1, address: 10.0.0.1}\n";
    let message = problems(one);
    assert!(
        message.contains("1 etcd member is listed") && message.contains("single_node_trial"),
        "{message}"
    );
    let trial = one.replace(
        "postgres_version: 15",
        "postgres_version: 15, single_node_trial: true",
    );
    parse(&trial).unwrap();
}

#[test]
fn synchronous_mode_needs_two_postgres_nodes() {
    let text = GOOD
        .replace("vip: 10.231.0.100/24", "synchronous_mode: strict")
        .replace(
            "address: 10.231.0.12}",
            "address: 10.231.0.12, roles: [etcd]}",
        )
        .replace("tags: {nofailover: true}", "roles: [etcd]");
    let message = problems(&text);
    assert!(message.contains("cluster.synchronous_mode: synchronous replication needs at least 2 postgres nodes, 1 listed"), "{message}");
}

#[test]
fn the_vip_must_be_in_the_subnet_and_not_a_node_address() {
    let message = problems(&GOOD.replace("10.231.0.100/24", "10.231.1.100/24"));
    assert!(
        message.contains(
            "inv.yml:4:8: cluster.vip: VIP `10.231.1.100/24` is not in the subnet of `node1`"
        ),
        "{message}"
    );
    let message = problems(&GOOD.replace("10.231.0.100/24", "10.231.0.12/24"));
    assert!(
        message.contains("the VIP equals the address of `node2`"),
        "{message}"
    );
    let message = problems(&GOOD.replace("10.231.0.100/24", "10.231.0.100"));
    assert!(message.contains("prefix length is missing"), "{message}");
}

#[test]
fn patroni_timings_must_be_consistent() {
    let text = GOOD.replace(
        "  vip:",
        "  patroni: {ttl: 20, loop_wait: 10, retry_timeout: 10}\n  vip:",
    );
    let message = problems(&text);
    assert!(
        message.contains(
            "cluster.patroni: loop_wait + 2 * retry_timeout = 10 + 2 * 10 = 30 exceeds ttl 20"
        ),
        "{message}"
    );
    let text = GOOD.replace(
        "  vip:",
        "  patroni: {ttl: 10, loop_wait: 2, retry_timeout: 3}\n  vip:",
    );
    let message = problems(&text);
    assert!(
        message
            .contains("inv.yml:4:18: cluster.patroni.ttl: ttl 10 is below Patroni's minimum of 20"),
        "{message}"
    );
}

#[test]
fn the_connection_hold_is_bounded() {
    assert_eq!(
        parse(GOOD).unwrap().cluster.haproxy.hold_connections_ms,
        5000
    );
    let off = GOOD.replace("  vip:", "  haproxy: {hold_connections_ms: 0}\n  vip:");
    assert_eq!(parse(&off).unwrap().cluster.haproxy.hold_connections_ms, 0);
    let long = GOOD.replace("  vip:", "  haproxy: {hold_connections_ms: 30001}\n  vip:");
    let message = problems(&long);
    assert!(
        message.contains("inv.yml:4:")
            && message.contains(
                "cluster.haproxy.hold_connections_ms: 30001 ms is longer than the 30000 ms"
            )
            && message.contains("0 refuses new connections at once"),
        "{message}"
    );
}

#[test]
fn ports_must_be_distinct() {
    let text = GOOD.replace("  vip:", "  ports: {write: 5000, read: 5000}\n  vip:");
    let message = problems(&text);
    assert!(
        message.contains("cluster.ports.read: port 5000 is already used by `write`"),
        "{message}"
    );
    let text = GOOD.replace("  vip:", "  ports: {read: 8008}\n  vip:");
    assert!(
        problems(&text).contains("cluster.ports.patroni_api: port 8008 is already used by `read`")
    );
}

#[test]
fn only_supported_postgres_versions() {
    let message = problems(&GOOD.replace("postgres_version: 15", "postgres_version: 9"));
    assert!(
        message.contains("inv.yml:3:21: cluster.postgres_version: PostgreSQL 9 is not supported"),
        "{message}"
    );
    let message = problems(&GOOD.replace("postgres_version: 15", "postgres_version: 16"));
    assert!(
        message.contains("supported: 15 (Debian 12, bookworm) or 17 (Debian 13, trixie)"),
        "{message}"
    );
    // Debian 13's PostgreSQL is accepted.
    let trixie = parse(&GOOD.replace("postgres_version: 15", "postgres_version: 17")).unwrap();
    assert_eq!(trixie.cluster.postgres_version, 17);
}

#[test]
fn managed_parameters_and_open_networks_are_refused() {
    let text = GOOD.replace(
        "  vip:",
        "  postgresql: {parameters: {port: 6000, work_mem: 64MB}, client_cidrs: [0.0.0.0/0]}\n  vip:",
    );
    let message = problems(&text);
    assert!(
        message.contains("cluster.postgresql.parameters.port: `port` is managed by pgha"),
        "{message}"
    );
    assert!(
        message.contains(
            "cluster.postgresql.client_cidrs[0]: `0.0.0.0/0` would let the whole internet"
        ),
        "{message}"
    );
    assert!(!message.contains("work_mem"), "{message}");
}

#[test]
fn the_committed_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/pgha-inventory.schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        committed,
        schema(),
        "regenerate with `pgha inventory schema > inventories/pgha-inventory.schema.json`"
    );
}

#[test]
fn an_injection_attempt_in_any_value_is_refused_at_its_place() {
    // (the place the message must name, the inventory line that carries the attempt)
    let attempts = [
        (
            "cluster.name",
            "  name: \"demo; touch /tmp/pwned\"\n",
            "  name: demo\n",
        ),
        (
            "cluster.patroni_version",
            "  patroni_version: \"4.1.5; rm -rf /\"\n",
            "",
        ),
        (
            "cluster.patroni_version",
            "  patroni_version: \"4.1.5/../../x\"\n",
            "",
        ),
        (
            "cluster.vip_interface",
            "  vip_interface: \"eth0\\\"\\n    notify /tmp/x\"\n",
            "",
        ),
        (
            "cluster.vip_interface",
            "  vip_interface: \"eth0 eth1\"\n",
            "",
        ),
        (
            "cluster.versions.postgresql",
            "  versions: {postgresql: \"15.18 && reboot\"}\n",
            "",
        ),
        (
            "cluster.versions.haproxy",
            "  versions: {haproxy: \"latest\"}\n",
            "",
        ),
        (
            "cluster.postgresql.parameters.",
            "  postgresql: {parameters: {\"work_mem: 1\\nwal_level\": minimal}}\n",
            "",
        ),
        (
            "cluster.postgresql.parameters.WAL_LEVEL",
            "  postgresql: {parameters: {WAL_LEVEL: minimal}}\n",
            "",
        ),
        (
            "cluster.postgresql.parameters.max_wal_senders",
            "  postgresql: {parameters: {max_wal_senders: 0}}\n",
            "",
        ),
        (
            "cluster.postgresql.parameters.Max_Replication_Slots",
            "  postgresql: {parameters: {Max_Replication_Slots: 0}}\n",
            "",
        ),
        (
            "cluster.postgresql.parameters.archive_command",
            "  postgresql: {parameters: {archive_command: \"true\\narchive_mode = off\"}}\n",
            "",
        ),
        (
            "cluster.postgresql.parameters.work_mem",
            "  postgresql: {parameters: {work_mem: .nan}}\n",
            "",
        ),
        (
            "cluster.postgresql.client_cidrs[0]",
            "  postgresql: {client_cidrs: [\"10.0.0.0/8 trust\"]}\n",
            "",
        ),
        (
            "cluster.vip",
            "  vip: \"10.231.0.100/24\\n\"\n",
            "  vip: 10.231.0.100/24\n",
        ),
        ("ssh.user", "ssh: {user: \"root -o ProxyCommand=sh\"}\n", ""),
        ("nodes[0].name", "", ""),
        ("nodes[1].address", "", ""),
    ];
    for (place, line, replaces) in attempts {
        let mut text = if replaces.is_empty() {
            GOOD.to_string()
        } else {
            GOOD.replace(replaces, "")
        };
        if place == "ssh.user" {
            text.push_str(line);
        } else if place == "nodes[0].name" {
            text = text.replace("{name: node1,", "{name: \"node1$(reboot)\",");
        } else if place == "nodes[1].address" {
            text = text.replace(
                "address: 10.231.0.12}",
                "address: \"10.231.0.12 -oProxyCommand=x\"}",
            );
        } else {
            text = text.replacen("cluster:\n", &format!("cluster:\n{line}"), 1);
        }
        let message = problems(&text);
        assert!(
            message.contains(place),
            "an attempt in `{place}` is not refused at its place:\n{text}\n{message}"
        );
    }
}
