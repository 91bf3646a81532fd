//! Device-side transfers: how a storage device with its own DMA engine (an NVMe SSD with
//! a CMB) moves a request's bytes between the request's list and its internal staging
//! memory. Unlike [`super::copy`], IoMem segments do not go through the CPU's I/O
//! accessors: every device segment, IoMem or Device, is moved by its provider's
//! [`super::DmaEngine`], as the device itself would, so no CPU mapping of device memory
//! is used. Host segments are copied by the CPU (the emulated device's DMA from DRAM).

use super::miter::engine_of;
use super::registry;
use super::sgl::Sgl;
use super::tag::{MemKind, MemTag};
use super::view::{host_slice, host_slice_mut};
use super::{stats, Error, Path, Result};

/// Reads `dst.len()` bytes of `src`, starting `offset` bytes in, into `dst`.
///
/// Checks every device segment's provider for an engine first, so a refused transfer
/// leaves `dst` untouched. Counts payload by kind, DMA bytes and CPU bytes.
pub fn dma_gather(src: &Sgl<'_>, offset: usize, dst: &mut [u8]) -> Result<()> {
    let piece = src.sub(offset, dst.len())?;
    preflight(&piece, true)?;
    gather(&piece, dst)
}

/// [`dma_gather`] of all of `piece` (as long as `dst`), its engines already checked.
pub(super) fn gather(piece: &Sgl<'_>, dst: &mut [u8]) -> Result<()> {
    debug_assert_eq!(piece.len(), dst.len());
    let snap = (!piece.is_host_only()).then(registry::snapshot);
    let mut done = 0;
    for seg in piece.segs() {
        let n = seg.len();
        let out = &mut dst[done..done + n];
        if seg.kind() == MemKind::Host {
            // SAFETY: a Host segment of `src`, borrowed shared for this call; `dst` is an
            // exclusive slice and so cannot overlap it.
            out.copy_from_slice(unsafe { host_slice(seg) });
            stats::cpu(Path::Direct, n);
        } else {
            let snap =
                snap.as_ref().ok_or(Error::UnknownRegion { domain: seg.tag().domain(), addr: seg.addr(), len: n })?;
            engine_of(snap.find_seg(seg)?, seg.tag(), MemTag::HOST)?.read(seg.addr(), out)?;
            stats::dma(n);
        }
        stats::payload(seg.kind(), n);
        done += n;
    }
    debug_assert_eq!(done, dst.len());
    Ok(())
}

/// Writes `src` into `dst`, starting `offset` bytes in.
///
/// Like [`dma_gather`], refuses before moving a byte when a device segment's provider has
/// no engine, and counts what it moved.
pub fn dma_scatter(dst: &mut Sgl<'_>, offset: usize, src: &[u8]) -> Result<()> {
    if !dst.is_writable() {
        return Err(Error::ReadOnly);
    }
    let mut piece = dst.sub_mut(offset, src.len())?;
    preflight(&piece, false)?;
    scatter(&mut piece, src)
}

/// [`dma_scatter`] into all of `piece` (as long as `src`), its engines already checked.
pub(super) fn scatter(piece: &mut Sgl<'_>, src: &[u8]) -> Result<()> {
    debug_assert_eq!(piece.len(), src.len());
    debug_assert!(piece.is_writable());
    let snap = (!piece.is_host_only()).then(registry::snapshot);
    let mut done = 0;
    for seg in piece.segs() {
        let n = seg.len();
        let from = &src[done..done + n];
        if seg.kind() == MemKind::Host {
            // SAFETY: a writable Host segment of `piece`, borrowed exclusively for this
            // call, and this the only slice over it; `src` is a distinct shared borrow.
            unsafe { host_slice_mut(seg) }.copy_from_slice(from);
            stats::cpu(Path::Direct, n);
        } else {
            let snap =
                snap.as_ref().ok_or(Error::UnknownRegion { domain: seg.tag().domain(), addr: seg.addr(), len: n })?;
            engine_of(snap.find_seg(seg)?, MemTag::HOST, seg.tag())?.write(seg.addr(), from)?;
            stats::dma(n);
        }
        stats::payload(seg.kind(), n);
        done += n;
    }
    debug_assert_eq!(done, src.len());
    Ok(())
}

/// Refuses up front a list with a device segment no engine can move.
pub(super) fn preflight(sgl: &Sgl<'_>, is_src: bool) -> Result<()> {
    if sgl.is_host_only() {
        return Ok(());
    }
    let snap = registry::snapshot();
    for seg in sgl.segs().iter().filter(|seg| seg.kind() != MemKind::Host) {
        let (src, dst) = if is_src { (seg.tag(), MemTag::HOST) } else { (MemTag::HOST, seg.tag()) };
        engine_of(snap.find_seg(seg)?, src, dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::testutil::Kit;

    const LEN: usize = 5000;

    #[test]
    fn gathers_and_scatters_every_kind_by_dma_without_accessors() {
        let kit = Kit::new();
        for kinds in kit.non_host_combinations() {
            let mut src = kit.buffers(&kinds, LEN);
            Kit::fill_pattern(&mut src, 9);
            let total = kinds.len() * LEN;
            let mut out = vec![0u8; total - 7];
            let before = stats::thread_snapshot();
            dma_gather(&Kit::sgl(&src), 7, &mut out).expect("gather");
            let gathered = stats::thread_snapshot().since(&before);
            assert_eq!(out, Kit::expected_pattern(&kinds, LEN, 9)[7..], "{kinds:?}");
            assert_eq!(gathered.cpu_io_accessor_bytes, 0, "{kinds:?}: no CPU mapping of device memory");
            let device_bytes = gathered.iomem_bytes + gathered.device_bytes;
            assert_eq!(gathered.dma_bytes, device_bytes, "{kinds:?}");
            assert!(device_bytes > 0, "{kinds:?}");

            let mut dst = kit.buffers(&kinds, LEN);
            let before = stats::thread_snapshot();
            dma_scatter(&mut Kit::sgl_mut(&mut dst), 7, &out).expect("scatter");
            assert_eq!(stats::thread_snapshot().since(&before).cpu_io_accessor_bytes, 0);
            let back = Kit::read_all(&dst);
            assert_eq!(back[..7], [0u8; 7], "{kinds:?}: bytes before the offset are untouched");
            assert_eq!(back[7..], out[..], "{kinds:?}");
        }
    }

    #[test]
    fn refuses_ranges_read_only_lists_and_engineless_providers_without_moving_bytes() {
        let kit = Kit::new();
        let src = kit.buffers(&[MemKind::Host], 64);
        let mut out = [0u8; 65];
        assert!(matches!(dma_gather(&Kit::sgl(&src), 0, &mut out), Err(Error::OutOfRange { .. })));
        let mut read_only = [1u8; 8];
        assert!(matches!(dma_scatter(&mut Kit::sgl(&src), 0, &read_only), Err(Error::ReadOnly)));
        let mut engineless = kit.no_dma.alloc(64).expect("alloc");
        let before = stats::thread_snapshot();
        assert!(matches!(dma_gather(&engineless.sgl(), 0, &mut read_only), Err(Error::NoPath { .. })));
        assert!(matches!(dma_scatter(&mut engineless.sgl_mut(), 0, &[2u8; 8]), Err(Error::NoPath { .. })));
        assert_eq!(read_only, [1u8; 8]);
        assert_eq!(stats::thread_snapshot().since(&before).refusals, 2);
    }
}
