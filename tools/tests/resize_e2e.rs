//! A namespace whose bdev grows while hosts use it, end to end: `bdev_null_resize` on a
//! real `peerless-tgt`, a host that hears the Namespace Attribute Changed notice, finds its
//! namespace in the Changed Namespace List, reads the new size and uses the new blocks,
//! on 512- and 4096-byte blocks, with I/O running across the resize; the refusals; and
//! `save_config` keeping the new size. The Ceph RBD test grows an image the same way by
//! RPC and from outside the target.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Controller, Options};
use serde_json::{json, Value};
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:resize";
const FID_ASYNC_EVENT_CONFIG: u8 = 0x0b;
const AEC_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
/// Notice (type 2), Namespace Attribute Changed (info 00h), log page 04h: NVMe Base 2.0,
/// Figure 150.
const NAMESPACE_CHANGED_EVENT: u64 = 2 | (0x04 << 16);
const LID_CHANGED_NAMESPACES: u8 = 0x04;

/// Null0 (512-byte blocks) and Null1 (4096-byte blocks), 16 MiB each, as NSIDs 1 and 2.
fn serve(target: &Target) -> SocketAddr {
    target.create_tcp_transport(json!({}));
    target.create_subsystem(NQN);
    for (name, block_size) in [("Null0", 512u64), ("Null1", 4096)] {
        let blocks = (16u64 << 20) / block_size;
        target.call("bdev_null_create", Some(json!({"name": name, "num_blocks": blocks, "block_size": block_size})));
        target.add_namespace(NQN, name);
    }
    target.listen(NQN)
}

fn connect(addr: SocketAddr) -> Controller {
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
    controller.set_features(FID_ASYNC_EVENT_CONFIG, AEC_NAMESPACE_ATTRIBUTE).expect("enable notices");
    controller.submit_async_event_request().expect("AER");
    controller
}

/// Waits for one Namespace Attribute Changed notice and reads the Changed Namespace List.
#[track_caller]
fn changed_namespaces(controller: &mut Controller) -> Vec<u32> {
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    while events.is_empty() && Instant::now() < deadline {
        controller.poll_admin(&mut events).expect("poll admin");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(events.len(), 1, "one notice: {events:?}");
    assert!(events[0].is_ok() && events[0].result == NAMESPACE_CHANGED_EVENT, "{:?}", events[0]);
    let list = controller.get_log_page(LID_CHANGED_NAMESPACES, 0xffff_ffff, 0, 4096).expect("log page");
    list.chunks(4).map(|id| u32::from_le_bytes(id.try_into().unwrap())).take_while(|nsid| *nsid != 0).collect()
}

fn resize(target: &Target, name: &str, mib: u64) -> Value {
    target.call("bdev_null_resize", Some(json!({"name": name, "new_size": mib})))
}

fn perf(addr: SocketAddr, nsid: u32, size: usize, seconds: u32) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_peerless-perf"));
    let trid = format!("trtype:tcp adrfam:IPv4 traddr:{} trsvcid:{} subnqn:{NQN} ns:{nsid}", addr.ip(), addr.port());
    command.args(["-r", &trid, "-q", "16", "-o", &size.to_string(), "-w", "randrw", "-M", "50"]);
    command.args(["-t", &seconds.to_string(), "--json"]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

#[test]
fn hosts_hear_a_namespace_grow_and_use_the_new_blocks_at_each_block_size() {
    let target = tgt().start("resize", &[]);
    let addr = serve(&target);
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(8).expect("I/O queue");
    for (nsid, bdev, block_size, grown_mib) in [(1u32, "Null0", 512u64, 32u64), (2, "Null1", 4096, 48)] {
        let old_blocks = (16 << 20) / block_size;
        let new_blocks = (grown_mib << 20) / block_size;
        assert_eq!(controller.identify_namespace(nsid).expect("identify").nsze, old_blocks);
        let mut buffer = vec![0u8; 65536];
        let blocks = (buffer.len() as u64 / block_size) as u32;
        assert!(queue.read(nsid, old_blocks, blocks, &mut buffer).is_err(), "ns {nsid}: a read past the end");

        // I/O runs on the namespace while it grows, and none of it fails.
        let running = perf(addr, nsid, 4096, 3).spawn().expect("perf");
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(resize(&target, bdev, grown_mib), json!(true));
        assert_eq!(changed_namespaces(&mut controller), [nsid], "only namespace {nsid} changed");
        let output = running.wait_with_output().expect("perf ran");
        assert!(output.status.success(), "perf across the resize: {output:?}");
        let summary: Value = serde_json::from_slice(&output.stdout).expect("perf --json");
        assert_eq!(summary["errors"], json!(0), "perf across the resize: {summary}");
        assert!(summary["ios"].as_u64().unwrap_or(0) > 0, "perf did no I/O: {summary}");

        let identified = controller.identify_namespace(nsid).expect("identify");
        assert_eq!((identified.nsze, identified.ncap), (new_blocks, new_blocks), "ns {nsid}");
        queue.read(nsid, old_blocks, blocks, &mut buffer).expect("a read past the old end");
        queue.write(nsid, new_blocks - u64::from(blocks), blocks, &buffer).expect("a write at the new end");
        assert!(queue.read(nsid, new_blocks, 1, &mut buffer[..block_size as usize]).is_err(), "past the new end");
        let bdevs = target.call("bdev_get_bdevs", Some(json!({"name": bdev})));
        assert_eq!(bdevs[0]["num_blocks"], json!(new_blocks), "{bdevs}");
        controller.submit_async_event_request().expect("AER");
    }

    // Refusals name what is wrong and change nothing.
    target.call("bdev_malloc_create", Some(json!({"name": "Malloc0", "num_blocks": 64, "block_size": 512})));
    for (params, expect) in [
        (json!({"name": "Null0", "new_size": 31}), "smaller"),
        (json!({"name": "Null0", "new_size": u64::MAX}), "too large"),
        (json!({"name": "Nothing", "new_size": 64}), "Nothing"),
        (json!({"name": "Malloc0", "new_size": 64}), "Malloc0"),
        (json!({"name": "Null0"}), "new_size"),
        (json!({"name": "Null0", "new_size": 64, "block_size": 4096}), "block_size"),
    ] {
        let (code, message) = target.call_err("bdev_null_resize", Some(params.clone()));
        assert!(code != 0 && message.contains(expect), "{params}: ({code}) {message}");
    }
    let bdevs = target.call("bdev_get_bdevs", Some(json!({"name": "Null0"})));
    assert_eq!(bdevs[0]["num_blocks"], json!(32u64 << 11), "a refused resize changed the size: {bdevs}");
    // The same size again is accepted and tells no host anything.
    assert_eq!(resize(&target, "Null0", 32), json!(true));
    let mut events = Vec::new();
    std::thread::sleep(Duration::from_millis(300));
    controller.poll_admin(&mut events).expect("poll admin");
    assert!(events.is_empty(), "a resize to the same size sent a notice: {events:?}");

    // save_config keeps the grown sizes, so a restart comes back with them.
    let config = target.call("framework_get_config", Some(json!({"name": "bdev"})));
    let sizes: Vec<(Value, Value)> = config
        .as_array()
        .expect("entries")
        .iter()
        .filter(|entry| entry["method"] == json!("bdev_null_create"))
        .map(|entry| (entry["params"]["name"].clone(), entry["params"]["num_blocks"].clone()))
        .collect();
    assert_eq!(sizes, [(json!("Null0"), json!(32u64 << 11)), (json!("Null1"), json!(48u64 << 8))], "{config}");
}
