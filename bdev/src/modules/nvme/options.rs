//! `bdev_nvme_set_options`: the driver's settings for the controllers attached after it,
//! as in SPDK, which refuses the call once any controller exists. Peerless implements the
//! command timeout and what happens when it passes; every other SPDK field is refused by
//! name rather than taken and ignored.

use std::time::Duration;

use nix::errno::Errno;
use parking_lot::Mutex;
use peerless_core::rpc::RpcError;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::timeout::{TimeoutAction, Timeouts, DEFAULT_ABORT_TIMEOUT, DEFAULT_TIMEOUT};

/// One set for the process, as SPDK's `g_opts`; saved with the bdev subsystem's config.
static OPTIONS: Mutex<Timeouts> = Mutex::new(Timeouts {
    timeout: DEFAULT_TIMEOUT,
    action: TimeoutAction::Abort,
    abort_timeout: DEFAULT_ABORT_TIMEOUT,
});

/// The flags SPDK's rpc.py sends on every call, at these values, whatever was asked:
/// they ask for SPDK's default behaviour, which is also the only one here.
const SPDK_DEFAULTS_SENT: [(&str, Value); 8] = [
    ("disable_auto_failback", Value::Bool(false)),
    ("generate_uuids", Value::Bool(false)),
    ("nvme_error_stat", Value::Bool(false)),
    ("io_path_stat", Value::Bool(false)),
    ("allow_accel_sequence", Value::Bool(false)),
    ("delay_cmd_submit", Value::Bool(true)),
    ("rdma_umr_per_io", Value::Bool(false)),
    ("enable_flush", Value::Bool(false)),
];

#[derive(Deserialize)]
pub(super) struct SetOptionsParams {
    timeout_us: Option<u64>,
    action_on_timeout: Option<String>,
    /// Every other field, SPDK's or not: refused by name.
    #[serde(flatten)]
    others: Map<String, Value>,
}

/// Applies `params` unless a controller is attached (`attached`): they would reach only
/// the controllers attached later, as SPDK says by refusing.
pub(super) fn set(params: SetOptionsParams, attached: bool) -> Result<(), RpcError> {
    let asks_for_something = |(name, value): &(&String, &Value)| {
        SPDK_DEFAULTS_SENT.iter().all(|(default_name, default)| name.as_str() != *default_name || *value != default)
    };
    if let Some((name, _)) = params.others.iter().find(|field| asks_for_something(field)) {
        return Err(RpcError::invalid_params(format!(
            "{name}: not supported by Peerless's NVMe driver (it takes timeout_us and action_on_timeout)"
        )));
    }
    if attached {
        return Err(RpcError::errno(
            Errno::EPERM,
            "bdev_nvme_set_options applies to controllers attached after it: detach them first",
        ));
    }
    let mut options = OPTIONS.lock();
    let mut next = *options;
    if let Some(action) = &params.action_on_timeout {
        next.action = TimeoutAction::parse(&action.to_ascii_lowercase())
            .ok_or_else(|| RpcError::invalid_params(format!("action_on_timeout {action:?}: none, abort or reset")))?;
    }
    if let Some(us) = params.timeout_us {
        next.timeout = Duration::from_micros(us);
    }
    *options = next;
    Ok(())
}

/// What a controller attached now starts with.
pub(super) fn timeouts() -> Timeouts {
    *OPTIONS.lock()
}

/// The call that restores the options, when they are not the defaults; `save_config` puts
/// it before the attaches.
pub fn config_entry() -> Option<Value> {
    let options = *OPTIONS.lock();
    let default =
        Timeouts { timeout: DEFAULT_TIMEOUT, action: TimeoutAction::Abort, abort_timeout: DEFAULT_ABORT_TIMEOUT };
    (options != default).then(|| {
        json!({"method": "bdev_nvme_set_options", "params": {
            "timeout_us": options.timeout.as_micros() as u64,
            "action_on_timeout": options.action.as_str(),
        }})
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Value) -> SetOptionsParams {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn options_are_checked_refused_by_name_and_saved() {
        let err = set(params(json!({"timeout_us": 1, "keep_alive_timeout_ms": 10})), false).unwrap_err().to_string();
        assert!(err.contains("keep_alive_timeout_ms: not supported"), "{err}");
        let err = set(params(json!({"generate_uuids": true})), false).unwrap_err().to_string();
        assert!(err.contains("generate_uuids: not supported"), "{err}");
        let err = set(params(json!({"action_on_timeout": "explode"})), false).unwrap_err().to_string();
        assert!(err.contains("none, abort or reset"), "{err}");
        let err = set(params(json!({"timeout_us": 5})), true).unwrap_err().to_string();
        assert!(err.contains("detach them first"), "{err}");
        assert_eq!(timeouts().timeout, DEFAULT_TIMEOUT, "refusals change nothing");
        assert_eq!(config_entry(), None, "defaults are not saved");

        // What rpc.py sends along with every call asks for nothing.
        let rpc_py = json!({"timeout_us": 2_000_000, "action_on_timeout": "Reset", "disable_auto_failback": false,
            "generate_uuids": false, "nvme_error_stat": false, "io_path_stat": false, "allow_accel_sequence": false,
            "delay_cmd_submit": true});
        set(params(rpc_py), false).unwrap();
        assert_eq!((timeouts().timeout, timeouts().action), (Duration::from_secs(2), TimeoutAction::Reset));
        let entry = config_entry().unwrap();
        assert_eq!(entry["params"], json!({"timeout_us": 2_000_000, "action_on_timeout": "reset"}));
        // Replaying the saved entry gives the same options back.
        set(serde_json::from_value(entry["params"].clone()).unwrap(), false).unwrap();
        assert_eq!(timeouts().timeout, Duration::from_secs(2));
        set(params(json!({"timeout_us": DEFAULT_TIMEOUT.as_micros() as u64, "action_on_timeout": "abort"})), false)
            .unwrap();
        assert_eq!(config_entry(), None);
    }
}
