#!/usr/bin/env bash
# berth's shim (containerd-shim-berth-v2, containers made in-process) against Debian's
# containerd-shim-runc-v2 (with runc), both under one berthd whose root is on tmpfs:
#  - `ctr run --rm IMG ID true` through each, alternating;
#  - memory of the shims (RSS, PSS and private from /proc/PID/smaps_rollup, threads) for one
#    idle container, for 20 idle containers and for one pod of 5 containers (the shims group
#    containers by io.kubernetes.cri.sandbox-id);
#  - the berth shim's memory before and after EXECS execs into one container.
# Memory is read 2 s after the last call, when an idle shim has settled: the berth shim lets
# go of its free heap and of its binary's pages one second after its last create, start or
# delete (crates/berth-shim/src/residency.rs).
# Usage: bash bench/shim.sh [RUNS]   (EXECS=10000 by default; needs root, scripts/install-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
runs=${1:-20}
execs=${EXECS:-10000}
build_release
cargo build --release --locked -p berth-e2e --example execs >/dev/null
berthd_bin=$release/berthd
execs_bin=$release/examples/execs
work=/tmp/berth-bench-shim
ns=bench-shim
bench_cgroups=$ns
BERTH=io.containerd.berth.v2
RUNC=io.containerd.runc.v2
C() { ctr -a "$work/berth.sock" -n "$ns" "$@"; }

# Kills and removes every task and container of the benchmark's namespace, and waits for
# their shims to go.
clear_tasks() {
  local t c
  for t in $(C tasks ls -q 2>/dev/null); do C tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  for t in $(C tasks ls -q 2>/dev/null); do
    for _ in $(seq 50); do C tasks ls 2>/dev/null | grep -q "^$t .*STOPPED" && break; sleep 0.1; done
    C tasks rm -f "$t" >/dev/null 2>&1 || true
  done
  for c in $(C containers ls -q 2>/dev/null); do C containers rm "$c" >/dev/null 2>&1 || true; done
  for _ in $(seq 100); do [[ -z $(shim_pids berth)$(shim_pids runc) ]] && break; sleep 0.1; done
}
cleanup() {
  set +e
  [[ -S $work/berth.sock ]] && clear_tasks
  one_pid=${one_pid:-}
  cleanup_work
}
trap cleanup EXIT
mkdir -p "$work" && mount -t tmpfs -o size=2g tmpfs "$work"

# A busybox image as an OCI archive (no registry, no internet).
busybox_layout sh true sleep
skopeo copy --quiet "oci:$work/oci:latest" "oci-archive:$work/bb.tar:bench/busybox:latest"
img=bench/busybox:latest

start_one berthd
C images import "$work/bb.tar" >/dev/null

shim_pids() { pgrep -f "containerd-shim-$1-v2 .*-address $work/berth.sock" || true; }

# Sums over the shims of one kind: "RSS PSS PRIVATE THREADS" (KiB, KiB, KiB, count).
shim_memory() {
  local p rss=0 pss=0 priv=0 thr=0 v
  for p in $(shim_pids "$1"); do
    v=$(awk '/^Rss:/{r=$2} /^Pss:/{s=$2} /^Private_(Clean|Dirty):/{q+=$2} END{print r, s, q}' "/proc/$p/smaps_rollup")
    read -r a b c <<<"$v"
    rss=$((rss + a)); pss=$((pss + b)); priv=$((priv + c))
    thr=$((thr + $(awk '/^Threads:/{print $2}' "/proc/$p/status")))
  done
  echo "$rss $pss $priv $thr"
}

run_once() { # runtime id -> seconds
  local t0 t1
  t0=$(date +%s.%N)
  C run --runtime "$1" --rm "$img" "$2" true
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
run_once "$BERTH" warm-b >/dev/null; run_once "$RUNC" warm-r >/dev/null
b_times=(); r_times=()
for i in $(seq "$runs"); do
  b=$(run_once "$BERTH" "b$i"); r=$(run_once "$RUNC" "r$i")
  b_times+=("$b"); r_times+=("$r")
  printf 'run %d: berth shim %.3fs  runc shim %.3fs\n' "$i" "$b" "$r"
done
bm=$(median "${b_times[@]}"); rm_=$(median "${r_times[@]}")

declare -A mem
for shim in berth runc; do
  rt=$BERTH; [[ $shim == runc ]] && rt=$RUNC
  C run -d --runtime "$rt" "$img" "one-$shim" sleep 100000 >/dev/null
  sleep 2; mem[$shim.one]=$(shim_memory "$shim"); clear_tasks
  for i in $(seq 20); do C run -d --runtime "$rt" "$img" "idle-$shim-$i" sleep 100000 >/dev/null; done
  sleep 2; mem[$shim.twenty]=$(shim_memory "$shim"); clear_tasks
  for i in $(seq 5); do
    C run -d --runtime "$rt" --annotation "io.kubernetes.cri.sandbox-id=pod-$shim" "$img" "pod-$shim-$i" sleep 100000 >/dev/null
  done
  sleep 2; mem[$shim.pod]=$(shim_memory "$shim"); mem[$shim.podshims]=$(shim_pids "$shim" | wc -l); clear_tasks
done

# Execs into one container through the berth shim: memory after a warm-up and at the end.
C run -d --runtime "$BERTH" "$img" exec-target sleep 100000 >/dev/null
"$execs_bin" "$work/berth.sock" "$ns" exec-target 100 >/dev/null
sleep 2; e_before=$(shim_memory berth)
e_times=$("$execs_bin" "$work/berth.sock" "$ns" exec-target "$execs")
sleep 2; e_after=$(shim_memory berth)
clear_tasks

printf '\nctr run --rm %s ID true through berthd, %d runs each, alternating\n' "$img" "$runs"
printf 'median: berth shim %.3fs  runc shim %.3fs  ratio berth/runc %.2f\n' "$bm" "$rm_" "$(echo "$bm / $rm_" | bc -l)"
printf '\nshim memory (KiB)             RSS      PSS  private  threads\n'
for shim in berth runc; do
  for what in one twenty pod; do
    read -r a b c d <<<"${mem[$shim.$what]}"
    n=1; [[ $what == twenty ]] && n=20; [[ $what == pod ]] && n=5
    printf '%-5s %-7s total %9d %8d %8d %8d   per container RSS %d PSS %d\n' "$shim" "$what" "$a" "$b" "$c" "$d" $((a / n)) $((b / n))
  done
  printf '%-5s pod of 5 served by %d shim process(es)\n' "$shim" "${mem[$shim.podshims]}"
done
read -r a b c d <<<"$e_before"; read -r a2 b2 c2 d2 <<<"$e_after"
read -r em ep ew <<<"$e_times"
printf '\n%d execs into one container (berth shim): median %.2f ms, p99 %.2f ms, %.1f s\n' "$execs" "$em" "$ep" "$ew"
printf 'berth shim after 100 execs: RSS %d PSS %d private %d KiB; after %d more: RSS %d PSS %d private %d KiB\n' \
  "$a" "$b" "$c" "$execs" "$a2" "$b2" "$c2"
