#!/bin/bash
# Guest job: the lab for peerless-tgt's user-space NVMe PCIe driver. Run it with two
# emulated SSDs (the first with a 64 MiB CMB) and the virtual IOMMU:
#
#   PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="cmb0:cmb=64 peer0" PEERLESS_GUEST_IOMMU=1 \
#       bash ci/guest/run.sh ci/guest/jobs/nvme-pcie.sh
#
# It checks, each step failing the job:
#   1. two NVMe functions at /job/env's NVME_BDFS, no kernel driver on them;
#   2. 256 huge pages of 2 MiB, hugetlbfs mounted;
#   3. the first SSD bound to uio_pci_generic (/dev/uioN, /sys/class/uio/uioN), the second
#      to vfio-pci (/dev/vfio/N; needs PEERLESS_GUEST_IOMMU=1);
#   4. both controllers' registers read from user space: VS = 0x00010400 (NVMe 1.4),
#      through sysfs's resource0 for the uio one and through the VFIO device fd for the
#      other, with the IOVA ranges the IOMMU offers (48 bits: run.sh's aw-bits);
#   5. the CMB: the first SSD's is a 64 MiB BAR (CMBLOC/CMBSZ), the second has none;
#   6. DMA (nvme_dma.py, a polled NVMe host in Python): the pattern written and read back
#      over uio from host memory and from the CMB, over VFIO from host memory (128 KiB and
#      4 KiB transfers), and, with the first SSD moved to vfio-pci, from its CMB by bus
#      address behind the IOMMU; each range listed for run.sh's check of the backing files;
#   7. LAB.md's CMB pitfall committed on purpose (PRPs with an IOMMU mapping of the CMB):
#      the first 4 KiB of each transfer come back zeros, and nvme_pattern.py says so.
# Then the place for the driver's tests (marked below). After the guest is off, run.sh
# compares each range the job lists in out/nvme-expect with the backing file.
# shellcheck source=/dev/null
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh

step "the emulated SSDs"
read -r -a bdfs <<<"${NVME_BDFS:-}"
read -r -a names <<<"${NVME_NAMES:-}"
[ "${#bdfs[@]}" -ge 2 ] || fail "this job needs two SSDs: PEERLESS_GUEST_NVME=\"cmb0:cmb=64 peer0\" (got '${NVME_NAMES:-}')"
uio_bdf=${bdfs[0]}
vfio_bdf=${bdfs[1]}
for i in 0 1; do
    dev=/sys/bus/pci/devices/${bdfs[$i]}
    [ -d "$dev" ] || fail "no PCI device ${bdfs[$i]}"
    [ "$(cat "$dev/class")" = 0x010802 ] || fail "${bdfs[$i]} is class $(cat "$dev/class"), not NVMe (0x010802)"
    [ ! -e "$dev/driver" ] || fail "${bdfs[$i]} already has a driver: $(readlink "$dev/driver")"
    echo "ok: ${names[$i]} at ${bdfs[$i]} ($(cat "$dev/vendor"):$(cat "$dev/device")), no driver"
    # The firmware (SeaBIOS) may have enabled it: a driver must expect CC.EN=1.
    echo "   as found at boot: $(nvme_regs "${bdfs[$i]}" sysfs | grep -E '^(CC|CSTS)=' | tr '\n' ' ')"
done
grep -q '^nvme ' /proc/modules && fail "the kernel nvme driver is loaded"
echo "ok: the kernel nvme driver is not loaded"
if [ -d /sys/class/iommu ] && [ -n "$(ls /sys/class/iommu)" ]; then
    for u in /sys/class/iommu/*; do
        # VT-d CAP: MGAW (bits 21:16) + 1 is the widest guest address the unit translates.
        cap=$(cat "$u/intel-iommu/cap")
        echo "ok: IOMMU $(basename "$u"): cap 0x$cap, MGAW $(((0x$cap >> 16 & 0x3f) + 1)) bits, $(find /sys/kernel/iommu_groups -mindepth 1 -maxdepth 1 | wc -l) groups"
    done
fi

step "huge pages"
hugepages_setup 256

step "bind: ${names[0]} to uio_pci_generic, ${names[1]} to vfio-pci"
nvme_bind_uio "$uio_bdf"
uio=$(basename "$(nvme_uio_dev "$uio_bdf")")
[ -d "/sys/class/uio/$uio" ] || fail "no /sys/class/uio/$uio"
echo "ok: /sys/class/uio/$uio: name $(cat "/sys/class/uio/$uio/name")"
nvme_bind_vfio "$vfio_bdf"
vfio_grp=$(nvme_vfio_group "$vfio_bdf")
[ -c /dev/vfio/vfio ] || fail "no /dev/vfio/vfio (the container node)"
ls -l /dev/vfio

step "registers from user space"
nvme_regs "$uio_bdf" sysfs | tee "$out/regs-${names[0]}.txt"
grep -qx 'VS=0x00010400' "$out/regs-${names[0]}.txt" || fail "${names[0]}: VS is not 0x00010400 through resource0"
echo "ok: ${names[0]} (uio) VS = 0x00010400 (NVMe 1.4) through sysfs resource0"
nvme_regs "$vfio_bdf" vfio | tee "$out/regs-${names[1]}.txt"
grep -qx 'VS=0x00010400' "$out/regs-${names[1]}.txt" || fail "${names[1]}: VS is not 0x00010400 through VFIO"
grep -qx 'IOVA_BITS=48' "$out/regs-${names[1]}.txt" || fail "${names[1]}: the IOMMU's IOVA range is not 48 bits wide"
echo "ok: ${names[1]} (vfio, $vfio_grp) VS = 0x00010400 through the VFIO device fd; IOVA 48 bits"

step "controller memory buffers"
nvme_cmb_info "$uio_bdf" | tee "$out/cmb-${names[0]}.txt"
grep -q '^CMB=BAR2 offset=0 size=67108864 ' "$out/cmb-${names[0]}.txt" || fail "${names[0]}: no 64 MiB CMB in BAR2"
grep -qx 'CMBMSC=0x00000000 (as found)' "$out/cmb-${names[0]}.txt" || fail "${names[0]}: CMBMSC was not 0 at boot"
echo "ok: ${names[0]} has a 64 MiB CMB in BAR2, CMBMSC 0 until a driver sets it"
# vfio-pci owns the second function's BARs now; its sysfs mmap still reads them while no
# VFIO user has it open.
nvme_cmb_info "$vfio_bdf" | tee "$out/cmb-${names[1]}.txt"
grep -qx 'CMB=none' "$out/cmb-${names[1]}.txt" || fail "${names[1]}: a CMB where none was asked for"
echo "ok: ${names[1]} has no CMB"

step "DMA on both routes (nvme_dma.py, the lab's own polled host)"
# Data written to namespace 1 and read back here; run.sh compares the backing files after
# power-off (out/nvme-expect).
dma() {
    local name=$1 offset=$2 len=$3 seed=$4
    shift 4
    python3 /job/nvme_dma.py "$@" --offset "$offset" --len "$len" --seed "$seed" | tee "$out/dma-$seed.txt"
    grep -q "read back: 0 transfers differ" "$out/dma-$seed.txt" || fail "$name: the data read back differs"
    echo "$name $offset $len $seed" >>"$out/nvme-expect"
    echo "ok: $name: $len B at $offset written and read back ($*)"
}
dma "${names[0]}" $((1 << 20)) $((4 << 20)) 11 "$uio_bdf" uio
dma "${names[0]}" $((8 << 20)) $((4 << 20)) 12 "$uio_bdf" uio --cmb --transfer $((64 << 10))
dma "${names[1]}" $((1 << 20)) $((4 << 20)) 13 "$vfio_bdf" vfio
dma "${names[1]}" $((16 << 20)) $((1 << 20)) 14 "$vfio_bdf" vfio --transfer 4096
# The CMB behind the IOMMU: the same SSD moved to vfio-pci, PRPs with the BAR's bus address.
nvme_bind_vfio "$uio_bdf"
dma "${names[0]}" $((32 << 20)) $((4 << 20)) 15 "$uio_bdf" vfio --cmb

step "the CMB pitfall, on purpose: PRPs with an IOMMU mapping of the CMB"
# LAB.md: the controller takes an address that is not its CMB's bus address for host
# memory, DMAs through the IOMMU to its own BAR and returns zeros for the first 4 KiB
# of each transfer, with a success status. This keeps that fact, and the checker's
# signature for it, tested. The range read back through host memory is checked here.
rc=0
python3 /job/nvme_dma.py "$uio_bdf" vfio --offset $((48 << 20)) --len $((1 << 20)) --seed 16 \
    --cmb-iova 0x100000000 --readback-host /tmp/pitfall.raw | tee "$out/dma-pitfall.txt" || rc=$?
[ "$rc" = 1 ] || fail "the pitfall did not show: nvme_dma.py exited $rc (see above)"
rc=0
python3 /job/nvme_pattern.py check /tmp/pitfall.raw --offset $((48 << 20)) --len $((1 << 20)) --seed 16 \
    --transfer $((128 << 10)) | tee "$out/pitfall-check.txt" || rc=$?
[ "$rc" = 1 ] && grep -q "SIGNATURE first-4KiB-zeros: 8 transfer" "$out/pitfall-check.txt" ||
    fail "nvme_pattern.py did not flag all 8 transfers with the first-4KiB-zeros signature"
echo "ok: the pitfall reproduces and nvme_pattern.py flags it in all 8 transfers"

# ===================================================================================
# THE DRIVER'S TESTS GO HERE (peerless-tgt's user-space NVMe PCIe driver).
# Start peerless-tgt with a config whose bdev subsystem holds
#   {"method": "bdev_nvme_attach_controller",
#    "params": {"name": "cmb0", "trtype": "PCIe", "traddr": "$uio_bdf"}} (and peer0 at
# $vfio_bdf), export the bdevs over NVMe/TCP on 127.0.0.1, connect the guest's nvme-tcp
# host (nvme connect -t tcp), and write the pattern through it, e.g.
#   python3 /job/nvme_pattern.py write - --offset 1M --len 16M --seed 7 |
#       dd of=/dev/nvme0n1 bs=128K seek=1M oflag=seek_bytes,direct iflag=fullblock
# then list each range for run.sh's check after power-off (NAME OFFSET LEN SEED):
#   echo "cmb0 1048576 16777216 7" >>"$out/nvme-expect"
# Also read the pattern back in the guest (python3 /job/nvme_pattern.py check /dev/nvme0n1
# --offset 1M --len 16M --seed 7), with the CMB on and off, and both routes.
# ===================================================================================

step "done"
