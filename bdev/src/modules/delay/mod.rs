//! bdev_delay: SPDK's latency-injecting bdev. It stacks on a base bdev (claimed
//! exclusive_write), passes every I/O down, and holds each read and write completion for
//! its configured latency before passing it up: the p99 figure for one I/O in a hundred,
//! the average for the rest. Latencies change live: each channel reads them with a
//! relaxed atomic load per I/O, so an update needs no message round and no I/O takes a
//! lock or a read-modify-write. A reset aborts what every thread's channel holds (through
//! the module's own io device, as SPDK's `for_each_channel`), then resets the base.

mod channel;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo};
use crate::error::BdevError;
use crate::io::IoType;
use crate::manager::BdevManager;
use crate::modules::common::BaseBdev;
use crate::modules::null::parse_uuid;
use crate::modules::BdevModule;

pub const PRODUCT_NAME: &str = "delay";
pub const MODULE_NAME: &str = "delay";
/// The longest latency accepted, so a deadline can never overflow the clock (an hour
/// is far beyond any test of timeouts).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

pub struct DelayModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub name: String,
    pub base_bdev_name: String,
    pub avg_read_latency: u64,
    pub p99_read_latency: u64,
    pub avg_write_latency: u64,
    pub p99_write_latency: u64,
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateParams {
    delay_bdev_name: String,
    latency_type: String,
    latency_us: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

/// Which of the four latencies (`bdev_delay_update_latency`'s `latency_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyType {
    AvgRead,
    P99Read,
    AvgWrite,
    P99Write,
}

impl LatencyType {
    pub fn parse(text: &str) -> Option<LatencyType> {
        Some(match text {
            "avg_read" => LatencyType::AvgRead,
            "p99_read" => LatencyType::P99Read,
            "avg_write" => LatencyType::AvgWrite,
            "p99_write" => LatencyType::P99Write,
            _ => return None,
        })
    }
}

/// The four latencies in microseconds, shared with every channel.
#[derive(Debug, Default)]
pub struct Latencies([AtomicU64; 4]);

impl Latencies {
    fn slot(latency_type: LatencyType) -> usize {
        match latency_type {
            LatencyType::AvgRead => 0,
            LatencyType::P99Read => 1,
            LatencyType::AvgWrite => 2,
            LatencyType::P99Write => 3,
        }
    }

    pub fn get(&self, latency_type: LatencyType) -> u64 {
        self.0[Self::slot(latency_type)].load(Ordering::Relaxed)
    }

    pub fn set(&self, latency_type: LatencyType, latency_us: u64) {
        self.0[Self::slot(latency_type)].store(latency_us, Ordering::Relaxed);
    }

    /// The latency for an I/O of `io_type`, `p99` for the unlucky one in a hundred;
    /// None for types that pass through undelayed (as in SPDK: only reads and writes).
    pub fn for_io(&self, io_type: IoType, p99: bool) -> Option<u64> {
        let latency_type = match (io_type, p99) {
            (IoType::Read, false) => LatencyType::AvgRead,
            (IoType::Read, true) => LatencyType::P99Read,
            (IoType::Write, false) => LatencyType::AvgWrite,
            (IoType::Write, true) => LatencyType::P99Write,
            _ => return None,
        };
        Some(self.get(latency_type))
    }
}

pub struct DelayBdev {
    info: BdevInfo,
    base: Arc<BaseBdev>,
    latencies: Arc<Latencies>,
    /// Per-thread channel state, reachable from any thread for resets.
    device: channel::DelayDevice,
}

fn check_latency(field: &'static str, latency_us: u64) -> Result<(), BdevError> {
    if latency_us > MAX_LATENCY_US {
        return Err(BdevError::invalid(field, format!("{latency_us} us exceeds the {MAX_LATENCY_US} us limit")));
    }
    Ok(())
}

impl DelayBdev {
    /// Opens and claims the base, then registers the delay bdev over it.
    pub fn create(manager: &BdevManager, params: CreateParams) -> Result<Arc<DelayBdev>, RpcError> {
        let latencies = [
            ("avg_read_latency", params.avg_read_latency),
            ("p99_read_latency", params.p99_read_latency),
            ("avg_write_latency", params.avg_write_latency),
            ("p99_write_latency", params.p99_write_latency),
        ];
        for (field, latency_us) in latencies {
            check_latency(field, latency_us)?;
        }
        // As SPDK: a p99 below the average describes no distribution.
        if params.p99_read_latency < params.avg_read_latency || params.p99_write_latency < params.avg_write_latency {
            return Err(BdevError::invalid("p99 latency", "a p99 latency may not be below its average").into());
        }
        if manager.get(&params.name).is_ok() {
            return Err(BdevError::Exists(params.name).into());
        }
        let uuid = parse_uuid(params.uuid.as_deref())?;
        let base = BaseBdev::open(manager, &params.base_bdev_name, &format!("bdev_delay {}", params.name))?;
        let base_info = base.bdev().info().clone();
        let shared = Latencies::default();
        shared.set(LatencyType::AvgRead, params.avg_read_latency);
        shared.set(LatencyType::P99Read, params.p99_read_latency);
        shared.set(LatencyType::AvgWrite, params.avg_write_latency);
        shared.set(LatencyType::P99Write, params.p99_write_latency);
        let info = BdevInfo {
            name: params.name,
            product_name: PRODUCT_NAME.into(),
            block_size: base_info.block_size,
            num_blocks: base_info.num_blocks,
            uuid,
            max_io_blocks: base_info.max_io_blocks,
        };
        let base = Arc::new(base);
        let latencies = Arc::new(shared);
        let device = channel::device(&info.name, base.clone(), latencies.clone());
        let bdev = Arc::new(DelayBdev { info, base, latencies, device });
        // A failed registration drops `bdev`, and with it the base's claim.
        manager.register(bdev.clone())?;
        Ok(bdev)
    }

    pub fn update_latency(&self, latency_type: LatencyType, latency_us: u64) -> Result<(), BdevError> {
        check_latency("latency_us", latency_us)?;
        self.latencies.set(latency_type, latency_us);
        peerless_core::log_info!("delay '{}': {latency_type:?} latency now {latency_us} us", self.info.name);
        Ok(())
    }
}

impl Bdev for DelayBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, io_type: IoType) -> bool {
        self.base.bdev().supports(io_type)
    }

    /// The delay never touches data, so whatever the base can reach, it can.
    fn accepts_domain(&self, domain: peerless_core::mem::DomainId) -> bool {
        self.base.bdev().accepts_domain(domain)
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        channel::DelayChannel::boxed(ctx, &self.device)
    }

    fn driver_specific(&self) -> Value {
        json!({"delay": {
            "name": self.info.name,
            "base_bdev_name": self.base.name(),
            "avg_read_latency": self.latencies.get(LatencyType::AvgRead),
            "p99_read_latency": self.latencies.get(LatencyType::P99Read),
            "avg_write_latency": self.latencies.get(LatencyType::AvgWrite),
            "p99_write_latency": self.latencies.get(LatencyType::P99Write),
        }})
    }

    fn config_entry(&self) -> Option<Value> {
        Some(json!({"method": "bdev_delay_create", "params": {
            "name": self.info.name,
            "base_bdev_name": self.base.name(),
            "avg_read_latency": self.latencies.get(LatencyType::AvgRead),
            "p99_read_latency": self.latencies.get(LatencyType::P99Read),
            "avg_write_latency": self.latencies.get(LatencyType::AvgWrite),
            "p99_write_latency": self.latencies.get(LatencyType::P99Write),
            "uuid": self.info.uuid.to_string(),
        }}))
    }

    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base.name().to_string()]
    }

    /// Closes the base's descriptor, releasing its claim.
    fn destruct(&self) {
        self.base.release();
    }
}

impl BdevModule for DelayModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method("bdev_delay_create", StateMask::RUNTIME, move |_, params: CreateParams, responder| {
            match DelayBdev::create(&bdevs, params) {
                Ok(bdev) => responder.ok(bdev.info.name.clone()),
                Err(err) => responder.err(err),
            }
        });
        let bdevs = manager.clone();
        registry.method("bdev_delay_update_latency", StateMask::RUNTIME, move |_, params: UpdateParams, responder| {
            let Some(latency_type) = LatencyType::parse(&params.latency_type) else {
                responder.err(RpcError::invalid_params(format!(
                    "latency_type '{}' is not avg_read, p99_read, avg_write or p99_write",
                    params.latency_type
                )));
                return;
            };
            let updated = bdevs
                .get_as::<DelayBdev>(&params.delay_bdev_name, MODULE_NAME)
                .and_then(|bdev| bdev.update_latency(latency_type, params.latency_us));
            match updated {
                Ok(()) => responder.ok_true(),
                Err(err) => responder.err(err.into()),
            }
        });
        let bdevs = manager.clone();
        registry.method(
            "bdev_delay_delete",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_pick_by_type_and_tail() {
        let latencies = Latencies::default();
        latencies.set(LatencyType::AvgRead, 10);
        latencies.set(LatencyType::P99Read, 100);
        latencies.set(LatencyType::AvgWrite, 20);
        latencies.set(LatencyType::P99Write, 200);
        assert_eq!(latencies.for_io(IoType::Read, false), Some(10));
        assert_eq!(latencies.for_io(IoType::Read, true), Some(100));
        assert_eq!(latencies.for_io(IoType::Write, false), Some(20));
        assert_eq!(latencies.for_io(IoType::Write, true), Some(200));
        assert_eq!(latencies.for_io(IoType::Flush, false), None);
        assert_eq!(LatencyType::parse("p99_write"), Some(LatencyType::P99Write));
        assert_eq!(LatencyType::parse("p50_write"), None);
        assert!(check_latency("x", MAX_LATENCY_US + 1).is_err());
    }
}
