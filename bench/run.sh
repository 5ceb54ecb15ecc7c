#!/usr/bin/env bash
# Container start benchmark: `ctr run --rm IMG ID true` against berthd and against Debian's
# containerd 1.6, same shim (Debian's containerd-shim-runc-v2) and same runc, alternating in
# one run; then the RSS of each daemon with 50 idle containers running. Daemon roots live
# on tmpfs. Usage: bash bench/run.sh [RUNS]   (needs root; run scripts/install-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
runs=${1:-20}
idle=${IDLE:-50}
build_release
berthd_bin=$release/berthd
work=/tmp/berth-bench-run
b_ns=bench-berth
c_ns=bench-containerd
bench_cgroups="$b_ns $c_ns"
cleanup() {
  set +e
  for pair in "$work/berth.sock:$b_ns" "$work/containerd.sock:$c_ns"; do
    sock=${pair%%:*}; ns=${pair##*:}
    [[ -S $sock ]] || continue
    for t in $(ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
      ctr -a "$sock" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
    done
    sleep 1
    for t in $(ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do ctr -a "$sock" -n "$ns" tasks rm -f "$t" >/dev/null 2>&1; done
    for c in $(ctr -a "$sock" -n "$ns" containers ls -q 2>/dev/null); do ctr -a "$sock" -n "$ns" containers rm "$c" >/dev/null 2>&1; done
  done
  [[ -n "${b_pid:-}" ]] && kill "$b_pid" && wait "$b_pid"
  [[ -n "${c_pid:-}" ]] && kill "$c_pid" && wait "$c_pid"
  grep -E " $work/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
  umount -l "$work" 2>/dev/null
  rm -rf "$work"
  remove_cgroups $bench_cgroups
}
trap cleanup EXIT
mkdir -p "$work" && mount -t tmpfs -o size=2g tmpfs "$work"

# A busybox image as an OCI archive, imported into both daemons (no registry, no internet).
busybox_layout sh true sleep
skopeo copy --quiet "oci:$work/oci:latest" "oci-archive:$work/bb.tar:bench/busybox:latest"
img=bench/busybox:latest

start_daemons
ctr -a "$work/berth.sock" -n "$b_ns" images import "$work/bb.tar" >/dev/null
ctr -a "$work/containerd.sock" -n "$c_ns" images import "$work/bb.tar" >/dev/null

run_once() { # socket ns id -> seconds
  local t0 t1
  t0=$(date +%s.%N)
  ctr -a "$1" -n "$2" run --rm "$img" "$3" true
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
# One warm-up each: first runs pay for page cache and cgroup creation.
run_once "$work/berth.sock" "$b_ns" warm >/dev/null; run_once "$work/containerd.sock" "$c_ns" warm >/dev/null
b_times=(); c_times=()
for i in $(seq "$runs"); do
  b=$(run_once "$work/berth.sock" "$b_ns" "r$i"); c=$(run_once "$work/containerd.sock" "$c_ns" "r$i")
  b_times+=("$b"); c_times+=("$c")
  printf 'run %d: berthd %.3fs  containerd %.3fs\n' "$i" "$b" "$c"
done
bm=$(median "${b_times[@]}"); cm=$(median "${c_times[@]}")

for i in $(seq "$idle"); do
  ctr -a "$work/berth.sock" -n "$b_ns" run -d "$img" "idle$i" sleep 100000 >/dev/null
  ctr -a "$work/containerd.sock" -n "$c_ns" run -d "$img" "idle$i" sleep 100000 >/dev/null
done
sleep 3
b_running=$(ctr -a "$work/berth.sock" -n "$b_ns" tasks ls | grep -c RUNNING || true)
c_running=$(ctr -a "$work/containerd.sock" -n "$c_ns" tasks ls | grep -c RUNNING || true)
b_rss=$(rss $b_pid); c_rss=$(rss $c_pid)

printf '\nctr run --rm %s ID true, %d runs each, alternating (same shim, same runc)\n' "$img" "$runs"
printf 'median: berthd %.3fs  containerd %.3fs  ratio berth/containerd %.2f (speed-up %.2fx)\n' "$bm" "$cm" "$(echo "$bm / $cm" | bc -l)" "$(echo "$cm / $bm" | bc -l)"
printf 'RSS with %d idle containers (berthd %d running, containerd %d running): berthd %d KiB  containerd %d KiB  ratio %.2f\n' \
  "$idle" "$b_running" "$c_running" "$b_rss" "$c_rss" "$(echo "$b_rss / $c_rss" | bc -l)"
