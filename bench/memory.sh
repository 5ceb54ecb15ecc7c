#!/usr/bin/env bash
# Daemon memory through a day's work, berthd against Debian's containerd 1.6, one daemon
# alive at a time: RSS at start; after a 300 MB pull and its removal; after 100 pulls of
# distinct small images and their removal; after 200 concurrent `ctr run --rm` of busybox.
# berthd pulls server-side (Transfer), containerd with ctr. Roots on tmpfs.
# Usage: bash bench/memory.sh   (needs root; run scripts/install-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
cargo build --release --locked -p berth-e2e --example transfer_pull >/dev/null
berthd_bin=$release/berthd
client=$release/examples/transfer_pull
work=/tmp/berth-bench-mem
bench_cgroups=mem
trap cleanup_work EXIT
mkdir -p "$work" && mount -t tmpfs -o size=8g tmpfs "$work"
start_registry 5196
three=$(push_three_layer_image)
mapfile -t small < <(push_small_images 100)
busybox_layout sh true
skopeo copy --quiet "oci:$work/oci:latest" "oci-archive:$work/bb.tar:bench/busybox:latest"

settle() { sleep 8; } # past berthd's trim and blocking-thread keep-alive
for daemon in ${DAEMONS:-berthd containerd}; do
  start_one "$daemon"
  pull() { if [[ $daemon == berthd ]]; then "$client" "$one_sock" "$1" >/dev/null; else ctr -a "$one_sock" images pull --plain-http "$1" >/dev/null; fi; }
  settle; echo "$daemon start: $(rss_detail "$one_pid")"
  pull "$three"; ctr -a "$one_sock" images rm --sync "$three" >/dev/null
  settle; echo "$daemon after 300 MB pull + rm: $(rss_detail "$one_pid")"
  for r in "${small[@]}"; do pull "$r"; done
  settle; echo "$daemon holding 100 small images: $(rss_detail "$one_pid")"
  ctr -a "$one_sock" images rm --sync "${small[@]}" >/dev/null
  settle; echo "$daemon after 100 pulls + rm: $(rss_detail "$one_pid")"
  ctr -a "$one_sock" -n mem images import "$work/bb.tar" >/dev/null
  for i in $(seq 200); do ctr -a "$one_sock" -n mem run --rm bench/busybox:latest "c$i" true >/dev/null 2>&1 & done
  wait_ctr=0
  while pgrep -f "ctr -a $one_sock -n mem run" >/dev/null && ((wait_ctr < 600)); do sleep 0.5; wait_ctr=$((wait_ctr+1)); done
  left=$(ctr -a "$one_sock" -n mem containers ls -q | wc -l)
  settle; echo "$daemon after 200 concurrent run --rm ($left containers left): $(rss_detail "$one_pid")"
  stop_one
done
