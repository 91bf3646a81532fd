//! One thread's delay channel: I/O goes down to the base's channel; its completion comes
//! back on this channel's queue, waits in a heap ordered by due time, and is passed up
//! once due.
//!
//! Releasing: an active poller drains the base's completions and releases what is due on
//! every iteration, which is exact in poll mode (SPDK uses a 0-period poller the same
//! way). In interrupt mode an active poller alone would let the reactor sleep through a
//! deadline, so a timed poller also runs every `INTERRUPT_TICK_US` while anything is held
//! and is paused while nothing is: held I/O costs at most a tick of extra latency, and an
//! idle delay bdev wakes nobody. (The reactor has no one-shot timer to arm at the exact
//! next deadline; a fixed tick is the closest kind thing.)

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_core::reactor::{IoChannel, IoDevice, PollStatus, Poller, ThreadCtx};

use super::Latencies;
use crate::bdev::{BdevChannelOps, SubmitError};
use crate::io::{completion_queue, BdevIo, CompletionQueue, IoType};
use crate::manager::BdevHandle;
use crate::modules::common::{state_poller, BaseBdev};
use crate::status::IoStatus;

/// Wake-up period of the interrupt-mode release timer, while I/O is held.
const INTERRUPT_TICK_US: u64 = 100;
/// Room reserved up front for held I/O and base completions.
const HELD_CAPACITY: usize = 1024;
/// One I/O in this many gets the p99 latency.
const P99_ONE_IN: u64 = 100;

/// A completion waiting for its due time; ties keep arrival order.
struct Held {
    due: Instant,
    sequence: u64,
    io: Box<BdevIo>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.sequence) == (other.due, other.sequence)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.sequence).cmp(&(other.due, other.sequence))
    }
}

/// Every thread's channel state of one delay bdev, so a reset can reach them all.
pub(super) type DelayDevice = IoDevice<Rc<RefCell<State>>>;

/// The device whose channels hold a delay bdev's per-thread state: built on each thread
/// that opens a channel, with its handle on the base and its pollers.
pub(super) fn device(name: &str, base: Arc<BaseBdev>, latencies: Arc<Latencies>) -> DelayDevice {
    let name = name.to_string();
    IoDevice::new(&format!("delay_{name}"), move |ctx| {
        let clock =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |at| at.as_nanos() as u64);
        let seed = clock ^ ctx.id().0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let interrupt_mode = ctx.app().options().interrupt_mode;
        Rc::new_cyclic(|weak: &std::rc::Weak<RefCell<State>>| {
            let poller = state_poller(ctx, &format!("delay_{name}"), 0, weak.clone(), |state, _| state.poll());
            let timer = interrupt_mode.then(|| {
                let name = format!("delay_{name}_timer");
                let timer = state_poller(ctx, &name, INTERRUPT_TICK_US, weak.clone(), |state, _| state.poll());
                timer.pause();
                timer
            });
            RefCell::new(State {
                base: base.channel(ctx),
                from_base: completion_queue(HELD_CAPACITY),
                held: BinaryHeap::with_capacity(HELD_CAPACITY),
                resets: VecDeque::new(),
                forwarded: 0,
                aborted_through: 0,
                latencies: latencies.clone(),
                random: Xorshift(seed | 1),
                _poller: poller,
                timer,
                timer_running: false,
            })
        })
    })
}

pub(super) struct DelayChannel {
    device: DelayDevice,
    channel: IoChannel<Rc<RefCell<State>>>,
}

pub(super) struct State {
    /// None once the delay bdev let go of its base (deleted before this channel).
    base: Option<BdevHandle>,
    /// Where the base hands back finished I/O.
    from_base: CompletionQueue,
    held: BinaryHeap<Reverse<Held>>,
    /// Resets waiting for every channel to drop what it holds.
    resets: VecDeque<Box<BdevIo>>,
    /// I/O sent to the base so far; each carries its number as its tag.
    forwarded: u64,
    /// Reads and writes numbered up to this were aborted by a reset while still at the
    /// base: they are aborted when they come back instead of being held.
    aborted_through: u64,
    latencies: Arc<Latencies>,
    /// For the one-in-a-hundred p99 draw.
    random: Xorshift,
    /// Releases what is due, every iteration; goes with this state.
    _poller: Poller,
    /// The interrupt-mode release timer, and whether it is running.
    timer: Option<Poller>,
    timer_running: bool,
}

impl DelayChannel {
    pub(super) fn boxed(ctx: &mut ThreadCtx, device: &DelayDevice) -> Box<dyn BdevChannelOps> {
        Box::new(DelayChannel { device: device.clone(), channel: ctx.get_io_channel(device) })
    }
}

impl BdevChannelOps for DelayChannel {
    fn submit(&mut self, ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        let state = self.channel.borrow().clone();
        if io.io_type != IoType::Reset {
            state.borrow_mut().forward(ctx, io);
            return Ok(());
        }
        // As SPDK: a reset first aborts what every channel holds, then resets the base.
        state.borrow_mut().resets.push_back(io);
        let device = self.device.clone();
        self.device.for_each_channel(
            ctx,
            |_, state| state.borrow_mut().abort_held(),
            move |ctx| {
                let state = ctx.get_io_channel(&device).borrow().clone();
                let mut state = state.borrow_mut();
                if let Some(reset) = state.resets.pop_front() {
                    state.forward(ctx, reset);
                }
            },
        );
        Ok(())
    }
}

impl State {
    fn forward(&mut self, ctx: &mut ThreadCtx, io: Box<BdevIo>) {
        self.forwarded += 1;
        match &self.base {
            Some(base) => base.submit(ctx, io, &self.from_base, self.forwarded),
            None => io.complete(IoStatus::INVALID_NAMESPACE),
        }
    }

    /// Completes everything held with "aborted", as SPDK's reset does, and marks what
    /// is still at the base to be aborted when it comes back.
    fn abort_held(&mut self) {
        self.aborted_through = self.forwarded;
        self.drain_base(Instant::now());
        while let Some(Reverse(held)) = self.held.pop() {
            held.io.complete(IoStatus::ABORTED_BY_REQUEST);
        }
    }

    fn poll(&mut self) -> PollStatus {
        let now = Instant::now();
        let mut did_work = self.drain_base(now);
        while self.held.peek().is_some_and(|Reverse(held)| held.due <= now) {
            if let Some(Reverse(held)) = self.held.pop() {
                held.io.pass_up();
                did_work = true;
            }
        }
        self.run_timer_while_held();
        PollStatus::from_work(did_work)
    }

    /// Takes in what the base finished; returns whether there was any.
    fn drain_base(&mut self, now: Instant) -> bool {
        let mut any = false;
        loop {
            let next = self.from_base.borrow_mut().pop_front();
            let Some(io) = next else { break };
            any = true;
            self.arrived(io, now);
        }
        any
    }

    /// A completion from the base: hold it for its latency, or pass it up now.
    fn arrived(&mut self, io: Box<BdevIo>, now: Instant) {
        let delayed = matches!(io.io_type, IoType::Read | IoType::Write);
        if delayed && io.tag <= self.aborted_through {
            io.complete(IoStatus::ABORTED_BY_REQUEST);
            return;
        }
        let p99 = self.random.next().is_multiple_of(P99_ONE_IN);
        let latency_us = self.latencies.for_io(io.io_type, p99).unwrap_or(0);
        if latency_us == 0 {
            io.pass_up();
            return;
        }
        // Latencies are capped at an hour, so this cannot overflow the clock.
        let due = now + Duration::from_micros(latency_us);
        // The forwarding number orders equal deadlines by arrival at the base.
        let sequence = io.tag;
        self.held.push(Reverse(Held { due, sequence, io }));
    }

    fn run_timer_while_held(&mut self) {
        let Some(timer) = &self.timer else { return };
        let want = !self.held.is_empty();
        if want != self.timer_running {
            if want {
                timer.resume();
            } else {
                timer.pause();
            }
            self.timer_running = want;
        }
    }
}

/// xorshift64: cheap, and statistically plenty for a 1-in-100 draw. The state must not
/// be zero.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        debug_assert!(self.0 != 0, "xorshift state zero stays zero");
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_completions_leave_in_due_order() {
        let start = Instant::now();
        let mut heap = BinaryHeap::new();
        for (sequence, offset_us) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            let io = BdevIo::new(IoType::Read, sequence, 1);
            heap.push(Reverse(Held { due: start + Duration::from_micros(offset_us), sequence, io }));
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|Reverse(held)| held.io.offset_blocks)).collect();
        assert_eq!(order, vec![2, 4, 3, 1]);
    }

    #[test]
    fn about_one_in_a_hundred_draws_is_a_tail() {
        let mut random = Xorshift(0x1234_5678_9abc_def1);
        let draws = 100_000;
        let tails = (0..draws).filter(|_| random.next().is_multiple_of(P99_ONE_IN)).count();
        assert!((800..=1200).contains(&tails), "{tails} tails in {draws}");
    }
}
