//! The target application: reactors, the RPC server, signals, config, and the orderly
//! stop. The binary is a thin shell around `run` so tests can drive the same code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::metrics::{self, MetricsServer};
use crate::nvmf::{self, NvmfSubsystem, NvmfTarget};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use peerless_bdev::{BdevManager, BdevSubsystem};
use peerless_core::keyring::{self, rpc::KeyringSubsystem, Keyring};
use peerless_core::log::{self, Level};
use peerless_core::mem::env::{self, EnvOptions, MemEnv};
use peerless_core::reactor::{App, AppHandle, AppOptions, CoreMask, PollStatus, PollWindow, ReactorMode};
use peerless_core::rpc::{framework, Registry, RpcServer};
use peerless_core::{config, log_error, log_notice};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Start(String),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
}

#[derive(Clone, Debug)]
pub struct TargetOptions {
    pub cpumask: CoreMask,
    pub config: Option<PathBuf>,
    pub rpc_socket: PathBuf,
    pub wait_for_rpc: bool,
    /// How reactors wait for work, and adaptive mode's window (`PollWindow::NONE` in the
    /// other modes).
    pub mode: ReactorMode,
    pub poll_window: PollWindow,
    /// The memory environment, started before the reactors (`--env`, `-s`, ...).
    pub mem: EnvOptions,
    /// Where `/metrics` is served (`--metrics`); off when absent.
    pub metrics: Option<SocketAddr>,
}

/// The reactor mode flags as given: `--poll-mode`, `--interrupt-mode`, or neither
/// (adaptive mode, with `--poll-window-us` and `--poll-window-min-us`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ModeFlags {
    pub poll_mode: bool,
    pub interrupt_mode: bool,
    pub poll_window_us: Option<u32>,
    pub poll_window_min_us: Option<u32>,
}

impl ModeFlags {
    /// The mode and window these flags ask for. Window bounds beside `--poll-mode` or
    /// `--interrupt-mode` would be ignored, so they are refused instead.
    pub fn resolve(self) -> Result<(ReactorMode, PollWindow), String> {
        let window_flag = match (self.poll_window_us, self.poll_window_min_us) {
            (Some(_), _) => Some("--poll-window-us"),
            (None, Some(_)) => Some("--poll-window-min-us"),
            (None, None) => None,
        };
        let fixed = match (self.poll_mode, self.interrupt_mode) {
            (true, true) => return Err("--poll-mode and --interrupt-mode exclude each other".into()),
            (true, false) => Some((ReactorMode::Poll, "--poll-mode")),
            (false, true) => Some((ReactorMode::Interrupt, "--interrupt-mode")),
            (false, false) => None,
        };
        if let Some((mode, mode_flag)) = fixed {
            if let Some(window_flag) = window_flag {
                return Err(format!("{window_flag} sets adaptive mode's poll window; it has none with {mode_flag}"));
            }
            return Ok((mode, PollWindow::NONE));
        }
        let max_us = self.poll_window_us.unwrap_or(PollWindow::DEFAULT.max_us);
        // A cap below the default floor brings the floor down with it, unless asked for.
        let min_us = self.poll_window_min_us.unwrap_or(PollWindow::DEFAULT.min_us.min(max_us));
        let window = PollWindow { min_us, max_us };
        window.validate()?;
        // A cap of 0 leaves no window: that is interrupt mode, and is reported as such.
        let mode = if max_us == 0 { ReactorMode::Interrupt } else { ReactorMode::Adaptive };
        Ok((mode, if mode == ReactorMode::Adaptive { window } else { PollWindow::NONE }))
    }
}

impl TargetOptions {
    /// Validates command-line values; an error here is a usage error (exit code 2).
    pub fn from_flags(
        cpumask: &str,
        config: Option<PathBuf>,
        rpc_socket: PathBuf,
        wait_for_rpc: bool,
        log_flags: &[String],
        mode: ModeFlags,
        mut mem: EnvOptions,
    ) -> Result<Self, TargetError> {
        let cpumask = CoreMask::parse(cpumask).map_err(|err| TargetError::Usage(format!("-m: {err}")))?;
        let (mode, poll_window) = mode.resolve().map_err(TargetError::Usage)?;
        mem.validate().map_err(|err| TargetError::Usage(err.to_string()))?;
        if mem.env == MemEnv::Dpdk && !env::DPDK_BUILT {
            return Err(TargetError::Usage(
                "--env dpdk: this peerless-tgt was built without DPDK support; rebuild with \
                 `cargo build -p peerless-target --features dpdk` (needs libdpdk-dev, libclang-dev, pkg-config)"
                    .into(),
            ));
        }
        // The EAL's main lcore is the first reactor core.
        mem.main_core = cpumask.cores().next().unwrap_or(0);
        for flag in log_flags {
            log::set_flag(flag, true).map_err(|err| TargetError::Usage(format!("-L: {err}")))?;
        }
        if !log_flags.is_empty() {
            // As SPDK: asking for a component's debug log means printing it.
            log::set_level(Level::Debug);
            log::set_print_level(Level::Debug);
        }
        Ok(TargetOptions { cpumask, config, rpc_socket, wait_for_rpc, mode, poll_window, mem, metrics: None })
    }
}

/// Every RPC method this target answers, bound to its keyring, bdevs and NVMe-oF target.
pub fn registry(keyring: &Keyring, bdevs: &BdevManager, target: &NvmfTarget) -> Registry {
    let mut registry = Registry::new();
    framework::register(&mut registry);
    keyring::rpc::register(&mut registry, keyring);
    peerless_bdev::register_rpcs(&mut registry, bdevs);
    nvmf::rpc::register(&mut registry, target, keyring);
    crate::tcp::sock_rpc::register(&mut registry);
    registry
}

/// The framework subsystems in init order (SPDK's names, so configs carry over).
fn register_subsystems(app: &AppHandle, keyring: &Keyring, bdevs: &BdevManager, target: &NvmfTarget) {
    // Socket options first, as in SPDK: listeners are made with them.
    app.register_subsystem(Arc::new(crate::tcp::sock_rpc::SockSubsystem));
    // Keys next: configuration that names a key is restored after it.
    app.register_subsystem(Arc::new(KeyringSubsystem { keyring: keyring.clone() }));
    app.register_subsystem(Arc::new(BdevSubsystem { manager: bdevs.clone() }));
    app.register_subsystem(Arc::new(NvmfSubsystem { target: target.clone() }));
}

/// Runs the target until SIGINT, SIGTERM or `spdk_kill_instance`.
/// Open files the target asks for at start-up: a socket per connection, ten thousand
/// hosts and more, with room for bdevs, epolls and the RPC server.
pub const WANTED_OPEN_FILES: u64 = 65_536;
/// Below this soft limit the target does not start: a few hundred hosts would exhaust it.
pub const MIN_OPEN_FILES: u64 = 1_024;

/// The soft limit on open files now, if it can be read.
pub fn open_files_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft)
}

/// Raises the soft open files limit towards `wanted` as far as the hard limit allows;
/// the limit it ends at, or why it is too low to start.
pub fn raise_open_files_limit(wanted: u64, minimum: u64) -> Result<u64, TargetError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|err| TargetError::Start(format!("cannot read the open files limit (RLIMIT_NOFILE): {err}")))?;
    let goal = wanted.min(hard);
    let limit = if soft < goal {
        match setrlimit(Resource::RLIMIT_NOFILE, goal, hard) {
            Ok(()) => {
                log_notice!("open files limit raised from {soft} to {goal} (hard limit {hard})");
                goal
            }
            Err(err) => {
                log_error!("cannot raise the open files limit from {soft} to {goal}: {err}");
                soft
            }
        }
    } else {
        soft
    };
    if limit < minimum {
        return Err(TargetError::Start(format!(
            "the open files limit is {limit} (hard limit {hard}); the target needs at least {minimum}: raise \
             it (ulimit -n, or LimitNOFILE= in a systemd unit)"
        )));
    }
    if limit < wanted {
        peerless_core::log_warn!(
            "open files limit {limit} (hard limit {hard}): at most about {} connections; raise the hard limit \
             for more",
            limit.saturating_sub(64)
        );
    }
    Ok(limit)
}

pub fn run(options: TargetOptions) -> Result<(), TargetError> {
    raise_open_files_limit(WANTED_OPEN_FILES, MIN_OPEN_FILES)?;
    // Block the handled signals before any thread starts, so every thread inherits the
    // mask and they arrive only through the app thread's signalfd.
    let mut stop_signals = SigSet::empty();
    for signal in HANDLED_SIGNALS {
        stop_signals.add(signal);
    }
    stop_signals.thread_block().map_err(|err| TargetError::Start(format!("cannot block signals: {err}")))?;
    let signals = SignalFd::with_flags(&stop_signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|err| TargetError::Start(format!("cannot open a signalfd: {err}")))?;
    let metrics_listener = options.metrics.map(bind_metrics).transpose()?;

    // Before any reactor or pool exists, so every DMA buffer comes from the chosen
    // environment; after the signal mask, so the EAL's own threads inherit it.
    let mem = env::start(&options.mem).map_err(|err| TargetError::Start(err.to_string()))?;
    log_notice!("memory: {mem}");

    let app_options = AppOptions {
        name: "peerless-tgt".into(),
        cpumask: options.cpumask,
        interrupt_mode: options.mode.sleeps(),
        poll_window: options.poll_window,
        ..AppOptions::default()
    };
    let app = App::start(app_options).map_err(|err| TargetError::Start(err.to_string()))?;
    let handle = app.handle();
    watch_signals(&handle, signals);

    let keyring = Keyring::new();
    let bdevs = BdevManager::new();
    let target = NvmfTarget::new(handle.clone(), bdevs.clone());
    target.register_transport_type(crate::tcp::TRTYPE, crate::tcp::TcpTransport::create);
    #[cfg(feature = "rdma")]
    target.register_transport_type(crate::rdma::TRTYPE, crate::rdma::RdmaTransport::create);
    register_subsystems(&handle, &keyring, &bdevs, &target);
    let registry = Arc::new(registry(&keyring, &bdevs, &target));
    let server = match RpcServer::start(&options.rpc_socket, registry.clone(), handle.clone()) {
        Ok(server) => server,
        Err(err) => {
            stop_and_wait(app);
            return Err(TargetError::Start(err.to_string()));
        }
    };

    let loaded = match &options.config {
        Some(path) => config::load(path, &registry, &handle, !options.wait_for_rpc).map_err(TargetError::from),
        None if options.wait_for_rpc => {
            log_notice!("waiting for framework_start_init on {}", options.rpc_socket.display());
            handle.wait_for_state(peerless_core::reactor::AppState::Runtime);
            Ok(())
        }
        None => {
            let (tx, rx) = std::sync::mpsc::channel();
            handle.start_init(move |_, result| {
                let _ = tx.send(result);
            });
            let result = rx.recv().unwrap_or_else(|_| Err("the app thread exited during init".into()));
            result.map_err(TargetError::Start)
        }
    };
    if let Err(err) = loaded {
        log_error!("{err}");
        stop_and_wait(app);
        server.stop();
        return Err(err);
    }
    // Before the target reports ready, so whoever waits for that can scrape at once.
    let metrics = match metrics_listener {
        Some(listener) => {
            let sources = metrics::Sources { registry: registry.clone(), app: handle.clone(), target: target.clone() };
            match MetricsServer::start(listener, sources) {
                Ok(metrics) => Some(metrics),
                Err(err) => {
                    stop_and_wait(app);
                    server.stop();
                    return Err(TargetError::Start(format!("cannot start the metrics thread: {err}")));
                }
            }
        }
        None => None,
    };
    handle.mark_ready();
    log_notice!("peerless-tgt ready; RPC on {}", options.rpc_socket.display());
    app.wait();
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    server.stop();
    peerless_bdev::modules::finish();
    log_notice!("peerless-tgt stopped");
    Ok(())
}

/// Binds `--metrics`: an address this host does not have is a usage error (exit code 2),
/// one that is taken is a failure to start (exit code 1), as for the RPC socket.
fn bind_metrics(addr: SocketAddr) -> Result<std::net::TcpListener, TargetError> {
    metrics::bind(addr).map_err(|err| {
        let message = format!("--metrics {addr}: {err}");
        match err.raw_os_error().map(nix::errno::Errno::from_raw) {
            Some(nix::errno::Errno::EADDRNOTAVAIL | nix::errno::Errno::EAFNOSUPPORT | nix::errno::Errno::EINVAL) => {
                TargetError::Usage(message)
            }
            _ => TargetError::Start(message),
        }
    })
}

fn stop_and_wait(app: App) {
    app.handle().stop();
    app.wait();
}

/// SIGINT, SIGTERM, SIGQUIT and SIGHUP stop the target cleanly; SIGUSR1 logs its state.
const HANDLED_SIGNALS: [Signal; 5] =
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT, Signal::SIGHUP, Signal::SIGUSR1];

/// How often the signalfd is read while a reactor spins: a read on every pass would cost
/// more than the pass. A sleeping reactor is woken by the fd itself.
const SIGNAL_POLL_US: u64 = 10_000;

/// Polls the signalfd on the app thread: every few milliseconds while its reactor spins,
/// and as soon as a signal wakes it when it sleeps (interrupt and adaptive mode), so an
/// idle target sleeps undisturbed and a busy one pays no syscall per pass.
fn watch_signals(app: &AppHandle, signals: SignalFd) {
    let sent = app.app_thread().send_blocking(move |ctx| {
        use std::os::fd::AsFd;
        let signals = std::rc::Rc::new(signals);
        let reader = signals.clone();
        // Runs for as long as the app thread does.
        match ctx.fd_poller("signals", signals.as_fd(), SIGNAL_POLL_US, move |ctx| on_signal(ctx, &reader)) {
            Ok(poller) => {
                poller.detach();
            }
            Err(err) => {
                log_error!("cannot watch the signalfd: {err}; falling back to a timer");
                ctx.poller("signals", SIGNAL_POLL_US, move |ctx| on_signal(ctx, &signals)).detach();
            }
        }
    });
    if sent.is_err() {
        log_error!("the app thread exited before signals could be watched");
    }
}

/// Takes every pending signal in one go. The kernel hands out the lowest-numbered
/// pending signal first, so a SIGUSR1 sent before a SIGHUP would otherwise still be
/// unread when the stop begins, and its state report lost.
fn on_signal(ctx: &mut peerless_core::reactor::ThreadCtx, signals: &SignalFd) -> PollStatus {
    let mut stop_signal = None;
    let mut any = false;
    while let Ok(Some(info)) = signals.read_signal() {
        any = true;
        if info.ssi_signo == Signal::SIGUSR1 as u32 {
            log_state(ctx);
        } else {
            stop_signal.get_or_insert(info.ssi_signo);
        }
    }
    if let Some(signo) = stop_signal {
        log_notice!("received signal {signo}; stopping");
        ctx.app().stop();
    }
    if any {
        PollStatus::Busy
    } else {
        PollStatus::Idle
    }
}

/// SIGUSR1: a one-line account of each reactor, for an operator without an RPC client.
fn log_state(ctx: &mut peerless_core::reactor::ThreadCtx) {
    let app = ctx.app();
    for reactor in app.reactor_stats() {
        log_notice!(
            "reactor {}: {} mode, busy {} ms, idle {} ms (polling {} ms, asleep {} ms, {} wake-ups), poll window {} us",
            reactor.core,
            reactor.mode,
            reactor.busy_ns / 1_000_000,
            reactor.idle_ns / 1_000_000,
            reactor.idle_poll_ns / 1_000_000,
            reactor.sleep_ns / 1_000_000,
            reactor.wakeups,
            reactor.poll_window_ns / 1_000,
        );
    }
    log_notice!("{} lightweight thread(s), state {:?}", app.threads().len(), app.state());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_or_refused_with_the_numbers() {
        let limit = raise_open_files_limit(WANTED_OPEN_FILES, 0).unwrap();
        assert_eq!(open_files_limit(), Some(limit));
        assert_eq!(raise_open_files_limit(0, 0).unwrap(), limit, "never lowered");
        let err = raise_open_files_limit(u64::MAX, u64::MAX).unwrap_err().to_string();
        assert!(err.contains(&format!("the open files limit is {limit}")) && err.contains("needs at least"), "{err}");
    }

    /// The mode and window (floor, cap in us) that `flags` resolve to, or the error.
    fn check(flags: ModeFlags, expected: Result<(ReactorMode, u32, u32), &str>) {
        let resolved = flags.resolve().map(|(mode, window)| (mode, window.min_us, window.max_us));
        match (resolved, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{flags:?}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{flags:?}: {got}"),
            (got, want) => panic!("{flags:?}: got {got:?}, expected {want:?}"),
        }
    }

    fn window(max_us: Option<u32>, min_us: Option<u32>) -> ModeFlags {
        ModeFlags { poll_window_us: max_us, poll_window_min_us: min_us, ..ModeFlags::default() }
    }

    #[test]
    fn mode_flags_resolve_to_a_mode_and_a_window() {
        check(ModeFlags::default(), Ok((ReactorMode::Adaptive, 5, 50)));
        check(ModeFlags { poll_mode: true, ..ModeFlags::default() }, Ok((ReactorMode::Poll, 0, 0)));
        check(ModeFlags { interrupt_mode: true, ..ModeFlags::default() }, Ok((ReactorMode::Interrupt, 0, 0)));
        check(window(Some(200), None), Ok((ReactorMode::Adaptive, 5, 200)));
        check(window(None, Some(0)), Ok((ReactorMode::Adaptive, 0, 50)));
        // A cap below the default floor takes the floor down with it.
        check(window(Some(3), None), Ok((ReactorMode::Adaptive, 3, 3)));
        // No window at all is interrupt mode.
        check(window(Some(0), None), Ok((ReactorMode::Interrupt, 0, 0)));
    }

    #[test]
    fn mode_flags_that_contradict_each_other_are_refused() {
        let both = ModeFlags { poll_mode: true, interrupt_mode: true, ..ModeFlags::default() };
        check(both, Err("exclude each other"));
        let poll_with_window = ModeFlags { poll_mode: true, ..window(Some(20), None) };
        check(poll_with_window, Err("--poll-window-us sets adaptive mode's poll window; it has none with --poll-mode"));
        let interrupt_with_floor = ModeFlags { interrupt_mode: true, ..window(None, Some(1)) };
        check(interrupt_with_floor, Err("--poll-window-min-us sets"));
        check(window(Some(50), Some(60)), Err("floor 60 us exceeds its cap 50 us"));
        check(window(Some(0), Some(1)), Err("floor 1 us exceeds its cap 0 us"));
    }
}
