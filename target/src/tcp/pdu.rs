//! NVMe/TCP PDUs (NVMe/TCP Transport 1.0, 3.6): the common header, per-type header
//! lengths and flags, digests, and the encoders both sides use. Validation returns the
//! fatal error status (FES) and field offset (FEI) a TermReq must carry.

use peerless_core::accel::crc32c_bytes;

use crate::nvme::{le16, le32, put16, put32, CQE_BYTES, SQE_BYTES};

pub const COMMON_HEADER_BYTES: usize = 8;
pub const DIGEST_BYTES: usize = 4;
pub const IC_BYTES: usize = 128;
pub const CAPSULE_CMD_HLEN: usize = COMMON_HEADER_BYTES + SQE_BYTES;
pub const CAPSULE_RESP_HLEN: usize = COMMON_HEADER_BYTES + CQE_BYTES;
pub const DATA_HLEN: usize = 24;
pub const R2T_HLEN: usize = 24;
pub const TERM_HLEN: usize = 24;
/// A TermReq carries at most this much of the offending PDU (3.6.2.4: plen <= 152).
pub const TERM_MAX_DATA: usize = 128;
/// Largest header with its digest; a receive buffer never needs more to see a header.
pub const MAX_HEADER_BYTES: usize = IC_BYTES;

/// PDU types (3.6.1, Figure 13).
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header flags (3.6.2.1) and data PDU flags (3.6.2.7, 3.6.2.8).
pub mod flags {
    pub const HDGSTF: u8 = 1 << 0;
    pub const DDGSTF: u8 = 1 << 1;
    pub const LAST_PDU: u8 = 1 << 2;
    pub const SUCCESS: u8 = 1 << 3;
}

/// Fatal error status values of a TermReq (3.6.2.4, Figure 16).
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Why a connection must end, as the TermReq will say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fatal {
    pub fes: u16,
    /// Field error information: for header field errors the byte offset of the field.
    pub fei: u32,
}

impl Fatal {
    pub fn field(offset: u32) -> Fatal {
        Fatal { fes: fes::INVALID_HEADER_FIELD, fei: offset }
    }

    pub fn new(fes: u16, fei: u32) -> Fatal {
        Fatal { fes, fei }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn parse(bytes: &[u8]) -> CommonHeader {
        CommonHeader {
            pdu_type: bytes.first().copied().unwrap_or(0xff),
            flags: bytes.get(1).copied().unwrap_or(0),
            hlen: bytes.get(2).copied().unwrap_or(0),
            pdo: bytes.get(3).copied().unwrap_or(0),
            plen: le32(bytes, 4),
        }
    }

    fn write(&self, bytes: &mut [u8]) {
        bytes[0] = self.pdu_type;
        bytes[1] = self.flags;
        bytes[2] = self.hlen;
        bytes[3] = self.pdo;
        put32(bytes, 4, self.plen);
    }
}

/// Which end of the connection is receiving, so a PDU of the wrong direction is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    Controller,
    Host,
}

/// What has been negotiated on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Where the parts of a validated PDU lie, relative to its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub header: CommonHeader,
    /// Header plus header digest.
    pub header_bytes: usize,
    pub data_offset: usize,
    pub data_len: usize,
    pub data_digest: bool,
    pub total: usize,
}

fn expected_hlen(pdu_type: u8) -> Option<usize> {
    match pdu_type {
        pdu_type::IC_REQ | pdu_type::IC_RESP => Some(IC_BYTES),
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => Some(TERM_HLEN),
        pdu_type::CAPSULE_CMD => Some(CAPSULE_CMD_HLEN),
        pdu_type::CAPSULE_RESP => Some(CAPSULE_RESP_HLEN),
        pdu_type::H2C_DATA | pdu_type::C2H_DATA => Some(DATA_HLEN),
        pdu_type::R2T => Some(R2T_HLEN),
        _ => None,
    }
}

fn sent_by_host(pdu_type: u8) -> bool {
    matches!(pdu_type, pdu_type::IC_REQ | pdu_type::H2C_TERM_REQ | pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA)
}

fn carries_data(pdu_type: u8) -> bool {
    matches!(pdu_type, pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA | pdu_type::C2H_DATA)
}

/// Checks a common header against the PDU type's rules and the negotiated digests.
/// `max_data` bounds the data a PDU of this type may carry on this connection.
pub fn validate(header: CommonHeader, receiver: Receiver, digests: Digests, max_data: usize) -> Result<Layout, Fatal> {
    let Some(hlen) = expected_hlen(header.pdu_type) else { return Err(Fatal::field(0)) };
    if sent_by_host(header.pdu_type) != (receiver == Receiver::Controller) {
        return Err(Fatal::field(0));
    }
    if usize::from(header.hlen) != hlen {
        return Err(Fatal::field(2));
    }
    let plen = header.plen as usize;
    let is_ic_or_term = matches!(
        header.pdu_type,
        pdu_type::IC_REQ | pdu_type::IC_RESP | pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ
    );
    if is_ic_or_term {
        // ICReq/ICResp have a fixed size and no digests; a TermReq carries up to 128 bytes.
        let limit = if hlen == IC_BYTES { IC_BYTES } else { TERM_HLEN + TERM_MAX_DATA };
        if plen < hlen || plen > limit || (hlen == IC_BYTES && plen != IC_BYTES) {
            return Err(Fatal::field(4));
        }
        let data_len = plen - hlen;
        return Ok(Layout { header, header_bytes: hlen, data_offset: hlen, data_len, data_digest: false, total: plen });
    }
    // After the handshake the digests are what was negotiated, and the flags must say so.
    if (header.flags & flags::HDGSTF != 0) != digests.header {
        return Err(Fatal::field(1));
    }
    let header_bytes = hlen + if digests.header { DIGEST_BYTES } else { 0 };
    if plen < header_bytes {
        return Err(Fatal::field(4));
    }
    if plen == header_bytes {
        if header.pdo != 0 || header.flags & flags::DDGSTF != 0 {
            return Err(Fatal::field(if header.pdo != 0 { 3 } else { 1 }));
        }
        if matches!(header.pdu_type, pdu_type::H2C_DATA | pdu_type::C2H_DATA) {
            return Err(Fatal::field(4));
        }
        return Ok(Layout { header, header_bytes, data_offset: plen, data_len: 0, data_digest: false, total: plen });
    }
    if !carries_data(header.pdu_type) {
        return Err(Fatal::field(4));
    }
    if (header.flags & flags::DDGSTF != 0) != digests.data {
        return Err(Fatal::field(1));
    }
    // The controller advertises CPDA 0: host data follows the header directly. A host may
    // ask for aligned data (ICReq HPDA, NVMe/TCP 1.0, 3.6.2.2): padding, in dwords, may
    // then sit between header and data; which alignment is the caller's to check.
    let data_offset = usize::from(header.pdo);
    let aligned = match receiver {
        Receiver::Controller => data_offset == header_bytes,
        Receiver::Host => data_offset >= header_bytes && data_offset % DIGEST_BYTES == 0,
    };
    if !aligned {
        return Err(Fatal::field(3));
    }
    let trailer = if digests.data { DIGEST_BYTES } else { 0 };
    let Some(data_len) = plen.checked_sub(data_offset + trailer).filter(|len| *len > 0) else {
        return Err(Fatal::field(4));
    };
    if data_len > max_data {
        return Err(Fatal::new(fes::DATA_LIMIT_EXCEEDED, 4));
    }
    Ok(Layout { header, header_bytes, data_offset, data_len, data_digest: digests.data, total: plen })
}

/// Checks the header digest of a complete header (`bytes` holds header + digest).
pub fn header_digest_ok(bytes: &[u8], hlen: usize) -> bool {
    let Some(digest) = bytes.get(hlen..hlen + DIGEST_BYTES) else { return false };
    crc32c_bytes(&bytes[..hlen], 0).to_le_bytes() == digest
}

pub fn digest(bytes: &[u8]) -> [u8; DIGEST_BYTES] {
    crc32c_bytes(bytes, 0).to_le_bytes()
}

/// ICReq fields (3.6.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    pub hpda: u8,
    pub digests: Digests,
    pub maxr2t: u32,
}

impl IcReq {
    pub fn parse(bytes: &[u8]) -> IcReq {
        let dgst = bytes.get(11).copied().unwrap_or(0);
        IcReq {
            pfv: le16(bytes, 8),
            hpda: bytes.get(10).copied().unwrap_or(0),
            digests: Digests { header: dgst & 1 != 0, data: dgst & 2 != 0 },
            maxr2t: le32(bytes, 12),
        }
    }

    pub fn encode(&self) -> [u8; IC_BYTES] {
        let mut bytes = [0u8; IC_BYTES];
        CommonHeader { pdu_type: pdu_type::IC_REQ, flags: 0, hlen: IC_BYTES as u8, pdo: 0, plen: IC_BYTES as u32 }
            .write(&mut bytes);
        put16(&mut bytes, 8, self.pfv);
        bytes[10] = self.hpda;
        bytes[11] = u8::from(self.digests.header) | (u8::from(self.digests.data) << 1);
        put32(&mut bytes, 12, self.maxr2t);
        bytes
    }
}

/// ICResp fields (3.6.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    pub cpda: u8,
    pub digests: Digests,
    pub maxh2cdata: u32,
}

impl IcResp {
    pub fn parse(bytes: &[u8]) -> IcResp {
        let dgst = bytes.get(11).copied().unwrap_or(0);
        IcResp {
            pfv: le16(bytes, 8),
            cpda: bytes.get(10).copied().unwrap_or(0),
            digests: Digests { header: dgst & 1 != 0, data: dgst & 2 != 0 },
            maxh2cdata: le32(bytes, 12),
        }
    }

    pub fn encode(&self) -> [u8; IC_BYTES] {
        let mut bytes = [0u8; IC_BYTES];
        CommonHeader { pdu_type: pdu_type::IC_RESP, flags: 0, hlen: IC_BYTES as u8, pdo: 0, plen: IC_BYTES as u32 }
            .write(&mut bytes);
        put16(&mut bytes, 8, self.pfv);
        bytes[10] = self.cpda;
        bytes[11] = u8::from(self.digests.header) | (u8::from(self.digests.data) << 1);
        put32(&mut bytes, 12, self.maxh2cdata);
        bytes
    }
}

/// The header of an H2CData or C2HData PDU (3.6.2.7, 3.6.2.8), or an R2T (3.6.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub cccid: u16,
    /// Transfer tag (H2CData and R2T); reserved in C2HData.
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
}

impl DataHeader {
    pub fn parse(bytes: &[u8]) -> DataHeader {
        DataHeader { cccid: le16(bytes, 8), ttag: le16(bytes, 10), offset: le32(bytes, 12), length: le32(bytes, 16) }
    }
}

/// A header ready to send: its bytes (header digest included) and the PDU's total length.
#[derive(Clone, Copy)]
pub struct Encoded {
    pub bytes: [u8; MAX_HEADER_BYTES + DIGEST_BYTES],
    pub len: usize,
}

impl Encoded {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn finish(mut bytes: [u8; MAX_HEADER_BYTES + DIGEST_BYTES], hlen: usize, digests: Digests) -> Encoded {
    let mut len = hlen;
    if digests.header {
        let crc = digest(&bytes[..hlen]);
        bytes[hlen..hlen + DIGEST_BYTES].copy_from_slice(&crc);
        len += DIGEST_BYTES;
    }
    Encoded { bytes, len }
}

fn header_flags(digests: Digests, with_data: bool) -> u8 {
    let mut value = 0;
    if digests.header {
        value |= flags::HDGSTF;
    }
    if digests.data && with_data {
        value |= flags::DDGSTF;
    }
    value
}

fn plen(hlen: usize, digests: Digests, data_len: usize) -> (u8, u32) {
    let header_bytes = hlen + if digests.header { DIGEST_BYTES } else { 0 };
    if data_len == 0 {
        return (0, header_bytes as u32);
    }
    let trailer = if digests.data { DIGEST_BYTES } else { 0 };
    (header_bytes as u8, (header_bytes + data_len + trailer) as u32)
}

/// A CapsuleResp carrying one completion.
pub fn capsule_resp(cqe: &[u8; CQE_BYTES], digests: Digests) -> Encoded {
    let mut bytes = [0u8; MAX_HEADER_BYTES + DIGEST_BYTES];
    let (_, total) = plen(CAPSULE_RESP_HLEN, digests, 0);
    CommonHeader {
        pdu_type: pdu_type::CAPSULE_RESP,
        flags: header_flags(digests, false),
        hlen: CAPSULE_RESP_HLEN as u8,
        pdo: 0,
        plen: total,
    }
    .write(&mut bytes);
    bytes[COMMON_HEADER_BYTES..CAPSULE_RESP_HLEN].copy_from_slice(cqe);
    finish(bytes, CAPSULE_RESP_HLEN, digests)
}

/// A CapsuleCmd header for `sqe` with `data_len` bytes of in-capsule data to follow.
pub fn capsule_cmd(sqe: &[u8; SQE_BYTES], data_len: usize, digests: Digests) -> Encoded {
    let mut bytes = [0u8; MAX_HEADER_BYTES + DIGEST_BYTES];
    let (pdo, total) = plen(CAPSULE_CMD_HLEN, digests, data_len);
    CommonHeader {
        pdu_type: pdu_type::CAPSULE_CMD,
        flags: header_flags(digests, data_len > 0),
        hlen: CAPSULE_CMD_HLEN as u8,
        pdo,
        plen: total,
    }
    .write(&mut bytes);
    bytes[COMMON_HEADER_BYTES..CAPSULE_CMD_HLEN].copy_from_slice(sqe);
    finish(bytes, CAPSULE_CMD_HLEN, digests)
}

/// The header of a data PDU (`C2H_DATA` or `H2C_DATA`); data and data digest follow.
pub fn data_pdu(kind: u8, header: DataHeader, extra_flags: u8, digests: Digests) -> Encoded {
    padded_data_pdu(kind, header, extra_flags, digests, 0)
}

/// The header of a C2HData PDU whose data starts at a multiple of `alignment` bytes, as the
/// host asked with HPDA (NVMe/TCP 1.0, 3.6.2.2), and how many bytes of padding (zeroes)
/// the sender puts between this header and the data. PDO and PLEN count the padding; the
/// data digest does not.
pub fn c2h_data(header: DataHeader, extra_flags: u8, digests: Digests, alignment: usize) -> (Encoded, usize) {
    debug_assert!(alignment > 0 && alignment <= MAX_DATA_ALIGNMENT);
    let header_bytes = DATA_HLEN + if digests.header { DIGEST_BYTES } else { 0 };
    let pad = header_bytes.next_multiple_of(alignment) - header_bytes;
    (padded_data_pdu(pdu_type::C2H_DATA, header, extra_flags, digests, pad), pad)
}

/// The largest data alignment a host may ask for: HPDA 31, 128 bytes.
pub const MAX_DATA_ALIGNMENT: usize = 128;

fn padded_data_pdu(kind: u8, header: DataHeader, extra_flags: u8, digests: Digests, pad: usize) -> Encoded {
    debug_assert!(kind == pdu_type::C2H_DATA || kind == pdu_type::H2C_DATA);
    let mut bytes = [0u8; MAX_HEADER_BYTES + DIGEST_BYTES];
    let (pdo, total) = plen(DATA_HLEN, digests, header.length as usize);
    CommonHeader {
        pdu_type: kind,
        flags: header_flags(digests, true) | extra_flags,
        hlen: DATA_HLEN as u8,
        pdo: pdo + pad as u8,
        plen: total + pad as u32,
    }
    .write(&mut bytes);
    put16(&mut bytes, 8, header.cccid);
    put16(&mut bytes, 10, header.ttag);
    put32(&mut bytes, 12, header.offset);
    put32(&mut bytes, 16, header.length);
    finish(bytes, DATA_HLEN, digests)
}

pub fn r2t(header: DataHeader, digests: Digests) -> Encoded {
    let mut bytes = [0u8; MAX_HEADER_BYTES + DIGEST_BYTES];
    let (_, total) = plen(R2T_HLEN, digests, 0);
    CommonHeader {
        pdu_type: pdu_type::R2T,
        flags: header_flags(digests, false),
        hlen: R2T_HLEN as u8,
        pdo: 0,
        plen: total,
    }
    .write(&mut bytes);
    put16(&mut bytes, 8, header.cccid);
    put16(&mut bytes, 10, header.ttag);
    put32(&mut bytes, 12, header.offset);
    put32(&mut bytes, 16, header.length);
    finish(bytes, R2T_HLEN, digests)
}

/// A TermReq (C2H from the controller, H2C from the host) quoting the offending header.
pub fn term_req(kind: u8, fatal: Fatal, offending: &[u8]) -> Vec<u8> {
    let quoted = &offending[..offending.len().min(TERM_MAX_DATA)];
    let mut bytes = vec![0u8; TERM_HLEN + quoted.len()];
    CommonHeader { pdu_type: kind, flags: 0, hlen: TERM_HLEN as u8, pdo: 0, plen: (TERM_HLEN + quoted.len()) as u32 }
        .write(&mut bytes);
    put16(&mut bytes, 8, fatal.fes);
    put32(&mut bytes, 10, fatal.fei);
    bytes[TERM_HLEN..].copy_from_slice(quoted);
    bytes
}

#[cfg(test)]
mod tests;
