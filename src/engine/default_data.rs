//! The `default_data` module: remove the data a package's own scripts created (PostgreSQL's
//! default `main` cluster, etcd's `default` member) so that Patroni and pgha's etcd own their
//! directories, and never remove data pgha did not create.
//!
//! Data is removed only when pgha's own package step created it (the step notes which default
//! data does not exist before it installs, and claims in [`CREATED_BY_PGHA_DIR`] what the
//! install then created), or when it is provably empty, or when the user said
//! `--force-remove-stray-data`. Otherwise the task fails, naming what it found. The claim is
//! removed with the data.
//!
//! "Provably empty" for PostgreSQL: the cluster is cleanly shut down and its last checkpoint's
//! `NextOID` is below 16384 (`FirstNormalObjectId`). `initdb` leaves it there, and the first
//! object created afterwards (a database, a table, a role, a large object) moves it to 16384 or
//! beyond, so no user data can exist below it. For etcd: the directory holds no `member` data.

use anyhow::{bail, Context};
use serde::Deserialize;

use super::modules::{checked, Applied, CREATED_BY_PGHA_DIR};
use crate::ssh::{RemoteCommand, Session};

/// PostgreSQL's first OID for objects created after `initdb`.
const FIRST_NORMAL_OBJECT_ID: u64 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The `main` cluster `postgresql-common` creates for a new `postgresql-<version>`.
    Postgres,
    /// `/var/lib/etcd/default`, the member directory of Debian's default `etcd` service.
    Etcd,
}

/// Where the component's default data is known to exist (the task plans nothing without it).
pub fn marker_path(component: Component, version: &str) -> String {
    match component {
        Component::Postgres => format!("/etc/postgresql/{version}/main"),
        Component::Etcd => "/var/lib/etcd/default".to_string(),
    }
}

/// What the inspection found on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// pgha's package step created this data (it did not exist before pgha installed the
    /// package that creates it).
    pub created_by_pgha: bool,
    /// PostgreSQL: `pg_lsclusters` status (`online`, `down`, ...).
    pub status: String,
    /// PostgreSQL: the data directory.
    pub data_directory: String,
    /// PostgreSQL: `pg_controldata`'s "Database cluster state".
    pub state: String,
    /// PostgreSQL: the last checkpoint's NextOID.
    pub next_oid: Option<u64>,
    /// etcd: the directory holds member data (`member/`).
    pub has_member_data: bool,
}

/// The verdict on the default data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Remove it; why that is safe.
    Remove(String),
    /// Leave it and fail the task; the message and hint.
    Refuse(String),
}

/// Decide from what the host showed. Pure, so every way to decide has a unit test.
pub fn judge(component: Component, version: &str, found: &Found, force: bool) -> Verdict {
    if found.created_by_pgha {
        return Verdict::Remove("pgha's package step created it".into());
    }
    match component {
        Component::Postgres => {
            let clean = found.status == "down" && found.state == "shut down";
            match found.next_oid {
                Some(next_oid) if clean && next_oid < FIRST_NORMAL_OBJECT_ID => {
                    return Verdict::Remove(format!(
                        "provably empty: shut down cleanly with NextOID {next_oid} < {FIRST_NORMAL_OBJECT_ID}, no object was ever created in it"
                    ))
                }
                _ => {}
            }
            if force {
                return Verdict::Remove("--force-remove-stray-data".into());
            }
            let evidence = match found.next_oid {
                _ if found.status != "down" => format!("it is {}", or_unknown(&found.status)),
                Some(next_oid) if next_oid >= FIRST_NORMAL_OBJECT_ID => format!(
                    "objects were created in it (NextOID {next_oid} >= {FIRST_NORMAL_OBJECT_ID})"
                ),
                _ => format!(
                    "its state is `{}`, which proves nothing",
                    or_unknown(&found.state)
                ),
            };
            Verdict::Refuse(format!(
                "this host has a PostgreSQL {version} cluster `main` (data in `{}`) that pgha did not create and cannot prove empty: {evidence}; pgha will not drop it\nhint: keep its data elsewhere and drop it yourself (`pg_dropcluster --stop {version} main`), or run the deploy with `--force-remove-stray-data` to let pgha drop it",
                or_unknown(&found.data_directory)
            ))
        }
        Component::Etcd => {
            if !found.has_member_data {
                return Verdict::Remove("it holds no member data".into());
            }
            if force {
                return Verdict::Remove("--force-remove-stray-data".into());
            }
            Verdict::Refuse(
                "this host has etcd member data in `/var/lib/etcd/default` that pgha did not create; pgha will not remove it\nhint: if no etcd cluster needs it, move it away yourself, or run the deploy with `--force-remove-stray-data` to let pgha remove it".into(),
            )
        }
    }
}

fn or_unknown(text: &str) -> &str {
    if text.is_empty() {
        "unknown"
    } else {
        text
    }
}

/// The claim pgha's package step leaves for the default data it created (`$1` the version).
fn claim(component: Component) -> String {
    match component {
        Component::Postgres => format!("{CREATED_BY_PGHA_DIR}/postgresql-$1-main"),
        Component::Etcd => format!("{CREATED_BY_PGHA_DIR}/etcd-default"),
    }
}

/// A read-only script printing `key=value` lines for [`parse`]; `$1` is the version. Tools
/// run with `LC_ALL=C`: `pg_controldata` translates its labels.
fn inspection(component: Component) -> String {
    // `.pending`: pgha noted the data absent right before its own install, which was cut off
    // (a signal) before it could claim what it created.
    let mut script = format!(
        "export LC_ALL=C\n{{ [ -e \"{claim}\" ] || [ -e \"{claim}.pending\" ]; }} && echo created_by_pgha=yes\n",
        claim = claim(component)
    );
    match component {
        Component::Postgres => script.push_str(
            r#"line=$(pg_lsclusters -h "$1" main 2>/dev/null | head -n 1)
[ -n "$line" ] || exit 0
set -- $1 $line
echo "status=$5"
echo "data_directory=$7"
/usr/lib/postgresql/$1/bin/pg_controldata "$7" 2>/dev/null | sed -n -e 's/^Database cluster state: *\(.*\)$/state=\1/p' -e 's/^Latest checkpoint.s NextOID: *\([0-9]*\)$/next_oid=\1/p'
"#,
        ),
        Component::Etcd => {
            script.push_str("[ -e /var/lib/etcd/default/member ] && echo has_member_data=yes\n")
        }
    }
    script.push_str("exit 0\n");
    script
}

/// Read the inspection's `key=value` lines; unknown keys are ignored.
pub fn parse(text: &str) -> Found {
    let mut found = Found::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().to_string();
        match key {
            "created_by_pgha" => found.created_by_pgha = value == "yes",
            "status" => found.status = value,
            "data_directory" => found.data_directory = value,
            "state" => found.state = value,
            "next_oid" => found.next_oid = value.parse().ok(),
            "has_member_data" => found.has_member_data = value == "yes",
            _ => {}
        }
    }
    found
}

/// Drop the `main` cluster (`$1` the version). A cluster `postgresql-common` does not list is
/// what a `pg_createcluster` or `pg_dropcluster` cut off part-way leaves (a configuration
/// directory without its `postgresql.conf`, a data directory `initdb` never finished), or one
/// that a process of an interrupted run, still going on the node, removed since the facts
/// were read. `pg_dropcluster` leaves the first's data directory behind and fails on the
/// second ("specified cluster does not exist", seen in CI), so their directories are removed
/// directly, except a data directory Patroni already runs (a cluster named `main` shares the
/// path).
const DROP_POSTGRES_MAIN: &str = r#"if [ -n "$(pg_lsclusters -h "$1" main 2>/dev/null)" ]; then
  pg_dropcluster --stop "$1" main
else
  rm -rf -- "/etc/postgresql/$1/main"
  [ -e "/var/lib/postgresql/$1/main/patroni.dynamic.json" ] || rm -rf -- "/var/lib/postgresql/$1/main"
fi"#;

/// Inspect, judge, and remove or refuse.
pub async fn apply(
    session: &Session,
    component: Component,
    version: &str,
    force: bool,
) -> anyhow::Result<Applied> {
    let inspect = RemoteCommand::script(inspection(component))
        .arg(version)
        .as_root();
    let output = checked(session, inspect)
        .await
        .context("cannot inspect the default data")?;
    let found = parse(&output.stdout_text());
    let reason = match judge(component, version, &found, force) {
        Verdict::Refuse(message) => bail!("{message}"),
        Verdict::Remove(reason) => reason,
    };
    let remove = match component {
        Component::Postgres => DROP_POSTGRES_MAIN,
        Component::Etcd => "rm -rf -- /var/lib/etcd/default",
    };
    let script = format!(
        "{remove} && rm -f \"{claim}\" \"{claim}.pending\"",
        claim = claim(component)
    );
    checked(
        session,
        RemoteCommand::script(script).arg(version).as_root(),
    )
    .await
    .context("removing the default data failed")?;
    Ok(Applied::DoneBecause(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postgres(status: &str, state: &str, next_oid: Option<u64>) -> Found {
        Found {
            status: status.into(),
            data_directory: "/var/lib/postgresql/15/main".into(),
            state: state.into(),
            next_oid,
            ..Found::default()
        }
    }

    #[test]
    fn postgres_main_is_dropped_only_when_pgha_made_it_or_it_is_provably_empty() {
        let pg = Component::Postgres;
        let made = Found {
            created_by_pgha: true,
            ..postgres("online", "in production", Some(20000))
        };
        assert!(matches!(judge(pg, "15", &made, false), Verdict::Remove(_)));
        let fresh = postgres("down", "shut down", Some(13572));
        assert!(
            matches!(judge(pg, "15", &fresh, false), Verdict::Remove(reason) if reason.contains("provably empty"))
        );

        for (found, evidence) in [
            (
                postgres("down", "shut down", Some(16387)),
                "NextOID 16387 >= 16384",
            ),
            (
                postgres("online", "in production", Some(13572)),
                "it is online",
            ),
            (
                postgres("down", "in production", Some(13572)),
                "state is `in production`",
            ),
            (postgres("down", "shut down", None), "state is `shut down`"),
            (Found::default(), "it is unknown"),
        ] {
            match judge(pg, "15", &found, false) {
                Verdict::Refuse(message) => {
                    assert!(message.contains(evidence), "{evidence}: {message}");
                    assert!(message.contains("--force-remove-stray-data"), "{message}");
                }
                other => panic!("{found:?} must be refused, got {other:?}"),
            }
            assert_eq!(
                judge(pg, "15", &found, true),
                Verdict::Remove("--force-remove-stray-data".into())
            );
        }
    }

    #[test]
    fn etcd_default_member_data_is_kept_unless_pgha_made_it_or_forced() {
        let etcd = Component::Etcd;
        assert!(matches!(
            judge(etcd, "", &Found::default(), false),
            Verdict::Remove(_)
        ));
        let data = Found {
            has_member_data: true,
            ..Found::default()
        };
        assert!(matches!(judge(etcd, "", &data, false), Verdict::Refuse(_)));
        assert!(matches!(judge(etcd, "", &data, true), Verdict::Remove(_)));
    }

    #[test]
    fn the_inspection_output_is_parsed() {
        let found = parse(
            "created_by_pgha=yes\nstatus=down\ndata_directory=/var/lib/postgresql/15/main\nstate=shut down\nnext_oid=13572\nnoise\n",
        );
        assert_eq!(
            found,
            Found {
                created_by_pgha: true,
                ..postgres("down", "shut down", Some(13572))
            }
        );
    }
}
