//! The initiator's error type: what went wrong and what a person needs to act on it.

use peerless_target::nvme::Status;

/// Everything an initiator call can fail with. `Clone` because a queue that failed keeps
/// its error and returns it from every later call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A socket call failed (connect, read, write, resolve).
    #[error("{op}: {message}")]
    Io { op: &'static str, kind: std::io::ErrorKind, message: String },
    /// The target closed the connection without a TermReq.
    #[error("the target closed the connection")]
    Closed,
    /// The target ended the connection with a C2HTermReq (NVMe/TCP 1.0, 3.6.2.4).
    #[error("the target terminated the connection: FES {fes:#x}, FEI {fei:#x}")]
    Terminated { fes: u16, fei: u32 },
    /// A command completed with an error status.
    #[error("command {opcode:#04x} (cid {cid}) failed: {status} (sct {:#x}, sc {:#04x}{})",
        status.sct, status.sc, if *dnr { ", do not retry" } else { "" })]
    Command {
        opcode: u8,
        cid: u16,
        status: Status,
        dnr: bool,
        /// CQE DW0: for a refused Connect, the invalid parameter (IATTR bit 16, IPO 15:0).
        dw0: u32,
    },
    /// A received PDU's header digest did not match; the connection is over.
    #[error("header digest mismatch on a PDU of type {pdu_type:#04x}")]
    HeaderDigest { pdu_type: u8 },
    /// Data of this command arrived with a bad data digest; the command failed.
    #[error("data digest mismatch on command cid {cid}")]
    DataDigest { cid: u16 },
    /// The target broke the NVMe/TCP or NVMe-oF protocol; the connection is over.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection was refused or limited during the handshake or Connect.
    #[error("unsupported by the target: {0}")]
    Unsupported(String),
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout { what: &'static str, ms: u64 },
    /// DH-HMAC-CHAP failed or was refused (NVMe Base 2.0, 8.13).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// Every command slot is in use; poll for completions first.
    #[error("queue full: {depth} commands outstanding")]
    QueueFull { depth: u16 },
    /// The caller asked for something the queue cannot do (size, alignment, limits).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, error: &std::io::Error) -> Error {
        Error::Io { op, kind: error.kind(), message: error.to_string() }
    }

    /// The NVMe status of a failed command, if that is what this error is.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Command { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
