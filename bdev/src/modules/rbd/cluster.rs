//! Registered Ceph clusters (`bdev_rbd_register_cluster`): librados connections per name,
//! shared by every bdev created with that `cluster_name`. One connection by default, as
//! SPDK has; `connections` opens several (as Ceph's NVMe-oF gateway does with
//! `bdevs_per_cluster`), since one connection's messenger threads carry all of its
//! bdevs' traffic, and each new bdev takes the least used. The registry is process-wide,
//! as SPDK's is: one target per process.
//!
//! Connecting blocks for the monitor's answer; it runs on the thread that handles the
//! RPC (the app thread), as SPDK's does, so a slow monitor delays other RPCs, never I/O
//! on the other reactors' threads.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use peerless_core::rpc::RpcError;
use serde_json::{json, Map, Value};
use spdk_sys::rbd::{Cluster, ClusterConfig};

/// Most librados connections one registration may open: each has its own messenger
/// threads and sockets to every OSD.
pub(super) const MAX_CONNECTIONS: u32 = 16;

/// A registered cluster: how it was asked for, its connections, and who uses which.
pub(super) struct Registered {
    pub(super) name: String,
    pub(super) config: ClusterConfig,
    /// `config_param` as given, for `bdev_rbd_get_clusters_info` and `save_config`.
    pub(super) config_param: Option<Map<String, Value>>,
    connections: Vec<Arc<Cluster>>,
    /// Bdevs created on it, each with the index of its connection; unregistering waits
    /// for none.
    users: Mutex<BTreeMap<String, usize>>,
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
    connections: u32,
) -> Result<String, RpcError> {
    if !(1..=MAX_CONNECTIONS).contains(&connections) {
        return Err(RpcError::invalid_params(format!("connections {connections}: expected 1 to {MAX_CONNECTIONS}")));
    }
    if registry().lock().contains_key(&name) {
        return Err(RpcError::exists(format!("cluster '{name}' is already registered")));
    }
    let connections = (0..connections)
        .map(|_| Cluster::connect(&config))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| RpcError::errno(errno(err.errno), format!("cluster '{name}': {err}")))?;
    let mut clusters = registry().lock();
    if clusters.contains_key(&name) {
        return Err(RpcError::exists(format!("cluster '{name}' is already registered")));
    }
    peerless_core::log_info!("rbd: cluster '{name}' connected ({} connection(s))", connections.len());
    clusters.insert(
        name.clone(),
        Arc::new(Registered { name: name.clone(), config, config_param, connections, users: Mutex::default() }),
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
            let list: Vec<String> = users.into_keys().collect();
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

/// The cluster `name` for bdev `bdev`, recorded as its user, and the connection it is
/// to use: the one fewest bdevs use, the first of those on a tie.
pub(super) fn acquire(name: &str, bdev: &str) -> Result<(Arc<Registered>, Arc<Cluster>), RpcError> {
    let clusters = registry().lock();
    let entry = clusters.get(name).ok_or_else(|| RpcError::no_such_device(format!("no cluster '{name}'")))?;
    let mut users = entry.users.lock();
    let index = least_used(entry.connections.len(), users.values().copied());
    users.insert(bdev.to_string(), index);
    Ok((entry.clone(), entry.connections[index].clone()))
}

/// Of `count` connections, the one fewest users are on (the lowest index on a tie).
fn least_used(count: usize, in_use: impl Iterator<Item = usize>) -> usize {
    let mut load = vec![0usize; count];
    for index in in_use {
        if let Some(slot) = load.get_mut(index) {
            *slot += 1;
        }
    }
    (0..count).min_by_key(|index| load[*index]).unwrap_or(0)
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
        // SPDK has no such parameter: written only when it is not the default, so a
        // configuration without it still loads into SPDK.
        if self.connections.len() != 1 {
            params.insert("connections".into(), json!(self.connections.len()));
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
        let users = entry.users.lock();
        map.insert("bdevs".into(), json!(users.keys().collect::<Vec<_>>()));
        // Which bdevs share which connection, in connection order.
        let per_connection: Vec<Vec<&String>> = (0..entry.connections.len())
            .map(|index| users.iter().filter(|(_, used)| **used == index).map(|(bdev, _)| bdev).collect())
            .collect();
        map.insert("connections".into(), json!(per_connection));
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
    fn new_bdevs_take_the_least_used_connection() {
        assert_eq!(least_used(1, [0, 0, 0].into_iter()), 0);
        assert_eq!(least_used(3, [].into_iter()), 0);
        assert_eq!(least_used(3, [0].into_iter()), 1);
        assert_eq!(least_used(3, [0, 1].into_iter()), 2);
        assert_eq!(least_used(3, [0, 1, 2].into_iter()), 0);
        // A bdev deleted from the middle leaves a hole the next one fills.
        assert_eq!(least_used(3, [0, 2, 0, 2, 1].into_iter()), 1);
        assert_eq!(least_used(2, [5, 0].into_iter()), 1, "an index out of range is not counted");
    }

    #[test]
    fn connection_counts_outside_the_range_are_refused() {
        for connections in [0, MAX_CONNECTIONS + 1] {
            let err = register("c".into(), ClusterConfig::default(), None, connections).unwrap_err();
            assert!(err.message.contains("connections"), "{err}");
        }
    }

    #[test]
    fn errnos_map_and_unknown_ones_become_eio() {
        assert_eq!(errno(libc::ENOENT), nix::errno::Errno::ENOENT);
        assert_eq!(errno(100_000), nix::errno::Errno::EIO);
    }
}
