//! Segments and scatter-gather lists.
//!
//! A [`Seg`] is a plain descriptor (address, length, tag) that grants nothing: holding one
//! does not let anyone read the bytes. The capability to put bytes into a list is a
//! [`SegRef`], which borrows the memory for `'a`; an [`Sgl<'a>`] collects them, so a list
//! can never outlive the buffers it names. Lists are not `Clone`: a writable list is the
//! only handle to its bytes, which is what makes [`Sgl::cpu_view_mut`] sound.

use std::fmt;
use std::marker::PhantomData;

use super::tag::{DomainId, KindSet, MemKind, MemTag};
use super::{Error, Result};

/// Segments held without a heap allocation: as many data buffers as one NVMe-oF command
/// spans at most (16, as SPDK's transports allow: 128 KiB in 8 KiB RDMA units), so a
/// command's list never spills to the heap, which the data path must not touch per I/O.
pub const SGL_INLINE_SEGS: usize = 16;
/// Upper bound on segments in one list (an NVMe SGL or a bdev I/O never needs more).
pub const SGL_MAX_SEGS: usize = 256;
/// A segment's length is a `u32`, as in NVMe SGL descriptors.
pub const SEG_MAX_BYTES: usize = u32::MAX as usize;

/// One contiguous piece of memory: where, how long, and what kind.
///
/// `addr` is the address segments of that kind are named by: a CPU virtual address for
/// Host and IoMem, a device address for Device memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    addr: usize,
    len: u32,
    tag: MemTag,
    writable: bool,
}

impl Seg {
    pub(crate) const fn new(addr: usize, len: u32, tag: MemTag, writable: bool) -> Seg {
        Seg { addr, len, tag, writable }
    }

    pub const fn addr(&self) -> usize {
        self.addr
    }

    pub const fn len(&self) -> usize {
        self.len as usize
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub const fn tag(&self) -> MemTag {
        self.tag
    }

    pub const fn kind(&self) -> MemKind {
        self.tag.kind()
    }

    pub const fn is_writable(&self) -> bool {
        self.writable
    }

    /// The piece `off..off + len` of this segment, same tag and access.
    pub(crate) fn sub(self, off: usize, len: usize) -> Seg {
        debug_assert!(off + len <= self.len());
        Seg { addr: self.addr + off, len: len as u32, ..self }
    }

    /// Splits at `at` bytes; both halves keep the tag.
    fn split(self, at: usize) -> (Seg, Seg) {
        debug_assert!(at > 0 && at < self.len());
        let at32 = at as u32;
        (Seg { len: at32, ..self }, Seg { addr: self.addr + at, len: self.len - at32, ..self })
    }

    /// Whether `next` continues this segment in memory with the same tag and access,
    /// so the two can be one entry.
    fn can_merge(&self, next: &Seg) -> bool {
        self.tag == next.tag
            && self.writable == next.writable
            && self.addr.checked_add(self.len()) == Some(next.addr)
            && self.len() + next.len() <= SEG_MAX_BYTES
    }
}

impl fmt::Debug for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seg({:#x}+{} {}{})", self.addr, self.len, self.tag, if self.writable { "" } else { " ro" })
    }
}

/// A segment together with a borrow of its memory for `'a`: the only way into an
/// [`Sgl`]. Not `Clone`, so one `&mut` borrow yields one writable segment.
pub struct SegRef<'a> {
    seg: Seg,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> SegRef<'a> {
    /// Read-only host bytes.
    pub fn host(bytes: &'a [u8]) -> Result<SegRef<'a>> {
        let len = seg_len(bytes.len())?;
        Ok(SegRef { seg: Seg::new(bytes.as_ptr() as usize, len, MemTag::HOST, false), _borrow: PhantomData })
    }

    /// Writable host bytes.
    pub fn host_mut(bytes: &'a mut [u8]) -> Result<SegRef<'a>> {
        let len = seg_len(bytes.len())?;
        Ok(SegRef { seg: Seg::new(bytes.as_mut_ptr() as usize, len, MemTag::HOST, true), _borrow: PhantomData })
    }

    /// For `core::mem` owners (DMA buffers, pool buffers, provider buffers) that vouch
    /// the described memory stays valid, and unaliased when writable, for `'a`.
    pub(crate) fn from_owner(seg: Seg) -> SegRef<'a> {
        SegRef { seg, _borrow: PhantomData }
    }

    pub fn seg(&self) -> Seg {
        self.seg
    }
}

fn seg_len(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::SegmentTooLong { len, limit: SEG_MAX_BYTES })
}

/// Segment storage: an array for the common case, a `Vec` beyond [`SGL_INLINE_SEGS`].
// The inline array is the point: boxing it would put an allocation back on every list.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Segs {
    Inline { buf: [Seg; SGL_INLINE_SEGS], len: u8 },
    Spilled(Vec<Seg>),
}

const EMPTY_SEG: Seg = Seg::new(0, 0, MemTag::HOST, false);

impl Segs {
    const fn new() -> Segs {
        Segs::Inline { buf: [EMPTY_SEG; SGL_INLINE_SEGS], len: 0 }
    }

    fn from_slice(segs: &[Seg]) -> Segs {
        if segs.len() <= SGL_INLINE_SEGS {
            let mut buf = [EMPTY_SEG; SGL_INLINE_SEGS];
            buf[..segs.len()].copy_from_slice(segs);
            Segs::Inline { buf, len: segs.len() as u8 }
        } else {
            Segs::Spilled(segs.to_vec())
        }
    }

    fn as_slice(&self) -> &[Seg] {
        match self {
            Segs::Inline { buf, len } => &buf[..*len as usize],
            Segs::Spilled(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Seg] {
        match self {
            Segs::Inline { buf, len } => &mut buf[..*len as usize],
            Segs::Spilled(v) => v,
        }
    }

    fn push(&mut self, seg: Seg) {
        match self {
            Segs::Inline { buf, len } if (*len as usize) < SGL_INLINE_SEGS => {
                buf[*len as usize] = seg;
                *len += 1;
            }
            Segs::Inline { buf, .. } => {
                let mut v = Vec::with_capacity(SGL_INLINE_SEGS * 2);
                v.extend_from_slice(buf);
                v.push(seg);
                *self = Segs::Spilled(v);
            }
            Segs::Spilled(v) => v.push(seg),
        }
    }

    fn remove_front(&mut self, n: usize) {
        match self {
            Segs::Inline { buf, len } => {
                let l = *len as usize;
                debug_assert!(n <= l);
                buf.copy_within(n..l, 0);
                *len = (l - n) as u8;
            }
            Segs::Spilled(v) => {
                v.drain(..n);
            }
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Segs::Inline { len, .. } => {
                debug_assert!(n <= *len as usize);
                *len = n as u8;
            }
            Segs::Spilled(v) => v.truncate(n),
        }
    }
}

/// A scatter-gather list of tagged segments borrowed for `'a`.
///
/// Keeps the union of its segments' kinds (so an all-Host list is known in O(1)), its
/// one device domain if any, and whether every segment is writable.
pub struct Sgl<'a> {
    segs: Segs,
    len: usize,
    kinds: KindSet,
    domain: Option<DomainId>,
    writable: bool,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> Default for Sgl<'a> {
    fn default() -> Self {
        Sgl::new()
    }
}

impl<'a> Sgl<'a> {
    pub const fn new() -> Sgl<'a> {
        Sgl { segs: Segs::new(), len: 0, kinds: KindSet::EMPTY, domain: None, writable: true, _borrow: PhantomData }
    }

    pub fn from_ref(seg: SegRef<'a>) -> Result<Sgl<'a>> {
        let mut sgl = Sgl::new();
        sgl.push(seg)?;
        Ok(sgl)
    }

    pub fn from_host(bytes: &'a [u8]) -> Result<Sgl<'a>> {
        Sgl::from_ref(SegRef::host(bytes)?)
    }

    pub fn from_host_mut(bytes: &'a mut [u8]) -> Result<Sgl<'a>> {
        Sgl::from_ref(SegRef::host_mut(bytes)?)
    }

    /// Appends a segment, merging it into the last one when it continues it in memory
    /// with the same tag. Refuses a second device domain; on error the list is unchanged.
    pub fn push(&mut self, seg: SegRef<'a>) -> Result<()> {
        let seg = seg.seg;
        if seg.is_empty() {
            return Ok(());
        }
        let domain = seg.tag.domain();
        if let Some(held) = self.domain {
            if !domain.is_host() && held != domain {
                return Err(Error::MixedDomains { held, offered: domain });
            }
        }
        if let Some(last) = self.segs.as_mut_slice().last_mut() {
            if last.can_merge(&seg) {
                last.len += seg.len;
                self.len += seg.len();
                return Ok(());
            }
        }
        if self.segs.as_slice().len() >= SGL_MAX_SEGS {
            return Err(Error::TooManySegments { limit: SGL_MAX_SEGS });
        }
        self.segs.push(seg);
        self.len += seg.len();
        self.note(seg);
        Ok(())
    }

    /// Moves every segment of `other` to the end of this list; on error this list is
    /// unchanged.
    pub fn append(&mut self, other: Sgl<'a>) -> Result<()> {
        if let (Some(held), Some(offered)) = (self.domain, other.domain) {
            if held != offered {
                return Err(Error::MixedDomains { held, offered });
            }
        }
        if self.seg_count() + other.seg_count() > SGL_MAX_SEGS {
            return Err(Error::TooManySegments { limit: SGL_MAX_SEGS });
        }
        for seg in other.segs.as_slice() {
            let pushed = self.push(SegRef::from_owner(*seg));
            debug_assert!(pushed.is_ok(), "append checks made push infallible");
        }
        Ok(())
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn seg_count(&self) -> usize {
        self.segs.as_slice().len()
    }

    pub fn segs(&self) -> &[Seg] {
        self.segs.as_slice()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Seg> + '_ {
        self.segs.as_slice().iter().copied()
    }

    /// The union of the segments' kinds.
    pub fn kinds(&self) -> KindSet {
        self.kinds
    }

    /// O(1): true when the CPU may touch every byte directly.
    pub fn is_host_only(&self) -> bool {
        self.kinds.is_host_only()
    }

    /// The one device domain this list touches, if any.
    pub fn domain(&self) -> Option<DomainId> {
        self.domain
    }

    /// Whether every segment may be written.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Splits off `[at, len)` into a new list; this one keeps `[0, at)`.
    pub fn split_off(&mut self, at: usize) -> Result<Sgl<'a>> {
        self.check_offset(at)?;
        let (idx, inner) = self.locate(at);
        let segs = self.segs.as_slice();
        let mut tail = Sgl::new();
        if idx < segs.len() {
            let mut rest = Segs::from_slice(&segs[idx..]);
            if inner > 0 {
                let (left, right) = segs[idx].split(inner);
                rest.as_mut_slice()[0] = right;
                self.segs.truncate(idx + 1);
                self.segs.as_mut_slice()[idx] = left;
            } else {
                self.segs.truncate(idx);
            }
            tail.segs = rest;
        }
        tail.len = self.len - at;
        self.len = at;
        self.recompute();
        tail.recompute();
        debug_assert_eq!(self.byte_sum(), self.len);
        debug_assert_eq!(tail.byte_sum(), tail.len);
        Ok(tail)
    }

    /// Splits into `[0, at)` and `[at, len)`.
    pub fn split_at(mut self, at: usize) -> Result<(Sgl<'a>, Sgl<'a>)> {
        let tail = self.split_off(at)?;
        Ok((self, tail))
    }

    /// Drops the first `n` bytes.
    pub fn advance(&mut self, n: usize) -> Result<()> {
        self.check_offset(n)?;
        let (idx, inner) = self.locate(n);
        self.segs.remove_front(idx);
        if inner > 0 {
            let first = &mut self.segs.as_mut_slice()[0];
            let (_, right) = first.split(inner);
            *first = right;
        }
        self.len -= n;
        self.recompute();
        debug_assert_eq!(self.byte_sum(), self.len);
        Ok(())
    }

    /// Keeps the first `n` bytes; a no-op when `n >= len()`, like `Vec::truncate`.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        let (idx, inner) = self.locate(n);
        if inner > 0 {
            let (left, _) = self.segs.as_slice()[idx].split(inner);
            self.segs.truncate(idx + 1);
            self.segs.as_mut_slice()[idx] = left;
        } else {
            self.segs.truncate(idx);
        }
        self.len = n;
        self.recompute();
        debug_assert_eq!(self.byte_sum(), self.len);
    }

    /// A read-only list over `[off, off + len)` of this one, borrowing it.
    pub fn sub(&self, off: usize, len: usize) -> Result<Sgl<'_>> {
        let mut s = self.copy_segs();
        s.writable = false;
        for seg in s.segs.as_mut_slice() {
            seg.writable = false;
        }
        s.narrow(off, len)?;
        Ok(s)
    }

    /// A writable list over `[off, off + len)`, borrowing this one exclusively.
    pub fn sub_mut(&mut self, off: usize, len: usize) -> Result<Sgl<'_>> {
        let mut s = self.copy_segs();
        s.narrow(off, len)?;
        Ok(s)
    }

    fn narrow(&mut self, off: usize, len: usize) -> Result<()> {
        let end = off.checked_add(len).ok_or(Error::OutOfRange { offset: off, len, total: self.len })?;
        if end > self.len {
            return Err(Error::OutOfRange { offset: off, len, total: self.len });
        }
        self.advance(off)?;
        self.truncate(len);
        Ok(())
    }

    fn copy_segs<'b>(&'b self) -> Sgl<'b> {
        Sgl {
            segs: self.segs.clone(),
            len: self.len,
            kinds: self.kinds,
            domain: self.domain,
            writable: self.writable,
            _borrow: PhantomData,
        }
    }

    fn check_offset(&self, at: usize) -> Result<()> {
        if at > self.len {
            return Err(Error::OutOfRange { offset: at, len: 0, total: self.len });
        }
        Ok(())
    }

    /// Segment index and offset inside it of byte `at` (`at <= len`). A boundary maps
    /// to the start of the next segment, so `inner == 0` means "cut before `idx`".
    fn locate(&self, at: usize) -> (usize, usize) {
        let mut remaining = at;
        for (i, seg) in self.segs.as_slice().iter().enumerate() {
            if remaining < seg.len() {
                return (i, remaining);
            }
            remaining -= seg.len();
        }
        debug_assert_eq!(remaining, 0, "locate past the end");
        (self.seg_count(), 0)
    }

    fn note(&mut self, seg: Seg) {
        self.kinds = self.kinds.with(seg.kind());
        if !seg.tag.domain().is_host() {
            self.domain = Some(seg.tag.domain());
        }
        self.writable &= seg.writable;
    }

    fn recompute(&mut self) {
        self.kinds = KindSet::EMPTY;
        self.domain = None;
        self.writable = true;
        for i in 0..self.seg_count() {
            let seg = self.segs.as_slice()[i];
            self.note(seg);
        }
    }

    fn byte_sum(&self) -> usize {
        self.segs.as_slice().iter().map(Seg::len).sum()
    }
}

impl fmt::Debug for Sgl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sgl")
            .field("len", &self.len)
            .field("kinds", &self.kinds)
            .field("segs", &self.segs.as_slice())
            .finish()
    }
}

#[cfg(test)]
mod tests;
