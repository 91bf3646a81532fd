//! Lightweight threads: a named context with its own message queue, pollers and io
//! channels, run a timeslice at a time by the reactor of its core. Everything a thread
//! owns is touched only by that thread; others reach it by
//! message.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::BorrowedFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::app::{AppHandle, AppShared};
use super::poller::{self, run_pollers, PollFn, PollStatus, Poller, PollerId, PollerStat, PollerState, PollerTable};
use super::run_loop::ReactorShared;

/// A message: work to run on the receiving thread. A closure that captures nothing is a
/// zero-sized box and costs no allocation.
pub type Msg = Box<dyn FnOnce(&mut ThreadCtx) + Send>;

/// SPDK's ring holds 65536 messages per thread; so does ours by default.
pub const DEFAULT_MSG_QUEUE_CAPACITY: usize = 65536;

/// Messages run per thread per reactor iteration, so one chatty sender cannot starve
/// the thread's pollers.
pub const MSG_BATCH_SIZE: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadId(pub u64);

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a message was not queued; the message comes back so nothing is lost.
pub enum SendError {
    /// The queue is full: back-pressure. Retry later (`ThreadCtx::send_to` does).
    Full(Msg),
    /// The thread has exited; the message can never run there.
    Exited(Msg),
}

impl SendError {
    pub fn into_msg(self) -> Msg {
        match self {
            SendError::Full(msg) | SendError::Exited(msg) => msg,
        }
    }
}

impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("SendError::Full"),
            SendError::Exited(_) => f.write_str("SendError::Exited"),
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("the thread's message queue is full"),
            SendError::Exited(_) => f.write_str("the thread has exited"),
        }
    }
}

impl std::error::Error for SendError {}

pub(crate) struct ThreadShared {
    pub id: ThreadId,
    pub name: String,
    pub core: u32,
    pub queue: ArrayQueue<Msg>,
    pub reactor: Arc<ReactorShared>,
    pub exited: AtomicBool,
}

/// A sendable reference to a lightweight thread.
#[derive(Clone)]
pub struct ThreadHandle(pub(crate) Arc<ThreadShared>);

impl ThreadHandle {
    pub fn id(&self) -> ThreadId {
        self.0.id
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn core(&self) -> u32 {
        self.0.core
    }

    pub fn has_exited(&self) -> bool {
        self.0.exited.load(Ordering::Acquire)
    }

    /// Queues a message; on a full queue or an exited thread the message comes back.
    pub fn try_send(&self, msg: Msg) -> Result<(), SendError> {
        if self.has_exited() {
            return Err(SendError::Exited(msg));
        }
        self.0.queue.push(msg).map_err(SendError::Full)?;
        self.0.reactor.waker.wake();
        Ok(())
    }

    pub fn send(&self, work: impl FnOnce(&mut ThreadCtx) + Send + 'static) -> Result<(), SendError> {
        self.try_send(Box::new(work))
    }

    /// Sends from an OS thread that is not a reactor (a test, the RPC listener): waits
    /// out back-pressure by yielding, since such a thread may block.
    pub fn send_blocking(&self, work: impl FnOnce(&mut ThreadCtx) + Send + 'static) -> Result<(), SendError> {
        let mut msg: Msg = Box::new(work);
        loop {
            match self.try_send(msg) {
                Err(SendError::Full(back)) => {
                    msg = back;
                    std::thread::yield_now();
                }
                other => return other,
            }
        }
    }

    pub fn pause_poller(&self, id: PollerId) -> Result<(), SendError> {
        self.send(move |ctx| {
            ctx.pause_poller(id);
        })
    }

    pub fn resume_poller(&self, id: PollerId) -> Result<(), SendError> {
        self.send(move |ctx| {
            ctx.resume_poller(id);
        })
    }

    pub fn unregister_poller(&self, id: PollerId) -> Result<(), SendError> {
        self.send(move |ctx| {
            ctx.unregister_poller(id);
        })
    }
}

impl PartialEq for ThreadHandle {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ThreadHandle {}

impl fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thread({} '{}' on core {})", self.0.id, self.0.name, self.0.core)
    }
}

/// Busy and idle time of a thread, accounted per reactor iteration from what its pollers
/// and messages reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub messages: u64,
}

/// The state of one lightweight thread, handed to every message and poller it runs.
pub struct ThreadCtx {
    shared: Arc<ThreadShared>,
    app: Arc<AppShared>,
    /// Shared with this thread's `Poller` handles, whose drop unregisters them.
    pub(crate) pollers: PollerTable,
    /// Weak references to this thread's io channels, by device id (see `channel.rs`).
    pub(crate) channels: HashMap<u64, Weak<dyn Any>>,
    /// Messages to other threads that met a full queue; retried every iteration.
    outbox: VecDeque<(ThreadHandle, Msg)>,
    stats: ThreadStats,
    exiting: bool,
    now: Instant,
    /// `now` as nanoseconds since the process's clock epoch, computed once per timeslice
    /// so per-I/O timing is integer arithmetic.
    now_ns: u64,
}

impl ThreadCtx {
    pub(crate) fn new(shared: Arc<ThreadShared>, app: Arc<AppShared>) -> Self {
        ThreadCtx {
            shared,
            app,
            pollers: Rc::default(),
            channels: HashMap::new(),
            outbox: VecDeque::new(),
            stats: ThreadStats::default(),
            exiting: false,
            now: Instant::now(),
            now_ns: monotonic_ns(Instant::now()),
        }
    }

    pub fn id(&self) -> ThreadId {
        self.shared.id
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn core(&self) -> u32 {
        self.shared.core
    }

    pub fn handle(&self) -> ThreadHandle {
        ThreadHandle(self.shared.clone())
    }

    pub fn app(&self) -> AppHandle {
        AppHandle(self.app.clone())
    }

    pub(crate) fn app_shared(&self) -> &Arc<AppShared> {
        &self.app
    }

    /// The time at the start of this thread's current timeslice.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The timeslice's start in nanoseconds on a process-wide monotonic clock.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn stats(&self) -> ThreadStats {
        self.stats
    }

    pub fn is_exiting(&self) -> bool {
        self.exiting
    }

    /// Sends a message to another thread (or this one). A full queue parks the message
    /// in this thread's outbox, retried in order every iteration, so back-pressure slows
    /// the sender instead of losing work. Fails only when the target has exited.
    pub fn send_to(
        &mut self,
        target: &ThreadHandle,
        work: impl FnOnce(&mut ThreadCtx) + Send + 'static,
    ) -> Result<(), SendError> {
        let msg: Msg = Box::new(work);
        if !self.outbox.is_empty() {
            // Preserve per-sender order behind messages already waiting.
            if target.has_exited() {
                return Err(SendError::Exited(msg));
            }
            self.outbox.push_back((target.clone(), msg));
            return Ok(());
        }
        match target.try_send(msg) {
            Err(SendError::Full(msg)) => {
                self.outbox.push_back((target.clone(), msg));
                Ok(())
            }
            other => other,
        }
    }

    /// Registers a poller owned by the returned handle: it runs every `period_us`
    /// microseconds (every iteration for 0) until the handle is dropped, or until it
    /// returns `PollStatus::Done`.
    pub fn poller(
        &mut self,
        name: &str,
        period_us: u64,
        poll: impl FnMut(&mut ThreadCtx) -> PollStatus + 'static,
    ) -> Poller {
        let poll_fn: PollFn = Box::new(poll);
        // A timed poller's first period starts now, not at the timeslice's start.
        let now = if period_us == 0 { self.now } else { Instant::now() };
        let id = self.pollers.borrow_mut().register(name, Duration::from_micros(period_us), poll_fn, now);
        Poller::new(&self.pollers, id)
    }

    /// An active poller named by id, for code that keeps ids; `poller` returns an owned
    /// handle instead, which cannot be forgotten.
    pub fn register_poller(
        &mut self,
        name: &str,
        poll: impl FnMut(&mut ThreadCtx) -> PollStatus + 'static,
    ) -> PollerId {
        self.poller(name, 0, poll).detach()
    }

    /// A poller that runs every `period_us` microseconds (0 makes it active), named by id.
    pub fn register_timed_poller(
        &mut self,
        name: &str,
        period_us: u64,
        poll: impl FnMut(&mut ThreadCtx) -> PollStatus + 'static,
    ) -> PollerId {
        self.poller(name, period_us, poll).detach()
    }

    /// Registers a poller driven by `fd`, owned by the returned handle: it runs every
    /// `period_us` microseconds while the reactor polls, and on the reactor's first pass
    /// after it wakes with the fd readable. A reactor that sleeps (interrupt and adaptive
    /// mode) watches the fd instead of arming a timer for this poller, so an idle one
    /// sleeps until the fd has something; in poll mode this is a plain timed poller. For
    /// fds that rarely have work (a listening socket, a signalfd), where a syscall on
    /// every pass would cost more than the work. The poller must drain the fd (or leave
    /// it readable to be woken again); the fd must stay open while it is registered.
    pub fn fd_poller(
        &mut self,
        name: &str,
        fd: BorrowedFd<'_>,
        period_us: u64,
        poll: impl FnMut(&mut ThreadCtx) -> PollStatus + 'static,
    ) -> std::io::Result<Poller> {
        debug_assert!(period_us > 0, "fd poller '{name}' needs a period for when the reactor polls");
        let poller = self.poller(name, period_us.max(1), poll);
        let watch = self.shared.reactor.watch_poller_fd(fd, self.shared.id, poller.id().slot)?;
        if let Some(watch) = watch {
            let attached = self.pollers.borrow_mut().attach_fd(poller.id(), watch);
            debug_assert!(attached, "fd poller '{name}' vanished while being registered");
        }
        Ok(poller)
    }

    /// The fd of the poller in `slot` is readable: it runs on the next pass.
    pub(crate) fn fd_ready(&mut self, slot: u32, now: Instant) {
        self.pollers.borrow_mut().make_due(slot, now);
    }

    pub fn unregister_poller(&mut self, id: PollerId) -> bool {
        poller::unregister(&self.pollers, id)
    }

    pub fn pause_poller(&mut self, id: PollerId) -> bool {
        self.pollers.borrow_mut().pause(id)
    }

    pub fn resume_poller(&mut self, id: PollerId) -> bool {
        let now = Instant::now();
        self.pollers.borrow_mut().resume(id, now)
    }

    pub fn poller_state(&self, id: PollerId) -> Option<PollerState> {
        self.pollers.borrow().state(id)
    }

    pub fn poller_stats(&self) -> Vec<PollerStat> {
        self.pollers.borrow().stats()
    }

    /// Watches a file descriptor: in interrupt mode the reactor wakes when it is
    /// readable, and then runs this thread's pollers, which must drain it. In poll mode
    /// the pollers run anyway and this does nothing. The fd must stay open until
    /// `unwatch_fd`.
    pub fn watch_fd(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.shared.reactor.watch_fd(fd)
    }

    /// Whether this thread's reactor sleeps when idle, so that a readiness source must
    /// give it an fd to wake on (`watch_fd`); in poll mode it never sleeps.
    pub fn reactor_sleeps(&self) -> bool {
        self.shared.reactor.sleeps()
    }

    pub fn unwatch_fd(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.shared.reactor.unwatch_fd(fd)
    }

    /// Asks this thread to exit: its pollers are dropped (releasing what they hold),
    /// queued messages still run, then the thread is gone.
    pub fn exit(&mut self) {
        self.exiting = true;
    }

    /// Sets the clock this thread reads, outside a timeslice (a stepped app's `run_on`).
    pub(crate) fn set_now(&mut self, now: Instant) {
        self.now = now;
        self.now_ns = monotonic_ns(now);
    }

    /// Runs one timeslice; returns whether any work was done.
    pub(crate) fn poll(&mut self, now: Instant) -> bool {
        self.set_now(now);
        let mut busy = self.flush_outbox();
        busy |= self.run_messages(MSG_BATCH_SIZE);
        if self.exiting {
            poller::clear(&self.pollers);
        } else {
            busy |= run_pollers(self, now);
        }
        busy
    }

    fn run_messages(&mut self, budget: usize) -> bool {
        let mut ran = 0;
        while ran < budget {
            let Some(msg) = self.shared.queue.pop() else {
                break;
            };
            msg(self);
            ran += 1;
        }
        self.stats.messages += ran as u64;
        ran > 0
    }

    fn flush_outbox(&mut self) -> bool {
        let mut moved = false;
        while let Some((target, msg)) = self.outbox.pop_front() {
            match target.try_send(msg) {
                Ok(()) => moved = true,
                Err(SendError::Full(msg)) => {
                    self.outbox.push_front((target, msg));
                    break;
                }
                // The target exited while we waited; the message drops with its captures.
                Err(SendError::Exited(_)) => moved = true,
            }
        }
        moved
    }

    /// Whether this thread has work it could do right now (for interrupt mode).
    pub(crate) fn has_pending_work(&self) -> bool {
        !self.shared.queue.is_empty() || !self.outbox.is_empty()
    }

    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.pollers.borrow_mut().next_deadline()
    }

    /// After `exit()`, the thread is finished once nothing is left to run. It then marks
    /// itself exited and runs anything that raced in before senders saw the mark.
    pub(crate) fn try_finish(&mut self) -> bool {
        if !self.exiting || self.has_pending_work() || !self.pollers.borrow().is_empty() {
            return false;
        }
        self.shared.exited.store(true, Ordering::Release);
        std::sync::atomic::fence(Ordering::SeqCst);
        while self.run_messages(MSG_BATCH_SIZE) {}
        poller::clear(&self.pollers);
        self.channels.clear();
        self.app.thread_exited(self.shared.id);
        true
    }

    pub(crate) fn account(&mut self, busy: bool, elapsed_ns: u64) {
        if busy {
            self.stats.busy_ns += elapsed_ns;
        } else {
            self.stats.idle_ns += elapsed_ns;
        }
    }
}

/// Nanoseconds from a fixed process-wide epoch to `at`.
pub fn monotonic_ns(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

/// The instant `ns` nanoseconds after the epoch, so that `monotonic_ns` gives `ns` back:
/// how a stepped app runs its threads on a clock of its caller's.
pub(crate) fn instant_at(ns: u64) -> Instant {
    epoch() + Duration::from_nanos(ns)
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}
