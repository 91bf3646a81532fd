//! The RDMA transport's part of a poll group: per device, one CQ shared by every queue
//! pair of the group and (unless `no_srq`) one shared receive queue; the queues
//! themselves, found by the QP number their completions carry.
//!
//! A pass polls each CQ in batches, hands capsules and data completions to the queues,
//! polls the engine's queues and turns their actions into work requests, then drops
//! queues whose teardown is complete. In interrupt mode the CQ's completion channel is
//! watched: after a pass that found the CQ empty it is armed and polled once more, so a
//! completion that raced the arming is not left waiting for the next one.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use peerless_core::log_warn;
use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};
use spdk_sys::rdma::nvme::{CmAccept, CmReject, RejectStatus};
use spdk_sys::rdma::{Completion, ConnParam, Cq, QpConfig, RecvWr, Srq};

use super::conn::{send_queue_wrs, Conn, ConnParts, Region};
use super::device::Device;
use super::listener::{CmState, NewConnection};
use super::options::{RdmaOptions, MAX_SGL_ENTRIES};
use super::stats::{self, DeviceStats};
use super::wr::{WrId, WrKind};
use crate::nvme::SQE_BYTES;
use crate::nvmf::io_cmd::SglBinding;
use crate::nvmf::qpair::{P2pReach, Qpair, QpairConfig};
use crate::nvmf::transport::{GroupCtx, Transport, TransportOptions, TransportPollGroup};
use crate::nvmf::NvmfTarget;

/// Completions taken from a CQ at once.
const COMPLETIONS_PER_POLL: usize = 64;
/// Keep-alive and deadlines are checked this often on a sleeping reactor.
const TIMER_PERIOD_US: u64 = 100_000;
/// Receive requests posted to an SRQ per call.
const RECV_POST_BATCH: usize = 64;

/// A shared receive queue and its buffers.
struct SharedRecvs {
    srq: Arc<Srq>,
    region: Region,
}

/// One device's queues in this group.
struct GroupDevice {
    device: Arc<Device>,
    cq: Arc<Cq>,
    srq: Option<SharedRecvs>,
    /// CQ entries promised: the SRQ's receives and each queue pair's work requests. A
    /// queue that would overflow the CQ is refused.
    committed: u32,
    /// The CQ's polls, the SRQ's posts, and what this device's dropped queues counted;
    /// live queues keep their own until they go.
    stats: DeviceStats,
}

pub struct RdmaPollGroup {
    opts: Arc<TransportOptions>,
    rdma: RdmaOptions,
    state: Arc<parking_lot::Mutex<Option<Arc<CmState>>>>,
    devices: Vec<GroupDevice>,
    conns: HashMap<u32, Conn>,
    by_token: HashMap<u64, u32>,
    completions: Vec<Completion>,
    capsule: Vec<u8>,
    /// Wakes a sleeping reactor for keep-alive; paused while the group has no queue.
    timer: Option<Poller>,
    /// Data buffer waits of the queues already dropped (live ones count their own).
    retired_buffer_waits: u64,
}

impl RdmaPollGroup {
    pub fn new(
        ctx: &mut ThreadCtx,
        opts: Arc<TransportOptions>,
        rdma: RdmaOptions,
        state: Arc<parking_lot::Mutex<Option<Arc<CmState>>>>,
    ) -> RdmaPollGroup {
        let timer = ctx.poller("nvmf_rdma_timer", TIMER_PERIOD_US, |_| PollStatus::Idle);
        timer.pause();
        let capsule = vec![0u8; SQE_BYTES + opts.in_capsule_data_size as usize];
        RdmaPollGroup {
            opts,
            rdma,
            state,
            devices: Vec::new(),
            conns: HashMap::new(),
            by_token: HashMap::new(),
            completions: vec![Completion::default(); COMPLETIONS_PER_POLL],
            capsule,
            timer: Some(timer),
            retired_buffer_waits: 0,
        }
    }

    fn capsule_bytes(&self) -> usize {
        SQE_BYTES + self.opts.in_capsule_data_size as usize
    }

    /// This group's CQ (and SRQ) on `device`, made at its first queue there.
    fn group_device(&mut self, ctx: &mut ThreadCtx, device: &Arc<Device>) -> Result<usize, String> {
        if let Some(index) = self.devices.iter().position(|gd| Arc::ptr_eq(&gd.device, device)) {
            return Ok(index);
        }
        let attr = device.attr;
        let srq_depth = self.rdma.max_srq_depth.min(attr.max_srq_wr.max(1) as u32);
        let wanted = if self.rdma.no_srq { self.rdma.num_cqe as u32 } else { 3 * srq_depth };
        let cq = Cq::new(&device.context, wanted.min(attr.max_cqe.max(1) as u32), true).map_err(|e| e.to_string())?;
        if let Some(fd) = cq.event_fd() {
            ctx.watch_fd(fd).map_err(|err| format!("cannot watch the CQ's completion channel: {err}"))?;
        }
        cq.arm().map_err(|err| err.to_string())?;
        let mut stats = DeviceStats::default();
        let srq = if self.rdma.no_srq {
            None
        } else {
            let srq = Srq::new(&device.pd, srq_depth, 1).map_err(|err| err.to_string())?;
            let region = Region::new(device, srq_depth as usize, self.capsule_bytes())?;
            let shared = SharedRecvs { srq, region };
            for start in (0..srq_depth).step_by(RECV_POST_BATCH) {
                let end = (start + RECV_POST_BATCH as u32).min(srq_depth);
                let mut wrs = Vec::with_capacity(RECV_POST_BATCH);
                for index in start..end {
                    wrs.push(srq_recv(&shared, index).ok_or("an SRQ receive buffer out of its region")?);
                }
                shared.srq.post_recv(&mut wrs).map_err(|err| err.to_string())?;
                stats.posted_recvs(wrs.len());
            }
            Some(shared)
        };
        let committed = if srq.is_some() { srq_depth } else { 0 };
        self.devices.push(GroupDevice { device: device.clone(), cq, srq, committed, stats });
        Ok(self.devices.len() - 1)
    }

    /// Takes a connection the listener let in: its queue pair, its receives, the accept.
    pub fn add_conn(
        &mut self,
        ctx: &mut ThreadCtx,
        target: &NvmfTarget,
        transport: &Arc<dyn Transport>,
        new: NewConnection,
    ) {
        let NewConnection { mut id, token, device, request, depth, read_depth, local, peer } = new;
        let refuse = |id: &spdk_sys::rdma::CmId, state: &Arc<parking_lot::Mutex<Option<Arc<CmState>>>>, why: String| {
            log_warn!("RDMA listener {local}: refusing queue {} of a host: {why}", request.qid);
            let _ = id.reject(&CmReject { status: RejectStatus::NoResources }.encode());
            if let Some(state) = state.lock().as_ref() {
                state.routes.lock().remove(&token);
            }
        };
        let index = match self.group_device(ctx, &device) {
            Ok(index) => index,
            Err(why) => return refuse(&id, &self.state, why),
        };
        let depth32 = u32::from(depth);
        let wrs = send_queue_wrs(depth32) + if self.rdma.no_srq { depth32 } else { 0 };
        let gd = &mut self.devices[index];
        if gd.committed + wrs > gd.cq.capacity() {
            let why = format!("its {wrs} work requests would overflow the poll group's CQ of {}", gd.cq.capacity());
            return refuse(&id, &self.state, why);
        }
        let config = QpConfig {
            send_cq: gd.cq.clone(),
            recv_cq: gd.cq.clone(),
            srq: gd.srq.as_ref().map(|shared| shared.srq.clone()),
            max_send_wr: send_queue_wrs(depth32),
            max_recv_wr: depth32,
            max_send_sge: MAX_SGL_ENTRIES.min(device.attr.max_sge.max(1) as u32),
            max_recv_sge: 1,
        };
        if let Err(err) = id.create_qp(&device.pd, config) {
            return refuse(&id, &self.state, err.to_string());
        }
        let own_recvs = if self.rdma.no_srq {
            match Region::new(&device, usize::from(depth), self.capsule_bytes()) {
                Ok(region) => Some(region),
                Err(why) => return refuse(&id, &self.state, why),
            }
        } else {
            None
        };
        let icd = self.opts.in_capsule_data_size as usize;
        let config = QpairConfig {
            data_completes: false,
            admin_in_capsule_bytes: icd,
            sgl: SglBinding::Rdma,
            p2p_reach: P2pReach::Nic(device.clone()),
        };
        let qpair = Qpair::new(token, target.clone(), self.opts.clone(), transport.pool(), config, peer, local);
        let batch_wrs = !self.rdma.no_wr_batching;
        let max_io_bytes = self.opts.max_io_size;
        let parts = ConnParts { id, token, qpair, device, own_recvs, depth, read_depth, max_io_bytes, batch_wrs };
        let mut conn = match Conn::new(parts) {
            Ok(conn) => conn,
            Err(why) => {
                // The id went into the parts; without it there is nothing to reject with:
                // the host's connect times out.
                log_warn!("RDMA listener {local}: cannot set up a queue: {why}");
                if let Some(state) = self.state.lock().as_ref() {
                    state.routes.lock().remove(&token);
                }
                return;
            }
        };
        for index in 0..u32::from(depth) {
            if let Err(why) = conn.post_own_recv(index) {
                return refuse(&conn.id, &self.state, why);
            }
        }
        let accept = CmAccept { crqsize: depth }.encode();
        // The target never lets the host read its memory (responder resources 0); it reads
        // the host's at most `read_depth` at a time.
        let param = ConnParam {
            private_data: &accept,
            responder_resources: 0,
            initiator_depth: read_depth,
            retry_count: 7,
            rnr_retry_count: 7,
        };
        if let Err(err) = conn.id.accept(&param) {
            return refuse(&conn.id, &self.state, err.to_string());
        }
        self.devices[index].committed += wrs;
        if let Some(state) = self.state.lock().as_ref() {
            state.qps.insert(conn.qp_num, token, conn.device.name());
        }
        self.by_token.insert(token, conn.qp_num);
        self.conns.insert(conn.qp_num, conn);
        if let Some(timer) = &self.timer {
            timer.resume();
        }
    }

    /// An RDMA CM event for one of this group's queues.
    pub fn cm_event(&mut self, _: &mut ThreadCtx, _: &mut GroupCtx<'_>, token: u64, kind: spdk_sys::rdma::CmEventKind) {
        let Some(conn) = self.by_token.get(&token).and_then(|qp_num| self.conns.get_mut(qp_num)) else { return };
        if kind.ends_connection() {
            conn.cm_gone = true;
            conn.qpair.close(&format!("RDMA CM: {kind:?}"));
            conn.disconnect();
        }
    }

    /// Ends the queue `token` for a device's asynchronous event.
    pub fn end_queue(&mut self, token: u64, why: &str) {
        if let Some(conn) = self.by_token.get(&token).and_then(|qp_num| self.conns.get_mut(qp_num)) {
            conn.fail(why);
        }
    }

    fn poll_cq(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize) -> bool {
        let mut any = false;
        loop {
            let polled = match self.devices[index].cq.poll(&mut self.completions) {
                Ok(polled) => polled,
                Err(err) => {
                    log_warn!("RDMA CQ of {}: {err}", self.devices[index].device.name());
                    break;
                }
            };
            self.devices[index].stats.polled(polled);
            for at in 0..polled {
                let completion = self.completions[at];
                self.on_completion(ctx, group, index, &completion);
            }
            any |= polled > 0;
            if polled < self.completions.len() {
                break;
            }
        }
        any
    }

    fn on_completion(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize, c: &Completion) {
        let id = WrId::decode(c.wr_id());
        let GroupDevice { srq, stats, .. } = &mut self.devices[index];
        let conn = self.conns.get_mut(&c.qp_num());
        if id.kind != WrKind::Recv {
            let Some(conn) = conn else { return };
            let what = || format!("{:?} completed with {}", id.kind, c.status_str());
            return conn.on_send_completion(ctx, group, id, c.status(), &what);
        }
        let shared = srq.as_ref();
        let Some(conn) = conn else {
            // A receive for a queue already gone (SRQ): the buffer serves the next one.
            if let Some(shared) = shared {
                repost_srq(shared, id.tag, stats);
            }
            return;
        };
        if shared.is_none() {
            conn.recvs_in_flight = conn.recvs_in_flight.saturating_sub(1);
        }
        if !c.is_success() {
            if !c.is_flush() {
                conn.fail(&format!("receive completed with {}", c.status_str()));
            }
            if let Some(shared) = shared {
                repost_srq(shared, id.tag, stats);
            }
            return;
        }
        stats.requests += 1;
        let len = (c.byte_len() as usize).min(self.capsule.len());
        let region = match shared {
            Some(shared) => &shared.region,
            None => match conn.own_recvs.as_ref() {
                Some(region) => region,
                None => return,
            },
        };
        let copied = region.buffer.read(id.tag as usize * region.unit, &mut self.capsule[..len]);
        // The capsule is copied out: its buffer takes the next one at once.
        match shared {
            Some(shared) => repost_srq(shared, id.tag, stats),
            None if !conn.disconnected => {
                if let Err(why) = conn.post_own_recv(id.tag) {
                    conn.fail(&why);
                }
            }
            None => {}
        }
        if copied.is_err() {
            return conn.fail("a receive buffer out of its region");
        }
        if !conn.disconnected {
            conn.on_capsule(ctx, group, &self.capsule[..len]);
        }
    }
}

fn srq_recv(shared: &SharedRecvs, index: u32) -> Option<RecvWr> {
    let sge = shared.region.sge(index as usize, shared.region.unit)?;
    RecvWr::new(WrId { kind: WrKind::Recv, tag: index }.encode(), &[sge]).ok()
}

fn repost_srq(shared: &SharedRecvs, index: u32, stats: &mut DeviceStats) {
    let Some(wr) = srq_recv(shared, index) else { return };
    match shared.srq.post_recv(&mut [wr]) {
        Ok(()) => stats.posted_recvs(1),
        Err(err) => log_warn!("RDMA SRQ: cannot post a receive again: {err}"),
    }
}

impl TransportPollGroup for RdmaPollGroup {
    fn poll(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) -> bool {
        let mut busy = false;
        let sleeps = ctx.reactor_sleeps();
        for index in 0..self.devices.len() {
            if sleeps {
                let _ = self.devices[index].cq.drain_events();
            }
            let mut found = self.poll_cq(ctx, group, index);
            if sleeps && !found {
                let _ = self.devices[index].cq.arm();
                found = self.poll_cq(ctx, group, index);
            }
            busy |= found;
        }
        let now_ns = group.now_ns;
        for conn in self.conns.values_mut() {
            busy |= conn.qpair.poll(ctx, group, now_ns);
            if conn.disconnected {
                conn.end_unsent(ctx, group);
            }
            conn.drain_actions(ctx, group);
        }
        let finished: Vec<u32> = self.conns.iter().filter(|(_, conn)| conn.is_finished()).map(|(qp, _)| *qp).collect();
        for qp_num in finished {
            let Some(conn) = self.conns.remove(&qp_num) else { continue };
            group.retired.retire(&conn.qpair);
            self.retired_buffer_waits += conn.qpair.stats.buffer_waits;
            self.by_token.remove(&conn.token);
            if let Some(state) = self.state.lock().as_ref() {
                state.routes.lock().remove(&conn.token);
                state.qps.remove(qp_num);
            }
            if let Some(gd) = self.devices.iter_mut().find(|gd| Arc::ptr_eq(&gd.device, &conn.device)) {
                let depth = conn.depth();
                let own = if gd.srq.is_some() { 0 } else { depth };
                gd.committed = gd.committed.saturating_sub(send_queue_wrs(depth) + own);
                gd.stats.add(&conn.stats);
            }
            busy = true;
        }
        if self.conns.is_empty() {
            if let Some(timer) = &self.timer {
                timer.pause();
            }
        }
        busy
    }

    fn for_each_qpair(&mut self, visit: &mut dyn FnMut(&mut Qpair)) {
        for conn in self.conns.values_mut() {
            visit(&mut conn.qpair);
        }
    }

    fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// SPDK's RDMA poll group statistics: data buffer waits, and per device its CQ's
    /// counters with its live queues' added.
    fn dump_stats(&self) -> serde_json::Value {
        let mut pending_data_buffer = self.retired_buffer_waits;
        for conn in self.conns.values() {
            pending_data_buffer += conn.qpair.stats.buffer_waits;
        }
        let devices: Vec<(String, DeviceStats)> = self
            .devices
            .iter()
            .map(|gd| {
                let mut total = gd.stats;
                for conn in self.conns.values().filter(|conn| Arc::ptr_eq(&conn.device, &gd.device)) {
                    total.add(&conn.stats);
                }
                (gd.device.name(), total)
            })
            .collect();
        stats::group_json(pending_data_buffer, &devices)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
