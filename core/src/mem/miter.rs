//! Walking a list of any kinds, in the style of Linux's `sg_miter`: Host segments come
//! out as slices, IoMem as accessor chunks, Device as ranges a DMA engine can move.
//! `chunks` builds on it to give `accel` host bytes for every kind.

use std::marker::PhantomData;

use super::registry::{self, SnapRef};
use super::sgl::{Seg, Sgl};
use super::tag::{MemKind, MemTag};
use super::view::host_slice;
use super::{io, stats, Error, Path, Result};

/// Size of the host staging chunk IoMem and Device bytes pass through: small enough for
/// the stack and L1, large enough to amortise a DMA submission.
pub const STAGING_CHUNK_BYTES: usize = 8192;

/// One piece of a list.
pub enum MiterChunk<'s> {
    Host(&'s [u8]),
    IoMem(IoChunk<'s>),
    Device(DeviceChunk<'s>),
}

impl MiterChunk<'_> {
    pub fn len(&self) -> usize {
        match self {
            MiterChunk::Host(s) => s.len(),
            MiterChunk::IoMem(c) => c.seg.len(),
            MiterChunk::Device(c) => c.seg.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> MemKind {
        match self {
            MiterChunk::Host(_) => MemKind::Host,
            MiterChunk::IoMem(_) => MemKind::IoMem,
            MiterChunk::Device(_) => MemKind::Device,
        }
    }
}

/// Up to [`STAGING_CHUNK_BYTES`] of IoMem, reachable only through accessors.
pub struct IoChunk<'s> {
    seg: Seg,
    accessor: usize,
    /// Keeps the region's owner, and so its mapping, alive while the chunk lives.
    _snap: SnapRef,
    _list: PhantomData<&'s ()>,
}

impl IoChunk<'_> {
    pub fn seg(&self) -> Seg {
        self.seg
    }

    /// Reads `dst.len()` bytes at `off` into host memory with volatile accessors.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<()> {
        check_range(off, dst.len(), self.seg.len())?;
        // SAFETY: the range lies in this chunk (checked), whose accessor address the
        // registry bounded by the region; `_snap` keeps the mapping alive.
        unsafe { io::read(self.accessor + off, dst) };
        stats::cpu(Path::IoAccessor, dst.len());
        Ok(())
    }

    /// Writes host bytes at `off`; only chunks of writable lists allow it.
    pub fn write(&self, off: usize, src: &[u8]) -> Result<()> {
        if !self.seg.is_writable() {
            return Err(Error::ReadOnly);
        }
        check_range(off, src.len(), self.seg.len())?;
        // SAFETY: as in `read`; device memory is never borrowed as a slice, so no Rust
        // reference aliases the bytes written.
        unsafe { io::write(self.accessor + off, src) };
        stats::cpu(Path::IoAccessor, src.len());
        Ok(())
    }
}

/// Up to [`STAGING_CHUNK_BYTES`] of Device memory; only its provider's engine moves it.
pub struct DeviceChunk<'s> {
    seg: Seg,
    snap: SnapRef,
    _list: PhantomData<&'s ()>,
}

impl DeviceChunk<'_> {
    pub fn seg(&self) -> Seg {
        self.seg
    }

    /// Whether the owning provider has a DMA engine.
    pub fn has_engine(&self) -> bool {
        self.snap.find_seg(&self.seg).ok().and_then(|r| r.provider.as_ref()).is_some_and(|p| p.dma_engine().is_some())
    }

    /// DMA of `dst.len()` bytes at `off` into host memory.
    pub fn dma_read(&self, off: usize, dst: &mut [u8]) -> Result<()> {
        check_range(off, dst.len(), self.seg.len())?;
        let region = self.snap.find_seg(&self.seg)?;
        let engine = engine_of(region, self.seg.tag(), MemTag::HOST)?;
        engine.read(self.seg.addr() + off, dst)?;
        stats::dma(dst.len());
        Ok(())
    }

    /// DMA of host bytes to `off`.
    pub fn dma_write(&self, off: usize, src: &[u8]) -> Result<()> {
        if !self.seg.is_writable() {
            return Err(Error::ReadOnly);
        }
        check_range(off, src.len(), self.seg.len())?;
        let region = self.snap.find_seg(&self.seg)?;
        let engine = engine_of(region, MemTag::HOST, self.seg.tag())?;
        engine.write(self.seg.addr() + off, src)?;
        stats::dma(src.len());
        Ok(())
    }
}

pub(crate) fn engine_of(region: &registry::Region, src: MemTag, dst: MemTag) -> Result<&dyn super::DmaEngine> {
    region.provider.as_ref().and_then(|p| p.dma_engine()).ok_or_else(|| {
        stats::refusal();
        Error::NoPath { src, dst, reason: "the device memory's provider has no DMA engine" }
    })
}

fn check_range(off: usize, len: usize, total: usize) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => Err(Error::OutOfRange { offset: off, len, total }),
    }
}

/// The iterator. Host segments come out whole unless a smaller maximum is set; IoMem and
/// Device segments in pieces of at most [`STAGING_CHUNK_BYTES`].
pub struct SgMiter<'s> {
    segs: &'s [Seg],
    idx: usize,
    off: usize,
    max_host: usize,
    max_other: usize,
    snap: Option<SnapRef>,
}

impl<'s> SgMiter<'s> {
    pub fn new(sgl: &'s Sgl<'_>) -> SgMiter<'s> {
        SgMiter {
            segs: sgl.segs(),
            idx: 0,
            off: 0,
            max_host: usize::MAX,
            max_other: STAGING_CHUNK_BYTES,
            // Only lists with device memory need the registry.
            snap: (!sgl.is_host_only()).then(registry::snapshot),
        }
    }

    /// Caps every chunk at `max` bytes (at least 1), e.g. a DIF block.
    pub fn with_max_chunk(mut self, max: usize) -> SgMiter<'s> {
        assert!(max > 0, "chunks must make progress");
        self.max_host = max;
        self.max_other = max.min(STAGING_CHUNK_BYTES);
        self
    }

    #[inline]
    fn take(&mut self) -> Option<Seg> {
        let seg = *self.segs.get(self.idx)?;
        let cap = if seg.kind() == MemKind::Host { self.max_host } else { self.max_other };
        let n = (seg.len() - self.off).min(cap);
        let piece = seg.sub(self.off, n);
        self.off += n;
        if self.off == seg.len() {
            self.idx += 1;
            self.off = 0;
        }
        Some(piece)
    }
}

impl<'s> Iterator for SgMiter<'s> {
    type Item = Result<MiterChunk<'s>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let piece = self.take()?;
        Some(match piece.kind() {
            // SAFETY: a Host segment of a list borrowed for 's; the iterator holds only
            // a shared borrow of it, so no mutable view exists.
            MemKind::Host => Ok(MiterChunk::Host(unsafe { host_slice(&piece) })),
            MemKind::IoMem => {
                let snap = self.snap.clone().expect("non-host list has a snapshot");
                let accessor = snap.find_seg(&piece).map(|r| r.accessor(piece.addr(), piece.len()));
                match accessor {
                    Ok(Some(accessor)) => {
                        Ok(MiterChunk::IoMem(IoChunk { seg: piece, accessor, _snap: snap, _list: PhantomData }))
                    }
                    Ok(None) => Err(Error::NoPath {
                        src: piece.tag(),
                        dst: MemTag::HOST,
                        reason: "the IoMem region has no accessor mapping",
                    }),
                    Err(e) => Err(e),
                }
            }
            MemKind::Device => Ok(MiterChunk::Device(DeviceChunk {
                seg: piece,
                snap: self.snap.clone().expect("non-host list has a snapshot"),
                _list: PhantomData,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::chunks::for_each_chunk;
    use crate::mem::testutil::Kit;

    #[test]
    fn chunks_follow_kinds_and_limits() {
        let kit = Kit::new();
        let kinds = [MemKind::Host, MemKind::IoMem, MemKind::Host];
        let len = STAGING_CHUNK_BYTES + 100;
        let mut bufs = kit.buffers(&kinds, len);
        Kit::fill_pattern(&mut bufs, 3);
        let sgl = Kit::sgl(&bufs);
        let chunks: Vec<(MemKind, usize)> =
            SgMiter::new(&sgl).map(|c| c.map(|c| (c.kind(), c.len()))).collect::<Result<_>>().expect("registered");
        assert_eq!(
            chunks,
            vec![
                (MemKind::Host, len),
                (MemKind::IoMem, STAGING_CHUNK_BYTES),
                (MemKind::IoMem, 100),
                (MemKind::Host, len),
            ]
        );
        let mut staging = [0u8; STAGING_CHUNK_BYTES];
        let mut seen = Vec::new();
        for_each_chunk::<Error>(&sgl, &mut staging, 1000, |b| {
            assert!(b.len() <= 1000);
            seen.extend_from_slice(b);
            Ok(())
        })
        .expect("readable");
        assert_eq!(seen, Kit::expected_pattern(&kinds, len, 3));
    }

    #[test]
    fn device_without_engine_is_refused_with_both_kinds_named() {
        let kit = Kit::new();
        let buf = kit.no_dma.alloc(64).expect("alloc");
        let sgl = buf.sgl();
        let mut staging = [0u8; 64];
        let before = stats::thread_snapshot();
        let err = for_each_chunk::<Error>(&sgl, &mut staging, 64, |_| Ok(())).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("Device") && msg.contains("Host"), "{msg}");
        assert_eq!(stats::thread_snapshot().since(&before).refusals, 1);
    }
}
