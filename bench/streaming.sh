#!/usr/bin/env bash
# CRI streaming: exec round trips (ExecSync of `true`, and a streamed exec of `true` as the
# kubelet's clients make it: Exec, then SPDY/3.1 to the URL, streams, status), port-forward
# throughput (256 MiB from a server in the pod through one forwarded connection), and the
# memory an open exec stream costs (PSS of the daemon and its shims, 20 streams open).
# berthd against Debian's containerd 1.6 with its CRI plugin (whose streaming server is
# the kubelet's Go code): the same Rust client drives both, one daemon alive at a time,
# alternating for $1 rounds (default 3) of $2 execs each (default 50). Roots on tmpfs.
# Usage: bash bench/streaming.sh [ROUNDS] [EXECS]   (needs root; scripts/install-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=${1:-3}
execs=${2:-50}
build_release
cargo build --release --locked -p berth-e2e --example cri_pods >/dev/null
berthd_bin=$release/berthd
client=$release/examples/cri_pods
work=/tmp/berth-bench-stream
bench_cgroups=k8s.io
trap cri_cleanup EXIT
mkdir -p "$work" && mount -t tmpfs -o size=4g tmpfs "$work"
start_registry 5195
cri_setup

declare -A sync_all exec_all fwd_all mem_all
for r in $(seq "$rounds"); do
  for daemon in ${DAEMONS:-berthd containerd}; do
    start_cri "$daemon"
    out=$("$client" stream "$one_sock" "$image" "$execs" "$work/logs" "$one_pid")
    sync_all[$daemon]+="$(sed -n 's/^execsync //p' <<<"$out") "
    exec_all[$daemon]+="$(sed -n 's/^exec //p' <<<"$out") "
    fwd=$(sed -n 's/^forward //p' <<<"$out"); fwd_all[$daemon]+="$fwd "
    read -r n d0 d1 s0 s1 <<<"$(sed -n 's/^memory //p' <<<"$out")"
    per=$(( (d1 - d0 + s1 - s0) / n ))
    mem_all[$daemon]+="$per "
    # shellcheck disable=SC2086
    echo "round $r $daemon: ExecSync median $(median $(sed -n 's/^execsync //p' <<<"$out")) ms, streamed exec median $(median $(sed -n 's/^exec //p' <<<"$out")) ms, port forward $fwd MB/s, per open exec stream $per KiB PSS (daemon $(( (d1 - d0) / n )), shims $(( (s1 - s0) / n )))"
    "$client" teardown "$one_sock" >/dev/null
    stop_one
    pkill -f "containerd-shim-(runc|berth)-v2 .*-address $one_sock" 2>/dev/null || true
  done
done

[[ -n ${DAEMONS:-} ]] && exit 0
echo
echo "CRI streaming over $rounds rounds (medians; ratio berth/containerd):"
for what in sync exec fwd mem; do
  declare -n all=${what}_all
  # shellcheck disable=SC2086
  b=$(median ${all[berthd]}); c=$(median ${all[containerd]})
  case $what in
    sync) label="ExecSync true (ms)";;
    exec) label="streamed exec true (ms)";;
    fwd) label="port forward (MB/s)";;
    mem) label="per open exec stream (KiB PSS)";;
  esac
  printf '  %-32s berthd %8.1f  containerd %8.1f  ratio %.2f\n' "$label" "$b" "$c" "$(bc -l <<<"$b/($c + 0.0001)")"
  unset -n all
done
