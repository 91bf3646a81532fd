//! Work request identifiers: what a completion on the shared CQ is for. The queue pair
//! comes from the completion itself (its QP number); the identifier says which kind of
//! request and which buffer, slot or command; and the chains of work requests that
//! move a command's data and answer it.

use spdk_sys::rdma::{SendWr, Sge, WrError};

use super::sgl::WriteSeg;

/// The kind of a work request (the top three bits of its identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrKind {
    /// A receive buffer: the tag is its index (in the SRQ's or the queue pair's region).
    Recv,
    /// A response capsule: the tag is its response slot.
    Send,
    /// Host data in, the command's last (or only) RDMA READ, signaled: the tag is the
    /// engine's slot (low 16 bits) and the CID (high 16).
    Read,
    /// One of the earlier RDMA READs of a command whose data spans several keyed
    /// descriptors, unsignaled (it completes on its own only failed or flushed): as `Read`.
    ReadPart,
    /// Host data out, chained before a response SEND and unsignaled: the tag is that
    /// response's slot (it completes on its own only when it failed or was flushed).
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrId {
    pub kind: WrKind,
    pub tag: u32,
}

impl WrId {
    pub fn encode(self) -> u64 {
        let kind: u64 = match self.kind {
            WrKind::Recv => 0,
            WrKind::Send => 1,
            WrKind::Read => 2,
            WrKind::Write => 3,
            WrKind::ReadPart => 4,
        };
        kind << 61 | u64::from(self.tag)
    }

    pub fn decode(raw: u64) -> WrId {
        let kind = match raw >> 61 {
            0 => WrKind::Recv,
            1 => WrKind::Send,
            2 => WrKind::Read,
            3 => WrKind::Write,
            _ => WrKind::ReadPart,
        };
        WrId { kind, tag: raw as u32 }
    }
}

/// The RDMA READs of a command's host data, one per keyed descriptor, appended to
/// `into`: only the last is signaled, since a queue pair's requests complete in order
/// and its completion says the others are done; an earlier one that fails still
/// completes, with its error (`ReadPart`).
pub fn read_chain(slot: u16, cid: u16, reads: &[WriteSeg], into: &mut Vec<SendWr>) -> Result<(), WrError> {
    let tag = u32::from(slot) | u32::from(cid) << 16;
    for (index, read) in reads.iter().enumerate() {
        let last = index + 1 == reads.len();
        let kind = if last { WrKind::Read } else { WrKind::ReadPart };
        into.push(SendWr::rdma_read(WrId { kind, tag }.encode(), read.sges(), read.remote)?.signaled(last));
    }
    Ok(())
}

/// The work requests answering a command, appended to `into`: an RDMA WRITE per piece of
/// a read's data, unsignaled, then the response SEND (with Invalidate of `invalidate`),
/// signaled. One post carries them; RC delivers them in order, so the host has the data
/// before it sees the completion (NVMe/RDMA 1.0 §3.6), and the SEND's completion says
/// the WRITEs are done too. A WRITE that fails still completes, with its error.
pub fn response_chain(
    slot: u16,
    writes: &[WriteSeg],
    response: Sge,
    invalidate: Option<u32>,
    into: &mut Vec<SendWr>,
) -> Result<(), WrError> {
    for write in writes {
        let wr_id = WrId { kind: WrKind::Write, tag: u32::from(slot) }.encode();
        into.push(SendWr::rdma_write(wr_id, write.sges(), write.remote)?.signaled(false));
    }
    let wr_id = WrId { kind: WrKind::Send, tag: u32::from(slot) }.encode();
    let send = match invalidate {
        Some(rkey) => SendWr::send_with_invalidate(wr_id, &[response], rkey)?,
        None => SendWr::send(wr_id, &[response])?,
    };
    into.push(send.signaled(true));
    Ok(())
}

#[cfg(test)]
mod tests {
    use spdk_sys::rdma::{RemoteKey, SendOp};

    use super::*;
    use crate::nvme::CQE_BYTES;
    use crate::rdma::sgl;

    #[test]
    fn identifiers_round_trip() {
        for kind in [WrKind::Recv, WrKind::Send, WrKind::Read, WrKind::Write, WrKind::ReadPart] {
            for tag in [0, 1, 0xffff, 0x1234_5678, u32::MAX] {
                let id = WrId { kind, tag };
                assert_eq!(WrId::decode(id.encode()), id);
            }
        }
    }

    /// Entries of `lens` from `addr` on.
    fn seg(addr: u64, lens: &[u32], remote: u64) -> WriteSeg {
        let mut at = addr;
        let mut seg = WriteSeg::new(RemoteKey { addr: remote, rkey: 0xbeef });
        for &len in lens {
            seg.push(Sge { addr: at, len, lkey: 0x11 });
            at += u64::from(len);
        }
        seg
    }

    const RESPONSE: Sge = Sge { addr: 0x9000, len: CQE_BYTES as u32, lkey: 0x22 };

    #[test]
    fn a_read_is_answered_by_its_writes_then_one_signaled_send() {
        for lens in [&[4096][..], &[8192, 8192, 4096], &[512]] {
            let mut chain = Vec::new();
            let write = seg(0x10_0000, lens, 0x7000_0000);
            response_chain(5, std::slice::from_ref(&write), RESPONSE, None, &mut chain).unwrap();
            assert_eq!(chain.len(), 2, "{chain:?}");
            let (data, send) = (&chain[0], &chain[1]);
            assert_eq!(data.op(), SendOp::RdmaWrite(write.remote));
            assert!(!data.is_signaled(), "only the SEND is signaled: {data:?}");
            assert_eq!(data.sges().collect::<Vec<_>>(), write.sges());
            assert_eq!(data.byte_len(), lens.iter().sum::<u32>());
            assert_eq!(WrId::decode(data.wr_id()), WrId { kind: WrKind::Write, tag: 5 });
            assert_eq!(send.op(), SendOp::Send);
            assert!(send.is_signaled());
            assert_eq!(send.sges().collect::<Vec<_>>(), vec![RESPONSE]);
            assert_eq!(WrId::decode(send.wr_id()), WrId { kind: WrKind::Send, tag: 5 });
        }
    }

    #[test]
    fn several_writes_keep_their_order_before_the_send() {
        let writes = [seg(0x1000, &[4096], 0xa000), seg(0x3000, &[1024, 1024], 0xb000), seg(0x8000, &[16], 0xc000)];
        let mut chain = vec![SendWr::send(1, &[RESPONSE]).unwrap()];
        response_chain(0xffff, &writes, RESPONSE, Some(0xbeef), &mut chain).unwrap();
        assert_eq!(chain.len(), 5, "appended after what was there");
        for (wr, write) in chain[1..4].iter().zip(&writes) {
            assert_eq!(wr.op(), SendOp::RdmaWrite(write.remote));
            assert!(!wr.is_signaled());
            assert_eq!(WrId::decode(wr.wr_id()).tag, 0xffff);
        }
        assert_eq!(chain[4].op(), SendOp::SendWithInvalidate { rkey: 0xbeef });
        assert!(chain[4].is_signaled());
    }

    #[test]
    fn a_command_of_several_descriptors_reads_each_and_signals_the_last() {
        for count in [1, 2, sgl::MSDBD] {
            let reads: Vec<WriteSeg> =
                (0..count as u64).map(|i| seg(0x10_0000 + i * 0x1000, &[4096], 0x5000_0000 + i * 0x10_0000)).collect();
            let mut chain = Vec::new();
            read_chain(3, 0xabcd, &reads, &mut chain).unwrap();
            assert_eq!(chain.len(), count);
            for (index, (wr, read)) in chain.iter().zip(&reads).enumerate() {
                let last = index + 1 == count;
                assert_eq!(wr.op(), SendOp::RdmaRead(read.remote));
                assert_eq!(wr.is_signaled(), last, "{index} of {count}");
                let kind = if last { WrKind::Read } else { WrKind::ReadPart };
                assert_eq!(WrId::decode(wr.wr_id()), WrId { kind, tag: 3 | 0xabcd << 16 });
                assert_eq!(wr.sges().collect::<Vec<_>>(), read.sges());
            }
        }
    }

    #[test]
    fn a_completion_without_data_is_one_send() {
        let mut chain = Vec::new();
        response_chain(2, &[], RESPONSE, None, &mut chain).unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!((chain[0].op(), chain[0].is_signaled()), (SendOp::Send, true));
    }

    /// A transfer holds at most as many entries as a work request takes, so a chain never
    /// meets one too long: the entry past the limit is refused where it is added.
    #[test]
    fn a_transfer_takes_no_more_entries_than_a_work_request() {
        let mut write = seg(0, &[64; spdk_sys::rdma::MAX_SGE], 0);
        assert!(!write.push(Sge { addr: 0x10_0000, len: 64, lkey: 0x11 }));
        assert_eq!(write.sges().len(), spdk_sys::rdma::MAX_SGE);
        let mut chain = Vec::new();
        response_chain(1, &[write], RESPONSE, None, &mut chain).unwrap();
        assert_eq!(chain[0].byte_len(), 64 * spdk_sys::rdma::MAX_SGE as u32);
    }
}
