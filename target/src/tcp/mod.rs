//! The NVMe/TCP transport (NVMe/TCP Transport 1.0).

pub mod pdu;
