#!/usr/bin/env bash
# scripts/stress.sh [cargo test filters and flags...]
#
# The slow robustness tests, which `make test` skips (all #[ignore]): churn and nothing-lost
# (tests/stress.rs), races and faults (tests/faults.rs), 30 s containerd outages with the Go shim
# compared (tests/buffering.rs, tests/cri_buffering.rs). One at a time (each starts its own
# containerd; two at once would skew the timing-sensitive races and the leak figures), with their
# figures printed. Needs root, containerd, runc, busybox-static (scripts/install-deps.sh).
#
#   scripts/stress.sh                                   # everything (≈ 15-20 min on 2 cores: the
#                                                       # containerd outages alone take ~6 min)
#   scripts/stress.sh thousand_execs                    # one test
#   RR_STRESS_LIFECYCLES=100 RR_STRESS_EXECS=100 scripts/stress.sh   # a quick pass
#   scripts/stress.sh --skip killed_shims_socket_is_removed          # leave out a known shim bug
#
# Tests marked #[ignore = "shim bug: ..."] run too (they are ignored by `make test`) and fail
# until the bug they show is fixed. --no-fail-fast: faults.rs still runs when stress.rs failed.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
status=0
cargo test --no-fail-fast --test stress --test faults --test buffering --test cri_buffering -- --ignored --test-threads=1 --nocapture "$@" || status=$?
echo "stress: $(($(date +%s) - started)) s, status $status"
exit $status
