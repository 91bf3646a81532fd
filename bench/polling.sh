#!/usr/bin/env bash
# Reactor modes on NVMe/TCP: poll, interrupt and adaptive mode, each serving a null bdev
# from one reactor on core 0 to peerless-perf on core 1, 4 KiB randread. Per mode: idle
# CPU over 10 s with no host connected, QD1 latency, QD128 IOPS, and the CPU a steady
# 1,000 IOPS costs (peerless-perf --rate-iops), with where the reactor's time went then
# (framework_get_reactors). Each round visits the modes in the order poll, interrupt,
# adaptive, adaptive, interrupt, poll, so every comparison is made within one run;
# figures are medians over the visits, ratios are against poll mode. CPU is user plus
# system time of the whole target process (/proc/PID/stat), in % of one core.
# Usage: bench/polling.sh [seconds per run (2)] [rounds (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${1:-2}
ROUNDS=${2:-3}
IDLE_SECONDS=${IDLE_SECONDS:-10}
RATE_IOPS=1000
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools
BIN=$BUILD/release
WORK=$(mktemp -d)
PORT=4432
NQN=nqn.2016-06.io.peerless:polling
bench_null_config "$WORK/config.json" "$NQN" "$PORT"
TRID="trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"
TICKS_PER_SECOND=$(getconf CLK_TCK)
MODES=(poll interrupt adaptive)

perf() { "$BIN/peerless-perf" -r "$TRID" -o 4096 -w randread -t "$SECONDS_PER_RUN" -c 0x2 --json "$@" 2>/dev/null; }
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d$2)" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
now() { date +%s.%N; }
percent_of_core() { python3 -c "import sys; t,a,b=map(float,sys.argv[1:]); print(t/$TICKS_PER_SECOND/(b-a)*100)" "$@"; }
reactors() { "$BIN/peerless-rpc" -s "$WORK/rpc.sock" framework_get_reactors; }
# Where the reactor's time went between two framework_get_reactors answers, per second
# of wall time: busy %, idle polling %, asleep %, wake-ups/s, and the window at the end.
split() {
    python3 - "$1" "$2" <<'PY'
import json, sys
a, b = (json.loads(x)["reactors"][0] for x in sys.argv[1:])
wall = (b["busy"] + b["idle"]) - (a["busy"] + a["idle"])
pct = lambda k: 100.0 * (b[k] - a[k]) / wall
print(f"{pct('busy'):.1f} {pct('idle_poll'):.1f} {pct('sleep'):.1f} {(b['wakeups'] - a['wakeups']) / wall * 1e9:.0f} {b['poll_window_us']:.1f}")
PY
}

declare -A IDLE LAT IOPS RATE_CPU SPLIT
visit() {
    local mode=$1
    bench_start_target "$BIN" "$WORK" "$WORK/config.json" "$mode"
    if [ -z "${IDLE[$mode]:-}" ]; then
        local c0 t0 c1 t1
        c0=$(bench_cpu_ticks "$TGT"); t0=$(now)
        sleep "$IDLE_SECONDS"
        c1=$(bench_cpu_ticks "$TGT"); t1=$(now)
        IDLE[$mode]=$(percent_of_core $((c1 - c0)) "$t0" "$t1")
    fi
    local out
    out=$(perf -q 1)
    LAT[$mode]+=" $(field "$out" "['latency_us']['avg']")"
    out=$(perf -q 128)
    IOPS[$mode]+=" $(field "$out" "['iops']")"
    local before c0 t0 c1 t1
    before=$(reactors)
    c0=$(bench_cpu_ticks "$TGT"); t0=$(now)
    perf -q 1 --rate-iops "$RATE_IOPS" >/dev/null
    c1=$(bench_cpu_ticks "$TGT"); t1=$(now)
    RATE_CPU[$mode]+=" $(percent_of_core $((c1 - c0)) "$t0" "$t1")"
    SPLIT[$mode]=$(split "$before" "$(reactors)")
    bench_stop_target "$TGT"
}

for _ in $(seq "$ROUNDS"); do
    for mode in poll interrupt adaptive adaptive interrupt poll; do
        visit "$mode"
    done
done

# shellcheck disable=SC2086 # the sample lists are words
{
    echo "4 KiB randread, null bdev, 1 reactor on core 0, peerless-perf on core 1; $ROUNDS round(s) of $SECONDS_PER_RUN s runs"
    printf '%-10s %10s %12s %13s %14s\n' mode idle_cpu_% qd1_lat_us qd128_iops cpu_%_at_${RATE_IOPS}
    for mode in "${MODES[@]}"; do
        printf '%-10s %10.2f %12.2f %13.0f %14.2f\n' "$mode" "${IDLE[$mode]}" "$(median ${LAT[$mode]})" \
            "$(median ${IOPS[$mode]})" "$(median ${RATE_CPU[$mode]})"
    done
    echo
    echo "ratios to poll mode (medians):"
    for mode in interrupt adaptive; do
        python3 -c "import sys; l,lp,i,ip=map(float,sys.argv[2:]); print(f'{sys.argv[1]:<10} QD1 latency {l/lp:.2f}x, QD128 IOPS {i/ip:.2f}x')" \
            "$mode" "$(median ${LAT[$mode]})" "$(median ${LAT[poll]})" "$(median ${IOPS[$mode]})" "$(median ${IOPS[poll]})"
    done
    echo
    echo "reactor time at $RATE_IOPS IOPS (last visit; framework_get_reactors):"
    printf '%-10s %8s %13s %9s %11s %15s\n' mode busy_% idle_polling_% asleep_% wakeups/s poll_window_us
    for mode in "${MODES[@]}"; do
        read -r busy polling asleep wakeups window <<<"${SPLIT[$mode]}"
        printf '%-10s %8s %13s %9s %11s %15s\n' "$mode" "$busy" "$polling" "$asleep" "$wakeups" "$window"
    done
}
