#!/usr/bin/env bash
# The secure channel's cost: the same target serving one subsystem over plain TCP and
# one over TLS 1.3 (PSK, TLS_AES_128_GCM_SHA256, record layer in OpenSSL in user space on
# both ends), each on a null bdev: 4 KiB randread QD1 latency and QD32 IOPS, one
# poll-mode reactor on core 0, peerless-perf on core 1, runs A B B A per round (A: plain
# TCP, B: TLS), medians and ratios B / A.
# Usage: bench/tls.sh [seconds per run (2)] [rounds (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${1:-2}
ROUNDS=${2:-3}
BUILD=${CARGO_TARGET_DIR:-build}
cargo build --release -q -p peerless-target -p peerless-tools
BIN=$BUILD/release
WORK=$(mktemp -d)
PLAIN_PORT=4436
TLS_PORT=4437
PLAIN_NQN=nqn.2016-06.io.peerless:plain
TLS_NQN=nqn.2016-06.io.peerless:tls
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:b0b0b0b0-0000-4000-8000-000000000001
# A fresh key each run; the file is private, as the keyring requires.
python3 -c "import base64,os,struct,zlib; k=os.urandom(32); print('NVMeTLSkey-1:01:%s:' % base64.b64encode(k+struct.pack('<I',zlib.crc32(k))).decode())" > "$WORK/psk"
chmod 600 "$WORK/psk"
listener() { echo "{\"method\":\"nvmf_subsystem_add_listener\",\"params\":{\"nqn\":\"$1\",\"listen_address\":{\"trtype\":\"tcp\",\"traddr\":\"127.0.0.1\",\"trsvcid\":\"$2\"}$3}}"; }
cat > "$WORK/config.json" <<JSON
{"subsystems":[{"subsystem":"keyring","config":[{"method":"keyring_file_add_key","params":{"name":"psk0","path":"$WORK/psk"}}]},
{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}},
{"method":"bdev_null_create","params":{"name":"Null1","num_blocks":2097152,"block_size":512}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$PLAIN_NQN","allow_any_host":true}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$PLAIN_NQN","namespace":{"bdev_name":"Null0"}}},
$(listener "$PLAIN_NQN" "$PLAIN_PORT" ""),
{"method":"nvmf_create_subsystem","params":{"nqn":"$TLS_NQN","allow_any_host":false}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$TLS_NQN","namespace":{"bdev_name":"Null1"}}},
{"method":"nvmf_subsystem_add_host","params":{"nqn":"$TLS_NQN","host":"$HOSTNQN","psk":"psk0"}},
$(listener "$TLS_NQN" "$TLS_PORT" ',"secure_channel":true')]}]}
JSON
perf() {
    local trid="trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$1 subnqn:$2"
    shift 2
    "$BIN/peerless-perf" -r "$trid" --hostnqn "$HOSTNQN" -q "$QD" -o 4096 -w randread -t "$SECONDS_PER_RUN" -c 0x2 \
        --json "$@" 2>/dev/null
}
run() {
    case $1 in
        A) perf "$PLAIN_PORT" "$PLAIN_NQN" ;;
        B) perf "$TLS_PORT" "$TLS_NQN" --psk "$WORK/psk" ;;
    esac
}
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d$2)" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
bench_start_target "$BIN" "$WORK/tgt" "$WORK/config.json" poll
a_lat=(); b_lat=(); a_iops=(); b_iops=()
for _ in $(seq "$ROUNDS"); do
    for side in A B B A; do
        QD=1; lat=$(field "$(run "$side")" "['latency_us']['avg']")
        QD=32; iops=$(field "$(run "$side")" "['iops']")
        if [ "$side" = A ]; then a_lat+=("$lat"); a_iops+=("$iops"); else b_lat+=("$lat"); b_iops+=("$iops"); fi
    done
done
bench_stop_target "$TGT"
al=$(median "${a_lat[@]}"); bl=$(median "${b_lat[@]}"); ai=$(median "${a_iops[@]}"); bi=$(median "${b_iops[@]}")
echo "4 KiB randread, poll mode, $ROUNDS rounds A B B A of $SECONDS_PER_RUN s (A: plain TCP, B: TLS 1.3 PSK)"
printf '%-24s %12s %12s %8s\n' "" A B "B/A"
printf '%-24s %12.2f %12.2f %8.3f\n' "QD1 latency avg (us)" "$al" "$bl" "$(python3 -c "print($bl/$al)")"
printf '%-24s %12.0f %12.0f %8.3f\n' "QD32 randread IOPS" "$ai" "$bi" "$(python3 -c "print($bi/$ai)")"
