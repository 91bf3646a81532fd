//! Bindings to DPDK and SPDK. With neither the `dpdk` nor the `spdk` feature the crate
//! compiles to nothing, so the workspace builds on machines without those libraries.
//!
//! - [`dpdk`]: the raw bindings bindgen generates over Debian's DPDK headers (an
//!   allowlist in `build.rs`), plus the static inline functions `src/wrapper.c` turns
//!   into symbols (`peerless_*`).
//! - [`eal`]: a safe layer over the parts Peerless uses: EAL start (once per process),
//!   `rte_malloc`/`rte_free`, IOVA translation, memzones, lcore facts.
//! - `spdk` (feature `spdk`): bindings to the SPDK build named by `SPDK_ROOT`.
//! - [`rbd`] (feature `rbd`): Ceph's librados and librbd, raw (`rbd_sys`) and a safe
//!   layer: cluster connection, image, asynchronous I/O reaped through an eventfd.
//! - [`rdma`] (feature `rdma`): rdma-core's libibverbs and librdmacm, raw (`rdma_sys`)
//!   and a safe layer for the NVMe/RDMA transport: devices, protection domains, memory
//!   regions, completion queues with their channels, shared receive queues, RDMA CM
//!   (passive and active side), work requests, completions, and NVMe/RDMA private data.
//! - [`tls_psk`] (feature `tls`): OpenSSL's session-based TLS 1.3 PSK callbacks, for
//!   the SHA-384 cipher suite the `openssl` crate's PSK callbacks cannot carry.
#![cfg_attr(not(any(feature = "dpdk", feature = "rbd", feature = "rdma", feature = "tls")), no_std)]

/// Raw DPDK bindings. Generated code: lints of this crate do not apply to it.
#[cfg(feature = "dpdk")]
#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
#[allow(unsafe_op_in_unsafe_fn, missing_docs, rustdoc::all)]
pub mod dpdk {
    include!(concat!(env!("OUT_DIR"), "/dpdk.rs"));

    /// `RTE_BAD_IOVA`: `((rte_iova_t)-1)`, a cast bindgen cannot evaluate.
    pub const RTE_BAD_IOVA: rte_iova_t = u64::MAX;
    /// `LCORE_ID_ANY`: what `rte_lcore_id()` returns on a thread that is no EAL lcore.
    pub const LCORE_ID_ANY: u32 = u32::MAX;
}

#[cfg(feature = "dpdk")]
pub mod eal;

/// Raw SPDK bindings, from the build named by `SPDK_ROOT`.
#[cfg(feature = "spdk")]
#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
#[allow(unsafe_op_in_unsafe_fn, missing_docs, rustdoc::all)]
pub mod spdk {
    include!(concat!(env!("OUT_DIR"), "/spdk.rs"));
}

/// Raw librados and librbd bindings (feature `rbd`).
#[cfg(feature = "rbd")]
#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
#[allow(unsafe_op_in_unsafe_fn, missing_docs, rustdoc::all)]
pub mod rbd_sys {
    include!(concat!(env!("OUT_DIR"), "/rbd.rs"));
}

#[cfg(feature = "rbd")]
pub mod rbd;

/// Raw libibverbs and librdmacm bindings (feature `rdma`), with `peerless_*` for
/// verbs.h's static inline calls.
#[cfg(feature = "rdma")]
#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
#[allow(unsafe_op_in_unsafe_fn, missing_docs, rustdoc::all)]
pub mod rdma_sys {
    include!(concat!(env!("OUT_DIR"), "/rdma.rs"));
}

#[cfg(feature = "rdma")]
pub mod rdma;

#[cfg(feature = "tls")]
pub mod tls_psk;
