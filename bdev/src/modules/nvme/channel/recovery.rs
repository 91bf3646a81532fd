//! A channel's side of controller recovery: stopping for a reset and coming back after
//! it, deadline checks of outstanding commands, and failing what a removed device holds.
//! All of it runs on the channel's own thread, reached by message (a reset) or from its
//! poller (deadlines, removal).

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use super::{Slot, State};
use crate::io::BdevIo;
use crate::modules::nvme::timeout::{judge, Verdict};
use crate::status::IoStatus;

/// Resets an I/O may be in flight at and still be submitted again, as SPDK's default
/// `bdev_retry_count`; at the next it fails with a status the host may retry. Without a
/// bound, a command that outlives its deadline on every try (a controller slower than
/// the deadline, under load) would have the controller reset for it forever.
const MAX_RESUBMISSIONS: u8 = 3;

/// One thread's channels on a controller: the controller's io device keeps one per
/// thread, which a reset's message visits. Weak: a channel's life is its own.
#[derive(Default)]
pub(crate) struct ThreadChannels {
    states: Vec<Weak<RefCell<State>>>,
}

impl ThreadChannels {
    pub(super) fn add(&mut self, state: &Rc<RefCell<State>>) {
        self.states.retain(|weak| weak.strong_count() > 0);
        self.states.push(Rc::downgrade(state));
    }

    fn live(&mut self) -> Vec<Rc<RefCell<State>>> {
        self.states.retain(|weak| weak.strong_count() > 0);
        self.states.iter().filter_map(Weak::upgrade).collect()
    }

    /// The reset's first step on this thread: new I/O waits (the bdev layer queues what
    /// the channel refuses for resources), and the poller stops taking completions: what
    /// is in flight stays until the controller is disabled and can no longer touch its
    /// buffers, and is then submitted again.
    pub(crate) fn begin_reset(&mut self) {
        for state in self.live() {
            state.borrow_mut().resetting = true;
        }
    }

    /// The reset's last step: the queue pair created again (when the controller came
    /// back) and what was in flight submitted on it again, as SPDK's bdev_nvme retries
    /// I/O aborted by SQ deletion; the host never sees it, unless it has been through
    /// `MAX_RESUBMISSIONS` resets already. After a failed reset that I/O fails with a
    /// status the host may retry on another path.
    pub(crate) fn end_reset(&mut self, reenabled: bool) {
        for state in self.live() {
            let again = state.borrow_mut().end_reset(reenabled);
            let mut resubmitted = 0;
            for mut io in again {
                if io.resubmissions >= MAX_RESUBMISSIONS {
                    io.complete(IoStatus::ABORTED_SQ_DELETION);
                    continue;
                }
                io.resubmissions += 1;
                resubmitted += usize::from(reenabled);
                let outcome = state.borrow_mut().start(io);
                match outcome {
                    super::Start::Placed => {}
                    super::Start::Done(io, status) => io.complete(status),
                    super::Start::NoResources(io) => io.complete(IoStatus::ABORTED_SQ_DELETION),
                }
            }
            state.borrow().ctrlr.count_resubmitted(resubmitted);
        }
    }
}

/// What a deadline check asks of the poller once it has let go of the channel.
#[derive(Default)]
pub(super) struct Overdue {
    pub(super) aborts: Vec<u16>,
    pub(super) reset: bool,
    pub(super) reported: usize,
}

impl State {
    /// Takes back every slot and returns the I/O that was in flight.
    // Boxed as the layer hands I/O over and takes it back: unboxing would move each one.
    #[allow(clippy::vec_box)]
    fn take_in_flight(&mut self) -> Vec<Box<BdevIo>> {
        let ios: Vec<Box<BdevIo>> = self.parents.iter_mut().filter_map(Option::take).map(|parent| parent.io).collect();
        let usable = self.slots.len().saturating_sub(1);
        self.slots.iter_mut().for_each(|slot| *slot = Slot::default());
        self.free_cids = (0..usable as u16).rev().collect();
        self.free_parents = (0..usable as u16).rev().collect();
        self.free_bounces = (0..self.bounces.len() as u8).rev().collect();
        ios
    }

    #[allow(clippy::vec_box)]
    fn end_reset(&mut self, reenabled: bool) -> Vec<Box<BdevIo>> {
        // A channel created after the reset's first message passed this thread has a
        // queue made either on the reset controller, which stands, or before the
        // disable, which deleted it: that one is made again like the others.
        let deleted = self.queue.as_ref().is_some_and(|queue| !self.ctrlr.queue_is_current(queue));
        if !self.resetting && !deleted {
            return Vec::new();
        }
        let ios = self.take_in_flight();
        if let Some(mut queue) = self.queue.take() {
            let qid = queue.qid();
            let kept = reenabled
                && !self.closed
                && match self.ctrlr.recreate_io_queue(&mut queue) {
                    Ok(()) => true,
                    Err(err) => {
                        peerless_core::log_error!(
                            "nvme {}: I/O queue {qid} after the reset: {err}; this thread's I/O fails",
                            self.ctrlr.pci().bdf()
                        );
                        false
                    }
                };
            if kept {
                self.queue = Some(queue);
            } else {
                self.ctrlr.release_qid(qid);
            }
        }
        self.resetting = false;
        ios
    }

    /// Fails everything in flight on a device that has gone: nothing will complete.
    pub(super) fn fail_in_flight(&mut self, finished: &mut Vec<(Box<BdevIo>, IoStatus)>) {
        finished.extend(self.take_in_flight().into_iter().map(|io| (io, IoStatus::ABORTED_SQ_DELETION)));
    }

    /// Looks at the age of every outstanding command, when a check is due.
    pub(super) fn check_deadlines(&mut self, now: std::time::Instant) -> Overdue {
        let mut overdue = Overdue::default();
        if !self.clock.tick(now) {
            return overdue;
        }
        let timeouts = self.ctrlr.timeouts().get();
        let clock = &self.clock;
        for (cid, slot) in self.slots.iter_mut().enumerate() {
            if !slot.active {
                continue;
            }
            match judge(clock, slot.stamp, slot.aborted_at, &timeouts) {
                Verdict::Wait => {}
                Verdict::Report => {
                    overdue.reported += 1;
                    // Reported once: the next report would come a deadline later.
                    slot.stamp = clock.stamp();
                }
                Verdict::Abort => {
                    slot.aborted_at = Some(clock.stamp());
                    overdue.aborts.push(cid as u16);
                }
                Verdict::Reset => overdue.reset = true,
            }
        }
        overdue
    }
}
