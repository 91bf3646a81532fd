//! Behaviour of the threading model, driven through real reactors. Most tests run in
//! interrupt mode so a parallel test run does not spin both cores of a small machine.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::*;

pub(super) const WAIT: Duration = Duration::from_secs(10);

pub(super) fn start(mask: &str, interrupt_mode: bool) -> App {
    start_with_queue(mask, interrupt_mode, DEFAULT_MSG_QUEUE_CAPACITY)
}

fn start_with_queue(mask: &str, interrupt_mode: bool, msg_queue_capacity: usize) -> App {
    let options = AppOptions {
        name: "test".into(),
        cpumask: CoreMask::parse(mask).unwrap(),
        interrupt_mode,
        msg_queue_capacity,
        ..AppOptions::default()
    };
    App::start(options).unwrap()
}

/// An adaptive-mode app: reactors spin for a window within `poll_window`, then sleep.
pub(super) fn start_adaptive(mask: &str, poll_window: PollWindow) -> App {
    let options = AppOptions {
        name: "test".into(),
        cpumask: CoreMask::parse(mask).unwrap(),
        interrupt_mode: true,
        poll_window,
        ..AppOptions::default()
    };
    App::start(options).unwrap()
}

const MODES: [ReactorMode; 3] = [ReactorMode::Poll, ReactorMode::Interrupt, ReactorMode::Adaptive];

/// An app in `mode`; adaptive mode with the target's default window.
pub(super) fn start_in(mask: &str, mode: ReactorMode) -> App {
    match mode {
        ReactorMode::Poll => start(mask, false),
        ReactorMode::Interrupt => start(mask, true),
        ReactorMode::Adaptive => start_adaptive(mask, PollWindow::DEFAULT),
    }
}

/// Waits (bounded by `WAIT`) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `work` on `thread` and waits for its result.
pub(super) fn run_on<R: Send + 'static>(
    thread: &ThreadHandle,
    work: impl FnOnce(&mut ThreadCtx) -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    thread
        .send_blocking(move |ctx| {
            let _ = tx.send(work(ctx));
        })
        .unwrap();
    rx.recv_timeout(WAIT).expect("thread did not answer")
}

pub(super) fn stop(app: App) {
    app.handle().stop();
    app.wait();
}

#[test]
fn messages_keep_per_sender_order() {
    let app = start("0x3", true);
    let receiver = app.handle().spawn_thread("receiver", Some(1)).unwrap();
    let seen: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let senders: Vec<_> = (0..2)
        .map(|sender| {
            let receiver = receiver.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for seq in 0..5_000u64 {
                    let seen = seen.clone();
                    receiver.send_blocking(move |_| seen.lock().push((sender, seq))).unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    run_on(&receiver, |_| ());
    let seen = seen.lock();
    assert_eq!(seen.len(), 10_000);
    for sender in 0..2 {
        let order: Vec<u64> = seen.iter().filter(|(from, _)| *from == sender).map(|(_, seq)| *seq).collect();
        assert_eq!(order, (0..5_000).collect::<Vec<_>>(), "sender {sender} out of order");
    }
    stop(app);
}

#[test]
fn a_full_queue_pushes_back_and_loses_nothing() {
    let app = start_with_queue("0x3", true, 4);
    let slow = app.handle().spawn_thread("slow", Some(1)).unwrap();
    let gate = Arc::new(std::sync::Barrier::new(2));
    let blocker = gate.clone();
    // Hold the receiver inside a message so its queue fills up.
    slow.send(move |_| {
        blocker.wait();
    })
    .unwrap();
    let delivered = Arc::new(AtomicUsize::new(0));
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..100 {
        let delivered = delivered.clone();
        match slow.try_send(Box::new(move |_| {
            delivered.fetch_add(1, Ordering::SeqCst);
        })) {
            Ok(()) => accepted += 1,
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    assert!(matches!(refused, Some(SendError::Full(_))), "a bounded queue must push back");
    assert!(accepted <= 4, "accepted {accepted} into a queue of 4");
    // The refused message came back intact and can be sent once there is room.
    let retry = refused.unwrap().into_msg();
    gate.wait();
    let mut retry = Some(retry);
    while let Some(msg) = retry.take() {
        if let Err(err) = slow.try_send(msg) {
            retry = Some(err.into_msg());
            std::thread::yield_now();
        }
    }
    run_on(&slow, |_| ());
    assert_eq!(delivered.load(Ordering::SeqCst), accepted + 1);
    stop(app);
}

#[test]
fn thread_to_thread_sends_park_in_the_outbox_and_arrive_in_order() {
    let app = start_with_queue("0x3", true, 8);
    let receiver = app.handle().spawn_thread("receiver", Some(1)).unwrap();
    let sender = app.handle().spawn_thread("sender", Some(0)).unwrap();
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen_by_receiver = seen.clone();
    let target = receiver.clone();
    run_on(&sender, move |ctx| {
        for seq in 0..2_000u32 {
            let seen = seen_by_receiver.clone();
            ctx.send_to(&target, move |_| seen.lock().push(seq)).unwrap();
        }
    });
    let deadline = Instant::now() + WAIT;
    while seen.lock().len() < 2_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*seen.lock(), (0..2_000).collect::<Vec<_>>());
    stop(app);
}

#[test]
fn timed_pollers_keep_their_cadence() {
    for mode in MODES {
        let app = start_in("0x1", mode);
        let fired = Arc::new(AtomicU64::new(0));
        let counter = fired.clone();
        let thread = app.handle().app_thread();
        run_on(&thread, move |ctx| {
            ctx.register_timed_poller("tick", 10_000, move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
                PollStatus::Busy
            });
        });
        std::thread::sleep(Duration::from_millis(300));
        let count = fired.load(Ordering::Relaxed);
        // 30 periods elapse; allow wide bounds for a loaded machine.
        assert!((10..=40).contains(&count), "10 ms poller fired {count} times in 300 ms ({mode} mode)");
        stop(app);
    }
}

#[test]
fn pollers_pause_resume_and_unregister_from_inside_and_outside() {
    let app = start("0x1", false);
    let thread = app.handle().app_thread();
    let runs = Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let id = run_on(&thread, move |ctx| {
        ctx.register_poller("counter", move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            PollStatus::Idle
        })
    });
    std::thread::sleep(Duration::from_millis(20));
    thread.pause_poller(id).unwrap();
    assert_eq!(run_on(&thread, move |ctx| ctx.poller_state(id)), Some(PollerState::Paused));
    let paused_at = runs.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(runs.load(Ordering::Relaxed), paused_at, "a paused poller ran");
    thread.resume_poller(id).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(runs.load(Ordering::Relaxed) > paused_at, "a resumed poller did not run");

    // A poller that pauses itself after three runs, and one that unregisters itself.
    let self_paused = Arc::new(AtomicU64::new(0));
    let self_removed = Arc::new(AtomicU64::new(0));
    let (paused_counter, removed_counter) = (self_paused.clone(), self_removed.clone());
    let (pause_id, remove_id) = run_on(&thread, move |ctx| {
        let my_id: Arc<Mutex<Option<PollerId>>> = Arc::default();
        let my_id_inner = my_id.clone();
        let pause_id = ctx.register_poller("pauses-itself", move |ctx| {
            if paused_counter.fetch_add(1, Ordering::Relaxed) == 2 {
                let id = my_id_inner.lock().unwrap();
                assert!(ctx.pause_poller(id));
            }
            PollStatus::Busy
        });
        *my_id.lock() = Some(pause_id);
        let remove_slot: Arc<Mutex<Option<PollerId>>> = Arc::default();
        let remove_slot_inner = remove_slot.clone();
        let remove_id = ctx.register_timed_poller("removes-itself", 1_000, move |ctx| {
            removed_counter.fetch_add(1, Ordering::Relaxed);
            let id = remove_slot_inner.lock().unwrap();
            assert!(ctx.unregister_poller(id));
            PollStatus::Busy
        });
        *remove_slot.lock() = Some(remove_id);
        (pause_id, remove_id)
    });
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(self_paused.load(Ordering::Relaxed), 3);
    assert_eq!(self_removed.load(Ordering::Relaxed), 1);
    let (pause_state, remove_state) =
        run_on(&thread, move |ctx| (ctx.poller_state(pause_id), ctx.poller_state(remove_id)));
    assert_eq!(pause_state, Some(PollerState::Paused));
    assert_eq!(remove_state, None, "an unregistered poller is gone");

    thread.unregister_poller(id).unwrap();
    let stats = run_on(&thread, |ctx| ctx.poller_stats());
    assert!(stats.iter().all(|stat| stat.name != "counter"));
    let paused = stats.iter().find(|stat| stat.name == "pauses-itself").unwrap();
    assert_eq!((paused.run_count, paused.busy_count), (3, 3));
    stop(app);
}

#[test]
fn io_channels_live_and_die_on_their_own_thread() {
    let app = start("0x3", true);
    let created: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
    let destroyed: Arc<Mutex<Vec<(ThreadId, std::thread::ThreadId)>>> = Arc::default();
    struct Channel {
        owner: ThreadId,
        os_thread: std::thread::ThreadId,
        destroyed: Arc<Mutex<Vec<(ThreadId, std::thread::ThreadId)>>>,
    }
    impl Drop for Channel {
        fn drop(&mut self) {
            assert_eq!(std::thread::current().id(), self.os_thread, "channel dropped on a foreign OS thread");
            self.destroyed.lock().push((self.owner, self.os_thread));
        }
    }
    let (created_in, destroyed_in) = (created.clone(), destroyed.clone());
    let device = IoDevice::new("test_dev", move |ctx| {
        created_in.lock().push(ctx.id());
        Channel { owner: ctx.id(), os_thread: std::thread::current().id(), destroyed: destroyed_in.clone() }
    });
    let threads: Vec<_> = (0..2).map(|core| app.handle().spawn_thread("worker", Some(core)).unwrap()).collect();
    for thread in &threads {
        let device = device.clone();
        run_on(thread, move |ctx| {
            let first = ctx.get_io_channel(&device);
            let second = ctx.get_io_channel(&device);
            assert_eq!(first.ref_count(), 2, "a second get shares the channel");
            assert_eq!(first.borrow().owner, ctx.id());
            drop(second);
            assert_eq!(ctx.io_channel_count(), 1);
            // Keep one reference alive in a poller until the thread is told to drop it.
            let mut held = Some(first);
            ctx.register_poller("holder", move |ctx| {
                if ctx.is_exiting() {
                    held.take();
                }
                PollStatus::Idle
            });
        });
    }
    assert_eq!(created.lock().len(), 2, "one channel per thread");
    assert_eq!(device.holders().len(), 2);

    // for_each_channel visits both holders and completes on the caller.
    let visited = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let counter = visited.clone();
    let walker = device.clone();
    let caller = threads[0].clone();
    caller
        .send(move |ctx| {
            let caller_id = ctx.id();
            walker.for_each_channel(
                ctx,
                move |ctx, channel| {
                    assert_eq!(channel.owner, ctx.id());
                    counter.fetch_add(1, Ordering::SeqCst);
                },
                move |ctx| done_tx.send(ctx.id() == caller_id).unwrap(),
            );
        })
        .unwrap();
    assert!(done_rx.recv_timeout(WAIT).unwrap(), "for_each_channel must complete on the caller's thread");
    assert_eq!(visited.load(Ordering::SeqCst), 2);

    stop(app);
    let destroyed = destroyed.lock();
    assert_eq!(destroyed.len(), 2, "every channel destroyed at thread exit");
    assert!(device.holders().is_empty());
}

#[test]
fn for_each_thread_visits_all_and_completes_on_the_caller() {
    let app = start("0x3", true);
    for core in [0, 1, 1] {
        app.handle().spawn_thread("worker", Some(core)).unwrap();
    }
    let visited: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
    let visits = visited.clone();
    let (done_tx, done_rx) = mpsc::channel();
    let app_thread = app.handle().app_thread();
    app_thread
        .send(move |ctx| {
            let caller = ctx.id();
            ctx.app().for_each_thread(
                ctx,
                move |ctx| visits.lock().push(ctx.id()),
                move |ctx| done_tx.send(ctx.id() == caller).unwrap(),
            );
        })
        .unwrap();
    assert!(done_rx.recv_timeout(WAIT).unwrap());
    let mut expected: Vec<ThreadId> = app.handle().threads().iter().map(|thread| thread.id()).collect();
    let mut seen = visited.lock().clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);
    stop(app);
}

/// Counts the live instances of a payload so a test can prove every message ran or
/// was dropped: nothing leaks.
pub(super) struct Tracked(Arc<AtomicU64>);

impl Tracked {
    pub(super) fn new(live: &Arc<AtomicU64>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Tracked(live.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn shutdown_with_messages_in_flight_finishes_and_leaks_nothing() {
    let app = start("0x3", false);
    let live = Arc::new(AtomicU64::new(0));
    let ran = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4).map(|index| app.handle().spawn_thread("worker", Some(index % 2)).unwrap()).collect();
    for worker in &workers {
        let live_in = live.clone();
        run_on(worker, move |ctx| {
            let tracked = Tracked::new(&live_in);
            ctx.register_poller("holds-state", move |_| {
                let _keep = &tracked;
                PollStatus::Idle
            });
        });
    }
    for round in 0..2_000 {
        let worker = &workers[round % workers.len()];
        let payload = Tracked::new(&live);
        let ran = ran.clone();
        let next = workers[(round + 1) % workers.len()].clone();
        let live_for_chain = live.clone();
        let _ = worker.send(move |ctx| {
            let _payload = payload;
            ran.fetch_add(1, Ordering::SeqCst);
            // Messages that spawn messages while the shutdown is under way.
            let chained = Tracked::new(&live_for_chain);
            let _ = ctx.send_to(&next, move |_| drop(chained));
        });
        if round == 1_000 {
            app.handle().stop();
        }
    }
    app.wait();
    assert!(ran.load(Ordering::SeqCst) > 0);
    for worker in &workers {
        assert!(worker.has_exited());
    }
    // Every payload either ran or was dropped with its queue: nothing leaked.
    drop(workers);
    assert_eq!(live.load(Ordering::SeqCst), 0, "payloads leaked at shutdown");
}

#[test]
fn subsystems_init_in_order_and_finish_in_reverse() {
    struct Recorder(&'static str, Arc<Mutex<Vec<String>>>);
    impl Subsystem for Recorder {
        fn name(&self) -> &'static str {
            self.0
        }
        fn init(&self, ctx: &mut ThreadCtx, done: InitDone) {
            assert_eq!(ctx.name(), APP_THREAD_NAME);
            self.1.lock().push(format!("init {}", self.0));
            // Complete later, from a message, as an asynchronous subsystem would.
            let me = ctx.handle();
            me.send(move |ctx| done(ctx, Ok(()))).unwrap();
        }
        fn fini(&self, ctx: &mut ThreadCtx, done: FiniDone) {
            self.1.lock().push(format!("fini {}", self.0));
            done(ctx);
        }
    }
    let app = start("0x1", true);
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    for name in ["accel", "bdev", "nvmf"] {
        app.handle().register_subsystem(Arc::new(Recorder(name, log.clone())));
    }
    assert_eq!(app.handle().state(), AppState::Startup);
    let (tx, rx) = mpsc::channel();
    app.handle().start_init(move |_, result| tx.send(result).unwrap());
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), Ok(()));
    assert_eq!(app.handle().state(), AppState::Runtime);
    stop(app);
    assert_eq!(*log.lock(), ["init accel", "init bdev", "init nvmf", "fini nvmf", "fini bdev", "fini accel"]);
}

#[test]
fn interrupt_mode_wakes_on_a_message_and_on_a_timer() {
    let app = start("0x1", true);
    let thread = app.handle().app_thread();
    // Let the reactor fall asleep, then wake it with a message.
    std::thread::sleep(Duration::from_millis(50));
    let sent_at = Instant::now();
    let woke_after = run_on(&thread, move |_| sent_at.elapsed());
    assert!(woke_after < Duration::from_secs(1), "a message took {woke_after:?} to wake the reactor");

    let (tx, rx) = mpsc::channel();
    run_on(&thread, move |ctx| {
        let armed_at = Instant::now();
        let mut sent = false;
        ctx.register_timed_poller("one-shot", 30_000, move |_| {
            if !sent {
                let _ = tx.send(armed_at.elapsed());
                sent = true;
            }
            PollStatus::Idle
        });
    });
    let fired_after = rx.recv_timeout(WAIT).expect("timer never woke the reactor");
    assert!(fired_after >= Duration::from_millis(29), "timer fired early: {fired_after:?}");

    // Asleep, the reactor accounts its time as idle.
    std::thread::sleep(Duration::from_millis(100));
    let stat = app.handle().reactor_stats()[0].clone();
    assert!(stat.in_interrupt);
    assert!(stat.idle_ns > stat.busy_ns, "an idle interrupt-mode reactor reported busy {stat:?}");
    stop(app);
}

#[test]
fn bad_cores_are_refused_with_a_reason() {
    let options = AppOptions { cpumask: CoreMask::single(MAX_CORES - 1), ..AppOptions::default() };
    let err = App::start(options).err().expect("a core beyond the machine must be refused");
    assert!(err.to_string().contains("not available"), "{err}");

    let app = start("0x1", true);
    let err = app.handle().spawn_thread("elsewhere", Some(1)).unwrap_err();
    assert!(matches!(err, AppError::CoreNotInMask(1)));
    stop(app);
}

#[test]
fn a_stepped_app_runs_on_the_callers_thread_and_clock() {
    let options =
        AppOptions { name: "stepped".into(), cpumask: CoreMask::parse("0x5").unwrap(), ..AppOptions::default() };
    let mut app = SteppedApp::new(options).unwrap();
    let handle = app.handle();
    let worker = handle.spawn_thread("worker", Some(2)).unwrap();
    let seen: Arc<Mutex<Vec<(u32, u64)>>> = Arc::default();
    for thread in [handle.app_thread(), worker.clone()] {
        let seen = seen.clone();
        thread
            .send(move |ctx| {
                ctx.register_poller("clock", move |ctx| {
                    seen.lock().push((ctx.core(), ctx.now_ns()));
                    PollStatus::Idle
                });
            })
            .unwrap();
    }
    assert!(seen.lock().is_empty(), "nothing runs between steps");
    app.step(1_000);
    assert_eq!(*seen.lock(), vec![(0, 1_000), (2, 1_000)], "one timeslice per thread, in core order");
    app.step(5_000);
    assert_eq!(seen.lock()[2..], [(0, 5_000), (2, 5_000)]);
    assert_eq!(app.run_on(worker.id(), |ctx| (ctx.name().to_string(), ctx.now_ns())), Some(("worker".into(), 5_000)));
    assert_eq!(app.run_on(ThreadId(999), |_| ()), None);

    handle.stop();
    let mut steps = 0;
    while !app.is_finished() {
        steps += 1;
        assert!(steps < 100, "the stepped app did not finish stopping");
        app.step(5_000 + steps);
    }
    let polls = seen.lock().len();
    app.step(10_000);
    assert_eq!(seen.lock().len(), polls, "exited threads run nothing");
}

#[test]
fn each_mode_reports_where_idle_time_goes() {
    for mode in MODES {
        let app = start_in("0x1", mode);
        let thread = app.handle().app_thread();
        // Gaps longer than the cap, enough of them to carry the average past it from
        // any start (each moves it an eighth of the way): the window falls to its floor
        // and stays there through the one short gap of reading the stats below.
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(1));
            run_on(&thread, |_| ());
        }
        let before = app.handle().reactor_stats()[0].clone();
        std::thread::sleep(Duration::from_millis(100));
        // A sleep is accounted when it ends: wake the reactor first. The waking pass
        // updates the window only after its messages ran, so the stats are read in the
        // next pass, on the reactor's own thread, where no counter is moving.
        run_on(&thread, |_| ());
        let handle = app.handle();
        let after = run_on(&thread, move |_| handle.reactor_stats()[0].clone());
        assert_eq!((after.mode, after.in_interrupt), (mode, mode.sleeps()));
        assert_eq!(after.idle_ns, after.idle_poll_ns + after.sleep_ns, "{after:?}");
        let (polled, slept) = (after.idle_poll_ns - before.idle_poll_ns, after.sleep_ns - before.sleep_ns);
        if mode.sleeps() {
            // Nothing to do: a short last pass or window, then asleep.
            assert!(slept > polled, "{mode} mode spun {polled} ns and slept {slept} ns while idle");
        } else {
            assert_eq!((after.sleep_ns, after.wakeups), (0, 0), "poll mode never sleeps: {after:?}");
            assert!(polled > 50_000_000, "poll mode spun only {polled} ns of 100 ms");
        }
        let expected_window = if mode == ReactorMode::Adaptive { 5_000 } else { 0 };
        assert_eq!(after.poll_window_ns, expected_window, "{mode} mode: {after:?}");
        stop(app);
    }
}

#[test]
fn adaptive_mode_wakes_on_a_message_and_narrows_its_window_for_sparse_work() {
    let app = start_adaptive("0x1", PollWindow { min_us: 7, max_us: 50 });
    let thread = app.handle().app_thread();
    std::thread::sleep(Duration::from_millis(20));
    let asleep = app.handle().reactor_stats()[0].clone();
    let sent_at = Instant::now();
    let woke_after = run_on(&thread, move |_| sent_at.elapsed());
    assert!(woke_after < Duration::from_secs(1), "a message took {woke_after:?} to wake the reactor");
    assert!(app.handle().reactor_stats()[0].wakeups > asleep.wakeups);

    // Work every 2 ms: gaps far beyond the 50 us cap, so the window falls to its floor.
    let fired = Arc::new(AtomicU64::new(0));
    let counter = fired.clone();
    run_on(&thread, move |ctx| {
        ctx.poller("sparse", 2_000, move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            PollStatus::Busy
        })
        .detach();
    });
    wait_until("ten sparse runs", || fired.load(Ordering::Relaxed) >= 10);
    let stat = app.handle().reactor_stats()[0].clone();
    assert_eq!(stat.poll_window_ns, 7_000, "{stat:?}");
    stop(app);
}

#[test]
fn an_fd_poller_runs_when_its_fd_wakes_the_reactor_and_stops_watching_when_dropped() {
    use std::os::fd::AsFd;

    use nix::sys::eventfd::{EfdFlags, EventFd};

    for mode in MODES {
        let app = start_in("0x1", mode);
        let thread = app.handle().app_thread();
        let eventfd = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap());
        let runs = Arc::new(AtomicU64::new(0));
        let drained = Arc::new(AtomicU64::new(0));
        let (fd, counter, total) = (eventfd.clone(), runs.clone(), drained.clone());
        // A long period: only the fd can make it run soon where the reactor sleeps.
        let id = run_on(&thread, move |ctx| {
            let reader = fd.clone();
            let poller = ctx.fd_poller("eventfd", fd.as_fd(), 400_000, move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                match reader.read() {
                    Ok(value) => {
                        total.fetch_add(value, Ordering::SeqCst);
                        PollStatus::Busy
                    }
                    Err(_) => PollStatus::Idle,
                }
            });
            poller.unwrap().detach()
        });
        std::thread::sleep(Duration::from_millis(50));
        if mode.sleeps() {
            assert_eq!(runs.load(Ordering::SeqCst), 0, "{mode} mode armed a timer for an fd poller");
        }
        eventfd.write(3).unwrap();
        wait_until("the fd poller to drain its fd", || drained.load(Ordering::SeqCst) == 3);
        if mode.sleeps() {
            assert!(runs.load(Ordering::SeqCst) <= 2, "{mode} mode: {} runs", runs.load(Ordering::SeqCst));
        }

        // Paused, then dropped: a readable fd must not keep waking the reactor for it.
        for step in ["pause", "unregister"] {
            run_on(&thread, move |ctx| match step {
                "pause" => assert!(ctx.pause_poller(id)),
                _ => assert!(ctx.unregister_poller(id)),
            });
            eventfd.write(1).unwrap();
            let before = app.handle().reactor_stats()[0].wakeups;
            std::thread::sleep(Duration::from_millis(50));
            let wakeups = app.handle().reactor_stats()[0].wakeups - before;
            assert!(wakeups < 10, "{mode} mode, after {step}: {wakeups} wake-ups in 50 ms");
            assert_eq!(drained.load(Ordering::SeqCst), 3, "{mode} mode: ran after {step}");
            let _ = eventfd.read();
        }
        stop(app);
    }
}
