#!/usr/bin/env bash
# bdev layer benchmark: peerless-bdevperf on one core, null and malloc bdevs,
# 4K randread at QD128 and QD1. Prints IOPS and the per-I/O cost in ns; runs each case
# ROUNDS times and reports the median (machines drift by tens of percent).
# Usage: bench/bdevperf.sh [seconds per run (3)] [rounds (3)] [core mask (0x2)]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-3}
ROUNDS=${2:-3}
MASK=${3:-0x2}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-tools
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/config.json" <<'JSON'
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}},
 {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":512}}]}]}
JSON
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
printf '%-10s %-22s %14s %12s\n' bdev workload IOPS ns_per_io
for bdev in Null0 Malloc0; do
    for depth in 128 1; do
        runs=()
        for _ in $(seq "$ROUNDS"); do
            out=$("$BUILD/release/peerless-bdevperf" -c "$WORK/config.json" -b "$bdev" -q "$depth" -o 4096 -w randread -t "$SECONDS_PER_RUN" -m "$MASK" --json 2>/dev/null)
            runs+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['iops'])" "$out")")
        done
        iops=$(median "${runs[@]}")
        printf '%-10s %-22s %14.0f %12.1f\n' "$bdev" "4K randread QD$depth" "$iops" "$(python3 -c "print(1e9/$iops)")"
    done
done
