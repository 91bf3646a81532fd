//! `bdev_passthru_create` and `bdev_passthru_delete`.

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, StateMask};
use serde::Deserialize;

use super::{create, CreateParams, MODULE_NAME};
use crate::manager::BdevManager;
use crate::modules::BdevModule;

pub struct PassthruModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    name: String,
}

impl BdevModule for PassthruModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method("bdev_passthru_create", StateMask::RUNTIME, move |_, params: CreateParams, responder| {
            match create(&bdevs, params) {
                Ok(bdev) => responder.ok(bdev.name()),
                Err(err) => responder.err(err),
            }
        });
        let bdevs = manager.clone();
        registry.method(
            "bdev_passthru_delete",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: DeleteParams, responder| match bdevs.unregister_by_name(
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
