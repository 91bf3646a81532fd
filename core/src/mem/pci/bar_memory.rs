//! Device memory behind a mapped BAR, as a P2P provider: an NVMe controller's CMB
//! reached through the driver's own mapping. The CPU touches it only through the I/O
//! accessors (it is tagged IoMem); a controller reaches it by bus address, which the
//! registry hands out for PRPs.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::super::provider::{DmaEngine, P2pBuf, P2pProvider};
use super::super::range_alloc::RangeAlloc;
use super::super::registry::{self, Region, RegionHandle};
use super::super::tag::{DomainId, MemKind, MemTag};
use super::super::{Error, Result};
use super::Mmio;

/// Allocation granule: a memory page, as PRP entries name whole pages.
pub const BAR_MEMORY_GRANULE_BYTES: usize = 4096;
/// BAR memory regions live at once, at most (a few per SSD with a CMB).
const MAX_BAR_MEMORIES: usize = 64;

/// The domains of live BAR memory, read on the data path without a lock: a slot holds a
/// domain's number, or 0.
static BAR_DOMAINS: [AtomicU32; MAX_BAR_MEMORIES] = [const { AtomicU32::new(0) }; MAX_BAR_MEMORIES];

/// Whether `domain` is device memory behind a PCI BAR, registered at its bus address: what
/// a peer device reaches by that address where no IOMMU stands between them.
pub fn is_bar_memory(domain: DomainId) -> bool {
    BAR_DOMAINS.iter().any(|slot| slot.load(Ordering::Acquire) == domain.get())
}

fn claim_slot(domain: DomainId) -> Option<usize> {
    BAR_DOMAINS
        .iter()
        .position(|slot| slot.compare_exchange(0, domain.get(), Ordering::AcqRel, Ordering::Relaxed).is_ok())
}

struct BarMemoryInner {
    name: String,
    domain: DomainId,
    /// Kept mapped while any buffer from it lives.
    _bar: Arc<Mmio>,
    start: usize,
    alloc: RangeAlloc,
}

/// `len` bytes at `offset` in a mapped BAR, registered as one IoMem region whose bus
/// address is `bus_base`. Dropping it unregisters the region; the mapping goes when the
/// last buffer from it does.
pub struct BarMemory {
    // Unregistered before `inner` may unmap (fields drop in order).
    _region: RegionHandle,
    inner: Arc<BarMemoryInner>,
    bus_base: u64,
    slot: usize,
}

impl Drop for BarMemory {
    fn drop(&mut self) {
        BAR_DOMAINS[self.slot].store(0, Ordering::Release);
    }
}

impl BarMemory {
    pub fn register(name: &str, bar: Arc<Mmio>, offset: usize, len: usize, bus_base: u64) -> Result<BarMemory> {
        let granule = BAR_MEMORY_GRANULE_BYTES;
        let fits = offset.checked_add(len).is_some_and(|end| end <= bar.len());
        if len == 0
            || !fits
            || !offset.is_multiple_of(granule)
            || !len.is_multiple_of(granule)
            || !bus_base.is_multiple_of(granule as u64)
        {
            return Err(Error::Config(format!(
                "{name}: {len} bytes at {offset:#x} (bus {bus_base:#x}) in a {:#x}-byte BAR: need whole {granule}-byte pages inside it",
                bar.len()
            )));
        }
        let start = bar.base_addr() + offset;
        let domain = DomainId::allocate();
        let slot = claim_slot(domain)
            .ok_or_else(|| Error::Config(format!("{name}: more than {MAX_BAR_MEMORIES} BAR memory regions at once")))?;
        let inner = Arc::new(BarMemoryInner {
            name: name.to_string(),
            domain,
            _bar: bar,
            start,
            alloc: RangeAlloc::new(len, granule),
        });
        let region = registry::register(Region {
            name: Arc::from(name),
            tag: MemTag::device_side(MemKind::IoMem, domain),
            start,
            len,
            bus_base: Some(bus_base),
            // The BAR mapping itself: accessors go through it with volatile accesses.
            accessor_base: Some(start),
            provider: Some(Arc::clone(&inner) as Arc<dyn P2pProvider>),
        });
        let region = match region {
            Ok(region) => region,
            Err(err) => {
                BAR_DOMAINS[slot].store(0, Ordering::Release);
                return Err(err);
            }
        };
        Ok(BarMemory { _region: region, inner, bus_base, slot })
    }

    pub fn provider(&self) -> Arc<dyn P2pProvider> {
        Arc::clone(&self.inner) as Arc<dyn P2pProvider>
    }

    pub fn alloc(&self, len: usize) -> Result<P2pBuf> {
        P2pBuf::alloc(&self.provider(), len)
    }

    pub fn domain(&self) -> DomainId {
        self.inner.domain
    }

    pub fn bus_base(&self) -> u64 {
        self.bus_base
    }

    /// Where the window sits in this process (start, bytes): what an IOMMU maps for a
    /// peer device to reach it.
    pub fn cpu_window(&self) -> (usize, usize) {
        (self.inner.start, self.inner.alloc.capacity())
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.alloc.capacity()
    }

    pub fn available_bytes(&self) -> usize {
        self.inner.alloc.available()
    }
}

impl fmt::Debug for BarMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BarMemory")
            .field("name", &self.inner.name)
            .field("domain", &self.inner.domain)
            .field("bus_base", &format_args!("{:#x}", self.bus_base))
            .finish()
    }
}

impl P2pProvider for BarMemoryInner {
    fn name(&self) -> &str {
        &self.name
    }

    fn domain(&self) -> DomainId {
        self.domain
    }

    fn cpu_mappable(&self) -> bool {
        true
    }

    /// The controller moves the bytes itself; the CPU uses the I/O accessors.
    fn dma_engine(&self) -> Option<&dyn DmaEngine> {
        None
    }

    fn allocate(&self, len: usize) -> Result<usize> {
        self.alloc.allocate_from(self.start, len, &self.name)
    }

    fn free(&self, addr: usize, len: usize) {
        self.alloc.free_from(self.start, addr, len, &self.name);
    }

    fn capacity_bytes(&self) -> usize {
        self.alloc.capacity()
    }

    fn available_bytes(&self) -> usize {
        self.alloc.available()
    }

    /// A BAR mapping is not pinnable memory; exporting it to a NIC takes VFIO's dma-buf
    /// feature, which the kernels here lack.
    fn export_dma_buf(&self) -> std::result::Result<super::super::DmaBufExport, String> {
        Err(format!("{}: BAR memory has no dma-buf export on this kernel", self.name))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;
    use crate::mem::{copy, Sgl};

    const BAR_BYTES: usize = 64 * 1024;

    /// A file standing in for a BAR: what a controller's memory would hold.
    fn stand_in_bar(name: &str) -> (std::path::PathBuf, Arc<Mmio>) {
        let path = std::env::temp_dir().join(format!("peerless-bar-{}-{name}", std::process::id()));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(BAR_BYTES as u64).unwrap();
        let bar = Arc::new(Mmio::map_file(&file, 0, BAR_BYTES).unwrap());
        (path, bar)
    }

    #[test]
    fn bar_memory_is_iomem_with_the_bus_addresses_given() {
        let (path, bar) = stand_in_bar("rw");
        let cmb = BarMemory::register("cmb test", bar, 16 * 1024, 32 * 1024, 0xfe00_4000).unwrap();
        let mut buf = cmb.alloc(8192).unwrap();
        assert_eq!(buf.tag().kind(), MemKind::IoMem);
        assert!(buf.sgl().cpu_view().is_err(), "the CPU reaches a CMB only through accessors");
        assert_eq!(registry::translate(&buf.seg()).unwrap(), 0xfe00_4000, "the first page's bus address");
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        copy(&mut buf.sgl_mut(), &Sgl::from_host(&data).unwrap()).unwrap();
        let mut back = vec![0u8; 8192];
        copy(&mut Sgl::from_host_mut(&mut back).unwrap(), &buf.sgl()).unwrap();
        assert_eq!(back, data);
        let second = cmb.alloc(4096).unwrap();
        assert_eq!(registry::translate(&second.seg()).unwrap(), 0xfe00_4000 + 8192);
        assert_eq!(registry::bus_address(cmb.domain(), second.seg().addr() + 100), Some(0xfe00_4000 + 8192 + 100));
        drop((buf, second));
        assert_eq!(cmb.available_bytes(), 32 * 1024);
        let domain = cmb.domain();
        assert!(is_bar_memory(domain));
        // The bytes went through the mapping at the region's offset in the BAR.
        assert_eq!(&std::fs::read(&path).unwrap()[16 * 1024..16 * 1024 + 8192], &data[..]);
        drop(cmb);
        assert!(!is_bar_memory(domain), "a dropped region is no longer reachable");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn windows_outside_the_bar_or_off_pages_are_refused() {
        let (path, bar) = stand_in_bar("bad");
        for (offset, len, bus) in [(0, 0, 0), (60 * 1024, 8192, 0), (100, 4096, 0), (0, 4096, 0x123)] {
            let err = BarMemory::register("bad", bar.clone(), offset, len, bus).unwrap_err();
            assert!(err.to_string().contains("whole 4096-byte pages"), "{err}");
        }
        let cmb = BarMemory::register("full", bar, 0, 8192, 0).unwrap();
        let _all = cmb.alloc(8192).unwrap();
        assert!(matches!(cmb.alloc(4096), Err(Error::ProviderFull { .. })));
        std::fs::remove_file(&path).unwrap();
    }
}
