#!/usr/bin/env bash
# This build's target against another build's (e.g. the commit before readiness-driven
# poll groups) with one busy host and nobody else: 4 KiB randread QD1 latency and QD32
# IOPS, one poll-mode reactor on core 0, peerless-perf on core 1, runs A B B A per
# round (A: the other build, B: this one), medians and ratios B / A.
# Usage: bench/readiness.sh OTHER_BUILD_DIR [seconds per run (2)] [rounds (3)] [mode (poll)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
OTHER=${1:?usage: bench/readiness.sh OTHER_BUILD_DIR [seconds] [rounds] [mode]}
SECONDS_PER_RUN=${2:-2}
ROUNDS=${3:-3}
MODE=${4:-poll}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools
BIN=$BUILD/release
WORK=$(mktemp -d)
PORT=4434
NQN=nqn.2016-06.io.peerless:readiness
bench_null_config "$WORK/config.json" "$NQN" "$PORT"
TRID="trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"
perf() { "$BIN/peerless-perf" -r "$TRID" -q "$1" -o 4096 -w randread -t "$SECONDS_PER_RUN" -c 0x2 --json 2>/dev/null; }
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d$2)" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
a_lat=(); b_lat=(); a_iops=(); b_iops=()
for _ in $(seq "$ROUNDS"); do
    for side in A B B A; do
        dir=$BIN; [ "$side" = A ] && dir=$OTHER
        bench_start_target "$dir" "$WORK" "$WORK/config.json" "$MODE"
        lat=$(field "$(perf 1)" "['latency_us']['avg']")
        iops=$(field "$(perf 32)" "['iops']")
        bench_stop_target "$WORK"
        if [ "$side" = A ]; then a_lat+=("$lat"); a_iops+=("$iops"); else b_lat+=("$lat"); b_iops+=("$iops"); fi
    done
done
al=$(median "${a_lat[@]}"); bl=$(median "${b_lat[@]}"); ai=$(median "${a_iops[@]}"); bi=$(median "${b_iops[@]}")
echo "one busy host, $MODE mode, $ROUNDS rounds A B B A of $SECONDS_PER_RUN s (A: $OTHER, B: $BIN)"
printf '%-24s %12s %12s %8s\n' "" A B "B/A"
printf '%-24s %12.2f %12.2f %8.3f\n' "QD1 latency avg (us)" "$al" "$bl" "$(python3 -c "print($bl/$al)")"
printf '%-24s %12.0f %12.0f %8.3f\n' "QD32 randread IOPS" "$ai" "$bi" "$(python3 -c "print($bi/$ai)")"
