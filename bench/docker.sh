#!/usr/bin/env bash
# `docker run --rm IMG true` through Debian's dockerd 20.10 on berthd, against the same
# dockerd on Debian's containerd 1.6, alternating in one run with one daemon pair alive at
# a time (each dockerd + daemon started for its batch and stopped after). Same shim, same
# runc; daemon roots and docker's data on tmpfs.
# Usage: bash bench/docker.sh [RUNS] [BATCH]   (needs root; run scripts/install-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
runs=${1:-5}
batch=${2:-5}
build_release
berthd_bin=$release/berthd
work=/tmp/berth-bench-docker
bench_cgroups=docker
cleanup() {
  set +e
  [[ -n ${d_pid:-} ]] && kill "$d_pid" && wait "$d_pid"
  cleanup_work
}
trap cleanup EXIT
mkdir -p "$work" && mount -t tmpfs -o size=4g tmpfs "$work"

# A busybox image as a `docker save` archive (no registry, no internet).
busybox_layout sh true sleep
skopeo copy --quiet "oci:$work/oci:latest" "docker-archive:$work/bb.tar:bench/busybox:latest"

dock() { docker -H "unix://$work/docker.sock" "$@"; }
start_docker() { # daemon: start it and a dockerd on it, load the image
  start_one "$1"
  rm -rf "$work/docker-data" "$work/docker-exec"
  dockerd --containerd "$one_sock" --data-root "$work/docker-data" --exec-root "$work/docker-exec" \
    --pidfile "$work/docker.pid" -H "unix://$work/docker.sock" --bridge=none --iptables=false --ip-masq=false \
    2>>"$work/dockerd.log" & d_pid=$!
  for _ in $(seq 200); do dock version >/dev/null 2>&1 && break; sleep 0.1; done
  dock load -q -i "$work/bb.tar" >/dev/null
  dock run --rm --network none bench/busybox true # warm-up
}
stop_docker() {
  kill "$d_pid" && wait "$d_pid" || true
  d_pid=
  grep -E " $work/docker-" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
  stop_one
}
run_once() {
  local t0 t1
  t0=$(date +%s.%N)
  dock run --rm --network none bench/busybox true
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

b_t=(); c_t=()
for i in $(seq "$runs"); do
  for daemon in berthd containerd; do
    start_docker "$daemon"
    for j in $(seq "$batch"); do
      t=$(run_once)
      if [[ $daemon == berthd ]]; then b_t+=("$t"); else c_t+=("$t"); fi
    done
    stop_docker
  done
  printf 'round %d: berthd %s  containerd %s\n' "$i" "${b_t[*]: -$batch}" "${c_t[*]: -$batch}"
done
bm=$(median "${b_t[@]}"); cm=$(median "${c_t[@]}")
printf '\ndocker run --rm bench/busybox true through dockerd 20.10, %d runs each, alternating batches of %d\n' "${#b_t[@]}" "$batch"
printf 'median: on berthd %.3fs  on containerd %.3fs  ratio berth/containerd %.2f\n' "$bm" "$cm" "$(echo "$bm / $cm" | bc -l)"
