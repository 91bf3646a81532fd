//! The layer's own RPC methods: `bdev_get_bdevs`, `bdev_get_iostat`,
//! `bdev_set_qos_limit`, `bdev_wait_for_examine`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_core::reactor::{PollStatus, ThreadCtx};
use peerless_core::rpc::framework::TICK_RATE_HZ;
use peerless_core::rpc::{Registry, Responder, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::bdev::Bdev;
use crate::io::IoType;
use crate::manager::{BdevManager, Entry};
use crate::qos::QosLimits;
use crate::stat::ResetMode;
use nix::errno::Errno;

/// How often `bdev_get_bdevs {timeout}` looks for a bdev that is not there yet.
const APPEAR_POLL_US: u64 = 1_000;

pub fn register(registry: &mut Registry, manager: &BdevManager) {
    let bdevs = manager.clone();
    registry.method("bdev_get_bdevs", StateMask::RUNTIME, move |ctx, params: GetBdevs, responder| {
        get_bdevs(ctx, &bdevs, params, responder)
    });
    let bdevs = manager.clone();
    registry.method("bdev_get_iostat", StateMask::RUNTIME, move |ctx, params: GetIostat, responder| {
        get_iostat(ctx, &bdevs, params, responder)
    });
    let bdevs = manager.clone();
    registry.method("bdev_set_qos_limit", StateMask::RUNTIME, move |ctx, params: SetQos, responder| {
        set_qos_limit(ctx, &bdevs, params, responder)
    });
    // Examine runs synchronously at registration here, so there is never anything to wait for.
    registry.method_without_params("bdev_wait_for_examine", StateMask::ANY, |_, responder| responder.ok_true());
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetBdevs {
    #[serde(default)]
    name: Option<String>,
    /// Milliseconds to wait for a named bdev to appear.
    #[serde(default)]
    timeout: u64,
}

/// One bdev as `bdev_get_bdevs` reports it, keys in SPDK's order.
pub fn bdev_json(manager: &BdevManager, bdev: &Arc<dyn Bdev>, qos: QosLimits) -> Value {
    let info = bdev.info();
    let claim = manager.claim_of(&info.name);
    let supported: Map<String, Value> = SPDK_IO_TYPES
        .iter()
        .map(|(key, io_type)| (key.to_string(), json!(io_type.is_some_and(|io_type| bdev.supports(io_type)))))
        .collect();
    let mut object = json!({
        "name": info.name,
        "aliases": [info.uuid.to_string()],
        "product_name": info.product_name,
        "block_size": info.block_size,
        "num_blocks": manager.num_blocks(&info.name).unwrap_or(info.num_blocks),
        "preferred_write_alignment": 0,
        "preferred_write_granularity": 0,
        "optimal_write_size": 0,
        "preferred_unmap_alignment": 0,
        "preferred_unmap_granularity": 0,
        "uuid": info.uuid.to_string(),
        "assigned_rate_limits": {
            "rw_ios_per_sec": qos.rw_ios_per_sec, "rw_mbytes_per_sec": qos.rw_mbytes_per_sec,
            "r_mbytes_per_sec": qos.r_mbytes_per_sec, "w_mbytes_per_sec": qos.w_mbytes_per_sec,
        },
        "claimed": claim.is_some(),
    });
    let map = object.as_object_mut().expect("built as an object");
    if let Some((claim_type, _)) = &claim {
        map.insert("claim_type".into(), json!(claim_type.as_str()));
    }
    map.insert("zoned".into(), json!(false));
    map.insert("supported_io_types".into(), Value::Object(supported));
    if let Some(provider) = bdev.p2p_provider() {
        map.insert("memory_domains".into(), json!([{"dma_device_type": "p2pmem", "dma_device_id": provider.name()}]));
    }
    map.insert("driver_specific".into(), bdev.driver_specific());
    object
}

/// SPDK's `supported_io_types` keys, mapped to ours where we carry the operation.
const SPDK_IO_TYPES: [(&str, Option<IoType>); 22] = [
    ("read", Some(IoType::Read)),
    ("write", Some(IoType::Write)),
    ("unmap", Some(IoType::Unmap)),
    ("flush", Some(IoType::Flush)),
    ("reset", Some(IoType::Reset)),
    ("nvme_admin", None),
    ("nvme_io", None),
    ("nvme_io_md", None),
    ("write_zeroes", Some(IoType::WriteZeroes)),
    ("zcopy", None),
    ("get_zone_info", None),
    ("zone_management", None),
    ("zone_append", None),
    ("compare", Some(IoType::Compare)),
    ("compare_and_write", None),
    ("abort", None),
    ("seek_hole", None),
    ("seek_data", None),
    ("copy", None),
    ("nvme_iov_md", None),
    ("nvme_nssr", None),
    ("write_uncorrectable", None),
];

fn get_bdevs(ctx: &mut ThreadCtx, manager: &BdevManager, params: GetBdevs, responder: Responder) {
    let describe = |manager: &BdevManager, entry: &Arc<Entry>| bdev_json(manager, &entry.bdev, *entry.qos.lock());
    let Some(name) = params.name else {
        let all: Vec<Value> = manager.entries().iter().map(|entry| describe(manager, entry)).collect();
        responder.ok(all);
        return;
    };
    if let Ok(entry) = manager.entry(&name) {
        responder.ok(vec![describe(manager, &entry)]);
        return;
    }
    if params.timeout == 0 {
        responder.err(RpcError::no_such_device(format!("No such device: bdev '{name}' does not exist")));
        return;
    }
    // Wait for it to appear, polling on this thread until the deadline.
    let deadline = Instant::now() + Duration::from_millis(params.timeout);
    let manager = manager.clone();
    let mut responder = Some(responder);
    // Outlives this call: it answers, then finishes itself.
    ctx.poller("bdev_get_bdevs_wait", APPEAR_POLL_US, move |_| {
        let found = manager.entry(&name).ok();
        if found.is_none() && Instant::now() < deadline {
            return PollStatus::Idle;
        }
        if let Some(responder) = responder.take() {
            match found {
                Some(entry) => responder.ok(vec![describe(&manager, &entry)]),
                None => {
                    responder.err(RpcError::no_such_device(format!("No such device: bdev '{name}' did not appear")))
                }
            }
        }
        PollStatus::Done
    })
    .detach();
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetIostat {
    /// SPDK up to v25.09 names one bdev.
    #[serde(default)]
    name: Option<String>,
    /// SPDK v26.01 on names several.
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    per_channel: bool,
    #[serde(default)]
    reset_mode: Option<String>,
}

/// SPDK caps the `names` list.
const MAX_IOSTAT_NAMES: usize = 1024;

fn get_iostat(ctx: &mut ThreadCtx, manager: &BdevManager, params: GetIostat, responder: Responder) {
    let reset = match params.reset_mode.as_deref().map(|mode| (mode, ResetMode::parse(mode))) {
        None => ResetMode::None,
        Some((_, Some(mode))) => mode,
        Some((mode, None)) => {
            responder.err(RpcError::invalid_params(format!("reset_mode '{mode}': use all, maxmin, error or none")));
            return;
        }
    };
    if params.name.is_some() && params.names.is_some() {
        responder.err(RpcError::errno(Errno::EINVAL, "name and names cannot both be given"));
        return;
    }
    let mut wanted: Vec<String> = params.names.unwrap_or_default();
    wanted.extend(params.name);
    if wanted.len() > MAX_IOSTAT_NAMES {
        responder.err(RpcError::invalid_params(format!("at most {MAX_IOSTAT_NAMES} names")));
        return;
    }
    if params.per_channel {
        // As SPDK: channels are listed for exactly one bdev.
        let [name] = wanted.as_slice() else {
            responder.err(RpcError::errno(Errno::EINVAL, "per_channel needs exactly one bdev name"));
            return;
        };
        if let Err(err) = manager.entry(name) {
            responder.err(err.into());
            return;
        }
        let name = name.clone();
        let listed = manager.collect_channel_iostat(ctx, &name.clone(), reset, move |_, channels| {
            let channels: Vec<Value> = channels
                .iter()
                .map(|(thread_id, stat)| {
                    let mut entry = stat.to_json(&name);
                    let map = entry.as_object_mut().expect("built as an object");
                    map.remove("name");
                    map.remove("driver_specific");
                    let mut object = Map::new();
                    object.insert("thread_id".into(), json!(thread_id));
                    object.extend(std::mem::take(map));
                    Value::Object(object)
                })
                .collect();
            responder.ok(json!({"tick_rate": TICK_RATE_HZ, "ticks": now_ticks(), "name": name, "channels": channels}));
        });
        if let Err(err) = listed {
            // Deleted since the look-up above: the responder went with the closure and
            // answers as it drops; the log says why.
            peerless_core::log_notice!("bdev_get_iostat per_channel: {err}");
        }
        return;
    }
    let entries = if wanted.is_empty() {
        manager.entries()
    } else {
        let mut entries = Vec::new();
        for name in &wanted {
            match manager.entry(name) {
                Ok(entry) => entries.push(entry),
                Err(err) => {
                    responder.err(err.into());
                    return;
                }
            }
        }
        entries
    };
    let names: Vec<String> = entries.iter().map(|entry| entry.bdev.info().name.clone()).collect();
    manager.collect_iostat_and_reset(ctx, names, reset, move |_, stats| {
        let bdevs: Vec<Value> = stats.iter().map(|(name, stat)| stat.to_json(name)).collect();
        responder.ok(json!({"tick_rate": TICK_RATE_HZ, "ticks": now_ticks(), "bdevs": bdevs}));
    });
}

/// `ticks` of SPDK's iostat answers: its clock at the time of the answer, here in ns.
fn now_ticks() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetQos {
    name: String,
    #[serde(flatten)]
    limits: QosLimitsParams,
}

#[derive(Deserialize)]
pub struct QosLimitsParams {
    #[serde(default)]
    rw_ios_per_sec: Option<u64>,
    #[serde(default)]
    rw_mbytes_per_sec: Option<u64>,
    #[serde(default)]
    r_mbytes_per_sec: Option<u64>,
    #[serde(default)]
    w_mbytes_per_sec: Option<u64>,
}

fn set_qos_limit(ctx: &mut ThreadCtx, manager: &BdevManager, params: SetQos, responder: Responder) {
    let entry = match manager.entry(&params.name) {
        Ok(entry) => entry,
        Err(err) => return responder.err(err.into()),
    };
    let given = &params.limits;
    if given.rw_ios_per_sec.is_none()
        && given.rw_mbytes_per_sec.is_none()
        && given.r_mbytes_per_sec.is_none()
        && given.w_mbytes_per_sec.is_none()
    {
        return responder.err(RpcError::invalid_params("name at least one limit (0 removes a limit)"));
    }
    let mut limits = *entry.qos.lock();
    // Limits not named keep their value, as in SPDK.
    limits.rw_ios_per_sec = given.rw_ios_per_sec.unwrap_or(limits.rw_ios_per_sec);
    limits.rw_mbytes_per_sec = given.rw_mbytes_per_sec.unwrap_or(limits.rw_mbytes_per_sec);
    limits.r_mbytes_per_sec = given.r_mbytes_per_sec.unwrap_or(limits.r_mbytes_per_sec);
    limits.w_mbytes_per_sec = given.w_mbytes_per_sec.unwrap_or(limits.w_mbytes_per_sec);
    if let Err(why) = limits.validate() {
        return responder.err(RpcError::invalid_params(why));
    }
    // Checked above, so this cannot fail but for a bdev deleted meanwhile, in which case
    // the dropped responder answers with an error.
    let _ = manager.set_qos(ctx, &params.name, limits, move |_| responder.ok_true());
}
