//! The passthru, split and nvmesim RPCs through the method registry, as rpc.py calls
//! them: results, error codes, and a save_config whose replay rebuilds the same bdevs.

mod harness;

use std::sync::mpsc;

use harness::*;
use peerless_bdev::BdevSubsystem;
use peerless_core::reactor::Subsystem;
use peerless_core::rpc::{Registry, Reply, Responder};
use serde_json::{json, Value};

struct Rpc {
    harness: Harness,
    registry: Registry,
}

impl Rpc {
    fn new() -> Rpc {
        let harness = Harness::new();
        let (tx, rx) = mpsc::channel();
        let app = harness.app.as_ref().unwrap().handle();
        app.start_init(move |_, result| {
            let _ = tx.send(result);
        });
        rx.recv_timeout(WAIT).unwrap().unwrap();
        let mut registry = Registry::new();
        peerless_bdev::register_rpcs(&mut registry, &harness.bdevs);
        Rpc { harness, registry }
    }

    fn call(&self, method: &str, params: Option<Value>) -> Reply {
        let (tx, rx) = mpsc::channel();
        let responder = Responder::new(method, move |reply| {
            let _ = tx.send(reply);
        });
        let app = self.harness.app.as_ref().unwrap().handle();
        self.registry.call(&app, method, params, responder);
        rx.recv_timeout(WAIT).unwrap()
    }

    fn ok(&self, method: &str, params: Value) -> Value {
        self.call(method, Some(params.clone())).unwrap_or_else(|err| panic!("{method} {params}: {err:?}"))
    }

    fn code(&self, method: &str, params: Value) -> i64 {
        match self.call(method, Some(params.clone())) {
            Ok(value) => panic!("{method} {params} should fail, gave {value}"),
            Err(err) => i64::from(err.code),
        }
    }

    fn config(&self) -> Vec<Value> {
        let subsystem = BdevSubsystem { manager: self.harness.bdevs.clone() };
        self.harness.on_thread(move |ctx| subsystem.config(ctx))
    }
}

const INVALID_PARAMS: i64 = -32602;
const ENODEV: i64 = -19;
const EEXIST: i64 = -17;
const EPERM: i64 = -1;

#[test]
fn create_delete_and_errors_match_spdk() {
    let rpc = Rpc::new();
    let nvme = json!({"name": "Nvme0", "num_blocks": 2048, "block_size": 512, "cmb_size_mb": 2});
    assert_eq!(rpc.ok("bdev_nvmesim_create", nvme.clone()), json!("Nvme0"));
    assert_eq!(rpc.code("bdev_nvmesim_create", nvme), EEXIST);
    assert_eq!(
        rpc.code("bdev_nvmesim_create", json!({"name": "X", "num_blocks": 8, "block_size": 512, "cmb": 1})),
        INVALID_PARAMS
    );
    let pt = json!({"name": "PT0", "base_bdev_name": "Nvme0"});
    assert_eq!(rpc.ok("bdev_passthru_create", pt), json!("PT0"));
    assert_eq!(rpc.code("bdev_passthru_create", json!({"name": "PT1", "base_bdev_name": "Nope"})), ENODEV);
    assert_eq!(rpc.code("bdev_nvmesim_delete", json!({"name": "Nvme0"})), EPERM, "a claimed base cannot go");
    let described = rpc.ok("bdev_get_bdevs", json!({"name": "PT0"}));
    assert_eq!(described[0]["memory_domains"][0]["dma_device_id"], "Nvme0_cmb", "passthru offers its base's CMB");
    let described = rpc.ok("bdev_get_bdevs", json!({"name": "Nvme0"}));
    assert_eq!(described[0]["driver_specific"]["nvmesim"]["cmb_size"], 2 << 20);
    assert_eq!(described[0]["claim_type"], "exclusive_write");

    rpc.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 4096, "block_size": 512}));
    let names = rpc.ok("bdev_split_create", json!({"base_bdev": "Malloc0", "split_count": 2}));
    assert_eq!(names, json!(["Malloc0p0", "Malloc0p1"]));
    assert_eq!(rpc.code("bdev_split_create", json!({"base_bdev": "Malloc0", "split_count": 0})), INVALID_PARAMS);
    assert_eq!(rpc.code("bdev_split_delete", json!({"base_bdev": "Nvme0"})), ENODEV);
    assert_eq!(rpc.code("bdev_passthru_delete", json!({"name": "Malloc0p0"})), ENODEV, "not a passthru");

    assert_eq!(rpc.ok("bdev_split_delete", json!({"base_bdev": "Malloc0"})), json!(true));
    assert_eq!(rpc.ok("bdev_passthru_delete", json!({"name": "PT0"})), json!(true));
    assert_eq!(rpc.code("bdev_passthru_delete", json!({"name": "PT0"})), ENODEV);
    assert_eq!(rpc.ok("bdev_nvmesim_delete", json!({"name": "Nvme0"})), json!(true));
    assert_eq!(rpc.code("bdev_nvmesim_delete", json!({"name": "Malloc0"})), ENODEV, "not an nvmesim bdev");
}

#[test]
fn saved_config_replays_into_the_same_bdevs() {
    let rpc = Rpc::new();
    rpc.ok("bdev_nvmesim_create", json!({"name": "Nvme0", "num_blocks": 1024, "block_size": 4096, "latency_us": 10}));
    rpc.ok("bdev_passthru_create", json!({"name": "PT0", "base_bdev_name": "Nvme0"}));
    rpc.ok("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 4096, "block_size": 512}));
    rpc.ok("bdev_split_create", json!({"base_bdev": "Malloc0", "split_count": 3}));
    let saved = rpc.config();
    let methods: Vec<&str> = saved.iter().filter_map(|entry| entry["method"].as_str()).collect();
    assert_eq!(
        methods,
        [
            "bdev_nvmesim_create",
            "bdev_passthru_create",
            "bdev_malloc_create",
            "bdev_split_create",
            "bdev_wait_for_examine"
        ]
    );
    let described = |rpc: &Rpc| -> Vec<(Value, Value, Value)> {
        let all = rpc.ok("bdev_get_bdevs", json!({}));
        all.as_array()
            .unwrap()
            .iter()
            .map(|bdev| (bdev["name"].clone(), bdev["num_blocks"].clone(), bdev["uuid"].clone()))
            .collect()
    };
    let before = described(&rpc);
    rpc.ok("bdev_split_delete", json!({"base_bdev": "Malloc0"}));
    rpc.ok("bdev_passthru_delete", json!({"name": "PT0"}));
    rpc.ok("bdev_malloc_delete", json!({"name": "Malloc0"}));
    rpc.ok("bdev_nvmesim_delete", json!({"name": "Nvme0"}));
    for entry in &saved {
        let method = entry["method"].as_str().unwrap();
        // As load_config does: params only where the entry has them.
        let replayed = rpc.call(method, entry.get("params").cloned());
        assert!(replayed.is_ok(), "{entry}: {replayed:?}");
    }
    // Names, sizes and UUIDs come back: split parts derive theirs from the base's.
    assert_eq!(described(&rpc), before);
}
