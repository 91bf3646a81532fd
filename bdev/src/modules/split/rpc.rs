//! `bdev_split_create` and `bdev_split_delete`.

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, StateMask};
use serde::Deserialize;

use super::{create, delete, CreateParams, MODULE_NAME};
use crate::manager::BdevManager;
use crate::modules::BdevModule;

pub struct SplitModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    base_bdev: String,
}

impl BdevModule for SplitModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method(
            "bdev_split_create",
            StateMask::RUNTIME,
            move |_, params: CreateParams, responder| match create(&bdevs, params) {
                Ok(parts) => responder.ok(parts.iter().map(|part| part.name()).collect::<Vec<String>>()),
                Err(err) => responder.err(err),
            },
        );
        let bdevs = manager.clone();
        registry.method(
            "bdev_split_delete",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: DeleteParams, responder| match delete(
                Some(ctx),
                &bdevs,
                &params.base_bdev,
            ) {
                Ok(()) => responder.ok_true(),
                Err(err) => responder.err(err.into()),
            },
        );
    }
}
