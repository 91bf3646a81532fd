//! The engine's actions as NVMe/TCP PDUs: CapsuleResp, C2HData, R2T.

use peerless_core::accel::Crc32c;
use peerless_core::mem::{ChunkReader, Sgl};

use super::conn::Conn;
use super::pdu;
use super::socket::Socket;
use crate::nvme::{Cqe, Status};
use crate::nvmf::qpair::Action;
use crate::nvmf::transport::GroupCtx;

/// Data to the host is queued for the socket only while less than this is waiting: further
/// reads keep their pool buffers until there is room, so a slow host holds a bounded
/// share of the pool and the heap stays bounded.
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
                    match self.send_c2h(slot, cid, len as usize, completes) {
                        // The outbox hands the slot back once the socket has the data.
                        Ok(true) => {}
                        Ok(false) => self.qpair.data_sent(group.buffers, slot, Ok(())),
                        Err(status) => self.qpair.data_sent(group.buffers, slot, Err(status)),
                    }
                }
            }
        }
        any
    }

    /// A completion (NVMe/TCP 1.0, 3.6.2.7 CapsuleResp).
    fn send_response(&mut self, cqe: &Cqe) {
        let encoded = pdu::capsule_resp(&cqe.encode(), self.digests);
        self.out.push_bytes(encoded.as_slice());
    }

    /// Queues `len` bytes of a slot's host data to go from its buffers in place, then
    /// their digest.
    fn queue_in_place(&mut self, slot: u16, len: usize, digest: Option<[u8; pdu::DIGEST_BYTES]>) {
        self.out.push_data(slot, len);
        peerless_core::mem::stats::count_host_payload_sent_in_place(len);
        if let Some(digest) = digest {
            self.out.push_bytes(&digest);
        }
    }

    /// `len` bytes of a command's data as one C2HData (NVMe/TCP 1.0, 3.6.2.8). With
    /// `completes`, the SUCCESS flag tells the host no CapsuleResp follows. Ok(true):
    /// the data goes from its pool buffers in place and the slot is handed back once the
    /// socket has taken it; Ok(false): it was staged and the slot is done with.
    fn send_c2h(&mut self, slot: u16, cid: u16, len: usize, completes: bool) -> Result<bool, Status> {
        let mut flags = pdu::flags::LAST_PDU;
        if completes {
            flags |= pdu::flags::SUCCESS;
        }
        let header = pdu::DataHeader { cccid: cid, ttag: 0, offset: 0, length: len as u32 };
        let mark = self.out.bytes_len();
        let (encoded, pad) = pdu::c2h_data(header, flags, self.digests, self.data_alignment);
        self.out.push_bytes(encoded.as_slice());
        self.out.push_zeros(pad);
        // One host buffer (the common case): its bytes, with no list to build.
        if let Some(data) = self.qpair.data_bytes(slot) {
            if data.len() < len {
                self.out.truncate_bytes(mark);
                return Err(Status::DATA_TRANSFER_ERROR);
            }
            let digest = self.digests.data.then(|| data_digest(std::iter::once(data), len));
            self.queue_in_place(slot, len, digest);
            return Ok(true);
        }
        let sgl: Sgl<'_> = match self.qpair.data(slot) {
            Ok(sgl) => sgl,
            Err(status) => {
                self.out.truncate_bytes(mark);
                return Err(status);
            }
        };
        if sgl.len() < len {
            self.out.truncate_bytes(mark);
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        if let Ok(view) = sgl.cpu_view() {
            // Host memory: the kernel copies it straight from the pool buffer; the digest
            // is the one pass the CPU makes over it.
            let digest = self.digests.data.then(|| data_digest(view.slices(), len));
            self.queue_in_place(slot, len, digest);
            return Ok(true);
        }
        // IoMem or device memory is never dereferenced: it is copied into the send buffer
        // through the gate's accessors and the digest is computed there, so device memory
        // is read once.
        let start = self.out.bytes_len();
        let mut copied = None;
        self.out.extend_with(len, |buffer| {
            copied = ChunkReader::new(&sgl).append_to(buffer, len).ok();
            // extend_with takes exactly `len` bytes; a short copy is undone just below.
            buffer.resize(start + len, 0);
        });
        if copied != Some(len) {
            self.out.truncate_bytes(mark);
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        if self.digests.data {
            let digest = self.out.with_bytes_from(start, pdu::digest);
            self.out.push_bytes(&digest);
        }
        Ok(false)
    }

    /// Asks the host for a command's data (NVMe/TCP 1.0, 3.6.2.9 R2T); the transfer tag
    /// is the engine's slot.
    fn send_r2t(&mut self, cid: u16, ttag: u16, length: u32) {
        let header = pdu::DataHeader { cccid: cid, ttag, offset: 0, length };
        let encoded = pdu::r2t(header, self.digests);
        self.out.push_bytes(encoded.as_slice());
        self.h2c_bytes_awaited += u64::from(length);
    }
}

/// The data digest (NVMe/TCP 1.0, 3.6.2.1) of the first `len` bytes of `slices`.
fn data_digest<'a>(slices: impl Iterator<Item = &'a [u8]>, len: usize) -> [u8; pdu::DIGEST_BYTES] {
    let mut crc = Crc32c::new();
    let mut remaining = len;
    for slice in slices {
        let take = slice.len().min(remaining);
        crc.update(&slice[..take]);
        remaining -= take;
        if remaining == 0 {
            break;
        }
    }
    crc.finish().to_le_bytes()
}
