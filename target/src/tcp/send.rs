//! The engine's actions as NVMe/TCP PDUs: CapsuleResp, C2HData, R2T.

use peerless_core::mem::{ChunkReader, Sgl};

use super::conn::Conn;
use super::pdu;
use super::socket::Socket;
use crate::nvme::{Cqe, Status};
use crate::nvmf::qpair::Action;
use crate::nvmf::transport::GroupCtx;

/// Data to the host is copied into the send buffer only while less than this is waiting
/// for the socket: further reads keep their pool buffers until there is room, so memory
/// per connection stays bounded and the pool, not the heap, absorbs a slow host.
const SEND_HIGH_WATER_BYTES: usize = 1 << 20;

impl<S: Socket> Conn<S> {
    /// Turns pending actions into PDUs in the send buffer; whether there were any.
    pub(super) fn send_actions(&mut self, group: &mut GroupCtx<'_>) -> bool {
        let mut any = false;
        while let Some(&action) = self.qpair.peek_action() {
            let closing = self.phase == super::conn::Phase::Closing;
            if matches!(action, Action::SendData { .. }) && !closing && self.pending_output() >= SEND_HIGH_WATER_BYTES {
                break;
            }
            self.qpair.next_action();
            any = true;
            match action {
                Action::Complete(cqe) => self.send_response(&cqe),
                Action::FetchData { slot, cid, len } => self.send_r2t(cid, slot, len),
                Action::SendData { slot, cid, len, completes } => {
                    let sent = self.send_c2h(slot, cid, len as usize, completes);
                    self.qpair.data_sent(group.buffers, slot, sent);
                }
            }
        }
        any
    }

    /// A completion (NVMe/TCP 1.0, 3.6.2.7 CapsuleResp).
    fn send_response(&mut self, cqe: &Cqe) {
        let encoded = pdu::capsule_resp(&cqe.encode(), self.digests);
        self.out.extend_from_slice(encoded.as_slice());
    }

    /// `len` bytes of a command's data as one C2HData (NVMe/TCP 1.0, 3.6.2.8). With
    /// `completes`, the SUCCESS flag tells the host no CapsuleResp follows.
    fn send_c2h(&mut self, slot: u16, cid: u16, len: usize, completes: bool) -> Result<(), Status> {
        let mut flags = pdu::flags::LAST_PDU;
        if completes {
            flags |= pdu::flags::SUCCESS;
        }
        let header = pdu::DataHeader { cccid: cid, ttag: 0, offset: 0, length: len as u32 };
        let header_start = self.out.len();
        let (encoded, pad) = pdu::c2h_data(header, flags, self.digests, self.data_alignment);
        self.out.extend_from_slice(encoded.as_slice());
        self.out.resize(self.out.len() + pad, 0);
        // The send buffer is the host staging chunk: device data is copied into it
        // through the gate's accessors and the digest is computed there, never by
        // reading device memory twice.
        let start = self.out.len();
        let copied = self.qpair.data(slot).and_then(|sgl: Sgl<'_>| {
            ChunkReader::new(&sgl).append_to(&mut self.out, len).map_err(|_| Status::DATA_TRANSFER_ERROR)
        });
        if copied != Ok(len) {
            self.out.truncate(header_start);
            return Err(copied.err().unwrap_or(Status::DATA_TRANSFER_ERROR));
        }
        if self.digests.data {
            let digest = pdu::digest(&self.out[start..]);
            self.out.extend_from_slice(&digest);
        }
        Ok(())
    }

    /// Asks the host for a command's data (NVMe/TCP 1.0, 3.6.2.9 R2T); the transfer tag
    /// is the engine's slot.
    fn send_r2t(&mut self, cid: u16, ttag: u16, length: u32) {
        let header = pdu::DataHeader { cccid: cid, ttag, offset: 0, length };
        let encoded = pdu::r2t(header, self.digests);
        self.out.extend_from_slice(encoded.as_slice());
    }
}
