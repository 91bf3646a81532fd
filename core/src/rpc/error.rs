//! JSON-RPC error codes as SPDK uses them (`include/spdk/jsonrpc.h`), plus the negative
//! errno codes its handlers return.

use std::fmt;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
/// The method exists but not in the framework's current state (STARTUP vs RUNTIME).
pub const INVALID_STATE: i32 = -1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        RpcError::new(INTERNAL_ERROR, message)
    }

    /// A negative errno, SPDK's convention for semantic failures (-19 No such device,
    /// -17 File exists), with a message that says which object and why.
    pub fn errno(errno: nix::errno::Errno, message: impl Into<String>) -> Self {
        RpcError::new(-(errno as i32), message)
    }

    pub fn no_such_device(message: impl Into<String>) -> Self {
        RpcError::errno(nix::errno::Errno::ENODEV, message)
    }

    pub fn exists(message: impl Into<String>) -> Self {
        RpcError::errno(nix::errno::Errno::EEXIST, message)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}
