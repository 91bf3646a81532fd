//! A reactor: one OS thread pinned to one core, running every lightweight thread placed
//! on that core a timeslice at a time. In poll mode it never sleeps. In interrupt mode
//! it runs until every thread reports idle, then sleeps in epoll until a message, a timer
//! deadline or a watched fd wakes it, so an idle target uses no CPU at all.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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
use super::thread::{ThreadCtx, ThreadShared};

/// epoll events taken per wake-up; more simply wait for the next call.
const EPOLL_EVENTS_PER_WAKE: usize = 64;
const WAKE_TOKEN: u64 = u64::MAX;
const TIMER_TOKEN: u64 = u64::MAX - 1;

/// Wakes a sleeping reactor. Senders push first, then look at `sleeping`; the reactor
/// sets `sleeping`, then looks at the queues. With a SeqCst fence on both sides one of
/// them always sees the other (Dekker), so no wake-up is lost and a reactor that is not
/// asleep costs its senders no syscall.
pub(crate) struct Waker {
    eventfd: Option<EventFd>,
    sleeping: AtomicBool,
}

impl Waker {
    pub fn wake(&self) {
        if let Some(eventfd) = &self.eventfd {
            fence(Ordering::SeqCst);
            if self.sleeping.load(Ordering::SeqCst) {
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
    interrupt: Option<InterruptFds>,
    incoming: Mutex<Vec<Arc<ThreadShared>>>,
    has_incoming: AtomicBool,
    /// Written only by the reactor's own OS thread (plain stores), read by stats RPCs.
    busy_ns: AtomicU64,
    idle_ns: AtomicU64,
    os_tid: AtomicI32,
}

struct InterruptFds {
    epoll: Epoll,
    timer: TimerFd,
}

/// A point-in-time view of one reactor, for `framework_get_reactors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactorStat {
    pub core: u32,
    pub os_tid: i32,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub in_interrupt: bool,
}

impl ReactorShared {
    pub fn new(core: u32, interrupt_mode: bool) -> std::io::Result<Self> {
        let (eventfd, interrupt) = if interrupt_mode {
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
            interrupt,
            incoming: Mutex::new(Vec::new()),
            has_incoming: AtomicBool::new(false),
            busy_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            os_tid: AtomicI32::new(0),
        })
    }

    pub fn adopt(&self, thread: Arc<ThreadShared>) {
        self.incoming.lock().push(thread);
        self.has_incoming.store(true, Ordering::SeqCst);
        self.waker.wake();
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

    pub fn stat(&self) -> ReactorStat {
        ReactorStat {
            core: self.core,
            os_tid: self.os_tid.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            idle_ns: self.idle_ns.load(Ordering::Relaxed),
            in_interrupt: self.interrupt.is_some(),
        }
    }

    fn add_time(&self, busy: bool, elapsed_ns: u64) {
        // Single writer: load + store, not a read-modify-write (shared nothing on the data path).
        let counter = if busy { &self.busy_ns } else { &self.idle_ns };
        counter.store(counter.load(Ordering::Relaxed) + elapsed_ns, Ordering::Relaxed);
    }
}

/// The reactor loop; returns once the app has stopped and this core's threads are gone.
pub(crate) fn run(shared: Arc<ReactorShared>, app: Arc<AppShared>) {
    shared.os_tid.store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
    let mut threads: Vec<ThreadCtx> = Vec::new();
    let mut events = [EpollEvent::empty(); EPOLL_EVENTS_PER_WAKE];
    let mut slice_start = Instant::now();
    loop {
        let any_busy = iterate(&shared, &app, &mut threads, &mut slice_start, Instant::now);
        if is_finished(&shared, &app, &threads) {
            return;
        }
        if let Some(interrupt) = &shared.interrupt {
            if !any_busy {
                sleep(&shared, interrupt, &app, &mut threads, &mut events);
                let now = Instant::now();
                let slept_ns = now.duration_since(slice_start).as_nanos() as u64;
                for thread in threads.iter_mut() {
                    thread.account(false, slept_ns);
                }
                shared.add_time(false, slept_ns);
                slice_start = now;
            }
        } else if threads.is_empty() {
            std::hint::spin_loop();
        }
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

fn sleep(
    shared: &ReactorShared,
    interrupt: &InterruptFds,
    app: &AppShared,
    threads: &mut [ThreadCtx],
    events: &mut [EpollEvent],
) {
    let deadline = threads.iter_mut().filter_map(|thread| thread.next_deadline()).min();
    shared.waker.sleeping.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    let work_waiting = threads.iter().any(|thread| thread.has_pending_work())
        || shared.has_incoming.load(Ordering::SeqCst)
        || app.stop_requested_for(shared.core)
        || (threads.is_empty() && app.all_threads_exited());
    if work_waiting {
        shared.waker.sleeping.store(false, Ordering::SeqCst);
        return;
    }
    let now = Instant::now();
    let armed = match deadline {
        Some(at) if at <= now => {
            shared.waker.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        Some(at) => {
            let expiration = Expiration::OneShot(TimeSpec::from_duration(at - now));
            interrupt.timer.set(expiration, TimerSetTimeFlags::empty()).is_ok()
        }
        None => {
            let _ = interrupt.timer.unset();
            true
        }
    };
    // Without a working timer, wake at least every millisecond rather than miss it.
    let timeout = if armed { EpollTimeout::NONE } else { EpollTimeout::from(1u8) };
    match interrupt.epoll.wait(events, timeout) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(err) => crate::log_error!("reactor {}: epoll_wait failed: {err}", shared.core),
    }
    shared.waker.sleeping.store(false, Ordering::SeqCst);
    if let Some(eventfd) = &shared.waker.eventfd {
        let _ = eventfd.read();
    }
    let _ = interrupt.timer.wait();
}
