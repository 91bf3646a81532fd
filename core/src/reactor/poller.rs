//! Pollers of one lightweight thread: active ones run every iteration, timed ones when
//! their period has elapsed, paused ones not at all. Only the owning thread touches this
//! table; other threads change a poller by sending that thread a message.
//!
//! A poller is owned by value: `ThreadCtx::poller` returns a `Poller` whose drop
//! unregisters it, as spdk-rs's `Poller` does, so whoever holds the state a poller serves
//! also holds the poller and both go together. A poller that should outlive its handle
//! (a one-off wait, a drain after its channel closed) is `detach`ed and ends itself by
//! returning `PollStatus::Done`.
//!
//! A poller may be driven by a file descriptor (`ThreadCtx::fd_poller`): while the
//! reactor polls it is a timed poller; when the reactor sleeps, its fd is watched in
//! epoll instead of a timer being armed for it, and the fd becoming readable makes it due
//! at once. So a listener or a signalfd costs a syscall every few milliseconds while the
//! reactor spins, not one per pass, and an idle reactor sleeps until the fd has work.
//!
//! The table sits in an `Rc<RefCell<..>>` shared by the thread and its `Poller`s. It is
//! borrowed only inside this module, never while a poller runs, and nothing a poller
//! owns is dropped while it is borrowed: a closure dropped with its entry may hold other
//! `Poller`s, whose own drop borrows the table again.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use super::run_loop::FdWatch;
use super::thread::ThreadCtx;

/// What a poller reports after a run; drives busy/idle accounting and, in interrupt
/// mode, whether the reactor may go to sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    Busy,
    Idle,
    /// The poller has finished: it is unregistered after this run (counted as idle) and
    /// its closure dropped. A `Poller` handle still held reports no state from then on.
    Done,
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
    /// The fd that wakes this poller when the reactor sleeps; dropping it stops watching.
    fd_watch: Option<FdWatch>,
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

/// The poller table of one thread, shared with that thread's `Poller` handles.
pub(crate) type PollerTable = Rc<RefCell<Pollers>>;

#[derive(Default)]
pub(crate) struct Pollers {
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Slots of unregistered active pollers, still named in `active`: freed by the
    /// sweep, so a new active poller never takes a slot `active` already holds (it
    /// would run twice per pass).
    unswept: Vec<u32>,
    /// Active pollers in registration order; unregistered ones are swept after a pass.
    active: Vec<u32>,
    timed: BinaryHeap<Reverse<Deadline>>,
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
            fd_watch: None,
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

    /// Removes a poller; None when the id names no live poller. The caller drops the entry
    /// once the table is no longer borrowed (see the module comment).
    #[must_use = "drop the removed entry outside the table's borrow"]
    fn unregister(&mut self, id: PollerId) -> Option<Entry> {
        let record = self.slots.get_mut(id.slot as usize)?;
        if record.generation != id.generation {
            return None;
        }
        let entry = record.entry.take()?;
        // A new generation makes every id and heap entry of the old poller stale.
        record.generation = record.generation.wrapping_add(1);
        if entry.is_timed() {
            self.free_slots.push(id.slot);
        } else {
            self.unswept.push(id.slot);
        }
        Some(entry)
    }

    /// Lets `fd_watch` wake the reactor for this poller (an fd poller in a mode where
    /// the reactor sleeps). False when the id names no live poller.
    pub fn attach_fd(&mut self, id: PollerId, fd_watch: FdWatch) -> bool {
        let Some(entry) = self.entry_mut(id) else {
            return false;
        };
        debug_assert!(entry.fd_watch.is_none(), "poller '{}' already has an fd", entry.name);
        entry.fd_watch = Some(fd_watch);
        true
    }

    /// The fd of the poller in `slot` was found readable: run it on the next pass, ahead
    /// of its period. Nothing to do for an active poller (it runs every pass), a paused
    /// one, or a slot that no longer holds an fd poller.
    pub fn make_due(&mut self, slot: u32, now: Instant) {
        let Some(record) = self.slots.get_mut(slot as usize) else { return };
        let generation = record.generation;
        let Some(entry) = record.entry.as_mut() else { return };
        if entry.fd_watch.is_none() || entry.state != PollerState::Running || !entry.is_timed() {
            return;
        }
        // A new epoch makes the pending deadline stale: the poller runs now, then keeps
        // its period from there.
        entry.schedule_epoch = entry.schedule_epoch.wrapping_add(1);
        let epoch = entry.schedule_epoch;
        self.schedule(PollerId { slot, generation }, now, epoch);
    }

    pub fn pause(&mut self, id: PollerId) -> bool {
        let Some(entry) = self.entry_mut(id) else {
            return false;
        };
        if entry.state == PollerState::Running {
            entry.state = PollerState::Paused;
            entry.schedule_epoch = entry.schedule_epoch.wrapping_add(1);
            // A readable fd would keep waking the reactor for a poller that will not
            // drain it.
            if let Some(watch) = &entry.fd_watch {
                watch.suspend();
            }
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
            if let Some(watch) = &entry.fd_watch {
                watch.restore();
            }
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

    /// Removes every poller, for the caller to drop outside the borrow. Slots and their
    /// generations stay, so a `Poller` dropped later cannot name a poller registered
    /// after this.
    #[must_use = "drop the removed entries outside the table's borrow"]
    fn clear(&mut self) -> Vec<Entry> {
        let mut removed = Vec::new();
        for slot in 0..self.slots.len() as u32 {
            let generation = self.slots[slot as usize].generation;
            removed.extend(self.unregister(PollerId { slot, generation }));
        }
        self.active.clear();
        self.timed.clear();
        self.free_slots.append(&mut self.unswept);
        debug_assert!(self.is_empty());
        removed
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|record| record.entry.is_none())
    }

    /// The earliest deadline a sleeping reactor must wake for: that of a running timed
    /// poller with no fd to wake it. Stale heap entries on top are dropped.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse(top)) = self.timed.peek() {
            if self.deadline_is_live(top) {
                break;
            }
            self.timed.pop();
        }
        // Fd pollers are few; the scan runs only when the reactor is about to sleep.
        self.timed
            .iter()
            .filter(|Reverse(deadline)| self.deadline_is_live(deadline) && !self.is_fd_driven(deadline.slot))
            .map(|Reverse(deadline)| deadline.at)
            .min()
    }

    fn is_fd_driven(&self, slot: u32) -> bool {
        let entry = self.slots.get(slot as usize).and_then(|record| record.entry.as_ref());
        entry.is_some_and(|entry| entry.fd_watch.is_some())
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

    /// Counts a run and puts the poller's function back. A poller that finished, or was
    /// unregistered while it ran, comes back out for the caller to drop.
    #[must_use = "drop a finished poller outside the table's borrow"]
    fn put_back(&mut self, id: PollerId, poll_fn: PollFn, status: PollStatus) -> Option<(PollFn, Option<Entry>)> {
        let Some(entry) = self.entry_mut(id) else {
            return Some((poll_fn, None));
        };
        debug_assert!(entry.poll_fn.is_none(), "poller ran while its function was in place");
        entry.run_count += 1;
        if status == PollStatus::Busy {
            entry.busy_count += 1;
        }
        if status == PollStatus::Done {
            return Some((poll_fn, self.unregister(id)));
        }
        entry.poll_fn = Some(poll_fn);
        None
    }

    /// Schedules a timed poller's next run after the one due at `deadline`, unless it
    /// was paused, resumed (which scheduled it afresh) or removed meanwhile.
    fn reschedule(&mut self, id: PollerId, deadline: &Deadline, now: Instant) {
        let Some(entry) = self.entry_mut(id) else { return };
        if entry.state != PollerState::Running || entry.schedule_epoch != deadline.epoch {
            return;
        }
        debug_assert!(entry.is_timed(), "an active poller has no deadline");
        // Keep the cadence, but never burst to catch up after a stall.
        let mut next = deadline.at + entry.period;
        if next <= now {
            next = now + entry.period;
        }
        let epoch = entry.schedule_epoch;
        self.schedule(id, next, epoch);
    }

    fn sweep(&mut self) {
        if !self.unswept.is_empty() {
            let slots = &self.slots;
            self.active.retain(|slot| slots[*slot as usize].entry.is_some());
            self.free_slots.append(&mut self.unswept);
        }
        debug_assert!(self.active.iter().all(|slot| self.slots[*slot as usize].entry.is_some()));
    }
}

/// Unregisters `id`; false when it names no live poller.
pub(crate) fn unregister(table: &PollerTable, id: PollerId) -> bool {
    // The borrow ends with the statement; the entry drops after it.
    let removed = table.borrow_mut().unregister(id);
    removed.is_some()
}

/// Unregisters every poller of a thread (at its exit).
pub(crate) fn clear(table: &PollerTable) {
    let removed = table.borrow_mut().clear();
    drop(removed);
}

/// A poller owned by value: dropping it unregisters it, on the thread it was registered
/// on (it is `!Send`, so it cannot be dropped anywhere else). From `ThreadCtx::poller`.
#[must_use = "dropping a Poller unregisters it at once; `detach` it to keep it running"]
pub struct Poller {
    table: Weak<RefCell<Pollers>>,
    id: PollerId,
    detached: bool,
}

impl Poller {
    pub(crate) fn new(table: &PollerTable, id: PollerId) -> Poller {
        Poller { table: Rc::downgrade(table), id, detached: false }
    }

    pub fn id(&self) -> PollerId {
        self.id
    }

    /// Running or Paused while registered; None once it finished (returned
    /// `PollStatus::Done`) or its thread exited.
    pub fn state(&self) -> Option<PollerState> {
        self.table.upgrade()?.borrow().state(self.id)
    }

    /// Stops running the poller until `resume`; false if it is no longer registered.
    pub fn pause(&self) -> bool {
        self.table.upgrade().is_some_and(|table| table.borrow_mut().pause(self.id))
    }

    /// Runs the poller again; a timed one next runs a full period from now. False if it
    /// is no longer registered.
    pub fn resume(&self) -> bool {
        let now = Instant::now();
        self.table.upgrade().is_some_and(|table| table.borrow_mut().resume(self.id, now))
    }

    /// Gives up the handle and leaves the poller running, until it returns
    /// `PollStatus::Done` or its thread exits: for work that must outlive whoever
    /// started it (an RPC waiting for a condition, completions still in flight after a
    /// channel closed).
    pub fn detach(mut self) -> PollerId {
        self.detached = true;
        self.id
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(table) = self.table.upgrade() {
            unregister(&table, self.id);
        }
    }
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller").field("id", &self.id).field("state", &self.state()).finish()
    }
}

/// Runs one poller, if it is still live and running; returns its status, or None when it
/// did not run.
fn run_one(ctx: &mut ThreadCtx, table: &PollerTable, id: PollerId) -> Option<PollStatus> {
    let mut poll_fn = table.borrow_mut().take_fn(id)?;
    let status = poll_fn(ctx);
    // The borrow ends with the statement; a finished poller drops after it.
    let finished = table.borrow_mut().put_back(id, poll_fn, status);
    drop(finished);
    Some(status)
}

/// Runs every active poller once and every timed poller that is due. Returns whether any
/// reported Busy.
pub(crate) fn run_pollers(ctx: &mut ThreadCtx, now: Instant) -> bool {
    let table = ctx.pollers.clone();
    let mut busy = false;
    // Pollers registered during this pass run from the next one on.
    let active_count = table.borrow().active.len();
    for index in 0..active_count {
        let id = {
            let pollers = table.borrow();
            let Some(&slot) = pollers.active.get(index) else {
                break;
            };
            PollerId { slot, generation: pollers.slots[slot as usize].generation }
        };
        busy |= run_one(ctx, &table, id) == Some(PollStatus::Busy);
    }
    table.borrow_mut().sweep();

    // Bound the timed pass so a poller whose period is shorter than its own run time
    // cannot keep this thread from returning to its messages.
    let mut due_budget = table.borrow().timed.len();
    while due_budget > 0 {
        due_budget -= 1;
        let deadline = {
            let mut pollers = table.borrow_mut();
            match pollers.timed.peek() {
                Some(Reverse(top)) if top.at <= now => {}
                _ => break,
            }
            let Some(Reverse(deadline)) = pollers.timed.pop() else {
                break;
            };
            if !pollers.deadline_is_live(&deadline) {
                continue;
            }
            deadline
        };
        let id = PollerId { slot: deadline.slot, generation: deadline.generation };
        let status = run_one(ctx, &table, id);
        busy |= status == Some(PollStatus::Busy);
        if status.is_some() {
            table.borrow_mut().reschedule(id, &deadline, now);
        }
    }
    busy
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::tests::{run_on, start, stop, Tracked};
    use super::*;

    thread_local! {
        /// Pollers a test keeps alive on a reactor's OS thread between messages (a
        /// `Poller` is `!Send`, so the test thread cannot hold it).
        static HELD: RefCell<Vec<Poller>> = const { RefCell::new(Vec::new()) };
    }

    fn hold(poller: Poller) {
        HELD.with(|held| held.borrow_mut().push(poller));
    }

    fn release_held() {
        // Taken out first: dropping a poller borrows the thread's table, not `HELD`.
        let pollers = HELD.with(|held| std::mem::take(&mut *held.borrow_mut()));
        drop(pollers);
    }

    fn counter(runs: &Arc<AtomicU64>) -> impl FnMut(&mut ThreadCtx) -> PollStatus + 'static {
        let runs = runs.clone();
        move |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            PollStatus::Idle
        }
    }

    fn names(ctx: &ThreadCtx) -> Vec<String> {
        ctx.poller_stats().into_iter().map(|stat| stat.name).collect()
    }

    #[test]
    fn a_dropped_poller_stops_leaves_the_stats_and_frees_its_closure() {
        let app = start("0x1", false);
        let thread = app.handle().app_thread();
        let (active_runs, timed_runs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let live = Arc::new(AtomicU64::new(0));
        let (active, timed, payload) = (counter(&active_runs), counter(&timed_runs), Tracked::new(&live));
        run_on(&thread, move |ctx| {
            hold(ctx.poller("owned_active", 0, active));
            let mut timed = timed;
            hold(ctx.poller("owned_timed", 1_000, move |ctx| {
                let _keep = &payload;
                timed(ctx)
            }));
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(active_runs.load(Ordering::SeqCst) > 0 && timed_runs.load(Ordering::SeqCst) > 0, "owned pollers run");
        let before = run_on(&thread, |ctx| names(ctx));
        assert!(before.contains(&"owned_active".into()) && before.contains(&"owned_timed".into()), "{before:?}");
        assert_eq!(live.load(Ordering::SeqCst), 1);

        let after = run_on(&thread, |ctx| {
            release_held();
            names(ctx)
        });
        assert!(after.iter().all(|name| !name.starts_with("owned_")), "dropped pollers still listed: {after:?}");
        assert_eq!(live.load(Ordering::SeqCst), 0, "the closure of a dropped poller is dropped with it");
        let stopped_at = (active_runs.load(Ordering::SeqCst), timed_runs.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!((active_runs.load(Ordering::SeqCst), timed_runs.load(Ordering::SeqCst)), stopped_at);
        stop(app);
    }

    #[test]
    fn a_poller_finishes_itself_and_its_stale_handle_harms_no_successor() {
        let app = start("0x1", true);
        let thread = app.handle().app_thread();
        let runs = Arc::new(AtomicU64::new(0));
        let (detached_runs, owned_runs) = (runs.clone(), Arc::new(AtomicU64::new(0)));
        let owned_counter = owned_runs.clone();
        run_on(&thread, move |ctx| {
            // Detached: nobody holds it; it ends itself on its third run.
            ctx.poller("three_runs", 1_000, move |_| {
                if detached_runs.fetch_add(1, Ordering::SeqCst) == 2 {
                    PollStatus::Done
                } else {
                    PollStatus::Busy
                }
            })
            .detach();
            hold(ctx.poller("one_run", 1_000, move |_| {
                owned_counter.fetch_add(1, Ordering::SeqCst);
                PollStatus::Done
            }));
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(runs.load(Ordering::SeqCst), 3, "a finished poller ran again");
        assert_eq!(owned_runs.load(Ordering::SeqCst), 1);
        let successor_runs = Arc::new(AtomicU64::new(0));
        let successor = counter(&successor_runs);
        let (finished_state, listed) = run_on(&thread, move |ctx| {
            let state = HELD.with(|held| held.borrow()[0].state());
            // Reuses a freed slot; dropping the stale handle must not touch it.
            hold(ctx.poller("successor", 1_000, successor));
            let stale = HELD.with(|held| held.borrow_mut().remove(0));
            drop(stale);
            (state, names(ctx))
        });
        assert_eq!(finished_state, None, "a finished poller reports no state");
        assert_eq!(listed, vec!["successor".to_string()], "finished pollers leave the stats");
        let seen = successor_runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert!(successor_runs.load(Ordering::SeqCst) > seen, "dropping a stale handle stopped another poller");
        run_on(&thread, |_| release_held());
        stop(app);
    }

    #[test]
    fn pause_and_resume_through_the_handle() {
        let app = start("0x1", false);
        let thread = app.handle().app_thread();
        let (active_runs, timed_runs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (active, timed) = (counter(&active_runs), counter(&timed_runs));
        run_on(&thread, move |ctx| {
            hold(ctx.poller("active", 0, active));
            hold(ctx.poller("timed", 1_000, timed));
        });
        std::thread::sleep(Duration::from_millis(20));
        let states = run_on(&thread, |_| {
            HELD.with(|held| {
                let held = held.borrow();
                held.iter().map(|poller| (poller.pause(), poller.state())).collect::<Vec<_>>()
            })
        });
        assert_eq!(states, vec![(true, Some(PollerState::Paused)); 2]);
        let paused_at = (active_runs.load(Ordering::SeqCst), timed_runs.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!((active_runs.load(Ordering::SeqCst), timed_runs.load(Ordering::SeqCst)), paused_at, "paused ran");
        let stats = run_on(&thread, |ctx| ctx.poller_stats());
        assert!(stats.iter().all(|stat| stat.state == PollerState::Paused), "{stats:?}");

        run_on(&thread, |_| HELD.with(|held| held.borrow().iter().for_each(|poller| assert!(poller.resume()))));
        std::thread::sleep(Duration::from_millis(20));
        assert!(active_runs.load(Ordering::SeqCst) > paused_at.0, "a resumed active poller did not run");
        assert!(timed_runs.load(Ordering::SeqCst) > paused_at.1, "a resumed timed poller did not run");
        run_on(&thread, |_| release_held());
        stop(app);
    }

    #[test]
    fn a_poller_may_drop_its_own_handle_and_others_from_inside() {
        let app = start("0x1", false);
        let thread = app.handle().app_thread();
        let (runs, victim_runs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (self_counter, victim) = (runs.clone(), counter(&victim_runs));
        run_on(&thread, move |ctx| {
            let victim = ctx.poller("victim", 0, victim);
            let own: Rc<RefCell<Option<Poller>>> = Rc::default();
            let slot = own.clone();
            let mut victim = Some(victim);
            let poller = ctx.poller("drops_itself", 0, move |_| {
                if self_counter.fetch_add(1, Ordering::SeqCst) == 2 {
                    // Both drops reach the table while this poller runs.
                    victim.take();
                    slot.borrow_mut().take();
                }
                PollStatus::Busy
            });
            *own.borrow_mut() = Some(poller);
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let victim_seen = victim_runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(victim_runs.load(Ordering::SeqCst), victim_seen, "a poller dropped from inside another ran");
        assert!(run_on(&thread, |ctx| ctx.poller_stats()).is_empty());
        stop(app);
    }

    #[test]
    fn a_slot_freed_and_retaken_between_passes_runs_its_new_poller_once_per_pass() {
        let app = start("0x1", false);
        let thread = app.handle().app_thread();
        let (reference_runs, new_runs, old_runs) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (reference, old) = (counter(&reference_runs), counter(&old_runs));
        run_on(&thread, move |ctx| {
            hold(ctx.poller("reference", 0, reference));
            hold(ctx.poller("old", 0, old));
        });
        let new = counter(&new_runs);
        // In one message, so no pass runs between the drop and the registration.
        run_on(&thread, move |ctx| {
            let old = HELD.with(|held| held.borrow_mut().pop());
            drop(old);
            hold(ctx.poller("new", 0, new));
        });
        let (reference_seen, new_seen) = (reference_runs.clone(), new_runs.clone());
        let read = move |_: &mut ThreadCtx| (reference_seen.load(Ordering::SeqCst), new_seen.load(Ordering::SeqCst));
        let (reference_before, new_before) = run_on(&thread, read.clone());
        std::thread::sleep(Duration::from_millis(20));
        let (reference_after, new_after) = run_on(&thread, read);
        // Messages run between passes, so both counted exactly the same passes.
        assert!(reference_after > reference_before);
        assert_eq!(new_after - new_before, reference_after - reference_before, "the new poller ran twice a pass");
        run_on(&thread, |_| release_held());
        stop(app);
    }

    #[test]
    fn pollers_that_own_pollers_are_dropped_cleanly_at_exit() {
        let app = start("0x1", true);
        let worker = app.handle().spawn_thread("worker", Some(0)).unwrap();
        let live = Arc::new(AtomicU64::new(0));
        let payload = Tracked::new(&live);
        run_on(&worker, move |ctx| {
            let inner = ctx.poller("inner", 1_000, move |_| {
                let _keep = &payload;
                PollStatus::Idle
            });
            // The outer closure owns the inner handle: clearing the table at exit drops
            // it, which unregisters the inner poller from the same table.
            ctx.poller("outer", 1_000, move |_| {
                let _keep = &inner;
                PollStatus::Idle
            })
            .detach();
        });
        run_on(&worker, |ctx| ctx.exit());
        let deadline = std::time::Instant::now() + super::super::tests::WAIT;
        while !worker.has_exited() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(worker.has_exited());
        assert_eq!(live.load(Ordering::SeqCst), 0, "a poller's closure outlived its thread");
        stop(app);
    }
}
