//! DMA-able host memory: page-aligned, mlock'ed anonymous mappings, on 2 MiB hugepages
//! when the system has them. Never fails for want of hugepages or lockable memory: it
//! falls back, says so once in the log, and carries on. Every buffer is registered as
//! Host memory with bus address = virtual address, as SPDK does in IOVA-as-VA mode.
//!
//! With `peerless-core`'s `dpdk` feature and the DPDK environment started
//! ([`super::env::start`]), buffers come from the EAL heap instead ([`super::dpdk`]),
//! registered with DPDK's IOVAs. The plain backend stays the default.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[cfg(feature = "dpdk")]
use super::dpdk::RteMem;
use super::env::MemEnv;
use super::map::Mapping;
use super::registry::{self, Region, RegionHandle};
use super::sgl::{Seg, SegRef, Sgl};
use super::tag::MemTag;
use super::{Error, Result};

/// Alignment and size granule of DMA memory: a page, what PRP entries name.
pub const DMA_ALIGN_BYTES: usize = 4096;
/// Hugepage size tried for buffers of at least this size.
pub const HUGEPAGE_BYTES: usize = 2 << 20;

static HUGEPAGE_FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);
static MLOCK_FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

fn log_once(flag: &AtomicBool, msg: std::fmt::Arguments<'_>) {
    // Control plane: start-up allocations only.
    if !flag.swap(true, Ordering::Relaxed) {
        crate::log_notice!("{msg}");
    }
}

/// An owned, zeroed block of DMA memory, unmapped and unregistered on drop.
#[derive(Debug)]
pub struct DmaBuf {
    mem: Backing,
    len: usize,
}

/// Where a buffer's bytes live.
#[derive(Debug)]
enum Backing {
    Plain {
        // Fields drop in order: the region leaves the registry before its memory is
        // unmapped, or another thread's mmap may get the range while it is still listed.
        _region: RegionHandle,
        map: Mapping,
        huge: bool,
        locked: bool,
    },
    #[cfg(feature = "dpdk")]
    Dpdk(RteMem),
}

impl DmaBuf {
    /// At least `len` bytes from the current backend ([`super::env::backend`]): plain
    /// memory rounded up to a page, or a hugepage when huge; or the EAL heap.
    pub fn alloc(len: usize) -> Result<DmaBuf> {
        #[cfg(feature = "dpdk")]
        if super::env::backend() == MemEnv::Dpdk {
            return DmaBuf::alloc_dpdk(len);
        }
        DmaBuf::alloc_plain(len)
    }

    /// `len` bytes of the EAL heap, whatever the current backend; the EAL must run.
    #[cfg(feature = "dpdk")]
    pub fn alloc_dpdk(len: usize) -> Result<DmaBuf> {
        if len == 0 {
            return Err(Error::Config("DMA buffer of zero bytes".into()));
        }
        Ok(DmaBuf { mem: Backing::Dpdk(RteMem::alloc(len)?), len })
    }

    /// Plain memory, whatever the current backend.
    pub fn alloc_plain(len: usize) -> Result<DmaBuf> {
        if len == 0 {
            return Err(Error::Config("DMA buffer of zero bytes".into()));
        }
        let (map, huge) = map_memory(len)?;
        let locked = map.lock();
        if !locked {
            log_once(
                &MLOCK_FALLBACK_LOGGED,
                format_args!(
                    "mlock of {} bytes failed ({}); DMA memory stays pageable (raise RLIMIT_MEMLOCK)",
                    map.len(),
                    std::io::Error::last_os_error()
                ),
            );
        }
        let region = registry::register(Region {
            name: Arc::from("dma"),
            tag: MemTag::HOST,
            start: map.addr(),
            len: map.len(),
            bus_base: Some(map.addr() as u64),
            accessor_base: None,
            provider: None,
        })?;
        debug_assert_eq!(map.addr() % DMA_ALIGN_BYTES, 0);
        Ok(DmaBuf { mem: Backing::Plain { map, huge, locked, _region: region }, len })
    }

    /// Which backend the bytes come from.
    pub fn backend(&self) -> MemEnv {
        match &self.mem {
            Backing::Plain { .. } => MemEnv::Plain,
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(_) => MemEnv::Dpdk,
        }
    }

    /// How many IOVA-contiguous pieces the buffer is registered as (DPDK memory in
    /// IOVA-as-PA mode may have several); `None` for plain memory, which is one.
    pub fn iova_runs(&self) -> Option<usize> {
        match &self.mem {
            Backing::Plain { .. } => None,
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(mem) => Some(mem.iova_runs()),
        }
    }

    /// Bytes asked for (the mapping may be larger).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_huge(&self) -> bool {
        match &self.mem {
            Backing::Plain { huge, .. } => *huge,
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(mem) => mem.is_huge(),
        }
    }

    pub fn is_locked(&self) -> bool {
        match &self.mem {
            Backing::Plain { locked, .. } => *locked,
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(mem) => mem.is_locked(),
        }
    }

    /// The first byte's virtual address (with IOVA = VA, also its bus address).
    pub fn addr(&self) -> usize {
        match &self.mem {
            Backing::Plain { map, .. } => map.addr(),
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(mem) => mem.addr(),
        }
    }

    /// The address of `off..off + width` or a panic naming the programmer error.
    fn checked(&self, off: usize, width: usize, align: usize) -> usize {
        assert!(
            off.is_multiple_of(align) && off.checked_add(width).is_some_and(|end| end <= self.len),
            "DmaBuf: {width}-byte access at {off:#x} is misaligned or outside the {}-byte buffer",
            self.len
        );
        self.addr() + off
    }

    /// A little-endian u32 the device may have written (an NVMe completion queue entry):
    /// a volatile load, so each poll really reads memory. Panics on an out-of-range or
    /// misaligned offset.
    pub fn read_volatile_u32(&self, off: usize) -> u32 {
        let at = self.checked(off, 4, 4);
        // SAFETY: `at` is 4-aligned (the buffer is page-aligned) and inside the live
        // buffer; the device may write it concurrently, which a volatile load tolerates
        // and no Rust reference to these bytes exists (`&self` hands none out).
        u32::from_le(unsafe { std::ptr::read_volatile(at as *const u32) })
    }

    /// Copies `src` into the buffer at `off` (a 64-byte submission queue entry).
    /// Panics when the range leaves the buffer.
    pub fn write_bytes(&mut self, off: usize, src: &[u8]) {
        let at = self.checked(off, src.len(), 1);
        // SAFETY: `at..at + src.len()` lies in the buffer, which `&mut self` holds
        // exclusively; `src` is another object's memory and cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), at as *mut u8, src.len()) };
    }

    /// Zeroes the whole buffer.
    pub fn zero(&mut self) {
        let at = self.checked(0, self.len, 1);
        // SAFETY: the whole buffer, held exclusively through `&mut self`.
        unsafe { std::ptr::write_bytes(at as *mut u8, 0, self.len) };
    }

    fn piece(&self, off: usize, len: usize, writable: bool) -> Result<Seg> {
        let end = off.checked_add(len).filter(|&e| e <= self.len);
        let len32 = u32::try_from(len).map_err(|_| Error::SegmentTooLong { len, limit: super::SEG_MAX_BYTES })?;
        end.map(|_| Seg::new(self.addr() + off, len32, MemTag::HOST, writable)).ok_or(Error::OutOfRange {
            offset: off,
            len,
            total: self.len,
        })
    }

    /// Read-only segment over `off..off + len`.
    pub fn seg_ref(&self, off: usize, len: usize) -> Result<SegRef<'_>> {
        Ok(SegRef::from_owner(self.piece(off, len, false)?))
    }

    /// Writable segment over `off..off + len`; `&mut self` makes it the only one.
    pub fn seg_ref_mut(&mut self, off: usize, len: usize) -> Result<SegRef<'_>> {
        Ok(SegRef::from_owner(self.piece(off, len, true)?))
    }

    /// The whole buffer as a read-only list (buffers over 4 GiB are refused).
    pub fn sgl(&self) -> Result<Sgl<'_>> {
        Sgl::from_ref(self.seg_ref(0, self.len)?)
    }

    pub fn sgl_mut(&mut self) -> Result<Sgl<'_>> {
        let len = self.len;
        Sgl::from_ref(self.seg_ref_mut(0, len)?)
    }
}

fn map_memory(len: usize) -> Result<(Mapping, bool)> {
    if len >= HUGEPAGE_BYTES {
        let huge_len = len.div_ceil(HUGEPAGE_BYTES) * HUGEPAGE_BYTES;
        match Mapping::anonymous(huge_len, libc::MAP_HUGETLB | libc::MAP_POPULATE) {
            Ok(m) => return Ok((m, true)),
            Err(e) => log_once(
                &HUGEPAGE_FALLBACK_LOGGED,
                format_args!(
                    "no 2 MiB hugepages for {huge_len} bytes ({e}); using 4 KiB pages \
                     (reserve some in /proc/sys/vm/nr_hugepages)"
                ),
            ),
        }
    }
    let len = len.div_ceil(DMA_ALIGN_BYTES) * DMA_ALIGN_BYTES;
    Ok((Mapping::anonymous(len, libc::MAP_POPULATE)?, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers freed and allocated on several threads at once: the kernel hands a freed
    /// range straight to the next mmap, so a buffer must leave the registry before its
    /// memory goes back, or the next one finds its range still registered.
    #[test]
    fn buffers_freed_while_others_are_allocated_never_overlap() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..2_000 {
                        let buf = DmaBuf::alloc_plain(64 * 1024);
                        assert!(buf.is_ok(), "{:?}", buf.err());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("an allocating thread");
        }
    }

    #[test]
    fn small_buffers_are_aligned_registered_and_zeroed() {
        let mut buf = DmaBuf::alloc(10_000).expect("dma memory");
        assert_eq!(buf.addr() % DMA_ALIGN_BYTES, 0);
        assert!(!buf.is_huge());
        assert_eq!(registry::classify(buf.addr() + 9_999), Some(MemTag::HOST));
        let seg = buf.seg_ref(100, 10).expect("in range").seg();
        assert_eq!(registry::translate(&seg).expect("registered"), buf.addr() as u64 + 100);
        assert!(buf.seg_ref(9_995, 10).is_err());
        let sgl = buf.sgl_mut().expect("under 4 GiB");
        assert!(sgl.cpu_view().expect("host").slices().all(|s| s.iter().all(|&b| b == 0)));
    }

    #[test]
    fn ring_accessors_write_read_and_zero_in_bounds() {
        let mut buf = DmaBuf::alloc(8192).expect("dma");
        let sqe: Vec<u8> = (0..64u8).collect();
        buf.write_bytes(64, &sqe);
        buf.write_bytes(8191, &[0xa5]);
        buf.write_bytes(100, &[]);
        assert_eq!(buf.read_volatile_u32(64), u32::from_le_bytes([0, 1, 2, 3]));
        assert_eq!(buf.read_volatile_u32(124), u32::from_le_bytes([60, 61, 62, 63]));
        assert_eq!(buf.read_volatile_u32(8188), 0xa500_0000);
        let view = buf.sgl().expect("sgl");
        let bytes: Vec<u8> = view.cpu_view().expect("host").slices().flatten().copied().collect();
        assert_eq!(&bytes[64..128], &sqe[..]);
        assert!(bytes[..64].iter().chain(&bytes[128..8191]).all(|&b| b == 0));
        drop(view);
        buf.zero();
        assert_eq!(buf.read_volatile_u32(64), 0);
        assert_eq!(buf.read_volatile_u32(8188), 0);
    }

    #[test]
    fn ring_accessors_panic_on_programmer_errors() {
        let buf = std::sync::Mutex::new(DmaBuf::alloc(4096).expect("dma"));
        type Case<'a> = (&'a dyn Fn(&mut DmaBuf), &'a str);
        let cases: [Case<'_>; 4] = [
            (
                &|b| {
                    b.read_volatile_u32(2);
                },
                "4-byte access at 0x2",
            ),
            (
                &|b| {
                    b.read_volatile_u32(4096);
                },
                "outside the 4096-byte buffer",
            ),
            (&|b| b.write_bytes(4033, &[0; 64]), "64-byte access at 0xfc1"),
            (&|b| b.write_bytes(usize::MAX, &[0; 2]), "2-byte access"),
        ];
        for (case, expected) in cases {
            let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                case(&mut buf.lock().unwrap_or_else(|p| p.into_inner()))
            }))
            .expect_err("panics");
            let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
        }
    }

    #[test]
    fn large_buffers_never_fail_for_want_of_hugepages() {
        let buf = DmaBuf::alloc(HUGEPAGE_BYTES + 1).expect("hugepages or fallback");
        assert!(buf.len() > HUGEPAGE_BYTES);
        let addr = buf.addr();
        drop(buf);
        assert_eq!(registry::classify(addr), None, "unregistered on drop");
    }
}
