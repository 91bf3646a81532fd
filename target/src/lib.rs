//! NVMe-over-Fabrics target: NVMe and fabrics wire structures (`nvme`), subsystems,
//! controllers and commands (`nvmf`), the NVMe/TCP transport (`tcp`), the NVMe/RDMA
//! transport (`rdma`, with the `rdma` feature), and the application shell
//! `peerless-tgt` runs (`app`).
#![forbid(unsafe_code)]

pub mod app;
pub mod metrics;
pub mod nvme;
pub mod nvmf;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod tcp;
