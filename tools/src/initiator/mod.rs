//! The NVMe-oF host side over TCP and (with the `rdma` feature) RDMA: an initiator
//! library. A `Controller` owns the admin queue; each `IoQueue` is a queue pair on its
//! own connection (`Options::trtype`), driven without blocking by
//! `submit_*`/`poll`, or with blocking helpers.
//!
//! ```no_run
//! # use peerless_tools::initiator::{Controller, Options};
//! let addr = "127.0.0.1:4420".parse().unwrap();
//! let mut ctrl = Controller::connect(addr, "nqn.2016-06.io.spdk:cnode1", "nqn.host", &Options::default())?;
//! let mut queue = ctrl.io_queue(128)?;
//! let mut block = vec![0u8; 4096];
//! queue.read(1, 0, 8, &mut block)?;
//! # Ok::<(), peerless_tools::initiator::Error>(())
//! ```

pub mod auth;
mod controller;
mod discovery;
mod error;
mod inflight;
mod info;
mod queue;
#[cfg(feature = "rdma")]
mod rdma;
mod tcp_link;
pub mod tls;
mod transport;
mod trtype;

pub use auth::HostAuth;
pub use controller::{
    connect_admin_queue, feature, property, Controller, Options, Trtype, ADMIN_QUEUE_ENTRIES, MAX_NQN_BYTES,
    NO_RDMA_FEATURE,
};
pub use discovery::{discover, subtype, DiscoveryEntry, DiscoveryLog, DISCOVERY_NQN, MAX_DISCOVERY_ENTRIES};
pub use error::{Error, Result};
pub use info::{hex, uuid_string, Capabilities, ControllerInfo, NamespaceInfo};
pub use peerless_target::tcp::pdu::Digests;
pub use queue::{Completion, IoQueue, QueuePair, Xfer, MAX_QUEUE_ENTRIES, MIN_QUEUE_ENTRIES};
pub use tcp_link::DIRECT_MIN_BYTES;
pub use tls::HostTls;
pub use transport::{Negotiated, RawPdu, MAX_TRANSFER_BYTES, TX_FLUSH_BYTES};
