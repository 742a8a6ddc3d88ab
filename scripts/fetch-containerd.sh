#!/usr/bin/env bash
# scripts/fetch-containerd.sh [--refresh] [SUITE...]
#
# Fetches the containerd of newer Debian suites for tests/versions.rs (default: trixie = 1.7, sid = 2.x),
# without touching apt's configuration or installing anything system-wide:
#
#   1. dists/<suite>/InRelease, checked with gpgv against Debian's archive keyring;
#   2. main/binary-amd64/Packages.xz, checked against the SHA256 in that Release;
#   3. the `containerd` .deb named there (pool path resolved at run time, so a new upload does not
#      break this), checked against the SHA256 and size in Packages;
#   4. `dpkg-deb -x` into target/containerd/<version>/, then the link target/containerd/<suite> -> <version>.
#
# Idempotent: a suite whose link already leads to a runnable containerd and ctr is skipped without any
# network access (--refresh looks at the index again and fetches a newer upload). The binaries are
# dynamically linked against glibc; each is run once (`--version`) so a build needing a newer glibc than
# the host's fails here, with the loader's message, rather than in the tests.
#
# Mirror: $DEBIAN_MIRROR (default http://deb.debian.org/debian). A proxy in http_proxy, or else apt's
# Acquire::http::Proxy, is used.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dest=$top/target/containerd
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
arch=$(dpkg --print-architecture)

refresh=
suites=()
for a in "$@"; do
  case "$a" in
    --refresh) refresh=1 ;;
    -*) echo "usage: $0 [--refresh] [SUITE...]" >&2; exit 2 ;;
    *) suites+=("$a") ;;
  esac
done
[ "${#suites[@]}" -gt 0 ] || suites=(trixie sid)

die() { echo "fetch-containerd.sh: $*" >&2; exit 1; }
for t in curl xz gpgv dpkg-deb sha256sum; do
  command -v "$t" >/dev/null || die "$t is missing (scripts/install-deps.sh installs it)"
done
[ -r "$keyring" ] || die "$keyring is missing (apt-get install debian-archive-keyring)"

if [ -z "${http_proxy:-}" ] && command -v apt-config >/dev/null; then
  p=$(apt-config dump Acquire::http::Proxy 2>/dev/null | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p')
  if [ -n "$p" ] && [ "$p" != DIRECT ]; then export http_proxy=$p; fi
fi

runs() { # DIR: its containerd and ctr start on this host
  [ -x "$1/usr/bin/containerd" ] && [ -x "$1/usr/bin/ctr" ] &&
    "$1/usr/bin/containerd" --version >/dev/null 2>&1 && "$1/usr/bin/ctr" --version >/dev/null 2>&1
}

mkdir -p "$dest"
# Two `make test` runs in one checkout at once serialize here.
exec 9>"$dest/.lock"
flock 9

tmp=$(mktemp -d "$dest/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fetch() { curl -fsS --retry 3 --connect-timeout 20 -o "$2" "$1" || die "download failed: $1"; }

for suite in "${suites[@]}"; do
  link=$dest/$suite
  if [ -z "$refresh" ] && runs "$link"; then
    continue
  fi
  fetch "$mirror/dists/$suite/InRelease" "$tmp/InRelease"
  gpgv --quiet --keyring "$keyring" --output "$tmp/Release" "$tmp/InRelease" 2>"$tmp/gpgv.log" ||
    { cat "$tmp/gpgv.log" >&2; die "$suite: bad signature on InRelease"; }
  want=$(awk -v f="main/binary-$arch/Packages.xz" '/^SHA256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 == f {print $1}' "$tmp/Release")
  [ -n "$want" ] || die "$suite: no main/binary-$arch/Packages.xz in Release"
  fetch "$mirror/dists/$suite/main/binary-$arch/Packages.xz" "$tmp/Packages.xz"
  [ "$(sha256sum <"$tmp/Packages.xz" | cut -d' ' -f1)" = "$want" ] || die "$suite: Packages.xz SHA256 mismatch"
  # The stanza of the package `containerd`: Version, Filename, Size, SHA256.
  read -r version filename size sha < <(xz -dc "$tmp/Packages.xz" | awk -v RS= -F'\n' '
    $1 == "Package: containerd" {
      for (i = 1; i <= NF; i++) { split($i, kv, ": "); f[kv[1]] = kv[2] }
      print f["Version"], f["Filename"], f["Size"], f["SHA256"]; exit
    }')
  [ -n "${sha:-}" ] || die "$suite: no containerd package in the index"
  dir=$dest/$version
  if ! runs "$dir"; then
    echo "fetch-containerd.sh: $suite: containerd $version ($filename)"
    deb=$tmp/containerd.deb
    fetch "$mirror/$filename" "$deb"
    [ "$(stat -c %s "$deb")" = "$size" ] || die "$suite: $filename: size mismatch"
    [ "$(sha256sum <"$deb" | cut -d' ' -f1)" = "$sha" ] || die "$suite: $filename: SHA256 mismatch"
    rm -rf "$tmp/x"
    dpkg-deb -x "$deb" "$tmp/x"
    for b in containerd ctr; do
      "$tmp/x/usr/bin/$b" --version >/dev/null 2>"$tmp/run.log" ||
        { cat "$tmp/run.log" >&2; die "$suite: $b $version does not run on this host (glibc $(ldd --version | head -1 | awk '{print $NF}'))"; }
    done
    rm -rf "$dir"
    mv "$tmp/x" "$dir"
  fi
  ln -sfn "$version" "$link"
done
# Versions no link leads to any more (replaced by a newer upload).
for d in "$dest"/*; do
  [ -d "$d" ] && [ ! -L "$d" ] || continue
  used=
  for l in "$dest"/*; do [ -L "$l" ] && [ "$(readlink "$l")" = "${d##*/}" ] && used=1; done
  [ -n "$used" ] || rm -rf "$d"
done
