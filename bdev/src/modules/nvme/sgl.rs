//! Scatter Gather Lists (NVMe Base 2.0 §4.1.2): the other way a command names its data,
//! for controllers whose Identify Controller SGLS says they take them for NVM commands.
//!
//! Unlike PRPs, a Data Block descriptor names any run of bytes, so a list of segments
//! that starts or ends off page boundaries goes to the controller as it is instead of
//! through a bounce buffer. A transfer in one run is a single Data Block descriptor in
//! DPTR; longer lists go in the command slot's list page, which DPTR names with a Last
//! Segment descriptor. The driver never chains a Segment descriptor: one page of
//! descriptors (256) is what a slot has, and a list longer than that takes the PRP path.

/// One SGL descriptor, 16 bytes (§4.1.2, Figure 116).
pub const DESCRIPTOR_BYTES: usize = 16;

/// The SGL Identifier byte (byte 15): descriptor type in bits 7:4, sub type in bits 3:0
/// (Address, 0h, for every descriptor here: the controller fetches from a bus address).
pub mod identifier {
    pub const DATA_BLOCK: u8 = 0x00;
    /// A segment that another follows; the driver never chains segments, so only the
    /// encoding test names it.
    #[cfg(test)]
    pub const SEGMENT: u8 = 0x20;
    pub const LAST_SEGMENT: u8 = 0x30;
}

/// Why a list cannot be described by the SGL this driver builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SglError {
    /// The controller wants Data Blocks in whole dwords (SGLS 10b) and one is not.
    Unaligned,
    /// More descriptors than a slot's list page holds.
    TooManyDescriptors(usize),
    /// A page has no bus address the controller can reach.
    Untranslatable(usize),
}

impl std::fmt::Display for SglError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SglError::Unaligned => f.write_str("a data block is not dword aligned"),
            SglError::TooManyDescriptors(count) => write!(f, "{count} descriptors exceed one SGL segment"),
            SglError::Untranslatable(addr) => write!(f, "no bus address for {addr:#x}"),
        }
    }
}

/// A descriptor as the two little-endian qwords of its wire form: the address, then the
/// length (bytes 11:08), three reserved bytes and the identifier.
pub fn descriptor(address: u64, len: u32, identifier: u8) -> (u64, u64) {
    (address, u64::from(len) | u64::from(identifier) << 56)
}

/// The two qwords of DPTR (the command's PRP1 and PRP2 places, sent with PSDT 01b), and
/// in `list` the qwords the slot's list page must hold (empty when DPTR is the one Data
/// Block). Each segment is cut where its pages stop being contiguous on the bus and
/// joined with its neighbours where they are. `list` is the caller's reused scratch, of
/// room for `list_bytes`; `list_bus` the bus address of the page it is copied to.
pub fn build(
    segs: impl Iterator<Item = (usize, usize)>,
    page: usize,
    dword_aligned: bool,
    list: &mut Vec<u64>,
    list_bus: u64,
    list_bytes: usize,
    mut translate: impl FnMut(usize) -> Option<u64>,
) -> Result<(u64, u64), SglError> {
    list.clear();
    let capacity = list_bytes / DESCRIPTOR_BYTES;
    let mask = page - 1;
    let mut count = 0usize;
    // The descriptor being grown: bus address and length.
    let mut open: Option<(u64, u64)> = None;
    let mut close = |list: &mut Vec<u64>, (bus, len): (u64, u64)| -> Result<(), SglError> {
        if dword_aligned && (bus | len) & 3 != 0 {
            return Err(SglError::Unaligned);
        }
        count += 1;
        if count > capacity {
            return Err(SglError::TooManyDescriptors(count));
        }
        let (first, second) = descriptor(bus, len as u32, identifier::DATA_BLOCK);
        list.push(first);
        list.push(second);
        Ok(())
    };
    for (addr, len) in segs {
        let end = addr + len;
        let mut at = addr;
        while at < end {
            let run = ((at & !mask) + page).min(end) - at;
            let bus = translate(at).ok_or(SglError::Untranslatable(at))?;
            open = match open {
                // Length is 32 bits; a transfer is never near that, but a join never crosses it.
                Some((start, grown)) if start + grown == bus && grown + (run as u64) <= u64::from(u32::MAX) => {
                    Some((start, grown + run as u64))
                }
                Some(done) => {
                    close(list, done)?;
                    Some((bus, run as u64))
                }
                None => Some((bus, run as u64)),
            };
            at += run;
        }
    }
    let Some(last) = open else { return Ok((0, 0)) };
    close(list, last)?;
    if count == 1 {
        let dptr = (list[0], list[1]);
        list.clear();
        return Ok(dptr);
    }
    Ok(descriptor(list_bus, (count * DESCRIPTOR_BYTES) as u32, identifier::LAST_SEGMENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;
    const LIST_BUS: u64 = 0xabc000;

    /// A translation that moves every page somewhere else, as physical addresses do.
    fn scattered(addr: usize) -> Option<u64> {
        let page = addr / PAGE;
        Some(((page * 7 % 1000 + 1) * PAGE + addr % PAGE) as u64 + 0x1_0000_0000)
    }

    /// An IOMMU's identity mapping: contiguous in, contiguous out.
    fn identity(addr: usize) -> Option<u64> {
        Some(addr as u64 + 0x8000_0000)
    }

    type Built = Result<((u64, u64), Vec<(u64, u32, u8)>), SglError>;

    fn run_with(segs: &[(usize, usize)], dword: bool, translate: fn(usize) -> Option<u64>) -> Built {
        let mut list = Vec::with_capacity(PAGE / 8);
        let dptr = build(segs.iter().copied(), PAGE, dword, &mut list, LIST_BUS, PAGE, translate)?;
        assert!(list.capacity() <= PAGE / 8, "the list page never grows");
        let decoded = list.chunks(2).map(|qw| (qw[0], qw[1] as u32, (qw[1] >> 56) as u8)).collect();
        Ok((dptr, decoded))
    }

    fn run(segs: &[(usize, usize)]) -> Built {
        run_with(segs, false, identity)
    }

    #[test]
    fn descriptors_encode_per_the_spec() {
        let (address, rest) = descriptor(0x1122_3344_5566_7788, 0x1000, identifier::DATA_BLOCK);
        let mut bytes = [0u8; DESCRIPTOR_BYTES];
        bytes[..8].copy_from_slice(&address.to_le_bytes());
        bytes[8..].copy_from_slice(&rest.to_le_bytes());
        assert_eq!(&bytes[..8], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&bytes[8..12], &0x1000u32.to_le_bytes(), "length in bytes 11:08");
        assert_eq!(&bytes[12..15], &[0, 0, 0], "reserved");
        assert_eq!(bytes[15], 0x00, "Data Block, Address");
        assert_eq!(descriptor(0, 32, identifier::LAST_SEGMENT).1 >> 56, 0x30);
        assert_eq!(descriptor(0, 32, identifier::SEGMENT).1 >> 56, 0x20);
    }

    #[test]
    fn one_run_is_a_data_block_in_dptr() {
        // Two segments that meet on the bus are one run.
        let (dptr, list) = run(&[(0x10_0000, 3000), (0x10_0000 + 3000, 5192)]).unwrap();
        assert_eq!(dptr, descriptor(identity(0x10_0000).unwrap(), 8192, identifier::DATA_BLOCK));
        assert!(list.is_empty());
        // Nothing to transfer: no descriptor.
        assert_eq!(run(&[(0x10_0000, 0)]).unwrap(), ((0, 0), vec![]));
    }

    #[test]
    fn many_segments_go_in_the_list_behind_a_last_segment() {
        // Iovecs a page-based PRP cannot take: odd offsets, odd lengths.
        let segs = [(0x10_0003, 509), (0x20_0200, 7000), (0x30_0ff1, 15), (0x40_0000, 4096)];
        let (dptr, list) = run(&segs).unwrap();
        assert_eq!(dptr, descriptor(LIST_BUS, 4 * 16, identifier::LAST_SEGMENT));
        let expected: Vec<_> = segs.iter().map(|&(addr, len)| (identity(addr).unwrap(), len as u32, 0x00)).collect();
        assert_eq!(list, expected);
        assert_eq!(list.iter().map(|d| d.1 as usize).sum::<usize>(), 509 + 7000 + 15 + 4096);
    }

    #[test]
    fn segments_split_where_bus_pages_are_not_contiguous() {
        // 1 KiB before a page boundary, then 5 KiB across two more: three scattered pages.
        let (dptr, list) = run_with(&[(0x10_0c00, 6144)], false, scattered).unwrap();
        assert_eq!(dptr.1 >> 56, u64::from(identifier::LAST_SEGMENT));
        assert_eq!(
            list,
            vec![
                (scattered(0x10_0c00).unwrap(), 1024, 0),
                (scattered(0x10_1000).unwrap(), 4096, 0),
                (scattered(0x10_2000).unwrap(), 1024, 0),
            ]
        );
    }

    #[test]
    fn blocks_of_512_bytes_each_in_their_own_buffer() {
        // A 64 KiB write gathered from 128 separate 512-byte blocks, every other one
        // starting mid-page.
        let segs: Vec<_> = (0..128).map(|i| (0x100_0000 + i * 0x1200, 512)).collect();
        let (dptr, list) = run(&segs).unwrap();
        assert_eq!(dptr, descriptor(LIST_BUS, 128 * 16, identifier::LAST_SEGMENT));
        assert_eq!(list.len(), 128);
        assert!(list.iter().zip(&segs).all(|(d, s)| d.0 == identity(s.0).unwrap() && d.1 == 512));
    }

    #[test]
    fn a_list_beyond_one_page_of_descriptors_is_refused() {
        let segs: Vec<_> = (0..256).map(|i| (0x100_0000 + i * 8192, 512)).collect();
        assert_eq!(run(&segs).unwrap().1.len(), 256, "exactly one page of descriptors");
        let segs: Vec<_> = (0..257).map(|i| (0x100_0000 + i * 8192, 512)).collect();
        assert_eq!(run(&segs), Err(SglError::TooManyDescriptors(257)));
        // Page splits count too: 257 scattered pages in one segment.
        assert_eq!(run_with(&[(0x40_0000, 257 * PAGE)], false, scattered), Err(SglError::TooManyDescriptors(257)));
    }

    #[test]
    fn dword_alignment_is_kept_when_the_controller_wants_it() {
        let aligned = [(0x10_0004, 508), (0x20_0000, 4096)];
        assert!(run_with(&aligned, true, identity).is_ok());
        assert_eq!(run_with(&[(0x10_0002, 510), (0x20_0000, 4096)], true, identity), Err(SglError::Unaligned));
        assert_eq!(run_with(&[(0x10_0000, 510), (0x20_0000, 4098)], true, identity), Err(SglError::Unaligned));
        // The same lists without the requirement.
        assert!(run_with(&[(0x10_0002, 510), (0x20_0000, 4096)], false, identity).is_ok());
        // Joined runs are judged whole: two odd halves of one dword-aligned run pass.
        assert!(run_with(&[(0x10_0000, 511), (0x10_0000 + 511, 513)], true, identity).is_ok());
    }

    #[test]
    fn untranslatable_pages_are_named() {
        let mut list = Vec::new();
        let err = build([(0x5000usize, 8192usize)].into_iter(), PAGE, false, &mut list, 0, PAGE, |addr| {
            (addr < 0x6000).then_some(addr as u64)
        });
        assert_eq!(err, Err(SglError::Untranslatable(0x6000)));
    }
}
