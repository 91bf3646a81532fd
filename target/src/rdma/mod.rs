//! The NVMe/RDMA transport (NVM Express RDMA Transport Specification 1.0): a second
//! driver of the engine, built only with the `rdma` feature (rdma-core through
//! `spdk_sys::rdma`). As with TCP, the transport moves bytes and the engine
//! (`nvmf::qpair`) decides what commands mean; this note is the design the submodules
//! follow.
//!
//! # Objects and threads
//!
//! * The transport (`transport.rs`) holds the options (SPDK's names and defaults), the
//!   data buffer pool every poll group shares ([`crate::nvmf::buffers::DataPool`]) and,
//!   per RDMA device, one protection domain with the pool's memory registered in it.
//!   The pool is carved once when the transport is created and never grows, so each
//!   protection domain registers its two regions (small and large buffers) once, when
//!   the first listener opens the RDMA CM and its devices (a transport is created on a
//!   host without RDMA too); no work request ever registers memory.
//! * A listener is an RDMA CM id bound and listening on the app thread. The CM event
//!   channel's descriptor is watched through the reactor's fd poller (as the TCP
//!   listener's socket is), so a reactor in interrupt mode sleeps until a host connects.
//!   A connect request's private data (NVMe/RDMA 1.0 §3.1, Figure 5: RECFMT, QID,
//!   HRQSIZE, HSQSIZE) is checked there; a bad one is rejected with the status of
//!   Figure 11. A good one picks a poll group as TCP connections do
//!   (`NvmfTarget::pick_poll_group`, round robin) and the new CM id is sent there.
//! * A poll group keeps, per device: one completion queue shared by all of its queue
//!   pairs, and (unless `no_srq`) one shared receive queue of `max_srq_depth` receive
//!   buffers, else each queue pair posts its own. Each NVMe queue is one RC queue pair
//!   created on the poll group's thread, after which the group accepts the connection
//!   with CRQSIZE (Figure 6). Completions carry the queue pair number, which finds the
//!   queue. A queue whose work requests would overflow the CQ is rejected (no
//!   resources): the CQ is not resized.
//!
//! # A command's way
//!
//! 1. The host SENDs a command capsule into a posted receive buffer (registered memory
//!    of the poll group: 64 bytes of SQE plus `in_capsule_data_size`). The receive
//!    completion names the buffer (`wr_id`) and the queue pair.
//! 2. The transport reads the SQE and its SGL (NVMe/RDMA 1.0 §2.3): a Data Block with
//!    the Offset subtype points at in-capsule data (`in_capsule_data_size` at most); a
//!    Keyed SGL Data Block (address, length, rkey; subtype 0h or Fh, "invalidate")
//!    names host memory; so does a Last Segment descriptor (Offset subtype) pointing
//!    at a list of up to MSDBD (16) keyed data blocks in the capsule's data (`sgl`),
//!    which the engine sees as one keyed transfer of their total length, and which is
//!    moved with one RDMA READ or WRITE per descriptor (a bad list is answered with
//!    its status: SGL Offset Invalid, Data SGL Length Invalid, Invalid Number of SGL
//!    Descriptors, SGL Descriptor Type Invalid). The descriptors are kept by command
//!    identifier and the SQE with its in-capsule bytes goes to
//!    [`crate::nvmf::qpair::Qpair::on_command`].
//!    The receive buffer is posted again at once: the engine copies in-capsule data
//!    before `on_command` returns.
//! 3. The engine gives the command its pool buffers and asks for host data with
//!    `Action::FetchData`: the transport posts RDMA READs from the keyed address into
//!    those buffers (an SGE per pool buffer, with the lkey of the region that holds it),
//!    at most the host's responder resources (IRD) at once per queue pair; more wait in
//!    order. The READ's completion tells the engine the data is placed, and the command
//!    runs in the bdev layer.
//! 4. For a read, `Action::SendData` has the transport ready an RDMA WRITE of the
//!    buffers to the keyed address (memory the device was not given, an admin command's
//!    reply, is copied into pool buffers first) and take the buffers from the engine,
//!    which then queues the completion at once. The WRITE and the response SEND (from
//!    the queue's registered response slot) go in one chain, only the SEND signaled: RC
//!    executes a queue pair's requests in order, so the host has the data before it
//!    sees the completion (NVMe/RDMA 1.0 §3.6), and the SEND's completion means the
//!    WRITE is done, which frees the buffers. A WRITE that fails completes on its own,
//!    with its error, and ends the queue. A command whose descriptor asked for
//!    invalidation is answered with SEND with Invalidate of its rkey.
//! 5. The SEND's completion frees the response slot (and a read's buffers). The work
//!    requests a poll pass builds, over all commands of a queue pair, are posted with
//!    one `ibv_post_send` at the end of the pass; with `no_wr_batching`, each command's
//!    (a READ, or WRITE and SEND) as soon as they are built.
//!
//! Flow control is the queue depth: a queue's depth is the smallest of the target's,
//! the device's, HRQSIZE and HSQSIZE + 1 (the most commands the host may have
//! outstanding, NVMe-oF 1.1 §2.4.1); its queue pair has three send work requests per
//! command (a READ, a WRITE and a SEND) and twice as many response slots as commands.
//! An action that finds no response slot or send queue room stays with the engine
//! until a completion frees one.
//!
//! # Buffers and ownership
//!
//! Receive buffers belong to the poll group (with an SRQ) or the queue pair (without);
//! response slots to the queue pair; data buffers to the engine's request from
//! `FetchData` or the bdev's completion until the engine is told the transfer ended;
//! a read's data buffers then to the queue pair, with the response slot whose SEND is
//! chained behind their WRITE, until that SEND completes. Every buffer handed to the NIC stays owned by its queue pair until its work
//! request completes, successfully or flushed: a queue pair that errors or
//! disconnects is moved to the error state, and its resources are freed only once
//! every posted request has come back (the flushes), so a host that vanishes during
//! an RDMA READ leaves nothing behind.
//!
//! # Polling and interrupt mode
//!
//! The poll group's pass polls its shared CQ (a batch at a time), then polls the
//! engine's queues that have work, then turns engine actions into work requests. In
//! interrupt mode the completion channel's descriptor is watched by the reactor; the
//! CQ is re-armed after a pass that found it empty, then polled once more so no
//! completion that raced the arming is missed.
//!
//! # Errors
//!
//! A completion in error, an asynchronous QP error, and the CM events Disconnected,
//! TimewaitExit and DeviceRemoval end the one queue they name (the engine's `close`);
//! the listener and every other queue stay. A device's asynchronous events (`events`)
//! are watched on the app thread through its event descriptor: a queue pair's fatal,
//! request or access error ends its queue, a fatal device error or a port error every
//! queue on the device; the rest is logged.

pub mod conn;
pub mod device;
pub mod events;
pub mod listener;
pub mod options;
pub mod poll_group;
pub mod sgl;
pub mod stats;
pub mod transport;
mod wr;

pub use transport::{RdmaTransport, TRTYPE};
