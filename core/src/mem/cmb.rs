//! The emulated Controller Memory Buffer: device memory for tests, demos and machines
//! without P2P hardware.
//!
//! A memfd holds the bytes and is mapped twice. The CPU-side mapping is what a segment
//! address names, as a real CMB BAR would be; in strict mode (the default) it is
//! `PROT_NONE`, so code that dereferences device memory faults at once instead of
//! silently working. The private mapping is reachable only inside `core::mem`: the I/O
//! accessors and the emulated DMA engine go through it.
//!
//! With `cpu_mappable: false` the CMB stands in for device memory the CPU cannot map at
//! all (a peer BAR by bus address, GPU memory): no CPU-side mapping exists, segments are
//! tagged Device and named by bus address, and only the DMA engine moves bytes.

use std::fmt;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::map::{Mapping, Prot};
use super::provider::{DmaBufExport, DmaEngine, P2pBuf, P2pProvider};
use super::range_alloc::RangeAlloc;
use super::registry::{self, Region, RegionHandle};
use super::tag::{DomainId, MemKind, MemTag};
use super::udmabuf;
use super::{Error, Result};

/// Allocation granule: NVMe PRP entries name 4 KiB pages.
pub const CMB_GRANULE_BYTES: usize = 4096;
/// Largest emulated CMB; real CMBs are a few MiB to a few GiB.
pub const CMB_MAX_BYTES: usize = 64 << 30;
/// Emulated bus addresses: each CMB gets its own window above this base.
const CMB_BUS_BASE: u64 = 0x4000_0000_0000;
const CMB_BUS_WINDOW: u64 = 1 << 40;

/// How to build an [`EmulatedCmb`].
#[derive(Clone, Debug)]
pub struct CmbConfig {
    pub name: String,
    pub size_bytes: usize,
    /// IoMem (a mapped BAR) when true, Device (no CPU mapping) when false.
    pub cpu_mappable: bool,
    /// CPU-side mapping `PROT_NONE`: any dereference faults.
    pub strict: bool,
    /// Whether the emulated device offers a DMA engine for copies in and out.
    pub dma_engine: bool,
}

impl CmbConfig {
    /// A strict, CPU-mappable CMB with a DMA engine: the default in tests.
    pub fn new(name: &str, size_bytes: usize) -> CmbConfig {
        CmbConfig { name: name.to_string(), size_bytes, cpu_mappable: true, strict: true, dma_engine: true }
    }
}

struct CmbInner {
    name: String,
    domain: DomainId,
    size: usize,
    cpu_mappable: bool,
    strict: bool,
    has_dma: bool,
    /// The address segments name offset 0 by: the CPU-side mapping or the bus base.
    seg_base: usize,
    bus_base: u64,
    private: Mapping,
    /// Kept alive for as long as segments may name it.
    cpu: Option<Mapping>,
    alloc: RangeAlloc,
    /// Kept for the dma-buf export, and alive for as long as segments may name it.
    memfd: OwnedFd,
}

/// An emulated CMB. Dropping it unregisters its region; the memory goes away when the
/// last [`P2pBuf`] from it is dropped too.
pub struct EmulatedCmb {
    // Unregistered before `inner` may unmap (fields drop in order): see `dma::Backing`.
    _region: RegionHandle,
    inner: Arc<CmbInner>,
}

impl EmulatedCmb {
    pub fn new(cfg: CmbConfig) -> Result<EmulatedCmb> {
        if cfg.size_bytes == 0 || !cfg.size_bytes.is_multiple_of(CMB_GRANULE_BYTES) || cfg.size_bytes > CMB_MAX_BYTES {
            return Err(Error::Config(format!(
                "CMB {}: size {} must be a non-zero multiple of {CMB_GRANULE_BYTES} up to {CMB_MAX_BYTES}",
                cfg.name, cfg.size_bytes
            )));
        }
        let fd = memfd(cfg.size_bytes)?;
        let private = Mapping::shared_file(fd.as_fd(), cfg.size_bytes, Prot::ReadWrite)?;
        let cpu = if cfg.cpu_mappable {
            let prot = if cfg.strict { Prot::None } else { Prot::ReadWrite };
            Some(Mapping::shared_file(fd.as_fd(), cfg.size_bytes, prot)?)
        } else {
            None
        };
        let domain = DomainId::allocate();
        let bus_base = CMB_BUS_BASE + u64::from(domain.get()) * CMB_BUS_WINDOW;
        let seg_base = match &cpu {
            Some(m) => m.addr(),
            None => usize::try_from(bus_base)
                .map_err(|_| Error::Config("bus addresses do not fit this platform's usize".into()))?,
        };
        let inner = Arc::new(CmbInner {
            name: cfg.name,
            domain,
            size: cfg.size_bytes,
            cpu_mappable: cfg.cpu_mappable,
            strict: cfg.strict,
            has_dma: cfg.dma_engine,
            seg_base,
            bus_base,
            private,
            cpu,
            alloc: RangeAlloc::new(cfg.size_bytes, CMB_GRANULE_BYTES),
            memfd: fd,
        });
        let kind = inner.kind();
        let region = registry::register(Region {
            name: Arc::from(inner.name.as_str()),
            tag: MemTag::device_side(kind, domain),
            start: seg_base,
            len: inner.size,
            bus_base: Some(bus_base),
            accessor_base: (kind == MemKind::IoMem).then(|| inner.private.addr()),
            provider: Some(Arc::clone(&inner) as Arc<dyn P2pProvider>),
        })?;
        Ok(EmulatedCmb { inner, _region: region })
    }

    pub fn provider(&self) -> Arc<dyn P2pProvider> {
        Arc::clone(&self.inner) as Arc<dyn P2pProvider>
    }

    pub fn alloc(&self, len: usize) -> Result<P2pBuf> {
        P2pBuf::alloc(&self.provider(), len)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn domain(&self) -> DomainId {
        self.inner.domain
    }

    pub fn tag(&self) -> MemTag {
        MemTag::device_side(self.inner.kind(), self.inner.domain)
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.size
    }

    pub fn is_strict(&self) -> bool {
        self.inner.strict
    }

    pub fn bus_base(&self) -> u64 {
        self.inner.bus_base
    }

    /// Where the CPU-side mapping starts (what IoMem segments name), if there is one.
    /// In strict mode any access through it faults.
    pub fn cpu_base(&self) -> Option<usize> {
        self.inner.cpu.as_ref().map(Mapping::addr)
    }

    pub fn available_bytes(&self) -> usize {
        self.inner.alloc.available()
    }
}

impl fmt::Debug for EmulatedCmb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatedCmb")
            .field("name", &self.inner.name)
            .field("tag", &self.tag())
            .field("size", &self.inner.size)
            .field("strict", &self.inner.strict)
            .finish()
    }
}

fn memfd(size: usize) -> Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal; the call creates a new descriptor.
    // Sealable, so the memory can be exported as a dma-buf (udmabuf wants it unshrinkable).
    let raw = unsafe { libc::memfd_create(c"peerless-cmb".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(Error::last_os("memfd_create"));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = libc::off_t::try_from(size).map_err(|_| Error::Config(format!("CMB size {size} does not fit off_t")))?;
    // SAFETY: `fd` is a valid memfd owned above.
    if unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len) } != 0 {
        return Err(Error::last_os("ftruncate memfd"));
    }
    // SAFETY: `fd` is a valid memfd created with MFD_ALLOW_SEALING.
    if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::F_ADD_SEALS, udmabuf::REQUIRED_SEALS) } != 0 {
        return Err(Error::last_os("seal memfd"));
    }
    Ok(fd)
}

impl CmbInner {
    /// Offset of `addr..addr + len` in the CMB, checked.
    fn offset(&self, addr: usize, len: usize) -> Result<usize> {
        addr.checked_sub(self.seg_base)
            .filter(|off| off.checked_add(len).is_some_and(|end| end <= self.size))
            .ok_or(Error::UnknownRegion { domain: self.domain, addr, len })
    }

    fn private_ptr(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.size);
        (self.private.addr() + off) as *mut u8
    }
}

impl DmaEngine for CmbInner {
    fn read(&self, src: usize, dst: &mut [u8]) -> Result<()> {
        let off = self.offset(src, dst.len())?;
        // SAFETY: `off..off + len` is inside the private mapping (checked above), which
        // lives as long as `self`; `dst` is an exclusive host slice, so no overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.private_ptr(off), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn write(&self, dst: usize, src: &[u8]) -> Result<()> {
        let off = self.offset(dst, src.len())?;
        // SAFETY: in bounds of the private mapping (checked); `src` is host memory, and
        // device memory is never borrowed as a slice, so the two cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.private_ptr(off), src.len()) };
        Ok(())
    }

    fn copy(&self, dst: usize, src: usize, len: usize) -> Result<()> {
        let d = self.offset(dst, len)?;
        let s = self.offset(src, len)?;
        // SAFETY: both ranges are inside the private mapping (checked); `ptr::copy`
        // allows them to overlap.
        unsafe { std::ptr::copy(self.private_ptr(s), self.private_ptr(d), len) };
        Ok(())
    }
}

impl P2pProvider for CmbInner {
    fn name(&self) -> &str {
        &self.name
    }

    fn domain(&self) -> DomainId {
        self.domain
    }

    fn cpu_mappable(&self) -> bool {
        self.cpu_mappable
    }

    fn dma_engine(&self) -> Option<&dyn DmaEngine> {
        self.has_dma.then_some(self as &dyn DmaEngine)
    }

    fn allocate(&self, len: usize) -> Result<usize> {
        self.alloc.allocate_from(self.seg_base, len, &self.name)
    }

    fn free(&self, addr: usize, len: usize) {
        self.alloc.free_from(self.seg_base, addr, len, &self.name);
    }

    fn capacity_bytes(&self) -> usize {
        self.alloc.capacity()
    }

    fn available_bytes(&self) -> usize {
        self.alloc.available()
    }

    fn export_dma_buf(&self) -> std::result::Result<DmaBufExport, String> {
        let fd = udmabuf::export(self.memfd.as_fd(), self.size)?;
        Ok(DmaBufExport { fd, len: self.size, seg_base: self.seg_base })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_ENV: &str = "PEERLESS_CMB_FAULT_CHILD";
    const FAULT_TEST: &str = "mem::cmb::tests::strict_cpu_mapping_faults_in_a_child";

    #[test]
    fn strict_cpu_mapping_faults_in_a_child() {
        if std::env::var_os(CHILD_ENV).is_some() {
            let cmb = EmulatedCmb::new(CmbConfig::new("fault", 1 << 16)).expect("cmb");
            let addr = cmb.cpu_base().expect("cpu-mappable cmb");
            // SAFETY: deliberately not safe: this runs only in the re-executed child,
            // whose parent asserts that this read of PROT_NONE memory kills it.
            let byte = unsafe { std::ptr::read_volatile(addr as *const u8) };
            eprintln!("read {byte} through a strict CMB mapping: strictness is broken");
            std::process::exit(0);
        }
        let exe = std::env::current_exe().expect("test binary path");
        let out = std::process::Command::new(exe)
            .args([FAULT_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .expect("re-exec the test binary");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSEGV),
            "child should die of SIGSEGV; status {:?}, stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn allocations_come_back_and_are_bounded() {
        let cmb = EmulatedCmb::new(CmbConfig::new("alloc", 4 * CMB_GRANULE_BYTES)).expect("cmb");
        let a = cmb.alloc(100).expect("first");
        let b = cmb.alloc(3 * CMB_GRANULE_BYTES).expect("rest");
        assert!(matches!(cmb.alloc(1), Err(Error::ProviderFull { .. })));
        assert_eq!(a.tag(), cmb.tag());
        assert_eq!(a.tag().kind(), MemKind::IoMem);
        assert_eq!(a.seg().addr(), cmb.cpu_base().expect("mapped"));
        drop((a, b));
        assert_eq!(cmb.available_bytes(), cmb.size_bytes());
    }

    /// Where the kernel has udmabuf the export is a dma-buf over the very bytes the CMB
    /// holds; where it has none, the reason names the missing device.
    #[test]
    fn exports_its_bytes_as_a_dma_buf_or_says_why_not() {
        let cmb = EmulatedCmb::new(CmbConfig::new("export", 4 * CMB_GRANULE_BYTES)).expect("cmb");
        let buf = cmb.alloc(CMB_GRANULE_BYTES).expect("alloc");
        let offset = buf.seg().addr() - cmb.inner.seg_base;
        cmb.inner.write(buf.seg().addr(), b"placed by the NIC").expect("write");
        match cmb.provider().export_dma_buf() {
            Ok(export) => {
                assert_eq!(export.len, cmb.size_bytes());
                assert_eq!(export.seg_base, cmb.cpu_base().expect("mapped"));
                let view =
                    Mapping::shared_file(export.fd.as_fd(), export.len, Prot::ReadWrite).expect("mmap the dma-buf");
                let mut seen = [0u8; 17];
                for (i, byte) in seen.iter_mut().enumerate() {
                    // SAFETY: in bounds of a live mapping of the exported memfd.
                    *byte = unsafe { std::ptr::read_volatile((view.addr() + offset + i) as *const u8) };
                }
                assert_eq!(&seen, b"placed by the NIC");
            }
            Err(why) => {
                assert!(!std::path::Path::new("/dev/udmabuf").exists(), "udmabuf is here but the export failed: {why}");
                assert!(why.contains("/dev/udmabuf"), "{why}");
            }
        }
    }

    #[test]
    fn translate_and_classify_see_the_cmb() {
        let cmb = EmulatedCmb::new(CmbConfig::new("xlate", 8 * CMB_GRANULE_BYTES)).expect("cmb");
        let _first = cmb.alloc(CMB_GRANULE_BYTES).expect("first");
        let buf = cmb.alloc(CMB_GRANULE_BYTES).expect("second");
        let bus = registry::translate(&buf.seg()).expect("registered");
        assert_eq!(bus, cmb.bus_base() + CMB_GRANULE_BYTES as u64);
        assert_eq!(registry::classify(buf.seg().addr()), Some(cmb.tag()));
    }

    #[test]
    fn device_mode_has_no_cpu_mapping() {
        let mut cfg = CmbConfig::new("dev", 4 * CMB_GRANULE_BYTES);
        cfg.cpu_mappable = false;
        let cmb = EmulatedCmb::new(cfg).expect("cmb");
        assert!(cmb.cpu_base().is_none());
        let buf = cmb.alloc(10).expect("alloc");
        assert_eq!(buf.tag().kind(), MemKind::Device);
        assert_eq!(buf.seg().addr() as u64, cmb.bus_base());
        assert_eq!(registry::classify(buf.seg().addr()), None);
    }

    #[test]
    fn bad_sizes_are_config_errors() {
        for size in [0, 100, CMB_MAX_BYTES + CMB_GRANULE_BYTES] {
            assert!(matches!(EmulatedCmb::new(CmbConfig::new("bad", size)), Err(Error::Config(_))));
        }
    }
}
