#!/usr/bin/env bash
# Host side of jobs/multipath.sh (ci/guest/run.sh runs it with PEERLESS_GUEST_HOST): a
# one-node Ceph cluster (ci/ceph.sh) with one RBD image, and two peerless-tgt processes,
# A and B, each exporting that image as namespace 1 of the same subsystem (same NQN,
# serial, model, namespace UUID and NGUID, disjoint controller ID ranges), so Linux's
# native NVMe multipath sees one subsystem with two paths. A's listener is ANA optimized,
# B's non-optimized. The guest reaches A at 10.0.2.100:4420 and B at :4421.
#
# Then it serves the job's requests: the job writes /job/out/ctl/N.cmd (N = 1, 2, ...)
# holding one of
#   kill NAME            SIGKILL target NAME (a or b)
#   start NAME           start target NAME again from its configuration
#   ana NAME STATE       nvmf_subsystem_listener_set_ana_state on NAME's listener
#   writes NAME          print the namespace bdev's num_write_ops on NAME
#   resize NAME MIB      bdev_rbd_resize on NAME: the image grows to MIB MiB
#   blocks NAME          print the namespace bdev's num_blocks on NAME
# and this script answers with ctl/N.out and then ctl/N.rc (the exit status).
#
# Usage: multipath.host.sh RUN_DIR.  Env: PEERLESS_TGT (a binary built with --features
# rbd; default ${CARGO_TARGET_DIR:-build}/debug/peerless-tgt).
set -euo pipefail
run=$(realpath "$1")
cd "$(dirname "$0")/../../.."
repo=$(pwd)
tgt=${PEERLESS_TGT:-${CARGO_TARGET_DIR:-$repo/build}/debug/peerless-tgt}
[ -x "$tgt" ] || { echo "no target binary $tgt (cargo build -p peerless-target --features rbd)" >&2; exit 2; }
log() { printf '[host %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

nqn=nqn.2016-06.io.peerless:multipath
serial=PEERLESS-MP-0001
model="Peerless multipath"
uuid=6d756c74-6970-4174-8800-000000000001
image_mib=256
# Ceph's sockets live under the cluster's folder, whose path must stay short.
ceph_dir=$(mktemp -d /tmp/peerless-mp-ceph.XXXXXX)
rmdir "$ceph_dir"
declare -A pid port
port[a]=$(free_port)
port[b]=$(free_port)
# ANA states the listeners start in: A is where hosts should send I/O.
declare -A initial=([a]=optimized [b]=non_optimized)
# Linux refuses two controllers of one subsystem with one controller ID: disjoint ranges.
declare -A cntlids=([a]="1 99" [b]="101 199")

stop_all() {
    local name
    for name in a b; do
        if [ -n "${pid[$name]:-}" ] && kill -0 "${pid[$name]}" 2>/dev/null; then
            kill -TERM "${pid[$name]}" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "${pid[$name]}" 2>/dev/null || true
        fi
    done
    CEPH_PORT=${ceph_port:-0} bash ci/ceph.sh stop "$ceph_dir" >/dev/null 2>&1 || true
}
trap stop_all EXIT
trap 'exit 0' TERM

ceph_port=$(free_port)
log "ceph: one monitor on $ceph_port and one OSD in $ceph_dir"
conf=$(CEPH_PORT=$ceph_port CEPH_MEMSTORE_MB=768 bash ci/ceph.sh start "$ceph_dir")
# A target that dies keeps its image's exclusive lock until the OSD drops its watch; the
# survivor may break the lock only then. Ceph's default is 30 s, as long as Linux's
# I/O timeout; 10 s keeps the failover inside it (clients ping their watches every 5 s).
ceph -c "$conf" config set osd osd_client_watch_timeout 10
rbd -c "$conf" create --size "${image_mib}M" rbd/mp0
log "image rbd/mp0 (${image_mib} MiB, features: $(rbd -c "$conf" info rbd/mp0 | sed -n 's/.*features: //p'))"

write_config() {
    local name=$1 min max
    read -r min max <<<"${cntlids[$name]}"
    python3 - "$run/target-$name.json" <<EOF
import json, sys
listen = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "${port[$name]}"}
config = {"subsystems": [
  {"subsystem": "bdev", "config": [
    {"method": "bdev_rbd_register_cluster", "params": {"name": "ceph", "config_file": "$conf"}},
    {"method": "bdev_rbd_create", "params": {"name": "Rbd0", "pool_name": "rbd", "rbd_name": "mp0",
      "block_size": 4096, "cluster_name": "ceph", "uuid": "$uuid"}}]},
  {"subsystem": "nvmf", "config": [
    {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
    {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn", "allow_any_host": True,
      "serial_number": "$serial", "model_number": "$model", "ana_reporting": True,
      "min_cntlid": $min, "max_cntlid": $max}},
    {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"nsid": 1,
      "bdev_name": "Rbd0", "uuid": "$uuid"}}},
    {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$nqn", "listen_address": listen,
      "ana_state": "${initial[$name]}"}}]}]}
json.dump(config, open(sys.argv[1], "w"), indent=2)
EOF
}

start_target() {
    local name=$1
    "$tgt" -c "$run/target-$name.json" -r "$run/rpc-$name.sock" -L nvmf --interrupt-mode \
        >>"$run/target-$name.log" 2>&1 &
    pid[$name]=$!
    for _ in $(seq 300); do
        grep -q "listening on 127.0.0.1:${port[$name]}" "$run/target-$name.log" && break
        kill -0 "${pid[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "listening on 127.0.0.1:${port[$name]}" "$run/target-$name.log" ||
        { echo "target $name did not start:"; tail -20 "$run/target-$name.log"; return 1; }
    log "target $name: pid ${pid[$name]}, 127.0.0.1:${port[$name]}"
}

# One JSON-RPC call to target NAME; prints the result.
rpc() {
    python3 - "$run/rpc-$1.sock" "$2" "$3" <<'EOF'
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": sys.argv[2], "params": json.loads(sys.argv[3])}).encode())
answer, decoder = b"", json.JSONDecoder()
while True:
    answer += sock.recv(65536)
    try:
        reply, _ = decoder.raw_decode(answer.decode())
        break
    except ValueError:
        continue
if "error" in reply:
    print(json.dumps(reply["error"]))
    sys.exit(1)
print(json.dumps(reply["result"]))
EOF
}

serve() {
    local name=$1 verb=$2 arg=${3:-}
    case "$verb" in
        kill)
            kill -KILL "${pid[$name]}"
            wait "${pid[$name]}" 2>/dev/null || true
            echo "target $name killed" ;;
        start) start_target "$name" ;;
        ana)
            rpc "$name" nvmf_subsystem_listener_set_ana_state "{\"nqn\": \"$nqn\", \"ana_state\": \"$arg\",
                \"listen_address\": {\"trtype\": \"tcp\", \"traddr\": \"127.0.0.1\", \"trsvcid\": \"${port[$name]}\"}}" ;;
        writes)
            rpc "$name" bdev_get_iostat '{"name": "Rbd0"}' |
                python3 -c 'import json, sys; print(json.load(sys.stdin)["bdevs"][0]["num_write_ops"])' ;;
        resize) rpc "$name" bdev_rbd_resize "{\"name\": \"Rbd0\", \"new_size\": $arg}" ;;
        blocks)
            rpc "$name" bdev_get_bdevs '{"name": "Rbd0"}' |
                python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["num_blocks"])' ;;
        *) echo "unknown request '$verb'"; return 2 ;;
    esac
}

for name in a b; do
    write_config "$name"
    start_target "$name"
done
cat >"$run/env" <<EOF
TGT_NQN=$nqn
TGT_SERIAL=$serial
TGT_MODEL='$model'
TGT_UUID=$uuid
TGT_SIZE=$((image_mib * 1024 * 1024))
TGT_ADDR=10.0.2.100
TGT_PORT_A=4420
TGT_PORT_B=4421
EOF
printf '4420 %s\n4421 %s\n' "${port[a]}" "${port[b]}" >"$run/forwards"
mkdir -p "$run/out/ctl"
touch "$run/host.ready"

next=1
while true; do
    request="$run/out/ctl/$next.cmd"
    if [ -f "$request" ]; then
        read -r name verb arg <<<"$(awk '{print $2, $1, $3}' "$request")"
        log "request $next: $(cat "$request")"
        set +e
        serve "$name" "$verb" "$arg" >"$run/out/ctl/$next.out" 2>&1
        rc=$?
        set -e
        echo "$rc" >"$run/out/ctl/$next.rc"
        log "request $next: exit $rc: $(tr '\n' ' ' <"$run/out/ctl/$next.out")"
        next=$((next + 1))
    fi
    sleep 0.2
done
