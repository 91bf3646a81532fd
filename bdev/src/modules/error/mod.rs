//! bdev_error: SPDK's error-injection bdev. `bdev_error_create` stacks `EE_<base>` on a
//! base bdev (claimed exclusive_write); `bdev_error_inject_error` arms failures, pending
//! I/O, data corruption, "no resources" refusals or NVMe statuses, a counted number of
//! times, per I/O type. A reset aborts the I/O `pending` injections hold on every
//! thread's channel (through the module's own io device) and completes without reaching
//! the base, as in SPDK.

mod channel;
pub mod inject;

use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo};
use crate::error::BdevError;
use crate::io::IoType;
use crate::manager::BdevManager;
use crate::modules::common::BaseBdev;
use crate::modules::null::parse_uuid;
use crate::modules::BdevModule;
use crate::status::IoStatus;
use inject::{ErrorType, Injection, Injections, Target};

pub const PRODUCT_NAME: &str = "Error Injection Disk";
pub const MODULE_NAME: &str = "error";
/// SPDK names an error bdev after its base with this prefix.
pub const NAME_PREFIX: &str = "EE_";
/// NVMe status code types are three bits wide (NVMe Base 2.0, 4.2.3).
const SCT_MAX: u8 = 0x7;

pub struct ErrorModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    base_name: String,
    #[serde(default)]
    uuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectParams {
    pub name: String,
    pub io_type: String,
    pub error_type: String,
    #[serde(default = "one")]
    pub num: u32,
    #[serde(default)]
    pub queue_depth: u64,
    #[serde(default)]
    pub corrupt_offset: u64,
    #[serde(default)]
    pub corrupt_value: u8,
    #[serde(default)]
    pub nvme_sct: u8,
    #[serde(default)]
    pub nvme_sc: u8,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

pub struct ErrorBdev {
    info: BdevInfo,
    base: Arc<BaseBdev>,
    injections: Arc<Injections>,
    /// Per-thread channel state, reachable from any thread for resets.
    device: channel::ErrorDevice,
}

impl ErrorBdev {
    /// Opens and claims `base_name`, then registers `EE_<base_name>` over it.
    pub fn create(manager: &BdevManager, base_name: &str, uuid: Option<&str>) -> Result<Arc<ErrorBdev>, RpcError> {
        let name = format!("{NAME_PREFIX}{base_name}");
        if manager.get(&name).is_ok() {
            return Err(BdevError::Exists(name).into());
        }
        let uuid = parse_uuid(uuid)?;
        let base = BaseBdev::open(manager, base_name, &format!("bdev_error {name}"))?;
        let base_info = base.bdev().info().clone();
        let info = BdevInfo {
            name,
            product_name: PRODUCT_NAME.into(),
            block_size: base_info.block_size,
            num_blocks: base_info.num_blocks,
            uuid,
            max_io_blocks: base_info.max_io_blocks,
        };
        let base = Arc::new(base);
        let device = channel::device(&info.name, base.clone());
        let bdev = Arc::new(ErrorBdev { info, base, injections: Arc::default(), device });
        manager.register(bdev.clone())?;
        Ok(bdev)
    }

    /// Arms (or clears) injections as `bdev_error_inject_error` asks.
    pub fn inject(&self, params: &InjectParams) -> Result<(), RpcError> {
        let target = Target::parse(&params.io_type).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "io_type '{}' is not clear, read, write, unmap, flush or all",
                params.io_type
            ))
        })?;
        let error_type = ErrorType::parse(&params.error_type).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "error_type '{}' is not failure, pending, corrupt_data, nomem or nvme_failure",
                params.error_type
            ))
        })?;
        if target != Target::Clear && error_type == ErrorType::CorruptData && params.corrupt_value == 0 {
            return Err(RpcError::invalid_params("corrupt_data needs a non-zero corrupt_value (its bits are flipped)"));
        }
        if params.nvme_sct > SCT_MAX {
            return Err(RpcError::invalid_params(format!("nvme_sct {} exceeds {SCT_MAX}", params.nvme_sct)));
        }
        let injection = Injection {
            error_type,
            num: params.num,
            queue_depth: params.queue_depth,
            corrupt_offset: params.corrupt_offset,
            corrupt_value: params.corrupt_value,
            status: IoStatus::new(params.nvme_sct, params.nvme_sc),
        };
        self.injections.set(target, injection);
        peerless_core::log_info!(
            "error '{}': {} {} x{}",
            self.info.name,
            params.io_type,
            params.error_type,
            params.num
        );
        Ok(())
    }

    /// Injections of `io_type` still to fire.
    pub fn remaining(&self, io_type: IoType) -> u32 {
        self.injections.remaining(io_type)
    }
}

impl Bdev for ErrorBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, io_type: IoType) -> bool {
        self.base.bdev().supports(io_type)
    }

    /// Corruption goes through the gate's accessors, so any memory the base can reach is
    /// fine here too.
    fn accepts_domain(&self, domain: peerless_core::mem::DomainId) -> bool {
        self.base.bdev().accepts_domain(domain)
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        channel::ErrorChannel::boxed(ctx, &self.device, self.injections.clone())
    }

    fn driver_specific(&self) -> Value {
        json!({"error_disk": {"base_bdev": self.base.name()}})
    }

    fn config_entry(&self) -> Option<Value> {
        Some(json!({"method": "bdev_error_create", "params": {
            "base_name": self.base.name(), "uuid": self.info.uuid.to_string(),
        }}))
    }

    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base.name().to_string()]
    }

    /// Closes the base's descriptor, releasing its claim.
    fn destruct(&self) {
        self.base.release();
    }
}

impl BdevModule for ErrorModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method("bdev_error_create", StateMask::RUNTIME, move |_, params: CreateParams, responder| {
            match ErrorBdev::create(&bdevs, &params.base_name, params.uuid.as_deref()) {
                Ok(_) => responder.ok_true(),
                Err(err) => responder.err(err),
            }
        });
        let bdevs = manager.clone();
        registry.method("bdev_error_inject_error", StateMask::RUNTIME, move |_, params: InjectParams, responder| {
            match bdevs.get_as::<ErrorBdev>(&params.name, MODULE_NAME) {
                Ok(bdev) => match bdev.inject(&params) {
                    Ok(()) => responder.ok_true(),
                    Err(err) => responder.err(err),
                },
                Err(err) => responder.err(err.into()),
            }
        });
        let bdevs = manager.clone();
        registry.method(
            "bdev_error_delete",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: NameParams, responder| match bdevs.unregister_by_name(
                Some(ctx),
                &params.name,
                MODULE_NAME,
            ) {
                Ok(()) => responder.ok_true(),
                Err(err) => responder.err(err.into()),
            },
        );
    }
}
