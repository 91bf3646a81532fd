//! One thread's path into a uring bdev: its own ring, SQEs batched and handed to the
//! kernel once per poll, completions reaped by a poller on the same thread (woken by the
//! ring's eventfd in interrupt mode), and aligned staging for buffers O_DIRECT refuses.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use peerless_core::mem::{self, DmaBuf};
use peerless_core::reactor::{PollStatus, ThreadCtx};

use super::sys::{Op, Refused, Ring};
use super::Backing;
use crate::bdev::{BdevChannelOps, SubmitError};
use crate::io::{BdevIo, DataBuf, IoType};
use crate::modules::common::register_poller;
use crate::status::IoStatus;

/// Slots (and SQ entries) per channel: the most I/O one thread keeps in flight on one
/// bdev before the layer queues the rest.
pub(super) const RING_ENTRIES: u32 = 128;
/// Completions handled per poll, so one busy ring cannot hold its thread forever.
const COMPLETIONS_PER_POLL: usize = 128;
/// Staging buffers one channel may hold for I/O whose buffers O_DIRECT cannot take.
const STAGING_BUFFERS_MAX: usize = 32;

/// What the ring gives back with an I/O.
struct Extra {
    /// The I/O's own buffers, when it ran through staging.
    original: Option<Vec<DataBuf>>,
    /// The reset epoch it was submitted in.
    epoch: u64,
}

pub(super) struct UringChannel {
    state: Rc<RefCell<State>>,
}

struct State {
    backing: Arc<Backing>,
    ring: Ring<Extra>,
    /// Resets wait here until everything submitted before the first of them has
    /// finished (I/O submitted after it does not hold it back, so load cannot starve
    /// a reset; later resets of the same batch finish with the first).
    resets: VecDeque<Box<BdevIo>>,
    /// Bumped by a reset that finds no reset waiting; I/O carries the epoch it ran in.
    epoch: u64,
    /// In-flight I/O of epochs before the waiting resets.
    before_reset: usize,
    /// Free staging buffers, each a one-element buffer list ready to swap into an I/O.
    staging: Vec<Vec<DataBuf>>,
    staging_allocated: usize,
}

impl UringChannel {
    /// Builds the channel's ring and poller on `ctx`'s thread; an error if the kernel
    /// refuses a ring (the caller then fails this channel's I/O).
    pub(super) fn new(ctx: &mut ThreadCtx, backing: Arc<Backing>) -> std::io::Result<UringChannel> {
        let interrupt = ctx.app().options().interrupt_mode;
        let ring = Ring::new(backing.file.clone(), backing.block_size, RING_ENTRIES, interrupt)?;
        if let Some(eventfd) = ring.eventfd() {
            // The fd leaves the reactor's epoll set by itself when the ring's eventfd is
            // closed with the channel (the ring holds no file reference to it).
            ctx.watch_fd(eventfd)?;
        }
        let name = backing.name.clone();
        let state = Rc::new(RefCell::new(State {
            backing,
            ring,
            resets: VecDeque::new(),
            epoch: 0,
            before_reset: 0,
            staging: Vec::with_capacity(STAGING_BUFFERS_MAX),
            staging_allocated: 0,
        }));
        register_poller(ctx, &format!("uring_{name}"), 0, Rc::downgrade(&state), |state, _| state.poll());
        Ok(UringChannel { state })
    }
}

impl BdevChannelOps for UringChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        self.state.borrow_mut().submit(io)
    }
}

impl State {
    fn submit(&mut self, mut io: Box<BdevIo>) -> Result<(), SubmitError> {
        let op = match io.io_type {
            IoType::Read => Op::Read,
            IoType::Write => Op::Write,
            IoType::Flush => Op::Flush,
            // Both leave the range reading as zeroes. A punched hole does it in a file
            // and is a discard on a block device; write_zeroes on a block device asks
            // for zeroing instead, which the kernel falls back to writing out where the
            // device cannot discard with zeroes (tmpfs, by contrast, has no ZERO_RANGE).
            IoType::Unmap => Op::Fallocate { mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE },
            IoType::WriteZeroes if self.backing.is_block_device => {
                Op::Fallocate { mode: libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE }
            }
            IoType::WriteZeroes => Op::Fallocate { mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE },
            IoType::Reset => {
                // Nothing in the kernel to abort: a reset completes once what came
                // before it has.
                if self.resets.is_empty() {
                    self.epoch += 1;
                    self.before_reset = self.ring.in_flight();
                }
                self.resets.push_back(io);
                return Ok(());
            }
            IoType::Compare => {
                io.complete(IoStatus::INVALID_OPCODE);
                return Ok(());
            }
        };
        if !self.ring.has_room() {
            return Err(SubmitError::NoResources(io));
        }
        let original = if io.io_type.has_data() && self.needs_staging(&io) {
            match self.stage(&mut io) {
                Ok(original) => Some(original),
                Err(Staging::NoBuffer) => return Err(SubmitError::NoResources(io)),
                Err(Staging::Failed(status)) => {
                    io.complete(status);
                    return Ok(());
                }
            }
        } else {
            None
        };
        match self.ring.start(op, io, Extra { original, epoch: self.epoch }) {
            Ok(()) => Ok(()),
            Err((refused, mut io, Extra { original, .. })) => {
                if let Some(original) = original {
                    let staged = std::mem::replace(&mut io.buffers, original);
                    self.staging.push(staged);
                }
                match refused {
                    Refused::Full => Err(SubmitError::NoResources(io)),
                    Refused::NotHost => {
                        peerless_core::log_error!(
                            "uring '{}': I/O with non-host buffers reached the module",
                            self.backing.name
                        );
                        io.complete(IoStatus::DATA_TRANSFER_ERROR);
                        Ok(())
                    }
                }
            }
        }
    }

    /// Whether O_DIRECT would refuse this I/O's buffers (an address or a length off the
    /// device's alignment); buffered files take anything.
    fn needs_staging(&self, io: &BdevIo) -> bool {
        let Some(align) = self.backing.direct_align else { return false };
        match io.sgl() {
            Ok(sgl) => sgl.iter().any(|seg| seg.addr() % align != 0 || seg.len() % align != 0),
            Err(_) => false,
        }
    }

    /// Swaps the I/O's buffers for an aligned staging buffer of the same size, copying a
    /// write's payload in through the gate. Buffers of a size already seen are reused,
    /// so a steady workload allocates nothing.
    fn stage(&mut self, io: &mut BdevIo) -> Result<Vec<DataBuf>, Staging> {
        let len = io.buffer_bytes();
        let reuse = self.staging.iter().position(|staged| staged.first().is_some_and(|buf| buf.len() == len));
        let mut staged = match reuse {
            Some(index) => self.staging.swap_remove(index),
            None if self.staging_allocated < STAGING_BUFFERS_MAX => self.alloc_staging(len)?,
            // At the limit: give up a free buffer of another size for one of this size.
            None if !self.staging.is_empty() => {
                self.staging.pop();
                self.staging_allocated -= 1;
                self.alloc_staging(len)?
            }
            None => return Err(Staging::NoBuffer),
        };
        if io.io_type == IoType::Write {
            let copied = match (io.sgl(), staged.first_mut()) {
                (Ok(src), Some(DataBuf::Dma(buf))) => buf.sgl_mut().and_then(|mut dst| mem::copy(&mut dst, &src)),
                _ => Err(mem::Error::Config("staging buffer is not DMA memory".into())),
            };
            if let Err(err) = copied {
                self.staging.push(staged);
                peerless_core::log_error!("uring '{}': staging a write failed: {err}", self.backing.name);
                return Err(Staging::Failed(IoStatus::DATA_TRANSFER_ERROR));
            }
        }
        std::mem::swap(&mut io.buffers, &mut staged);
        Ok(staged)
    }

    fn alloc_staging(&mut self, len: usize) -> Result<Vec<DataBuf>, Staging> {
        match DmaBuf::alloc(len) {
            Ok(buf) => {
                self.staging_allocated += 1;
                Ok(vec![DataBuf::Dma(buf)])
            }
            Err(err) => {
                peerless_core::log_warn!("uring '{}': no staging memory for {len} bytes: {err}", self.backing.name);
                Err(Staging::NoBuffer)
            }
        }
    }

    /// Hands queued SQEs to the kernel, finishes what it completed, releases resets.
    fn poll(&mut self) -> PollStatus {
        let mut did_work = false;
        match self.ring.flush() {
            Ok(taken) => did_work |= taken > 0,
            Err(err) => peerless_core::log_error!("uring '{}': io_uring_enter failed: {err}", self.backing.name),
        }
        did_work |= self.reap() > 0;
        if !did_work && self.ring.eventfd().is_some() {
            // About to report idle, and the reactor may then sleep: clear the eventfd,
            // then look once more, so a completion between the two is not slept through.
            self.ring.clear_eventfd();
            if self.ring.has_completions() {
                did_work |= self.reap() > 0;
            }
        }
        if !self.resets.is_empty() && self.before_reset == 0 {
            for reset in self.resets.drain(..) {
                reset.complete(IoStatus::SUCCESS);
            }
            did_work = true;
        }
        PollStatus::from_work(did_work)
    }

    fn reap(&mut self) -> usize {
        let State { ring, staging, backing, resets, epoch, before_reset, .. } = self;
        let waiting_resets = !resets.is_empty();
        ring.reap(COMPLETIONS_PER_POLL, |mut io, Extra { original, epoch: submitted_in }, result| {
            if waiting_resets && submitted_in < *epoch {
                debug_assert!(*before_reset > 0, "more pre-reset completions than pre-reset I/O");
                *before_reset -= 1;
            }
            let mut status = status_of(&io, result);
            if let Some(original) = original {
                let staged = std::mem::replace(&mut io.buffers, original);
                if io.io_type == IoType::Read && status.is_success() && unstage_read(&mut io, &staged).is_err() {
                    status = IoStatus::DATA_TRANSFER_ERROR;
                }
                staging.push(staged);
            }
            if !status.is_success() {
                peerless_core::log_error!(
                    "uring '{}': {:?} at block {} failed: result {result}, status {status}",
                    backing.name,
                    io.io_type,
                    io.offset_blocks
                );
            }
            io.complete(status);
        })
    }
}

enum Staging {
    /// No staging buffer now: retry when I/O completes.
    NoBuffer,
    Failed(IoStatus),
}

/// Copies a staged read's data into the I/O's own buffers, through the gate.
fn unstage_read(io: &mut BdevIo, staged: &[DataBuf]) -> mem::Result<usize> {
    let [DataBuf::Dma(buf)] = staged else {
        return Err(mem::Error::Config("staging buffer is not DMA memory".into()));
    };
    let src = buf.sgl()?;
    let mut dst = io.sgl_mut()?;
    mem::copy(&mut dst, &src)
}

/// The NVMe status for a CQE result: the byte count must be the whole I/O (as SPDK's
/// uring module requires), and errno values map to the closest NVMe status.
pub(super) fn status_of(io: &BdevIo, result: i32) -> IoStatus {
    if result < 0 {
        return match (-result, io.io_type) {
            (libc::EIO | libc::EILSEQ, IoType::Read) => IoStatus::UNRECOVERED_READ_ERROR,
            (libc::EIO | libc::ENOSPC | libc::EDQUOT, IoType::Write | IoType::WriteZeroes | IoType::Unmap) => {
                IoStatus::WRITE_FAULT
            }
            (libc::EOPNOTSUPP, _) => IoStatus::INVALID_OPCODE,
            _ => IoStatus::INTERNAL_ERROR,
        };
    }
    if io.io_type.has_data() && result as usize != io.buffer_bytes() {
        // A short transfer: the file ended early or the device gave up part way.
        return IoStatus::DATA_TRANSFER_ERROR;
    }
    IoStatus::SUCCESS
}

/// A channel whose ring the kernel refused: every I/O fails (why was logged when the
/// channel was made).
pub(super) struct FailedChannel;

impl BdevChannelOps for FailedChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        io.complete(IoStatus::INTERNAL_ERROR);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(io_type: IoType, bytes: usize, result: i32, expected: IoStatus) {
        let mut io = BdevIo::new(io_type, 0, 1);
        if bytes > 0 {
            io.buffers.push(DataBuf::heap(bytes));
        }
        assert_eq!(status_of(&io, result), expected, "{io_type:?} {result}");
    }

    #[test]
    fn results_map_to_nvme_statuses() {
        check(IoType::Read, 4096, 4096, IoStatus::SUCCESS);
        check(IoType::Read, 4096, 512, IoStatus::DATA_TRANSFER_ERROR);
        check(IoType::Read, 4096, -libc::EIO, IoStatus::UNRECOVERED_READ_ERROR);
        check(IoType::Write, 4096, -libc::EIO, IoStatus::WRITE_FAULT);
        check(IoType::Write, 4096, -libc::ENOSPC, IoStatus::WRITE_FAULT);
        check(IoType::Unmap, 0, -libc::EOPNOTSUPP, IoStatus::INVALID_OPCODE);
        check(IoType::Flush, 0, 0, IoStatus::SUCCESS);
        check(IoType::Read, 4096, -libc::EINVAL, IoStatus::INTERNAL_ERROR);
    }
}
