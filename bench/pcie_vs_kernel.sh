#!/usr/bin/env bash
# peerless-perf driving an NVMe SSD with the bdev layer's user-space driver (trtype PCIe,
# uio_pci_generic) against Linux's nvme driver with fio's io_uring engine (completions by
# interrupt, and polled with --hipri), side by side: this host has no NVMe device, so all
# run inside the QEMU guest (ci/guest) on two identical emulated SSDs, the release
# binaries shared in. bench/guest/pcie-vs-kernel.sh alternates them A B C C B A at 4 KiB
# random reads QD32, 4 KiB random writes QD32 and 128 KiB reads QD8, and prints medians
# and the ratios.
# Under TCG the absolute figures mean little: read the ratios.
# Usage: bench/pcie_vs_kernel.sh [rounds (2)] [seconds per run (5)]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
RUNTIME=${2:-5}
cargo build --release -q -p peerless-target -p peerless-tools \
    --bin peerless-tgt --bin peerless-perf --bin peerless-rpc
bash ci/guest/build.sh >/dev/null
# The job reads its settings from /job/env, which run.sh writes; the knobs ride in a copy.
job=$(mktemp --suffix=.sh)
trap 'rm -f "$job"' EXIT
{ head -1 bench/guest/pcie-vs-kernel.sh; echo "BENCH_ROUNDS=$ROUNDS BENCH_RUNTIME=$RUNTIME"; tail -n +2 bench/guest/pcie-vs-kernel.sh; } >"$job"
log=$(mktemp)
PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="ssd0 ssd1" bash ci/guest/run.sh "$job" | tee "$log"
run=$(grep -o 'PASSED: .*' "$log" | cut -d' ' -f2)
rm -f "$log"
cat "$run/out/figures.txt"
