//! One thread's I/O queue pair on a namespace: commands built from bdev I/O, PRPs from
//! its buffers, completions polled by the thread's poller.
//!
//! An I/O larger than the controller's transfer limit (MDTS) goes as several commands and
//! completes when the last does, with the first error any of them saw. A buffer list
//! PRPs cannot describe (segments off page boundaries, memory the controller cannot
//! reach) goes through one of a few bounce buffers of the channel's own.

use std::cell::RefCell;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::Arc;

use peerless_core::mem::{copy, DmaBuf};
use peerless_core::reactor::{IoChannel, PollStatus, Poller, ThreadCtx};

mod recovery;

pub(crate) use recovery::ThreadChannels;

use super::controller::Controller;
use super::prp::{self, PrpError};
use super::queue::{BusTranslate, QueuePair, PAGE_BYTES};
use super::spec::{nvm, Cqe, Sqe};
use super::timeout::{CheckClock, CHECK_PERIOD};
use crate::bdev::{BdevChannelOps, SubmitError};
use crate::io::{BdevIo, IoType};
use crate::status::IoStatus;

/// Bounce buffers per channel, each of the controller's largest transfer.
const BOUNCE_BUFFERS: usize = 4;
/// Completions taken per poll, so one busy queue cannot hold its thread forever.
const COMPLETIONS_PER_POLL: usize = 256;
/// Blocks one Read, Write or Write Zeroes names at most (NLB is 16 bits, 0-based).
const MAX_BLOCKS_PER_COMMAND: u64 = 1 << 16;
/// Dataset Management ranges in one command (NR is 8 bits, 0-based), 16 bytes each.
const MAX_DSM_RANGES: usize = 256;
/// Polls without a completion, with commands in flight, between looks at whether the
/// device is still there.
const GONE_CHECK_POLLS: u64 = 4096;

#[derive(Clone, Copy, Default)]
struct Slot {
    parent: u16,
    bounce: Option<u8>,
    /// Where the command's bytes sit in the parent's data: what a bounced read copies back.
    data_offset: usize,
    data_len: usize,
    /// Placed in the queue and not completed yet.
    active: bool,
    /// The deadline clock's count when it was placed, and when its abort went out.
    stamp: u32,
    aborted_at: Option<u32>,
}

struct Parent {
    io: Box<BdevIo>,
    remaining: u32,
    status: IoStatus,
}

struct State {
    ctrlr: Arc<Controller>,
    nsid: u32,
    block_size: u64,
    queue: Option<QueuePair>,
    slots: Vec<Slot>,
    free_cids: Vec<u16>,
    parents: Vec<Option<Parent>>,
    free_parents: Vec<u16>,
    bounces: Vec<DmaBuf>,
    free_bounces: Vec<u8>,
    prp_list: Vec<u64>,
    /// Commands of one I/O, built before any is placed, so running out midway places none.
    staged: Vec<(u16, Sqe)>,
    closed: bool,
    /// The queue raises an MSI-X vector whose eventfd this thread's reactor watches, so
    /// the reactor may sleep while commands are in flight.
    interrupt_driven: bool,
    /// A controller reset is under way: new I/O waits for it.
    resetting: bool,
    clock: CheckClock,
    /// This thread's entry in the controller's list of channels, held as long as the
    /// poller may still need a reset to reach it.
    _registered: IoChannel<ThreadChannels>,
}

pub(crate) struct NvmeChannel {
    state: Rc<RefCell<State>>,
    poller: Option<Poller>,
    /// With completion interrupts: wakes the reactor now and then, so deadlines and a
    /// removed device are noticed even when no interrupt comes.
    watchdog: Option<Poller>,
}

impl NvmeChannel {
    pub(crate) fn new(
        ctx: &mut ThreadCtx,
        name: &str,
        ctrlr: Arc<Controller>,
        nsid: u32,
        block_size: u32,
    ) -> NvmeChannel {
        let queue = match ctrlr.create_io_queue(ctx.reactor_sleeps()) {
            Ok(queue) => Some(queue),
            Err(err) => {
                peerless_core::log_error!("nvme {name}: no I/O queue for this thread, its I/O will fail: {err}");
                None
            }
        };
        let depth = queue.as_ref().map_or(0, |queue| usize::from(queue.depth()));
        // One slot stays empty: a full ring keeps one entry free (NVMe Base 2.0 §4.1.2).
        let usable = depth.saturating_sub(1);
        let bounce_bytes = ctrlr.max_transfer_bytes();
        let bounces: Vec<DmaBuf> = if queue.is_some() {
            (0..BOUNCE_BUFFERS).filter_map(|_| DmaBuf::alloc_plain(bounce_bytes).ok()).collect()
        } else {
            Vec::new()
        };
        let registered = ctx.get_io_channel(ctrlr.threads());
        let interrupt_driven = queue.as_ref().is_some_and(|queue| watch_interrupts(ctx, name, &ctrlr, queue));
        let state = State {
            nsid,
            block_size: u64::from(block_size),
            queue,
            slots: vec![Slot::default(); depth],
            free_cids: (0..usable as u16).rev().collect(),
            parents: (0..usable).map(|_| None).collect(),
            free_parents: (0..usable as u16).rev().collect(),
            free_bounces: (0..bounces.len() as u8).rev().collect(),
            bounces,
            prp_list: Vec::with_capacity(PAGE_BYTES / 8),
            staged: Vec::with_capacity(usable),
            closed: false,
            interrupt_driven,
            resetting: false,
            clock: CheckClock::new(CHECK_PERIOD),
            _registered: registered.clone(),
            ctrlr,
        };
        let state = Rc::new(RefCell::new(state));
        registered.borrow_mut().add(&state);
        let poller = completion_poller(ctx, name, state.clone(), depth);
        let watchdog = interrupt_driven.then(|| watchdog_poller(ctx, name, state.clone()));
        NvmeChannel { state, poller: Some(poller), watchdog }
    }
}

/// Watches the queue's eventfd when it raises a vector; false (the queue is then polled
/// while it has commands in flight) when it has none or the watch fails.
fn watch_interrupts(ctx: &mut ThreadCtx, name: &str, ctrlr: &Controller, queue: &QueuePair) -> bool {
    let Some(vector) = queue.interrupt_vector() else { return false };
    let Some((_, eventfd)) = ctrlr.interrupts().and_then(|irq| irq.for_queue(queue.qid())) else { return false };
    match ctx.watch_fd(eventfd.as_fd()) {
        Ok(()) => true,
        Err(err) => {
            peerless_core::log_warn!(
                "nvme {name}: cannot watch MSI-X vector {vector}'s eventfd, polling instead: {err}"
            );
            false
        }
    }
}

/// Runs every check period while the channel lives; the completion poller, which every
/// pass runs, does the looking.
fn watchdog_poller(ctx: &mut ThreadCtx, name: &str, state: Rc<RefCell<State>>) -> Poller {
    let period_us = CHECK_PERIOD.as_micros() as u64;
    ctx.poller(&format!("nvme_{name}_watchdog"), period_us, move |_| {
        let state = state.borrow();
        if state.closed && state.queue.is_none() {
            PollStatus::Done
        } else {
            PollStatus::Idle
        }
    })
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        self.state.borrow_mut().closed = true;
        // The poller finishes what is in flight, then deletes the queue pair.
        if let Some(poller) = self.poller.take() {
            poller.detach();
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.detach();
        }
    }
}

impl BdevChannelOps for NvmeChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        let outcome = self.state.borrow_mut().start(io);
        match outcome {
            Start::Placed => Ok(()),
            Start::Done(io, status) => {
                io.complete(status);
                Ok(())
            }
            Start::NoResources(io) => Err(SubmitError::NoResources(io)),
        }
    }
}

/// What became of an I/O given to the channel; one that is done is completed by the
/// caller once it has let go of the channel.
enum Start {
    Placed,
    Done(Box<BdevIo>, IoStatus),
    NoResources(Box<BdevIo>),
}

enum Staging {
    NoResources,
    Refused(IoStatus, String),
}

impl State {
    fn start(&mut self, io: Box<BdevIo>) -> Start {
        if self.resetting {
            return Start::NoResources(io);
        }
        if self.ctrlr.is_gone() {
            return Start::Done(io, IoStatus::ABORTED_SQ_DELETION);
        }
        if self.queue.is_none() {
            return Start::Done(io, IoStatus::INTERNAL_ERROR);
        }
        match self.stage(&io) {
            Ok(()) => {}
            Err(Staging::NoResources) => return Start::NoResources(io),
            Err(Staging::Refused(status, why)) => {
                peerless_core::log_error!("nvme: {:?} at block {}: {why}", io.io_type, io.offset_blocks);
                return Start::Done(io, status);
            }
        }
        let Some(parent) = self.free_parents.pop() else {
            self.unstage();
            return Start::NoResources(io);
        };
        let children = self.staged.len() as u32;
        if children == 0 {
            self.free_parents.push(parent);
            return Start::Done(io, IoStatus::SUCCESS);
        }
        let stamp = self.clock.stamp();
        let State { staged, slots, queue, parents, .. } = self;
        let queue = queue.as_mut().expect("checked above");
        for (cid, sqe) in staged.drain(..) {
            let slot = &mut slots[usize::from(cid)];
            slot.parent = parent;
            slot.active = true;
            slot.stamp = stamp;
            queue.push(&sqe);
        }
        queue.ring();
        parents[usize::from(parent)] = Some(Parent { io, remaining: children, status: IoStatus::SUCCESS });
        Start::Placed
    }

    /// Builds every command of `io` into `staged`, taking their slots and bounce buffers;
    /// on failure gives back what it took.
    fn stage(&mut self, io: &BdevIo) -> Result<(), Staging> {
        let staged = match io.io_type {
            IoType::Read | IoType::Write => self.stage_data(io),
            IoType::Flush => self.stage_one(Sqe::new(nvm::FLUSH)),
            IoType::WriteZeroes => self.stage_write_zeroes(io),
            IoType::Unmap => self.stage_unmap(io),
            other => Err(Staging::Refused(IoStatus::INVALID_OPCODE, format!("{} is not supported", other.as_str()))),
        };
        if staged.is_err() {
            self.unstage();
        }
        staged
    }

    fn unstage(&mut self) {
        while let Some((cid, _)) = self.staged.pop() {
            if let Some(bounce) = self.slots[usize::from(cid)].bounce.take() {
                self.free_bounces.push(bounce);
            }
            self.free_cids.push(cid);
        }
    }

    fn take_cid(&mut self) -> Result<u16, Staging> {
        let cid = self.free_cids.pop().ok_or(Staging::NoResources)?;
        self.slots[usize::from(cid)] = Slot::default();
        Ok(cid)
    }

    fn stage_one(&mut self, mut sqe: Sqe) -> Result<(), Staging> {
        let cid = self.take_cid()?;
        sqe.cid = cid;
        sqe.nsid = self.nsid;
        self.staged.push((cid, sqe));
        Ok(())
    }

    fn stage_data(&mut self, io: &BdevIo) -> Result<(), Staging> {
        let sgl = io.sgl().map_err(|err| Staging::Refused(IoStatus::DATA_TRANSFER_ERROR, err.to_string()))?;
        let total = io.num_blocks * self.block_size;
        if sgl.len() as u64 != total {
            let why = format!("{} bytes of buffers for {total} bytes of blocks", sgl.len());
            return Err(Staging::Refused(IoStatus::DATA_TRANSFER_ERROR, why));
        }
        let max_blocks = (self.ctrlr.max_transfer_bytes() as u64 / self.block_size).min(MAX_BLOCKS_PER_COMMAND);
        let opcode = if io.io_type == IoType::Write { nvm::WRITE } else { nvm::READ };
        let mut done_blocks = 0;
        while done_blocks < io.num_blocks {
            let blocks = (io.num_blocks - done_blocks).min(max_blocks);
            let offset = (done_blocks * self.block_size) as usize;
            let len = (blocks * self.block_size) as usize;
            let part =
                sgl.sub(offset, len).map_err(|err| Staging::Refused(IoStatus::DATA_TRANSFER_ERROR, err.to_string()))?;
            let cid = self.take_cid()?;
            let mut sqe = Sqe::new(opcode);
            sqe.cid = cid;
            sqe.nsid = self.nsid;
            let slba = io.offset_blocks + done_blocks;
            sqe.cdw10 = slba as u32;
            sqe.cdw11 = (slba >> 32) as u32;
            sqe.cdw12 = (blocks - 1) as u32;
            self.slots[usize::from(cid)].data_offset = offset;
            self.slots[usize::from(cid)].data_len = len;
            // The list page goes in only once every command has been built.
            self.staged.push((cid, sqe));
            let queue = self.queue.as_ref().expect("a channel without a queue stages nothing");
            let list_bus = queue.prp_list_bus(cid);
            let pci = self.ctrlr.pci();
            let segs = part.iter().map(|seg| (seg.addr(), seg.len()));
            let device = part
                .domain()
                .filter(|domain| self.ctrlr.reaches(*domain) && part.iter().all(|seg| seg.tag().domain() == *domain));
            let direct = if part.is_host_only() {
                prp::build(segs, PAGE_BYTES, &mut self.prp_list, list_bus, |addr| pci.host_bus_address(addr))
            } else if let Some(domain) = device {
                // A CMB, its own or a peer's; NVMe forbids mixing them with host
                // addresses in one command.
                let ctrlr = &self.ctrlr;
                prp::build(segs, PAGE_BYTES, &mut self.prp_list, list_bus, |addr| {
                    ctrlr.device_bus_address(domain, addr)
                })
            } else {
                Err(PrpError::Untranslatable(part.iter().next().map_or(0, |seg| seg.addr())))
            };
            let (prp1, prp2) = match direct {
                Ok(prps) => {
                    let queue = self.queue.as_mut().expect("checked above");
                    queue.write_prp_list(cid, &self.prp_list);
                    prps
                }
                Err(PrpError::TooManyPages(pages)) => {
                    let why = format!("{pages} pages in one command exceed the transfer limit");
                    return Err(Staging::Refused(IoStatus::INVALID_FIELD, why));
                }
                Err(PrpError::Unaligned | PrpError::Untranslatable(_)) => self.stage_bounce(cid, io.io_type, &part)?,
            };
            let entry = self.staged.last_mut().expect("pushed above");
            entry.1.prp1 = prp1;
            entry.1.prp2 = prp2;
            done_blocks += blocks;
        }
        Ok(())
    }

    /// Puts a command's data in a bounce buffer (a write's bytes go in now) and returns
    /// the PRPs of that buffer.
    fn stage_bounce(
        &mut self,
        cid: u16,
        io_type: IoType,
        part: &peerless_core::mem::Sgl<'_>,
    ) -> Result<(u64, u64), Staging> {
        let bounce = self.free_bounces.pop().ok_or(Staging::NoResources)?;
        self.slots[usize::from(cid)].bounce = Some(bounce);
        let buffer = &mut self.bounces[usize::from(bounce)];
        if io_type == IoType::Write {
            let mut dst =
                buffer.sgl_mut().map_err(|err| Staging::Refused(IoStatus::INTERNAL_ERROR, err.to_string()))?;
            dst.truncate(part.len());
            copy(&mut dst, part).map_err(|err| Staging::Refused(IoStatus::DATA_TRANSFER_ERROR, err.to_string()))?;
        }
        let base = buffer.addr();
        let queue = self.queue.as_mut().expect("a channel without a queue stages nothing");
        let pci = self.ctrlr.pci();
        let prps = prp::build(
            [(base, part.len())].into_iter(),
            PAGE_BYTES,
            &mut self.prp_list,
            queue.prp_list_bus(cid),
            |addr| pci.host_bus_address(addr),
        )
        .map_err(|err| Staging::Refused(IoStatus::INTERNAL_ERROR, format!("bounce buffer: {err}")))?;
        queue.write_prp_list(cid, &self.prp_list);
        self.ctrlr.count_bounce();
        Ok(prps)
    }

    fn stage_write_zeroes(&mut self, io: &BdevIo) -> Result<(), Staging> {
        let mut done = 0;
        while done < io.num_blocks {
            let blocks = (io.num_blocks - done).min(MAX_BLOCKS_PER_COMMAND);
            let slba = io.offset_blocks + done;
            let mut sqe = Sqe::new(nvm::WRITE_ZEROES);
            sqe.cdw10 = slba as u32;
            sqe.cdw11 = (slba >> 32) as u32;
            sqe.cdw12 = (blocks - 1) as u32;
            self.stage_one(sqe)?;
            done += blocks;
        }
        Ok(())
    }

    /// Deallocate (Dataset Management with AD, NVM Command Set 1.0 §3.2.3): the ranges go
    /// in the command's list page, which a command without data does not otherwise use.
    fn stage_unmap(&mut self, io: &BdevIo) -> Result<(), Staging> {
        let max_range_blocks = u64::from(u32::MAX);
        let ranges = io.num_blocks.div_ceil(max_range_blocks) as usize;
        if ranges > MAX_DSM_RANGES {
            return Err(Staging::Refused(IoStatus::INVALID_FIELD, format!("unmap of {} blocks", io.num_blocks)));
        }
        let cid = self.take_cid()?;
        self.prp_list.clear();
        let mut done = 0;
        while done < io.num_blocks {
            let blocks = (io.num_blocks - done).min(max_range_blocks);
            // A range is context attributes and length (one dword each), then the start.
            self.prp_list.push(blocks << 32);
            self.prp_list.push(io.offset_blocks + done);
            done += blocks;
        }
        let queue = self.queue.as_mut().expect("a channel without a queue stages nothing");
        queue.write_prp_list(cid, &self.prp_list);
        let mut sqe = Sqe::new(nvm::DATASET_MANAGEMENT);
        sqe.cid = cid;
        sqe.nsid = self.nsid;
        sqe.prp1 = queue.prp_list_bus(cid);
        sqe.cdw10 = (ranges - 1) as u32;
        sqe.cdw11 = 1 << 2;
        self.staged.push((cid, sqe));
        Ok(())
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len().saturating_sub(1) - self.free_cids.len()
    }
}

fn completion_poller(ctx: &mut ThreadCtx, name: &str, state: Rc<RefCell<State>>, depth: usize) -> Poller {
    let mut finished: Vec<(Box<BdevIo>, IoStatus)> = Vec::with_capacity(depth);
    let mut stalled_polls = 0u64;
    ctx.poller(&format!("nvme_{name}"), 0, move |ctx| {
        let mut guard = state.borrow_mut();
        let state_ref = &mut *guard;
        let Some(queue) = state_ref.queue.as_mut() else {
            return if state_ref.closed && !state_ref.resetting { PollStatus::Done } else { PollStatus::Idle };
        };
        // As SPDK aborts a disconnected queue pair's commands: what is in flight when a
        // reset begins is submitted again after it, whether or not it completes meanwhile,
        // and the reset's last message wakes this thread.
        if state_ref.resetting {
            return PollStatus::Idle;
        }
        let State { slots, free_cids, parents, free_parents, bounces, free_bounces, interrupt_driven, ctrlr, .. } =
            state_ref;
        let mut on_completion = |cqe: Cqe| {
            let Some(slot) = slots.get_mut(usize::from(cqe.cid)) else {
                peerless_core::log_error!("nvme: completion for unknown command {}", cqe.cid);
                return;
            };
            let slot = std::mem::take(slot);
            let Some(Some(parent)) = parents.get_mut(usize::from(slot.parent)) else {
                peerless_core::log_error!("nvme: completion for command {} with no I/O", cqe.cid);
                return;
            };
            free_cids.push(cqe.cid);
            if !cqe.is_success() && parent.status.is_success() {
                parent.status = IoStatus::new(cqe.sct, cqe.sc);
            }
            if let Some(bounce) = slot.bounce {
                if parent.io.io_type == IoType::Read && cqe.is_success() {
                    copy_back(
                        &mut parent.io,
                        &bounces[usize::from(bounce)],
                        slot.data_offset,
                        slot.data_len,
                        &mut parent.status,
                    );
                }
                free_bounces.push(bounce);
            }
            parent.remaining -= 1;
            if parent.remaining == 0 {
                let done = parents[usize::from(slot.parent)].take().expect("checked above");
                free_parents.push(slot.parent);
                finished.push((done.io, done.status));
            }
        };
        let mut taken = queue.poll(COMPLETIONS_PER_POLL, &mut on_completion);
        // Clear the vector before the reactor may sleep, or its eventfd would wake it
        // again and again; a completion that raced in before the clear is taken now,
        // and one after it signals afresh.
        if *interrupt_driven && taken == 0 && ctrlr.interrupts().is_some_and(|irq| irq.clear(queue.qid())) {
            taken = queue.poll(COMPLETIONS_PER_POLL, &mut on_completion);
        }
        // A removed device completes nothing and reads all ones; look now and then
        // while commands wait, not on every pass: a register read is dear. Another
        // channel may have seen it first.
        let waiting = taken == 0 && free_cids.len() + 1 < slots.len();
        stalled_polls = if waiting { stalled_polls + 1 } else { 0 };
        let qid = queue.qid();
        // A sleeping reactor passes here only when woken (at least every check period):
        // look each time.
        let look = guard.interrupt_driven || stalled_polls.is_multiple_of(GONE_CHECK_POLLS);
        let gone = waiting && (guard.ctrlr.is_gone() || look && queue_gone(&guard));
        if gone {
            // Surprise removal: nothing will complete; fail what is in flight.
            if guard.ctrlr.mark_gone() {
                peerless_core::log_error!(
                    "nvme {}: the device is gone (its registers read all ones); failing its I/O",
                    guard.ctrlr.pci().bdf()
                );
            }
            guard.fail_in_flight(&mut finished);
        }
        let in_flight = guard.in_flight();
        let overdue =
            if in_flight > 0 && !guard.resetting { guard.check_deadlines(ctx.now()) } else { Default::default() };
        let finish_queue = guard.closed && in_flight == 0 && !guard.resetting;
        let queue = if finish_queue { guard.queue.take() } else { None };
        let ctrlr = guard.ctrlr.clone();
        let interrupt_driven = guard.interrupt_driven;
        drop(guard);
        let completed = finished.len();
        for (io, status) in finished.drain(..) {
            io.complete(status);
        }
        act_on_overdue(ctx, &ctrlr, qid, overdue);
        if let Some(queue) = queue {
            if let Some((_, eventfd)) =
                ctrlr.interrupts().and_then(|irq| irq.for_queue(qid)).filter(|_| interrupt_driven)
            {
                if let Err(err) = ctx.unwatch_fd(eventfd.as_fd()) {
                    peerless_core::log_warn!("nvme: queue {qid}'s eventfd: {err}");
                }
            }
            if ctrlr.is_gone() {
                ctrlr.release_qid(queue.qid());
            } else {
                ctrlr.delete_io_queue(queue);
            }
            return PollStatus::Done;
        }
        // A polled queue is busy while commands are in flight: its completions raise no
        // interrupt, and a reactor that sleeps would sleep past them.
        PollStatus::from_work(completed > 0 || in_flight > 0 && !interrupt_driven)
    })
}

fn queue_gone(state: &State) -> bool {
    state.queue.as_ref().is_some_and(QueuePair::controller_gone)
}

/// Aborts commands past their deadline, or resets the controller (SPDK's
/// action_on_timeout); an abort the controller cannot take leads to the reset too.
fn act_on_overdue(ctx: &mut ThreadCtx, ctrlr: &Arc<Controller>, qid: u16, overdue: recovery::Overdue) {
    let bdf = ctrlr.pci().bdf();
    if overdue.reported > 0 {
        peerless_core::log_warn!("nvme {bdf}: {} commands on queue {qid} are past their deadline", overdue.reported);
    }
    let mut reset = overdue.reset;
    for cid in overdue.aborts {
        peerless_core::log_warn!("nvme {bdf}: command {cid} on queue {qid} is past its deadline; aborting it");
        match ctrlr.abort(qid, cid) {
            Ok(true) => {}
            Ok(false) => peerless_core::log_warn!("nvme {bdf}: the controller did not abort command {cid}"),
            Err(err) => {
                peerless_core::log_error!("nvme {bdf}: abort of command {cid}: {err}");
                reset = true;
            }
        }
    }
    if reset && !ctrlr.is_resetting() {
        peerless_core::log_error!(
            "nvme {bdf}: a command on queue {qid} outlived its deadline; resetting the controller"
        );
        super::reset::reset_controller(ctx, ctrlr.clone(), |_, _| {});
    }
}

fn copy_back(io: &mut BdevIo, bounce: &DmaBuf, offset: usize, len: usize, status: &mut IoStatus) {
    let copied = (|| -> peerless_core::mem::Result<()> {
        let mut sgl = io.sgl_mut()?;
        let mut dst = sgl.sub_mut(offset, len)?;
        let src = bounce.sgl()?;
        let src = src.sub(0, len)?;
        copy(&mut dst, &src).map(|_| ())
    })();
    if let Err(err) = copied {
        peerless_core::log_error!("nvme: bounced read of {len} bytes: {err}");
        *status = IoStatus::DATA_TRANSFER_ERROR;
    }
}
