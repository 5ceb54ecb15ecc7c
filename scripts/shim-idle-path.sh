#!/usr/bin/env bash
# Prints the functions an idle berth shim runs after its quiet release (residency.rs lets go
# of the binary's pages a second after the last call): from the release's first madvise to
# the shim's next epoll_wait, single-stepped under gdb. They lead the shim's hot.order, so
# that what an idle shim maps again fits in one or two of the kernel's 64 KiB fault-around
# windows. gdb's breakpoints copy the text page they sit in, so in this run the release
# skips the text mapping (its copied page makes it unsafe to drop); the path is otherwise
# the same. Put the output at the head of crates/containerd-shim-berth-v2/hot.order
# (removing the names from further down) after changes to the shim's idle path.
# Usage: bash scripts/shim-idle-path.sh > /tmp/idle.fns   (root, gdb, scripts/install-deps.sh)
set -euo pipefail
command -v gdb >/dev/null || { echo "shim-idle-path: needs gdb (apt-get install gdb)" >&2; exit 1; }
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release >&2
berthd_bin=$release/berthd
shim=$release/containerd-shim-berth-v2
work=/tmp/berth-idle-path
bench_cgroups=idle
C() { ctr -a "$one_sock" -n idle "$@"; }
finish() {
  set +e
  if [[ -n ${one_sock:-} ]] && C tasks ls -q 2>/dev/null | grep -qx one; then
    C tasks kill -s SIGKILL one
    for _ in $(seq 100); do C tasks ls | grep -q "one .*STOPPED" && break; sleep 0.1; done
    C tasks rm one >/dev/null
  fi
  [[ -n ${one_sock:-} ]] && C containers rm one 2>/dev/null
  cleanup_work
}
trap finish EXIT
mkdir -p "$work" && mount -t tmpfs -o size=1g tmpfs "$work"
busybox_layout sh true sleep >&2
skopeo copy --quiet "oci:$work/oci:latest" "oci-archive:$work/bb.tar:idle/busybox:latest"
start_one berthd >&2
C images import "$work/bb.tar" >/dev/null
C run -d --runtime io.containerd.berth.v2 idle/busybox:latest one sleep 100000 >/dev/null
sleep 2
pid=$(pgrep -f "containerd-shim-berth-v2 .*-id one ")
IDLE_PCS=$work/pcs timeout 120 gdb -nx -batch -p "$pid" -x scripts/shim-idle-path.py > "$work/gdb.log" 2>&1 &
gdb_pid=$!
for _ in $(seq 240); do grep -q "Breakpoint 1 at" "$work/gdb.log" && break; sleep 0.5; done
C tasks exec --exec-id e1 one true # its start and delete set off the next quiet release
wait "$gdb_pid" && [[ -s $work/pcs ]] || { cat "$work/gdb.log" >&2; exit 1; }
# Addresses to function names, in address order, from the binary's own symbol table.
nm -n -S --defined-only "$shim" | awk 'NF == 4 && $3 ~ /^[tTwW]$/ {print $1, $2, $4}' > "$work/syms"
python3 - "$work/syms" "$work/pcs" <<'PY'
import bisect, sys
syms = [(int(a, 16), n) for a, _, n in (l.split() for l in open(sys.argv[1]))]
starts = [a for a, _ in syms]
names = {}
for line in open(sys.argv[2]):
    pc = int(line, 16)
    i = bisect.bisect_right(starts, pc) - 1
    if i >= 0:
        names.setdefault(syms[i][1], syms[i][0])
for n, _ in sorted(names.items(), key=lambda x: x[1]):
    print(n)
PY
