#!/bin/bash
# Guest job: command deadlines in the user-space NVMe driver, on an emulated SSD that QEMU
# throttles to a few I/Os a second, so that commands queued behind the throttle outlive a
# short deadline. Run it with one throttled SSD and the virtual IOMMU:
#
#   PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="slow0:iops=10" PEERLESS_GUEST_IOMMU=1 \
#       bash ci/guest/run.sh ci/guest/jobs/nvme-timeout.sh
#
# Each step is checked, the first failure ending the job:
#   1. bdev_nvme_set_options: a 500 ms deadline, action reset; slow0 attached over vfio-pci
#      and exported over NVMe/TCP;
#   2. peerless-perf --verify random writes at queue depth 8 (the throttle lets about 5
#      finish in a deadline): the driver logs the overdue commands and resets the
#      controller, what was in flight is submitted again, up to 3 times, then fails; perf
#      ends, with no mismatch; bdev_nvme_get_controllers counts resets and resubmissions;
#   3. detached, action abort, attached again: overdue commands get an Abort (logged with
#      the controller's answer), and perf ends with no mismatch and no more failed I/O
#      than aborts;
#   4. no deadline: perf at depth 4 ends with no error and no mismatch;
#   5. SIGTERM: the target exits 0.
# shellcheck source=/dev/null
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
read -r -a bdfs <<<"${NVME_BDFS:-}"
[ "${#bdfs[@]}" -ge 1 ] || fail "this job needs a throttled SSD: PEERLESS_GUEST_NVME=\"slow0:iops=10\""
bdf=${bdfs[0]}
nqn=nqn.2016-06.io.peerless:nvme-timeout
controller_field() {
    rpc bdev_nvme_get_controllers -n Slow0 | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['ctrlrs'][0]['$1'])"
}
# perf NAME DEPTH: 4 KiB verified random writes through NVMe/TCP for 4 s. It may end with
# failed I/O (exit 1: a command given up on); it must end, and with no mismatch.
perf() {
    local rc=0
    timeout 120 "$bin/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:$nqn ns:1" \
        -q "$2" -o 4096 -w randwrite -t 4 --verify --json >"$out/perf-$1.json" 2>"$out/perf-$1.log" || rc=$?
    [ "$rc" = 0 ] || [ "$rc" = 1 ] || fail "peerless-perf $1 exited $rc: $(tail -3 "$out/perf-$1.log")"
    [ -s "$out/perf-$1.json" ] || fail "peerless-perf $1 printed no summary: $(tail -3 "$out/perf-$1.log")"
    [ "$(json_number "$out/perf-$1.json" mismatches)" = 0 ] || fail "perf $1: mismatches"
    kill -0 "$tgt_pid" 2>/dev/null || fail "peerless-tgt died"
}
attach_and_export() {
    [ "$(rpc bdev_nvme_attach_controller -b Slow0 -t PCIe -a "$bdf")" = Slow0n1 ] || fail "attach Slow0"
    rpc nvmf_subsystem_add_ns "$nqn" Slow0n1 >/dev/null
}

step "huge pages and the target"
hugepages_setup 128
cat >/tmp/tgt.json <<JSON
{"subsystems": [{"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}]}]}
JSON
start_target /tmp/tgt.json
rpc nvmf_create_subsystem "$nqn" -a -s PEERLESSTIMEOUT1 >/dev/null
rpc nvmf_subsystem_add_listener "$nqn" -t tcp -a 127.0.0.1 -s 4420 >/dev/null

step "a 500 ms deadline, action reset; ${bdf} attached over vfio-pci"
nvme_bind_vfio "$bdf"
rpc bdev_nvme_set_options --timeout-us 500000 --action-on-timeout reset >/dev/null
attach_and_export
echo "ok: Slow0n1 exported with a 500 ms command deadline"

step "overdue commands reset the controller"
perf reset 8
resets=$(controller_field resets)
resubmitted=$(controller_field resubmitted_ios)
errors=$(json_number "$out/perf-reset.json" errors)
[ "$resets" -ge 1 ] || fail "no reset counted: $(grep -c 'past their deadline' "$out/target.log") deadline reports logged"
[ "$resubmitted" -ge 1 ] || fail "$resets resets, but no I/O counted as submitted again"
grep -q "outlived its deadline; resetting the controller" "$out/target.log" || fail "the deadline reset is not logged"
# Every command at depth 8 outlives the deadline, so the resets go on while perf runs:
# an I/O is submitted again after each of 3 resets, then fails (the host may retry it).
echo "ok: $resets resets on deadlines, $resubmitted I/Os submitted again, $errors given up after 3 resets; perf ended, no mismatch"

step "action abort: overdue commands are aborted"
rpc nvmf_subsystem_remove_ns "$nqn" 1 >/dev/null
rpc bdev_nvme_detach_controller Slow0 >/dev/null
rpc bdev_nvme_set_options --timeout-us 500000 --action-on-timeout abort >/dev/null
attach_and_export
# The commands the resets took back may still sit in QEMU's throttle: let them drain.
sleep 8
perf abort 8
aborts=$(grep -c "past its deadline; aborting it" "$out/target.log" || true)
[ "$aborts" -ge 1 ] || fail "no command was aborted"
kept=$(grep -c "the controller did not abort command" "$out/target.log" || true)
errors=$(json_number "$out/perf-abort.json" errors)
# A command the controller aborts fails back to the host (Command Abort Requested); one
# it keeps completes late.
[ "$errors" -le "$aborts" ] || fail "perf saw $errors errors, more than the $aborts aborts"
echo "ok: $aborts aborts sent, $kept kept by the controller; perf ended with $errors failed I/Os and no mismatch"

step "no deadline: every I/O completes, verified"
rpc nvmf_subsystem_remove_ns "$nqn" 1 >/dev/null
rpc bdev_nvme_detach_controller Slow0 >/dev/null
rpc bdev_nvme_set_options --timeout-us 0 >/dev/null
attach_and_export
sleep 8
perf clean 4
[ "$(json_number "$out/perf-clean.json" errors)" = 0 ] || fail "perf clean: I/O errors"
echo "ok: $(json_number "$out/perf-clean.json" iops) IOPS at depth 4 with no deadline: no error, no mismatch"

step "SIGTERM"
stop_target
step "done: command deadlines, with reset and with abort"
