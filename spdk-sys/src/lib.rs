//! Bindings to DPDK and SPDK. With neither the `dpdk` nor the `spdk` feature the crate
//! compiles to nothing, so the workspace builds on machines without those libraries.
#![no_std]
