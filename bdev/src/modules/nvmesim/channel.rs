//! One thread's queue pair into the emulated SSD. A submission moves the data at once
//! (the device's DMA engine is synchronous, as the emulated CMB's is) and is posted to
//! a completion queue with the time the modelled device would finish it; a poller on
//! the channel's thread completes what is due, in order.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};

use super::media::MediaError;
use super::Device;
use crate::bdev::{BdevChannelOps, SubmitError};
use crate::io::{BdevIo, IoType};
use crate::status::IoStatus;

/// Commands one channel keeps in flight, as an NVMe queue pair's depth; beyond it the
/// layer queues and retries.
pub const QUEUE_DEPTH: usize = 1024;
/// The device's host staging memory per queue for file media: how much one step moves.
pub const STAGING_BYTES: usize = 128 * 1024;
/// Completions posted per poll, so one busy device cannot hold its thread forever.
const COMPLETIONS_PER_POLL: usize = 256;

struct Posted {
    due: Instant,
    status: IoStatus,
    io: Box<BdevIo>,
}

type Completions = Rc<RefCell<VecDeque<Posted>>>;

pub(crate) struct NvmesimChannel {
    device: Arc<Device>,
    staging: Vec<u8>,
    completions: Completions,
    /// When the modelled link is free again (bandwidth model).
    busy_until: Instant,
    /// Completes what is due; detached when the channel closes, to finish what is
    /// still posted.
    poller: Option<Poller>,
    /// Set when the channel closes: the detached poller then ends once nothing is left
    /// to complete.
    closed: Rc<Cell<bool>>,
}

impl Drop for NvmesimChannel {
    fn drop(&mut self) {
        self.closed.set(true);
        if let Some(poller) = self.poller.take() {
            poller.detach();
        }
    }
}

impl NvmesimChannel {
    pub(crate) fn new(ctx: &mut ThreadCtx, name: &str, device: Arc<Device>) -> NvmesimChannel {
        let completions: Completions = Rc::new(RefCell::new(VecDeque::with_capacity(QUEUE_DEPTH)));
        let closed = Rc::new(Cell::new(false));
        let modelled = !device.latency.is_zero() || device.bandwidth_bytes_per_sec != 0;
        let poller = completion_poller(ctx, name, completions.clone(), closed.clone(), modelled);
        // RAM media is reached without staging: only a file-backed device pays for it.
        let staging = vec![0u8; if device.media.needs_staging() { STAGING_BYTES } else { 0 }];
        NvmesimChannel { device, staging, completions, busy_until: ctx.now(), poller: Some(poller), closed }
    }

    fn execute(&mut self, io: &mut BdevIo) -> IoStatus {
        let block_size = u64::from(self.device.block_size);
        // The layer checked the range and the buffer size, so neither product overflows;
        // the size is checked again before data moves, as a short list would leave
        // media bytes unwritten.
        let offset = io.offset_blocks * block_size;
        let len = io.num_blocks * block_size;
        let result = match io.io_type {
            IoType::Write => self.write(io, offset, len).map_err(|err| err.with_status(IoStatus::WRITE_FAULT)),
            IoType::Read => self.read(io, offset, len).map_err(|err| err.with_status(IoStatus::UNRECOVERED_READ_ERROR)),
            IoType::Unmap | IoType::WriteZeroes => {
                self.device.media.zero(offset, len).map_err(|err| (IoStatus::WRITE_FAULT, err))
            }
            IoType::Flush => self.device.media.flush().map_err(|err| (IoStatus::WRITE_FAULT, err)),
            // Queued behind everything before it, so it completes once they have.
            IoType::Reset => Ok(()),
            IoType::Compare => Err((IoStatus::INVALID_OPCODE, "compare is not supported".into())),
        };
        match result {
            Ok(()) => IoStatus::SUCCESS,
            Err((status, why)) => {
                peerless_core::log_error!("nvmesim: {:?} at block {}: {why}", io.io_type, io.offset_blocks);
                status
            }
        }
    }

    fn write(&mut self, io: &BdevIo, offset: u64, len: u64) -> Result<(), MediaError> {
        let sgl = io.sgl().map_err(|err| MediaError::Transfer(err.to_string()))?;
        if sgl.len() as u64 != len {
            return Err(MediaError::Transfer(format!("{} bytes of buffers for {len} bytes of blocks", sgl.len())));
        }
        self.device.media.write_from(offset, &sgl, &mut self.staging)
    }

    fn read(&mut self, io: &mut BdevIo, offset: u64, len: u64) -> Result<(), MediaError> {
        let mut sgl = io.sgl_mut().map_err(|err| MediaError::Transfer(err.to_string()))?;
        if sgl.len() as u64 != len {
            return Err(MediaError::Transfer(format!("{} bytes of buffers for {len} bytes of blocks", sgl.len())));
        }
        self.device.media.read_into(offset, &mut sgl, &mut self.staging)
    }

    /// When the modelled device finishes `bytes` submitted now: after the link has
    /// carried them (bandwidth) plus the fixed command latency. Unmodelled, at once.
    fn due(&mut self, ctx: &ThreadCtx, bytes: u64) -> Instant {
        if self.device.latency.is_zero() && self.device.bandwidth_bytes_per_sec == 0 {
            // The timeslice's clock: already past, so the next poll completes it.
            return ctx.now();
        }
        // The real clock, not the timeslice's, which may have started before this
        // submission: a modelled latency must never come out short.
        let now = Instant::now();
        let transfer = match self.device.bandwidth_bytes_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_nanos((u128::from(bytes) * 1_000_000_000 / u128::from(rate)) as u64),
        };
        self.busy_until = self.busy_until.max(now) + transfer;
        self.busy_until + self.device.latency
    }
}

impl BdevChannelOps for NvmesimChannel {
    fn submit(&mut self, ctx: &mut ThreadCtx, mut io: Box<BdevIo>) -> Result<(), SubmitError> {
        if self.completions.borrow().len() >= QUEUE_DEPTH {
            return Err(SubmitError::NoResources(io));
        }
        let status = self.execute(&mut io);
        // The link carries the I/O's blocks, not the whole of a larger buffer.
        let bytes = if io.io_type.has_data() { io.num_blocks * u64::from(self.device.block_size) } else { 0 };
        let due = self.due(ctx, bytes);
        // Due times never decrease (a fixed latency after a monotonic link clock), so
        // the queue stays in completion order.
        debug_assert!(self.completions.borrow().back().is_none_or(|last| last.due <= due));
        self.completions.borrow_mut().push_back(Posted { due, status, io });
        Ok(())
    }
}

/// `modelled`: due times come from the real clock, so the poller reads it too; else the
/// timeslice's clock, which costs nothing, is enough.
fn completion_poller(
    ctx: &mut ThreadCtx,
    name: &str,
    completions: Completions,
    closed: Rc<Cell<bool>>,
    modelled: bool,
) -> Poller {
    ctx.poller(&format!("nvmesim_{name}"), 0, move |ctx| {
        let now = if modelled { Instant::now() } else { ctx.now() };
        let mut completed = 0;
        while completed < COMPLETIONS_PER_POLL {
            let next = {
                let mut queue = completions.borrow_mut();
                match queue.front() {
                    Some(posted) if posted.due <= now => queue.pop_front(),
                    _ => None,
                }
            };
            let Some(posted) = next else { break };
            posted.io.complete(posted.status);
            completed += 1;
        }
        let waiting = !completions.borrow().is_empty();
        if completed == 0 && !waiting && closed.get() {
            return PollStatus::Done;
        }
        // Busy while commands wait for their modelled time: an idle reactor in interrupt
        // mode would sleep with no timer set to wake it for them.
        PollStatus::from_work(completed > 0 || waiting)
    })
}
