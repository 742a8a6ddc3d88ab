#!/usr/bin/env bash
# make demo: a private containerd (its own root, state and socket under a temp dir; no system config is
# touched) with this shim on its PATH, the busybox image from test-fixtures/, and one container run
# through the shim with `ctr run --runtime io.containerd.rustrunc.v2`. Everything is removed on exit.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
shim_dir="$top/target/release"
[ -x "$shim_dir/containerd-shim-rustrunc-v2" ] || { echo "demo: build first (make build)" >&2; exit 1; }

dir=$(mktemp -d /tmp/rr-demo.XXXXXX)
sock="$dir/c.sock"
ns=demo
image=docker.io/library/rustrunc-busybox:latest
ctr() { command ctr --address "$sock" -n "$ns" "$@"; }

cleanup() {
  set +e
  for t in $(ctr task ls -q 2>/dev/null); do ctr task kill -s SIGKILL "$t"; sleep 0.2; ctr task rm -f "$t"; done >/dev/null 2>&1
  for c in $(ctr containers ls -q 2>/dev/null); do ctr containers rm "$c"; done >/dev/null 2>&1
  [ -n "${cd_pid:-}" ] && kill "$cd_pid" 2>/dev/null && wait "$cd_pid" 2>/dev/null
  grep -F " $dir" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$dir"
  rmdir "/run/containerd/runc/$ns" 2>/dev/null # runc's (empty) root for the namespace
}
trap cleanup EXIT

sed -e "s#@ROOT@#$dir/root#g; s#@STATE@#$dir/state#g; s#@ADDRESS@#$sock#g" \
  "$top/test-fixtures/containerd-config.toml.in" >"$dir/config.toml"
PATH="$shim_dir:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
cd_pid=$!
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null || { echo "demo: containerd did not start:" >&2; tail "$dir/containerd.log" >&2; exit 1; }

bash "$top/test-fixtures/build-image.sh" "$dir/image.tar" "$image" >/dev/null
ctr images import "$dir/image.tar" >/dev/null

echo "containerd $(containerd --version | awk '{print $3}') with runtime io.containerd.rustrunc.v2 ($shim_dir/containerd-shim-rustrunc-v2)"
echo "\$ ctr run --rm --runtime io.containerd.rustrunc.v2 $image demo sh -c '...'"
ctr run --rm --runtime io.containerd.rustrunc.v2 "$image" demo sh -c \
  'echo "hello from a container run by containerd-shim-rustrunc-v2"; echo "pid $$ in its own pid namespace; hostname $(hostname)"; ps -o pid,comm'
echo "exit status: $?"
