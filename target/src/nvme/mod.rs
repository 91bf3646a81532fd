//! NVMe and NVMe over Fabrics wire structures (NVMe Base 2.0, NVMe-oF 1.1): commands,
//! completions, identify data, log pages. Parsing never trusts its input: every field is
//! read through bounds-checked little-endian accessors.

pub mod cmd;
pub mod cpl;
pub mod identify;
pub mod log;

pub use cmd::{Sqe, SQE_BYTES};
pub use cpl::{Cqe, CQE_BYTES};
pub use peerless_bdev::IoStatus as Status;

/// Admin command opcodes (NVMe Base 2.0, Figure 28).
pub mod admin {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const FABRICS: u8 = 0x7f;
}

/// NVM command set I/O opcodes (NVM Command Set 1.0, Figure 18).
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    pub const FABRICS: u8 = 0x7f;
}

/// Fabrics command types (NVMe-oF 1.1, Figure 20).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const DISCONNECT: u8 = 0x08;
    /// Authentication Send and Receive (NVMe Base 2.0, 6.3 and 6.4).
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
}

/// Status values beyond those the bdev layer produces.
pub mod status {
    use super::Status;
    use peerless_bdev::status::sct;

    pub const COMMAND_ID_CONFLICT: Status = Status { sct: sct::GENERIC, sc: 0x03 };
    /// Command Abort Requested (NVMe Base 2.0, Figure 101).
    pub const ABORTED_BY_REQUEST: Status = Status { sct: sct::GENERIC, sc: 0x07 };
    pub const COMMAND_SEQUENCE_ERROR: Status = Status { sct: sct::GENERIC, sc: 0x0c };
    /// Invalid Number of SGL Descriptors (NVMe Base 2.0, Figure 101): more than MSDBD.
    pub const SGL_DESCRIPTOR_COUNT_INVALID: Status = Status { sct: sct::GENERIC, sc: 0x0e };
    pub const DATA_SGL_LENGTH_INVALID: Status = Status { sct: sct::GENERIC, sc: 0x0f };
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status { sct: sct::GENERIC, sc: 0x11 };
    pub const SGL_OFFSET_INVALID: Status = Status { sct: sct::GENERIC, sc: 0x16 };
    pub const KEEP_ALIVE_TIMEOUT_INVALID: Status = Status { sct: sct::GENERIC, sc: 0x1a };
    pub const INVALID_QUEUE_IDENTIFIER: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x01 };
    pub const INVALID_QUEUE_SIZE: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x02 };
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x05 };
    pub const INVALID_LOG_PAGE: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x09 };
    pub const FEATURE_NOT_SAVEABLE: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x0d };
    /// NVMe-oF 1.1, Figure 21: Connect command specific status values.
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x80 };
    pub const CONNECT_CONTROLLER_BUSY: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x81 };
    pub const CONNECT_INVALID_PARAMETERS: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x82 };
    pub const CONNECT_INVALID_HOST: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x84 };
    /// Authentication Required (NVMe Base 2.0, Figure 102): a command other than
    /// Authentication Send/Receive on a queue not yet authenticated.
    pub const AUTH_REQUIRED: Status = Status { sct: sct::COMMAND_SPECIFIC, sc: 0x91 };
}

/// Little-endian field access over a byte slice; out-of-range reads give 0, so a short
/// buffer can never panic a parser (the caller checks lengths where they matter).
pub fn le16(bytes: &[u8], at: usize) -> u16 {
    bytes.get(at..at + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}

pub fn le32(bytes: &[u8], at: usize) -> u32 {
    bytes.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from(le32(bytes, at)) | (u64::from(le32(bytes, at + 4)) << 32)
}

pub fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub fn put64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Copies `text` into a fixed-width field, space-padded (identify strings) or
/// zero-padded (NQNs), truncating what does not fit.
pub fn put_str(bytes: &mut [u8], at: usize, width: usize, text: &str, pad: u8) {
    let field = &mut bytes[at..at + width];
    field.fill(pad);
    let len = text.len().min(width);
    field[..len].copy_from_slice(&text.as_bytes()[..len]);
}

/// A NUL-terminated (or full-width) string field, if it is valid UTF-8.
pub fn get_str(bytes: &[u8], at: usize, width: usize) -> Option<String> {
    let field = bytes.get(at..at + width)?;
    let end = field.iter().position(|b| *b == 0).unwrap_or(width);
    std::str::from_utf8(&field[..end]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_are_little_endian_and_bounded() {
        let mut bytes = [0u8; 16];
        put16(&mut bytes, 0, 0x1234);
        put32(&mut bytes, 2, 0xdead_beef);
        put64(&mut bytes, 6, 0x0102_0304_0506_0708);
        assert_eq!(bytes[..2], [0x34, 0x12]);
        assert_eq!(le16(&bytes, 0), 0x1234);
        assert_eq!(le32(&bytes, 2), 0xdead_beef);
        assert_eq!(le64(&bytes, 6), 0x0102_0304_0506_0708);
        assert_eq!(le32(&bytes, 14), 0, "a read past the end is 0, never a panic");
        put_str(&mut bytes, 0, 8, "abc", b' ');
        assert_eq!(&bytes[..8], b"abc     ");
        let mut nqn = [0u8; 8];
        put_str(&mut nqn, 0, 8, "nqn", 0);
        assert_eq!(get_str(&nqn, 0, 8).as_deref(), Some("nqn"));
        assert_eq!(get_str(&nqn, 4, 8), None);
    }
}
