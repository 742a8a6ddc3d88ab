#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]
#
# Fuzzes every target of the cargo-fuzz crate in fuzz/ (the shim's decoders: `shim start`'s stdin,
# runtime options as an Any and as TOML, the command line) for SECONDS each (default 30), then
# replays seeds, corpus and any crash artifacts as plain tests (`cargo test` in fuzz/).
#
# Toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer=address, ...). This machine kind has
# only stable Rust, which accepts them with RUSTC_BOOTSTRAP=1; set FUZZ_TOOLCHAIN=nightly to use a
# nightly instead when there is one. cargo-fuzz itself is installed from crates.io if missing.
#
# Inputs found are kept in fuzz/corpus/<target>/ (git-ignored; seeds are in fuzz/seeds/<target>/).
# A failure leaves its input in fuzz/artifacts/<target>/ and makes this script exit 1; reproduce it
# with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>` in fuzz/.
set -euo pipefail

secs="${1:-30}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
cargo_=(cargo)
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then cargo_=(cargo "+$FUZZ_TOOLCHAIN"); fi

echo "fuzz: building the targets (release, AddressSanitizer)"
"${cargo_[@]}" fuzz build

status=0
started=$(date +%s)
for t in $("${cargo_[@]}" fuzz list); do
  mkdir -p "corpus/$t" "target/fuzz-logs"
  log="target/fuzz-logs/$t.log"
  echo "fuzz: $t for ${secs}s"
  # -timeout: one input running 10 s is a hang; the outer timeout bounds a wedged run.
  if timeout -s KILL $((secs + 120)) \
    "${cargo_[@]}" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb' "$log" | sed 's/^/  /' || true
    echo "  corpus: $(find "corpus/$t" -type f | wc -l) inputs"
  else
    status=1
    echo "  FAILED: see fuzz/$log and fuzz/artifacts/$t/"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 | sed 's/^/  /' || true
  fi
done
echo "fuzz: replaying seeds, corpus and artifacts as plain tests"
"${cargo_[@]}" test --quiet || status=1
echo "fuzz: done in $(($(date +%s) - started)) s, status $status"
exit $status
