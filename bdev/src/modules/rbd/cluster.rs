//! Registered Ceph clusters (`bdev_rbd_register_cluster`): one librados connection per
//! name, shared by every bdev created with that `cluster_name`. The registry is
//! process-wide, as SPDK's is: one target per process.
//!
//! Connecting blocks for the monitor's answer; it runs on the thread that handles the
//! RPC (the app thread), as SPDK's does, so a slow monitor delays other RPCs, never I/O
//! on the other reactors' threads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use peerless_core::rpc::RpcError;
use serde_json::{json, Map, Value};
use spdk_sys::rbd::{Cluster, ClusterConfig};

/// A registered cluster: how it was asked for, its connection, and who uses it.
pub(super) struct Registered {
    pub(super) name: String,
    pub(super) config: ClusterConfig,
    /// `config_param` as given, for `bdev_rbd_get_clusters_info` and `save_config`.
    pub(super) config_param: Option<Map<String, Value>>,
    pub(super) connection: Arc<Cluster>,
    /// Bdevs created on it; unregistering waits for none.
    users: Mutex<BTreeSet<String>>,
}

fn registry() -> &'static Mutex<BTreeMap<String, Arc<Registered>>> {
    static CLUSTERS: OnceLock<Mutex<BTreeMap<String, Arc<Registered>>>> = OnceLock::new();
    CLUSTERS.get_or_init(Default::default)
}

/// Ceph's options as (key, value) pairs, refusing values that are not strings, as
/// librados's `rados_conf_set` takes only text.
pub(super) fn options(field: &str, map: &Map<String, Value>) -> Result<Vec<(String, String)>, RpcError> {
    map.iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            other => Err(RpcError::invalid_params(format!("{field}.{key}: expected a string, got {other}"))),
        })
        .collect()
}

pub(super) fn register(
    name: String,
    config: ClusterConfig,
    config_param: Option<Map<String, Value>>,
) -> Result<String, RpcError> {
    if registry().lock().contains_key(&name) {
        return Err(RpcError::exists(format!("cluster '{name}' is already registered")));
    }
    let connection = Cluster::connect(&config)
        .map_err(|err| RpcError::errno(errno(err.errno), format!("cluster '{name}': {err}")))?;
    let mut clusters = registry().lock();
    if clusters.contains_key(&name) {
        return Err(RpcError::exists(format!("cluster '{name}' is already registered")));
    }
    peerless_core::log_info!("rbd: cluster '{name}' connected");
    clusters.insert(
        name.clone(),
        Arc::new(Registered { name: name.clone(), config, config_param, connection, users: Mutex::default() }),
    );
    Ok(name)
}

pub(super) fn unregister(name: &str) -> Result<(), RpcError> {
    let removed = {
        let mut clusters = registry().lock();
        let Some(entry) = clusters.get(name) else {
            return Err(RpcError::no_such_device(format!("no cluster '{name}'")));
        };
        let users = entry.users.lock().clone();
        if !users.is_empty() {
            let list: Vec<String> = users.into_iter().collect();
            return Err(RpcError::errno(
                nix::errno::Errno::EBUSY,
                format!("cluster '{name}' is used by bdevs {}", list.join(", ")),
            ));
        }
        clusters.remove(name)
    };
    // Shutting the connection down waits for librados: outside the registry's lock.
    drop(removed);
    Ok(())
}

/// The cluster `name` for bdev `bdev`, recorded as its user.
pub(super) fn acquire(name: &str, bdev: &str) -> Result<Arc<Registered>, RpcError> {
    let clusters = registry().lock();
    let entry = clusters.get(name).ok_or_else(|| RpcError::no_such_device(format!("no cluster '{name}'")))?;
    entry.users.lock().insert(bdev.to_string());
    Ok(entry.clone())
}

pub(super) fn release(entry: &Registered, bdev: &str) {
    entry.users.lock().remove(bdev);
}

impl Registered {
    fn params(&self) -> Value {
        let mut params = Map::new();
        params.insert("name".into(), json!(self.name));
        if let Some(user_id) = &self.config.user_id {
            params.insert("user_id".into(), json!(user_id));
        }
        if let Some(config_param) = &self.config_param {
            params.insert("config_param".into(), Value::Object(config_param.clone()));
        }
        if let Some(config_file) = &self.config.config_file {
            params.insert("config_file".into(), json!(config_file));
        }
        if let Some(key_file) = &self.config.key_file {
            params.insert("key_file".into(), json!(key_file));
        }
        Value::Object(params)
    }
}

/// `bdev_rbd_get_clusters_info`: every cluster, or the one named.
pub(super) fn info(name: Option<&str>) -> Result<Value, RpcError> {
    let clusters = registry().lock();
    match name {
        Some(name) => clusters
            .get(name)
            .map(|entry| info_of(entry))
            .ok_or_else(|| RpcError::no_such_device(format!("no cluster '{name}'"))),
        None => Ok(Value::Array(clusters.values().map(|entry| info_of(entry)).collect())),
    }
}

fn info_of(entry: &Registered) -> Value {
    let mut value = entry.params();
    if let Value::Object(map) = &mut value {
        // SPDK reports the name as `cluster_name` here.
        if let Some(name) = map.remove("name") {
            map.insert("cluster_name".into(), name);
        }
        map.insert("bdevs".into(), json!(entry.users.lock().iter().collect::<Vec<_>>()));
    }
    value
}

/// The `bdev_rbd_register_cluster` calls that recreate every cluster (`save_config`),
/// to replay before the bdevs that name them.
pub fn config_entries() -> Vec<Value> {
    registry()
        .lock()
        .values()
        .map(|entry| json!({"method": "bdev_rbd_register_cluster", "params": entry.params()}))
        .collect()
}

pub(super) fn errno(value: i32) -> nix::errno::Errno {
    match nix::errno::Errno::from_raw(value) {
        nix::errno::Errno::UnknownErrno => nix::errno::Errno::EIO,
        known => known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_keep_their_order_and_refuse_non_strings() {
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"mon_host": "127.0.0.1:6789", "rados_osd_op_timeout": "5"}"#).unwrap();
        assert_eq!(
            options("config_param", &map).unwrap(),
            vec![("mon_host".into(), "127.0.0.1:6789".into()), ("rados_osd_op_timeout".into(), "5".into())]
        );
        let map: Map<String, Value> = serde_json::from_str(r#"{"rados_osd_op_timeout": 5}"#).unwrap();
        let err = options("config", &map).unwrap_err();
        assert!(err.message.contains("config.rados_osd_op_timeout"), "{err}");
    }

    #[test]
    fn unknown_clusters_are_refused_by_name() {
        assert!(unregister("no-such-cluster").unwrap_err().message.contains("no-such-cluster"));
        assert!(acquire("no-such-cluster", "bdev").is_err());
        assert!(info(Some("no-such-cluster")).is_err());
    }

    #[test]
    fn errnos_map_and_unknown_ones_become_eio() {
        assert_eq!(errno(libc::ENOENT), nix::errno::Errno::ENOENT);
        assert_eq!(errno(100_000), nix::errno::Errno::EIO);
    }
}
