#!/bin/bash
# Guest job (run.sh with PEERLESS_GUEST_TARGET=guest): Linux's nvme-rdma host against
# peerless-tgt built with --features rdma, both inside the guest over soft-RoCE (rxe0 on
# $GUEST_NETDEV, MTU 9000). Each step is checked, the first failure ending the job:
#   1. rxe0 up with an active MTU of 4096; nvme-rdma loaded;
#   2. peerless-tgt (interrupt mode) with an RDMA transport and a RAM namespace, an RDMA
#      listener on $GUEST_ADDR:4420 for the subsystem and the discovery subsystem;
#   3. nvme discover -t rdma: the entry's transport is rdma;
#   4. nvme connect -t rdma, nvme list, id-ctrl (serial, subnqn, keyed SGLs), id-ns;
#   5. data: a random pattern written with dd at several block sizes and read back with
#      others (cmp), then fio verify (crc32c), 4 KiB to 128 KiB at QD1 and QD32; then
#      no heap allocation per I/O under steady fio (framework_get_reactors); the RDMA
#      device counters of nvmf_get_stats are nonzero and agree (check_rdma_counters);
#   6. a second namespace with its data in an emulated CMB (p2pmem auto): the provider is
#      probed once on rxe0 and logged; data is placed where the NIC can reach it, or
#      falls back to host memory and is counted (rxe cannot register device memory);
#      then ext4 on the RAM namespace: files written, the file system remounted with the
#      page cache dropped, the files read back and checked;
#   7. nvme disconnect; the target frees every queue (nvmf_get_stats) and every data
#      buffer is back in its pool (mem_get_stats; no per-poll-group cache);
#   8. the target restarted under a connected host: the host reconnects by itself and
#      its I/O works again; then `nvme disconnect` in the middle of fio, and again every
#      queue and buffer is freed;
#   9. SIGTERM: the target exits 0 and logs its orderly stop;
#  10. again with no_srq (each queue pair posts its own receives): connect, dd and fio,
#      then SIGTERM while fio runs at QD32: the target still exits 0 and logs its stop;
#  11. a port error (the link under rxe0 down) ends every queue on the device
#      (port_error_ends_queues);
#  12. the kernel log holds no warning, BUG or oops from any of it.
set -Eeuo pipefail
# shellcheck source=/dev/null
source /job/env
bin=$PEERLESS_BIN
addr=$GUEST_ADDR
netdev=$GUEST_NETDEV
out=/job/out
port=4420
nqn=nqn.2016-06.io.peerless:rdma
serial=PEERLESSRDMA0001
num_blocks=131072
# A restarted target must present the same namespace identity, or the host drops the
# namespace ("identifiers changed") instead of resuming I/O on it.
ns_uuid=5e4d0a11-7e55-4f00-8d00-00000000d0a1
sim_uuid=5e4d0a11-7e55-4f00-8d00-00000000d0a2
t0=$(date +%s)
tgt_pid=""
sock=/tmp/peerless.sock

step() { printf '\n=== %s (+%ss)\n' "$*" "$(($(date +%s) - t0))"; }
fail() {
    echo "FAIL: $*"
    if [ -n "${log:-}" ] && [ -s "$log" ]; then
        echo "--- last lines of the target log ($log)"
        tail -30 "$log"
    fi
    echo "--- kernel log (last 30 lines)"
    dmesg | grep -v 'speed is unknown' | tail -30 || true
    [ -z "$tgt_pid" ] || kill -KILL "$tgt_pid" 2>/dev/null || true
    exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
trim() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'; }
field() { awk -F: -v k="$2" '{ key=$1; gsub(/[ \t]+/, "", key) } key == k { sub(/^[^:]*:[ \t]*/, ""); print; exit }' "$1" | trim; }
expect_eq() { [ "$2" = "$3" ] || fail "$1: Linux sees '$2', the target configured '$3'"; echo "ok: $1 = '$2'"; }
rpc() { "$bin/peerless-rpc" -s "$sock" "$@"; }

step "the shared binaries"
for b in peerless-tgt peerless-rpc; do
    [ -x "$bin/$b" ] || fail "$bin/$b is missing: run.sh shares PEERLESS_GUEST_BIN only with PEERLESS_GUEST_TARGET=guest"
    if ldd "$bin/$b" | grep 'not found'; then
        fail "$b needs shared libraries the guest image lacks"
    fi
done
# Into a file first: grep -q leaving early would make ldd fail on a broken pipe.
ldd "$bin/peerless-tgt" >"$out/ldd-peerless-tgt.txt"
grep -q libibverbs "$out/ldd-peerless-tgt.txt" || fail "peerless-tgt was not built with --features rdma (no libibverbs)"

step "soft-RoCE: rdma_rxe on $netdev, nvme-rdma"
modprobe -a rdma_rxe ib_uverbs rdma_ucm nvme-rdma
rdma link add rxe0 type rxe netdev "$netdev"
ip link set "$netdev" mtu 9000
for _ in $(seq 50); do
    ibv_devinfo -d rxe0 >"$out/ibv_devinfo.txt"
    grep -q 'state:.*PORT_ACTIVE' "$out/ibv_devinfo.txt" && grep -q 'active_mtu:.*4096' "$out/ibv_devinfo.txt" && break
    sleep 0.1
done
grep -q 'state:.*PORT_ACTIVE' "$out/ibv_devinfo.txt" || fail "rxe0's port is not active"
echo "ok: rxe0 active"

listener() {
    printf '{"method": "nvmf_subsystem_add_listener", "params": {"nqn": "%s", "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": "%s", "trsvcid": "%s"}}}' "$1" "$addr" "$port"
}
# start_target NAME TRANSPORT_PARAMS: peerless-tgt with an RDMA transport of those extra
# parameters, its log in $out/target-NAME.log.
start_target() {
    local name=$1 extra=$2
    step "peerless-tgt ($name) with NVMe/RDMA on $addr:$port"
    cat >/tmp/target.json <<JSON
{"subsystems": [
 {"subsystem": "bdev", "config": [
   {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": $num_blocks, "block_size": 512,
     "uuid": "$ns_uuid"}},
   {"method": "bdev_nvmesim_create", "params": {"name": "Sim0", "num_blocks": 32768, "block_size": 512, "cmb_size_mb": 8,
     "uuid": "$sim_uuid"}}]},
 {"subsystem": "nvmf", "config": [
   {"method": "nvmf_create_transport", "params": {"trtype": "RDMA", "num_shared_buffers": $buffers, "buf_cache_size": 0$extra}},
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn", "serial_number": "$serial",
     "model_number": "Peerless over RDMA", "allow_any_host": true}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"bdev_name": "Malloc0"}}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"bdev_name": "Sim0", "p2pmem": "auto"}}},
   $(listener "$nqn"),
   $(listener discovery)]}]}
JSON
    cp /tmp/target.json "$out/target-$name.json"
    log=$out/target-$name.log
    "$bin/peerless-tgt" -c /tmp/target.json -r "$sock" -L nvmf --interrupt-mode >"$log" 2>&1 &
    tgt_pid=$!
    for _ in $(seq 600); do
        grep -q "peerless-tgt ready" "$log" && break
        kill -0 "$tgt_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$tgt_pid" 2>/dev/null || { tgt_pid=""; fail "peerless-tgt exited at start"; }
    grep -q "peerless-tgt ready" "$log" || fail "peerless-tgt not ready after 60 s"
    grep -q "NVMe/RDMA target listening on $addr:$port" "$log" || fail "no RDMA listener on $addr:$port"
    rpc nvmf_get_transports >"$out/transports-$name.json"
    grep -q '"RDMA"' "$out/transports-$name.json" || fail "nvmf_get_transports does not show RDMA"
    echo "ok: peerless-tgt pid $tgt_pid listening over RDMA"
}

# stop_target: SIGTERM; the target must exit 0 within 20 s and log its orderly stop.
stop_target() {
    local trc=0
    kill -TERM "$tgt_pid"
    for _ in $(seq 200); do kill -0 "$tgt_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$tgt_pid" 2>/dev/null && fail "peerless-tgt still running 20 s after SIGTERM"
    wait "$tgt_pid" || trc=$?
    tgt_pid=""
    [ "$trc" -eq 0 ] || fail "peerless-tgt exited $trc after SIGTERM"
    grep -q "peerless-tgt stopped" "$log" || fail "no 'peerless-tgt stopped' in the target log"
    if grep -n -E 'panicked|RUST_BACKTRACE' "$log"; then fail "peerless-tgt panicked"; fi
    echo "ok: peerless-tgt exited 0 and logged its orderly stop"
}

# connect [OPTIONS...]: nvme connect -t rdma with those options; sets ctrl and dev.
connect() {
    step "nvme connect -t rdma -a $addr -s $port -n $nqn $*"
    nvme connect -t rdma -a "$addr" -s "$port" -n "$nqn" "$@" | tee "$out/connect.txt"
    ctrl="" dev=""
    for _ in $(seq 100); do
        for c in /sys/class/nvme/nvme*; do
            if [ -e "$c/subsysnqn" ] && [ "$(cat "$c/subsysnqn")" = "$nqn" ] && [ "$(cat "$c/state")" = live ]; then
                ctrl=/dev/$(basename "$c")
            fi
        done
        for d in /dev/nvme*n1; do
            if [[ $d =~ ^/dev/nvme[0-9]+n1$ ]]; then dev=$d; fi
        done
        if [ -n "$ctrl" ] && [ -n "$dev" ] && [ -b "$dev" ]; then break; fi
        sleep 0.2
    done
    if [ -z "$ctrl" ] || [ ! -b "$dev" ]; then fail "no live controller for $nqn with a namespace after 20 s"; fi
    sysfs=/sys/class/nvme/$(basename "$ctrl")
    expect_eq "sysfs transport" "$(cat "$sysfs/transport")" rdma
    echo "queue_count $(cat "$sysfs/queue_count"), sqsize $(cat "$sysfs/sqsize")"
}

# patterns PAIRS...: 4 MiB of random data written at one block size, read back at another.
patterns() {
    step "a pattern written with dd, read back with other block sizes"
    head -c $((4 << 20)) /dev/urandom >/tmp/pattern
    local pair wbs rbs
    for pair in "$@"; do
        wbs=${pair%%:*} rbs=${pair##*:}
        dd if=/tmp/pattern of="$dev" bs="$wbs" oflag=direct status=none
        dd if="$dev" of=/tmp/back bs="$rbs" count=$(((4 << 20) / $(numfmt --from=iec "$rbs"))) iflag=direct status=none
        cmp /tmp/pattern /tmp/back || fail "data written with bs=$wbs differs when read with bs=$rbs"
        echo "ok: 4 MiB written at bs=$wbs, read back at bs=$rbs, identical"
    done
}

# fio_verify NAME QD: random writes 4k..128k verified with crc32c.
fio_verify() {
    step "fio verify=crc32c, 4k..128k, QD$2"
    fio --name="rdma-$1" --filename="$dev" --direct=1 --ioengine=libaio --iodepth="$2" \
        --rw=randwrite --bssplit=4k/40:16k/25:64k/20:128k/15 --offset=8M --size=16M \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$out/fio-$1.txt" ||
        { cat "$out/fio-$1.txt"; fail "fio verify $1 failed"; }
    grep -q 'err= 0' "$out/fio-$1.txt" || { cat "$out/fio-$1.txt"; fail "fio reported an error"; }
    grep -E 'write:|read:' "$out/fio-$1.txt"
}

# steady_allocations: no heap allocation per I/O on the RDMA data path (DESIGN: none on
# the data path). fio keeps 4 KiB to 128 KiB random reads and writes going at QD16; over
# 3 s of it the reactors' allocation count (framework_get_reactors) grows by less than 1
# per 100 I/Os beyond what 3 idle seconds add (mostly the reading RPC's own).
reactor_allocations() {
    rpc framework_get_reactors | python3 -c 'import json, sys; print(sum(r["allocations"] for r in json.load(sys.stdin)["reactors"]))'
}
steady_allocations() {
    step "no heap allocation per I/O on the RDMA data path"
    local idle_before idle before after ios extra fio_pid
    idle_before=$(reactor_allocations)
    sleep 3
    idle=$(($(reactor_allocations) - idle_before))
    fio --name=rdma-allocations --filename="$dev" --direct=1 --ioengine=libaio --iodepth=16 \
        --rw=randrw --bssplit=4k/60:16k/20:128k/20 --offset=8M --size=16M --time_based --runtime=9 \
        --output-format=json --output="$out/fio-allocations.json" &
    fio_pid=$!
    # Warm-up: the pooled I/O objects' lists grow to the largest command they carry.
    sleep 4
    before=$(reactor_allocations)
    sleep 3
    after=$(reactor_allocations)
    wait "$fio_pid" || fail "fio for the allocation count failed"
    ios=$(python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))["jobs"][0]; print((j["read"]["total_ios"] + j["write"]["total_ios"]) * 3 // 9)' "$out/fio-allocations.json")
    [ "$ios" -gt 1000 ] || fail "only $ios I/Os in the window"
    extra=$((after - before - idle))
    [ $((extra * 100)) -lt "$ios" ] || fail "$extra allocations on the reactors beyond idle for about $ios I/Os"
    echo "ok: $extra allocations beyond idle ($idle idle) for about $ios I/Os"
}

# mem_field NAME: a number of the RDMA pool in mem_get_stats.
mem_field() { rpc mem_get_stats | tr -d ' \n' | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }

# --- RDMA device counters (nvmf_get_stats, SPDK's RDMA poll group fields) -------------
# check_rdma_counters NAME: after I/O, the RDMA devices' counters summed over poll groups
# are real and agree with each other: commands were received, every one into a posted
# receive and answered by a posted SEND, and no count exceeds what contains it.
rdma_counter() { tr -d ' \n' <"$1" | grep -o "\"$2\":[0-9]*" | cut -d: -f2 | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
check_rdma_counters() {
    step "RDMA device counters in nvmf_get_stats ($1)"
    local f=$out/stats-counters-$1.json
    rpc nvmf_get_stats >"$f"
    grep -q '"pending_data_buffer"' "$f" || { cat "$f"; fail "nvmf_get_stats has no RDMA transport entry"; }
    grep -q '"name": *"rxe0"' "$f" || { cat "$f"; fail "nvmf_get_stats lists no device rxe0"; }
    local polls idle completions requests latency send_wrs send_db recv_wrs recv_db
    polls=$(rdma_counter "$f" polls) idle=$(rdma_counter "$f" idle_polls)
    completions=$(rdma_counter "$f" completions) requests=$(rdma_counter "$f" requests)
    latency=$(rdma_counter "$f" request_latency)
    send_wrs=$(rdma_counter "$f" total_send_wrs) send_db=$(rdma_counter "$f" send_doorbell_updates)
    recv_wrs=$(rdma_counter "$f" total_recv_wrs) recv_db=$(rdma_counter "$f" recv_doorbell_updates)
    echo "polls $polls idle $idle completions $completions requests $requests latency ${latency}ns"
    echo "send wrs $send_wrs doorbells $send_db; recv wrs $recv_wrs doorbells $recv_db"
    ((requests > 1000)) || fail "requests $requests after dd and fio"
    ((polls > 0 && polls >= idle)) || fail "polls $polls, idle_polls $idle"
    ((completions >= requests)) || fail "completions $completions < requests $requests"
    ((recv_wrs >= requests)) || fail "total_recv_wrs $recv_wrs < requests $requests"
    ((send_wrs >= requests)) || fail "total_send_wrs $send_wrs < requests $requests (one SEND each)"
    ((send_db > 0 && send_db <= send_wrs)) || fail "send doorbells $send_db of $send_wrs wrs"
    ((recv_db > 0 && recv_db <= recv_wrs)) || fail "recv doorbells $recv_db of $recv_wrs wrs"
    ((latency > 0)) || fail "request_latency is 0 after I/O"
    echo "ok: RDMA counters nonzero and consistent"
}
# --------------------------------------------------------------------------------------

buffers=1024
start_target srq ""

step "host identity"
mkdir -p /etc/nvme
cat /proc/sys/kernel/random/uuid >/etc/nvme/hostid
echo "nqn.2014-08.org.nvmexpress:uuid:$(cat /etc/nvme/hostid)" >/etc/nvme/hostnqn

step "nvme discover -t rdma -a $addr -s $port"
nvme discover -t rdma -a "$addr" -s "$port" | tee "$out/discover.txt"
grep -q "subnqn: *$nqn" "$out/discover.txt" || fail "the discovery log has no entry for $nqn"
grep -q "trtype: *rdma" "$out/discover.txt" || fail "the discovery log entry is not of transport rdma"
grep -q "rdma_cms: *rdma-cm" "$out/discover.txt" || fail "the discovery log entry has no RDMA CM type"

connect

step "nvme list, id-ctrl, id-ns"
nvme list | tee "$out/list.txt"
grep -q "$dev" "$out/list.txt" || fail "nvme list does not show $dev"
nvme id-ctrl "$ctrl" >"$out/id-ctrl.txt"
grep -E '^(sn|mn|subnqn|sgls|ioccsz|iorcsz|icdoff|msdbd|mdts) ' "$out/id-ctrl.txt"
expect_eq "id-ctrl sn" "$(field "$out/id-ctrl.txt" sn)" "$serial"
expect_eq "id-ctrl subnqn" "$(field "$out/id-ctrl.txt" subnqn)" "$nqn"
sgls=$(($(field "$out/id-ctrl.txt" sgls)))
[ $((sgls & 4)) -ne 0 ] || fail "id-ctrl sgls $sgls lacks keyed SGL data blocks (bit 2)"
nvme id-ns "$dev" >"$out/id-ns.txt"
expect_eq "id-ns nsze" "$(($(field "$out/id-ns.txt" nsze)))" "$num_blocks"

patterns 4K:128K 128K:4K 64K:16K 1M:8K
fio_verify qd1 1
fio_verify qd32 32
steady_allocations
check_rdma_counters srq

# all_released WHY: every queue gone on the target within 20 s, and both data buffer
# classes back to full.
all_released() {
    for _ in $(seq 100); do
        rpc nvmf_get_stats >"$out/stats.json"
        grep -q '"current_io_qpairs": *[1-9]' "$out/stats.json" || grep -q '"current_admin_qpairs": *[1-9]' "$out/stats.json" || break
        sleep 0.2
    done
    if grep -q '"current_io_qpairs": *[1-9]\|"current_admin_qpairs": *[1-9]' "$out/stats.json"; then
        cat "$out/stats.json"
        fail "the target still holds queues 20 s after $1"
    fi
    echo "ok: every queue gone on the target after $1"
    for class in small_free large_free; do
        expect_eq "mem_get_stats $class after $1" "$(mem_field "$class")" "$buffers"
    done
}

step "a P2P namespace (an emulated CMB) over RDMA: probed once, placed where the NIC reaches"
p2p_dev=${dev%n1}n2
[ -b "$p2p_dev" ] || fail "no second namespace $p2p_dev"
head -c $((2 << 20)) /dev/urandom >/tmp/p2p-pattern
dd if=/tmp/p2p-pattern of="$p2p_dev" bs=64K oflag=direct status=none
dd if="$p2p_dev" of=/tmp/p2p-back bs=4K count=512 iflag=direct status=none
cmp /tmp/p2p-pattern /tmp/p2p-back || fail "data of the P2P namespace differs when read back"
probes=$(grep -c "P2P provider 'Sim0" "$log" || true)
[ "$probes" = 1 ] || fail "the CMB was probed $probes times on rxe0, not once"
grep "P2P provider 'Sim0" "$log"
rpc mem_get_stats >"$out/mem-p2p.json"
in_cmb=$(tr -d ' \n' <"$out/mem-p2p.json" | grep -o '"iomem":[0-9]*' | sed -n '1s/.*://p')
fallbacks=$(mem_field p2p_fallbacks)
if grep -q "P2P provider 'Sim0.*registered; the NIC places" "$log"; then
    [ "$in_cmb" -gt 0 ] && [ "$fallbacks" = 0 ] || fail "registered, yet $in_cmb bytes in the CMB and $fallbacks fallbacks"
    echo "ok: rxe0 registered the CMB's dma-buf: $in_cmb payload bytes placed there by the NIC"
else
    [ "$in_cmb" = 0 ] && [ "$fallbacks" -ge 2 ] || fail "not registered, yet $in_cmb bytes in the CMB and $fallbacks fallbacks"
    echo "ok: rxe0 cannot reach the CMB: $fallbacks commands fell back to host memory, none bounced"
fi

step "ext4: files written, remounted from the target, read back"
mkfs.ext4 -q -F "$dev"
mkdir -p /mnt/rdma
mount "$dev" /mnt/rdma
for i in $(seq 12); do head -c $((i * 257 * 1024 + i * 7)) /dev/urandom >"/mnt/rdma/file$i"; done
mkdir /mnt/rdma/dir
cp /mnt/rdma/file12 /mnt/rdma/dir/copy
(cd /mnt/rdma && sha256sum file* dir/copy) >/tmp/sums
umount /mnt/rdma
echo 3 >/proc/sys/vm/drop_caches
mount "$dev" /mnt/rdma
(cd /mnt/rdma && sha256sum --quiet -c /tmp/sums) || fail "files differ after the remount"
umount /mnt/rdma
echo "ok: $(wc -l </tmp/sums) files identical after a remount with the page cache dropped"

step "nvme disconnect -n $nqn"
nvme disconnect -n "$nqn" | tee "$out/disconnect.txt"
grep -q 'disconnected 1 controller' "$out/disconnect.txt" || fail "disconnect did not report one controller"
all_released "the host disconnected"

# live_within SECONDS: the controller reports live again.
live_within() {
    for _ in $(seq $(($1 * 5))); do
        [ "$(cat "$sysfs/state")" = live ] && return 0
        sleep 0.2
    done
    return 1
}
connect --reconnect-delay=1 --ctrl-loss-tmo=120
step "the target restarted under the connected host"
stop_target
sleep 2
[ "$(cat "$sysfs/state")" != live ] || fail "the host still sees the controller live with the target gone"
echo "ok: the host sees the controller $(cat "$sysfs/state")"
start_target restarted ""
live_within 60 || fail "the host did not reconnect within 60 s of the restart ($(cat "$sysfs/state"))"
echo "ok: the host reconnected by itself"
patterns 16K:4K
fio_verify after-restart 8

step "nvme disconnect in the middle of fio"
fio --name=cut --filename="$dev" --direct=1 --ioengine=libaio --iodepth=32 --rw=randrw \
    --bssplit=4k/50:128k/50 --size=32M --time_based --runtime=60 --output="$out/fio-cut.txt" &
fio_pid=$!
sleep 3
kill -0 "$fio_pid" 2>/dev/null || fail "fio ended before the disconnect"
nvme disconnect -n "$nqn" | tee "$out/disconnect-mid-fio.txt"
grep -q 'disconnected 1 controller' "$out/disconnect-mid-fio.txt" || fail "disconnect did not report one controller"
for _ in $(seq 100); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.2; done
kill -0 "$fio_pid" 2>/dev/null && fail "fio still runs 20 s after its device was disconnected"
wait "$fio_pid" 2>/dev/null || true
all_released "a disconnect in the middle of fio"

step "SIGTERM to peerless-tgt"
stop_target

start_target no-srq ', "no_srq": true'
grep -q '"no_srq": *true' "$out/transports-no-srq.json" || fail "nvmf_get_transports does not show no_srq"
connect
patterns 128K:4K 8K:64K
fio_verify no-srq-qd32 32
check_rdma_counters no-srq

step "SIGTERM while fio writes at QD32"
fio --name=load --filename="$dev" --direct=1 --ioengine=libaio --iodepth=32 --rw=randrw \
    --bssplit=4k/50:128k/50 --size=32M --time_based --runtime=30 --output="$out/fio-load.txt" &
fio_pid=$!
sleep 3
kill -0 "$fio_pid" 2>/dev/null || fail "fio under load ended before the SIGTERM"
stop_target
grep "shutdown: transport RDMA" "$log"
grep -q "shutdown: transport RDMA: every data buffer back ($buffers small and $buffers large free" "$log" ||
    fail "not every data buffer came back before the target exited"
kill -KILL "$fio_pid" 2>/dev/null || true
wait "$fio_pid" 2>/dev/null || true
nvme disconnect -n "$nqn" >/dev/null 2>&1 || true

# --- the device's asynchronous events ------------------------------------------------
# port_error_ends_queues: with a host connected, the link under rxe0 goes down; rxe0
# reports a port error, and the target ends every queue on the device (and says so).
port_error_ends_queues() {
    start_target port-error ""
    connect
    step "link down under rxe0: the port error ends the device's queues"
    ip link set "$netdev" down
    for _ in $(seq 100); do
        grep -q "asynchronous event PortError" "$log" && break
        sleep 0.1
    done
    grep "asynchronous event" "$log" || true
    grep -q "asynchronous event PortError.*ending its [1-9][0-9]* queues" "$log" ||
        { ip link set "$netdev" up; fail "no port error ending rxe0's queues in the target log"; }
    for _ in $(seq 100); do
        rpc nvmf_get_stats >"$out/stats-port-error.json"
        grep -q '"current_io_qpairs": *[1-9]\|"current_admin_qpairs": *[1-9]' "$out/stats-port-error.json" || break
        sleep 0.2
    done
    ip link set "$netdev" up
    if grep -q '"current_io_qpairs": *[1-9]\|"current_admin_qpairs": *[1-9]' "$out/stats-port-error.json"; then
        fail "queues still open 20 s after rxe0's port error"
    fi
    echo "ok: the port error ended every queue on rxe0"
    # The target first, then the host; its disconnect waits about a minute for the
    # error recovery the port error started (the step's time, most of it).
    stop_target
    nvme disconnect -n "$nqn" >/dev/null 2>&1 || true
}
port_error_ends_queues
# --------------------------------------------------------------------------------------

rdma link delete rxe0

step "the kernel log"
dmesg >"$out/dmesg.txt"
if grep -n -E 'WARNING:|BUG:|Oops|Call Trace|general protection|list_del corruption|refcount_t:|hung_task|blocked for more than' "$out/dmesg.txt"; then
    fail "the kernel logged a warning, BUG or oops"
fi
echo "ok: no warning, BUG or oops in $(wc -l <"$out/dmesg.txt") kernel log lines"
step "done: Linux's nvme-rdma host against peerless-tgt over soft-RoCE"
