//! Data buffers of a transport: DMA memory carved at start-up into the shapes SPDK's
//! transport options name, shared by every poll group through per-group caches.
//!
//! Two classes: small buffers (8 KiB) for commands that fit in one, and `io_unit_size`
//! buffers for the rest; a command larger than one unit takes several. Each class holds
//! `num_shared_buffers`. Memory is therefore fixed by configuration:
//! `num_shared_buffers x (8 KiB + io_unit_size)`, allocated when the transport is created,
//! and never grows: a command that finds no buffer waits for one.

use peerless_bdev::DataBuf;
use peerless_core::mem::{IoBufCache, IoBufClass, IoBufPool, PoolConfig};

use super::transport::TransportOptions;

/// The small class: a 4 KiB command plus room, as SPDK's iobuf small buffers.
pub const SMALL_BUFFER_BYTES: usize = 8 * 1024;

/// The pool of one transport. It lives as long as the process (SPDK's iobuf pools do
/// too): buffers and per-thread caches borrow it without a reference count, so taking
/// and returning a buffer touches no shared cache line on the data path.
pub struct DataPool {
    pool: IoBufPool,
    unit_bytes: usize,
    cache: usize,
}

impl DataPool {
    /// Carves the pool for `opts`, shared by `poll_groups` caches.
    pub fn create(opts: &TransportOptions, poll_groups: usize) -> Result<&'static DataPool, String> {
        let unit_bytes = (opts.io_unit_size as usize).next_multiple_of(peerless_core::mem::DMA_ALIGN_BYTES);
        let count = opts.num_shared_buffers as usize;
        let cache = opts.buf_cache(poll_groups) as usize;
        let config = PoolConfig {
            small_count: count,
            large_count: count,
            small_cache: cache,
            large_cache: cache,
            small_bytes: SMALL_BUFFER_BYTES.min(unit_bytes),
            large_bytes: unit_bytes,
        };
        let pool = IoBufPool::new(config).map_err(|err| format!("cannot allocate the transport's buffers: {err}"))?;
        Ok(Box::leak(Box::new(DataPool { pool, unit_bytes, cache })))
    }

    /// The pool's memory, for registration with each RDMA device once.
    #[cfg(feature = "rdma")]
    pub fn rdma_regions(&'static self) -> Vec<peerless_core::mem::PoolRegion> {
        self.pool_static().rdma_regions()
    }

    #[cfg(feature = "rdma")]
    fn pool_static(&'static self) -> &'static IoBufPool {
        &self.pool
    }

    /// A cache for the calling poll group.
    pub fn cache(&'static self) -> IoBufCache<'static> {
        self.pool.cache()
    }

    pub fn memory_bytes(&self) -> usize {
        self.pool.memory_bytes()
    }

    pub fn cache_size(&self) -> usize {
        self.cache
    }

    /// Buffers free in the shared pool (not cached, not in use), by class.
    pub fn available(&self) -> (usize, usize) {
        (self.pool.available(IoBufClass::Small), self.pool.available(IoBufClass::Large))
    }

    pub fn capacity(&self) -> usize {
        self.pool.capacity(IoBufClass::Large)
    }

    /// The class and count of buffers a command of `bytes` takes.
    pub fn shape(&self, bytes: usize) -> (IoBufClass, usize) {
        debug_assert!(bytes > 0);
        if bytes <= self.pool.size_bytes(IoBufClass::Small) {
            (IoBufClass::Small, 1)
        } else {
            (IoBufClass::Large, bytes.div_ceil(self.unit_bytes))
        }
    }
}

/// Takes the buffers for `bytes` into `into`, all or none: a command never holds part of
/// what it needs while it waits, so waiting commands cannot starve each other.
pub fn take(pool: &DataPool, cache: &mut IoBufCache<'static>, bytes: usize, into: &mut Vec<DataBuf>) -> bool {
    debug_assert!(into.is_empty());
    let (class, count) = pool.shape(bytes);
    for _ in 0..count {
        match cache.get(class) {
            Some(buffer) => into.push(DataBuf::Pool(buffer)),
            None => {
                give_back(cache, into);
                return false;
            }
        }
    }
    true
}

/// Returns a command's buffers to the poll group's cache; others (P2P, heap) drop.
pub fn give_back(cache: &mut IoBufCache<'static>, buffers: &mut Vec<DataBuf>) {
    for buffer in buffers.drain(..) {
        if let DataBuf::Pool(buffer) = buffer {
            cache.put(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(shared: u32, unit: u32) -> TransportOptions {
        TransportOptions { num_shared_buffers: shared, io_unit_size: unit, ..TransportOptions::defaults("TCP") }
    }

    #[test]
    fn shapes_follow_io_unit_size() {
        let pool = DataPool::create(&opts(16, 16384), 1).expect("pool");
        assert_eq!(pool.shape(512), (IoBufClass::Small, 1));
        assert_eq!(pool.shape(8192), (IoBufClass::Small, 1));
        assert_eq!(pool.shape(8193), (IoBufClass::Large, 1));
        assert_eq!(pool.shape(131_072), (IoBufClass::Large, 8));
        assert_eq!(pool.memory_bytes(), 16 * (8192 + 16384));
    }

    #[test]
    fn all_or_nothing_and_back_to_the_cache() {
        let pool = DataPool::create(&opts(8, 16384), 1).expect("pool");
        let mut cache = pool.cache();
        let mut first = Vec::new();
        assert!(take(pool, &mut cache, 6 * 16384, &mut first));
        assert_eq!(first.len(), 6);
        let mut second = Vec::new();
        assert!(!take(pool, &mut cache, 3 * 16384, &mut second), "only 2 large buffers are left");
        assert!(second.is_empty(), "a failed take holds nothing");
        assert!(take(pool, &mut cache, 2 * 16384, &mut second));
        give_back(&mut cache, &mut first);
        assert!(first.is_empty());
        let mut third = Vec::new();
        assert!(take(pool, &mut cache, 6 * 16384, &mut third), "returned buffers serve the next command");
    }
}
