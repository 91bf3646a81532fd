//! Physical Region Page lists (NVMe Base 2.0 §4.3.1): how a command names its data.
//!
//! PRP1 names the first byte, anywhere in a page (dword aligned); every later entry names a
//! whole memory page. So a list of segments maps onto PRPs only when every segment but
//! the first starts on a page boundary and every segment but the last ends on one; the
//! caller bounces a list that does not. Two pages fit in PRP1 and PRP2; beyond that PRP2
//! points at a list page holding the rest.

/// Why a list cannot be described by PRPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrpError {
    /// A segment boundary falls inside a page: bounce through one buffer.
    Unaligned,
    /// More pages than one list page holds (the transfer exceeds what MDTS allows).
    TooManyPages(usize),
    /// A page has no bus address the controller can reach.
    Untranslatable(usize),
}

impl std::fmt::Display for PrpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrpError::Unaligned => f.write_str("segments not on page boundaries"),
            PrpError::TooManyPages(pages) => write!(f, "{pages} pages exceed one PRP list"),
            PrpError::Untranslatable(addr) => write!(f, "no bus address for {addr:#x}"),
        }
    }
}

/// PRP1, PRP2, and the entries the list page must hold (empty when PRP2 is a page).
/// `list` is the caller's reused scratch; `list_bus` the bus address of the page it is
/// copied to.
pub fn build(
    segs: impl Iterator<Item = (usize, usize)>,
    page: usize,
    list: &mut Vec<u64>,
    list_bus: u64,
    mut translate: impl FnMut(usize) -> Option<u64>,
) -> Result<(u64, u64), PrpError> {
    list.clear();
    let mask = page - 1;
    let mut prp1 = None;
    let mut expect_aligned_start = false;
    let mut last_end_aligned = true;
    for (addr, len) in segs {
        if len == 0 {
            continue;
        }
        if !last_end_aligned || (expect_aligned_start && addr & mask != 0) {
            return Err(PrpError::Unaligned);
        }
        let end = addr + len;
        let mut at = addr;
        while at < end {
            let bus = translate(at).ok_or(PrpError::Untranslatable(at))?;
            if prp1.is_none() {
                if bus & 3 != 0 {
                    return Err(PrpError::Unaligned);
                }
                prp1 = Some(bus);
            } else {
                list.push(bus);
            }
            at = (at & !mask) + page;
        }
        expect_aligned_start = true;
        last_end_aligned = end & mask == 0;
    }
    let Some(prp1) = prp1 else { return Ok((0, 0)) };
    match list.len() {
        0 => Ok((prp1, 0)),
        1 => {
            let second = list[0];
            list.clear();
            Ok((prp1, second))
        }
        entries if entries > page / 8 => Err(PrpError::TooManyPages(entries + 1)),
        _ => Ok((prp1, list_bus)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// A translation that moves every page somewhere else, as physical addresses do.
    fn scattered(addr: usize) -> Option<u64> {
        let page = addr / PAGE;
        Some(((page * 7 % 1000 + 1) * PAGE + addr % PAGE) as u64 + 0x1_0000_0000)
    }

    fn run(segs: &[(usize, usize)]) -> Result<(u64, u64, Vec<u64>), PrpError> {
        let mut list = Vec::with_capacity(PAGE / 8);
        let (prp1, prp2) = build(segs.iter().copied(), PAGE, &mut list, 0xabc000, scattered)?;
        Ok((prp1, prp2, list))
    }

    #[test]
    fn one_and_two_pages_need_no_list() {
        let (prp1, prp2, list) = run(&[(0x10_0200, 512)]).unwrap();
        assert_eq!((prp1, prp2), (scattered(0x10_0200).unwrap(), 0));
        assert!(list.is_empty());
        // Crosses one page boundary: the second page goes in PRP2, page aligned.
        let (prp1, prp2, list) = run(&[(0x10_0e00, 1024)]).unwrap();
        assert_eq!((prp1, prp2), (scattered(0x10_0e00).unwrap(), scattered(0x10_1000).unwrap()));
        assert!(list.is_empty());
    }

    #[test]
    fn longer_transfers_put_the_rest_in_a_list() {
        // 128 KiB in two 64 KiB segments: 32 pages, PRP1 plus 31 list entries.
        let (prp1, prp2, list) = run(&[(0x20_0000, 65536), (0x80_0000, 65536)]).unwrap();
        assert_eq!(prp1, scattered(0x20_0000).unwrap());
        assert_eq!(prp2, 0xabc000);
        assert_eq!(list.len(), 31);
        assert_eq!(list[0], scattered(0x20_1000).unwrap());
        assert_eq!(list[15], scattered(0x80_0000).unwrap());
        assert_eq!(*list.last().unwrap(), scattered(0x80_f000).unwrap());
    }

    #[test]
    fn sizes_from_512_bytes_to_2_mib() {
        for pages in [1usize, 2, 3, 64, 128, 512] {
            let (_, prp2, list) = run(&[(0x40_0000, pages * PAGE)]).unwrap();
            let expected_list = if pages > 2 { pages - 1 } else { 0 };
            assert_eq!(list.len(), expected_list, "{pages} pages");
            assert_eq!(prp2 == 0xabc000, pages > 2);
        }
        // One list page holds 512 entries: PRP1 and those, no chained second list.
        assert!(run(&[(0x40_0000, 513 * PAGE)]).is_ok());
        assert!(matches!(run(&[(0x40_0000, 514 * PAGE)]), Err(PrpError::TooManyPages(_))));
    }

    #[test]
    fn misaligned_lists_are_refused_for_bouncing() {
        assert_eq!(run(&[(0x10_0000, 512), (0x20_0000, 4096)]), Err(PrpError::Unaligned), "first ends mid-page");
        assert_eq!(run(&[(0x10_0000, 4096), (0x20_0200, 512)]), Err(PrpError::Unaligned), "second starts mid-page");
        assert_eq!(run(&[(0x10_0002, 512)]), Err(PrpError::Unaligned), "PRP1 must be dword aligned");
        // A first segment may start mid-page if it runs to the page end.
        assert!(run(&[(0x10_0800, 2048), (0x20_0000, 4096)]).is_ok());
    }

    #[test]
    fn untranslatable_pages_are_named() {
        let mut list = Vec::new();
        let err = build([(0x5000usize, 8192usize)].into_iter(), PAGE, &mut list, 0, |addr| {
            (addr < 0x6000).then_some(addr as u64)
        });
        assert_eq!(err, Err(PrpError::Untranslatable(0x6000)));
    }
}
