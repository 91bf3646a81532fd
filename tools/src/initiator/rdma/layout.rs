//! What an NVMe/RDMA host queue puts where, free of any device so it can be tested
//! anywhere: the registered memory's layout, work request ids, the command's SGL
//! (NVMe/RDMA 1.0 §2.3), the connect private data (§3.1) and what a reject means.

use peerless_target::nvme::cmd::{Sqe, SqeBuilder};
use peerless_target::nvme::{CQE_BYTES, SQE_BYTES};
use spdk_sys::rdma::nvme::{CmReject, CmRequest, RejectStatus};

use crate::initiator::error::Error;
use crate::initiator::queue::Xfer;
use crate::initiator::transport::MAX_TRANSFER_BYTES;

/// In-capsule data a host queue sends at most, whatever IOCCSZ allows: each command slot
/// owns a capsule this large in registered memory.
pub const MAX_IN_CAPSULE_BYTES: usize = 8192;
/// Registered data memory one queue uses at most; a deep queue gets smaller per-command
/// buffers (and so a lower transfer limit) rather than more memory.
pub const MAX_QUEUE_DATA_BYTES: usize = 64 << 20;
/// Data buffers are whole pages, so transfers of whole blocks never straddle less.
const PAGE: usize = 4096;
/// A keyed SGL data block's length has 24 bits (NVMe Base 2.0, Figure 121).
const MAX_KEYED_BYTES: usize = (1 << 24) - 1;

/// Work request ids: the top bits tell a receive from a send, the rest is the receive
/// slot or the command identifier.
const WR_RECV: u64 = 1 << 32;
const WR_SEND: u64 = 2 << 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrKind {
    /// A response capsule landed in receive slot n.
    Recv(u16),
    /// The command capsule of cid n went out.
    Send(u16),
}

pub fn recv_wr_id(index: u16) -> u64 {
    WR_RECV | u64::from(index)
}

pub fn send_wr_id(cid: u16) -> u64 {
    WR_SEND | u64::from(cid)
}

pub fn decode_wr_id(wr_id: u64) -> Option<WrKind> {
    let index = u16::try_from(wr_id & 0xffff_ffff).ok()?;
    match wr_id & !0xffff_ffff {
        WR_RECV => Some(WrKind::Recv(index)),
        WR_SEND => Some(WrKind::Send(index)),
        _ => None,
    }
}

/// Where things live in a queue's two registered regions. The control region (local
/// access only): one 16-byte response slot per posted receive, then one capsule (SQE and
/// in-capsule data) per command slot. The data region (remote read and write): one
/// buffer per command slot, named by the command's keyed SGL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Receives posted for response capsules (HRQSIZE).
    pub recvs: u16,
    /// Command slots (CIDs 0..slots).
    pub slots: u16,
    pub in_capsule_bytes: usize,
    pub chunk_bytes: usize,
}

impl Layout {
    /// A queue of `entries` (SQSIZE + 1), sending at most `in_capsule_bytes` in capsules
    /// and moving at most `max_transfer_bytes` per command by RDMA.
    pub fn new(entries: u16, in_capsule_bytes: usize, max_transfer_bytes: usize) -> Layout {
        let slots = entries.saturating_sub(1).max(1);
        let budget = (MAX_QUEUE_DATA_BYTES / usize::from(slots)) / PAGE * PAGE;
        let chunk_bytes = max_transfer_bytes.min(MAX_TRANSFER_BYTES).min(MAX_KEYED_BYTES).min(budget).max(PAGE);
        let chunk_bytes = chunk_bytes.div_ceil(PAGE) * PAGE;
        Layout { recvs: entries, slots, in_capsule_bytes: in_capsule_bytes.min(MAX_IN_CAPSULE_BYTES), chunk_bytes }
    }

    pub fn capsule_bytes(&self) -> usize {
        SQE_BYTES + self.in_capsule_bytes
    }

    pub fn recv_offset(&self, index: u16) -> usize {
        usize::from(index) * CQE_BYTES
    }

    pub fn capsule_offset(&self, cid: u16) -> usize {
        usize::from(self.recvs) * CQE_BYTES + usize::from(cid) * self.capsule_bytes()
    }

    pub fn control_bytes(&self) -> usize {
        self.capsule_offset(self.slots)
    }

    pub fn chunk_offset(&self, cid: u16) -> usize {
        usize::from(cid) * self.chunk_bytes
    }

    pub fn data_bytes(&self) -> usize {
        usize::from(self.slots) * self.chunk_bytes
    }
}

/// The command with its CID and the RDMA binding's SGL: in-capsule data at offset 0
/// (Data Block, Offset subtype), or a Keyed SGL Data Block naming the command's buffer
/// at `remote_addr` under `rkey`, or for no data a keyed block of length 0 (as Linux and
/// SPDK send). The Address subtype: the buffers stay registered, nothing to invalidate.
pub fn encode_command(
    cmd: SqeBuilder,
    xfer: Xfer,
    cid: u16,
    len: usize,
    in_capsule: bool,
    remote_addr: u64,
    rkey: u32,
) -> Sqe {
    let cmd = match xfer {
        _ if in_capsule => cmd.in_capsule(len as u32),
        Xfer::None => cmd.keyed(0, 0, 0, false),
        _ => cmd.keyed(remote_addr, len as u32, rkey, false),
    };
    cmd.u16_at(2, cid).build()
}

/// The RDMA_CM_REQUEST private data of a queue of `entries` (NVMe/RDMA 1.0 §3.1, Figure
/// 5): HRQSIZE the receives posted, HSQSIZE the Connect command's 0's based SQSIZE, and
/// the controller an I/O queue joins.
pub fn cm_request(qid: u16, entries: u16, cntlid: u16) -> CmRequest {
    let cntlid = if qid == 0 { 0 } else { cntlid };
    CmRequest { qid, hrqsize: entries, hsqsize: entries - 1, cntlid }
}

/// The error a refused connect becomes: the controller's reason when it sent one. A
/// reject by the peer's CM itself (no listener on that port) carries zeroed private data,
/// which reads as RECFMT 0 with status 0, a value Figure 7 does not define.
pub fn rejected(private_data: &[u8], cm_status: i32) -> Error {
    match CmReject::decode(private_data) {
        Some(reject) if reject.status != RejectStatus::Other(0) => {
            Error::Unsupported(format!("the target refused the RDMA connection: {}", reject.status))
        }
        _ => Error::Io {
            op: "RDMA CM connect",
            kind: std::io::ErrorKind::ConnectionRefused,
            message: format!(
                "refused (RDMA CM reject reason {cm_status}): no NVMe/RDMA listener at that address and port?"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerless_target::nvme::cmd::{SGL_DATA_BLOCK_OFFSET, SGL_KEYED_DATA_BLOCK};
    use peerless_target::nvme::io;
    use spdk_sys::rdma::nvme::REQUEST_LEN;

    #[test]
    fn keyed_sgl_names_the_command_buffer() {
        let cmd = SqeBuilder::new(io::READ, 0).rw(1, 8, 32);
        let sqe = encode_command(cmd, Xfer::FromController, 17, 128 * 1024, false, 0x7f00_1234_5000, 0xabcd_ef01);
        assert_eq!((sqe.cid(), sqe.opcode()), (17, io::READ));
        assert_eq!(sqe.sgl_type(), SGL_KEYED_DATA_BLOCK);
        assert_eq!((sqe.sgl_address(), sqe.sgl_length(), sqe.sgl_key()), (0x7f00_1234_5000, 128 * 1024, 0xabcd_ef01));
        assert_eq!(sqe.psdt(), 1, "fabrics commands use SGLs");
        // The 24-bit length's top byte is the key's lowest: byte 35 holds 0x01.
        assert_eq!(sqe.0[32..39], [0x00, 0x00, 0x02, 0x01, 0xef, 0xcd, 0xab]);
    }

    #[test]
    fn largest_keyed_length_keeps_the_key_intact() {
        let sqe = encode_command(SqeBuilder::new(io::WRITE, 0), Xfer::ToController, 0, MAX_KEYED_BYTES, false, 8, 0x55);
        assert_eq!((sqe.sgl_length() as usize, sqe.sgl_key()), (MAX_KEYED_BYTES, 0x55));
    }

    #[test]
    fn in_capsule_data_uses_the_offset_subtype_and_no_data_a_null_keyed_block() {
        let sqe = encode_command(SqeBuilder::new(io::WRITE, 0), Xfer::ToController, 3, 4096, true, 0x1000, 9);
        assert_eq!((sqe.sgl_type(), sqe.sgl_address(), sqe.sgl_length()), (SGL_DATA_BLOCK_OFFSET, 0, 4096));
        let sqe = encode_command(SqeBuilder::new(io::FLUSH, 0), Xfer::None, 4, 0, false, 0x1000, 9);
        assert_eq!(
            (sqe.sgl_type(), sqe.sgl_address(), sqe.sgl_length(), sqe.sgl_key()),
            (SGL_KEYED_DATA_BLOCK, 0, 0, 0)
        );
    }

    #[test]
    fn work_request_ids_round_trip_and_refuse_strangers() {
        for index in [0u16, 1, 4095, u16::MAX] {
            assert_eq!(decode_wr_id(recv_wr_id(index)), Some(WrKind::Recv(index)));
            assert_eq!(decode_wr_id(send_wr_id(index)), Some(WrKind::Send(index)));
        }
        assert_eq!(decode_wr_id(0), None);
        assert_eq!(decode_wr_id(3 << 32), None);
        assert_eq!(decode_wr_id(WR_RECV | 0x1_0000), None);
    }

    #[test]
    fn layout_keeps_regions_apart_and_within_budget() {
        for (entries, icd, mdts) in
            [(2u16, 0usize, 4096usize), (32, 0, 1 << 20), (129, 4096, 128 << 10), (4096, 8192, 1 << 20)]
        {
            let layout = Layout::new(entries, icd, mdts);
            assert_eq!(usize::from(layout.slots), usize::from(entries) - 1);
            assert!(layout.data_bytes() <= MAX_QUEUE_DATA_BYTES, "{layout:?}");
            assert!(layout.chunk_bytes.is_multiple_of(PAGE) && layout.chunk_bytes <= mdts.max(PAGE));
            // Response slots end where the first capsule starts; capsules do not overlap.
            assert_eq!(layout.recv_offset(layout.recvs), layout.capsule_offset(0));
            assert_eq!(layout.capsule_offset(1) - layout.capsule_offset(0), SQE_BYTES + icd);
            assert_eq!(layout.control_bytes(), layout.capsule_offset(layout.slots - 1) + layout.capsule_bytes());
            assert_eq!(layout.chunk_offset(layout.slots - 1) + layout.chunk_bytes, layout.data_bytes());
        }
        // 128 KiB per command at QD128 fits; QD4095 at 1 MiB is cut to the budget.
        assert_eq!(Layout::new(129, 4096, 128 << 10).chunk_bytes, 128 << 10);
        assert_eq!(Layout::new(4096, 0, 1 << 20).chunk_bytes, 16 << 10);
        assert_eq!(Layout::new(8, 1 << 20, 4096).in_capsule_bytes, MAX_IN_CAPSULE_BYTES);
    }

    #[test]
    fn connect_private_data_follows_figure_5() {
        let request = cm_request(3, 129, 0x21).encode();
        assert_eq!(request.len(), REQUEST_LEN);
        // RECFMT 0, QID 3, HRQSIZE 129, HSQSIZE 128 (0's based), CNTLID 0x21, rest reserved.
        assert_eq!(request[..10], [0, 0, 3, 0, 129, 0, 128, 0, 0x21, 0]);
        assert!(request[10..].iter().all(|b| *b == 0));
        assert_eq!(cm_request(0, 32, 0x21).cntlid, 0, "the admin queue names no controller");
    }

    #[test]
    fn a_reject_reports_the_controllers_reason() {
        let record = CmReject { status: RejectStatus::InvalidHsqsize }.encode();
        let error = rejected(&record, 28).to_string();
        assert!(error.contains("refused") && error.contains(&RejectStatus::InvalidHsqsize.to_string()), "{error}");
        // The CM's own reject (no listener): no record, or a zeroed one.
        for private_data in [&[][..], &[0u8; 32][..]] {
            let error = rejected(private_data, 28);
            assert!(matches!(error, Error::Io { kind: std::io::ErrorKind::ConnectionRefused, .. }), "{error:?}");
            assert!(
                error.to_string().contains("reject reason 28") && error.to_string().contains("no NVMe/RDMA listener")
            );
        }
    }
}
