//! One thread's path into an RBD bdev: its own `AioQueue` on the shared image. librbd
//! completes on its own threads, which post the slot to a lock-free queue and bump the
//! queue's eventfd; a poller on this thread reaps them (woken through that eventfd in
//! interrupt mode), so the reactor never waits on librbd and the I/O object never
//! leaves its thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use peerless_core::mem::MemKind;
use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};
use spdk_sys::rbd::{AioOp, AioQueue, Image, Refused};

use crate::bdev::{BdevChannelOps, SubmitError};
use crate::io::{BdevIo, IoType};
use crate::modules::common::state_poller;
use crate::status::IoStatus;

/// Operations one channel keeps in flight on its image before the layer queues the rest.
pub(super) const QUEUE_DEPTH: u32 = 128;
/// Completions handled per poll, so one busy image cannot hold its thread forever.
const COMPLETIONS_PER_POLL: usize = 128;

/// An I/O in librbd's hands and the reset epoch it was submitted in.
type InFlight = (Box<BdevIo>, u64);

pub(super) struct RbdChannel {
    state: Rc<RefCell<State>>,
    _poller: Poller,
}

struct State {
    /// The bdev's name, for logs.
    name: String,
    block_size: u64,
    queue: AioQueue<InFlight>,
    /// Resets wait until everything submitted before the first of them has finished:
    /// librbd cannot abort an operation, so a reset is a drain.
    resets: VecDeque<Box<BdevIo>>,
    epoch: u64,
    before_reset: usize,
    /// (address, length) of the current I/O's buffers, reused from I/O to I/O.
    segments: Vec<(usize, usize)>,
}

impl RbdChannel {
    pub(super) fn new(ctx: &mut ThreadCtx, name: &str, image: Arc<Image>, block_size: u32) -> std::io::Result<Self> {
        let queue = AioQueue::new(image, QUEUE_DEPTH)?;
        if ctx.app().options().interrupt_mode {
            // Leaves the reactor's epoll set when the queue's eventfd closes with it.
            ctx.watch_fd(queue.eventfd())?;
        }
        let state = Rc::new(RefCell::new(State {
            name: name.to_string(),
            block_size: u64::from(block_size),
            queue,
            resets: VecDeque::new(),
            epoch: 0,
            before_reset: 0,
            segments: Vec::with_capacity(16),
        }));
        let poller = state_poller(ctx, &format!("rbd_{name}"), 0, Rc::downgrade(&state), |state, _| state.poll());
        Ok(RbdChannel { state, _poller: poller })
    }
}

impl BdevChannelOps for RbdChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        self.state.borrow_mut().submit(io)
    }
}

impl State {
    fn submit(&mut self, mut io: Box<BdevIo>) -> Result<(), SubmitError> {
        let offset = io.offset_blocks * self.block_size;
        let len = io.num_blocks * self.block_size;
        let op = match io.io_type {
            IoType::Read => AioOp::Read { offset },
            IoType::Write => AioOp::Write { offset },
            IoType::Flush => AioOp::Flush,
            IoType::Unmap => AioOp::Discard { offset, len },
            IoType::WriteZeroes => AioOp::WriteZeroes { offset, len },
            IoType::Reset => {
                if self.resets.is_empty() {
                    self.epoch += 1;
                    self.before_reset = self.queue.in_flight();
                }
                self.resets.push_back(io);
                self.release_resets();
                return Ok(());
            }
            IoType::Compare => {
                io.complete(IoStatus::INVALID_OPCODE);
                return Ok(());
            }
        };
        if !self.queue.has_room() {
            return Err(SubmitError::NoResources(io));
        }
        self.segments.clear();
        if io.io_type.has_data() {
            // Reads are filled through the writable view; the bdev accepts host memory
            // only, so the layer has bounced anything else before it got here.
            let sgl = if io.io_type == IoType::Read { io.sgl_mut() } else { io.sgl() };
            let host = match sgl {
                Ok(sgl) if sgl.len() as u64 == len => {
                    self.segments.extend(sgl.iter().map(|seg| (seg.addr(), seg.len())));
                    sgl.iter().all(|seg| seg.kind() == MemKind::Host)
                }
                Ok(sgl) => {
                    peerless_core::log_error!(
                        "rbd '{}': {io:?} carries {} bytes for {len} bytes of blocks",
                        self.name,
                        sgl.len()
                    );
                    io.complete(IoStatus::INVALID_FIELD);
                    return Ok(());
                }
                Err(err) => {
                    peerless_core::log_error!("rbd '{}': {io:?} has no buffer list: {err}", self.name);
                    io.complete(IoStatus::DATA_TRANSFER_ERROR);
                    return Ok(());
                }
            };
            if !host {
                peerless_core::log_error!("rbd '{}': I/O with non-host buffers reached the module", self.name);
                io.complete(IoStatus::DATA_TRANSFER_ERROR);
                return Ok(());
            }
        }
        match self.queue.submit(op, (io, self.epoch), &self.segments) {
            Ok(()) => Ok(()),
            Err((Refused::Full, (io, _))) => Err(SubmitError::NoResources(io)),
            Err((Refused::Errno(errno), (io, _))) => {
                peerless_core::log_error!(
                    "rbd '{}': librbd refused {io:?}: {}",
                    self.name,
                    spdk_sys::rbd::strerror(errno)
                );
                let status = status_of(io.io_type, -i64::from(errno));
                io.complete(status);
                Ok(())
            }
        }
    }

    fn poll(&mut self) -> PollStatus {
        let mut reaped = self.reap();
        if reaped == 0 {
            // About to report idle, after which the reactor may sleep: clear the eventfd,
            // then look once more, so a completion between the two is not slept through.
            self.queue.clear_eventfd();
            if self.queue.has_completions() {
                reaped = self.reap();
            }
        }
        if reaped > 0 {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn reap(&mut self) -> usize {
        let name = &self.name;
        let current = self.epoch;
        let mut drained = 0usize;
        let reaped = self.queue.reap(COMPLETIONS_PER_POLL, |(io, epoch), ret| {
            if epoch < current {
                drained += 1;
            }
            let status = status_of(io.io_type, ret);
            if !status.is_success() {
                peerless_core::log_warn!(
                    "rbd '{name}': {io:?} failed in librbd: {} -> {status}",
                    spdk_sys::rbd::strerror(
                        ret.checked_neg().and_then(|errno| i32::try_from(errno).ok()).unwrap_or(libc::EIO)
                    )
                );
            }
            io.complete(status);
        });
        self.before_reset = self.before_reset.saturating_sub(drained);
        self.release_resets();
        reaped
    }

    fn release_resets(&mut self) {
        if self.before_reset == 0 {
            while let Some(reset) = self.resets.pop_front() {
                reset.complete(IoStatus::SUCCESS);
            }
        }
    }
}

/// librbd's return value (bytes, or a negative errno) as an NVMe status.
pub(super) fn status_of(io_type: IoType, ret: i64) -> IoStatus {
    if ret >= 0 {
        return IoStatus::SUCCESS;
    }
    let errno = ret.checked_neg().and_then(|errno| i32::try_from(errno).ok()).unwrap_or(libc::EIO);
    match errno {
        // The cluster is unreachable for now (an op timeout set by `rados_osd_op_timeout`,
        // a lost session, a client blocklisted while another target took the lock):
        // Namespace Not Ready without DNR lets the host retry, here or on another path
        // (NVMe Base 2.0, Figure 101).
        libc::ETIMEDOUT | libc::ENOTCONN | libc::ESHUTDOWN | libc::ECONNRESET | libc::EAGAIN => {
            IoStatus::NAMESPACE_NOT_READY
        }
        libc::EINVAL | libc::ERANGE | libc::EFBIG => IoStatus::LBA_OUT_OF_RANGE,
        _ => match io_type {
            IoType::Read => IoStatus::UNRECOVERED_READ_ERROR,
            IoType::Write | IoType::WriteZeroes => IoStatus::WRITE_FAULT,
            _ => IoStatus::INTERNAL_ERROR,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librbd_results_map_to_nvme_statuses() {
        let check = |io_type, ret, want| assert_eq!(status_of(io_type, ret), want, "{io_type:?} {ret}");
        check(IoType::Read, 4096, IoStatus::SUCCESS);
        check(IoType::Flush, 0, IoStatus::SUCCESS);
        check(IoType::Write, -i64::from(libc::ETIMEDOUT), IoStatus::NAMESPACE_NOT_READY);
        check(IoType::Read, -i64::from(libc::ESHUTDOWN), IoStatus::NAMESPACE_NOT_READY);
        check(IoType::Read, -i64::from(libc::EINVAL), IoStatus::LBA_OUT_OF_RANGE);
        check(IoType::Read, -i64::from(libc::EIO), IoStatus::UNRECOVERED_READ_ERROR);
        check(IoType::Write, -i64::from(libc::EIO), IoStatus::WRITE_FAULT);
        check(IoType::WriteZeroes, -i64::from(libc::EROFS), IoStatus::WRITE_FAULT);
        check(IoType::Unmap, -i64::from(libc::EIO), IoStatus::INTERNAL_ERROR);
        check(IoType::Read, i64::MIN, IoStatus::UNRECOVERED_READ_ERROR);
    }
}
