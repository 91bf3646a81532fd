//! Why a control-plane operation on the target (subsystems, namespaces, listeners,
//! hosts) was refused, with what an operator needs to act. `rpc` maps each to SPDK's
//! JSON-RPC code.

use std::net::SocketAddr;

use peerless_bdev::BdevError;

/// The name of the one target, as SPDK names its default target (`nvmf_tgt`).
pub const TARGET_NAME: &str = "nvmf_tgt";

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NvmfError {
    /// A value out of range or malformed; the message names the parameter.
    #[error("{0}")]
    Invalid(String),
    /// A parameter that asks for something this target does not do.
    #[error("{param}: {why}")]
    Unsupported { param: &'static str, why: String },
    #[error("NVMf target '{0}' not found: there is one target, '{TARGET_NAME}'; omit tgt_name or pass that")]
    NoSuchTarget(String),
    #[error("Unable to find subsystem with NQN {0}")]
    NoSuchSubsystem(String),
    #[error("the discovery subsystem has no {0}")]
    Discovery(&'static str),
    #[error("Subsystem NQN {0} already exists")]
    SubsystemExists(String),
    #[error("the target already has the maximum of {0} subsystems")]
    TooManySubsystems(usize),
    #[error("Unable to find {0} transport: call nvmf_create_transport first")]
    NoTransport(String),
    #[error("transport '{trtype}' does not exist; the target has {have:?}")]
    NoSuchTransport { trtype: String, have: Vec<&'static str> },
    #[error("{nqn} already listens on {addr} over {trtype}")]
    ListenerExists { nqn: String, trtype: String, addr: SocketAddr },
    #[error("{nqn} does not listen on {addr} over {trtype}")]
    NoSuchListener { nqn: String, trtype: String, addr: SocketAddr },
    /// The transport could not listen (the address is in use, not local, ...).
    #[error("{0}")]
    CannotListen(String),
    #[error("host {host} is already allowed on {nqn}")]
    HostExists { nqn: String, host: String },
    #[error("host {host} is not allowed on {nqn}")]
    NoSuchHost { nqn: String, host: String },
    #[error("Timeout reached during host removal: {host}'s queues on {nqn} were still open after {timeout_ms} ms")]
    HostRemovalTimeout { nqn: String, host: String, timeout_ms: u64 },
    #[error("NSID {nsid} is already in use in {nqn}")]
    NsidInUse { nqn: String, nsid: u32 },
    #[error("NSID {nsid} exceeds max_namespaces {max} of {nqn}")]
    NsidTooLarge { nqn: String, nsid: u32, max: u32 },
    #[error("{nqn} has no free NSID (max_namespaces {max})")]
    NoFreeNsid { nqn: String, max: u32 },
    #[error("Invalid parameters: {nqn} has no namespace {nsid}")]
    NoSuchNamespace { nqn: String, nsid: u32 },
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

impl NvmfError {
    pub fn unsupported(param: &'static str, why: impl Into<String>) -> NvmfError {
        NvmfError::Unsupported { param, why: why.into() }
    }
}
