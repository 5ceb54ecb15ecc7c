#!/usr/bin/env bash
# The whole test suite: unit tests beside the code and end-to-end tests under tests/
# (real berthd, real docker-registry, Debian's ctr). Needs root; installs what it uses.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --locked
cargo test --workspace --locked -- --test-threads=2
# ctr's and dockerd's suites once more, with berth's own shim serving the runtime name they
# ask for (io.containerd.runc.v2), so the same acceptance runs against both shims. The test
# binaries just built are run again as they are (a narrower cargo command would resolve
# features differently and rebuild half the dependencies).
mapfile -t again < <(cargo test --workspace --locked --no-run 2>&1 |
  sed -n 's/^ *Executable e2e\/\(tasks\|docker\)\.rs (\(.*\))$/\2/p')
[[ ${#again[@]} -eq 2 ]] || { echo "test.sh: tasks and docker test binaries not found" >&2; exit 1; }
for bin in "${again[@]}"; do
  (cd tests && BERTH_E2E_SHIM=berth "../$bin" --test-threads=2)
done
