//! NVMe-over-Fabrics target: the application shell (`app`), and in later layers the
//! NVMe and fabrics wire structures, subsystems, controllers and transports.
#![forbid(unsafe_code)]

pub mod app;
