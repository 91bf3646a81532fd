//! bdev_error over a malloc bdev on real reactors: clean pass-through of every I/O type,
//! then each injection type with exact counts, the base's claim, and the RPC methods.

mod harness;
mod rpc_client;
mod threads;

use std::sync::Arc;

use harness::*;
use peerless_bdev::modules::error::{self, ErrorBdev, InjectParams};
use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::{Bdev, BdevError, BdevInfo, DataBuf, IoStatus, IoType, Uuid};
use rpc_client::Rpc;
use serde_json::json;

const BLOCK: usize = 512;
const BLOCKS: u64 = 1024;

fn setup() -> (Harness, Arc<ErrorBdev>, Arc<peerless_bdev::Desc>) {
    let harness = Harness::new();
    let info = BdevInfo {
        name: "Malloc0".into(),
        product_name: "Malloc disk".into(),
        block_size: BLOCK as u32,
        num_blocks: BLOCKS,
        uuid: Uuid::random(),
        max_io_blocks: 0,
    };
    harness.bdevs.register(Arc::new(MallocBdev::new(info).unwrap())).unwrap();
    let bdev = ErrorBdev::create(&harness.bdevs, "Malloc0", None).unwrap();
    let desc = harness.open("EE_Malloc0", true);
    (harness, bdev, desc)
}

fn inject(io_type: &str, error_type: &str, num: u32) -> InjectParams {
    InjectParams {
        name: "EE_Malloc0".into(),
        io_type: io_type.into(),
        error_type: error_type.into(),
        num,
        queue_depth: 0,
        corrupt_offset: 0,
        corrupt_value: 0,
        nvme_sct: 0,
        nvme_sc: 0,
    }
}

fn statuses(
    harness: &Harness,
    desc: &Arc<peerless_bdev::Desc>,
    make: impl Fn(u64) -> Spec,
    count: u64,
) -> Vec<IoStatus> {
    (0..count).map(|index| harness.run_one(desc, make(index)).status).collect()
}

#[test]
fn without_injections_every_io_type_passes_through() {
    let (harness, _, desc) = setup();
    let writes: Vec<_> = (0..16).map(|index| patterned_write(index * 8, 8, BLOCK, 2)).collect();
    assert!(harness.run(&desc, writes).iter().all(|(_, io)| io.status == IoStatus::SUCCESS));
    for index in 0..16 {
        assert_eq!(harness.run_one(&desc, read(index * 8, 8, BLOCK)).bytes(), pattern(index * 8, 8, BLOCK, 2));
    }
    for io_type in [IoType::Unmap, IoType::WriteZeroes] {
        assert_ok(&harness.run_one(&desc, Spec::new(io_type, 8, 8)));
        assert!(harness.run_one(&desc, read(8, 8, BLOCK)).bytes().iter().all(|b| *b == 0), "{io_type:?}");
    }
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Flush, 0, 0)));
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Reset, 0, 0)));
}

#[test]
fn three_read_failures_fail_exactly_three_reads() {
    let (harness, bdev, desc) = setup();
    bdev.inject(&inject("read", "failure", 3)).unwrap();
    // Writes are not touched by a read injection.
    assert_ok(&harness.run_one(&desc, patterned_write(0, 1, BLOCK, 1)));
    let seen = statuses(&harness, &desc, |_| read(0, 1, BLOCK), 5);
    assert_eq!(seen, [[IoStatus::INTERNAL_ERROR; 3].as_slice(), &[IoStatus::SUCCESS; 2]].concat());
    assert_eq!(bdev.remaining(IoType::Read), 0);
    // `all` arms every type; `clear` disarms.
    bdev.inject(&inject("all", "failure", 10)).unwrap();
    assert_eq!(harness.run_one(&desc, Spec::new(IoType::Flush, 0, 0)).status, IoStatus::INTERNAL_ERROR);
    assert_eq!(harness.run_one(&desc, Spec::new(IoType::Unmap, 0, 1)).status, IoStatus::INTERNAL_ERROR);
    bdev.inject(&inject("clear", "failure", 0)).unwrap();
    assert_ok(&harness.run_one(&desc, read(0, 1, BLOCK)));
}

#[test]
fn nvme_failure_carries_its_status_code_type_and_code() {
    let (harness, bdev, desc) = setup();
    let params = InjectParams { nvme_sct: 2, nvme_sc: 0x81, ..inject("write", "nvme_failure", 2) };
    bdev.inject(&params).unwrap();
    let seen = statuses(&harness, &desc, |index| patterned_write(index, 1, BLOCK, 0), 3);
    assert_eq!(seen, vec![IoStatus::new(2, 0x81), IoStatus::new(2, 0x81), IoStatus::SUCCESS]);
    assert_eq!(IoStatus::new(2, 0x81), IoStatus::UNRECOVERED_READ_ERROR, "media error, as asked");
}

#[test]
fn nomem_is_retried_by_the_layer_and_counted() {
    let (harness, bdev, desc) = setup();
    assert_ok(&harness.run_one(&desc, patterned_write(3, 1, BLOCK, 4)));
    bdev.inject(&inject("read", "nomem", 5)).unwrap();
    let back = harness.run_one(&desc, read(3, 1, BLOCK));
    assert_ok(&back);
    assert_eq!(back.bytes(), pattern(3, 1, BLOCK, 4), "retried until it ran");
    assert_eq!(bdev.remaining(IoType::Read), 0);
    let bdevs = harness.bdevs.clone();
    let stats = harness.on_thread(move |ctx| {
        let (tx, rx) = std::sync::mpsc::channel();
        bdevs.collect_iostat(ctx, vec!["EE_Malloc0".into()], move |_, stats| {
            let _ = tx.send(stats);
        });
        rx
    });
    let stats = stats.recv_timeout(WAIT).unwrap();
    assert_eq!(stats[0].1.nomem_retries, 5, "{:?}", stats[0].1);
    assert_eq!(stats[0].1.read.ops, 1);
}

#[test]
fn corrupt_data_flips_the_byte_at_the_offset() {
    let (harness, bdev, desc) = setup();
    assert_ok(&harness.run_one(&desc, patterned_write(10, 2, BLOCK, 8)));
    let clean = pattern(10, 2, BLOCK, 8);
    let params = InjectParams { corrupt_offset: 700, corrupt_value: 0xff, ..inject("read", "corrupt_data", 1) };
    bdev.inject(&params).unwrap();
    let corrupted = harness.run_one(&desc, read(10, 2, BLOCK));
    assert_ok(&corrupted);
    let bytes = corrupted.bytes();
    let differ: Vec<usize> = (0..bytes.len()).filter(|at| bytes[*at] != clean[*at]).collect();
    assert_eq!(differ, vec![700]);
    assert_eq!(bytes[700], clean[700] ^ 0xff);
    assert_eq!(harness.run_one(&desc, read(10, 2, BLOCK)).bytes(), clean, "the media was not touched");

    // A write is corrupted on its way down, so the media holds the flipped byte.
    let params = InjectParams { corrupt_offset: 7, corrupt_value: 0x01, ..inject("write", "corrupt_data", 1) };
    bdev.inject(&params).unwrap();
    assert_ok(&harness.run_one(&desc, patterned_write(20, 1, BLOCK, 3)));
    let mut expected = pattern(20, 1, BLOCK, 3);
    expected[7] ^= 0x01;
    assert_eq!(harness.run_one(&desc, read(20, 1, BLOCK)).bytes(), expected);
    let zero_value = InjectParams { corrupt_value: 0, ..inject("read", "corrupt_data", 1) };
    assert_eq!(bdev.inject(&zero_value).unwrap_err().code, -32602);
}

#[test]
fn pending_io_is_held_until_a_reset_aborts_it() {
    let (harness, bdev, desc) = setup();
    bdev.inject(&inject("read", "pending", 1)).unwrap();
    let done = harness.run(&desc, vec![read(0, 1, BLOCK), read(1, 1, BLOCK), Spec::new(IoType::Reset, 0, 0)]);
    let order: Vec<(usize, IoStatus)> = done.iter().map(|(tag, io)| (*tag, io.status)).collect();
    assert!(order.contains(&(1, IoStatus::SUCCESS)), "{order:?}");
    assert!(order.contains(&(0, IoStatus::ABORTED_BY_REQUEST)), "the held read aborted at the reset: {order:?}");
    assert!(order.contains(&(2, IoStatus::SUCCESS)), "{order:?}");
    let position = |tag| order.iter().position(|(at, _)| *at == tag);
    assert!(position(0) < position(2), "the held read finished before its reset: {order:?}");
}

#[test]
fn a_reset_on_one_thread_aborts_pending_io_on_another() {
    let (harness, bdev, desc) = setup();
    bdev.inject(&inject("read", "pending", 2)).unwrap();
    let other = threads::second_thread(&harness);
    let waiter = threads::submit_and_hold(other, &desc, vec![read(0, 1, BLOCK), read(1, 1, BLOCK)]);
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Reset, 0, 0)));
    let held = waiter.join().unwrap();
    assert_eq!(held.len(), 2);
    assert!(held.iter().all(|(_, status)| *status == IoStatus::ABORTED_BY_REQUEST), "{held:?}");
}

#[test]
fn the_base_is_claimed_and_rpc_methods_work() {
    let (harness, bdev, desc) = setup();
    assert_eq!(harness.bdevs.claim_of("Malloc0").map(|(_, by)| by), Some("bdev_error EE_Malloc0".to_string()));
    assert!(matches!(harness.bdevs.open("Malloc0", true, None, None), Err(BdevError::Claimed { .. })));
    assert!(harness.bdevs.unregister(None, "Malloc0").is_err());
    assert_eq!(bdev.driver_specific(), json!({"error_disk": {"base_bdev": "Malloc0"}}));
    assert_eq!(bdev.config_entry().unwrap()["params"]["base_name"], "Malloc0");
    drop(desc);
    harness.bdevs.unregister_by_name(None, "EE_Malloc0", error::MODULE_NAME).unwrap();
    assert_eq!(harness.bdevs.claim_of("Malloc0"), None);

    let rpc = Rpc::new(&harness);
    assert_eq!(rpc.call(&harness, "bdev_error_create", json!({"base_name": "Malloc0"})).unwrap(), json!(true));
    assert_eq!(harness.bdevs.get("EE_Malloc0").unwrap().info().product_name, "Error Injection Disk");
    assert_eq!(rpc.call(&harness, "bdev_error_create", json!({"base_name": "Malloc0"})).unwrap_err().code, -17);
    assert_eq!(rpc.call(&harness, "bdev_error_create", json!({"base_name": "Nope"})).unwrap_err().code, -19);
    let injected = json!({"name": "EE_Malloc0", "io_type": "read", "error_type": "failure", "num": 10});
    assert_eq!(rpc.call(&harness, "bdev_error_inject_error", injected).unwrap(), json!(true));
    let desc = harness.open("EE_Malloc0", false);
    assert_eq!(harness.run_one(&desc, read(0, 1, BLOCK)).status, IoStatus::INTERNAL_ERROR);
    drop(desc);
    for bad in [
        json!({"name": "EE_Malloc0", "io_type": "compare", "error_type": "failure"}),
        json!({"name": "EE_Malloc0", "io_type": "read", "error_type": "explode"}),
        json!({"name": "EE_Malloc0", "io_type": "read", "error_type": "nvme_failure", "nvme_sct": 9}),
        json!({"name": "EE_Malloc0", "io_type": "read", "error_type": "failure", "extra": 1}),
    ] {
        assert_eq!(rpc.call(&harness, "bdev_error_inject_error", bad.clone()).unwrap_err().code, -32602, "{bad}");
    }
    let unknown = json!({"name": "EE_Nope", "io_type": "read", "error_type": "failure"});
    assert_eq!(rpc.call(&harness, "bdev_error_inject_error", unknown).unwrap_err().code, -19);
    assert_eq!(rpc.call(&harness, "bdev_error_delete", json!({"name": "EE_Malloc0"})).unwrap(), json!(true));
    assert_eq!(harness.bdevs.claim_of("Malloc0"), None);
    let desc = harness.open("Malloc0", true);
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Write, 0, 1).with(DataBuf::heap(BLOCK))));
}
