#!/usr/bin/env bash
# build-image.sh OUT.tar [NAME]
#
# Builds a one-layer OCI image archive (OCI image layout in a tar) from
# Debian's static /bin/busybox (package busybox-static), importable with
#   ctr -n NS images import OUT.tar
# on containerd 1.6 .. 2.x. NAME defaults to
# docker.io/library/rustrunc-busybox:latest.
#
# The output is deterministic: fixed mtimes, uid/gid 0, sorted entries and
# `gzip -n`, so the same busybox binary always gives the same digests.
# Only bash, coreutils, tar and gzip are used.
set -euo pipefail

out=${1:?usage: build-image.sh OUT.tar [NAME]}
name=${2:-docker.io/library/rustrunc-busybox:latest}
busybox=/bin/busybox
# 2000-01-01T00:00:00Z: fixed timestamp for every file and the config.
epoch=946684800
created=2000-01-01T00:00:00Z

# NAME goes verbatim into JSON; keep it to reference characters.
if ! [[ $name =~ ^[A-Za-z0-9._/:@-]+$ ]]; then
  echo "build-image.sh: bad image name: $name" >&2
  exit 2
fi
if [ ! -x "$busybox" ] || ! "$busybox" --list >/dev/null 2>&1; then
  echo "build-image.sh: $busybox missing or not a busybox (apt-get install busybox-static)" >&2
  exit 1
fi
# A dynamically linked busybox (package busybox) would not run in the
# image, which has no libc.
ldd_out=$(LC_ALL=C ldd "$busybox" 2>&1 || true)
if [[ $ldd_out == *'=>'* ]]; then
  echo "build-image.sh: $busybox is dynamically linked; install busybox-static" >&2
  exit 1
fi

# Debian architecture -> OCI (GOARCH) architecture [+ variant].
variant=
case "$(dpkg --print-architecture)" in
  amd64) arch=amd64 ;;
  arm64) arch=arm64 ;;
  armhf) arch=arm; variant=v7 ;;
  armel) arch=arm; variant=v5 ;;
  i386) arch=386 ;;
  ppc64el) arch=ppc64le ;;
  s390x) arch=s390x ;;
  riscv64) arch=riscv64 ;;
  mips64el) arch=mips64le ;;
  *) echo "build-image.sh: unsupported architecture $(dpkg --print-architecture)" >&2; exit 1 ;;
esac
platform="\"architecture\":\"$arch\",\"os\":\"linux\""
[ -n "$variant" ] && platform="$platform,\"variant\":\"$variant\""

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022

# --- rootfs ---------------------------------------------------------------
root=$work/rootfs
mkdir -p "$root"/{bin,dev,etc,proc,root,sys,tmp}
chmod 1777 "$root/tmp"
chmod 700 "$root/root"
cp "$busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] && continue
  ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 644 "$root/etc/passwd" "$root/etc/group"

# Deterministic tar: sorted names, fixed owner and mtime, no ./ prefix.
dtar() {
  local dir=$1 dest=$2; shift 2
  LC_ALL=C tar --format=gnu --sort=name --mtime="@$epoch" \
    --owner=0 --group=0 --numeric-owner \
    -C "$dir" -cf "$dest" "$@"
}

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# Store a file as a blob; prints its digest hex.
put_blob() {
  local h; h=$(sha "$1")
  mv "$1" "$layout/blobs/sha256/$h"
  echo "$h"
}

# --- layer: diff_id is the uncompressed tar's digest ----------------------
dtar "$root" "$work/layer.tar" bin dev etc proc root sys tmp
diff_id=$(sha "$work/layer.tar")
gzip -n "$work/layer.tar"
layer_size=$(size "$work/layer.tar.gz")
layer=$(put_blob "$work/layer.tar.gz")

# --- config ---------------------------------------------------------------
printf '{%s,"created":"%s","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"test-fixtures/build-image.sh (busybox-static)"}]}' \
  "$platform" "$created" "$diff_id" "$created" >"$work/config.json"
config_size=$(size "$work/config.json")
config=$(put_blob "$work/config.json")

# --- manifest ---------------------------------------------------------------
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
manifest_size=$(size "$work/manifest.json")
manifest=$(put_blob "$work/manifest.json")

# --- index + layout -----------------------------------------------------------
# io.containerd.image.name is what `ctr images import` names the image after;
# org.opencontainers.image.ref.name is the plain OCI tag.
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"latest"},"platform":{%s}}]}' \
  "$manifest" "$manifest_size" "$name" "$platform" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

# Write next to OUT and rename, so concurrent builders never see a partial file.
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
dtar "$layout" "$tmp" oci-layout index.json blobs
mv -f "$tmp" "$out"
