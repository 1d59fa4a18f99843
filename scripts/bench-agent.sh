#!/bin/sh
# Measure write routing after a planned switchover on the lab, with the pgha agent and with
# HAProxy's health checks alone (agents stopped):
#   - routing delay: the leader key changing (seen by `etcdctl watch` on each node) to HAProxy
#     on every node having the new primary as its only UP server in `pgha_write`;
#   - write outage: the longest gap between successful writes (`select txid_current()`, a new
#     connection each time) through VIP:5000.
# Usage (lab deployed, lock held): flock /work/lab.lock scripts/bench-agent.sh [ROUNDS]
set -eu
rounds=${1:-3}
pgha=${PGHA:-/work/target-agent/debug/pgha}
inventory=${INVENTORY:-inventories/lab.yml}
secrets=${SECRETS:-inventories/lab.secrets.yml}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
restapi=$(awk -F': ' '$1 == "restapi_password" { gsub(/"/, "", $2); print $2 }' "$secrets")
superuser=$(awk -F': ' '$1 == "superuser_password" { gsub(/"/, "", $2); print $2 }' "$secrets")
printf 'user = "pgha:%s"\n' "$restapi" > "$work/auth"

cat > "$work/monitor.py" <<'PY'
import json, socket, subprocess, sys, threading, time
candidate, deadline = sys.argv[1], time.time() + float(sys.argv[2])
result = {"key": None, "routed": None}
def watch():
    process = subprocess.Popen(["etcdctl", "--endpoints=https://127.0.0.1:2379", "--cacert=/etc/pgha/tls/ca.crt",
                                "--cert=/etc/pgha/tls/node.crt", "--key=/etc/pgha/tls/node.key", "watch", "/service/lab/leader"],
                               stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.strip() == candidate and result["key"] is None:
            result["key"] = time.time()
threading.Thread(target=watch, daemon=True).start()
time.sleep(0.5)
print("ready", flush=True)
while time.time() < deadline and not (result["key"] and result["routed"]):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect("/run/haproxy/admin.sock")
        s.sendall(b"show servers state pgha_write\n")
        text = s.makefile().read()
        s.close()
        up = [f[3] for f in (line.split() for line in text.splitlines()) if len(f) > 6 and f[1] == "pgha_write" and f[5] == "2"]
        if up == [candidate] and result["routed"] is None:
            result["routed"] = time.time()
    except OSError:
        pass
    time.sleep(0.01)
print(json.dumps(result), flush=True)
PY

cat > "$work/writer.py" <<'PY'
import os, subprocess, sys, time
deadline = time.time() + float(sys.argv[1])
last_ok, worst = None, 0.0
env = dict(os.environ, PGHOST="10.231.0.100", PGPORT="5000", PGUSER="postgres", PGDATABASE="postgres", PGCONNECT_TIMEOUT="1")
while time.time() < deadline:
    ok = subprocess.run(["psql", "-X", "-A", "-t", "-c", "select txid_current()"], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    now = time.time()
    if ok:
        if last_ok is not None:
            worst = max(worst, now - last_ok)
        last_ok = now
    time.sleep(0.02)
print(f"{worst:.2f}")
PY

# Patroni's API wants the control machine's certificate from the cluster CA.
tls_dir="${secrets%.yml}.tls"
tls=(--cacert "$tls_dir/ca.crt" --cert "$tls_dir/control.crt" --key "$tls_dir/control.key")
cluster() { curl -fsS "${tls[@]}" --max-time 3 https://10.231.0.11:8008/cluster; }
role_of() { python3 -c "import json,sys; c=json.load(sys.stdin); print(next(m['name'] for m in c['members'] if m['role']=='$1'))"; }
address_of() { echo "10.231.0.1${1#node}"; }

healthy() {
    for _ in $(seq 60); do
        if cluster | python3 -c "import json,sys; c=json.load(sys.stdin); ms=c['members']; sys.exit(0 if any(m['role']=='sync_standby' for m in ms) and all(m['state'] in ('running','streaming') for m in ms) else 1)" 2>/dev/null; then
            return 0
        fi
        sleep 1
    done
    echo "the cluster did not become healthy" >&2
    return 1
}

round() {
    mode=$1
    healthy
    sleep 3
    leader=$(cluster | role_of leader)
    candidate=$(cluster | role_of sync_standby)
    monitor=$(base64 -w0 < "$work/monitor.py")
    "$pgha" exec -i "$inventory" -- "echo $monitor | base64 -d > /tmp/pgha-bench-monitor.py; nohup python3 /tmp/pgha-bench-monitor.py $candidate 25 > /tmp/pgha-bench.out 2>&1 < /dev/null &" > /dev/null
    PGPASSWORD=$superuser python3 "$work/writer.py" 20 > "$work/outage" &
    writer=$!
    sleep 3
    curl -sS "${tls[@]}" --max-time 30 -K "$work/auth" -X POST -H 'Content-Type: application/json' \
        -d "{\"leader\": \"$leader\", \"candidate\": \"$candidate\"}" "https://$(address_of "$leader"):8008/switchover" > /dev/null
    wait "$writer"
    sleep 5
    "$pgha" exec -i "$inventory" --json -- "tail -n 1 /tmp/pgha-bench.out" > "$work/monitors.json"
    python3 - "$mode" "$leader" "$candidate" "$(cat "$work/outage")" "$work/monitors.json" <<'PY'
import json, sys
mode, leader, candidate, outage, path = sys.argv[1:]
hosts = json.load(open(path))
results = [json.loads((h["stdout"].strip().splitlines() or ["{}"])[-1] or "{}") for h in hosts]
results = [r if "key" in r else {"key": None, "routed": None} for r in results]
keys = [r["key"] for r in results if r["key"]]
routed = [r["routed"] for r in results]
if not keys or None in routed:
    print(f"{mode}: {leader} -> {candidate}: incomplete {results}")
else:
    print(f"{mode}: {leader} -> {candidate}: routing {max(routed) - min(keys):.2f} s after the leader key, write outage {outage} s")
PY
}

"$pgha" exec -i "$inventory" -- "command -v etcdctl python3 > /dev/null" > /dev/null
for mode in agent checks; do
    if [ "$mode" = checks ]; then
        "$pgha" exec -i "$inventory" -- "systemctl stop pgha-agent" > /dev/null
    else
        "$pgha" exec -i "$inventory" -- "systemctl start pgha-agent" > /dev/null
    fi
    for _ in $(seq "$rounds"); do
        round "$mode"
    done
done
"$pgha" exec -i "$inventory" -- "systemctl start pgha-agent" > /dev/null
