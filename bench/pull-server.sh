#!/usr/bin/env bash
# Server-side pull benchmark: berthd pulling and unpacking through its Transfer API, against
# `ctr images pull` on Debian's containerd 1.6 (client-side fetch, daemon-side unpack) and
# `skopeo copy` to a local OCI layout (fetch only, no unpack), alternating in one run with
# one daemon alive at a time (each started before and stopped after its pull).
# Images, from a loopback docker-registry: (a) three layers, ~300 MB, half incompressible;
# (b) twenty layers of 500 small files each. Daemon roots on tmpfs.
# Usage: bash bench/pull-server.sh [RUNS]   (needs root; run scripts/install-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
runs=${1:-5}
build_release
cargo build --release --locked -p berth-e2e --example transfer_pull --example latency_proxy >/dev/null
berthd_bin=$release/berthd
client=$release/examples/transfer_pull
work=/tmp/berth-bench-xfer
trap cleanup_work EXIT
mkdir -p "$work" && mount -t tmpfs -o size=8g tmpfs "$work"
start_registry 5198
three=$(push_three_layer_image)
twenty=$(push_twenty_layer_image)

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
berth_pull() {
  start_one berthd
  secs "$client" "$one_sock" "$1"
  ctr -a "$one_sock" images rm --sync "$1" >/dev/null
  stop_one
}
ctrd_pull() {
  start_one containerd
  secs ctr -a "$one_sock" images pull --plain-http "$1"
  ctr -a "$one_sock" images rm --sync "$1" >/dev/null
  stop_one
}
skopeo_pull() { secs skopeo copy --quiet --src-tls-verify=false "docker://$1" "oci:$work/skopeo:latest"; rm -rf "$work/skopeo"; }

# The same images through a proxy that adds 50 ms to every request.
"$release/examples/latency_proxy" "$reg" 50 > "$work/proxy.addr" & proxy_pid=$!
for _ in $(seq 100); do [[ -s $work/proxy.addr ]] && break; sleep 0.1; done
slow=$(cat "$work/proxy.addr")

for ref in "$three" "$twenty" "${three/$reg/$slow}" "${twenty/$reg/$slow}"; do
  # A warm-up of each: page cache of the registry's files, first-run costs.
  berth_pull "$ref" >/dev/null; ctrd_pull "$ref" >/dev/null
  b_t=(); c_t=(); s_t=()
  for i in $(seq "$runs"); do
    b=$(berth_pull "$ref"); c=$(ctrd_pull "$ref"); s=$(skopeo_pull "$ref")
    b_t+=("$b"); c_t+=("$c"); s_t+=("$s")
    printf '%s run %d: berthd %.3fs  containerd %.3fs  skopeo %.3fs\n' "$ref" "$i" "$b" "$c" "$s"
  done
  bm=$(median "${b_t[@]}"); cm=$(median "${c_t[@]}"); sm=$(median "${s_t[@]}")
  printf '%s median: berthd %.3fs  containerd %.3fs  skopeo(fetch only) %.3fs  berth/containerd %.2f (speed-up %.2fx)  berth/skopeo %.2f\n\n' \
    "$ref" "$bm" "$cm" "$sm" "$(echo "$bm / $cm" | bc -l)" "$(echo "$cm / $bm" | bc -l)" "$(echo "$bm / $sm" | bc -l)"
done
