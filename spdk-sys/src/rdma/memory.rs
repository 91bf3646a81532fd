//! Memory registration: what may be registered, access rights, the registered region,
//! and a small host buffer for tests and control messages.

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::verbs::Pd;
use super::wr::Sge;
use super::Error;
use crate::rdma_sys as sys;

/// Memory that may be registered: it stays mapped at one address for the object's whole
/// life, which is as long as any region registered over it.
///
/// # Safety
///
/// `region()` returns the same address and length every time, the memory stays mapped
/// and owned by this object until it is dropped, and the owner never makes Rust
/// references over it that assume no other writer: a NIC may write it at any time while
/// a region is registered.
pub unsafe trait RegistrableMemory: Send + Sync {
    /// Start and length in bytes.
    fn region(&self) -> (NonNull<u8>, usize);
}

enum MrMemory {
    Host(#[allow(dead_code)] Arc<dyn RegistrableMemory>),
    Dmabuf(#[allow(dead_code)] OwnedFd),
}

impl Pd {
    /// Registers `memory` once; the region keeps it alive until the region is dropped.
    pub fn register(self: &Arc<Self>, memory: Arc<dyn RegistrableMemory>, access: Access) -> Result<Mr, Error> {
        let (addr, len) = memory.region();
        if len == 0 {
            return Err(Error::new("ibv_reg_mr: empty region", libc::EINVAL));
        }
        let access = i32::try_from(access.0).map_err(|_| Error::new("ibv_reg_mr: access flags", libc::EINVAL))?;
        // SAFETY: live PD; `memory` promises `addr..addr+len` stays mapped while it lives,
        // and the returned Mr holds it.
        let raw = unsafe { sys::peerless_ibv_reg_mr(self.raw(), addr.as_ptr().cast(), len, access) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last(format!("ibv_reg_mr of {len} bytes")))?;
        Ok(Mr { raw, _memory: MrMemory::Host(memory), _pd: self.clone() })
    }

    /// Registers `len` bytes at `offset` of a dma-buf (device memory exported by its
    /// driver), seen by the NIC at `iova`. The region holds the descriptor.
    pub fn register_dmabuf(
        self: &Arc<Self>,
        dmabuf: OwnedFd,
        offset: u64,
        len: usize,
        iova: u64,
        access: Access,
    ) -> Result<Mr, Error> {
        let access =
            i32::try_from(access.0).map_err(|_| Error::new("ibv_reg_dmabuf_mr: access flags", libc::EINVAL))?;
        // SAFETY: live PD; the CPU never touches dma-buf memory through this region, and
        // the descriptor (which keeps the buffer alive) lives in the returned Mr.
        let raw = unsafe { sys::ibv_reg_dmabuf_mr(self.raw(), offset, len, iova, dmabuf.as_raw_fd(), access) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last(format!("ibv_reg_dmabuf_mr of {len} bytes")))?;
        Ok(Mr { raw, _memory: MrMemory::Dmabuf(dmabuf), _pd: self.clone() })
    }
}

/// Access rights of a memory region (`IBV_ACCESS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    /// The NIC may write it for this side's receives and RDMA READs.
    pub const LOCAL_WRITE: Access = Access(sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// The peer may RDMA WRITE into it.
    pub const REMOTE_WRITE: Access = Access(sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    /// The peer may RDMA READ from it.
    pub const REMOTE_READ: Access = Access(sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// PCIe relaxed ordering, where the device allows it (ignored otherwise).
    pub const RELAXED_ORDERING: Access = Access(sys::ibv_access_flags::IBV_ACCESS_RELAXED_ORDERING.0);

    /// Whether every right in `other` is in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// A registered memory region. Its keys are valid while it lives; dropping it
/// deregisters (after which the NIC no longer touches the memory) and then releases the
/// memory it held.
pub struct Mr {
    raw: NonNull<sys::ibv_mr>,
    // Field order is drop order: the region is deregistered in Drop, then the memory
    // and the PD are released.
    _memory: MrMemory,
    _pd: Arc<Pd>,
}

// SAFETY: an MR is read-only after registration; deregistration is thread-safe.
unsafe impl Send for Mr {}
// SAFETY: as above.
unsafe impl Sync for Mr {}

impl Mr {
    fn fields(&self) -> &sys::ibv_mr {
        // SAFETY: a live MR is not changed by the library after registration.
        unsafe { self.raw.as_ref() }
    }

    /// The local key, for scatter-gather entries.
    pub fn lkey(&self) -> u32 {
        self.fields().lkey
    }

    /// The remote key a peer names in RDMA READ/WRITE.
    pub fn rkey(&self) -> u32 {
        self.fields().rkey
    }

    /// Start of the region as the NIC sees it.
    pub fn addr(&self) -> u64 {
        self.fields().addr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.fields().length
    }

    /// Whether the region is empty (never, registration refuses that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A scatter-gather entry over `len` bytes at `offset`, refused outside the region.
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge, Error> {
        let inside = matches!(offset.checked_add(len as usize), Some(end) if end <= self.len());
        if !inside {
            return Err(Error::new(
                format!("{len} bytes at offset {offset} lie outside a region of {} bytes", self.len()),
                libc::ERANGE,
            ));
        }
        Ok(Sge { addr: self.addr() + offset as u64, len, lkey: self.lkey() })
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered in Pd::register*, deregistered once, before its memory goes.
        unsafe { sys::ibv_dereg_mr(self.raw.as_ptr()) };
    }
}

/// Page-aligned, zeroed host memory to register, which the CPU reads and writes only by
/// copies (the NIC may write it at any time). For tests, examples and small control
/// buffers; the transport's data buffers are the iobuf pools.
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    len: usize,
    cpu: Mutex<()>,
}

// SAFETY: the bytes are reached only through raw-pointer copies, serialised by `cpu`.
unsafe impl Send for DmaBuffer {}
// SAFETY: as above.
unsafe impl Sync for DmaBuffer {}

const PAGE: usize = 4096;

impl DmaBuffer {
    /// `len` zeroed bytes (at least one), 4 KiB aligned.
    pub fn new(len: usize) -> Result<Arc<DmaBuffer>, Error> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), PAGE)
            .map_err(|_| Error::new(format!("a buffer of {len} bytes"), libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::new(format!("allocate {len} bytes"), libc::ENOMEM))?;
        Ok(Arc::new(DmaBuffer { ptr, len: len.max(1), cpu: Mutex::new(()) }))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::new(format!("{len} bytes at {offset} of a {}-byte buffer", self.len), libc::ERANGE)),
        }
    }

    /// Copies `data` in at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        let _cpu = self.cpu.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: in bounds (checked); no Rust reference to the buffer exists, and CPU
        // copies are serialised by the lock.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Copies `out.len()` bytes out from `offset`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        self.check(offset, out.len())?;
        let _cpu = self.cpu.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: as in write.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

// SAFETY: the allocation lives, unmoved, until Drop; only copies touch it.
unsafe impl RegistrableMemory for DmaBuffer {
    fn region(&self) -> (NonNull<u8>, usize) {
        (self.ptr, self.len)
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, PAGE).expect("layout was valid at allocation");
        // SAFETY: allocated in new with this layout; any Mr over it held an Arc, so none is left.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_flags_combine_and_contain() {
        let all = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE;
        assert!(all.contains(Access::REMOTE_READ));
        assert!(!Access::LOCAL_WRITE.contains(Access::REMOTE_WRITE));
        assert_eq!(all.0, 0b111, "IBV_ACCESS_LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ");
    }

    #[test]
    fn dma_buffer_copies_in_bounds_and_refuses_outside() {
        for len in [1usize, 4095, 4096, 65536 + 7] {
            let buf = DmaBuffer::new(len).expect("allocate");
            let (ptr, region_len) = buf.region();
            assert_eq!(ptr.as_ptr() as usize % PAGE, 0);
            assert_eq!(region_len, len);
            let mut out = vec![0xffu8; len];
            buf.read(0, &mut out).expect("read");
            assert!(out.iter().all(|b| *b == 0), "zeroed");
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            buf.write(0, &data).expect("write");
            buf.read(0, &mut out).expect("read");
            assert_eq!(out, data);
            assert_eq!(buf.write(len, &[1]).unwrap_err().errno, libc::ERANGE);
            assert_eq!(buf.read(usize::MAX, &mut [0]).unwrap_err().errno, libc::ERANGE);
            buf.write(len - 1, &[9]).expect("last byte");
        }
    }
}
