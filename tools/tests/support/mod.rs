//! What this package's end-to-end tests share beyond the harness (`peerless-testkit`):
//! where `peerless-tgt` is, and the host NQN they connect as.

#![allow(dead_code)]

use peerless_testkit::Binary;

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-000000000001";

/// The target binary from this build: another package defines it, so it is found
/// beside the tests; CI builds the workspace before testing.
pub fn tgt() -> Binary {
    Binary::beside_test("cargo build -p peerless-target")
}
