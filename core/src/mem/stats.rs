//! What touched which memory: payload bytes by kind, CPU bytes by path, DMA bytes and
//! refusals, so a user can see whether device data ever went through host DRAM.
//!
//! Each OS thread writes its own counter block with a plain relaxed load and store: no
//! atomic read-modify-write on the data path. Readers sum every
//! live block plus the totals of threads that have exited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use super::tag::MemKind;

/// How the CPU reached the bytes it processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// Through a pointer into Host memory.
    Direct,
    /// Through volatile I/O accessors into IoMem.
    IoAccessor,
    /// Through a host staging chunk a DMA engine filled or drained.
    Bounce,
}

const PAYLOAD_BASE: usize = 0;
const CPU_DIRECT: usize = 3;
const CPU_IO_ACCESSOR: usize = 4;
const CPU_BOUNCE: usize = 5;
const DMA_BYTES: usize = 6;
const REFUSALS: usize = 7;
const COUNTERS: usize = 8;

/// A plain copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemStats {
    /// Payload bytes handled (copied, checksummed, filled, compared) in Host segments.
    pub host_bytes: u64,
    pub iomem_bytes: u64,
    pub device_bytes: u64,
    /// CPU bytes touched directly in Host memory.
    pub cpu_direct_bytes: u64,
    /// CPU bytes moved by I/O accessors to or from IoMem.
    pub cpu_io_accessor_bytes: u64,
    /// CPU bytes processed in a host staging chunk filled or drained by a DMA engine.
    pub cpu_bounce_bytes: u64,
    /// Bytes a provider's DMA engine moved.
    pub dma_bytes: u64,
    /// Requests refused because no allowed path existed.
    pub refusals: u64,
}

impl MemStats {
    fn from_counts(c: &[u64; COUNTERS]) -> MemStats {
        MemStats {
            host_bytes: c[PAYLOAD_BASE + MemKind::Host.index()],
            iomem_bytes: c[PAYLOAD_BASE + MemKind::IoMem.index()],
            device_bytes: c[PAYLOAD_BASE + MemKind::Device.index()],
            cpu_direct_bytes: c[CPU_DIRECT],
            cpu_io_accessor_bytes: c[CPU_IO_ACCESSOR],
            cpu_bounce_bytes: c[CPU_BOUNCE],
            dma_bytes: c[DMA_BYTES],
            refusals: c[REFUSALS],
        }
    }

    pub fn payload_bytes(&self, kind: MemKind) -> u64 {
        match kind {
            MemKind::Host => self.host_bytes,
            MemKind::IoMem => self.iomem_bytes,
            MemKind::Device => self.device_bytes,
        }
    }

    pub fn cpu_bytes(&self, path: Path) -> u64 {
        match path {
            Path::Direct => self.cpu_direct_bytes,
            Path::IoAccessor => self.cpu_io_accessor_bytes,
            Path::Bounce => self.cpu_bounce_bytes,
        }
    }

    /// Counter-by-counter difference `self - earlier`, for measuring one operation.
    pub fn since(&self, earlier: &MemStats) -> MemStats {
        MemStats {
            host_bytes: self.host_bytes.wrapping_sub(earlier.host_bytes),
            iomem_bytes: self.iomem_bytes.wrapping_sub(earlier.iomem_bytes),
            device_bytes: self.device_bytes.wrapping_sub(earlier.device_bytes),
            cpu_direct_bytes: self.cpu_direct_bytes.wrapping_sub(earlier.cpu_direct_bytes),
            cpu_io_accessor_bytes: self.cpu_io_accessor_bytes.wrapping_sub(earlier.cpu_io_accessor_bytes),
            cpu_bounce_bytes: self.cpu_bounce_bytes.wrapping_sub(earlier.cpu_bounce_bytes),
            dma_bytes: self.dma_bytes.wrapping_sub(earlier.dma_bytes),
            refusals: self.refusals.wrapping_sub(earlier.refusals),
        }
    }
}

/// One thread's counters. Written only by its owner; read by anyone.
struct Block {
    counts: [AtomicU64; COUNTERS],
}

impl Block {
    fn load(&self) -> [u64; COUNTERS] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

struct Blocks {
    live: Vec<Arc<Block>>,
    /// Totals of threads that have exited, so their counts are not lost.
    retired: [u64; COUNTERS],
}

/// Control plane: taken when a thread first counts, when it exits, and by readers.
static BLOCKS: Mutex<Blocks> = parking_lot::const_mutex(Blocks { live: Vec::new(), retired: [0; COUNTERS] });

struct Local(Arc<Block>);

impl Local {
    fn register() -> Local {
        let block = Arc::new(Block { counts: std::array::from_fn(|_| AtomicU64::new(0)) });
        BLOCKS.lock().live.push(Arc::clone(&block));
        Local(block)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut blocks = BLOCKS.lock();
        let counts = self.0.load();
        for (total, c) in blocks.retired.iter_mut().zip(counts) {
            *total = total.wrapping_add(c);
        }
        blocks.live.retain(|b| !Arc::ptr_eq(b, &self.0));
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

fn add(idx: usize, n: u64) {
    debug_assert!(idx < COUNTERS);
    let counted = LOCAL.try_with(|local| {
        let c = &local.0.counts[idx];
        // Only this thread writes this block, so load + store loses nothing.
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    });
    if counted.is_err() {
        // The thread is tearing down its locals (a buffer dropped by another local's
        // destructor): count straight into the retired totals.
        let mut blocks = BLOCKS.lock();
        blocks.retired[idx] = blocks.retired[idx].wrapping_add(n);
    }
}

pub(crate) fn payload(kind: MemKind, bytes: usize) {
    add(PAYLOAD_BASE + kind.index(), bytes as u64);
}

pub(crate) fn cpu(path: Path, bytes: usize) {
    let idx = match path {
        Path::Direct => CPU_DIRECT,
        Path::IoAccessor => CPU_IO_ACCESSOR,
        Path::Bounce => CPU_BOUNCE,
    };
    add(idx, bytes as u64);
}

/// Host payload a socket took in place (a gathered send from its pool buffer): placed in
/// Host memory, copied by the kernel, never by the CPU in user space.
pub fn count_host_payload_sent_in_place(bytes: usize) {
    payload(MemKind::Host, bytes);
}

/// Host payload a socket read straight into its pool buffer: placed in Host memory,
/// copied by the kernel, never by the CPU in user space.
pub fn count_host_payload_received_in_place(bytes: usize) {
    payload(MemKind::Host, bytes);
}

/// A copy between host bytes a caller holds as slices (a transport's receive buffer into
/// the pool buffer it was lent as bytes), counted as [`super::copy`] counts one.
pub fn count_host_copy(bytes: usize) {
    payload(MemKind::Host, bytes);
    payload(MemKind::Host, bytes);
    cpu(Path::Direct, bytes);
}

/// Host bytes processed in place by the CPU.
pub(crate) fn count_direct(bytes: usize) {
    payload(MemKind::Host, bytes);
    cpu(Path::Direct, bytes);
}

pub(crate) fn dma(bytes: usize) {
    add(DMA_BYTES, bytes as u64);
}

pub(crate) fn refusal() {
    add(REFUSALS, 1);
}

/// Process-wide totals: every thread's block summed.
pub fn snapshot() -> MemStats {
    let blocks = BLOCKS.lock();
    let mut total = blocks.retired;
    for block in &blocks.live {
        for (t, c) in total.iter_mut().zip(block.load()) {
            *t = t.wrapping_add(c);
        }
    }
    MemStats::from_counts(&total)
}

/// The calling thread's counters only; tests use it to measure one operation while other
/// threads count concurrently.
pub fn thread_snapshot() -> MemStats {
    LOCAL.try_with(|local| MemStats::from_counts(&local.0.load())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_reach_the_global_sum_after_exit() {
        let before = snapshot();
        std::thread::spawn(|| {
            payload(MemKind::IoMem, 100);
            cpu(Path::IoAccessor, 100);
            dma(7);
            refusal();
            let mine = thread_snapshot();
            assert_eq!(mine.iomem_bytes, 100);
            assert_eq!(mine.cpu_io_accessor_bytes, 100);
            assert_eq!(mine.dma_bytes, 7);
            assert_eq!(mine.refusals, 1);
        })
        .join()
        .expect("counting thread");
        // Other tests count concurrently, so the global delta is at least ours.
        let delta = snapshot().since(&before);
        assert!(delta.iomem_bytes >= 100);
        assert!(delta.cpu_io_accessor_bytes >= 100);
        assert!(delta.dma_bytes >= 7);
        assert!(delta.refusals >= 1);
    }

    #[test]
    fn many_threads_sum_exactly_in_their_own_blocks() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 1000;
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                std::thread::spawn(|| {
                    let start = thread_snapshot();
                    for _ in 0..ROUNDS {
                        payload(MemKind::Host, 3);
                        cpu(Path::Direct, 3);
                    }
                    let d = thread_snapshot().since(&start);
                    assert_eq!(d.host_bytes, 3 * ROUNDS as u64);
                    assert_eq!(d.cpu_direct_bytes, d.host_bytes);
                })
            })
            .collect();
        for h in handles {
            h.join().expect("counting thread");
        }
    }
}
