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

/// The bdev layer inside an app of its own (bdevperf, the fio engine, peerless-perf over
/// PCIe): a manager whose subsystem starts and stops with the app, and a registry with
/// the framework's methods, the layer's and every module's, for a config to replay.
pub fn serve_in_app(handle: &peerless_core::reactor::AppHandle) -> (BdevManager, peerless_core::rpc::Registry) {
    let manager = BdevManager::new();
    handle.register_subsystem(std::sync::Arc::new(BdevSubsystem { manager: manager.clone() }));
    let mut registry = peerless_core::rpc::Registry::new();
    peerless_core::rpc::framework::register(&mut registry);
    register_rpcs(&mut registry, &manager);
    (manager, registry)
}

/// Adds the layer's methods and every module's to `registry`.
pub fn register_rpcs(registry: &mut peerless_core::rpc::Registry, manager: &BdevManager) {
    rpc::register(registry, manager);
    for module in modules::all() {
        module.register_rpcs(registry, manager);
    }
}
