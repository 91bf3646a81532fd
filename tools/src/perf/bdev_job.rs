//! One perf job on the in-process framework: a closed loop of I/O against one bdev from
//! one reactor thread, with the fabric worker's workload, `--verify` lanes, pacing and
//! per-second ticks. Every buffer is a pool buffer carved from DMA memory at start-up,
//! so a driver of real hardware puts its bus address straight into the command instead
//! of bouncing through memory of its own.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peerless_bdev::{completion_queue, BdevHandle, BdevIo, CompletionQueue, DataBuf, Desc, IoType};
use peerless_core::mem::{IoBufClass, IoBufPool};
use peerless_core::reactor::{PollStatus, ThreadCtx};

use super::config::Access;
use super::pace::Pacer;
use super::pattern::{self, next_random};
use super::worker::{new_histogram, Plan, Report, Row, Tick, DRAIN_TIMEOUT};

/// What a job sends to the main thread.
pub enum Event {
    Tick(Tick),
    Done(Report),
}

/// Where one job runs and which share of the namespace it owns.
pub struct JobSpec {
    pub core: usize,
    /// The row label: the namespace the bdev is.
    pub nsid: u32,
    pub depth: u16,
    /// First verify lane of this job, and how many lanes share the bdev.
    pub lane_base: u64,
    pub lanes_total: u64,
    pub rng_seed: u64,
    pub rate_iops: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    /// `--verify`: the write of a pattern, then the read that checks it.
    VerifyWrite,
    VerifyRead,
}

struct Slot {
    buf: Option<DataBuf>,
    io: Option<Box<BdevIo>>,
    op: Op,
    slba: u64,
    seed: u64,
    start: Instant,
    lane: u64,
    writes: u64,
    seq: u64,
}

struct Job {
    handle: BdevHandle,
    queue: CompletionQueue,
    plan: Plan,
    slots: Vec<Slot>,
    /// Slots waiting for their next submission (at once unless `--rate-iops` holds them).
    ready: Vec<usize>,
    outstanding: usize,
    block_size: usize,
    blocks_per_io: u64,
    units: u64,
    lanes_total: u64,
    seq_next: u64,
    rng: u64,
    pacer: Option<Pacer>,
    report: Report,
    interval: Histogram<u64>,
    interval_ios: u64,
    interval_bytes: u64,
    next_tick: Instant,
    scratch: Vec<u8>,
}

/// Starts the job on the calling reactor thread; `events` hears a tick a second and
/// then its report, once the run's end has come and every I/O in flight is back.
pub fn start(
    ctx: &mut ThreadCtx,
    desc: Arc<Desc>,
    pool: &'static IoBufPool,
    spec: JobSpec,
    plan: Plan,
    events: Sender<Event>,
) {
    let row = Row { core: spec.core, nsid: spec.nsid, ios: 0, bytes: 0, latency_ns: new_histogram() };
    let report = Report { rows: vec![row], elapsed: Duration::ZERO, errors: 0, mismatches: 0, fatal: None };
    let job = match Job::new(ctx, &desc, pool, &spec, plan, report) {
        Ok(job) => job,
        Err(message) => {
            let report =
                Report { rows: Vec::new(), elapsed: Duration::ZERO, errors: 0, mismatches: 0, fatal: Some(message) };
            let _ = events.send(Event::Done(report));
            return;
        }
    };
    let mut job = Some(job);
    ctx.poller("perf", 0, move |ctx| {
        // The descriptor stays open while the job's channel is in use.
        let _open = &desc;
        let Some(running) = job.as_mut() else { return PollStatus::Done };
        let worked = running.poll(ctx, &events);
        if running.finished() {
            if let Some(mut finished) = job.take() {
                finished.report.elapsed = finished.plan.start.elapsed();
                let _ = events.send(Event::Done(finished.report));
            }
            return PollStatus::Done;
        }
        PollStatus::from_work(worked)
    })
    .detach();
}

impl Job {
    fn new(
        ctx: &mut ThreadCtx,
        desc: &Desc,
        pool: &'static IoBufPool,
        spec: &JobSpec,
        plan: Plan,
        report: Report,
    ) -> Result<Job, String> {
        let handle = desc.channel(ctx);
        let info = handle.info();
        let block_size = info.block_size as usize;
        if block_size == 0 || !plan.io_bytes.is_multiple_of(block_size) {
            return Err(format!("-o {} is not a multiple of {}'s {block_size}-byte blocks", plan.io_bytes, info.name));
        }
        let blocks_per_io = (plan.io_bytes / block_size) as u64;
        let units = info.num_blocks / blocks_per_io;
        if units == 0 || (plan.verify && units < spec.lanes_total) {
            return Err(format!("{} is too small for {} I/Os of {} bytes", info.name, spec.lanes_total, plan.io_bytes));
        }
        if plan.verify && block_size < 16 {
            return Err(format!("--verify needs blocks of at least 16 bytes; {} has {block_size}", info.name));
        }
        let depth = usize::from(spec.depth);
        let mut cache = pool.cache();
        let mut slots = Vec::with_capacity(depth);
        for index in 0..depth {
            let mut buf = cache.get(IoBufClass::Large).ok_or("the run's DMA buffer pool ran dry")?;
            // Writes without --verify send this; its content only has to be deterministic.
            pattern::fill(&mut buf.bytes_mut()[..plan.io_bytes], 0, block_size, plan.seed);
            slots.push(Slot {
                buf: Some(DataBuf::Pool(buf)),
                io: Some(BdevIo::new(IoType::Read, 0, blocks_per_io)),
                op: Op::Read,
                slba: 0,
                seed: 0,
                start: plan.start,
                lane: spec.lane_base + index as u64,
                writes: 0,
                seq: 0,
            });
        }
        let pacer = spec.rate_iops.map(|rate| Pacer::new(plan.start, rate));
        Ok(Job {
            handle,
            queue: completion_queue(depth),
            // Jobs start spread over the namespace so they do not read the same blocks in step.
            seq_next: units * spec.lane_base / spec.lanes_total.max(1),
            next_tick: plan.start + Duration::from_secs(1),
            plan,
            slots,
            // Popped from the end: slot 0 goes first.
            ready: (0..depth).rev().collect(),
            outstanding: 0,
            block_size,
            blocks_per_io,
            units,
            lanes_total: spec.lanes_total,
            rng: spec.rng_seed | 1,
            pacer,
            report,
            interval: new_histogram(),
            interval_ios: 0,
            interval_bytes: 0,
            scratch: Vec::new(),
        })
    }

    fn finished(&self) -> bool {
        self.report.fatal.is_some() || (self.outstanding == 0 && Instant::now() >= self.plan.end)
    }

    /// Reaps completions, submits what is ready, ticks once a second.
    fn poll(&mut self, ctx: &mut ThreadCtx, events: &Sender<Event>) -> bool {
        let now = Instant::now();
        let stopping = now >= self.plan.end;
        if !stopping && now >= self.next_tick {
            let second = (self.next_tick - self.plan.start).as_secs();
            let latency_ns = std::mem::replace(&mut self.interval, new_histogram());
            let tick = Tick { second, ios: self.interval_ios, bytes: self.interval_bytes, latency_ns };
            // The main thread may have gone (an error there); the run still finishes.
            let _ = events.send(Event::Tick(tick));
            (self.interval_ios, self.interval_bytes) = (0, 0);
            self.next_tick += Duration::from_secs(1);
        }
        let mut worked = false;
        loop {
            let Some(io) = self.queue.borrow_mut().pop_front() else { break };
            worked = true;
            self.complete(io);
        }
        if !stopping {
            if let Err(message) = self.submit_ready(ctx) {
                self.report.fatal = Some(message);
            }
        } else if now > self.plan.end + DRAIN_TIMEOUT && self.outstanding > 0 {
            self.report.fatal =
                Some(format!("{} I/Os still outstanding {DRAIN_TIMEOUT:?} after the end", self.outstanding));
        }
        worked
    }

    fn complete(&mut self, mut io: Box<BdevIo>) {
        let done_at = Instant::now();
        self.outstanding -= 1;
        let index = io.tag as usize;
        let slot = &mut self.slots[index];
        slot.buf = io.buffers.pop();
        let latency_ns = (done_at.duration_since(slot.start).as_nanos() as u64).max(1);
        let bytes = self.plan.io_bytes as u64;
        let row = &mut self.report.rows[0];
        row.ios += 1;
        row.bytes += bytes;
        row.latency_ns.saturating_record(latency_ns);
        self.interval.saturating_record(latency_ns);
        self.interval_ios += 1;
        self.interval_bytes += bytes;
        if !io.status.is_success() {
            self.report.errors += 1;
            // Nothing to read back after a failed write: the lane starts a new write.
            slot.op = Op::Read;
        } else if slot.op == Op::VerifyRead {
            if let Some(DataBuf::Pool(buf)) = &slot.buf {
                let data = &buf.bytes()[..self.plan.io_bytes];
                self.report.mismatches +=
                    pattern::mismatched_blocks(data, slot.slba, self.block_size, slot.seed, &mut self.scratch);
            }
        }
        slot.io = Some(io);
        self.ready.push(index);
    }

    fn submit_ready(&mut self, ctx: &mut ThreadCtx) -> Result<(), String> {
        while let Some(&index) = self.ready.last() {
            if let Some(pacer) = &mut self.pacer {
                if !pacer.try_take(Instant::now()) {
                    break;
                }
            }
            self.ready.pop();
            self.submit_next(ctx, index)?;
        }
        Ok(())
    }

    /// Picks and submits the next I/O of slot `index`, as the fabric worker does.
    fn submit_next(&mut self, ctx: &mut ThreadCtx, index: usize) -> Result<(), String> {
        let plan = &self.plan;
        let slot = &mut self.slots[index];
        let (Some(mut buf), Some(mut io)) = (slot.buf.take(), slot.io.take()) else {
            return Err("an I/O buffer went missing".into());
        };
        let DataBuf::Pool(bytes) = &mut buf else { return Err("a run buffer is not a pool buffer".into()) };
        let data = &mut bytes.bytes_mut()[..plan.io_bytes];
        if plan.verify {
            if slot.op == Op::VerifyWrite {
                // Read back what this lane just wrote, into a cleared buffer so a read
                // that moves no data cannot pass by finding the pattern still there.
                slot.op = Op::VerifyRead;
                data.fill(0);
            } else {
                // Each lane owns a disjoint region, so no two I/Os in flight touch the same blocks.
                let region = self.units / self.lanes_total;
                let offset = match plan.workload.access {
                    Access::Random => next_random(&mut self.rng) % region,
                    Access::Sequential => {
                        slot.seq += 1;
                        (slot.seq - 1) % region
                    }
                };
                slot.op = Op::VerifyWrite;
                slot.slba = (slot.lane * region + offset) * self.blocks_per_io;
                slot.writes += 1;
                slot.seed = plan.seed ^ slot.lane.wrapping_mul(0x100_0000_01b3) ^ (slot.writes << 40);
                pattern::fill(data, slot.slba, self.block_size, slot.seed);
            }
        } else {
            let read_percent = u64::from(plan.workload.read_percent);
            let read = read_percent == 100 || (read_percent > 0 && next_random(&mut self.rng) % 100 < read_percent);
            slot.op = if read { Op::Read } else { Op::Write };
            let unit = match plan.workload.access {
                Access::Random => next_random(&mut self.rng) % self.units,
                Access::Sequential => {
                    let unit = self.seq_next;
                    self.seq_next = (self.seq_next + 1) % self.units;
                    unit
                }
            };
            slot.slba = unit * self.blocks_per_io;
        }
        let io_type = match slot.op {
            Op::Read | Op::VerifyRead => IoType::Read,
            Op::Write | Op::VerifyWrite => IoType::Write,
        };
        io.reset(io_type, slot.slba, self.blocks_per_io);
        io.buffers.push(buf);
        slot.start = Instant::now();
        self.outstanding += 1;
        self.handle.submit(ctx, io, &self.queue, index as u64);
        Ok(())
    }
}
