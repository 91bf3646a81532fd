//! Physical addresses from `/proc/self/pagemap` (Linux Documentation/admin-guide/mm/pagemap.rst):
//! one little 64-bit entry per virtual page; bit 63 "page present", bits 0-54 the page
//! frame number. Since Linux 4.2 the PFN reads as zero without CAP_SYS_ADMIN.
//!
//! What uio_pci_generic needs: without an IOMMU a device DMAs to physical addresses. They
//! stay valid only while the page stays put: hugepages, or mlock'ed pages on a kernel
//! that does not migrate them (compaction may move even mlock'ed 4 KiB pages unless
//! `vm.compact_unevictable_allowed` is 0), which is why SPDK wants hugepages here.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::super::{Error, Result};

const PAGEMAP: &str = "/proc/self/pagemap";
const ENTRY_BYTES: usize = 8;
const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;
/// Entries read per pread when a whole region is translated.
const BATCH_ENTRIES: usize = 4096;

/// Physical address of a virtual address via /proc/self/pagemap. Needs CAP_SYS_ADMIN
/// (without it the kernel reports frame 0, which this refuses naming the privilege). The
/// page must be resident (DMA memory is populated and locked when allocated).
pub fn virt_to_phys(addr: usize) -> Result<u64> {
    let page = super::page_bytes();
    let frames = frames(addr / page * page, 1)?;
    Ok(frames[0] * page as u64 + (addr % page) as u64)
}

/// The page frame numbers of `pages` pages from the page-aligned `start`.
pub(super) fn frames(start: usize, pages: usize) -> Result<Vec<u64>> {
    let page = super::page_bytes();
    debug_assert_eq!(start % page, 0);
    let file = File::open(PAGEMAP).map_err(|source| file_error("open", source))?;
    let mut frames = Vec::with_capacity(pages);
    let mut raw = vec![0u8; BATCH_ENTRIES.min(pages) * ENTRY_BYTES];
    let mut done = 0;
    while done < pages {
        let batch = (pages - done).min(BATCH_ENTRIES);
        let bytes = &mut raw[..batch * ENTRY_BYTES];
        let offset = ((start / page + done) * ENTRY_BYTES) as u64;
        file.read_exact_at(bytes, offset).map_err(|source| file_error("read", source))?;
        for (i, entry) in bytes.chunks_exact(ENTRY_BYTES).enumerate() {
            let entry = u64::from_le_bytes(entry.try_into().expect("8-byte chunk"));
            let va = start + (done + i) * page;
            frames.push(frame(entry, va)?);
        }
        done += batch;
    }
    debug_assert_eq!(frames.len(), pages);
    Ok(frames)
}

fn frame(entry: u64, va: usize) -> Result<u64> {
    if entry & PRESENT == 0 {
        return Err(file_error(
            "translate",
            std::io::Error::other(format!(
                "page {va:#x} is not resident (DMA memory must be populated and locked before it is translated)"
            )),
        ));
    }
    match entry & PFN_MASK {
        0 => Err(file_error(
            "translate",
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "page {va:#x} reads as frame 0: physical addresses need CAP_SYS_ADMIN \
                     (run as root for uio_pci_generic, or use VFIO)"
                ),
            ),
        )),
        pfn => Ok(pfn),
    }
}

fn file_error(what: &'static str, source: std::io::Error) -> Error {
    Error::File { path: Path::new(PAGEMAP).to_path_buf(), what, source }
}

#[cfg(test)]
mod tests {
    use super::super::super::DmaBuf;
    use super::*;

    const PAGE: usize = 4096;

    #[test]
    fn a_dma_page_has_a_stable_physical_address_with_the_same_page_offset() {
        let buf = DmaBuf::alloc(3 * PAGE).expect("dma memory");
        for off in [0, 1, 0x123, PAGE + 7, 3 * PAGE - 1] {
            let va = buf.addr() + off;
            let pa = virt_to_phys(va).expect("root reads frames");
            assert_ne!(pa, 0, "offset {off}");
            assert_eq!(pa % PAGE as u64, (va % PAGE) as u64, "offset {off}: the page offset carries over");
            assert_eq!(virt_to_phys(va).expect("again"), pa, "offset {off}: stable");
        }
    }

    #[test]
    fn consecutive_pages_of_a_hugepage_are_physically_consecutive() {
        let buf = DmaBuf::alloc(crate::mem::HUGEPAGE_BYTES).expect("dma memory");
        if !buf.is_huge() {
            println!("note: no 2 MiB hugepages on this host; contiguity inside a hugepage not checked");
            return;
        }
        let first = virt_to_phys(buf.addr()).expect("frame");
        assert_eq!(first % crate::mem::HUGEPAGE_BYTES as u64, 0, "a hugepage is aligned in physical memory too");
        let frames = frames(buf.addr(), crate::mem::HUGEPAGE_BYTES / PAGE).expect("frames");
        for (i, pfn) in frames.iter().enumerate() {
            assert_eq!(pfn * PAGE as u64, first + (i * PAGE) as u64, "4 KiB page {i}");
        }
    }

    #[test]
    fn entries_decode_and_frame_zero_names_the_privilege() {
        assert_eq!(frame(PRESENT | 0x1234, 0x7000).expect("present"), 0x1234);
        assert_eq!(frame(PRESENT | (1 << 55) | (1 << 61) | 0x42, 0).expect("flag bits ignored"), 0x42);
        let err = frame(PRESENT, 0x7000).expect_err("unprivileged").to_string();
        assert!(err.contains("0x7000") && err.contains("CAP_SYS_ADMIN"), "{err}");
        let err = frame(0x1234, 0x7000).expect_err("swapped or never touched").to_string();
        assert!(err.contains("not resident"), "{err}");
    }

    #[test]
    fn unmapped_pages_are_refused_as_not_resident() {
        // A reserved, never-touched anonymous range: mapped but not resident.
        let map = crate::mem::map::Mapping::anonymous(PAGE, 0).expect("map");
        let err = virt_to_phys(map.addr()).expect_err("not resident").to_string();
        assert!(err.contains("/proc/self/pagemap") && err.contains("not resident"), "{err}");
    }
}
