//! The application: reactors for a core mask, the app thread, the registry of
//! lightweight threads, subsystem init and the orderly shutdown
//! (stop -> subsystems finish in reverse init order -> threads exit -> reactors join).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_queue::ArrayQueue;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use parking_lot::{Condvar, Mutex};

use super::cpumask::CoreMask;
use super::mode::{PollWindow, ReactorMode};
use super::run_loop::{self, ReactorShared, ReactorStat};
use super::thread::{ThreadCtx, ThreadHandle, ThreadId, ThreadShared, DEFAULT_MSG_QUEUE_CAPACITY};

/// Name of the thread that runs the control plane (RPC, config, subsystem init).
pub const APP_THREAD_NAME: &str = "app_thread";

#[derive(Clone, Debug)]
pub struct AppOptions {
    pub name: String,
    pub cpumask: CoreMask,
    /// Reactors sleep in epoll when idle: at once (interrupt mode), or after a poll
    /// window (adaptive mode, when `poll_window` has a cap). Either way, anything with a
    /// file descriptor must watch it (`ThreadCtx::watch_fd`) to be woken. When false,
    /// reactors spin (poll mode) and `poll_window` is unused.
    pub interrupt_mode: bool,
    /// Adaptive mode's window bounds; `PollWindow::NONE` (the default) is interrupt mode.
    pub poll_window: PollWindow,
    pub msg_queue_capacity: usize,
}

impl AppOptions {
    pub fn mode(&self) -> ReactorMode {
        match (self.interrupt_mode, self.poll_window.max_us) {
            (false, _) => ReactorMode::Poll,
            (true, 0) => ReactorMode::Interrupt,
            (true, _) => ReactorMode::Adaptive,
        }
    }
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            name: "peerless".to_string(),
            cpumask: CoreMask::single(0),
            interrupt_mode: false,
            poll_window: PollWindow::NONE,
            msg_queue_capacity: DEFAULT_MSG_QUEUE_CAPACITY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("core {core} of mask {mask} is not available to this process (allowed: {allowed})")]
    CoreUnavailable { core: u32, mask: CoreMask, allowed: String },
    #[error("core {0} is not in the application's core mask")]
    CoreNotInMask(u32),
    #[error("the application is shutting down; no new threads")]
    ShuttingDown,
    #[error("message queue capacity must be at least 1")]
    BadQueueCapacity,
    #[error("{0}")]
    BadPollWindow(String),
    #[error("cannot set up reactor on core {core}: {source}")]
    Reactor { core: u32, source: std::io::Error },
}

/// SPDK's framework states: STARTUP accepts only the RPCs allowed before subsystem init
/// (`--wait-for-rpc`); RUNTIME once `framework_start_init` has run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AppState {
    Startup = 0,
    Initializing = 1,
    Runtime = 2,
    ShuttingDown = 3,
}

pub type InitDone = Box<dyn FnOnce(&mut ThreadCtx, Result<(), String>) + Send>;
pub type FiniDone = Box<dyn FnOnce(&mut ThreadCtx) + Send>;

/// A framework subsystem (bdev, nvmf, ...): initialised in registration order on the app
/// thread, finished in reverse order at shutdown. Both steps may complete later, from
/// any point on the app thread, by calling `done`.
pub trait Subsystem: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    fn depends_on(&self) -> &'static [&'static str] {
        &[]
    }

    fn init(&self, ctx: &mut ThreadCtx, done: InitDone) {
        done(ctx, Ok(()));
    }

    fn fini(&self, ctx: &mut ThreadCtx, done: FiniDone) {
        done(ctx);
    }

    /// The calls that rebuild this subsystem's current state, as `{"method","params"}`
    /// objects (`framework_get_config`, `save_config`). Runs on the app thread.
    fn config(&self, _ctx: &mut ThreadCtx) -> Vec<serde_json::Value> {
        Vec::new()
    }
}

pub(crate) struct AppShared {
    options: AppOptions,
    reactors: Vec<Arc<ReactorShared>>,
    threads: Mutex<Vec<ThreadHandle>>,
    next_thread_id: AtomicU64,
    next_reactor: AtomicUsize,
    state: AtomicU8,
    app_thread: OnceLock<ThreadHandle>,
    subsystems: Mutex<Vec<Arc<dyn Subsystem>>>,
    stop_requested: AtomicBool,
    /// Set by the embedding application once init and its config replay are complete.
    ready: AtomicBool,
    all_exited: AtomicBool,
    /// Signalled when the state or the thread registry changes, for blocking waiters.
    changed: (Mutex<()>, Condvar),
}

impl AppShared {
    /// The shared state of an app over `reactors`, with no thread yet.
    pub(crate) fn new(options: AppOptions, reactors: Vec<Arc<ReactorShared>>) -> Arc<AppShared> {
        Arc::new(AppShared {
            options,
            reactors,
            threads: Mutex::new(Vec::new()),
            next_thread_id: AtomicU64::new(1),
            next_reactor: AtomicUsize::new(0),
            state: AtomicU8::new(AppState::Startup as u8),
            app_thread: OnceLock::new(),
            subsystems: Mutex::new(Vec::new()),
            stop_requested: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            all_exited: AtomicBool::new(false),
            changed: (Mutex::new(()), Condvar::new()),
        })
    }

    /// Creates the app thread on the first core; once, right after `new`.
    pub(crate) fn spawn_app_thread(self: &Arc<Self>) -> Result<(), AppError> {
        let handle = AppHandle(self.clone());
        let app_thread = handle.spawn_thread(APP_THREAD_NAME, Some(self.options.cpumask.first()))?;
        let _ = self.app_thread.set(app_thread);
        Ok(())
    }

    pub fn take_stop_request(&self, core: u32) -> bool {
        core == self.options.cpumask.first()
            && self.stop_requested.load(Ordering::Relaxed)
            && self.stop_requested.swap(false, Ordering::SeqCst)
    }

    pub fn stop_requested_for(&self, core: u32) -> bool {
        core == self.options.cpumask.first() && self.stop_requested.load(Ordering::SeqCst)
    }

    pub fn is_app_thread(&self, id: ThreadId) -> bool {
        self.app_thread.get().is_some_and(|thread| thread.id() == id)
    }

    pub fn all_threads_exited(&self) -> bool {
        self.all_exited.load(Ordering::SeqCst)
    }

    pub fn thread_exited(&self, id: ThreadId) {
        let mut threads = self.threads.lock();
        threads.retain(|thread| thread.id() != id);
        if threads.is_empty() && self.state() == AppState::ShuttingDown {
            self.all_exited.store(true, Ordering::SeqCst);
            for reactor in &self.reactors {
                reactor.waker.wake_always();
            }
        }
        drop(threads);
        self.notify();
    }

    fn state(&self) -> AppState {
        match self.state.load(Ordering::SeqCst) {
            0 => AppState::Startup,
            1 => AppState::Initializing,
            2 => AppState::Runtime,
            _ => AppState::ShuttingDown,
        }
    }

    fn set_state(&self, state: AppState) {
        self.state.store(state as u8, Ordering::SeqCst);
        self.notify();
    }

    fn notify(&self) {
        let _guard = self.changed.0.lock();
        self.changed.1.notify_all();
    }
}

/// A running application. Dropping it without `wait` leaves the reactors running.
pub struct App {
    shared: Arc<AppShared>,
    joins: Vec<JoinHandle<()>>,
}

/// A sendable handle to the application.
#[derive(Clone)]
pub struct AppHandle(pub(crate) Arc<AppShared>);

impl App {
    /// Starts one pinned reactor per core of the mask and the app thread on the first.
    pub fn start(options: AppOptions) -> Result<App, AppError> {
        if options.msg_queue_capacity == 0 {
            return Err(AppError::BadQueueCapacity);
        }
        options.poll_window.validate().map_err(AppError::BadPollWindow)?;
        let allowed = sched_getaffinity(Pid::from_raw(0)).ok();
        let mut reactors = Vec::new();
        for core in options.cpumask.cores() {
            if let Some(allowed) = &allowed {
                if !allowed.is_set(core as usize).unwrap_or(false) {
                    return Err(AppError::CoreUnavailable {
                        core,
                        mask: options.cpumask,
                        allowed: describe_cpuset(allowed),
                    });
                }
            }
            let reactor = ReactorShared::new(core, options.mode(), options.poll_window)
                .map_err(|source| AppError::Reactor { core, source })?;
            reactors.push(Arc::new(reactor));
        }
        let shared = AppShared::new(options, reactors);
        shared.spawn_app_thread()?;
        let first_core = shared.options.cpumask.first();

        let mut joins = Vec::new();
        for reactor in shared.reactors.clone() {
            let app = shared.clone();
            let join = std::thread::Builder::new()
                .name(format!("reactor_{}", reactor.core))
                .spawn(move || {
                    pin_to_core(reactor.core);
                    run_loop::run(reactor, app);
                })
                .map_err(|source| AppError::Reactor { core: first_core, source })?;
            joins.push(join);
        }
        let window = match shared.options.mode() {
            ReactorMode::Adaptive => {
                let PollWindow { min_us, max_us } = shared.options.poll_window;
                format!(", poll window {min_us}-{max_us} us")
            }
            _ => String::new(),
        };
        crate::log_notice!(
            "{}: {} reactor(s) on cores {} ({} mode{window})",
            shared.options.name,
            shared.reactors.len(),
            shared.options.cpumask,
            shared.options.mode(),
        );
        Ok(App { shared, joins })
    }

    pub fn handle(&self) -> AppHandle {
        AppHandle(self.shared.clone())
    }

    /// Blocks until `stop` has run to completion and every reactor has returned.
    pub fn wait(self) {
        for join in self.joins {
            if join.join().is_err() {
                crate::log_error!("a reactor thread panicked");
            }
        }
    }
}

fn pin_to_core(core: u32) {
    let mut set = CpuSet::new();
    let pinned = set.set(core as usize).and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    if let Err(err) = pinned {
        crate::log_warn!("reactor {core}: cannot pin to its core: {err}");
    }
}

fn describe_cpuset(set: &CpuSet) -> String {
    let cores: Vec<String> =
        (0..CpuSet::count()).filter(|core| set.is_set(*core).unwrap_or(false)).map(|core| core.to_string()).collect();
    format!("[{}]", cores.join(","))
}

impl AppHandle {
    pub fn options(&self) -> &AppOptions {
        &self.0.options
    }

    pub fn state(&self) -> AppState {
        self.0.state()
    }

    pub fn app_thread(&self) -> ThreadHandle {
        self.0.app_thread.get().cloned().expect("the app thread is created by App::start")
    }

    /// Creates a lightweight thread on `core` (round-robin over the mask when `None`).
    pub fn spawn_thread(&self, name: &str, core: Option<u32>) -> Result<ThreadHandle, AppError> {
        let reactor = match core {
            Some(core) => {
                self.0.reactors.iter().find(|reactor| reactor.core == core).ok_or(AppError::CoreNotInMask(core))?
            }
            None => {
                let index = self.0.next_reactor.fetch_add(1, Ordering::Relaxed) % self.0.reactors.len();
                &self.0.reactors[index]
            }
        };
        let mut threads = self.0.threads.lock();
        if self.0.state() == AppState::ShuttingDown {
            return Err(AppError::ShuttingDown);
        }
        let id = ThreadId(self.0.next_thread_id.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(ThreadShared {
            id,
            name: name.to_string(),
            core: reactor.core,
            queue: ArrayQueue::new(self.0.options.msg_queue_capacity),
            reactor: reactor.clone(),
            exited: AtomicBool::new(false),
        });
        let handle = ThreadHandle(shared.clone());
        threads.push(handle.clone());
        drop(threads);
        reactor.adopt(shared);
        Ok(handle)
    }

    /// Every live lightweight thread, in creation order.
    pub fn threads(&self) -> Vec<ThreadHandle> {
        self.0.threads.lock().clone()
    }

    pub fn reactor_stats(&self) -> Vec<ReactorStat> {
        self.0.reactors.iter().map(|reactor| reactor.stat()).collect()
    }

    /// Subsystems are registered before `start_init`; they initialise in this order.
    pub fn register_subsystem(&self, subsystem: Arc<dyn Subsystem>) {
        self.0.subsystems.lock().push(subsystem);
    }

    pub fn subsystems(&self) -> Vec<Arc<dyn Subsystem>> {
        self.0.subsystems.lock().clone()
    }

    /// Initialises every subsystem in order on the app thread (SPDK's
    /// `framework_start_init`); `done` gets the first failure, if any.
    pub fn start_init(&self, done: impl FnOnce(&mut ThreadCtx, Result<(), String>) + Send + 'static) {
        let app = self.clone();
        let started = self.app_thread().send_blocking(move |ctx| app.init_subsystems(ctx, done));
        if started.is_err() {
            crate::log_error!("cannot start subsystem init: the app thread has exited");
        }
    }

    /// `start_init` for code already on the app thread (the `framework_start_init` RPC).
    pub fn init_subsystems(
        &self,
        ctx: &mut ThreadCtx,
        done: impl FnOnce(&mut ThreadCtx, Result<(), String>) + Send + 'static,
    ) {
        debug_assert!(self.0.is_app_thread(ctx.id()), "subsystems initialise on the app thread");
        if self.0.state() != AppState::Startup {
            done(ctx, Err("the framework is already initialized".to_string()));
            return;
        }
        self.0.set_state(AppState::Initializing);
        init_next(ctx, self.subsystems(), 0, Box::new(done));
    }

    /// Marks the application ready: subsystems initialised and the start-up config fully
    /// applied. `framework_wait_init` answers from then on.
    pub fn mark_ready(&self) {
        self.0.ready.store(true, Ordering::SeqCst);
        self.0.notify();
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    /// Blocks an OS thread that is not a reactor until the state is at least `state`.
    pub fn wait_for_state(&self, state: AppState) {
        let mut guard = self.0.changed.0.lock();
        while (self.0.state() as u8) < state as u8 {
            self.0.changed.1.wait(&mut guard);
        }
    }

    /// Starts the orderly shutdown. Safe from any thread, including signal pollers;
    /// calling it again does nothing.
    pub fn stop(&self) {
        if self.0.state() == AppState::ShuttingDown {
            return;
        }
        self.0.stop_requested.store(true, Ordering::SeqCst);
        for reactor in &self.0.reactors {
            if reactor.core == self.0.options.cpumask.first() {
                reactor.waker.wake_always();
            }
        }
    }

    /// Visits every thread one after another, then runs `done` on the calling thread.
    pub fn for_each_thread(
        &self,
        ctx: &mut ThreadCtx,
        visit: impl Fn(&mut ThreadCtx) + Send + Sync + 'static,
        done: impl FnOnce(&mut ThreadCtx) + Send + 'static,
    ) {
        walk_threads(ctx, self.threads(), visit, done);
    }
}

fn init_next(ctx: &mut ThreadCtx, subsystems: Vec<Arc<dyn Subsystem>>, index: usize, done: InitDone) {
    let Some(subsystem) = subsystems.get(index).cloned() else {
        let shared = ctx.app_shared().clone();
        if shared.state() == AppState::Initializing {
            shared.set_state(AppState::Runtime);
        }
        done(ctx, Ok(()));
        return;
    };
    let name = subsystem.name();
    subsystem.init(
        ctx,
        Box::new(move |ctx, result| match result {
            Ok(()) => init_next(ctx, subsystems, index + 1, done),
            Err(why) => done(ctx, Err(format!("subsystem '{name}' failed to initialise: {why}"))),
        }),
    );
}

/// Runs on the app thread when a stop was requested: finish subsystems in reverse, then
/// ask every thread to exit.
pub(crate) fn begin_shutdown(ctx: &mut ThreadCtx) {
    let shared = ctx.app_shared().clone();
    {
        let _threads = shared.threads.lock();
        if shared.state() == AppState::ShuttingDown {
            return;
        }
        shared.set_state(AppState::ShuttingDown);
    }
    crate::log_notice!("shutting down: finishing subsystems");
    let mut subsystems = shared.subsystems.lock().clone();
    subsystems.reverse();
    fini_next(ctx, subsystems, 0);
}

fn fini_next(ctx: &mut ThreadCtx, subsystems: Vec<Arc<dyn Subsystem>>, index: usize) {
    let Some(subsystem) = subsystems.get(index).cloned() else {
        exit_all_threads(ctx);
        return;
    };
    subsystem.fini(ctx, Box::new(move |ctx| fini_next(ctx, subsystems, index + 1)));
}

fn exit_all_threads(ctx: &mut ThreadCtx) {
    let threads = ctx.app().threads();
    for thread in threads {
        if thread.id() == ctx.id() {
            ctx.exit();
        } else {
            // An exited thread needs no asking.
            let _ = ctx.send_to(&thread, |ctx| ctx.exit());
        }
    }
}

struct ThreadWalk {
    targets: Vec<ThreadHandle>,
    next: usize,
    visit: Arc<dyn Fn(&mut ThreadCtx) + Send + Sync>,
    origin: ThreadHandle,
    done: FiniDone,
}

/// Visits `targets` one after another, then runs `done` on the calling thread. The walk
/// travels in a slot so that a send refused because a target exited hands it back, and
/// the walk goes on to the next target instead of being lost.
pub(crate) fn walk_threads(
    ctx: &mut ThreadCtx,
    targets: Vec<ThreadHandle>,
    visit: impl Fn(&mut ThreadCtx) + Send + Sync + 'static,
    done: impl FnOnce(&mut ThreadCtx) + Send + 'static,
) {
    let walk = ThreadWalk { targets, next: 0, visit: Arc::new(visit), origin: ctx.handle(), done: Box::new(done) };
    walk_next(ctx, walk);
}

fn walk_next(ctx: &mut ThreadCtx, mut walk: ThreadWalk) {
    while let Some(target) = walk.targets.get(walk.next).cloned() {
        walk.next += 1;
        let slot = Arc::new(Mutex::new(Some(walk)));
        let carried = slot.clone();
        let sent = ctx.send_to(&target, move |ctx| {
            let Some(walk) = carried.lock().take() else { return };
            (walk.visit)(ctx);
            walk_next(ctx, walk);
        });
        if sent.is_ok() {
            return;
        }
        let back = slot.lock().take();
        match back {
            Some(back) => walk = back,
            None => return,
        }
    }
    let (origin, done) = (walk.origin, walk.done);
    // The origin exiting before its own walk completes leaves nobody to tell.
    let _ = ctx.send_to(&origin, move |ctx| done(ctx));
}
