//! A safe layer over rdma-core (libibverbs and librdmacm) for the NVMe/RDMA transport.
//!
//! Ownership mirrors the verbs object graph, so safe code cannot free a parent before its
//! children: a [`Context`] (an opened device) outlives every [`Pd`] made on it, a `Pd`
//! every [`Mr`] and [`Srq`], and a [`CmId`]'s queue pair holds its [`Pd`], [`Cq`]s and
//! `Srq` until `rdma_destroy_qp` has run. Children hold their parents by `Arc`; each
//! `Drop` releases its own object only.
//!
//! Memory the NIC may touch is always inside a live [`Mr`], and an `Mr` keeps the memory
//! it registers alive ([`RegistrableMemory`], or the dma-buf's descriptor). A work request
//! names memory by key, so a stale or forged key makes the NIC complete the request with
//! a protection error, never reach freed memory. Inline sends (the CPU reading the data
//! at post time) are therefore not offered.
//!
//! Bindgen over rdma-core here, rather than a crate such as `sideway`: that one has no
//! shared receive queue and no `rdma_reject` or accept private data (the NVMe/RDMA
//! connection handshake needs both), it loads libibverbs at run time instead of linking
//! it, and its licence (MPL-2.0) differs from the project's; spdk-sys already follows
//! this pattern for DPDK and librbd, with the same build dependencies.
//!
//! Every call that can wait is non-blocking here: the CM event channel's and completion
//! channel's descriptors are `O_NONBLOCK`, for a reactor to watch.

mod cm;
mod memory;
pub mod nvme;
mod queues;
mod verbs;
mod wr;

use std::borrow::Cow;
use std::fmt;

pub use cm::{CmEvent, CmEventKind, CmId, ConnParam, EventChannel, PrivateData, QpConfig};
pub use memory::{Access, DmaBuffer, Mr, RegistrableMemory};
pub use queues::{Cq, Srq};
pub use verbs::{
    devices, AsyncElement, AsyncEvent, AsyncEventKind, CmDevices, Context, DeviceAttr, DeviceInfo, DmabufSupport, Pd,
    PortAttr,
};
pub use wr::{Completion, PostError, RecvWr, RemoteKey, SendOp, SendWr, Sge, WcOpcode, WcStatus, WrError, MAX_SGE};

/// An rdma-core call that failed, with the errno it reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What was being done ("ibv_alloc_pd", "open RDMA device rxe0").
    pub op: Cow<'static, str>,
    /// The positive errno.
    pub errno: i32,
}

impl Error {
    pub(crate) fn new(op: impl Into<Cow<'static, str>>, errno: i32) -> Error {
        Error { op: op.into(), errno: errno.saturating_abs() }
    }

    /// The calling thread's errno after a failed call, never 0 (a library that failed
    /// without setting errno is reported as EIO).
    pub(crate) fn last(op: impl Into<Cow<'static, str>>) -> Error {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        Error::new(op, if errno == 0 { libc::EIO } else { errno })
    }

    /// A verbs call that returns an errno (positive or negative) rather than setting it.
    pub(crate) fn from_ret(op: impl Into<Cow<'static, str>>, ret: i32) -> Error {
        if ret == -1 {
            Error::last(op)
        } else {
            Error::new(op, ret)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, std::io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(err: Error) -> std::io::Error {
        std::io::Error::new(std::io::Error::from_raw_os_error(err.errno).kind(), err)
    }
}
