//! A bus address for every 4 KiB page of registered Host memory: the shared structure
//! behind [`super::PhysTable`] (physical addresses, uio) and [`super::IovaTable`] (IOVAs
//! a VFIO container mapped).
//!
//! A two-level table in the manner of SPDK's `spdk_mem_map`: the top level has one slot
//! per GiB of virtual address space, each filled at most once with a leaf of one entry per
//! 4 KiB page. A lookup is two atomic loads, no lock, no syscall: leaves are published
//! through `OnceLock` and never freed before the table, and an entry is written before
//! its region is announced as registered (see `pci::watch`), which happens before any
//! buffer of it reaches another thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::super::{Error, Result};

pub(super) const PAGE_SHIFT: u32 = 12;
pub(super) const PAGE_BYTES: usize = 1 << PAGE_SHIFT;
/// Virtual address bits user space may use (x86-64 4-level paging: 47; arm64: 48).
pub(super) const VA_BITS: u32 = 48;
/// One leaf covers 1 GiB: 2^18 entries of 8 bytes (2 MiB), made when first needed.
const LEAF_SHIFT: u32 = 30;
const LEAF_ENTRIES: usize = 1 << (LEAF_SHIFT - PAGE_SHIFT);
const TOP_ENTRIES: usize = 1 << (VA_BITS - LEAF_SHIFT);
/// Marks a filled entry, so bus page 0 stays distinguishable from "unknown".
const VALID: u64 = 1;

pub(super) struct PageTable {
    top: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl std::fmt::Debug for PageTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let leaves = self.top.iter().filter(|slot| slot.get().is_some()).count();
        write!(f, "PageTable({leaves} GiB-leaves)")
    }
}

impl PageTable {
    pub(super) fn new() -> PageTable {
        PageTable { top: (0..TOP_ENTRIES).map(|_| OnceLock::new()).collect() }
    }

    /// Checks a region fits the table: page-aligned start, below [`VA_BITS`].
    pub(super) fn check(start: usize, len: usize) -> Result<()> {
        let end = start.checked_add(len).filter(|&end| end <= 1 << VA_BITS);
        if !start.is_multiple_of(PAGE_BYTES) || end.is_none() {
            return Err(Error::Config(format!(
                "bus-address table: region {start:#x}+{len:#x} is not page-aligned or lies above {VA_BITS} bits"
            )));
        }
        Ok(())
    }

    /// The bus address of `addr`, if its page was set.
    pub(super) fn lookup(&self, addr: usize) -> Option<u64> {
        let leaf = self.top.get(addr >> LEAF_SHIFT)?.get()?;
        // Acquire pairs with the Release store in `set` (a plain load on x86); the
        // announce-before-hand-out ordering already orders it in practice.
        let entry = leaf[(addr >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].load(Ordering::Acquire);
        (entry & VALID != 0).then(|| (entry & !(PAGE_BYTES as u64 - 1)) | (addr & (PAGE_BYTES - 1)) as u64)
    }

    /// Records the bus address of the page at `page` (both page-aligned; `page` checked
    /// by [`PageTable::check`]).
    pub(super) fn set(&self, page: usize, bus: u64) {
        debug_assert!(page.is_multiple_of(PAGE_BYTES) && bus.is_multiple_of(PAGE_BYTES as u64));
        let leaf = self.top[page >> LEAF_SHIFT].get_or_init(|| (0..LEAF_ENTRIES).map(|_| AtomicU64::new(0)).collect());
        leaf[(page >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].store(bus | VALID, Ordering::Release);
    }

    pub(super) fn clear(&self, start: usize, len: usize) {
        for page in (start..start.saturating_add(len)).step_by(PAGE_BYTES) {
            if let Some(leaf) = self.top.get(page >> LEAF_SHIFT).and_then(OnceLock::get) {
                leaf[(page >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].store(0, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_lookup_clear_and_bounds() {
        let table = PageTable::new();
        assert_eq!(table.lookup(0x4000_0000), None);
        table.set(0x4000_0000, 0);
        table.set((1 << 30) * 3 + 0x7000, 0x1234_5000);
        assert_eq!(table.lookup(0x4000_0123), Some(0x123), "bus page 0 is a real address");
        assert_eq!(table.lookup((1 << 30) * 3 + 0x7fff), Some(0x1234_5fff));
        assert_eq!(table.lookup((1 << 30) * 3 + 0x8000), None, "the next page");
        table.clear(0x4000_0000, 1);
        assert_eq!(table.lookup(0x4000_0000), None);
        assert_eq!(table.lookup(usize::MAX), None, "beyond the table");
        assert!(PageTable::check(1 << VA_BITS, 4096).is_err(), "above the table");
        assert!(PageTable::check((1 << VA_BITS) - 4096, 4096).is_ok(), "the last page");
        assert!(PageTable::check(0x1001, 4096).is_err(), "not page-aligned");
        assert!(PageTable::check(usize::MAX - 4095, 8192).is_err(), "wraps");
    }
}
