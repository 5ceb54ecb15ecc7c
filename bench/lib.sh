# Shared by the benchmarks: both daemons side by side on $work (a tmpfs), and the figures.
# Sourced with $work and $berthd_bin set; sets $b_pid and $c_pid.

# Where release binaries are built (.cargo/config.toml names the target).
release=$PWD/target/x86_64-unknown-linux-gnu/release
# The release binaries, always as the whole workspace: a narrower build resolves features
# differently, which renames symbols, and the hot.order files name the workspace build's.
build_release() { cargo build --release --locked >/dev/null; }

# containerd's configuration on $work with the CRI plugin off, so that both daemons serve
# the same API surface.
plain_containerd_config() {
  cat > "$work/containerd.toml" <<CFG
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
CFG
}

start_daemons() {
  "$berthd_bin" --root "$work/berth/root" --state "$work/berth/state" --address "$work/berth.sock" --log-level warn & b_pid=$!
  plain_containerd_config
  containerd --config "$work/containerd.toml" --log-level warn 2>"$work/containerd.log" & c_pid=$!
  for s in berth.sock containerd.sock; do for _ in $(seq 100); do [[ -S $work/$s ]] && break; sleep 0.1; done; done
}

# One daemon at a time (a peer's background work after its pull otherwise lands on the
# next one's figure): start_one berthd|containerd sets $one_pid and $one_sock; stop_one
# stops it and waits.
start_one() {
  case $1 in
    berthd)
      "$berthd_bin" --root "$work/berth/root" --state "$work/berth/state" --address "$work/berth.sock" --log-level warn & one_pid=$!
      one_sock=$work/berth.sock ;;
    containerd)
      plain_containerd_config
      containerd --config "$work/containerd.toml" --log-level warn 2>>"$work/containerd.log" & one_pid=$!
      one_sock=$work/containerd.sock ;;
  esac
  for _ in $(seq 100); do ctr -a "$one_sock" version >/dev/null 2>&1 && break; sleep 0.1; done
}
stop_one() {
  kill "$one_pid" && wait "$one_pid" || true
  one_pid=
}

# Stops what a benchmark started (daemons, registry, proxy) and removes its tmpfs.
cleanup_work() {
  set +e
  for pid in "${b_pid:-}" "${c_pid:-}" "${one_pid:-}"; do [[ -n $pid ]] && kill "$pid" && wait "$pid"; done
  for pid in "${reg_pid:-}" "${proxy_pid:-}"; do [[ -n $pid ]] && kill "$pid"; done
  grep -E " $work/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
  umount -l "$work" 2>/dev/null
  rm -rf "$work"
  remove_cgroups ${bench_cgroups:-}
}

# Removes the (empty) cgroup directories named $@ under every controller, deepest first:
# runc removes a container's own cgroup but not the namespace or pod parent above it.
# Containers killed just before may take a moment to leave theirs: tries for 10 s.
remove_cgroups() {
  local name c try left
  for try in $(seq 20); do
    left=0
    for name in "$@"; do
      for c in /sys/fs/cgroup/*/"$name" /sys/fs/cgroup/"$name"; do
        [[ -d $c ]] || continue
        find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
        [[ -d $c ]] && left=1
      done
    done
    ((left)) || break
    sleep 0.5
  done
  return 0
}

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# A docker-registry on loopback port $1, its data on $work; sets $reg_pid and $reg.
start_registry() {
  local port=$1
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/registry\nhttp:\n  addr: 127.0.0.1:%s\n' "$work" "$port" > "$work/registry.yml"
  docker-registry serve "$work/registry.yml" >/dev/null 2>&1 & reg_pid=$!
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  reg=127.0.0.1:$port
}

# Pushes an OCI layout built by the caller in $work/oci to $reg as $1; removes the layout.
push_layout() {
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:latest" "docker://$reg/$1"
  rm -rf "$work/oci"
  echo "$reg/$1"
}

# The ~300 MB three-layer image: layer 1 random (incompressible), layer 2 text
# (compressible), layer 3 half and half. Prints its reference.
push_three_layer_image() {
  mkdir -p "$work/img/l1" "$work/img/l2" "$work/img/l3"
  (
    set +o pipefail # `yes | head` ends yes with SIGPIPE by design
    head -c 100M /dev/urandom > "$work/img/l1/random.bin"
    yes "berth benchmark line of compressible text 0123456789" | head -c 100M > "$work/img/l2/text.txt"
    head -c 50M /dev/urandom > "$work/img/l3/random.bin"
    yes "more text for the third layer" | head -c 50M > "$work/img/l3/text.txt"
  )
  umoci init --layout "$work/oci" >/dev/null && umoci new --image "$work/oci:latest" >/dev/null
  for l in l1 l2 l3; do umoci insert --image "$work/oci:latest" "$work/img/$l" "/$l" >/dev/null; done
  rm -rf "$work/img"
  push_layout bench/three:latest
}

# Twenty layers of 500 small files each (2 KiB, half random). Prints its reference.
push_twenty_layer_image() {
  umoci init --layout "$work/oci" >/dev/null && umoci new --image "$work/oci:latest" >/dev/null
  for l in $(seq 20); do
    mkdir -p "$work/img/l$l"
    for f in $(seq 500); do
      { head -c 1024 /dev/urandom; printf '%01024d' "$f"; } > "$work/img/l$l/f$f"
    done
    umoci insert --image "$work/oci:latest" "$work/img/l$l" "/l$l" >/dev/null
    rm -rf "$work/img/l$l"
  done
  push_layout bench/twenty:latest
}

# $1 small distinct images (one tiny layer each, different contents) pushed as
# bench/small-N:latest; prints their references.
push_small_images() {
  local n=$1 i dir blobs layer ld ls cfg cd cs man md ms
  for i in $(seq "$n"); do
    dir=$work/small/$i; blobs=$dir/blobs/sha256
    mkdir -p "$blobs" "$dir/root"
    echo "small image $i" > "$dir/root/id"
    tar -C "$dir/root" -cf "$dir/layer.tar" id
    gzip -n -c "$dir/layer.tar" > "$dir/layer.tgz"
    local diff; diff=$(sha256sum "$dir/layer.tar" | cut -d' ' -f1)
    ld=$(sha256sum "$dir/layer.tgz" | cut -d' ' -f1); ls=$(stat -c %s "$dir/layer.tgz"); mv "$dir/layer.tgz" "$blobs/$ld"
    printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" > "$dir/config"
    cd=$(sha256sum "$dir/config" | cut -d' ' -f1); cs=$(stat -c %s "$dir/config"); mv "$dir/config" "$blobs/$cd"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" > "$dir/manifest"
    md=$(sha256sum "$dir/manifest" | cut -d' ' -f1); ms=$(stat -c %s "$dir/manifest"); mv "$dir/manifest" "$blobs/$md"
    printf '{"imageLayoutVersion":"1.0.0"}' > "$dir/oci-layout"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' "$md" "$ms" > "$dir/index.json"
    skopeo copy --quiet --dest-tls-verify=false "oci:$dir:latest" "docker://$reg/bench/small-$i:latest"
    rm -rf "$dir"
    echo "$reg/bench/small-$i:latest"
  done
}

# RSS of a process in KiB, and its breakdown from smaps_rollup.
# A busybox image as an OCI layout at $work/oci:latest, with the applets named in $@ linked
# (no registry, no internet).
busybox_layout() {
  local a
  mkdir -p "$work/rootfs/bin" && cp /bin/busybox "$work/rootfs/bin/busybox"
  for a in "$@"; do ln -s busybox "$work/rootfs/bin/$a"; done
  umoci init --layout "$work/oci" >/dev/null && umoci new --image "$work/oci:latest" >/dev/null
  umoci insert --image "$work/oci:latest" "$work/rootfs" / >/dev/null
}

rss_detail() { awk '/^(Rss|Anonymous|Private_Clean|Shared_Clean):/ {printf "%s%s ", $1, $2}' "/proc/$1/smaps_rollup"; }

# CRI on both daemons, for bench/cri.sh and bench/streaming.sh: a busybox image ($image)
# and containerd's sandbox image ($pause: busybox sleeping) in the registry at $reg, one
# CNI network (bridge bbench0, 10.222.0.0/24) that both daemons use, and their configs.
cri_setup() {
  # The sleeper's image, and containerd's sandbox ("pause") image: busybox sleeping.
  busybox_layout sh sleep true cat head nc
  umoci config --image "$work/oci:latest" --tag pause --config.entrypoint /bin/sleep --config.cmd 2147483647 >/dev/null
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:pause" "docker://$reg/bench/pause:latest"
  image=$(push_layout bench/busybox:latest)
  pause=$reg/bench/pause:latest

  mkdir -p "$work/cni"
  cat > "$work/cni/10-bench.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "berth-bench",
 "plugins": [
  {"type": "bridge", "bridge": "bbench0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$work/ipam", "ranges": [[{"subnet": "10.222.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
  cat > "$work/berthd.toml" <<CFG
[cri]
cni_conf_dir = "$work/cni"
cni_bin_dirs = ["/usr/lib/cni"]
CFG
  cat > "$work/containerd.toml" <<CFG
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
[grpc]
  address = "$work/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  # This VM lacks CAP_SYS_RESOURCE: pause's -998 would fail every pod otherwise.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$work/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$reg"]
    endpoint = ["http://$reg"]
CFG
}

# On exit of a CRI benchmark: pods torn down, shims gone, daemon logs kept in
# $work-logs (/tmp/berth-bench-*-logs), the work directory, bridge and cgroups removed.
cri_cleanup() {
  set +e
  [[ -n ${one_pid:-} ]] && { "$client" teardown "$one_sock" >/dev/null 2>&1; }
  pkill -f "containerd-shim-(runc|berth)-v2 .*-address $work/" 2>/dev/null
  mkdir -p "$work-logs" && cp "$work"/*.log "$work-logs/" 2>/dev/null
  cleanup_work
  ip link del bbench0 2>/dev/null
}

# Starts one daemon with CRI ($1: berthd or containerd) as $one_pid on $one_sock and pulls
# the images through CRI with $client (an example that does `pull SOCKET IMAGE`).
start_cri() {
  case $1 in
    berthd)
      "$berthd_bin" --root "$work/berth/root" --state "$work/berth/state" --address "$work/berth.sock" \
        --config "$work/berthd.toml" --log-level "${BERTHD_LOG:-warn}" 2>>"$work/berthd.log" & one_pid=$!
      one_sock=$work/berth.sock ;;
    containerd)
      containerd --config "$work/containerd.toml" --log-level warn 2>>"$work/containerd.log" & one_pid=$!
      one_sock=$work/containerd.sock ;;
  esac
  for _ in $(seq 100); do [[ -S $one_sock ]] && break; sleep 0.1; done
  "$client" pull "$one_sock" "$image"
  [[ $1 == containerd ]] && "$client" pull "$one_sock" "$pause"
  return 0
}

pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
