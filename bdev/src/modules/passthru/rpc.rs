//! `bdev_passthru_create` and `bdev_passthru_delete` (RPC.md 5.3).

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;

use super::{create, delete, CreateParams, PassthruBdev};
use crate::manager::BdevManager;
use crate::modules::BdevModule;

pub struct PassthruModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    name: String,
}

/// The passthru bdevs these methods created, so delete can release a base; weak, so a
/// bdev removed otherwise (shutdown) is not kept alive here.
type Created = Arc<Mutex<Vec<Weak<PassthruBdev>>>>;

impl BdevModule for PassthruModule {
    fn name(&self) -> &'static str {
        "passthru"
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let created: Created = Arc::default();
        let (bdevs, table) = (manager.clone(), created.clone());
        registry.method("bdev_passthru_create", StateMask::RUNTIME, move |_, params: CreateParams, responder| {
            match create(&bdevs, params) {
                Ok(bdev) => {
                    let mut table = table.lock();
                    table.retain(|weak| weak.strong_count() > 0);
                    table.push(Arc::downgrade(&bdev));
                    responder.ok(bdev.name())
                }
                Err(err) => responder.err(err),
            }
        });
        let (bdevs, table) = (manager.clone(), created);
        registry.method(
            "bdev_passthru_delete",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: DeleteParams, responder| {
                let found = table.lock().iter().filter_map(Weak::upgrade).find(|bdev| bdev.name() == params.name);
                match found {
                    Some(bdev) => match delete(Some(ctx), &bdevs, &bdev) {
                        Ok(()) => {
                            table.lock().retain(|weak| !std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&bdev)));
                            responder.ok_true()
                        }
                        Err(err) => responder.err(err.into()),
                    },
                    None => responder.err(RpcError::no_such_device(format!(
                        "No such device: '{}' is not a passthru bdev",
                        params.name
                    ))),
                }
            },
        );
    }
}
