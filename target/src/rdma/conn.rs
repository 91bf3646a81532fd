//! One NVMe queue over one RC queue pair: its receive buffers (without an SRQ), its
//! response slots, the keyed descriptors of its commands, and the work requests that
//! move its data (the RDMA READs and WRITEs themselves are built in `data`). Completions
//! come from the poll group's shared CQ.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use peerless_bdev::DataBuf;
use peerless_core::reactor::ThreadCtx;
use peerless_core::{log_debug, log_warn};
use spdk_sys::rdma::{Access, CmId, Mr, RecvWr, RemoteKey, SendWr, Sge, WcStatus};

use super::device::Device;
use super::sgl::{self, KeyedPart, WriteSeg};
use super::stats::DeviceStats;
use super::wr::{response_chain, WrId, WrKind};
use crate::nvme::cmd::{
    SqeBuilder, SGL_DATA_BLOCK_OFFSET, SGL_KEYED_DATA_BLOCK, SGL_KEYED_DATA_BLOCK_INVALIDATE, SGL_LAST_SEGMENT_OFFSET,
};
use crate::nvme::{Cqe, Sqe, Status, CQE_BYTES, SQE_BYTES};
use crate::nvmf::buffers;
use crate::nvmf::qpair::{Action, Qpair};
use crate::nvmf::transport::GroupCtx;
use spdk_sys::rdma::MAX_SGE;

mod data;
use data::HeldWrite;

/// Send work requests per command: the response SEND, an RDMA WRITE and an RDMA READ.
pub const SEND_WRS_PER_COMMAND: u32 = 3;

/// The send queue of a queue pair of `depth` commands: three requests per command, and
/// room for one command whose data spans MSDBD descriptors (a READ or WRITE each) besides
/// its SEND, so such a command always fits once the queue drains.
pub fn send_queue_wrs(depth: u32) -> u32 {
    depth * SEND_WRS_PER_COMMAND + sgl::MSDBD as u32 + 1
}

/// Host memory a command named: a Keyed SGL Data Block, or several (a Last Segment
/// descriptor's list).
#[derive(Clone, Debug)]
struct Keyed {
    /// The one descriptor of the command, or the first of several.
    one: KeyedPart,
    /// Every descriptor when there are several; empty (no allocation) for one.
    many: Vec<KeyedPart>,
    len: u32,
    invalidate: bool,
    /// Commands that arrived with this identifier while it was in use: each is answered
    /// with a conflict, and those answers must not take the descriptor away.
    conflicts: u16,
}

impl Keyed {
    fn parts(&self) -> &[KeyedPart] {
        if self.many.is_empty() {
            std::slice::from_ref(&self.one)
        } else {
            &self.many
        }
    }
}

/// Registered host memory the CPU reaches only by copies.
pub struct Region {
    pub buffer: Arc<spdk_sys::rdma::DmaBuffer>,
    pub mr: Mr,
    pub unit: usize,
}

impl Region {
    pub fn new(device: &Device, count: usize, unit: usize) -> Result<Region, String> {
        let buffer = spdk_sys::rdma::DmaBuffer::new(count * unit).map_err(|err| err.to_string())?;
        let mr = device.pd.register(buffer.clone(), Access::LOCAL_WRITE).map_err(|err| err.to_string())?;
        Ok(Region { buffer, mr, unit })
    }

    pub fn sge(&self, index: usize, len: usize) -> Option<Sge> {
        self.mr.sge(index * self.unit, len as u32).ok()
    }
}

pub struct Conn {
    pub id: CmId,
    pub token: u64,
    pub qp_num: u32,
    pub qpair: Qpair,
    pub device: Arc<Device>,
    /// Receive buffers of its own (`no_srq`), else the group's SRQ serves it.
    pub own_recvs: Option<Region>,
    responses: Region,
    free_responses: Vec<u16>,
    keyed: HashMap<u16, Keyed>,
    /// Host data to read, waiting for a READ slot (the host's IRD bounds them).
    pending_reads: VecDeque<(u16, u16, u32)>,
    /// RDMA READs posted and not completed (a command spanning several descriptors has
    /// one per descriptor).
    reads_in_flight: u32,
    /// By engine slot: the unsignaled READs of a multi-descriptor command not yet
    /// accounted (as `chained` for WRITEs).
    read_parts: HashMap<u16, u32>,
    pub read_depth: u8,
    depth: u16,
    /// Send-queue work requests posted and not completed; the queue pair holds at most
    /// `send_capacity`.
    pub sends_in_flight: u32,
    send_capacity: u32,
    /// Own receives posted and not completed (`no_srq`): flushed ones come back too.
    pub recvs_in_flight: u32,
    /// Reads' data by CID, waiting for the command's completion to be chained behind.
    held: HashMap<u16, HeldWrite>,
    /// Held writes sent, their lists emptied, for the next reads.
    spare_held: Vec<HeldWrite>,
    /// A command's local entries, rebuilt for each transfer.
    scratch_sges: Vec<Sge>,
    /// A command's RDMA READs, built and copied into work requests at once.
    scratch_reads: Vec<WriteSeg>,
    /// By response slot: the data buffers its chained WRITEs read, freed when its SEND
    /// completes (successfully or flushed).
    response_buffers: Vec<Vec<DataBuf>>,
    /// By response slot: unsignaled WRITEs posted before its SEND and not yet accounted
    /// (a failed or flushed one completes on its own; a successful one with the SEND).
    chained: Vec<u8>,
    /// Send work requests built this pass, posted with one `ibv_post_send` at its end, or
    /// one command's at a time with `no_wr_batching`.
    batch: Vec<SendWr>,
    batch_wrs: bool,
    max_io_bytes: u32,
    /// The queue pair was moved to the error state (rdma_disconnect).
    pub disconnected: bool,
    /// The RDMA CM said the connection is gone (disconnected, timewait exit, device removal).
    pub cm_gone: bool,
    /// What this queue posted and waited for; the poll group adds them to its device's.
    pub stats: DeviceStats,
    /// When each outstanding command's capsule arrived (the poll pass's clock), by CID.
    arrivals: HashMap<u16, u64>,
    /// The arrival of the command each response slot answers, for `request_latency`.
    answered_arrival: Vec<u64>,
}

/// What a new queue's queue pair was made with.
pub struct ConnParts {
    pub id: CmId,
    pub token: u64,
    pub qpair: Qpair,
    pub device: Arc<Device>,
    pub own_recvs: Option<Region>,
    pub depth: u16,
    pub read_depth: u8,
    /// The transport's max_io_size: a descriptor list naming more is refused.
    pub max_io_bytes: u32,
    /// Post the work requests of several commands at once (not `no_wr_batching`).
    pub batch_wrs: bool,
}

impl Conn {
    pub fn new(parts: ConnParts) -> Result<Conn, String> {
        let ConnParts { id, token, qpair, device, own_recvs, depth, read_depth, max_io_bytes, batch_wrs } = parts;
        let qp_num = id.qp_num().ok_or("the connection has no queue pair")?;
        // Responses may outlive their command until the SEND completes: twice the depth.
        let slots = 2 * usize::from(depth);
        let responses = Region::new(&device, slots, CQE_BYTES)?;
        Ok(Conn {
            id,
            token,
            qp_num,
            qpair,
            device,
            own_recvs,
            responses,
            free_responses: (0..slots as u16).rev().collect(),
            keyed: HashMap::with_capacity(usize::from(depth)),
            pending_reads: VecDeque::new(),
            reads_in_flight: 0,
            read_parts: HashMap::new(),
            read_depth,
            depth,
            sends_in_flight: 0,
            send_capacity: send_queue_wrs(u32::from(depth)),
            recvs_in_flight: 0,
            held: HashMap::with_capacity(usize::from(depth)),
            spare_held: Vec::with_capacity(usize::from(depth)),
            scratch_sges: Vec::with_capacity(MAX_SGE),
            scratch_reads: Vec::with_capacity(sgl::MSDBD),
            response_buffers: (0..slots).map(|_| Vec::new()).collect(),
            chained: vec![0; slots],
            batch: Vec::with_capacity(usize::from(depth)),
            batch_wrs,
            max_io_bytes,
            disconnected: false,
            cm_gone: false,
            stats: DeviceStats::default(),
            arrivals: HashMap::with_capacity(usize::from(depth)),
            answered_arrival: vec![0; slots],
        })
    }

    /// Commands the queue takes at once.
    pub fn depth(&self) -> u32 {
        u32::from(self.depth)
    }

    /// Posts own receive `index` (without an SRQ).
    pub fn post_own_recv(&mut self, index: u32) -> Result<(), String> {
        let Some(region) = &self.own_recvs else { return Ok(()) };
        let sge = region.sge(index as usize, region.unit).ok_or("receive buffer out of range")?;
        let wr_id = WrId { kind: WrKind::Recv, tag: index }.encode();
        let mut wr = [RecvWr::new(wr_id, &[sge]).map_err(|err| err.to_string())?];
        self.id.post_recv(&mut wr).map_err(|err| err.to_string())?;
        self.stats.posted_recvs(1);
        self.recvs_in_flight += 1;
        Ok(())
    }

    /// A command capsule arrived: `capsule` is the SQE and any in-capsule data.
    pub fn on_capsule(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, capsule: &[u8]) {
        if capsule.len() < SQE_BYTES {
            return self.fail("a capsule shorter than a command");
        }
        let mut raw = [0u8; SQE_BYTES];
        raw.copy_from_slice(&capsule[..SQE_BYTES]);
        let mut sqe = Sqe(raw);
        self.arrivals.entry(sqe.cid()).or_insert(group.now_ns);
        let in_capsule = match sqe.sgl_type() {
            SGL_DATA_BLOCK_OFFSET => &capsule[SQE_BYTES..],
            SGL_KEYED_DATA_BLOCK | SGL_KEYED_DATA_BLOCK_INVALIDATE => {
                let remote = RemoteKey { addr: sqe.sgl_address(), rkey: sqe.sgl_key() };
                let invalidate = sqe.sgl_type() == SGL_KEYED_DATA_BLOCK_INVALIDATE;
                let one = KeyedPart { remote, len: sqe.sgl_length() };
                self.remember_keyed(sqe.cid(), Keyed { one, many: Vec::new(), len: one.len, invalidate, conflicts: 0 });
                &[][..]
            }
            SGL_LAST_SEGMENT_OFFSET => match sgl::parse_last_segment(&sqe, &capsule[SQE_BYTES..], self.max_io_bytes) {
                Ok((many, len)) => {
                    // The engine sees one keyed transfer of the whole length; the
                    // descriptors stay here, and the capsule's data was the list.
                    sqe = SqeBuilder(sqe.0).keyed(0, len, 0, false).build();
                    let keyed = Keyed { one: many[0], many, len, invalidate: false, conflicts: 0 };
                    self.remember_keyed(sqe.cid(), keyed);
                    &[][..]
                }
                Err(status) => {
                    if let Err(fault) = self.qpair.refuse_command(group, sqe, status) {
                        self.fail(&format!("{fault:?}"));
                    }
                    return;
                }
            },
            _ => &[][..],
        };
        if let Err(fault) = self.qpair.on_command(ctx, group, sqe, in_capsule) {
            self.fail(&format!("{fault:?}"));
        }
    }

    fn remember_keyed(&mut self, cid: u16, keyed: Keyed) {
        self.keyed.entry(cid).and_modify(|existing| existing.conflicts += 1).or_insert(keyed);
    }

    /// Ends the queue for a transport error: the engine closes it and the queue pair goes
    /// to the error state, so what is posted comes back flushed.
    pub fn fail(&mut self, why: &str) {
        if !self.qpair.is_closing() {
            log_warn!("RDMA queue {} ({}): {why}", self.token, self.device.name());
        }
        self.qpair.close(why);
        self.disconnect();
    }

    pub fn disconnect(&mut self) {
        if !self.disconnected {
            self.disconnected = true;
            if let Err(err) = self.id.disconnect() {
                log_debug!(peerless_core::log::flags::NVMF, "rdma_disconnect of queue {}: {err}", self.token);
            }
        }
    }

    /// Turns the engine's actions into work requests while the queue pair has room, and
    /// posts them.
    pub fn drain_actions(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) {
        if self.qpair.is_closing() && !self.disconnected {
            self.disconnect();
        }
        while let Some(action) = self.qpair.peek_action().copied() {
            if self.disconnected {
                // Nothing more goes on the wire; each action ends as if it had failed.
                let _ = self.qpair.next_action();
                match action {
                    Action::Complete(cqe) => {
                        self.forget_keyed(cqe.cid);
                        self.release_held(group, cqe.cid);
                    }
                    Action::SendData { slot, .. } => {
                        self.qpair.data_sent(group.buffers, slot, Err(Status::DATA_TRANSFER_ERROR))
                    }
                    Action::FetchData { slot, cid, .. } => {
                        let _ = self.qpair.data_placed(ctx, group, slot, cid, Err(Status::DATA_TRANSFER_ERROR));
                    }
                }
                continue;
            }
            match action {
                Action::Complete(cqe) => {
                    // The SEND and the WRITEs of the command's data go in one chain.
                    let writes = self.held.get(&cqe.cid).map_or(0, |held| held.writes.len() as u32);
                    if self.sends_in_flight + writes + 1 > self.send_capacity {
                        if writes > 0 {
                            self.stats.pending_rdma_write += 1;
                        } else {
                            self.stats.pending_rdma_send += 1;
                        }
                        break;
                    }
                    let Some(slot) = self.free_responses.pop() else {
                        self.stats.pending_rdma_send += 1;
                        break;
                    };
                    let _ = self.qpair.next_action();
                    self.answered_arrival[usize::from(slot)] = self.arrivals.remove(&cqe.cid).unwrap_or(group.now_ns);
                    self.send_response(ctx, group, slot, cqe);
                }
                Action::SendData { slot, cid, len, .. } => {
                    // Nothing is posted yet: the WRITE waits for the completion the engine
                    // queues once it hears the data is on its way.
                    let _ = self.qpair.next_action();
                    let held = self.hold_write(group, slot, cid, len);
                    self.qpair.data_sent(group.buffers, slot, held);
                }
                Action::FetchData { slot, cid, len } => {
                    let _ = self.qpair.next_action();
                    self.pending_reads.push_back((slot, cid, len));
                }
            }
        }
        self.start_reads(ctx, group);
        self.flush_sends(ctx, group);
    }

    fn forget_keyed(&mut self, cid: u16) -> Option<Keyed> {
        match self.keyed.get_mut(&cid) {
            Some(keyed) if keyed.conflicts > 0 => {
                keyed.conflicts -= 1;
                None
            }
            Some(_) => self.keyed.remove(&cid),
            None => None,
        }
    }

    /// SENDs a completion, with Invalidate when the command's descriptor asked for it
    /// (NVMe/RDMA 1.0 §3.6), behind the RDMA WRITEs of a read's data in the same chain.
    fn send_response(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, slot: u16, cqe: Cqe) {
        let keyed = self.forget_keyed(cqe.cid);
        let held = self.held.remove(&cqe.cid);
        let sge = self.responses.sge(usize::from(slot), CQE_BYTES);
        let written = self.responses.buffer.write(usize::from(slot) * CQE_BYTES, &cqe.encode());
        let invalidate = keyed.filter(|keyed| keyed.invalidate).map(|keyed| keyed.one.remote.rkey);
        let start = self.batch.len();
        let built = match (sge, written) {
            (Some(sge), Ok(())) => {
                let writes = held.as_ref().map_or(&[][..], |held| &held.writes[..]);
                response_chain(slot, writes, sge, invalidate, &mut self.batch).map_err(|err| format!("response: {err}"))
            }
            _ => Err("a response slot out of its region".to_string()),
        };
        if let Err(why) = built {
            self.batch.truncate(start);
            if let Some(held) = held {
                self.recycle_held(group, held);
            }
            self.free_responses.push(slot);
            return self.fail(&why);
        }
        let chain = self.batch.len() - start;
        self.sends_in_flight += chain as u32;
        self.chained[usize::from(slot)] = (chain - 1) as u8;
        if let Some(mut held) = held {
            // The slot's list was emptied when its last SEND completed; the two trade
            // places, so both keep their capacity.
            std::mem::swap(&mut self.response_buffers[usize::from(slot)], &mut held.buffers);
            self.recycle_held(group, held);
        }
        if !self.batch_wrs {
            self.flush_sends(ctx, group);
        }
    }

    /// Posts the send work requests built so far in one `ibv_post_send`. What could not
    /// be posted never completes: it ends here as a flushed request would, so its slots
    /// and buffers come back and the engine hears of its data.
    fn flush_sends(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) {
        if self.batch.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let posted = if self.disconnected {
            0
        } else {
            match self.id.post_send(&mut batch) {
                Ok(()) => batch.len(),
                Err(err) => {
                    self.fail(&format!("ibv_post_send: {err}"));
                    err.index.min(batch.len())
                }
            }
        };
        if posted > 0 {
            self.stats.posted_sends(posted);
        }
        for wr in &batch[posted..] {
            self.on_send_completion(ctx, group, WrId::decode(wr.wr_id()), WcStatus::Flushed, &|| "never posted".into());
        }
        batch.clear();
        self.batch = batch;
    }

    /// A send-queue completion (SEND, WRITE or READ), successful, flushed or failed.
    pub fn on_send_completion(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        id: WrId,
        status: WcStatus,
        // Formatted only for a failure: a completion's path allocates nothing.
        what: &dyn Fn() -> String,
    ) {
        self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
        let ok = status == WcStatus::Success;
        if !ok && status != WcStatus::Flushed {
            self.fail(&what());
        }
        let (slot, cid) = ((id.tag & 0xffff) as u16, (id.tag >> 16) as u16);
        match id.kind {
            WrKind::Send => {
                let index = usize::from(slot);
                // The unsignaled WRITEs before it are done too (RC completes in order).
                let chained = self.chained.get_mut(index).map_or(0, std::mem::take);
                self.sends_in_flight = self.sends_in_flight.saturating_sub(u32::from(chained));
                if let Some(held) = self.response_buffers.get_mut(index) {
                    buffers::give_back(group.buffers, held);
                }
                if let (true, Some(arrived)) = (ok, self.answered_arrival.get(index)) {
                    self.stats.request_latency += group.now_ns.saturating_sub(*arrived);
                }
                self.free_responses.push(slot);
            }
            WrKind::Write => {
                // A chained WRITE completes on its own only failed or flushed; its SEND,
                // which completes after it, frees the buffers.
                if let Some(chained) = self.chained.get_mut(usize::from(slot)) {
                    *chained = chained.saturating_sub(1);
                }
            }
            WrKind::ReadPart => {
                // Completes on its own only failed or flushed; the command's last READ,
                // after it, tells the engine.
                self.reads_in_flight = self.reads_in_flight.saturating_sub(1);
                if let Some(parts) = self.read_parts.get_mut(&slot) {
                    *parts = parts.saturating_sub(1);
                }
            }
            WrKind::Read => {
                // The unsignaled READs before it are done too.
                let parts = self.read_parts.remove(&slot).unwrap_or(0);
                self.sends_in_flight = self.sends_in_flight.saturating_sub(parts);
                self.reads_in_flight = self.reads_in_flight.saturating_sub(1 + parts);
                let placed = if ok { Ok(()) } else { Err(Status::DATA_TRANSFER_ERROR) };
                if let Err(fault) = self.qpair.data_placed(ctx, group, slot, cid, placed) {
                    self.fail(&format!("{fault:?}"));
                }
            }
            WrKind::Recv => {}
        }
    }

    /// Everything posted is back and the engine has nothing left: the queue can go.
    pub fn is_finished(&self) -> bool {
        self.disconnected
            && self.sends_in_flight == 0
            && self.recvs_in_flight == 0
            && self.pending_reads.is_empty()
            && self.held.is_empty()
            && self.qpair.is_drained()
    }

    /// On the way out: reads never posted end now (the engine gives their buffers back),
    /// and reads' data never sent goes back to the pool.
    pub fn end_unsent(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) {
        while let Some((slot, cid, _)) = self.pending_reads.pop_front() {
            let _ = self.qpair.data_placed(ctx, group, slot, cid, Err(Status::DATA_TRANSFER_ERROR));
        }
        for (_, mut held) in self.held.drain() {
            buffers::give_back(group.buffers, &mut held.buffers);
        }
    }
}
