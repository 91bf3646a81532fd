//! Linux p2pmem: device memory (usually an NVMe CMB) published by the kernel's PCI
//! P2PDMA layer and handed to user space by mmap of
//! `/sys/bus/pci/devices/<bdf>/p2pmem/allocate` (kernels >= 6.2 with
//! `CONFIG_PCI_P2PDMA`). Each mapping is a fresh allocation from the device's pool; we
//! map one region at start-up and carve buffers from it. The CPU reaches it only
//! through I/O accessors (it is a BAR), so it is tagged IoMem. O_DIRECT reads and writes
//! to NVMe accept these pages; io_uring fixed buffers do not (the kernel forbids long-term
//! pins of P2P pages), so P2P segments go through non-fixed io_uring ops.
//!
//! The development machines' kernels have no P2PDMA: the tests run this same mapping and
//! bookkeeping code against an ordinary file named by path, standing in for `allocate`.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::map::{Mapping, Prot};
use super::provider::{DmaEngine, P2pBuf, P2pProvider};
use super::range_alloc::RangeAlloc;
use super::registry::{self, Region, RegionHandle};
use super::tag::{DomainId, MemKind, MemTag};
use super::{Error, Result};

/// Allocation granule inside the mapping: a page, as PRP entries need.
pub const P2PMEM_GRANULE_BYTES: usize = 4096;
/// Largest region mapped at once.
pub const P2PMEM_MAX_BYTES: usize = 64 << 30;
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

struct P2pMemInner {
    name: String,
    domain: DomainId,
    map: Mapping,
    alloc: RangeAlloc,
}

/// A p2pmem region of one PCI device. Dropping it unregisters the region; the mapping
/// goes when the last buffer from it does.
pub struct P2pMem {
    // Unregistered before `inner` may unmap (fields drop in order): see `dma::Backing`.
    _region: RegionHandle,
    inner: Arc<P2pMemInner>,
    path: PathBuf,
}

impl P2pMem {
    /// Maps `size_bytes` of the p2pmem of PCI device `bdf` ("0000:01:00.0").
    pub fn open_bdf(bdf: &str, size_bytes: usize) -> Result<P2pMem> {
        if !valid_bdf(bdf) {
            return Err(Error::Config(format!("{bdf:?} is not a PCI address of the form 0000:01:00.0")));
        }
        let dir = Path::new(SYSFS_PCI_DEVICES).join(bdf).join("p2pmem");
        let available = std::fs::read_to_string(dir.join("available")).map_err(|source| Error::File {
            path: dir.join("available"),
            what: "read p2pmem availability (no CONFIG_PCI_P2PDMA, or no CMB published?)",
            source,
        })?;
        if let Ok(avail) = available.trim().parse::<usize>() {
            if avail < size_bytes {
                return Err(Error::Config(format!("{bdf}: {size_bytes} bytes of p2pmem wanted, {avail} available")));
            }
        }
        P2pMem::open_path(&dir.join("allocate"), &format!("p2pmem {bdf}"), size_bytes)
    }

    /// Maps `size_bytes` of the file at `path`: sysfs `allocate`, or a stand-in in tests.
    pub fn open_path(path: &Path, name: &str, size_bytes: usize) -> Result<P2pMem> {
        if size_bytes == 0 || !size_bytes.is_multiple_of(P2PMEM_GRANULE_BYTES) || size_bytes > P2PMEM_MAX_BYTES {
            return Err(Error::Config(format!(
                "{name}: size {size_bytes} must be a non-zero multiple of {P2PMEM_GRANULE_BYTES} up to {P2PMEM_MAX_BYTES}"
            )));
        }
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            what: "open for mapping",
            source,
        })?;
        // The kernel's p2pmem mmap insists on offset 0 and a shared mapping.
        let map = Mapping::shared_file(file.as_fd(), size_bytes, Prot::ReadWrite).map_err(|e| match e {
            Error::Os { source, .. } => Error::File { path: path.to_path_buf(), what: "mmap", source },
            other => other,
        })?;
        let domain = DomainId::allocate();
        let inner = Arc::new(P2pMemInner {
            name: name.to_string(),
            domain,
            alloc: RangeAlloc::new(size_bytes, P2PMEM_GRANULE_BYTES),
            map,
        });
        let region = registry::register(Region {
            name: Arc::from(name),
            tag: MemTag::device_side(MemKind::IoMem, domain),
            start: inner.map.addr(),
            len: size_bytes,
            // The bus address of P2P pages is the kernel's business (O_DIRECT takes the
            // virtual address); a VFIO mapping would know it.
            bus_base: None,
            // The real BAR mapping: accessors use the CPU mapping itself.
            accessor_base: Some(inner.map.addr()),
            provider: Some(Arc::clone(&inner) as Arc<dyn P2pProvider>),
        })?;
        Ok(P2pMem { inner, path: path.to_path_buf(), _region: region })
    }

    pub fn provider(&self) -> Arc<dyn P2pProvider> {
        Arc::clone(&self.inner) as Arc<dyn P2pProvider>
    }

    pub fn alloc(&self, len: usize) -> Result<P2pBuf> {
        P2pBuf::alloc(&self.provider(), len)
    }

    pub fn tag(&self) -> MemTag {
        MemTag::device_side(MemKind::IoMem, self.inner.domain)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.alloc.capacity()
    }

    pub fn available_bytes(&self) -> usize {
        self.inner.alloc.available()
    }
}

impl fmt::Debug for P2pMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P2pMem")
            .field("name", &self.inner.name)
            .field("path", &self.path)
            .field("tag", &self.tag())
            .finish()
    }
}

/// `dddd:bb:dd.f` in hex, as sysfs names PCI functions.
fn valid_bdf(bdf: &str) -> bool {
    let b = bdf.as_bytes();
    b.len() == 12
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b':',
            10 => c == b'.',
            11 => (b'0'..=b'7').contains(&c),
            _ => c.is_ascii_hexdigit(),
        })
}

impl P2pProvider for P2pMemInner {
    fn name(&self) -> &str {
        &self.name
    }

    fn domain(&self) -> DomainId {
        self.domain
    }

    fn cpu_mappable(&self) -> bool {
        true
    }

    /// The device DMAs by itself (O_DIRECT to the NVMe); user space has no engine.
    fn dma_engine(&self) -> Option<&dyn DmaEngine> {
        None
    }

    fn allocate(&self, len: usize) -> Result<usize> {
        self.alloc.allocate_from(self.map.addr(), len, &self.name)
    }

    fn free(&self, addr: usize, len: usize) {
        self.alloc.free_from(self.map.addr(), addr, len, &self.name);
    }

    fn capacity_bytes(&self) -> usize {
        self.alloc.capacity()
    }

    fn available_bytes(&self) -> usize {
        self.alloc.available()
    }

    /// Linux's p2pmem pages cannot be pinned long-term (FOLL_LONGTERM refuses P2PDMA
    /// pages), so a NIC cannot register them from user space, and the p2pmem file has no
    /// dma-buf export.
    fn export_dma_buf(&self) -> std::result::Result<super::DmaBufExport, String> {
        Err("kernel p2pmem has no dma-buf export, and its pages cannot be pinned for a NIC".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{copy, Sgl};

    const SIZE: usize = 16 * P2PMEM_GRANULE_BYTES;

    fn stand_in(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("peerless-p2pmem-{}-{name}", std::process::id()));
        let file = std::fs::File::create(&path).expect("temp file");
        file.set_len(SIZE as u64).expect("size stand-in");
        path
    }

    #[test]
    fn stand_in_region_is_iomem_through_accessors() {
        let path = stand_in("rw");
        let p2p = P2pMem::open_path(&path, "p2pmem test", SIZE).expect("map stand-in");
        let mut buf = p2p.alloc(5000).expect("alloc");
        assert_eq!(buf.tag().kind(), MemKind::IoMem);
        assert!(buf.sgl().cpu_view().is_err(), "the gate holds for p2pmem too");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        copy(&mut buf.sgl_mut(), &Sgl::from_host(&data).expect("host")).expect("to p2pmem");
        let mut back = vec![0u8; 5000];
        copy(&mut Sgl::from_host_mut(&mut back).expect("host"), &buf.sgl()).expect("back");
        assert_eq!(back, data);
        assert!(matches!(registry::translate(&buf.seg()), Err(Error::NoBusAddress { .. })));
        drop(buf);
        assert_eq!(p2p.available_bytes(), SIZE);
        // The bytes went to the file: what the device's BAR would hold.
        let on_disk = std::fs::read(&path).expect("read stand-in");
        assert_eq!(&on_disk[..5000], &data[..]);
        drop(p2p);
        std::fs::remove_file(&path).expect("clean up");
    }

    #[test]
    fn bdf_and_size_are_checked_before_touching_sysfs() {
        for bad in ["", "0000:01:00", "0000:01:00.8", "../../etc/pwd", "0000:0g:00.0"] {
            assert!(matches!(P2pMem::open_bdf(bad, SIZE), Err(Error::Config(_))), "{bad}");
        }
        assert!(valid_bdf("0000:af:1f.7"));
        let path = stand_in("size");
        assert!(matches!(P2pMem::open_path(&path, "x", 100), Err(Error::Config(_))));
        std::fs::remove_file(&path).expect("clean up");
    }

    #[test]
    fn a_machine_without_p2pdma_gets_an_error_naming_the_file() {
        match P2pMem::open_bdf("ffff:ff:1f.7", SIZE) {
            Err(Error::File { path, .. }) => assert!(path.ends_with("available")),
            other => panic!("expected a file error, got {other:?}"),
        }
    }
}
