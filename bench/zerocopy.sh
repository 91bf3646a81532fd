#!/usr/bin/env bash
# MSG_ZEROCOPY sends of C2HData against copying sends, side by side over loopback:
# sock_impl_set_options -i posix with enable_zerocopy_send_server off, then on with
# zerocopy_threshold 0. One poll-mode reactor on core 0 serves a null bdev; peerless-perf
# (or spdk_nvme_perf with INITIATOR=spdk and SPDK_DIR) on core 1 runs 128 KiB sequential
# read at QD32 and 4 KiB randread at QD32. Each round visits off, on, on, off; figures are
# medians, ratios on over off. The "on" runs also print the target's zero-copy counters
# (mem_get_stats): on loopback the kernel copies at local delivery, so every notification
# says COPIED, and the notifications are pure cost there: a NIC is where this can win.
# Usage: bench/zerocopy.sh [seconds per run (5)] [rounds (2)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${1:-5}
ROUNDS=${2:-2}
INITIATOR=${INITIATOR:-peerless}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools --bin peerless-tgt --bin peerless-perf --bin peerless-rpc
BIN=$BUILD/release
WORK=$(mktemp -d)
BENCH_DIRS+=("$WORK")
PORT=4436
NQN=nqn.2016-06.io.peerless:zerocopy

for mode in off on; do
    bench_null_config "$WORK/nvmf-$mode.json" "$NQN" "$PORT"
    enable=false
    [ "$mode" = off ] || enable=true
    python3 - "$WORK/nvmf-$mode.json" "$enable" <<'PY'
import json, sys
path, enable = sys.argv[1], sys.argv[2] == "true"
config = json.load(open(path))
sock = {"subsystem": "sock", "config": [{"method": "sock_impl_set_options", "params": {
    "impl_name": "posix", "enable_zerocopy_send_server": enable, "zerocopy_threshold": 0}}]}
config["subsystems"].insert(0, sock)
json.dump(config, open(path, "w"))
PY
done

WORKLOADS=("128K read QD32|-q 32 -o 131072 -w read" "4K randread QD32|-q 32 -o 4096 -w randread")
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
declare -A IOPS
COUNTERS=""
run() {
    local trid="trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"
    # shellcheck disable=SC2086 # the workload's arguments are words
    if [ "$INITIATOR" = spdk ]; then
        "$SPDK_DIR/build/bin/spdk_nvme_perf" -r "$trid" $1 -t "$SECONDS_PER_RUN" -c 0x2 </dev/null \
            | awk -F: '/^Total/ {split($2, f, " "); printf "%.0f", f[1]}'
    else
        "$BIN/peerless-perf" -r "$trid" $1 -t "$SECONDS_PER_RUN" -c 0x2 --json 2>"$WORK/perf.log" \
            | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["iops"])'
    fi
}
visit() {
    local mode=$1 workload name args
    bench_start_target "$BIN" "$WORK/$mode" "$WORK/nvmf-$mode.json" poll
    for workload in "${WORKLOADS[@]}"; do
        name=${workload%%|*}
        args=${workload#*|}
        IOPS["$mode|$name"]+=" $(run "$args")"
    done
    if [ "$mode" = on ]; then
        COUNTERS=$("$BIN/peerless-rpc" -s "$WORK/$mode/rpc.sock" mem_get_stats |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["zerocopy"])')
    fi
    bench_stop_target "$TGT"
}
for _ in $(seq "$ROUNDS"); do
    for mode in off on on off; do
        visit "$mode"
    done
done

# shellcheck disable=SC2086 # the sample lists are words
{
    echo "zero-copy sends off vs on (threshold 0), null bdev, 1 poll-mode reactor on core 0, $INITIATOR perf on core 1;"
    echo "$ROUNDS round(s) of off on on off, $SECONDS_PER_RUN s runs"
    printf '%-18s %12s %12s %8s\n' workload off_iops on_iops on/off
    for workload in "${WORKLOADS[@]}"; do
        name=${workload%%|*}
        off=$(median ${IOPS["off|$name"]})
        on=$(median ${IOPS["on|$name"]})
        printf '%-18s %12.0f %12.0f %8.3f\n' "$name" "$off" "$on" "$(python3 -c "print($on / $off)")"
    done
    # Every run, in order: the spread says how far a shared machine moved the medians.
    for workload in "${WORKLOADS[@]}"; do
        name=${workload%%|*}
        echo "$name samples: off${IOPS["off|$name"]}; on${IOPS["on|$name"]}"
    done
    echo "zero-copy counters after the last 'on' target: $COUNTERS"
}
