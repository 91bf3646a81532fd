//! One thread's error channel: asks the injection table about each I/O, then fails it,
//! holds it, refuses it, corrupts it, or sends it down to the base untouched.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use peerless_core::mem::{self, Sgl};
use peerless_core::reactor::{IoChannel, IoDevice, PollStatus, Poller, ThreadCtx};

use super::inject::{ErrorType, Injections};
use crate::bdev::{BdevChannelOps, SubmitError};
use crate::io::{completion_queue, BdevIo, CompletionQueue, IoType};
use crate::manager::BdevHandle;
use crate::modules::common::{state_poller, BaseBdev};
use crate::status::IoStatus;

/// Room reserved up front for base completions and held I/O.
const QUEUE_CAPACITY: usize = 256;
/// A read whose data is to be corrupted on the way back carries this bit in its tag,
/// with the value in the low byte and the offset above it.
const CORRUPT_FLAG: u64 = 1 << 63;
const CORRUPT_OFFSET_SHIFT: u32 = 8;
/// Offsets that fit the tag beside the flag and value; larger ones lie beyond any I/O.
const CORRUPT_OFFSET_MAX: u64 = (1 << 54) - 1;

/// Every thread's channel state of one error bdev, so a reset can reach them all.
pub(super) type ErrorDevice = IoDevice<Rc<RefCell<State>>>;

/// The device whose channels hold an error bdev's per-thread state: built on each thread
/// that opens a channel, with its handle on the base and its poller.
pub(super) fn device(name: &str, base: Arc<BaseBdev>) -> ErrorDevice {
    let name = name.to_string();
    IoDevice::new(&format!("error_{name}"), move |ctx| {
        Rc::new_cyclic(|weak: &std::rc::Weak<RefCell<State>>| {
            RefCell::new(State {
                base: base.channel(ctx),
                from_base: completion_queue(QUEUE_CAPACITY),
                in_base: 0,
                pending: VecDeque::with_capacity(QUEUE_CAPACITY),
                resets: VecDeque::new(),
                _poller: state_poller(ctx, &format!("error_{name}"), 0, weak.clone(), |state, _| state.poll()),
            })
        })
    })
}

pub(super) struct ErrorChannel {
    device: ErrorDevice,
    channel: IoChannel<Rc<RefCell<State>>>,
    injections: Arc<Injections>,
}

pub(super) struct State {
    /// None once the error bdev let go of its base (deleted before this channel).
    base: Option<BdevHandle>,
    from_base: CompletionQueue,
    /// I/O sent to the base and not back yet.
    in_base: u64,
    /// I/O held by a `pending` injection until a reset.
    pending: VecDeque<Box<BdevIo>>,
    /// Resets waiting for every channel to abort what it holds.
    resets: VecDeque<Box<BdevIo>>,
    /// Passes up what the base finished; goes with this state.
    _poller: Poller,
}

impl ErrorChannel {
    pub(super) fn boxed(
        ctx: &mut ThreadCtx,
        device: &ErrorDevice,
        injections: Arc<Injections>,
    ) -> Box<dyn BdevChannelOps> {
        Box::new(ErrorChannel { device: device.clone(), channel: ctx.get_io_channel(device), injections })
    }

    /// As SPDK: a reset aborts what `pending` injections hold on every channel, then
    /// completes; it does not reach the base.
    fn reset(&self, ctx: &mut ThreadCtx, io: Box<BdevIo>) {
        self.channel.borrow().borrow_mut().resets.push_back(io);
        let device = self.device.clone();
        self.device.for_each_channel(
            ctx,
            |_, state| {
                for held in state.borrow_mut().pending.drain(..) {
                    held.complete(IoStatus::ABORTED_BY_REQUEST);
                }
            },
            move |ctx| {
                let state = ctx.get_io_channel(&device).borrow().clone();
                let reset = state.borrow_mut().resets.pop_front();
                if let Some(reset) = reset {
                    reset.complete(IoStatus::SUCCESS);
                }
            },
        );
    }
}

impl BdevChannelOps for ErrorChannel {
    fn submit(&mut self, ctx: &mut ThreadCtx, mut io: Box<BdevIo>) -> Result<(), SubmitError> {
        if io.io_type == IoType::Reset {
            self.reset(ctx, io);
            return Ok(());
        }
        let shared = self.channel.borrow().clone();
        let mut state = shared.borrow_mut();
        if state.base.is_none() {
            io.complete(IoStatus::INVALID_NAMESPACE);
            return Ok(());
        }
        let mut tag = 0;
        // As SPDK, the queue depth an injection waits for counts I/O at the base.
        if let Some(injection) = self.injections.take(io.io_type, state.in_base) {
            match injection.error_type {
                ErrorType::Failure => {
                    io.complete(IoStatus::INTERNAL_ERROR);
                    return Ok(());
                }
                ErrorType::NvmeFailure => {
                    io.complete(injection.status);
                    return Ok(());
                }
                ErrorType::Pending => {
                    state.pending.push_back(io);
                    return Ok(());
                }
                ErrorType::Nomem => return Err(SubmitError::NoResources(io)),
                ErrorType::CorruptData => match io.io_type {
                    // As SPDK: in the submitter's own buffer, before it goes down.
                    IoType::Write => corrupt(&mut io, injection.corrupt_offset, injection.corrupt_value),
                    IoType::Read if injection.corrupt_offset <= CORRUPT_OFFSET_MAX => {
                        tag = CORRUPT_FLAG
                            | (injection.corrupt_offset << CORRUPT_OFFSET_SHIFT)
                            | u64::from(injection.corrupt_value);
                    }
                    // Nothing to corrupt in an unmap or a flush, or past any read.
                    _ => {}
                },
            }
        }
        state.in_base += 1;
        let from_base = state.from_base.clone();
        if let Some(base) = &state.base {
            base.submit(ctx, io, &from_base, tag);
        }
        Ok(())
    }
}

impl State {
    fn poll(&mut self) -> PollStatus {
        let mut did_work = false;
        loop {
            let next = self.from_base.borrow_mut().pop_front();
            let Some(mut io) = next else { break };
            did_work = true;
            debug_assert!(self.in_base > 0, "a base completion nobody sent");
            self.in_base -= 1;
            if io.tag & CORRUPT_FLAG != 0 && io.status.is_success() {
                let offset = (io.tag & !CORRUPT_FLAG) >> CORRUPT_OFFSET_SHIFT;
                let value = io.tag as u8;
                corrupt(&mut io, offset, value);
            }
            io.pass_up();
        }
        PollStatus::from_work(did_work)
    }
}

/// Flips `value`'s bits in the byte at `offset` of the I/O's payload, through the gate
/// (the payload may be device memory). An offset past the payload corrupts nothing, as
/// in SPDK.
fn corrupt(io: &mut BdevIo, offset: u64, value: u8) {
    let flipped = (|| -> mem::Result<bool> {
        let mut payload = io.sgl_mut()?;
        let Ok(offset) = usize::try_from(offset) else { return Ok(false) };
        if offset >= payload.len() {
            return Ok(false);
        }
        let mut target = payload.sub_mut(offset, 1)?;
        let mut byte = [0u8; 1];
        mem::copy(&mut Sgl::from_host_mut(&mut byte)?, &target)?;
        byte[0] ^= value;
        mem::copy(&mut target, &Sgl::from_host(&byte)?)?;
        Ok(true)
    })();
    if let Err(err) = flipped {
        peerless_core::log_error!("error bdev: corrupting {:?} at byte {offset} failed: {err}", io.io_type);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::DataBuf;

    #[test]
    fn corrupt_flips_one_byte_across_buffers_and_ignores_offsets_past_the_end() {
        let mut io = BdevIo::new(IoType::Read, 0, 2);
        io.buffers.push(DataBuf::Heap(vec![0u8; 4].into_boxed_slice()));
        io.buffers.push(DataBuf::Heap(vec![0u8; 4].into_boxed_slice()));
        corrupt(&mut io, 5, 0xa5);
        corrupt(&mut io, 8, 0xff);
        let bytes: Vec<u8> = io.sgl().unwrap().cpu_view().unwrap().to_vec();
        assert_eq!(bytes, vec![0, 0, 0, 0, 0, 0xa5, 0, 0]);
    }
}
