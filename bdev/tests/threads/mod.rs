//! A second I/O thread on a harness's app, for what must cross channels (resets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_bdev::{Desc, IoStatus};

use crate::harness::{Harness, Spec, WAIT};

/// A view of the same app and bdevs with its own lightweight thread; dropping it leaves
/// the app running (the original harness stops it).
pub fn second_thread(harness: &Harness) -> Harness {
    let app = harness.app.as_ref().expect("the harness runs an app").handle();
    let thread = app.spawn_thread("io2", None).expect("a second thread");
    Harness { app: None, thread, bdevs: harness.bdevs.clone() }
}

/// Submits `specs` on `other`'s thread from an OS thread of its own (they may not finish
/// until something else happens) and returns once all of them are in flight there.
pub fn submit_and_hold(
    other: Harness,
    desc: &Arc<Desc>,
    specs: Vec<Spec>,
) -> std::thread::JoinHandle<Vec<(usize, IoStatus)>> {
    let count = specs.len() as u64;
    let watcher = Harness { app: None, thread: other.thread.clone(), bdevs: other.bdevs.clone() };
    let held = desc.clone();
    let waiter = std::thread::spawn(move || {
        other.run(&held, specs).into_iter().map(|(tag, done)| (tag, done.status)).collect::<Vec<_>>()
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let desc = desc.clone();
        let in_flight = watcher.on_thread(move |ctx| desc.channel(ctx).in_flight());
        if in_flight == count {
            break;
        }
        assert!(Instant::now() < deadline, "{in_flight} of {count} I/O reached the second thread");
        std::thread::sleep(Duration::from_millis(1));
    }
    waiter
}
