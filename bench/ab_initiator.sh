#!/usr/bin/env bash
# A/B of two peerless-perf binaries (the initiator) over NVMe/TCP against one target:
# NEW_DIR's peerless-tgt serves a null bdev from one poll-mode reactor on core 0, and the
# two peerless-perf alternate on core 1, A B B A per round (A = OLD, B = NEW), so only
# the initiator differs. For a change to the initiator's queue code (ab.sh is the same
# for the target).
#
# Prints per workload the median IOPS of each side, the ratio new/old of the medians,
# each side's spread ((max - min) / median over its runs), and the median of per-round
# ratios (each round's B pair over its A pair); then every run in order with the share
# of core 1 peerless-perf got (well under 100 % means something else ran there).
#
# Usage: bench/ab_initiator.sh OLD_DIR NEW_DIR [seconds per run (5)] [rounds (3)]
set -euo pipefail
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
NQN=nqn.2016-06.io.peerless:ab-initiator
PORT=4436

bench_null_config "$WORK/tgt.json" "$NQN" "$PORT"
bench_start_target "$NEW_DIR" "$WORK/tgt" "$WORK/tgt.json"

# Runs one workload with DIR's peerless-perf; sets RUN to "iops perf_cpu_%".
# Usage: perf_run DIR DEPTH IO_BYTES PATTERN
perf_run() {
    local status=0
    { time "$1/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN" \
        -q "$2" -o "$3" -w "$4" -t "$SECONDS_PER_RUN" -c 0x2 --json >"$WORK/perf.json" 2>"$WORK/perf.log"; } \
        2>"$WORK/perf.time" || status=$?
    if [ "$status" != 0 ]; then
        echo "peerless-perf from $1, $4, failed:" >&2
        cat "$WORK/perf.log" >&2
        exit 1
    fi
    RUN=$(python3 -c 'import json,sys
iops = json.load(open(sys.argv[1]))["iops"]
real, user, system = (float(x) for x in open(sys.argv[2]).read().split())
print(f"{iops:.0f} {100 * (user + system) / real:.0f}")' "$WORK/perf.json" "$WORK/perf.time")
}

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

echo "old: $OLD_DIR/peerless-perf"
echo "new: $NEW_DIR/peerless-perf"
echo "target: $NEW_DIR/peerless-tgt on core 0 (poll mode), perf -c 0x2, $SECONDS_PER_RUN s per run, $ROUNDS rounds of A B B A"
printf '%-20s %12s %12s %9s %11s %11s   %s\n' workload old_iops new_iops new/old old_spread new_spread \
    'paired new/old (per round)'
while read -r name depth size pattern; do
    old_iops=""; new_iops=""; runs=""
    for _ in $(seq "$ROUNDS"); do
        for side in A B B A; do
            if [ "$side" = A ]; then
                perf_run "$OLD_DIR" "$depth" "$size" "$pattern"
                old_iops+=" ${RUN%% *}"
            else
                perf_run "$NEW_DIR" "$depth" "$size" "$pattern"
                new_iops+=" ${RUN%% *}"
            fi
            read -r iops perf_cpu <<<"$RUN"
            runs+="$(printf '  %s %9s IOPS  perf %3s%% of core 1' "$side" "$iops" "$perf_cpu")"$'\n'
        done
    done
    printf '%-20s %s\n' "$name" "$(summary "$old_iops" "$new_iops")"
    printf '%s' "$runs"
done <<'MATRIX'
4K_randread_QD128 128 4096 randread
4K_randwrite_QD128 128 4096 randwrite
128K_randread_QD32 32 131072 randread
MATRIX
