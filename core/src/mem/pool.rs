//! Data buffers in the style of SPDK's iobuf: a small (8 KiB) and a large (132 KiB) pool
//! carved from DMA memory at start-up, per-thread caches in front of them, and a wait
//! queue when both are empty.
//!
//! Steady state allocates nothing: a cache hit is a `Vec` pop on the owning thread; a
//! miss moves a batch from the shared lock-free queue (the cross-thread hand-off, as
//! SPDK's DPDK ring is). Running out is an expected state: the caller's waiter is queued
//! and handed a buffer when one comes back to that cache, or by [`IoBufCache::poll`].

use std::collections::VecDeque;
use std::fmt;

use crossbeam_queue::ArrayQueue;

use super::dma::DmaBuf;
use super::sgl::{Seg, SegRef, Sgl};
use super::tag::MemTag;
use super::{Error, Result};

pub const IOBUF_SMALL_BYTES: usize = 8 * 1024;
/// 128 KiB of data plus room for metadata and alignment, as SPDK sizes it.
pub const IOBUF_LARGE_BYTES: usize = 132 * 1024;
/// Largest per-thread cache of one class.
pub const IOBUF_CACHE_MAX: usize = 4096;
/// Waiters one cache queues per class before refusing more.
pub const IOBUF_WAITERS_MAX: usize = 4096;
/// Most buffers one pool may hold per class (indexes are `u32`, memory is finite).
pub const IOBUF_COUNT_MAX: usize = 1 << 20;

/// Which pool a buffer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoBufClass {
    Small,
    Large,
}

impl IoBufClass {
    pub const ALL: [IoBufClass; 2] = [IoBufClass::Small, IoBufClass::Large];

    const fn index(self) -> usize {
        match self {
            IoBufClass::Small => 0,
            IoBufClass::Large => 1,
        }
    }
}

/// Sizes fixed at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub small_count: usize,
    pub large_count: usize,
    /// Per-thread cache size of each class.
    pub small_cache: usize,
    pub large_cache: usize,
    /// Buffer size of each class: a multiple of the DMA alignment, small <= large.
    pub small_bytes: usize,
    pub large_bytes: usize,
}

impl Default for PoolConfig {
    /// SPDK's iobuf defaults.
    fn default() -> Self {
        PoolConfig {
            small_count: 8192,
            large_count: 1024,
            small_cache: 128,
            large_cache: 16,
            small_bytes: IOBUF_SMALL_BYTES,
            large_bytes: IOBUF_LARGE_BYTES,
        }
    }
}

struct Class {
    mem: DmaBuf,
    size: usize,
    count: usize,
    cache: usize,
    free: ArrayQueue<u32>,
}

/// The shared pools. Create once at start-up; caches and buffers borrow it.
pub struct IoBufPool {
    classes: [Class; 2],
}

impl IoBufPool {
    pub fn new(cfg: PoolConfig) -> Result<IoBufPool> {
        if cfg.small_bytes > cfg.large_bytes {
            return Err(Error::Config(format!(
                "iobuf sizes: small ({}) must not exceed large ({})",
                cfg.small_bytes, cfg.large_bytes
            )));
        }
        let small = Class::new(IoBufClass::Small, cfg.small_count, cfg.small_cache, cfg.small_bytes)?;
        let large = Class::new(IoBufClass::Large, cfg.large_count, cfg.large_cache, cfg.large_bytes)?;
        Ok(IoBufPool { classes: [small, large] })
    }

    /// Buffer size of a class in this pool.
    pub fn size_bytes(&self, class: IoBufClass) -> usize {
        self.class(class).size
    }

    /// The smallest class that holds `len` bytes.
    pub fn class_for(&self, len: usize) -> Option<IoBufClass> {
        IoBufClass::ALL.into_iter().find(|class| len <= self.size_bytes(*class))
    }

    /// Bytes of memory the pool holds (both classes).
    pub fn memory_bytes(&self) -> usize {
        self.classes.iter().map(|class| class.size * class.count).sum()
    }

    fn class(&self, class: IoBufClass) -> &Class {
        &self.classes[class.index()]
    }

    /// Buffers in the shared pool now (not those in caches or in use).
    pub fn available(&self, class: IoBufClass) -> usize {
        self.class(class).free.len()
    }

    pub fn capacity(&self, class: IoBufClass) -> usize {
        self.class(class).count
    }

    /// A cache for the calling thread (or lightweight thread).
    pub fn cache(&self) -> IoBufCache<'_> {
        IoBufCache {
            pool: self,
            free: IoBufClass::ALL.map(|c| Vec::with_capacity(self.class(c).cache)),
            waiters: IoBufClass::ALL.map(|_| VecDeque::new()),
        }
    }

    fn buf(&self, class: IoBufClass, index: u32) -> IoBuf<'_> {
        debug_assert!((index as usize) < self.class(class).count);
        IoBuf { pool: self, class, index }
    }

    fn release(&self, class: IoBufClass, index: u32) {
        let pushed = self.class(class).free.push(index);
        assert!(pushed.is_ok(), "more buffers returned than the pool holds");
    }
}

impl Class {
    fn new(class: IoBufClass, count: usize, cache: usize, size: usize) -> Result<Class> {
        if count == 0 || count > IOBUF_COUNT_MAX || cache > IOBUF_CACHE_MAX || cache > count {
            return Err(Error::Config(format!(
                "{class:?} iobuf pool: count {count} must be 1..={IOBUF_COUNT_MAX}, cache \
                 {cache} at most {IOBUF_CACHE_MAX} and at most count"
            )));
        }
        // Each buffer starts on a page: O_DIRECT and PRPs need that alignment.
        if size == 0 || !size.is_multiple_of(super::dma::DMA_ALIGN_BYTES) || size > u32::MAX as usize {
            return Err(Error::Config(format!(
                "{class:?} iobuf size {size} must be a non-zero multiple of {}",
                super::dma::DMA_ALIGN_BYTES
            )));
        }
        let mem = DmaBuf::alloc(count * size)?;
        let free = ArrayQueue::new(count);
        for i in 0..count as u32 {
            let pushed = free.push(i);
            debug_assert!(pushed.is_ok());
        }
        Ok(Class { mem, size, count, cache, free })
    }
}

impl fmt::Debug for IoBufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("IoBufPool");
        for c in IoBufClass::ALL {
            d.field(&format!("{c:?}"), &(self.available(c), self.capacity(c)));
        }
        d.finish()
    }
}

/// One pool buffer. Dropping it returns it to the shared pool; [`IoBufCache::put`]
/// returns it to a cache (and to a waiter first).
pub struct IoBuf<'p> {
    pool: &'p IoBufPool,
    class: IoBufClass,
    index: u32,
}

impl<'p> IoBuf<'p> {
    pub fn class(&self) -> IoBufClass {
        self.class
    }

    pub fn len(&self) -> usize {
        self.pool.class(self.class).size
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn seg(&self, writable: bool) -> Seg {
        let c = self.pool.class(self.class);
        let addr = c.mem.addr() + self.index as usize * c.size;
        Seg::new(addr, c.size as u32, MemTag::HOST, writable)
    }

    pub fn seg_ref(&self) -> SegRef<'_> {
        SegRef::from_owner(self.seg(false))
    }

    /// The buffer's bytes. Pool memory is host memory by construction (its segments are
    /// tagged Host), so the CPU may read it without the tagged list a caller would
    /// otherwise build and check for every send.
    pub fn bytes(&self) -> &[u8] {
        let seg = self.seg(false);
        // SAFETY: the segment is this buffer's own host memory, live while `self` is
        // borrowed; a `&mut` to it needs `seg_ref_mut(&mut self)`, which that borrow
        // excludes.
        unsafe { super::view::host_slice(&seg) }
    }

    /// The buffer's bytes, writable: a transport reads a socket straight into them.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let seg = self.seg(true);
        // SAFETY: the segment is this buffer's own host memory, live and exclusively
        // borrowed with `self` for the slice's life.
        unsafe { super::view::host_slice_mut(&seg) }
    }

    pub fn seg_ref_mut(&mut self) -> SegRef<'_> {
        SegRef::from_owner(self.seg(true))
    }

    pub fn sgl(&self) -> Sgl<'_> {
        let mut s = Sgl::new();
        let pushed = s.push(self.seg_ref());
        debug_assert!(pushed.is_ok());
        s
    }

    pub fn sgl_mut(&mut self) -> Sgl<'_> {
        let mut s = Sgl::new();
        let pushed = s.push(self.seg_ref_mut());
        debug_assert!(pushed.is_ok());
        s
    }

    /// Gives up ownership without returning the buffer anywhere: for caches.
    fn into_index(self) -> u32 {
        let index = self.index;
        std::mem::forget(self);
        index
    }
}

impl Drop for IoBuf<'_> {
    fn drop(&mut self) {
        self.pool.release(self.class, self.index);
    }
}

impl fmt::Debug for IoBuf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoBuf({:?} #{})", self.class, self.index)
    }
}

/// Called with a buffer once one is free. Boxed only when the pool has run dry.
type Waiter<'p> = Box<dyn FnOnce(IoBuf<'p>) + 'p>;

/// A per-thread cache of both classes and the waiters queued on it. Not `Send`: it
/// belongs to the thread that made it, so hits and puts touch no shared state.
pub struct IoBufCache<'p> {
    pool: &'p IoBufPool,
    free: [Vec<u32>; 2],
    waiters: [VecDeque<Waiter<'p>>; 2],
}

impl<'p> IoBufCache<'p> {
    /// A buffer now, or `None` when this cache and the shared pool are both empty.
    pub fn get(&mut self, class: IoBufClass) -> Option<IoBuf<'p>> {
        let i = class.index();
        if self.free[i].is_empty() {
            self.refill(class);
        }
        let index = self.free[i].pop()?;
        Some(self.pool.buf(class, index))
    }

    /// A buffer now, or `None` with `waiter` queued to receive one later (in order).
    /// `waiter` is dropped uncalled when a buffer is returned at once.
    pub fn get_or_wait(&mut self, class: IoBufClass, waiter: impl FnOnce(IoBuf<'p>) + 'p) -> Result<Option<IoBuf<'p>>> {
        // Waiters first: a newcomer must not overtake those already queued.
        if self.waiters[class.index()].is_empty() {
            if let Some(buf) = self.get(class) {
                return Ok(Some(buf));
            }
        }
        if self.waiters[class.index()].len() >= IOBUF_WAITERS_MAX {
            return Err(Error::WaitQueueFull { class, limit: IOBUF_WAITERS_MAX });
        }
        self.waiters[class.index()].push_back(Box::new(waiter));
        Ok(None)
    }

    /// Returns a buffer: to the first waiter, else to this cache, else to the pool.
    pub fn put(&mut self, buf: IoBuf<'p>) {
        // A foreign index would name memory outside this pool: always checked.
        assert!(std::ptr::eq(buf.pool, self.pool), "buffer of another pool");
        let class = buf.class;
        let i = class.index();
        if let Some(waiter) = self.waiters[i].pop_front() {
            waiter(buf);
            return;
        }
        let limit = self.pool.class(class).cache;
        if self.free[i].len() < limit {
            self.free[i].push(buf.into_index());
        } else {
            drop(buf);
        }
    }

    /// Serves waiters from the shared pool (buffers other threads returned). Call it
    /// from a poller while [`IoBufCache::waiting`] is non-zero; returns how many it served.
    pub fn poll(&mut self) -> usize {
        let mut served = 0;
        for class in IoBufClass::ALL {
            let i = class.index();
            while !self.waiters[i].is_empty() {
                let Some(buf) = self.get(class) else { break };
                let waiter = self.waiters[i].pop_front().expect("checked non-empty");
                waiter(buf);
                served += 1;
            }
        }
        served
    }

    pub fn waiting(&self, class: IoBufClass) -> usize {
        self.waiters[class.index()].len()
    }

    pub fn cached(&self, class: IoBufClass) -> usize {
        self.free[class.index()].len()
    }

    /// Moves up to half a cache's worth from the shared pool, so alternating get/put at
    /// the boundary does not bounce every call to the shared queue.
    fn refill(&mut self, class: IoBufClass) {
        let c = self.pool.class(class);
        let batch = (c.cache / 2).max(1);
        let local = &mut self.free[class.index()];
        while local.len() < batch {
            let Some(index) = c.free.pop() else { break };
            local.push(index);
        }
    }
}

impl Drop for IoBufCache<'_> {
    fn drop(&mut self) {
        for class in IoBufClass::ALL {
            for index in self.free[class.index()].drain(..) {
                self.pool.release(class, index);
            }
        }
    }
}

/// One class of a pool's memory as a region an RDMA device may be given: a pool that
/// lives as long as the process is registered once per protection domain, at start-up,
/// and every buffer it lends is then named by that region's key.
#[cfg(feature = "rdma")]
pub struct PoolRegion {
    addr: std::ptr::NonNull<u8>,
    len: usize,
    /// Held so the memory outlives the region (the pool is never dropped anyway).
    _pool: &'static IoBufPool,
}

// SAFETY: the region only names memory (an address and a length); the pool it borrows is
// itself shared across threads.
#[cfg(feature = "rdma")]
unsafe impl Send for PoolRegion {}
// SAFETY: as above; no method mutates anything.
#[cfg(feature = "rdma")]
unsafe impl Sync for PoolRegion {}

// SAFETY: the pool is 'static, so its classes' memory stays mapped at one address for
// the process's life; the pool never makes references over buffer bytes of its own (a
// buffer's bytes are reached through its segments by whoever holds the buffer, and a NIC
// writes a buffer only for a work request its holder posted).
#[cfg(feature = "rdma")]
unsafe impl spdk_sys::rdma::RegistrableMemory for PoolRegion {
    fn region(&self) -> (std::ptr::NonNull<u8>, usize) {
        (self.addr, self.len)
    }
}

#[cfg(feature = "rdma")]
impl IoBufPool {
    /// The pool's memory, one region per class, for registration with an RDMA device.
    pub fn rdma_regions(&'static self) -> Vec<PoolRegion> {
        self.classes
            .iter()
            .filter_map(|class| {
                let addr = std::ptr::NonNull::new(class.mem.addr() as *mut u8)?;
                Some(PoolRegion { addr, len: class.size * class.count, _pool: self })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn bytes_are_what_the_writable_list_wrote() {
        let pool = small_pool(2, 1, 1);
        let mut cache = pool.cache();
        let mut buf = cache.get(IoBufClass::Small).expect("a buffer");
        let len = buf.len();
        let mut list = buf.sgl_mut();
        let mut view = list.cpu_view_mut().expect("host memory");
        view.slices_mut().for_each(|slice| slice.fill(0xa5));
        drop(list);
        assert_eq!(buf.bytes().len(), len);
        assert!(buf.bytes().iter().all(|&byte| byte == 0xa5));
        assert_eq!(buf.bytes().as_ptr() as usize, buf.seg(false).addr());
    }

    fn small_pool(small: usize, large: usize, cache: usize) -> IoBufPool {
        IoBufPool::new(PoolConfig {
            small_count: small,
            large_count: large,
            small_cache: cache.min(small),
            large_cache: cache.min(large),
            ..PoolConfig::default()
        })
        .expect("pool memory")
    }

    #[test]
    fn class_sizes_are_configurable_and_checked() {
        let cfg = PoolConfig {
            small_count: 2,
            large_count: 2,
            small_cache: 1,
            large_cache: 1,
            small_bytes: 4096,
            large_bytes: 16384,
        };
        let pool = IoBufPool::new(cfg).expect("pool memory");
        assert_eq!(pool.class_for(1), Some(IoBufClass::Small));
        assert_eq!(pool.class_for(4096), Some(IoBufClass::Small));
        assert_eq!(pool.class_for(4097), Some(IoBufClass::Large));
        assert_eq!(pool.class_for(16385), None);
        assert_eq!(pool.memory_bytes(), 2 * 4096 + 2 * 16384);
        let mut cache = pool.cache();
        let large = cache.get(IoBufClass::Large).expect("a large buffer");
        assert_eq!(large.len(), 16384);
        assert_eq!(large.seg_ref().seg().addr() % super::super::dma::DMA_ALIGN_BYTES, 0);
        cache.put(large);
        let unaligned = PoolConfig { small_bytes: 5000, ..cfg };
        assert!(IoBufPool::new(unaligned).unwrap_err().to_string().contains("multiple of 4096"));
        let inverted = PoolConfig { small_bytes: 32768, ..cfg };
        assert!(IoBufPool::new(inverted).unwrap_err().to_string().contains("must not exceed"));
    }

    #[test]
    fn buffers_are_distinct_host_memory_of_the_right_size() {
        let pool = small_pool(4, 2, 2);
        let mut cache = pool.cache();
        let mut a = cache.get(IoBufClass::Small).expect("a");
        let b = cache.get(IoBufClass::Large).expect("b");
        assert_eq!((a.len(), b.len()), (IOBUF_SMALL_BYTES, IOBUF_LARGE_BYTES));
        assert_ne!(a.seg(false).addr(), b.seg(false).addr());
        let mut sgl = a.sgl_mut();
        sgl.cpu_view_mut().expect("host").slices_mut().for_each(|s| s.fill(1));
        drop(sgl);
        assert!(b.sgl().is_host_only());
        cache.put(a);
        cache.put(b);
        drop(cache);
        assert_eq!(pool.available(IoBufClass::Small), 4);
        assert_eq!(pool.available(IoBufClass::Large), 2);
    }

    #[test]
    fn exhaustion_queues_waiters_in_order() {
        let pool = small_pool(2, 1, 1);
        let mut cache = pool.cache();
        let a = cache.get(IoBufClass::Small).expect("a");
        let b = cache.get(IoBufClass::Small).expect("b");
        assert!(cache.get(IoBufClass::Small).is_none());
        let got = Rc::new(RefCell::new(Vec::new()));
        for tag in 0..3 {
            let got = Rc::clone(&got);
            let now = cache
                .get_or_wait(IoBufClass::Small, move |buf| got.borrow_mut().push((tag, buf)))
                .expect("room to wait");
            assert!(now.is_none());
        }
        assert_eq!(cache.waiting(IoBufClass::Small), 3);
        cache.put(a);
        cache.put(b);
        assert_eq!(cache.waiting(IoBufClass::Small), 1);
        let served: Vec<usize> = got.borrow().iter().map(|(t, _)| *t).collect();
        assert_eq!(served, vec![0, 1]);
        let bufs: Vec<_> = got.borrow_mut().drain(..).map(|(_, b)| b).collect();
        for buf in bufs {
            cache.put(buf);
        }
        assert_eq!(cache.waiting(IoBufClass::Small), 0);
        assert_eq!(got.borrow().len(), 1);
        let last = got.borrow_mut().pop().expect("third waiter").1;
        cache.put(last);
        drop(cache);
        assert_eq!(pool.available(IoBufClass::Small), 2);
    }

    #[test]
    fn contention_returns_to_full() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 2000;
        const HOLD: usize = 6;
        let pool = small_pool(16, 4, 4);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let pool = &pool;
                s.spawn(move || {
                    let mut cache = pool.cache();
                    let held = Rc::new(RefCell::new(Vec::new()));
                    let mut rng = 0x9e37_79b9_u32.wrapping_mul(t as u32 + 1);
                    for _ in 0..ROUNDS {
                        rng ^= rng << 13;
                        rng ^= rng >> 17;
                        rng ^= rng << 5;
                        let class = IoBufClass::ALL[(rng % 2) as usize];
                        if held.borrow().len() < HOLD {
                            let sink = Rc::clone(&held);
                            let now =
                                cache.get_or_wait(class, move |b| sink.borrow_mut().push(b)).expect("bounded waiters");
                            if let Some(b) = now {
                                held.borrow_mut().push(b);
                            }
                        } else {
                            let bufs: Vec<_> = held.borrow_mut().drain(..).collect();
                            for b in bufs {
                                cache.put(b);
                            }
                        }
                        cache.poll();
                    }
                    // Drain: return everything and wait out this cache's waiters.
                    let mut spins = 0u64;
                    loop {
                        let bufs: Vec<_> = held.borrow_mut().drain(..).collect();
                        for b in bufs {
                            cache.put(b);
                        }
                        cache.poll();
                        let waiting: usize = IoBufClass::ALL.iter().map(|c| cache.waiting(*c)).sum();
                        if waiting == 0 && held.borrow().is_empty() {
                            break;
                        }
                        spins += 1;
                        assert!(spins < 100_000_000, "waiters never served");
                        std::thread::yield_now();
                    }
                });
            }
        });
        for class in IoBufClass::ALL {
            assert_eq!(pool.available(class), pool.capacity(class), "{class:?}");
        }
    }

    #[test]
    fn the_wait_queue_is_bounded() {
        let pool = small_pool(1, 1, 1);
        let mut cache = pool.cache();
        let held = cache.get(IoBufClass::Large).expect("the only one");
        for _ in 0..IOBUF_WAITERS_MAX {
            let queued = cache.get_or_wait(IoBufClass::Large, drop).expect("room");
            assert!(queued.is_none());
        }
        assert!(matches!(
            cache.get_or_wait(IoBufClass::Large, drop),
            Err(Error::WaitQueueFull { class: IoBufClass::Large, limit: IOBUF_WAITERS_MAX })
        ));
        // Small buffers have their own queue.
        assert!(cache.get(IoBufClass::Small).is_some());
        drop(held);
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = PoolConfig { small_count: 0, ..PoolConfig::default() };
        assert!(matches!(IoBufPool::new(bad), Err(Error::Config(_))));
        let bad =
            PoolConfig { small_count: 2, small_cache: 3, large_count: 1, large_cache: 1, ..PoolConfig::default() };
        assert!(matches!(IoBufPool::new(bad), Err(Error::Config(_))));
    }
}
