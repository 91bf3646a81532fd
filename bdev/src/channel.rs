//! The layer's per-thread channel of one bdev. Between a submitter and the module it
//! checks every I/O (range, size, type, write permission), bounces buffers the bdev
//! cannot DMA from through host memory via the tag gate, enforces QoS, queues I/O the
//! module has no resources for, and keeps iostat, all on the channel's own thread.
//!
//! The module sees a channel's I/O in the order it was submitted: I/O waiting for QoS
//! budget or for module resources holds back what came after it, as SPDK's `nomem_io`
//! queue does. A reset relies on this: it reaches the module only once every I/O
//! accepted before it on the channel has, so the module's reset (which completes after
//! what it has in flight, or aborts it) covers them all; a reset that overtook a queued
//! write could finish before the write did. The layer does not wait for the module's
//! in-flight I/O itself: some modules hold I/O until a reset aborts it (error's
//! `pending`, delay's held completions), which such a wait would deadlock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::mem::{self, Sgl};
use peerless_core::reactor::{IoDevice, PollStatus, Poller, ThreadCtx, WeakIoChannel};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo, SubmitError};
use crate::io::{completion_queue, BdevIo, CompletionQueue, DataBuf, IoType};
use crate::manager::BdevHandle;
use crate::qos::{QosBudget, QosLimits};
use crate::stat::IoStat;
use crate::status::IoStatus;

/// Completions handled per poll, so one busy bdev cannot hold its thread forever.
const COMPLETIONS_PER_POLL: usize = 256;
/// Room reserved up front in a channel's queues.
const QUEUE_CAPACITY: usize = 1024;

pub struct LayerChannel {
    bdev: Arc<dyn Bdev>,
    info: BdevInfo,
    ops: Box<dyn BdevChannelOps>,
    /// Where modules complete I/O submitted through this channel.
    own: CompletionQueue,
    stats: IoStat,
    retired: Arc<Mutex<IoStat>>,
    removed: Arc<AtomicBool>,
    /// The bdev's block count now; a resize moves it under open channels.
    num_blocks: Arc<AtomicU64>,
    /// I/O the module had no resources for, oldest first, and everything submitted
    /// after it, which waits behind it to keep the submission order.
    retry: VecDeque<Box<BdevIo>>,
    qos: Option<QosBudget>,
    qos_waiting: VecDeque<Box<BdevIo>>,
    /// Holders of the bdev's channel at the last timeslice: this channel's share.
    qos_share: u64,
    /// Registered on the first submit; goes with the channel.
    poller: Option<Poller>,
    in_flight: u64,
}

impl Drop for LayerChannel {
    fn drop(&mut self) {
        self.retired.lock().add(&self.stats);
    }
}

impl LayerChannel {
    pub(crate) fn device(
        bdev: Arc<dyn Bdev>,
        removed: Arc<AtomicBool>,
        num_blocks: Arc<AtomicU64>,
        retired: Arc<Mutex<IoStat>>,
        qos: Arc<Mutex<QosLimits>>,
    ) -> IoDevice<LayerChannel> {
        let name = format!("bdev_{}", bdev.info().name);
        IoDevice::new(&name, move |ctx| {
            let limits = *qos.lock();
            let mut channel = LayerChannel {
                bdev: bdev.clone(),
                info: bdev.info().clone(),
                ops: bdev.create_channel(ctx),
                own: completion_queue(QUEUE_CAPACITY),
                stats: IoStat::default(),
                retired: retired.clone(),
                removed: removed.clone(),
                num_blocks: num_blocks.clone(),
                retry: VecDeque::new(),
                qos: None,
                qos_waiting: VecDeque::new(),
                qos_share: 1,
                poller: None,
                in_flight: 0,
            };
            channel.set_qos(limits, ctx.now());
            channel
        })
    }

    pub(crate) fn stats(&self) -> &IoStat {
        &self.stats
    }

    pub(crate) fn stats_mut(&mut self) -> &mut IoStat {
        &mut self.stats
    }

    pub(crate) fn set_qos(&mut self, limits: QosLimits, now: std::time::Instant) {
        self.qos = (!limits.is_unlimited()).then(|| QosBudget::new(limits, now));
        if self.qos.is_none() {
            // Lifting the limit releases everything that waited for budget.
            self.retry.extend(self.qos_waiting.drain(..));
        }
    }

    pub(crate) fn set_qos_share(&mut self, holders: usize) {
        self.qos_share = holders.max(1) as u64;
    }

    fn check(&self, io: &BdevIo, writable: bool) -> Result<(), IoStatus> {
        if self.removed.load(Ordering::Acquire) {
            return Err(IoStatus::INVALID_NAMESPACE);
        }
        if !self.bdev.supports(io.io_type) {
            return Err(IoStatus::INVALID_OPCODE);
        }
        let writes = matches!(io.io_type, IoType::Write | IoType::WriteZeroes | IoType::Unmap);
        if writes && !writable {
            return Err(IoStatus::INVALID_FIELD);
        }
        let end = io.offset_blocks.checked_add(io.num_blocks);
        // Flush names a range too (SPDK checks it): a split part must not flush its neighbour.
        if io.io_type != IoType::Reset && end.is_none_or(|end| end > self.num_blocks.load(Ordering::Relaxed)) {
            return Err(IoStatus::LBA_OUT_OF_RANGE);
        }
        if io.io_type.has_data() {
            // Buffers may be larger than the payload (fixed-size pool buffers), never smaller.
            let expected = io.num_blocks.checked_mul(u64::from(self.info.block_size));
            if io.num_blocks == 0 || expected.is_none_or(|expected| expected > io.buffer_bytes() as u64) {
                return Err(IoStatus::INVALID_FIELD);
            }
        }
        Ok(())
    }

    fn submit(&mut self, ctx: &mut ThreadCtx, mut io: Box<BdevIo>, writable: bool) {
        // Saturating: a wild block count must fail the range check below, not overflow here.
        let payload = io.num_blocks.saturating_mul(u64::from(self.info.block_size));
        io.data_len = if io.io_type.has_data() { usize::try_from(payload).unwrap_or(usize::MAX) } else { 0 };
        if let Err(status) = self.check(&io, writable) {
            self.stats.record(io.io_type, 0, 0, status);
            io.complete(status);
            return;
        }
        io.push_completion(&self.own, 0);
        io.submitted_ns = ctx.now_ns();
        self.in_flight += 1;
        if io.io_type.has_data() {
            if let Err(status) = self.bounce_in(&mut io) {
                io.complete(status);
                return;
            }
        }
        if let Some(qos) = self.qos.as_mut() {
            if !self.qos_waiting.is_empty() || !qos.admit(&io, self.info.block_size) {
                self.qos_waiting.push_back(io);
                return;
            }
        }
        self.start(ctx, io);
    }

    /// Hands an I/O that passed the checks and QoS to the module, unless older I/O waits
    /// for retry: then it queues behind that, so nothing (a reset above all) overtakes.
    fn start(&mut self, ctx: &mut ThreadCtx, io: Box<BdevIo>) {
        let io = if self.retry.is_empty() {
            match self.submit_to_module(ctx, io) {
                Ok(()) => return,
                Err(io) => io,
            }
        } else {
            io
        };
        self.stats.nomem_retries += 1;
        self.retry.push_back(io);
    }

    /// Submits to the module; gives the I/O back if the module had no resources for it.
    fn submit_to_module(&mut self, ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), Box<BdevIo>> {
        match self.ops.submit(ctx, io) {
            Ok(()) => Ok(()),
            Err(SubmitError::NoResources(io)) => Err(io),
        }
    }

    /// Swaps device buffers the bdev cannot reach for host buffers (copying the payload
    /// of a write through the gate's accessors), keeping the originals for the way back.
    fn bounce_in(&mut self, io: &mut BdevIo) -> Result<(), IoStatus> {
        // Only P2P buffers can lie in a device domain: all other I/O skips building a list.
        if !io.buffers.iter().any(|buffer| matches!(buffer, DataBuf::P2p(_))) {
            return Ok(());
        }
        let sgl = io.sgl().map_err(|_| IoStatus::INVALID_FIELD)?;
        let Some(domain) = sgl.domain() else { return Ok(()) };
        if self.bdev.accepts_domain(domain) {
            return Ok(());
        }
        let mut host = DataBuf::heap(sgl.len());
        if !io.io_type.fills_buffers() {
            let mut host_sgl = Sgl::from_host_mut(match &mut host {
                DataBuf::Heap(bytes) => bytes,
                _ => return Err(IoStatus::INTERNAL_ERROR),
            })
            .map_err(|_| IoStatus::INTERNAL_ERROR)?;
            mem::copy(&mut host_sgl, &sgl).map_err(|_| IoStatus::DATA_TRANSFER_ERROR)?;
        }
        drop(sgl);
        io.bounced = Some(std::mem::replace(&mut io.buffers, vec![host]));
        self.stats.bounced_ios += 1;
        Ok(())
    }

    /// Puts the original buffers back, copying read data into them.
    fn bounce_out(io: &mut BdevIo) {
        let Some(original) = io.bounced.take() else { return };
        let host = std::mem::replace(&mut io.buffers, original);
        if io.io_type.fills_buffers() && io.status.is_success() {
            let copied = match (&host[..], io.sgl_mut()) {
                ([DataBuf::Heap(bytes)], Ok(mut dst)) => {
                    Sgl::from_host(bytes).and_then(|src| mem::copy(&mut dst, &src)).is_ok()
                }
                _ => false,
            };
            if !copied {
                io.status = IoStatus::DATA_TRANSFER_ERROR;
            }
        }
    }

    /// Finishes what the module completed, retries what waited, runs QoS timeslices.
    fn poll(&mut self, ctx: &mut ThreadCtx) -> PollStatus {
        let mut did_work = self.reap(ctx);
        // Something finished, or the module may have room again: retry oldest first, and
        // stop at the first refusal, so what waits behind it stays behind it.
        for _ in 0..self.retry.len() {
            let Some(io) = self.retry.pop_front() else { break };
            did_work = true;
            if let Err(io) = self.submit_to_module(ctx, io) {
                self.stats.nomem_retries += 1;
                self.retry.push_front(io);
                break;
            }
        }
        did_work |= self.run_qos(ctx);
        // Busy while I/O waits for budget: in interrupt mode an idle reactor would sleep
        // with nothing set to wake it for the next timeslice, and the I/O would wait until
        // some unrelated event came along.
        did_work |= !self.qos_waiting.is_empty();
        PollStatus::from_work(did_work)
    }

    /// Passes up what the module completed: bounced back, counted, to the submitter's queue.
    fn reap(&mut self, ctx: &mut ThreadCtx) -> bool {
        let mut did_work = false;
        for _ in 0..COMPLETIONS_PER_POLL {
            let Some(mut io) = self.own.borrow_mut().pop_front() else { break };
            did_work = true;
            self.in_flight -= 1;
            Self::bounce_out(&mut io);
            let latency_ns = ctx.now_ns().saturating_sub(io.submitted_ns);
            let bytes = io.num_blocks * u64::from(self.info.block_size);
            self.stats.record(io.io_type, bytes, latency_ns, io.status);
            io.pass_up();
        }
        did_work
    }

    /// Starts a new timeslice when one is due and releases what its budget admits.
    fn run_qos(&mut self, ctx: &mut ThreadCtx) -> bool {
        // Out of `self` for the loop, so starting an I/O can borrow the channel.
        let Some(mut qos) = self.qos.take() else { return false };
        let now = ctx.now();
        if qos.slice_over(now) {
            qos.refill(now, self.qos_share);
        }
        let mut did_work = false;
        while let Some(io) = self.qos_waiting.pop_front() {
            if !qos.admit(&io, self.info.block_size) {
                self.qos_waiting.push_front(io);
                break;
            }
            did_work = true;
            self.start(ctx, io);
        }
        self.qos = Some(qos);
        did_work
    }

    fn needs_poller(&self) -> bool {
        self.poller.is_none()
    }
}

impl BdevHandle {
    /// Submits an I/O; it comes back on `queue` with `tag` once complete, whatever the
    /// outcome (a bad request completes with its NVMe status).
    pub fn submit(&self, ctx: &mut ThreadCtx, mut io: Box<BdevIo>, queue: &CompletionQueue, tag: u64) {
        io.push_completion(queue, tag);
        if self.channel.borrow().needs_poller() {
            let weak = self.channel.downgrade();
            let poller = channel_poller(ctx, weak, &self.channel.borrow().info.name);
            self.channel.borrow_mut().poller = Some(poller);
        }
        let mut channel = self.channel.borrow_mut();
        channel.submit(ctx, io, self.writable);
        // A module that completed in its submit (null, malloc, an error injected at once)
        // reaches the submitter's queue now, not at the channel poller's next turn: a
        // submitter that reaps its queue after submitting answers within the same pass.
        // Only queues are touched, no callback runs, so nothing re-enters the submitter.
        channel.reap(ctx);
    }

    pub fn info(&self) -> BdevInfo {
        self.channel.borrow().info.clone()
    }

    /// I/O submitted through this thread's channel that has not completed yet.
    pub fn in_flight(&self) -> u64 {
        self.channel.borrow().in_flight
    }
}

/// The channel's poller, owned by the channel; it reaches the channel weakly, since a
/// strong reference would keep the channel, and so itself, alive.
fn channel_poller(ctx: &mut ThreadCtx, weak: WeakIoChannel<LayerChannel>, name: &str) -> Poller {
    ctx.poller(&format!("bdev_{name}"), 0, move |ctx| match weak.upgrade() {
        Some(channel) => {
            let status = channel.borrow_mut().poll(ctx);
            status
        }
        // Unreachable while the channel owns this poller; finishing is the safe answer.
        None => PollStatus::Done,
    })
}
