//! The region registry: which registered memory an address belongs to, with what tag,
//! owned by which provider, and at what bus address (the "p2p radix tree" of the original
//! patch series).
//!
//! Registration is control plane (a write lock, a copy-on-write map). Lookups are data
//! plane: each thread keeps the snapshot it last saw and re-reads it only when the
//! registry's generation moved, so a lookup is one relaxed load and a map search, no lock.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::RwLock;

use super::pci::watch as host_watch;
use super::provider::P2pProvider;
use super::sgl::Seg;
use super::tag::{DomainId, MemKind, MemTag};
use super::{Error, Result};

/// A registered region, as the data path sees it.
#[derive(Clone)]
pub(crate) struct Region {
    pub(crate) name: Arc<str>,
    pub(crate) tag: MemTag,
    /// First address, in the address space segments of this kind use.
    pub(crate) start: usize,
    pub(crate) len: usize,
    /// Bus (IOVA) address of `start`, when known.
    pub(crate) bus_base: Option<u64>,
    /// Where I/O accessors reach the bytes of an IoMem region (the private mapping of an
    /// emulated CMB, the real mapping of p2pmem). Only `core::mem` fills it in.
    pub(crate) accessor_base: Option<usize>,
    pub(crate) provider: Option<Arc<dyn P2pProvider>>,
}

impl Region {
    fn end(&self) -> usize {
        self.start + self.len
    }

    fn covers(&self, addr: usize, len: usize) -> bool {
        addr >= self.start && addr.checked_add(len).is_some_and(|e| e <= self.end())
    }

    /// The accessor address of `addr..addr + len`, checked against the region.
    pub(crate) fn accessor(&self, addr: usize, len: usize) -> Option<usize> {
        let base = self.accessor_base?;
        self.covers(addr, len).then(|| base + (addr - self.start))
    }

    fn has_cpu_address(&self) -> bool {
        matches!(self.tag.kind(), MemKind::Host | MemKind::IoMem)
    }
}

/// What a lookup tells a caller outside `core::mem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub name: String,
    pub tag: MemTag,
    pub start: usize,
    pub len: usize,
    pub bus_base: Option<u64>,
}

impl From<&Region> for RegionInfo {
    fn from(r: &Region) -> RegionInfo {
        RegionInfo { name: r.name.to_string(), tag: r.tag, start: r.start, len: r.len, bus_base: r.bus_base }
    }
}

/// An immutable view of all regions.
#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    by_domain: BTreeMap<(DomainId, usize), Region>,
    /// CPU virtual address -> key, for classifying a bare pointer.
    by_cpu: BTreeMap<usize, (DomainId, usize)>,
}

impl Snapshot {
    /// The region of `domain` that holds all of `addr..addr + len`.
    pub(crate) fn find(&self, domain: DomainId, addr: usize, len: usize) -> Option<&Region> {
        let (_, region) = self.by_domain.range(..=(domain, addr)).next_back()?;
        (region.tag.domain() == domain && region.covers(addr, len)).then_some(region)
    }

    /// The region for a segment, or the error that names what was missing.
    pub(crate) fn find_seg(&self, seg: &Seg) -> Result<&Region> {
        self.find(seg.tag().domain(), seg.addr(), seg.len()).ok_or(Error::UnknownRegion {
            domain: seg.tag().domain(),
            addr: seg.addr(),
            len: seg.len(),
        })
    }

    fn find_cpu(&self, addr: usize) -> Option<&Region> {
        let (_, key) = self.by_cpu.range(..=addr).next_back()?;
        let region = self.by_domain.get(key)?;
        region.covers(addr, 1).then_some(region)
    }

    fn overlaps(&self, r: &Region) -> bool {
        let domain = r.tag.domain();
        let before = self.by_domain.range(..(domain, r.end())).next_back();
        let clash = before.is_some_and(|(_, b)| b.tag.domain() == domain && b.end() > r.start);
        let cpu_clash = r.has_cpu_address()
            && self
                .by_cpu
                .range(..r.end())
                .next_back()
                .and_then(|(_, key)| self.by_domain.get(key))
                .is_some_and(|b| b.end() > r.start);
        clash || cpu_clash
    }
}

struct Registry {
    current: RwLock<Arc<Snapshot>>,
    /// Bumped after every change, so threads know to re-read `current`.
    generation: AtomicU64,
}

static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry { current: RwLock::new(Arc::new(Snapshot::default())), generation: AtomicU64::new(1) });

/// Keeps a region registered; unregisters it on drop.
pub(crate) struct RegionHandle {
    key: (DomainId, usize),
}

impl fmt::Debug for RegionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionHandle({}, {:#x})", self.key.0, self.key.1)
    }
}

/// Adds a region. Regions of one domain, and regions with CPU addresses, never overlap.
///
/// A Host region is announced to the [`watch_host_memory`](super::pci::watch_host_memory)
/// listeners before this returns, so before any buffer from it is handed out; a listener's
/// refusal unregisters it again and fails the call with the listener's error.
pub(crate) fn register(region: Region) -> Result<RegionHandle> {
    if region.tag != MemTag::HOST {
        return insert(region).map(|key| RegionHandle { key });
    }
    let (start, len) = (region.start, region.len);
    // Held across the insertion and the announcement (not the registry's lock, which
    // listeners may need for lookups): see `pci::watch` for the ordering.
    let notify = host_watch::lock();
    let mut inserted = Inserted(Some(insert(region)?));
    // A refusal (or a panicking listener) drops `inserted`, which takes the region out
    // again; listeners that took it were already told it is gone.
    notify.added(start, len)?;
    let key = inserted.0.take().expect("set above");
    Ok(RegionHandle { key })
}

/// A region in the registry whose announcement has not succeeded yet.
struct Inserted(Option<(DomainId, usize)>);

impl Drop for Inserted {
    fn drop(&mut self) {
        if let Some(key) = self.0.take() {
            remove(key);
        }
    }
}

fn insert(region: Region) -> Result<(DomainId, usize)> {
    assert!(region.len > 0, "empty region");
    assert!(
        region.accessor_base.is_none() || region.tag.kind() == MemKind::IoMem,
        "only IoMem regions have accessor mappings"
    );
    let key = (region.tag.domain(), region.start);
    let mut current = REGISTRY.current.write();
    if current.overlaps(&region) {
        return Err(Error::RegionOverlap { domain: region.tag.domain(), addr: region.start, len: region.len });
    }
    let mut next = Snapshot::clone(&current);
    if region.has_cpu_address() {
        next.by_cpu.insert(region.start, key);
    }
    next.by_domain.insert(key, region);
    *current = Arc::new(next);
    // Control plane, under the write lock: the only writer of the generation.
    REGISTRY.generation.fetch_add(1, Ordering::Release);
    Ok(key)
}

impl Drop for RegionHandle {
    fn drop(&mut self) {
        if self.key.0 != DomainId::HOST {
            remove(self.key);
            return;
        }
        // Withdrawn after it left the registry, while its owner still has it mapped.
        let notify = host_watch::lock();
        if let Some(region) = remove(self.key) {
            notify.removed(region.start, region.len);
        }
    }
}

fn remove(key: (DomainId, usize)) -> Option<Region> {
    let mut current = REGISTRY.current.write();
    let mut next = Snapshot::clone(&current);
    let removed = next.by_domain.remove(&key);
    debug_assert!(removed.is_some(), "region registered twice or removed twice");
    if removed.as_ref().is_some_and(|r| r.has_cpu_address()) {
        next.by_cpu.remove(&key.1);
    }
    *current = Arc::new(next);
    REGISTRY.generation.fetch_add(1, Ordering::Release);
    removed
}

/// Start and length of every registered Host region, for a new listener's replay.
pub(crate) fn host_regions() -> Vec<(usize, usize)> {
    let current = REGISTRY.current.read();
    current
        .by_domain
        .range((DomainId::HOST, 0)..=(DomainId::HOST, usize::MAX))
        .map(|(_, region)| (region.start, region.len))
        .collect()
}

/// A thread's handle on a snapshot: an `Rc` so that handing it to an iterator or chunk
/// costs a plain increment, not an atomic one.
pub(crate) type SnapRef = Rc<Arc<Snapshot>>;

thread_local! {
    static CACHE: RefCell<(u64, Option<SnapRef>)> = const { RefCell::new((0, None)) };
}

/// This thread's view of the registry, refreshed only when the generation moved.
pub(crate) fn snapshot() -> SnapRef {
    let generation = REGISTRY.generation.load(Ordering::Acquire);
    let cached = CACHE.try_with(|cache| {
        let mut slot = cache.borrow_mut();
        match &slot.1 {
            Some(snap) if slot.0 == generation => Rc::clone(snap),
            _ => {
                let snap = Rc::new(Arc::clone(&REGISTRY.current.read()));
                *slot = (generation, Some(Rc::clone(&snap)));
                snap
            }
        }
    });
    // Thread-local storage is being torn down: read the registry directly.
    cached.unwrap_or_else(|_| Rc::new(Arc::clone(&REGISTRY.current.read())))
}

pub(crate) fn with_snapshot<R>(f: impl FnOnce(&Snapshot) -> R) -> R {
    f(&snapshot())
}

/// The region of `domain` holding `addr`.
pub fn lookup(domain: DomainId, addr: usize) -> Option<RegionInfo> {
    with_snapshot(|s| s.find(domain, addr, 1).map(RegionInfo::from))
}

/// The bus address of byte `addr` of `domain`'s memory, when its region has one. Data
/// path (a driver's PRPs, page by page): no allocation, unlike [`lookup`].
pub fn bus_address(domain: DomainId, addr: usize) -> Option<u64> {
    with_snapshot(|s| {
        let region = s.find(domain, addr, 1)?;
        Some(region.bus_base? + (addr - region.start) as u64)
    })
}

/// The tag of registered memory at CPU address `addr` (DMA memory, IoMem mappings).
pub fn classify(addr: usize) -> Option<MemTag> {
    with_snapshot(|s| s.find_cpu(addr).map(|r| r.tag))
}

/// The bus address of a segment, for building PRPs or NVMe SGL descriptors.
pub fn translate(seg: &Seg) -> Result<u64> {
    with_snapshot(|s| {
        let region = s.find_seg(seg)?;
        let base = region.bus_base.ok_or_else(|| Error::NoBusAddress { region: region.name.to_string() })?;
        Ok(base + (seg.addr() - region.start) as u64)
    })
}

/// The provider called `name`, if one has memory registered (control plane: a scan).
pub fn provider_named(name: &str) -> Option<Arc<dyn P2pProvider>> {
    with_snapshot(|s| {
        s.by_domain.values().find_map(|region| region.provider.as_ref().filter(|p| p.name() == name).cloned())
    })
}

/// The provider that owns a segment's domain, if it is device memory.
pub fn provider_of(seg: &Seg) -> Option<Arc<dyn P2pProvider>> {
    with_snapshot(|s| s.find_seg(seg).ok().and_then(|r| r.provider.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(tag: MemTag, start: usize, len: usize) -> Region {
        Region {
            name: Arc::from("test"),
            tag,
            start,
            len,
            bus_base: Some(0x1000_0000),
            accessor_base: None,
            provider: None,
        }
    }

    #[test]
    fn register_lookup_translate_unregister() {
        let domain = DomainId::allocate();
        let tag = MemTag::device_side(MemKind::Device, domain);
        let handle = register(region(tag, 0x4000, 0x2000)).expect("fresh domain");
        assert!(register(region(tag, 0x5000, 0x100)).is_err(), "overlap refused");
        let info = lookup(domain, 0x5fff).expect("inside");
        assert_eq!((info.start, info.len, info.tag), (0x4000, 0x2000, tag));
        assert!(lookup(domain, 0x6000).is_none());
        assert!(lookup(DomainId::allocate(), 0x4000).is_none());
        let seg = Seg::new(0x4100, 0x100, tag, false);
        assert_eq!(translate(&seg).expect("registered"), 0x1000_0100);
        let too_long = Seg::new(0x5f00, 0x200, tag, false);
        assert!(matches!(translate(&too_long), Err(Error::UnknownRegion { .. })));
        drop(handle);
        assert!(lookup(domain, 0x4000).is_none());
    }

    #[test]
    fn device_address_spaces_do_not_clash_but_cpu_addresses_do() {
        let (a, b) = (DomainId::allocate(), DomainId::allocate());
        let ta = MemTag::device_side(MemKind::Device, a);
        let tb = MemTag::device_side(MemKind::Device, b);
        let _ha = register(region(ta, 0, 4096)).expect("a");
        let _hb = register(region(tb, 0, 4096)).expect("b: separate address space");
        // CPU addresses are one space: classify must be unambiguous.
        let backing = vec![0u8; 8192];
        let va = backing.as_ptr() as usize;
        let ia = MemTag::device_side(MemKind::IoMem, a);
        let ib = MemTag::device_side(MemKind::IoMem, b);
        let _hc = register(region(ia, va, 4096)).expect("cpu range");
        assert!(register(region(ib, va + 100, 10)).is_err());
        assert_eq!(classify(va + 4095), Some(ia));
        assert_eq!(classify(va + 4096), None);
    }
}
