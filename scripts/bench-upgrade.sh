#!/usr/bin/env bash
# Rolling-upgrade benchmark on the local lab, RUNS times (default 5): a fresh lab deployed at
# the old pins (PostgreSQL 15.18, HAProxy deb12u3, Patroni 4.0.11), then `pgha upgrade --measure`
# to the new ones (15.20, deb12u4, 4.1.5) while scripts/independent-probe.py also writes
# through the VIP (a new connection per INSERT, every 100 ms). One line per run; at the end a
# plain switchover drill on the upgraded lab, measured by the same probes, and three `pgha
# switchover`s (new writes held in HAProxy) under the independent probe, for comparison.
# Usage: scripts/bench-upgrade.sh [RUNS]   (as root; needs the built target/debug/pgha)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
pgha="${CARGO_TARGET_DIR:-target}/debug/pgha"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp inventories/lab.yml inventories/pgha-inventory.schema.json "$dir/"
inventory="$dir/lab.yml"
pin() { # postgresql haproxy patroni
  sed -i '/^  versions:/d; /^  patroni_version:/d' "$inventory"
  sed -i "s/^  postgres_version: 15$/  postgres_version: 15\n  versions: {postgresql: \"$1\", haproxy: \"$2\"}\n  patroni_version: \"$3\"/" "$inventory"
}
for run in $(seq 1 "$runs"); do
  "$pgha" lab down >/dev/null 2>&1 || true
  "$pgha" lab up --nodes 3 >/dev/null
  pin 15.18-0+deb12u1 2.6.12-1+deb12u3 4.0.11
  "$pgha" deploy -i "$inventory" >/dev/null 2>&1
  pin 15.20-0+deb12u1 2.6.12-1+deb12u4 4.1.5
  PGPASSWORD=$(awk '/superuser_password/ {print $2}' "$dir/lab.secrets.yml") \
    scripts/independent-probe.py 10.231.0.100 5000 0 0.5 > "$dir/probe.txt" 2>&1 &
  probe=$!
  sleep 2
  "$pgha" upgrade -i "$inventory" --measure --json > "$dir/upgrade.json" 2>/dev/null || echo "run $run: the upgrade failed"
  kill -TERM "$probe"; wait "$probe" || true
  python3 - "$dir/upgrade.json" "$dir/probe.txt" "$run" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
m = report["measured"]
probe = open(sys.argv[2]).read().strip().splitlines()
print(f"run {sys.argv[3]}: {'ok' if report['success'] else 'FAILED'}, {len(report['done'])} steps in {report['seconds']:.1f} s; "
      f"new-connection writes {m['new_connection']['failed']}/{m['new_connection']['attempts']} failed, longest gap {m['new_connection']['longest_gap_ms']} ms; "
      f"persistent {m['persistent']['failed']}/{m['persistent']['attempts']} failed, longest gap {m['persistent']['longest_gap_ms']} ms; "
      f"lost {m['lost_writes']}; reads {m['failed_reads']}/{m['reads']} failed; "
      f"independent probe: {probe[0]}; {probe[-1]}")
# Every failed attempt, located: by client, step and the client's error.
located = {}
for failure in m.get("failures", []):
    key = (failure["client"], failure["step"] or "between steps", failure["error"][:70])
    located[key] = located.get(key, 0) + 1
for (client, step, error), count in sorted(located.items()):
    print(f"    {count} x {client} during {step}: {error}")
PY
done
echo "plain switchover on the upgraded lab (Patroni's API, no hold), the drill's probes:"
"$pgha" drill -i "$inventory" switchover --repeat 3 2>/dev/null | tail -n 6
echo "\`pgha switchover\` (new writes held) on the upgraded lab, 3 times, the independent probe:"
PGPASSWORD=$(awk '/superuser_password/ {print $2}' "$dir/lab.secrets.yml") \
  scripts/independent-probe.py 10.231.0.100 5000 0 0.5 > "$dir/probe.txt" 2>&1 &
probe=$!
sleep 2
for _ in 1 2 3; do "$pgha" switchover -i "$inventory" 2>/dev/null; sleep 5; done
kill -TERM "$probe"; wait "$probe" || true
cat "$dir/probe.txt"
"$pgha" lab down >/dev/null 2>&1 || true
