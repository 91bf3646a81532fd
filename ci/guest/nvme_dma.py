#!/usr/bin/env python3
"""The lab's own check that DMA works on both user-space routes, before any driver of
ours is blamed: a minimal polled NVMe host (one admin and one I/O queue) that writes
nvme_pattern.py's pattern to namespace 1 and reads it back. run.sh copies it to /job.

    nvme_dma.py BDF uio|vfio --offset BYTES --len BYTES --seed S [--transfer BYTES]
                [--cmb | --cmb-iova IOVA] [--readback-host FILE]

uio: the device bound to uio_pci_generic, memory from hugetlbfs (/dev/hugepages, 2 MiB
pages are physically contiguous), bus addresses from /proc/self/pagemap. vfio: the device
bound to vfio-pci, the same memory mapped into the IOMMU (VFIO_IOMMU_MAP_DMA) at IOVA
0x40000000. --cmb puts the data buffers in the controller's own CMB: CMBMSC = CBA | CMSE |
CRE with CBA the BAR's bus address, and exactly those addresses in the PRPs (NVMe 1.4
§3.1.23; LAB.md's pitfall). --cmb-iova (vfio) commits that pitfall on purpose: the CMB's
BAR mapped into the IOMMU at IOVA and that IOVA in the PRPs. --readback-host reads back
through host memory and saves what came back. The controller is disabled again at the end.
Prints what it did; exit 1 when a command fails or the data read back differs.
"""
import argparse
import ctypes
import fcntl
import mmap
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nvme_pattern  # noqa: E402
import nvme_regs as regs  # noqa: E402

PAGE = 4096
AQA, ASQ, ACQ, CC, CSTS = 0x24, 0x28, 0x30, 0x14, 0x1C
QDEPTH = 32
IOVA_BASE = 0x4000_0000
HUGE = 2 << 20
VFIO_IOMMU_MAP_DMA = 0x3B71
VFIO_CONFIG_REGION = 7


def die(msg):
    sys.exit(f"FAIL: {msg}")


class DmaMemory:
    """One 2 MiB huge page per allocation arena; bump allocation in 4 KiB pages."""

    def __init__(self, name, to_bus):
        path = f"/dev/hugepages/nvme-dma-{name}-{os.getpid()}"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.unlink(path)
        os.ftruncate(fd, HUGE)
        self.map = mmap.mmap(fd, HUGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)
        self.map[0:HUGE] = bytes(HUGE)  # fault the page in before asking where it is
        self.vaddr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.bus = to_bus(self.vaddr, HUGE)
        self.next = 0

    def alloc(self, size):
        size = (size + PAGE - 1) // PAGE * PAGE
        if self.next + size > HUGE:
            die("out of DMA memory (one 2 MiB page)")
        off, self.next = self.next, self.next + size
        return off, self.bus + off


def pagemap_phys(vaddr, _size):
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(vaddr // PAGE * 8)
        entry = struct.unpack("<Q", f.read(8))[0]
    if not entry >> 63 or not entry & ((1 << 55) - 1):
        die("pagemap gives no frame (not root, or the page is not present)")
    return (entry & ((1 << 55) - 1)) * PAGE + vaddr % PAGE


class UioDevice:
    def __init__(self, bdf):
        self.bdf = bdf
        self.bar = regs.Bar0Mmap(bdf)
        self.read32, self.write32 = self.bar.read32, self.bar.write32
        self.to_bus = pagemap_phys
        with open(regs.sysfs(bdf, "config"), "r+b") as f:
            f.seek(4)
            cmd = struct.unpack("<H", f.read(2))[0]
            f.seek(4)
            f.write(struct.pack("<H", cmd | 0x6))  # memory space + bus master

    def cmb_map(self, index):
        fd = os.open(regs.sysfs(self.bdf, f"resource{index}"), os.O_RDWR | os.O_SYNC)
        return mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


class VfioDevice:
    def __init__(self, bdf):
        self.bdf = bdf
        group = os.path.basename(os.readlink(regs.sysfs(bdf, "iommu_group")))
        self.container = os.open("/dev/vfio/vfio", os.O_RDWR)
        self.group = os.open(f"/dev/vfio/{group}", os.O_RDWR)
        fcntl.ioctl(self.group, regs.VFIO_GROUP_SET_CONTAINER, struct.pack("<i", self.container))
        fcntl.ioctl(self.container, regs.VFIO_SET_IOMMU, regs.VFIO_TYPE1v2_IOMMU)
        self.dev = fcntl.ioctl(self.group, regs.VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))
        self.regions = {i: self.region(i) for i in (0, 2, VFIO_CONFIG_REGION)}
        cfg = self.regions[VFIO_CONFIG_REGION][1]
        cmd = struct.unpack("<H", os.pread(self.dev, 2, cfg + 4))[0]
        os.pwrite(self.dev, struct.pack("<H", cmd | 0x6), cfg + 4)
        self.iova = IOVA_BASE

    def region(self, index):
        info = bytearray(struct.pack("<IIIIQQ", 32, 0, index, 0, 0, 0))
        fcntl.ioctl(self.dev, regs.VFIO_DEVICE_GET_REGION_INFO, info)
        _, _, _, _, size, offset = struct.unpack("<IIIIQQ", info)
        return size, offset

    def read32(self, off):
        return struct.unpack("<I", os.pread(self.dev, 4, self.regions[0][1] + off))[0]

    def write32(self, off, value):
        os.pwrite(self.dev, struct.pack("<I", value), self.regions[0][1] + off)

    def to_bus(self, vaddr, size):
        iova, self.iova = self.iova, self.iova + size
        self.map_at(vaddr, iova, size)
        return iova

    def map_at(self, vaddr, iova, size):
        fcntl.ioctl(self.container, VFIO_IOMMU_MAP_DMA, struct.pack("<IIQQQ", 32, 3, vaddr, iova, size))

    def cmb_map(self, index):
        size, offset = self.regions[index]
        return mmap.mmap(self.dev, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)


class Controller:
    def __init__(self, dev):
        self.dev = dev
        self.mem = DmaMemory(dev.bdf.replace(":", "_"), dev.to_bus)
        self.cid = 0
        self.queues = {}
        self.disable()
        self.queues[0] = self.queue(0)
        asq, acq = self.queues[0]["sq_bus"], self.queues[0]["cq_bus"]
        dev.write32(AQA, (QDEPTH - 1) << 16 | (QDEPTH - 1))
        for reg, addr in ((ASQ, asq), (ACQ, acq)):
            dev.write32(reg, addr & 0xFFFFFFFF)
            dev.write32(reg + 4, addr >> 32)
        dev.write32(CC, 4 << 20 | 6 << 16 | 1)  # IOCQES 16 B, IOSQES 64 B, MPS 4 KiB, EN
        self.wait_ready(1)

    def disable(self):
        cc = self.dev.read32(CC)
        if cc & 1:
            print(f"controller found enabled (CC=0x{cc:08x}): disabling it first")
        self.dev.write32(CC, 0)
        self.wait_ready(0)

    def wait_ready(self, want):
        deadline = time.monotonic() + 10
        while (self.dev.read32(CSTS) & 1) != want:
            if self.dev.read32(CSTS) & 2:
                die("controller fatal status (CSTS.CFS)")
            if time.monotonic() > deadline:
                die(f"CSTS.RDY did not become {want}")
            time.sleep(0.001)

    def queue(self, qid):
        sq_off, sq_bus = self.mem.alloc(QDEPTH * 64)
        cq_off, cq_bus = self.mem.alloc(QDEPTH * 16)
        return {"qid": qid, "sq_off": sq_off, "sq_bus": sq_bus, "cq_off": cq_off, "cq_bus": cq_bus,
                "tail": 0, "head": 0, "phase": 1}

    def submit(self, qid, opcode, nsid=0, prp1=0, prp2=0, cdw10=0, cdw11=0, cdw12=0):
        q = self.queues[qid]
        self.cid = (self.cid + 1) & 0xFFFF
        sqe = struct.pack("<IIQQQQIIIIII", opcode | self.cid << 16, nsid, 0, 0, prp1, prp2,
                          cdw10, cdw11, cdw12, 0, 0, 0)
        at = q["sq_off"] + q["tail"] * 64
        self.mem.map[at:at + 64] = sqe
        q["tail"] = (q["tail"] + 1) % QDEPTH
        self.dev.write32(0x1000 + 2 * qid * 4, q["tail"])
        deadline = time.monotonic() + 10
        while True:
            at = q["cq_off"] + q["head"] * 16
            dw0, _, _, status = struct.unpack_from("<IIII", self.mem.map, at)
            if (status >> 16) & 1 == q["phase"]:
                break
            if time.monotonic() > deadline:
                die(f"no completion for opcode 0x{opcode:02x} on queue {qid}")
        q["head"] = (q["head"] + 1) % QDEPTH
        if q["head"] == 0:
            q["phase"] ^= 1
        self.dev.write32(0x1000 + (2 * qid + 1) * 4, q["head"])
        sc = (status >> 17) & 0x7FFF
        if sc:
            die(f"opcode 0x{opcode:02x} on queue {qid}: status 0x{sc:04x} (SCT {sc >> 8}, SC 0x{sc & 0xFF:02x})")
        if status & 0xFFFF != self.cid:
            die(f"completion for command {status & 0xFFFF}, expected {self.cid}")
        return dw0

    def close(self):
        self.dev.write32(CC, 0)
        self.wait_ready(0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bdf")
    p.add_argument("route", choices=("uio", "vfio"))
    p.add_argument("--offset", type=nvme_pattern.size, required=True)
    p.add_argument("--len", type=nvme_pattern.size, required=True, dest="length")
    p.add_argument("--seed", type=nvme_pattern.seed_arg, required=True)
    p.add_argument("--transfer", type=nvme_pattern.size, default=128 << 10)
    p.add_argument("--cmb", action="store_true", help="data buffers in the CMB, PRPs with its bus address")
    p.add_argument("--cmb-iova", type=lambda t: int(t, 0), help="vfio: the CMB mapped at this IOVA and "
                   "the IOVA in the PRPs (LAB.md's pitfall, on purpose)")
    p.add_argument("--readback-host", metavar="FILE", help="read back into host memory and save the "
                   "bytes at their offsets in FILE")
    a = p.parse_args()
    if not PAGE <= a.transfer <= 256 << 10 or a.transfer % PAGE or a.offset % PAGE:
        die("--transfer: 4 KiB .. 256 KiB in pages; --offset page-aligned")
    dev = (UioDevice if a.route == "uio" else VfioDevice)(a.bdf)
    ctrl = Controller(dev)
    mem = ctrl.mem
    ident_off, ident_bus = mem.alloc(PAGE)
    ctrl.submit(0, 0x06, prp1=ident_bus, cdw10=1)
    idc = bytes(mem.map[ident_off:ident_off + PAGE])
    print(f"identify controller: SN '{idc[4:24].decode().strip()}' MN '{idc[24:64].decode().strip()}' MDTS {idc[77]}")
    ctrl.submit(0, 0x06, nsid=1, prp1=ident_bus, cdw10=0)
    idn = bytes(mem.map[ident_off:ident_off + PAGE])
    nsze = struct.unpack_from("<Q", idn, 0)[0]
    lbads = idn[128 + 4 * (idn[26] & 0xF) + 2]
    block = 1 << lbads
    print(f"namespace 1: {nsze} blocks of {block} B")
    if a.offset % block or a.length % block or (a.offset + a.length) // block > nsze:
        die("range outside the namespace or not in its blocks")
    # I/O queue pair 1, physically contiguous, polled (no interrupts).
    ctrl.queues[1] = q = ctrl.queue(1)
    ctrl.submit(0, 0x05, prp1=q["cq_bus"], cdw10=(QDEPTH - 1) << 16 | 1, cdw11=1)
    ctrl.submit(0, 0x01, prp1=q["sq_bus"], cdw10=(QDEPTH - 1) << 16 | 1, cdw11=1 << 16 | 1)
    prp_off, prp_bus = mem.alloc(PAGE)
    host_base, host_bus = mem.alloc(a.transfer)
    if a.cmb or a.cmb_iova is not None:
        size, bar_bus = cmb_enable(dev)
        data_map, data_base, data_bus = dev.cmb_map(2), 0, bar_bus
        print(f"data buffers in the CMB: bus 0x{bar_bus:x} ({size >> 20} MiB)")
        if a.cmb_iova is not None:
            if a.route != "vfio":
                die("--cmb-iova needs the vfio route")
            # LAB.md's pitfall on purpose: the BAR mapped into the IOMMU at another IOVA
            # and that IOVA in the PRPs. The controller does not see its own CMB there.
            dev.map_at(ctypes.addressof(ctypes.c_char.from_buffer(data_map)), a.cmb_iova, size)
            data_bus = a.cmb_iova
            print(f"PRPs carry the CMB's IOMMU mapping at IOVA 0x{data_bus:x}, not its bus address")
    else:
        data_map, data_base, data_bus = mem.map, host_base, host_bus
        print(f"data buffers in host memory: bus 0x{data_bus:x}")

    def io(opcode, at, n, bus):
        if n > PAGE:
            entries = [bus + PAGE * k for k in range(1, (n + PAGE - 1) // PAGE)]
            mem.map[prp_off:prp_off + 8 * len(entries)] = struct.pack(f"<{len(entries)}Q", *entries)
        prp2 = 0 if n <= PAGE else bus + PAGE if n <= 2 * PAGE else prp_bus
        slba = at // block
        ctrl.submit(1, opcode, nsid=1, prp1=bus, prp2=prp2, cdw10=slba & 0xFFFFFFFF,
                    cdw11=slba >> 32, cdw12=n // block - 1)

    chunks = [(at, min(a.transfer, a.offset + a.length - at)) for at in range(a.offset, a.offset + a.length, a.transfer)]
    for at, n in chunks:
        data_map[data_base:data_base + n] = nvme_pattern.blocks(at // 512, n // 512, a.seed)
        io(0x01, at, n, data_bus)
    ctrl.submit(1, 0x00, nsid=1)  # flush
    # Read back into the same kind of buffer, or (--readback-host FILE) into host memory,
    # saved at the same offsets of FILE for nvme_pattern.py check.
    if a.readback_host:
        rd_map, rd_base, rd_bus = mem.map, host_base, host_bus
        dump = open(a.readback_host, "r+b" if os.path.exists(a.readback_host) else "w+b")
    else:
        rd_map, rd_base, rd_bus, dump = data_map, data_base, data_bus, None
    bad = 0
    for at, n in chunks:
        rd_map[rd_base:rd_base + n] = bytes(n)
        io(0x02, at, n, rd_bus)
        got = bytes(rd_map[rd_base:rd_base + n])
        if dump:
            dump.seek(at)
            dump.write(got)
        if got != nvme_pattern.blocks(at // 512, n // 512, a.seed):
            bad += 1
            if bad <= 4:
                zero_head = got[:PAGE] == bytes(PAGE)
                print(f"read back differs at byte {at} (+{n})" + (" (first 4 KiB zeros)" if zero_head else ""))
    if dump:
        dump.close()
    ctrl.close()
    where = " from the CMB" if a.cmb else f" from the CMB at IOVA 0x{a.cmb_iova:x}" if a.cmb_iova is not None else ""
    print(f"wrote {a.length} B in {a.transfer} B transfers with seed {a.seed} via {a.route}{where}; "
          f"read back: {bad} transfers differ")
    return 1 if bad else 0


def cmb_enable(dev):
    """CMBMSC = CBA | CMSE | CRE with CBA the bus address of the CMB's BAR; returns its size and address."""
    with open(regs.sysfs(dev.bdf, "resource")) as f:
        lines = f.read().split("\n")
    start, end, _ = (int(x, 16) for x in lines[2].split())
    # The high half first: the controller takes CBA when the low half sets CMSE.
    dev.write32(regs.CMBMSC + 4, start >> 32)
    dev.write32(regs.CMBMSC, (start & 0xFFFFF000) | 3)
    sz = dev.read32(regs.CMBSZ)
    if not sz:
        die("CMBSZ reads 0 with CMBMSC.CRE set: no CMB")
    return end - start + 1, start


if __name__ == "__main__":
    sys.exit(main())
