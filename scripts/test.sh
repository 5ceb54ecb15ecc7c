#!/usr/bin/env bash
# The whole test suite: unit tests beside the code and end-to-end tests under tests/
# (real berthd, real docker-registry, Debian's ctr). Needs root; installs what it uses.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --locked
cargo test --workspace --locked -- --test-threads=2
