#!/usr/bin/env bash
# How a listener's sockets are watched, side by side: sock_impl "posix" (the poll group's
# epoll, asked at most every few microseconds while busy) against "uring" (io_uring
# multishot polls, read from shared memory with no system call). One poll-mode reactor
# on core 0 serves a null bdev; peerless-perf on core 1 does 4 KiB randread at QD32
# (IOPS) and QD1 (latency), alone and then with IDLE_HOSTS idle connected hosts beside it
# (bench/src/bin/crowd.rs, its crowd benchmark, with the listener under test). Each
# round visits posix, uring, uring, posix; figures are medians, ratios uring over posix.
# Usage: bench/sock_impl.sh [seconds per run (3)] [rounds (2)] [idle hosts (500)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${1:-3}
ROUNDS=${2:-2}
IDLE_HOSTS=${3:-500}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools -p peerless-bench
BIN=$BUILD/release
WORK=$(mktemp -d)
BENCH_DIRS+=("$WORK")
PORT=4434
NQN=nqn.2016-06.io.peerless:sockimpl

config() {
    cat > "$WORK/$1.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP","max_connections_per_listener":20000,"acceptor_poll_rate":1000}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"max_cntlid":65519}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Null0"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","sock_impl":"$1","listen_address":{"trtype":"tcp","traddr":"127.0.0.1","trsvcid":"$PORT"}}}]}]}
JSON
}
config posix
config uring

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
declare -A IOPS LAT CROWD_IOPS CROWD_LAT
visit() {
    local impl=$1 out
    bench_start_target "$BIN" "$WORK" "$WORK/$impl.json" poll
    # One round of the crowd benchmark: alone, crowded, crowded, alone.
    out=$("$BIN/crowd" "127.0.0.1:$PORT" "$NQN" "$BIN/peerless-perf" "$TGT" "$IDLE_HOSTS" "$SECONDS_PER_RUN" 1)
    IOPS[$impl]+=" $(awk '/QD32 4K randread IOPS/ {print $5}' <<<"$out")"
    CROWD_IOPS[$impl]+=" $(awk '/QD32 4K randread IOPS/ {print $6}' <<<"$out")"
    LAT[$impl]+=" $(awk '/QD1 latency avg/ {print $5}' <<<"$out")"
    CROWD_LAT[$impl]+=" $(awk '/QD1 latency avg/ {print $6}' <<<"$out")"
    bench_stop_target "$TGT"
}
for _ in $(seq "$ROUNDS"); do
    for impl in posix uring uring posix; do
        visit "$impl"
    done
done

# shellcheck disable=SC2086 # the sample lists are words
{
    echo "sock_impl side by side: 4 KiB randread, null bdev, 1 poll-mode reactor on core 0, peerless-perf on core 1;"
    echo "$ROUNDS round(s) of posix uring uring posix, $SECONDS_PER_RUN s runs, crowd of $IDLE_HOSTS idle hosts"
    printf '%-8s %12s %12s %14s %14s\n' impl qd32_iops qd1_lat_us crowd_qd32_iops crowd_qd1_us
    for impl in posix uring; do
        printf '%-8s %12.0f %12.2f %14.0f %14.2f\n' "$impl" "$(median ${IOPS[$impl]})" "$(median ${LAT[$impl]})" \
            "$(median ${CROWD_IOPS[$impl]})" "$(median ${CROWD_LAT[$impl]})"
    done
    python3 - "$(median ${IOPS[uring]})" "$(median ${IOPS[posix]})" "$(median ${LAT[uring]})" "$(median ${LAT[posix]})" \
        "$(median ${CROWD_IOPS[uring]})" "$(median ${CROWD_IOPS[posix]})" "$(median ${CROWD_LAT[uring]})" "$(median ${CROWD_LAT[posix]})" <<'PY'
import sys
i, ip, l, lp, ci, cip, cl, clp = map(float, sys.argv[1:])
print(f"uring / posix: QD32 IOPS {i / ip:.3f}x, QD1 latency {l / lp:.3f}x; "
      f"crowded: QD32 IOPS {ci / cip:.3f}x, QD1 latency {cl / clp:.3f}x")
PY
}
