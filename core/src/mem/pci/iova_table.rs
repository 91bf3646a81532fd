//! IOVAs of our own choosing for a VFIO container, for IOMMUs narrower than user virtual
//! addresses. IOVA = VA needs 47 bits; QEMU's intel-iommu defaults to 39 (`aw-bits=39`:
//! VFIO's IOVA ranges are then 0-0xfedfffff and 0xfef00000-0x7fffffffff), and real VT-d
//! parts with 39-bit MGAW exist. This listener gives each Host region an IOVA range of its
//! own, maps it, and keeps a lock-free page table ([`super::page_table`]) from virtual
//! address to IOVA for building PRPs, as SPDK's `vtophys` does in IOVA-as-PA mode.
//!
//! Tests that need a device run only where VFIO has one; the allocator and the table are
//! tested on their own.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::super::range_alloc::RangeAlloc;
use super::super::{Error, Result};
use super::page_table::{PageTable, PAGE_BYTES};
use super::vfio::VfioContainer;
use super::watch::HostMemListener;

/// The window IOVAs come from: above 4 GiB, clear of the x86 MSI window at 0xfee00000
/// and of anything a BIOS reserves low, and below 2^39, the narrowest IOMMU width in use.
pub const IOVA_WINDOW_START: u64 = 1 << 32;
pub const IOVA_WINDOW_END: u64 = 1 << 39;
/// Regions start on 2 MiB IOVA boundaries, so a hugepage can map as one IOMMU superpage.
const IOVA_GRANULE_BYTES: usize = 2 << 20;

/// A VFIO container's IOMMU mappings at IOVAs from [`IOVA_WINDOW_START`], one range per
/// Host region, with [`IovaTable::translate`] for the data path. Subscribe it with
/// [`super::watch_host_memory`] after the first device is open (instead of the container
/// itself, which maps IOVA = VA).
pub struct IovaTable {
    container: Arc<VfioContainer>,
    pages: PageTable,
    space: RangeAlloc,
    /// Region start -> (IOVA, mapped bytes): control plane.
    regions: Mutex<HashMap<usize, (u64, usize)>>,
}

impl std::fmt::Debug for IovaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IovaTable({} regions)", self.regions.lock().len())
    }
}

impl IovaTable {
    pub fn new(container: Arc<VfioContainer>) -> Arc<IovaTable> {
        let capacity = usize::try_from(IOVA_WINDOW_END - IOVA_WINDOW_START).expect("64-bit host");
        Arc::new(IovaTable {
            container,
            pages: PageTable::new(),
            space: RangeAlloc::new(capacity, IOVA_GRANULE_BYTES),
            regions: Mutex::new(HashMap::new()),
        })
    }

    /// The IOVA of `addr`, if it lies in a region this table mapped. Data path: no
    /// syscall, no lock.
    pub fn translate(&self, addr: usize) -> Option<u64> {
        self.pages.lookup(addr)
    }
}

impl HostMemListener for IovaTable {
    fn host_region_added(&self, start: usize, len: usize) -> Result<()> {
        PageTable::check(start, len)?;
        // A region's last page may be partly another's (DPDK heap blocks): mapping it
        // twice at two IOVAs is fine, IOVA ranges never overlap.
        let mapped = len.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let offset = self.space.alloc(mapped).map_err(|full| {
            Error::Pci(format!(
                "IOVA window {IOVA_WINDOW_START:#x}-{IOVA_WINDOW_END:#x} full: {mapped} bytes wanted, {} free, largest {}",
                full.available, full.largest
            ))
        })?;
        let iova = IOVA_WINDOW_START + offset as u64;
        if let Err(err) = self.container.map_dma(start, iova, mapped) {
            self.space.free(offset, mapped);
            return Err(err);
        }
        for page in (start..start + mapped).step_by(PAGE_BYTES) {
            self.pages.set(page, iova + (page - start) as u64);
        }
        self.regions.lock().insert(start, (iova, mapped));
        Ok(())
    }

    fn host_region_removed(&self, start: usize, len: usize) {
        let Some((iova, mapped)) = self.regions.lock().remove(&start) else { return };
        debug_assert_eq!(mapped, len.div_ceil(PAGE_BYTES) * PAGE_BYTES);
        self.pages.clear(start, mapped);
        match self.container.unmap_dma(iova, mapped) {
            Ok(()) => self.space.free((iova - IOVA_WINDOW_START) as usize, mapped),
            // Still mapped: leave its IOVAs out of the window rather than reuse them.
            Err(err) => crate::log_error!("{err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without an attached device every mapping fails; each failure gives its IOVAs back
    /// (600 GiB of attempts through a 508 GiB window) and leaves nothing translatable.
    #[test]
    fn failed_mappings_return_their_iovas_and_leave_no_entries() {
        let table = IovaTable::new(Arc::new(VfioContainer::unattached_for_tests()));
        let start = 0x7f00_0000_0000;
        for _ in 0..600 {
            let err = table.host_region_added(start, 1 << 30).expect_err("no IOMMU yet").to_string();
            assert!(err.contains("before any device was opened"), "{err}");
        }
        assert_eq!(table.translate(start), None);
        assert!(table.host_region_added(1 << 48, 4096).expect_err("above the table").to_string().contains("48 bits"));
        table.host_region_removed(start, 1 << 30);
        assert!(table.regions.lock().is_empty());
        const { assert!((IOVA_WINDOW_END - IOVA_WINDOW_START) < 600 << 30, "the loop would exhaust a leaking window") };
    }
}
