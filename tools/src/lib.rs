//! Client tools and the NVMe/TCP initiator library. `rpc_client` speaks SPDK's JSON-RPC
//! to a running target.
#![forbid(unsafe_code)]

pub mod rpc_client;
