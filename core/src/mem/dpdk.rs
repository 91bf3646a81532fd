//! The DPDK DMA backend: [`super::DmaBuf`]s on the EAL heap (`rte_zmalloc`), each
//! registered in the region [`registry`] with the IOVA DPDK gives it as bus address, so
//! `registry::translate` names what a device must DMA to.
//!
//! In IOVA-as-VA mode a buffer is one region with bus address = virtual address. In
//! IOVA-as-PA mode the pages of a buffer need not be physically contiguous: the buffer
//! is registered as one region per physically contiguous run of pages, each with its
//! own bus base, so every segment translates right (the registry refuses a segment that
//! straddles two runs rather than hand a device a wrong address).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use spdk_sys::eal;

use super::dma::{DMA_ALIGN_BYTES, HUGEPAGE_BYTES};
use super::env::{self, EnvInfo, IovaMode, MemEnv};
use super::registry::{self, Region, RegionHandle};
use super::tag::MemTag;
use super::{Error, Result};

/// DPDK buffers alive now; the EAL may stop only at zero.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Allocations hold it shared, [`stop`] exclusively: no buffer appears while the EAL
/// goes away. `true` once stopped.
static STOPPED: RwLock<bool> = RwLock::new(false);

/// Starts the EAL with `args` (once per process; the same arguments again return the
/// running EAL).
pub(crate) fn start(args: &[String]) -> Result<EnvInfo> {
    let info = eal::init(args).map_err(|err| Error::Dpdk(err.to_string()))?;
    Ok(EnvInfo {
        env: MemEnv::Dpdk,
        iova_mode: iova_mode_of(info.iova_mode),
        hugepages: info.has_hugepages,
        mem_bytes: info.physmem_bytes,
        eal_args: info.args,
    })
}

fn iova_mode_of(mode: eal::IovaMode) -> IovaMode {
    match mode {
        eal::IovaMode::Pa => IovaMode::Pa,
        eal::IovaMode::Va => IovaMode::Va,
    }
}

/// Stops the EAL and returns to the plain backend, once every DPDK buffer is gone.
/// DPDK cannot start again in this process.
pub fn stop() -> Result<()> {
    let mut stopped = STOPPED.write();
    let live = LIVE.load(Ordering::Acquire);
    if live > 0 {
        return Err(Error::Dpdk(format!("cannot stop the EAL: {live} DPDK buffers are still in use")));
    }
    env::set_backend(MemEnv::Plain);
    *stopped = true;
    // SAFETY: core::mem is the only user of EAL memory in Peerless; under the write lock
    // no allocation is in flight and LIVE says none is alive.
    unsafe { eal::cleanup() }.map_err(|err| Error::Dpdk(err.to_string()))
}

/// DPDK buffers alive now.
pub fn live_buffers() -> usize {
    LIVE.load(Ordering::Acquire)
}

/// One block of the EAL heap, registered as Host memory with its IOVA runs.
#[derive(Debug)]
pub(crate) struct RteMem {
    /// Dropped (unregistered) before the block is freed.
    regions: Vec<RegionHandle>,
    addr: usize,
    page_bytes: u64,
    iova_mode: IovaMode,
}

impl RteMem {
    /// `len` zeroed bytes, aligned to [`DMA_ALIGN_BYTES`].
    pub(crate) fn alloc(len: usize) -> Result<RteMem> {
        assert!(len > 0, "empty DPDK buffer");
        let stopped = STOPPED.read();
        let info = eal::info().filter(|_| !*stopped).ok_or_else(|| {
            Error::Dpdk("the DPDK EAL is not running (start it with mem::env::start, --env dpdk)".into())
        })?;
        let ptr = eal::malloc(len, DMA_ALIGN_BYTES as u32, true).ok_or_else(|| {
            Error::Dpdk(format!("rte_zmalloc of {len} bytes failed: the EAL heap is exhausted (raise -s)"))
        })?;
        LIVE.fetch_add(1, Ordering::AcqRel);
        let addr = ptr.as_ptr() as usize;
        let page_bytes = eal::page_size_of(addr).unwrap_or(DMA_ALIGN_BYTES as u64);
        let mut mem = RteMem { regions: Vec::new(), addr, page_bytes, iova_mode: iova_mode_of(info.iova_mode) };
        // On an error below, dropping `mem` unregisters what was registered and frees.
        for (start, run_len, iova) in iova_runs(addr, len, page_bytes as usize, mem.iova_mode)? {
            mem.regions.push(registry::register(Region {
                name: Arc::from("dpdk"),
                tag: MemTag::HOST,
                start,
                len: run_len,
                bus_base: Some(iova),
                accessor_base: None,
                provider: None,
            })?);
        }
        debug_assert_eq!(addr % DMA_ALIGN_BYTES, 0);
        debug_assert!(!mem.regions.is_empty());
        crate::log_debug!(
            crate::log::flags::MEM,
            "dpdk: {len} bytes at {addr:#x} on {page_bytes}-byte pages, IOVA as {}, {} IOVA-contiguous run(s)",
            mem.iova_mode,
            mem.regions.len()
        );
        Ok(mem)
    }

    pub(crate) fn addr(&self) -> usize {
        self.addr
    }

    pub(crate) fn is_huge(&self) -> bool {
        self.page_bytes >= HUGEPAGE_BYTES as u64
    }

    /// Hugetlbfs pages are never swapped; `--no-huge` memory is ordinary pageable memory.
    pub(crate) fn is_locked(&self) -> bool {
        self.is_huge()
    }

    /// How many IOVA-contiguous pieces the block is registered as.
    pub(crate) fn iova_runs(&self) -> usize {
        self.regions.len()
    }
}

impl Drop for RteMem {
    fn drop(&mut self) {
        self.regions.clear();
        let ptr = NonNull::new(self.addr as *mut u8).expect("an allocated block is not null");
        // SAFETY: the block came from eal::malloc in `alloc`, is freed once here, and its
        // regions are gone, so no new segment can name it; segments borrowed from the
        // owning DmaBuf cannot outlive it.
        unsafe { eal::free(ptr) };
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `(start, len, iova)` of each IOVA-contiguous run of `addr..addr + len`, by page.
fn iova_runs(addr: usize, len: usize, page: usize, mode: IovaMode) -> Result<Vec<(usize, usize, u64)>> {
    let lookup =
        |at: usize| eal::mem_virt2iova(at).ok_or_else(|| Error::NoBusAddress { region: format!("dpdk {at:#x}") });
    if mode == IovaMode::Va {
        // One run: DPDK's IOVA is the virtual address.
        let iova = lookup(addr)?;
        debug_assert_eq!(iova, addr as u64);
        return Ok(vec![(addr, len, iova)]);
    }
    assert!(page.is_power_of_two(), "page size {page}");
    let end = addr + len;
    let mut runs: Vec<(usize, usize, u64)> = Vec::new();
    let mut at = addr;
    while at < end {
        let piece_end = ((at & !(page - 1)) + page).min(end);
        let iova = lookup(at)?;
        match runs.last_mut() {
            Some(run) if run.2 + run.1 as u64 == iova => run.1 += piece_end - at,
            _ => runs.push((at, piece_end - at, iova)),
        }
        at = piece_end;
    }
    debug_assert_eq!(runs.iter().map(|r| r.1).sum::<usize>(), len);
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{DmaBuf, Sgl};
    use std::sync::Once;

    /// EAL arguments of the tests: no hugepages, no PCI, no files (DPDK 22.11 refuses
    /// --in-memory with --no-huge; --no-shconf is its no-huge equivalent).
    pub(crate) const TEST_EAL_ARGS: &[&str] = &[
        "peerless-test",
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "-l",
        "0",
        "-m",
        "128",
        "--log-level=lib.eal:error",
    ];

    /// Starts the EAL once for this test process; the explicit DPDK constructors are
    /// used, so other tests keep the plain backend.
    fn eal() {
        static START: Once = Once::new();
        START.call_once(|| {
            let args: Vec<String> = TEST_EAL_ARGS.iter().map(|s| s.to_string()).collect();
            let info = start(&args).expect("EAL starts with --no-huge");
            assert_eq!((info.iova_mode, info.hugepages), (IovaMode::Va, false));
        });
    }

    #[test]
    fn allocate_translate_free() {
        eal();
        let mut buf = DmaBuf::alloc_dpdk(10_000).expect("EAL heap");
        assert_eq!(buf.backend(), MemEnv::Dpdk);
        assert!(live_buffers() >= 1);
        let addr = buf.addr();
        assert_eq!(registry::classify(addr + 9_999), Some(MemTag::HOST));
        let seg = buf.seg_ref(100, 10).expect("in range").seg();
        assert_eq!(registry::translate(&seg).expect("registered"), eal::mem_virt2iova(addr + 100).expect("iova"));
        let sgl = buf.sgl_mut().expect("under 4 GiB");
        assert!(sgl.cpu_view().expect("host").slices().all(|s| s.iter().all(|&b| b == 0)), "zeroed");
        drop(sgl);
        drop(buf);
        assert_eq!(registry::classify(addr), None, "unregistered on drop");
    }

    #[test]
    fn alignment_for_every_size() {
        eal();
        for len in [1, 511, 4096, 4097, 65_536, 1 << 20, (2 << 20) + 1] {
            let buf = DmaBuf::alloc_dpdk(len).expect("EAL heap");
            assert_eq!(buf.addr() % DMA_ALIGN_BYTES, 0, "{len} bytes");
            assert_eq!(buf.len(), len);
            assert!(!buf.is_huge(), "--no-huge");
        }
        assert!(DmaBuf::alloc_dpdk(0).is_err());
    }

    #[test]
    fn iova_agrees_with_the_registry_across_the_buffer() {
        eal();
        let len = 3 << 20;
        let buf = DmaBuf::alloc_dpdk(len).expect("EAL heap");
        for off in (0..len).step_by(4096 * 37).chain([len - 1]) {
            let seg = buf.seg_ref(off, 1).expect("in range").seg();
            let by_registry = registry::translate(&seg).expect("registered");
            assert_eq!(Some(by_registry), eal::mem_virt2iova(buf.addr() + off), "offset {off}");
            let info = registry::lookup(MemTag::HOST.domain(), buf.addr() + off).expect("region");
            assert_eq!(info.name, "dpdk");
        }
        // SAFETY: the block is live and starts at buf.addr().
        let malloc_iova = unsafe { eal::malloc_virt2iova(NonNull::new(buf.addr() as *mut u8).expect("not null")) };
        assert_eq!(malloc_iova, Some(registry::translate(&buf.seg_ref(0, 1).expect("seg").seg()).expect("iova")));
    }

    #[test]
    fn page_runs_merge_contiguous_iovas() {
        eal();
        // In VA mode the whole buffer is one run; PA-mode merging is checked by mode.
        let buf = DmaBuf::alloc_dpdk(100_000).expect("EAL heap");
        let runs = iova_runs(buf.addr(), 100_000, 4096, IovaMode::Pa).expect("iovas");
        assert_eq!(runs, vec![(buf.addr(), 100_000, buf.addr() as u64)], "IOVA = VA is one run page by page too");
        assert_eq!(buf.iova_runs(), Some(1));
    }

    #[test]
    fn buffers_carry_data_through_the_gate() {
        eal();
        let mut a = DmaBuf::alloc_dpdk(8192).expect("EAL heap");
        let b = DmaBuf::alloc_dpdk(8192).expect("EAL heap");
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        crate::mem::copy(&mut a.sgl_mut().expect("sgl"), &Sgl::from_host(&pattern).expect("sgl")).expect("copy in");
        let mut back = vec![0u8; 8192];
        crate::mem::copy(&mut Sgl::from_host_mut(&mut back).expect("sgl"), &a.sgl().expect("sgl")).expect("copy out");
        assert_eq!(back, pattern);
        drop(b);
    }
}
