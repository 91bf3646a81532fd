//! The NVMe-oF engine, independent of any transport: subsystems, namespaces,
//! controllers, discovery, the per-queue command state machine (`qpair`), poll groups,
//! data buffers, and the `Transport` trait every transport implements. Nothing here
//! moves bytes on a wire; transports drive it.

pub mod admin;
pub mod buffers;
pub mod connect;
pub mod ctrlr;
pub mod io_cmd;
pub mod poll_group;
pub mod qpair;
pub mod refusals;
pub mod rpc;
pub mod subsystem;
pub mod target;
pub mod transport;

pub use target::{NvmfSubsystem, NvmfTarget};
