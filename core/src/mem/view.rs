//! The gate: the only way to see segment bytes as `&[u8]` / `&mut [u8]`.
//!
//! A view exists only for lists whose kind union is Host, checked once in O(1). Code that
//! needs bytes takes a `CpuView`, so device memory cannot reach it by construction.

use std::marker::PhantomData;

use super::sgl::{Seg, Sgl};
use super::tag::MemKind;
use super::{stats, Error, Result};

/// Read access to an all-Host list.
#[derive(Clone, Copy, Debug)]
pub struct CpuView<'v> {
    segs: &'v [Seg],
    len: usize,
}

/// Write access to an all-Host, all-writable list.
#[derive(Debug)]
pub struct CpuViewMut<'v> {
    segs: &'v [Seg],
    len: usize,
    _exclusive: PhantomData<&'v mut [u8]>,
}

impl<'a> Sgl<'a> {
    /// Byte access, refused (and counted) unless every segment is Host memory.
    pub fn cpu_view(&self) -> Result<CpuView<'_>> {
        check_host(self)?;
        Ok(CpuView { segs: self.segs(), len: self.len() })
    }

    /// Mutable byte access; also refused for lists holding read-only segments.
    pub fn cpu_view_mut(&mut self) -> Result<CpuViewMut<'_>> {
        check_host(self)?;
        if !self.is_writable() {
            return Err(Error::ReadOnly);
        }
        Ok(CpuViewMut { segs: self.segs(), len: self.len(), _exclusive: PhantomData })
    }

    /// The Host slices of this list, in order (the gate's `cpu_slices`).
    pub fn cpu_slices(&self) -> Result<impl Iterator<Item = &[u8]> + '_> {
        Ok(self.cpu_view()?.slices())
    }
}

fn check_host(sgl: &Sgl<'_>) -> Result<()> {
    if sgl.is_host_only() {
        return Ok(());
    }
    stats::refusal();
    Err(Error::NotCpuAccessible { kinds: sgl.kinds().non_host() })
}

/// The bytes of a Host segment.
///
/// # Safety
/// `seg` must be a Host segment of a list borrowed for at least `'v` (its `SegRef`
/// vouched for the memory), and no `&mut` to those bytes may exist for `'v`.
pub(crate) unsafe fn host_slice<'v>(seg: &Seg) -> &'v [u8] {
    debug_assert_eq!(seg.kind(), MemKind::Host);
    // SAFETY: per this function's contract the memory is live and not mutably aliased.
    unsafe { std::slice::from_raw_parts(seg.addr() as *const u8, seg.len()) }
}

/// The bytes of a writable Host segment.
///
/// # Safety
/// As [`host_slice`], and the list must be borrowed exclusively for `'v` with this the
/// only live slice over the segment.
pub(crate) unsafe fn host_slice_mut<'v>(seg: &Seg) -> &'v mut [u8] {
    debug_assert_eq!(seg.kind(), MemKind::Host);
    debug_assert!(seg.is_writable());
    // SAFETY: per this function's contract the memory is live and exclusively ours.
    unsafe { std::slice::from_raw_parts_mut(seg.addr() as *mut u8, seg.len()) }
}

impl<'v> CpuView<'v> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn seg_count(&self) -> usize {
        self.segs.len()
    }

    pub fn slices(&self) -> impl Iterator<Item = &'v [u8]> + 'v {
        // SAFETY: the view was made from an all-Host list borrowed for 'v; a shared
        // borrow of the list rules out a mutable view over the same bytes.
        self.segs.iter().map(|s| unsafe { host_slice(s) })
    }

    /// Gathers the bytes into `dst`, which must be exactly `len()` long.
    pub fn copy_to(&self, dst: &mut [u8]) -> Result<()> {
        if dst.len() != self.len {
            return Err(Error::LengthMismatch { dst: dst.len(), src: self.len });
        }
        let mut at = 0;
        for s in self.slices() {
            dst[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        }
        debug_assert_eq!(at, self.len);
        Ok(())
    }

    /// The bytes in one `Vec`: control plane and tests only, it allocates.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for s in self.slices() {
            v.extend_from_slice(s);
        }
        v
    }
}

impl<'v> CpuViewMut<'v> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn slices_mut(&mut self) -> impl Iterator<Item = &mut [u8]> + '_ {
        // SAFETY: made from an exclusively borrowed, all-Host, all-writable list whose
        // writable segments never overlap (each came from its own `&mut` borrow); the
        // slices borrow `self` mutably, so no other view is live meanwhile.
        self.segs.iter().map(|s| unsafe { host_slice_mut(s) })
    }

    pub fn as_view(&self) -> CpuView<'_> {
        CpuView { segs: self.segs, len: self.len }
    }

    /// Scatters `src`, which must be exactly `len()` long, into the segments.
    pub fn copy_from(&mut self, src: &[u8]) -> Result<()> {
        if src.len() != self.len {
            return Err(Error::LengthMismatch { dst: self.len, src: src.len() });
        }
        let mut at = 0;
        for s in self.slices_mut() {
            let n = s.len();
            s.copy_from_slice(&src[at..at + n]);
            at += n;
        }
        debug_assert_eq!(at, src.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::testutil::Kit;
    use crate::mem::SegRef;

    #[test]
    fn host_lists_view_and_write() {
        let mut a = [1u8, 2, 3];
        let mut b = [4u8, 5];
        let mut sgl = Sgl::from_host_mut(&mut a).expect("a");
        sgl.push(SegRef::host_mut(&mut b).expect("b")).expect("push");
        assert_eq!(sgl.cpu_view().expect("host").to_vec(), vec![1, 2, 3, 4, 5]);
        sgl.cpu_view_mut().expect("writable").copy_from(&[9, 8, 7, 6, 5]).expect("same length");
        drop(sgl);
        assert_eq!((a, b), ([9, 8, 7], [6, 5]));
    }

    #[test]
    fn read_only_lists_refuse_mutable_views() {
        let a = [0u8; 4];
        let mut sgl = Sgl::from_host(&a).expect("a");
        assert!(matches!(sgl.cpu_view_mut(), Err(Error::ReadOnly)));
    }

    #[test]
    fn gate_refuses_every_list_holding_non_host_memory() {
        let kit = Kit::new();
        for combo in kit.non_host_combinations() {
            let mut bufs = kit.buffers(&combo, 64);
            let mut sgl = Kit::sgl_mut(&mut bufs);
            let before = stats::thread_snapshot();
            let err = sgl.cpu_view().expect_err("refused");
            match err {
                Error::NotCpuAccessible { kinds } => {
                    assert_eq!(kinds, sgl.kinds().non_host(), "{combo:?}");
                    assert!(!kinds.is_empty());
                    let msg = err.to_string();
                    for k in kinds.iter() {
                        assert!(msg.contains(k.name()), "{msg} names {k}");
                    }
                }
                other => panic!("{combo:?}: unexpected {other}"),
            }
            assert!(sgl.cpu_view_mut().is_err());
            assert!(sgl.cpu_slices().is_err());
            assert_eq!(stats::thread_snapshot().since(&before).refusals, 3);
        }
    }
}
