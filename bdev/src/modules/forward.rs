//! What the stacked modules (passthru, split) share: a channel that forwards each I/O to
//! its base bdev's channel, shifted by a fixed block offset, and hands it back up when
//! the base completes it. Buffers travel untouched, tags and all, so device memory the
//! base accepts reaches it without a bounce.

use std::cell::Cell;
use std::rc::Rc;

use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};

use crate::bdev::{BdevChannelOps, SubmitError};
use crate::io::{completion_queue, BdevIo, CompletionQueue, IoType};
use crate::manager::BdevHandle;
use crate::status::IoStatus;

/// Completions handed up per poll, so one busy bdev cannot hold its thread forever.
const COMPLETIONS_PER_POLL: usize = 256;
/// Room reserved up front in a channel's completion queue.
const QUEUE_CAPACITY: usize = 256;

/// One thread's path from a stacked bdev to its base.
pub(crate) struct ForwardChannel {
    /// None once the stacked bdev let go of its base (deleted): I/O fails cleanly.
    base: Option<BdevHandle>,
    /// Where the base hands back what this channel forwarded.
    queue: CompletionQueue,
    offset_blocks: u64,
    /// Blocks this bdev spans, for the checks the layer leaves to modules (flush).
    num_blocks: u64,
    in_flight: Rc<Cell<u64>>,
    /// Hands completions up; detached when the channel closes, to finish what the base
    /// still holds.
    poller: Option<Poller>,
    /// Set when the channel closes: the detached poller then ends once nothing is in
    /// flight.
    closed: Rc<Cell<bool>>,
}

impl Drop for ForwardChannel {
    fn drop(&mut self) {
        self.closed.set(true);
        if let Some(poller) = self.poller.take() {
            poller.detach();
        }
    }
}

impl ForwardChannel {
    /// A channel forwarding to `base` at `offset_blocks`; registers its poller on this
    /// thread.
    pub(crate) fn new(
        ctx: &mut ThreadCtx,
        name: &str,
        base: Option<BdevHandle>,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> ForwardChannel {
        let queue = completion_queue(QUEUE_CAPACITY);
        let in_flight = Rc::new(Cell::new(0));
        let closed = Rc::new(Cell::new(false));
        let poller = hand_up_poller(ctx, name, queue.clone(), in_flight.clone(), closed.clone(), offset_blocks);
        ForwardChannel { base, queue, offset_blocks, num_blocks, in_flight, poller: Some(poller), closed }
    }
}

impl BdevChannelOps for ForwardChannel {
    fn submit(&mut self, ctx: &mut ThreadCtx, mut io: Box<BdevIo>) -> Result<(), SubmitError> {
        let Some(base) = &self.base else {
            io.complete(IoStatus::INVALID_NAMESPACE);
            return Ok(());
        };
        if io.io_type != IoType::Reset {
            // The layer checks every range but a flush's; a flush past this bdev's end
            // would reach a neighbour's blocks on a shared base.
            if io.offset_blocks.checked_add(io.num_blocks).is_none_or(|end| end > self.num_blocks) {
                io.complete(IoStatus::LBA_OUT_OF_RANGE);
                return Ok(());
            }
            io.offset_blocks += self.offset_blocks;
        }
        self.in_flight.set(self.in_flight.get() + 1);
        // The base's layer channel retries "no resources" itself, so this never fails.
        base.submit(ctx, io, &self.queue, 0);
        Ok(())
    }
}

fn hand_up_poller(
    ctx: &mut ThreadCtx,
    name: &str,
    queue: CompletionQueue,
    in_flight: Rc<Cell<u64>>,
    closed: Rc<Cell<bool>>,
    offset_blocks: u64,
) -> Poller {
    ctx.poller(&format!("forward_{name}"), 0, move |_| {
        let mut handed_up = 0;
        while handed_up < COMPLETIONS_PER_POLL {
            let Some(mut io) = queue.borrow_mut().pop_front() else { break };
            if io.io_type != IoType::Reset {
                debug_assert!(io.offset_blocks >= offset_blocks, "an I/O came back below its shift: {io:?}");
                // The submitter sees the offset it asked for.
                io.offset_blocks -= offset_blocks;
            }
            in_flight.set(in_flight.get() - 1);
            io.pass_up();
            handed_up += 1;
        }
        if handed_up == 0 && in_flight.get() == 0 && closed.get() {
            return PollStatus::Done;
        }
        PollStatus::from_work(handed_up > 0)
    })
}
