#!/bin/bash
# Guest job (run.sh with PEERLESS_GUEST_TARGET=guest): Peerless's own NVMe/RDMA host
# (peerless-perf and the fio engine built with the rdma feature) against peerless-tgt's
# NVMe/RDMA transport, both inside the guest over soft-RoCE (rxe0 on $GUEST_NETDEV). Each
# step is checked, the first failure ending the job:
#   1. the shared binaries link libibverbs (built with the rdma feature); rxe0 up;
#   2. peerless-tgt with an RDMA transport and a RAM namespace, RDMA listeners on
#      $GUEST_ADDR:4420 for the subsystem and the discovery subsystem;
#   3. peerless-perf identify -r 'trtype:rdma ...': with the subsystem named, and without
#      (the discovery log read over RDMA, then each subsystem);
#   4. peerless-perf --verify over RDMA: 4 KiB and 128 KiB, QD1 and QD32, random reads
#      and writes, a few seconds each; no I/O error, no mismatched block, I/Os counted;
#   5. every queue the host opened is gone on the target afterwards (nvmf_get_stats);
#   6. a connect to a port with no RDMA listener fails with a message, not a hang;
#   7. the fio engine (libpeerless_fio.so, in the shared folder) with trtype=rdma:
#      random writes verified with crc32c at 4 KiB and 128 KiB, QD32;
#   8. a host frozen (SIGSTOP) under 128 KiB reads with a 2 s keep-alive timeout: the
#      target ends its association on its own; a host killed (SIGKILL) under 128 KiB
#      writes, with the target's RDMA READs of its memory in flight: in both cases every
#      queue goes and every data buffer comes back to the pool;
#   9. SIGTERM while peerless-perf runs at QD32 over RDMA: the target exits 0 and logs
#      its orderly stop, and peerless-perf sees its queues go, ending non-zero with a
#      reason within 15 s instead of waiting on receives that will never complete.
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
addr=$GUEST_ADDR
netdev=$GUEST_NETDEV
nqn=nqn.2016-06.io.peerless:rdma-host
serial=PEERLESSRDMAHOST
num_blocks=131072
# The data buffers of each class; no per-poll-group cache, so a pool back to this many
# means every buffer came home.
buffers=1024
trid() { echo "trtype:rdma adrfam:IPv4 traddr:$1 trsvcid:$2${3:+ subnqn:$3}"; }

step "the shared binaries"
for b in peerless-tgt peerless-perf peerless-rpc libpeerless_fio.so; do
    [ -e "$bin/$b" ] || fail "$bin/$b is missing (ci/test.sh builds them with --features peerless-tools/rdma)"
    ldd "$bin/$b" >"$out/ldd-$b.txt"
    if grep 'not found' "$out/ldd-$b.txt"; then fail "$b needs shared libraries the guest image lacks"; fi
done
for b in peerless-tgt peerless-perf libpeerless_fio.so; do
    grep -q libibverbs "$out/ldd-$b.txt" || fail "$b was not built with the rdma feature (no libibverbs)"
done
echo "ok: binaries and the fio engine built with NVMe/RDMA"

step "soft-RoCE: rdma_rxe on $netdev"
rxe_up "$netdev"

step "peerless-tgt with NVMe/RDMA on $addr:4420"
listener() {
    printf '{"method": "nvmf_subsystem_add_listener", "params": {"nqn": "%s", "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": "%s", "trsvcid": "4420"}}}' "$1" "$addr"
}
cat >/tmp/target.json <<JSON
{"subsystems": [
 {"subsystem": "bdev", "config": [
   {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": $num_blocks, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
   {"method": "nvmf_create_transport", "params": {"trtype": "RDMA", "num_shared_buffers": $buffers, "buf_cache_size": 0,
     "min_kato": 1000}},
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn", "serial_number": "$serial",
     "model_number": "Peerless RDMA host", "allow_any_host": true}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"bdev_name": "Malloc0"}}},
   $(listener "$nqn"),
   $(listener discovery)]}]}
JSON
TARGET_FLAGS="-L nvmf" start_target /tmp/target.json
grep -q "NVMe/RDMA target listening on $addr:4420" "$out/target.log" || fail "no RDMA listener on $addr:4420"
echo "ok: peerless-tgt pid $tgt_pid listening over RDMA"

step "peerless-perf identify over RDMA, the subsystem named"
"$bin/peerless-perf" identify -r "$(trid "$addr" 4420 "$nqn")" >"$out/identify.txt" 2>&1 ||
    { cat "$out/identify.txt"; fail "peerless-perf identify over RDMA failed"; }
grep -q "$serial" "$out/identify.txt" || { cat "$out/identify.txt"; fail "identify does not show serial $serial"; }
grep -q "Peerless RDMA host" "$out/identify.txt" || fail "identify does not show the model number"
echo "ok: identify over RDMA shows serial $serial"

step "peerless-perf identify over RDMA through the discovery log"
"$bin/peerless-perf" identify -r "$(trid "$addr" 4420)" >"$out/identify-discovery.txt" 2>&1 ||
    { cat "$out/identify-discovery.txt"; fail "peerless-perf identify through discovery over RDMA failed"; }
grep -q "$nqn" "$out/identify-discovery.txt" || fail "the discovery log read over RDMA does not list $nqn"
grep -q "$serial" "$out/identify-discovery.txt" || fail "identify after discovery does not show serial $serial"
echo "ok: discovery and identify over RDMA"

# mem_field NAME: a number of the RDMA pool in mem_get_stats.
mem_field() { "$bin/peerless-rpc" -s "$sock" mem_get_stats | tr -d ' \n' | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }
# released WHY: every queue gone on the target within 20 s, both buffer classes full.
released() {
    for _ in $(seq 100); do
        "$bin/peerless-rpc" -s "$sock" nvmf_get_stats >"$out/stats.json"
        grep -q '"current_io_qpairs": *[1-9]\|"current_admin_qpairs": *[1-9]' "$out/stats.json" || break
        sleep 0.2
    done
    if grep -q '"current_io_qpairs": *[1-9]\|"current_admin_qpairs": *[1-9]' "$out/stats.json"; then
        cat "$out/stats.json"
        fail "the target still holds queues 20 s after $1"
    fi
    for class in small_free large_free; do
        free=$(mem_field "$class")
        [ "$free" = "$buffers" ] || fail "mem_get_stats $class is $free after $1, not $buffers"
    done
    echo "ok: every queue gone and both pools full ($buffers) after $1"
}
# load NAME ARGS...: peerless-perf in the background over RDMA for a minute; sets perf_pid.
load() {
    local name=$1
    shift
    "$bin/peerless-perf" -r "$(trid "$addr" 4420 "$nqn")" -t 60 -c 0x2 "$@" >"$out/perf-$name.log" 2>&1 &
    perf_pid=$!
    sleep 4
    kill -0 "$perf_pid" 2>/dev/null || { cat "$out/perf-$name.log"; fail "peerless-perf ($name) ended early"; }
}

# perf_verify NAME ARGS...: a verified run over RDMA (--verify: every block written with a
# pattern naming its LBA and the seed, then read back and compared); peerless-perf exits
# non-zero on an I/O error or a mismatched block, and the summary must count I/Os.
perf_verify() {
    local name=$1 rc=0 ios errors mismatches iops mibps
    shift
    step "peerless-perf --verify over RDMA: $*"
    "$bin/peerless-perf" -r "$(trid "$addr" 4420 "$nqn")" --verify --json "$@" >"$out/perf-$name.json" \
        2>"$out/perf-$name.log" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$out/perf-$name.log"; fail "peerless-perf ($name) exited $rc"; }
    ios=$(json_number "$out/perf-$name.json" ios)
    errors=$(json_number "$out/perf-$name.json" errors)
    mismatches=$(json_number "$out/perf-$name.json" mismatches)
    iops=$(json_number "$out/perf-$name.json" iops)
    mibps=$(json_number "$out/perf-$name.json" mibps)
    [ -n "$ios" ] && [ "$ios" -gt 0 ] || fail "perf ($name) did no I/O: $(cat "$out/perf-$name.json")"
    [ "$errors" = 0 ] && [ "$mismatches" = 0 ] ||
        fail "perf ($name): $errors I/O errors, $mismatches mismatched blocks"
    grep -q "RDMA (addr:$addr" "$out/perf-$name.log" || fail "perf ($name) does not report an RDMA device"
    printf 'ok: %s I/Os verified, %.0f IOPS, %.2f MiB/s (TCG and rxe: functional, not a benchmark)\n' \
        "$ios" "$iops" "$mibps"
}
perf_verify randrw-4k-qd1 -q 1 -o 4096 -w randrw -M 50 -t 3 -c 0x2
perf_verify randrw-4k-qd32 -q 32 -o 4096 -w randrw -M 50 -t 3 -c 0x2
perf_verify randrw-128k-qd1 -q 1 -o 131072 -w randrw -M 50 -t 3 -c 0x2
perf_verify randrw-128k-qd32 -q 32 -o 131072 -w randrw -M 50 -t 3 -c 0x2

step "the target holds no queue of the host's once it left"
released "peerless-perf exited"

step "no RDMA listener on port 4430: a clear failure"
rc=0
timeout 60 "$bin/peerless-perf" identify -r "$(trid "$addr" 4430 "$nqn")" >"$out/identify-refused.txt" 2>&1 || rc=$?
cat "$out/identify-refused.txt"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "identify against no listener exited $rc (0: it worked; 124: it hung)"
grep -q 'peerless-perf: .*refused' "$out/identify-refused.txt" || fail "identify against no listener does not say it was refused"
echo "ok: refused with a message (exit $rc)"

# fio_verify NAME BS: the fio engine over RDMA, random writes verified with crc32c at QD32.
fio_verify() {
    step "fio engine peerless_nvmf, trtype=rdma, verify=crc32c, bs=$2, QD32"
    LD_PRELOAD="$bin/libpeerless_fio.so" fio --name="rdma-$1" --ioengine=peerless_nvmf --thread=1 \
        --filename="trtype=rdma adrfam=IPv4 traddr=$addr trsvcid=4420 ns=1" \
        --rw=randwrite --bs="$2" --iodepth=32 --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --output="$out/fio-$1.txt" || { cat "$out/fio-$1.txt"; fail "fio ($1) over RDMA failed"; }
    grep -q 'err= 0' "$out/fio-$1.txt" || { cat "$out/fio-$1.txt"; fail "fio ($1) reported an error"; }
    grep -E 'write:|read:' "$out/fio-$1.txt"
}
fio_verify 4k 4k
fio_verify 128k 128k

step "a host frozen under 128 KiB reads: its keep-alive expires, the target ends it"
expired_before=$(grep -c "due to keep alive timeout" "$out/target.log" || true)
load frozen --kato-ms 2000 -q 32 -o 131072 -w randread
kill -STOP "$perf_pid"
released "the host froze (KATO 2 s)"
grep "due to keep alive timeout" "$out/target.log" | tail -1
[ "$(grep -c "due to keep alive timeout" "$out/target.log")" -gt "$expired_before" ] || fail "the target logged no keep-alive expiry"
kill -KILL "$perf_pid"
wait "$perf_pid" 2>/dev/null || true

step "a host killed in the middle of 128 KiB writes (the target's RDMA READs in flight)"
load killed -q 32 -o 131072 -w randwrite
kill -KILL "$perf_pid"
wait "$perf_pid" 2>/dev/null || true
released "the host was killed mid-write"

step "SIGTERM to peerless-tgt while peerless-perf runs at QD32 over RDMA"
"$bin/peerless-perf" -r "$(trid "$addr" 4420 "$nqn")" -q 32 -o 4096 -w randrw -M 50 -t 60 -c 0x2 \
    >"$out/perf-sigterm.log" 2>&1 &
perf_pid=$!
sleep 4
kill -0 "$perf_pid" 2>/dev/null || { cat "$out/perf-sigterm.log"; fail "peerless-perf ended before the SIGTERM"; }
stop_target
grep "shutdown: transport RDMA" "$out/target.log"
grep -q "shutdown: transport RDMA: every data buffer back ($buffers small and $buffers large free" "$out/target.log" ||
    fail "not every data buffer came back before the target exited"
for _ in $(seq 150); do kill -0 "$perf_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$perf_pid" 2>/dev/null; then
    kill -KILL "$perf_pid"
    fail "peerless-perf still runs 15 s after its target stopped"
fi
rc=0
wait "$perf_pid" || rc=$?
tail -3 "$out/perf-sigterm.log"
[ "$rc" -ne 0 ] || fail "peerless-perf exited 0 though its target went away"
grep -q 'peerless-perf: ' "$out/perf-sigterm.log" || fail "peerless-perf ended without a reason"
echo "ok: peerless-perf ended (exit $rc) with a reason once the target was gone"
rdma link delete rxe0
step "done: Peerless's NVMe/RDMA host against peerless-tgt over soft-RoCE"
