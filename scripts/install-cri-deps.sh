#!/usr/bin/env bash
# install-cri-deps.sh [VENV_DIR]
#
# Installs what tests/cri.rs needs beyond scripts/install-deps.sh, quietly
# and idempotently:
#  - apt (as root, only when missing): gcc + libc6-dev (libc.a) to build the
#    static pause binary of test-fixtures/pause/, python3-venv;
#  - a virtualenv (default target/cri-venv) with grpcio and grpcio-tools
#    from PyPI for the Python CRI client. When the venv already has exactly
#    these requirements nothing is done (a stamp file records them).
# Output of apt and pip is shown only on failure. Concurrent runs serialize
# on VENV_DIR.lock.
#
# Python: $PYTHON, else Debian's /usr/bin/python3, else python3 on PATH.
# CRI_DEPS_OFFLINE=1: install nothing, only check that the venv is ready (a machine without network
# whose venv and images were made elsewhere: the cgroup v2 guest of scripts/vm/test-cgroup2.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$here/target/cri-venv}
# Pinned together: grpcio-tools generates code for the protobuf runtime it
# depends on, and the client uses both.
REQS=(grpcio==1.85.3 grpcio-tools==1.85.1)

is_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}
apt_install() {
  local log
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "install-cri-deps.sh: apt-get install $* failed" >&2
    exit 1
  fi
  rm -f "$log"
}
offline=${CRI_DEPS_OFFLINE:-}
if [ -z "$offline" ] && command -v dpkg-query >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
  missing=()
  for p in gcc libc6-dev python3 python3-venv; do
    is_installed "$p" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
fi

if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x /usr/bin/python3 ]; then
  py=/usr/bin/python3
else
  py=$(command -v python3 || true)
fi
if [ -z "$py" ] || ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null; then
  echo "install-cri-deps.sh: no python3 >= 3.8 found (apt-get install python3 python3-venv)" >&2
  exit 1
fi

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

stamp=$venv/.rustrunc-cri-deps
want="$("$py" -c 'import sys; print(sys.version.split()[0])') ${REQS[*]}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
  "$venv/bin/python" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
  exit 0
fi
if [ -n "$offline" ]; then
  echo "install-cri-deps.sh: CRI_DEPS_OFFLINE is set and $venv is not ready (want: $want)" >&2
  exit 1
fi

if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "install-cri-deps.sh: $py has no venv/ensurepip module (apt-get install python3-venv)" >&2
  exit 1
fi

rm -rf "$venv"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "$py" -m venv "$venv" &&
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input "${REQS[@]}" &&
  "$venv/bin/python" -c 'import grpc, grpc_tools.protoc'; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -rf "$venv"
  echo "install-cri-deps.sh: could not install ${REQS[*]} into $venv" >&2
  exit 1
fi
printf '%s\n' "$want" >"$stamp"
