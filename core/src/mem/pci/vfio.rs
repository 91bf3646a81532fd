//! VFIO (Linux Documentation/driver-api/vfio.rst): a container holds an IOMMU context,
//! groups (the IOMMU's unit of isolation) attach to it, devices come from their group.
//! Host memory is mapped into the IOMMU at IOVA = VA, as SPDK does in IOVA-as-VA mode, so
//! the registry's bus address of a plain DMA buffer (its virtual address) is right.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::super::{Error, Result};
use super::mmio::Mmio;
use super::sysfs;
use super::vfio_sys::*;
use super::watch::HostMemListener;

const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// A VFIO container: one IOMMU address space shared by the devices opened through it.
#[derive(Debug)]
pub struct VfioContainer {
    fd: OwnedFd,
    iommu_type: u64,
    state: Mutex<ContainerState>,
}

#[derive(Debug, Default)]
struct ContainerState {
    /// Set once the first group is attached (VFIO_SET_IOMMU needs one).
    iommu_set: bool,
    /// Open group descriptors: a group may be opened once, its devices share it.
    groups: HashMap<u32, Arc<OwnedFd>>,
    /// What this container mapped: iova -> (vaddr, len).
    mappings: BTreeMap<u64, (usize, usize)>,
}

fn os_error(path: &str, what: &'static str, source: std::io::Error) -> Error {
    Error::File { path: path.into(), what, source }
}

impl VfioContainer {
    /// Opens /dev/vfio/vfio, checks the API version and type1 (v2 preferred) IOMMU support.
    pub fn open() -> Result<VfioContainer> {
        let file =
            OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(CONTAINER_PATH).map_err(
                |source| {
                    let hint = match source.kind() {
                        std::io::ErrorKind::NotFound => " (modprobe vfio-pci; the kernel needs CONFIG_VFIO)",
                        std::io::ErrorKind::PermissionDenied => " (run as root)",
                        _ => "",
                    };
                    Error::Pci(format!("{CONTAINER_PATH}: open: {source}{hint}"))
                },
            )?;
        let fd = OwnedFd::from(file);
        let version = ioctl_value(fd.as_fd(), VFIO_GET_API_VERSION, 0)
            .map_err(|e| os_error(CONTAINER_PATH, "VFIO_GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION {
            return Err(Error::Pci(format!(
                "{CONTAINER_PATH}: VFIO API version {version}, this code speaks {VFIO_API_VERSION}"
            )));
        }
        let supports =
            |ext: u64| ioctl_value(fd.as_fd(), VFIO_CHECK_EXTENSION, ext as libc::c_ulong).is_ok_and(|rc| rc > 0);
        let iommu_type =
            [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU].into_iter().find(|&t| supports(t)).ok_or_else(|| {
                Error::Pci(format!("{CONTAINER_PATH}: no type1 IOMMU support (modprobe vfio_iommu_type1)"))
            })?;
        Ok(VfioContainer { fd, iommu_type, state: Mutex::new(ContainerState::default()) })
    }

    /// A container with no IOMMU behind it (over /dev/null), for tests of what happens
    /// before any device is attached.
    #[cfg(test)]
    pub(super) fn unattached_for_tests() -> VfioContainer {
        VfioContainer {
            fd: OwnedFd::from(File::open("/dev/null").expect("/dev/null")),
            iommu_type: VFIO_TYPE1V2_IOMMU,
            state: Mutex::new(ContainerState::default()),
        }
    }

    /// The group's descriptor, opened, checked and attached on first use.
    fn attach_group(&self, group: u32) -> Result<Arc<OwnedFd>> {
        let mut state = self.state.lock();
        if let Some(fd) = state.groups.get(&group) {
            return Ok(Arc::clone(fd));
        }
        let path = format!("/dev/vfio/{group}");
        let file =
            OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path).map_err(|source| {
                let hint = match source.raw_os_error() {
                    Some(libc::ENOENT) => " (is the device bound to vfio-pci?)",
                    Some(libc::EBUSY) => " (another process or container holds this group)",
                    Some(libc::EACCES) | Some(libc::EPERM) => " (run as root, or chown the group file)",
                    _ => "",
                };
                Error::Pci(format!("{path}: open: {source}{hint}"))
            })?;
        let fd = OwnedFd::from(file);
        let mut status = VfioGroupStatus { argsz: argsz::<VfioGroupStatus>(), flags: 0 };
        // SAFETY: GET_STATUS writes one `vfio_group_status`, bounded by its argsz.
        unsafe { ioctl_ptr(fd.as_fd(), VFIO_GROUP_GET_STATUS, &mut status) }
            .map_err(|e| os_error(&path, "VFIO_GROUP_GET_STATUS", e))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            let blockers = sysfs::group_blockers(Path::new(sysfs::SYSFS), group);
            return Err(Error::Pci(format!(
                "IOMMU group {group} not viable: other devices in the group are bound to host drivers \
                 ({}); bind every device of /sys/kernel/iommu_groups/{group}/devices to vfio-pci or unbind it",
                if blockers.is_empty() { "see that directory".to_string() } else { blockers.join(", ") }
            )));
        }
        if status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET == 0 {
            let mut container: libc::c_int = self.fd.as_raw_fd();
            // SAFETY: SET_CONTAINER reads one int, the container's descriptor.
            unsafe { ioctl_ptr(fd.as_fd(), VFIO_GROUP_SET_CONTAINER, &mut container) }
                .map_err(|e| os_error(&path, "VFIO_GROUP_SET_CONTAINER", e))?;
        }
        if !state.iommu_set {
            ioctl_value(self.fd.as_fd(), VFIO_SET_IOMMU, self.iommu_type as libc::c_ulong)
                .map_err(|e| os_error(CONTAINER_PATH, "VFIO_SET_IOMMU", e))?;
            state.iommu_set = true;
        }
        let fd = Arc::new(fd);
        state.groups.insert(group, Arc::clone(&fd));
        Ok(fd)
    }

    /// Maps `[vaddr, vaddr + len)` at IOVA `iova`, readable and writable by devices. All
    /// three must be page-aligned. Mapping exactly what this container already mapped there
    /// is not an error; any other overlap is.
    pub fn map_dma(&self, vaddr: usize, iova: u64, len: usize) -> Result<()> {
        let page = super::page_bytes();
        if len == 0 || !vaddr.is_multiple_of(page) || !iova.is_multiple_of(page as u64) || !len.is_multiple_of(page) {
            return Err(Error::Pci(format!(
                "VFIO_IOMMU_MAP_DMA of {vaddr:#x}+{len:#x} at IOVA {iova:#x}: addresses and length must be \
                 non-zero multiples of {page}"
            )));
        }
        let mut state = self.state.lock();
        if !state.iommu_set {
            return Err(Error::Pci(
                "VFIO_IOMMU_MAP_DMA before any device was opened: the IOMMU type is set when the first group attaches"
                    .into(),
            ));
        }
        let mut map = VfioIommuType1DmaMap {
            argsz: argsz::<VfioIommuType1DmaMap>(),
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: len as u64,
        };
        // SAFETY: MAP_DMA reads one `vfio_iommu_type1_dma_map`; the kernel pins the pages
        // of the range, which must stay mapped until `unmap_dma` (DMA buffers unregister,
        // and so unmap here, before their memory goes).
        match unsafe { ioctl_ptr(self.fd.as_fd(), VFIO_IOMMU_MAP_DMA, &mut map) } {
            Ok(_) => {
                state.mappings.insert(iova, (vaddr, len));
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && state.mappings.get(&iova) == Some(&(vaddr, len)) => {
                Ok(())
            }
            Err(e) => {
                let hint = match e.raw_os_error() {
                    Some(libc::EEXIST) => " (it overlaps an existing mapping)",
                    Some(libc::EINVAL) => {
                        " (an IOVA beyond the IOMMU's width is refused: QEMU's intel-iommu needs aw-bits=48 for IOVA = VA)"
                    }
                    Some(libc::ENOMEM) => " (locked memory limit: raise RLIMIT_MEMLOCK, or run as root)",
                    Some(libc::ENOSPC) => " (the container's DMA mapping limit: vfio_iommu_type1 dma_entry_limit)",
                    _ => "",
                };
                Err(Error::Pci(format!("VFIO_IOMMU_MAP_DMA of {vaddr:#x}+{len:#x} at IOVA {iova:#x}: {e}{hint}")))
            }
        }
    }

    /// Unmaps what `map_dma` mapped at `iova` (the whole mapping: type1v2 refuses to
    /// split one).
    pub fn unmap_dma(&self, iova: u64, len: usize) -> Result<()> {
        let mut state = self.state.lock();
        let mut unmap =
            VfioIommuType1DmaUnmap { argsz: argsz::<VfioIommuType1DmaUnmap>(), flags: 0, iova, size: len as u64 };
        // SAFETY: UNMAP_DMA reads one `vfio_iommu_type1_dma_unmap` and writes its size.
        unsafe { ioctl_ptr(self.fd.as_fd(), VFIO_IOMMU_UNMAP_DMA, &mut unmap) }
            .map_err(|e| Error::Pci(format!("VFIO_IOMMU_UNMAP_DMA of IOVA {iova:#x}+{len:#x}: {e}")))?;
        state.mappings.remove(&iova);
        if unmap.size != len as u64 {
            return Err(Error::Pci(format!(
                "VFIO_IOMMU_UNMAP_DMA of IOVA {iova:#x}+{len:#x} unmapped {:#x} bytes",
                unmap.size
            )));
        }
        Ok(())
    }
}

/// A container keeps the IOMMU in step with the registry's Host memory at IOVA = VA:
/// subscribe it with [`super::watch_host_memory`] after the first device is open.
///
/// A region's length is rounded up to a page: the last page may be partly another
/// region's (DPDK heap blocks), whose own mapping then starts on the next page.
impl HostMemListener for VfioContainer {
    fn host_region_added(&self, start: usize, len: usize) -> Result<()> {
        self.map_dma(start, start as u64, len.div_ceil(super::page_bytes()) * super::page_bytes())
    }

    fn host_region_removed(&self, start: usize, len: usize) {
        let len = len.div_ceil(super::page_bytes()) * super::page_bytes();
        if let Err(err) = self.unmap_dma(start as u64, len) {
            crate::log_error!("{err}");
        }
    }
}

/// One PCI function bound to vfio-pci.
#[derive(Debug)]
pub struct VfioDevice {
    pub(super) bdf: String,
    group: u32,
    /// The device descriptor: regions are read, written and mapped at their offsets in it.
    pub(super) fd: File,
    flags: u32,
    num_regions: u32,
    // Dropped after the device fd: a group stays open while a device of it is.
    _group: Arc<OwnedFd>,
    _container: Arc<VfioContainer>,
}

impl VfioDevice {
    /// `bdf` like "0000:00:04.0": finds its IOMMU group in sysfs, opens /dev/vfio/N,
    /// checks it is viable, attaches it to `container` (setting the IOMMU type on first
    /// attach) and gets the device descriptor. Errors say what to do.
    pub fn open(container: &Arc<VfioContainer>, bdf: &str) -> Result<VfioDevice> {
        let group = sysfs::vfio_group_of(Path::new(sysfs::SYSFS), bdf)?;
        let group_fd = container.attach_group(group)?;
        let name = CString::new(bdf).map_err(|_| Error::Pci(format!("{bdf:?}: NUL in a PCI address")))?;
        // SAFETY: GET_DEVICE_FD reads the NUL-terminated name; `name` outlives the call.
        let raw = unsafe { libc::ioctl(group_fd.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD as _, name.as_ptr()) };
        if raw < 0 {
            return Err(Error::Pci(format!(
                "{bdf}: VFIO_GROUP_GET_DEVICE_FD on group {group}: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: `raw` is the fresh descriptor the ioctl returned; nothing else owns it.
        let fd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        let mut info = VfioDeviceInfo { argsz: argsz::<VfioDeviceInfo>(), ..VfioDeviceInfo::default() };
        // SAFETY: GET_INFO writes at most argsz bytes of `vfio_device_info`.
        unsafe { ioctl_ptr(fd.as_fd(), VFIO_DEVICE_GET_INFO, &mut info) }
            .map_err(|e| Error::Pci(format!("{bdf}: VFIO_DEVICE_GET_INFO: {e}")))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 || info.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX {
            return Err(Error::Pci(format!(
                "{bdf}: not a vfio-pci device (flags {:#x}, {} regions)",
                info.flags, info.num_regions
            )));
        }
        Ok(VfioDevice {
            bdf: bdf.to_string(),
            group,
            fd,
            flags: info.flags,
            num_regions: info.num_regions,
            _group: group_fd,
            _container: Arc::clone(container),
        })
    }

    /// An eventfd the kernel signals when it wants the device back (VFIO's device
    /// request: `remove` or an unbind blocks until the user closes the device). Nonblocking;
    /// read it to clear it.
    pub fn request_notifier(&self) -> Result<OwnedFd> {
        let eventfd = super::vfio_irq::eventfd(&self.bdf)?;
        let mut set = VfioIrqSetOne {
            argsz: argsz::<VfioIrqSetOne>(),
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: VFIO_PCI_REQ_IRQ_INDEX,
            start: 0,
            count: 1,
            eventfd: eventfd.as_raw_fd(),
        };
        // SAFETY: SET_IRQS reads `argsz` bytes: the header and one eventfd, all in `set`.
        unsafe { ioctl_ptr(self.fd.as_fd(), VFIO_DEVICE_SET_IRQS, &mut set) }
            .map_err(|e| Error::Pci(format!("{}: VFIO_DEVICE_SET_IRQS (device request): {e}", self.bdf)))?;
        Ok(eventfd)
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    pub fn iommu_group(&self) -> u32 {
        self.group
    }

    fn region_info(&self, index: u32) -> Result<(VfioRegionInfo, Vec<u64>)> {
        if index >= self.num_regions {
            return Err(Error::Pci(format!(
                "{}: region {index} out of range ({} regions)",
                self.bdf, self.num_regions
            )));
        }
        let mut info = VfioRegionInfo { argsz: argsz::<VfioRegionInfo>(), index, ..VfioRegionInfo::default() };
        // SAFETY: GET_REGION_INFO writes at most argsz bytes of `vfio_region_info`.
        unsafe { ioctl_ptr(self.fd.as_fd(), VFIO_DEVICE_GET_REGION_INFO, &mut info) }
            .map_err(|e| Error::Pci(format!("{}: VFIO_DEVICE_GET_REGION_INFO {index}: {e}", self.bdf)))?;
        if info.flags & VFIO_REGION_INFO_FLAG_CAPS == 0 || info.argsz <= argsz::<VfioRegionInfo>() {
            return Ok((info, Vec::new()));
        }
        // The capability chain follows the structure: ask again with room for it (in u64
        // words, so the structure at its start is aligned).
        let words = (info.argsz as usize).div_ceil(8);
        let mut full = vec![0u64; words];
        full[0] = pack((words * 8) as u32, 0);
        full[1] = pack(index, 0);
        // SAFETY: `full` is argsz bytes, 8-aligned, and starts with a `vfio_region_info`
        // whose argsz says how far the kernel may write.
        unsafe { ioctl_ptr(self.fd.as_fd(), VFIO_DEVICE_GET_REGION_INFO, full.as_mut_slice()) }
            .map_err(|e| Error::Pci(format!("{}: VFIO_DEVICE_GET_REGION_INFO {index} with caps: {e}", self.bdf)))?;
        info.cap_offset = unpack(full[1]).1;
        Ok((info, full))
    }

    /// Size of BAR `index` in bytes (0 for an unimplemented BAR).
    pub fn bar_len(&self, index: u32) -> Result<u64> {
        self.check_bar(index)?;
        Ok(self.region_info(index)?.0.size)
    }

    fn check_bar(&self, index: u32) -> Result<()> {
        if index > VFIO_PCI_BAR5_REGION_INDEX {
            return Err(Error::Pci(format!("{}: BAR{index} does not exist (BARs are 0 to 5)", self.bdf)));
        }
        Ok(())
    }

    /// Maps BAR `index` for MMIO, refusing an unimplemented or non-mmappable BAR. Where
    /// vfio-pci excludes part of the BAR from mmap (a sparse-mmap capability, e.g. around
    /// an MSI-X table), the mapping covers the mappable area at offset 0 and
    /// [`Mmio::len`] says how far that is.
    pub fn map_bar(&self, index: u32) -> Result<Mmio> {
        self.check_bar(index)?;
        let (info, caps) = self.region_info(index)?;
        if info.size == 0 {
            return Err(Error::Pci(format!("{}: BAR{index} is not implemented", self.bdf)));
        }
        if info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(Error::Pci(format!(
                "{}: BAR{index} cannot be mmapped (flags {:#x}: an I/O-port BAR, or vfio-pci refuses it)",
                self.bdf, info.flags
            )));
        }
        let len = match sparse_areas(&caps, info.cap_offset) {
            Some(areas) => areas.iter().find(|(off, _)| *off == 0).map(|&(_, size)| size).ok_or_else(|| {
                Error::Pci(format!("{}: BAR{index} is mappable only in areas {areas:x?}, none at offset 0", self.bdf))
            })?,
            None => info.size,
        };
        let len = usize::try_from(len).map_err(|_| Error::Pci(format!("{}: BAR{index} of {len} bytes", self.bdf)))?;
        Mmio::map_file(&self.fd, info.offset, len)
    }

    fn config_range(&self, off: u64, len: usize, write: bool) -> Result<u64> {
        let (info, _) = self.region_info(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let needed = if write { VFIO_REGION_INFO_FLAG_WRITE } else { VFIO_REGION_INFO_FLAG_READ };
        let end = off.checked_add(len as u64).filter(|&end| end <= info.size);
        if end.is_none() || info.flags & needed == 0 {
            return Err(Error::Pci(format!(
                "{}: config space {} of {len} bytes at {off:#x} refused ({} bytes, flags {:#x})",
                self.bdf,
                if write { "write" } else { "read" },
                info.size,
                info.flags
            )));
        }
        Ok(info.offset + off)
    }

    /// Reads PCI configuration space at `off` (pread on the config region).
    pub fn config_read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.config_range(off, buf.len(), false)?;
        self.fd.read_exact_at(buf, at).map_err(|e| Error::Pci(format!("{}: config read at {off:#x}: {e}", self.bdf)))
    }

    pub fn config_write(&self, off: u64, buf: &[u8]) -> Result<()> {
        let at = self.config_range(off, buf.len(), true)?;
        self.fd.write_all_at(buf, at).map_err(|e| Error::Pci(format!("{}: config write at {off:#x}: {e}", self.bdf)))
    }

    /// Sets or clears Bus Master Enable in the Command register (PCI Local Bus 3.0
    /// §6.2.2, bit 2): a device DMAs only with it set, and vfio-pci leaves it as found.
    pub fn set_bus_master(&self, enable: bool) -> Result<()> {
        const COMMAND: u64 = 0x04;
        const BUS_MASTER: u16 = 1 << 2;
        let mut raw = [0u8; 2];
        self.config_read(COMMAND, &mut raw)?;
        let command = u16::from_le_bytes(raw);
        let command = if enable { command | BUS_MASTER } else { command & !BUS_MASTER };
        self.config_write(COMMAND, &command.to_le_bytes())
    }

    /// Whether the device supports VFIO_DEVICE_RESET.
    pub fn can_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// Resets the device (function-level reset or whatever vfio-pci can do), refusing
    /// when it has no reset.
    pub fn reset(&self) -> Result<()> {
        if !self.can_reset() {
            return Err(Error::Pci(format!(
                "{}: the device offers no reset (VFIO_DEVICE_FLAGS_RESET unset)",
                self.bdf
            )));
        }
        ioctl_value(self.fd.as_fd(), VFIO_DEVICE_RESET, 0)
            .map(drop)
            .map_err(|e| Error::Pci(format!("{}: VFIO_DEVICE_RESET: {e}", self.bdf)))
    }
}

/// Two consecutive u32 fields of a uapi structure as the u64 word that holds them.
fn pack(first: u32, second: u32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&first.to_ne_bytes());
    bytes[4..].copy_from_slice(&second.to_ne_bytes());
    u64::from_ne_bytes(bytes)
}

fn unpack(word: u64) -> (u32, u32) {
    let bytes = word.to_ne_bytes();
    (
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    )
}

/// The sparse-mmap areas (offset, size) of a region's capability chain, if it has one.
/// `caps` is the whole info buffer; `first` the offset of the first capability.
fn sparse_areas(caps: &[u64], first: u32) -> Option<Vec<(u64, u64)>> {
    let bytes: Vec<u8> = caps.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let u16_at = |at: usize| Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let mut at = first as usize;
    // A chain longer than the buffer has capabilities is malformed; stop rather than loop.
    for _ in 0..bytes.len() / CAP_HEADER_BYTES {
        if at == 0 || at + CAP_HEADER_BYTES > bytes.len() {
            return None;
        }
        if u16_at(at)? == VFIO_REGION_INFO_CAP_SPARSE_MMAP {
            let count = u32_at(at + CAP_HEADER_BYTES)? as usize;
            return (0..count)
                .map(|i| {
                    let area = at + SPARSE_MMAP_AREAS_AT + i * SPARSE_MMAP_AREA_BYTES;
                    Some((u64_at(area)?, u64_at(area + 8)?))
                })
                .collect();
        }
        at = u32_at(at + 4)? as usize;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_opens_or_says_which_file_failed() {
        match VfioContainer::open() {
            Ok(container) => {
                assert!(matches!(container.iommu_type, VFIO_TYPE1_IOMMU | VFIO_TYPE1V2_IOMMU));
                let err = container.map_dma(0x10_0000, 0x10_0000, 4096).expect_err("no group yet").to_string();
                assert!(err.contains("before any device was opened"), "{err}");
            }
            Err(err) => {
                let text = err.to_string();
                assert!(text.starts_with("/dev/vfio/vfio: open: "), "{text}");
                println!("note: no VFIO on this host ({text}); container ioctls not exercised");
            }
        }
    }

    #[test]
    fn a_missing_device_is_named_before_the_container_is_touched() {
        // Any container will do: the sysfs checks come first. Build one without the
        // device node when the host has none, so the test runs everywhere.
        let container = Arc::new(VfioContainer::open().unwrap_or_else(|_| VfioContainer::unattached_for_tests()));
        let err = VfioDevice::open(&container, "ffff:ff:1f.7").expect_err("no such device").to_string();
        assert!(err.contains("no PCI device ffff:ff:1f.7"), "{err}");
        let err = VfioDevice::open(&container, "04.0").expect_err("malformed").to_string();
        assert!(err.contains("not a PCI address"), "{err}");
        let err = container.map_dma(0x1001, 0x1000, 4096).expect_err("unaligned").to_string();
        assert!(err.contains("multiples of 4096"), "{err}");
    }

    fn words(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .collect()
    }

    #[test]
    fn sparse_mmap_areas_are_found_along_the_capability_chain() {
        let mut buf = vec![0u8; 32 + 8 + 8 + 16 + 32];
        // A type capability (id 2) at 32 pointing on to the sparse one at 40.
        buf[32..34].copy_from_slice(&2u16.to_ne_bytes());
        buf[36..40].copy_from_slice(&40u32.to_ne_bytes());
        buf[40..42].copy_from_slice(&VFIO_REGION_INFO_CAP_SPARSE_MMAP.to_ne_bytes());
        buf[48..52].copy_from_slice(&2u32.to_ne_bytes());
        for (i, (off, size)) in [(0u64, 0x2000u64), (0x3000, 0x1000)].into_iter().enumerate() {
            let at = 56 + i * 16;
            buf[at..at + 8].copy_from_slice(&off.to_ne_bytes());
            buf[at + 8..at + 16].copy_from_slice(&size.to_ne_bytes());
        }
        assert_eq!(sparse_areas(&words(&buf), 32), Some(vec![(0, 0x2000), (0x3000, 0x1000)]));
        assert_eq!(sparse_areas(&words(&buf), 0), None, "no chain");
        // A chain that points at itself ends instead of looping.
        let mut looped = vec![0u8; 48];
        looped[32..34].copy_from_slice(&2u16.to_ne_bytes());
        looped[36..40].copy_from_slice(&32u32.to_ne_bytes());
        assert_eq!(sparse_areas(&words(&looped), 32), None);
        // Areas running past the buffer are not read.
        buf.truncate(60);
        assert_eq!(sparse_areas(&words(&buf), 32), None);
    }
}
