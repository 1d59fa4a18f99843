//! The `etcd_join` module: a new etcd member of a running cluster joins it as a **learner**
//! (a non-voting member that cannot change the quorum while it catches up), and is promoted to
//! a voter once etcd says it has caught up.
//!
//! Planned from the member's data directory: a member with data is already in its cluster.
//! Without data, the apply asks the other members: when none has a raft leader, the cluster is
//! new and its members bootstrap together from `initial-cluster` (nothing to do here); a
//! cluster with a leader that does not list its members fails the task; when they answer, the member is added (`member add --learner`, or found added by a run cut off
//! before it started), its configuration is written with the cluster's current members as
//! `initial-cluster` and `initial-cluster-state: existing`, etcd is started, and the learner
//! promoted (`member promote`, retried while etcd says it is not in sync).
//!
//! Once promoted, the member has data and ignores `initial-*`: its configuration becomes the
//! template's again and is recorded as the applied one (`<config>.applied`, which the
//! deploy's restart check compares without the bootstrap-only `initial-*` lines), so later
//! deploys change and restart nothing.

use anyhow::{bail, Context};

use super::modules::Applied;
use crate::ssh::{RemoteCommand, Session, Upload};
use crate::tls::SHELL_CLIENTS;

/// What a join needs, rendered at plan time.
#[derive(Debug, Clone)]
pub struct Join {
    pub name: String,
    /// This member's peer URL (`https://host:port`).
    pub peer_url: String,
    /// The other members' client URLs, comma-separated.
    pub endpoints: String,
    /// The member's configuration as the template renders it.
    pub config: String,
    /// Where the configuration lives.
    pub config_path: String,
}

/// What the other members said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No member answered: a new cluster.
    NoCluster,
    /// The member is (now) added; its ID and the cluster's `initial-cluster`.
    Added { id: String, initial_cluster: String },
}

/// Read the script's `key=value` lines.
pub fn parse(text: &str) -> anyhow::Result<Found> {
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::to_string)
    };
    if value("cluster=").as_deref() == Some("none") {
        return Ok(Found::NoCluster);
    }
    match (value("id="), value("initial=")) {
        (Some(id), Some(initial_cluster)) if !id.is_empty() && !initial_cluster.is_empty() => {
            Ok(Found::Added {
                id,
                initial_cluster,
            })
        }
        _ => bail!("etcd's answer to the join names no member: {}", text.trim()),
    }
}

/// The configuration with the cluster's current members and `existing`.
pub fn joining_config(config: &str, initial_cluster: &str) -> String {
    let mut out = String::new();
    for line in config.lines() {
        if line.starts_with("initial-cluster:") {
            out.push_str(&format!("initial-cluster: {initial_cluster}\n"));
        } else if line.starts_with("initial-cluster-state:") {
            out.push_str("initial-cluster-state: existing\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Ask the other members; add this one as a learner unless it is added already. `$1` the
/// endpoints, `$2` the name, `$3` the peer URL.
const ADD: &str = r#"endpoints="$1"; name="$2"; peer="$3"
if ! list=$(etcdctl --endpoints="$endpoints" --command-timeout=3s member list 2>&1); then
  # A new cluster has no raft leader yet (its members wait for each other); a running one has,
  # and then its member list must answer.
  if etcdctl --endpoints="$endpoints" --command-timeout=3s endpoint status -w json 2>/dev/null | grep -q '"leader":[1-9]'; then
    echo "the running etcd cluster did not list its members: $list" >&2; exit 1
  fi
  echo cluster=none; exit 0
fi
line=$(printf '%s\n' "$list" | awk -F', ' -v peer="$peer" '$4 == peer')
case "$line" in
  *", started, "*) echo "etcd lists a started member with this node's peer URL $peer, but this node has no etcd data; hint: if the data was lost, remove that member (etcdctl member remove ${line%%,*}) and deploy again" >&2; exit 1 ;;
  "")
    out=$(etcdctl --endpoints="$endpoints" --command-timeout=5s member add "$name" --learner --peer-urls="$peer") || exit 1
    # etcdctl prints the ID with `%16x`: one that starts with zeros comes space-padded.
    id=$(printf '%s\n' "$out" | sed -n 's/^Member  *\([0-9a-f][0-9a-f]*\) added.*/\1/p')
    [ -n "$id" ] || id=$(etcdctl --endpoints="$endpoints" --command-timeout=3s member list | awk -F', ' -v peer="$peer" '$4 == peer { print $1 }')
    echo "id=$id"
    echo "initial=$(printf '%s\n' "$out" | sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p')" ;;
  *)
    # Added by a run cut off before it started: the started members, and this one.
    echo "id=${line%%,*}"
    echo "initial=$(printf '%s\n' "$list" | awk -F', ' -v name="$name" -v peer="$peer" '$3 != "" { printf "%s%s=%s", sep, $3, $4; sep = "," } END { printf "%s%s=%s", sep, name, peer }')" ;;
esac
"#;

/// Start the member and promote it once in sync (`$1` endpoints, `$2` the member ID).
const START_AND_PROMOTE: &str = r#"systemctl daemon-reload && systemctl enable --now etcd >/dev/null 2>&1 || exit 1
for attempt in $(seq 240); do
  if answer=$(etcdctl --endpoints="$1" --command-timeout=3s member promote "$2" 2>&1); then exit 0; fi
  case "$answer" in *"not a learner"*) exit 0 ;; esac
  sleep 0.5
done
echo "the learner did not catch up within 120 s: $answer" >&2
exit 1
"#;

/// Write the member's configuration as the template's destination has it (root:etcd 0640).
async fn upload(session: &Session, path: &str, text: String) -> anyhow::Result<()> {
    session
        .upload(&Upload {
            path: path.to_string(),
            contents: text.into_bytes(),
            owner: "root".into(),
            group: "etcd".into(),
            mode: 0o640,
            mtime: None,
        })
        .await
        .with_context(|| format!("cannot write {path}"))?;
    Ok(())
}

pub async fn apply(session: &Session, join: &Join) -> anyhow::Result<Applied> {
    let output = super::modules::checked(
        session,
        RemoteCommand::script(format!("{SHELL_CLIENTS}{ADD}"))
            .arg(join.endpoints.clone())
            .arg(join.name.clone())
            .arg(join.peer_url.clone())
            .as_root(),
    )
    .await
    .context("cannot ask the running etcd members")?;
    let (id, initial_cluster) = match parse(&output.stdout_text())? {
        Found::NoCluster => {
            return Ok(Applied::AlreadyThere(
                "no member answers: a new cluster, its members start together".into(),
            ))
        }
        Found::Added {
            id,
            initial_cluster,
        } => (id, initial_cluster),
    };
    upload(
        session,
        &join.config_path,
        joining_config(&join.config, &initial_cluster),
    )
    .await?;
    super::modules::checked(
        session,
        RemoteCommand::script(format!("{SHELL_CLIENTS}{START_AND_PROMOTE}"))
            .arg(join.endpoints.clone())
            .arg(id.clone())
            .as_root(),
    )
    .await
    .context("the new member did not become a voter")?;
    // From now on the member has data and ignores `initial-*`: the file becomes the
    // template's, recorded as applied, so later deploys find nothing to change or restart.
    upload(session, &join.config_path, join.config.clone()).await?;
    super::etcd_restart::record_applied(session, &join.config_path).await?;
    Ok(Applied::DoneBecause(format!(
        "joined as learner {id} with {initial_cluster}, caught up and promoted"
    )))
}

/// What etcdctl said: its error, else its output.
fn answer_of(output: &crate::ssh::CommandOutput) -> String {
    let stderr = output.stderr_text();
    if stderr.trim().is_empty() {
        output.stdout_text().trim().to_string()
    } else {
        stderr.trim().to_string()
    }
}

/// How long `promote_learners` waits for a learner to catch up.
const LEARNER_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Promote every learner once etcd says it is in sync (`endpoint`: the local member's client
/// URL). A join cut off between the learner's start and its promotion leaves a learner that no
/// later join looks at, its node having data by then. When the member does not list its
/// members (before any learner was seen), the deploy's health check that follows waits for
/// it: this task says so and goes on.
pub async fn promote_learners(session: &Session, endpoint: &str) -> anyhow::Result<Applied> {
    let etcdctl = |args: &str| {
        RemoteCommand::script(format!(
            "{SHELL_CLIENTS}etcdctl --endpoints=\"$1\" --command-timeout=3s {args}"
        ))
        .arg(endpoint.to_string())
        .as_root()
    };
    let started = std::time::Instant::now();
    let mut promoted: Vec<String> = Vec::new();
    // The learners not yet promoted, and etcd's last answer about them.
    let mut waiting: Vec<String> = Vec::new();
    let mut answer = String::new();
    loop {
        let list = session.run(&etcdctl("member list -w json")).await?;
        let members = list
            .success()
            .then(|| crate::etcd::parse_members(&list.stdout_text()))
            .flatten();
        if let Some(members) = members {
            waiting.clear();
            for id in members
                .iter()
                .filter(|member| member.learner)
                .map(|member| member.hex_id())
            {
                let promote = session
                    .run(&etcdctl("member promote \"$2\"").arg(id.clone()))
                    .await?;
                if promote.success() {
                    promoted.push(id);
                } else {
                    answer = answer_of(&promote);
                    waiting.push(id);
                }
            }
            if waiting.is_empty() {
                break;
            }
        } else if waiting.is_empty() && promoted.is_empty() {
            return Ok(Applied::AlreadyThere(format!(
                "etcd did not list its members ({}); the health check next waits for it",
                answer_of(&list)
            )));
        } else {
            answer = answer_of(&list);
        }
        if started.elapsed() >= LEARNER_WAIT {
            bail!(
                "learners {} still not promoted after {} s; etcd said: {answer}; hint: `etcdctl member list` on this node shows them, `etcdctl endpoint status` how far behind they are",
                waiting.join(", "),
                LEARNER_WAIT.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok(if promoted.is_empty() {
        Applied::AlreadyThere("no learner".into())
    } else {
        Applied::DoneBecause(format!("promoted {}", promoted.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_the_member_or_a_new_cluster() {
        assert_eq!(parse("cluster=none\n").unwrap(), Found::NoCluster);
        assert_eq!(
            parse("id=8e9e05c52164694d\ninitial=a=https://1:2380,d=https://4:2380\n").unwrap(),
            Found::Added {
                id: "8e9e05c52164694d".into(),
                initial_cluster: "a=https://1:2380,d=https://4:2380".into()
            }
        );
        assert!(parse("id=\ninitial=\n").is_err());
    }

    #[test]
    fn the_joining_configuration_names_the_current_members_and_existing() {
        let config = "name: d\ninitial-cluster: a=https://1:2380,b=https://2:2380,d=https://4:2380,e=https://5:2380\ninitial-cluster-token: pgha-lab\ninitial-cluster-state: new\npre-vote: true\n";
        assert_eq!(
            joining_config(config, "a=https://1:2380,b=https://2:2380,d=https://4:2380"),
            "name: d\ninitial-cluster: a=https://1:2380,b=https://2:2380,d=https://4:2380\ninitial-cluster-token: pgha-lab\ninitial-cluster-state: existing\npre-vote: true\n"
        );
    }
}
