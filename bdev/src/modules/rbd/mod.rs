//! bdev_rbd: Ceph RBD images through librbd (cargo feature `rbd`), with SPDK's RPC
//! methods and parameters: `bdev_rbd_register_cluster`, `bdev_rbd_unregister_cluster`,
//! `bdev_rbd_get_clusters_info`, `bdev_rbd_create`, `bdev_rbd_delete`, `bdev_rbd_resize`.
//!
//! A bdev either names a registered cluster (`cluster_name`: one shared librados
//! connection) or brings its own connection (`user_id` and `config`, as SPDK's does).
//! Connecting and opening block on the cluster and run on the RPC's thread (the app
//! thread); I/O never blocks: each thread's channel hands librbd asynchronous
//! operations and reaps their completions through an eventfd (`channel`).
//!
//! When the OSDs go away, librbd holds the operations and resumes them when the OSDs
//! return (the default, "wait"); with `rados_osd_op_timeout` set in the cluster's
//! options an operation fails after that many seconds with Namespace Not Ready, which a
//! host retries ("fail", for multipath set-ups that should move to another path).
//!
//! Exclusive lock: the image's `exclusive-lock` feature is left to librbd, which takes
//! the lock on the first write and hands it over cooperatively when another client
//! writes. Two targets exporting one image therefore both serve I/O correctly, at the
//! price of lock transfers if hosts write through both at once; ANA (one optimized path)
//! keeps writes on one target, so the lock stays put.

mod channel;
mod cluster;
mod resize;

use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use spdk_sys::rbd::{Cluster, ClusterConfig, Image, FEATURE_EXCLUSIVE_LOCK};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo};
use crate::io::IoType;
use crate::manager::BdevManager;
use crate::modules::null::parse_uuid;
use crate::modules::BdevModule;

pub use cluster::config_entries as cluster_config_entries;

pub const PRODUCT_NAME: &str = "Ceph Rbd Disk";
pub const MODULE_NAME: &str = "rbd";

pub struct RbdModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterClusterParams {
    name: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    config_param: Option<Map<String, Value>>,
    #[serde(default)]
    config_file: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    /// librados connections to open (Peerless's own parameter; SPDK opens one).
    #[serde(default = "one")]
    connections: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClustersInfoParams {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    pool_name: String,
    rbd_name: String,
    block_size: u32,
    #[serde(default)]
    config: Option<Map<String, Value>>,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
}

impl BdevModule for RbdModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        registry.method(
            "bdev_rbd_register_cluster",
            StateMask::RUNTIME,
            |_, params: RegisterClusterParams, responder| match register_cluster(params) {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            },
        );
        registry.method("bdev_rbd_unregister_cluster", StateMask::RUNTIME, |_, params: NameParams, responder| {
            match cluster::unregister(&params.name) {
                Ok(()) => responder.ok_true(),
                Err(err) => responder.err(err),
            }
        });
        registry.method(
            "bdev_rbd_get_clusters_info",
            StateMask::RUNTIME,
            |_, params: Option<ClustersInfoParams>, responder| match cluster::info(
                params.unwrap_or_default().name.as_deref(),
            ) {
                Ok(value) => responder.ok(value),
                Err(err) => responder.err(err),
            },
        );
        let bdevs = manager.clone();
        registry.method(
            "bdev_rbd_create",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: CreateParams, responder| match create(ctx, &bdevs, params) {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            },
        );
        let bdevs = manager.clone();
        registry.method("bdev_rbd_resize", StateMask::RUNTIME, move |_, params: resize::ResizeParams, responder| {
            resize::resize(&bdevs, params, responder)
        });
        let bdevs = manager.clone();
        registry.method(
            "bdev_rbd_delete",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: NameParams, responder| match bdevs.unregister_by_name(
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

fn register_cluster(params: RegisterClusterParams) -> Result<String, RpcError> {
    if params.name.is_empty() {
        return Err(RpcError::invalid_params("name: a cluster needs a name"));
    }
    let options = match &params.config_param {
        Some(map) => cluster::options("config_param", map)?,
        None => Vec::new(),
    };
    let config = ClusterConfig {
        user_id: params.user_id,
        config_file: params.config_file,
        key_file: params.key_file,
        params: options,
    };
    cluster::register(params.name, config, params.config_param, params.connections)
}

/// Where a bdev's connection comes from.
enum Connection {
    /// A registered cluster, shared.
    Registered(Arc<cluster::Registered>),
    /// Its own, from `user_id` and `config`.
    Own { user_id: Option<String>, config: Option<Map<String, Value>> },
}

fn default_name(manager: &BdevManager) -> String {
    (0..).map(|index| format!("Ceph{index}")).find(|name| manager.get(name).is_err()).unwrap_or_default()
}

fn create(ctx: &mut ThreadCtx, manager: &BdevManager, params: CreateParams) -> Result<String, RpcError> {
    let block_size = params.block_size;
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(RpcError::invalid_params(format!(
            "block_size {block_size}: expected a power of two from 512 to 65536"
        )));
    }
    let name = params.name.unwrap_or_else(|| default_name(manager));
    if manager.get(&name).is_ok() {
        return Err(crate::error::BdevError::Exists(name).into());
    }
    let uuid = parse_uuid(params.uuid.as_deref())?;
    let (connection, cluster) = match params.cluster_name {
        Some(cluster_name) => {
            // The cluster already says who connects and how: a second answer would be dropped.
            for (field, given) in [("user_id", params.user_id.is_some()), ("config", params.config.is_some())] {
                if given {
                    return Err(RpcError::invalid_params(format!(
                        "{field}: not taken with cluster_name '{cluster_name}', whose registration says how to connect"
                    )));
                }
            }
            let (entry, connection) = cluster::acquire(&cluster_name, &name)?;
            (Connection::Registered(entry), connection)
        }
        None => {
            let options = match &params.config {
                Some(map) => cluster::options("config", map)?,
                None => Vec::new(),
            };
            let config = ClusterConfig { user_id: params.user_id.clone(), params: options, ..Default::default() };
            let connection = Cluster::connect(&config)
                .map_err(|err| RpcError::errno(cluster::errno(err.errno), format!("bdev '{name}': {err}")))?;
            (Connection::Own { user_id: params.user_id, config: params.config }, connection)
        }
    };
    let release = |connection: &Connection| {
        if let Connection::Registered(entry) = connection {
            cluster::release(entry, &name);
        }
    };
    let opened = Image::open(&cluster, &params.pool_name, &params.rbd_name).and_then(|image| {
        let facts = image.facts()?;
        Ok((image, facts))
    });
    let (image, facts) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            release(&connection);
            return Err(RpcError::errno(cluster::errno(err.errno), format!("bdev '{name}': {err}")));
        }
    };
    let num_blocks = facts.size_bytes / u64::from(block_size);
    if num_blocks == 0 {
        release(&connection);
        return Err(RpcError::invalid_params(format!(
            "bdev '{name}': image {} holds {} bytes, less than one {block_size}-byte block",
            image.spec(),
            facts.size_bytes
        )));
    }
    let info = BdevInfo {
        name: name.clone(),
        product_name: PRODUCT_NAME.into(),
        block_size,
        num_blocks,
        uuid,
        max_io_blocks: 0,
    };
    peerless_core::log_info!(
        "rbd: bdev '{name}' on {} ({} bytes, exclusive-lock {})",
        image.spec(),
        facts.size_bytes,
        if facts.features & FEATURE_EXCLUSIVE_LOCK != 0 { "on, managed by librbd" } else { "off" }
    );
    let bdev = Arc::new(RbdBdev {
        info,
        image: Arc::new(image),
        pool_name: params.pool_name,
        rbd_name: params.rbd_name,
        connection,
        sizes: resize::SizeReporter::new(manager, ctx.handle()),
    });
    // A resize by another client must not go unseen: no watch, no bdev.
    if let Err(err) = resize::watch(&bdev).and_then(|()| manager.register(bdev.clone()).map_err(RpcError::from)) {
        release(&bdev.connection);
        return Err(err);
    }
    Ok(name)
}

pub struct RbdBdev {
    info: BdevInfo,
    image: Arc<Image>,
    pool_name: String,
    rbd_name: String,
    connection: Connection,
    sizes: resize::SizeReporter,
}

impl Bdev for RbdBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, io_type: IoType) -> bool {
        !matches!(io_type, IoType::Compare)
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        match channel::RbdChannel::new(ctx, &self.info.name, self.image.clone(), self.info.block_size) {
            Ok(channel) => Box::new(channel),
            Err(err) => {
                peerless_core::log_error!(
                    "rbd '{}': no completion queue on thread '{}' ({err}); its I/O will fail",
                    self.info.name,
                    ctx.name()
                );
                Box::new(FailedChannel)
            }
        }
    }

    fn driver_specific(&self) -> Value {
        let mut rbd = json!({"pool_name": self.pool_name, "rbd_name": self.rbd_name});
        if let (Value::Object(map), Connection::Registered(entry)) = (&mut rbd, &self.connection) {
            map.insert("cluster_name".into(), json!(entry.name));
        }
        json!({ "rbd": rbd })
    }

    fn config_entry(&self) -> Option<Value> {
        let mut params = json!({
            "name": self.info.name, "pool_name": self.pool_name, "rbd_name": self.rbd_name,
            "block_size": self.info.block_size, "uuid": self.info.uuid.to_string(),
        });
        let Value::Object(map) = &mut params else { return None };
        match &self.connection {
            Connection::Registered(entry) => {
                map.insert("cluster_name".into(), json!(entry.name));
            }
            Connection::Own { user_id, config } => {
                if let Some(user_id) = user_id {
                    map.insert("user_id".into(), json!(user_id));
                }
                if let Some(config) = config {
                    map.insert("config".into(), Value::Object(config.clone()));
                }
            }
        }
        Some(json!({"method": "bdev_rbd_create", "params": params}))
    }

    fn destruct(&self) {
        if let Connection::Registered(entry) = &self.connection {
            cluster::release(entry, &self.info.name);
        }
    }
}

/// How long an exiting target waits for its images to close; librbd's close waits for
/// the OSDs, which may be gone.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Lets the images dropped at shutdown finish closing (see `modules::finish`).
pub(crate) fn finish() {
    let pending = spdk_sys::rbd::wait_for_closes(CLOSE_WAIT);
    if pending > 0 {
        peerless_core::log_warn!(
            "rbd: {pending} image(s) still closing after {} s; exiting without them (their watches and \
             locks time out at the OSDs)",
            CLOSE_WAIT.as_secs()
        );
    }
}

/// A channel whose completion queue could not be made: fails every I/O.
struct FailedChannel;

impl BdevChannelOps for FailedChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<crate::io::BdevIo>) -> Result<(), crate::bdev::SubmitError> {
        io.complete(crate::status::IoStatus::INTERNAL_ERROR);
        Ok(())
    }
}
