//! Reactor benchmarks: one-way message cost between two reactors, empty poll
//! loop cost, idle CPU of peerless-tgt in poll, interrupt and adaptive mode, and the
//! throughput cost of interrupt mode under a message flood. Prints figures and ratios.
//!
//! Run: bench/reactor.sh (builds in release first).
#![forbid(unsafe_code)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use peerless_bench::{interleave, median, process_cpu_seconds, sibling_binary};
use peerless_core::reactor::{App, AppOptions, CoreMask, PollStatus, ThreadCtx, ThreadHandle};

const FLOOD_MESSAGES: u64 = 2_000_000;
const PING_PONGS: u64 = 200_000;
const ROUNDS: usize = 3;

fn start(interrupt_mode: bool) -> (App, ThreadHandle, ThreadHandle) {
    let options = AppOptions { cpumask: CoreMask::parse("0x3").unwrap(), interrupt_mode, ..AppOptions::default() };
    let app = App::start(options).expect("start reactors on cores 0 and 1");
    let sender = app.handle().spawn_thread("sender", Some(0)).unwrap();
    let receiver = app.handle().spawn_thread("receiver", Some(1)).unwrap();
    (app, sender, receiver)
}

fn stop(app: App) {
    app.handle().stop();
    app.wait();
}

/// Pipelined one-way cost: the sender pushes FLOOD_MESSAGES zero-capture messages to the
/// receiver's queue (parking in its outbox on back-pressure); ns per delivered message.
fn flood_ns_per_message(interrupt_mode: bool) -> f64 {
    let (app, sender, receiver) = start(interrupt_mode);
    static RECEIVED: AtomicU64 = AtomicU64::new(0);
    RECEIVED.store(0, Ordering::SeqCst);
    let (done_tx, done_rx) = mpsc::channel();
    let started = Instant::now();
    sender
        .send(move |ctx: &mut ThreadCtx| {
            let mut left = FLOOD_MESSAGES;
            let done_tx = Some(done_tx);
            let receiver = receiver.clone();
            // Send in slices from a poller so the sender keeps running its loop.
            let mut done_tx = done_tx;
            ctx.poller("flood", 0, move |ctx| {
                let batch = left.min(1024);
                for _ in 0..batch {
                    let _ = ctx.send_to(&receiver, |_| {
                        RECEIVED.fetch_add(1, Ordering::Relaxed);
                    });
                }
                left -= batch;
                if left == 0 {
                    if let Some(tx) = done_tx.take() {
                        let _ = ctx.send_to(&receiver, move |_| {
                            let _ = tx.send(());
                        });
                    }
                    return PollStatus::Done;
                }
                PollStatus::from_work(batch > 0)
            })
            .detach();
        })
        .unwrap();
    done_rx.recv_timeout(Duration::from_secs(120)).expect("flood finished");
    let elapsed = started.elapsed();
    assert_eq!(RECEIVED.load(Ordering::SeqCst), FLOOD_MESSAGES);
    stop(app);
    elapsed.as_nanos() as f64 / FLOOD_MESSAGES as f64
}

/// Unpipelined latency: a message bounces between the two reactors; half a round trip.
fn ping_pong_one_way_ns() -> f64 {
    let (app, a, b) = start(false);
    let (done_tx, done_rx) = mpsc::channel();
    let started = Instant::now();
    fn bounce(ctx: &mut ThreadCtx, left: u64, me: ThreadHandle, other: ThreadHandle, done: mpsc::Sender<()>) {
        if left == 0 {
            let _ = done.send(());
            return;
        }
        let _ = ctx.send_to(&other.clone(), move |ctx| bounce(ctx, left - 1, other, me, done));
    }
    let (first, second) = (a.clone(), b.clone());
    a.send(move |ctx| bounce(ctx, PING_PONGS * 2, first, second, done_tx)).unwrap();
    done_rx.recv_timeout(Duration::from_secs(120)).expect("ping-pong finished");
    let elapsed = started.elapsed();
    stop(app);
    elapsed.as_nanos() as f64 / (PING_PONGS * 2) as f64
}

/// One thread, one active poller that only counts; ns per reactor iteration.
fn empty_poll_ns() -> f64 {
    let options = AppOptions { cpumask: CoreMask::single(1), ..AppOptions::default() };
    let app = App::start(options).unwrap();
    let iterations = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let (counter, flag) = (iterations.clone(), running.clone());
    app.handle()
        .app_thread()
        .send(move |ctx| {
            let mut local = 0u64;
            ctx.poller("count", 0, move |_| {
                local += 1;
                if local.is_multiple_of(1024) && flag.load(Ordering::Relaxed) {
                    counter.store(local, Ordering::Relaxed);
                }
                PollStatus::Idle
            })
            .detach();
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (start_count, started) = (iterations.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_millis(500));
    let (end_count, elapsed) = (iterations.load(Ordering::Relaxed), started.elapsed());
    running.store(false, Ordering::Relaxed);
    stop(app);
    elapsed.as_nanos() as f64 / (end_count - start_count).max(1) as f64
}

/// CPU used by an idle peerless-tgt started with `mode_flags` over `seconds`, as a
/// percentage of one core.
fn idle_cpu_percent(mode_flags: &[&str], seconds: u64) -> Option<f64> {
    let binary = sibling_binary("peerless-tgt");
    if !binary.exists() {
        eprintln!("{} not built; run bench/reactor.sh", binary.display());
        return None;
    }
    let socket = std::env::temp_dir().join(format!("peerless-bench-idle-{}.sock", std::process::id()));
    let mut command = Command::new(&binary);
    command.arg("-r").arg(&socket).args(mode_flags).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = command.spawn().ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let before = process_cpu_seconds(child.id())?;
    std::thread::sleep(Duration::from_secs(seconds));
    let after = process_cpu_seconds(child.id())?;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    Some((after - before) / seconds as f64 * 100.0)
}

fn main() {
    println!("peerless reactor benchmarks (2 reactors on cores 0 and 1 unless noted)\n");

    let one_way = median(&(0..ROUNDS).map(|_| ping_pong_one_way_ns()).collect::<Vec<_>>());
    println!("message one-way latency (ping-pong / 2), poll mode:   {one_way:8.1} ns");

    let (poll, interrupt) = interleave(ROUNDS, || flood_ns_per_message(false), || flood_ns_per_message(true));
    let (poll, interrupt) = (median(&poll), median(&interrupt));
    println!("message cost, pipelined flood, poll mode:             {poll:8.1} ns/msg ({:.1} M msg/s)", 1e3 / poll);
    println!(
        "message cost, pipelined flood, interrupt mode:        {interrupt:8.1} ns/msg ({:.1} M msg/s)",
        1e3 / interrupt
    );
    println!("interrupt/poll cost ratio under a flood:              {:8.2}x", interrupt / poll);

    let empty = median(&(0..ROUNDS).map(|_| empty_poll_ns()).collect::<Vec<_>>());
    println!("empty poll loop (1 thread, 1 active poller):          {empty:8.1} ns/iteration");

    let seconds = 5;
    // Adaptive mode is the target's default: it takes no flag.
    for (mode, flags) in
        [("--poll-mode", &["--poll-mode"][..]), ("--interrupt-mode", &["--interrupt-mode"]), ("adaptive", &[])]
    {
        match idle_cpu_percent(flags, seconds) {
            Some(cpu) => println!("idle peerless-tgt CPU over {seconds} s, {mode:<17} {cpu:8.2} % of a core"),
            None => println!("idle CPU: skipped (peerless-tgt not found next to this binary)"),
        }
    }
}
