//! The VFIO user API (Linux include/uapi/linux/vfio.h): ioctl numbers, the structures
//! they take, and the one place that calls `ioctl` on VFIO descriptors.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `VFIO_TYPE` is `';'`, requests are numbered from `VFIO_BASE` = 100 and built with
/// `_IO` (no size or direction bits: VFIO passes `argsz` inside the structures).
const fn vfio_io(nr: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + nr)
}

pub(super) const VFIO_API_VERSION: i32 = 0;
pub(super) const VFIO_TYPE1_IOMMU: u64 = 1;
pub(super) const VFIO_TYPE1V2_IOMMU: u64 = 3;

pub(super) const VFIO_GET_API_VERSION: u64 = vfio_io(0);
pub(super) const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
pub(super) const VFIO_SET_IOMMU: u64 = vfio_io(2);
pub(super) const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
pub(super) const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
pub(super) const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
pub(super) const VFIO_DEVICE_GET_INFO: u64 = vfio_io(7);
pub(super) const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
pub(super) const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
pub(super) const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
pub(super) const VFIO_DEVICE_RESET: u64 = vfio_io(11);
pub(super) const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
pub(super) const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);

pub(super) const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
pub(super) const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;
pub(super) const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub(super) const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
pub(super) const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub(super) const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
pub(super) const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
pub(super) const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
pub(super) const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
pub(super) const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
pub(super) const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;

/// vfio-pci's fixed region indexes: BAR0..BAR5, then ROM, then config space.
pub(super) const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
pub(super) const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// vfio-pci's interrupt indexes: INTx, MSI, MSI-X, error, then the device request, which
/// the kernel signals when it wants the device back (an unbind or a remove).
pub(super) const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
pub(super) const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
pub(super) const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub(super) const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub(super) const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// `struct vfio_irq_set` carrying one eventfd.
#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct VfioIrqSetOne {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) index: u32,
    pub(super) start: u32,
    pub(super) count: u32,
    pub(super) eventfd: i32,
}

/// `struct vfio_irq_set` with no data (disabling an index), or the header that a list of
/// eventfds follows.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct VfioIrqSetHeader {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) index: u32,
    pub(super) start: u32,
    pub(super) count: u32,
}

/// `struct vfio_irq_info`: how many interrupts an index has.
#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct VfioIrqInfo {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) index: u32,
    pub(super) count: u32,
}

#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct VfioGroupStatus {
    pub(super) argsz: u32,
    pub(super) flags: u32,
}

/// As of Linux 6.1 (`cap_offset` since 4.6; the kernel accepts any `argsz` from 16).
#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct VfioDeviceInfo {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) num_regions: u32,
    pub(super) num_irqs: u32,
    pub(super) cap_offset: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct VfioRegionInfo {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) index: u32,
    pub(super) cap_offset: u32,
    pub(super) size: u64,
    pub(super) offset: u64,
}

/// `struct vfio_info_cap_header`: `next` is an offset from the start of the info struct.
pub(super) const CAP_HEADER_BYTES: usize = 8;
/// `struct vfio_region_info_cap_sparse_mmap` before its areas: header, nr_areas, reserved.
pub(super) const SPARSE_MMAP_AREAS_AT: usize = 16;
/// `struct vfio_region_sparse_mmap_area`: offset and size, both u64.
pub(super) const SPARSE_MMAP_AREA_BYTES: usize = 16;

#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct VfioIommuType1DmaMap {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) vaddr: u64,
    pub(super) iova: u64,
    pub(super) size: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct VfioIommuType1DmaUnmap {
    pub(super) argsz: u32,
    pub(super) flags: u32,
    pub(super) iova: u64,
    pub(super) size: u64,
}

/// The `argsz` of a structure: its size.
pub(super) fn argsz<T>() -> u32 {
    u32::try_from(size_of::<T>()).expect("VFIO structures are small")
}

/// An ioctl whose argument is an integer (or none).
pub(super) fn ioctl_value(fd: BorrowedFd<'_>, request: u64, value: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: the requests passed here (GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU,
    // DEVICE_RESET) read at most their integer argument and touch no caller memory.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, value) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// An ioctl whose argument points at `arg`, a `#[repr(C)]` structure of the uapi (or a
/// buffer at least `argsz` bytes long that starts with one).
///
/// # Safety
/// `request` must be one that reads and writes at most `size_of_val(arg)` bytes at `arg`
/// (VFIO bounds its accesses by the `argsz` the caller set, which must not exceed it),
/// or, for `VFIO_GROUP_SET_CONTAINER`, reads one `c_int`.
pub(super) unsafe fn ioctl_ptr<T: ?Sized>(
    fd: BorrowedFd<'_>,
    request: u64,
    arg: &mut T,
) -> std::io::Result<libc::c_int> {
    // SAFETY: `arg` is a live, exclusive borrow of the size the caller's contract names.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T as *mut libc::c_void) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and request numbers against linux/vfio.h (`_IO(';', 100 + n)`).
    #[test]
    fn layouts_and_request_numbers_match_the_uapi() {
        assert_eq!(size_of::<VfioGroupStatus>(), 8);
        assert_eq!(size_of::<VfioDeviceInfo>(), 20);
        assert_eq!(size_of::<VfioRegionInfo>(), 32);
        assert_eq!(std::mem::offset_of!(VfioRegionInfo, size), 16);
        assert_eq!(std::mem::offset_of!(VfioRegionInfo, offset), 24);
        assert_eq!(size_of::<VfioIommuType1DmaMap>(), 32);
        assert_eq!(std::mem::offset_of!(VfioIommuType1DmaMap, vaddr), 8);
        assert_eq!(size_of::<VfioIommuType1DmaUnmap>(), 24);
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_CHECK_EXTENSION, 0x3b65);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(size_of::<VfioIrqSetHeader>(), 20);
        assert_eq!(size_of::<VfioIrqInfo>(), 16);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        // `struct vfio_irq_set` is 20 bytes; one eventfd follows as its data.
        assert_eq!(size_of::<VfioIrqSetOne>(), 24);
        assert_eq!(std::mem::offset_of!(VfioIrqSetOne, eventfd), 20);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
    }
}
