#!/usr/bin/env bash
# P2P path benchmark: the same emulated SSD exported twice, once with command
# data in host memory (p2pmem off) and once in its CMB (p2pmem auto). 128 KiB at QD32,
# writes and reads, digests off and on, runs interleaved A B B A. Reports MiB/s, target
# CPU per I/O (from /proc), and what the counters say about each payload byte: bytes
# placed in host buffers and bytes the CPU moved through host memory or I/O accessors.
# Usage: bench/p2p.sh [seconds per run (3)] [rounds (1)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${1:-3}
ROUNDS=${2:-1}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools
BIN=$BUILD/release
WORK=$(mktemp -d)
PORT=4432
cat > "$WORK/config.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvmesim_create","params":{"name":"HostPath","num_blocks":1048576,"block_size":512,"cmb_size_mb":64}},
 {"method":"bdev_nvmesim_create","params":{"name":"P2pPath","num_blocks":1048576,"block_size":512,"cmb_size_mb":64}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
 {"method":"nvmf_create_subsystem","params":{"nqn":"nqn.2016-06.io.peerless:host","allow_any_host":true}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"nqn.2016-06.io.peerless:host","namespace":{"bdev_name":"HostPath","p2pmem":"off"}}},
 {"method":"nvmf_subsystem_add_listener","params":{"nqn":"nqn.2016-06.io.peerless:host","listen_address":{"trtype":"tcp","traddr":"127.0.0.1","trsvcid":"$PORT"}}},
 {"method":"nvmf_create_subsystem","params":{"nqn":"nqn.2016-06.io.peerless:p2p","allow_any_host":true}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"nqn.2016-06.io.peerless:p2p","namespace":{"bdev_name":"P2pPath","p2pmem":"auto"}}},
 {"method":"nvmf_subsystem_add_listener","params":{"nqn":"nqn.2016-06.io.peerless:p2p","listen_address":{"trtype":"tcp","traddr":"127.0.0.1","trsvcid":"$PORT"}}}]}]}
JSON
bench_start_target "$BIN" "$WORK" "$WORK/config.json"
cpu_ticks() { awk '{print $14+$15}' "/proc/$TGT/stat"; }
stats() { "$BIN/peerless-rpc" -s "$WORK/rpc.sock" mem_get_stats; }

run() { # $1 nqn, $2 workload, $3 digest flags
    local before_cpu before_mem out after_cpu after_mem
    before_cpu=$(cpu_ticks); before_mem=$(stats)
    # shellcheck disable=SC2086
    out=$("$BIN/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$1" -q 32 -o 131072 -w "$2" -t "$SECONDS_PER_RUN" -c 0x2 $3 --json 2>/dev/null)
    after_cpu=$(cpu_ticks); after_mem=$(stats)
    python3 - "$out" "$before_mem" "$after_mem" "$before_cpu" "$after_cpu" <<'PY'
import json, sys
perf, m0, m1 = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
cpu_us = (int(sys.argv[5]) - int(sys.argv[4])) * 10_000  # USER_HZ 100
payload = sum(m1["payload_bytes"][k] - m0["payload_bytes"][k] for k in ("host", "iomem", "device")) or 1
host = m1["payload_bytes"]["host"] - m0["payload_bytes"]["host"]
direct = m1["cpu_bytes"]["direct"] - m0["cpu_bytes"]["direct"]
accessor = m1["cpu_bytes"]["io_accessor"] - m0["cpu_bytes"]["io_accessor"]
print(f'{perf["mibps"]:.1f} {cpu_us / max(perf["ios"], 1):.2f} {host / payload:.2f} {direct / payload:.2f} {accessor / payload:.2f}')
PY
}
printf '%-8s %-6s %-8s %10s %12s %14s %14s %16s\n' path io digest MiB/s cpu_us/io host_buf/byte cpu_direct/byte io_accessor/byte
for digest in "" "-H -I"; do
    for workload in write read; do
        for path in host p2p; do
            rows=()
            for _ in $(seq "$ROUNDS"); do rows+=("$(run "nqn.2016-06.io.peerless:$path" "$workload" "$digest")"); done
            read -r mibps cpu host direct accessor <<<"${rows[0]}"
            printf '%-8s %-6s %-8s %10s %12s %14s %14s %16s\n' "$path" "$workload" "${digest:-off}" "$mibps" "$cpu" "$host" "$direct" "$accessor"
        done
    done
done
