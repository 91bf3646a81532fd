#!/bin/bash
# Guest job: the user-space NVMe driver recovering from faults, on the lab's emulated SSDs.
# Run it with two SSDs (the first with a 64 MiB CMB) and the virtual IOMMU:
#
#   PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="cmb0:cmb=64 peer0" PEERLESS_GUEST_IOMMU=1 \
#       bash ci/guest/run.sh ci/guest/jobs/nvme-faults.sh
#
# Each step is checked, the first failure ending the job:
#   1. both SSDs attached (cmb0 over uio_pci_generic, peer0 over vfio-pci) and exported
#      over NVMe/TCP;
#   2. controller reset under I/O: peerless-perf --verify random writes on both
#      namespaces (4 KiB QD16 and 1 MiB QD8) while bdev_nvme_reset_controller resets
#      each controller 6 times. What was in flight is submitted again on the new queues,
#      so perf (which counts any failed I/O as an error) finishes with no error and no
#      mismatch; bdev_nvme_get_controllers counts the resets; an unknown controller and a
#      wrong cntlid are refused;
#   3. hot-remove under I/O: cmb0 (the uio route) is removed from the bus
#      (/sys/bus/pci/devices/BDF/remove) while perf writes to it and perf --verify writes
#      to peer0: the target logs the removal naming the BDF, Nvme0n1 leaves bdev_get_bdevs
#      and the subsystem, Nvme0 leaves bdev_nvme_get_controllers, the perf on the removed
#      namespace ends (with errors) instead of hanging, and peer0's run is verified clean;
#   4. hot-remove of peer0 (the VFIO route) under I/O: the kernel's remove waits for the
#      device; the target gets VFIO's device request, detaches the controller (shutting
#      it down, CC.SHN) and closes it, and the remove completes;
#   5. SIGTERM: the target exits 0.
# shellcheck source=/dev/null
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
read -r -a bdfs <<<"${NVME_BDFS:-}"
read -r -a names <<<"${NVME_NAMES:-}"
[ "${#bdfs[@]}" -ge 2 ] || fail "this job needs two SSDs: PEERLESS_GUEST_NVME=\"cmb0:cmb=64 peer0\""
uio_bdf=${bdfs[0]}
vfio_bdf=${bdfs[1]}
nqn=nqn.2016-06.io.peerless:nvme-faults
# perf NS SIZE DEPTH SECONDS NAME [--verify]: peerless-perf random writes in the background; its pid in $perf_pid.
perf() {
    local ns=$1 size=$2 depth=$3 secs=$4 name=$5
    shift 5
    "$bin/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:$nqn ns:$ns" \
        -q "$depth" -o "$size" -w randwrite -t "$secs" "$@" --json >"$out/perf-$name.json" 2>"$out/perf-$name.log" &
    perf_pid=$!
}
# check_perf PID NAME: the run exited 0 with I/O counted, no error, no mismatch.
check_perf() {
    local rc=0
    wait "$1" || rc=$?
    [ "$rc" = 0 ] || fail "peerless-perf $2 exited $rc: $(tail -3 "$out/perf-$2.log")"
    [ "$(json_number "$out/perf-$2.json" errors)" = 0 ] || fail "perf $2: I/O errors"
    [ "$(json_number "$out/perf-$2.json" mismatches)" = 0 ] || fail "perf $2: mismatches"
    echo "ok: perf $2: $(json_number "$out/perf-$2.json" iops) IOPS, verified, no error"
}
resets_of() {
    rpc bdev_nvme_get_controllers -n "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["ctrlrs"][0]["resets"])'
}

step "huge pages and the target"
hugepages_setup 256
cat >/tmp/tgt.json <<EOF
{"subsystems": [{"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "max_io_size": 1048576}}]}]}
EOF
start_target /tmp/tgt.json

step "attach ${names[0]} over uio_pci_generic and ${names[1]} over vfio-pci, export both"
nvme_bind_uio "$uio_bdf"
nvme_bind_vfio "$vfio_bdf"
[ "$(rpc bdev_nvme_attach_controller -b Nvme0 -t PCIe -a "$uio_bdf")" = Nvme0n1 ] || fail "attach Nvme0"
[ "$(rpc bdev_nvme_attach_controller -b Nvme1 -t PCIe -a "$vfio_bdf")" = Nvme1n1 ] || fail "attach Nvme1"
rpc nvmf_create_subsystem "$nqn" -a -s PEERLESSFAULTS01 >/dev/null
rpc nvmf_subsystem_add_ns "$nqn" Nvme0n1 >/dev/null
rpc nvmf_subsystem_add_ns "$nqn" Nvme1n1 >/dev/null
rpc nvmf_subsystem_add_listener "$nqn" -t tcp -a 127.0.0.1 -s 4420 >/dev/null
echo "ok: Nvme0n1 and Nvme1n1 exported"

step "reset refusals"
expect_refusal "does not exist" rpc bdev_nvme_reset_controller Nvme9
expect_refusal "cntlid 999" rpc bdev_nvme_reset_controller Nvme0 -c 999

step "bdev_nvme_reset_controller 6 times each under verified I/O"
perf 1 4096 16 12 reset-ns1 --verify
pid1=$perf_pid
perf 2 1048576 8 12 reset-ns2 --verify
pid2=$perf_pid
sleep 3
for round in 1 2 3 4 5 6; do
    for ctrlr in Nvme0 Nvme1; do
        rpc bdev_nvme_reset_controller "$ctrlr" || fail "reset $round of $ctrlr"
        echo "ok: $ctrlr reset ($round)"
    done
    sleep 1
done
check_perf "$pid1" reset-ns1
check_perf "$pid2" reset-ns2
[ "$(resets_of Nvme0)" = 6 ] || fail "Nvme0 counts $(resets_of Nvme0) resets, not 6"
[ "$(resets_of Nvme1)" = 6 ] || fail "Nvme1 counts $(resets_of Nvme1) resets, not 6"
[ "$(grep -c "nvme $uio_bdf: reset done" "$out/target.log")" = 6 ] || fail "not 6 resets of $uio_bdf logged"
rpc bdev_nvme_get_controllers >"$out/controllers-after-resets.json"
resubmitted=$(python3 -c 'import json,sys; print(sum(c["ctrlrs"][0]["resubmitted_ios"] for c in json.load(open(sys.argv[1]))))' "$out/controllers-after-resets.json")
# Under TCG the emulated SSDs finish a command in microseconds while the TCP side takes
# milliseconds, so a reset often finds nothing in flight: counted, not required.
echo "ok: $resubmitted I/Os were in flight at the resets and submitted again"
echo "ok: 12 resets under I/O, nothing lost, nothing corrupted"

step "hot-remove of ${names[0]} ($uio_bdf) under I/O"
perf 1 4096 16 10 removed
removed_pid=$perf_pid
perf 2 4096 16 10 survivor --verify
survivor_pid=$perf_pid
sleep 3
echo 1 >"/sys/bus/pci/devices/$uio_bdf/remove"
for _ in $(seq 100); do
    grep -q "nvme $uio_bdf: hot-removed" "$out/target.log" && break
    sleep 0.1
done
grep "nvme $uio_bdf: hot-removed" "$out/target.log" || fail "no removal of $uio_bdf logged within 10 s"
kill -0 "$tgt_pid" 2>/dev/null || fail "peerless-tgt died at the removal"
for _ in $(seq 50); do
    rpc bdev_get_bdevs -b Nvme0n1 >/dev/null 2>&1 || break
    sleep 0.1
done
rpc bdev_get_bdevs -b Nvme0n1 >/dev/null 2>&1 && fail "Nvme0n1 is still listed after the removal"
rpc bdev_nvme_get_controllers -n Nvme0 >/dev/null 2>&1 && fail "Nvme0 is still listed after the removal"
rpc nvmf_get_subsystems >"$out/subsystems-after-removal.json"
python3 - "$out/subsystems-after-removal.json" "$nqn" <<'EOF' || fail "the subsystem's namespaces after the removal"
import json, sys
sub = [s for s in json.load(open(sys.argv[1])) if s["nqn"] == sys.argv[2]][0]
assert [ns["bdev_name"] for ns in sub["namespaces"]] == ["Nvme1n1"], sub["namespaces"]
EOF
check_perf "$survivor_pid" survivor
rc=0
for _ in $(seq 300); do kill -0 "$removed_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$removed_pid" 2>/dev/null && fail "perf on the removed namespace still runs 30 s on"
wait "$removed_pid" || rc=$?
echo "ok: perf on the removed namespace ended (exit $rc): $(tail -1 "$out/perf-removed.log")"
echo "ok: $uio_bdf removed under I/O; Nvme0n1 gone from the bdevs and the subsystem; Nvme1n1 verified"

step "hot-remove of ${names[1]} ($vfio_bdf, VFIO) under I/O"
# vfio-pci's remove waits until the device is closed, after signalling the device
# request: the target detaches the controller (shutting it down) and closes it.
perf 2 4096 16 6 removed-vfio
removed_pid=$perf_pid
sleep 2
timeout 60 sh -c "echo 1 >/sys/bus/pci/devices/$vfio_bdf/remove" &
remove_pid=$!
for _ in $(seq 300); do
    [ -e "/sys/bus/pci/devices/$vfio_bdf" ] || break
    sleep 0.1
done
[ -e "/sys/bus/pci/devices/$vfio_bdf" ] && fail "$vfio_bdf is still there 30 s after its remove began"
wait "$remove_pid" || fail "the remove of $vfio_bdf failed"
grep "nvme $vfio_bdf: hot-removed" "$out/target.log" || fail "no removal of $vfio_bdf logged"
grep -q "nvme $vfio_bdf: shut down" "$out/target.log" || fail "no shutdown notice for $vfio_bdf"
rpc bdev_get_bdevs -b Nvme1n1 >/dev/null 2>&1 && fail "Nvme1n1 is still listed after the removal"
rc=0
wait "$removed_pid" || rc=$?
echo "ok: $vfio_bdf released to the kernel's remove; perf on it ended (exit $rc)"

step "SIGTERM"
stop_target
step "done: resets and a hot-remove under I/O"
