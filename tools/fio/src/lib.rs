//! fio external ioengines, the SPDK way (see README.md):
//! - `peerless_nvmf`: the NVMe/TCP initiator library, one controller and one I/O queue
//!   per (fio thread, file), polled from the fio thread;
//! - `peerless_bdev`: the Peerless framework and bdev layer in-process, loaded from an
//!   SPDK-format JSON config, one lightweight thread per fio thread.
//!
//! fio's structures are read by `shim.c` (compiled against fio's own headers); Rust sees
//! plain arguments only. `unsafe` is confined to `ffi` and `iou` (the FFI
//! boundary); the engines themselves are safe code.
#![deny(unsafe_code)]

pub mod bdev;
pub mod engine;
#[allow(unsafe_code)]
mod ffi;
mod framework;
#[allow(unsafe_code)]
pub mod iou;
pub mod nvmf;
pub mod spec;
