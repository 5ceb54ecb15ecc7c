#!/usr/bin/env bash
# The whole test suite: unit tests beside the code and end-to-end tests under tests/
# (real berthd, real docker-registry, Debian's ctr). Needs root; installs what it uses.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --locked
cargo test --workspace --locked -- --test-threads=2
# ctr's and dockerd's suites once more, with berth's own shim serving the runtime name they
# ask for (io.containerd.runc.v2), so the same acceptance runs against both shims.
BERTH_E2E_SHIM=berth cargo test --locked -p berth-e2e --test tasks --test docker -- --test-threads=2
