//! Pollers of one lightweight thread: active ones run every iteration, timed ones when
//! their period has elapsed, paused ones not at all. Only the owning thread touches this
//! table; other threads change a poller by sending that thread a message.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::thread::ThreadCtx;

/// What a poller reports after a run; drives busy/idle accounting and, in interrupt
/// mode, whether the reactor may go to sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    Busy,
    Idle,
}

impl PollStatus {
    pub fn from_work(did_work: bool) -> Self {
        if did_work {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

pub type PollFn = Box<dyn FnMut(&mut ThreadCtx) -> PollStatus>;

/// Names one poller on one thread. A stale id (its poller unregistered, the slot reused)
/// is recognised by its generation and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PollerId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollerState {
    Running,
    Paused,
}

/// A snapshot of one poller, in the shape `thread_get_pollers` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollerStat {
    pub name: String,
    pub id: u64,
    pub state: PollerState,
    pub period_us: u64,
    pub run_count: u64,
    pub busy_count: u64,
}

struct Entry {
    name: String,
    period: Duration,
    state: PollerState,
    /// Taken out while the poller runs, so it can receive `&mut ThreadCtx`.
    poll_fn: Option<PollFn>,
    run_count: u64,
    busy_count: u64,
    /// Bumped on pause and resume so that heap entries from before go stale.
    schedule_epoch: u32,
}

impl Entry {
    fn is_timed(&self) -> bool {
        !self.period.is_zero()
    }
}

struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at: Instant,
    slot: u32,
    generation: u32,
    epoch: u32,
}

#[derive(Default)]
pub(crate) struct Pollers {
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Active pollers in registration order; unregistered ones are swept after a pass.
    active: Vec<u32>,
    timed: BinaryHeap<Reverse<Deadline>>,
    needs_sweep: bool,
}

impl Pollers {
    pub fn register(&mut self, name: &str, period: Duration, poll_fn: PollFn, now: Instant) -> PollerId {
        let entry = Entry {
            name: name.to_string(),
            period,
            state: PollerState::Running,
            poll_fn: Some(poll_fn),
            run_count: 0,
            busy_count: 0,
            schedule_epoch: 0,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot { generation: 0, entry: None });
                u32::try_from(self.slots.len() - 1).expect("poller table exceeds u32 slots")
            }
        };
        let record = &mut self.slots[slot as usize];
        debug_assert!(record.entry.is_none(), "free slot {slot} still holds a poller");
        record.entry = Some(entry);
        let id = PollerId { slot, generation: record.generation };
        if period.is_zero() {
            self.active.push(slot);
        } else {
            self.schedule(id, now + period, 0);
        }
        id
    }

    fn entry_mut(&mut self, id: PollerId) -> Option<&mut Entry> {
        let record = self.slots.get_mut(id.slot as usize)?;
        if record.generation != id.generation {
            return None;
        }
        record.entry.as_mut()
    }

    fn schedule(&mut self, id: PollerId, at: Instant, epoch: u32) {
        self.timed.push(Reverse(Deadline { at, slot: id.slot, generation: id.generation, epoch }));
    }

    /// Returns false when the id names no live poller.
    pub fn unregister(&mut self, id: PollerId) -> bool {
        let Some(record) = self.slots.get_mut(id.slot as usize) else {
            return false;
        };
        if record.generation != id.generation || record.entry.is_none() {
            return false;
        }
        record.entry = None;
        record.generation = record.generation.wrapping_add(1);
        self.free_slots.push(id.slot);
        self.needs_sweep = true;
        true
    }

    pub fn pause(&mut self, id: PollerId) -> bool {
        let Some(entry) = self.entry_mut(id) else {
            return false;
        };
        if entry.state == PollerState::Running {
            entry.state = PollerState::Paused;
            entry.schedule_epoch = entry.schedule_epoch.wrapping_add(1);
        }
        true
    }

    pub fn resume(&mut self, id: PollerId, now: Instant) -> bool {
        let Some(entry) = self.entry_mut(id) else {
            return false;
        };
        if entry.state == PollerState::Paused {
            entry.state = PollerState::Running;
            entry.schedule_epoch = entry.schedule_epoch.wrapping_add(1);
            if entry.is_timed() {
                let (at, epoch) = (now + entry.period, entry.schedule_epoch);
                self.schedule(id, at, epoch);
            }
        }
        true
    }

    pub fn state(&self, id: PollerId) -> Option<PollerState> {
        let record = self.slots.get(id.slot as usize)?;
        (record.generation == id.generation).then_some(())?;
        record.entry.as_ref().map(|entry| entry.state)
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.free_slots.clear();
        self.active.clear();
        self.timed.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|record| record.entry.is_none())
    }

    /// The earliest deadline of a running timed poller; stale heap entries are dropped.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse(top)) = self.timed.peek() {
            if self.deadline_is_live(top) {
                return Some(top.at);
            }
            self.timed.pop();
        }
        None
    }

    fn deadline_is_live(&self, deadline: &Deadline) -> bool {
        let Some(record) = self.slots.get(deadline.slot as usize) else {
            return false;
        };
        match &record.entry {
            Some(entry) => {
                record.generation == deadline.generation
                    && entry.state == PollerState::Running
                    && entry.schedule_epoch == deadline.epoch
            }
            None => false,
        }
    }

    pub fn stats(&self) -> Vec<PollerStat> {
        let mut stats = Vec::new();
        for (slot, record) in self.slots.iter().enumerate() {
            if let Some(entry) = &record.entry {
                stats.push(PollerStat {
                    name: entry.name.clone(),
                    id: (u64::from(record.generation) << 32) | slot as u64,
                    state: entry.state,
                    period_us: entry.period.as_micros() as u64,
                    run_count: entry.run_count,
                    busy_count: entry.busy_count,
                });
            }
        }
        stats
    }

    fn take_fn(&mut self, id: PollerId) -> Option<PollFn> {
        let entry = self.entry_mut(id)?;
        if entry.state != PollerState::Running {
            return None;
        }
        entry.poll_fn.take()
    }

    /// Puts a poller's function back after it ran, unless it unregistered itself.
    fn put_back(&mut self, id: PollerId, poll_fn: PollFn, status: PollStatus) -> Option<&mut Entry> {
        let entry = self.entry_mut(id)?;
        debug_assert!(entry.poll_fn.is_none(), "poller ran while its function was in place");
        entry.poll_fn = Some(poll_fn);
        entry.run_count += 1;
        if status == PollStatus::Busy {
            entry.busy_count += 1;
        }
        Some(entry)
    }

    fn sweep(&mut self) {
        if self.needs_sweep {
            let slots = &self.slots;
            self.active.retain(|slot| slots[*slot as usize].entry.is_some());
            self.needs_sweep = false;
        }
    }
}

/// Runs every active poller once and every timed poller that is due. Returns whether any
/// reported Busy.
pub(crate) fn run_pollers(ctx: &mut ThreadCtx, now: Instant) -> bool {
    let mut busy = false;
    // Pollers registered during this pass run from the next one on.
    let active_count = ctx.pollers.active.len();
    for index in 0..active_count {
        let Some(&slot) = ctx.pollers.active.get(index) else {
            break;
        };
        let generation = ctx.pollers.slots[slot as usize].generation;
        let id = PollerId { slot, generation };
        let Some(mut poll_fn) = ctx.pollers.take_fn(id) else {
            continue;
        };
        let status = poll_fn(ctx);
        busy |= status == PollStatus::Busy;
        ctx.pollers.put_back(id, poll_fn, status);
    }
    ctx.pollers.sweep();

    // Bound the timed pass so a poller whose period is shorter than its own run time
    // cannot keep this thread from returning to its messages.
    let mut due_budget = ctx.pollers.timed.len();
    while due_budget > 0 {
        due_budget -= 1;
        let Some(Reverse(top)) = ctx.pollers.timed.peek() else {
            break;
        };
        if top.at > now {
            break;
        }
        let Some(Reverse(deadline)) = ctx.pollers.timed.pop() else {
            break;
        };
        if !ctx.pollers.deadline_is_live(&deadline) {
            continue;
        }
        let id = PollerId { slot: deadline.slot, generation: deadline.generation };
        let Some(mut poll_fn) = ctx.pollers.take_fn(id) else {
            continue;
        };
        let status = poll_fn(ctx);
        busy |= status == PollStatus::Busy;
        if let Some(entry) = ctx.pollers.put_back(id, poll_fn, status) {
            if entry.state == PollerState::Running && entry.schedule_epoch == deadline.epoch {
                // Keep the cadence, but never burst to catch up after a stall.
                let mut next = deadline.at + entry.period;
                if next <= now {
                    next = now + entry.period;
                }
                let epoch = entry.schedule_epoch;
                ctx.pollers.schedule(id, next, epoch);
            }
        }
    }
    busy
}
