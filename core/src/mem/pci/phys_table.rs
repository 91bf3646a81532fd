//! The physical address of every 4 KiB page of registered Host memory, for a device
//! driven through uio_pci_generic (no IOMMU: PRPs carry physical addresses).
//!
//! A two-level table in the manner of SPDK's `spdk_mem_map`: the top level has one slot
//! per GiB of virtual address space, each filled at most once with a leaf of one entry per
//! 4 KiB page. [`PhysTable::translate`] is two atomic loads, no lock, no syscall: leaves
//! are published through `OnceLock` and never freed before the table, and an entry is
//! written before its region is announced as registered (see `pci::watch`), which happens
//! before any buffer of it reaches another thread.
//!
//! Tests that subscribe a table live in `core/tests/host_memory.rs` (see `pci::watch`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::super::{Error, Result};
use super::pagemap;
use super::watch::HostMemListener;

const PAGE_SHIFT: u32 = 12;
const PAGE_BYTES: usize = 1 << PAGE_SHIFT;
/// Virtual address bits user space may use (x86-64 4-level paging: 47; arm64: 48).
const VA_BITS: u32 = 48;
/// One leaf covers 1 GiB: 2^18 entries of 8 bytes (2 MiB), made when first needed.
const LEAF_SHIFT: u32 = 30;
const LEAF_ENTRIES: usize = 1 << (LEAF_SHIFT - PAGE_SHIFT);
const TOP_ENTRIES: usize = 1 << (VA_BITS - LEAF_SHIFT);
/// Marks a filled entry, so physical page 0 stays distinguishable from "unknown".
const VALID: u64 = 1;

/// A physical-address table for uio: implements [`HostMemListener`] and records each
/// 4 KiB page's physical address (via pagemap) when a region is added. Subscribe it with
/// [`super::watch_host_memory`].
pub struct PhysTable {
    top: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl std::fmt::Debug for PhysTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let leaves = self.top.iter().filter(|slot| slot.get().is_some()).count();
        write!(f, "PhysTable({leaves} GiB-leaves)")
    }
}

impl PhysTable {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Arc<PhysTable> {
        Arc::new(PhysTable { top: (0..TOP_ENTRIES).map(|_| OnceLock::new()).collect() })
    }

    /// The physical address of `addr`, if it lies in a region this table was told of.
    /// Data path: no syscall, no lock.
    pub fn translate(&self, addr: usize) -> Option<u64> {
        let leaf = self.top.get(addr >> LEAF_SHIFT)?.get()?;
        // Acquire pairs with the Release store in `host_region_added` (a plain load on
        // x86); the announce-before-hand-out ordering already orders it in practice.
        let entry = leaf[(addr >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].load(Ordering::Acquire);
        (entry & VALID != 0).then(|| (entry & !(PAGE_BYTES as u64 - 1)) | (addr & (PAGE_BYTES - 1)) as u64)
    }

    fn entry(&self, addr: usize) -> Option<&AtomicU64> {
        let leaf =
            self.top.get(addr >> LEAF_SHIFT)?.get_or_init(|| (0..LEAF_ENTRIES).map(|_| AtomicU64::new(0)).collect());
        Some(&leaf[(addr >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)])
    }

    fn clear(&self, start: usize, len: usize) {
        for page in (start..start + len).step_by(PAGE_BYTES) {
            if let Some(leaf) = self.top.get(page >> LEAF_SHIFT).and_then(OnceLock::get) {
                leaf[(page >> PAGE_SHIFT) & (LEAF_ENTRIES - 1)].store(0, Ordering::Release);
            }
        }
    }
}

impl HostMemListener for PhysTable {
    fn host_region_added(&self, start: usize, len: usize) -> Result<()> {
        let end = start.checked_add(len).filter(|&end| end <= 1 << VA_BITS);
        if !start.is_multiple_of(PAGE_BYTES) || end.is_none() {
            return Err(Error::Config(format!(
                "physical-address table: region {start:#x}+{len:#x} is not page-aligned or lies above {VA_BITS} bits"
            )));
        }
        let system_page = super::page_bytes();
        let first = start / system_page * system_page;
        let frames = pagemap::frames(first, (start + len - first).div_ceil(system_page))?;
        for page in (start..start + len).step_by(PAGE_BYTES) {
            let frame = frames[(page - first) / system_page];
            let phys = frame * system_page as u64 + ((page - first) % system_page) as u64;
            debug_assert_eq!(phys % PAGE_BYTES as u64, 0);
            let entry = self.entry(page).expect("checked against VA_BITS above");
            entry.store(phys | VALID, Ordering::Release);
        }
        Ok(())
    }

    fn host_region_removed(&self, start: usize, len: usize) {
        self.clear(start, len);
    }
}

#[cfg(test)]
mod tests {
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
