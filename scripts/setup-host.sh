#!/usr/bin/env bash
# Prepare this Debian 12 machine (as root) to run pgha, its local lab and its tests:
# host packages, and the pinned Patroni wheels pgha ships to nodes (fetched once, cached).
# Safe to run again: it only does what is missing.
set -euo pipefail

PATRONI_VERSION="${PATRONI_VERSION:-4.1.5}"
CACHE="${PGHA_CACHE:-/var/cache/pgha}"

if [ "$(id -u)" != 0 ]; then
    echo "error: run as root (the lab creates namespaces, mounts and containers)" >&2
    exit 1
fi

packages=(
    protobuf-compiler pkg-config gcc          # building pgha (etcd-client needs protoc)
    systemd-container debootstrap iproute2     # the lab's nodes
    apt-cacher-ng                              # the lab's package proxy
    openssh-client openssh-server              # SSH client; sshd for transport tests
    haproxy keepalived                         # config checkers for rendered files
    postgresql-client                          # psql for tests and users
    python3 python3-venv python3-pip           # building the Patroni wheels shipped to nodes
    curl ca-certificates util-linux sudo       # sudo: transport tests log in as a sudo user
)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "pgha setup: installing ${missing[*]}"
    # Installing must not start the packages' own daemons on this machine (sshd on :22,
    # apt-cacher-ng on all addresses, haproxy, keepalived): pgha runs its own where needed.
    policy=/usr/sbin/policy-rc.d
    created_policy=no
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        created_policy=yes
    fi
    trap '[ "$created_policy" = yes ] && rm -f "$policy"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: \`cargo\` not found; hint: install the Rust toolchain with rustup (https://rustup.rs), then re-run" >&2
    exit 1
fi

# Patroni wheels for the nodes (which may have no internet): built here once with Debian's
# Python 3.11, the same Python the Debian 12 nodes run.
wheels="$CACHE/wheels/patroni-$PATRONI_VERSION"
if [ ! -f "$wheels/.complete" ]; then
    echo "pgha setup: fetching Patroni $PATRONI_VERSION wheels into $wheels"
    mkdir -p "$wheels"
    /usr/bin/python3 -m venv "$CACHE/build-venv"
    "$CACHE/build-venv/bin/pip" wheel --quiet --wheel-dir "$wheels" \
        "patroni[etcd3]==$PATRONI_VERSION" psycopg2-binary </dev/null
    touch "$wheels/.complete"
fi

# The same wheels installed offline on this machine, for `patroni --validate-config` in tests.
venv="$CACHE/patroni-$PATRONI_VERSION"
if [ ! -x "$venv/bin/patroni" ]; then
    echo "pgha setup: installing Patroni $PATRONI_VERSION into $venv (offline, from the wheels)"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --no-index --find-links "$wheels" "patroni[etcd3]==$PATRONI_VERSION" psycopg2-binary </dev/null
fi
echo "pgha setup: ready"
