#!/usr/bin/env bash
# deb.sh: packages the static binary of `make build` as target/deb/containerd-shim-rustrunc-v2_<version>_<arch>.deb
# with dpkg-deb: the binary in /usr/bin, the README's containerd runtime snippets (section "Using it with
# containerd") as examples in /usr/share/doc/containerd-shim-rustrunc-v2/examples/. Then checks the
# package's contents with `dpkg-deb -c`. Install it with `apt install ./target/deb/<file>.deb`.
set -euo pipefail
cd "$(dirname "$0")/.."

pkg=containerd-shim-rustrunc-v2
bin=target/release/$pkg
# The README's snippets in that section, in order: one name each.
names=(containerd-1.6-cri.toml containerd-1.7-cri.toml containerd-2.x-cri.toml containerd-2.x-cri-runtime-path.toml runtimeclass.yaml)

[ -x "$bin" ] || { echo "deb.sh: $bin missing (make build)" >&2; exit 1; }
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "deb.sh: $bin is dynamically linked; the package ships the static one of make build" >&2
  exit 1
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
out=target/deb/${pkg}_${version}_${arch}.deb

root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/bin/$pkg"
doc=$root/usr/share/doc/$pkg
install -d -m 0755 "$doc/examples"
awk -v dir="$doc/examples" '
  /^## Using it with containerd/ { on = 1 } /^## What it implements/ { on = 0 }
  on && /^```(toml|yaml)$/ { n++; f = sprintf("%s/%d", dir, n); grab = 1; next }
  grab && /^```$/ { grab = 0; close(f); next }
  grab { print > f }' README.md
found=$(find "$doc/examples" -type f | wc -l)
if [ "$found" -ne "${#names[@]}" ]; then
  echo "deb.sh: README.md has $found runtime snippets, deb.sh names ${#names[@]}: update names in deb.sh" >&2
  exit 1
fi
for i in "${!names[@]}"; do mv "$doc/examples/$((i + 1))" "$doc/examples/${names[$i]}"; done
chmod 0644 "$doc"/examples/*
gzip -9n -c README.md >"$doc/README.md.gz"
cat >"$doc/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $pkg

Files: *
License: $(sed -n 's/^license = "\(.*\)"$/\1/p' Cargo.toml)
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPY
chmod 0644 "$doc/README.md.gz" "$doc/copyright"

install -d "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<CTRL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: containerd-shim-rustrunc-v2 developers <root@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: runc | crun
Recommends: containerd | containerd.io
Section: admin
Priority: optional
Description: containerd runtime-v2 shim for runc, written in Rust
 containerd runs containers through it as runtime type io.containerd.rustrunc.v2
 (the binary containerd-shim-rustrunc-v2 on containerd's PATH). Statically linked.
 Example containerd and Kubernetes RuntimeClass snippets are in
 /usr/share/doc/$pkg/examples/.
CTRL
mkdir -p target/deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null

# What a node operator gets: exactly these files, the binary executable.
listing=$(dpkg-deb -c "$out")
expect=("./usr/bin/$pkg" "./usr/share/doc/$pkg/copyright" "./usr/share/doc/$pkg/README.md.gz")
for n in "${names[@]}"; do expect+=("./usr/share/doc/$pkg/examples/$n"); done
for f in "${expect[@]}"; do
  grep -qE " $(printf '%s' "$f" | sed 's/[.]/[.]/g')\$" <<<"$listing" || { echo "deb.sh: $f missing from $out:" >&2; echo "$listing" >&2; exit 1; }
done
grep -qE "^-rwxr-xr-x root/root .* \./usr/bin/$pkg\$" <<<"$listing" || { echo "deb.sh: /usr/bin/$pkg is not root-owned 0755" >&2; exit 1; }
[ "$(dpkg-deb -f "$out" Package)" = "$pkg" ]
echo "deb.sh: $out ($(du -h "$out" | cut -f1)), contents checked"
