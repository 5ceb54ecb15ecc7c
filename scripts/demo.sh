#!/usr/bin/env bash
# The main job end to end on a fresh machine: install, build, start berthd with its
# defaults, get an image built from /bin/busybox through a loopback registry (no
# internet), list it and run a container from it with Debian's ctr, through berth's own
# shim and through Debian's runc shim.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked
release=./target/x86_64-unknown-linux-gnu/release # .cargo/config.toml names the target
work=$(mktemp -d)
cleanup() {
  [[ -n "${berthd_pid:-}" ]] && kill "$berthd_pid" 2>/dev/null && wait "$berthd_pid" 2>/dev/null
  [[ -n "${reg_pid:-}" ]] && kill "$reg_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# A loopback registry holding a busybox image.
port=5123
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/registry\nhttp:\n  addr: 127.0.0.1:%s\n' "$work" "$port" > "$work/registry.yml"
docker-registry serve "$work/registry.yml" & reg_pid=$!
mkdir -p "$work/rootfs/bin" && cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in sh echo uname; do ln -s busybox "$work/rootfs/bin/$applet"; done
umoci init --layout "$work/oci" && umoci new --image "$work/oci:latest"
umoci insert --image "$work/oci:latest" "$work/rootfs" /
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:latest" "docker://127.0.0.1:$port/busybox:latest"

# berthd with its defaults: --root /var/lib/berth --state /run/berth --address /run/berth/berth.sock
$release/berthd & berthd_pid=$!
for _ in $(seq 100); do [[ -S /run/berth/berth.sock ]] && break; sleep 0.1; done
ctr -a /run/berth/berth.sock version
ctr -a /run/berth/berth.sock images pull --plain-http "127.0.0.1:$port/busybox:latest"
ctr -a /run/berth/berth.sock images ls
ctr -a /run/berth/berth.sock snapshots ls
# Through berth's own shim (containers made in-process), then Debian's runc shim.
ctr -a /run/berth/berth.sock run --runtime io.containerd.berth.v2 --rm "127.0.0.1:$port/busybox:latest" berth-demo sh -c 'echo "hello from a berth container on $(uname -r), made by berth shim"'
ctr -a /run/berth/berth.sock run --rm "127.0.0.1:$port/busybox:latest" berth-demo sh -c 'echo "hello from a berth container on $(uname -r), made by runc"'
# The same as a docker user does it, with berth's own command line (default address).
$release/berth pull "127.0.0.1:$port/busybox:latest"
$release/berth run --rm --network none "127.0.0.1:$port/busybox:latest" sh -c 'echo "hello from berth run on $(uname -r)"'
$release/berth images
