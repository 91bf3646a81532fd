#!/usr/bin/env bash
# Peerless beside SPDK and beside the floor, in one run on this machine.
#
# peerless-tgt and (when SPDK_DIR is set) SPDK's nvmf_tgt each serve a null bdev from one
# busy-polling reactor on core 0; one initiator on core 1 drives both: SPDK's
# spdk_nvme_perf when SPDK_DIR is set, else peerless-perf (INITIATOR=peerless picks
# peerless-perf for both). The floor is bench/src/bin/tcp_floor.rs: the same bytes in the
# same PDU sizes through a loopback server with epoll, read-everything and writev batches
# and no NVMe logic, its server on core 0 and its client on core 1.
#
# Both targets start once on their own ports; the one not measured is paused with SIGSTOP,
# as a busy-polling reactor would take core 0 from the other. Per workload and round the
# runs go P S F F S P (P = Peerless, S = SPDK, F = floor): each side sits symmetrically
# around the round's middle, so a machine speeding up or slowing down through the round
# does not favour one (A B B A with the floor in the middle). Figures are medians over the
# rounds; the ratios are ratios of medians. QD1 rows also compare mean latency.
#
# Usage: [SPDK_DIR=/path/to/spdk] [INITIATOR=spdk|peerless] [PROFILE=DIR] bench/vs_spdk.sh [seconds per run (5)] [rounds (3)] [ROW_REGEX]
# PROFILE=DIR: in the first round, `perf record` samples each target's reactor (core 0)
# through its run; DIR gets, per row and side, the flat profile (ROW.SIDE.txt: self time
# by symbol, `perf report --no-children`) and the caller view of the top symbols
# (ROW.SIDE.callers.txt). The sampling costs the sampled run a few per cent.
# SPDK_DIR: an SPDK build tree (../shared/tools/build-spdk.sh makes one) holding
# build/bin/nvmf_tgt and build/bin/spdk_nvme_perf. Without it, Peerless runs beside the
# floor only. SPDK runs on hugepages when at least 1024 are free, else with --no-huge.
set -euo pipefail
SECONDS_PER_RUN=${1:-5}
ROUNDS=${2:-3}
ROW_FILTER=${3:-.}
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools -p peerless-bench
BIN=$(cd "$BUILD/release" && pwd)
SPDK_DIR=${SPDK_DIR:-}
if [ -n "$SPDK_DIR" ]; then
    for tool in nvmf_tgt spdk_nvme_perf; do
        [ -x "$SPDK_DIR/build/bin/$tool" ] || { echo "no $SPDK_DIR/build/bin/$tool" >&2; exit 2; }
    done
    INITIATOR=${INITIATOR:-spdk}
else
    INITIATOR=peerless
fi
case "$INITIATOR" in spdk | peerless) ;; *) echo "INITIATOR: spdk or peerless" >&2; exit 2 ;; esac

WORK=$(mktemp -d)
BENCH_DIRS+=("$WORK")
NQN=nqn.2016-06.io.spdk:cnode1
PEERLESS_PORT=4440
SPDK_PORT=4441

# SPDK's nvmf_tgt busy-polls; so must Peerless when it has more than one mode.
POLL_FLAG=()
if "$BIN/peerless-tgt" --help 2>&1 | grep -q -- '--poll-mode'; then POLL_FLAG=(--poll-mode); fi
# DPDK memory for the SPDK processes.
huge_free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
# The target takes 1 GiB, the initiator 512 MiB (2 MiB pages).
if [ "${huge_free:-0}" -ge 1024 ]; then
    TGT_MEM=(-s 1024); PERF_MEM=(-s 512); MEM_NOTE=hugepages
else
    TGT_MEM=(--no-huge -s 1024); PERF_MEM=(--no-huge -s 512); MEM_NOTE=--no-huge
fi

bench_null_config "$WORK/peerless.json" "$NQN" "$PEERLESS_PORT"
mkdir -p "$WORK/peerless"
"$BIN/peerless-tgt" -m 0x1 "${POLL_FLAG[@]}" -c "$WORK/peerless.json" -r "$WORK/peerless/rpc.sock" \
    2>"$WORK/peerless/tgt.log" &
PEERLESS_TGT=$!
BENCH_TARGETS+=("$PEERLESS_TGT")

# Waits until a target's RPC socket is up, then pauses it.
await_and_pause() {
    for _ in $(seq 200); do [ -S "$2" ] && break; sleep 0.05; done
    sleep 1
    if ! kill -0 "$1" 2>/dev/null || [ ! -S "$2" ]; then
        echo "$3 did not start:" >&2
        cat "$4" >&2
        exit 1
    fi
    kill -STOP "$1"
}
await_and_pause "$PEERLESS_TGT" "$WORK/peerless/rpc.sock" peerless-tgt "$WORK/peerless/tgt.log"

if [ -n "$SPDK_DIR" ]; then
    bench_null_config "$WORK/spdk.json" "$NQN" "$SPDK_PORT"
    "$SPDK_DIR/build/bin/nvmf_tgt" -m 0x1 "${TGT_MEM[@]}" -c "$WORK/spdk.json" -r "$WORK/spdk.sock" \
        >"$WORK/spdk.log" 2>&1 &
    SPDK_TGT=$!
    BENCH_TARGETS+=("$SPDK_TGT")
    await_and_pause "$SPDK_TGT" "$WORK/spdk.sock" nvmf_tgt "$WORK/spdk.log"
fi

PROFILE=${PROFILE:-}
PROFILE_AS=""
if [ -n "$PROFILE" ]; then
    command -v perf >/dev/null || { echo "PROFILE needs perf (linux-perf)" >&2; exit 2; }
    mkdir -p "$PROFILE"
fi
# Samples PID for the length of a run into $PROFILE/$PROFILE_AS.data, in the background;
# profile_end turns it into the flat and caller reports.
profile_start() {
    perf record -q -g -p "$1" -o "$PROFILE/$PROFILE_AS.data" -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1 &
    PROFILER=$!
}
profile_end() {
    wait "$PROFILER" || true
    perf report -q --stdio --no-children --sort symbol -i "$PROFILE/$PROFILE_AS.data" 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -40 >"$PROFILE/$PROFILE_AS.txt" || true
    perf report -q --stdio --children --sort symbol -G -i "$PROFILE/$PROFILE_AS.data" 2>/dev/null |
        head -300 >"$PROFILE/$PROFILE_AS.callers.txt" || true
    rm -f "$PROFILE/$PROFILE_AS.data"
}

# Runs one workload against a target and sets RUN to "iops mean_latency_us". With
# PROFILE_AS set (and PROFILE), the target is sampled through the run.
# Usage: target_run PID PORT PERF_ARGS...
target_run() {
    local pid=$1 port=$2 status=0
    shift 2
    local trid="trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$port subnqn:$NQN"
    kill -CONT "$pid"
    [ -z "$PROFILE" ] || [ -z "$PROFILE_AS" ] || profile_start "$pid"
    if [ "$INITIATOR" = spdk ]; then
        "$SPDK_DIR/build/bin/spdk_nvme_perf" -r "$trid" "$@" -t "$SECONDS_PER_RUN" -c 0x2 "${PERF_MEM[@]}" </dev/null \
            >"$WORK/perf.out" 2>&1 || status=$?
    else
        "$BIN/peerless-perf" -r "$trid" "$@" -t "$SECONDS_PER_RUN" -c 0x2 --json \
            >"$WORK/perf.out" 2>"$WORK/perf.log" || status=$?
    fi
    kill -STOP "$pid"
    [ -z "$PROFILE" ] || [ -z "$PROFILE_AS" ] || profile_end
    if [ "$status" != 0 ]; then
        echo "$INITIATOR initiator against port $port ($*) failed:" >&2
        cat "$WORK/perf.out" "$WORK/perf.log" 2>/dev/null >&2
        exit 1
    fi
    if [ "$INITIATOR" = spdk ]; then
        # "Total : IOPS MiB/s Average min max", latencies in microseconds.
        RUN=$(awk -F: '/^Total/ {split($2, f, " "); printf "%.0f %.2f", f[1], f[3]}' "$WORK/perf.out")
    else
        RUN=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f %.2f" % (d["iops"], d["latency_us"]["avg"]))' \
            "$WORK/perf.out")
    fi
    [ -n "$RUN" ] || { echo "no figures from the initiator:" >&2; cat "$WORK/perf.out" >&2; exit 1; }
}

floor_run() {
    local out
    out=$("$BIN/tcp_floor" "$@" -t "$SECONDS_PER_RUN" --cores 0,1)
    RUN=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%.0f %.2f" % (d["iops"], d["latency_us"]["avg"]))' "$out")
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
spread() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(f"{100*(max(v)-min(v))/sorted(v)[len(v)//2]:.0f}%")' "$@"; }

echo "peerless-tgt: $BIN/peerless-tgt -m 0x1 ${POLL_FLAG[*]}"
[ -z "$SPDK_DIR" ] || echo "nvmf_tgt:     $SPDK_DIR/build/bin/nvmf_tgt -m 0x1 ($MEM_NOTE)"
echo "initiator:    $INITIATOR on core 1; floor: tcp_floor (server core 0, client core 1)"
echo "$SECONDS_PER_RUN s per run, $ROUNDS rounds of P S F F S P, medians; spread = (max-min)/median"
printf '%-30s %11s %11s %11s %8s %8s %8s %8s %8s\n' workload peerless spdk floor P/SPDK P/floor sprd_P sprd_S sprd_F
TABLE=""
while IFS='|' read -r name args; do
    [[ "$name" =~ $ROW_FILTER ]] || continue
    read -r -a perf_args <<<"$args"
    p_iops=(); s_iops=(); f_iops=(); p_lat=(); s_lat=(); f_lat=()
    order="P F F P"
    [ -z "$SPDK_DIR" ] || order="P S F F S P"
    row_file=$(tr -c 'A-Za-z0-9+\n' _ <<<"$name")
    for round in $(seq "$ROUNDS"); do
        for side in $order; do
            # The first run of each target in the first round is the sampled one.
            PROFILE_AS=""
            if [ "$round" = 1 ] && [ ! -e "${PROFILE:-/nonexistent}/$row_file.$side.txt" ]; then
                PROFILE_AS="$row_file.$side"
            fi
            case $side in
                P) target_run "$PEERLESS_TGT" "$PEERLESS_PORT" "${perf_args[@]}"
                   read -r i l <<<"$RUN"; p_iops+=("$i"); p_lat+=("$l") ;;
                S) target_run "$SPDK_TGT" "$SPDK_PORT" "${perf_args[@]}"
                   read -r i l <<<"$RUN"; s_iops+=("$i"); s_lat+=("$l") ;;
                F) floor_run "${perf_args[@]}"
                   read -r i l <<<"$RUN"; f_iops+=("$i"); f_lat+=("$l") ;;
            esac
        done
    done
    p=$(median "${p_iops[@]}"); f=$(median "${f_iops[@]}"); pl=$(median "${p_lat[@]}")
    p_floor=$(python3 -c "print(f'{$p/$f:.2f}x')")
    if [ -n "$SPDK_DIR" ]; then
        s=$(median "${s_iops[@]}"); sl=$(median "${s_lat[@]}")
        p_spdk=$(python3 -c "print(f'{$p/$s:.2f}x')")
        s_spread=$(spread "${s_iops[@]}")
    else
        s=0; sl=0; p_spdk=-; s_spread=-
    fi
    printf '%-30s %11.0f %11.0f %11.0f %8s %8s %8s %8s %8s\n' "$name" "$p" "$s" "$f" "$p_spdk" "$p_floor" \
        "$(spread "${p_iops[@]}")" "$s_spread" "$(spread "${f_iops[@]}")"
    label=$name
    if [[ "$args" == *"-q 1 "* ]]; then
        fl=$(median "${f_lat[@]}")
        label=$(printf '%s (latency %.1f vs %.1f us, floor %.1f us)' "$name" "$pl" "$sl" "$fl")
        [ -z "$SPDK_DIR" ] || p_spdk="$p_spdk (latency $(python3 -c "print(f'{$pl/$sl:.2f}x')"))"
    fi
    TABLE+="| $label | $p_spdk | $p_floor |"$'\n'
done <<'MATRIX'
4K randread QD1|-q 1 -o 4096 -w randread
4K randread QD32|-q 32 -o 4096 -w randread
4K randread QD128|-q 128 -o 4096 -w randread
4K randwrite QD128|-q 128 -o 4096 -w randwrite
128K read QD32|-q 32 -o 131072 -w read
128K write QD32|-q 32 -o 131072 -w write
4K randread QD128 hdgst+ddgst|-q 128 -o 4096 -w randread -H -I
4K randrw QD16 x 4 qpairs|-q 64 -o 4096 -w randrw -M 50 -P 4
MATRIX
echo
echo "| workload | Peerless/SPDK | Peerless/floor |"
echo "|---|---|---|"
printf '%s' "$TABLE"
