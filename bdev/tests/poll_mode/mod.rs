//! A harness whose reactor polls instead of sleeping, for module paths that differ by
//! mode (no eventfd for a uring channel, no release timer for a delay channel). The
//! reactor spins its core while the test runs, so tests using it stay short.

use peerless_bdev::BdevManager;
use peerless_core::reactor::{App, AppOptions, CoreMask};

use crate::harness::Harness;

pub fn harness() -> Harness {
    let options =
        AppOptions { cpumask: CoreMask::parse("0x1").unwrap(), interrupt_mode: false, ..AppOptions::default() };
    let app = App::start(options).unwrap();
    let thread = app.handle().spawn_thread("io", None).unwrap();
    Harness { app: Some(app), thread, bdevs: BdevManager::new() }
}
