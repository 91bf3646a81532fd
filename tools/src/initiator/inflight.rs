//! Commands in flight on one queue, and the handling of the PDUs that answer them:
//! CapsuleResp, C2HData (in order, within the buffer, SUCCESS only on the last PDU) and
//! R2T (answered with H2CData PDUs of at most MAXH2CDATA). A PDU that breaks the
//! protocol becomes a `Fault`: the fatal status an H2CTermReq reports, and why.

use std::collections::VecDeque;

use peerless_core::accel::Crc32c;
use peerless_target::nvme::{Cqe, Status, CQE_BYTES};
use peerless_target::tcp::pdu::{self, fes, flags, pdu_type, DataHeader, Fatal, COMMON_HEADER_BYTES, DIGEST_BYTES};

use super::queue::{Completion, Xfer};
use super::transport::{Negotiated, Partial, Pdu, TxBuf};

/// Byte offsets of data PDU header fields (NVMe/TCP 1.0, 3.6.2.6-3.6.2.8), for FEI.
/// The fabrics command opcode (NVMe-oF 1.1, 3.1).
const FABRICS_OPCODE: u8 = 0x7f;
const CCCID_OFFSET: u32 = 8;
const DATAO_OFFSET: u32 = 12;
/// CQE CID inside a CapsuleResp: common header + CQE byte 12.
const RESP_CID_OFFSET: u32 = (COMMON_HEADER_BYTES + 12) as u32;

#[derive(Default)]
pub(crate) struct Slot {
    pub busy: bool,
    pub opcode: u8,
    pub xfer: Option<Xfer>,
    /// Data went in the capsule; an R2T for this command is a protocol error.
    pub in_capsule: bool,
    pub buf: Vec<u8>,
    /// Bytes received (C2HData) or solicited by R2Ts so far.
    pub moved: usize,
    pub digest_error: bool,
}

/// A large C2HData PDU being read straight from the socket into its command's buffer,
/// its data digest computed as the bytes land.
pub(crate) struct Direct {
    pub cid: u16,
    /// Next byte of the command's buffer to fill, and the end of this PDU's data.
    pub at: usize,
    pub end: usize,
    pub len: usize,
    pub flags: u8,
    pub crc: Option<Crc32c>,
    pub trailer: [u8; DIGEST_BYTES],
    pub trailer_got: usize,
}

/// A protocol violation by the controller: what the H2CTermReq says, and for whom.
pub(crate) struct Fault {
    pub fatal: Fatal,
    pub message: String,
}

fn fault(fes: u16, fei: u32, message: String) -> Fault {
    Fault { fatal: Fatal::new(fes, fei), message }
}

/// The parts of a queue that PDU handling touches, borrowed apart from the receive buffer.
pub(crate) struct Handler<'a> {
    pub slots: &'a mut [Slot],
    pub ready: &'a mut VecDeque<Completion>,
    pub tx: &'a mut TxBuf,
    pub negotiated: &'a Negotiated,
}

impl Handler<'_> {
    pub fn handle(&mut self, pdu: &Pdu<'_>) -> Result<(), Fault> {
        match pdu.layout.header.pdu_type {
            pdu_type::CAPSULE_RESP => self.capsule_resp(pdu),
            pdu_type::C2H_DATA => self.c2h_data(pdu),
            pdu_type::R2T => self.r2t(pdu),
            other => Err(fault(fes::PDU_SEQUENCE_ERROR, 0, format!("unexpected PDU type {other:#04x}"))),
        }
    }

    fn busy_slot(&mut self, cid: u16, what: &str, fei: u32) -> Result<&mut Slot, Fault> {
        match self.slots.get_mut(usize::from(cid)) {
            Some(slot) if slot.busy => Ok(slot),
            _ => Err(fault(fes::INVALID_HEADER_FIELD, fei, format!("{what} for cid {cid}, which is not outstanding"))),
        }
    }

    fn capsule_resp(&mut self, pdu: &Pdu<'_>) -> Result<(), Fault> {
        let cqe = Cqe::decode(&pdu.bytes[COMMON_HEADER_BYTES..COMMON_HEADER_BYTES + CQE_BYTES]);
        let slot = self.busy_slot(cqe.cid, "CapsuleResp", RESP_CID_OFFSET)?;
        let transfers = slot.xfer != Some(Xfer::None) && !slot.in_capsule;
        // Authentication Receive (a fabrics command) returns a message of at most AL
        // bytes, often fewer (NVMe Base 2.0, 6.4); any other command moves all it asked.
        let may_be_short = slot.opcode == FABRICS_OPCODE && slot.xfer == Some(Xfer::FromController);
        if cqe.status.is_success() && transfers && slot.moved != slot.buf.len() && !may_be_short {
            let (moved, expected) = (slot.moved, slot.buf.len());
            let message = format!("cid {}: success after {moved} of {expected} bytes", cqe.cid);
            return Err(fault(fes::PDU_SEQUENCE_ERROR, 0, message));
        }
        self.complete(cqe.cid, cqe.status, cqe.dnr, cqe.result);
        Ok(())
    }

    /// Checks a C2HData header against its command; returns the data's offset.
    fn c2h_slot(&mut self, header: DataHeader, data_len: usize) -> Result<(&mut Slot, usize), Fault> {
        let slot = self.busy_slot(header.cccid, "C2HData", CCCID_OFFSET)?;
        if slot.xfer != Some(Xfer::FromController) {
            return Err(fault(
                fes::PDU_SEQUENCE_ERROR,
                0,
                format!("C2HData for cid {}, which reads nothing", header.cccid),
            ));
        }
        let offset = header.offset as usize;
        // Data must arrive in order and within the command's buffer (NVMe/TCP 1.0, 3.6.2.8).
        if header.length as usize != data_len || offset != slot.moved || offset + data_len > slot.buf.len() {
            let message = format!(
                "C2HData cid {} offset {offset} length {} (expected offset {} of {})",
                header.cccid,
                header.length,
                slot.moved,
                slot.buf.len()
            );
            return Err(fault(fes::DATA_OUT_OF_RANGE, DATAO_OFFSET, message));
        }
        Ok((slot, offset))
    }

    fn c2h_data(&mut self, pdu: &Pdu<'_>) -> Result<(), Fault> {
        let header = DataHeader::parse(pdu.bytes);
        let len = pdu.layout.data_len;
        let (slot, offset) = self.c2h_slot(header, len)?;
        slot.buf[offset..offset + len].copy_from_slice(pdu.data());
        self.finish_c2h(header.cccid, len, pdu.data_digest_ok, pdu.layout.header.flags)
    }

    /// Starts reading a large C2HData straight into its buffer with what has arrived.
    pub fn begin_direct(&mut self, partial: &Partial<'_>) -> Result<Direct, Fault> {
        let header = DataHeader::parse(partial.header);
        let len = partial.layout.data_len;
        let (slot, offset) = self.c2h_slot(header, len)?;
        let got = partial.data.len();
        debug_assert!(got < len, "a complete PDU takes the buffered path");
        slot.buf[offset..offset + got].copy_from_slice(partial.data);
        let crc = partial.layout.data_digest.then(|| {
            let mut crc = Crc32c::new();
            crc.update(partial.data);
            crc
        });
        let flags = partial.layout.header.flags;
        let (at, end) = (offset + got, offset + len);
        Ok(Direct { cid: header.cccid, at, end, len, flags, crc, trailer: [0; DIGEST_BYTES], trailer_got: 0 })
    }

    /// Accounts for `len` bytes of C2HData that landed in cid's buffer.
    pub fn finish_c2h(&mut self, cid: u16, len: usize, digest_ok: bool, pdu_flags: u8) -> Result<(), Fault> {
        let slot = self.busy_slot(cid, "C2HData", CCCID_OFFSET)?;
        slot.moved += len;
        slot.digest_error |= !digest_ok;
        debug_assert!(slot.moved <= slot.buf.len());
        if pdu_flags & flags::SUCCESS != 0 {
            // SUCCESS stands in for the CapsuleResp, so it is only valid on the last PDU.
            if pdu_flags & flags::LAST_PDU == 0 || slot.moved != slot.buf.len() {
                let message = format!("C2HData SUCCESS before the end of cid {cid}");
                return Err(fault(fes::INVALID_HEADER_FIELD, 1, message));
            }
            self.complete(cid, Status::SUCCESS, false, 0);
        }
        Ok(())
    }

    fn r2t(&mut self, pdu: &Pdu<'_>) -> Result<(), Fault> {
        let header = DataHeader::parse(pdu.bytes);
        let maxh2cdata = self.negotiated.maxh2cdata as usize;
        let digests = self.negotiated.digests;
        // Borrow the slot apart from `tx`: the H2CData goes out straight from its buffer.
        let Handler { slots, tx, .. } = self;
        let slot = match slots.get_mut(usize::from(header.cccid)) {
            Some(slot) if slot.busy => slot,
            _ => {
                let message = format!("R2T for cid {}, which is not outstanding", header.cccid);
                return Err(fault(fes::INVALID_HEADER_FIELD, CCCID_OFFSET, message));
            }
        };
        let (offset, len) = (header.offset as usize, header.length as usize);
        if slot.xfer != Some(Xfer::ToController) || slot.in_capsule {
            return Err(fault(
                fes::PDU_SEQUENCE_ERROR,
                0,
                format!("R2T for cid {}, which has no data to ask for", header.cccid),
            ));
        }
        if len == 0 || offset != slot.moved || offset + len > slot.buf.len() {
            let message = format!(
                "R2T cid {} offset {offset} length {len} for a {}-byte write at {}",
                header.cccid,
                slot.buf.len(),
                slot.moved
            );
            return Err(fault(fes::DATA_OUT_OF_RANGE, DATAO_OFFSET, message));
        }
        // Answer with H2CData PDUs of at most MAXH2CDATA bytes, LAST_PDU on the final one.
        let mut at = offset;
        while at < offset + len {
            let chunk = (offset + len - at).min(maxh2cdata);
            let last = at + chunk == offset + len;
            let data_header =
                DataHeader { cccid: header.cccid, ttag: header.ttag, offset: at as u32, length: chunk as u32 };
            let encoded =
                pdu::data_pdu(pdu_type::H2C_DATA, data_header, if last { flags::LAST_PDU } else { 0 }, digests);
            push_with_data(tx, encoded.as_slice(), &slot.buf[at..at + chunk], digests);
            at += chunk;
        }
        slot.moved = offset + len;
        Ok(())
    }

    fn complete(&mut self, cid: u16, status: Status, dnr: bool, result: u64) {
        complete_slot(self.slots, self.ready, cid, status, dnr, result);
    }
}

/// Frees busy slot `cid` into a completion, its buffer handed back to the caller.
pub(crate) fn complete_slot(
    slots: &mut [Slot],
    ready: &mut VecDeque<Completion>,
    cid: u16,
    status: Status,
    dnr: bool,
    result: u64,
) {
    let slot = &mut slots[usize::from(cid)];
    debug_assert!(slot.busy);
    slot.busy = false;
    ready.push_back(Completion {
        cid,
        opcode: slot.opcode,
        status,
        dnr,
        result,
        buf: std::mem::take(&mut slot.buf),
        data_digest_error: slot.digest_error,
    });
}

/// Queues a PDU header, its data and (when negotiated) the data digest.
pub(crate) fn push_with_data(tx: &mut TxBuf, header: &[u8], data: &[u8], digests: pdu::Digests) {
    tx.push(header);
    if !data.is_empty() {
        tx.push(data);
        if digests.data {
            tx.push(&pdu::digest(data));
        }
    }
}
