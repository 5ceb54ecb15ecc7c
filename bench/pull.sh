#!/usr/bin/env bash
# Pull-and-unpack benchmark: a three-layer ~300 MB image (half incompressible) from a
# loopback docker-registry, driven by Debian's ctr against berthd and against Debian's
# containerd 1.6, alternating in one run. Daemon roots live on tmpfs, so the VM's noisy
# disk does not decide the result. Prints per-run times, medians, the ratio, and the idle
# RSS of both daemons. Usage: bash bench/pull.sh [RUNS]   (needs root; run install-deps first)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
runs=${1:-5}
build_release
berthd_bin=$release/berthd
work=/tmp/berth-bench
trap cleanup_work EXIT
mkdir -p "$work" && mount -t tmpfs -o size=6g tmpfs "$work"
start_registry 5199
ref=$(push_three_layer_image)

start_daemons

b_idle0=$(rss $b_pid); c_idle0=$(rss $c_pid)

pull() { # socket -> seconds
  local t0 t1
  t0=$(date +%s.%N)
  ctr -a "$1" images pull --plain-http "$ref" >/dev/null
  t1=$(date +%s.%N)
  ctr -a "$1" images rm --sync "$ref" >/dev/null
  echo "$t1 - $t0" | bc -l
}
b_times=(); c_times=()
for i in $(seq "$runs"); do
  b=$(pull "$work/berth.sock"); c=$(pull "$work/containerd.sock")
  b_times+=("$b"); c_times+=("$c")
  printf 'run %d: berthd %.3fs  containerd %.3fs\n' "$i" "$b" "$c"
done
bm=$(median "${b_times[@]}"); cm=$(median "${c_times[@]}")
sleep 2
b_idle=$(rss $b_pid); c_idle=$(rss $c_pid)
printf '\npull+unpack of %s (3 layers, ~300 MB, half incompressible), %d runs each, alternating\n' "$ref" "$runs"
printf 'median: berthd %.3fs  containerd %.3fs  ratio berth/containerd %.2f (speed-up %.2fx)\n' "$bm" "$cm" "$(echo "$bm / $cm" | bc -l)" "$(echo "$cm / $bm" | bc -l)"
printf 'idle RSS at start: berthd %d KiB  containerd %d KiB  ratio %.2f\n' "$b_idle0" "$c_idle0" "$(echo "$b_idle0 / $c_idle0" | bc -l)"
printf 'idle RSS after pulls: berthd %d KiB  containerd %d KiB  ratio %.2f\n' "$b_idle" "$c_idle" "$(echo "$b_idle / $c_idle" | bc -l)"
