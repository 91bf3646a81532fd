//! Peerless framework: the reactor and lightweight threads, tagged memory and the
//! CPU-touch gate, accel, JSON-RPC, config and logging.
//!
//! `unsafe` is allowed only in `mem` (raw memory and mappings) and `poll_ring` (pushing
//! io_uring requests that point at no memory); every other module denies it.
#![deny(unsafe_code)]

pub mod accel;
pub mod config;
pub mod keyring;
pub mod log;
pub mod mem;
#[allow(unsafe_code)]
pub mod poll_ring;
pub mod reactor;
pub mod rpc;
pub mod throttle;
