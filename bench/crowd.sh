#!/usr/bin/env bash
# The crowd benchmark: a busy host (peerless-perf, 4 KiB randread at QD32 for IOPS and
# QD1 for latency) with and without N idle connected hosts beside it, on one poll-mode
# reactor (core 0) serving a null bdev; perf on core 1. Runs alternate A B B A per
# round (uncrowded, crowded, crowded, uncrowded); figures are medians, ratios crowded
# over uncrowded. Also prints the crowd's setup rate and the target's RSS per idle
# connection. The idle hosts come from bench/src/bin/crowd.rs.
# Usage: bench/crowd.sh [hosts list (500,5000)] [seconds per run (2)] [rounds (2)] [mode (poll)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
HOSTS=${1:-500,5000}
SECONDS_PER_RUN=${2:-2}
ROUNDS=${3:-2}
MODE=${4:-poll}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools -p peerless-bench
BIN=$BUILD/release
WORK=$(mktemp -d)
PORT=4433
NQN=nqn.2016-06.io.peerless:crowd
# Room for 10,000 hosts; the acceptor runs every millisecond so the crowd connects at the
# target's pace, not the accept poller's.
cat > "$WORK/config.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP","max_connections_per_listener":20000,"acceptor_poll_rate":1000}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"max_cntlid":65519}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Null0"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"tcp","traddr":"127.0.0.1","trsvcid":"$PORT"}}}]}]}
JSON
bench_start_target "$BIN" "$WORK" "$WORK/config.json" "$MODE"
echo "crowd benchmark: target in $MODE mode on core 0, perf on core 1"
"$BIN/crowd" "127.0.0.1:$PORT" "$NQN" "$BIN/peerless-perf" "$TGT" "$WORK/rpc.sock" "$HOSTS" "$SECONDS_PER_RUN" "$ROUNDS"
grep -c "WARNING\|ERROR" "$WORK/tgt.log" | sed 's/^/target log warnings and errors: /'
