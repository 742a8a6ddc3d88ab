#!/usr/bin/env bash
# build-image.sh OUTDIR
#
# Builds the cgroup v2 + systemd guest of `make test-cgroup2` into OUTDIR (vmlinuz, initrd.img,
# root.img), from Debian's apt only:
# * the kernel: linux-image-cloud-amd64's image package, fetched with `apt-get download`, unpacked;
# * initrd.img: busybox-static + the virtio modules (built as modules in Debian's cloud kernel), an
#   /init that loads them, mounts /dev/vda and switches to it;
# * root.img: a `debootstrap --variant=minbase` bookworm with systemd, containerd, runc,
#   busybox-static and python3 (the CRI test's client; its venv comes in on the job disk, as the guest
#   has no network), packed by `mkfs.ext4 -d` (no loop mount). It is used read-only (qemu snapshot=on).
# The guest boots with systemd as PID 1 on the unified hierarchy; the kernel argument
# `systemd.wants=rustrunc-job.service` starts the job unit (see run.sh), which powers off.
set -euo pipefail

out=${1:?usage: build-image.sh OUTDIR}
suite=bookworm
mirror=${VM_MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" -eq 0 ] || { echo "vm/build-image.sh: must run as root (debootstrap)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$work/log
step() { echo "vm/build-image.sh: $*"; }
quiet() { "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "vm/build-image.sh: failed: $*" >&2; exit 1; }; }

# --- kernel ---------------------------------------------------------------
step "kernel (linux-image-cloud-amd64)"
mkdir -p "$work/deb" "$work/kernel"
# The metapackage names the versioned image package; apt-get download fetches it unsandboxed into cwd.
chmod 777 "$work/deb"
(cd "$work/deb" && quiet apt-get download linux-image-cloud-amd64)
kpkg=$(dpkg-deb -f "$work"/deb/linux-image-cloud-amd64_*.deb Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n1)
[ -n "$kpkg" ] || { echo "vm/build-image.sh: cannot tell the kernel package of linux-image-cloud-amd64" >&2; exit 1; }
(cd "$work/deb" && quiet apt-get download "$kpkg")
dpkg-deb -x "$work"/deb/"$kpkg"_*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"

# --- initramfs --------------------------------------------------------------
step "initramfs (busybox-static, virtio modules of $kver)"
ird=$work/initrd
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,modules}
cp /bin/busybox "$ird/bin/busybox"
for a in sh mount umount insmod switch_root sleep echo cat ls; do ln -s busybox "$ird/bin/$a"; done
mods="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk"
for m in $mods; do
  f=$(find "$work/kernel/lib/modules/$kver" -name "$m.ko*" | head -n1)
  [ -n "$f" ] || continue # built in, or absent from this kernel version
  case $f in
    *.ko) cp "$f" "$ird/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$ird/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$ird/modules/$m.ko" ;;
  esac
done
cat >"$ird/init" <<'INIT'
#!/bin/sh
mount -t devtmpfs dev /dev
mount -t proc proc /proc
echo "rustrunc-initramfs: loading virtio"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  [ -e /modules/$m.ko ] && insmod /modules/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "rustrunc-initramfs: cannot mount /dev/vda"; sleep 2; echo o >/proc/sysrq-trigger
fi
umount /proc
umount /dev
echo "rustrunc-initramfs: switching to systemd"
exec switch_root /newroot /sbin/init
INIT
chmod 755 "$ird/init"
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -n) >"$work/initrd.img"

# --- root -------------------------------------------------------------------
step "root: debootstrap --variant=minbase $suite (a few minutes)"
root=$work/root
quiet debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,containerd,runc,busybox-static,kmod,procps,util-linux,tar,gzip,python3 \
  "$suite" "$root" "$mirror"
step "root: configuring"
mkdir -p "$root/lib/modules"
cp -a "$work/kernel/lib/modules/$kver" "$root/lib/modules/"
depmod -b "$root" "$kver"
echo rustrunc-vm >"$root/etc/hostname"
: >"$root/etc/fstab"
# The tests start their own containerd; nothing else is needed, and less is faster under TCG.
rm -f "$root/etc/systemd/system/multi-user.target.wants/containerd.service"
for u in getty@tty1.service serial-getty@ttyS0.service console-getty.service systemd-timesyncd.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
  systemd-tmpfiles-clean.timer man-db.timer dpkg-db-backup.timer systemd-networkd-wait-online.service \
  systemd-update-utmp.service systemd-update-utmp-runlevel.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
# overlay (containerd's snapshotter) is a module in this kernel.
echo overlay >"$root/etc/modules-load.d/rustrunc.conf"
cat >"$root/usr/local/sbin/rustrunc-job" <<'JOB'
#!/bin/sh
# Mounts the job disk (/dev/vdb), runs its in/run.sh with out/ as argument, keeps its output in
# out/log (and on the console), its exit status in out/rc, then powers off.
mkdir -p /job
if ! mount -t ext4 /dev/vdb /job; then
  echo "rustrunc-job: cannot mount the job disk"
  exit 0
fi
mkdir -p /job/out
echo "rustrunc-job: start (uptime $(cut -d' ' -f1 /proc/uptime) s)"
if [ -x /job/in/run.sh ]; then
  set -o pipefail 2>/dev/null
  (cd /job/in && ./run.sh /job/out 2>&1) | tee /job/out/log
  rc=$?
else
  echo "rustrunc-job: no in/run.sh on the job disk"
  rc=2
fi
echo "$rc" >/job/out/rc
sync
umount /job
echo "rustrunc-job: done rc=$rc (uptime $(cut -d' ' -f1 /proc/uptime) s)"
# Off at once: the job disk is synced and unmounted, and the root disk's writes are thrown away anyway.
# (A clean `systemctl poweroff` is slow under TCG, and the unit's SuccessAction did not always fire.)
echo 1 >/proc/sys/kernel/sysrq
echo o >/proc/sysrq-trigger
sleep 60
JOB
chmod 755 "$root/usr/local/sbin/rustrunc-job"
# busybox sh has pipefail; /bin/sh (dash) does not: run the job script with busybox.
sed -i '1s|.*|#!/bin/busybox sh|' "$root/usr/local/sbin/rustrunc-job"
cat >"$root/etc/systemd/system/rustrunc-job.service" <<'UNIT'
[Unit]
Description=rustrunc test job (started by the kernel argument systemd.wants=rustrunc-job.service)
After=basic.target dbus.service systemd-modules-load.service
Wants=dbus.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/rustrunc-job
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
SuccessAction=poweroff-force
FailureAction=poweroff-force
UNIT
# Packed straight from the directory: no loop device, no mount.
size_mb=$(( $(du -sm "$root" | cut -f1) * 13 / 10 + 1024 ))
quiet mkfs.ext4 -q -F -L rustrunc-root -d "$root" "$work/root.img" "${size_mb}M"

mv "$work/vmlinuz" "$work/initrd.img" "$work/root.img" "$out/"
echo "$kver" >"$out/kernel-version"
step "done: $out ($(du -sh "$out" | cut -f1))"
