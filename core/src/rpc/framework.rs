//! Framework, thread and log methods (SPDK's names).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::RpcError;
use super::registry::{decode_params, expect_no_params, CallContext, Registry, Responder, StateMask};
use crate::log::{self, Level};
use crate::reactor::{AppState, PollStatus, PollerState, ThreadCtx};

/// The SPDK release whose RPC interface this server matches.
pub const SPDK_COMPAT_MAJOR: u32 = 25;
pub const SPDK_COMPAT_MINOR: u32 = 5;
/// Thread and reactor times are kept in nanoseconds, so a tick is one.
pub const TICK_RATE_HZ: u64 = 1_000_000_000;
const WAIT_INIT_POLL_US: u64 = 1_000;

pub fn register(registry: &mut Registry) {
    registry.inline_method("spdk_get_version", StateMask::ANY, |_, params| {
        expect_no_params("spdk_get_version", &params)?;
        Ok(version())
    });
    registry.inline_method("rpc_get_methods", StateMask::ANY, rpc_get_methods);
    registry.method_without_params("framework_wait_init", StateMask::ANY, framework_wait_init);
    registry.method_without_params("framework_start_init", StateMask::STARTUP, |ctx, responder| {
        if ctx.app().state() != AppState::Startup {
            let message = "framework_start_init was already called; initialization is in progress";
            responder.err(RpcError::new(super::error::INVALID_STATE, message));
            return;
        }
        ctx.app().init_subsystems(ctx, move |_, result| match result {
            Ok(()) => responder.ok_true(),
            Err(why) => responder.err(RpcError::internal(why)),
        });
    });
    registry.method_without_params("framework_get_subsystems", StateMask::ANY, |ctx, responder| {
        let subsystems: Vec<Value> = ctx
            .app()
            .subsystems()
            .iter()
            .map(|subsystem| json!({"subsystem": subsystem.name(), "depends_on": subsystem.depends_on()}))
            .collect();
        responder.ok(subsystems);
    });
    registry.method("framework_get_config", StateMask::ANY, framework_get_config);
    registry.method_without_params("framework_get_reactors", StateMask::RUNTIME, framework_get_reactors);
    registry.method_without_params("thread_get_stats", StateMask::RUNTIME, thread_get_stats);
    registry.method_without_params("thread_get_pollers", StateMask::RUNTIME, thread_get_pollers);
    registry.method("spdk_kill_instance", StateMask::ANY, spdk_kill_instance);
    register_log_methods(registry);
}

pub fn version() -> Value {
    let suffix = format!("-peerless-{}", env!("CARGO_PKG_VERSION"));
    json!({
        "version": format!("SPDK v{SPDK_COMPAT_MAJOR}.{SPDK_COMPAT_MINOR:02}{suffix}"),
        "fields": {"major": SPDK_COMPAT_MAJOR, "minor": SPDK_COMPAT_MINOR, "patch": 0, "suffix": suffix, "commit": ""},
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

fn rpc_get_methods(call: &CallContext<'_>, params: Option<Value>) -> Result<Value, RpcError> {
    let params: GetMethods = decode_params(params)?;
    // No aliases are registered (SPDK 26 defines none), so include_aliases changes nothing.
    let _ = params.include_aliases;
    let state = params.current.then(|| call.app.state());
    Ok(json!(call.registry.names(state)))
}

fn framework_wait_init(ctx: &mut ThreadCtx, responder: Responder) {
    if ctx.app().is_ready() {
        responder.ok_true();
        return;
    }
    let mut responder = Some(responder);
    // Outlives this call: it answers, then finishes itself.
    ctx.poller("rpc_wait_init", WAIT_INIT_POLL_US, move |ctx| {
        let (ready, state) = (ctx.app().is_ready(), ctx.app().state());
        if !ready && state != AppState::ShuttingDown {
            return PollStatus::Idle;
        }
        if let Some(responder) = responder.take() {
            if ready {
                responder.ok_true();
            } else {
                responder.err(RpcError::internal("the target shut down before initialization finished"));
            }
        }
        PollStatus::Done
    })
    .detach();
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    #[serde(default)]
    with_batches: bool,
}

fn framework_get_config(ctx: &mut ThreadCtx, params: GetConfig, responder: Responder) {
    let _ = params.with_batches;
    let subsystems = ctx.app().subsystems();
    match subsystems.iter().find(|subsystem| subsystem.name() == params.name) {
        Some(subsystem) => {
            let config = subsystem.config(ctx);
            responder.ok(config)
        }
        None => {
            let known: Vec<&str> = subsystems.iter().map(|subsystem| subsystem.name()).collect();
            responder.err(RpcError::invalid_params(format!(
                "Subsystem '{}' not found; known: {}",
                params.name,
                known.join(", ")
            )))
        }
    }
}

/// What one thread reports about itself, gathered by visiting it.
#[derive(Clone)]
struct ThreadReport {
    id: u64,
    name: String,
    core: u32,
    busy: u64,
    idle: u64,
    pollers: Vec<crate::reactor::PollerStat>,
}

/// Visits every thread and hands the reports, in thread-id order, to `finish` on the
/// app thread.
fn gather_threads(ctx: &mut ThreadCtx, finish: impl FnOnce(&mut ThreadCtx, Vec<ThreadReport>) + Send + 'static) {
    let reports = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let collected = reports.clone();
    ctx.app().for_each_thread(
        ctx,
        move |ctx| {
            let stats = ctx.stats();
            collected.lock().push(ThreadReport {
                id: ctx.id().0,
                name: ctx.name().to_string(),
                core: ctx.core(),
                busy: stats.busy_ns,
                idle: stats.idle_ns,
                pollers: ctx.poller_stats(),
            });
        },
        move |ctx| {
            let mut reports = std::mem::take(&mut *reports.lock());
            reports.sort_by_key(|report| report.id);
            finish(ctx, reports);
        },
    );
}

fn cpumask_of(core: u32) -> String {
    format!("{:x}", 1u128 << core)
}

fn framework_get_reactors(ctx: &mut ThreadCtx, responder: Responder) {
    gather_threads(ctx, move |ctx, threads| {
        let reactors: Vec<Value> = ctx
            .app()
            .reactor_stats()
            .into_iter()
            .map(|reactor| {
                let (usr, sys) = task_cpu_ticks(reactor.os_tid);
                let lw_threads: Vec<Value> = threads
                    .iter()
                    .filter(|thread| thread.core == reactor.core)
                    .map(|thread| json!({"name": thread.name, "id": thread.id, "cpumask": cpumask_of(thread.core), "elapsed": thread.busy + thread.idle}))
                    .collect();
                // SPDK's fields first; then where idle time went (idle = idle_poll + sleep),
                // so an operator can see what spinning costs in each mode; then the heap
                // allocations made on the reactor's thread (null where they are not
                // counted), which stay flat while I/O runs in steady state.
                json!({
                    "lcore": reactor.core, "tid": reactor.os_tid, "busy": reactor.busy_ns, "idle": reactor.idle_ns,
                    "in_interrupt": reactor.in_interrupt, "irq": 0, "sys": sys, "usr": usr, "lw_threads": lw_threads,
                    "mode": reactor.mode.as_str(), "idle_poll": reactor.idle_poll_ns, "sleep": reactor.sleep_ns,
                    "wakeups": reactor.wakeups, "poll_window_us": reactor.poll_window_ns as f64 / 1_000.0,
                    "allocations": reactor.allocations,
                })
            })
            .collect();
        responder.ok(json!({"tick_rate": TICK_RATE_HZ, "pid": std::process::id(), "reactors": reactors}));
    });
}

/// User and system CPU time of one OS thread, in clock ticks, from /proc.
fn task_cpu_ticks(tid: i32) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else { return (0, 0) };
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return (0, 0) };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |index: usize| fields.get(index).and_then(|text| text.parse().ok()).unwrap_or(0);
    (field(11), field(12))
}

fn thread_get_stats(ctx: &mut ThreadCtx, responder: Responder) {
    gather_threads(ctx, move |_, threads| {
        let threads: Vec<Value> = threads
            .iter()
            .map(|thread| {
                let count = |wanted: &dyn Fn(&crate::reactor::PollerStat) -> bool| {
                    thread.pollers.iter().filter(|stat| wanted(stat)).count()
                };
                json!({
                    "name": thread.name, "id": thread.id, "cpumask": cpumask_of(thread.core),
                    "busy": thread.busy, "idle": thread.idle,
                    "active_pollers_count": count(&|stat| stat.state == PollerState::Running && stat.period_us == 0),
                    "timed_pollers_count": count(&|stat| stat.state == PollerState::Running && stat.period_us > 0),
                    "paused_pollers_count": count(&|stat| stat.state == PollerState::Paused),
                })
            })
            .collect();
        responder.ok(json!({"tick_rate": TICK_RATE_HZ, "threads": threads}));
    });
}

fn thread_get_pollers(ctx: &mut ThreadCtx, responder: Responder) {
    gather_threads(ctx, move |_, threads| {
        let threads: Vec<Value> = threads
            .iter()
            .map(|thread| {
                let list = |wanted: &dyn Fn(&crate::reactor::PollerStat) -> bool| -> Vec<Value> {
                    thread
                        .pollers
                        .iter()
                        .filter(|stat| wanted(stat))
                        .map(|stat| {
                            let state = if stat.state == PollerState::Running { "waiting" } else { "paused" };
                            json!({"name": stat.name, "id": stat.id, "state": state, "run_count": stat.run_count,
                                   "busy_count": stat.busy_count, "period_ticks": stat.period_us * 1000})
                        })
                        .collect()
                };
                json!({
                    "name": thread.name, "id": thread.id,
                    "active_pollers": list(&|stat| stat.state == PollerState::Running && stat.period_us == 0),
                    "timed_pollers": list(&|stat| stat.state == PollerState::Running && stat.period_us > 0),
                    "paused_pollers": list(&|stat| stat.state == PollerState::Paused),
                })
            })
            .collect();
        responder.ok(json!({"tick_rate": TICK_RATE_HZ, "threads": threads}));
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillInstance {
    sig_name: String,
}

fn spdk_kill_instance(ctx: &mut ThreadCtx, params: KillInstance, responder: Responder) {
    use nix::sys::signal::Signal;
    let signal = match params.sig_name.trim_start_matches("SIG") {
        "INT" => Signal::SIGINT,
        "TERM" => Signal::SIGTERM,
        "QUIT" => Signal::SIGQUIT,
        "HUP" => Signal::SIGHUP,
        "KILL" => Signal::SIGKILL,
        "USR1" => Signal::SIGUSR1,
        _ => {
            let message = format!(
                "Unsupported signal '{}': use SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGKILL or SIGUSR1",
                params.sig_name
            );
            responder.err(RpcError::invalid_params(message));
            return;
        }
    };
    responder.ok_true();
    match signal {
        // Every terminating signal but SIGKILL takes the clean stop path directly, so the
        // outcome does not depend on how the embedding process handles signals.
        Signal::SIGINT | Signal::SIGTERM | Signal::SIGQUIT | Signal::SIGHUP => ctx.app().stop(),
        // SIGUSR1 goes to the process's own handler (peerless-tgt logs its state);
        // SIGKILL is asked for by name and gets no cleanup, as anywhere.
        other => {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), other);
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagParams {
    flag: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelParams {
    level: String,
}

fn parse_level(text: &str) -> Result<Level, RpcError> {
    Level::parse(text).ok_or_else(|| {
        RpcError::invalid_params(format!("Unknown log level '{text}': use ERROR, WARNING, NOTICE, INFO or DEBUG"))
    })
}

fn register_log_methods(registry: &mut Registry) {
    for (name, enabled) in [("log_set_flag", true), ("log_clear_flag", false)] {
        registry.inline_method(name, StateMask::ANY, move |_, params| {
            let params: FlagParams = decode_params(params)?;
            log::set_flag(&params.flag, enabled).map_err(|err| RpcError::invalid_params(err.to_string()))?;
            Ok(Value::Bool(true))
        });
    }
    registry.inline_method("log_get_flags", StateMask::ANY, |_, params| {
        expect_no_params("log_get_flags", &params)?;
        let flags: Map<String, Value> =
            log::flag_states().into_iter().map(|(name, on)| (name.to_string(), Value::Bool(on))).collect();
        Ok(Value::Object(flags))
    });
    registry.inline_method("log_set_level", StateMask::ANY, |_, params| {
        let params: LevelParams = decode_params(params)?;
        log::set_level(parse_level(&params.level)?);
        Ok(Value::Bool(true))
    });
    registry.inline_method("log_get_level", StateMask::ANY, |_, params| {
        expect_no_params("log_get_level", &params)?;
        Ok(json!(log::level().as_str()))
    });
    registry.inline_method("log_set_print_level", StateMask::ANY, |_, params| {
        let params: LevelParams = decode_params(params)?;
        log::set_print_level(parse_level(&params.level)?);
        Ok(Value::Bool(true))
    });
    registry.inline_method("log_get_print_level", StateMask::ANY, |_, params| {
        expect_no_params("log_get_print_level", &params)?;
        Ok(json!(log::print_level().as_str()))
    });
}
