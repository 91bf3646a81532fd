#!/usr/bin/env bash
# The NVMe/TCP matrix run with fio and the peerless_nvmf engine instead
# of peerless-perf, against the same target set-up as bench/nvmf.sh: one poll-mode reactor
# on core 0 serving a null bdev, fio pinned to core 1. Prints a table and writes JSON to
# bench/results/. Usage: bench/fio.sh [seconds per run (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${1:-3}
BUILD=${CARGO_TARGET_DIR:-build}
bash tools/fio/build.sh >/dev/null
cargo build --release -q -p peerless-target
BIN=$BUILD/release
SO=$BIN/libpeerless_fio.so
WORK=$(mktemp -d)
PORT=4433
NQN=nqn.2016-06.io.peerless:fio
bench_null_config "$WORK/config.json" "$NQN" "$PORT"
bench_start_target "$BIN" "$WORK" "$WORK/config.json"
mkdir -p bench/results
RESULTS="bench/results/fio-$(date -u +%Y%m%dT%H%M%SZ).json"
echo "[" > "$RESULTS"
printf '%-22s %12s %12s %12s\n' workload IOPS MiB/s lat_us_avg
first=1
while read -r name depth bs rw; do
    out=$(taskset -c 1 env LD_PRELOAD="$SO" fio --name=job --ioengine=peerless_nvmf --thread=1 \
        --filename="trtype=tcp adrfam=IPv4 traddr=127.0.0.1 trsvcid=$PORT ns=1" \
        --rw="$rw" --bs="$bs" --iodepth="$depth" --time_based=1 --runtime="$SECONDS_PER_RUN" \
        --norandommap=1 --size=512m --output-format=json 2>/dev/null)
    read -r iops mibps lat < <(python3 -c '
import json, sys
job = json.loads(sys.stdin.read())["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] else job["write"]
print("%.0f %.1f %.2f" % (side["iops"], side["bw_bytes"] / 1048576, side["lat_ns"]["mean"] / 1000))' <<<"$out")
    printf '%-22s %12s %12s %12s\n' "$name" "$iops" "$mibps" "$lat"
    [ $first = 1 ] || echo "," >> "$RESULTS"
    first=0
    printf '{"workload":"%s","queue_depth":%s,"block_size":"%s","iops":%s,"mibps":%s,"latency_us":%s}\n' "$name" "$depth" "$bs" "$iops" "$mibps" "$lat" >> "$RESULTS"
done <<'MATRIX'
4K_randread_QD128 128 4k randread
4K_randwrite_QD128 128 4k randwrite
128K_read_QD32 32 128k read
4K_read_QD1 1 4k read
MATRIX
echo "]" >> "$RESULTS"
echo "written to $RESULTS"
