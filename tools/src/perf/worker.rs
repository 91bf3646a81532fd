//! One pinned OS thread driving its own queues at full depth: it keeps every queue's
//! depth busy until the end time, drains, and reports latencies (HDR histogram) and
//! counts, with one interval report per second for the live line.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::initiator::{Completion, IoQueue};

use super::config::{Access, Workload};
use super::pace::Pacer;
use super::pattern::{self, next_random};

/// Completions taken from one queue per poll before moving to the next queue.
const POLL_BATCH: usize = 64;
/// After the end time, outstanding I/Os get this long to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Latencies are recorded in nanoseconds up to this bound (an hour); longer saturates.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;
const HISTOGRAM_SIGFIGS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, HISTOGRAM_SIGFIGS).expect("valid histogram bounds")
}

/// A namespace as the workload sees it.
#[derive(Clone, Copy, Debug)]
pub struct Namespace {
    pub nsid: u32,
    pub block_size: u32,
    pub blocks: u64,
}

/// One queue and the I/Os it carries.
pub struct Job {
    pub queue: IoQueue,
    pub ns: Namespace,
    /// Index of the namespace in the run, for per-namespace rows.
    pub ns_index: usize,
    pub depth: u16,
    /// First verify lane of this queue, and how many lanes share the namespace.
    pub lane_base: u64,
    pub lanes_total: u64,
    /// Where sequential access starts, so queues do not read the same blocks in step.
    pub seq_start: u64,
}

/// What all workers share.
#[derive(Clone)]
pub struct Plan {
    pub io_bytes: usize,
    pub workload: Workload,
    pub verify: bool,
    pub seed: u64,
    pub start: Instant,
    pub end: Instant,
}

/// A second's worth of one worker's I/O, sent to the main thread for the live line.
pub struct Tick {
    pub second: u64,
    pub ios: u64,
    pub bytes: u64,
    pub latency_ns: Histogram<u64>,
}

/// Per (core, namespace) totals.
pub struct Row {
    pub core: usize,
    pub nsid: u32,
    pub ios: u64,
    pub bytes: u64,
    pub latency_ns: Histogram<u64>,
}

pub struct Report {
    pub rows: Vec<Row>,
    pub elapsed: Duration,
    pub errors: u64,
    pub mismatches: u64,
    /// The error that stopped this worker early, if one did.
    pub fatal: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    /// `--verify`: the write of a pattern, then the read that checks it.
    VerifyWrite,
    VerifyRead,
}

struct Io {
    buf: Option<Vec<u8>>,
    op: Op,
    slba: u64,
    seed: u64,
    start: Instant,
    lane: u64,
    writes: u64,
    seq: u64,
}

struct Running {
    job: Job,
    ios: Vec<Io>,
    /// Slots with no I/O in flight, waiting for their next submission (at once unless
    /// `--rate-iops` holds them back).
    ready: Vec<usize>,
    /// CID -> index into `ios`.
    io_of_cid: Vec<u32>,
    seq_next: u64,
    units: u64,
    blocks_per_io: u32,
}

pub fn run(
    core: usize,
    jobs: Vec<Job>,
    plan: Plan,
    ticks: Sender<Tick>,
    rng_seed: u64,
    mut pacer: Option<Pacer>,
) -> Report {
    let mut rng = rng_seed | 1;
    let mut report = Report { rows: Vec::new(), elapsed: Duration::ZERO, errors: 0, mismatches: 0, fatal: None };
    let mut running = Vec::with_capacity(jobs.len());
    for job in jobs {
        if report.rows.iter().all(|r| r.nsid != job.ns.nsid) {
            report.rows.push(Row { core, nsid: job.ns.nsid, ios: 0, bytes: 0, latency_ns: new_histogram() });
        }
        match start_job(job, &plan) {
            Ok(job) => running.push(job),
            Err(error) => {
                report.fatal = Some(error);
                return report;
            }
        }
    }
    let mut interval = new_histogram();
    let (mut interval_ios, mut interval_bytes) = (0u64, 0u64);
    let mut next_tick = plan.start + Duration::from_secs(1);
    let mut completions: Vec<Completion> = Vec::with_capacity(POLL_BATCH);
    let mut batch: Vec<usize> = Vec::with_capacity(POLL_BATCH);
    let mut scratch = Vec::new();
    loop {
        let now = Instant::now();
        let stopping = now >= plan.end;
        if !stopping && now >= next_tick {
            let second = (next_tick - plan.start).as_secs();
            let latency_ns = std::mem::replace(&mut interval, new_histogram());
            // The main thread may have gone (an error there); the run still finishes.
            let _ = ticks.send(Tick { second, ios: interval_ios, bytes: interval_bytes, latency_ns });
            (interval_ios, interval_bytes) = (0, 0);
            next_tick += Duration::from_secs(1);
        }
        let mut outstanding = 0;
        for state in running.iter_mut() {
            completions.clear();
            if let Err(error) = state.job.queue.poll(POLL_BATCH, &mut completions) {
                report.fatal = Some(format!("qid {}: {error}", state.job.queue.qid()));
                report.elapsed = plan.start.elapsed();
                return report;
            }
            let done_at = Instant::now();
            let row_index = report.rows.iter().position(|r| r.nsid == state.job.ns.nsid).unwrap_or(0);
            // Map the whole batch to I/O slots before resubmitting reuses any of its CIDs.
            batch.clear();
            batch.extend(completions.iter().map(|c| state.io_of_cid[usize::from(c.cid)] as usize));
            for (completion, &index) in completions.drain(..).zip(batch.iter()) {
                let io = &mut state.ios[index];
                let latency_ns = done_at.duration_since(io.start).as_nanos() as u64;
                let row = &mut report.rows[row_index];
                row.ios += 1;
                row.bytes += completion.buf.len() as u64;
                row.latency_ns.saturating_record(latency_ns.max(1));
                interval.saturating_record(latency_ns.max(1));
                interval_ios += 1;
                interval_bytes += completion.buf.len() as u64;
                if !completion.is_ok() {
                    report.errors += 1;
                    // Nothing to read back after a failed write: the lane starts a new write.
                    io.op = Op::Read;
                } else if io.op == Op::VerifyRead {
                    let block_size = state.job.ns.block_size as usize;
                    report.mismatches +=
                        pattern::mismatched_blocks(&completion.buf, io.slba, block_size, io.seed, &mut scratch);
                }
                io.buf = Some(completion.buf);
                state.ready.push(index);
            }
            if !stopping {
                if let Err(error) = state.submit_ready(&plan, &mut rng, &mut pacer) {
                    report.fatal = Some(error);
                    report.elapsed = plan.start.elapsed();
                    return report;
                }
            }
            outstanding += state.job.queue.outstanding();
        }
        if stopping && outstanding == 0 {
            break;
        }
        if stopping && Instant::now() > plan.end + DRAIN_TIMEOUT {
            report.fatal = Some(format!("{outstanding} I/Os still outstanding {DRAIN_TIMEOUT:?} after the end"));
            break;
        }
    }
    report.elapsed = plan.start.elapsed();
    report
}

/// Sets up a job's I/O slots; the worker's loop submits them.
fn start_job(job: Job, plan: &Plan) -> Result<Running, String> {
    let block_size = job.ns.block_size as usize;
    if block_size == 0 || !plan.io_bytes.is_multiple_of(block_size) {
        return Err(format!(
            "-o {} is not a multiple of NSID {}'s {block_size}-byte blocks",
            plan.io_bytes, job.ns.nsid
        ));
    }
    let blocks_per_io = (plan.io_bytes / block_size) as u32;
    let units = job.ns.blocks / u64::from(blocks_per_io);
    if units == 0 || (plan.verify && units < job.lanes_total) {
        return Err(format!(
            "NSID {} is too small for {} I/Os of {} bytes",
            job.ns.nsid, job.lanes_total, plan.io_bytes
        ));
    }
    let depth = usize::from(job.depth);
    let mut ios = Vec::with_capacity(depth);
    for index in 0..depth {
        let mut buf = vec![0u8; plan.io_bytes];
        // Writes without --verify send this; its content only has to be deterministic.
        pattern::fill(&mut buf, 0, block_size, plan.seed);
        let lane = job.lane_base + index as u64;
        ios.push(Io { buf: Some(buf), op: Op::Read, slba: 0, seed: 0, start: plan.start, lane, writes: 0, seq: 0 });
    }
    Ok(Running {
        io_of_cid: vec![0; usize::from(job.queue.depth())],
        seq_next: job.seq_start % units,
        job,
        ios,
        // Popped from the end: slot 0 goes first.
        ready: (0..depth).rev().collect(),
        units,
        blocks_per_io,
    })
}

impl Running {
    /// Submits every ready slot, or as many as the pacer has slots for now.
    fn submit_ready(&mut self, plan: &Plan, rng: &mut u64, pacer: &mut Option<Pacer>) -> Result<(), String> {
        while let Some(&index) = self.ready.last() {
            if let Some(pacer) = pacer {
                if !pacer.try_take(Instant::now()) {
                    break;
                }
            }
            self.ready.pop();
            self.submit_next(index, plan, rng)?;
        }
        Ok(())
    }

    /// Picks and submits the next I/O of slot `index`.
    fn submit_next(&mut self, index: usize, plan: &Plan, rng: &mut u64) -> Result<(), String> {
        let io = &mut self.ios[index];
        let Some(mut buf) = io.buf.take() else { return Err("an I/O buffer went missing".into()) };
        let block_size = self.job.ns.block_size as usize;
        if plan.verify {
            if io.op == Op::VerifyWrite {
                // Read back what this lane just wrote, into a cleared buffer so a read
                // that moves no data cannot pass by finding the pattern still there.
                io.op = Op::VerifyRead;
                buf.fill(0);
            } else {
                // Each lane owns a disjoint region, so no two I/Os in flight touch the same blocks.
                let region = self.units / self.job.lanes_total;
                let offset = match plan.workload.access {
                    Access::Random => next_random(rng) % region,
                    Access::Sequential => {
                        io.seq += 1;
                        (io.seq - 1) % region
                    }
                };
                io.op = Op::VerifyWrite;
                io.slba = (io.lane * region + offset) * u64::from(self.blocks_per_io);
                io.writes += 1;
                io.seed = plan.seed ^ io.lane.wrapping_mul(0x100_0000_01b3) ^ (io.writes << 40);
                pattern::fill(&mut buf, io.slba, block_size, io.seed);
            }
        } else {
            let read_percent = u64::from(plan.workload.read_percent);
            let read = read_percent == 100 || (read_percent > 0 && next_random(rng) % 100 < read_percent);
            io.op = if read { Op::Read } else { Op::Write };
            let unit = match plan.workload.access {
                Access::Random => next_random(rng) % self.units,
                Access::Sequential => {
                    let unit = self.seq_next;
                    self.seq_next = (self.seq_next + 1) % self.units;
                    unit
                }
            };
            io.slba = unit * u64::from(self.blocks_per_io);
        }
        let queue = &mut self.job.queue;
        let (nsid, slba, nlb) = (self.job.ns.nsid, io.slba, self.blocks_per_io);
        io.start = Instant::now();
        let submitted = match io.op {
            Op::Read | Op::VerifyRead => queue.submit_read(nsid, slba, nlb, buf),
            Op::Write | Op::VerifyWrite => queue.submit_write(nsid, slba, nlb, buf),
        };
        let cid = submitted.map_err(|e| format!("qid {}: {e}", queue.qid()))?;
        self.io_of_cid[usize::from(cid)] = index as u32;
        Ok(())
    }
}
