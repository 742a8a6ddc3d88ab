#!/usr/bin/env bash
# build-pause-image.sh OUT.tar [NAME]
#
# Compiles pause.c (next to this script) into a static binary and packs it
# as a one-layer OCI image archive (OCI image layout in a tar) whose only
# file is /pause, with Entrypoint ["/pause"]: the CRI sandbox image of the
# CRI integration test (tests/cri.rs), importable with
#   ctr -n k8s.io images import OUT.tar
# NAME defaults to registry.k8s.io/pause:rustrunc-test.
#
# Same packing as ../build-image.sh: fixed mtimes, uid/gid 0, sorted entries
# and `gzip -n`, so the same pause binary always gives the same digests.
# Needs gcc and libc6-dev (libc.a, for -static), tar, gzip, coreutils.
set -euo pipefail

out=${1:?usage: build-pause-image.sh OUT.tar [NAME]}
name=${2:-registry.k8s.io/pause:rustrunc-test}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
epoch=946684800   # 2000-01-01T00:00:00Z
created=2000-01-01T00:00:00Z

if ! [[ $name =~ ^[A-Za-z0-9._/:@-]+$ ]]; then
  echo "build-pause-image.sh: bad image name: $name" >&2
  exit 2
fi
cc=${CC:-gcc}
if ! command -v "$cc" >/dev/null; then
  echo "build-pause-image.sh: $cc not found (apt-get install gcc libc6-dev)" >&2
  exit 1
fi

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
  *) echo "build-pause-image.sh: unsupported architecture $(dpkg --print-architecture)" >&2; exit 1 ;;
esac
platform="\"architecture\":\"$arch\",\"os\":\"linux\""
[ -n "$variant" ] && platform="$platform,\"variant\":\"$variant\""

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022

# --- rootfs: /pause and the mount points runc expects ---------------------
root=$work/rootfs
mkdir -p "$root"/{dev,etc,proc,sys}
if ! "$cc" -static -Os -s -Wall -Wextra -Werror -o "$root/pause" "$here/pause.c" 2>"$work/cc.log"; then
  cat "$work/cc.log" >&2
  echo "build-pause-image.sh: compiling pause.c failed (static linking needs libc6-dev's libc.a)" >&2
  exit 1
fi
chmod 755 "$root/pause"
ldd_out=$(LC_ALL=C ldd "$root/pause" 2>&1 || true)
if [[ $ldd_out == *'=>'* ]]; then
  echo "build-pause-image.sh: pause came out dynamically linked" >&2
  exit 1
fi

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
put_blob() {
  local h; h=$(sha "$1")
  mv "$1" "$layout/blobs/sha256/$h"
  echo "$h"
}

# --- layer ------------------------------------------------------------------
dtar "$root" "$work/layer.tar" dev etc pause proc sys
diff_id=$(sha "$work/layer.tar")
gzip -n "$work/layer.tar"
layer_size=$(size "$work/layer.tar.gz")
layer=$(put_blob "$work/layer.tar.gz")

# --- config: runs as root (no User); the test pods are not security tests --
printf '{%s,"created":"%s","config":{"Entrypoint":["/pause"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"test-fixtures/pause/build-pause-image.sh"}]}' \
  "$platform" "$created" "$diff_id" "$created" >"$work/config.json"
config_size=$(size "$work/config.json")
config=$(put_blob "$work/config.json")

# --- manifest, index, layout --------------------------------------------------
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
manifest_size=$(size "$work/manifest.json")
manifest=$(put_blob "$work/manifest.json")

# The tag is what follows a ':' in the last path component (else "latest").
last=${name##*/}
tag=latest
[[ $last == *:* ]] && tag=${last##*:}
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"},"platform":{%s}}]}' \
  "$manifest" "$manifest_size" "$name" "$tag" "$platform" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
dtar "$layout" "$tmp" oci-layout index.json blobs
mv -f "$tmp" "$out"
