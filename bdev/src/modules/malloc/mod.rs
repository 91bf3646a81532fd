//! bdev_malloc: a RAM disk. Its memory is a `SharedRegion` every reactor reaches
//! directly; the I/O's side of each copy goes through the tag gate, so a malloc bdev
//! only ever sees host buffers (the layer bounces anything else, and counts it).

use std::sync::Arc;

use peerless_core::mem::SharedRegion;
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo, SubmitError};
use crate::io::{BdevIo, IoType};
use crate::manager::BdevManager;
use crate::modules::null::{no_metadata, only_default, parse_uuid, Metadata};
use crate::modules::BdevModule;
use crate::status::IoStatus;

pub const PRODUCT_NAME: &str = "Malloc disk";
pub const MODULE_NAME: &str = "malloc";
/// SPDK's "any NUMA node" (SPDK_ENV_NUMA_ID_ANY).
const NUMA_ID_ANY: i32 = -1;

pub struct MallocModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    #[serde(default)]
    name: Option<String>,
    block_size: u32,
    num_blocks: u64,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    optimal_io_boundary: u32,
    #[serde(default)]
    md_size: u32,
    #[serde(default)]
    md_interleave: bool,
    #[serde(default)]
    dif_type: u32,
    #[serde(default)]
    dif_is_head_of_md: bool,
    #[serde(default)]
    physical_block_size: u32,
    #[serde(default)]
    dif_pi_format: u32,
    #[serde(default)]
    numa_id: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

/// A malloc bdev's size is bounded by what one mapping may hold; beyond this the RPC
/// refuses instead of letting mmap fail with ENOMEM halfway through start-up.
const MAX_MALLOC_BYTES: u64 = 1 << 40;

fn default_name(manager: &BdevManager) -> String {
    (0..).map(|index| format!("Malloc{index}")).find(|name| manager.get(name).is_err()).unwrap_or_default()
}

impl BdevModule for MallocModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method(
            "bdev_malloc_create",
            StateMask::RUNTIME,
            move |_, params: CreateParams, responder| match create(&bdevs, params) {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            },
        );
        let bdevs = manager.clone();
        registry.method(
            "bdev_malloc_delete",
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

fn create(manager: &BdevManager, params: CreateParams) -> Result<String, RpcError> {
    no_metadata(Metadata {
        md_size: params.md_size,
        dif_type: params.dif_type,
        dif_is_head_of_md: params.dif_is_head_of_md,
        dif_pi_format: params.dif_pi_format,
        md_interleave: params.md_interleave,
    })?;
    only_default("numa_id", params.numa_id.unwrap_or(NUMA_ID_ANY), NUMA_ID_ANY, "memory is not placed by NUMA node")?;
    only_default("optimal_io_boundary", params.optimal_io_boundary, 0, "I/O is not split at a boundary")?;
    // SPDK's 0 means "the block size".
    let physical = match params.physical_block_size {
        0 => params.block_size,
        size => size,
    };
    only_default("physical_block_size", physical, params.block_size, "only the block size is supported")?;
    let name = params.name.unwrap_or_else(|| default_name(manager));
    let bytes = params
        .num_blocks
        .checked_mul(u64::from(params.block_size))
        .filter(|bytes| *bytes > 0 && *bytes <= MAX_MALLOC_BYTES)
        .ok_or_else(|| RpcError::invalid_params(format!("size must be 1 byte to {MAX_MALLOC_BYTES} bytes")))?;
    if manager.get(&name).is_ok() {
        return Err(crate::error::BdevError::Exists(name).into());
    }
    let info = BdevInfo {
        name: name.clone(),
        product_name: PRODUCT_NAME.into(),
        block_size: params.block_size,
        num_blocks: params.num_blocks,
        uuid: parse_uuid(params.uuid.as_deref())?,
        max_io_blocks: 0,
    };
    let region = SharedRegion::alloc(bytes as usize)
        .map_err(|err| RpcError::errno(nix::errno::Errno::ENOMEM, format!("cannot allocate {bytes} bytes: {err}")))?;
    manager.register(Arc::new(MallocBdev { info, region: Arc::new(region) }))?;
    Ok(name)
}

pub struct MallocBdev {
    info: BdevInfo,
    region: Arc<SharedRegion>,
}

impl MallocBdev {
    /// A malloc bdev outside the RPC path (tests, the in-process fio engine).
    pub fn new(info: BdevInfo) -> Result<MallocBdev, peerless_core::mem::Error> {
        let bytes = (info.num_blocks * u64::from(info.block_size)) as usize;
        Ok(MallocBdev { info, region: Arc::new(SharedRegion::alloc(bytes)?) })
    }
}

impl Bdev for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, _io_type: IoType) -> bool {
        true
    }

    fn create_channel(&self, _ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        Box::new(MallocChannel { region: self.region.clone(), block_size: u64::from(self.info.block_size) })
    }

    fn config_entry(&self) -> Option<Value> {
        Some(json!({"method": "bdev_malloc_create", "params": {
            "name": self.info.name, "num_blocks": self.info.num_blocks,
            "block_size": self.info.block_size, "uuid": self.info.uuid.to_string(),
        }}))
    }
}

struct MallocChannel {
    region: Arc<SharedRegion>,
    block_size: u64,
}

impl MallocChannel {
    fn execute(&self, io: &mut BdevIo) -> IoStatus {
        let offset = (io.offset_blocks * self.block_size) as usize;
        let len = (io.num_blocks * self.block_size) as usize;
        let moved = match io.io_type {
            IoType::Read => io.sgl_mut().and_then(|mut sgl| self.region.read_into(offset, &mut sgl)),
            IoType::Write => io.sgl().and_then(|sgl| self.region.write_from(offset, &sgl)),
            IoType::Compare => match io.sgl().and_then(|sgl| self.region.compare(offset, &sgl)) {
                Ok(None) => Ok(()),
                Ok(Some(_)) => return IoStatus::COMPARE_FAILURE,
                Err(err) => Err(err),
            },
            IoType::Unmap | IoType::WriteZeroes => self.region.fill(offset, len, 0),
            IoType::Flush | IoType::Reset => Ok(()),
        };
        match moved {
            Ok(()) => IoStatus::SUCCESS,
            Err(err) => {
                peerless_core::log_error!("malloc: {:?} at block {}: {err}", io.io_type, io.offset_blocks);
                IoStatus::DATA_TRANSFER_ERROR
            }
        }
    }
}

impl BdevChannelOps for MallocChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, mut io: Box<BdevIo>) -> Result<(), SubmitError> {
        let status = self.execute(&mut io);
        io.complete(status);
        Ok(())
    }
}
