//! save_config for the uring, delay and error modules: the entries, replayed in
//! registration order through the RPC methods on a fresh app, rebuild the same stack
//! over the same file, claims and all.

mod harness;
mod rpc_client;

use std::path::PathBuf;

use harness::*;
use rpc_client::Rpc;
use serde_json::{json, Value};

const BLOCK: usize = 512;

#[test]
fn saved_entries_rebuild_the_stack_on_a_fresh_app() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let path = PathBuf::from(format!("/var/tmp/peerless-config-{}-{nanos}", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
    let filename = path.to_string_lossy().into_owned();

    let first = Harness::new();
    let rpc = Rpc::new(&first);
    let calls = [
        ("bdev_malloc_create", json!({"name": "Malloc0", "block_size": 512, "num_blocks": 256})),
        (
            "bdev_delay_create",
            json!({"name": "Delay0", "base_bdev_name": "Malloc0", "avg_read_latency": 5,
            "p99_read_latency": 50, "avg_write_latency": 6, "p99_write_latency": 60}),
        ),
        ("bdev_uring_create", json!({"name": "Uring0", "filename": filename})),
        ("bdev_error_create", json!({"base_name": "Uring0"})),
    ];
    for (method, params) in calls {
        rpc.call(&first, method, params).unwrap_or_else(|err| panic!("{method}: {err:?}"));
    }
    let desc = first.open("EE_Uring0", true);
    assert_ok(&first.run_one(&desc, patterned_write(7, 2, BLOCK, 21)));
    drop(desc);
    let saved: Vec<Value> = first.bdevs.list().iter().filter_map(|bdev| bdev.config_entry()).collect();
    let methods: Vec<&str> = saved.iter().filter_map(|entry| entry["method"].as_str()).collect();
    assert_eq!(methods, ["bdev_malloc_create", "bdev_delay_create", "bdev_uring_create", "bdev_error_create"]);
    drop(first);

    let second = Harness::new();
    let rpc = Rpc::new(&second);
    for entry in &saved {
        let method = entry["method"].as_str().unwrap();
        rpc.call(&second, method, entry["params"].clone()).unwrap_or_else(|err| panic!("{method}: {err:?}"));
    }
    let names: Vec<String> = second.bdevs.list().iter().map(|bdev| bdev.info().name.clone()).collect();
    assert_eq!(names, ["Malloc0", "Delay0", "Uring0", "EE_Uring0"]);
    assert_eq!(second.bdevs.claim_of("Malloc0").map(|(_, by)| by), Some("bdev_delay Delay0".into()));
    assert_eq!(second.bdevs.claim_of("Uring0").map(|(_, by)| by), Some("bdev_error EE_Uring0".into()));
    assert_eq!(second.bdevs.get("Delay0").unwrap().driver_specific()["delay"]["p99_write_latency"], json!(60));
    // UUIDs survive the round trip, and the data written before is in the file.
    for entry in &saved {
        if let Some(uuid) = entry["params"]["uuid"].as_str() {
            assert!(second.bdevs.get(uuid).is_ok(), "uuid {uuid} of {entry}");
        }
    }
    let desc = second.open("EE_Uring0", false);
    assert_eq!(second.run_one(&desc, read(7, 2, BLOCK)).bytes(), pattern(7, 2, BLOCK, 21));
    drop(desc);
    drop(second);
    let _ = std::fs::remove_file(&path);
}
