#!/bin/bash
# Guest job: namespace changes reach the user-space NVMe driver through asynchronous events
# (NVMe Base 2.0 §5.2). Run it with one SSD in an NVM subsystem of its own with two
# namespaces, the second detached, and the virtual IOMMU:
#
#   PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="aer0:ns=2" PEERLESS_GUEST_IOMMU=1 \
#       bash ci/guest/run.sh ci/guest/jobs/nvme-aer.sh
#
# Each step is checked, the first failure ending the job:
#   1. attach over vfio-pci: only Aer0n1; bdev_nvme_send_cmd's Identify Controller answers
#      with the serial and a successful completion; its refusals name the problem;
#   2. a SMART temperature warning (Set Features Temperature Threshold through
#      bdev_nvme_send_cmd) logged, its log page read so it clears;
#   3. Namespace Attachment (admin 15h, select 0) of namespace 2 through bdev_nvme_send_cmd:
#      QEMU raises Namespace Attribute Changed, the driver reads log page 04h and Aer0n2
#      appears; peerless-perf --verify on it over NVMe/TCP;
#   4. under verified I/O on Aer0n1, namespace 2 detached (select 1): Aer0n2 goes away
#      (and with it its NVMe-oF namespace) while the I/O on Aer0n1 runs on unharmed;
#   5. attached and detached again: five events on the four AERs QEMU allows, so each
#      AER was posted again after its event; then a controller reset and attached again:
#      Aer0n2 back (the AERs armed again after the reset);
#   6. detach and a clean stop.
# shellcheck source=/dev/null
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
read -r -a bdfs <<<"${NVME_BDFS:-}"
[ "${#bdfs[@]}" -ge 1 ] || fail "this job needs an SSD with two namespaces: PEERLESS_GUEST_NVME=\"aer0:ns=2\""
bdf=${bdfs[0]}
nqn=nqn.2016-06.io.peerless:nvme-aer
# sqe OPCODE NSID CDW10: a submission queue entry, URL-safe base64.
sqe() {
    python3 -c 'import base64, struct, sys
op, nsid, cdw10 = (int(a, 0) for a in sys.argv[1:])
print(base64.urlsafe_b64encode(struct.pack("<BBHI32xI20x", op, 0, 0, nsid, cdw10)).decode())' "$@"
}
# sqe_cdw11 OPCODE CDW10 CDW11: one with no namespace.
sqe_cdw11() {
    python3 -c 'import base64, struct, sys
op, cdw10, cdw11 = (int(a, 0) for a in sys.argv[1:])
print(base64.urlsafe_b64encode(struct.pack("<BBHI32xII16x", op, 0, 0, 0, cdw10, cdw11)).decode())' "$@"
}
# cpl_status FILE: "SCT SC" of bdev_nvme_send_cmd's completion.
cpl_status() {
    python3 -c 'import base64, json, struct, sys
cpl = base64.urlsafe_b64decode(json.load(open(sys.argv[1]))["cpl"])
status = struct.unpack("<4I", cpl)[3] >> 16
print(status >> 9 & 7, status >> 1 & 0xff)' "$1"
}
# ns_attachment SELECT: attach (0) or detach (1) namespace 2 to/from our controller.
ns_attachment() {
    local list
    list=$(python3 -c 'import base64, struct, sys
print(base64.urlsafe_b64encode(struct.pack("<HH", 1, int(sys.argv[1])) + bytes(4092)).decode())' "$cntlid")
    rpc bdev_nvme_send_cmd -n Aer0 -t admin -r h2c -c "$(sqe 0x15 2 "$1")" -d "$list" >"$out/attachment-$1.json"
    [ "$(cpl_status "$out/attachment-$1.json")" = "0 0" ] ||
        fail "namespace attachment (select $1) failed: $(cat "$out/attachment-$1.json")"
}
has_bdev() { rpc bdev_get_bdevs -b "$1" >/dev/null 2>&1; }
# wait_bdev NAME present|absent: the driver follows the event within a few health periods.
wait_bdev() {
    local deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if has_bdev "$1"; then [ "$2" = present ] && return 0; else [ "$2" = absent ] && return 0; fi
        sleep 0.2
    done
    fail "bdev $1 not $2 30 s after the namespace change"
}
perf() { # NSID SECONDS SIZE LOG
    "$bin/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:$nqn ns:$1" \
        -q 8 -o "$3" -w randwrite -t "$2" --verify --json >"$4.json" 2>"$4.log"
}

step "huge pages and the target"
hugepages_setup 128
cat >/tmp/tgt.json <<EOF
{"subsystems": [{"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}]}]}
EOF
start_target /tmp/tgt.json

step "attach $bdf over vfio-pci: one namespace of two"
nvme_bind_vfio "$bdf"
[ "$(rpc bdev_nvme_attach_controller -b Aer0 -t PCIe -a "$bdf")" = Aer0n1 ] || fail "attach Aer0: not only Aer0n1"
has_bdev Aer0n2 && fail "Aer0n2 exists before namespace 2 is attached"
rpc bdev_nvme_get_controllers -n Aer0 | tee "$out/controllers.json"
cntlid=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0]["ctrlrs"][0]["cntlid"])' "$out/controllers.json")
if grep -E "no asynchronous events|does not report namespace changes|asynchronous event configuration" "$out/target.log"; then
    fail "AERs not armed as asked"
fi
rpc bdev_nvme_send_cmd -n Aer0 -t admin -r c2h -c "$(sqe 0x06 0 1)" -D 4096 >"$out/identify.json"
[ "$(cpl_status "$out/identify.json")" = "0 0" ] || fail "Identify Controller through bdev_nvme_send_cmd"
python3 - "$out/identify.json" <<'EOF' || fail "Identify Controller's data"
import base64, json, sys
data = base64.urlsafe_b64decode(json.load(open(sys.argv[1]))["data"])
assert len(data) == 4096 and data[4:24].decode().strip() == "aer0", data[4:24]
assert data[259] >= 0 and int.from_bytes(data[92:96], "little") >> 8 & 1, "OAES lacks namespace notices"
EOF
echo "ok: Identify Controller through bdev_nvme_send_cmd (serial aer0, namespace notices supported)"
expect_refusal "only admin commands" rpc bdev_nvme_send_cmd -n Aer0 -t io -r c2h -c "$(sqe 0x02 1 0)" -D 512
expect_refusal "I/O queues are the driver's" rpc bdev_nvme_send_cmd -n Aer0 -t admin -r h2c -c "$(sqe 0x01 0 0)"
expect_refusal "at most 4096" rpc bdev_nvme_send_cmd -n Aer0 -t admin -r c2h -c "$(sqe 0x06 0 1)" -D 8192
expect_refusal "does not exist" rpc bdev_nvme_send_cmd -n Nope -t admin -r c2h -c "$(sqe 0x06 0 1)" -D 4096

step "a SMART temperature warning: logged, its log page read"
# Set Features Temperature Threshold (04h), the composite's over threshold: below QEMU's
# 323 K the warning comes on and the controller raises a SMART / Health event; back to
# its 343 K default after.
rpc bdev_nvme_send_cmd -n Aer0 -t admin -r h2c -c "$(sqe_cdw11 0x09 0x04 0x100)" >"$out/temperature.json"
[ "$(cpl_status "$out/temperature.json")" = "0 0" ] || fail "set temperature threshold: $(cat "$out/temperature.json")"
deadline=$((SECONDS + 30))
until grep -q "SMART: temperature threshold" "$out/target.log"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "no SMART temperature event logged 30 s after the threshold went down"
    sleep 0.2
done
grep -m1 "SMART: temperature threshold" "$out/target.log"
rpc bdev_nvme_send_cmd -n Aer0 -t admin -r h2c -c "$(sqe_cdw11 0x09 0x04 0x157)" >/dev/null

step "namespace 2 attached through bdev_nvme_send_cmd: Aer0n2 appears"
rpc nvmf_create_subsystem "$nqn" -a -s PEERLESSAER00001 >/dev/null
rpc nvmf_subsystem_add_ns "$nqn" Aer0n1 -n 1 >/dev/null
rpc nvmf_subsystem_add_listener "$nqn" -t tcp -a 127.0.0.1 -s 4420 >/dev/null
ns_attachment 0
wait_bdev Aer0n2 present
grep -m1 "namespace 2 appeared" "$out/target.log" || fail "no log line for namespace 2"
# Into a file first: under pipefail, grep -q leaving at its first match can end rpc with
# SIGPIPE mid-output and fail the step though the name was there.
rpc bdev_nvme_get_controllers -n Aer0 >"$out/controllers-n2.json"
grep -q '"Aer0n2"' "$out/controllers-n2.json" || fail "get_controllers does not list Aer0n2: $(cat "$out/controllers-n2.json")"
rpc nvmf_subsystem_add_ns "$nqn" Aer0n2 -n 2 >/dev/null
perf 2 2 131072 "$out/perf-n2" || fail "peerless-perf --verify on Aer0n2 (see $out/perf-n2.log)"
echo "ok: Aer0n2: $(json_number "$out/perf-n2.json" iops) IOPS, verified"

step "namespace 2 detached under I/O on namespace 1: Aer0n2 goes, Aer0n1 serves on"
perf 1 12 4096 "$out/perf-n1" &
perf_pid=$!
sleep 3
ns_attachment 1
wait_bdev Aer0n2 absent
grep -m1 "namespace 2 went away" "$out/target.log" || fail "no log line for namespace 2 going away"
rpc nvmf_get_subsystems | python3 -c "import json, sys
ns = [s for s in json.load(sys.stdin) if s['nqn'] == '$nqn'][0]['namespaces']
assert [n['bdev_name'] for n in ns] == ['Aer0n1'], ns" || fail "the NVMe-oF namespace of Aer0n2 is still there"
wait "$perf_pid" || fail "peerless-perf --verify on Aer0n1 while namespace 2 went away (see $out/perf-n1.log)"
echo "ok: Aer0n1: $(json_number "$out/perf-n1.json" iops) IOPS, verified, through the change"
rpc bdev_nvme_get_controllers -n Aer0 | python3 -c 'import json, sys
assert json.load(sys.stdin)[0]["ctrlrs"][0]["bdevs"] == ["Aer0n1"]' || fail "get_controllers after the detach"

step "namespace 2 attached and detached again: events 4 and 5 on 4 AERs, so each was posted again"
ns_attachment 0
wait_bdev Aer0n2 present
ns_attachment 1
wait_bdev Aer0n2 absent
echo "ok: Aer0n2 came and went again"

step "controller reset, then namespace 2 attached again: the AERs were armed again after it"
rpc bdev_nvme_reset_controller Aer0
ns_attachment 0
wait_bdev Aer0n2 present
echo "ok: Aer0n2 back after the reset"

step "detach and stop"
rpc nvmf_delete_subsystem "$nqn" >/dev/null
rpc bdev_nvme_detach_controller Aer0
for _ in $(seq 100); do has_bdev Aer0n1 || has_bdev Aer0n2 || break; sleep 0.1; done
has_bdev Aer0n1 && fail "Aer0n1 still there after the detach"
stop_target
echo "PASS"
