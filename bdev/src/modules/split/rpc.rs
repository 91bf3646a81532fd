//! `bdev_split_create` and `bdev_split_delete` (RPC.md 5.3).

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;

use super::{create, delete, CreateParams, SplitPart};
use crate::manager::BdevManager;
use crate::modules::BdevModule;

pub struct SplitModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    base_bdev: String,
}

/// The parts of each split these methods made, one group per base; weak, so parts
/// removed otherwise (shutdown) are not kept alive here.
type Created = Arc<Mutex<Vec<(String, Vec<Weak<SplitPart>>)>>>;

impl BdevModule for SplitModule {
    fn name(&self) -> &'static str {
        "split"
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let created: Created = Arc::default();
        let (bdevs, table) = (manager.clone(), created.clone());
        registry.method(
            "bdev_split_create",
            StateMask::RUNTIME,
            move |_, params: CreateParams, responder| match create(&bdevs, params) {
                Ok(parts) => {
                    let names: Vec<String> = parts.iter().map(|part| part.name()).collect();
                    let base = parts.first().map(|part| part.base_name().to_string()).unwrap_or_default();
                    let mut table = table.lock();
                    table.retain(|(_, parts)| parts.iter().any(|part| part.strong_count() > 0));
                    table.push((base, parts.iter().map(Arc::downgrade).collect()));
                    responder.ok(names)
                }
                Err(err) => responder.err(err),
            },
        );
        let (bdevs, table) = (manager.clone(), created);
        registry.method(
            "bdev_split_delete",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: DeleteParams, responder| {
                let mut table = table.lock();
                let Some(at) = table.iter().position(|(base, _)| *base == params.base_bdev) else {
                    return responder
                        .err(RpcError::no_such_device(format!("No such device: '{}' is not split", params.base_bdev)));
                };
                let parts: Vec<Arc<SplitPart>> = table[at].1.iter().filter_map(Weak::upgrade).collect();
                match delete(Some(ctx), &bdevs, &parts) {
                    Ok(()) => {
                        table.remove(at);
                        responder.ok_true()
                    }
                    Err(err) => responder.err(err.into()),
                }
            },
        );
    }
}
