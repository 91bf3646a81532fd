//! The 16-byte completion queue entry (NVMe Base 2.0, 4.2.2 Figure 89).

use super::{le16, le32, put16, put32, Status};

pub const CQE_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    /// Command-specific result, DW0 and DW1 (a property value uses both).
    pub result: u64,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
    /// Do Not Retry: the same command would fail again.
    pub dnr: bool,
}

impl Cqe {
    pub fn new(cid: u16, status: Status) -> Cqe {
        // A failure of a well-formed command on this target is deterministic, except a
        // transient one (a bdev whose backend is away for now, a path state).
        Cqe { result: 0, sqhd: 0, sqid: 0, cid, status, dnr: !status.is_success() && !status.is_transient() }
    }

    pub fn with_result(mut self, result: u64) -> Cqe {
        self.result = result;
        self
    }

    pub fn encode(&self) -> [u8; CQE_BYTES] {
        let mut bytes = [0u8; CQE_BYTES];
        put32(&mut bytes, 0, self.result as u32);
        put32(&mut bytes, 4, (self.result >> 32) as u32);
        put16(&mut bytes, 8, self.sqhd);
        put16(&mut bytes, 10, self.sqid);
        put16(&mut bytes, 12, self.cid);
        // Status field: phase in bit 0 (unused on fabrics), SC bits 8:1, SCT 11:9, DNR 15.
        let status =
            (u16::from(self.status.sc) << 1) | (u16::from(self.status.sct & 0x7) << 9) | (u16::from(self.dnr) << 15);
        put16(&mut bytes, 14, status);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Cqe {
        let status = le16(bytes, 14);
        Cqe {
            result: u64::from(le32(bytes, 0)) | (u64::from(le32(bytes, 4)) << 32),
            sqhd: le16(bytes, 8),
            sqid: le16(bytes, 10),
            cid: le16(bytes, 12),
            status: Status { sct: ((status >> 9) & 0x7) as u8, sc: ((status >> 1) & 0xff) as u8 },
            dnr: status & 0x8000 != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_status_bits() {
        let cqe = Cqe::new(42, Status::LBA_OUT_OF_RANGE).with_result(0x1_0000_0005);
        let bytes = cqe.encode();
        assert_eq!(le16(&bytes, 14), (0x80 << 1) | (1 << 15), "SC 0x80, SCT 0, DNR");
        let not_ready = Cqe::new(7, Status::NAMESPACE_NOT_READY).encode();
        assert_eq!(le16(&not_ready, 14), 0x82 << 1, "Namespace Not Ready may be retried: no DNR");
        assert_eq!(Cqe::decode(&bytes), cqe);
        let ok = Cqe::new(1, Status::SUCCESS).encode();
        assert_eq!(le16(&ok, 14), 0);
    }
}
