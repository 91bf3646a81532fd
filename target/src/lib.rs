//! NVMe-oF target.
#![forbid(unsafe_code)]
