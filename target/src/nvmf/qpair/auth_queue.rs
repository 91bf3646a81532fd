//! In-band authentication on a connected queue (NVMe Base 2.0, 8.13): Authentication
//! Send and Receive (6.3, 6.4) carry the DH-HMAC-CHAP messages of the queue's
//! [`Session`]. Until the first transaction succeeds, a queue whose host has a key takes
//! no other command (Authentication Required, NVMe-oF's Connect status 91h, as SPDK
//! answers); a failed transaction ends the queue once AUTH_Failure1 is out. A host may
//! authenticate an authenticated queue again at any time.

use peerless_bdev::DataBuf;
use peerless_core::reactor::ThreadCtx;
use peerless_core::{log_info, log_warn};

use super::{Action, Qpair};
use crate::nvme::cmd::SGL_TRANSPORT_DATA_BLOCK;
use crate::nvme::{admin as opc, fctype, le32, status, Sqe, Status};
use crate::nvmf::auth::msg::{self, SECP, SPSP0, SPSP1};
use crate::nvmf::auth::reason;
use crate::nvmf::auth::session::{AfterReceive, AfterSend, Peer, Session};
use crate::nvmf::io_cmd::{self, Direction, Placement};
use crate::nvmf::transport::GroupCtx;

/// Authentication Send data a queue takes: every message fits, a negotiate with dozens
/// of protocol descriptors too.
pub const MAX_SEND_BYTES: usize = 8192;

/// Whether `sqe` is an Authentication Send or Receive.
pub(super) fn is_auth_command(sqe: &Sqe) -> bool {
    sqe.opcode() == opc::FABRICS && matches!(sqe.fctype(), fctype::AUTH_SEND | fctype::AUTH_RECV)
}

pub(super) fn is_auth_send(sqe: &Sqe) -> bool {
    sqe.opcode() == opc::FABRICS && sqe.fctype() == fctype::AUTH_SEND
}

/// SECP, SPSP0, SPSP1 and TL/AL (NVMe Base 2.0, Figures 145 and 147: bytes 41-47).
fn security_fields(sqe: &Sqe) -> (u8, u8, u8, u32) {
    (sqe.0[43], sqe.0[41], sqe.0[42], le32(&sqe.0, 44))
}

impl Qpair {
    /// Whether the queue waits for its first successful authentication.
    pub fn auth_pending(&self) -> bool {
        self.queue.as_ref().is_some_and(|queue| queue.auth_pending)
    }

    /// The queue's authentication as `nvmf_subsystem_get_qpairs` shows it (SPDK's `auth`
    /// object): state, digest and DH group names.
    pub fn auth_status(&self) -> Option<(&'static str, &'static str, &'static str)> {
        let session = self.queue.as_ref()?.auth.as_ref()?;
        Some((
            session.state().name(),
            session.digest().map_or("unknown", |digest| digest.name()),
            session.dhgroup().map_or("unknown", |group| group.name()),
        ))
    }

    pub(super) fn auth_command(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        index: usize,
        in_capsule: &[u8],
    ) {
        let sqe = self.requests[index].sqe;
        let (secp, spsp0, spsp1, len) = security_fields(&sqe);
        if secp != SECP || spsp0 != SPSP0 || spsp1 != SPSP1 {
            return self.finish(group.buffers, index, Status::INVALID_FIELD, 0);
        }
        if !is_auth_send(&sqe) {
            return self.auth_receive(index, len as usize, group);
        }
        if len as usize > MAX_SEND_BYTES || len == 0 {
            return self.finish(group.buffers, index, Status::INVALID_FIELD, 0);
        }
        let limit = self.in_capsule_limit();
        let transfer = match io_cmd::check_sgl(
            &sqe,
            Direction::FromHost,
            len as usize,
            in_capsule.len(),
            limit,
            self.config.sgl,
        ) {
            Ok(transfer) => transfer,
            Err(refused) => return self.finish(group.buffers, index, refused, 0),
        };
        if transfer.placement == Placement::InCapsule {
            return self.run_auth_send(group, index, in_capsule);
        }
        let request = &mut self.requests[index];
        request.transfer = transfer;
        request.data_len = transfer.bytes;
        self.place(ctx, group, index, &[]);
    }

    /// The session, begun anew when none is under way (a first or a repeated
    /// authentication); a new one has the controller's timeout to finish.
    fn session(&mut self, now_ns: u64) -> Option<&mut Session> {
        let queue = self.queue.as_mut()?;
        if queue.auth.as_ref().is_none_or(|session| session.is_finished()) {
            queue.auth = Some(Box::new(Session::new()));
            queue.auth_deadline_ns = now_ns.saturating_add(super::admin_queue::auth_timeout_ns(&queue.controller));
        }
        queue.auth.as_deref_mut()
    }

    /// A transaction under way (or a first one never begun) is past its time.
    pub(super) fn auth_overdue(&self, now_ns: u64) -> bool {
        let Some(queue) = self.queue.as_ref() else { return false };
        let under_way = queue.auth_pending || queue.auth.as_ref().is_some_and(|session| !session.is_finished());
        under_way && now_ns >= queue.auth_deadline_ns
    }

    /// Ends a queue whose transaction took too long, as SPDK's timeout does for a first
    /// authentication. A repeated one that stalls ends the queue too: its host stopped
    /// answering mid-transaction.
    pub(super) fn auth_timed_out(&mut self, now_ns: u64) {
        let Some(queue) = self.queue.as_ref() else { return };
        let controller = &queue.controller;
        self.target.0.auth_limiter.failed(&controller.hostnqn, self.peer.ip(), now_ns);
        log_warn!(
            "qpair {} (queue {} of {} on {} from {}): DH-HMAC-CHAP authentication timed out",
            self.id,
            queue.qid,
            controller.hostnqn,
            controller.subsystem.nqn,
            self.peer
        );
        self.close("authentication timed out");
    }

    /// An Authentication Send's data is all here.
    pub(super) fn run_auth_send(&mut self, group: &mut GroupCtx<'_>, index: usize, data: &[u8]) {
        let Some(queue) = self.queue.as_ref() else {
            return self.finish(group.buffers, index, Status::INTERNAL_ERROR, 0);
        };
        let controller = queue.controller.clone();
        let (hostnqn, subnqn) = (controller.hostnqn.as_str(), controller.subsystem.nqn.as_str());
        let keys = controller.subsystem.host_keys(hostnqn);
        let config = self.target.0.auth_config.lock().clone();
        let (limiter, peer_ip) = (&self.target.0.auth_limiter, self.peer.ip());
        let starting = queue.auth.as_ref().is_none_or(|session| session.is_finished());
        let throttled = starting && limiter.check(hostnqn, peer_ip, group.now_ns);
        let peer = Peer { hostnqn, subnqn, keys: &keys, config: &config, throttled };
        let Some(session) = self.session(group.now_ns) else {
            return self.finish(group.buffers, index, Status::INTERNAL_ERROR, 0);
        };
        let after = session.on_send(&peer, data);
        self.finish(group.buffers, index, Status::SUCCESS, 0);
        match after {
            AfterSend::Continue => {}
            AfterSend::Authenticated => self.authenticated(),
            AfterSend::HostRefused => {
                log_warn!(
                    "qpair {} ({} on {}): the host refused the controller's DH-HMAC-CHAP response",
                    self.id,
                    controller.hostnqn,
                    controller.subsystem.nqn
                );
                self.close("the host refused the controller's authentication");
            }
        }
    }

    fn authenticated(&mut self) {
        let (digest, group) = self.auth_status().map_or(("unknown", "unknown"), |(_, digest, group)| (digest, group));
        let Some(queue) = self.queue.as_mut() else { return };
        queue.auth_pending = false;
        log_info!(
            "{} authenticated queue {} of controller {} of {} from {} (DH-HMAC-CHAP {digest}, {group})",
            queue.controller.hostnqn,
            queue.qid,
            queue.controller.cntlid,
            queue.controller.subsystem.nqn,
            self.peer
        );
    }

    fn auth_receive(&mut self, index: usize, allocation: usize, group: &mut GroupCtx<'_>) {
        let sqe = self.requests[index].sqe;
        // The controller sends the message: a transport data block of exactly AL bytes.
        if sqe.sgl_type() != SGL_TRANSPORT_DATA_BLOCK || !matches!(sqe.psdt(), 1 | 2) {
            return self.finish(group.buffers, index, status::SGL_DESCRIPTOR_TYPE_INVALID, 0);
        }
        if sqe.sgl_length() as usize != allocation || allocation < msg::FAILURE_BYTES {
            return self.finish(group.buffers, index, Status::INVALID_FIELD, 0);
        }
        let seqnum = self.target.next_auth_seqnum();
        let Some(session) = self.session(group.now_ns) else {
            return self.finish(group.buffers, index, Status::INTERNAL_ERROR, 0);
        };
        let (mut message, mut after) = session.on_receive(seqnum);
        if message.len() > allocation {
            // The host left no room for the message: that is the failure it hears of.
            (message, after) = session.fail_now(reason::INCORRECT_PAYLOAD, "an allocation too small for the message");
        }
        match &after {
            AfterReceive::Continue => {}
            AfterReceive::Authenticated => self.authenticated(),
            AfterReceive::Failed(why) => self.auth_failed(index, why, group.now_ns),
        }
        let len = message.len();
        let request = &mut self.requests[index];
        request.buffers.push(DataBuf::Heap(message.into_boxed_slice()));
        request.data_len = len;
        request.status = Status::SUCCESS;
        request.result = 0;
        request.state = super::ReqState::SendingData;
        let cid = sqe.cid();
        self.actions.push_back(Action::SendData { slot: index as u16, cid, len: len as u32, completes: false });
    }

    /// Counts the failure and ends the queue once the command in `index` (carrying
    /// AUTH_Failure1) is answered.
    fn auth_failed(&mut self, index: usize, why: &str, now_ns: u64) {
        let Some(queue) = self.queue.as_ref() else { return };
        let controller = &queue.controller;
        self.target.0.auth_limiter.failed(&controller.hostnqn, self.peer.ip(), now_ns);
        log_warn!(
            "qpair {} (queue {} of {} on {} from {}): DH-HMAC-CHAP authentication failed: {why}",
            self.id,
            queue.qid,
            controller.hostnqn,
            controller.subsystem.nqn,
            self.peer
        );
        self.close_after = Some(index as u16);
    }
}
