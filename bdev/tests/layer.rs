//! The bdev layer through its public API, on real reactors: data paths of malloc and
//! null, validation statuses, claims, hot-remove, QoS, the gate bounce, iostat.

mod harness;

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::modules::null::NullBdev;
use peerless_bdev::qos::QosLimits;
use peerless_bdev::{
    Bdev, BdevChannelOps, BdevError, BdevInfo, BdevIo, ClaimType, DataBuf, IoStatus, IoType, SubmitError, Uuid,
};
use peerless_core::mem::{self, CmbConfig, EmulatedCmb, MemKind, Path};
use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};

const BLOCK: usize = 512;

fn info(name: &str, num_blocks: u64) -> BdevInfo {
    BdevInfo {
        name: name.into(),
        product_name: "test".into(),
        block_size: BLOCK as u32,
        num_blocks,
        uuid: Uuid::random(),
        max_io_blocks: 0,
    }
}

fn malloc(harness: &Harness, name: &str, num_blocks: u64) {
    harness.bdevs.register(Arc::new(MallocBdev::new(info(name, num_blocks)).unwrap())).unwrap();
}

#[test]
fn malloc_writes_and_reads_back_across_sizes() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 4096);
    let desc = harness.open("Malloc0", true);
    for (offset, blocks) in [(0, 1), (1, 7), (100, 256), (4095, 1), (2000, 2048)] {
        assert_ok(&harness.run_one(&desc, patterned_write(offset, blocks, BLOCK, 3)));
        let back = harness.run_one(&desc, read(offset, blocks, BLOCK));
        assert_ok(&back);
        assert_eq!(back.bytes(), pattern(offset, blocks, BLOCK, 3), "{offset}+{blocks}");
    }
    // Many at once: each I/O is independent and all complete.
    let writes: Vec<_> = (0..64).map(|index| patterned_write(index * 8, 8, BLOCK, 9)).collect();
    assert!(harness.run(&desc, writes).iter().all(|(_, done)| done.status == IoStatus::SUCCESS));
    let reads: Vec<_> = (0..64).map(|index| read(index * 8, 8, BLOCK)).collect();
    for (index, io) in harness.run(&desc, reads) {
        assert_eq!(io.bytes(), pattern(index as u64 * 8, 8, BLOCK, 9));
    }
}

#[test]
fn malloc_moves_only_the_io_length_of_larger_buffers() {
    let harness = Harness::new();
    for block_size in [512u32, 4096] {
        let name = format!("Malloc{block_size}");
        let bdev = MallocBdev::new(BdevInfo { block_size, ..info(&name, 64) }).unwrap();
        harness.bdevs.register(Arc::new(bdev)).unwrap();
        let desc = harness.open(&name, true);
        check_buffers_larger_than_the_io(&harness, &desc, &[Memory::Dma, Memory::Heap], &|_, _| None);
    }
}

#[test]
fn bounced_device_buffers_larger_than_the_io_move_only_its_blocks() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 64);
    let desc = harness.open("Malloc0", true);
    let cmb = EmulatedCmb::new(CmbConfig::new("bounce-oversized", 4 << 20)).unwrap();
    let buffer_bytes = mem::IOBUF_SMALL_BYTES;
    let filler = vec![0xeeu8; buffer_bytes];
    let payload = pattern(8, 1, BLOCK, 3);
    let mut source = cmb.alloc(buffer_bytes).unwrap();
    let mut staged = filler.clone();
    staged[..BLOCK].copy_from_slice(&payload);
    mem::copy(&mut source.sgl_mut(), &mem::Sgl::from_host(&staged).unwrap()).unwrap();
    assert_ok(&harness.run_one(&desc, patterned_write(8, 2, BLOCK, 9)));
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Write, 8, 1).with(DataBuf::P2p(source))));
    let back = harness.run_one(&desc, read(8, 2, BLOCK)).bytes();
    assert_eq!(back[..BLOCK], payload[..]);
    assert_eq!(back[BLOCK..], pattern(9, 1, BLOCK, 9)[..], "the block after the write was written");

    let mut target = cmb.alloc(buffer_bytes).unwrap();
    mem::copy(&mut target.sgl_mut(), &mem::Sgl::from_host(&filler).unwrap()).unwrap();
    let mut done = harness.run_one(&desc, Spec::new(IoType::Read, 8, 1).with(DataBuf::P2p(target)));
    assert_ok(&done);
    let Some(DataBuf::P2p(landed)) = done.buffers.pop() else { panic!("the read's CMB buffer did not come back") };
    let mut bytes = vec![0u8; buffer_bytes];
    mem::copy(&mut mem::Sgl::from_host_mut(&mut bytes).unwrap(), &landed.sgl()).unwrap();
    assert_eq!(bytes[..BLOCK], payload[..]);
    assert!(bytes[BLOCK..].iter().all(|byte| *byte == 0xee), "the bounce copied past the read's end");
}

#[test]
fn io_a_module_completes_in_submit_reaches_the_submitter_before_submit_returns() {
    // A submitter that reaps its queue right after submitting (the NVMe-oF queues do)
    // then answers in the same pass: null and malloc complete in their submit.
    let harness = Harness::new();
    harness.bdevs.register(Arc::new(NullBdev::new(info("Null0", 64)))).unwrap();
    malloc(&harness, "Malloc0", 64);
    for (name, spec) in
        [("Null0", read(0, 8, BLOCK)), ("Malloc0", patterned_write(3, 8, BLOCK, 5)), ("Malloc0", read(56, 8, BLOCK))]
    {
        let desc = harness.open(name, true);
        let (queued, status, in_flight) = harness.on_thread(move |ctx| {
            let handle = desc.channel(ctx);
            let queue = peerless_bdev::completion_queue(1);
            let mut io = BdevIo::new(spec.io_type, spec.offset_blocks, spec.num_blocks);
            io.buffers = spec.buffers;
            handle.submit(ctx, io, &queue, 7);
            let queued = queue.borrow().len();
            let first = queue.borrow_mut().pop_front();
            (queued, first.map(|io| (io.tag, io.status)), handle.in_flight())
        });
        assert_eq!(queued, 1, "{name}: the completion waits for a later pass");
        assert_eq!(status, Some((7, IoStatus::SUCCESS)), "{name}");
        assert_eq!(in_flight, 0, "{name}: the layer still counts it in flight");
    }
    // Past the end: refused by the layer's checks, also before submit returns.
    let desc = harness.open("Null0", false);
    let status = harness.on_thread(move |ctx| {
        let handle = desc.channel(ctx);
        let queue = peerless_bdev::completion_queue(1);
        handle.submit(ctx, BdevIo::new(IoType::Read, 60, 8), &queue, 1);
        let status = queue.borrow_mut().pop_front().map(|io| io.status);
        status
    });
    assert!(status.is_some_and(|status| !status.is_success()), "{status:?}");
}

#[test]
fn compare_unmap_write_zeroes_flush_reset() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 128);
    let desc = harness.open("Malloc0", true);
    assert_ok(&harness.run_one(&desc, patterned_write(10, 4, BLOCK, 1)));
    let compare =
        |seed| Spec::new(IoType::Compare, 10, 4).with(DataBuf::Heap(pattern(10, 4, BLOCK, seed).into_boxed_slice()));
    assert_ok(&harness.run_one(&desc, compare(1)));
    assert_eq!(harness.run_one(&desc, compare(2)).status, IoStatus::COMPARE_FAILURE);

    for io_type in [IoType::Unmap, IoType::WriteZeroes] {
        assert_ok(&harness.run_one(&desc, patterned_write(20, 2, BLOCK, 5)));
        assert_ok(&harness.run_one(&desc, Spec::new(io_type, 20, 2)));
        assert!(harness.run_one(&desc, read(20, 2, BLOCK)).bytes().iter().all(|b| *b == 0), "{io_type:?}");
    }
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Flush, 0, 0)));
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Reset, 0, 0)));
}

#[test]
fn bad_requests_complete_with_the_right_status() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 64);
    harness.bdevs.register(Arc::new(NullBdev::new(info("Null0", 64)))).unwrap();
    let desc = harness.open("Malloc0", true);
    let check = |io: Spec, expected: IoStatus| {
        let done = harness.run_one(&desc, io);
        assert_eq!(done.status, expected, "{done:?}");
    };
    check(read(60, 8, BLOCK), IoStatus::LBA_OUT_OF_RANGE);
    check(read(u64::MAX, 2, BLOCK), IoStatus::LBA_OUT_OF_RANGE);
    check(read(0, 2, 100), IoStatus::INVALID_FIELD);
    check(read(0, 0, BLOCK), IoStatus::INVALID_FIELD);
    let read_only = harness.open("Malloc0", false);
    let denied = harness.run_one(&read_only, patterned_write(0, 1, BLOCK, 0));
    assert_eq!(denied.status, IoStatus::INVALID_FIELD, "a read-only descriptor cannot write");
    let null = harness.open("Null0", true);
    let compare = Spec::new(IoType::Compare, 0, 1).with(DataBuf::heap(BLOCK));
    assert_eq!(harness.run_one(&null, compare).status, IoStatus::INVALID_OPCODE);
    assert_ok(&harness.run_one(&null, patterned_write(0, 1, BLOCK, 0)));
}

#[test]
fn claims_conflict_and_release_on_close() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 64);
    let owner = harness.bdevs.open("Malloc0", true, None, None).unwrap();
    owner.claim(ClaimType::ExclusiveWrite, "nvmf subsystem cnode1").unwrap();
    let err = harness.bdevs.open("Malloc0", true, None, None).err().expect("a second writer must be refused");
    assert!(matches!(&err, BdevError::Claimed { by, .. } if by == "nvmf subsystem cnode1"), "{err}");
    assert!(err.to_string().contains("exclusive_write"), "{err}");
    let reader = harness.bdevs.open("Malloc0", false, None, None).unwrap();
    assert!(reader.claim(ClaimType::ReadManyWriteNone, "x").is_err(), "claimed bdevs refuse other claims");
    assert_eq!(harness.bdevs.claim_of("Malloc0").map(|(t, _)| t), Some(ClaimType::ExclusiveWrite));
    drop(owner);
    assert_eq!(harness.bdevs.claim_of("Malloc0"), None, "closing the descriptor releases its claim");
    let writer = harness.bdevs.open("Malloc0", true, None, None).unwrap();
    let err = reader.claim(ClaimType::ExclusiveWrite, "other").unwrap_err();
    assert!(matches!(err, BdevError::WritersOpen { .. }), "{err}");
    drop(writer);
    reader.claim(ClaimType::ReadManyWriteNone, "one").unwrap();
    let second = harness.bdevs.open("Malloc0", false, None, None).unwrap();
    second.claim(ClaimType::ReadManyWriteNone, "two").unwrap();
}

#[test]
fn deleting_an_open_bdev_reaches_its_descriptors_and_fails_new_io() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 64);
    let heard = Arc::new(AtomicBool::new(false));
    let flag = heard.clone();
    let desc = Arc::new(
        harness
            .bdevs
            .open(
                "Malloc0",
                true,
                Some(harness.thread.clone()),
                Some(Box::new(move |_| flag.store(true, Ordering::SeqCst))),
            )
            .unwrap(),
    );
    assert_ok(&harness.run_one(&desc, patterned_write(0, 1, BLOCK, 0)));
    harness.bdevs.unregister(None, "Malloc0").unwrap();
    let deadline = Instant::now() + WAIT;
    while !heard.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(heard.load(Ordering::SeqCst), "the hot-remove event did not reach the descriptor");
    assert!(desc.is_removed());
    assert_eq!(harness.run_one(&desc, read(0, 1, BLOCK)).status, IoStatus::INVALID_NAMESPACE);
    assert!(matches!(harness.bdevs.open("Malloc0", false, None, None), Err(BdevError::NotFound(_))));
    // The name is free again.
    malloc(&harness, "Malloc0", 8);
}

#[test]
fn registration_checks_names_sizes_and_uniqueness() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 8);
    let duplicate = harness.bdevs.register(Arc::new(NullBdev::new(info("Malloc0", 8)))).unwrap_err();
    assert_eq!(duplicate, BdevError::Exists("Malloc0".into()));
    let mut odd = info("Odd", 8);
    odd.block_size = 1000;
    assert!(matches!(
        harness.bdevs.register(Arc::new(NullBdev::new(odd))),
        Err(BdevError::Invalid { field: "block_size", .. })
    ));
    assert!(matches!(
        harness.bdevs.register(Arc::new(NullBdev::new(info("has space", 8)))),
        Err(BdevError::Invalid { field: "name", .. })
    ));
    assert!(matches!(
        harness.bdevs.register(Arc::new(NullBdev::new(info("Empty", 0)))),
        Err(BdevError::Invalid { .. })
    ));
    // A bdev is found by its UUID too.
    let uuid = harness.bdevs.get("Malloc0").unwrap().info().uuid.to_string();
    assert_eq!(harness.bdevs.get(&uuid).unwrap().info().name, "Malloc0");
}

#[test]
fn device_buffers_bounce_through_the_gate_for_a_host_only_bdev() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 256);
    let desc = harness.open("Malloc0", true);
    // Strict emulated CMB: any CPU dereference of its memory would kill the test.
    let cmb = EmulatedCmb::new(CmbConfig::new("bounce-test", 4 << 20)).unwrap();
    let mut device = cmb.alloc(16 * BLOCK).unwrap();
    let expected = pattern(0, 16, BLOCK, 7);
    mem::copy(&mut device.sgl_mut(), &mem::Sgl::from_host(&expected).unwrap()).unwrap();
    let before = mem::stats::snapshot();
    let mut write = harness.run_one(&desc, Spec::new(IoType::Write, 32, 16).with(DataBuf::P2p(device)));
    assert_ok(&write);
    // Reads bounce back into a second CMB buffer.
    let read_io = Spec::new(IoType::Read, 32, 16).with(DataBuf::P2p(cmb.alloc(16 * BLOCK).unwrap()));
    let mut read_io = harness.run_one(&desc, read_io);
    assert_ok(&read_io);
    let Some(DataBuf::P2p(landed)) = read_io.buffers.pop() else { panic!("the read's CMB buffer did not come back") };
    let mut back = vec![0u8; 16 * BLOCK];
    mem::copy(&mut mem::Sgl::from_host_mut(&mut back).unwrap(), &landed.sgl()).unwrap();
    assert_eq!(back, expected);
    let delta = mem::stats::snapshot().since(&before);
    assert!(delta.cpu_bytes(Path::IoAccessor) >= 2 * 16 * BLOCK as u64, "{delta:?}");
    assert!(delta.payload_bytes(MemKind::IoMem) >= 2 * 16 * BLOCK as u64);
    // The original device buffer came back to the submitter.
    assert!(matches!(write.buffers.pop(), Some(DataBuf::P2p(_))));
    let stats = harness.on_thread({
        let desc = desc.clone();
        move |ctx| desc.channel(ctx).in_flight()
    });
    assert_eq!(stats, 0);
}

#[test]
fn qos_holds_an_iops_limit_within_ten_percent() {
    let harness = Harness::new();
    harness.bdevs.register(Arc::new(NullBdev::new(info("Null0", 1 << 20)))).unwrap();
    let desc = harness.open("Null0", true);
    let bdevs = harness.bdevs.clone();
    harness.on_thread(move |ctx| {
        let limits = QosLimits { rw_ios_per_sec: 10_000, ..QosLimits::default() };
        bdevs.set_qos(ctx, "Null0", limits, |_| {}).unwrap();
    });
    // Unthrottled, this loop does well over a million I/O per second.
    let (completed, statuses) = harness.run_for(&desc, Duration::from_secs(1), 32, |sequence| {
        Spec::new(IoType::Read, sequence % 1024, 1).with(DataBuf::heap(BLOCK))
    });
    assert_eq!(statuses, vec![IoStatus::SUCCESS]);
    assert!((9_000..=11_000).contains(&completed), "10k IOPS limit gave {completed} I/O in 1 s");
    let bad = QosLimits { rw_ios_per_sec: 1_500, ..QosLimits::default() };
    let bdevs = harness.bdevs.clone();
    let refused = harness.on_thread(move |ctx| bdevs.set_qos(ctx, "Null0", bad, |_| {}).map_err(|err| err.to_string()));
    assert!(refused.unwrap_err().contains("multiple of 1000"));
}

#[test]
fn io_waiting_for_qos_budget_is_released_in_interrupt_mode() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 64);
    let bdevs = harness.bdevs.clone();
    harness.on_thread(move |ctx| {
        let limits = QosLimits { rw_ios_per_sec: 1_000, ..QosLimits::default() };
        bdevs.set_qos(ctx, "Malloc0", limits, |_| {}).unwrap();
    });
    let desc = harness.open("Malloc0", false);
    // One I/O per 1 ms timeslice: four of these wait for later timeslices, and nothing
    // else on the thread would wake the reactor for them.
    let done = harness.run(&desc, (0..5).map(|index| read(index, 1, BLOCK)).collect());
    assert!(done.iter().all(|(_, io)| io.status == IoStatus::SUCCESS));
    assert_eq!(done.iter().map(|(tag, _)| *tag).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
}

/// A device with room for two I/O at a time that completes from its own poller: the
/// layer must queue the rest and retry, losing none.
struct Stingy {
    info: BdevInfo,
}

struct StingyChannel {
    in_flight: Rc<RefCell<VecDeque<Box<BdevIo>>>>,
    _completer: Poller,
}

const STINGY_SLOTS: usize = 2;

impl Bdev for Stingy {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn module_name(&self) -> &'static str {
        "stingy"
    }
    fn supports(&self, io_type: IoType) -> bool {
        io_type == IoType::Read
    }
    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        let in_flight: Rc<RefCell<VecDeque<Box<BdevIo>>>> = Rc::default();
        let device = in_flight.clone();
        let completer = ctx.poller("stingy", 0, move |_| {
            let finished = device.borrow_mut().pop_front();
            match finished {
                Some(io) => {
                    io.complete(IoStatus::SUCCESS);
                    PollStatus::Busy
                }
                None => PollStatus::Idle,
            }
        });
        Box::new(StingyChannel { in_flight, _completer: completer })
    }
    fn config_entry(&self) -> Option<serde_json::Value> {
        None
    }
}

impl BdevChannelOps for StingyChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        if self.in_flight.borrow().len() >= STINGY_SLOTS {
            return Err(SubmitError::NoResources(io));
        }
        self.in_flight.borrow_mut().push_back(io);
        Ok(())
    }
}

#[test]
fn no_resources_queues_and_retries_without_losing_io() {
    let harness = Harness::new();
    harness.bdevs.register(Arc::new(Stingy { info: info("Stingy0", 1024) })).unwrap();
    let desc = harness.open("Stingy0", false);
    let done = harness.run(&desc, (0..64).map(|index| read(index, 1, BLOCK)).collect());
    assert_eq!(done.len(), 64);
    assert!(done.iter().all(|(_, done)| done.status == IoStatus::SUCCESS));
    let mut tags: Vec<usize> = done.iter().map(|(tag, _)| *tag).collect();
    tags.sort();
    assert_eq!(tags, (0..64).collect::<Vec<_>>(), "every I/O came back once");
    let bdevs = harness.bdevs.clone();
    let stats = harness.on_thread(move |ctx| {
        let (tx, rx) = std::sync::mpsc::channel();
        bdevs.collect_iostat(ctx, vec!["Stingy0".into()], move |_, stats| tx.send(stats).unwrap());
        rx
    });
    let stats = stats.recv_timeout(WAIT).unwrap();
    assert_eq!(stats[0].1.read.ops, 64);
    assert!(stats[0].1.nomem_retries >= 60, "{:?}", stats[0].1);
}

/// A device that completes what it accepted from its own poller, oldest first (as a
/// queue pair does, so its reset finishes after what it accepted before it), and has no
/// room for a write the first time it sees it: the layer must queue that write for retry.
struct Picky {
    info: BdevInfo,
}

struct PickyChannel {
    accepted: Rc<RefCell<VecDeque<Box<BdevIo>>>>,
    /// Offsets of the writes refused once.
    refused: HashSet<u64>,
    _completer: Poller,
}

impl Bdev for Picky {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn module_name(&self) -> &'static str {
        "picky"
    }
    fn supports(&self, io_type: IoType) -> bool {
        matches!(io_type, IoType::Read | IoType::Write | IoType::Reset)
    }
    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        let accepted: Rc<RefCell<VecDeque<Box<BdevIo>>>> = Rc::default();
        let device = accepted.clone();
        let completer = ctx.poller("picky", 0, move |_| {
            let finished = device.borrow_mut().pop_front();
            match finished {
                Some(io) => {
                    io.complete(IoStatus::SUCCESS);
                    PollStatus::Busy
                }
                None => PollStatus::Idle,
            }
        });
        Box::new(PickyChannel { accepted, refused: HashSet::new(), _completer: completer })
    }
    fn config_entry(&self) -> Option<serde_json::Value> {
        None
    }
}

impl BdevChannelOps for PickyChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        if io.io_type == IoType::Write && self.refused.insert(io.offset_blocks) {
            return Err(SubmitError::NoResources(io));
        }
        self.accepted.borrow_mut().push_back(io);
        Ok(())
    }
}

/// The tags of what came back, in the order it completed; every status a success.
fn completion_order(done: &[(usize, Done)]) -> Vec<usize> {
    for (tag, io) in done {
        assert_eq!(io.status, IoStatus::SUCCESS, "I/O {tag}: {io:?}");
    }
    done.iter().map(|(tag, _)| *tag).collect()
}

#[test]
fn a_reset_waits_for_io_queued_for_retry_before_it() {
    let harness = Harness::new();
    harness.bdevs.register(Arc::new(Picky { info: info("Picky0", 64) })).unwrap();
    let desc = harness.open("Picky0", true);
    // The write finds no room and waits for retry; the reset behind it must not reach
    // the device first (it would finish first), and the read behind the reset must not
    // overtake either of them.
    let batch = vec![patterned_write(1, 1, BLOCK, 0), Spec::new(IoType::Reset, 0, 0), read(2, 1, BLOCK)];
    assert_eq!(completion_order(&harness.run(&desc, batch)), [0, 1, 2]);
    // Several writes waiting, with a reset between them.
    let mut batch: Vec<_> = (10..14).map(|offset| patterned_write(offset, 1, BLOCK, 0)).collect();
    batch.insert(2, Spec::new(IoType::Reset, 0, 0));
    assert_eq!(completion_order(&harness.run(&desc, batch)), [0, 1, 2, 3, 4], "the reset overtook a write");
}

#[test]
fn a_reset_waits_for_io_held_by_qos_before_it() {
    let harness = Harness::new();
    harness.bdevs.register(Arc::new(Picky { info: info("Picky0", 64) })).unwrap();
    let bdevs = harness.bdevs.clone();
    harness.on_thread(move |ctx| {
        let limits = QosLimits { rw_ios_per_sec: 2_000, ..QosLimits::default() };
        bdevs.set_qos(ctx, "Picky0", limits, |_| {}).unwrap();
    });
    let desc = harness.open("Picky0", true);
    // Two I/O per 1 ms timeslice: writes 0 and 1 start at once (and wait for retry), write
    // 2 and the reset wait for the next timeslice, which releases both; write 2 then
    // finds no room, and the reset must still reach the device after it.
    let batch = vec![
        patterned_write(1, 1, BLOCK, 0),
        patterned_write(2, 1, BLOCK, 0),
        patterned_write(3, 1, BLOCK, 0),
        Spec::new(IoType::Reset, 0, 0),
        read(1, 1, BLOCK),
    ];
    assert_eq!(completion_order(&harness.run(&desc, batch)), [0, 1, 2, 3, 4]);
}

#[test]
fn a_resize_moves_the_range_under_open_channels_and_tells_each_opener_on_its_thread() {
    let harness = Harness::new();
    harness.bdevs.register(Arc::new(NullBdev::new(info("Null0", 64)))).unwrap();
    let desc = Arc::new(harness.bdevs.open("Null0", true, Some(harness.thread.clone()), None).unwrap());
    let heard: Arc<parking_lot::Mutex<Vec<(String, u64)>>> = Arc::default();
    let log = heard.clone();
    desc.on_resize(Arc::new(move |ctx: &mut ThreadCtx, blocks| log.lock().push((ctx.name().to_string(), blocks))));
    assert_eq!(harness.run_one(&desc, read(60, 8, BLOCK)).status, IoStatus::LBA_OUT_OF_RANGE);

    // Grown from a thread that is not the opener's: the opener hears it on its own.
    let bdevs = harness.bdevs.clone();
    std::thread::spawn(move || bdevs.notify_resize(None, "Null0", 128)).join().unwrap().unwrap();
    assert_eq!(desc.num_blocks(), 128);
    assert_eq!(harness.bdevs.num_blocks("Null0").unwrap(), 128);
    let deadline = Instant::now() + WAIT;
    while heard.lock().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let opener = harness.on_thread(|ctx| ctx.name().to_string());
    assert_eq!(*heard.lock(), [(opener, 128)]);
    // The channel the first read made follows the new size.
    assert_ok(&harness.run_one(&desc, read(60, 8, BLOCK)));
    assert_ok(&harness.run_one(&desc, read(127, 1, BLOCK)));
    assert_eq!(harness.run_one(&desc, read(127, 2, BLOCK)).status, IoStatus::LBA_OUT_OF_RANGE);

    // The same size again is no event; shrinking under an opener and zero are refused.
    harness.bdevs.notify_resize(None, "Null0", 128).unwrap();
    let refused = harness.bdevs.notify_resize(None, "Null0", 100).unwrap_err();
    assert!(refused.to_string().contains("open"), "{refused}");
    let refused = harness.bdevs.notify_resize(None, "Null0", 0).unwrap_err();
    assert!(refused.to_string().contains("at least one block"), "{refused}");
    assert!(matches!(harness.bdevs.notify_resize(None, "Nothing", 8), Err(BdevError::NotFound(_))));
    assert_eq!(desc.num_blocks(), 128);
    assert_eq!(heard.lock().len(), 1, "refusals and repeats told nobody");

    // With nobody holding it, it may shrink.
    drop(desc);
    harness.bdevs.notify_resize(None, "Null0", 32).unwrap();
    let desc = harness.open("Null0", true);
    assert_eq!(harness.run_one(&desc, read(32, 1, BLOCK)).status, IoStatus::LBA_OUT_OF_RANGE);
    assert_ok(&harness.run_one(&desc, read(31, 1, BLOCK)));
}
