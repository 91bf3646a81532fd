//! The bdev layer's errors, each carrying what an operator needs to act, and their
//! SPDK-compatible JSON-RPC codes.

use peerless_core::rpc::RpcError;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BdevError {
    #[error("bdev '{0}' does not exist")]
    NotFound(String),
    #[error("a bdev named '{0}' already exists")]
    Exists(String),
    #[error("bdev '{name}' is claimed ({claim}) by {by}")]
    Claimed { name: String, claim: &'static str, by: String },
    #[error("bdev '{name}' is open for writing elsewhere; a {claim} claim needs it to be the only writer")]
    WritersOpen { name: String, claim: &'static str },
    #[error("bdev '{0}' is being removed")]
    Removed(String),
    /// SPDK's `spdk_bdev_unregister_by_name` answers ENODEV when another module made it.
    #[error("bdev '{name}' was not created by the {module} module")]
    OtherModule { name: String, module: &'static str },
    #[error("no {module} bdev is built on '{base}'")]
    NothingBuiltOn { base: String, module: &'static str },
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("{0}")]
    Io(String),
}

impl BdevError {
    pub fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        BdevError::Invalid { field, why: why.into() }
    }
}

impl From<BdevError> for RpcError {
    fn from(err: BdevError) -> RpcError {
        let message = err.to_string();
        match err {
            BdevError::NotFound(_)
            | BdevError::Removed(_)
            | BdevError::OtherModule { .. }
            | BdevError::NothingBuiltOn { .. } => RpcError::no_such_device(message),
            BdevError::Exists(_) => RpcError::exists(message),
            BdevError::Claimed { .. } | BdevError::WritersOpen { .. } => {
                RpcError::errno(nix::errno::Errno::EPERM, message)
            }
            BdevError::Invalid { .. } => RpcError::invalid_params(message),
            BdevError::Io(_) => RpcError::errno(nix::errno::Errno::EIO, message),
        }
    }
}
