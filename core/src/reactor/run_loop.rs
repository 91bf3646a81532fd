//! A reactor: one OS thread pinned to one core, running every lightweight thread placed
//! on that core a timeslice at a time. In poll mode it never sleeps. In interrupt mode
//! it runs until every thread reports idle, then sleeps in epoll until a message, a timer
//! deadline or a watched fd wakes it, so an idle target uses no CPU at all. In adaptive
//! mode it keeps spinning for a poll window after the last work and sleeps only when the
//! window passes empty (see `mode.rs` for how the window adapts).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use parking_lot::Mutex;

use super::app::AppShared;
use super::mode::{PollWindow, ReactorMode, WindowEstimator};
use super::thread::{ThreadCtx, ThreadId, ThreadShared};

/// epoll events taken per wake-up; more simply wait for the next call.
const EPOLL_EVENTS_PER_WAKE: usize = 64;
const WAKE_TOKEN: u64 = u64::MAX;
const TIMER_TOKEN: u64 = u64::MAX - 1;
/// Tokens of fd pollers carry this tag (top bits 01; a plain watched fd's token is the fd
/// number, the wake and timer tokens have both top bits set), the thread's id above bit
/// 32 and the poller's slot below.
const FD_POLLER_TAG: u64 = 1 << 62;
const FD_POLLER_THREAD_BITS: u32 = 30;

fn fd_poller_token(thread: ThreadId, slot: u32) -> Option<u64> {
    (thread.0 < 1 << FD_POLLER_THREAD_BITS).then(|| FD_POLLER_TAG | thread.0 << 32 | u64::from(slot))
}

/// The thread id and poller slot an fd poller's token names, if it is one.
fn fd_poller_of(token: u64) -> Option<(u64, u32)> {
    (token >> 62 == FD_POLLER_TAG >> 62).then_some(((token >> 32) & ((1 << FD_POLLER_THREAD_BITS) - 1), token as u32))
}

/// Wakes a sleeping reactor. Senders push first, then look at `sleeping`; the reactor
/// sets `sleeping`, then looks at the queues. With a SeqCst fence on both sides one of
/// them always sees the other (Dekker), so no wake-up is lost and a reactor that is not
/// asleep costs its senders no syscall. The sender that clears the flag is the one that
/// writes the eventfd, so a burst of messages to a sleeping reactor costs one write.
pub(crate) struct Waker {
    eventfd: Option<EventFd>,
    sleeping: AtomicBool,
}

impl Waker {
    pub fn wake(&self) {
        if let Some(eventfd) = &self.eventfd {
            fence(Ordering::SeqCst);
            // Load first: the swap is a locked instruction, wasted on a reactor that is awake.
            if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
                // EAGAIN means the counter is saturated: a wake-up is pending anyway.
                let _ = eventfd.write(1);
            }
        }
    }

    pub fn wake_always(&self) {
        if let Some(eventfd) = &self.eventfd {
            let _ = eventfd.write(1);
        }
    }
}

pub(crate) struct ReactorShared {
    pub core: u32,
    pub waker: Waker,
    mode: ReactorMode,
    poll_window: PollWindow,
    interrupt: Option<InterruptFds>,
    incoming: Mutex<Vec<Arc<ThreadShared>>>,
    has_incoming: AtomicBool,
    /// Written only by the reactor's own OS thread (plain stores), read by stats RPCs.
    busy_ns: AtomicU64,
    idle_poll_ns: AtomicU64,
    sleep_ns: AtomicU64,
    wakeups: AtomicU64,
    window_ns: AtomicU64,
    os_tid: AtomicI32,
    /// Heap allocations made on the reactor's OS thread, or `NOT_COUNTED`.
    allocations: AtomicU64,
}

/// What `allocations` holds while the process's allocator does not count.
const NOT_COUNTED: u64 = u64::MAX;

struct InterruptFds {
    epoll: Epoll,
    timer: TimerFd,
}

/// A point-in-time view of one reactor, for `framework_get_reactors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactorStat {
    pub core: u32,
    pub os_tid: i32,
    /// Passes that found work.
    pub busy_ns: u64,
    /// Everything else: `idle_poll_ns + sleep_ns`.
    pub idle_ns: u64,
    /// Spinning without finding work: all idle time in poll mode, the poll window in
    /// adaptive mode, the last empty pass before each sleep in interrupt mode.
    pub idle_poll_ns: u64,
    /// Asleep in epoll.
    pub sleep_ns: u64,
    /// Sleeps that ended in a wake-up.
    pub wakeups: u64,
    /// Adaptive mode's current poll window (0 in the other modes).
    pub poll_window_ns: u64,
    pub mode: ReactorMode,
    /// Heap allocations made on the reactor's OS thread since it started; None unless
    /// the binary installed `mem::alloc_count::CountingAllocator`.
    pub allocations: Option<u64>,
    /// Whether the reactor sleeps in epoll when idle (interrupt or adaptive mode).
    pub in_interrupt: bool,
}

impl ReactorShared {
    pub fn new(core: u32, mode: ReactorMode, poll_window: PollWindow) -> std::io::Result<Self> {
        let (eventfd, interrupt) = if mode.sleeps() {
            let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
            let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK)?;
            epoll.add(eventfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN))?;
            epoll.add(timer.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TIMER_TOKEN))?;
            (Some(eventfd), Some(InterruptFds { epoll, timer }))
        } else {
            (None, None)
        };
        Ok(ReactorShared {
            core,
            waker: Waker { eventfd, sleeping: AtomicBool::new(false) },
            mode,
            poll_window,
            interrupt,
            incoming: Mutex::new(Vec::new()),
            has_incoming: AtomicBool::new(false),
            busy_ns: AtomicU64::new(0),
            idle_poll_ns: AtomicU64::new(0),
            sleep_ns: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            window_ns: AtomicU64::new(0),
            os_tid: AtomicI32::new(0),
            allocations: AtomicU64::new(NOT_COUNTED),
        })
    }

    pub fn adopt(&self, thread: Arc<ThreadShared>) {
        self.incoming.lock().push(thread);
        self.has_incoming.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Whether the reactor sleeps in epoll when idle (interrupt and adaptive mode).
    pub fn sleeps(&self) -> bool {
        self.mode.sleeps()
    }

    pub fn watch_fd(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        if let Some(interrupt) = &self.interrupt {
            let token = fd.as_raw_fd() as u64;
            interrupt.epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        }
        Ok(())
    }

    pub fn unwatch_fd(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        if let Some(interrupt) = &self.interrupt {
            interrupt.epoll.delete(fd)?;
        }
        Ok(())
    }

    /// Watches `fd` for the fd poller in `slot` of `thread`. The watch holds a duplicate
    /// of the fd, so it lives exactly as long as the poller, whatever the owner of the fd
    /// does meanwhile. None when the reactor never sleeps (poll mode).
    pub fn watch_poller_fd(
        self: &Arc<Self>,
        fd: BorrowedFd<'_>,
        thread: ThreadId,
        slot: u32,
    ) -> std::io::Result<Option<FdWatch>> {
        let Some(interrupt) = &self.interrupt else { return Ok(None) };
        let token = fd_poller_token(thread, slot)
            .ok_or_else(|| std::io::Error::other(format!("thread id {thread} too large to tag an fd poller")))?;
        let fd = fd.try_clone_to_owned()?;
        interrupt.epoll.add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        Ok(Some(FdWatch { fd, token, reactor: self.clone() }))
    }

    pub fn stat(&self) -> ReactorStat {
        let idle_poll_ns = self.idle_poll_ns.load(Ordering::Relaxed);
        let sleep_ns = self.sleep_ns.load(Ordering::Relaxed);
        ReactorStat {
            core: self.core,
            os_tid: self.os_tid.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            idle_ns: idle_poll_ns + sleep_ns,
            idle_poll_ns,
            sleep_ns,
            wakeups: self.wakeups.load(Ordering::Relaxed),
            poll_window_ns: self.window_ns.load(Ordering::Relaxed),
            mode: self.mode,
            allocations: Some(self.allocations.load(Ordering::Relaxed)).filter(|count| *count != NOT_COUNTED),
            in_interrupt: self.mode.sleeps(),
        }
    }

    fn add_time(&self, busy: bool, elapsed_ns: u64) {
        let counter = if busy { &self.busy_ns } else { &self.idle_poll_ns };
        add(counter, elapsed_ns);
    }

    fn add_sleep(&self, slept_ns: u64) {
        add(&self.sleep_ns, slept_ns);
        add(&self.wakeups, 1);
    }
}

/// An fd poller's registration in its reactor's epoll; dropping it unwatches the fd.
pub(crate) struct FdWatch {
    fd: OwnedFd,
    token: u64,
    reactor: Arc<ReactorShared>,
}

impl FdWatch {
    /// Stops watching while the poller is paused.
    pub fn suspend(&self) {
        let _ = self.reactor.unwatch_fd(self.fd.as_fd());
    }

    pub fn restore(&self) {
        if let Some(interrupt) = &self.reactor.interrupt {
            // EEXIST means it was never suspended: watched either way.
            let _ = interrupt.epoll.add(self.fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, self.token));
        }
    }
}

impl Drop for FdWatch {
    fn drop(&mut self) {
        // ENOENT after a suspend is fine: not watched either way.
        let _ = self.reactor.unwatch_fd(self.fd.as_fd());
    }
}

/// Single writer: load + store, not a read-modify-write (shared nothing on the data path).
fn add(counter: &AtomicU64, amount: u64) {
    counter.store(counter.load(Ordering::Relaxed) + amount, Ordering::Relaxed);
}

/// When the reactor goes to sleep: at once in interrupt mode, after the poll window in
/// adaptive mode. Lives on the reactor's own OS thread.
struct Idler {
    window: Option<WindowEstimator>,
    /// The end of the last pass that found work.
    last_work_end: Instant,
    /// Whether a pass has found nothing since then: the next work ends a gap.
    in_gap: bool,
    /// The deadline the timerfd is armed for, so an unchanged one is not armed again.
    armed: Option<Instant>,
}

impl Idler {
    fn new(shared: &ReactorShared, now: Instant) -> Self {
        let window = (shared.mode == ReactorMode::Adaptive).then(|| WindowEstimator::new(shared.poll_window));
        if let Some(window) = &window {
            shared.window_ns.store(window.window_ns(), Ordering::Relaxed);
        }
        Idler { window, last_work_end: now, in_gap: false, armed: None }
    }

    fn on_work(&mut self, shared: &ReactorShared, pass_start: Instant, pass_end: Instant) {
        if std::mem::take(&mut self.in_gap) {
            if let Some(window) = &mut self.window {
                window.on_gap(pass_start.saturating_duration_since(self.last_work_end).as_nanos() as u64);
                shared.window_ns.store(window.window_ns(), Ordering::Relaxed);
            }
        }
        self.last_work_end = pass_end;
    }

    /// After a pass that found nothing: whether to sleep now.
    fn should_sleep(&mut self, now: Instant) -> bool {
        self.in_gap = true;
        match &self.window {
            None => true,
            Some(window) => now.saturating_duration_since(self.last_work_end).as_nanos() as u64 >= window.window_ns(),
        }
    }
}

/// The reactor loop; returns once the app has stopped and this core's threads are gone.
pub(crate) fn run(shared: Arc<ReactorShared>, app: Arc<AppShared>) {
    shared.os_tid.store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
    let mut threads: Vec<ThreadCtx> = Vec::new();
    let mut events = [EpollEvent::empty(); EPOLL_EVENTS_PER_WAKE];
    let mut slice_start = Instant::now();
    let mut idler = Idler::new(&shared, slice_start);
    loop {
        let pass_start = slice_start;
        let any_busy = iterate(&shared, &app, &mut threads, &mut slice_start, Instant::now);
        if is_finished(&shared, &app, &threads) {
            return;
        }
        let Some(interrupt) = &shared.interrupt else {
            if threads.is_empty() {
                std::hint::spin_loop();
            }
            continue;
        };
        if any_busy {
            idler.on_work(&shared, pass_start, slice_start);
            continue;
        }
        if !idler.should_sleep(slice_start) {
            continue;
        }
        let slept = sleep(&shared, interrupt, &app, &mut threads, &mut events, &mut idler.armed);
        let now = Instant::now();
        let elapsed_ns = now.duration_since(slice_start).as_nanos() as u64;
        for thread in threads.iter_mut() {
            thread.account(false, elapsed_ns);
        }
        if slept {
            shared.add_sleep(elapsed_ns);
        } else {
            shared.add_time(false, elapsed_ns);
        }
        slice_start = now;
    }
}

/// One pass of a reactor: adopt the threads placed on it, start a requested stop, give
/// every thread a timeslice, let finished threads go. `clock` reads the time: the wall
/// clock here, a caller's clock in a stepped app. Returns whether any thread was busy.
pub(crate) fn iterate(
    shared: &ReactorShared,
    app: &Arc<AppShared>,
    threads: &mut Vec<ThreadCtx>,
    slice_start: &mut Instant,
    clock: impl Fn() -> Instant,
) -> bool {
    adopt(shared, app, threads);
    if app.take_stop_request(shared.core) {
        if let Some(app_thread) = threads.iter_mut().find(|thread| app.is_app_thread(thread.id())) {
            super::app::begin_shutdown(app_thread);
        }
    }
    let mut any_busy = false;
    for thread in threads.iter_mut() {
        let busy = thread.poll(*slice_start);
        let now = clock();
        let elapsed_ns = now.duration_since(*slice_start).as_nanos() as u64;
        thread.account(busy, elapsed_ns);
        shared.add_time(busy, elapsed_ns);
        *slice_start = now;
        any_busy |= busy;
    }
    threads.retain_mut(|thread| !thread.try_finish());
    if let Some(count) = crate::mem::alloc_count::this_thread() {
        shared.allocations.store(count, Ordering::Relaxed);
    }
    any_busy
}

/// Takes the threads newly placed on this reactor.
pub(crate) fn adopt(shared: &ReactorShared, app: &Arc<AppShared>, threads: &mut Vec<ThreadCtx>) {
    // Loads first: a swap is a locked instruction, too dear for every iteration.
    if shared.has_incoming.load(Ordering::Relaxed) && shared.has_incoming.swap(false, Ordering::SeqCst) {
        for thread in shared.incoming.lock().drain(..) {
            threads.push(ThreadCtx::new(thread, app.clone()));
        }
    }
}

/// Whether the app has stopped and this reactor has nothing left to run.
pub(crate) fn is_finished(shared: &ReactorShared, app: &AppShared, threads: &[ThreadCtx]) -> bool {
    threads.is_empty() && app.all_threads_exited() && !shared.has_incoming.load(Ordering::SeqCst)
}

/// Sleeps in epoll until a message, the next timer deadline or a watched fd; returns
/// false when there was something to do and it did not sleep. Costs one `epoll_wait`
/// per sleep, plus reads of the eventfd and the timerfd only when they fired and a
/// timerfd update only when the next deadline moved.
fn sleep(
    shared: &ReactorShared,
    interrupt: &InterruptFds,
    app: &AppShared,
    threads: &mut [ThreadCtx],
    events: &mut [EpollEvent],
    armed: &mut Option<Instant>,
) -> bool {
    let deadline = threads.iter_mut().filter_map(|thread| thread.next_deadline()).min();
    shared.waker.sleeping.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    let work_waiting = threads.iter().any(|thread| thread.has_pending_work())
        || shared.has_incoming.load(Ordering::SeqCst)
        || app.stop_requested_for(shared.core)
        || (threads.is_empty() && app.all_threads_exited());
    let now = Instant::now();
    if work_waiting || deadline.is_some_and(|at| at <= now) {
        shared.waker.sleeping.store(false, Ordering::SeqCst);
        return false;
    }
    let mut timer_works = true;
    if *armed != deadline {
        let set = match deadline {
            Some(at) => {
                interrupt.timer.set(Expiration::OneShot(TimeSpec::from_duration(at - now)), TimerSetTimeFlags::empty())
            }
            None => interrupt.timer.unset(),
        };
        timer_works = set.is_ok();
        *armed = if timer_works { deadline } else { None };
    }
    // Without a working timer, wake at least every millisecond rather than miss it.
    let timeout = if timer_works { EpollTimeout::NONE } else { EpollTimeout::from(1u8) };
    let ready = match interrupt.epoll.wait(events, timeout) {
        Ok(ready) => ready,
        Err(Errno::EINTR) => 0,
        Err(err) => {
            crate::log_error!("reactor {}: epoll_wait failed: {err}", shared.core);
            0
        }
    };
    shared.waker.sleeping.store(false, Ordering::SeqCst);
    let woke = Instant::now();
    for event in &events[..ready] {
        match event.data() {
            WAKE_TOKEN => {
                if let Some(eventfd) = &shared.waker.eventfd {
                    let _ = eventfd.read();
                }
            }
            TIMER_TOKEN => {
                let _ = interrupt.timer.wait();
                *armed = None;
            }
            token => {
                if let Some((thread_id, slot)) = fd_poller_of(token) {
                    if let Some(thread) = threads.iter_mut().find(|thread| thread.id().0 == thread_id) {
                        thread.fd_ready(slot, woke);
                    }
                }
            }
        }
    }
    true
}
