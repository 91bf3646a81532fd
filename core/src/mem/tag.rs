//! Memory tags: what kind of memory a segment is and which provider owns it.
//!
//! The kernel's `pfn_t` idea as a type: the tag travels with every segment, so code that
//! is about to touch bytes can tell at once whether it may (the memory-tag design).

use std::fmt;

/// Who may touch the bytes of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MemKind {
    /// Ordinary DRAM: the CPU may read and write through a pointer.
    Host = 1 << 0,
    /// Device memory mapped for the CPU (a CMB BAR): only I/O accessors, never `&[u8]`.
    IoMem = 1 << 1,
    /// Device memory with no CPU mapping: only DMA engines.
    Device = 1 << 2,
}

impl MemKind {
    /// Every kind, in mask-bit order; used for iteration and display.
    pub const ALL: [MemKind; 3] = [MemKind::Host, MemKind::IoMem, MemKind::Device];

    /// The kind's bit in a [`KindSet`].
    pub const fn bit(self) -> u8 {
        self as u8
    }

    /// Dense index 0..3, for per-kind counter arrays.
    pub const fn index(self) -> usize {
        match self {
            MemKind::Host => 0,
            MemKind::IoMem => 1,
            MemKind::Device => 2,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            MemKind::Host => "Host",
            MemKind::IoMem => "IoMem",
            MemKind::Device => "Device",
        }
    }
}

impl fmt::Display for MemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`MemKind`]s as a bit mask: the union an [`crate::mem::Sgl`] keeps so that
/// "is this list all Host?" is one compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KindSet(u8);

impl KindSet {
    pub const EMPTY: KindSet = KindSet(0);
    pub const HOST: KindSet = KindSet(MemKind::Host.bit());

    pub const fn of(kind: MemKind) -> KindSet {
        KindSet(kind.bit())
    }

    pub const fn with(self, kind: MemKind) -> KindSet {
        KindSet(self.0 | kind.bit())
    }

    pub const fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }

    pub const fn contains(self, kind: MemKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when every member is Host (an empty set counts: no bytes to refuse).
    pub const fn is_host_only(self) -> bool {
        self.0 & !MemKind::Host.bit() == 0
    }

    /// The members that the CPU may not dereference.
    pub const fn non_host(self) -> KindSet {
        KindSet(self.0 & !MemKind::Host.bit())
    }

    pub fn iter(self) -> impl Iterator<Item = MemKind> {
        MemKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }

    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl fmt::Display for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(none)");
        }
        let mut first = true;
        for kind in self.iter() {
            if !first {
                f.write_str("|")?;
            }
            first = false;
            f.write_str(kind.name())?;
        }
        Ok(())
    }
}

/// Which provider owns a piece of memory. Domain 0 is host DRAM; each P2P provider gets
/// its own non-zero id when it is created, so DMA compatibility is an integer compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DomainId(u32);

impl DomainId {
    pub const HOST: DomainId = DomainId(0);

    pub const fn get(self) -> u32 {
        self.0
    }

    pub const fn is_host(self) -> bool {
        self.0 == 0
    }

    /// A fresh device domain id. Control plane only (provider creation), so the atomic
    /// read-modify-write here is not on the data path.
    pub fn allocate() -> DomainId {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(id != 0, "device domain ids exhausted");
        DomainId(id)
    }
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            f.write_str("host")
        } else {
            write!(f, "domain{}", self.0)
        }
    }
}

/// Kind and owner of a segment. Host memory always lives in [`DomainId::HOST`]; device
/// memory never does. The constructors keep that pairing, so a tag cannot lie about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemTag {
    kind: MemKind,
    domain: DomainId,
}

impl MemTag {
    pub const HOST: MemTag = MemTag { kind: MemKind::Host, domain: DomainId::HOST };

    /// Device memory of `domain`. `kind` must not be Host and `domain` must not be the
    /// host domain: both would let device memory pass for DRAM.
    pub(crate) fn device_side(kind: MemKind, domain: DomainId) -> MemTag {
        assert!(kind != MemKind::Host, "device memory tagged Host");
        assert!(!domain.is_host(), "device memory in the host domain");
        MemTag { kind, domain }
    }

    pub const fn kind(self) -> MemKind {
        self.kind
    }

    pub const fn domain(self) -> DomainId {
        self.domain
    }

    pub const fn is_host(self) -> bool {
        matches!(self.kind, MemKind::Host)
    }
}

impl fmt::Display for MemTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            f.write_str("Host")
        } else {
            write!(f, "{}@{}", self.kind, self.domain)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_set_union_and_display() {
        let set = KindSet::EMPTY.with(MemKind::Device).with(MemKind::Host);
        assert!(set.contains(MemKind::Host));
        assert!(!set.contains(MemKind::IoMem));
        assert!(!set.is_host_only());
        assert_eq!(set.non_host(), KindSet::of(MemKind::Device));
        assert_eq!(set.to_string(), "Host|Device");
        assert!(KindSet::EMPTY.is_host_only());
        assert!(KindSet::HOST.is_host_only());
    }

    #[test]
    fn domains_are_distinct_and_never_host() {
        let a = DomainId::allocate();
        let b = DomainId::allocate();
        assert_ne!(a, b);
        assert!(!a.is_host() && !b.is_host());
        let tag = MemTag::device_side(MemKind::IoMem, a);
        assert_eq!(tag.to_string(), format!("IoMem@domain{}", a.get()));
    }
}
