#!/usr/bin/env bash
# Reactor benchmarks: message cost, poll loop cost, idle CPU, interrupt-mode cost.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p peerless-target -p peerless-bench
exec build/release/reactor_bench "$@"
