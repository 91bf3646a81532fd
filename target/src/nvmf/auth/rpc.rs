//! The authentication RPCs with SPDK's names and parameters: `nvmf_subsystem_set_keys`
//! and `nvmf_set_config`'s `dhchap_digests` and `dhchap_dhgroups`; the key parameters of
//! `nvmf_subsystem_add_host` resolve through [`resolve_keys`]. Keys are named, never
//! given: the keyring holds the files.

use peerless_core::keyring::Keyring;
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, Responder, RpcError, StateMask};
use serde::Deserialize;

use super::session::HostKeys;
use super::{AuthConfig, DhGroup, Digest};
use crate::nvmf::{NvmfError, NvmfTarget};

pub fn register(registry: &mut Registry, target: &NvmfTarget, keyring: &Keyring) {
    let (set_keys_target, set_keys_keyring) = (target.clone(), keyring.clone());
    registry.method(
        "nvmf_subsystem_set_keys",
        StateMask::RUNTIME,
        move |_: &mut ThreadCtx, params: SetKeys, responder| {
            set_keys(&set_keys_target, &set_keys_keyring, params, responder)
        },
    );
    // SPDK takes nvmf_set_config before init only; the digests and groups are read at
    // each negotiation, so changing them later is safe and takes effect at once.
    let config_target = target.clone();
    registry.method("nvmf_set_config", StateMask::ANY, move |_: &mut ThreadCtx, params: SetConfig, responder| {
        match set_config(&config_target, params) {
            Ok(()) => responder.ok_true(),
            Err(err) => responder.err(err),
        }
    });
}

/// The keyring references `dhchap_key` and `dhchap_ctrlr_key` name; an unknown name is
/// refused by parameter and name.
pub fn resolve_keys(
    keyring: &Keyring,
    dhchap_key: Option<&str>,
    dhchap_ctrlr_key: Option<&str>,
) -> Result<HostKeys, RpcError> {
    let resolve = |param: &str, name: Option<&str>| {
        name.map(|name| {
            keyring.get(name).map_err(|err| {
                RpcError::invalid_params(format!("{param}: {err} (add it first with keyring_file_add_key)"))
            })
        })
        .transpose()
    };
    Ok(HostKeys {
        dhchap_key: resolve("dhchap_key", dhchap_key)?,
        dhchap_ctrlr_key: resolve("dhchap_ctrlr_key", dhchap_ctrlr_key)?,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetKeys {
    nqn: String,
    host: String,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    dhchap_key: Option<String>,
    #[serde(default)]
    dhchap_ctrlr_key: Option<String>,
}

fn set_keys(target: &NvmfTarget, keyring: &Keyring, params: SetKeys, responder: Responder) {
    let result = (|| {
        NvmfTarget::check_name(params.tgt_name.as_deref())?;
        let keys = resolve_keys(keyring, params.dhchap_key.as_deref(), params.dhchap_ctrlr_key.as_deref())?;
        Ok::<_, RpcError>(target.set_host_keys(&params.nqn, &params.host, keys)?)
    })();
    match result {
        Ok(()) => responder.ok_true(),
        Err(err) => responder.err(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetConfig {
    #[serde(default)]
    dhchap_digests: Option<Vec<String>>,
    #[serde(default)]
    dhchap_dhgroups: Option<Vec<String>>,
    #[serde(default)]
    admin_cmd_passthru: Option<serde_json::Value>,
    #[serde(default)]
    poll_groups_mask: Option<serde_json::Value>,
    #[serde(default)]
    discovery_filter: Option<serde_json::Value>,
}

/// Names to values, refusing an unknown name or an empty list by parameter.
fn parse_list<T: Copy>(
    param: &'static str,
    names: &[String],
    parse: fn(&str) -> Option<T>,
) -> Result<Vec<T>, RpcError> {
    if names.is_empty() {
        return Err(RpcError::invalid_params(format!("{param}: at least one is needed")));
    }
    names
        .iter()
        .map(|name| parse(name).ok_or_else(|| RpcError::invalid_params(format!("{param}: unknown '{name}'"))))
        .collect()
}

fn set_config(target: &NvmfTarget, params: SetConfig) -> Result<(), RpcError> {
    for (param, given) in [
        ("admin_cmd_passthru", params.admin_cmd_passthru.is_some()),
        ("poll_groups_mask", params.poll_groups_mask.is_some()),
        ("discovery_filter", params.discovery_filter.is_some()),
    ] {
        if given {
            return Err(NvmfError::unsupported(param, "not supported by this target").into());
        }
    }
    let mut config = target.0.auth_config.lock();
    let mut next: AuthConfig = config.clone();
    if let Some(digests) = &params.dhchap_digests {
        next.digests = parse_list("dhchap_digests", digests, Digest::from_name)?;
    }
    if let Some(groups) = &params.dhchap_dhgroups {
        next.dhgroups = parse_list("dhchap_dhgroups", groups, DhGroup::from_name)?;
    }
    *config = next;
    Ok(())
}
