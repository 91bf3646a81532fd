#!/usr/bin/env bash
# Peerless's NVMe/RDMA target against the kernel's nvmet-rdma, side by side: this host has
# no RDMA device, so both run inside the QEMU guest (ci/guest, the release binaries shared
# in) over soft-RoCE, served to one initiator (Linux's nvme-rdma + fio).
# bench/guest/rdma-vs-nvmet.sh alternates the two A B B A at 4 KiB QD16 and 128 KiB QD8,
# random reads and writes, and prints medians and their ratio. Under TCG the absolute
# figures mean little: read the ratios.
# Usage: bench/rdma_vs_nvmet.sh [rounds (2)] [seconds per run (5)]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
RUNTIME=${2:-5}
cargo build --release -q -p peerless-target -p peerless-tools --features peerless-tools/rdma \
    --bin peerless-tgt --bin peerless-perf --bin peerless-rpc
bash ci/guest/build.sh >/dev/null
# The job reads its settings from /job/env, which run.sh writes; the knobs ride in a copy.
job=$(mktemp --suffix=.sh)
trap 'rm -f "$job"' EXIT
{ head -1 bench/guest/rdma-vs-nvmet.sh; echo "BENCH_ROUNDS=$ROUNDS BENCH_RUNTIME=$RUNTIME"; tail -n +2 bench/guest/rdma-vs-nvmet.sh; } >"$job"
log=$(mktemp)
PEERLESS_GUEST_TARGET=guest bash ci/guest/run.sh "$job" | tee "$log"
run=$(grep -o 'PASSED: .*' "$log" | cut -d' ' -f2)
rm -f "$log"
cat "$run/out/figures.txt"
