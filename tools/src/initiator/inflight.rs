//! Commands in flight on one queue, and the handling of the PDUs that answer them:
//! CapsuleResp, C2HData (in order, within the buffer, SUCCESS only on the last PDU) and
//! R2T (answered with H2CData PDUs of at most MAXH2CDATA). A PDU that breaks the
//! protocol becomes a `Fault`: the fatal status an H2CTermReq reports, and why.

use std::collections::VecDeque;

use peerless_target::nvme::{Cqe, Status, CQE_BYTES};
use peerless_target::tcp::pdu::{self, fes, flags, pdu_type, DataHeader, Fatal, COMMON_HEADER_BYTES};

use super::queue::{Completion, Xfer};
use super::transport::{Negotiated, Pdu, TxBuf};

/// Byte offsets of data PDU header fields (NVMe/TCP 1.0, 3.6.2.6-3.6.2.8), for FEI.
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
        if cqe.status.is_success() && transfers && slot.moved != slot.buf.len() {
            let (moved, expected) = (slot.moved, slot.buf.len());
            let message = format!("cid {}: success after {moved} of {expected} bytes", cqe.cid);
            return Err(fault(fes::PDU_SEQUENCE_ERROR, 0, message));
        }
        self.complete(cqe.cid, cqe.status, cqe.dnr, cqe.result);
        Ok(())
    }

    fn c2h_data(&mut self, pdu: &Pdu<'_>) -> Result<(), Fault> {
        let header = DataHeader::parse(pdu.bytes);
        let success = pdu.layout.header.flags & flags::SUCCESS != 0;
        let last = pdu.layout.header.flags & flags::LAST_PDU != 0;
        let slot = self.busy_slot(header.cccid, "C2HData", CCCID_OFFSET)?;
        if slot.xfer != Some(Xfer::FromController) {
            return Err(fault(
                fes::PDU_SEQUENCE_ERROR,
                0,
                format!("C2HData for cid {}, which reads nothing", header.cccid),
            ));
        }
        let (offset, len) = (header.offset as usize, pdu.layout.data_len);
        // Data must arrive in order and within the command's buffer (NVMe/TCP 1.0, 3.6.2.8).
        if header.length as usize != len || offset != slot.moved || offset + len > slot.buf.len() {
            let message = format!(
                "C2HData cid {} offset {offset} length {} (expected offset {} of {})",
                header.cccid,
                header.length,
                slot.moved,
                slot.buf.len()
            );
            return Err(fault(fes::DATA_OUT_OF_RANGE, DATAO_OFFSET, message));
        }
        slot.buf[offset..offset + len].copy_from_slice(pdu.data());
        slot.moved += len;
        slot.digest_error |= !pdu.data_digest_ok;
        if success {
            // SUCCESS stands in for the CapsuleResp, so it is only valid on the last PDU.
            if !last || slot.moved != slot.buf.len() {
                let message = format!("C2HData SUCCESS before the end of cid {}", header.cccid);
                return Err(fault(fes::INVALID_HEADER_FIELD, 1, message));
            }
            self.complete(header.cccid, Status::SUCCESS, false, 0);
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
        let slot = &mut self.slots[usize::from(cid)];
        debug_assert!(slot.busy);
        slot.busy = false;
        self.ready.push_back(Completion {
            cid,
            opcode: slot.opcode,
            status,
            dnr,
            result,
            buf: std::mem::take(&mut slot.buf),
            data_digest_error: slot.digest_error,
        });
    }
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
