#!/usr/bin/env bash
# Debian packages berth builds and tests with: protoc (containerd-client's build), libseccomp
# (the berth shim links it to load seccomp profiles), the
# real peers (ctr/containerd, runc, crun, docker-registry), busybox for test images,
# umoci and skopeo for building and comparing images, htpasswd (apache2-utils) for an
# authenticating test registry, openssl for a test CA, procps (pgrep), CNI plugins, and
# docker.io (Docker's daemon, a real client of the containerd API), iproute2 and tmux
# (the berth command line's bridge removal and its terminal test), and binutils (nm, which
# scripts/link-hot-order.sh reads the linked binaries with).
set -euo pipefail
pkgs=(binutils protobuf-compiler libseccomp-dev pkg-config bc apache2-utils openssl procps iproute2 tmux containerd runc crun docker-registry busybox-static umoci skopeo containernetworking-plugins iptables docker.io)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts these services on install; berth's tests run their own instances.
for svc in docker containerd docker-registry; do
  systemctl stop "$svc" 2>/dev/null || true
done
pkill -x dockerd 2>/dev/null || true
pkill -x containerd 2>/dev/null || true
pkill -x docker-registry 2>/dev/null || true
