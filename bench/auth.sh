#!/usr/bin/env bash
# What a DH-HMAC-CHAP transaction costs the reactor that runs it, per DH group (the
# controller's computations of one bidirectional SHA-512 transaction): medians in
# microseconds and ratios over the null group, groups visited forwards then backwards.
# A poll group runs these inline, so this is how long one authenticating queue holds up
# the other queues of its reactor.
# Usage: bench/auth.sh [iterations per visit (20)] [rounds (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-bench --bin auth_bench
"$BUILD/release/auth_bench" "${1:-20}" "${2:-3}"
