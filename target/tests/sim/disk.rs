//! A simulated block device, a bdev module like any other (it implements the bdev
//! layer's traits), whose behaviour the simulation's seed decides: each I/O completes
//! after a latency drawn from its own random stream, on the simulated clock, so I/O
//! completes out of order; some fail, some are refused for lack of resources (the layer
//! queues and retries them), and a failed write may or may not have reached the media.
//! It keeps real bytes, and tells the checker when each write has left the device.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_bdev::{Bdev, BdevChannelOps, BdevInfo, BdevIo, IoStatus, IoType, SubmitError, Uuid};
use peerless_core::mem::{self, DomainId, P2pProvider, Sgl};
use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};
use serde_json::Value;

use super::pattern;
use super::rng::Rng;

#[derive(Clone, Copy, Debug)]
pub struct DiskFaults {
    pub min_latency_ns: u64,
    pub max_latency_ns: u64,
    /// Now and then an I/O takes much longer (a garbage-collecting SSD).
    pub slow_per_million: u32,
    pub slow_latency_ns: u64,
    pub error_per_million: u32,
    pub nomem_per_million: u32,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub nomem: u64,
}

/// What the device holds and how it behaves; the checker reads it too.
pub struct DiskState {
    pub nsid: u32,
    pub block_size: usize,
    pub media: Vec<u8>,
    rng: Rng,
    faults: DiskFaults,
    pub in_flight: usize,
    /// When the earliest I/O in flight is due (u64::MAX: none), so the world can skip
    /// simulated time in which nothing happens.
    pub next_due_ns: u64,
    pub stats: DiskStats,
    /// A write's bytes while they are checked (kept to spare an allocation per write).
    scratch: Vec<u8>,
}

pub type Disk = Arc<Mutex<DiskState>>;

pub struct SimDisk {
    info: BdevInfo,
    state: Disk,
    /// Its own device memory (an emulated CMB), which it moves data from and to itself:
    /// the target may place command data there (p2pmem "auto").
    cmb: Option<Arc<dyn P2pProvider>>,
}

impl SimDisk {
    pub fn new(
        name: &str,
        nsid: u32,
        block_size: u32,
        num_blocks: u64,
        rng: Rng,
        faults: DiskFaults,
        cmb: Option<Arc<dyn P2pProvider>>,
    ) -> (SimDisk, Disk) {
        let state = Arc::new(Mutex::new(DiskState {
            nsid,
            block_size: block_size as usize,
            media: vec![0u8; block_size as usize * num_blocks as usize],
            rng,
            faults,
            in_flight: 0,
            next_due_ns: u64::MAX,
            stats: DiskStats::default(),
            scratch: Vec::new(),
        }));
        let mut uuid = [0u8; 16];
        uuid[0] = nsid as u8;
        uuid[15] = 0x5d;
        let info = BdevInfo {
            name: name.to_string(),
            product_name: "Simulated disk".into(),
            block_size,
            num_blocks,
            uuid: Uuid(uuid),
            max_io_blocks: 0,
        };
        (SimDisk { info, state: state.clone(), cmb }, state)
    }
}

impl Bdev for SimDisk {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        "sim"
    }

    fn supports(&self, io_type: IoType) -> bool {
        matches!(io_type, IoType::Read | IoType::Write | IoType::Flush | IoType::Unmap | IoType::WriteZeroes)
    }

    fn accepts_domain(&self, domain: DomainId) -> bool {
        self.cmb.as_ref().is_some_and(|cmb| cmb.domain() == domain)
    }

    fn p2p_provider(&self) -> Option<Arc<dyn P2pProvider>> {
        self.cmb.clone()
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        let pending: Rc<RefCell<Vec<Pending>>> = Rc::default();
        let (state, queue) = (self.state.clone(), pending.clone());
        // Active, not timed: a timed poller's schedule would come from the wall clock.
        let poller =
            ctx.poller(&format!("simdisk_{}", self.info.name), 0, move |ctx| complete_due(&state, &queue, ctx));
        Box::new(SimChannel { state: self.state.clone(), pending, _poller: poller })
    }

    fn config_entry(&self) -> Option<Value> {
        None
    }
}

struct Pending {
    due_ns: u64,
    /// Orders I/O due in the same step: random, so equal latencies do not mean FIFO.
    tiebreak: u64,
    io: Box<BdevIo>,
    status: IoStatus,
    /// For a failed write: whether it reached the media anyway.
    applied: bool,
}

struct SimChannel {
    state: Disk,
    pending: Rc<RefCell<Vec<Pending>>>,
    /// Completes what is due; goes with the channel.
    _poller: Poller,
}

impl BdevChannelOps for SimChannel {
    fn submit(&mut self, ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        let mut state = self.state.lock();
        let faults = state.faults;
        if state.rng.chance(faults.nomem_per_million) {
            state.stats.nomem += 1;
            return Err(SubmitError::NoResources(io));
        }
        let latency_ns = if state.rng.chance(faults.slow_per_million) {
            faults.slow_latency_ns
        } else {
            state.rng.range(faults.min_latency_ns, faults.max_latency_ns)
        };
        let status = if state.rng.chance(faults.error_per_million) {
            state.stats.errors += 1;
            match io.io_type {
                IoType::Read => IoStatus::UNRECOVERED_READ_ERROR,
                IoType::Write => IoStatus::WRITE_FAULT,
                _ => IoStatus::INTERNAL_ERROR,
            }
        } else {
            IoStatus::SUCCESS
        };
        let applied = status.is_success() || state.rng.coin();
        let tiebreak = state.rng.next_u64();
        let due_ns = ctx.now_ns() + latency_ns;
        state.in_flight += 1;
        state.next_due_ns = state.next_due_ns.min(due_ns);
        drop(state);
        self.pending.borrow_mut().push(Pending { due_ns, tiebreak, io, status, applied });
        Ok(())
    }
}

/// Completes, in random order, every I/O whose time has come.
fn complete_due(state: &Disk, pending: &Rc<RefCell<Vec<Pending>>>, ctx: &mut ThreadCtx) -> PollStatus {
    let now_ns = ctx.now_ns();
    if state.lock().next_due_ns > now_ns {
        return PollStatus::Idle;
    }
    let mut due: Vec<Pending> = Vec::new();
    let mut next_due_ns = u64::MAX;
    {
        let mut pending = pending.borrow_mut();
        let mut index = 0;
        while index < pending.len() {
            if pending[index].due_ns <= now_ns {
                due.push(pending.swap_remove(index));
            } else {
                next_due_ns = next_due_ns.min(pending[index].due_ns);
                index += 1;
            }
        }
    }
    state.lock().next_due_ns = next_due_ns;
    if due.is_empty() {
        return PollStatus::Idle;
    }
    // swap_remove's order depends on the vector's history; the tiebreak makes it random.
    due.sort_unstable_by_key(|io| io.tiebreak);
    let mut state = state.lock();
    for Pending { mut io, status, applied, .. } in due {
        execute(&mut state, &mut io, status, applied);
        state.in_flight -= 1;
        io.complete(status);
    }
    PollStatus::Busy
}

fn execute(state: &mut DiskState, io: &mut BdevIo, status: IoStatus, applied: bool) {
    let block_size = state.block_size;
    let start = io.offset_blocks as usize * block_size;
    let len = io.num_blocks as usize * block_size;
    match io.io_type {
        IoType::Write => {
            state.stats.writes += 1;
            let mut scratch = std::mem::take(&mut state.scratch);
            scratch.resize(len, 0);
            let sgl = io.sgl().expect("a write's buffers");
            let read = mem::ChunkReader::new(&sgl).read(&mut scratch).expect("read a write's buffers");
            assert_eq!(read, len, "a write of {} blocks carried {read} bytes", io.num_blocks);
            check_write(state, io.offset_blocks, &scratch);
            if applied {
                state.media[start..start + len].copy_from_slice(&scratch);
            }
            state.scratch = scratch;
        }
        // Deallocated blocks read as zeroes (DLFEAT 001b), as written zeroes do.
        IoType::Unmap | IoType::WriteZeroes if applied => {
            state.stats.writes += 1;
            state.media[start..start + len].fill(0);
        }
        IoType::Read if status.is_success() => {
            state.stats.reads += 1;
            let src = Sgl::from_host(&state.media[start..start + len]).expect("the media");
            let mut dst = io.sgl_mut().expect("a read's buffers");
            assert_eq!(mem::copy(&mut dst, &src).expect("copy from the media"), len);
        }
        _ => {}
    }
}

/// Every block a write brings must be the host's pattern for exactly that block, all of
/// one write: anything else is data the target placed wrong.
fn check_write(state: &DiskState, offset_blocks: u64, data: &[u8]) {
    let mut stamp = None;
    for (index, block) in data.chunks_exact(state.block_size).enumerate() {
        let lba = offset_blocks + index as u64;
        match pattern::decode(block, state.nsid, lba) {
            Ok(found) if found != 0 && stamp.is_none_or(|stamp| stamp == found) => stamp = Some(found),
            Ok(found) => {
                panic!("write at nsid {} lba {lba}: block of write {found} inside write {stamp:?}", state.nsid)
            }
            Err(why) => panic!("write at nsid {} lba {lba}: the target delivered a wrong block: {why}", state.nsid),
        }
    }
    assert!(stamp.is_some(), "a write of no blocks at nsid {} lba {offset_blocks}", state.nsid);
}
