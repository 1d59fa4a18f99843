//! Facts: what a host looks like, read in one round trip by one probe script and parsed into
//! typed values. Parsers never trust the output: garbage lines are skipped, not fatal.

use std::collections::{BTreeMap, BTreeSet};

use crate::ssh::RemoteCommand;

/// Everything the engine knows about one host, as of the last probe.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Facts {
    pub os: Os,
    /// Installed packages and their versions.
    pub packages: BTreeMap<String, String>,
    pub units: BTreeMap<String, Unit>,
    pub files: BTreeMap<String, FileFact>,
    pub users: BTreeSet<String>,
    pub listening_ports: BTreeSet<u16>,
    /// What the local Patroni and PostgreSQL say, when a task asked ([`Probe::patroni`]).
    pub patroni: Option<PatroniFacts>,
}

/// The local member's view of the Patroni cluster, and the hot-standby limits its data
/// directory says the primary last ran with.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PatroniFacts {
    /// `GET /config`; `None` when Patroni did not answer.
    pub config: Option<serde_json::Value>,
    /// `GET /cluster`; `None` when Patroni did not answer.
    pub cluster: Option<crate::patroni::ClusterView>,
    /// The hot-standby limits the cluster last WAL-logged (`pg_controldata`), by setting name.
    pub logged_limits: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Os {
    pub id: String,
    pub version_id: String,
    pub pretty_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unit {
    /// `loaded`, `not-found`, `masked`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active_state: String,
    /// `enabled`, `disabled`, `static`, ... (empty when unknown)
    pub unit_file_state: String,
    /// Monotonic microseconds of the last start; changes exactly when the unit (re)starts.
    pub active_enter_monotonic: u64,
    /// What systemd loaded differs from the file on disk (a run cut off after writing it and
    /// before `daemon-reload`): starting it now would start the old definition. Either the
    /// loaded file changed (`NeedDaemonReload`), or a file in `/etc/systemd/system` now
    /// overrides the package's one systemd still has loaded (which `NeedDaemonReload` misses).
    pub needs_daemon_reload: bool,
    /// The file systemd loaded the unit from.
    pub fragment_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FileFact {
    Absent,
    File {
        owner: String,
        group: String,
        mode: u32,
        size: u64,
        /// Modification time, seconds since the epoch.
        mtime: i64,
        /// `None` for a path probed by size and modification time only ([`Probe::quick`]).
        sha256: Option<String>,
    },
    Directory {
        owner: String,
        group: String,
        mode: u32,
    },
    Other,
}

/// What a probe should look at beyond the always-gathered OS, packages, users and ports.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub units: BTreeSet<String>,
    /// Paths read in full: a file's SHA-256 is computed on the host.
    pub paths: BTreeSet<String>,
    /// Paths whose files are compared by size and modification time only, like rsync's quick
    /// check: hashing a large binary on every host on every run is what a no-op run can't afford.
    pub quick: BTreeSet<String>,
    /// The local Patroni REST API (`http://host:port`) and PostgreSQL port to ask.
    pub patroni: Option<(String, u16)>,
}

impl Probe {
    /// Whether every unit and path of `other` is already covered by this probe.
    pub fn covers(&self, other: &Probe) -> bool {
        other.units.is_subset(&self.units)
            && other.paths.is_subset(&self.paths)
            && other
                .quick
                .iter()
                .all(|path| self.quick.contains(path) || self.paths.contains(path))
            && (other.patroni.is_none() || other.patroni == self.patroni)
    }

    pub fn extend(&mut self, other: Probe) {
        self.units.extend(other.units);
        self.paths.extend(other.paths);
        self.quick.extend(other.quick);
        if other.patroni.is_some() {
            self.patroni = other.patroni;
        }
    }

    /// The probe as one remote command; the Patroni API and PostgreSQL port (or two empty
    /// words) first, then unit names, paths and quick paths as positional arguments (quoted by
    /// the transport), the three lists separated by `--`.
    pub fn command(&self) -> RemoteCommand {
        let script = crate::tls::SHELL_CLIENTS.to_string()
            + r#"
patroni_api="$1"; pg_port="$2"; shift 2
if [ -n "$patroni_api" ]; then
  echo '### patroni_config'; curl -s $CURL_TLS --max-time 3 "$patroni_api/config"; echo
  echo '### patroni_cluster'; curl -s $CURL_TLS --max-time 3 "$patroni_api/cluster"; echo
  echo '### logged_limits'
  data=$(runuser -u postgres -- psql -XAtq -p "$pg_port" -c 'show data_directory' 2>/dev/null)
  bin=$(runuser -u postgres -- psql -XAtq -p "$pg_port" -c "select setting from pg_config where name = 'BINDIR'" 2>/dev/null)
  [ -n "$data" ] && [ -x "$bin/pg_controldata" ] && runuser -u postgres -- "$bin/pg_controldata" "$data" 2>/dev/null | grep ' setting:'
fi
echo '### os'; cat /etc/os-release 2>/dev/null
echo '### packages'; dpkg-query -W -f='${db:Status-Abbrev}\t${Package}\t${Version}\n' 2>/dev/null
echo '### users'; getent passwd | cut -d: -f1
echo '### ports'; ss -Hltn 2>/dev/null | awk '{print $4}'
units=""; while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do units="$units $1"; shift; done; [ "$#" -gt 0 ] && shift
echo '### units'
if [ -n "$units" ]; then systemctl show --property=Id,LoadState,ActiveState,UnitFileState,ActiveEnterTimestampMonotonic,NeedDaemonReload,FragmentPath $units 2>/dev/null; fi
echo '### unit_files'
for unit in $units; do file="/etc/systemd/system/${unit%.service}.service"; [ -e "$file" ] && echo "$file"; done
echo '### files'
quick=no
for path in "$@"; do
  if [ "$path" = "--" ]; then quick=yes; continue; fi
  if [ -L "$path" ] || { [ -e "$path" ] && [ ! -f "$path" ] && [ ! -d "$path" ]; }; then printf 'other\t\t\t\t\t\t\t%s\n' "$path"
  elif [ -d "$path" ]; then printf 'dir\t%s\t\t\t\t%s\n' "$(stat --printf '%U\t%G\t%a' "$path")" "$path"
  elif [ -f "$path" ]; then
    if [ "$quick" = yes ]; then sum=-; else sum=$(sha256sum < "$path" | cut -d' ' -f1); fi
    printf 'file\t%s\t%s\t%s\n' "$(stat --printf '%U\t%G\t%a\t%s\t%Y' "$path")" "$sum" "$path"
  else printf 'absent\t\t\t\t\t\t\t%s\n' "$path"; fi
done
"#;
        let (api, port) = match &self.patroni {
            Some((api, port)) => (api.clone(), port.to_string()),
            None => (String::new(), String::new()),
        };
        let mut command = RemoteCommand::script(script).as_root().arg(api).arg(port);
        for unit in &self.units {
            command = command.arg(unit.clone());
        }
        command = command.arg("--");
        for path in &self.paths {
            command = command.arg(path.clone());
        }
        command = command.arg("--");
        for path in self.quick.difference(&self.paths) {
            command = command.arg(path.clone());
        }
        command
    }
}

/// Parse the probe's output.
pub fn parse(output: &str) -> Facts {
    let mut facts = Facts::default();
    let mut section = "";
    let mut unit_block: Vec<&str> = Vec::new();
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            if section == "units" {
                add_unit(&mut facts, &unit_block);
                unit_block.clear();
            }
            section = name.trim();
            continue;
        }
        match section {
            "os" => parse_os_line(&mut facts.os, line),
            "packages" => {
                let fields: Vec<&str> = line.split('\t').collect();
                // `ii` = wanted install, installed; anything else (rc, iU, ...) is not usable.
                if let [status, name, version] = fields[..] {
                    if status.trim() == "ii" && !name.is_empty() {
                        facts.packages.insert(name.to_string(), version.to_string());
                    }
                }
            }
            "users" if !line.is_empty() && !line.contains(char::is_whitespace) => {
                facts.users.insert(line.to_string());
            }
            "ports" => {
                if let Some(port) = line.rsplit(':').next().and_then(|port| port.parse().ok()) {
                    facts.listening_ports.insert(port);
                }
            }
            "units" => {
                if line.is_empty() {
                    add_unit(&mut facts, &unit_block);
                    unit_block.clear();
                } else {
                    unit_block.push(line);
                }
            }
            "unit_files" => {
                let overriding = line.trim();
                let id = overriding
                    .strip_prefix("/etc/systemd/system/")
                    .and_then(|file| file.strip_suffix(".service"));
                if let Some(unit) = id.and_then(|id| facts.units.get_mut(id)) {
                    if unit.load_state == "loaded" && unit.fragment_path != overriding {
                        unit.needs_daemon_reload = true;
                    }
                }
            }
            "files" => {
                if let Some((path, fact)) = parse_file_line(line) {
                    facts.files.insert(path, fact);
                }
            }
            "patroni_config" | "patroni_cluster" | "logged_limits" => {
                let patroni = facts.patroni.get_or_insert_with(PatroniFacts::default);
                parse_patroni_line(patroni, section, line);
            }
            _ => {}
        }
    }
    if section == "units" {
        add_unit(&mut facts, &unit_block);
    }
    facts
}

fn parse_patroni_line(patroni: &mut PatroniFacts, section: &str, line: &str) {
    if line.trim().is_empty() {
        return;
    }
    match section {
        "patroni_config" => patroni.config = serde_json::from_str(line).ok(),
        "patroni_cluster" => {
            patroni.cluster = serde_json::from_str(line)
                .ok()
                .map(|value| crate::patroni::ClusterView::from_json(&value))
        }
        _ => {
            if let Some((name, value)) = crate::patroni::model::controldata_limit(line) {
                patroni.logged_limits.insert(name, value);
            }
        }
    }
}

fn parse_os_line(os: &mut Os, line: &str) {
    let Some((key, value)) = line.split_once('=') else {
        return;
    };
    let value = value.trim().trim_matches('"').to_string();
    match key.trim() {
        "ID" => os.id = value,
        "VERSION_ID" => os.version_id = value,
        "PRETTY_NAME" => os.pretty_name = value,
        _ => {}
    }
}

fn add_unit(facts: &mut Facts, block: &[&str]) {
    let mut id = None;
    let mut unit = Unit::default();
    for line in block {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "Id" => id = Some(value.to_string()),
            "LoadState" => unit.load_state = value.to_string(),
            "ActiveState" => unit.active_state = value.to_string(),
            "UnitFileState" => unit.unit_file_state = value.to_string(),
            "ActiveEnterTimestampMonotonic" => {
                unit.active_enter_monotonic = value.parse().unwrap_or(0)
            }
            "NeedDaemonReload" => unit.needs_daemon_reload = value == "yes",
            "FragmentPath" => unit.fragment_path = value.to_string(),
            _ => {}
        }
    }
    if let Some(id) = id.filter(|id| !id.is_empty()) {
        facts
            .units
            .insert(id.trim_end_matches(".service").to_string(), unit);
    }
}

fn parse_file_line(line: &str) -> Option<(String, FileFact)> {
    let fields: Vec<&str> = line.splitn(8, '\t').collect();
    let [kind, owner, group, mode, size, mtime, checksum, path] = fields[..] else {
        return None;
    };
    if path.is_empty() {
        return None;
    }
    let mode = u32::from_str_radix(mode, 8);
    let fact = match (kind, mode) {
        ("absent", _) => FileFact::Absent,
        ("other", _) => FileFact::Other,
        ("dir", Ok(mode)) => FileFact::Directory {
            owner: owner.into(),
            group: group.into(),
            mode,
        },
        ("file", Ok(mode)) => FileFact::File {
            owner: owner.into(),
            group: group.into(),
            mode,
            size: size.parse().ok()?,
            mtime: mtime.parse().ok()?,
            sha256: match checksum {
                "-" => None,
                sum if sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(sum.to_string())
                }
                _ => return None,
            },
        },
        _ => return None,
    };
    Some((path.to_string(), fact))
}

/// The unit key used in [`Facts::units`]: `etcd` for `etcd` or `etcd.service`.
pub fn unit_key(name: &str) -> &str {
    name.trim_end_matches(".service")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "### os
PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"
ID=debian
VERSION_ID=\"12\"
### packages
ii \tetcd-server\t3.4.23-4+b6
rc \told-thing\t1.0
ii \thaproxy\t2.6.12-1+deb12u1
garbage without tabs
### users
root
postgres
### ports
0.0.0.0:22
[::]:22
10.231.0.11:2379
### units
Id=etcd.service
LoadState=loaded
ActiveState=active
UnitFileState=enabled
ActiveEnterTimestampMonotonic=123456
NeedDaemonReload=yes

Id=patroni.service
LoadState=not-found
ActiveState=inactive
UnitFileState=
ActiveEnterTimestampMonotonic=0

Id=keepalived.service
LoadState=loaded
ActiveState=active
UnitFileState=enabled
ActiveEnterTimestampMonotonic=7
NeedDaemonReload=no
FragmentPath=/lib/systemd/system/keepalived.service

Id=haproxy.service
LoadState=loaded
ActiveState=active
UnitFileState=enabled
ActiveEnterTimestampMonotonic=8
NeedDaemonReload=no
FragmentPath=/etc/systemd/system/haproxy.service
### unit_files
/etc/systemd/system/keepalived.service
/etc/systemd/system/haproxy.service
### files
file\tpostgres\tpostgres\t600\t1234\t1764115200\t0123456789012345678901234567890123456789012345678901234567890123\t/etc/patroni/patroni.yml
file\troot\troot\t755\t62000000\t1764115201\t-\t/usr/local/bin/pgha
dir\troot\troot\t755\t\t\t\t/etc/patroni
absent\t\t\t\t\t\t\t/etc/nothing here
file\troot\troot\tzzz\t1\t1\tabc\t/broken
file\troot\troot\t644\tbig\t1\t-\t/bad-size
";

    #[test]
    fn parses_every_section() {
        let facts = parse(SAMPLE);
        assert_eq!(facts.os.id, "debian");
        assert_eq!(facts.os.version_id, "12");
        assert_eq!(
            facts.packages.get("etcd-server").map(String::as_str),
            Some("3.4.23-4+b6")
        );
        assert!(!facts.packages.contains_key("old-thing"));
        assert_eq!(facts.packages.len(), 2);
        assert!(facts.users.contains("postgres"));
        assert_eq!(facts.listening_ports, [22, 2379].into_iter().collect());
        assert_eq!(facts.units["etcd"].active_state, "active");
        assert_eq!(facts.units["etcd"].active_enter_monotonic, 123456);
        assert_eq!(facts.units["patroni"].load_state, "not-found");
        assert!(facts.units["etcd"].needs_daemon_reload);
        assert!(!facts.units["patroni"].needs_daemon_reload);
        // A file in /etc/systemd/system that systemd has not loaded yet (the package's is).
        assert!(facts.units["keepalived"].needs_daemon_reload);
        assert!(!facts.units["haproxy"].needs_daemon_reload);
        assert!(
            matches!(&facts.files["/etc/patroni/patroni.yml"], FileFact::File { mode: 0o600, owner, .. } if owner == "postgres")
        );
        assert!(matches!(
            facts.files["/etc/patroni"],
            FileFact::Directory { mode: 0o755, .. }
        ));
        assert_eq!(facts.files["/etc/nothing here"], FileFact::Absent);
        assert!(matches!(
            &facts.files["/usr/local/bin/pgha"],
            FileFact::File {
                size: 62000000,
                mtime: 1764115201,
                sha256: None,
                ..
            }
        ));
        assert!(!facts.files.contains_key("/broken"));
        assert!(!facts.files.contains_key("/bad-size"));
    }

    #[test]
    fn patroni_sections_parse_when_present() {
        let output = "### patroni_config\n{\"ttl\": 30}\n### patroni_cluster\n{\"members\": [{\"name\": \"node1\", \"role\": \"leader\", \"state\": \"running\", \"pending_restart\": true}]}\n### logged_limits\nmax_connections setting:              120\ngarbage\n### os\nID=debian\n";
        let facts = parse(output);
        let patroni = facts.patroni.expect("patroni facts");
        assert_eq!(patroni.config, Some(serde_json::json!({"ttl": 30})));
        let cluster = patroni.cluster.expect("cluster");
        assert!(cluster.members[0].pending_restart);
        assert_eq!(patroni.logged_limits.len(), 1);
        assert_eq!(patroni.logged_limits["max_connections"], 120);
        assert!(parse(SAMPLE).patroni.is_none());
        let silent = parse("### patroni_config\n\n### patroni_cluster\nnot json\n").patroni;
        assert_eq!(silent, Some(PatroniFacts::default()));
    }

    #[test]
    fn garbage_gives_empty_facts_not_a_panic() {
        for garbage in [
            "",
            "\u{0}\u{1}binary",
            "### units\nId=\n\n\n",
            "### files\n\t\t\t\t\t\n",
            "### files\n\t\t\t\t\t\t\t\n",
            "### ports\n:::\n:99999\n",
        ] {
            let facts = parse(garbage);
            assert!(
                facts.units.is_empty()
                    && facts.files.is_empty()
                    && facts.listening_ports.is_empty(),
                "{garbage:?}"
            );
        }
    }
}
