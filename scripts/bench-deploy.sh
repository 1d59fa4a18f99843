#!/usr/bin/env bash
# Benchmark: first `pgha deploy` into fresh lab nodes, then 5 no-op re-runs (wall time and
# changed count). Starts from `pgha lab down` + `pgha lab up` (base cached; the package proxy's
# cache is warm unless the lab was purged). Leaves the deployed lab up.
# Usage: scripts/bench-deploy.sh [INVENTORY]   (default inventories/lab.yml; lab-trixie.yml: Debian 13)
set -euo pipefail
cd "$(dirname "$0")/.."
pgha="${PGHA:-${CARGO_TARGET_DIR:-target}/debug/pgha}"
[ -x "$pgha" ] || { echo "error: \`$pgha\` not found; hint: run \`cargo build\` or set PGHA" >&2; exit 1; }
inventory="${1:-inventories/lab.yml}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$pgha" lab down > "$work/lab.log" 2>&1 || { cat "$work/lab.log" >&2; exit 1; }
# The nodes' release is the one that ships the inventory's PostgreSQL (15: bookworm, 17: trixie).
release=$("$pgha" inventory show -i "$inventory" --json | python3 -c 'import json, sys; print({15: "bookworm", 17: "trixie"}[json.load(sys.stdin)["cluster"]["postgres_version"]])')
"$pgha" lab up --release "$release" > "$work/lab.log" 2>&1 || { cat "$work/lab.log" >&2; exit 1; }
seconds() { local start end; start=$(date +%s.%N); "$@" > "$work/result.json" 2> "$work/err" || { cat "$work/err"; exit 1; }; end=$(date +%s.%N); awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'; }
changed() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(h["changed"] for h in r["hosts"].values()))' "$work/result.json"; }
slowest() { python3 -c 'import json,sys
for t in json.load(open(sys.argv[1]))["slowest"]:
    print("    %6.1f s  %-8s %s > %s" % (t["duration_ms"] / 1000, t["host"], t["play"], t["task"]))' "$work/result.json"; }
echo "first deploy: $(seconds "$pgha" deploy -i "$inventory" --json) s, changed $(changed); slowest tasks:"
slowest
for run in 1 2 3 4 5; do
  echo "no-op deploy $run: $(seconds "$pgha" deploy -i "$inventory" --json) s, changed $(changed)"
done
