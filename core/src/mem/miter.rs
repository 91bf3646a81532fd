//! Walking a list of any kinds, in the style of Linux's `sg_miter`: Host segments come
//! out as slices, IoMem as accessor chunks, Device as ranges a DMA engine can move.
//! The chunk readers on top give `accel` host bytes for every kind, each path counted.

use std::marker::PhantomData;

use super::registry::{self, SnapRef};
use super::sgl::{Seg, Sgl};
use super::tag::{MemKind, MemTag};
use super::view::{host_slice, host_slice_mut};
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
        self.snap
            .find_seg(&self.seg)
            .ok()
            .and_then(|r| r.provider.as_ref())
            .is_some_and(|p| p.dma_engine().is_some())
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

pub(crate) fn engine_of(
    region: &registry::Region,
    src: MemTag,
    dst: MemTag,
) -> Result<&dyn super::DmaEngine> {
    region
        .provider
        .as_ref()
        .and_then(|p| p.dma_engine())
        .ok_or_else(|| {
            stats::refusal();
            Error::NoPath {
                src,
                dst,
                reason: "the device memory's provider has no DMA engine",
            }
        })
}

fn check_range(off: usize, len: usize, total: usize) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => Err(Error::OutOfRange {
            offset: off,
            len,
            total,
        }),
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
        let cap = if seg.kind() == MemKind::Host {
            self.max_host
        } else {
            self.max_other
        };
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
                let accessor = snap
                    .find_seg(&piece)
                    .map(|r| r.accessor(piece.addr(), piece.len()));
                match accessor {
                    Ok(Some(accessor)) => Ok(MiterChunk::IoMem(IoChunk {
                        seg: piece,
                        accessor,
                        _snap: snap,
                        _list: PhantomData,
                    })),
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

/// Reads a list front to back into host buffers, whatever its kinds: a CPU copy for
/// Host, accessors for IoMem, DMA for Device. Every byte is counted by kind and path.
pub struct ChunkReader<'s> {
    segs: &'s [Seg],
    idx: usize,
    off: usize,
    snap: Option<SnapRef>,
}

impl<'s> ChunkReader<'s> {
    pub fn new(sgl: &'s Sgl<'_>) -> ChunkReader<'s> {
        ChunkReader {
            segs: sgl.segs(),
            idx: 0,
            off: 0,
            snap: (!sgl.is_host_only()).then(registry::snapshot),
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        let rest: usize = self.segs[self.idx.min(self.segs.len())..]
            .iter()
            .map(Seg::len)
            .sum();
        rest - self.off
    }

    /// Fills as much of `dst` as the list has left; returns the bytes read.
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < dst.len() && self.idx < self.segs.len() {
            let seg = self.segs[self.idx];
            let n = (seg.len() - self.off).min(dst.len() - done);
            let piece = seg.sub(self.off, n);
            let out = &mut dst[done..done + n];
            match piece.kind() {
                MemKind::Host => {
                    // SAFETY: a Host piece of a list borrowed shared for 's.
                    out.copy_from_slice(unsafe { host_slice(&piece) });
                    stats::cpu(Path::Direct, n);
                }
                MemKind::IoMem => {
                    let snap = self.snap.as_ref().expect("non-host list has a snapshot");
                    let from =
                        snap.find_seg(&piece)?
                            .accessor(piece.addr(), n)
                            .ok_or(Error::NoPath {
                                src: piece.tag(),
                                dst: MemTag::HOST,
                                reason: "the IoMem region has no accessor mapping",
                            })?;
                    // SAFETY: bounded by the region, kept mapped by the snapshot.
                    unsafe { io::read(from, out) };
                    stats::cpu(Path::IoAccessor, n);
                }
                MemKind::Device => {
                    let snap = self.snap.as_ref().expect("non-host list has a snapshot");
                    let region = snap.find_seg(&piece)?;
                    engine_of(region, piece.tag(), MemTag::HOST)?.read(piece.addr(), out)?;
                    stats::dma(n);
                    stats::cpu(Path::Bounce, n);
                }
            }
            stats::payload(piece.kind(), n);
            done += n;
            self.off += n;
            if self.off == seg.len() {
                self.idx += 1;
                self.off = 0;
            }
        }
        Ok(done)
    }
}

/// Calls `f` with the list's bytes as host slices, in order: Host bytes in place, IoMem
/// through accessors into `staging`, Device by DMA into `staging` (refused without an
/// engine). Every byte is counted by kind and path.
pub(crate) fn for_each_chunk<E: From<Error>>(
    sgl: &Sgl<'_>,
    staging: &mut [u8],
    max_chunk: usize,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    assert!(!staging.is_empty() && max_chunk > 0);
    let cap = max_chunk.min(staging.len());
    for chunk in SgMiter::new(sgl).with_max_chunk(max_chunk) {
        match chunk? {
            MiterChunk::Host(s) => {
                for piece in s.chunks(max_chunk) {
                    stats::payload(MemKind::Host, piece.len());
                    stats::cpu(Path::Direct, piece.len());
                    f(piece)?;
                }
            }
            MiterChunk::IoMem(c) => {
                let mut off = 0;
                while off < c.seg.len() {
                    let n = (c.seg.len() - off).min(cap);
                    c.read(off, &mut staging[..n])?;
                    stats::payload(MemKind::IoMem, n);
                    f(&staging[..n])?;
                    off += n;
                }
            }
            MiterChunk::Device(c) => {
                let mut off = 0;
                while off < c.seg.len() {
                    let n = (c.seg.len() - off).min(cap);
                    c.dma_read(off, &mut staging[..n])?;
                    stats::payload(MemKind::Device, n);
                    stats::cpu(Path::Bounce, n);
                    f(&staging[..n])?;
                    off += n;
                }
            }
        }
    }
    Ok(())
}

/// Calls `f` with the list's bytes as writable host slices, in order. For IoMem and
/// Device the slice is `staging`, loaded first when `load` is set and written back after.
pub(crate) fn for_each_chunk_mut<E: From<Error>>(
    sgl: &mut Sgl<'_>,
    staging: &mut [u8],
    max_chunk: usize,
    load: bool,
    mut f: impl FnMut(&mut [u8]) -> Result<(), E>,
) -> Result<(), E> {
    assert!(!staging.is_empty() && max_chunk > 0);
    if !sgl.is_writable() {
        return Err(Error::ReadOnly.into());
    }
    let cap = max_chunk.min(staging.len());
    let snap = (!sgl.is_host_only()).then(registry::snapshot);
    for seg in sgl.segs() {
        let mut off = 0;
        while off < seg.len() {
            let limit = if seg.kind() == MemKind::Host {
                max_chunk
            } else {
                cap
            };
            let n = (seg.len() - off).min(limit);
            let piece = seg.sub(off, n);
            match seg.kind() {
                MemKind::Host => {
                    // SAFETY: a writable Host segment of a list we hold `&mut`; this is
                    // the only slice over it while `f` runs.
                    let bytes = unsafe { host_slice_mut(&piece) };
                    stats::payload(MemKind::Host, n);
                    stats::cpu(Path::Direct, n);
                    f(bytes)?;
                }
                MemKind::IoMem => {
                    let snap = snap.as_ref().expect("non-host list has a snapshot");
                    let region = snap.find_seg(&piece)?;
                    let accessor = region.accessor(piece.addr(), n).ok_or(Error::NoPath {
                        src: MemTag::HOST,
                        dst: piece.tag(),
                        reason: "the IoMem region has no accessor mapping",
                    })?;
                    let buf = &mut staging[..n];
                    if load {
                        // SAFETY: bounded by the region (checked by `accessor`), whose
                        // owner the snapshot keeps alive; no slice aliases device memory.
                        unsafe { io::read(accessor, buf) };
                        stats::cpu(Path::IoAccessor, n);
                    }
                    f(buf)?;
                    // SAFETY: as above.
                    unsafe { io::write(accessor, buf) };
                    stats::cpu(Path::IoAccessor, n);
                    stats::payload(MemKind::IoMem, n);
                }
                MemKind::Device => {
                    let snap = snap.as_ref().expect("non-host list has a snapshot");
                    let region = snap.find_seg(&piece)?;
                    let engine = engine_of(region, MemTag::HOST, piece.tag())?;
                    let buf = &mut staging[..n];
                    if load {
                        engine.read(piece.addr(), buf)?;
                        stats::dma(n);
                    }
                    f(buf)?;
                    engine.write(piece.addr(), buf)?;
                    stats::dma(n);
                    stats::cpu(Path::Bounce, n);
                    stats::payload(MemKind::Device, n);
                }
            }
            off += n;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::testutil::Kit;

    #[test]
    fn chunks_follow_kinds_and_limits() {
        let kit = Kit::new();
        let kinds = [MemKind::Host, MemKind::IoMem, MemKind::Host];
        let len = STAGING_CHUNK_BYTES + 100;
        let mut bufs = kit.buffers(&kinds, len);
        Kit::fill_pattern(&mut bufs, 3);
        let sgl = Kit::sgl(&bufs);
        let chunks: Vec<(MemKind, usize)> = SgMiter::new(&sgl)
            .map(|c| c.map(|c| (c.kind(), c.len())))
            .collect::<Result<_>>()
            .expect("registered");
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
