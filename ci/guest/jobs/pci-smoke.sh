#!/bin/bash
# Guest job: core::mem::pci against the lab's emulated SSDs, through the nvme_identify
# example (Identify Controller in safe code over the module alone). Not in ci/test.sh:
# the bdev nvme driver's job covers the same ground end to end; this one isolates the
# core pieces. Run it with two SSDs and the virtual IOMMU, sharing a folder that holds the
# example (release build) beside the three binaries run.sh insists on:
#
#   cargo build --release -p peerless-core --example nvme_identify
#   PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="cmb0:cmb=64 peer0" PEERLESS_GUEST_IOMMU=1 \
#       PEERLESS_GUEST_BIN=FOLDER bash ci/guest/run.sh ci/guest/jobs/pci-smoke.sh
#
# Checks: uio_pci_generic with PhysTable (physical addresses from pagemap); vfio-pci with
# IovaTable (IOVAs of its own, below 2^39); IOVA = VA, working on a 48-bit IOMMU and
# refused with the error naming aw-bits on a 39-bit one (PEERLESS_GUEST_IOMMU_AW_BITS=39);
# the device-open refusals naming the problem.
# shellcheck source=/dev/null
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
read -r -a bdfs <<<"${NVME_BDFS:-}"
[ "${#bdfs[@]}" -ge 2 ] || fail "this job needs two SSDs: PEERLESS_GUEST_NVME=\"cmb0:cmb=64 peer0\""
identify="$bin/nvme_identify"
[ -x "$identify" ] || fail "no $identify: build the example and share its folder (PEERLESS_GUEST_BIN)"

step "refusals before binding"
modprobe -a vfio-pci vfio_iommu_type1
"$identify" "${bdfs[1]}" vfio >"$out/unbound.txt" 2>&1 && fail "an unbound function was opened"
grep -q "is bound to no driver" "$out/unbound.txt" || fail "unbound: $(cat "$out/unbound.txt")"
echo "ok: $(cat "$out/unbound.txt")"

step "uio_pci_generic, physical addresses"
hugepages_setup 64
nvme_bind_uio "${bdfs[0]}"
"$identify" "${bdfs[0]}" uio | tee "$out/uio.txt" || fail "identify over uio"
grep -q 'serial "cmb0"' "$out/uio.txt" || fail "uio: wrong identify data"

step "vfio-pci, IOVAs of our own"
nvme_bind_vfio "${bdfs[1]}"
"$identify" "${bdfs[1]}" vfio | tee "$out/vfio.txt" || fail "identify over vfio"
grep -q 'serial "peer0"' "$out/vfio.txt" || fail "vfio: wrong identify data"
grep -q "config vendor 0x1b36 device 0x0010" "$out/vfio.txt" || fail "vfio: config space read"

# VT-d CAP: MGAW (bits 21:16) + 1 is the widest address the unit translates.
cap=$(cat /sys/class/iommu/dmar0/intel-iommu/cap) || fail "no VT-d unit at /sys/class/iommu/dmar0"
mgaw=$(((0x$cap >> 16 & 0x3f) + 1))
if [ "$mgaw" -ge 48 ]; then
    step "vfio-pci, IOVA = VA on a $mgaw-bit IOMMU"
    "$identify" "${bdfs[1]}" vfio-va | tee "$out/vfio-va.txt" || fail "identify at IOVA = VA"
    grep -q 'serial "peer0"' "$out/vfio-va.txt" || fail "vfio-va: wrong identify data"
else
    step "vfio-pci, IOVA = VA on a $mgaw-bit IOMMU: refused, saying why"
    "$identify" "${bdfs[1]}" vfio-va >"$out/vfio-va.txt" 2>&1 && fail "IOVA = VA mapped on a $mgaw-bit IOMMU"
    cat "$out/vfio-va.txt"
    grep -q "aw-bits=48" "$out/vfio-va.txt" || fail "vfio-va: the error does not name the IOMMU width"
fi

step "a function bound to uio_pci_generic is refused over VFIO"
"$identify" "${bdfs[0]}" vfio >"$out/uio-as-vfio.txt" 2>&1 && fail "a uio-bound function opened over VFIO"
grep -q "is bound to uio_pci_generic, not vfio-pci" "$out/uio-as-vfio.txt" || fail "$(cat "$out/uio-as-vfio.txt")"
echo "ok: $(cat "$out/uio-as-vfio.txt")"
echo "pci-smoke: all checks passed"
