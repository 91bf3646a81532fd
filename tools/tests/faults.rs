//! Faults under load against a real `peerless-tgt` process: injected bdev errors reach
//! the host with the right NVMe status and the counts add up; hosts that vanish in the
//! middle of an R2T write leak nothing; a namespace removed while I/O runs fails that
//! I/O cleanly; SIGTERM under write load exits in bounded time and loses no
//! acknowledged write on a file-backed io_uring bdev.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{admin, io, Status};
use peerless_target::tcp::pdu::{self, pdu_type, Digests};
use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Completion, Controller, IoQueue, Options, Xfer};
use serde_json::{json, Value};
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:faults";
const BLOCK: u32 = 512;

fn connect(addr: SocketAddr) -> Controller {
    Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect")
}

fn pattern(slba: u64, blocks: u32, seed: u8) -> Vec<u8> {
    (0..blocks as usize * BLOCK as usize)
        .map(|index| ((slba + (index / BLOCK as usize) as u64) as u8).wrapping_mul(11) ^ (index as u8) ^ seed)
        .collect()
}

/// Polls `queue` until `count` completions arrived or the deadline passed.
fn drain(queue: &mut IoQueue, count: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    let deadline = Instant::now() + WAIT;
    while done.len() < count {
        assert!(Instant::now() < deadline, "{} of {count} completions after {WAIT:?}", done.len());
        queue.poll(count, &mut done).expect("poll");
    }
    done
}

/// Sums a per-poll-group counter of `nvmf_get_stats`.
fn group_sum(stats: &Value, key: &str) -> u64 {
    stats["poll_groups"].as_array().unwrap().iter().map(|group| group[key].as_u64().unwrap()).sum()
}

/// Waits until `check` holds, or fails with what it last saw.
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match check() {
            Ok(()) => return,
            Err(seen) => assert!(Instant::now() < deadline, "{what}: {seen}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn injected_bdev_errors_reach_the_host_and_the_counts_add_up() {
    let target = tgt().start("faults-inject", &[]);
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
    target.call("bdev_malloc_create", Some(json!({"name": "Malloc0", "num_blocks": 8192, "block_size": BLOCK})));
    target.call("bdev_error_create", Some(json!({"base_name": "Malloc0"})));
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true})));
    target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "EE_Malloc0"}})));
    let addr = target.listen(NQN);
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(32).unwrap();

    const WRITES: u64 = 200;
    const WRITE_FAILURES: u64 = 20;
    const READ_FAILURES: u64 = 10;
    target.call(
        "bdev_error_inject_error",
        Some(json!({"name": "EE_Malloc0", "io_type": "write", "error_type": "failure", "num": WRITE_FAILURES})),
    );
    // Writes at depth 31: each one a different 8-block range. CIDs are reused, so each
    // completion is matched to its range as it arrives.
    let mut in_flight = BTreeMap::new();
    let (mut done, mut failed_writes) = (Vec::new(), Vec::new());
    let (mut next, mut completed) = (0u64, 0u64);
    let deadline = Instant::now() + WAIT;
    while completed < WRITES {
        while next < WRITES && queue.free_slots() > 0 {
            let cid = queue.submit_write(1, next * 8, 8, pattern(next * 8, 8, 1)).unwrap();
            in_flight.insert(cid, next);
            next += 1;
        }
        done.clear();
        queue.poll(32, &mut done).unwrap();
        for completion in &done {
            let range = in_flight.remove(&completion.cid).expect("a completion for a command in flight");
            completed += 1;
            if !completion.is_ok() {
                assert_eq!(completion.status, Status::INTERNAL_ERROR, "range {range}");
                failed_writes.push(range);
            }
        }
        assert!(Instant::now() < deadline, "writes did not finish");
    }
    assert_eq!(failed_writes.len() as u64, WRITE_FAILURES, "exactly the injected writes fail");

    // Reads of every range: the injected ones fail with the NVMe status asked for.
    target.call(
        "bdev_error_inject_error",
        Some(json!({"name": "EE_Malloc0", "io_type": "read", "error_type": "nvme_failure", "num": READ_FAILURES,
            "nvme_sct": 2, "nvme_sc": 0x81})),
    );
    let (mut read_ok, mut read_failed) = (0u64, 0u64);
    for range in 0..WRITES {
        let mut back = vec![0u8; 8 * BLOCK as usize];
        match queue.read(1, range * 8, 8, &mut back) {
            Ok(()) => {
                read_ok += 1;
                if !failed_writes.contains(&range) {
                    assert!(back == pattern(range * 8, 8, 1), "range {range} came back different");
                }
            }
            Err(err) => {
                assert_eq!(err.status(), Some(Status::UNRECOVERED_READ_ERROR), "{err}");
                read_failed += 1;
            }
        }
    }
    assert_eq!((read_ok, read_failed), (WRITES - READ_FAILURES, READ_FAILURES));

    // The target's counters agree with the host's.
    let stat = &target.call("bdev_get_iostat", Some(json!({"name": "EE_Malloc0"})))["bdevs"][0];
    assert_eq!(stat["num_write_ops"], json!(WRITES - WRITE_FAILURES), "{stat}");
    assert_eq!(stat["num_read_ops"], json!(read_ok), "{stat}");
    let errors: u64 = stat["io_error"].as_object().unwrap().values().map(|count| count.as_u64().unwrap()).sum();
    assert_eq!(errors, WRITE_FAILURES + READ_FAILURES, "{stat}");
    let base = &target.call("bdev_get_iostat", Some(json!({"name": "Malloc0"})))["bdevs"][0];
    assert_eq!(base["num_write_ops"], json!(WRITES - WRITE_FAILURES), "failed writes never reach the base: {base}");
    assert_eq!(base["num_read_ops"], json!(read_ok), "{base}");
    let stats = target.call("nvmf_get_stats", None);
    assert_eq!(group_sum(&stats, "pending_bdev_io"), 0, "{stats}");
    eprintln!(
        "inject: host saw {} writes ok, {WRITE_FAILURES} failed; {read_ok} reads ok, {read_failed} failed; bdev: {stat}",
        WRITES - WRITE_FAILURES
    );
}

/// The P2P provider's free/size and the qpair and pending I/O counts, as the report prints them.
fn pools(target: &Target) -> (u64, u64, u64, u64) {
    let mem = target.call("mem_get_stats", None);
    let provider = &mem["providers"][0];
    let stats = target.call("nvmf_get_stats", None);
    (
        provider["free"].as_u64().unwrap(),
        provider["size"].as_u64().unwrap(),
        group_sum(&stats, "current_io_qpairs"),
        group_sum(&stats, "pending_bdev_io"),
    )
}

#[test]
fn hosts_that_vanish_mid_r2t_leak_nothing_and_hurt_no_one() {
    let target = tgt().start("faults-r2t", &["-m", "0x3"]);
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP", "max_io_size": 1_048_576})));
    target.call(
        "bdev_nvmesim_create",
        Some(json!({"name": "Sim0", "num_blocks": 65536, "block_size": BLOCK, "cmb_size_mb": 16})),
    );
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true})));
    target
        .call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Sim0", "p2pmem": "auto"}})));
    let addr = target.listen(NQN);
    let mut healthy = connect(addr);
    let mut healthy_queue = healthy.io_queue(16).unwrap();
    let before = pools(&target);
    assert_eq!(before.0, before.1, "the CMB starts free: {before:?}");

    for round in 0..12u64 {
        let mut victim = connect(addr);
        let mut queue = victim.io_queue(16).unwrap();
        // Up to 8 writes of 64 KiB each waiting for their data: each holds a CMB buffer.
        let writes = 1 + round % 8;
        for index in 0..writes {
            let sqe =
                SqeBuilder::new(io::WRITE, index as u16).rw(1, index * 128, 128).transport_data(128 * BLOCK).build();
            queue.send_raw(pdu::capsule_cmd(sqe.bytes(), 0, Digests::default()).as_slice()).unwrap();
        }
        let mut first_r2t = None;
        for _ in 0..writes {
            let answer = queue.recv_pdu(Duration::from_secs(5)).expect("an R2T");
            assert_eq!(answer.header.pdu_type, pdu_type::R2T, "round {round}");
            first_r2t.get_or_insert(pdu::DataHeader::parse(&answer.bytes));
        }
        // Half the rounds send the first 4 KiB of one write's data before vanishing.
        if let Some(r2t) = first_r2t.filter(|_| round % 2 == 1) {
            let header = pdu::DataHeader { cccid: r2t.cccid, ttag: r2t.ttag, offset: 0, length: 4096 };
            let mut bytes = pdu::data_pdu(pdu_type::H2C_DATA, header, 0, Digests::default()).as_slice().to_vec();
            bytes.extend_from_slice(&pattern(0, 8, 0xee));
            queue.send_raw(&bytes).unwrap();
        }
        assert!(pools(&target).0 < before.1, "the waiting writes hold CMB buffers");
        // The host vanishes: its I/O queue first, every other round its admin queue too.
        drop(queue);
        if round % 2 == 0 {
            drop(victim);
        }
        // Everyone else is still served, with their data intact.
        let data = pattern(round * 64, 64, round as u8);
        healthy_queue.write(1, 60_000 - round * 64, 64, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        healthy_queue.read(1, 60_000 - round * 64, 64, &mut back).unwrap();
        assert!(back == data, "the healthy host's data, round {round}");
    }
    eventually("every pool back to full and only the healthy queue left", || {
        let now = pools(&target);
        if now.0 == now.1 && now.2 == 1 && now.3 == 0 {
            Ok(())
        } else {
            Err(format!("(cmb free, cmb size, io qpairs, pending bdev io) = {now:?}"))
        }
    });
    let after = pools(&target);
    eprintln!("r2t drops: (cmb free, cmb size, io qpairs, pending bdev io) before {before:?} after {after:?}");
}

#[test]
fn a_namespace_removed_under_io_fails_that_io_cleanly() {
    let target = tgt().start("faults-ns", &[]);
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
    target.call("bdev_malloc_create", Some(json!({"name": "Malloc0", "num_blocks": 8192, "block_size": BLOCK})));
    // 300 ms per I/O, so the whole queue is at the bdev when the namespace goes.
    target.call(
        "bdev_delay_create",
        Some(json!({"name": "Delay0", "base_bdev_name": "Malloc0", "avg_read_latency": 300_000,
            "p99_read_latency": 300_000, "avg_write_latency": 300_000, "p99_write_latency": 300_000})),
    );
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true})));
    target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Delay0"}})));
    let addr = target.listen(NQN);
    let mut controller = connect(addr);
    controller.set_features(0x0b, 1 << 8).unwrap();
    let aer =
        controller.admin().submit(SqeBuilder::new(admin::ASYNC_EVENT_REQUEST, 0), Xfer::None, Vec::new()).unwrap();
    let mut queue = controller.io_queue(65).unwrap();
    for index in 0..64u64 {
        if index % 2 == 0 {
            queue.submit_write(1, index * 8, 8, pattern(index * 8, 8, 4)).unwrap();
        } else {
            queue.submit_read(1, index * 8, 8, vec![0u8; 8 * BLOCK as usize]).unwrap();
        }
    }
    let mut early = Vec::new();
    eventually("all 64 commands at the bdev", || {
        queue.poll(64, &mut early).map_err(|err| err.to_string())?;
        let pending = group_sum(&target.call("nvmf_get_stats", None), "pending_bdev_io");
        if pending == 64 {
            Ok(())
        } else {
            Err(format!("{pending} pending"))
        }
    });
    assert!(early.is_empty(), "{early:?}");
    target.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 1})));
    // Every command completes: those already at the bdev finish, the rest say the
    // namespace is gone. None hangs, none ends the connection.
    let done = drain(&mut queue, 64);
    let allowed = [Status::SUCCESS, Status::INVALID_NAMESPACE, Status::ABORTED_SQ_DELETION, Status::ABORTED_BY_REQUEST];
    assert!(done.iter().all(|completion| allowed.contains(&completion.status)), "{done:?}");
    let completion = controller.admin().wait(aer).unwrap();
    assert_eq!(completion.result as u32, 0x0004_0002, "notice: namespace attribute changed");
    assert_eq!(controller.get_log_page(0x04, 0, 0, 4096).unwrap()[..4], 1u32.to_le_bytes());
    assert_eq!(controller.active_namespaces().unwrap(), Vec::<u32>::new());
    let mut buf = vec![0u8; BLOCK as usize];
    let err = queue.read(1, 0, 1, &mut buf).unwrap_err();
    assert_eq!(err.status(), Some(Status::INVALID_NAMESPACE), "{err}");
    eventually("no bdev I/O left pending", || {
        let stats = target.call("nvmf_get_stats", None);
        if group_sum(&stats, "pending_bdev_io") == 0 {
            Ok(())
        } else {
            Err(stats.to_string())
        }
    });
    // The bdev is free again: it can be deleted and its base reused.
    target.call("bdev_delay_delete", Some(json!({"name": "Delay0"})));
    let mut statuses = BTreeMap::new();
    for completion in &done {
        *statuses.entry(completion.status.to_string()).or_insert(0) += 1;
    }
    eprintln!("namespace removal: 64 in-flight commands ended with {statuses:?}; AER fired");
}

/// Writes batches of 8 ranges of 8 blocks (ranges `first..first + count`) at depth 8, flushes after each batch, and counts a batch
/// acknowledged only when its writes and the flush succeeded. Stops at the first error.
fn write_until_stopped(addr: SocketAddr, acked: Arc<AtomicUsize>, first: u64, count: u64) -> Vec<u64> {
    let Ok(mut controller) = Controller::connect(addr, NQN, HOSTNQN, &Options::default()) else { return Vec::new() };
    let Ok(mut queue) = controller.io_queue(16) else { return Vec::new() };
    let mut ranges = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut next = first;
    while next + 8 <= first + count && Instant::now() < deadline {
        let batch: Vec<u64> = (next..next + 8).collect();
        next += 8;
        let mut submitted = 0;
        for range in &batch {
            if queue.submit_write(1, range * 8, 8, pattern(range * 8, 8, 9)).is_ok() {
                submitted += 1;
            }
        }
        let mut done = Vec::new();
        let batch_deadline = Instant::now() + Duration::from_secs(5);
        while done.len() < submitted && Instant::now() < batch_deadline {
            if queue.poll(8, &mut done).is_err() {
                return ranges;
            }
        }
        if submitted < batch.len() || done.len() < submitted || !done.iter().all(Completion::is_ok) {
            return ranges;
        }
        if queue.flush_namespace(1).is_err() {
            return ranges;
        }
        ranges.extend(batch);
        acked.fetch_add(8, Ordering::AcqRel);
    }
    ranges
}

#[test]
fn sigterm_under_load_exits_promptly_and_keeps_every_acknowledged_write() {
    let file = std::path::PathBuf::from(format!("/var/tmp/peerless-faults-{}.img", std::process::id()));
    const BLOCKS: u64 = 65_536;
    std::fs::File::create(&file).and_then(|f| f.set_len(BLOCKS * u64::from(BLOCK))).expect("create the backing file");
    let serve = |target: &Target| {
        target.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
        target.call(
            "bdev_uring_create",
            Some(json!({"name": "Uring0", "filename": file.to_string_lossy(), "block_size": BLOCK})),
        );
        target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true})));
        target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Uring0"}})));
        target.listen(NQN)
    };
    let mut target = tgt().start("faults-sigterm", &[]);
    let addr = serve(&target);
    let acked = Arc::new(AtomicUsize::new(0));
    // Two hosts, each writing its own half of the file.
    let ranges_per_writer = BLOCKS / 8 / 2;
    let writers: Vec<_> = (0..2u64)
        .map(|index| {
            let acked = acked.clone();
            std::thread::spawn(move || write_until_stopped(addr, acked, index * ranges_per_writer, ranges_per_writer))
        })
        .collect();
    // SIGTERM once writes are being acknowledged, with more in flight.
    let deadline = Instant::now() + WAIT;
    while acked.load(Ordering::Acquire) < 64 {
        assert!(Instant::now() < deadline, "no write was acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    }
    let signalled = Instant::now();
    // Still running exit_bound after SIGTERM fails the test.
    let exit_bound = Duration::from_secs(10);
    let status = target.stop_within(exit_bound);
    let exit_time = signalled.elapsed();
    assert!(status.success(), "peerless-tgt exited with {status} after SIGTERM");
    let log = target.log();
    assert!(
        log.contains("shutdown: transport TCP: every data buffer back"),
        "the target did not report its data buffers back before it exited:\n{log}"
    );
    let acknowledged: Vec<Vec<u64>> = writers.into_iter().map(|writer| writer.join().unwrap()).collect();
    drop(target);

    // The same file in a new target: every acknowledged range reads back.
    let target = tgt().start("faults-sigterm-restart", &[]);
    let addr = serve(&target);
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(16).unwrap();
    let mut checked = 0;
    for range in acknowledged.iter().flatten() {
        let mut back = vec![0u8; 8 * BLOCK as usize];
        queue.read(1, range * 8, 8, &mut back).unwrap();
        assert!(back == pattern(range * 8, 8, 9), "acknowledged range {range} was lost");
        checked += 1;
    }
    assert!(checked >= 64);
    let _ = std::fs::remove_file(&file);
    eprintln!("sigterm: exited {status} in {exit_time:?}; {checked} acknowledged 4 KiB writes all read back");
}

#[test]
fn a_host_gone_silent_with_io_in_flight_loses_its_controller_and_leaks_nothing() {
    let target = tgt().start("faults-kato", &[]);
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP", "min_kato": 100})));
    target.call("bdev_malloc_create", Some(json!({"name": "Malloc0", "num_blocks": 8192, "block_size": BLOCK})));
    target.call(
        "bdev_delay_create",
        Some(json!({"name": "Delay0", "base_bdev_name": "Malloc0", "avg_read_latency": 200_000,
            "p99_read_latency": 200_000, "avg_write_latency": 200_000, "p99_write_latency": 200_000})),
    );
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true})));
    target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Delay0"}})));
    let addr = target.listen(NQN);
    let options = Options { kato_ms: 300, ..Options::default() };
    let mut chatty = Controller::connect(addr, NQN, HOSTNQN, &options).unwrap();
    let mut chatty_queue = chatty.io_queue(8).unwrap();
    let mut silent = Controller::connect(addr, NQN, HOSTNQN, &options).unwrap();
    let mut silent_queue = silent.io_queue(32).unwrap();
    for index in 0..16u64 {
        silent_queue.submit_write(1, index * 8, 8, pattern(index * 8, 8, 6)).unwrap();
    }
    // Sent, and then the host says nothing more: no keep-alive, no reads of its socket.
    let mut early = Vec::new();
    eventually("the silent host's writes at the bdev", || {
        silent_queue.poll(16, &mut early).map_err(|err| err.to_string())?;
        match group_sum(&target.call("nvmf_get_stats", None), "pending_bdev_io") {
            16 => Ok(()),
            pending => Err(format!("{pending} pending")),
        }
    });
    assert!(early.is_empty(), "{early:?}");
    let mut round = 0u64;
    eventually("the silent host's controller is torn down, its I/O drained", || {
        round += 1;
        chatty.keep_alive_if_due().map_err(|err| err.to_string())?;
        let data = pattern(4096 + round, 1, 7);
        chatty_queue.write(1, 4096 + round % 64, 1, &data).map_err(|err| err.to_string())?;
        let controllers = target.call("nvmf_subsystem_get_controllers", Some(json!({"nqn": NQN})));
        let stats = target.call("nvmf_get_stats", None);
        let (pending, io_qpairs) = (group_sum(&stats, "pending_bdev_io"), group_sum(&stats, "current_io_qpairs"));
        if controllers.as_array().map(Vec::len) == Some(1) && pending == 0 && io_qpairs == 1 {
            Ok(())
        } else {
            Err(format!("controllers {controllers}, pending {pending}, io qpairs {io_qpairs}"))
        }
    });
    assert!(silent.keep_alive().is_err(), "the silent host's admin queue is gone");
    chatty.keep_alive().expect("the chatty host kept its controller");
    target.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 1})));
    target.call("bdev_delay_delete", Some(json!({"name": "Delay0"})));
    eprintln!("keep-alive under load: silent host torn down with 16 writes in flight after {round} chatty rounds");
}
