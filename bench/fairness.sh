#!/usr/bin/env bash
# The fairness benchmark: one host at QD128 and eight at QD32 against one poll-mode
# reactor (core 0) serving a null bdev; the hosts (bench/src/bin/fairness.rs) run in one
# thread on core 1. Prints each host's IOPS, share against an even share, and p99.
# Usage: bench/fairness.sh [seconds (5)] [aggressive QD (128)] [moderate hosts (8)] [moderate QD (32)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-bench
BIN=$BUILD/release
WORK=$(mktemp -d)
PORT=4435
NQN=nqn.2016-06.io.peerless:fairness
# Queues of 129 entries hold 128 commands (NVMe Base 2.0, 4.1.3: a full queue keeps
# one entry empty), so max_queue_depth is raised past SPDK's 128 for the QD128 host.
cat > "$WORK/config.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP","max_queue_depth":256}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Null0"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"tcp","traddr":"127.0.0.1","trsvcid":"$PORT"}}}]}]}
JSON
bench_start_target "$BIN" "$WORK" "$WORK/config.json" poll
taskset -c 1 "$BIN/fairness" "127.0.0.1:$PORT" "$NQN" "${1:-5}" "${2:-128}" "${3:-8}" "${4:-32}"
