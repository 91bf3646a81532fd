//! The NVMe-oF engine, independent of any transport: subsystems, namespaces,
//! controllers, discovery, the per-queue command state machine (`qpair`), poll groups,
//! data buffers, and the `Transport` trait every transport implements. Nothing here
//! moves bytes on a wire; transports drive it. The control plane (creating subsystems,
//! adding namespaces, listeners and hosts) is methods of `NvmfTarget` returning
//! `NvmfError`; `rpc` only decodes SPDK's parameters, calls them and encodes answers.

pub mod access;
pub mod admin;
pub mod ana;
mod ana_rpc;
pub mod auth;
pub mod buffers;
pub mod connect;
pub mod ctrlr;
pub mod error;
pub mod io_cmd;
pub mod namespace;
pub mod poll_group;
pub mod qpair;
pub mod refusals;
pub mod rpc;
pub mod subsystem;
pub mod target;
#[cfg(test)]
mod testing;
pub mod transport;

pub use error::NvmfError;
pub use target::{NvmfSubsystem, NvmfTarget};
