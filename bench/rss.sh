#!/usr/bin/env bash
# Target memory under a deep load of large I/Os. peerless-tgt runs with one poll-mode
# reactor on core 0 serving a null bdev over NVMe/TCP; peerless-perf (this tree's, the
# same initiator for every target) runs on core 1 with 24 I/O queues each holding 127
# 128 KiB sequential reads, the most a queue of max_queue_depth 128 holds, and then the
# same writes. peerless-perf's -q counts a namespace's I/Os over all its -P queues, so 24
# queues of 127 take -P 24 -q 3048.
#
# Both directions matter. Written data lands in the target's data buffers. Read data
# also passes through each connection's send buffer, which no buffer pool bounds, and
# the null bdev never writes its read buffers, so buffers that are lazily mapped heap
# memory become resident only for writes.
#
# Per run it prints the target's resident memory at idle once the transport exists
# (VmRSS), the highest VmRSS sampled during the load, VmHWM at its end, and, for a target
# whose transport has a fixed data buffer pool, the pool's bytes as mem_get_stats reports
# them (data_buffers) beside num_shared_buffers x (8 KiB + io_unit_size), the bound
# target/src/nvmf/buffers.rs states. Such a target runs once per num_shared_buffers value,
# so one can see memory follow the configuration; a target without a pool (mem_get_stats
# has no data_buffers, as before the engine split) runs once on its defaults.
#
# Runs go in order and then in reverse (A B C C B A), figures are medians, and peak_x is
# a run's peak VmRSS over that of the first TGT_DIR's first configuration, same workload.
#
# Usage: bench/rss.sh [TGT_DIR ...]   (default: this tree's release build)
# Environment: RSS_SECONDS per run (4), RSS_ROUNDS (1, each a forward and a reverse
# pass), RSS_SHARED_BUFFERS ("127 511 2047"), RSS_WORKLOADS ("read write").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${RSS_SECONDS:-4}
ROUNDS=${RSS_ROUNDS:-1}
SHARED_BUFFERS=${RSS_SHARED_BUFFERS:-127 511 2047}
WORKLOADS=${RSS_WORKLOADS:-read write}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools
BIN=$(cd "$BUILD/release" && pwd)
[ $# -gt 0 ] || set -- "$BIN"
WORK=$(mktemp -d)
BENCH_DIRS+=("$WORK")
PORT=4433
NQN=nqn.2016-06.io.peerless:rss
TRID="trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"
QUEUES=24
DEPTH_PER_QUEUE=127
DEPTH=$((QUEUES * DEPTH_PER_QUEUE))
IO_BYTES=131072
# The transport defaults the formula assumes: io_unit_size and the small class.
IO_UNIT_BYTES=131072
SMALL_BYTES=8192

# Fields of /proc/PID/status are in KiB.
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mem_stats() { "$BIN/peerless-rpc" -s "$1/rpc.sock" mem_get_stats 2>/dev/null || echo '{}'; }
# The first transport's data_buffers field, or "-" when the target has none.
pool_field() {
    python3 -c 'import json,sys
d=json.loads(sys.argv[1]).get("data_buffers") or [{}]
print(d[0].get(sys.argv[2], "-"))' "$1" "$2"
}
# The median of a space-separated list of numbers ("-" for a list holding none).
median() {
    python3 -c 'import statistics,sys
v=[float(x) for x in sys.argv[1].split() if x != "-"]
print(statistics.median(v) if v else "-")' "$1"
}
kib_to_mib() { python3 -c "print($1 / 1024)"; }

# Runs one target on one configuration and sets RESULT to "idle_kib peak_kib hwm_kib
# pool_bytes buffer_waits mibps". Not in a subshell: the exit trap must see the target.
# Usage: run_one TGT_DIR SHARED_BUFFERS|default WORKLOAD
run_one() {
    local dir=$1 shared=$2 workload=$3 dir_work extra="" idle peak rss hwm stats pool waits out perf_pid
    dir_work=$(mktemp -d -p "$WORK")
    [ "$shared" = default ] || extra="\"num_shared_buffers\":$shared"
    bench_null_config "$dir_work/config.json" "$NQN" "$PORT" "$extra"
    bench_start_target "$dir" "$dir_work" "$dir_work/config.json"
    # The config, transport included, is applied once init is done.
    "$BIN/peerless-rpc" -s "$dir_work/rpc.sock" framework_wait_init >/dev/null 2>&1 || true
    sleep 0.5
    idle=$(status_kib "$TGT" VmRSS)
    stats=$(mem_stats "$dir_work")
    pool=$(pool_field "$stats" bytes)
    "$BIN/peerless-perf" -r "$TRID" -P "$QUEUES" -q "$DEPTH" -o "$IO_BYTES" -w "$workload" -t "$SECONDS_PER_RUN" \
        -c 0x2 --json >"$dir_work/perf.json" 2>"$dir_work/perf.log" &
    perf_pid=$!
    peak=$idle
    while kill -0 "$perf_pid" 2>/dev/null; do
        rss=$(status_kib "$TGT" VmRSS)
        [ "$rss" -le "$peak" ] || peak=$rss
        sleep 0.1
    done
    if ! wait "$perf_pid"; then
        echo "peerless-perf $workload failed against $dir ($shared):" >&2
        cat "$dir_work/perf.log" >&2
        exit 1
    fi
    hwm=$(status_kib "$TGT" VmHWM)
    waits=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("buffer_waits", "-"))' "$(mem_stats "$dir_work")")
    out=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mibps"])' "$dir_work/perf.json")
    bench_stop_target "$TGT"
    RESULT="$idle $peak $hwm $pool $waits $out"
}

# Which configurations each target runs: a probe asks whether it has a buffer pool.
CONFIGS=()
for dir in "$@"; do
    dir=$(cd "$dir" && pwd)
    probe=$(mktemp -d -p "$WORK")
    bench_null_config "$probe/config.json" "$NQN" "$PORT"
    bench_start_target "$dir" "$probe" "$probe/config.json"
    "$BIN/peerless-rpc" -s "$probe/rpc.sock" framework_wait_init >/dev/null 2>&1 || true
    if [ "$(pool_field "$(mem_stats "$probe")" bytes)" = - ]; then
        CONFIGS+=("$dir default")
    else
        for shared in $SHARED_BUFFERS; do CONFIGS+=("$dir $shared"); done
    fi
    bench_stop_target "$TGT"
done
CASES=()
for workload in $WORKLOADS; do
    for config in "${CONFIGS[@]}"; do CASES+=("$workload $config"); done
done

ORDER=()
for _ in $(seq "$ROUNDS"); do
    for ((i = 0; i < ${#CASES[@]}; i++)); do ORDER+=("$i"); done
    for ((i = ${#CASES[@]} - 1; i >= 0; i--)); do ORDER+=("$i"); done
done
declare -A IDLE PEAK HWM POOL WAITS MIBPS
for i in "${ORDER[@]}"; do
    read -r workload dir shared <<<"${CASES[$i]}"
    run_one "$dir" "$shared" "$workload"
    read -r idle peak hwm pool waits mibps <<<"$RESULT"
    IDLE[$i]+=" $idle"; PEAK[$i]+=" $peak"; HWM[$i]+=" $hwm"; MIBPS[$i]+=" $mibps"
    POOL[$i]=$pool; WAITS[$i]+=" $waits"
done

echo "peerless-perf -P $QUEUES -q $DEPTH -o $IO_BYTES -w WORKLOAD -t $SECONDS_PER_RUN -c 0x2; MiB = 2^20 bytes"
printf '%-6s %-30s %6s %11s %8s %8s %8s %8s %6s %9s %6s\n' \
    wkld target shared formula_MiB pool_MiB idle_MiB peak_MiB hwm_MiB peak_x buf_waits MiB/s
first_workload=
for ((i = 0; i < ${#CASES[@]}; i++)); do
    read -r workload dir shared <<<"${CASES[$i]}"
    peak=$(median "${PEAK[$i]}")
    if [ "$workload" != "$first_workload" ]; then
        first_workload=$workload
        first_peak=$peak
    fi
    formula=-; pool=-; waits=-
    if [ "$shared" = default ]; then
        shared=-
    else
        formula=$(python3 -c "print(f'{$shared * ($SMALL_BYTES + $IO_UNIT_BYTES) / 2**20:.1f}')")
        pool=$(python3 -c "print(f'{${POOL[$i]} / 2**20:.1f}')")
        waits=$(printf "%.0f" "$(median "${WAITS[$i]}")")
    fi
    printf '%-6s %-30s %6s %11s %8s %8.1f %8.1f %8.1f %6.2f %9s %6.0f\n' "$workload" "$dir" "$shared" "$formula" "$pool" \
        "$(kib_to_mib "$(median "${IDLE[$i]}")")" "$(kib_to_mib "$peak")" "$(kib_to_mib "$(median "${HWM[$i]}")")" \
        "$(python3 -c "print($peak / $first_peak)")" "$waits" "$(median "${MIBPS[$i]}")"
done
