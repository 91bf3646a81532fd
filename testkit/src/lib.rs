//! The one harness for tests that run a real `peerless-tgt` process.
//!
//! - [`Binary`] finds the executable: the crate that defines it passes
//!   `env!("CARGO_BIN_EXE_peerless-tgt")`, every other crate finds it beside its test
//!   executable in the same target dir and profile.
//! - [`Binary::start`] / [`Launch`] start it with a fresh [`Scratch`] directory, wait for
//!   its RPC socket and for `framework_wait_init` (unless `--wait-for-rpc`), and give a
//!   [`Target`]: RPC calls, signals, the log, a bounded [`Target::stop`]. Dropping a
//!   `Target` sends SIGTERM, then SIGKILL if it does not exit in time; dropping it during
//!   a panic prints the target's log, so a failing test shows what the target said.
//! - [`CephCluster`] starts a one-node Ceph cluster (`ci/ceph.sh`) for RBD tests.
//! - [`Client`] is a raw JSON-RPC client that writes what SPDK's rpc.py writes.
//! - [`Target::serve_malloc`] and friends export a namespace over NVMe/TCP on a free
//!   loopback port.
//!
//! Every wait is bounded ([`WAIT`] unless a test asks for another bound) and says what
//! it was waiting for when it gives up.

#![forbid(unsafe_code)]

mod binary;
mod ceph;
mod nvmf;
mod process;
mod rpc;
mod scratch;
mod target;

use std::time::Duration;

pub use binary::Binary;
pub use ceph::CephCluster;
pub use nix::sys::signal::Signal;
pub use nvmf::{free_port, MODEL_NUMBER, SERIAL_NUMBER};
pub use process::run;
pub use rpc::Client;
pub use scratch::Scratch;
pub use target::{Launch, Target};

/// The bound on every wait a test does not bound itself: start-up, an RPC answer, an
/// exit. Generous, because the test machine may be a loaded 2-core VM.
pub const WAIT: Duration = Duration::from_secs(20);

/// How long a target has to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
