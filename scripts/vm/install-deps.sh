#!/usr/bin/env bash
# Installs what `make test-cgroup2` needs on the host (Debian 12, root), from Debian's apt only,
# idempotently: qemu (the guest), debootstrap (its root), e2fsprogs (mkfs.ext4 -d, debugfs),
# busybox-static + cpio (its initramfs), zstd/xz (kernel modules may be compressed).
set -euo pipefail
PKGS=(qemu-system-x86 seabios debootstrap e2fsprogs busybox-static cpio zstd xz-utils
  debian-archive-keyring kmod)
[ "$(id -u)" -eq 0 ] || { echo "vm/install-deps.sh: must run as root" >&2; exit 1; }
missing=()
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "vm/install-deps.sh: apt-get failed installing: ${missing[*]}" >&2
    exit 1
  fi
  rm -f "$log"
fi
for b in qemu-system-x86_64 debootstrap mkfs.ext4 debugfs cpio; do
  command -v "$b" >/dev/null || { echo "vm/install-deps.sh: missing $b" >&2; exit 1; }
done
