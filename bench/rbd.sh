#!/usr/bin/env bash
# Peerless NVMe/TCP -> RBD against fio's own `rbd` ioengine, on the same image of a
# one-node Ceph cluster (ci/ceph.sh: one monitor, one OSD on memstore, loopback).
#   A: fio + the peerless_nvmf engine -> peerless-tgt (one reactor) -> librbd
#   B: fio's rbd engine -> librbd, in fio's process
# Both through librbd to the same OSD, so the ratio A/B is what the NVMe/TCP hop and the
# target cost. Runs alternate A B B A per workload (ROUNDS times), ratio of medians.
# fio is pinned to core 1, the target's reactor to core 0; the Ceph daemons and librbd's
# threads float. The target's reactor sleeps when it has nothing to do (interrupt mode, by
# default): on two cores a busy-polling reactor would take a whole core from the OSD and
# librbd, which side B has to itself.
# The peerless_nvmf engine busy-polls for completions, as SPDK's fio plugin does, so it
# holds core 1; fio's rbd engine sleeps between completions unless RBD_BUSY_POLL=1 makes
# it spin too (its busy_poll option). Both ways are worth seeing: on two cores the OSD
# needs the CPU an initiator leaves it.
# Usage: bench/rbd.sh [seconds per run (5)] [rounds (2)] [target mode: interrupt|adaptive|poll]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_PER_RUN=${1:-5}
ROUNDS=${2:-2}
MODE=${3:-interrupt}
BUILD=${CARGO_TARGET_DIR:-build}
bash tools/fio/build.sh >/dev/null
cargo build --release -q -p peerless-target --features rbd
BIN=$BUILD/release
SO=$BIN/libpeerless_fio.so
fio --enghelp 2>/dev/null | grep -qx '[[:space:]]*rbd' || { echo "this fio has no rbd engine" >&2; exit 1; }

WORK=$(mktemp -d)
BENCH_DIRS+=("$WORK")
CEPH="$WORK/ceph"
# The OSD keeps objects in RAM (memstore): room for the image twice over, since a full OSD
# (the "full" flag at 95 %) holds every write until space frees, which looks like a hang.
IMAGE_MIB=512
CEPH_MEMSTORE_MB=$((IMAGE_MIB * 2 + 512)) CEPH_PORT=${CEPH_PORT:-16789} bash ci/ceph.sh start "$CEPH" >/dev/null
trap 'bash ci/ceph.sh stop "$CEPH"; bench_cleanup' EXIT
# fio's rbd engine reads the cluster from CEPH_CONF; the target from its config.
export CEPH_CONF="$CEPH/ceph.conf"
# Layering only, no exclusive-lock: the two sides take turns on the image, and a target
# stopped with SIGTERM exits before its image's close (on a thread of its own) has released
# the lock, which would leave fio's librbd waiting for the dead owner's watch to expire.
rbd -c "$CEPH/ceph.conf" create --size "${IMAGE_MIB}M" --image-feature layering rbd/bench
# Fill the image once so neither side reads unallocated objects.
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench --rw=write --bs=1m \
    --iodepth=16 --size="${IMAGE_MIB}m" --output-format=terse >/dev/null 2>&1 </dev/null \
    || { echo "fio's rbd engine could not write the image" >&2; exit 1; }

PORT=4434
NQN=nqn.2016-06.io.peerless:rbd-bench
cat > "$WORK/config.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
{"method":"bdev_rbd_register_cluster","params":{"name":"ceph","config_file":"$CEPH/ceph.conf"}},
{"method":"bdev_rbd_create","params":{"name":"Rbd0","pool_name":"rbd","rbd_name":"bench","block_size":4096,"cluster_name":"ceph"}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Rbd0"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"tcp","traddr":"127.0.0.1","trsvcid":"$PORT"}}}]}]}
JSON

# Prints the IOPS of one fio run of SIDE (A or B) for RW BS DEPTH.
run_one() {
    local side=$1 rw=$2 bs=$3 depth=$4 out
    local common=(--name=job --rw="$rw" --bs="$bs" --iodepth="$depth" --time_based=1
        --runtime="$SECONDS_PER_RUN" --norandommap=1 --size="${IMAGE_MIB}m" --output-format=json)
    if [ "$side" = A ]; then
        out=$(taskset -c 1 env LD_PRELOAD="$SO" fio --ioengine=peerless_nvmf --thread=1 \
            --filename="trtype=tcp adrfam=IPv4 traddr=127.0.0.1 trsvcid=$PORT ns=1" "${common[@]}" 2>/dev/null)
    else
        out=$(taskset -c 1 fio --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench \
            --busy_poll="${RBD_BUSY_POLL:-0}" "${common[@]}" 2>/dev/null)
    fi
    python3 -c '
import json, sys
text = sys.stdin.read()
job = json.loads(text[text.index("{"):])["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] else job["write"]
print("%.0f" % side["iops"])' <<<"$out"
}

median() { python3 -c 'import statistics, sys; print("%.0f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }

# The target runs only while A runs, so the two never share the image at once.
printf '%-20s %12s %12s %8s   %s\n' workload peerless_iops fio_rbd_iops ratio "runs (A B B A ...)"
while read -r name rw bs depth; do
    a=() b=() order=""
    for ((round = 0; round < ROUNDS; round++)); do
        for side in A B B A; do
            if [ "$side" = A ]; then
                bench_start_target "$BIN" "$WORK/tgt" "$WORK/config.json" "$MODE"
                # Connecting to the cluster and opening the image come before the listener.
                for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
                a+=("$(run_one A "$rw" "$bs" "$depth")")
                bench_stop_target "$TGT"
                order+="A=${a[-1]} "
            else
                b+=("$(run_one B "$rw" "$bs" "$depth")")
                order+="B=${b[-1]} "
            fi
        done
    done
    ma=$(median "${a[@]}")
    mb=$(median "${b[@]}")
    ratio=$(python3 -c "print('%.2f' % ($ma / $mb))")
    printf '%-20s %12s %12s %8s   %s\n' "$name" "$ma" "$mb" "$ratio" "$order"
done <<'MATRIX'
4K_randwrite_QD16 randwrite 4k 16
4K_randread_QD16 randread 4k 16
128K_write_QD8 write 128k 8
MATRIX
