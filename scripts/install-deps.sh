#!/usr/bin/env bash
# Installs what the integration tests need (Debian 12, run as root), quietly
# and idempotently: `apt-get update` only runs when a package is missing.
#
# It deliberately does NOT start or enable the system containerd service and
# never touches /etc/containerd: the tests run a private containerd
# (tests/harness/containerd.rs) with its own config, root and state under /tmp.
set -euo pipefail

PKGS=(
  containerd      # containerd + ctr + Debian's Go shim (io.containerd.runc.v2)
  runc            # OCI runtime driven by the shim
  crun            # second OCI runtime, for runtime-selection tests
  busybox-static  # /bin/busybox: the only binary in the test image
  libc6-dev       # libc.a: `make build` links the shim statically
  criu            # checkpoint/restore (runc Recommends it anyway)
  tar gzip coreutils  # test-fixtures/build-image.sh (tar, gzip, sha256sum)
  procps util-linux   # kill, ps, umount -l: harness cleanup
  curl xz-utils gpgv debian-archive-keyring  # scripts/fetch-containerd.sh (containerd 1.7, 2.x)
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: must run as root" >&2
  exit 1
fi

is_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing=()
for p in "${PKGS[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # A policy-rc.d that exits 101 forbids maintainer scripts to start services,
  # so installing containerd does not start the system daemon on machines
  # with an init system. Added only if absent; removed again on exit.
  policy=/usr/sbin/policy-rc.d
  added_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  trap 'if [ -n "$added_policy" ]; then rm -f "$policy"; fi' EXIT
  # Quiet: keep apt's output and show it only if something fails.
  log=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "install-deps.sh: apt-get failed installing: ${missing[*]}" >&2
    exit 1
  fi
  rm -f "$log"
  # The package's postinst enables containerd.service; undo that (only when
  # we just installed it) so it is not started at the next boot either.
  if [[ " ${missing[*]} " == *" containerd "* ]] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper disable containerd.service >/dev/null 2>&1 || true
  fi
fi

# Verify.
fail=0
for p in "${PKGS[@]}"; do
  if ! dpkg -s "$p" >/dev/null 2>&1 || ! is_installed "$p"; then
    echo "install-deps.sh: package $p is not installed" >&2
    fail=1
  fi
done
for b in /usr/bin/containerd /usr/bin/ctr /usr/bin/containerd-shim-runc-v2 /bin/busybox; do
  [ -x "$b" ] || { echo "install-deps.sh: missing $b" >&2; fail=1; }
done
command -v runc >/dev/null || { echo "install-deps.sh: runc not on PATH" >&2; fail=1; }
exit "$fail"
