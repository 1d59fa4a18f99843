#!/usr/bin/env bash
# The corroborated fast path's false-positive drills, on the lab: faults that leave the primary
# alive must cause no failover. Each fault is held, undone, and then the script checks, from
# the cluster's side, that the Patroni leader and its timeline did not change and that no
# agent deleted the leader key (their journals).
# Usage: scripts/bench-fastpath.sh [INVENTORY] [HOLD_SECONDS]
#        (defaults: inventories/lab.yml, 20; the inventory deployed on the running lab, with
#        corroborated_failover: true, or without it for a baseline of Patroni's own reaction)
# Faults: the primary's Patroni frozen (SIGSTOP, less than the TTL); etcd's raft leader
# partitioned; 40 % packet loss, then 300 ms extra latency, on the primary's link both ways
# (`pgha lab impair`: what `tc netem` does, through a netfilter queue, as this machine's kernel
# has no netem); one replica cut off from the primary while the other still reaches it.
# FAULTS="..." picks some.
set -euo pipefail
cd "$(dirname "$0")/.."
pgha="${PGHA:-${CARGO_TARGET_DIR:-target}/debug/pgha}"
[ -x "$pgha" ] || { echo "error: \`$pgha\` not found; hint: run \`cargo build\` or set PGHA" >&2; exit 1; }
inventory="${1:-inventories/lab.yml}"
hold="${2:-20}"
# Without the fast path the same faults show Patroni's own reaction (a baseline).
if ! "$pgha" inventory show -i "$inventory" --json | python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["cluster"]["corroborated_failover"] else 1)'; then
    echo "note: $inventory does not set cluster.corroborated_failover: true; this is the baseline without the fast path" >&2
fi

# A fault left in place by an interrupted run would outlive it: undo the link faults on exit.
trap 'for n in node1 node2 node3; do "$pgha" lab unimpair "$n" >/dev/null 2>&1 || true; done' EXIT

on() { "$pgha" exec -i "$inventory" --limit "$1" --json -- "$2" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["stdout"].strip())'; }
# The leader and its timeline, as Patroni's REST API on node1 tells it (lab addresses).
leader() {
    on node1 "curl -s --cacert /etc/pgha/tls/ca.crt --cert /etc/pgha/tls/node.crt --key /etc/pgha/tls/node.key https://10.231.0.11:8008/cluster" \
        | python3 -c 'import json, sys; c = json.load(sys.stdin); l = [m for m in c["members"] if m["role"] == "leader"]; print(l[0]["name"] if l else "none", l[0].get("timeline", "?") if l else "?")'
}
raft_leader() {
    on node1 "export ETCDCTL_CACERT=/etc/pgha/tls/ca.crt ETCDCTL_CERT=/etc/pgha/tls/node.crt ETCDCTL_KEY=/etc/pgha/tls/node.key; etcdctl --endpoints=https://127.0.0.1:2379 endpoint status --cluster -w json 2>/dev/null || true" \
        | python3 -c 'import json, sys
status = json.load(sys.stdin)
leader = status[0]["Status"]["leader"]
for member in status:
    if member["Status"]["header"]["member_id"] == leader:
        print("node" + member["Endpoint"].split(":")[1].split(".")[-1][-1])'
}
faults="${FAULTS:-freeze-patroni partition-raft-leader loss-40 delay-300ms one-replica-cut-off}"

echo "| false-positive fault | held | leader before → after | timeline before → after | fast-path deletes | verdict |"
echo "|---|---|---|---|---|---|"
failed=0
for fault in $faults; do
    read -r primary timeline < <(leader)
    replicas=$(for n in node1 node2 node3; do if [ "$n" != "$primary" ]; then echo "$n"; fi; done)
    first_replica=$(echo "$replicas" | head -1)
    since=$(date +%s)
    case "$fault" in
        freeze-patroni)
            on "$primary" 'kill -STOP $(systemctl show -p MainPID --value patroni)' >/dev/null
            sleep "$hold"
            on "$primary" 'kill -CONT $(systemctl show -p MainPID --value patroni)' >/dev/null ;;
        partition-raft-leader)
            target=$(raft_leader)
            "$pgha" lab partition "$target" >/dev/null 2>&1
            sleep "$hold"
            "$pgha" lab heal "$target" >/dev/null 2>&1 ;;
        loss-40)
            "$pgha" lab impair "$primary" --loss 40 >/dev/null
            sleep "$hold"
            "$pgha" lab unimpair "$primary" >/dev/null ;;
        delay-300ms)
            "$pgha" lab impair "$primary" --delay 300ms >/dev/null
            sleep "$hold"
            "$pgha" lab unimpair "$primary" >/dev/null ;;
        one-replica-cut-off)
            "$pgha" lab block "$primary" "$first_replica" >/dev/null 2>&1
            sleep "$hold"
            "$pgha" lab unblock "$primary" "$first_replica" >/dev/null 2>&1 ;;
    esac
    # Long enough for a failover the fault started to show.
    sleep 15
    read -r after after_timeline < <(leader)
    deletes=$("$pgha" exec -i "$inventory" --json -- "journalctl -u pgha-agent --since @$since -o cat | grep -c 'fast path: deleted' || true" \
        | python3 -c 'import json, sys; print(sum(int(h["stdout"].strip() or 0) for h in json.load(sys.stdin)))')
    # Patroni's own reaction, apart from the fast path's: a leader that cannot reach etcd
    # within `retry_timeout` demotes itself (and takes the lock back if it still holds it).
    self_demoted=$(on "$primary" "journalctl -u patroni --since @$since -o cat | grep -c 'demoting self because DCS is not accessible' || true")
    verdict=pass
    if [ "$after" != "$primary" ] || [ "$after_timeline" != "$timeline" ] || [ "$deletes" != 0 ]; then
        verdict=FAIL
        [ "$deletes" = 0 ] && [ "${self_demoted:-0}" != 0 ] \
            && verdict="FAIL (no fast-path delete: Patroni on $primary demoted itself, DCS not accessible within retry_timeout)"
        failed=$((failed + 1))
    fi
    echo "| \`$fault\` on ${target:-$primary} | ${hold} s | $primary → $after | $timeline → $after_timeline | $deletes | $verdict |"
    unset target
    sleep 5
done
exit "$failed"
