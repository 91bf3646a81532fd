//! bdev_delay over a malloc bdev on real reactors (interrupt mode): data paths, latency
//! measured against its setting and changed live, claims on the base, hot-remove, RPCs.

mod harness;
mod poll_mode;
mod rpc_client;
mod threads;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use harness::*;
use peerless_bdev::modules::delay::{self, CreateParams, DelayBdev, LatencyType};
use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::{BdevError, BdevInfo, DataBuf, IoStatus, IoType, Uuid};
use rpc_client::Rpc;
use serde_json::json;

const BLOCK: usize = 512;
const BLOCKS: u64 = 4096;

/// Latencies are measured here, so these tests run one at a time rather than share
/// their reactor's core with each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn malloc(harness: &Harness, name: &str) {
    let info = BdevInfo {
        name: name.into(),
        product_name: "Malloc disk".into(),
        block_size: BLOCK as u32,
        num_blocks: BLOCKS,
        uuid: Uuid::random(),
        max_io_blocks: 0,
    };
    harness.bdevs.register(Arc::new(MallocBdev::new(info).unwrap())).unwrap();
}

fn params(name: &str, base: &str, read_us: u64, write_us: u64) -> CreateParams {
    CreateParams {
        name: name.into(),
        base_bdev_name: base.into(),
        avg_read_latency: read_us,
        p99_read_latency: read_us,
        avg_write_latency: write_us,
        p99_write_latency: write_us,
        uuid: None,
    }
}

/// Average latency of reads kept one at a time for `window`.
fn average_read_latency(harness: &Harness, desc: &Arc<peerless_bdev::Desc>, window: Duration) -> Duration {
    let (completed, statuses) = harness
        .run_for(desc, window, 1, |sequence| Spec::new(IoType::Read, sequence % BLOCKS, 1).with(DataBuf::heap(BLOCK)));
    assert_eq!(statuses, vec![IoStatus::SUCCESS]);
    assert!(completed > 0);
    window / completed as u32
}

#[test]
fn data_passes_through_every_io_type() {
    let _serial = serial();
    let harness = Harness::new();
    malloc(&harness, "Malloc0");
    DelayBdev::create(&harness.bdevs, params("Delay0", "Malloc0", 100, 200)).unwrap();
    let desc = harness.open("Delay0", true);
    assert_eq!(desc.bdev().info().num_blocks, BLOCKS);
    let writes: Vec<_> = (0..32).map(|index| patterned_write(index * 4, 4, BLOCK, 6)).collect();
    assert!(harness.run(&desc, writes).iter().all(|(_, io)| io.status == IoStatus::SUCCESS));
    let reads: Vec<_> = (0..32).map(|index| read(index * 4, 4, BLOCK)).collect();
    for (index, io) in harness.run(&desc, reads) {
        assert_eq!(io.bytes(), pattern(index as u64 * 4, 4, BLOCK, 6), "read {index}");
    }
    for io_type in [IoType::Unmap, IoType::WriteZeroes] {
        assert_ok(&harness.run_one(&desc, Spec::new(io_type, 0, 4)));
        assert!(harness.run_one(&desc, read(0, 4, BLOCK)).bytes().iter().all(|b| *b == 0), "{io_type:?}");
    }
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Flush, 0, 0)));
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Reset, 0, 0)));
    // The base's own statuses come through.
    assert_eq!(harness.run_one(&desc, read(BLOCKS, 1, BLOCK)).status, IoStatus::LBA_OUT_OF_RANGE);
}

#[test]
fn latency_is_observed_and_changes_live() {
    let _serial = serial();
    let harness = Harness::new();
    malloc(&harness, "Malloc0");
    let delay = DelayBdev::create(&harness.bdevs, params("Delay0", "Malloc0", 2_000, 0)).unwrap();
    let desc = harness.open("Delay0", true);
    let average = average_read_latency(&harness, &desc, Duration::from_millis(300));
    assert!(
        (Duration::from_micros(1_500)..=Duration::from_millis(6)).contains(&average),
        "2000 us average read latency measured as {average:?}"
    );
    // Writes carry no delay: well under the reads' lower bound, even on a busy machine.
    let (completed, _) = harness
        .run_for(&desc, Duration::from_millis(100), 1, |sequence| patterned_write(sequence % BLOCKS, 1, BLOCK, 0));
    let write_average = Duration::from_millis(100) / completed.max(1) as u32;
    assert!(write_average < Duration::from_millis(1), "writes were delayed: {write_average:?}");
    delay.update_latency(LatencyType::AvgRead, 0).unwrap();
    delay.update_latency(LatencyType::P99Read, 0).unwrap();
    let average = average_read_latency(&harness, &desc, Duration::from_millis(100));
    assert!(average < Duration::from_millis(1), "after the update reads take {average:?}");
    assert!(delay.update_latency(LatencyType::AvgWrite, u64::MAX).is_err(), "an absurd latency is refused");
}

#[test]
fn the_base_is_claimed_until_the_delay_bdev_is_deleted() {
    let _serial = serial();
    let harness = Harness::new();
    malloc(&harness, "Malloc0");
    DelayBdev::create(&harness.bdevs, params("Delay0", "Malloc0", 10, 10)).unwrap();
    let (_, by) = harness.bdevs.claim_of("Malloc0").expect("claimed");
    assert_eq!(by, "bdev_delay Delay0");
    assert!(matches!(harness.bdevs.open("Malloc0", true, None, None), Err(BdevError::Claimed { .. })));
    let refused = harness.bdevs.unregister(None, "Malloc0").unwrap_err();
    assert!(matches!(&refused, BdevError::Claimed { by, .. } if by.contains("Delay0")), "{refused}");
    // A second stacked bdev on the same base conflicts.
    assert!(DelayBdev::create(&harness.bdevs, params("Delay1", "Malloc0", 10, 10)).is_err());

    let heard = Arc::new(AtomicBool::new(false));
    let flag = heard.clone();
    let on_remove = Box::new(move |_: &mut peerless_core::reactor::ThreadCtx| flag.store(true, Ordering::SeqCst));
    let desc = Arc::new(harness.bdevs.open("Delay0", true, Some(harness.thread.clone()), Some(on_remove)).unwrap());
    assert_ok(&harness.run_one(&desc, patterned_write(0, 1, BLOCK, 1)));
    harness.bdevs.unregister_by_name(None, "Delay0", delay::MODULE_NAME).unwrap();
    let deadline = Instant::now() + WAIT;
    while !heard.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(heard.load(Ordering::SeqCst), "the hot-remove event did not reach the descriptor");
    assert_eq!(harness.run_one(&desc, read(0, 1, BLOCK)).status, IoStatus::INVALID_NAMESPACE);
    assert_eq!(harness.bdevs.claim_of("Malloc0"), None, "deleting the delay bdev releases the base");
    // The data written through the delay bdev is on the base.
    let base = harness.open("Malloc0", true);
    assert_eq!(harness.run_one(&base, read(0, 1, BLOCK)).bytes(), pattern(0, 1, BLOCK, 1));
    drop(base);
    harness.bdevs.unregister(None, "Malloc0").unwrap();
}

#[test]
fn rpc_methods_create_update_save_and_delete() {
    let _serial = serial();
    let harness = Harness::new();
    malloc(&harness, "Malloc0");
    let rpc = Rpc::new(&harness);
    let create = json!({"name": "Delay0", "base_bdev_name": "Malloc0", "avg_read_latency": 100,
        "p99_read_latency": 200, "avg_write_latency": 100, "p99_write_latency": 200});
    assert_eq!(rpc.call(&harness, "bdev_delay_create", create.clone()).unwrap(), json!("Delay0"));
    assert_eq!(rpc.call(&harness, "bdev_delay_create", create).unwrap_err().code, -17, "exists");
    let missing = json!({"name": "Delay1", "base_bdev_name": "Nope", "avg_read_latency": 1,
        "p99_read_latency": 1, "avg_write_latency": 1, "p99_write_latency": 1});
    assert_eq!(rpc.call(&harness, "bdev_delay_create", missing).unwrap_err().code, -19);
    let inverted = json!({"name": "Delay1", "base_bdev_name": "Malloc0", "avg_read_latency": 10,
        "p99_read_latency": 1, "avg_write_latency": 1, "p99_write_latency": 1});
    assert_eq!(rpc.call(&harness, "bdev_delay_create", inverted).unwrap_err().code, -32602);

    let update = json!({"delay_bdev_name": "Delay0", "latency_type": "p99_write", "latency_us": 500});
    assert_eq!(rpc.call(&harness, "bdev_delay_update_latency", update).unwrap(), json!(true));
    let bad = json!({"delay_bdev_name": "Delay0", "latency_type": "p50", "latency_us": 5});
    assert_eq!(rpc.call(&harness, "bdev_delay_update_latency", bad).unwrap_err().code, -32602);
    let bdev = harness.bdevs.get("Delay0").unwrap();
    assert_eq!(bdev.info().product_name, "delay");
    assert_eq!(bdev.base_bdevs(), vec!["Malloc0".to_string()]);
    assert_eq!(bdev.driver_specific()["delay"]["p99_write_latency"], json!(500));
    let saved = bdev.config_entry().unwrap();
    assert_eq!(saved["method"], "bdev_delay_create");
    assert_eq!(saved["params"]["base_bdev_name"], "Malloc0");
    assert_eq!(saved["params"]["p99_write_latency"], json!(500));

    assert_eq!(rpc.call(&harness, "bdev_malloc_delete", json!({"name": "Malloc0"})).unwrap_err().code, -1, "EPERM");
    assert_eq!(rpc.call(&harness, "bdev_delay_delete", json!({"name": "Delay0"})).unwrap(), json!(true));
    assert_eq!(rpc.call(&harness, "bdev_delay_delete", json!({"name": "Delay0"})).unwrap_err().code, -19);
    assert_eq!(rpc.call(&harness, "bdev_malloc_delete", json!({"name": "Malloc0"})).unwrap(), json!(true));
}

#[test]
fn poll_mode_releases_on_time_without_a_timer() {
    let _serial = serial();
    let harness = poll_mode::harness();
    malloc(&harness, "Malloc0");
    DelayBdev::create(&harness.bdevs, params("Delay0", "Malloc0", 1_000, 1_000)).unwrap();
    let desc = harness.open("Delay0", true);
    let average = average_read_latency(&harness, &desc, Duration::from_millis(100));
    assert!(
        (Duration::from_micros(750)..=Duration::from_millis(5)).contains(&average),
        "1000 us average read latency measured as {average:?}"
    );
}

#[test]
fn a_reset_aborts_what_the_channel_holds() {
    let _serial = serial();
    let harness = Harness::new();
    malloc(&harness, "Malloc0");
    // Reads held for ten seconds: only the reset can bring them back within the test.
    DelayBdev::create(&harness.bdevs, params("Delay0", "Malloc0", 10_000_000, 0)).unwrap();
    let desc = harness.open("Delay0", true);
    let started = Instant::now();
    let done = harness.run(&desc, vec![read(0, 1, BLOCK), read(1, 1, BLOCK), Spec::new(IoType::Reset, 0, 0)]);
    assert!(started.elapsed() < Duration::from_secs(5), "held reads waited out their latency");
    let mut seen: Vec<(usize, IoStatus)> = done.iter().map(|(tag, io)| (*tag, io.status)).collect();
    seen.sort_by_key(|(tag, _)| *tag);
    assert_eq!(
        seen,
        vec![(0, IoStatus::ABORTED_BY_REQUEST), (1, IoStatus::ABORTED_BY_REQUEST), (2, IoStatus::SUCCESS)]
    );
}

#[test]
fn a_reset_on_one_thread_aborts_what_another_holds() {
    let _serial = serial();
    let harness = Harness::new();
    malloc(&harness, "Malloc0");
    DelayBdev::create(&harness.bdevs, params("Delay0", "Malloc0", 10_000_000, 0)).unwrap();
    let desc = harness.open("Delay0", true);
    let other = threads::second_thread(&harness);
    let waiter = threads::submit_and_hold(other, &desc, vec![read(0, 1, BLOCK), read(1, 1, BLOCK)]);
    let started = Instant::now();
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Reset, 0, 0)));
    let held = waiter.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "held reads waited out their latency");
    assert!(held.iter().all(|(_, status)| *status == IoStatus::ABORTED_BY_REQUEST), "{held:?}");
}
