//! Client tools and the NVMe/TCP initiator library (`initiator`, used by `peerless-perf`
//! through `perf`). `rpc_client` speaks SPDK's JSON-RPC
//! to a running target; `rpc_cli` is the rpc.py-compatible command line behind
//! `peerless-rpc`.
#![forbid(unsafe_code)]

pub mod bdevperf;
pub mod initiator;
pub mod perf;
pub mod rpc_cli;
pub mod rpc_client;
