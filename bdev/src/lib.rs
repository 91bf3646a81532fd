//! The block device layer: modules register bdevs; users open descriptors (with
//! claims), get a per-thread channel, and submit I/O objects that own tagged buffers.
//! The layer validates, bounces through the tag gate where a bdev cannot reach a
//! buffer's memory, enforces QoS, retries on "no resources", and keeps iostat.
// `deny`, not `forbid`: the io_uring wrapper (modules/uring/sys.rs) is the one module
// allowed `unsafe`, by an `allow` on its `mod` line alone.
#![deny(unsafe_code)]

pub mod bdev;
pub mod channel;
pub mod error;
pub mod io;
pub mod manager;
pub mod modules;
pub mod qos;
pub mod rpc;
pub mod stat;
pub mod status;
pub mod subsystem;

pub use bdev::{Bdev, BdevChannelOps, BdevInfo, SubmitError, Uuid};
pub use error::BdevError;
pub use io::{completion_queue, BdevIo, CompletionQueue, DataBuf, IoType};
pub use manager::{BdevHandle, BdevManager, ClaimType, Desc};
pub use status::IoStatus;
pub use subsystem::BdevSubsystem;

/// Adds the layer's methods and every module's to `registry`.
pub fn register_rpcs(registry: &mut peerless_core::rpc::Registry, manager: &BdevManager) {
    rpc::register(registry, manager);
    for module in modules::all() {
        module.register_rpcs(registry, manager);
    }
}
