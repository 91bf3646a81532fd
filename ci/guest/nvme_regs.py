#!/usr/bin/env python3
"""Reads an NVMe controller's registers from user space in the guest (run.sh copies it to
/job/nvme_regs.py when PEERLESS_GUEST_NVME names devices; jobs/target-lib.sh's nvme_*
helpers call it). No driver of ours is involved: this proves the access routes the
lab offers and shows what a driver will find.

    nvme_regs.py sysfs BDF   BAR0 through /sys/bus/pci/devices/BDF/resource0 (mmap; works
                             unbound or under uio_pci_generic)
    nvme_regs.py vfio BDF    BAR0 through VFIO: the device's group in a type-1 container,
                             the device fd, BAR0's region read with pread; also the IOVA
                             ranges and page sizes the IOMMU offers
    nvme_regs.py cmb BDF     the BARs (sysfs), CAP.CMBS and the CMB's location and size

Each prints KEY=VALUE lines (hex) a job can grep. Registers: NVMe 1.4 §3.1 (CAP 0x0,
VS 0x8, CC 0x14, CSTS 0x1c, CMBLOC 0x38, CMBSZ 0x3c, CMBMSC 0x50).
"""
import fcntl
import mmap
import os
import struct
import sys

CAP, VS, CC, CSTS, CMBLOC, CMBSZ, CMBMSC = 0x0, 0x8, 0x14, 0x1C, 0x38, 0x3C, 0x50
CMBMSC_CRE = 1  # Capabilities Registers Enabled: CMBLOC/CMBSZ read non-zero (NVMe 1.4 §3.1.23)

# <linux/vfio.h>: _IO(';', 100 + n)
VFIO_GET_API_VERSION = 0x3B64
VFIO_CHECK_EXTENSION = 0x3B65
VFIO_SET_IOMMU = 0x3B66
VFIO_GROUP_GET_STATUS = 0x3B67
VFIO_GROUP_SET_CONTAINER = 0x3B68
VFIO_GROUP_GET_DEVICE_FD = 0x3B6A
VFIO_DEVICE_GET_REGION_INFO = 0x3B6C
VFIO_IOMMU_GET_INFO = 0x3B70
VFIO_TYPE1v2_IOMMU = 3
VFIO_GROUP_FLAGS_VIABLE = 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_INFO_CAPS = 2


def sysfs(bdf, name):
    return f"/sys/bus/pci/devices/{bdf}/{name}"


class Bar0Mmap:
    """BAR0 mapped from sysfs; registers read and written with single 32/64-bit accesses
    (memoryview casts), as the controller wants, never byte by byte."""

    def __init__(self, bdf):
        self.fd = os.open(sysfs(bdf, "resource0"), os.O_RDWR | os.O_SYNC)
        # The whole BAR (its size is the file's): registers and doorbells.
        self.map = mmap.mmap(self.fd, os.fstat(self.fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.u32 = memoryview(self.map).cast("I")
        self.u64 = memoryview(self.map).cast("Q")

    def read32(self, off):
        return self.u32[off // 4]

    def read64(self, off):
        return self.u64[off // 8]

    def write32(self, off, value):
        self.u32[off // 4] = value


def bars(bdf):
    """[(index, start, size, flags)] of the memory BARs, from sysfs's resource file."""
    out = []
    with open(sysfs(bdf, "resource")) as f:
        for index, line in enumerate(f):
            if index > 5:
                break
            start, end, flags = (int(x, 16) for x in line.split())
            if end:
                out.append((index, start, end - start + 1, flags))
    return out


def print_regs(cap, vs, cc, csts):
    print(f"CAP=0x{cap:016x}")
    print(f"VS=0x{vs:08x}")
    print(f"CC=0x{cc:08x}")
    print(f"CSTS=0x{csts:08x}")
    print(f"MQES={(cap & 0xFFFF) + 1} DSTRD={(cap >> 32) & 0xF} MPSMIN={4 << ((cap >> 48) & 0xF)}KiB "
          f"CMBS={(cap >> 57) & 1} TO={((cap >> 24) & 0xFF) * 500}ms")


def cmd_sysfs(bdf):
    bar = Bar0Mmap(bdf)
    print_regs(bar.read64(CAP), bar.read32(VS), bar.read32(CC), bar.read32(CSTS))


def cmd_cmb(bdf):
    for index, start, size, flags in bars(bdf):
        kind = ("64-bit" if flags & 0x4 else "32-bit") + (" prefetchable" if flags & 0x8 else "")
        print(f"BAR{index}=0x{start:x} size={size} ({size >> 20} MiB) {kind}" if size >= 1 << 20
              else f"BAR{index}=0x{start:x} size={size} {kind}")
    bar = Bar0Mmap(bdf)
    cap = bar.read64(CAP)
    print(f"CAP.CMBS={(cap >> 57) & 1}")
    msc = bar.read32(CMBMSC)
    print(f"CMBMSC=0x{msc:08x} (as found)")
    # CMBLOC/CMBSZ read 0 until CMBMSC.CRE is set; set it for the read and put the value back.
    if not msc & CMBMSC_CRE:
        bar.write32(CMBMSC, msc | CMBMSC_CRE)
    loc, sz = bar.read32(CMBLOC), bar.read32(CMBSZ)
    if not msc & CMBMSC_CRE:
        bar.write32(CMBMSC, msc)
    print(f"CMBLOC=0x{loc:08x} CMBSZ=0x{sz:08x}")
    if not sz:
        print("CMB=none")
        return
    unit = 4096 << (4 * ((sz >> 8) & 0xF))
    size = (sz >> 12) * unit
    offset = (loc >> 12) * unit
    caps = [name for bit, name in enumerate(("SQS", "CQS", "LISTS", "RDS", "WDS")) if sz >> bit & 1]
    print(f"CMB=BAR{loc & 7} offset={offset} size={size} ({size >> 20} MiB) supports={','.join(caps)}")


def ioctl_int(fd, request, arg=0):
    return fcntl.ioctl(fd, request, arg)


def cmd_vfio(bdf):
    group = os.path.basename(os.readlink(sysfs(bdf, "iommu_group")))
    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    print(f"VFIO_API={ioctl_int(container, VFIO_GET_API_VERSION)}")
    if not ioctl_int(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU):
        sys.exit("the VFIO container offers no type-1 v2 IOMMU")
    gfd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    status = bytearray(struct.pack("<II", 8, 0))
    fcntl.ioctl(gfd, VFIO_GROUP_GET_STATUS, status)
    if not struct.unpack("<II", status)[1] & VFIO_GROUP_FLAGS_VIABLE:
        sys.exit(f"IOMMU group {group} is not viable: another device in it is bound to a host driver")
    print(f"GROUP={group}")
    fcntl.ioctl(gfd, VFIO_GROUP_SET_CONTAINER, struct.pack("<i", container))
    ioctl_int(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)
    # struct vfio_iommu_type1_info, then its capability chain (IOVA ranges).
    info = bytearray(struct.pack("<IIQII", 24, 0, 0, 0, 0))
    fcntl.ioctl(container, VFIO_IOMMU_GET_INFO, info)
    argsz = struct.unpack_from("<I", info)[0]
    if argsz > 24:
        info = bytearray(struct.pack("<IIQII", argsz, 0, 0, 0, 0) + bytes(argsz - 24))
        fcntl.ioctl(container, VFIO_IOMMU_GET_INFO, info)
    _, flags, pgsizes, cap_off, _ = struct.unpack_from("<IIQII", info)
    print(f"IOVA_PGSIZES=0x{pgsizes:x}")
    while flags & VFIO_IOMMU_INFO_CAPS and cap_off:
        cap_id, _, nxt = struct.unpack_from("<HHI", info, cap_off)
        if cap_id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            count = struct.unpack_from("<I", info, cap_off + 8)[0]
            ranges = [struct.unpack_from("<QQ", info, cap_off + 16 + 16 * i) for i in range(count)]
            print("IOVA_RANGES=" + " ".join(f"0x{a:x}-0x{b:x}" for a, b in ranges))
            top = max(b for _, b in ranges)
            print(f"IOVA_BITS={top.bit_length()}")
        cap_off = nxt
    dev = fcntl.ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))
    # struct vfio_region_info for index 0 (BAR0).
    region = bytearray(struct.pack("<IIIIQQ", 32, 0, 0, 0, 0, 0))
    fcntl.ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, region)
    _, rflags, _, _, size, offset = struct.unpack("<IIIIQQ", region)
    print(f"BAR0_REGION size={size} offset=0x{offset:x} flags=0x{rflags:x}")

    def reg(off):
        return int.from_bytes(os.pread(dev, 4, offset + off), "little")

    # CAP as two dword reads, which NVMe allows for a 64-bit register.
    print_regs(reg(CAP) | reg(CAP + 4) << 32, reg(VS), reg(CC), reg(CSTS))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("sysfs", "vfio", "cmb"):
        sys.exit(__doc__)
    {"sysfs": cmd_sysfs, "vfio": cmd_vfio, "cmb": cmd_cmb}[sys.argv[1]](sys.argv[2])


if __name__ == "__main__":
    main()
