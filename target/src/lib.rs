//! NVMe-over-Fabrics target: NVMe and fabrics wire structures (`nvme`), subsystems,
//! controllers and commands (`nvmf`), the NVMe/TCP transport (`tcp`), and the
//! application shell `peerless-tgt` runs (`app`).
#![forbid(unsafe_code)]

pub mod app;
pub mod metrics;
pub mod nvme;
pub mod nvmf;
pub mod tcp;
