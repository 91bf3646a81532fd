//! Host memory shared by every reactor, for storage that many threads read and write at
//! once (the malloc bdev's "media"). Its bytes never become a Rust reference: with
//! several threads writing, an `&mut [u8]` over them would alias. Data moves with raw
//! copies into and out of a `CpuView` of the caller's own buffers, so the caller's side
//! still passes the gate. Overlapping requests in flight at the same time leave the
//! blocks with one request's bytes or a mix, as on a disk (NVMe gives no ordering
//! between overlapping commands in flight), and never anything worse.

use super::device_dma::{gather, preflight, scatter};
use super::dma::DmaBuf;
use super::miter::STAGING_CHUNK_BYTES;
use super::{stats, Error, Result, Sgl};

/// A zeroed, page-aligned region of host memory, safe to share between threads.
#[derive(Debug)]
pub struct SharedRegion {
    buf: DmaBuf,
}

impl SharedRegion {
    pub fn alloc(len: usize) -> Result<SharedRegion> {
        Ok(SharedRegion { buf: DmaBuf::alloc(len)? })
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn check(&self, offset: usize, len: usize) -> Result<usize> {
        let end = offset.checked_add(len).filter(|end| *end <= self.len());
        end.map(|_| self.buf.addr() + offset).ok_or(Error::OutOfRange { offset, len, total: self.len() })
    }

    /// Copies `offset..offset + dst.len()` into `dst`, which must be host memory.
    pub fn read_into(&self, offset: usize, dst: &mut Sgl<'_>) -> Result<()> {
        let mut source = self.check(offset, dst.len())?;
        let mut view = dst.cpu_view_mut()?;
        for slice in view.slices_mut() {
            // SAFETY: `check` proved source..source + total lies inside the mapping,
            // which lives as long as `self`; `slice` is the caller's exclusive buffer
            // and cannot overlap the region (a region is never lent out as a slice).
            unsafe {
                std::ptr::copy_nonoverlapping(source as *const u8, slice.as_mut_ptr(), slice.len());
            }
            source += slice.len();
        }
        stats::count_direct(dst.len());
        Ok(())
    }

    /// Copies host memory `src` into the region at `offset`.
    pub fn write_from(&self, offset: usize, src: &Sgl<'_>) -> Result<()> {
        let mut target = self.check(offset, src.len())?;
        let view = src.cpu_view()?;
        for slice in view.slices() {
            // SAFETY: as in `read_into`, with the roles swapped: the target range is in
            // the mapping and the caller's slice cannot overlap it.
            unsafe {
                std::ptr::copy_nonoverlapping(slice.as_ptr(), target as *mut u8, slice.len());
            }
            target += slice.len();
        }
        stats::count_direct(src.len());
        Ok(())
    }

    /// Sets `offset..offset + len` to `byte` (write zeroes, unmap).
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        let target = self.check(offset, len)?;
        // SAFETY: `check` proved the range lies inside the mapping.
        unsafe {
            std::ptr::write_bytes(target as *mut u8, byte, len);
        }
        stats::count_direct(len);
        Ok(())
    }

    /// The offset of the first byte where the region differs from host memory `other`.
    pub fn compare(&self, offset: usize, other: &Sgl<'_>) -> Result<Option<usize>> {
        let mut source = self.check(offset, other.len())?;
        let view = other.cpu_view()?;
        let mut compared = 0;
        let mut chunk = [0u8; COMPARE_CHUNK_BYTES];
        for slice in view.slices() {
            for piece in slice.chunks(COMPARE_CHUNK_BYTES) {
                // SAFETY: in range by `check`; copied out so the comparison reads a
                // private buffer, never the shared bytes through a reference.
                unsafe {
                    std::ptr::copy_nonoverlapping(source as *const u8, chunk.as_mut_ptr(), piece.len());
                }
                if let Some(at) = piece.iter().zip(&chunk[..piece.len()]).position(|(a, b)| a != b) {
                    return Ok(Some(compared + at));
                }
                compared += piece.len();
                source += piece.len();
            }
        }
        stats::count_direct(other.len());
        Ok(None)
    }
}

impl SharedRegion {
    /// Writes `src` into the region at `offset` as a device whose media the region is
    /// would: its DMA engine reads the list, so IoMem and Device segments move by their
    /// provider's engine and never through a CPU mapping (see `dma_gather`). Counts the
    /// list's payload by kind and the DMA bytes; the region is the device's own memory,
    /// not a host buffer, so its side is not counted as payload.
    pub fn dma_write_from(&self, offset: usize, src: &Sgl<'_>) -> Result<()> {
        let mut target = self.check(offset, src.len())?;
        preflight(src, true)?;
        // The engine fills a private chunk, never a slice of the shared region (see the
        // module comment).
        let mut chunk = [0u8; STAGING_CHUNK_BYTES];
        let mut at = 0;
        while at < src.len() {
            let n = (src.len() - at).min(STAGING_CHUNK_BYTES);
            gather(&src.sub(at, n)?, &mut chunk[..n])?;
            // SAFETY: `check` proved target..target + (rest of src) lies inside the
            // mapping, which lives as long as `self`; `chunk` is this call's own stack.
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), target as *mut u8, n) };
            target += n;
            at += n;
        }
        Ok(())
    }

    /// Reads the region at `offset` into `dst` as the device's DMA engine would: the
    /// reverse of [`SharedRegion::dma_write_from`], counted the same way.
    pub fn dma_read_into(&self, offset: usize, dst: &mut Sgl<'_>) -> Result<()> {
        if !dst.is_writable() {
            return Err(Error::ReadOnly);
        }
        let mut source = self.check(offset, dst.len())?;
        preflight(dst, false)?;
        let mut chunk = [0u8; STAGING_CHUNK_BYTES];
        let mut at = 0;
        while at < dst.len() {
            let n = (dst.len() - at).min(STAGING_CHUNK_BYTES);
            // SAFETY: in range by `check`; copied into this call's own stack chunk, so
            // the shared bytes never become a reference.
            unsafe { std::ptr::copy_nonoverlapping(source as *const u8, chunk.as_mut_ptr(), n) };
            scatter(&mut dst.sub_mut(at, n)?, &chunk[..n])?;
            source += n;
            at += n;
        }
        Ok(())
    }
}

/// Bytes compared per step: small enough to stay on the stack and in L1.
const COMPARE_CHUNK_BYTES: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{CmbConfig, EmulatedCmb};

    #[test]
    fn reads_writes_fills_and_compares_in_range() {
        let region = SharedRegion::alloc(64 * 1024).unwrap();
        let mut data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        region.write_from(4096, &Sgl::from_host(&data).unwrap()).unwrap();
        let mut back = vec![0u8; 8192];
        region.read_into(4096, &mut Sgl::from_host_mut(&mut back).unwrap()).unwrap();
        assert_eq!(back, data);
        assert_eq!(region.compare(4096, &Sgl::from_host(&data).unwrap()).unwrap(), None);
        data[5000] ^= 0xff;
        assert_eq!(region.compare(4096, &Sgl::from_host(&data).unwrap()).unwrap(), Some(5000));
        region.fill(4096, 4096, 0).unwrap();
        region.read_into(4096, &mut Sgl::from_host_mut(&mut back).unwrap()).unwrap();
        assert!(back[..4096].iter().all(|b| *b == 0));
        assert!(matches!(
            region.read_into(60 * 1024, &mut Sgl::from_host_mut(&mut back).unwrap()),
            Err(Error::OutOfRange { .. })
        ));
        assert!(region.fill(usize::MAX, 2, 0).is_err(), "overflowing ranges are refused");
    }

    #[test]
    fn device_memory_is_refused_by_the_gate() {
        let cmb = EmulatedCmb::new(CmbConfig::new("shared-test", 1 << 20)).unwrap();
        let mut buf = cmb.alloc(4096).unwrap();
        let region = SharedRegion::alloc(8192).unwrap();
        let err = region.read_into(0, &mut buf.sgl_mut()).unwrap_err();
        assert!(matches!(err, Error::NotCpuAccessible { .. }), "{err}");
        assert!(region.write_from(0, &buf.sgl()).is_err());
    }

    #[test]
    fn device_side_transfers_move_cmb_bytes_by_dma_only() {
        let cmb = EmulatedCmb::new(CmbConfig::new("shared-dma", 1 << 20)).unwrap();
        let len = 3 * STAGING_CHUNK_BYTES + 100;
        let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
        let mut source = cmb.alloc(len).unwrap();
        crate::mem::copy(&mut source.sgl_mut(), &Sgl::from_host(&data).unwrap()).unwrap();
        let region = SharedRegion::alloc(len + 4096).unwrap();
        let mut target = cmb.alloc(len).unwrap();
        let before = stats::thread_snapshot();
        region.dma_write_from(4096, &source.sgl()).unwrap();
        region.dma_read_into(4096, &mut target.sgl_mut()).unwrap();
        let moved = stats::thread_snapshot().since(&before);
        assert_eq!(moved.cpu_io_accessor_bytes, 0, "no CPU mapping of the CMB: {moved:?}");
        assert_eq!((moved.host_bytes, moved.cpu_direct_bytes), (0, 0), "the media is not a host buffer");
        assert_eq!((moved.iomem_bytes, moved.dma_bytes), (2 * len as u64, 2 * len as u64));
        let mut back = vec![0u8; len];
        region.read_into(4096, &mut Sgl::from_host_mut(&mut back).unwrap()).unwrap();
        assert!(back == data, "the region holds what the CMB held");
        crate::mem::copy(&mut Sgl::from_host_mut(&mut back).unwrap(), &target.sgl()).unwrap();
        assert!(back == data, "and gave it back into the CMB");
        assert!(matches!(region.dma_write_from(8192, &source.sgl()), Err(Error::OutOfRange { .. })));
        assert!(matches!(region.dma_read_into(0, &mut source.sgl()), Err(Error::ReadOnly)));
    }

    #[test]
    fn threads_share_a_region() {
        let region = std::sync::Arc::new(SharedRegion::alloc(4 * 4096).unwrap());
        let workers: Vec<_> = (0..4u8)
            .map(|index| {
                let region = region.clone();
                std::thread::spawn(move || {
                    let block = vec![index; 4096];
                    for _ in 0..100 {
                        region.write_from(index as usize * 4096, &Sgl::from_host(&block).unwrap()).unwrap();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        for index in 0..4u8 {
            let mut back = vec![0u8; 4096];
            region.read_into(index as usize * 4096, &mut Sgl::from_host_mut(&mut back).unwrap()).unwrap();
            assert!(back.iter().all(|b| *b == index), "block {index} holds another thread's bytes");
        }
    }
}
