# Shared by the benchmarks: both daemons side by side on $work (a tmpfs), and the figures.
# Sourced with $work and $berthd_bin set; sets $b_pid and $c_pid.

start_daemons() {
  "$berthd_bin" --root "$work/berth/root" --state "$work/berth/state" --address "$work/berth.sock" --log-level warn & b_pid=$!
  # containerd with the CRI plugin off, so both serve the same API surface.
  cat > "$work/containerd.toml" <<CFG
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
CFG
  containerd --config "$work/containerd.toml" --log-level warn 2>"$work/containerd.log" & c_pid=$!
  for s in berth.sock containerd.sock; do for _ in $(seq 100); do [[ -S $work/$s ]] && break; sleep 0.1; done; done
}

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
