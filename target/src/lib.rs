//! NVMe-over-Fabrics target: NVMe and fabrics wire structures (`nvme`), the NVMe/TCP
//! transport (`tcp`), and the application shell `peerless-tgt` runs (`app`).
#![forbid(unsafe_code)]

pub mod app;
pub mod nvme;
pub mod tcp;
