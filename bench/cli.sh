#!/usr/bin/env bash
# The `berth` command line against Docker's, each on its own daemons, alternating in one
# run with one set alive at a time, roots on tmpfs:
#   berth:  berth → berthd → berth's shim
#   docker: docker → Debian's dockerd 20.10 → Debian's containerd 1.6 → runc shim
# Figures: `run --rm IMG true` to a finished container (with --network none on both, and
# berth's default bridge network besides), and `pull` of the ~300 MB three-layer image from
# a loopback registry into an empty daemon.
# Usage: bash bench/cli.sh [ROUNDS] [BATCH]   (needs root; run scripts/install-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=${1:-3}
batch=${2:-5}
build_release
berthd_bin=$release/berthd
berth_bin=$release/berth
export PATH=$release:$PATH
work=/tmp/berth-bench-cli
bench_cgroups="default moby"
cleanup() {
  set +e
  [[ -n ${d_pid:-} ]] && kill "$d_pid" && wait "$d_pid"
  [[ -n ${one_pid:-} ]] && "$berth_bin" --address "$work/berth.sock" --data-root "$work/cli" rm -f $("$berth_bin" --address "$work/berth.sock" --data-root "$work/cli" ps -aq 2>/dev/null) >/dev/null 2>&1
  for b in $(cat "$work"/cli/*/networks/*/network.json 2>/dev/null | sed -n 's/.*"bridge": *"\([^"]*\)".*/\1/p'); do ip link delete "$b" 2>/dev/null; done
  cleanup_work
}
trap cleanup EXIT
mkdir -p "$work" && mount -t tmpfs -o size=6g tmpfs "$work"

start_registry 5125
busybox_layout sh true sleep
small=$(push_layout bench/busybox:latest)
three=$(push_three_layer_image)

B() { "$berth_bin" --address "$work/berth.sock" --data-root "$work/cli" "$@"; }
dock() { docker -H "unix://$work/docker.sock" "$@"; }

start_set() { # berth|docker, on empty roots
  rm -rf "$work/berth" "$work/containerd" "$work/docker-data" "$work/docker-exec"
  case $1 in
    berth) start_one berthd ;;
    docker)
      start_one containerd
      dockerd --containerd "$one_sock" --data-root "$work/docker-data" --exec-root "$work/docker-exec" \
        --pidfile "$work/docker.pid" -H "unix://$work/docker.sock" --bridge=none --iptables=false --ip-masq=false \
        2>>"$work/dockerd.log" & d_pid=$!
      for _ in $(seq 200); do dock version >/dev/null 2>&1 && break; sleep 0.1; done ;;
  esac
}
stop_set() {
  if [[ -n ${d_pid:-} ]]; then
    kill "$d_pid" && wait "$d_pid" || true
    d_pid=
    grep -E " $work/docker-" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
  fi
  stop_one
}
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }

run_b=(); run_d=(); bridge_b=(); pull_b=(); pull_d=()
for i in $(seq "$rounds"); do
  for set in berth docker; do
    start_set "$set"
    if [[ $set == berth ]]; then
      B pull -q "$small" >/dev/null
      B run --rm --network none "$small" true # warm-up
      for _ in $(seq "$batch"); do run_b+=("$(timed B run --rm --network none "$small" true)"); done
      B run --rm "$small" true # the default network made
      for _ in $(seq "$batch"); do bridge_b+=("$(timed B run --rm "$small" true)"); done
      pull_b+=("$(timed B pull -q "$three")")
    else
      dock pull -q "$small" >/dev/null
      dock run --rm --network none "$small" true
      for _ in $(seq "$batch"); do run_d+=("$(timed dock run --rm --network none "$small" true)"); done
      pull_d+=("$(timed dock pull -q "$three")")
    fi
    stop_set
  done
  printf 'round %d: run berth %s | docker %s | pull berth %s docker %s\n' "$i" \
    "${run_b[*]: -$batch}" "${run_d[*]: -$batch}" "${pull_b[*]: -1}" "${pull_d[*]: -1}"
done
rb=$(median "${run_b[@]}"); rd=$(median "${run_d[@]}"); bb=$(median "${bridge_b[@]}")
pb=$(median "${pull_b[@]}"); pd=$(median "${pull_d[@]}")
printf '\n%d rounds, alternating; medians\n' "$rounds"
printf 'run --rm IMG true (--network none): berth %.3fs  docker %.3fs  ratio berth/docker %.2f (%d runs each)\n' "$rb" "$rd" "$(echo "$rb / $rd" | bc -l)" "${#run_b[@]}"
printf 'run --rm IMG true on berth'"'"'s default bridge network (CNI): %.3fs\n' "$bb"
printf 'pull of the 300 MB three-layer image: berth %.3fs  docker %.3fs  ratio berth/docker %.2f\n' "$pb" "$pd" "$(echo "$pb / $pd" | bc -l)"
