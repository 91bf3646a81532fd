//! A command's host memory as the RDMA binding names it: one Keyed SGL Data Block in the
//! command, or a Last Segment descriptor in the command pointing at a list of keyed data
//! blocks in the capsule's data (NVMe-oF 1.1 §2.3.1; NVMe Base 2.0 4.3.2), at most MSDBD
//! of them. The engine sees one transfer of the total length; this module checks the
//! list and splits the pool buffers' SGEs into one RDMA READ or WRITE per descriptor.

use peerless_bdev::DataBuf;
use peerless_core::mem::{self, Sgl};
use spdk_sys::rdma::{RemoteKey, Sge, MAX_SGE};

use super::device::Device;

use crate::nvme::cmd::{SGL_KEYED_DATA_BLOCK, SGL_LAST_SEGMENT_OFFSET};
use crate::nvme::{status, Sqe, Status};

/// Keyed SGL data blocks one command may carry (MSDBD), as SPDK's RDMA transport
/// reports: the in-capsule data must hold that many 16-byte descriptors.
pub const MSDBD: usize = crate::nvme::identify::KEYED_MSDBD as usize;
/// Bytes of one SGL descriptor (NVMe Base 2.0, 4.3.2).
pub const DESCRIPTOR_BYTES: usize = 16;
/// The largest length a keyed data block can name (24 bits, NVMe Base 2.0 Figure 121).
const KEYED_LENGTH_MAX: u64 = (1 << 24) - 1;

/// One keyed data block: host memory the NIC reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyedPart {
    pub remote: RemoteKey,
    pub len: u32,
}

/// One RDMA READ or WRITE of a command's data: its local entries and where it lands.
/// The entries are inline, as many as a work request takes, so building one allocates
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSeg {
    entries: [Sge; MAX_SGE],
    count: u8,
    pub remote: RemoteKey,
}

impl WriteSeg {
    pub fn new(remote: RemoteKey) -> WriteSeg {
        WriteSeg { entries: [Sge::default(); MAX_SGE], count: 0, remote }
    }

    pub fn sges(&self) -> &[Sge] {
        &self.entries[..usize::from(self.count)]
    }

    /// Appends an entry; false when the work request would take no more.
    pub fn push(&mut self, sge: Sge) -> bool {
        let Some(entry) = self.entries.get_mut(usize::from(self.count)) else { return false };
        *entry = sge;
        self.count += 1;
        true
    }
}

/// The keyed data blocks of the descriptor list a Last Segment descriptor names in
/// `in_capsule` (the capsule's data), and their total length, checked: the list lies in
/// the capsule's data, holds 1 to MSDBD whole descriptors, each a Keyed SGL Data Block
/// of the Address subtype (as SPDK takes them) and not empty, and the total fits one
/// keyed length and `max_io_bytes`.
pub fn parse_last_segment(sqe: &Sqe, in_capsule: &[u8], max_io_bytes: u32) -> Result<(Vec<KeyedPart>, u32), Status> {
    debug_assert_eq!(sqe.sgl_type(), SGL_LAST_SEGMENT_OFFSET);
    let (offset, len) = (sqe.sgl_address(), sqe.sgl_length() as usize);
    if offset > in_capsule.len() as u64 {
        return Err(status::SGL_OFFSET_INVALID);
    }
    let offset = offset as usize;
    if len == 0 || !len.is_multiple_of(DESCRIPTOR_BYTES) || offset + len > in_capsule.len() {
        return Err(status::DATA_SGL_LENGTH_INVALID);
    }
    if len / DESCRIPTOR_BYTES > MSDBD {
        return Err(status::SGL_DESCRIPTOR_COUNT_INVALID);
    }
    let mut parts = Vec::with_capacity(len / DESCRIPTOR_BYTES);
    let mut total = 0u64;
    for raw in in_capsule[offset..offset + len].chunks_exact(DESCRIPTOR_BYTES) {
        if raw[15] != SGL_KEYED_DATA_BLOCK {
            return Err(status::SGL_DESCRIPTOR_TYPE_INVALID);
        }
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let part_len = u32::from_le_bytes([raw[8], raw[9], raw[10], 0]);
        let rkey = u32::from_le_bytes(raw[11..15].try_into().unwrap_or_default());
        if part_len == 0 {
            return Err(status::DATA_SGL_LENGTH_INVALID);
        }
        total += u64::from(part_len);
        parts.push(KeyedPart { remote: RemoteKey { addr, rkey }, len: part_len });
    }
    if total > KEYED_LENGTH_MAX || total > u64::from(max_io_bytes) {
        return Err(status::DATA_SGL_LENGTH_INVALID);
    }
    Ok((parts, total as u32))
}

/// Splits the local entries `sges` (which hold at least `len` bytes) into one transfer
/// per keyed part, in order, covering the first `len` bytes of the parts, into `out`
/// (cleared first; its capacity is kept from command to command). False when the parts
/// hold fewer than `len` bytes or a transfer would need more entries than a work request
/// takes.
pub fn split(sges: &[Sge], parts: &[KeyedPart], len: u32, out: &mut Vec<WriteSeg>) -> bool {
    out.clear();
    let mut local = sges.iter().copied();
    let mut current: Option<Sge> = None;
    let mut left = len;
    for part in parts {
        if left == 0 {
            break;
        }
        let mut want = part.len.min(left);
        left -= want;
        let mut seg = WriteSeg::new(part.remote);
        while want > 0 {
            let mut sge = match current.take() {
                Some(sge) => sge,
                None => match local.next() {
                    Some(sge) => sge,
                    None => return false,
                },
            };
            if sge.len > want {
                current = Some(Sge { addr: sge.addr + u64::from(want), len: sge.len - want, lkey: sge.lkey });
                sge.len = want;
            }
            want -= sge.len;
            if sge.len > 0 && !seg.push(sge) {
                return false;
            }
        }
        out.push(seg);
    }
    left == 0
}

/// The SGEs of a command's buffers into `out` (cleared first); false when some memory
/// is not the device's.
pub(super) fn sges_of(device: &Device, sgl: &Sgl<'_>, out: &mut Vec<Sge>) -> bool {
    out.clear();
    for seg in sgl.iter() {
        match device.sge(&seg) {
            Some(sge) => out.push(sge),
            None => return false,
        }
    }
    true
}

pub(super) fn bounce_sges(device: &Device, bounce: &[DataBuf], len: usize) -> Option<Vec<Sge>> {
    let mut left = len;
    let mut sges = Vec::new();
    for buffer in bounce {
        let sgl = buffer.sgl().ok()?;
        for seg in sgl.iter() {
            if left == 0 {
                break;
            }
            let mut sge = device.sge(&seg)?;
            sge.len = sge.len.min(left as u32);
            left -= sge.len as usize;
            sges.push(sge);
        }
    }
    (left == 0).then_some(sges)
}

pub(super) fn copy_into(bounce: &mut [DataBuf], data: &Sgl<'_>, len: usize) -> Result<(), ()> {
    let mut at = 0;
    for buffer in bounce.iter_mut() {
        let mut dst = buffer.sgl_mut().map_err(|_| ())?;
        let take = dst.len().min(len - at);
        if take == 0 {
            break;
        }
        let src = data.sub(at, take).map_err(|_| ())?;
        let mut dst = dst.sub_mut(0, take).map_err(|_| ())?;
        let copied = mem::copy(&mut dst, &src).map_err(|_| ())?;
        if copied != take {
            return Err(());
        }
        at += take;
    }
    if at == len {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(addr: u64, len: u32, rkey: u32, kind: u8) -> [u8; DESCRIPTOR_BYTES] {
        let mut raw = [0u8; DESCRIPTOR_BYTES];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..11].copy_from_slice(&len.to_le_bytes()[..3]);
        raw[11..15].copy_from_slice(&rkey.to_le_bytes());
        raw[15] = kind;
        raw
    }

    /// A command whose Last Segment descriptor names `len` bytes at `offset` of its data.
    fn last_segment(offset: u64, len: u32) -> Sqe {
        let mut sqe = Sqe([0; 64]);
        sqe.0[24..32].copy_from_slice(&offset.to_le_bytes());
        sqe.0[32..36].copy_from_slice(&len.to_le_bytes());
        sqe.0[39] = SGL_LAST_SEGMENT_OFFSET;
        sqe
    }

    fn list(parts: &[(u64, u32, u32)]) -> Vec<u8> {
        parts.iter().flat_map(|&(addr, len, rkey)| descriptor(addr, len, rkey, SGL_KEYED_DATA_BLOCK)).collect()
    }

    #[test]
    fn several_descriptors_at_an_offset_are_read_in_order() {
        for (count, offset) in [(1usize, 0usize), (2, 0), (3, 16), (MSDBD, 64)] {
            let parts: Vec<(u64, u32, u32)> =
                (0..count).map(|i| (0x1000_0000 + i as u64 * 0x10000, 512 * (i as u32 + 1), 0x40 + i as u32)).collect();
            let mut data = vec![0xeeu8; offset];
            data.extend(list(&parts));
            data.extend([0xee; 32]);
            let sqe = last_segment(offset as u64, (count * DESCRIPTOR_BYTES) as u32);
            let (parsed, total) = parse_last_segment(&sqe, &data, 1 << 20).unwrap();
            assert_eq!(parsed.len(), count);
            assert_eq!(total, parts.iter().map(|p| p.1).sum::<u32>());
            for (got, want) in parsed.iter().zip(&parts) {
                assert_eq!((got.remote.addr, got.len, got.remote.rkey), *want);
            }
        }
    }

    #[test]
    fn bad_lists_are_refused_with_their_status() {
        let two = list(&[(0x1000, 4096, 1), (0x9000, 4096, 2)]);
        let refuse = |sqe: Sqe, data: &[u8], max: u32| parse_last_segment(&sqe, data, max).unwrap_err();
        // Beyond the capsule's data: the offset, then the length.
        assert_eq!(refuse(last_segment(33, 16), &two, 1 << 20), status::SGL_OFFSET_INVALID);
        assert_eq!(refuse(last_segment(16, 32), &two, 1 << 20), status::DATA_SGL_LENGTH_INVALID);
        assert_eq!(refuse(last_segment(0, 48), &two, 1 << 20), status::DATA_SGL_LENGTH_INVALID);
        // Not whole descriptors, or none.
        assert_eq!(refuse(last_segment(0, 24), &two, 1 << 20), status::DATA_SGL_LENGTH_INVALID);
        assert_eq!(refuse(last_segment(0, 0), &two, 1 << 20), status::DATA_SGL_LENGTH_INVALID);
        // More than MSDBD.
        let many = list(&vec![(0x1000, 512, 1); MSDBD + 1]);
        let sqe = last_segment(0, ((MSDBD + 1) * DESCRIPTOR_BYTES) as u32);
        assert_eq!(refuse(sqe, &many, 1 << 20), status::SGL_DESCRIPTOR_COUNT_INVALID);
        // A descriptor of another type: invalidate subtype, data block, a nested segment.
        for kind in [0x4f, 0x01, 0x5a, 0x31, 0x20] {
            let mut data = two.clone();
            data[DESCRIPTOR_BYTES + 15] = kind;
            assert_eq!(refuse(last_segment(0, 32), &data, 1 << 20), status::SGL_DESCRIPTOR_TYPE_INVALID, "{kind:#x}");
        }
        // An empty descriptor; a total beyond max_io_size.
        let empty = list(&[(0x1000, 4096, 1), (0x9000, 0, 2)]);
        assert_eq!(refuse(last_segment(0, 32), &empty, 1 << 20), status::DATA_SGL_LENGTH_INVALID);
        assert_eq!(refuse(last_segment(0, 32), &two, 4096), status::DATA_SGL_LENGTH_INVALID);
    }

    fn sge(addr: u64, len: u32) -> Sge {
        Sge { addr, len, lkey: 7 }
    }

    fn split_vec(sges: &[Sge], parts: &[KeyedPart], len: u32) -> Option<Vec<WriteSeg>> {
        let mut out = Vec::new();
        split(sges, parts, len, &mut out).then_some(out)
    }

    fn part(addr: u64, len: u32) -> KeyedPart {
        KeyedPart { remote: RemoteKey { addr, rkey: 9 }, len }
    }

    #[test]
    fn buffers_split_across_descriptors_in_order() {
        // Two 8 KiB pool buffers, three descriptors of 4, 10 and 2 KiB.
        let sges = [sge(0x10000, 8192), sge(0x40000, 8192)];
        let parts = [part(0xa000, 4096), part(0xb000, 10240), part(0xc000, 2048)];
        let segs = split_vec(&sges, &parts, 16384).unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0].sges(), [sge(0x10000, 4096)]);
        assert_eq!(segs[1].sges(), [sge(0x11000, 4096), sge(0x40000, 6144)]);
        assert_eq!(segs[2].sges(), [sge(0x41800, 2048)]);
        for (seg, part) in segs.iter().zip(&parts) {
            assert_eq!(seg.remote, part.remote);
            assert_eq!(seg.sges().iter().map(|s| s.len).sum::<u32>(), part.len);
        }
    }

    #[test]
    fn one_descriptor_takes_every_buffer_and_a_short_transfer_stops_early() {
        let sges = [sge(0x10000, 4096), sge(0x20000, 4096), sge(0x30000, 4096)];
        let one = split_vec(&sges, &[part(0xa000, 12288)], 12288).unwrap();
        assert_eq!((one.len(), one[0].sges(), one[0].remote), (1, &sges[..], part(0xa000, 0).remote));
        // Data shorter than the descriptors name (an admin reply): the first bytes only.
        let short = split_vec(&sges, &[part(0xa000, 2048), part(0xb000, 8192)], 5000).unwrap();
        assert_eq!(short.len(), 2);
        assert_eq!(short[1].sges(), [sge(0x10800, 2048), sge(0x20000, 904)]);
    }

    /// The list keeps its capacity: a second split of fewer parts reuses it.
    #[test]
    fn a_reused_list_is_cleared_first() {
        let sges = [sge(0x10000, 8192)];
        let mut out = Vec::new();
        assert!(split(&sges, &[part(0xa000, 4096), part(0xb000, 4096)], 8192, &mut out));
        assert_eq!(out.len(), 2);
        let capacity = out.capacity();
        assert!(split(&sges, &[part(0xc000, 8192)], 8192, &mut out));
        assert_eq!((out.len(), out[0].sges(), out.capacity()), (1, &[sge(0x10000, 8192)][..], capacity));
    }

    #[test]
    fn too_little_memory_or_too_many_entries_is_refused() {
        let sges = [sge(0x10000, 4096)];
        assert_eq!(split_vec(&sges, &[part(0xa000, 8192)], 8192), None, "buffers shorter than the transfer");
        assert_eq!(split_vec(&sges, &[part(0xa000, 1024)], 4096), None, "descriptors shorter than the transfer");
        let tiny: Vec<Sge> = (0..MAX_SGE as u64 + 1).map(|i| sge(0x10000 + i * 0x1000, 16)).collect();
        assert_eq!(split_vec(&tiny, &[part(0xa000, 16 * (MAX_SGE as u32 + 1))], 16 * (MAX_SGE as u32 + 1)), None);
        // Exactly as many entries as a work request takes still goes.
        let full = &tiny[..MAX_SGE];
        let segs = split_vec(full, &[part(0xa000, 16 * MAX_SGE as u32)], 16 * MAX_SGE as u32).unwrap();
        assert_eq!(segs[0].sges(), full);
    }
}
