//! bdev_null: a device with no storage. Writes are dropped and reads leave the buffers
//! as they are, as SPDK's null bdev does, so it measures the framework's own cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo, SubmitError, Uuid};
use crate::io::{BdevIo, IoType};
use crate::manager::BdevManager;
use crate::modules::BdevModule;
use crate::status::IoStatus;

pub const PRODUCT_NAME: &str = "Null disk";
pub const MODULE_NAME: &str = "null";

pub struct NullModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    block_size: u32,
    num_blocks: u64,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    physical_block_size: Option<u32>,
    #[serde(default)]
    md_size: u32,
    #[serde(default)]
    dif_type: u32,
    #[serde(default)]
    dif_pi_format: u32,
    #[serde(default)]
    dif_is_head_of_md: bool,
    #[serde(default)]
    preferred_write_granularity: u32,
    #[serde(default)]
    preferred_write_alignment: u32,
    #[serde(default)]
    optimal_write_size: u32,
    #[serde(default)]
    preferred_unmap_granularity: u32,
    #[serde(default)]
    preferred_unmap_alignment: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeParams {
    name: String,
    /// The new size in MiB, as SPDK takes it.
    new_size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

pub(crate) fn parse_uuid(text: Option<&str>) -> Result<Uuid, RpcError> {
    match text {
        None => Ok(Uuid::random()),
        Some(text) => Uuid::parse(text)
            .ok_or_else(|| RpcError::invalid_params(format!("uuid '{text}' is not a UUID (8-4-4-4-12 hex)"))),
    }
}

/// Metadata and protection information (SPDK's md_* and dif_* parameters) are not
/// supported yet. A bdev with them is refused, and so is any parameter that only
/// describes their layout: given anything but its default, each is named, so nothing
/// asked for is silently dropped.
pub(crate) struct Metadata {
    pub md_size: u32,
    pub dif_type: u32,
    pub dif_is_head_of_md: bool,
    pub dif_pi_format: u32,
    pub md_interleave: bool,
}

pub(crate) fn no_metadata(metadata: Metadata) -> Result<(), RpcError> {
    let given = [
        ("md_size", metadata.md_size != 0),
        ("dif_type", metadata.dif_type != 0),
        ("dif_is_head_of_md", metadata.dif_is_head_of_md),
        ("dif_pi_format", metadata.dif_pi_format != 0),
        ("md_interleave", metadata.md_interleave),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((param, _)) => Err(RpcError::invalid_params(format!(
            "{param}: metadata and protection information are not supported yet; create the bdev without them \
             (omit it, or pass 0 / false)"
        ))),
        None => Ok(()),
    }
}

/// A parameter this bdev type takes from SPDK but does not act on: its default (which
/// is what the bdev does) is accepted, anything else is refused, naming it and `why`.
pub(crate) fn only_default<T: PartialEq + std::fmt::Display>(
    param: &str,
    value: T,
    default: T,
    why: &str,
) -> Result<(), RpcError> {
    if value == default {
        return Ok(());
    }
    Err(RpcError::invalid_params(format!("{param} {value}: {why}; omit it or pass {default}")))
}

impl BdevModule for NullModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method("bdev_null_create", StateMask::RUNTIME, move |_, params: CreateParams, responder| {
            let result = (|| {
                no_metadata(Metadata {
                    md_size: params.md_size,
                    dif_type: params.dif_type,
                    dif_is_head_of_md: params.dif_is_head_of_md,
                    dif_pi_format: params.dif_pi_format,
                    md_interleave: false,
                })?;
                let physical = params.physical_block_size.unwrap_or(params.block_size);
                only_default("physical_block_size", physical, params.block_size, "only the block size is supported")?;
                for (param, value) in [
                    ("preferred_write_granularity", params.preferred_write_granularity),
                    ("preferred_write_alignment", params.preferred_write_alignment),
                    ("optimal_write_size", params.optimal_write_size),
                    ("preferred_unmap_granularity", params.preferred_unmap_granularity),
                    ("preferred_unmap_alignment", params.preferred_unmap_alignment),
                ] {
                    only_default(param, value, 0, "I/O size and alignment hints are not reported yet")?;
                }
                let info = BdevInfo {
                    name: params.name.clone(),
                    product_name: PRODUCT_NAME.into(),
                    block_size: params.block_size,
                    num_blocks: params.num_blocks,
                    uuid: parse_uuid(params.uuid.as_deref())?,
                    max_io_blocks: 0,
                };
                bdevs.register(Arc::new(NullBdev::new(info)))?;
                Ok::<_, RpcError>(params.name)
            })();
            match result {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            }
        });
        let bdevs = manager.clone();
        registry.method(
            "bdev_null_resize",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: ResizeParams, responder| match resize(ctx, &bdevs, &params) {
                Ok(()) => responder.ok_true(),
                Err(err) => responder.err(err),
            },
        );
        let bdevs = manager.clone();
        registry.method(
            "bdev_null_delete",
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

/// SPDK's `bdev_null_resize`: to `new_size` MiB, never below the size now (in whole MiB,
/// as SPDK compares).
fn resize(ctx: &mut ThreadCtx, manager: &BdevManager, params: &ResizeParams) -> Result<(), RpcError> {
    let bdev = manager.get_as::<NullBdev>(&params.name, MODULE_NAME)?;
    let block_size = u64::from(bdev.info.block_size);
    let current_mib = (manager.num_blocks(&params.name)? * block_size) >> 20;
    if params.new_size < current_mib {
        return Err(RpcError::invalid_params(format!(
            "new_size: {} MiB is smaller than bdev '{}' now ({current_mib} MiB)",
            params.new_size, params.name
        )));
    }
    let num_blocks = params
        .new_size
        .checked_mul(1 << 20)
        .map(|bytes| bytes / block_size)
        .ok_or_else(|| RpcError::invalid_params(format!("new_size: {} MiB is too large", params.new_size)))?;
    manager.notify_resize(Some(ctx), &params.name, num_blocks)?;
    bdev.num_blocks.store(num_blocks, Ordering::Release);
    Ok(())
}

pub struct NullBdev {
    info: BdevInfo,
    /// The size now, for `save_config` (it starts as `info`'s and moves on a resize).
    num_blocks: AtomicU64,
}

impl NullBdev {
    pub fn new(info: BdevInfo) -> NullBdev {
        let num_blocks = AtomicU64::new(info.num_blocks);
        NullBdev { info, num_blocks }
    }
}

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, io_type: IoType) -> bool {
        io_type != IoType::Compare
    }

    fn create_channel(&self, _ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        Box::new(NullChannel)
    }

    fn config_entry(&self) -> Option<Value> {
        Some(json!({"method": "bdev_null_create", "params": {
            "name": self.info.name, "block_size": self.info.block_size,
            "num_blocks": self.num_blocks.load(Ordering::Acquire), "uuid": self.info.uuid.to_string(),
        }}))
    }
}

struct NullChannel;

impl BdevChannelOps for NullChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        io.complete(IoStatus::SUCCESS);
        Ok(())
    }
}
