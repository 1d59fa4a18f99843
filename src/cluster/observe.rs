//! Observing a live cluster: one probe script per node over SSH (in parallel) reports what that
//! node can see — its Patroni member, etcd, HAProxy routing, the VIP, pg_hba, file modes — and
//! the parsers here turn it into plain data. Nothing here changes a host.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::engine::report::Reporter;
use crate::engine::runner::Connections;
use crate::inventory::{Inventory, Node, Role};
use crate::patroni::ClusterView;
pub use crate::patroni::Member;
use crate::ssh::RemoteCommand;

/// What one node reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    /// Why the node could not be probed, if it could not.
    pub unreachable: Option<String>,
    /// `GET /patroni` of this member.
    pub patroni: Option<Value>,
    /// HTTP status of `OPTIONS /primary` on this member (200 = primary holding the lock).
    pub primary_status: Option<u16>,
    /// `GET /cluster` as this member sees it.
    pub cluster: Option<Value>,
    /// `GET /config` (Patroni dynamic configuration).
    pub config: Option<Value>,
    /// HTTP status of an unauthenticated `PATCH /config` without a body (must be 401). It
    /// cannot change anything: without authentication Patroni would answer 411 (no body).
    pub unauthenticated_patch: Option<u16>,
    /// `etcdctl endpoint health/status` for this member, and the member list.
    pub etcd_health: Option<bool>,
    pub etcd_status: Option<Value>,
    pub etcd_members: Option<Value>,
    /// Values of the DCS keys `leader` and `initialize`, read through this node's etcd.
    pub dcs_leader: Option<String>,
    pub dcs_initialize: Option<String>,
    /// Servers in each HAProxy backend and their status (`UP`, `DOWN`, `MAINT`, ...).
    pub haproxy: BTreeMap<String, BTreeMap<String, String>>,
    /// Whether this node holds the VIP.
    pub holds_vip: Option<bool>,
    /// pg_hba rules: `type database user address method`.
    pub hba: Vec<String>,
    /// `mode:owner:group` (octal mode) of files that hold secrets.
    pub secret_file_modes: BTreeMap<String, String>,
    /// Settings PostgreSQL's configuration files hold but it does not run (`name running →
    /// configured`, or `name: error`); `None` when PostgreSQL could not be asked.
    pub not_in_effect: Option<Vec<String>>,
}

/// The probe for `node`: sections `### name` then content, each skipped when the node lacks
/// the role. The etcd endpoints and keys are passed as arguments.
fn probe(inventory: &Inventory, node: &Node) -> RemoteCommand {
    let ports = &inventory.cluster.ports;
    let api = crate::patroni::model::api_at(node.address, ports.patroni_api);
    let mut script = String::from(crate::tls::SHELL_CLIENTS);
    script.push_str("api=\"$1\"; scope=\"$2\"; vip=\"$3\"; stats=\"$4\"; etcd_port=\"$5\"\n");
    if node.has(Role::Postgres) {
        script.push_str(
            r#"echo '### patroni'; curl -s $CURL_TLS --max-time 2 "$api/patroni"; echo
echo '### primary_status'; curl -s $CURL_TLS -o /dev/null --max-time 2 -X OPTIONS -w '%{http_code}' "$api/primary"; echo
echo '### cluster'; curl -s $CURL_TLS --max-time 2 "$api/cluster"; echo
echo '### config'; curl -s $CURL_TLS --max-time 2 "$api/config"; echo
echo '### unauthenticated_patch'; curl -s $CURL_TLS -o /dev/null --max-time 2 -X PATCH -w '%{http_code}' "$api/config"; echo
echo '### hba'; runuser -u postgres -- psql -XAtq -F ' ' -c "select type, array_to_string(database, ','), array_to_string(user_name, ','), coalesce(address, ''), coalesce(netmask, ''), auth_method from pg_hba_file_rules" 2>/dev/null
echo '### not_in_effect'; runuser -u postgres -- psql -XAtq -c "select f.name || coalesce(': ' || f.error, ' ' || s.setting || ' → ' || f.setting) from pg_file_settings f join pg_settings s on s.name = f.name where (f.error is not null or not f.applied) and f.seqno = (select max(seqno) from pg_file_settings g where g.name = f.name)" 2>/dev/null && echo '-- asked'
echo '### modes'; for file in /etc/patroni/patroni.yml /var/lib/postgresql/.pgpass_patroni; do [ -e "$file" ] && echo "$file $(stat -c %a:%U:%G "$file")"; done
"#,
        );
    }
    if node.has(Role::Etcd) {
        script.push_str(
            r#"endpoint="https://127.0.0.1:$etcd_port"
echo '### etcd_health'; etcdctl --endpoints="$endpoint" --command-timeout=2s endpoint health >/dev/null 2>&1 && echo true || echo false
echo '### etcd_status'; etcdctl --endpoints="$endpoint" --command-timeout=2s endpoint status -w json 2>/dev/null; echo
echo '### etcd_members'; etcdctl --endpoints="$endpoint" --command-timeout=2s member list -w json 2>/dev/null; echo
echo '### dcs_leader'; etcdctl --endpoints="$endpoint" --command-timeout=2s get --print-value-only "/service/$scope/leader" 2>/dev/null
echo '### dcs_initialize'; etcdctl --endpoints="$endpoint" --command-timeout=2s get --print-value-only "/service/$scope/initialize" 2>/dev/null
"#,
        );
    }
    if node.has(Role::Haproxy) {
        script.push_str(
            "echo '### haproxy'; curl -s --max-time 2 \"http://127.0.0.1:$stats/;csv\"\n",
        );
    }
    if node.has(Role::Keepalived) && inventory.cluster.vip.is_some() {
        script.push_str(
            "echo '### vip'; ip -o addr show to \"$vip\" | grep -q . && echo true || echo false\n",
        );
    }
    let vip = inventory
        .cluster
        .vip
        .map(|vip| vip.address.to_string())
        .unwrap_or_default();
    RemoteCommand::script(script)
        .arg(api)
        .arg(inventory.cluster.name.clone())
        .arg(vip)
        .arg(ports.haproxy_stats.to_string())
        .arg(ports.etcd_client.to_string())
        .as_root()
}

/// Parse one node's probe output.
pub fn parse(name: &str, address: &str, output: &str) -> NodeView {
    let mut view = NodeView {
        name: name.to_string(),
        address: address.to_string(),
        ..NodeView::default()
    };
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in output.lines() {
        if let Some(section) = line.strip_prefix("### ") {
            current = Some(section.trim().to_string());
            sections.entry(section.trim().to_string()).or_default();
        } else if let Some(section) = &current {
            let text = sections.entry(section.clone()).or_default();
            text.push_str(line);
            text.push('\n');
        }
    }
    let json = |key: &str| {
        sections
            .get(key)
            .and_then(|text| serde_json::from_str::<Value>(text.trim()).ok())
    };
    let code = |key: &str| {
        sections
            .get(key)
            .and_then(|text| text.trim().parse::<u16>().ok())
            .filter(|code| *code > 0)
    };
    let text = |key: &str| {
        sections
            .get(key)
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty())
    };
    view.patroni = json("patroni");
    view.primary_status = code("primary_status");
    view.cluster = json("cluster");
    view.config = json("config");
    view.unauthenticated_patch = code("unauthenticated_patch");
    view.etcd_health = text("etcd_health").map(|text| text == "true");
    view.etcd_status = json("etcd_status");
    view.etcd_members = json("etcd_members");
    view.dcs_leader = text("dcs_leader");
    view.dcs_initialize = text("dcs_initialize");
    view.holds_vip = text("vip").map(|text| text == "true");
    if let Some(csv) = sections.get("haproxy") {
        view.haproxy = parse_haproxy_csv(csv);
    }
    if let Some(hba) = sections.get("hba") {
        view.hba = hba
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_string)
            .collect();
    }
    view.not_in_effect = sections
        .get("not_in_effect")
        .filter(|text| text.lines().any(|line| line == "-- asked"))
        .map(|text| {
            text.lines()
                .filter(|line| !line.trim().is_empty() && *line != "-- asked")
                .map(str::to_string)
                .collect()
        });
    if let Some(modes) = sections.get("modes") {
        view.secret_file_modes = modes
            .lines()
            .filter_map(|line| line.rsplit_once(' '))
            .map(|(file, mode)| (file.to_string(), mode.to_string()))
            .collect();
    }
    view
}

/// HAProxy's `show stat` CSV: backend → server → status (column 18).
pub fn parse_haproxy_csv(csv: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut backends: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in csv.lines().filter(|line| !line.starts_with('#')) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() > 17
            && fields[1] != "FRONTEND"
            && fields[1] != "BACKEND"
            && !fields[0].is_empty()
        {
            backends
                .entry(fields[0].to_string())
                .or_default()
                .insert(fields[1].to_string(), fields[17].to_string());
        }
    }
    backends
}

/// Probe every node in parallel (one SSH round trip each).
pub async fn observe(inventory: Arc<Inventory>, connections: Arc<Connections>) -> Vec<NodeView> {
    let reporter = Arc::new(Reporter::new(true, Vec::new(), Vec::new()));
    let mut handles = Vec::new();
    for node in inventory.nodes.clone() {
        let (inventory, connections, reporter) =
            (inventory.clone(), connections.clone(), reporter.clone());
        handles.push(tokio::spawn(async move {
            let address = node.address.to_string();
            let unreachable = |reason: String| NodeView {
                name: node.name.clone(),
                address: address.clone(),
                unreachable: Some(reason),
                ..NodeView::default()
            };
            let session = match connections.get(&node, &reporter).await {
                Ok(session) => session,
                Err(reason) => return unreachable(reason),
            };
            match session.run(&probe(&inventory, &node)).await {
                Ok(output) => parse(&node.name, &address, &output.stdout_text()),
                Err(error) => unreachable(format!("{error:#}")),
            }
        }));
    }
    let mut views = Vec::new();
    for handle in handles {
        if let Ok(view) = handle.await {
            views.push(view);
        }
    }
    views
}

/// The members as the first node that answered `/cluster` sees them.
pub fn members(views: &[NodeView]) -> Vec<Member> {
    views
        .iter()
        .find_map(|view| view.cluster.as_ref())
        .map(|cluster| ClusterView::from_json(cluster).members)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_and_tolerates_garbage() {
        let output = "### patroni\n{\"role\": \"primary\", \"timeline\": 2}\n### primary_status\n200\n### cluster\nnot json\n### haproxy\n# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\npgha_write,node1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP\npgha_write,node2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN\npgha_write,BACKEND,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP\n### vip\ntrue\n### modes\n/etc/patroni/patroni.yml 640:root:postgres\n### hba\nlocal all all  peer\n### not_in_effect\nmax_connections 120 → 100\n-- asked\n";
        let view = parse("node1", "10.0.0.1", output);
        assert_eq!(
            view.not_in_effect.as_deref(),
            Some(&["max_connections 120 → 100".to_string()][..])
        );
        assert_eq!(view.patroni.unwrap()["role"], "primary");
        assert_eq!(view.primary_status, Some(200));
        assert!(view.cluster.is_none());
        assert_eq!(view.haproxy["pgha_write"]["node1"], "UP");
        assert_eq!(view.haproxy["pgha_write"]["node2"], "DOWN");
        assert!(!view.haproxy["pgha_write"].contains_key("BACKEND"));
        assert_eq!(view.holds_vip, Some(true));
        assert_eq!(
            view.secret_file_modes["/etc/patroni/patroni.yml"],
            "640:root:postgres"
        );
        assert_eq!(view.hba, ["local all all  peer"]);
        let empty = parse(
            "n",
            "a",
            "\u{0}garbage\n### primary_status\n000\n### not_in_effect\n",
        );
        assert_eq!(empty.primary_status, None);
        assert_eq!(empty.not_in_effect, None);
    }

    #[test]
    fn members_come_from_the_first_cluster_view() {
        let view = NodeView {
            cluster: Some(serde_json::json!({"members": [
            {"name": "node1", "role": "leader", "state": "running", "host": "10.0.0.1", "timeline": 3},
            {"name": "node2", "role": "sync_standby", "state": "streaming", "host": "10.0.0.2", "timeline": 3, "lag": 0}
            ]})),
            ..NodeView::default()
        };
        let members = members(&[NodeView::default(), view]);
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].lag, None);
        assert_eq!(members[1].role, crate::patroni::Role::SyncStandby);
    }
}
