//! Every CPU-touching data operation (crc32c, copy, fill, compare, T10 DIF), behind the
//! tag gate (the memory-tag design).
//!
//! Nothing here touches memory by address, and this module has no `unsafe`: it works on
//! host byte slices that `core::mem` hands out. Each operation takes an [`Sgl`](mem::Sgl) and
//! dispatches on its tags through `mem`: Host bytes are processed in place (SIMD
//! crc32c); IoMem bytes are read with I/O accessors into a small host staging chunk;
//! Device bytes are brought into the staging chunk by the owning provider's DMA engine,
//! or the operation is refused ([`mem::Error::NoPath`]). `mem::stats` counts every byte
//! by kind and by path, so a user can see what touched host DRAM. Functions that already
//! hold host bytes take a [`CpuView`](mem::CpuView) or `&[u8]`, which device memory cannot become.

mod crc32c;
mod dif;
mod ops;

pub use crc32c::{crc32c, crc32c_bytes, crc32c_view, Crc32c};
pub use dif::{crc16_t10dif, dif_generate, dif_verify, DifCheck, DifCtx, DIF_MAX_BLOCK_BYTES, DIF_PI_BYTES};
pub use ops::{compare, copy, fill};

use crate::mem;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an accel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Mem(#[from] mem::Error),
    #[error(
        "DIF {check} check failed in block {block} (reference tag {ref_tag:#x}): \
         expected {expected:#x}, found {actual:#x}"
    )]
    DifMismatch { block: u64, ref_tag: u32, check: DifCheck, expected: u32, actual: u32 },
    #[error("DIF: {len} bytes is not a whole number of {extended}-byte protected blocks")]
    DifLayout { len: usize, extended: usize },
    #[error("DIF: block size {block_size} must be a multiple of 512 up to {max}")]
    DifBlockSize { block_size: usize, max: usize },
    #[error("lists differ in length: {a} and {b} bytes")]
    LengthMismatch { a: usize, b: usize },
}
