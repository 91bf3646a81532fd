//! One bdevperf job: a closed loop of I/O against one bdev on one reactor thread, driven
//! by a poller. I/O objects and buffers are made once per slot and reused, so the loop
//! measures the bdev layer and the module, not the allocator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use peerless_bdev::{completion_queue, BdevIo, DataBuf, Desc, IoType};
use peerless_core::reactor::{PollStatus, ThreadCtx};

use crate::perf::config::{Access, Workload};
use crate::perf::pattern;
use crate::perf::worker::new_histogram;

/// What a finished job reports.
pub struct JobResult {
    pub core: u32,
    pub bdev: String,
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub latency_ns: Histogram<u64>,
}

#[derive(Clone)]
pub struct JobSpec {
    pub workload: Workload,
    /// SPDK's `verify`: write a pattern, read it back, compare.
    pub verify: bool,
    pub io_bytes: usize,
    pub depth: usize,
    pub seed: u64,
    /// Time every I/O (two clock reads each); otherwise latency is Little's law.
    pub track_latency: bool,
}

/// Counters the main thread reads once a second; only the job's thread writes them.
#[derive(Default)]
pub struct Progress {
    pub ios: AtomicU64,
    pub bytes: AtomicU64,
}

struct Slot {
    buffer: Option<DataBuf>,
    lba: u64,
    /// In a verify loop: the read that checks what this slot just wrote.
    verifying: bool,
    started: Option<Instant>,
}

/// Starts the job on the calling thread; `done` hears the result once `stop` is set and
/// every I/O in flight has come back.
pub fn start(
    ctx: &mut ThreadCtx,
    desc: Arc<Desc>,
    spec: JobSpec,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    done: Sender<JobResult>,
) {
    let handle = desc.channel(ctx);
    let info = handle.info();
    let block_size = info.block_size as usize;
    let io_blocks = (spec.io_bytes / block_size).max(1) as u64;
    let span = (info.num_blocks / io_blocks).max(1);
    let queue = completion_queue(spec.depth);
    let completions = queue.clone();
    let mut slots: Vec<Slot> = (0..spec.depth)
        .map(|_| Slot { buffer: Some(DataBuf::heap(spec.io_bytes)), lba: 0, verifying: false, started: None })
        .collect();
    let mut spare: Vec<Box<BdevIo>> = Vec::with_capacity(spec.depth);
    let mut rng = spec.seed | 1;
    let mut sequential = 0u64;
    let mut result = JobResult {
        core: ctx.core(),
        bdev: info.name.clone(),
        ios: 0,
        bytes: 0,
        errors: 0,
        mismatches: 0,
        latency_ns: new_histogram(),
    };
    let mut scratch = Vec::new();
    let mut outstanding = 0usize;
    let mut done = Some(done);

    // Picks an LBA and type for a fresh I/O on `slot`, fills write data, submits.
    let mut issue = move |ctx: &mut ThreadCtx, index: usize, slots: &mut [Slot], spare: &mut Vec<Box<BdevIo>>| {
        let slot = &mut slots[index];
        let (io_type, lba) = if slot.verifying {
            (IoType::Read, slot.lba)
        } else {
            let block_index = match spec.workload.access {
                Access::Random => pattern::next_random(&mut rng) % span,
                Access::Sequential => {
                    sequential = (sequential + 1) % span;
                    sequential
                }
            };
            let read = !spec.verify && (pattern::next_random(&mut rng) % 100) < u64::from(spec.workload.read_percent);
            (if read { IoType::Read } else { IoType::Write }, block_index * io_blocks)
        };
        slot.lba = lba;
        let mut buffer = slot.buffer.take().unwrap_or_else(|| DataBuf::heap(spec.io_bytes));
        if spec.verify && io_type == IoType::Write {
            if let DataBuf::Heap(bytes) = &mut buffer {
                pattern::fill(bytes, lba, block_size, spec.seed);
            }
        }
        let mut io = match spare.pop() {
            Some(mut io) => {
                io.reset(io_type, lba, io_blocks);
                io
            }
            None => BdevIo::new(io_type, lba, io_blocks),
        };
        io.buffers.push(buffer);
        if spec.track_latency {
            slot.started = Some(Instant::now());
        }
        handle.submit(ctx, io, &queue, index as u64);
    };
    for index in 0..spec.depth {
        issue(ctx, index, &mut slots, &mut spare);
        outstanding += 1;
    }
    // Runs until the job has drained, then finishes itself.
    ctx.poller("bdevperf", 0, move |ctx| {
        let mut worked = false;
        loop {
            let Some(mut io) = completions.borrow_mut().pop_front() else { break };
            worked = true;
            let index = io.tag as usize;
            let slot = &mut slots[index];
            slot.buffer = io.buffers.pop();
            if let Some(started) = slot.started.take() {
                let _ = result.latency_ns.record(started.elapsed().as_nanos() as u64);
            }
            if !io.status.is_success() {
                result.errors += 1;
            } else if spec.verify && io.io_type == IoType::Read {
                if let Some(DataBuf::Heap(bytes)) = &slot.buffer {
                    result.mismatches +=
                        pattern::mismatched_blocks(bytes, slot.lba, block_size, spec.seed, &mut scratch);
                }
            }
            // A verify loop counts the pair (write, then its check) as I/O both.
            result.ios += 1;
            result.bytes += spec.io_bytes as u64;
            if spec.verify {
                slot.verifying = io.io_type == IoType::Write && io.status.is_success();
            }
            spare.push(io);
            if stop.load(Ordering::Relaxed) && !slots[index].verifying {
                outstanding -= 1;
            } else {
                issue(ctx, index, &mut slots, &mut spare);
            }
        }
        progress.ios.store(result.ios, Ordering::Relaxed);
        progress.bytes.store(result.bytes, Ordering::Relaxed);
        if outstanding == 0 {
            if let Some(done) = done.take() {
                let finished = std::mem::replace(&mut result.latency_ns, new_histogram());
                let _ = done.send(JobResult { latency_ns: finished, bdev: result.bdev.clone(), ..result });
            }
            return PollStatus::Done;
        }
        PollStatus::from_work(worked)
    })
    .detach();
}
