#!/bin/bash
# Guest job for run.sh's PEERLESS_GUEST_TARGET=guest mode: the release binaries are shared
# read-only at $PEERLESS_BIN and peerless-tgt runs here, inside the guest, because soft-RoCE
# (rdma_rxe) and kernel TLS (tls.ko) exist only in the guest's kernel. Three parts, each
# checked, the first failure ending the job non-zero:
#   1. peerless-tgt (RAM namespace, NVMe/TCP on $GUEST_ADDR and 127.0.0.1, interrupt mode:
#      the guest has two emulated CPUs), peerless-rpc against it, peerless-perf --verify
#      over both addresses (the second with header and data digests), SIGTERM, clean exit;
#   2. soft-RoCE: rdma_rxe on $GUEST_NETDEV, ibv_devices, MTU 9000, then RDMA CM and data
#      in loopback with rping (verified payloads) and ib_write_bw;
#   3. kernel TLS: tls.ko loads and /proc/net/tls_stat exists.
# The target's log and the tools' output stay in /job/out.
set -Eeuo pipefail
source /job/env
bin=$PEERLESS_BIN
addr=$GUEST_ADDR
netdev=$GUEST_NETDEV
out=/job/out
nqn=nqn.2016-06.io.peerless:in-guest
serial=PEERLESSGUEST0001
t0=$(date +%s)
tgt_pid=""
target_part=1

step() { printf '\n=== %s (+%ss)\n' "$*" "$(($(date +%s) - t0))"; }
fail() {
    echo "FAIL: $*"
    if [ -n "$target_part" ] && [ -s "$out/target.log" ]; then
        echo "--- last lines of the target log ($out/target.log)"
        tail -20 "$out/target.log"
    fi
    # rxe asks eth0 its speed at every query; virtio-net has none to tell.
    echo "--- kernel log (last 20 lines)"
    dmesg | grep -v 'speed is unknown' | tail -20 || true
    [ -z "$tgt_pid" ] || kill -KILL "$tgt_pid" 2>/dev/null || true
    exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
# json_number FILE KEY: the number KEY holds in peerless-perf's one-line --json summary
# (the guest has no python3 or jq).
json_number() { grep -o "\"$2\":[0-9.e+-]*" "$1" | head -1 | cut -d: -f2; }

step "the shared binaries"
for b in peerless-tgt peerless-perf peerless-rpc; do
    [ -x "$bin/$b" ] || fail "$bin/$b is missing: run.sh shares PEERLESS_GUEST_BIN only with PEERLESS_GUEST_TARGET=guest"
    if ldd "$bin/$b" | grep 'not found'; then
        fail "$b needs shared libraries the guest image lacks (add their packages to build.sh's guest_pkgs)"
    fi
done
"$bin/peerless-tgt" --version
# The release build must not assume the build machine's CPU: -cpu max has no AVX-512.
grep -q -w avx2 /proc/cpuinfo && echo "cpu: avx2 present"
if grep -q -w avx512f /proc/cpuinfo; then echo "cpu: avx512f present"; else echo "cpu: no avx512f"; fi

step "peerless-tgt in the guest: RAM namespace, NVMe/TCP on $addr:4420 and 127.0.0.1:4420"
listener() {
    printf '{"method": "nvmf_subsystem_add_listener", "params": {"nqn": "%s", "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "%s", "trsvcid": "4420"}}}' "$nqn" "$1"
}
cat >/tmp/target.json <<JSON
{"subsystems": [
 {"subsystem": "bdev", "config": [
   {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
   {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn", "serial_number": "$serial",
     "model_number": "Peerless in the guest", "allow_any_host": true}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"bdev_name": "Malloc0"}}},
   $(listener "$addr"),
   $(listener 127.0.0.1)]}]}
JSON
cp /tmp/target.json "$out/target.json"
sock=/tmp/peerless.sock
"$bin/peerless-tgt" -c /tmp/target.json -r "$sock" -L nvmf -L nvmf_tcp --interrupt-mode >"$out/target.log" 2>&1 &
tgt_pid=$!
# Under TCG the first start pages a 30 MB binary in over 9p: allow a minute.
for _ in $(seq 600); do
    grep -q "peerless-tgt ready" "$out/target.log" && break
    kill -0 "$tgt_pid" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$tgt_pid" 2>/dev/null || { tgt_pid=""; fail "peerless-tgt exited at start"; }
grep -q "peerless-tgt ready" "$out/target.log" || fail "peerless-tgt not ready after 60 s"
for a in "$addr" 127.0.0.1; do
    grep -q "listening on $a:4420" "$out/target.log" || fail "peerless-tgt is not listening on $a:4420"
done
echo "peerless-tgt pid $tgt_pid ready, listening on $addr:4420 and 127.0.0.1:4420"
"$bin/peerless-rpc" -s "$sock" framework_wait_init >/dev/null
"$bin/peerless-rpc" -s "$sock" nvmf_get_subsystems >"$out/subsystems.json"
grep -q "$nqn" "$out/subsystems.json" || fail "nvmf_get_subsystems does not list $nqn"
echo "ok: peerless-rpc nvmf_get_subsystems lists $nqn"

step "peerless-perf identify over $addr"
"$bin/peerless-perf" identify -r "trtype:tcp adrfam:IPv4 traddr:$addr trsvcid:4420 subnqn:$nqn" >"$out/identify.txt"
grep -q "$serial" "$out/identify.txt" || { cat "$out/identify.txt"; fail "identify does not show serial $serial"; }
echo "ok: identify shows serial $serial"

# perf_verify NAME ADDR ARGS...: a verified run (--verify: every block written with a
# pattern naming its LBA and the seed, then read back and compared); peerless-perf exits
# non-zero on an I/O error or a mismatched block, and the summary must count I/Os.
perf_verify() {
    local name=$1 a=$2
    shift 2
    step "peerless-perf --verify $* over $a ($name)"
    local rc=0 ios errors mismatches iops mibps
    "$bin/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:$a trsvcid:4420 subnqn:$nqn" \
        --verify --json "$@" >"$out/perf-$name.json" 2>"$out/perf-$name.log" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$out/perf-$name.log"; fail "peerless-perf ($name) exited $rc"; }
    ios=$(json_number "$out/perf-$name.json" ios)
    errors=$(json_number "$out/perf-$name.json" errors)
    mismatches=$(json_number "$out/perf-$name.json" mismatches)
    iops=$(json_number "$out/perf-$name.json" iops)
    mibps=$(json_number "$out/perf-$name.json" mibps)
    [ -n "$ios" ] && [ "$ios" -gt 0 ] || fail "perf ($name) did no I/O: $(cat "$out/perf-$name.json")"
    [ "$errors" = 0 ] && [ "$mismatches" = 0 ] ||
        fail "perf ($name): $errors I/O errors, $mismatches mismatched blocks"
    printf 'ok: %s I/Os verified, %.0f IOPS, %.2f MiB/s (TCG: functional, not a benchmark)\n' "$ios" "$iops" "$mibps"
}
perf_verify randrw-4k "$addr" -q 8 -o 4096 -w randrw -M 50 -t 5 -c 0x2
# Digests exercise CRC32C on this CPU (no AVX-512: the run-time dispatch must pick another path).
perf_verify randwrite-128k-digests 127.0.0.1 -q 4 -o 131072 -w randwrite -t 3 -c 0x2 -H -I
grep -q 'from 127.0.0.1:[0-9]*: ICReq, digests .*header: true, data: true' "$out/target.log" ||
    fail "the target's log (-L nvmf_tcp) shows no connection from 127.0.0.1 with both digests"
echo "ok: the target took both digests from 127.0.0.1"

step "SIGTERM to peerless-tgt"
kill -TERM "$tgt_pid"
for _ in $(seq 200); do kill -0 "$tgt_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$tgt_pid" 2>/dev/null && fail "peerless-tgt still running 20 s after SIGTERM"
trc=0
wait "$tgt_pid" || trc=$?
tgt_pid=""
[ "$trc" -eq 0 ] || fail "peerless-tgt exited $trc after SIGTERM"
grep -q "peerless-tgt stopped" "$out/target.log" || fail "no 'peerless-tgt stopped' in the target log"
if grep -n -E 'panicked|RUST_BACKTRACE' "$out/target.log"; then fail "peerless-tgt panicked"; fi
echo "ok: peerless-tgt exited 0 and logged its orderly stop"
target_part=""

step "soft-RoCE: rdma_rxe on $netdev"
# -a: without it modprobe takes the later names as parameters of the first.
modprobe -a rdma_rxe ib_uverbs rdma_ucm
rdma link add rxe0 type rxe netdev "$netdev"
rdma link show | tee "$out/rdma-link.txt"
grep -q "rxe0.*netdev $netdev" "$out/rdma-link.txt" || fail "rdma link does not show rxe0 on $netdev"
[ -c /dev/infiniband/rdma_cm ] || fail "no /dev/infiniband/rdma_cm (rdma_ucm not loaded?)"
ibv_devices | tee "$out/ibv_devices.txt"
grep -q -w rxe0 "$out/ibv_devices.txt" || fail "ibv_devices does not list rxe0"
# rxe's active MTU follows the netdev's: 1500 gives 1024, 9000 gives 4096.
ip link set "$netdev" mtu 9000
active_mtu=""
for _ in $(seq 50); do
    ibv_devinfo -d rxe0 >"$out/ibv_devinfo.txt"
    active_mtu=$(awk '/active_mtu:/ {print $2; exit}' "$out/ibv_devinfo.txt")
    [ "$active_mtu" = 4096 ] && grep -q 'state:.*PORT_ACTIVE' "$out/ibv_devinfo.txt" && break
    sleep 0.1
done
cat "$out/ibv_devinfo.txt"
grep -q 'state:.*PORT_ACTIVE' "$out/ibv_devinfo.txt" || fail "rxe0's port is not active"
[ "$active_mtu" = 4096 ] || fail "rxe0's active MTU is '$active_mtu' with $netdev at MTU 9000, not 4096"
echo "ok: rxe0 active, MTU 4096"

# loopback_pair NAME: runs server_cmd in the background and client_cmd against it, both
# required to exit 0; their output goes to $out/NAME-server.log and NAME-client.log.
# Neither rping nor perftest says when its server listens, so the client is retried (up
# to 20 times, 0.5 s apart) while the server is still running.
loopback_pair() {
    local name=$1 tries=0 crc=1 src=0 server
    "${server_cmd[@]}" >"$out/$name-server.log" 2>&1 &
    server=$!
    while [ "$tries" -lt 20 ]; do
        tries=$((tries + 1))
        crc=0
        "${client_cmd[@]}" >"$out/$name-client.log" 2>&1 || crc=$?
        [ "$crc" -ne 0 ] || break
        kill -0 "$server" 2>/dev/null || break
        sleep 0.5
    done
    if [ "$crc" -ne 0 ]; then
        kill -KILL "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        echo "--- $name client (${client_cmd[*]}):"
        cat "$out/$name-client.log"
        echo "--- $name server (${server_cmd[*]}):"
        cat "$out/$name-server.log"
        fail "$name: the client failed $tries time(s), the last with exit status $crc"
    fi
    for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$server" 2>/dev/null; then
        kill -KILL "$server"
        wait "$server" 2>/dev/null || true
        cat "$out/$name-server.log"
        fail "$name: the server still runs 10 s after its client finished"
    fi
    wait "$server" || src=$?
    [ "$src" -eq 0 ] || { cat "$out/$name-server.log"; fail "$name: the server exited $src"; }
}

step "rping over $addr: RDMA CM, 10 validated pings"
# -V: the client compares each echoed payload with what it sent; -v prints it.
server_cmd=(rping -s -a "$addr" -C 10 -V -v)
client_cmd=(rping -c -a "$addr" -C 10 -V -v)
loopback_pair rping
pings=$(grep -c 'ping data: rdma-ping-' "$out/rping-client.log" || true)
[ "$pings" -eq 10 ] || { cat "$out/rping-client.log"; fail "rping: the client printed $pings pings, not 10"; }
echo "ok: 10 pings over RDMA CM, payloads validated, both sides exited 0"

step "ib_write_bw over $addr: RDMA CM, 64 KiB RDMA writes"
# -R: connect with RDMA CM; -F: no warning about the emulated CPU's frequency.
server_cmd=(ib_write_bw -d rxe0 -R -F -s 65536 -n 2000)
client_cmd=("${server_cmd[@]}" "$addr")
loopback_pair ib_write_bw
cat "$out/ib_write_bw-client.log"
# The results row: bytes, iterations, peak MB/s, average MB/s, Mpps.
row=$(awk '$1 == 65536 && $2 == 2000 {print; exit}' "$out/ib_write_bw-client.log")
[ -n "$row" ] || fail "ib_write_bw printed no results row for 65536 B x 2000"
avg=$(awk '{print $4}' <<<"$row")
awk -v v="$avg" 'BEGIN {exit !(v > 0)}' || fail "ib_write_bw average bandwidth '$avg' MB/s"
echo "ok: ib_write_bw 2000 x 64 KiB, average $avg MB/s (TCG: functional, not a benchmark)"
rdma link delete rxe0

step "kernel TLS: tls.ko"
modprobe tls
[ -e /proc/net/tls_stat ] || fail "tls.ko loaded but /proc/net/tls_stat is missing"
cat /proc/net/tls_stat
echo "ok: tls.ko loaded, /proc/net/tls_stat present"

step "done: peerless-tgt in the guest, soft-RoCE and kernel TLS all checked"
