//! The three reactor modes against a real `peerless-tgt`: each serves I/O, reports where
//! its reactor's time went in `framework_get_reactors`, and stops promptly on SIGTERM,
//! idle (a sleeping reactor must be woken by the signal) and under load (a busy one must
//! still look at its signals).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Completion, Controller, Options};
use serde_json::{json, Value};
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:modes";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 8192;
/// Reads kept in flight by the load.
const LOAD_DEPTH: usize = 16;
/// The bound on a stop: generous for a loaded test machine, far below the harness's
/// SIGKILL grace, so a target that ignores or misses the signal fails the test.
const STOP_BOUND: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Mode {
    Poll,
    Interrupt,
    Adaptive,
}

const MODES: [Mode; 3] = [Mode::Poll, Mode::Interrupt, Mode::Adaptive];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Interrupt => "interrupt",
            Mode::Adaptive => "adaptive",
        }
    }
}

fn start(mode: Mode, test: &str) -> Target {
    let launch = tgt().launch(&format!("{test}-{}", mode.name())).stop_grace(STOP_BOUND);
    match mode {
        Mode::Poll => launch.poll_mode(),
        Mode::Interrupt => launch,
        Mode::Adaptive => launch.adaptive_mode(),
    }
    .start()
}

/// Keeps `LOAD_DEPTH` reads in flight on one queue until the connection fails (the
/// target went away) or `stop` is set; returns how the load ended.
struct Load {
    completed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<String>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let (completed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (count, stopping) = (completed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
            let mut queue = controller.io_queue(LOAD_DEPTH as u16 + 1).expect("I/O queue");
            let mut done: Vec<Completion> = Vec::new();
            let mut lba = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                while queue.outstanding() < LOAD_DEPTH {
                    lba = (lba + 8) % BLOCKS;
                    if let Err(err) = queue.submit_read(1, lba, 8, vec![0; 8 * BLOCK as usize]) {
                        return format!("submit failed: {err}");
                    }
                }
                done.clear();
                match queue.poll(LOAD_DEPTH, &mut done) {
                    Ok(_) => {
                        assert!(done.iter().all(|completion| completion.is_ok()), "a read failed under load");
                        count.fetch_add(done.len() as u64, Ordering::Relaxed);
                    }
                    Err(err) => return format!("poll failed: {err}"),
                }
            }
            "stopped by the test".to_string()
        });
        Load { completed, stop, thread }
    }

    fn wait_for(&self, reads: u64, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.completed.load(Ordering::Relaxed) < reads {
            assert!(!self.thread.is_finished(), "{what}: the load ended early");
            assert!(Instant::now() < deadline, "{what}: {} reads in {WAIT:?}", self.completed.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the load thread panicked")
    }
}

fn reactor(target: &Target) -> Value {
    target.call("framework_get_reactors", None)["reactors"][0].clone()
}

fn ticks(reactor: &Value, field: &str) -> u64 {
    reactor[field].as_u64().unwrap_or_else(|| panic!("no {field} in {reactor}"))
}

#[test]
fn an_idle_target_stops_promptly_on_sigterm_in_every_mode() {
    for mode in MODES {
        let mut target = start(mode, "idle-stop");
        target.serve_null(NQN, BLOCKS, BLOCK, json!({}));
        // Long enough for a sleeping mode to be asleep when the signal comes.
        std::thread::sleep(Duration::from_millis(200));
        let status = target.stop();
        assert!(status.success(), "{} mode: exit {status}", mode.name());
        assert!(target.log().contains("received signal 15; stopping"), "{} mode", mode.name());
    }
}

#[test]
fn a_loaded_target_stops_promptly_on_sigterm_in_every_mode() {
    for mode in MODES {
        let mut target = start(mode, "load-stop");
        let addr = target.serve_null(NQN, BLOCKS, BLOCK, json!({}));
        let load = Load::start(addr);
        load.wait_for(2_000, mode.name());
        let status = target.stop();
        assert!(status.success(), "{} mode: exit {status}", mode.name());
        let ended = load.finish();
        assert!(ended.contains("failed"), "{} mode: the target stopped but the load went on ({ended})", mode.name());
    }
}

#[test]
fn every_mode_serves_io_and_says_where_its_time_went() {
    for mode in MODES {
        let target = start(mode, "time-split");
        let addr = target.serve_null(NQN, BLOCKS, BLOCK, json!({}));
        let before = reactor(&target);
        let load = Load::start(addr);
        load.wait_for(2_000, mode.name());
        let ended = load.finish();
        assert_eq!(ended, "stopped by the test", "{} mode", mode.name());
        let after = reactor(&target);
        let name = mode.name();
        assert_eq!(after["mode"], json!(name), "{after}");
        assert_eq!(after["in_interrupt"], json!(!matches!(mode, Mode::Poll)), "{after}");
        // SPDK's fields stay; idle splits into polling and sleeping.
        assert_eq!(ticks(&after, "idle"), ticks(&after, "idle_poll") + ticks(&after, "sleep"), "{name}: {after}");
        assert!(ticks(&after, "busy") > ticks(&before, "busy"), "{name}: serving reads counted no busy time");
        let window_us = after["poll_window_us"].as_f64().unwrap_or_else(|| panic!("{after}"));
        match mode {
            Mode::Poll => {
                assert_eq!((ticks(&after, "sleep"), ticks(&after, "wakeups")), (0, 0), "poll mode slept: {after}");
                assert_eq!(window_us, 0.0);
            }
            Mode::Interrupt => {
                assert!(ticks(&after, "wakeups") > ticks(&before, "wakeups"), "interrupt mode never slept: {after}");
                assert_eq!(window_us, 0.0);
            }
            // The target's default window: a floor of 5 us, a cap of 50 us.
            Mode::Adaptive => assert!((5.0..=50.0).contains(&window_us), "adaptive window {window_us} us: {after}"),
        }
    }
}
