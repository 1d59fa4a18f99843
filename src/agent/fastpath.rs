//! The corroborated fast path (opt-in, `cluster.corroborated_failover`): end a provably dead
//! leader's leadership before its TTL runs out.
//!
//! Patroni's leader key hangs on a lease that the leader refreshes every `loop_wait`; only
//! when the lease expires (the TTL, 30 s by default) do the replicas race for the key. Each
//! agent on a Patroni node that is not the leader's looks, every 250 ms, at:
//! - the leader key (name, `mod_revision`, lease) and the lease's remaining TTL: a refresh
//!   shows as the remaining TTL going up, so the agent knows how long ago the leader last
//!   refreshed it;
//! - the leader's node from here, probed in the background every 250 ms whatever the last probe
//!   still waits for: PostgreSQL (the postmaster answers an `SSLRequest`), Patroni's REST API
//!   (`GET /liveness`) and its etcd member (`Status`), each with a [`PROBE_TIMEOUT`] deadline
//!   long enough for a slow link's answer (300 ms each way) to count.
//!
//! It suspects the leader when the lease has not been refreshed for `stale_after` (Patroni's
//! `loop_wait` + 1 s) *and* nothing on the node has answered for [`UNANSWERED_FOR`] (long
//! enough that a lossy link's bursts of unanswered probes do not add up to it). A suspicion is
//! a vote: a key `/pgha-fastpath/<prefix><leader>/<voter>` holding the leader key's
//! `mod_revision`, put again every look (and deleted when the agent stops suspecting; its 2 s
//! lease covers an agent that dies). When `votes_needed` agents (a majority of the Patroni
//! nodes other than the leader's) vote for the same revision, each vote put again since this
//! agent's previous look (a suspicion held now, not a second ago), an agent checks the lease
//! once more and deletes the leader key in a transaction that holds only if the key still has
//! that revision and names that leader.
//! Patroni's replicas are woken by the delete (their watch) and elect a new leader as after
//! an expiry; in synchronous mode only the synchronous standby may take the lock.
//!
//! Why a live leader is not deposed, and why no acknowledged write is lost when the verdict
//! is wrong anyway: see README, "The corroborated fast path".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{Config, FastPath, FastPathMember, LeaderWatch};

/// How often the agent looks.
const INTERVAL: Duration = Duration::from_millis(250);
/// The deadline of each probe of the leader's node: a link with 300 ms each way answers a
/// postmaster probe in 1.2 s (connect, then the `SSLRequest`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long nothing on the leader's node may answer before this agent suspects it. With 40 %
/// loss each way the probes (12 a second) met 1.7 s of silence; 3 s is 12 looks in a row
/// unanswered.
pub const UNANSWERED_FOR: Duration = Duration::from_secs(3);
/// The lease of a vote: it vanishes this long after the agent stops renewing it.
const VOTE_TTL_SECONDS: i64 = 2;

/// The leader key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// When the leader last refreshed its lease, as seen from here.
#[derive(Debug, Default)]
pub struct Refreshes {
    key: Option<LeaderKey>,
    last_remaining: i64,
    last_refresh: Option<Instant>,
}

impl Refreshes {
    /// Record the lease's remaining and granted TTL (whole seconds, as etcd reports them)
    /// read at `now`; how long ago the leader last refreshed it.
    ///
    /// A key seen for the first time is dated from its remaining TTL, one second later than
    /// that says (etcd rounds the remaining time down), so its age is never overstated. A
    /// rise of the remaining TTL is a refresh (or a new raft leader extending every lease:
    /// either way not a reason to suspect).
    pub fn observe(
        &mut self,
        key: &LeaderKey,
        remaining: i64,
        granted: i64,
        now: Instant,
    ) -> Duration {
        let fresh = self.key.as_ref() != Some(key);
        if fresh {
            let age = Duration::from_secs((granted - remaining - 1).max(0) as u64);
            self.key = Some(key.clone());
            self.last_refresh = Some(now.checked_sub(age).unwrap_or(now));
        } else if remaining > self.last_remaining {
            self.last_refresh = Some(now);
        }
        self.last_remaining = remaining;
        now.saturating_duration_since(self.last_refresh.unwrap_or(now))
    }

    /// Forget the key (no leader, or this node leads).
    pub fn reset(&mut self) {
        *self = Refreshes::default();
    }
}

/// Whether this agent suspects the leader: its lease stale for longer than `stale_after` and
/// its node silent for at least [`UNANSWERED_FOR`].
pub fn suspects(since_refresh: Duration, silent_for: Duration, stale_after: Duration) -> bool {
    since_refresh > stale_after && silent_for >= UNANSWERED_FOR
}

/// One vote as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub key: String,
    /// The leader key's `mod_revision` the voter suspects.
    pub revision: String,
    /// When the vote was last put (etcd's revision of that put).
    pub put_at: i64,
}

/// The votes for `mod_revision` that stand now: this agent's own (`mine`), and every other put
/// after `fresh_after` (this agent's previous vote: a voter that still suspects puts its vote
/// again every look). Without a previous vote, only this agent's own counts: a vote left from
/// a suspicion that ended must not add to a new one.
pub fn votes_for(votes: &[Vote], mod_revision: i64, mine: &str, fresh_after: Option<i64>) -> usize {
    let wanted = mod_revision.to_string();
    votes
        .iter()
        .filter(|vote| vote.revision == wanted)
        .filter(|vote| vote.key == mine || fresh_after.is_some_and(|after| vote.put_at > after))
        .count()
}

/// What the background prober watches and what it last heard.
#[derive(Debug)]
struct Watched {
    member: Option<FastPathMember>,
    /// When the prober started on this member.
    since: Instant,
    last_answer: Option<Instant>,
}

impl Watched {
    /// Watch `member` (nothing when `None`); a new member starts with nothing heard.
    fn watch(&mut self, member: Option<&FastPathMember>, now: Instant) {
        if self.member.as_ref() != member {
            self.member = member.cloned();
            self.since = now;
            self.last_answer = None;
        }
    }

    /// How long the watched member has answered nothing (counted from when watching began).
    fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_answer.unwrap_or(self.since))
    }

    fn heard(&mut self, name: &str) {
        if self
            .member
            .as_ref()
            .is_some_and(|member| member.name == name)
        {
            self.last_answer = Some(Instant::now());
        }
    }
}

/// Probe the watched member every [`INTERVAL`]: a postmaster and a Patroni probe each look,
/// overlapping when a slow link keeps earlier ones waiting; one etcd `Status` at a time.
async fn probe(watched: Arc<Mutex<Watched>>, postgres_port: u16, patroni_port: u16) {
    let peers: Arc<tokio::sync::Mutex<HashMap<String, Client>>> = Arc::default();
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(member) = watched.lock().expect("watched").member.clone() else {
            continue;
        };
        let heard = |watched: Arc<Mutex<Watched>>, name: String| {
            move |answered: bool| {
                if answered {
                    watched.lock().expect("watched").heard(&name);
                }
            }
        };
        let on_postgres = heard(watched.clone(), member.name.clone());
        let address = member.address.clone();
        tokio::spawn(async move { on_postgres(postmaster_answers(&address, postgres_port).await) });
        let on_patroni = heard(watched.clone(), member.name.clone());
        let base = crate::patroni::model::api_at(
            member
                .address
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
            patroni_port,
        );
        tokio::spawn(async move {
            let answered =
                crate::patroni::Patroni::anonymous(PROBE_TIMEOUT, super::probe::node_tls())
                    .call(&base, "GET", "/liveness", None)
                    .await
                    .is_ok();
            on_patroni(answered)
        });
        if let Ok(mut peers) = peers.clone().try_lock_owned() {
            let on_etcd = heard(watched.clone(), member.name.clone());
            tokio::spawn(async move { on_etcd(etcd_answers(&member, &mut peers).await) });
        }
    }
}

/// Watch the leader's node for as long as the agent runs: refuse the local Patroni's
/// connections to it while this agent suspects it ([`super::failfast`]), and, with the fast
/// path on, vote and end its leadership early.
pub async fn run(
    config: Arc<Config>,
    watch: LeaderWatch,
    fast: Option<FastPath>,
    endpoints: Vec<String>,
) {
    let leader_key = format!("{}leader", config.prefix);
    let votes_prefix = format!("/pgha-fastpath{}", config.prefix);
    let stale_after = Duration::from_millis(watch.stale_after_ms);
    if let Some(fast) = &fast {
        println!(
            "corroborated fast path on: a leader whose lease is not refreshed for {:.1} s and whose node answers nothing for {:.1} s is ended early when {} agents agree",
            stale_after.as_secs_f64(),
            UNANSWERED_FOR.as_secs_f64(),
            fast.votes_needed
        );
    }
    // Rules left by an agent that was killed.
    super::failfast::clear().await;
    let mut refused = PatroniBlock {
        uid: super::failfast::patroni_uid(),
        blocked: None,
        last_error: None,
        dirty: false,
    };
    let mut client: Option<Client> = None;
    let mut refreshes = Refreshes::default();
    let watched = Arc::new(Mutex::new(Watched {
        member: None,
        since: Instant::now(),
        last_answer: None,
    }));
    tokio::spawn(probe(
        watched.clone(),
        watch.postgres_port,
        config.patroni_api_port,
    ));
    // This agent's standing vote: its ballot and the etcd revision it was last put at.
    let mut voted: Option<(String, i64)> = None;
    let me = config.node.clone();
    loop {
        tokio::time::sleep(INTERVAL).await;
        let etcd = match client.as_mut() {
            Some(etcd) => etcd,
            None => match connect(&endpoints).await {
                Some(etcd) => client.insert(etcd),
                None => {
                    refused.lift_if_answering(&watched, &config).await;
                    continue;
                }
            },
        };
        let observed = match observe_leader(etcd, &leader_key).await {
            Ok(observed) => observed,
            Err(_) => {
                client = None;
                refused.lift_if_answering(&watched, &config).await;
                continue;
            }
        };
        let leader = observed.as_ref().and_then(|(key, _, _)| {
            // None when this node leads (or the leader is unknown to the inventory).
            watch.members.iter().find(|member| member.name == key.name)
        });
        // While no key stands, a blocked node stays watched: its first answer lifts the block.
        let target = match (&observed, &refused.blocked) {
            (None, Some(gone)) => Some(gone),
            _ => leader,
        };
        let now = Instant::now();
        let silent_for = {
            let mut watched = watched.lock().expect("watched");
            watched.watch(target, now);
            watched.silent_for(now)
        };
        let suspected = match (&observed, leader) {
            (Some((key, remaining, granted)), Some(member)) => {
                let since_refresh = refreshes.observe(key, *remaining, *granted, now);
                suspects(since_refresh, silent_for, stale_after)
                    .then(|| (key.clone(), *remaining, member, since_refresh))
            }
            _ => {
                refreshes.reset();
                None
            }
        };
        // Refused while suspected, and after its key went for as long as it stays silent.
        let block = match &suspected {
            Some((_, _, member, _)) => Some((*member).clone()),
            None if observed.is_none() && silent_for >= UNANSWERED_FOR => refused.blocked.clone(),
            None => None,
        };
        refused.set(block.as_ref(), &config, silent_for).await;
        let Some(fast) = &fast else {
            continue;
        };
        let Some((key, remaining, member, since_refresh)) = suspected else {
            if let Some((ballot, _)) = &voted {
                println!(
                    "fast path: no longer suspecting `{}` (node silent for {:.1} s)",
                    ballot_leader(ballot),
                    silent_for.as_secs_f64()
                );
                withdraw(etcd, &mut voted, &me).await;
            }
            continue;
        };
        let ballot = format!("{votes_prefix}{}/", key.name);
        if voted
            .as_ref()
            .is_some_and(|(previous, _)| *previous != ballot)
        {
            // Another leader now: the vote against the last one goes at once.
            withdraw(etcd, &mut voted, &me).await;
        }
        // Only a vote on this ballot is left (another was withdrawn just above).
        let fresh_after = voted.as_ref().map(|(_, put_at)| *put_at);
        match vote_and_count(etcd, &ballot, &me, key.mod_revision, fresh_after).await {
            Ok((votes, put_at)) => {
                let first = voted.is_none();
                voted = Some((ballot.clone(), put_at));
                if first {
                    println!(
                        "fast path: suspecting `{}` (lease not refreshed for {:.1} s, nothing on {} answered for {:.1} s); {votes} of {} votes",
                        key.name,
                        since_refresh.as_secs_f64(),
                        member.address,
                        silent_for.as_secs_f64(),
                        fast.votes_needed
                    );
                }
                if votes < fast.votes_needed {
                    continue;
                }
            }
            Err(_) => {
                // Which of its puts etcd kept is unknown: the next look starts afresh (its own
                // vote only), and this vote ends with its lease.
                voted = None;
                client = None;
                continue;
            }
        }
        // The last look: a lease refreshed since the verdict means the leader lives.
        match etcd.lease_time_to_live(key.lease, None).await {
            Ok(lease) if lease.ttl() <= remaining => {}
            _ => continue,
        }
        let deleted = etcd
            .txn(
                Txn::new()
                    .when([
                        Compare::mod_revision(
                            leader_key.as_str(),
                            CompareOp::Equal,
                            key.mod_revision,
                        ),
                        Compare::value(leader_key.as_str(), CompareOp::Equal, key.name.as_str()),
                    ])
                    .and_then([TxnOp::delete(leader_key.as_str(), None)]),
            )
            .await;
        match deleted {
            Ok(response) if response.succeeded() => println!(
                "fast path: deleted the leader key of `{}` (revision {}): {} agents agree its node is gone (lease not refreshed for {:.1} s); Patroni elects a new leader now",
                key.name,
                key.mod_revision,
                fast.votes_needed,
                since_refresh.as_secs_f64()
            ),
            Ok(_) => {} // another agent was first, or the key changed: nothing to do.
            Err(_) => client = None,
        }
    }
}

/// The node whose Patroni connections are refused now, and the last failure said.
struct PatroniBlock {
    uid: Option<u32>,
    blocked: Option<FastPathMember>,
    last_error: Option<String>,
    /// An install or a clear failed: the rules may not be what `blocked` says, so the next
    /// look sets them again even if nothing changed.
    dirty: bool,
}

impl PatroniBlock {
    /// With etcd unreadable from here, the key says nothing; a block still goes once its node
    /// answers (the prober keeps looking at it).
    async fn lift_if_answering(&mut self, watched: &Mutex<Watched>, config: &Config) {
        if self.blocked.is_none() && !self.dirty {
            return;
        }
        let silent_for = watched.lock().expect("watched").silent_for(Instant::now());
        if silent_for < UNANSWERED_FOR {
            self.set(None, config, silent_for).await;
        }
    }

    /// Bring the rules in line with `wanted`: Patroni's API and etcd member ports on that node,
    /// or none. A failure is said once and tried again at the next look.
    async fn set(
        &mut self,
        wanted: Option<&FastPathMember>,
        config: &Config,
        silent_for: Duration,
    ) {
        if self.blocked.as_ref() == wanted && !self.dirty {
            return;
        }
        if self.uid.is_none() {
            self.uid = super::failfast::patroni_uid();
        }
        let Some(member) = wanted else {
            self.dirty = !super::failfast::clear().await;
            if let Some(gone) = self.blocked.take() {
                println!(
                    "leader watch: `{}` answers again or no longer leads; Patroni may connect to it again",
                    gone.name
                );
            }
            return;
        };
        let installed = match (self.uid, member.address.parse()) {
            (Some(uid), Ok(address)) => {
                let mut ports = vec![config.patroni_api_port];
                ports.extend(member.etcd.as_deref().and_then(super::failfast::port_of));
                let block = super::failfast::Block {
                    address,
                    ports,
                    uid,
                };
                match super::failfast::install(&block).await {
                    Ok(()) => {
                        // The rules stand even if this fails (an old kernel without socket
                        // destroy): new connections are still refused.
                        if let Err(error) = super::failfast::abort_connections(&block).await {
                            eprintln!(
                                "leader watch: cannot abort the connections to `{}`: {error}",
                                member.name
                            );
                        }
                        Ok(block.ports)
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
            (None, _) => Err("no `postgres` user in /etc/passwd".to_string()),
            (_, Err(_)) => Err(format!("`{}` is not an IP address", member.address)),
        };
        match installed {
            Ok(ports) => {
                println!(
                    "leader watch: nothing on `{}` ({}) answered for {:.1} s and its lease is stale; Patroni's connections to ports {ports:?} there now fail at once, open ones aborted",
                    member.name,
                    member.address,
                    silent_for.as_secs_f64(),
                );
                self.blocked = Some(member.clone());
                self.last_error = None;
                self.dirty = false;
            }
            Err(error) => {
                // `install` clears what it put on a failure; whatever stands is unknown.
                self.blocked = None;
                self.dirty = true;
                if self.last_error.as_ref() != Some(&error) {
                    eprintln!(
                        "leader watch: cannot refuse Patroni's connections to `{}`: {error}",
                        member.name
                    );
                    self.last_error = Some(error);
                }
            }
        }
    }
}

/// Connect to the first endpoint that answers (the node's own member first).
async fn connect(endpoints: &[String]) -> Option<Client> {
    for endpoint in endpoints {
        if let Ok(client) = connect_one(endpoint, Duration::from_secs(1)).await {
            return Some(client);
        }
    }
    None
}

async fn connect_one(endpoint: &str, timeout: Duration) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    let options = match super::etcd::tls_options() {
        Ok(tls) if endpoint.starts_with("https://") => options.with_tls(tls),
        _ => options,
    };
    Client::connect([endpoint], Some(options)).await
}

/// The leader key and its lease's remaining and granted TTL; `None` when there is no leader.
async fn observe_leader(
    etcd: &mut Client,
    leader_key: &str,
) -> Result<Option<(LeaderKey, i64, i64)>, etcd_client::Error> {
    let response = etcd.get(leader_key, None).await?;
    let Some(kv) = response.kvs().first() else {
        return Ok(None);
    };
    let key = LeaderKey {
        name: kv.value_str().unwrap_or_default().to_string(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    };
    if key.name.is_empty() || key.lease == 0 {
        return Ok(None);
    }
    let lease = etcd.lease_time_to_live(key.lease, None).await?;
    if lease.ttl() < 0 {
        return Ok(None);
    }
    Ok(Some((key, lease.ttl(), lease.granted_ttl())))
}

/// The postmaster answers an `SSLRequest` with one byte (`S` or `N`); a frozen or dead node's
/// kernel may accept the connection, but only a running postmaster answers.
async fn postmaster_answers(address: &str, port: u16) -> bool {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect((address, port)).await?;
        stream
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>((answer[0], stream))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
        Ok(Ok((b'S', stream))) => {
            tokio::spawn(leave_quietly(address.to_string(), stream));
            true
        }
        Ok(Ok((answer, _))) => answer == b'N',
        _ => false,
    }
}

/// After its `S`, PostgreSQL expects a TLS handshake, and logs "could not accept SSL
/// connection: EOF detected" for a client that leaves instead: every probe, four a second
/// from each agent, on the leader. A finished handshake closed with `close_notify` is logged by
/// nothing. Done apart from the probe (the `S` already answered it), within 2 s.
async fn leave_quietly(address: String, stream: tokio::net::TcpStream) {
    let Some(config) = super::probe::node_tls() else {
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut tls = crate::tls::connect(config, &address, stream).await?;
        tls.shutdown().await
    })
    .await;
}

/// The node's etcd member answers `Status` (no member: nothing to ask, nothing answers).
async fn etcd_answers(member: &FastPathMember, peers: &mut HashMap<String, Client>) -> bool {
    let Some(endpoint) = &member.etcd else {
        return false;
    };
    if !peers.contains_key(endpoint) {
        match tokio::time::timeout(PROBE_TIMEOUT, connect_one(endpoint, PROBE_TIMEOUT)).await {
            Ok(Ok(client)) => {
                peers.insert(endpoint.clone(), client);
            }
            _ => return false,
        }
    }
    let Some(client) = peers.get_mut(endpoint) else {
        return false;
    };
    let answered = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, client.status()).await,
        Ok(Ok(_))
    );
    if !answered {
        peers.remove(endpoint);
    }
    answered
}

/// Put this agent's vote for `mod_revision` again and count the votes that stand (see
/// [`votes_for`]); also the etcd revision of this put.
async fn vote_and_count(
    etcd: &mut Client,
    ballot: &str,
    voter: &str,
    mod_revision: i64,
    fresh_after: Option<i64>,
) -> Result<(usize, i64), etcd_client::Error> {
    let mine = format!("{ballot}{voter}");
    let lease = etcd.lease_grant(VOTE_TTL_SECONDS, None).await?;
    let put = etcd
        .put(
            mine.as_str(),
            mod_revision.to_string(),
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await?;
    let put_at = put.header().map_or(0, |header| header.revision());
    let response = etcd
        .get(ballot, Some(GetOptions::new().with_prefix()))
        .await?;
    let votes: Vec<Vote> = response
        .kvs()
        .iter()
        .map(|kv| Vote {
            key: kv.key_str().unwrap_or_default().to_string(),
            revision: kv.value_str().unwrap_or_default().to_string(),
            put_at: kv.mod_revision(),
        })
        .collect();
    Ok((votes_for(&votes, mod_revision, &mine, fresh_after), put_at))
}

/// The leader a ballot (`…/<leader>/`) is about.
fn ballot_leader(ballot: &str) -> &str {
    ballot
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(ballot)
}

/// Take this agent's vote back at once (its lease would keep it for up to 2 s more).
async fn withdraw(etcd: &mut Client, voted: &mut Option<(String, i64)>, voter: &str) {
    if let Some((ballot, _)) = voted.take() {
        // A vote that stays (etcd unreachable) still ends with its lease, and a vote older than
        // another agent's previous look does not count there.
        let _ = etcd.delete(format!("{ballot}{voter}"), None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(revision: i64) -> LeaderKey {
        LeaderKey {
            name: "node1".into(),
            mod_revision: revision,
            lease: 7,
        }
    }

    #[test]
    fn a_refresh_is_a_rise_of_the_remaining_ttl() {
        let start = Instant::now();
        let mut refreshes = Refreshes::default();
        // First seen 4.x s after a refresh (remaining 25 of 30): dated 4 s back, not 5.
        assert_eq!(
            refreshes.observe(&key(10), 25, 30, start + Duration::from_secs(10)),
            Duration::from_secs(4)
        );
        // Counting down: no refresh.
        assert_eq!(
            refreshes.observe(&key(10), 23, 30, start + Duration::from_secs(12)),
            Duration::from_secs(6)
        );
        // Up again: refreshed just now.
        assert_eq!(
            refreshes.observe(&key(10), 29, 30, start + Duration::from_secs(13)),
            Duration::ZERO
        );
        // Another key (a new leader, or the same re-created): dated afresh.
        assert_eq!(
            refreshes.observe(&key(11), 29, 30, start + Duration::from_secs(14)),
            Duration::ZERO
        );
    }

    #[test]
    fn suspicion_needs_a_stale_lease_and_a_silent_node() {
        let stale_after = Duration::from_millis(6500);
        let long = Duration::from_secs(4);
        assert!(suspects(Duration::from_secs(7), long, stale_after));
        // A frozen Patroni whose PostgreSQL still answers: the lease is stale, the node is not
        // silent.
        assert!(!suspects(
            Duration::from_secs(20),
            Duration::ZERO,
            stale_after
        ));
        // A node silent from here while its leader refreshes the lease (a partition between
        // this agent and the leader only).
        assert!(!suspects(Duration::from_secs(3), long, stale_after));
        // Silent, but not for long enough (a lossy link's burst of unanswered probes).
        assert!(!suspects(
            Duration::from_secs(7),
            Duration::from_millis(2_500),
            stale_after
        ));
    }

    fn vote(voter: &str, revision: &str, put_at: i64) -> Vote {
        Vote {
            key: format!("/pgha-fastpath/service/lab/node1/{voter}"),
            revision: revision.to_string(),
            put_at,
        }
    }

    #[test]
    fn only_votes_for_the_same_revision_count() {
        let mine = "/pgha-fastpath/service/lab/node1/node2";
        let votes = [vote("node2", "10", 50), vote("node3", "9", 49)];
        assert_eq!(votes_for(&votes, 10, mine, Some(40)), 1);
        assert_eq!(votes_for(&votes, 9, mine, Some(40)), 1);
        assert_eq!(votes_for(&votes, 11, mine, Some(40)), 0);
    }

    #[test]
    fn only_votes_put_since_this_agents_previous_look_count() {
        let mine = "/pgha-fastpath/service/lab/node1/node2";
        let votes = [vote("node2", "10", 60), vote("node3", "10", 55)];
        // node3 put its vote again after this agent's previous vote (at 52): it suspects now.
        assert_eq!(votes_for(&votes, 10, mine, Some(52)), 2);
        // node3's vote is older than this agent's previous look: a suspicion that may have
        // ended (a lossy link answered again) and whose lease has not run out yet.
        assert_eq!(votes_for(&votes, 10, mine, Some(57)), 1);
        // This agent's first look: only its own vote stands until the next.
        assert_eq!(votes_for(&votes, 10, mine, None), 1);
    }

    #[test]
    fn silence_is_counted_from_the_last_answer_or_from_when_watching_began() {
        let start = Instant::now();
        let member = |name: &str| FastPathMember {
            name: name.to_string(),
            address: "10.231.0.11".to_string(),
            etcd: None,
        };
        let mut watched = Watched {
            member: None,
            since: start,
            last_answer: None,
        };
        watched.watch(Some(&member("node1")), start);
        assert_eq!(
            watched.silent_for(start + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        watched.heard("node1");
        assert!(watched.silent_for(Instant::now()) < Duration::from_millis(100));
        // An answer from a node no longer watched counts for nothing.
        watched.watch(Some(&member("node3")), start + Duration::from_secs(5));
        watched.heard("node1");
        assert_eq!(
            watched.silent_for(start + Duration::from_secs(8)),
            Duration::from_secs(3)
        );
    }
}
