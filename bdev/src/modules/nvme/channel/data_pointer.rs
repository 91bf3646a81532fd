//! How one Read or Write names its data: PRPs, SGLs, or neither (the caller bounces).
//!
//! A single segment takes PRPs: PRP1 and PRP2 cost the controller no descriptor fetch.
//! Several segments take an SGL when the controller supports them (NVMe Base 2.0
//! §4.1.2), where a bounce would otherwise copy them or a PRP list would name each page.
//! A list the slot's SGL page cannot hold, or one that breaks the controller's dword
//! rule, falls back to PRPs and from there to a bounce, as without SGLs.

use peerless_core::mem::{DomainId, Sgl};

use super::{Staging, State};
use crate::modules::nvme::prp::{self, PrpError};
use crate::modules::nvme::queue::{BusTranslate, PAGE_BYTES};
use crate::modules::nvme::sgl;
use crate::modules::nvme::spec::{psdt, SglSupport};
use crate::status::IoStatus;

/// PSDT and the two qwords of DPTR.
pub(super) type DataPointer = (u32, u64, u64);

/// What a list of segments maps to.
#[derive(Debug, PartialEq, Eq)]
enum Mapping {
    /// The pointer; the list page's entries are in the scratch list.
    Mapped(DataPointer),
    Bounce,
    /// More pages than MDTS allows reached the driver: refused.
    TooManyPages(usize),
}

impl State {
    /// Builds the data pointer of command `cid` over `part` and writes its list page;
    /// None when the data must be bounced.
    pub(super) fn data_pointer(&mut self, cid: u16, part: &Sgl<'_>) -> Result<Option<DataPointer>, Staging> {
        let queue = self.queue.as_mut().expect("a channel without a queue stages nothing");
        let list_bus = queue.prp_list_bus(cid);
        // Host memory by its IOVA or physical address; a CMB (its own, or a peer's) by the
        // address the controller reaches it at: NVMe forbids mixing them with host
        // addresses in one command.
        let reach: Option<DomainId> = if part.is_host_only() {
            None
        } else {
            match part
                .domain()
                .filter(|domain| self.ctrlr.reaches(*domain) && part.iter().all(|seg| seg.tag().domain() == *domain))
            {
                Some(domain) => Some(domain),
                None => return Ok(None),
            }
        };
        let ctrlr = &self.ctrlr;
        let translate = |addr: usize| match reach {
            None => ctrlr.pci().host_bus_address(addr),
            Some(domain) => ctrlr.device_bus_address(domain, addr),
        };
        let segs = || part.iter().map(|seg| (seg.addr(), seg.len()));
        match map(segs, part.iter().len(), self.sgl_support, &mut self.prp_list, list_bus, translate) {
            Mapping::Mapped(pointer) => {
                queue.write_prp_list(cid, &self.prp_list);
                Ok(Some(pointer))
            }
            Mapping::Bounce => Ok(None),
            Mapping::TooManyPages(pages) => {
                let why = format!("{pages} pages in one command exceed the transfer limit");
                Err(Staging::Refused(IoStatus::INVALID_FIELD, why))
            }
        }
    }
}

/// The choice itself, over `count` segments that `segs` yields afresh on each call.
fn map<I: Iterator<Item = (usize, usize)>>(
    segs: impl Fn() -> I,
    count: usize,
    support: SglSupport,
    list: &mut Vec<u64>,
    list_bus: u64,
    translate: impl Fn(usize) -> Option<u64> + Copy,
) -> Mapping {
    let dword_aligned = match support {
        SglSupport::None => None,
        SglSupport::Unaligned => Some(false),
        SglSupport::DwordAligned => Some(true),
    };
    let by_sgl = |list: &mut Vec<u64>| {
        let aligned = dword_aligned?;
        let (first, second) = sgl::build(segs(), PAGE_BYTES, aligned, list, list_bus, PAGE_BYTES, translate).ok()?;
        Some(Mapping::Mapped((psdt::SGL, first, second)))
    };
    let several = count > 1;
    if several {
        if let Some(mapped) = by_sgl(list) {
            return mapped;
        }
    }
    match prp::build(segs(), PAGE_BYTES, list, list_bus, translate) {
        Ok((prp1, prp2)) => Mapping::Mapped((psdt::PRP, prp1, prp2)),
        Err(PrpError::TooManyPages(pages)) => Mapping::TooManyPages(pages),
        // One segment PRP1 cannot start (not dword aligned) may still be one Data Block.
        Err(PrpError::Unaligned) if !several => by_sgl(list).unwrap_or(Mapping::Bounce),
        Err(PrpError::Unaligned | PrpError::Untranslatable(_)) => Mapping::Bounce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST_BUS: u64 = 0x7000;

    fn bus(addr: usize) -> Option<u64> {
        Some(addr as u64 + 0x1_0000_0000)
    }

    /// The PSDT the list maps to (None: bounced), and how many list qwords it wrote.
    fn choose(segs: &[(usize, usize)], support: SglSupport) -> (Option<u32>, usize) {
        let mut list = Vec::with_capacity(PAGE_BYTES / 8);
        match map(|| segs.iter().copied(), segs.len(), support, &mut list, LIST_BUS, bus) {
            Mapping::Mapped((psdt, _, _)) => (Some(psdt), list.len()),
            Mapping::Bounce => (None, 0),
            Mapping::TooManyPages(pages) => panic!("{pages} pages refused"),
        }
    }

    const ALL: [SglSupport; 3] = [SglSupport::None, SglSupport::Unaligned, SglSupport::DwordAligned];

    #[test]
    fn one_segment_keeps_prps() {
        for support in ALL {
            assert_eq!(choose(&[(0x10_0000, 65536)], support), (Some(psdt::PRP), 15), "{support:?}");
            assert_eq!(choose(&[(0x10_0200, 512)], support), (Some(psdt::PRP), 0), "{support:?}");
        }
    }

    #[test]
    fn several_segments_take_an_sgl_when_the_controller_has_them() {
        let aligned = [(0x10_0000, 16384), (0x40_0000, 16384), (0x80_0000, 16384)];
        assert_eq!(choose(&aligned, SglSupport::None), (Some(psdt::PRP), 11), "as before: PRPs");
        assert_eq!(choose(&aligned, SglSupport::Unaligned), (Some(psdt::SGL), 6), "three Data Blocks");
        assert_eq!(choose(&aligned, SglSupport::DwordAligned), (Some(psdt::SGL), 6));
        // Odd offsets and lengths PRPs cannot take: bounced before, described now.
        let odd = [(0x10_0200, 512), (0x20_0e00, 1536), (0x30_0000, 1024)];
        assert_eq!(choose(&odd, SglSupport::None), (None, 0));
        assert_eq!(choose(&odd, SglSupport::Unaligned), (Some(psdt::SGL), 6));
        assert_eq!(choose(&odd, SglSupport::DwordAligned), (Some(psdt::SGL), 6));
    }

    #[test]
    fn dword_refusals_fall_back_to_prps_then_to_a_bounce() {
        // The last segment's length is not whole dwords: PRPs still take it.
        let prp_able = [(0x10_0000, 4096), (0x20_0000, 4094)];
        assert_eq!(choose(&prp_able, SglSupport::DwordAligned), (Some(psdt::PRP), 0));
        assert_eq!(choose(&prp_able, SglSupport::Unaligned), (Some(psdt::SGL), 4));
        let neither = [(0x10_0002, 510), (0x20_0000, 4096)];
        assert_eq!(choose(&neither, SglSupport::DwordAligned), (None, 0));
        assert_eq!(choose(&neither, SglSupport::Unaligned), (Some(psdt::SGL), 4));
        // One segment PRP1 cannot start: one Data Block in DPTR where bytes are allowed.
        assert_eq!(choose(&[(0x10_0002, 512)], SglSupport::Unaligned), (Some(psdt::SGL), 0));
        assert_eq!(choose(&[(0x10_0002, 512)], SglSupport::DwordAligned), (None, 0));
        assert_eq!(choose(&[(0x10_0002, 512)], SglSupport::None), (None, 0));
    }

    #[test]
    fn lists_beyond_one_page_of_descriptors_do_what_they_did_before() {
        // 300 whole pages, each its own segment: PRPs take them.
        let pages: Vec<_> = (0..300).map(|i| (0x100_0000 + i * 2 * PAGE_BYTES, PAGE_BYTES)).collect();
        assert_eq!(choose(&pages, SglSupport::Unaligned), (Some(psdt::PRP), 299));
        // 300 blocks of 512 bytes off page boundaries: bounced, as without SGLs.
        let blocks: Vec<_> = (0..300).map(|i| (0x100_0000 + i * 1024, 512)).collect();
        assert_eq!(choose(&blocks, SglSupport::Unaligned), (None, 0));
        // 256 of them fit one page of descriptors.
        assert_eq!(choose(&blocks[..256], SglSupport::Unaligned), (Some(psdt::SGL), 512));
    }
}
