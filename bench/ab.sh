#!/usr/bin/env bash
# A/B of two peerless-tgt binaries over NVMe/TCP: each serves a null bdev from one
# poll-mode reactor on core 0, and NEW_DIR's peerless-perf on core 1 drives both, so the
# initiator is the same. Both targets start once on their own ports; the one not being
# measured is paused with SIGSTOP, because a poll-mode reactor spins and would take core
# 0 from the other. Per workload and round the runs go A B B A (A = OLD, B = NEW).
#
# Prints per workload the median IOPS of each side, the ratio new/old of the medians,
# each side's spread ((max - min) / median over its runs) to judge noise by, and the
# median of per-round ratios (each round's B pair over its A pair); then every run in
# order with the share of its core the target and peerless-perf got, which falls when
# another process takes the core (a slower host does not show there, only in the IOPS).
#
# Usage: bench/ab.sh OLD_DIR NEW_DIR [seconds per run (5)] [rounds (3)]
set -euo pipefail
# What the time keyword prints for each peerless-perf run: real, user and system seconds.
TIMEFORMAT='%R %U %S'
if [ $# -lt 2 ]; then
    echo "usage: $0 OLD_DIR NEW_DIR [seconds per run (5)] [rounds (3)]" >&2
    exit 2
fi
OLD_DIR=$(cd "$1" && pwd)
NEW_DIR=$(cd "$2" && pwd)
SECONDS_PER_RUN=${3:-5}
ROUNDS=${4:-3}
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
WORK=$(mktemp -d)
BENCH_DIRS+=("$WORK")
NQN=nqn.2016-06.io.peerless:ab
OLD_PORT=4434
NEW_PORT=4435

bench_null_config "$WORK/old.json" "$NQN" "$OLD_PORT"
bench_start_target "$OLD_DIR" "$WORK/old" "$WORK/old.json"
OLD_TGT=$TGT
kill -STOP "$OLD_TGT"
bench_null_config "$WORK/new.json" "$NQN" "$NEW_PORT"
bench_start_target "$NEW_DIR" "$WORK/new" "$WORK/new.json"
NEW_TGT=$TGT
kill -STOP "$NEW_TGT"

# CPU time of a process in clock ticks, all threads.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Runs one workload against one side and sets RUN to "iops target_cpu_% perf_cpu_%".
# Each of the two spins on its core, so a share of its core well under 100 % means
# something else ran there and the run is noisy.
# Usage: perf_run PID PORT DEPTH IO_BYTES PATTERN
perf_run() {
    local status=0 ticks_before start_ns end_ns ticks_after
    kill -CONT "$1"
    ticks_before=$(cpu_ticks "$1")
    start_ns=$(date +%s%N)
    { time "$NEW_DIR/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$2 subnqn:$NQN" \
        -q "$3" -o "$4" -w "$5" -t "$SECONDS_PER_RUN" -c 0x2 --json >"$WORK/perf.json" 2>"$WORK/perf.log"; } \
        2>"$WORK/perf.time" || status=$?
    end_ns=$(date +%s%N)
    ticks_after=$(cpu_ticks "$1")
    kill -STOP "$1"
    if [ "$status" != 0 ]; then
        echo "peerless-perf $5 against port $2 failed:" >&2
        cat "$WORK/perf.log" >&2
        exit 1
    fi
    RUN=$(python3 -c 'import json,sys
iops = json.load(open(sys.argv[1]))["iops"]
ticks, wall_ns, tick_hz = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
real, user, system = (float(x) for x in open(sys.argv[5]).read().split())
print(f"{iops:.0f} {100 * ticks / tick_hz / (wall_ns / 1e9):.0f} {100 * (user + system) / real:.0f}")' \
        "$WORK/perf.json" "$((ticks_after - ticks_before))" "$((end_ns - start_ns))" "$(getconf CLK_TCK)" \
        "$WORK/perf.time")
}

# Median, spread and the new/old ratio of two space-separated lists of IOPS, two runs a
# side per round in run order; then each round's new/old (its B pair over its A pair)
# and their median, which holds when the machine's speed shifts between rounds.
summary() {
    python3 -c 'import statistics,sys
old=[float(x) for x in sys.argv[1].split()]; new=[float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(old), statistics.median(new)
spread = lambda v, m: 100 * (max(v) - min(v)) / m
rounds = [(new[i] + new[i + 1]) / (old[i] + old[i + 1]) for i in range(0, len(old), 2)]
per_round = " ".join(f"{r:.3f}" for r in rounds)
print(f"{mo:12.0f} {mn:12.0f} {mn / mo:9.3f} {spread(old, mo):10.1f}% {spread(new, mn):10.1f}%"
      f"   {statistics.median(rounds):.3f} ({per_round})")' "$1" "$2"
}

echo "old: $OLD_DIR/peerless-tgt"
echo "new: $NEW_DIR/peerless-tgt"
echo "peerless-perf from $NEW_DIR, -c 0x2, $SECONDS_PER_RUN s per run, $ROUNDS rounds of A B B A"
printf '%-20s %12s %12s %9s %11s %11s   %s\n' workload old_iops new_iops new/old old_spread new_spread \
    'paired new/old (per round)'
while read -r name depth size pattern; do
    old_iops=""; new_iops=""; runs=""
    for _ in $(seq "$ROUNDS"); do
        for side in A B B A; do
            if [ "$side" = A ]; then
                perf_run "$OLD_TGT" "$OLD_PORT" "$depth" "$size" "$pattern"
                old_iops+=" ${RUN%% *}"
            else
                perf_run "$NEW_TGT" "$NEW_PORT" "$depth" "$size" "$pattern"
                new_iops+=" ${RUN%% *}"
            fi
            read -r iops tgt_cpu perf_cpu <<<"$RUN"
            runs+="$(printf '  %s %9s IOPS  target %3s%% of core 0, perf %3s%% of core 1' "$side" "$iops" "$tgt_cpu" "$perf_cpu")"$'\n'
        done
    done
    printf '%-20s %s\n' "$name" "$(summary "$old_iops" "$new_iops")"
    printf '%s' "$runs"
done <<'MATRIX'
4K_randread_QD128 128 4096 randread
4K_randwrite_QD128 128 4096 randwrite
MATRIX
