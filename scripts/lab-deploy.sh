#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine as root: set up this machine, build pgha, bring up
# the local 3-node lab and deploy the HA cluster into it, then say how to connect.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
scripts/setup-host.sh
cargo build --locked
pgha="${CARGO_TARGET_DIR:-target}/debug/pgha"
"$pgha" lab up --nodes 3
"$pgha" deploy -i inventories/lab.yml
cat <<TEXT

The cluster \`lab\` is up ($(( $(date +%s) - started )) s in all). Connect through the virtual IP
over TLS, checking the server against the cluster's CA:
  export PGSSLMODE=verify-full PGSSLROOTCERT=inventories/lab.secrets.tls/ca.crt
  writes (primary):  PGPASSWORD=\$(awk '/superuser_password/ {print \$2}' inventories/lab.secrets.yml) psql -h 10.231.0.100 -p 5000 -U postgres
  reads (replicas):  PGPASSWORD=\$(awk '/superuser_password/ {print \$2}' inventories/lab.secrets.yml) psql -h 10.231.0.100 -p 5001 -U postgres
Run \`$pgha deploy -i inventories/lab.yml\` again: it changes nothing.
Tear it down with \`$pgha lab down\`.
TEXT
