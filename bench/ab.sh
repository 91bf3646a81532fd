#!/usr/bin/env bash
# A/B of two peerless-tgt binaries over NVMe/TCP: each serves a null bdev from one
# poll-mode reactor on core 0, and NEW_DIR's peerless-perf on core 1 drives both, so the
# initiator is the same. Both targets start once on their own ports; the one not being
# measured is paused with SIGSTOP, because a poll-mode reactor spins and would take core
# 0 from the other. Per workload and round the runs go A B B A (A = OLD, B = NEW).
#
# Prints per workload the median IOPS of each side, the ratio new/old of the medians,
# and each side's spread ((max - min) / median over its runs) to judge noise by.
#
# Usage: bench/ab.sh OLD_DIR NEW_DIR [seconds per run (5)] [rounds (3)]
set -euo pipefail
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

# Runs one workload against one side; prints its JSON summary.
# Usage: perf_run PID PORT DEPTH IO_BYTES PATTERN
perf_run() {
    local out status=0
    kill -CONT "$1"
    out=$("$NEW_DIR/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$2 subnqn:$NQN" \
        -q "$3" -o "$4" -w "$5" -t "$SECONDS_PER_RUN" -c 0x2 --json 2>"$WORK/perf.log") || status=$?
    kill -STOP "$1"
    if [ "$status" != 0 ]; then
        echo "peerless-perf $5 against port $2 failed:" >&2
        cat "$WORK/perf.log" >&2
        exit 1
    fi
    echo "$out"
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])$2)" "$1"; }
# Median, spread and the new/old ratio of two space-separated lists of IOPS.
summary() {
    python3 -c 'import statistics,sys
old=[float(x) for x in sys.argv[1].split()]; new=[float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(old), statistics.median(new)
spread = lambda v, m: 100 * (max(v) - min(v)) / m
print(f"{mo:12.0f} {mn:12.0f} {mn / mo:9.3f} {spread(old, mo):10.1f}% {spread(new, mn):10.1f}%")' "$1" "$2"
}

echo "old: $OLD_DIR/peerless-tgt"
echo "new: $NEW_DIR/peerless-tgt"
echo "peerless-perf from $NEW_DIR, -c 0x2, $SECONDS_PER_RUN s per run, $ROUNDS rounds of A B B A"
printf '%-20s %12s %12s %9s %11s %11s\n' workload old_iops new_iops new/old old_spread new_spread
while read -r name depth size pattern; do
    old_iops=""; new_iops=""
    for _ in $(seq "$ROUNDS"); do
        for side in A B B A; do
            if [ "$side" = A ]; then
                old_iops+=" $(field "$(perf_run "$OLD_TGT" "$OLD_PORT" "$depth" "$size" "$pattern")" "['iops']")"
            else
                new_iops+=" $(field "$(perf_run "$NEW_TGT" "$NEW_PORT" "$depth" "$size" "$pattern")" "['iops']")"
            fi
        done
    done
    printf '%-20s %s\n' "$name" "$(summary "$old_iops" "$new_iops")"
    echo "  old runs:$old_iops" | sed 's/\.[0-9]*//g'
    echo "  new runs:$new_iops" | sed 's/\.[0-9]*//g'
done <<'MATRIX'
4K_randread_QD128 128 4096 randread
4K_randwrite_QD128 128 4096 randwrite
MATRIX
