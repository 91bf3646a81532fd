//! Bdev modules. Each lives in its own folder and reaches the layer only through
//! `BdevModule` (its RPC methods) and `Bdev` (its devices); the layer knows none of them
//! by name.

use peerless_core::rpc::Registry;

use crate::manager::BdevManager;

pub(crate) mod common;
pub mod delay;
pub mod error;
mod forward;
pub mod malloc;
pub mod null;
pub mod nvme;
pub mod nvmesim;
pub mod passthru;
#[cfg(feature = "rbd")]
pub mod rbd;
pub mod split;
pub mod uring;

/// A bdev module: what it adds to the RPC registry.
pub trait BdevModule: Send + Sync {
    fn name(&self) -> &'static str;
    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager);
}

/// What modules finish after the application has stopped and every bdev is gone, before
/// the process exits: RBD images close on threads of their own, and an exit before they
/// are done would leave their watches and locks to time out at the OSDs.
pub fn finish() {
    #[cfg(feature = "rbd")]
    rbd::finish();
}

/// Every module built into this binary, in the order their config entries replay.
pub fn all() -> Vec<Box<dyn BdevModule>> {
    vec![
        Box::new(malloc::MallocModule),
        Box::new(null::NullModule),
        Box::new(uring::UringModule),
        Box::new(nvmesim::NvmesimModule),
        Box::new(nvme::NvmeModule::default()),
        Box::new(passthru::PassthruModule),
        Box::new(split::SplitModule),
        Box::new(delay::DelayModule),
        Box::new(error::ErrorModule),
        #[cfg(feature = "rbd")]
        Box::new(rbd::RbdModule),
    ]
}
