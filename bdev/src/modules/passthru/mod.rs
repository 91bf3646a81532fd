//! bdev_passthru: SPDK's example of a stacked bdev. It claims its base for writing and
//! forwards every I/O to it unchanged, buffers and memory tags included: it accepts
//! whatever memory domains its base accepts, so a CMB buffer reaches the base device
//! (nvmesim) without a bounce in between.

mod rpc;

use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::mem::{DomainId, P2pProvider};
use peerless_core::reactor::ThreadCtx;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo};
use crate::error::BdevError;
use crate::io::IoType;
use crate::manager::{BdevManager, ClaimType, Desc};
use crate::modules::forward::ForwardChannel;
use crate::modules::null::parse_uuid;
use peerless_core::rpc::RpcError;

pub use rpc::PassthruModule;

pub const PRODUCT_NAME: &str = "passthru";
pub const MODULE_NAME: &str = "passthru";

/// `bdev_passthru_create` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub name: String,
    pub base_bdev_name: String,
    #[serde(default)]
    pub uuid: Option<String>,
}

pub struct PassthruBdev {
    info: BdevInfo,
    base_name: String,
    base: Arc<dyn Bdev>,
    /// The write descriptor holding the claim; taken by `destruct` so the base is free
    /// at once, whoever still holds this bdev's channels.
    desc: Mutex<Option<Desc>>,
}

/// Opens and claims `base_bdev_name`, then registers a passthru bdev on it.
pub fn create(manager: &BdevManager, params: CreateParams) -> Result<Arc<PassthruBdev>, RpcError> {
    let uuid = parse_uuid(params.uuid.as_deref())?;
    if manager.get(&params.name).is_ok() {
        return Err(BdevError::Exists(params.name).into());
    }
    // No hot-remove callback: the layer refuses to remove a base while a bdev built on
    // it is registered, and `destruct` closes this descriptor as the passthru goes.
    let desc = manager.open(&params.base_bdev_name, true, None, None)?;
    desc.claim(ClaimType::ExclusiveWrite, &format!("bdev_passthru {}", params.name))?;
    let base = desc.bdev().clone();
    let base_info = base.info();
    let info = BdevInfo {
        name: params.name.clone(),
        product_name: PRODUCT_NAME.into(),
        block_size: base_info.block_size,
        num_blocks: base_info.num_blocks,
        uuid,
        max_io_blocks: base_info.max_io_blocks,
    };
    let bdev = Arc::new(PassthruBdev {
        info,
        base_name: base_info.name.clone(),
        base: base.clone(),
        desc: Mutex::new(Some(desc)),
    });
    // On failure the descriptor drops with `bdev`, releasing the claim.
    manager.register(bdev.clone())?;
    Ok(bdev)
}

impl PassthruBdev {
    pub fn name(&self) -> &str {
        &self.info.name
    }
}

impl Bdev for PassthruBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, io_type: IoType) -> bool {
        self.base.supports(io_type)
    }

    fn accepts_domain(&self, domain: DomainId) -> bool {
        self.base.accepts_domain(domain)
    }

    fn p2p_provider(&self) -> Option<Arc<dyn P2pProvider>> {
        self.base.p2p_provider()
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        let base = self.desc.lock().as_ref().map(|desc| desc.channel(ctx));
        Box::new(ForwardChannel::new(ctx, &self.info.name, base, 0, self.info.num_blocks))
    }

    fn driver_specific(&self) -> Value {
        json!({"passthru": {"name": self.info.name, "base_bdev_name": self.base_name}})
    }

    fn config_entry(&self) -> Option<Value> {
        Some(json!({"method": "bdev_passthru_create", "params": {
            "name": self.info.name, "base_bdev_name": self.base_name, "uuid": self.info.uuid.to_string(),
        }}))
    }

    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base_name.clone()]
    }

    /// Closes the base's descriptor, releasing its claim.
    fn destruct(&self) {
        self.desc.lock().take();
    }
}
