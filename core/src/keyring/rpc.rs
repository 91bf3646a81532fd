//! The keyring's RPCs, with SPDK's names and parameters, and its framework subsystem,
//! whose saved config re-adds each key by name and path (never by contents).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{KeyError, Keyring};
use crate::reactor::{Subsystem, ThreadCtx};
use crate::rpc::error::RpcError;
use crate::rpc::registry::{Registry, StateMask};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddFileKey {
    name: String,
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveKey {
    name: String,
}

fn rpc_error(err: KeyError) -> RpcError {
    RpcError::errno(err.errno(), err.to_string())
}

pub fn register(registry: &mut Registry, keyring: &Keyring) {
    let keys = keyring.clone();
    registry.method("keyring_file_add_key", StateMask::ANY, move |_, params: AddFileKey, responder| {
        match keys.add_file_key(&params.name, &params.path) {
            Ok(()) => {
                crate::log_info!("keyring: added key '{}' from {}", params.name, params.path.display());
                responder.ok_true()
            }
            Err(err) => responder.err(rpc_error(err)),
        }
    });
    let keys = keyring.clone();
    registry.method("keyring_file_remove_key", StateMask::ANY, move |_, params: RemoveKey, responder| {
        match keys.remove(&params.name) {
            Ok(()) => responder.ok_true(),
            Err(err) => responder.err(rpc_error(err)),
        }
    });
    let keys = keyring.clone();
    registry.method_without_params("keyring_get_keys", StateMask::ANY, move |_, responder| responder.ok(keys.list()));
}

/// The `keyring` subsystem. It has nothing to start or stop; it exists so that
/// `save_config` restores keys before the subsystems that name them.
pub struct KeyringSubsystem {
    pub keyring: Keyring,
}

impl Subsystem for KeyringSubsystem {
    fn name(&self) -> &'static str {
        "keyring"
    }

    fn config(&self, _ctx: &mut ThreadCtx) -> Vec<Value> {
        self.keyring
            .list()
            .into_iter()
            .filter(|key| !key.removed)
            .map(|key| json!({"method": "keyring_file_add_key", "params": {"name": key.name, "path": key.path}}))
            .collect()
    }
}
