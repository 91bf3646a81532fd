//! The NVMe/TCP transport (NVMe/TCP Transport 1.0): PDUs, connections, poll groups,
//! listeners, options.

mod command;
pub mod conn;
pub mod listener;
pub mod options;
pub mod pdu;
pub mod poll_group;
