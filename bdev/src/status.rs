//! Completion status of a bdev I/O in NVMe terms (status code type + status code), so a
//! module's failure reaches an NVMe host unchanged (NVMe Base 2.0, 4.2.3 Status Field).

use std::fmt;

/// NVMe status code types.
pub mod sct {
    pub const GENERIC: u8 = 0x0;
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    pub const MEDIA: u8 = 0x2;
    pub const PATH: u8 = 0x3;
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoStatus {
    pub sct: u8,
    pub sc: u8,
}

impl IoStatus {
    pub const SUCCESS: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x00 };
    pub const INVALID_OPCODE: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x01 };
    pub const INVALID_FIELD: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x02 };
    pub const DATA_TRANSFER_ERROR: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x04 };
    pub const INTERNAL_ERROR: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x06 };
    pub const ABORTED_BY_REQUEST: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x07 };
    pub const ABORTED_SQ_DELETION: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x08 };
    pub const INVALID_NAMESPACE: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x0b };
    pub const LBA_OUT_OF_RANGE: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x80 };
    pub const NAMESPACE_NOT_READY: IoStatus = IoStatus { sct: sct::GENERIC, sc: 0x82 };
    pub const WRITE_FAULT: IoStatus = IoStatus { sct: sct::MEDIA, sc: 0x80 };
    pub const UNRECOVERED_READ_ERROR: IoStatus = IoStatus { sct: sct::MEDIA, sc: 0x81 };
    pub const COMPARE_FAILURE: IoStatus = IoStatus { sct: sct::MEDIA, sc: 0x85 };

    pub fn new(sct: u8, sc: u8) -> Self {
        IoStatus { sct, sc }
    }

    pub fn is_success(self) -> bool {
        self == IoStatus::SUCCESS
    }

    /// Whether the same command may succeed if retried: the namespace is not ready yet
    /// (NVMe Base 2.0, Figure 101: "the controller is ... able to complete the command at
    /// a later time"), or a path-related status (SCT 3, which a multipath host retries on
    /// another path). A completion with such a status leaves Do Not Retry clear.
    pub fn is_transient(self) -> bool {
        self == IoStatus::NAMESPACE_NOT_READY || self.sct == sct::PATH
    }
}

impl fmt::Debug for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoStatus(sct {:#x}, sc {:#04x})", self.sct, self.sc)
    }
}

impl fmt::Display for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            IoStatus::SUCCESS => "success",
            IoStatus::INVALID_OPCODE => "invalid opcode",
            IoStatus::INVALID_FIELD => "invalid field",
            IoStatus::DATA_TRANSFER_ERROR => "data transfer error",
            IoStatus::INTERNAL_ERROR => "internal error",
            IoStatus::ABORTED_BY_REQUEST => "aborted by request",
            IoStatus::ABORTED_SQ_DELETION => "aborted: queue deleted",
            IoStatus::INVALID_NAMESPACE => "invalid namespace",
            IoStatus::LBA_OUT_OF_RANGE => "LBA out of range",
            IoStatus::NAMESPACE_NOT_READY => "namespace not ready",
            IoStatus::WRITE_FAULT => "write fault",
            IoStatus::UNRECOVERED_READ_ERROR => "unrecovered read error",
            IoStatus::COMPARE_FAILURE => "compare failure",
            _ => return write!(f, "NVMe status sct {:#x} sc {:#04x}", self.sct, self.sc),
        };
        f.write_str(name)
    }
}
