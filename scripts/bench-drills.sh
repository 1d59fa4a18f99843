#!/usr/bin/env bash
# Benchmark: every failure drill, REPEAT times each, on a deployed cluster; prints one Markdown
# table row per scenario (the BENCHMARKS.md "Drills" table) and keeps each drill's JSON report.
# Usage: scripts/bench-drills.sh [INVENTORY] [REPEAT] [SCENARIO...]
#        (defaults: inventories/lab.yml, 5, every scenario)
# Needs the cluster deployed (`pgha lab up && pgha deploy -i INVENTORY`). A failed verdict is
# reported in its row; the script goes on with the next scenario. Beside each drill runs
# scripts/independent-probe.py (psql on a new connection every 100 ms through the VIP, no pgha
# code); its gaps longer than 0.5 s are the last column, to compare with "each run". A second
# table gives each scenario's phase medians (`pgha drill`'s `phase_medians`).
set -euo pipefail
cd "$(dirname "$0")/.."
pgha="${PGHA:-${CARGO_TARGET_DIR:-target}/debug/pgha}"
[ -x "$pgha" ] || { echo "error: \`$pgha\` not found; hint: run \`cargo build\` or set PGHA" >&2; exit 1; }
inventory="${1:-inventories/lab.yml}"
repeat="${2:-5}"
shift $(( $# < 2 ? $# : 2 ))
scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(switchover kill-postgres kill-haproxy kill-primary partition-primary freeze-primary)
out="${PGHA_BENCH_OUT:-$(mktemp -d /tmp/pgha-drills.XXXXXX)}"
mkdir -p "$out"
echo "reports in $out" >&2
secrets="${inventory%.yml}.secrets.yml"
PGPASSWORD=$(awk '/superuser_password/ {print $2}' "$secrets")
export PGPASSWORD
read -r vip write_port < <("$pgha" inventory show -i "$inventory" --json | python3 -c 'import json, sys; c = json.load(sys.stdin)["cluster"]; print(c["vip"].split("/")[0], c["ports"]["write"])')
echo "| scenario | runs | outage median | outage worst | model range (avg) | each run (s) | persistent connection (s) | acknowledged writes lost | double-primary moments | fenced old-primary moments | old primary streams again after the heal | verdict | independent probe (s) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for scenario in "${scenarios[@]}"; do
  python3 scripts/independent-probe.py "$vip" "$write_port" 0 0.5 > "$out/$scenario.independent" 2>&1 &
  independent=$!
  sleep 1
  "$pgha" drill -i "$inventory" "$scenario" --repeat "$repeat" --json > "$out/$scenario.json" 2> "$out/$scenario.log" || true
  kill -TERM "$independent" 2>/dev/null || true
  wait "$independent" || true
  python3 - "$out/$scenario.json" "$scenario" "$out/$scenario.independent" <<'EOF'
import json, sys
path, scenario, independent = sys.argv[1], sys.argv[2], sys.argv[3]
lines = open(independent).read().splitlines()
gaps = [line.split()[1] for line in lines if line.startswith("gap ")]
if not any(line.startswith("attempts ") for line in lines):
    independent = "probe failed (see the .independent file)"
else:
    independent = ", ".join(gaps) or "none > 0.5"
try:
    report = json.load(open(path))
except ValueError:
    print(f"| `{scenario}` | – | – | – | – | – | – | – | – | – | – | no report (see the log beside it) | {independent} |")
    sys.exit(0)
runs, summary, expected = report["runs"], report["summary"], report["expected"]
s = lambda ms: f"{ms / 1000:.1f}"
streams = [run["old_primary_streaming_after_heal_ms"] for run in runs if run["failover"]]
streams = ", ".join(s(ms) if ms is not None else "never" for ms in streams) or "– (no failover)"
verdict = "pass" if summary["passed"] and not report.get("error") else "FAIL"
problems = sorted({p for run in runs for p in run["problems"]} | ({report["error"]} if report.get("error") else set()))
problems = [" ".join(dict.fromkeys(p.split("\n"))).replace("|", "/") for p in problems]
if problems:
    verdict += ": " + "; ".join(problems)
print(f"| `{scenario}` | {len(runs)} | {s(summary['median_outage_ms'])} s | {s(summary['worst_outage_ms'])} s "
      f"| {s(expected['min_ms'])}–{s(expected['max_ms'])} s ({s(expected['avg_ms'])}) "
      f"| {', '.join(s(run['outage_ms']) for run in runs)} "
      f"| {', '.join(s(run['persistent_outage_ms']) for run in runs)} | {summary['acknowledged_writes_lost']} "
      f"| {summary['double_primary_moments']} | {summary['fenced_primary_moments']} | {streams} | {verdict} | {independent} |")
# The phase medians (s after the fault), for the table printed after this one.
phases = " | ".join(
    f"{s(phase['median_ms'])} ({phase['seen']}/{len(runs)})" if phase["median_ms"] is not None else f"– (0/{len(runs)})"
    for phase in summary.get("phase_medians", []))
with open(path.rsplit("/", 1)[0] + "/phases.md", "a") as table:
    table.write(f"| `{scenario}` | {len(runs)} | {phases} |\n")
EOF
done
echo
echo "Phase medians, seconds after the fault (repetitions that saw the phase):"
echo
echo "| scenario | runs | leader key changed | new leader running | every HAProxy routes | VIP on a routing node | sync standby | first write |"
echo "|---|---|---|---|---|---|---|---|"
cat "$out/phases.md" 2>/dev/null || true
