//! Tagged memory and the CPU-touch gate (the memory-tag design).
//!
//! Every buffer is described by an [`Sgl`] of tagged [`Seg`]s. The tag says who may touch
//! the bytes: the CPU through a pointer (Host), the CPU only through I/O accessors
//! (IoMem, a CMB BAR), or only a DMA engine (Device). The gate is built from types:
//!
//! - `&[u8]` / `&mut [u8]` over segments exist only through a [`CpuView`] /
//!   [`CpuViewMut`] from [`Sgl::cpu_view`], which refuses any list whose kind union holds
//!   IoMem or Device ([`Error::NotCpuAccessible`]). The union is kept as segments come and
//!   go, so the all-Host fast path costs one compare.
//! - Everything else moves through this module: [`copy`], the [`SgMiter`] iterator and
//!   the chunk readers pick CPU copies for Host, volatile aligned accessors for IoMem and
//!   the owning provider's [`DmaEngine`] for Device, and count each path in [`stats`].
//! - This is the only module of `peerless-core` allowed `unsafe`:
//!   raw mappings, accessors and the SIMD kernels live here behind safe functions, each
//!   unsafe block under a `// SAFETY:` line. `accel` and every other layer are safe code.
//!
//! Memory comes from [`DmaBuf`] (mlock'ed, hugepage when possible, or DPDK's EAL heap
//! when [`env::start`] chose it, feature `dpdk`), the iobuf-style
//! [`IoBufPool`], and P2P providers ([`EmulatedCmb`], [`P2pMem`]) recorded in the region
//! [`registry`]. The [`pci`] module holds what a user-space PCI driver needs below safe
//! code: BAR mappings, VFIO, physical addresses, and Host-memory notifications.
#![allow(unsafe_code)]

pub mod alloc_count;
mod chunks;
mod cmb;
mod copy;
mod device_dma;
mod dma;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod env;
mod io;
mod map;
mod miter;
mod p2pmem;
pub mod pci;
mod pool;
mod provider;
mod range_alloc;
pub mod registry;
mod sgl;
mod shared;
pub(crate) mod simd;
pub mod stats;
mod tag;
mod udmabuf;
mod view;
pub mod zerocopy;

#[cfg(test)]
pub(crate) mod testutil;

pub use chunks::ChunkReader;
pub(crate) use chunks::{for_each_chunk, for_each_chunk_mut};
pub use cmb::{CmbConfig, EmulatedCmb, CMB_GRANULE_BYTES, CMB_MAX_BYTES};
pub use copy::{copy, fill};
pub use device_dma::{dma_gather, dma_scatter};
pub use dma::{DmaBuf, DMA_ALIGN_BYTES, HUGEPAGE_BYTES};
pub use miter::{DeviceChunk, IoChunk, MiterChunk, SgMiter, STAGING_CHUNK_BYTES};
pub use p2pmem::{P2pMem, P2PMEM_GRANULE_BYTES, P2PMEM_MAX_BYTES};
#[cfg(feature = "rdma")]
pub use pool::PoolRegion;
pub use pool::{
    IoBuf, IoBufCache, IoBufClass, IoBufPool, PoolConfig, IOBUF_CACHE_MAX, IOBUF_COUNT_MAX, IOBUF_LARGE_BYTES,
    IOBUF_SMALL_BYTES, IOBUF_WAITERS_MAX,
};
pub use provider::{DmaBufExport, DmaEngine, P2pBuf, P2pProvider};
pub use sgl::{Seg, SegRef, Sgl, SEG_MAX_BYTES, SGL_INLINE_SEGS, SGL_MAX_SEGS};
pub use shared::SharedRegion;
pub use stats::{MemStats, Path};
pub use tag::{DomainId, KindSet, MemKind, MemTag};
pub use view::{CpuView, CpuViewMut};

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in `core::mem`, with what a person needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "CPU access refused: the list holds {kinds} memory; only Host memory may be seen \
         as bytes (move it with mem::copy or accel, which use I/O accessors or DMA)"
    )]
    NotCpuAccessible { kinds: KindSet },
    #[error("no way to move bytes from {src} to {dst}: {reason}")]
    NoPath { src: MemTag, dst: MemTag, reason: &'static str },
    #[error("a list may touch one device domain: it holds {held}, a segment of {offered} was added")]
    MixedDomains { held: DomainId, offered: DomainId },
    #[error("too many segments: the limit is {limit}")]
    TooManySegments { limit: usize },
    #[error("segment of {len} bytes exceeds the {limit}-byte limit of one segment")]
    SegmentTooLong { len: usize, limit: usize },
    #[error("range {offset}+{len} lies outside a list of {total} bytes")]
    OutOfRange { offset: usize, len: usize, total: usize },
    #[error("destination holds {dst} bytes, source {src}: lengths must match")]
    LengthMismatch { dst: usize, src: usize },
    #[error("the destination list holds read-only segments")]
    ReadOnly,
    #[error("no registered region of {domain} covers {addr:#x}+{len}")]
    UnknownRegion { domain: DomainId, addr: usize, len: usize },
    #[error("region {addr:#x}+{len} overlaps a registered region of {domain}")]
    RegionOverlap { domain: DomainId, addr: usize, len: usize },
    #[error("{provider}: cannot allocate {requested} bytes ({available} free, largest piece {largest})")]
    ProviderFull { provider: String, requested: usize, available: usize, largest: usize },
    #[error("{what} failed: {source}")]
    Os { what: &'static str, source: std::io::Error },
    #[error("{path}: {what}: {source}")]
    File { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("region {region} has no known bus address")]
    NoBusAddress { region: String },
    #[error("{limit} waiters already queued for {class:?} iobufs on this cache; retry later")]
    WaitQueueFull { class: IoBufClass, limit: usize },
    #[error("DPDK: {0}")]
    Dpdk(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// PCI, VFIO and sysfs problems; the text says what to do about them.
    #[error("{0}")]
    Pci(String),
}

impl Error {
    /// The last OS error, for a failed libc call named `what`.
    pub(crate) fn last_os(what: &'static str) -> Error {
        Error::Os { what, source: std::io::Error::last_os_error() }
    }
}
