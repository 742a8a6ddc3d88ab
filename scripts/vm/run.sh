#!/usr/bin/env bash
# run.sh IMAGEDIR JOBDIR OUTDIR
#
# Boots the guest built by build-image.sh in IMAGEDIR with JOBDIR as its job: JOBDIR/run.sh runs in the
# guest as root (cwd JOBDIR, argument: a directory for results), and what it wrote there is copied to
# OUTDIR, with its output in OUTDIR/log and its exit status in OUTDIR/rc. Exits with that status.
#
# The job travels on a second ext4 disk made by `mkfs.ext4 -d`, read back with `debugfs rdump`; the root
# disk is used with snapshot=on, so each run starts from the same image. Every step is bounded:
#   VM_LIFE_TIMEOUT  (60 s)   first console output; without it the boot is retried once ("no boot")
#   VM_BOOT_TIMEOUT  (300 s)  from then to the job's start ("no boot")
#   VM_JOB_TIMEOUT   (1800 s) the job itself ("job timed out")
# VM_ACCEL: kvm or tcg; by default kvm when /dev/kvm is a usable one (not PVM's), tcg otherwise.
# VM_CPUS (2), VM_MEM (3072 MiB).
set -euo pipefail

img=${1:?usage: run.sh IMAGEDIR JOBDIR OUTDIR}
jobdir=${2:?usage: run.sh IMAGEDIR JOBDIR OUTDIR}
outdir=${3:?usage: run.sh IMAGEDIR JOBDIR OUTDIR}
life_timeout=${VM_LIFE_TIMEOUT:-60}
boot_timeout=${VM_BOOT_TIMEOUT:-300}
job_timeout=${VM_JOB_TIMEOUT:-1800}
cpus=${VM_CPUS:-2}
mem=${VM_MEM:-3072}

for f in vmlinuz initrd.img root.img; do
  [ -f "$img/$f" ] || { echo "vm/run.sh: $img/$f missing (scripts/vm/build-image.sh)" >&2; exit 1; }
done
[ -x "$jobdir/run.sh" ] || { echo "vm/run.sh: $jobdir/run.sh missing or not executable" >&2; exit 1; }

accel=${VM_ACCEL:-}
if [ -z "$accel" ]; then
  # PVM's /dev/kvm cannot boot a stock kernel (qemu: "failed to set MSR 0x10a"); TCG can.
  if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qw -E 'vmx|svm' /proc/cpuinfo; then
    accel=kvm
  else
    accel=tcg
  fi
fi
case $accel in
  kvm) accel_args=(-accel kvm -cpu host) ;;
  tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
  *) echo "vm/run.sh: VM_ACCEL must be kvm or tcg" >&2; exit 1 ;;
esac

work=$(mktemp -d /tmp/rustrunc-vm.XXXXXX)
qpid=
cleanup() {
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The job disk: in/ (the job), out/ (empty, for results), with room to spare for what the job writes.
mkdir -p "$work/disk/out"
cp -a "$jobdir" "$work/disk/in"
size_mb=$(( $(du -sm "$work/disk" | cut -f1) + 512 ))
mkfs.ext4 -q -F -L rustrunc-job -d "$work/disk" "$work/job.img" "${size_mb}M" >/dev/null
rm -rf "$work/disk"

console=$work/console.log
boot() {
  : >"$console"
  qemu-system-x86_64 -machine q35 "${accel_args[@]}" -smp "$cpus" -m "$mem" \
    -display none -monitor none -serial "file:$console" -nic none -no-reboot \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw panic=-1 systemd.unified_cgroup_hierarchy=1 systemd.wants=rustrunc-job.service systemd.show_status=0 loglevel=4" \
    -drive "file=$img/root.img,format=raw,if=virtio,snapshot=on" \
    -drive "file=$work/job.img,format=raw,if=virtio" \
    </dev/null >"$work/qemu.log" 2>&1 &
  qpid=$!
}
alive() { kill -0 "$qpid" 2>/dev/null; }
stop() {
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  qpid=
}
# Waits until the console shows $1 (a fixed string), qemu exits, or $2 seconds pass: 0, 1, 2.
# An empty $1 waits for any output.
wait_for() {
  local end=$((SECONDS + $2))
  seen() { if [ -z "$1" ]; then [ -s "$console" ]; else grep -qF -- "$1" "$console" 2>/dev/null; fi; }
  while [ $SECONDS -lt $end ]; do
    seen "$1" && return 0
    alive || { seen "$1" && return 0; return 1; }
    sleep 1
  done
  return 2
}
# Exits 1 (a job that failed), or FAIL_CODE when set: 3 for a job that timed out, 4 for no boot.
fail() {
  echo "vm/run.sh: $*" >&2
  echo "--- last console lines ---" >&2
  tail -n 30 "$console" >&2 || true
  echo "--- qemu ---" >&2
  cat "$work/qemu.log" >&2 || true
  exit "${FAIL_CODE:-1}"
}

t0=$SECONDS
for try in 1 2; do
  boot
  # Any console output is a sign of life (the kernel's first lines come within seconds, under TCG too).
  wait_for "" "$life_timeout" && rc=0 || rc=$?
  [ $rc -eq 0 ] && break
  stop
  [ $rc -eq 1 ] && FAIL_CODE=4 fail "no boot: qemu exited before the kernel printed anything (accel $accel)"
  [ $try -eq 2 ] && FAIL_CODE=4 fail "no boot: no console output within ${life_timeout}s, twice (accel $accel)"
  echo "vm/run.sh: no console output within ${life_timeout}s (accel $accel); retrying the boot once" >&2
done
wait_for "rustrunc-job: start" "$boot_timeout" && rc=0 || rc=$?
[ $rc -eq 0 ] || { stop; FAIL_CODE=4 fail "no boot: the job did not start within ${boot_timeout}s of the kernel's start"; }
t_boot=$((SECONDS - t0))
echo "vm/run.sh: guest up, job started after ${t_boot}s (accel $accel)"
# Stream the job's console output until qemu exits (the job powers off) or the job times out.
tail -n +1 -f "$console" --pid="$qpid" | sed -un '/rustrunc-job: start/,$p' &
tailpid=$!
end=$((SECONDS + job_timeout))
while alive && [ $SECONDS -lt $end ]; do sleep 1; done
if alive; then
  stop
  kill "$tailpid" 2>/dev/null || true
  FAIL_CODE=3 fail "job timed out after ${job_timeout}s"
fi
wait "$qpid" 2>/dev/null || true
qpid=
wait "$tailpid" 2>/dev/null || true
echo "vm/run.sh: guest off after $((SECONDS - t0))s"

rm -rf "$outdir"
mkdir -p "$outdir"
debugfs -R "rdump /out $work" "$work/job.img" >/dev/null 2>&1 || true
[ -d "$work/out" ] && cp -a "$work/out/." "$outdir/"
if [ ! -f "$outdir/rc" ]; then
  grep -q "rustrunc-job: done" "$console" || fail "job failed: the guest stopped before the job finished"
  fail "job failed: no exit status on the job disk"
fi
rc=$(cat "$outdir/rc")
cp "$console" "$outdir/console.log"
[ "$rc" = 0 ] || { echo "vm/run.sh: job failed (exit status $rc); its output is in $outdir/log" >&2; exit 1; }
echo "vm/run.sh: job passed"
