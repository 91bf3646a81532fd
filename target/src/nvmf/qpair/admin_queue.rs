//! Connect, the admin queue and the controller's life: Property Get/Set, admin commands,
//! asynchronous events, Abort, keep-alive.

use peerless_bdev::DataBuf;
use peerless_core::reactor::ThreadCtx;
use peerless_core::{log_info, log_warn};

use super::{Action, Qpair, Queue, ReqState};
use crate::nvme::cmd::{SGL_KEYED_DATA_BLOCK, SGL_KEYED_DATA_BLOCK_INVALIDATE, SGL_TRANSPORT_DATA_BLOCK};
use crate::nvme::{admin as opc, fctype, status, Status};
use crate::nvmf::admin::{self, Outcome};
use crate::nvmf::connect::{self, ConnInfo, CONNECT_DATA_BYTES};
use crate::nvmf::ctrlr::{
    AdminState, AEC_ANA_CHANGE, AEC_DISCOVERY_LOG_CHANGE, AEC_NAMESPACE_ATTRIBUTE, NOTICE_ANA_CHANGE,
    NOTICE_DISCOVERY_CHANGED,
};
use crate::nvmf::io_cmd::{self, Direction, Placement, SglBinding};
use crate::nvmf::transport::GroupCtx;

/// AUTHREQ.ATR in a Connect response's DW0 (bit 17; SPDK's `authreq.atr`, Linux's
/// NVME_CONNECT_AUTHREQ_ATR).
pub const CONNECT_AUTHREQ_ATR: u64 = 1 << 17;

/// How long one authentication transaction may take: the controller's Keep Alive
/// Timeout, or 120 s without one (SPDK's NVMF_AUTH_DEFAULT_KATO_US).
pub(super) fn auth_timeout_ns(controller: &crate::nvmf::ctrlr::Controller) -> u64 {
    const DEFAULT_AUTH_TIMEOUT_NS: u64 = 120_000_000_000;
    match controller.kato.as_nanos() as u64 {
        0 => DEFAULT_AUTH_TIMEOUT_NS,
        kato_ns => kato_ns,
    }
}

impl Qpair {
    /// The first command of a queue must be a Connect (NVMe-oF 1.1, 3.3).
    pub(super) fn connect_command(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        index: usize,
        in_capsule: &[u8],
    ) {
        let sqe = self.requests[index].sqe;
        if sqe.opcode() != opc::FABRICS || sqe.fctype() != fctype::CONNECT {
            return self.finish(group.buffers, index, status::COMMAND_SEQUENCE_ERROR, 0);
        }
        let limit = self.in_capsule_limit();
        let transfer = match io_cmd::check_sgl(
            &sqe,
            Direction::FromHost,
            CONNECT_DATA_BYTES,
            in_capsule.len(),
            limit,
            self.config.sgl,
        ) {
            Ok(transfer) => transfer,
            Err(refused) => return self.finish(group.buffers, index, refused, 0),
        };
        if transfer.placement == Placement::InCapsule {
            // The common case: the data is right here, no buffer is needed.
            let mut data = [0u8; CONNECT_DATA_BYTES];
            data.copy_from_slice(&in_capsule[..CONNECT_DATA_BYTES]);
            return self.run_connect(ctx, group, index, &data);
        }
        let request = &mut self.requests[index];
        request.transfer = transfer;
        request.data_len = transfer.bytes;
        self.place(ctx, group, index, &[]);
    }

    pub(super) fn run_connect(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        index: usize,
        data: &[u8; CONNECT_DATA_BYTES],
    ) {
        let sqe = self.requests[index].sqe;
        let info = ConnInfo {
            conn_id: self.id,
            thread: ctx.handle(),
            peer: self.peer,
            local: self.local,
            trtype: self.opts.trtype.clone(),
            tls: self.tls_peer.clone(),
        };
        match connect::connect(&self.target, &self.opts, &info, &sqe, data) {
            Ok(connected) => {
                let controller = connected.controller;
                let admin = (connected.qid == 0).then(|| {
                    // CAP.MQES describes I/O queues: the transport's max_queue_depth, not
                    // the admin queue this Connect sized.
                    AdminState::new(
                        controller.clone(),
                        self.opts.max_queue_depth,
                        self.opts.max_io_qpairs_per_ctrlr,
                        group.now_ns,
                    )
                });
                let counters = (connected.qid > 0).then(|| controller.io_counters());
                log_info!(
                    "{} connected queue {} of controller {} of {} from {}",
                    controller.hostnqn,
                    connected.qid,
                    controller.cntlid,
                    controller.subsystem.nqn,
                    self.peer
                );
                let cntlid = controller.cntlid;
                let controller_for_deadline = controller.clone();
                // Connect's DW0 bits 31:16 are AUTHREQ; ATR (bit 1) asks the host to
                // authenticate before anything else (NVMe Base 2.0, 6.3.2 / NVMe-oF Connect).
                let authreq = if connected.auth_required { CONNECT_AUTHREQ_ATR } else { 0 };
                self.queue = Some(Queue {
                    controller,
                    qid: connected.qid,
                    entries: connected.queue_entries,
                    admin,
                    // The Connect itself is the first entry consumed.
                    sqhd: 1 % connected.queue_entries.max(1),
                    counters,
                    auth: None,
                    auth_pending: connected.auth_required,
                    auth_deadline_ns: group.now_ns.saturating_add(auth_timeout_ns(&controller_for_deadline)),
                });
                self.size_queue(usize::from(connected.queue_entries));
                self.finish(group.buffers, index, Status::SUCCESS, u64::from(cntlid) | authreq);
            }
            Err(refusal) => self.finish(group.buffers, index, refusal.status, u64::from(refusal.dw0)),
        }
    }

    pub(super) fn admin_command(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize) {
        let sqe = self.requests[index].sqe;
        if sqe.opcode() == opc::ABORT && self.controller().is_some_and(|c| c.subsystem.kind.is_nvme()) {
            return self.abort(ctx, group, index);
        }
        let target = self.target.clone();
        let opts = self.opts.clone();
        let now_ns = group.now_ns;
        let Some(admin) = self.queue.as_mut().and_then(|queue| queue.admin.as_mut()) else {
            return self.finish(group.buffers, index, status::COMMAND_SEQUENCE_ERROR, 0);
        };
        let outcome = admin::execute(admin, &target, &opts, self.config.sgl, &sqe, now_ns);
        if admin.take_reset() {
            // CC.EN 1 -> 0: every I/O queue of the controller is deleted (NVMe Base 2.0,
            // 3.7.2); the host reconnects them after it enables the controller again.
            target.reset_io_queues(&admin.controller);
        }
        match outcome {
            Outcome::Held => {
                self.requests[index].state = ReqState::AwaitingEvent;
                self.complete_events();
            }
            Outcome::Done { status, result, data: None } => self.finish(group.buffers, index, status, result),
            Outcome::Done { status, result, data: Some(data) } => {
                // SGLs only, and the descriptor by which the transport sends the data: a
                // transport data block (TCP) or host memory under a key (RDMA).
                let sent_by_transport = match self.config.sgl {
                    SglBinding::Tcp => sqe.sgl_type() == SGL_TRANSPORT_DATA_BLOCK,
                    SglBinding::Rdma => {
                        matches!(sqe.sgl_type(), SGL_KEYED_DATA_BLOCK | SGL_KEYED_DATA_BLOCK_INVALIDATE)
                    }
                };
                if !sent_by_transport || !matches!(sqe.psdt(), 1 | 2) {
                    return self.finish(group.buffers, index, status::SGL_DESCRIPTOR_TYPE_INVALID, 0);
                }
                let len = data.len().min(sqe.sgl_length() as usize);
                // A zero-length buffer asks for no data: a data transfer of none is
                // malformed on the wire (NVMe/TCP 1.0, 3.6.2.8).
                if len == 0 {
                    return self.finish(group.buffers, index, status, result);
                }
                let request = &mut self.requests[index];
                request.buffers.push(DataBuf::Heap(data.into_boxed_slice()));
                request.data_len = len;
                request.status = status;
                request.result = result;
                request.state = ReqState::SendingData;
                let cid = sqe.cid();
                self.actions.push_back(Action::SendData { slot: index as u16, cid, len: len as u32, completes: false });
            }
        }
    }

    /// Abort (NVMe Base 2.0, 5.1): CDW10 names the queue (SQID, bits 15:0) and the
    /// command (CID, bits 31:16). DW0 bit 0 of the completion is 0 when it was aborted.
    fn abort(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize) {
        let cdw10 = self.requests[index].sqe.cdw(10);
        let (sqid, cid) = ((cdw10 & 0xffff) as u16, (cdw10 >> 16) as u16);
        const NOT_ABORTED: u64 = 1;
        if sqid == 0 {
            // On the admin queue only a held AER has not completed yet.
            let held = self
                .requests
                .iter()
                .position(|request| request.state == ReqState::AwaitingEvent && request.sqe.cid() == cid);
            if let Some(held) = held {
                if let Some(admin) = self.queue.as_mut().and_then(|queue| queue.admin.as_mut()) {
                    admin.pending_aers.retain(|aer| *aer != cid);
                }
                self.finish_unbuffered(held, status::ABORTED_BY_REQUEST, 0);
                return self.finish(group.buffers, index, Status::SUCCESS, 0);
            }
            return self.finish(group.buffers, index, Status::SUCCESS, NOT_ABORTED);
        }
        let Some(controller) = self.controller().cloned() else { return };
        let Some(qpair) = controller.qpairs.lock().iter().find(|qpair| qpair.qid == sqid).cloned() else {
            return self.finish(group.buffers, index, Status::SUCCESS, NOT_ABORTED);
        };
        // The queue lives on another poll group's thread: ask it, and answer when it does.
        self.requests[index].state = ReqState::AwaitingAbort;
        let (target, admin_thread, admin_id, slot) = (self.target.clone(), ctx.handle(), self.id, index as u16);
        let sent = qpair.thread.send(move |ctx| {
            let aborted = crate::nvmf::poll_group::with(&target, ctx, |group, _| group.abort(qpair.conn_id, cid));
            let _ = admin_thread.send(move |ctx| {
                crate::nvmf::poll_group::with(&target, ctx, |group, _| group.abort_answered(admin_id, slot, aborted));
            });
        });
        if sent.is_err() {
            self.finish_unbuffered(index, Status::SUCCESS, NOT_ABORTED);
        }
    }

    /// The answer to an Abort this queue asked another queue for.
    pub fn abort_answered(&mut self, slot: u16, aborted: bool) {
        let index = usize::from(slot);
        if self.requests.get(index).is_some_and(|request| request.state == ReqState::AwaitingAbort) {
            self.finish_unbuffered(index, Status::SUCCESS, u64::from(!aborted));
        }
    }

    /// An asynchronous event for this (admin) queue's controller.
    pub fn deliver_event(&mut self, cntlid: u16, dw0: u32, changed_nsid: Option<u32>) {
        let Some(admin) = self.queue.as_mut().and_then(|queue| queue.admin.as_mut()) else { return };
        if admin.controller.cntlid != cntlid {
            return;
        }
        let notice = ((dw0 >> 8) & 0xff) as u8;
        let enabled = match notice {
            NOTICE_DISCOVERY_CHANGED => AEC_DISCOVERY_LOG_CHANGE,
            NOTICE_ANA_CHANGE => AEC_ANA_CHANGE,
            _ => AEC_NAMESPACE_ATTRIBUTE,
        };
        if let Some(nsid) = changed_nsid {
            if !admin.changed_namespaces.contains(&nsid) {
                admin.changed_namespaces.push(nsid);
            }
        }
        if admin.async_event_config & enabled == 0 {
            return;
        }
        // One ANA notice stands for every change until the host reads the log page
        // (NVMe Base 2.0, 5.2.2: the event type is masked until then).
        if notice == NOTICE_ANA_CHANGE {
            if admin.ana_notice_masked {
                return;
            }
            admin.ana_notice_masked = true;
        }
        admin.post_event(dw0);
        self.complete_events();
    }

    fn complete_events(&mut self) {
        while let Some((cid, dw0)) =
            self.queue.as_mut().and_then(|queue| queue.admin.as_mut()).and_then(AdminState::next_event_completion)
        {
            let held = self
                .requests
                .iter()
                .position(|request| request.state == ReqState::AwaitingEvent && request.sqe.cid() == cid);
            if let Some(held) = held {
                self.finish_unbuffered(held, Status::SUCCESS, u64::from(dw0));
            }
        }
    }

    /// Ends the queue when its controller failed, when an authentication transaction
    /// outlived its time or, on the admin queue, when the host sent nothing for longer
    /// than the Keep Alive Timeout (NVMe Base 2.0, 3.9).
    pub(super) fn check_liveness(&mut self, now_ns: u64) {
        let Some(queue) = self.queue.as_ref() else { return };
        if queue.controller.is_failed() {
            return self.close("its controller failed");
        }
        if self.auth_overdue(now_ns) {
            return self.auth_timed_out(now_ns);
        }
        let Some(admin) = queue.admin.as_ref() else { return };
        if !admin.keep_alive_expired(now_ns) {
            return;
        }
        log_warn!(
            "Disconnecting host {} from subsystem {} due to keep alive timeout",
            queue.controller.hostnqn,
            queue.controller.subsystem.nqn
        );
        let (target, controller) = (self.target.clone(), queue.controller.clone());
        controller.fail();
        self.close("keep alive timeout");
        target.disconnect_controller(&controller);
    }
}
