//! The NVMe/RDMA private data carried by RDMA CM's connect, accept and reject
//! (NVM Express RDMA Transport Specification 1.0: §3.1, Figures 5 to 7; §3.5, Figure 11).
//! All fields are little endian.

use std::fmt;

/// The only record format defined (RECFMT 0h).
pub const RECFMT_1_0: u16 = 0;
/// Bytes of RDMA_CM_REQUEST private data.
pub const REQUEST_LEN: usize = 32;
/// Bytes of RDMA_CM_ACCEPT private data.
pub const ACCEPT_LEN: usize = 32;
/// Bytes of RDMA_CM_REJECT private data.
pub const REJECT_LEN: usize = 4;

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// The host's RDMA_CM_REQUEST (Figure 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmRequest {
    /// 0 for the admin queue.
    pub qid: u16,
    /// Receive entries the host posted for response capsules.
    pub hrqsize: u16,
    /// The Connect command's SQSIZE: 0's based.
    pub hsqsize: u16,
    /// The controller an I/O queue joins; 0 for the admin queue.
    pub cntlid: u16,
}

impl CmRequest {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        put16(&mut out, 0, RECFMT_1_0);
        put16(&mut out, 2, self.qid);
        put16(&mut out, 4, self.hrqsize);
        put16(&mut out, 6, self.hsqsize);
        put16(&mut out, 8, self.cntlid);
        out
    }

    /// Parses a request's private data. The CM may deliver more bytes than the host sent
    /// (InfiniBand CM pads the field), so only a short one is refused. The error is the
    /// status to reject with (Figure 11).
    pub fn decode(bytes: &[u8]) -> Result<CmRequest, RejectStatus> {
        if bytes.len() < REQUEST_LEN {
            return Err(RejectStatus::InvalidLength);
        }
        if le16(bytes, 0) != RECFMT_1_0 {
            return Err(RejectStatus::InvalidRecfmt);
        }
        Ok(CmRequest { qid: le16(bytes, 2), hrqsize: le16(bytes, 4), hsqsize: le16(bytes, 6), cntlid: le16(bytes, 8) })
    }
}

/// The controller's RDMA_CM_ACCEPT (Figure 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmAccept {
    /// Receive entries the controller posted for command capsules.
    pub crqsize: u16,
}

impl CmAccept {
    pub fn encode(&self) -> [u8; ACCEPT_LEN] {
        let mut out = [0u8; ACCEPT_LEN];
        put16(&mut out, 0, RECFMT_1_0);
        put16(&mut out, 2, self.crqsize);
        out
    }

    /// Parses an accept's private data, as a host does.
    pub fn decode(bytes: &[u8]) -> Result<CmAccept, RejectStatus> {
        if bytes.len() < ACCEPT_LEN {
            return Err(RejectStatus::InvalidLength);
        }
        if le16(bytes, 0) != RECFMT_1_0 {
            return Err(RejectStatus::InvalidRecfmt);
        }
        Ok(CmAccept { crqsize: le16(bytes, 2) })
    }
}

/// Why a controller refused a connection (Figure 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectStatus {
    InvalidLength,
    InvalidRecfmt,
    InvalidQid,
    InvalidHsqsize,
    InvalidHrqsize,
    NoResources,
    InvalidIrd,
    InvalidOrd,
    InvalidCntlid,
    /// A reserved value, as a newer peer may send.
    Other(u16),
}

impl RejectStatus {
    pub fn code(self) -> u16 {
        match self {
            RejectStatus::InvalidLength => 1,
            RejectStatus::InvalidRecfmt => 2,
            RejectStatus::InvalidQid => 3,
            RejectStatus::InvalidHsqsize => 4,
            RejectStatus::InvalidHrqsize => 5,
            RejectStatus::NoResources => 6,
            RejectStatus::InvalidIrd => 7,
            RejectStatus::InvalidOrd => 8,
            RejectStatus::InvalidCntlid => 9,
            RejectStatus::Other(code) => code,
        }
    }

    pub fn from_code(code: u16) -> RejectStatus {
        match code {
            1 => RejectStatus::InvalidLength,
            2 => RejectStatus::InvalidRecfmt,
            3 => RejectStatus::InvalidQid,
            4 => RejectStatus::InvalidHsqsize,
            5 => RejectStatus::InvalidHrqsize,
            6 => RejectStatus::NoResources,
            7 => RejectStatus::InvalidIrd,
            8 => RejectStatus::InvalidOrd,
            9 => RejectStatus::InvalidCntlid,
            other => RejectStatus::Other(other),
        }
    }
}

impl fmt::Display for RejectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            RejectStatus::InvalidLength => "invalid private data length",
            RejectStatus::InvalidRecfmt => "invalid RECFMT",
            RejectStatus::InvalidQid => "invalid QID",
            RejectStatus::InvalidHsqsize => "invalid HSQSIZE",
            RejectStatus::InvalidHrqsize => "invalid HRQSIZE",
            RejectStatus::NoResources => "no resources",
            RejectStatus::InvalidIrd => "invalid IRD",
            RejectStatus::InvalidOrd => "invalid ORD",
            RejectStatus::InvalidCntlid => "invalid CNTLID",
            RejectStatus::Other(code) => return write!(f, "reserved status {code:#x}"),
        };
        f.write_str(text)
    }
}

/// The controller's RDMA_CM_REJECT (Figure 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmReject {
    pub status: RejectStatus,
}

impl CmReject {
    pub fn encode(&self) -> [u8; REJECT_LEN] {
        let mut out = [0u8; REJECT_LEN];
        put16(&mut out, 0, RECFMT_1_0);
        put16(&mut out, 2, self.status.code());
        out
    }

    /// Parses a reject's private data, as a host does; None when it carries no NVMe
    /// record (a reject from the CM itself, or a peer that sent none).
    pub fn decode(bytes: &[u8]) -> Option<CmReject> {
        if bytes.len() < REJECT_LEN || le16(bytes, 0) != RECFMT_1_0 {
            return None;
        }
        Some(CmReject { status: RejectStatus::from_code(le16(bytes, 2)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_is_figure_5() {
        let req = CmRequest { qid: 3, hrqsize: 128, hsqsize: 127, cntlid: 0x1234 };
        let bytes = req.encode();
        assert_eq!(&bytes[..10], &[0, 0, 3, 0, 128, 0, 127, 0, 0x34, 0x12]);
        assert!(bytes[10..].iter().all(|b| *b == 0), "reserved bytes are zero");
        assert_eq!(CmRequest::decode(&bytes), Ok(req));
        for qid in [0u16, 1, 0xffff] {
            for size in [1u16, 32, 1024, u16::MAX] {
                let req = CmRequest { qid, hrqsize: size, hsqsize: size.wrapping_sub(1), cntlid: qid ^ size };
                assert_eq!(CmRequest::decode(&req.encode()), Ok(req));
            }
        }
    }

    #[test]
    fn request_padding_is_accepted_and_short_or_unknown_formats_are_not() {
        let req = CmRequest { qid: 1, hrqsize: 32, hsqsize: 31, cntlid: 1 };
        let mut padded = req.encode().to_vec();
        padded.resize(56, 0xee);
        assert_eq!(CmRequest::decode(&padded), Ok(req), "the IB CM pads REQ private data to 56 bytes");
        for len in [0, 1, 10, REQUEST_LEN - 1] {
            assert_eq!(CmRequest::decode(&padded[..len]), Err(RejectStatus::InvalidLength), "{len} bytes");
        }
        let mut bad = req.encode();
        bad[0] = 1;
        assert_eq!(CmRequest::decode(&bad), Err(RejectStatus::InvalidRecfmt));
    }

    #[test]
    fn accept_layout_is_figure_6() {
        let bytes = CmAccept { crqsize: 0x0201 }.encode();
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[..4], &[0, 0, 1, 2]);
        assert!(bytes[4..].iter().all(|b| *b == 0));
        assert_eq!(CmAccept::decode(&bytes), Ok(CmAccept { crqsize: 0x0201 }));
        assert_eq!(CmAccept::decode(&bytes[..31]), Err(RejectStatus::InvalidLength));
    }

    #[test]
    fn reject_layout_is_figure_7_with_figure_11_codes() {
        for code in 1..=9u16 {
            let status = RejectStatus::from_code(code);
            assert_eq!(status.code(), code);
            assert!(!matches!(status, RejectStatus::Other(_)));
            let bytes = CmReject { status }.encode();
            assert_eq!(bytes, [0, 0, code as u8, 0]);
            assert_eq!(CmReject::decode(&bytes), Some(CmReject { status }));
        }
        assert_eq!(RejectStatus::from_code(0xa), RejectStatus::Other(0xa));
        assert_eq!(RejectStatus::NoResources.to_string(), "no resources");
        assert_eq!(CmReject::decode(&[0, 0, 6]), None, "too short");
        assert_eq!(CmReject::decode(&[1, 0, 6, 0]), None, "not an NVMe record");
        assert_eq!(CmReject::decode(&[0, 0, 6, 0, 9, 9]).map(|r| r.status), Some(RejectStatus::NoResources));
    }
}
