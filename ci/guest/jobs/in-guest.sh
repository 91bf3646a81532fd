#!/bin/bash
# Guest job for run.sh's PEERLESS_GUEST_TARGET=guest mode: the release binaries are shared
# read-only at $PEERLESS_BIN and peerless-tgt runs here, inside the guest, because soft-RoCE
# (rdma_rxe) and kernel TLS (tls.ko) exist only in the guest's kernel. Each step is
# checked, the first failure ending the job non-zero:
#   1. kernel TLS: tls.ko loads and /proc/net/tls_stat exists;
#   2. peerless-tgt (RAM namespaces, NVMe/TCP on $GUEST_ADDR and 127.0.0.1, interrupt
#      mode: the guest has two emulated CPUs), peerless-rpc against it, peerless-perf
#      --verify over both addresses (the second with header and data digests);
#   3. the secure channel (TLS 1.3 PSK, keys from nvme gen-tls-key: 32 bytes, and 48 bytes
#      with a version-1 identity) with the record layer in the kernel (kTLS: tls_stat
#      counts the offloaded sockets), then with kTLS switched
#      off over RPC (the counters stay still); SIGTERM, clean exit;
#   4. soft-RoCE: rdma_rxe on $GUEST_NETDEV, ibv_devices, MTU 9000, then RDMA CM and data
#      in loopback with rping (verified payloads) and ib_write_bw.
# The target's log and the tools' output stay in /job/out.
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
addr=$GUEST_ADDR
netdev=$GUEST_NETDEV
nqn=nqn.2016-06.io.peerless:in-guest
serial=PEERLESSGUEST0001
# The secure channel's subsystem: closed to all but one host, which has a PSK.
nqn_tls=nqn.2016-06.io.peerless:in-guest-tls
hostnqn_tls=nqn.2014-08.org.nvmexpress:uuid:7e57a11e-0000-4000-8000-000000000001
psk=/tmp/psk0
# A second host with a 48-byte key: TLS_AES_256_GCM_SHA384, the other suite.
hostnqn_tls384=nqn.2014-08.org.nvmexpress:uuid:7e57a11e-0000-4000-8000-000000000384
psk384=/tmp/psk384
# tls_stat NAME: one of the kernel's kTLS counters.
tls_stat() { awk -v k="$1" '$1 == k {print $2; exit}' /proc/net/tls_stat; }
trid() { echo "trtype:tcp adrfam:IPv4 traddr:$1 trsvcid:$2 subnqn:$3"; }

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

step "kernel TLS: tls.ko"
modprobe tls
[ -e /proc/net/tls_stat ] || fail "tls.ko loaded but /proc/net/tls_stat is missing"
cat /proc/net/tls_stat
echo "ok: tls.ko loaded, /proc/net/tls_stat present"

step "peerless-tgt in the guest: NVMe/TCP on $addr:4420 and 127.0.0.1:4420, TLS on $addr:4421"
# listener NQN ADDR PORT [EXTRA]: an nvmf_subsystem_add_listener entry.
listener() {
    printf '{"method": "nvmf_subsystem_add_listener", "params": {"nqn": "%s", "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "%s", "trsvcid": "%s"}%s}}' "$1" "$2" "$3" "${4:+, $4}"
}
(umask 077 && nvme gen-tls-key --hmac=1 >"$psk" && nvme gen-tls-key --hmac=2 >"$psk384")
grep -q '^NVMeTLSkey-1:01:' "$psk" || fail "nvme gen-tls-key wrote no PSK in the interchange format"
grep -q '^NVMeTLSkey-1:02:' "$psk384" || fail "nvme gen-tls-key --hmac=2 wrote no 48-byte PSK"
cat >/tmp/target.json <<JSON
{"subsystems": [
 {"subsystem": "keyring", "config": [
   {"method": "keyring_file_add_key", "params": {"name": "psk0", "path": "$psk"}},
   {"method": "keyring_file_add_key", "params": {"name": "psk384", "path": "$psk384"}}]},
 {"subsystem": "bdev", "config": [
   {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}},
   {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 65536, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
   {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn", "serial_number": "$serial",
     "model_number": "Peerless in the guest", "allow_any_host": true}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"bdev_name": "Malloc0"}}},
   $(listener "$nqn" "$addr" 4420),
   $(listener "$nqn" 127.0.0.1 4420),
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn_tls", "allow_any_host": false}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn_tls", "namespace": {"bdev_name": "Malloc1"}}},
   {"method": "nvmf_subsystem_add_host", "params": {"nqn": "$nqn_tls", "host": "$hostnqn_tls", "psk": "psk0"}},
   {"method": "nvmf_subsystem_add_host", "params": {"nqn": "$nqn_tls", "host": "$hostnqn_tls384", "psk": "psk384"}},
   $(listener "$nqn_tls" "$addr" 4421 '"secure_channel": true')]}]}
JSON
TARGET_FLAGS="-L nvmf -L nvmf_tcp" start_target /tmp/target.json
for a in "$addr:4420" 127.0.0.1:4420 "$addr:4421"; do
    grep -q "listening on $a" "$out/target.log" || fail "peerless-tgt is not listening on $a"
done
echo "peerless-tgt pid $tgt_pid ready, listening on $addr:4420, 127.0.0.1:4420 and $addr:4421 (TLS)"
"$bin/peerless-rpc" -s "$sock" framework_wait_init >/dev/null
"$bin/peerless-rpc" -s "$sock" nvmf_get_subsystems >"$out/subsystems.json"
for n in "$nqn" "$nqn_tls"; do
    grep -q "\"$n\"" "$out/subsystems.json" || fail "nvmf_get_subsystems does not list $n"
done
echo "ok: peerless-rpc nvmf_get_subsystems lists $nqn and $nqn_tls"

step "peerless-perf identify over $addr"
"$bin/peerless-perf" identify -r "$(trid "$addr" 4420 "$nqn")" >"$out/identify.txt"
grep -q "$serial" "$out/identify.txt" || { cat "$out/identify.txt"; fail "identify does not show serial $serial"; }
echo "ok: identify shows serial $serial"

# perf_verify NAME TRID ARGS...: a verified run (--verify: every block written with a
# pattern naming its LBA and the seed, then read back and compared); peerless-perf exits
# non-zero on an I/O error or a mismatched block, and the summary must count I/Os.
perf_verify() {
    local name=$1 where=$2
    shift 2
    step "peerless-perf --verify $* ($name)"
    echo "-r '$where'"
    local rc=0 ios errors mismatches iops mibps
    "$bin/peerless-perf" -r "$where" --verify --json "$@" >"$out/perf-$name.json" 2>"$out/perf-$name.log" || rc=$?
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
perf_verify randrw-4k "$(trid "$addr" 4420 "$nqn")" -q 8 -o 4096 -w randrw -M 50 -t 5 -c 0x2
# Digests exercise CRC32C on this CPU (no AVX-512: the run-time dispatch must pick another path).
perf_verify randwrite-128k-digests "$(trid 127.0.0.1 4420 "$nqn")" -q 4 -o 131072 -w randwrite -t 3 -c 0x2 -H -I
grep -q 'from 127.0.0.1:[0-9]*: ICReq, digests .*header: true, data: true' "$out/target.log" ||
    fail "the target's log (-L nvmf_tcp) shows no connection from 127.0.0.1 with both digests"
echo "ok: the target took both digests from 127.0.0.1"

# The secure channel, kTLS switched on (it is off by default, as in SPDK): after each
# handshake the target hands the record layer to the kernel, which counts each socket in TlsTxSw/TlsRxSw (and while open
# in TlsCurrTxSw/TlsCurrRxSw). Each perf run opens two queues (admin and I/O).
tls_args=(--psk "$psk" --hostnqn "$hostnqn_tls" -c 0x2)
# wait_tls_sockets_closed: the kernel's open kTLS sockets back to zero (the target closes
# its side once the host has gone).
wait_tls_sockets_closed() {
    for _ in $(seq 100); do
        [ "$(tls_stat TlsCurrTxSw)" = 0 ] && [ "$(tls_stat TlsCurrRxSw)" = 0 ] && return 0
        sleep 0.1
    done
    cat /proc/net/tls_stat
    fail "kTLS sockets still open 10 s after the host left"
}
"$bin/peerless-rpc" -s "$sock" sock_impl_set_options -i ssl --enable-ktls >/dev/null
tx0=$(tls_stat TlsTxSw) rx0=$(tls_stat TlsRxSw)
perf_verify tls-ktls-randrw-4k "$(trid "$addr" 4421 "$nqn_tls")" -q 8 -o 4096 -w randrw -M 50 -t 3 "${tls_args[@]}"
perf_verify tls-ktls-randrw-128k "$(trid "$addr" 4421 "$nqn_tls")" -q 4 -o 131072 -w randrw -M 50 -t 3 -H -I "${tls_args[@]}"
# The SHA-384 suite (a 48-byte key, AES-256-GCM in the kernel), presenting a version-1
# identity (NVMe1R02 ... <digest>).
perf_verify tls-ktls-sha384-v1-64k "$(trid "$addr" 4421 "$nqn_tls")" -q 4 -o 65536 -w randrw -M 50 -t 3 \
    --psk "$psk384" --psk-identity-version 1 --hostnqn "$hostnqn_tls384" -c 0x2
tx1=$(tls_stat TlsTxSw) rx1=$(tls_stat TlsRxSw)
cat /proc/net/tls_stat
if grep -n 'kTLS unavailable\|kTLS: the kernel took' "$out/target.log"; then
    fail "the target kept TLS records in OpenSSL with tls.ko loaded"
fi
[ $((tx1 - tx0)) -ge 6 ] && [ $((rx1 - rx0)) -ge 6 ] ||
    fail "kTLS sockets: TlsTxSw $tx0 -> $tx1, TlsRxSw $rx0 -> $rx1; three perf runs of two queues should add 6 each"
[ "$(tls_stat TlsDecryptError)" = 0 ] || fail "the kernel counted TLS decrypt errors: $(tls_stat TlsDecryptError)"
wait_tls_sockets_closed
echo "ok: TLS 1.3 over $addr:4421 verified with records in the kernel (TlsTxSw +$((tx1 - tx0)), TlsRxSw +$((rx1 - rx0)), none left open)"

step "kTLS off: sock_impl_set_options -i ssl --disable-ktls"
"$bin/peerless-rpc" -s "$sock" sock_impl_set_options -i ssl --disable-ktls >/dev/null
"$bin/peerless-rpc" -s "$sock" sock_impl_get_options -i ssl | tee "$out/sock-options.json"
grep -q '"enable_ktls": *false' "$out/sock-options.json" || fail "sock_impl_get_options does not show enable_ktls false"
perf_verify tls-openssl-randrw-4k "$(trid "$addr" 4421 "$nqn_tls")" -q 8 -o 4096 -w randrw -M 50 -t 3 "${tls_args[@]}"
[ "$(tls_stat TlsTxSw)" = "$tx1" ] && [ "$(tls_stat TlsRxSw)" = "$rx1" ] ||
    fail "kTLS sockets counted with kTLS off: TlsTxSw $tx1 -> $(tls_stat TlsTxSw), TlsRxSw $rx1 -> $(tls_stat TlsRxSw)"
echo "ok: with kTLS off the records stayed in OpenSSL (counters unchanged) and I/O verified"

step "SIGTERM to peerless-tgt"
stop_target

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
# Peerless's own verbs layer (spdk-sys's rdma feature) on the same device: RDMA CM with
# NVMe/RDMA private data, SEND both ways, RDMA WRITE and READ checked byte for byte, with
# and without a shared receive queue; a reject decoded; a wrong rkey failing the WRITE,
# flushing what follows and ending the connection on both sides.
loopback=$bin/examples/rdma_loopback
[ -x "$loopback" ] || fail "$loopback is missing: cargo build --release -p spdk-sys --features rdma --example rdma_loopback"
for args in "" "--no-srq" "--size 4194304" "--size 1 --no-srq" "--reject" "--bad-rkey" "--bad-rkey --no-srq"; do
    step "rdma_loopback --addr $addr $args"
    name=rdma_loopback${args// /}
    # shellcheck disable=SC2086 # the flags split on purpose
    "$loopback" --addr "$addr" $args >"$out/$name.log" 2>&1 || { cat "$out/$name.log"; fail "rdma_loopback $args failed"; }
    tail -3 "$out/$name.log"
done
echo "ok: spdk-sys's verbs layer over rxe0: data, reject and a bad rkey as expected"
rdma link delete rxe0

step "done: peerless-tgt in the guest (NVMe/TCP, TLS with and without kTLS), soft-RoCE"
