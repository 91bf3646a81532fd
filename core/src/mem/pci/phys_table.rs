//! The physical address of every 4 KiB page of registered Host memory, for a device
//! driven through uio_pci_generic (no IOMMU: PRPs carry physical addresses). The table
//! itself is [`super::page_table`]: lookups take no lock and make no syscall.
//!
//! Tests that subscribe a table live in `core/tests/host_memory.rs` (see `pci::watch`).

use std::sync::Arc;

use super::super::Result;
use super::page_table::{PageTable, PAGE_BYTES};
use super::pagemap;
use super::watch::HostMemListener;

/// A physical-address table for uio: implements [`HostMemListener`] and records each
/// 4 KiB page's physical address (via pagemap) when a region is added. Subscribe it with
/// [`super::watch_host_memory`].
#[derive(Debug)]
pub struct PhysTable {
    pages: PageTable,
}

impl PhysTable {
    pub fn new() -> Arc<PhysTable> {
        Arc::new(PhysTable { pages: PageTable::new() })
    }

    /// The physical address of `addr`, if it lies in a region this table was told of.
    /// Data path: no syscall, no lock.
    pub fn translate(&self, addr: usize) -> Option<u64> {
        self.pages.lookup(addr)
    }
}

impl HostMemListener for PhysTable {
    fn host_region_added(&self, start: usize, len: usize) -> Result<()> {
        PageTable::check(start, len)?;
        let system_page = super::page_bytes();
        let first = start / system_page * system_page;
        let frames = pagemap::frames(first, (start + len - first).div_ceil(system_page))?;
        for page in (start..start + len).step_by(PAGE_BYTES) {
            let frame = frames[(page - first) / system_page];
            self.pages.set(page, frame * system_page as u64 + ((page - first) % system_page) as u64);
        }
        Ok(())
    }

    fn host_region_removed(&self, start: usize, len: usize) {
        self.pages.clear(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::super::page_table::VA_BITS;
    use super::*;

    #[test]
    fn unknown_and_out_of_table_addresses_have_no_translation() {
        let table = PhysTable::new();
        assert_eq!(table.translate(0), None);
        assert_eq!(table.translate(usize::MAX), None, "beyond the table");
        assert!(table.host_region_added(1 << VA_BITS, 4096).is_err(), "above the table");
        assert!(table.host_region_added(0x1001, 4096).is_err(), "not page-aligned");
        assert_eq!(table.translate(1 << VA_BITS), None);
    }
}
