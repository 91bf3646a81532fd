//! The NVMe/TCP transport (NVMe/TCP Transport 1.0): one driver of the engine. It owns
//! the PDU codec, sockets, flow control (R2T), digests and data placement; what commands
//! mean is the engine's (`nvmf::qpair`).

pub mod conn;
mod h2c_direct;
pub mod lifecycle;
pub mod listener;
pub mod options;
mod outbox;
pub mod pdu;
pub mod poll_group;
mod send;
pub mod sock_rpc;
pub mod socket;
pub mod tls;
pub mod transport;
pub mod zerocopy;

pub use transport::{TcpTransport, TRTYPE};
