#!/usr/bin/env bash
# kTLS against OpenSSL's record layer and plain TCP, side by side in one target: the
# kernel here has no tls module, so the target runs inside the QEMU guest (ci/guest, the
# release binaries shared in), where bench/guest/ktls-figures.sh alternates the three
# modes A B C C B A at 4 KiB randread QD16 and 128 KiB randread QD4 and prints medians
# and ratios. Under TCG the absolute figures mean little; the ratios compare the record
# layers on one emulated CPU.
# Usage: bench/ktls.sh [rounds (2)]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
cargo build --release -q -p peerless-target -p peerless-tools --bin peerless-tgt --bin peerless-perf --bin peerless-rpc
bash ci/guest/build.sh >/dev/null
# The job reads its settings from /job/env, which run.sh writes; the round count rides
# in a copy of the job.
job=$(mktemp --suffix=.sh)
trap 'rm -f "$job"' EXIT
{ head -1 bench/guest/ktls-figures.sh; echo "KTLS_ROUNDS=$ROUNDS"; tail -n +2 bench/guest/ktls-figures.sh; } >"$job"
log=$(mktemp)
PEERLESS_GUEST_TARGET=guest bash ci/guest/run.sh "$job" | tee "$log"
run=$(grep -o 'PASSED: .*' "$log" | cut -d' ' -f2)
rm -f "$log"
cat "$run/out/figures.txt"
