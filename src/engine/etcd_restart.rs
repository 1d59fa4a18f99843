//! The `etcd_restart` module: restart an etcd member that runs an older configuration than the
//! one on disk, one member at a time (the playbook's `serial: 1` and the health wait after it).
//!
//! Decided from the host, not from this run's changes, so a restart a failed run owed is still
//! made. The configuration a member last started with is kept beside it as `<config>.applied`.
//! A running member is stale when:
//! - the record is at least as new as the member's start: its settings differ from the record's,
//!   or the unit file is newer than the record. The bootstrap-only `initial-*` settings do not
//!   count: a member with data ignores them, and they change whenever a member joins or leaves;
//! - otherwise (started by hand after the record, before a record existed, or still starting
//!   and blocked until quorum): the configuration or unit was written after the member started.
//!
//! A member that is not running starts with what is on disk; either way the record becomes the
//! file on disk.

use anyhow::{bail, Context};

use super::modules::Applied;
use crate::ssh::{RemoteCommand, Session};

/// What the task needs, rendered at plan time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// The member's configuration file.
    pub config: String,
    /// Its systemd unit file.
    pub unit: String,
}

/// The member as read from its host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `systemctl is-active etcd`.
    pub state: String,
    /// The main process's start, seconds since the epoch (none when not running).
    pub started: Option<i64>,
    /// Modification times, seconds since the epoch (`applied` none when there is no record).
    pub config_mtime: i64,
    pub unit_mtime: i64,
    pub applied_mtime: Option<i64>,
    /// The files' text.
    pub config: String,
    pub applied: Option<String>,
}

/// What to do with the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not running: it will start with what is on disk.
    NotRunning,
    /// Running what is on disk.
    Current,
    /// Running an older configuration; why.
    Stale(String),
}

impl Observed {
    fn running(&self) -> bool {
        matches!(self.state.as_str(), "active" | "activating" | "reloading")
    }
}

/// The settings that matter to a running member: every line but the `initial-*` ones.
fn settings(config: &str) -> Vec<&str> {
    config
        .lines()
        .filter(|line| !line.starts_with("initial-"))
        .collect()
}

pub fn decide(observed: &Observed) -> Decision {
    if !observed.running() {
        return Decision::NotRunning;
    }
    let Some(started) = observed.started else {
        return Decision::Stale("running, but its start time is unknown".into());
    };
    match (&observed.applied, observed.applied_mtime) {
        (Some(applied), Some(recorded)) if recorded >= started => {
            if settings(&observed.config) != settings(applied) {
                Decision::Stale("its configuration changed since it started".into())
            } else if observed.unit_mtime > recorded {
                Decision::Stale("its unit changed since it started".into())
            } else {
                Decision::Current
            }
        }
        _ => {
            if observed.config_mtime.max(observed.unit_mtime) > started {
                Decision::Stale("its configuration or unit was written after it started".into())
            } else {
                Decision::Current
            }
        }
    }
}

/// Read the member (`$1` the configuration, `$2` the unit): `key=value` lines, then the two
/// files after their `###` headers, every line of theirs prefixed with `|` (so no line of a
/// file can pass for a header, and a file without a final newline cannot swallow one). The
/// start time in seconds since the epoch (`--timestamp=unix`), never in the host's zone.
const READ: &str = r#"echo "state=$(systemctl is-active etcd)"
started=$(systemctl show --timestamp=unix -p ExecMainStartTimestamp --value etcd)
echo "started=${started#@}"
echo "config_mtime=$(stat -c %Y "$1")"; echo "unit_mtime=$(stat -c %Y "$2")"
[ -e "$1.applied" ] && echo "applied_mtime=$(stat -c %Y "$1.applied")"
echo '### config'; sed 's/^/|/' "$1"; echo
[ -e "$1.applied" ] && { echo '### applied'; sed 's/^/|/' "$1.applied"; echo; }
true
"#;

/// Parse what [`READ`] printed.
pub fn parse(text: &str) -> anyhow::Result<Observed> {
    let mut observed = Observed::default();
    let mut config = None::<String>;
    // The section the line belongs to: `None` for the `key=value` lines.
    let mut section: Option<&mut Option<String>> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            section = match name {
                "config" => Some(&mut config),
                "applied" => Some(&mut observed.applied),
                _ => None,
            };
            if let Some(text) = section.as_deref_mut() {
                *text = Some(String::new());
            }
            continue;
        }
        if let Some(Some(text)) = section.as_deref_mut() {
            if let Some(line) = line.strip_prefix('|') {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let number = || -> anyhow::Result<i64> {
            value
                .trim()
                .parse()
                .with_context(|| format!("etcd's `{key}` is not a number: `{value}`"))
        };
        match key {
            "state" => observed.state = value.trim().to_string(),
            // Empty when the unit has not started (or `systemctl` did not say).
            "started" if value.trim().is_empty() => observed.started = None,
            "started" => observed.started = Some(number()?),
            "config_mtime" => observed.config_mtime = number()?,
            "unit_mtime" => observed.unit_mtime = number()?,
            "applied_mtime" => observed.applied_mtime = Some(number()?),
            _ => {}
        }
    }
    if observed.applied_mtime.is_some() != observed.applied.is_some() {
        bail!(
            "the member's applied configuration was read only in part:\n{}",
            text.trim()
        );
    }
    let Some(config) = config else {
        bail!(
            "the member's configuration could not be read:\n{}",
            text.trim()
        );
    };
    observed.config = config;
    Ok(observed)
}

/// Record `config` as the configuration the member runs (`<config>.applied`).
pub async fn record_applied(session: &Session, config: &str) -> anyhow::Result<()> {
    super::modules::checked(
        session,
        RemoteCommand::script("cp \"$1\" \"$1.applied\"")
            .arg(config.to_string())
            .as_root(),
    )
    .await?;
    Ok(())
}

pub async fn apply(session: &Session, restart: &Restart) -> anyhow::Result<Applied> {
    let output = super::modules::checked(
        session,
        RemoteCommand::script(READ)
            .arg(restart.config.clone())
            .arg(restart.unit.clone())
            .as_root(),
    )
    .await
    .context("cannot read the etcd member's state")?;
    let observed = parse(&output.stdout_text())?;
    let decision = decide(&observed);
    if let Decision::Stale(_) = &decision {
        // A member still starting waits for quorum: restart it without waiting with it.
        let block = if observed.state == "active" {
            ""
        } else {
            " --no-block"
        };
        super::modules::checked(
            session,
            RemoteCommand::script(format!(
                "systemctl daemon-reload && systemctl restart{block} etcd"
            ))
            .as_root(),
        )
        .await
        .context("cannot restart etcd")?;
    }
    record_applied(session, &restart.config).await?;
    Ok(match decision {
        Decision::NotRunning => {
            Applied::AlreadyThere("not running: it starts with the configuration on disk".into())
        }
        Decision::Current => Applied::AlreadyThere("running the configuration on disk".into()),
        Decision::Stale(why) => Applied::DoneBecause(format!("restarted: {why}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "name: a\ninitial-cluster: a=https://1:2380\npre-vote: true\n";

    fn running(started: i64, applied_mtime: Option<i64>, applied: Option<&str>) -> Observed {
        Observed {
            state: "active".into(),
            started: Some(started),
            config_mtime: 100,
            unit_mtime: 100,
            applied_mtime,
            config: CONFIG.into(),
            applied: applied.map(str::to_string),
        }
    }

    #[test]
    fn a_member_that_is_not_running_is_left_to_start() {
        let mut observed = running(500, None, None);
        observed.state = "inactive".into();
        observed.started = None;
        assert_eq!(decide(&observed), Decision::NotRunning);
        observed.state = "failed".into();
        assert_eq!(decide(&observed), Decision::NotRunning);
    }

    #[test]
    fn a_record_newer_than_the_start_is_compared_without_the_bootstrap_settings() {
        // Same settings: current.
        assert_eq!(
            decide(&running(500, Some(600), Some(CONFIG))),
            Decision::Current
        );
        // Only `initial-cluster` differs (a member joined or left): current.
        let joined =
            "name: a\ninitial-cluster: a=https://1:2380,d=https://4:2380\npre-vote: true\n";
        assert_eq!(
            decide(&running(500, Some(600), Some(joined))),
            Decision::Current
        );
        // Another setting differs: stale.
        let old = "name: a\ninitial-cluster: a=https://1:2380\npre-vote: false\n";
        assert!(matches!(
            decide(&running(500, Some(600), Some(old))),
            Decision::Stale(_)
        ));
        // The unit was written after the record: stale.
        let mut observed = running(500, Some(600), Some(CONFIG));
        observed.unit_mtime = 700;
        assert!(matches!(decide(&observed), Decision::Stale(_)));
    }

    #[test]
    fn without_a_usable_record_the_files_are_dated_against_the_start() {
        // No record; files written before the start: current.
        assert_eq!(decide(&running(500, None, None)), Decision::Current);
        // A record older than the start (the member was restarted by hand since): by dates.
        assert_eq!(
            decide(&running(500, Some(400), Some("other\n"))),
            Decision::Current
        );
        // Written after the start: stale.
        let mut observed = running(50, Some(40), Some(CONFIG));
        observed.config_mtime = 100;
        assert!(matches!(decide(&observed), Decision::Stale(_)));
        // Running, but no start time: restart rather than guess.
        let mut observed = running(500, None, None);
        observed.started = None;
        assert!(matches!(decide(&observed), Decision::Stale(_)));
    }

    #[test]
    fn the_read_is_parsed_with_both_files() {
        let text = "state=active\nstarted=1700000000\nconfig_mtime=1690000000\nunit_mtime=1680000000\napplied_mtime=1700000001\n### config\n|name: a\n|initial-cluster: x\n|### not a header\n\n### applied\n|name: a\n\n";
        let observed = parse(text).unwrap();
        assert_eq!(observed.state, "active");
        assert_eq!(observed.started, Some(1_700_000_000));
        assert_eq!(observed.applied_mtime, Some(1_700_000_001));
        assert_eq!(
            observed.config,
            "name: a\ninitial-cluster: x\n### not a header\n"
        );
        assert_eq!(observed.applied.as_deref(), Some("name: a\n"));
        // Not started: no start time, no record.
        let not_running =
            parse("state=inactive\nstarted=\nconfig_mtime=1\nunit_mtime=2\n### config\n|name: a\n")
                .unwrap();
        assert_eq!(not_running.started, None);
        assert_eq!(not_running.applied, None);
        assert!(parse("state=active\n").is_err());
        assert!(parse("state=active\nstarted=yesterday\n### config\n").is_err());
        // A record dated but not read is an error, not a missing record.
        assert!(parse("state=active\nstarted=5\napplied_mtime=6\n### config\n|a\n").is_err());
    }
}
