#!/usr/bin/env bash
# Prepare this Debian 12 machine (as root) to run pgha, its local lab and its tests:
# host packages, and the pinned Patroni wheels pgha ships to nodes (fetched once, cached).
# Safe to run again: it only does what is missing.
set -euo pipefail

# Whatever step fails, say which one and what to do, instead of leaving only the tool's output.
step="checking that it runs as root"
hint="run it as root, e.g. from \`sudo -i\`"
on_failure() {
    echo "error: pgha setup failed while $step" >&2
    [ -n "$hint" ] && echo "  hint: $hint" >&2
}
trap 'status=$?; [ "$status" = 0 ] || on_failure' EXIT

PATRONI_VERSION="${PATRONI_VERSION:-4.1.5}"
WHEEL_VERSION=0.45.1
CACHE="${PGHA_CACHE:-/var/cache/pgha}"

if [ "$(id -u)" != 0 ]; then
    echo "error: pgha setup needs root (the lab creates namespaces, mounts and containers)" >&2
    exit 1
fi

packages=(
    protobuf-compiler libprotobuf-dev          # etcd-client's build: protoc and the well-known
                                               #   .proto files (only recommended by protoc)
    pkg-config gcc libc6-dev                   # building pgha (the linker, C parts of crates)
    systemd-container debootstrap iproute2     # the lab's nodes
    iptables                                   # the lab's link faults (`pgha lab impair`)
    apt-cacher-ng                              # the lab's package proxy
    openssh-client openssh-server              # SSH client; sshd for transport tests
    haproxy keepalived                         # config checkers for rendered files
    postgresql-client                          # psql for tests and users
    librsvg2-bin                               # rsvg-convert: the drill test renders its SVG timeline
    python3 python3-venv python3-pip           # building the Patroni wheels shipped to nodes
    curl ca-certificates util-linux sudo       # sudo: transport tests log in as a sudo user
)
step="checking which packages are missing"
hint=""
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
    trap 'status=$?; [ "$created_policy" = yes ] && rm -f "$policy"; [ "$status" = 0 ] || on_failure' EXIT
    export DEBIAN_FRONTEND=noninteractive
    step="updating apt's package lists"
    hint="check this machine's apt sources (/etc/apt/sources.list.d) and that the mirror is reachable"
    apt-get update -q
    step="installing ${missing[*]}"
    hint="run \`apt-get install ${missing[*]}\` by hand to see which package apt cannot install"
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    if [ "$created_policy" = yes ]; then
        rm -f "$policy"
        created_policy=no
    fi
fi

step="looking for the Rust toolchain"
hint="install the Rust toolchain with rustup (https://rustup.rs), then re-run"
command -v cargo >/dev/null 2>&1 || { echo "error: \`cargo\` not found" >&2; exit 1; }

# Patroni wheels for the nodes (which may have no internet): built here once with this
# machine's Python (3.11 on Debian 12, the Python of Debian 12 nodes). `pgha deploy` adds the
# set for Debian 13's Python 3.13 from PyPI's binary wheels when a cluster needs it.
python_tag=$(/usr/bin/python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
wheels="$CACHE/wheels/patroni-$PATRONI_VERSION-$python_tag"
if [ ! -f "$wheels/.complete" ]; then
    echo "pgha setup: fetching Patroni $PATRONI_VERSION wheels into $wheels"
    mkdir -p "$wheels"
    step="creating the wheel-building virtualenv $CACHE/build-venv"
    hint="\`python3-venv\` must be installed; remove $CACHE/build-venv and re-run"
    /usr/bin/python3 -m venv "$CACHE/build-venv"
    # Debian's venv has pip and setuptools but not `wheel`, without which the two source-only
    # dependencies (python-etcd, ydiff) cannot be built: "invalid command 'bdist_wheel'".
    step="installing \`wheel\` into $CACHE/build-venv from PyPI"
    hint="pip must reach PyPI (proxy and CA settings: PIP_CERT, PIP_INDEX_URL)"
    "$CACHE/build-venv/bin/pip" install --quiet "wheel==$WHEEL_VERSION" </dev/null
    step="building the Patroni $PATRONI_VERSION wheels into $wheels"
    hint="pip must reach PyPI; the build needs \`wheel\` in $CACHE/build-venv (see above)"
    "$CACHE/build-venv/bin/pip" wheel --quiet --wheel-dir "$wheels" \
        "patroni[etcd3]==$PATRONI_VERSION" psycopg2-binary </dev/null
    touch "$wheels/.complete"
fi

# The same wheels installed offline on this machine, for `patroni --validate-config` in tests.
venv="$CACHE/patroni-$PATRONI_VERSION"
if [ ! -x "$venv/bin/patroni" ]; then
    echo "pgha setup: installing Patroni $PATRONI_VERSION into $venv (offline, from the wheels)"
    step="installing Patroni $PATRONI_VERSION offline from $wheels"
    hint="the wheel set is incomplete: remove $wheels and re-run to build it again"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --no-index --find-links "$wheels" "patroni[etcd3]==$PATRONI_VERSION" psycopg2-binary </dev/null
fi
step="done"
echo "pgha setup: ready"
