#!/usr/bin/env bash
# `make test-cgroup2`: runs the cgroup-sensitive integration tests (tests/cgroup2.rs, tests/cgroups.rs,
# tests/cgroup2_cri.rs) as root in a throwaway cgroup v2 (unified) guest with systemd as PID 1, under
# qemu, on the guest's containerd 1.6; then tests/cgroup2.rs's lifecycle and systemd OOM tests again on
# sid's containerd 2.x (target/containerd/sid, scripts/fetch-containerd.sh), through
# RR_CONTAINERD_BIN_DIR.
#
# The guest image (kernel, initramfs, root disk) is built once by build-image.sh into
# target/vm/image-<hash of build-image.sh> and reused until that script changes. The test binaries are
# built here (`cargo test --no-run`) and the shim by `make build` (static); both travel in on the job
# disk (run.sh). The static shim is put where the tests expect theirs (CARGO_BIN_EXE_...), and the
# test fixtures where CARGO_MANIFEST_DIR says. The guest has no network: what the CRI test would fetch
# or build (the Python venv of scripts/install-cri-deps.sh, the pause and busybox images, which need gcc)
# is made here and carried in too.
# CGROUP2_TEST_ARGS: extra arguments for every test binary (a name filter, say).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
t0=$SECONDS

bash scripts/vm/install-deps.sh

key=$(sha256sum scripts/vm/build-image.sh | cut -c1-16)
img=target/vm/image-$key
if [ ! -f "$img/complete" ]; then
  rm -rf "$img"
  t=$SECONDS
  bash scripts/vm/build-image.sh "$img"
  touch "$img/complete"
  echo "test-cgroup2: guest image built in $((SECONDS - t))s"
  # Images of older versions of the script are of no use anymore.
  for old in target/vm/image-*; do [ "$old" = "$img" ] || rm -rf "$old"; done
else
  echo "test-cgroup2: reusing the guest image $img"
fi

make --no-print-directory build >/dev/null
bash scripts/fetch-containerd.sh sid
tests=(cgroup2 cgroups cgroup2_cri)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo test --no-run "${args[@]}" 2>&1 | tee "$repo/target/vm/build.log" >&2
exes=$(sed -n 's/^ *Executable .*(\(.*\))$/\1/p' "$repo/target/vm/build.log")
[ -n "$exes" ] || { echo "test-cgroup2: cargo test --no-run named no test executable" >&2; exit 1; }

target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
job=$(mktemp -d /tmp/rustrunc-cgroup2-job.XXXXXX)
trap 'rm -rf "$job"' EXIT
mkdir -p "$job/tests"
for e in $exes; do cp "$e" "$job/tests/"; done
cp target/release/containerd-shim-rustrunc-v2 "$job/shim"
cp -a test-fixtures "$job/"
# The CRI test's client, its venv (the guest's python3 is the host's: same Debian release), images.
mkdir -p "$job/scripts" "$job/tests/cri" "$job/images" "$job/sid"
cp scripts/install-cri-deps.sh "$job/scripts/"
cp tests/cri/cri_client.py tests/cri/api.proto "$job/tests/cri/"
bash scripts/install-cri-deps.sh "$target/cri-venv"
cp -a "$target/cri-venv" "$job/"
bash test-fixtures/build-image.sh "$job/images/cri-busybox.oci.tar" docker.io/library/rustrunc-busybox:latest
bash test-fixtures/pause/build-pause-image.sh "$job/images/cri-pause.oci.tar" registry.k8s.io/pause:rustrunc-test
cp -L target/containerd/sid/usr/bin/containerd target/containerd/sid/usr/bin/ctr "$job/sid/"
{
  printf 'MANIFEST_DIR=%q\n' "$repo"
  printf 'TARGET_DIR=%q\n' "$target"
  printf 'TEST_ARGS=%q\n' "${CGROUP2_TEST_ARGS:-}"
} >"$job/env"
cat >"$job/run.sh" <<'GUEST'
#!/bin/bash
# In the guest, as root: lay out what the test binaries were built to expect, then run each.
out=$1
. ./env
mkdir -p "$MANIFEST_DIR" "$TARGET_DIR/debug" "$TARGET_DIR/tmp"
cp -a test-fixtures "$MANIFEST_DIR/"
cp shim "$TARGET_DIR/debug/containerd-shim-rustrunc-v2"
mkdir -p "$MANIFEST_DIR/scripts" "$MANIFEST_DIR/tests/cri" "$MANIFEST_DIR/target/containerd/sid/usr/bin"
cp scripts/install-cri-deps.sh "$MANIFEST_DIR/scripts/"
cp tests/cri/* "$MANIFEST_DIR/tests/cri/"
cp -a cri-venv "$TARGET_DIR/"
# Newer than their inputs: the harness uses them as they are (it cannot build the pause image: no gcc).
cp images/*.tar "$TARGET_DIR/tmp/"
cp -a sid/* "$MANIFEST_DIR/target/containerd/sid/usr/bin/"
export CRI_DEPS_OFFLINE=1
# CRI copies the node's /etc/hosts and /etc/resolv.conf into a host-network pod; minbase has neither.
[ -e /etc/hosts ] || printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >/etc/hosts
[ -e /etc/resolv.conf ] || : >/etc/resolv.conf
echo "guest: kernel $(uname -r), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup), PID 1 is $(cat /proc/1/comm)"
echo "guest: $(containerd --version), $(runc --version | head -n1), $(systemctl --version | head -n1)"
rc=0
for t in tests/*; do
  [ -f "$t" ] || continue
  start=$SECONDS
  # shellcheck disable=SC2086
  RUST_BACKTRACE=1 "./$t" --test-threads=1 --nocapture $TEST_ARGS || rc=1
  echo "guest: $(basename "$t") took $((SECONDS - start))s"
done
# containerd 2.x: the lifecycle and the OOM kills under SystemdCgroup (or what TEST_ARGS names).
sid=$MANIFEST_DIR/target/containerd/sid/usr/bin
echo "guest: again on $("$sid/containerd" --version)"
start=$SECONDS
# shellcheck disable=SC2086
RR_CONTAINERD_BIN_DIR=$sid RUST_BACKTRACE=1 ./tests/cgroup2-* --test-threads=1 --nocapture \
  ${TEST_ARGS:-lifecycle_exec_freezer_and_kill_all oom_every_time_with_systemd_cgroup} || rc=1
echo "guest: cgroup2 on containerd 2.x took $((SECONDS - start))s"
left=$(systemctl list-units --all --no-legend | grep -E 'rrtest|rroom|kubepods|cri-containerd' || true)
[ -z "$left" ] || { echo "guest: units left behind:"; echo "$left"; rc=1; }
exit $rc
GUEST
chmod 755 "$job/run.sh"

out=target/vm/last-run
set +e
bash scripts/vm/run.sh "$img" "$job" "$out"
rc=$?
# A guest that never came up or whose job never ended (qemu's TCG on a loaded host) gets one more try;
# a job that ran and failed does not. The first try's console is kept, and the retry is said loudly.
if [ $rc -eq 3 ] || [ $rc -eq 4 ]; then
  rm -rf "$out.first-try"; cp -a "$out" "$out.first-try" 2>/dev/null
  echo "test-cgroup2: RETRYING: the guest $( [ $rc -eq 3 ] && echo 'timed out' || echo 'did not boot' ) (first try's log: $out.first-try)" >&2
  bash scripts/vm/run.sh "$img" "$job" "$out"
  rc=$?
fi
set -e
echo "test-cgroup2: $( [ $rc -eq 0 ] && echo passed || echo FAILED ) in $((SECONDS - t0))s (log: $out/log)"
exit $rc
