//! Host bytes from a list of any kind, for `accel` and `copy`: Host bytes in place,
//! IoMem through volatile accessors, Device through its provider's DMA engine, the last
//! two via a host staging chunk. Every byte is counted by kind and by path.

use super::miter::engine_of;
use super::miter::{MiterChunk, SgMiter};
use super::registry::{self, SnapRef};
use super::sgl::{Seg, Sgl};
use super::tag::{MemKind, MemTag};
use super::view::{host_slice, host_slice_mut};
use super::{io, stats, Error, Path, Result};

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
        ChunkReader { segs: sgl.segs(), idx: 0, off: 0, snap: (!sgl.is_host_only()).then(registry::snapshot) }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        let rest: usize = self.segs[self.idx.min(self.segs.len())..].iter().map(Seg::len).sum();
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
                    let from = snap.find_seg(&piece)?.accessor(piece.addr(), n).ok_or(Error::NoPath {
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

    /// Appends up to `len` bytes of what is left to `out`; returns the bytes appended.
    /// Host bytes are copied once, straight onto the end of `out`, where `read` into a
    /// buffer grown first would write every byte twice (the zeroing, then the copy);
    /// other kinds go through `read`.
    pub fn append_to(&mut self, out: &mut Vec<u8>, len: usize) -> Result<usize> {
        let mut done = 0;
        while done < len && self.idx < self.segs.len() {
            let seg = self.segs[self.idx];
            let n = (seg.len() - self.off).min(len - done);
            let piece = seg.sub(self.off, n);
            if piece.kind() == MemKind::Host {
                // SAFETY: a Host piece of a list borrowed shared for 's.
                out.extend_from_slice(unsafe { host_slice(&piece) });
                stats::cpu(Path::Direct, n);
                stats::payload(MemKind::Host, n);
                self.off += n;
                if self.off == seg.len() {
                    self.idx += 1;
                    self.off = 0;
                }
            } else {
                let start = out.len();
                out.resize(start + n, 0);
                let read = self.read(&mut out[start..])?;
                debug_assert_eq!(read, n, "the piece is still there to read");
            }
            done += n;
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
                while off < c.seg().len() {
                    let n = (c.seg().len() - off).min(cap);
                    c.read(off, &mut staging[..n])?;
                    stats::payload(MemKind::IoMem, n);
                    f(&staging[..n])?;
                    off += n;
                }
            }
            MiterChunk::Device(c) => {
                let mut off = 0;
                while off < c.seg().len() {
                    let n = (c.seg().len() - off).min(cap);
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
            let limit = if seg.kind() == MemKind::Host { max_chunk } else { cap };
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
    fn append_to_takes_every_kind_in_order_and_stops_at_len() {
        let kit = Kit::new();
        // A list holds one device domain: IoMem and Device each get their own.
        for kinds in [vec![MemKind::Host, MemKind::IoMem, MemKind::Host], vec![MemKind::Device, MemKind::Host]] {
            let len = 3000;
            let mut bufs = kit.buffers(&kinds, len);
            Kit::fill_pattern(&mut bufs, 5);
            let sgl = Kit::sgl(&bufs);
            let expected = Kit::expected_pattern(&kinds, len, 5);
            let mut reader = ChunkReader::new(&sgl);
            let mut out = b"header".to_vec();
            // Pieces that end inside a segment and cross its end.
            for step in [100, 3900, 5000, 10_000] {
                let before = out.len();
                let appended = reader.append_to(&mut out, step).expect("readable");
                assert_eq!(appended, out.len() - before);
                assert!(appended <= step);
            }
            assert_eq!(&out[..6], b"header", "what was there stays");
            assert_eq!(out[6..], expected[..], "{kinds:?}");
            assert_eq!(reader.remaining(), 0);
            assert_eq!(reader.append_to(&mut out, 10).expect("nothing left"), 0);
        }
    }
}
