#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine as root: set up this machine, build pgha, bring up
# the local 3-node lab and deploy the HA cluster into it, then say how to connect.
# Usage: scripts/lab-deploy.sh [--release trixie|bookworm]
#   trixie (default): Debian 13 nodes, PostgreSQL 17, inventories/lab-trixie.yml
#   bookworm:         Debian 12 nodes, PostgreSQL 15, inventories/lab.yml
set -euo pipefail
cd "$(dirname "$0")/.."
release=trixie
if [ "${1:-}" = --release ]; then
    release="${2:-}"
fi
case "$release" in
    trixie) inventory=inventories/lab-trixie.yml ;;
    bookworm) inventory=inventories/lab.yml ;;
    *) echo "error: unknown release \`$release\`; hint: --release trixie or --release bookworm" >&2; exit 2 ;;
esac
started=$(date +%s)
scripts/setup-host.sh
cargo build --locked
pgha="${CARGO_TARGET_DIR:-target}/debug/pgha"
"$pgha" lab up --nodes 3 --release "$release"
"$pgha" deploy -i "$inventory"
secrets="${inventory%.yml}.secrets.yml"
cat <<TEXT

The cluster \`lab\` is up on $release nodes ($(( $(date +%s) - started )) s in all). Connect through
the virtual IP over TLS, checking the server against the cluster's CA:
  export PGSSLMODE=verify-full PGSSLROOTCERT=${secrets%.yml}.tls/ca.crt
  writes (primary):  PGPASSWORD=\$(awk '/superuser_password/ {print \$2}' $secrets) psql -h 10.231.0.100 -p 5000 -U postgres
  reads (replicas):  PGPASSWORD=\$(awk '/superuser_password/ {print \$2}' $secrets) psql -h 10.231.0.100 -p 5001 -U postgres
Run \`$pgha deploy -i $inventory\` again: it changes nothing.
Tear it down with \`$pgha lab down\`.
TEXT
