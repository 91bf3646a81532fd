//! The NVMe-oF target: subsystems, controllers, namespaces, discovery, and the `nvmf`
//! framework subsystem that owns them. Transport-independent; `tcp` moves the bytes.

pub mod admin;
pub mod connect;
pub mod ctrlr;
pub mod io_cmd;
pub mod rpc;
pub mod subsystem;
pub mod target;

pub use target::{NvmfSubsystem, NvmfTarget};
