//! A stepped application: the same reactors, lightweight threads, messages, pollers and io
//! channels as `App`, but no OS thread of their own. The caller turns every reactor one
//! iteration per `step`, on its own OS thread, at a time it names. Nothing here reads the
//! wall clock, so what the threads do depends only on what the caller feeds them: a
//! deterministic simulation drives the real framework this way (TigerBeetle's VOPR runs
//! its replicas the same way), and a test can single-step a thread.
//!
//! Stepped apps always run in poll mode: there is no sleeping between iterations, only
//! the caller deciding when the next one happens. One wall-clock read is left: a timed
//! poller takes its first deadline from `Instant::now()` when registered, so a run that
//! must repeat exactly keeps to messages and active pollers (the target's data path has
//! no timed poller).

use std::sync::Arc;
use std::time::Instant;

use super::app::{AppError, AppHandle, AppOptions, AppShared};
use super::mode::{PollWindow, ReactorMode};
use super::run_loop::{self, ReactorShared};
use super::thread::{instant_at, ThreadCtx, ThreadId};

struct SteppedReactor {
    shared: Arc<ReactorShared>,
    threads: Vec<ThreadCtx>,
    /// When the running timeslice began, on the caller's clock.
    slice_start: Instant,
}

pub struct SteppedApp {
    app: Arc<AppShared>,
    reactors: Vec<SteppedReactor>,
    /// The time of the last step, in nanoseconds on the caller's clock.
    now_ns: u64,
}

impl SteppedApp {
    /// An app over the cores of `options.cpumask` (which need not be available to the
    /// process: nothing is pinned), with its app thread on the first, at time 0.
    pub fn new(options: AppOptions) -> Result<SteppedApp, AppError> {
        if options.msg_queue_capacity == 0 {
            return Err(AppError::BadQueueCapacity);
        }
        let options = AppOptions { interrupt_mode: false, ..options };
        let mut shared = Vec::new();
        for core in options.cpumask.cores() {
            let reactor = ReactorShared::new(core, ReactorMode::Poll, PollWindow::NONE)
                .map_err(|source| AppError::Reactor { core, source })?;
            shared.push(Arc::new(reactor));
        }
        let app = AppShared::new(options, shared.clone());
        app.spawn_app_thread()?;
        let reactors = shared
            .into_iter()
            .map(|shared| SteppedReactor { shared, threads: Vec::new(), slice_start: instant_at(0) })
            .collect();
        Ok(SteppedApp { app, reactors, now_ns: 0 })
    }

    pub fn handle(&self) -> AppHandle {
        AppHandle(self.app.clone())
    }

    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Runs one iteration of every reactor, in core order, with the clock at `now_ns`
    /// (what `ThreadCtx::now_ns` reads in the timeslices of this step). Returns whether any
    /// thread had work.
    pub fn step(&mut self, now_ns: u64) -> bool {
        assert!(now_ns >= self.now_ns, "the clock went back from {} to {now_ns} ns", self.now_ns);
        self.now_ns = now_ns;
        let now = instant_at(now_ns);
        let mut busy = false;
        for reactor in &mut self.reactors {
            reactor.slice_start = now;
            busy |=
                run_loop::iterate(&reactor.shared, &self.app, &mut reactor.threads, &mut reactor.slice_start, || now);
        }
        busy
    }

    /// Runs `work` on the thread `id` right now, between steps, as if a message had: what
    /// it reads of the clock is the last step's. None if there is no such thread.
    pub fn run_on<R>(&mut self, id: ThreadId, work: impl FnOnce(&mut ThreadCtx) -> R) -> Option<R> {
        for reactor in &mut self.reactors {
            run_loop::adopt(&reactor.shared, &self.app, &mut reactor.threads);
            if let Some(thread) = reactor.threads.iter_mut().find(|thread| thread.id() == id) {
                thread.set_now(instant_at(self.now_ns));
                return Some(work(thread));
            }
        }
        None
    }

    /// Whether the app has stopped (`AppHandle::stop`) and every thread has exited.
    pub fn is_finished(&self) -> bool {
        self.reactors.iter().all(|reactor| run_loop::is_finished(&reactor.shared, &self.app, &reactor.threads))
    }
}
