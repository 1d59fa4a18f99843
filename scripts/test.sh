#!/usr/bin/env bash
# The test command: set up the host, then every test, unit to end-to-end against the real lab.
# Test binaries run one after another (cargo's default), and each lab-using binary holds a
# single scenario, so only one lab exists at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
cargo build --locked
cargo test --locked --no-fail-fast
