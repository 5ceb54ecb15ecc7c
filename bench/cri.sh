#!/usr/bin/env bash
# Pod startup through CRI, as the kubelet starts a pod (RunPodSandbox + CreateContainer +
# StartContainer of a busybox sleeper, image present): 50 pods one at a time, then 50 pods
# ten at a time; berthd against Debian's containerd 1.6 with its CRI plugin, both on the
# same CNI configuration (bridge + host-local + portmap from /usr/lib/cni), one daemon
# alive at a time, alternating for $1 rounds (default 3). Roots on tmpfs. With 50 pods
# running it sums the proportional memory (PSS) of the daemon, its shims, and the
# sandbox processes (containerd's pause containers; berthd holds a pod's namespaces
# without a process). Prints per-pod medians, p99 and ratios (berth/containerd).
# Usage: bash bench/cri.sh [ROUNDS]   (needs root; run scripts/install-deps.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=${1:-3}
pods=${PODS:-50}  # PODS and DAEMONS (e.g. "berthd") narrow a run while developing
build_release
cargo build --release --locked -p berth-e2e --example cri_pods >/dev/null
berthd_bin=$release/berthd
client=$release/examples/cri_pods
work=/tmp/berth-bench-cri
parent=/berth-bench-cri
bench_cgroups=${parent#/}
trap cri_cleanup EXIT
mkdir -p "$work" && mount -t tmpfs -o size=4g tmpfs "$work"
start_registry 5197

cri_setup

# PSS in KiB of the daemon, its shims and its sandbox processes: "daemon shims sandboxes".
memory() {
  local d s=0 p=0 shim kid
  d=$(pss "$one_pid")
  for shim in $(pgrep -f "containerd-shim-(runc|berth)-v2 .*-address $one_sock"); do
    s=$((s + $(pss "$shim")))
    for kid in $(pgrep -P "$shim"); do
      grep -q 2147483647 "/proc/$kid/cmdline" 2>/dev/null && p=$((p + $(pss "$kid")))
    done
  done
  echo "$d $s $p"
}

declare -A seq_all conc_all seq_p99 conc_p99 seq_wall conc_wall mem
for r in $(seq "$rounds"); do
  for daemon in ${DAEMONS:-berthd containerd}; do
    start_cri "$daemon"
    out=$("$client" start "$one_sock" "$image" "$pods" 1 "$work/logs" "$parent" "s$r")
    read -r med p99 wall <<<"$(head -1 <<<"$out")"
    phases=$(sed -n 2p <<<"$out")
    seq_all[$daemon]+="$(tail -n +3 <<<"$out" | tr '\n' ' ')"
    seq_p99[$daemon]+="$p99 "; seq_wall[$daemon]+="$wall "
    sleep 2
    m=$(memory)
    mem[$daemon]+="$m,"
    td=$("$client" teardown "$one_sock")
    out=$("$client" start "$one_sock" "$image" "$pods" 10 "$work/logs" "$parent" "c$r")
    read -r med2 p992 wall2 <<<"$(head -1 <<<"$out")"
    phases2=$(sed -n 2p <<<"$out")
    conc_all[$daemon]+="$(tail -n +3 <<<"$out" | tr '\n' ' ')"
    conc_p99[$daemon]+="$p992 "; conc_wall[$daemon]+="$wall2 "
    td2=$("$client" teardown "$one_sock")
    left=$(ls "$work/ipam/berth-bench" 2>/dev/null | grep -c '^10\.' || true)
    echo "round $r $daemon: sequential median ${med} ms p99 ${p99} ms (${wall} s; $phases); 10 at a time median ${med2} ms p99 ${p992} ms (${wall2} s; $phases2); memory with $pods pods (KiB PSS daemon shims sandboxes): $m; teardown ${td} s / ${td2} s; addresses left: $left"
    stop_one
    pkill -f "containerd-shim-(runc|berth)-v2 .*-address $one_sock" 2>/dev/null || true
  done
done

pct() { # pct P values... : the P-th percentile
  local p=$1; shift
  printf '%s\n' "$@" | sort -g | awk -v p="$p" '{a[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; print a[i]}'
}
[[ -n ${DAEMONS:-} ]] && exit 0
echo
echo "pod startup over $rounds rounds of $pods pods (per-pod ms; ratio berth/containerd):"
for mode in seq conc; do
  declare -n all=${mode}_all
  # shellcheck disable=SC2086
  bm=$(median ${all[berthd]}); cm=$(median ${all[containerd]})
  # shellcheck disable=SC2086
  bp=$(pct 99 ${all[berthd]}); cp=$(pct 99 ${all[containerd]})
  label=$([[ $mode == seq ]] && echo "one at a time" || echo "ten at a time")
  printf '  %-14s median berthd %7.1f  containerd %7.1f  ratio %.2f | p99 berthd %7.1f  containerd %7.1f  ratio %.2f\n' \
    "$label" "$bm" "$cm" "$(bc -l <<<"$bm/$cm")" "$bp" "$cp" "$(bc -l <<<"$bp/$cp")"
  unset -n all
done
echo "memory with $pods pods running (median over rounds, MiB PSS):"
for daemon in berthd containerd; do
  IFS=, read -ra ms <<<"${mem[$daemon]%,}"
  ds=(); ss=(); ps=(); ts=()
  for m in "${ms[@]}"; do read -r a b c <<<"$m"; ds+=("$a"); ss+=("$b"); ps+=("$c"); ts+=($((a + b + c))); done
  printf '  %-10s daemon %6.1f  shims %6.1f  sandboxes %6.1f  total %6.1f\n' "$daemon" \
    "$(bc -l <<<"$(median "${ds[@]}")/1024")" "$(bc -l <<<"$(median "${ss[@]}")/1024")" \
    "$(bc -l <<<"$(median "${ps[@]}")/1024")" "$(bc -l <<<"$(median "${ts[@]}")/1024")"
  declare "total_$daemon=$(median "${ts[@]}")"
done
printf '  ratio (berth/containerd) of totals: %.2f\n' "$(bc -l <<<"$total_berthd/$total_containerd")"
