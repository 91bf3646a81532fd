//! P2P providers: the owners of device memory (a CMB, a p2pmem device, later a VFIO BAR
//! or GPU memory) behind one trait, and the buffers they hand out.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::sgl::{Seg, SegRef, Sgl, SEG_MAX_BYTES};
use super::tag::{DomainId, MemKind, MemTag};
use super::{Error, Result};

/// A device's DMA engine, addressed the way the provider's segments are (see [`Seg`]).
///
/// Engines are synchronous here: the emulated ones copy at once. A real engine behind
/// this trait submits and waits, which only the bounce paths of `core::mem` call.
pub trait DmaEngine: Send + Sync {
    /// Device memory at `src` into host bytes.
    fn read(&self, src: usize, dst: &mut [u8]) -> Result<()>;
    /// Host bytes into device memory at `dst`.
    fn write(&self, dst: usize, src: &[u8]) -> Result<()>;
    /// Device to device, both in this provider's memory.
    fn copy(&self, dst: usize, src: usize, len: usize) -> Result<()>;
}

/// The owner of one domain of device memory.
pub trait P2pProvider: Send + Sync {
    /// For logs and errors, e.g. "cmb0" or "p2pmem 0000:01:00.0".
    fn name(&self) -> &str;
    fn domain(&self) -> DomainId;
    /// Whether the CPU may map this memory (then it is IoMem, else Device).
    fn cpu_mappable(&self) -> bool;
    /// The engine that can move bytes in and out of this memory, if any.
    fn dma_engine(&self) -> Option<&dyn DmaEngine>;
    /// Carves `len` bytes; returns the address its segments are named by.
    fn allocate(&self, len: usize) -> Result<usize>;
    /// Returns what [`P2pProvider::allocate`] gave, with the same `len`.
    fn free(&self, addr: usize, len: usize);
    fn capacity_bytes(&self) -> usize;
    fn available_bytes(&self) -> usize;

    /// The provider's whole memory as a dma-buf, which a NIC's driver can import
    /// (`ibv_reg_dmabuf_mr`) so the NIC places data there itself; or why there is none.
    /// Called once per NIC, at its first use of the provider, never per I/O.
    fn export_dma_buf(&self) -> std::result::Result<DmaBufExport, String> {
        Err("it exports no dma-buf".into())
    }

    fn kind(&self) -> MemKind {
        if self.cpu_mappable() {
            MemKind::IoMem
        } else {
            MemKind::Device
        }
    }
}

/// A provider's memory exported as a dma-buf: `len` bytes from offset 0 of `fd`, the byte
/// at offset N named by segments as `seg_base + N`.
pub struct DmaBufExport {
    pub fd: OwnedFd,
    pub len: usize,
    pub seg_base: usize,
}

/// A buffer of device memory, returned to its provider on drop.
pub struct P2pBuf {
    provider: Arc<dyn P2pProvider>,
    addr: usize,
    len: u32,
}

impl P2pBuf {
    /// Allocation is control plane: pool the buffers if the data path needs many.
    pub fn alloc(provider: &Arc<dyn P2pProvider>, len: usize) -> Result<P2pBuf> {
        let len32 = u32::try_from(len).map_err(|_| Error::SegmentTooLong { len, limit: SEG_MAX_BYTES })?;
        let addr = provider.allocate(len)?;
        Ok(P2pBuf { provider: Arc::clone(provider), addr, len: len32 })
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn tag(&self) -> MemTag {
        // Panics for a provider claiming Host memory: a P2P buffer must never pass for
        // DRAM, or the gate would hand out slices of device memory.
        MemTag::device_side(self.provider.kind(), self.provider.domain())
    }

    pub fn provider(&self) -> &Arc<dyn P2pProvider> {
        &self.provider
    }

    pub fn seg(&self) -> Seg {
        Seg::new(self.addr, self.len, self.tag(), false)
    }

    /// A read-only segment over the whole buffer.
    pub fn seg_ref(&self) -> SegRef<'_> {
        SegRef::from_owner(self.seg())
    }

    /// A writable segment; `&mut self` makes it the only one.
    pub fn seg_ref_mut(&mut self) -> SegRef<'_> {
        SegRef::from_owner(Seg::new(self.addr, self.len, self.tag(), true))
    }

    pub fn sgl(&self) -> Sgl<'_> {
        let mut s = Sgl::new();
        let pushed = s.push(self.seg_ref());
        debug_assert!(pushed.is_ok(), "one segment always fits an empty list");
        s
    }

    pub fn sgl_mut(&mut self) -> Sgl<'_> {
        let mut s = Sgl::new();
        let pushed = s.push(self.seg_ref_mut());
        debug_assert!(pushed.is_ok(), "one segment always fits an empty list");
        s
    }
}

impl Drop for P2pBuf {
    fn drop(&mut self) {
        self.provider.free(self.addr, self.len());
    }
}

impl fmt::Debug for P2pBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P2pBuf({} {:#x}+{} {})", self.provider.name(), self.addr, self.len, self.tag())
    }
}
