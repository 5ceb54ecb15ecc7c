#!/usr/bin/env bash
# Regenerates the hot.order files of berthd and containerd-shim-berth-v2: the order in which
# the linker lays out their code, so that what a running daemon or serving shim executes
# sits together. The kernel maps 64 KiB around every page of a binary a process touches, so
# with the hot code spread over the whole binary a process keeps nearly all of it resident;
# gathered, it keeps little more than what it runs. Run this after changes to either binary
# or their dependencies; a stale file costs memory, never correctness (unknown names are
# skipped). It profiles the release build of the whole workspace, the one build the files are
# for (other feature sets rename symbols).
#
# Which functions run is read from a uprobe on every function of both binaries (tracefs),
# through their everyday work: the shim through one container's life (run -d, idle, an
# exec, kill, delete; what it ran up to idle goes first), berthd through that and CRI pulls
# and pods, ctr's and the Transfer API's pulls, import, runs through both shims, listings
# and removal. A second,
# native pass adds what uprobes cannot probe (glibc's AVX-512 string functions among them):
# the functions on pages a shim touched, seen with readahead off and a cold page cache.
# Usage: bash scripts/layout.sh   (root, python3, scripts/install-deps.sh; no other uprobes;
# about 20 minutes, most of it the kernel removing 30,000 probes)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
cargo build --release --locked -p berth-e2e --example cri_pods --example transfer_pull >/dev/null
shim=$release/containerd-shim-berth-v2
daemon=$release/berthd
client=$release/examples/cri_pods
work=/tmp/berth-layout
ns=layout
parent=/berth-layout
bench_cgroups="$ns ${parent#/}"
tracing=/sys/kernel/tracing
[[ -e $tracing/uprobe_events ]] || mount -t tracefs nodev "$tracing"
[[ -n $(cat "$tracing/uprobe_events") ]] && { echo "layout: other uprobes are defined; remove them first" >&2; exit 1; }
# Removing the probes takes some minutes: the kernel waits out a grace period for each.
unprobe() {
  for g in berth_berthd berth_shim; do [[ -e $tracing/events/$g/enable ]] && echo 0 > "$tracing/events/$g/enable"; done
  : > "$tracing/uprobe_events"
}
blk=$(basename "$(df --output=source "$daemon" | tail -1)")
[[ -e /sys/class/block/$blk/partition ]] && blk=$(lsblk -no pkname "/dev/$blk")
readahead=/sys/block/$blk/queue/read_ahead_kb
ra=
restore() { [[ -n $ra ]] && echo "$ra" > "$readahead"; unprobe; cri_cleanup; }
trap restore EXIT
mkdir -p "$work" && mount -t tmpfs -o size=2g tmpfs "$work"
start_registry 5198
cri_setup
C() { ctr -a "$one_sock" -n "$ns" "$@"; }

# berthd through its everyday work.
daemon_life() {
  rm -rf "$work/berth"
  start_cri berthd
  "$client" start "$one_sock" "$image" 2 1 "$work/logs" "$parent" l >/dev/null
  "$client" teardown "$one_sock" >/dev/null
  C images pull --plain-http "$image" >/dev/null
  C images rm --sync "$image" >/dev/null
  "$release/examples/transfer_pull" "$one_sock" "$image" >/dev/null
  C images import "$work/bb.tar" >/dev/null
  C run --rm layout/busybox:latest r1 true
  C run --rm --runtime io.containerd.berth.v2 layout/busybox:latest r2 true
  C containers ls >/dev/null; C snapshots ls >/dev/null; C content ls >/dev/null; C tasks ls >/dev/null
  C images rm --sync layout/busybox:latest >/dev/null
  stop_one
}

# The shim through one container's life under berthd; $1 runs once the container is idle.
shim_life() {
  rm -rf "$work/berth"
  "$daemon" --root "$work/berth/root" --state "$work/berth/state" \
    --address "$work/berth.sock" --log-level warn & one_pid=$!
  one_sock=$work/berth.sock
  for _ in $(seq 100); do ctr -a "$one_sock" version >/dev/null 2>&1 && break; sleep 0.1; done
  C images import "$work/bb.tar" >/dev/null
  C run -d --runtime io.containerd.berth.v2 layout/busybox:latest one sleep 100000
  sleep 5
  "$1"
  C tasks exec --exec-id e1 one true
  C tasks kill -s SIGKILL one
  for _ in $(seq 100); do C tasks ls | grep -q "one .*STOPPED" && break; sleep 0.1; done
  C tasks rm one >/dev/null
  C containers rm one
  sleep 3
  stop_one
}

rm -rf "$work/rootfs"
busybox_layout sh true sleep
skopeo copy --quiet "oci:$work/oci:latest" "oci-archive:$work/bb.tar:layout/busybox:latest"
for bin in berthd shim; do
  exe=$daemon; [[ $bin == shim ]] && exe=$shim
  python3 scripts/layout.py register "$exe" "berth_$bin" "$work/$bin.map"
  echo 1 > "$tracing/events/berth_$bin/enable"
done
hits() { python3 scripts/layout.py hits "berth_$1" "$work/$1.map" > "$work/$1.$2"; }
shim_idle() { hits shim idle; }
berthd_bin=$daemon
shim_life shim_idle
daemon_life
hits shim all
hits berthd all
unprobe

# What uprobes missed (functions they cannot probe): the pages each binary touched, now laid
# out by the first pass, read with readahead off and the binary out of the page cache.
python3 scripts/layout.py order "$work/shim.idle" -- "$work/shim.all" > crates/containerd-shim-berth-v2/hot.order
python3 scripts/layout.py order -- "$work/berthd.all" > crates/berthd/hot.order
build_release
ra=$(cat "$readahead")
echo 0 > "$readahead"
dd if="$shim" iflag=nocache count=0 status=none
dd if="$daemon" iflag=nocache count=0 status=none
shim_touched() {
  python3 scripts/layout.py touched "$shim" "$(pgrep -f "containerd-shim-berth-v2 .*-address $one_sock")" \
    crates/containerd-shim-berth-v2/hot.order > "$work/shim.touched"
  python3 scripts/layout.py touched "$daemon" "$one_pid" crates/berthd/hot.order > "$work/berthd.touched"
}
shim_life shim_touched
echo "$ra" > "$readahead"; ra=
python3 scripts/layout.py order "$work/shim.idle" "$work/shim.touched" -- "$work/shim.all" > crates/containerd-shim-berth-v2/hot.order
python3 scripts/layout.py order -- "$work/berthd.all" "$work/berthd.touched" > crates/berthd/hot.order
wc -l crates/containerd-shim-berth-v2/hot.order crates/berthd/hot.order
