#!/usr/bin/env bash
# Benchmark: a converged ~40-task playbook re-run on the 3-node lab, pgha vs ansible-core.
# Needs the lab up (`pgha lab up`) and ansible-core (installed into /var/cache/pgha/ansible-venv
# from PyPI by this script if missing). Prints wall times of 5 no-op runs of each and pgha's
# SSH connections per host.
set -euo pipefail
cd "$(dirname "$0")/.."
pgha="${PGHA:-${CARGO_TARGET_DIR:-target}/debug/pgha}"
[ -x "$pgha" ] || { echo "error: \`$pgha\` not found; hint: run \`cargo build\` or set PGHA" >&2; exit 1; }
ansible_venv=/var/cache/pgha/ansible-venv
[ -x "$ansible_venv/bin/ansible-playbook" ] || { /usr/bin/python3 -m venv "$ansible_venv" && "$ansible_venv/bin/pip" install -q ansible-core; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp inventories/lab.yml "$work/lab.yml"
key=/var/lib/pgha/lab/ssh/id_ed25519
known=/var/lib/pgha/lab/ssh/known_hosts

# The same 40 tasks for both tools: 10 directories, 10 files, 10 commands guarded by
# `creates`, 5 services, 5 package checks.
{
  echo "- name: bench"; echo "  hosts: all"; echo "  tasks:"
  for i in $(seq 1 10); do echo "    - {name: dir$i, file: {path: /srv/bench/d$i, state: directory, mode: \"0755\"}}"; done
  for i in $(seq 1 10); do echo "    - {name: file$i, copy: {dest: /srv/bench/d$i/f, content: \"file $i on {{ node.name }}\\n\", mode: \"0644\"}}"; done
  for i in $(seq 1 10); do echo "    - {name: cmd$i, command: {cmd: \"touch /srv/bench/d$i/done\", creates: /srv/bench/d$i/done}}"; done
  for unit in ssh dbus systemd-journald systemd-logind console-getty; do echo "    - {name: svc-$unit, service: {name: $unit, state: started}}"; done
  for package in openssh-server sudo procps iproute2 curl; do echo "    - {name: pkg-$package, package: {name: $package}}"; done
} > "$work/pgha.yml"
{
  echo "- name: bench"; echo "  hosts: all"; echo "  gather_facts: false"; echo "  tasks:"
  for i in $(seq 1 10); do echo "    - {name: dir$i, file: {path: /srv/bench/d$i, state: directory, mode: \"0755\"}}"; done
  for i in $(seq 1 10); do echo "    - {name: file$i, copy: {dest: /srv/bench/d$i/f, content: \"file $i on {{ inventory_hostname }}\\n\", mode: \"0644\"}}"; done
  for i in $(seq 1 10); do echo "    - {name: cmd$i, command: {cmd: \"touch /srv/bench/d$i/done\", creates: /srv/bench/d$i/done}}"; done
  for unit in ssh dbus systemd-journald systemd-logind console-getty; do echo "    - {name: svc-$unit, systemd: {name: $unit, state: started}}"; done
  for package in openssh-server sudo procps iproute2 curl; do echo "    - {name: pkg-$package, apt: {name: $package, state: present}}"; done
} > "$work/ansible.yml"
cat > "$work/hosts.ini" <<INI
[all]
node1 ansible_host=10.231.0.11
node2 ansible_host=10.231.0.12
node3 ansible_host=10.231.0.13
[all:vars]
ansible_user=root
ansible_ssh_private_key_file=$key
ansible_ssh_common_args='-o UserKnownHostsFile=$known -o StrictHostKeyChecking=yes'
ansible_python_interpreter=/usr/bin/python3
INI
seconds() { local start end; start=$(date +%s.%N); "$@" > "$work/out" 2>&1 || { cat "$work/out"; exit 1; }; end=$(date +%s.%N); awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'; }

"$pgha" run -i "$work/lab.yml" "$work/pgha.yml" > /dev/null 2>&1 || true    # converge (also installs curl if missing)
echo "pgha: converged; tasks per host: $(grep -c '    - ' "$work/pgha.yml")"
for run in 1 2 3 4 5; do
  echo "pgha no-op run $run: $(seconds "$pgha" run -i "$work/lab.yml" "$work/pgha.yml") s"
done
"$pgha" run -i "$work/lab.yml" "$work/pgha.yml" --json > "$work/result.json" 2>/dev/null
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("pgha: changed =", sum(h["changed"] for h in r["hosts"].values()), "; SSH connections per host =", {n: h["connections"] for n, h in r["hosts"].items()})' "$work/result.json"

export ANSIBLE_HOST_KEY_CHECKING=True ANSIBLE_NOCOLOR=1 ANSIBLE_FORKS=10
"$ansible_venv/bin/ansible-playbook" -i "$work/hosts.ini" "$work/ansible.yml" > /dev/null 2>&1 || true
for run in 1 2 3 4 5; do
  echo "ansible no-op run $run: $(seconds "$ansible_venv/bin/ansible-playbook" -i "$work/hosts.ini" "$work/ansible.yml") s"
done
grep -E "^node" "$work/out" | sed 's/^/ansible recap: /'
"$ansible_venv/bin/ansible-playbook" --version | head -1
