//! bdev_uring: files and block devices through io_uring, opened with O_DIRECT (buffered,
//! with a warning, where the filesystem refuses it), one ring per thread. The same engine
//! answers SPDK's `bdev_aio_create`, so SPDK configs written for the aio module load
//! unchanged (file I/O goes through io_uring, a reactor never blocks).
//!
//! Every I/O goes through plain (non-fixed) readv/writev, which is what P2P segments need
//! (the kernel refuses long-term pins of P2P pages). Registered buffers for pool memory,
//! the optimisation the design names, are not used yet. The bdev accepts host memory only,
//! so the layer bounces anything else before it gets here.

mod channel;
mod open;
#[allow(unsafe_code)]
mod sys;

use std::fs::File;
use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo};
use crate::io::IoType;
use crate::manager::BdevManager;
use crate::modules::BdevModule;
pub use open::create;

pub const URING_PRODUCT_NAME: &str = "URING bdev";
pub const AIO_PRODUCT_NAME: &str = "AIO disk";
/// One type, two SPDK modules: each delete method removes only its own flavor.
pub const URING_MODULE_NAME: &str = "uring";
pub const AIO_MODULE_NAME: &str = "aio";

pub struct UringModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UringCreate {
    filename: String,
    name: String,
    #[serde(default)]
    block_size: u32,
    #[serde(default)]
    uuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AioCreate {
    name: String,
    filename: String,
    #[serde(default)]
    block_size: u32,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    fallocate: bool,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    nowait: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

/// How the bdev was asked for, which decides its RPC names, product name and features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Uring,
    /// SPDK's aio options: `fallocate` enables unmap and write_zeroes; `nowait` is
    /// always false (`bdev_aio_create` refuses true) and saved as SPDK saves it.
    Aio {
        readonly: bool,
        fallocate: bool,
        nowait: bool,
    },
}

/// What `bdev_uring_create` / `bdev_aio_create` ask for.
#[derive(Clone, Debug)]
pub struct UringConfig {
    pub name: String,
    pub filename: String,
    /// 0: the device's logical block size, or 512 for a regular file.
    pub block_size: u32,
    pub uuid: Option<String>,
    pub flavor: Flavor,
}

pub struct UringBdev {
    info: BdevInfo,
    backing: Arc<Backing>,
    filename: String,
    block_size_override: bool,
    flavor: Flavor,
}

/// What every channel of a uring bdev shares: the open file and how to use it.
struct Backing {
    file: Arc<File>,
    /// The bdev's name, for logs.
    name: String,
    block_size: u32,
    /// O_DIRECT's alignment for buffer addresses and lengths; None when buffered.
    direct_align: Option<usize>,
    is_block_device: bool,
}

impl BdevModule for UringModule {
    fn name(&self) -> &'static str {
        URING_MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method("bdev_uring_create", StateMask::RUNTIME, move |_, params: UringCreate, responder| {
            let config = UringConfig {
                name: params.name,
                filename: params.filename,
                block_size: params.block_size,
                uuid: params.uuid,
                flavor: Flavor::Uring,
            };
            match create(&bdevs, config) {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            }
        });
        let bdevs = manager.clone();
        registry.method("bdev_aio_create", StateMask::RUNTIME, move |_, params: AioCreate, responder| {
            if params.nowait {
                return responder.err(RpcError::invalid_params(
                    "nowait: I/O is not submitted with RWF_NOWAIT (io_uring queues what would block); leave it false",
                ));
            }
            let config = UringConfig {
                name: params.name,
                filename: params.filename,
                block_size: params.block_size,
                uuid: params.uuid,
                flavor: Flavor::Aio { readonly: params.readonly, fallocate: params.fallocate, nowait: params.nowait },
            };
            match create(&bdevs, config) {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            }
        });
        for (method, module) in [("bdev_uring_delete", URING_MODULE_NAME), ("bdev_aio_delete", AIO_MODULE_NAME)] {
            let bdevs = manager.clone();
            registry.method(method, StateMask::RUNTIME, move |ctx: &mut ThreadCtx, params: NameParams, responder| {
                match bdevs.unregister_by_name(Some(ctx), &params.name, module) {
                    Ok(()) => responder.ok_true(),
                    Err(err) => responder.err(err.into()),
                }
            });
        }
    }
}

impl UringBdev {
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.backing.direct_align.is_some()
    }
}

impl Bdev for UringBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        match self.flavor {
            Flavor::Uring => URING_MODULE_NAME,
            Flavor::Aio { .. } => AIO_MODULE_NAME,
        }
    }

    fn supports(&self, io_type: IoType) -> bool {
        let (readonly, fallocate) = match self.flavor {
            Flavor::Uring => (false, true),
            Flavor::Aio { readonly, fallocate, .. } => (readonly, fallocate),
        };
        match io_type {
            IoType::Read | IoType::Flush | IoType::Reset => true,
            IoType::Write => !readonly,
            IoType::Unmap | IoType::WriteZeroes => !readonly && fallocate,
            IoType::Compare => false,
        }
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        match channel::UringChannel::new(ctx, self.backing.clone()) {
            Ok(channel) => Box::new(channel),
            Err(err) => {
                peerless_core::log_error!(
                    "uring '{}': no io_uring on thread '{}' ({err}); its I/O will fail",
                    self.info.name,
                    ctx.name()
                );
                Box::new(channel::FailedChannel)
            }
        }
    }

    fn driver_specific(&self) -> Value {
        match self.flavor {
            Flavor::Uring => json!({"uring": {"filename": self.filename}}),
            Flavor::Aio { readonly, fallocate, .. } => json!({"aio": {
                "filename": self.filename, "block_size_override": self.block_size_override,
                "readonly": readonly, "fallocate": fallocate,
            }}),
        }
    }

    fn config_entry(&self) -> Option<Value> {
        let uuid = self.info.uuid.to_string();
        Some(match self.flavor {
            Flavor::Uring => json!({"method": "bdev_uring_create", "params": {
                "filename": self.filename, "name": self.info.name,
                "block_size": self.info.block_size, "uuid": uuid,
            }}),
            Flavor::Aio { readonly, fallocate, nowait } => json!({"method": "bdev_aio_create", "params": {
                "name": self.info.name, "filename": self.filename, "block_size": self.info.block_size,
                "readonly": readonly, "fallocate": fallocate, "uuid": uuid, "nowait": nowait,
            }}),
        })
    }
}
