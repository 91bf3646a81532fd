#!/usr/bin/env bash
# NVMe/TCP target benchmark: peerless-tgt with one poll-mode reactor
# on core 0 serving a null bdev, peerless-perf on core 1, against a bare loopback TCP
# exchange of the same bytes per command (bench/src/bin/tcp_echo.rs) as the physical
# limit. Target and echo runs interleave A B B A; figures are medians.
# Usage: bench/nvmf.sh [seconds per run (3)] [rounds (2)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${1:-3}
ROUNDS=${2:-2}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools -p peerless-bench
BIN=$BUILD/release
WORK=$(mktemp -d)
PORT=4431
NQN=nqn.2016-06.io.peerless:bench
bench_null_config "$WORK/config.json" "$NQN" "$PORT"
bench_start_target "$BIN" "$WORK" "$WORK/config.json"
TRID="trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"

perf() { "$BIN/peerless-perf" -r "$TRID" -q "$1" -o "$2" -w "$3" -t "$SECONDS_PER_RUN" -c 0x2 --json 2>/dev/null; }
# The poll-mode target spins on core 0; stop it while the echo uses that core.
echo_run() {
    kill -STOP "$TGT"
    "$BIN/tcp_echo" "$1" "$2" "$3" "$SECONDS_PER_RUN" 0 1
    kill -CONT "$TGT"
}
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d$2)" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

mkdir -p bench/results
RESULTS="bench/results/nvmf-$(date -u +%Y%m%dT%H%M%SZ).json"
echo "[" > "$RESULTS"
printf '%-26s %14s %14s %8s %12s %12s\n' workload peerless echo ratio lat_us_peer lat_us_echo
first=1
while read -r name depth size pattern echo_mode; do
    peer_iops=(); echo_iops=(); peer_lat=(); echo_lat=()
    for _ in $(seq "$ROUNDS"); do
        for side in A B B A; do
            if [ "$side" = A ]; then
                out=$(perf "$depth" "$size" "$pattern")
                peer_iops+=("$(field "$out" "['iops']")"); peer_lat+=("$(field "$out" "['latency_us']['avg']")")
            else
                out=$(echo_run "$echo_mode" "$size" "$depth")
                echo_iops+=("$(field "$out" "['iops']")"); echo_lat+=("$(field "$out" "['latency_us']['avg']")")
            fi
        done
    done
    p=$(median "${peer_iops[@]}"); e=$(median "${echo_iops[@]}")
    pl=$(median "${peer_lat[@]}"); el=$(median "${echo_lat[@]}")
    ratio=$(python3 -c "print(f'{$p/$e:.2f}')")
    printf '%-26s %14.0f %14.0f %8s %12.2f %12.2f\n' "$name" "$p" "$e" "$ratio" "$pl" "$el"
    [ $first = 1 ] || echo "," >> "$RESULTS"
    first=0
    printf '{"workload":"%s","queue_depth":%s,"io_bytes":%s,"peerless_iops":%.0f,"echo_iops":%.0f,"ratio":%s,"peerless_latency_us":%.2f,"echo_latency_us":%.2f}\n' \
        "$name" "$depth" "$size" "$p" "$e" "$ratio" "$pl" "$el" >> "$RESULTS"
done <<'MATRIX'
4K_randread_QD128 128 4096 randread read
4K_randwrite_QD128 128 4096 randwrite write
128K_read_QD32 32 131072 read read
4K_read_QD1 1 4096 read read
MATRIX
echo "]" >> "$RESULTS"
echo "written to $RESULTS"
