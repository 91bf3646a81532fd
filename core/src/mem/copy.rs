//! Copies between any two lists: a CPU copy for Host, I/O accessors for IoMem, the
//! owning provider's DMA engine for Device, and a host staging chunk where two different
//! mechanisms meet. A pair no mechanism can serve is refused, naming both tags.

use super::chunks::for_each_chunk_mut;
use super::miter::{engine_of, STAGING_CHUNK_BYTES};
use super::registry::{self, Snapshot};
use super::sgl::{Seg, Sgl};
use super::tag::{MemKind, MemTag};
use super::view::{host_slice, host_slice_mut};
use super::{io, stats, Error, Path, Result};

/// Copies all of `src` into the start of `dst`; returns the bytes copied.
///
/// Checks every device segment's region and engine before moving a byte, so a refused
/// copy leaves `dst` untouched. Counts bytes on both sides by kind, and by path.
pub fn copy(dst: &mut Sgl<'_>, src: &Sgl<'_>) -> Result<usize> {
    if !dst.is_writable() {
        return Err(Error::ReadOnly);
    }
    if dst.len() < src.len() {
        return Err(Error::LengthMismatch { dst: dst.len(), src: src.len() });
    }
    let snap = (!src.is_host_only() || !dst.is_host_only()).then(registry::snapshot);
    if let Some(snap) = &snap {
        preflight(snap, src.segs(), MemTag::HOST, true)?;
        preflight(snap, dst.segs(), MemTag::HOST, false)?;
    }
    match snap {
        // Host to host needs no staging chunk: zeroing 8 KiB per call would cost more
        // than a small copy itself.
        None => copy_segs(None, dst, src, &mut []),
        Some(snap) => copy_segs(Some(&snap), dst, src, &mut [0u8; STAGING_CHUNK_BYTES]),
    }
}

fn copy_segs(snap: Option<&Snapshot>, dst: &mut Sgl<'_>, src: &Sgl<'_>, staging: &mut [u8]) -> Result<usize> {
    let (s_segs, d_segs) = (src.segs(), dst.segs());
    let (mut si, mut so, mut di, mut doff) = (0usize, 0usize, 0usize, 0usize);
    let mut remaining = src.len();
    while remaining > 0 {
        let (s, d) = (s_segs[si], d_segs[di]);
        let n = (s.len() - so).min(d.len() - doff);
        debug_assert!(n > 0 && n <= remaining);
        move_bytes(snap, d.sub(doff, n), s.sub(so, n), staging)?;
        stats::payload(s.kind(), n);
        stats::payload(d.kind(), n);
        remaining -= n;
        so += n;
        doff += n;
        if so == s.len() {
            (si, so) = (si + 1, 0);
        }
        if doff == d.len() {
            (di, doff) = (di + 1, 0);
        }
    }
    Ok(src.len())
}

/// Sets every byte of `dst` to `byte`.
pub fn fill(dst: &mut Sgl<'_>, byte: u8) -> Result<()> {
    let mut staging = [byte; STAGING_CHUNK_BYTES];
    for_each_chunk_mut::<Error>(dst, &mut staging, usize::MAX, false, |b| {
        b.fill(byte);
        Ok(())
    })
}

/// Refuses up front what `move_bytes` could not do, so no partial copy happens.
fn preflight(snap: &Snapshot, segs: &[Seg], other: MemTag, is_src: bool) -> Result<()> {
    for seg in segs.iter().filter(|s| !s.tag().is_host()) {
        let region = snap.find_seg(seg)?;
        let (src, dst) = if is_src { (seg.tag(), other) } else { (other, seg.tag()) };
        match seg.kind() {
            MemKind::IoMem if region.accessor(seg.addr(), seg.len()).is_none() => {
                stats::refusal();
                return Err(Error::NoPath { src, dst, reason: "the IoMem region has no accessor mapping" });
            }
            MemKind::Device => {
                engine_of(region, src, dst)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn accessor_of(snap: &Snapshot, seg: &Seg) -> Result<usize> {
    snap.find_seg(seg)?.accessor(seg.addr(), seg.len()).ok_or(Error::UnknownRegion {
        domain: seg.tag().domain(),
        addr: seg.addr(),
        len: seg.len(),
    })
}

/// Moves `src.len()` bytes between two equally long pieces.
fn move_bytes(snap: Option<&Snapshot>, dst: Seg, src: Seg, staging: &mut [u8]) -> Result<()> {
    debug_assert_eq!(dst.len(), src.len());
    debug_assert!(dst.is_writable());
    let n = src.len();
    use MemKind::{Device, Host, IoMem};
    if (src.kind(), dst.kind()) == (Host, Host) {
        // SAFETY: `src` is a Host piece of a shared-borrowed list, `dst` a writable
        // Host piece of an exclusively borrowed one: both live, and distinct borrows
        // cannot overlap.
        let (s, d) = unsafe { (host_slice(&src), host_slice_mut(&dst)) };
        d.copy_from_slice(s);
        stats::cpu(Path::Direct, n);
        return Ok(());
    }
    let snap = snap.expect("lists with device memory carry a snapshot");
    match (src.kind(), dst.kind()) {
        (Host, Host) => unreachable!("handled above"),
        (Host, IoMem) => {
            let to = accessor_of(snap, &dst)?;
            // SAFETY: `to..to + n` is bounded by the region, kept mapped by the snapshot;
            // the Host slice is a live shared borrow that cannot alias device memory.
            unsafe { io::write(to, host_slice(&src)) };
            stats::cpu(Path::IoAccessor, n);
        }
        (IoMem, Host) => {
            let from = accessor_of(snap, &src)?;
            // SAFETY: as above, with `dst` the only slice over its Host bytes.
            unsafe { io::read(from, host_slice_mut(&dst)) };
            stats::cpu(Path::IoAccessor, n);
        }
        (Host, Device) => {
            let engine = engine_of(snap.find_seg(&dst)?, src.tag(), dst.tag())?;
            // SAFETY: a live shared borrow of Host bytes.
            engine.write(dst.addr(), unsafe { host_slice(&src) })?;
            stats::dma(n);
        }
        (Device, Host) => {
            let engine = engine_of(snap.find_seg(&src)?, src.tag(), dst.tag())?;
            // SAFETY: the only slice over these writable Host bytes.
            engine.read(src.addr(), unsafe { host_slice_mut(&dst) })?;
            stats::dma(n);
        }
        (Device, Device) if src.tag().domain() == dst.tag().domain() => {
            let engine = engine_of(snap.find_seg(&src)?, src.tag(), dst.tag())?;
            engine.copy(dst.addr(), src.addr(), n)?;
            stats::dma(n);
        }
        _ => staged(snap, dst, src, staging)?,
    }
    Ok(())
}

/// Two mechanisms meet (accessor and DMA, or two engines): go through host staging.
fn staged(snap: &Snapshot, dst: Seg, src: Seg, staging: &mut [u8]) -> Result<()> {
    let mut off = 0;
    while off < src.len() {
        let n = (src.len() - off).min(staging.len());
        let buf = &mut staging[..n];
        let (s, d) = (src.sub(off, n), dst.sub(off, n));
        match s.kind() {
            MemKind::IoMem => {
                let from = accessor_of(snap, &s)?;
                // SAFETY: bounded by the region, kept mapped by the snapshot.
                unsafe { io::read(from, buf) };
                stats::cpu(Path::IoAccessor, n);
            }
            MemKind::Device => {
                engine_of(snap.find_seg(&s)?, s.tag(), d.tag())?.read(s.addr(), buf)?;
                stats::dma(n);
                stats::cpu(Path::Bounce, n);
            }
            MemKind::Host => unreachable!("Host sources never need staging"),
        }
        match d.kind() {
            MemKind::IoMem => {
                let to = accessor_of(snap, &d)?;
                // SAFETY: bounded by the region, kept mapped by the snapshot.
                unsafe { io::write(to, buf) };
                stats::cpu(Path::IoAccessor, n);
            }
            MemKind::Device => {
                engine_of(snap.find_seg(&d)?, s.tag(), d.tag())?.write(d.addr(), buf)?;
                stats::dma(n);
                if s.kind() != MemKind::Device {
                    stats::cpu(Path::Bounce, n);
                }
            }
            MemKind::Host => unreachable!("Host destinations never need staging"),
        }
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::testutil::Kit;

    const LEN: usize = 3 * STAGING_CHUNK_BYTES / 2 + 13;

    #[test]
    fn copies_between_every_pair_of_kinds_byte_for_byte() {
        let kit = Kit::new();
        for src_kind in MemKind::ALL {
            for dst_kind in MemKind::ALL {
                let mut src = kit.buffers(&[src_kind], LEN);
                Kit::fill_pattern(&mut src, 11);
                let mut dst = kit.buffers(&[dst_kind], LEN);
                let before = stats::thread_snapshot();
                {
                    let s = Kit::sgl(&src);
                    let mut d = Kit::sgl_mut(&mut dst);
                    assert_eq!(copy(&mut d, &s).expect("copy"), LEN);
                }
                let delta = stats::thread_snapshot().since(&before);
                assert_eq!(
                    Kit::read_all(&dst),
                    Kit::expected_pattern(&[src_kind], LEN, 11),
                    "{src_kind} -> {dst_kind}"
                );
                let mut by_kind = [0u64; 3];
                by_kind[src_kind.index()] += LEN as u64;
                by_kind[dst_kind.index()] += LEN as u64;
                for k in MemKind::ALL {
                    assert_eq!(delta.payload_bytes(k), by_kind[k.index()], "{src_kind}->{dst_kind}");
                }
                let expect_direct = if (src_kind, dst_kind) == (MemKind::Host, MemKind::Host) { LEN as u64 } else { 0 };
                assert_eq!(delta.cpu_direct_bytes, expect_direct);
                assert_eq!(delta.refusals, 0);
            }
        }
    }

    #[test]
    fn mixed_lists_copy_across_segment_boundaries() {
        let kit = Kit::new();
        let src_kinds = [MemKind::Host, MemKind::IoMem, MemKind::Host, MemKind::IoMem, MemKind::Host];
        let dst_kinds = [MemKind::Device, MemKind::Host, MemKind::Device];
        let mut src = kit.buffers(&src_kinds, 1000);
        Kit::fill_pattern(&mut src, 5);
        let mut dst = kit.buffers(&dst_kinds, 5000 / 3 + 1);
        {
            let s = Kit::sgl(&src);
            let mut d = Kit::sgl_mut(&mut dst);
            copy(&mut d, &s).expect("copy");
        }
        let got = Kit::read_all(&dst);
        assert_eq!(&got[..5000], &Kit::expected_pattern(&src_kinds, 1000, 5)[..]);
    }

    #[test]
    fn cross_domain_device_copies_bounce_through_host() {
        let kit = Kit::new();
        let mut a = kit.device.alloc(LEN).expect("a");
        let mut b = kit.device2.alloc(LEN).expect("b");
        fill(&mut a.sgl_mut(), 0x5a).expect("fill a");
        let before = stats::thread_snapshot();
        copy(&mut b.sgl_mut(), &a.sgl()).expect("copy");
        let d = stats::thread_snapshot().since(&before);
        assert_eq!(d.dma_bytes, 2 * LEN as u64);
        assert_eq!(d.cpu_bounce_bytes, LEN as u64);
        let mut back = vec![0u8; LEN];
        copy(&mut Sgl::from_host_mut(&mut back).expect("host"), &b.sgl()).expect("read back");
        assert!(back.iter().all(|&x| x == 0x5a));
    }

    #[test]
    fn refusals_name_both_kinds_and_leave_the_destination_alone() {
        let kit = Kit::new();
        let src = kit.no_dma.alloc(64).expect("alloc");
        let mut host = [7u8; 64];
        let before = stats::thread_snapshot();
        let err = copy(&mut Sgl::from_host_mut(&mut host).expect("host"), &src.sgl()).expect_err("no engine");
        assert!(matches!(err, Error::NoPath { .. }));
        let msg = err.to_string();
        assert!(msg.contains("Device@") && msg.contains("to Host"), "{msg}");
        assert_eq!(host, [7u8; 64]);
        assert_eq!(stats::thread_snapshot().since(&before).refusals, 1);
    }

    #[test]
    fn length_and_access_checks() {
        let a = [1u8; 8];
        let mut b = [0u8; 4];
        let src = Sgl::from_host(&a).expect("a");
        assert!(matches!(
            copy(&mut Sgl::from_host_mut(&mut b).expect("b"), &src),
            Err(Error::LengthMismatch { dst: 4, src: 8 })
        ));
        let c = [0u8; 8];
        assert!(matches!(copy(&mut Sgl::from_host(&c).expect("c"), &src), Err(Error::ReadOnly)));
    }
}
