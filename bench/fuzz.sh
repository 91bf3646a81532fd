#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a bounded time each, from the
# committed seed corpus (fuzz/corpus/<target>, never written to) plus a scratch corpus
# that survives between runs in fuzz/scratch/. Prints runs, coverage and any crash.
# Usage: bench/fuzz.sh [seconds per target (600)] [targets... (all)]
#
# libFuzzer runs on the stable toolchain with `--sanitizer none` (AddressSanitizer needs
# nightly's -Zsanitizer): the code under test is `forbid(unsafe_code)` Rust, where a
# memory error shows up as a panic, which libFuzzer catches and saves as a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-600}
shift || true
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
    TARGETS=(pdu rpc config auth)
fi
if ! command -v cargo-fuzz > /dev/null; then
    cargo install cargo-fuzz --locked
fi
cd fuzz
# -a: debug assertions and overflow checks on, so arithmetic on wire values is checked too.
cargo fuzz build --sanitizer none -O -a
failed=0
for target in "${TARGETS[@]}"; do
    mkdir -p "scratch/$target" "artifacts/$target"
    log=$(mktemp)
    if cargo fuzz run --sanitizer none -O -a "$target" "scratch/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
        echo "fuzz $target: ${runs:-?} runs in ${SECONDS_PER_TARGET} s, coverage ${cov:-?}, no crash"
    else
        echo "fuzz $target: CRASH (input saved under fuzz/artifacts/$target/)"
        grep -E 'panicked|SUMMARY|ERROR' "$log" | head -20
        failed=1
    fi
    rm -f "$log"
done
exit "$failed"
