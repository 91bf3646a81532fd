//! MSG_ZEROCOPY sends of C2HData against a real `peerless-tgt` over loopback: with
//! `sock_impl_set_options -i posix --enable-zerocopy-send-server --zerocopy-threshold 0`
//! reads of every size at queue depth 32 come back intact, every command's buffers go
//! back to the pool once the kernel's notifications arrive, and a host that resets its
//! connection while zero-copy sends are outstanding leaves nothing held and nothing
//! leaked. The settings are reported and saved.

mod support;

use std::time::{Duration, Instant};

use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Completion, Controller, IoQueue, Options};
use serde_json::{json, Value};
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:zerocopy";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 65_536;
const DEPTH: u16 = 32;
/// 512 B, 4 KiB, 32 KiB and 128 KiB reads.
const SIZES: [u32; 4] = [1, 8, 64, 256];

fn serve(target: &Target, threshold: u32) -> std::net::SocketAddr {
    target.call(
        "sock_impl_set_options",
        Some(json!({"impl_name": "posix", "enable_zerocopy_send_server": true, "zerocopy_threshold": threshold})),
    );
    target.create_tcp_transport(json!({}));
    target.create_subsystem(NQN);
    target.add_malloc_namespace(NQN, "Malloc0", BLOCKS, BLOCK);
    target.listen(NQN)
}

/// The bytes of blocks `slba..slba + blocks`, a function of each byte's offset on the
/// namespace so that any read's expected data is computed directly.
fn pattern(slba: u64, blocks: u32) -> Vec<u8> {
    let start = slba * u64::from(BLOCK);
    (start..start + u64::from(blocks * BLOCK))
        .map(|offset| (offset as u8).wrapping_mul(31) ^ (offset >> 9) as u8 ^ (offset >> 17) as u8)
        .collect()
}

/// Fills the namespace's first `BLOCKS / 2` blocks with `pattern`, 128 KiB at a time.
fn fill(queue: &mut IoQueue) {
    for slba in (0..BLOCKS / 2).step_by(256) {
        queue.write(1, slba, 256, &pattern(slba, 256)).expect("write");
    }
}

fn slba_of(index: u64, blocks: u32) -> u64 {
    (index * 997 * u64::from(blocks)) % (BLOCKS / 2 - u64::from(blocks))
}

fn zerocopy_stats(target: &Target) -> Value {
    target.call("mem_get_stats", None)["zerocopy"].clone()
}

/// Waits until no command's buffers are lent to the kernel, then checks the pool holds
/// every buffer but what the poll groups' caches keep.
fn wait_until_everything_is_back(target: &Target) {
    let deadline = Instant::now() + WAIT;
    while zerocopy_stats(target)["held"] != 0 {
        assert!(Instant::now() < deadline, "buffers still lent to the kernel: {}", zerocopy_stats(target));
        std::thread::sleep(Duration::from_millis(20));
    }
    let groups = target.call("nvmf_get_stats", None)["poll_groups"].as_array().map_or(1, Vec::len) as u64;
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = target.call("mem_get_stats", None);
        let pool = &stats["data_buffers"][0];
        let (capacity, cache) =
            (pool["buffers_per_class"].as_u64().unwrap(), pool["cache_per_poll_group"].as_u64().unwrap());
        let floor = capacity.saturating_sub(cache * groups);
        let (small, large) = (pool["small_free"].as_u64().unwrap(), pool["large_free"].as_u64().unwrap());
        if small >= floor && large >= floor {
            return;
        }
        assert!(Instant::now() < deadline, "buffers missing from the pool (at least {floor} each): {pool}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Keeps `DEPTH` reads of mixed sizes in flight for `count` commands, checking each.
fn reads_at_depth(queue: &mut IoQueue, count: u64) {
    let mut inflight = std::collections::HashMap::new();
    let mut done: Vec<Completion> = Vec::new();
    let mut next = 0u64;
    let deadline = Instant::now() + WAIT;
    while next < count || !inflight.is_empty() {
        while next < count && queue.free_slots() > 0 {
            let blocks = SIZES[(next % SIZES.len() as u64) as usize];
            let slba = slba_of(next, blocks);
            let cid = queue.submit_read(1, slba, blocks, vec![0u8; (blocks * BLOCK) as usize]).expect("submit");
            inflight.insert(cid, (slba, blocks));
            next += 1;
        }
        done.clear();
        queue.poll(usize::from(DEPTH), &mut done).expect("poll");
        for completion in &done {
            assert!(completion.is_ok(), "cid {}: status {:?}", completion.cid, completion.status);
            let (slba, blocks) = inflight.remove(&completion.cid).expect("a completion for a command in flight");
            assert!(completion.buf == pattern(slba, blocks), "{blocks} blocks at {slba} came back different");
        }
        assert!(Instant::now() < deadline, "{} reads never completed", inflight.len());
    }
}

#[test]
fn reads_of_every_size_at_depth_come_back_and_every_buffer_is_returned() {
    reads_come_back_and_every_buffer_is_returned(&tgt().start("zerocopy-reads", &[]));
}

/// The same in poll mode: notifications are read on the connection's polls rather than
/// after an EPOLLERR wake.
#[test]
fn reads_come_back_in_poll_mode() {
    reads_come_back_and_every_buffer_is_returned(&tgt().launch("zerocopy-poll").poll_mode().start());
}

fn reads_come_back_and_every_buffer_is_returned(target: &Target) {
    let addr = serve(target, 0);
    assert_eq!(
        target.call("sock_impl_get_options", Some(json!({"impl_name": "posix"}))),
        json!({"enable_zerocopy_send_server": true, "zerocopy_threshold": 0})
    );
    let saved = support::saved_config(target);
    let sock = saved["subsystems"].as_array().unwrap().iter().find(|entry| entry["subsystem"] == "sock").unwrap();
    assert!(
        sock["config"].as_array().unwrap().iter().any(|call| call["params"]
            == json!({"impl_name": "posix", "enable_zerocopy_send_server": true, "zerocopy_threshold": 0})),
        "save_config: {sock}"
    );
    let before = zerocopy_stats(target);
    for round in 0..2 {
        let mut controller =
            Controller::connect(addr, NQN, HOSTNQN, &Options::default()).unwrap_or_else(|err| panic!("connect: {err}"));
        let mut queue = controller.io_queue(DEPTH).expect("I/O queue");
        if round == 0 {
            fill(&mut queue);
        }
        reads_at_depth(&mut queue, 400);
        wait_until_everything_is_back(target);
        drop(queue);
        drop(controller);
        wait_until_everything_is_back(target);
    }
    let after = zerocopy_stats(target);
    assert!(after["sends"].as_u64() > before["sends"].as_u64(), "no send went zero-copy: {after}");
}

/// A threshold above a read's size keeps it copying: only the large reads lend memory.
#[test]
fn reads_below_the_threshold_copy() {
    let target = tgt().start("zerocopy-threshold", &[]);
    let addr = serve(&target, 256 * 1024);
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
    let mut queue = controller.io_queue(DEPTH).expect("I/O queue");
    fill(&mut queue);
    let before = zerocopy_stats(&target)["sends"].as_u64();
    // One at a time: a single 128 KiB read never reaches a 256 KiB threshold.
    let mut back = vec![0u8; 256 * BLOCK as usize];
    for index in 0..16 {
        queue.read(1, index * 256, 256, &mut back).expect("read");
        assert!(back == pattern(index * 256, 256), "read {index} came back different");
    }
    assert_eq!(zerocopy_stats(&target)["sends"].as_u64(), before, "sends below the threshold went zero-copy");
}

/// A host that resets its connection (closing it with data unread sends RST) while
/// 128 KiB reads are queued in zero-copy sends: the target carries on, and every
/// buffer comes back once the kernel lets go of the reset socket's sends.
#[test]
fn a_reset_with_zerocopy_sends_outstanding_leaves_nothing_held() {
    let target = tgt().start("zerocopy-reset", &[]);
    let addr = serve(&target, 0);
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
    let mut queue = controller.io_queue(DEPTH).expect("I/O queue");
    fill(&mut queue);
    for round in 0..3u64 {
        let mut host = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
        let mut doomed = host.io_queue(DEPTH).expect("I/O queue");
        for index in 0..doomed.free_slots() as u64 {
            doomed.submit_read(1, slba_of(index + round, 256), 256, vec![0u8; 256 * BLOCK as usize]).expect("submit");
        }
        // Sent, and never read: the target's sends fill the socket and wait.
        doomed.send_raw(&[]).expect("flush the commands");
        std::thread::sleep(Duration::from_millis(200));
        drop(doomed);
        drop(host);
    }
    wait_until_everything_is_back(&target);
    // The target serves on.
    reads_at_depth(&mut queue, 64);
    wait_until_everything_is_back(&target);
    assert!(zerocopy_stats(&target)["sends"].as_u64() > Some(0));
}
