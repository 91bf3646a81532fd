//! Controller semantics and data buffers end to end: a real `peerless-tgt` driven by the
//! initiator library over loopback TCP. Resets, keep-alive settings, Abort, SMART
//! counters, log page bounds, reserved fields, commands that wait for buffers, and file
//! bdevs fed buffers larger than the I/O.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{admin, io, status, Status};
use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Completion, Controller, IoQueue, Options, Xfer};
use serde_json::json;
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:controller";
const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 16384;
/// Controller Configuration and Status (NVMe Base 2.0, 3.1.3).
const CC: u32 = 0x14;
const CSTS: u32 = 0x1c;
/// Feature identifiers (NVMe Base 2.0, Figure 317).
const FID_KEEP_ALIVE_TIMER: u8 = 0x0f;
/// Log page identifiers (NVMe Base 2.0, Figure 202).
const LID_SMART: u8 = 0x02;

fn connect(addr: SocketAddr) -> Controller {
    Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect to the target")
}

fn pattern(slba: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|index| ((slba as usize * 31 + index / 512) as u8).wrapping_mul(13) ^ (index as u8) ^ seed).collect()
}

/// Polls `queue` until `count` completions arrived.
fn drain(queue: &mut IoQueue, count: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    let deadline = Instant::now() + WAIT;
    while done.len() < count {
        assert!(Instant::now() < deadline, "{} of {count} completions after {WAIT:?}", done.len());
        queue.poll(count, &mut done).expect("poll the queue");
    }
    done
}

fn mem_stats(target: &Target) -> serde_json::Value {
    target.call("mem_get_stats", None)
}

#[test]
fn a_reset_stops_io_queues_and_frees_their_ids_for_reconnect() {
    let target = tgt().start("ctrl-reset", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(16).unwrap();
    let qid = queue.qid();
    queue.write(1, 0, 1, &pattern(0, 512, 1)).unwrap();

    // CC.EN 1 -> 0 (NVMe Base 2.0, 3.7.2): the I/O queues are deleted.
    let cc = controller.property_get(CC, false).unwrap();
    controller.property_set(CC, cc & !1).unwrap();
    assert_eq!(controller.property_get(CSTS, false).unwrap() & 1, 0, "CSTS.RDY follows CC.EN");
    let mut buf = vec![0u8; 512];
    let deadline = Instant::now() + WAIT;
    loop {
        match queue.read(1, 0, 1, &mut buf) {
            // Either the queue is gone or the disabled controller refuses the command.
            Err(err) if err.status().is_none_or(|s| s == status::COMMAND_SEQUENCE_ERROR) => break,
            Err(err) => panic!("a read after the reset failed the wrong way: {err}"),
            Ok(()) => assert!(Instant::now() < deadline, "reads still run {WAIT:?} after CC.EN = 0"),
        }
    }
    // Enable again and reconnect the same QID: it must be free.
    controller.property_set(CC, cc).unwrap();
    let deadline = Instant::now() + WAIT;
    while controller.property_get(CSTS, false).unwrap() & 1 == 0 {
        assert!(Instant::now() < deadline, "CSTS.RDY never came back");
    }
    let mut again = controller.io_queue_with_qid(qid, 16).expect("the reset freed the QID");
    again.read(1, 0, 1, &mut buf).unwrap();
    assert_eq!(buf, pattern(0, 512, 1), "data written before the reset is still there");
}

#[test]
fn keep_alive_cannot_be_switched_off() {
    let target = tgt().start("ctrl-kato", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"min_kato": 10_000}));
    let mut controller = connect(addr);
    // KATO 0 would leave a vanished host's controller alive forever (SPDK refuses it too).
    let err = controller.set_features(FID_KEEP_ALIVE_TIMER, 0).unwrap_err();
    assert_eq!(err.status(), Some(status::KEEP_ALIVE_TIMEOUT_INVALID), "{err}");
    assert_eq!(controller.get_features(FID_KEEP_ALIVE_TIMER).unwrap(), 10_000, "unchanged");
    controller.set_features(FID_KEEP_ALIVE_TIMER, 15_001).unwrap();
    assert_eq!(controller.get_features(FID_KEEP_ALIVE_TIMER).unwrap(), 15_100, "rounded up to KAS (100 ms)");
    controller.set_features(FID_KEEP_ALIVE_TIMER, 1).unwrap();
    assert_eq!(controller.get_features(FID_KEEP_ALIVE_TIMER).unwrap(), 10_000, "at least min_kato");

    // A discovery controller connected without keep-alive still gets a timeout.
    let options = Options { kato_ms: 0, ..Options::default() };
    let mut discovery = Controller::connect(addr, DISCOVERY_NQN, HOSTNQN, &options).unwrap();
    assert_eq!(discovery.get_features(FID_KEEP_ALIVE_TIMER).unwrap(), 120_000);
}

#[test]
fn abort_ends_a_held_aer_and_says_when_nothing_was_aborted() {
    let target = tgt().start("ctrl-abort-aer", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr);
    let aer = controller.submit_async_event_request().unwrap();
    // Abort (NVMe Base 2.0, 5.1): CDW10 = SQID | CID << 16; DW0 bit 0 clear = aborted.
    let abort =
        |cid: u16, sqid: u16| SqeBuilder::new(admin::ABORT, 0).cdw(10, u32::from(sqid) | (u32::from(cid) << 16));
    let done = controller.admin().execute(abort(aer, 0), Xfer::None, Vec::new()).unwrap();
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(done.result & 1, 0, "the AER was aborted");
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    while events.is_empty() {
        assert!(Instant::now() < deadline, "the aborted AER never completed");
        controller.poll_admin(&mut events).unwrap();
    }
    assert_eq!((events[0].cid, events[0].status), (aer, status::ABORTED_BY_REQUEST));
    // Nothing by that ID on the admin queue, nor on an I/O queue that does not exist.
    let done = controller.admin().execute(abort(0x4242, 0), Xfer::None, Vec::new()).unwrap();
    assert_eq!(done.result & 1, 1, "not aborted");
    let done = controller.admin().execute(abort(1, 7), Xfer::None, Vec::new()).unwrap();
    assert_eq!(done.result & 1, 1, "no such queue: not aborted");
}

/// A transport with one buffer of each class and a slow bdev: the second write waits for
/// the first's buffer, and Abort takes it out of the wait.
#[test]
fn abort_takes_a_command_out_of_the_buffer_wait() {
    let target = tgt().start("ctrl-abort-io", &[]);
    target.create_tcp_transport(json!({"num_shared_buffers": 1, "buf_cache_size": 0, "in_capsule_data_size": 0}));
    target.call("bdev_malloc_create", Some(json!({"name": "Malloc0", "num_blocks": BLOCKS, "block_size": BLOCK})));
    target.call(
        "bdev_delay_create",
        Some(json!({"name": "Slow0", "base_bdev_name": "Malloc0", "avg_read_latency": 0, "p99_read_latency": 0,
            "avg_write_latency": 1_000_000, "p99_write_latency": 1_000_000})),
    );
    target.create_subsystem(NQN);
    target.add_namespace(NQN, "Slow0");
    let addr = target.listen(NQN);
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(16).unwrap();
    // Submissions are sent when the queue is polled; no completion can be ready yet.
    let mut none = Vec::new();
    let first = queue.submit_write(1, 0, 8, pattern(0, 4096, 1)).unwrap();
    queue.poll(0, &mut none).unwrap();
    // Let the first write take the only small buffer and reach the slow bdev.
    std::thread::sleep(Duration::from_millis(200));
    queue.poll(0, &mut none).unwrap();
    let second = queue.submit_write(1, 8, 8, pattern(8, 4096, 2)).unwrap();
    queue.poll(0, &mut none).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let waits = mem_stats(&target)["buffer_waits"].as_u64().unwrap();
    assert!(waits >= 1, "the second write waits for a buffer: {}", mem_stats(&target));
    let abort = SqeBuilder::new(admin::ABORT, 0).cdw(10, u32::from(queue.qid()) | (u32::from(second) << 16));
    let done = controller.admin().execute(abort, Xfer::None, Vec::new()).unwrap();
    assert_eq!(done.result & 1, 0, "a command waiting for a buffer can be aborted: {done:?}");
    let mut done = drain(&mut queue, 2);
    done.sort_by_key(|completion| completion.cid);
    let by_cid = |cid| done.iter().find(|completion| completion.cid == cid).unwrap();
    assert!(by_cid(first).is_ok(), "{:?}", by_cid(first));
    assert_eq!(by_cid(second).status, status::ABORTED_BY_REQUEST);
    // The aborted write never reached the media.
    let mut back = vec![0u8; 4096];
    queue.read(1, 8, 8, &mut back).unwrap();
    assert_eq!(back, vec![0u8; 4096]);
}

#[test]
fn smart_log_counts_data_units_and_commands() {
    let target = tgt().start("ctrl-smart", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(16).unwrap();
    for index in 0..3u64 {
        queue.write(1, index * 256, 256, &pattern(index, 128 * 1024, 3)).unwrap();
    }
    let mut buf = vec![0u8; 512];
    queue.read(1, 0, 1, &mut buf).unwrap();
    // A failed command counts nothing (NVMe Base 2.0, Figure 207).
    assert!(queue.read(1, BLOCKS, 1, &mut buf).is_err());
    let log = controller.get_log_page(LID_SMART, u32::MAX, 0, 512).unwrap();
    let le64 = |at: usize| u64::from_le_bytes(log[at..at + 8].try_into().unwrap());
    // 768 blocks written: one data unit is 1000 blocks, rounded up.
    assert_eq!((le64(32), le64(48)), (1, 1), "data units read, written");
    assert_eq!((le64(64), le64(80)), (1, 3), "host read and write commands");
}

#[test]
fn log_page_offsets_past_the_end_and_reserved_psdt_are_invalid() {
    let target = tgt().start("ctrl-fields", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr);
    let err = controller.get_log_page(LID_SMART, u32::MAX, 512, 4).unwrap_err();
    assert_eq!(err.status(), Some(Status::INVALID_FIELD), "{err}");
    // A window that starts inside the page and runs past it reads zeroes there.
    let tail = controller.get_log_page(LID_SMART, u32::MAX, 508, 8).unwrap();
    assert_eq!(tail, vec![0u8; 8]);
    // PSDT 11b is reserved (NVMe Base 2.0, Figure 88).
    let mut queue = controller.io_queue(4).unwrap();
    let read = SqeBuilder::new(io::READ, 0).rw(1, 0, 1).byte(1, 3 << 6);
    let done = queue.execute(read, Xfer::FromController, vec![0u8; 512]).unwrap();
    assert_eq!(done.status, Status::INVALID_FIELD, "{done:?}");
}

/// With far fewer buffers than commands in flight every command still succeeds, in
/// order of arrival, and the pool is whole again afterwards.
#[test]
fn commands_wait_for_buffers_and_none_fails_for_want_of_one() {
    let target = tgt().start("ctrl-buffers", &[]);
    let transport = json!({"num_shared_buffers": 4, "buf_cache_size": 1, "io_unit_size": 32768,
        "in_capsule_data_size": 4096});
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, transport);
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(64).unwrap();
    // Sizes from 512 B (in the capsule) to 128 KiB (four io_unit_size buffers).
    let sizes = [512usize, 4096, 8192, 12288, 65536, 131_072];
    let mut expected = Vec::new();
    let mut slba = 0u64;
    for round in 0..4u8 {
        let mut cids = Vec::new();
        for size in sizes {
            let data = pattern(slba, size, round);
            let blocks = (size / BLOCK as usize) as u32;
            cids.push(queue.submit_write(1, slba, blocks, data.clone()).unwrap());
            expected.push((slba, data));
            slba += u64::from(blocks);
        }
        for completion in drain(&mut queue, cids.len()) {
            assert!(completion.is_ok(), "{completion:?}");
        }
    }
    for (slba, data) in &expected {
        let mut back = vec![0u8; data.len()];
        queue.read(1, *slba, (data.len() / BLOCK as usize) as u32, &mut back).unwrap();
        assert!(back == *data, "the write at LBA {slba} of {} bytes read back differently", data.len());
    }
    let stats = mem_stats(&target);
    assert!(stats["buffer_waits"].as_u64().unwrap() > 0, "the pool was too small not to wait: {stats}");
    drop(queue);
    drop(controller);
    let deadline = Instant::now() + WAIT;
    loop {
        let pool = &mem_stats(&target)["data_buffers"][0];
        // Up to one cache per poll group may keep buffers; the rest is back in the pool.
        if pool["small_free"].as_u64().unwrap() + 1 >= 4 && pool["large_free"].as_u64().unwrap() + 1 >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "buffers did not come back: {pool}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file bdev with 512-byte blocks gets pool buffers larger than each I/O: every
/// size from one block to 128 KiB, reusing one command ID, reads back what was written.
#[test]
fn a_file_bdev_serves_every_size_through_larger_buffers() {
    let target = tgt().start("ctrl-uring", &[]);
    let file = target.dir().join("disk.img");
    std::fs::File::create(&file).and_then(|f| f.set_len(BLOCKS * u64::from(BLOCK))).unwrap();
    target.create_tcp_transport(json!({}));
    target.call(
        "bdev_uring_create",
        Some(json!({"name": "Uring0", "filename": file.to_string_lossy(), "block_size": BLOCK})),
    );
    target.create_subsystem(NQN);
    target.add_namespace(NQN, "Uring0");
    let addr = target.listen(NQN);
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(4).unwrap();
    let mut slba = 0u64;
    for blocks in [1u32, 2, 7, 8, 9, 16, 33, 64, 128, 255, 256] {
        let data = pattern(slba, blocks as usize * BLOCK as usize, blocks as u8);
        queue.write(1, slba, blocks, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        queue.read(1, slba, blocks, &mut back).unwrap();
        assert!(back == data, "{blocks} blocks at {slba}");
        slba += u64::from(blocks);
    }
}
