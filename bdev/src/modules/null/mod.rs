//! bdev_null: a device with no storage. Writes are dropped and reads leave the buffers
//! as they are, as SPDK's null bdev does, so it measures the framework's own cost.

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

pub(crate) fn no_metadata(md_size: u32, dif_type: u32) -> Result<(), RpcError> {
    if md_size != 0 || dif_type != 0 {
        return Err(RpcError::invalid_params(
            "md_size and dif_type are not supported yet: create the bdev without metadata",
        ));
    }
    Ok(())
}

impl BdevModule for NullModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method("bdev_null_create", StateMask::RUNTIME, move |_, params: CreateParams, responder| {
            let result = (|| {
                no_metadata(params.md_size, params.dif_type)?;
                let _ = (params.physical_block_size, params.dif_pi_format, params.dif_is_head_of_md);
                let _ =
                    (params.preferred_write_granularity, params.preferred_write_alignment, params.optimal_write_size);
                let _ = (params.preferred_unmap_granularity, params.preferred_unmap_alignment);
                let info = BdevInfo {
                    name: params.name.clone(),
                    product_name: PRODUCT_NAME.into(),
                    block_size: params.block_size,
                    num_blocks: params.num_blocks,
                    uuid: parse_uuid(params.uuid.as_deref())?,
                    max_io_blocks: 0,
                };
                bdevs.register(Arc::new(NullBdev { info }))?;
                Ok::<_, RpcError>(params.name)
            })();
            match result {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            }
        });
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

pub struct NullBdev {
    info: BdevInfo,
}

impl NullBdev {
    pub fn new(info: BdevInfo) -> NullBdev {
        NullBdev { info }
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
            "num_blocks": self.info.num_blocks, "uuid": self.info.uuid.to_string(),
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
