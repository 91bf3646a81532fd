//! One queue pair as the engine sees it: the per-command state machine of NVMe over
//! Fabrics, with no I/O of its own (the quinn-proto shape). A transport feeds it parsed
//! commands and data-placement events and drains [`Action`]s: data to send, data to
//! fetch, completions. Connect, Property Get/Set, admin commands, AERs, Keep Alive,
//! Abort and Disconnect live here and in `admin_queue`; reads, writes and their buffers
//! in `io_queue`.

mod admin_queue;
mod auth_queue;
mod io_queue;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use peerless_bdev::{completion_queue, BdevHandle, BdevIo, CompletionQueue, DataBuf};
use peerless_core::log::flags;
use peerless_core::log_debug;
use peerless_core::mem::{DomainId, IoBufCache, P2pProvider, Sgl};

use super::auth::session::Session;
use super::buffers::{self, DataPool};
use super::ctrlr::{AdminState, Controller, IoCounters};
use super::io_cmd::{Plan, SglBinding, Transfer};
use super::transport::TransportOptions;
use super::NvmfTarget;
use crate::nvme::{status, Cqe, Sqe, Status};

/// What the transport must do for the engine, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `len` bytes of the command's data to the host (NVMe/TCP 1.0, 3.6.2.8
    /// C2HData; an RDMA WRITE). The transport reads them through [`Qpair::data`] and then
    /// calls [`Qpair::data_sent`]. `completes`: the data itself completes the command (the
    /// SUCCESS flag of C2HData) and no completion follows.
    SendData { slot: u16, cid: u16, len: u32, completes: bool },
    /// Fetch `len` bytes of host data for the command (NVMe/TCP 1.0, 3.6.2.9 R2T with
    /// TTAG = slot; an RDMA READ) and hand them to [`Qpair::data_received`].
    FetchData { slot: u16, cid: u16, len: u32 },
    /// Send a completion queue entry (NVMe/TCP CapsuleResp; an RDMA SEND).
    Complete(Cqe),
}

/// Input that breaks the transport's rules rather than a command's: the transport ends
/// the connection (for NVMe/TCP with the fatal error status the variant maps to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// More commands outstanding than the queue has entries (NVMe-oF 1.1, 2.4.1).
    QueueOverrun,
    /// Data for a command that is not waiting for any.
    UnknownTransfer,
    /// Data whose command identifier is not the one the transfer was for.
    WrongCommand,
    /// Data at an offset other than the next expected one, or past the transfer's end.
    OutOfRange,
}

/// Where a command is (SPDK's request states, named after what the command waits for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReqState {
    Free,
    /// Waiting for data buffers: the pool was empty (SPDK's NEED_BUFFER).
    AwaitingBuffer,
    /// Host data is being fetched (NVMe-oF 1.1, 2.3.2: data not in the capsule).
    AwaitingData,
    /// Being decoded, or running in the bdev layer.
    Executing,
    /// An Asynchronous Event Request held until an event (NVMe Base 2.0, 5.2).
    AwaitingEvent,
    /// An Abort waiting for the queue it targets to answer (NVMe Base 2.0, 5.1).
    AwaitingAbort,
    /// Its data is with the transport on its way to the host.
    SendingData,
}

/// One command slot; its index is the transfer tag the transport names it by.
pub(crate) struct Request {
    pub state: ReqState,
    pub sqe: Sqe,
    pub plan: Option<Plan>,
    pub transfer: Transfer,
    /// Host data bytes received so far.
    pub received: usize,
    /// Bytes of `buffers` that are the command's data.
    pub data_len: usize,
    /// Bdev I/Os still running for this command.
    pub outstanding: u32,
    pub status: Status,
    pub result: u64,
    /// Data buffers: pool buffers, a P2P buffer, or an admin command's reply.
    pub buffers: Vec<DataBuf>,
    /// In-capsule data waiting in the queue's staging area for a buffer.
    pub staged: bool,
    /// The data being sent completes the command: no completion follows it.
    pub data_completes: bool,
    /// The namespace's bdev channel while the command is at the bdev: a namespace removed
    /// meanwhile must not take the channel (and the I/O in it) away.
    pub channel: Option<BdevHandle>,
}

impl Request {
    fn empty() -> Request {
        Request {
            state: ReqState::Free,
            sqe: Sqe([0; 64]),
            plan: None,
            transfer: Transfer::NONE,
            received: 0,
            data_len: 0,
            outstanding: 0,
            status: Status::SUCCESS,
            result: 0,
            buffers: Vec::new(),
            staged: false,
            data_completes: false,
            channel: None,
        }
    }
}

/// A connected queue (NVMe-oF 1.1, 3.3: after a successful Connect).
pub(crate) struct Queue {
    pub controller: Arc<Controller>,
    pub qid: u16,
    /// Entries the host may have outstanding (SQSIZE + 1).
    pub entries: u16,
    pub admin: Option<AdminState>,
    /// Submission queue head: one entry consumed per command received.
    pub sqhd: u16,
    /// This queue's share of the controller's SMART counters (I/O queues only).
    pub counters: Option<Arc<IoCounters>>,
    /// The DH-HMAC-CHAP transaction under way or last finished, if any.
    pub auth: Option<Box<Session>>,
    /// The host must authenticate before anything else runs (Connect said so).
    pub auth_pending: bool,
    /// When a pending or repeated transaction that has not finished ends the queue.
    pub auth_deadline_ns: u64,
}

/// What a transport fixes for each of its queue pairs.
#[derive(Clone, Debug)]
pub struct QpairConfig {
    /// Whether C2H data may complete a read by itself (NVMe/TCP `c2h_success`).
    pub data_completes: bool,
    /// In-capsule data the admin queue accepts (NVMe/TCP 1.0, 3.3.7: 8 KiB).
    pub admin_in_capsule_bytes: usize,
    /// How commands name data outside the capsule.
    pub sgl: super::io_cmd::SglBinding,
    /// Which P2P providers' memory the transport can move this queue's data through.
    pub p2p_reach: P2pReach,
}

/// Who moves a queue's data, and so which P2P memory its commands may be given.
#[derive(Clone)]
pub enum P2pReach {
    /// The CPU (NVMe/TCP): it reaches any provider through I/O accessors or the
    /// provider's DMA engine, as `core::mem`'s copy paths decide.
    Cpu,
    /// The NIC (NVMe/RDMA): only memory registered with it, which the transport probes
    /// once per provider.
    Nic(Arc<dyn NicReach>),
}

/// A NIC's answer to "can you place data in this provider's memory yourself".
pub trait NicReach: Send + Sync {
    fn reaches(&self, provider: &Arc<dyn P2pProvider>) -> bool;
}

impl std::fmt::Debug for P2pReach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            P2pReach::Cpu => "Cpu",
            P2pReach::Nic(_) => "Nic",
        })
    }
}

impl P2pReach {
    pub fn reaches(&self, provider: &Arc<dyn P2pProvider>) -> bool {
        match self {
            P2pReach::Cpu => true,
            P2pReach::Nic(nic) => nic.reaches(provider),
        }
    }
}

/// Counters `nvmf_get_stats`, `nvmf_subsystem_get_qpairs` and `mem_get_stats` report.
#[derive(Clone, Copy, Debug, Default)]
pub struct QpairStats {
    pub completed: u64,
    /// Payload bytes placed in buffers of each kind (indexed by `MemKind::index`).
    pub placed_bytes: [u64; 3],
    /// Commands whose namespace wanted P2P memory but got host memory: the provider was
    /// full, or the transport's NIC cannot reach it.
    pub p2p_fallbacks: u64,
    /// Times a command found the data buffer pool empty and waited.
    pub buffer_waits: u64,
}

impl QpairStats {
    pub fn add(&mut self, other: &QpairStats) {
        self.completed += other.completed;
        self.p2p_fallbacks += other.p2p_fallbacks;
        self.buffer_waits += other.buffer_waits;
        for (total, placed) in self.placed_bytes.iter_mut().zip(other.placed_bytes) {
            *total += placed;
        }
    }
}

pub struct Qpair {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Set by the transport once a TLS handshake named the peer (before any command).
    pub tls_peer: Option<super::connect::TlsPeer>,
    target: NvmfTarget,
    opts: Arc<TransportOptions>,
    pool: &'static DataPool,
    config: QpairConfig,
    queue: Option<Queue>,
    closing: bool,
    requests: Vec<Request>,
    free: Vec<u16>,
    /// The CID of each slot's command, `FREE_CID` when free: a dense copy of what the
    /// requests hold, so the per-command conflict check scans a few cache lines.
    cids: Vec<u32>,
    /// Commands waiting for buffers, oldest first.
    waiting: VecDeque<u16>,
    /// In-capsule data of commands waiting for buffers: `in_capsule_data_size` per slot,
    /// allocated the first time the pool runs dry on this queue.
    staging: Vec<u8>,
    actions: VecDeque<Action>,
    /// The last provider this queue asked its transport about and the answer: a NIC's
    /// answer takes a lock, and a P2P namespace asks on every command. Domain ids are
    /// never reused, so an answer cannot outlive its provider's identity.
    p2p_reached: Option<(DomainId, bool)>,
    completions: CompletionQueue,
    /// Finished I/O objects, reused: they travel as boxes through the bdev layer, and
    /// keeping the boxes is what makes steady state allocation-free.
    #[allow(clippy::vec_box)]
    spare_ios: Vec<Box<BdevIo>>,
    /// The slot whose answer is the queue's last: the queue ends once it is out.
    close_after: Option<u16>,
    pub stats: QpairStats,
}

/// Marks a free slot in `Qpair::cids` (a CID is 16 bits).
const FREE_CID: u32 = u32::MAX;

/// Actions one queue may have pending: a completion and a data transfer per command.
fn action_capacity(entries: usize) -> usize {
    2 * entries + 4
}

impl Qpair {
    pub fn new(
        id: u64,
        target: NvmfTarget,
        opts: Arc<TransportOptions>,
        pool: &'static DataPool,
        config: QpairConfig,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Qpair {
        // Until Connect sizes the queue, one command (the Connect) may be outstanding.
        Qpair {
            id,
            peer,
            local,
            target,
            opts,
            pool,
            config,
            queue: None,
            closing: false,
            tls_peer: None,
            requests: vec![Request::empty()],
            free: vec![0],
            cids: vec![FREE_CID],
            waiting: VecDeque::new(),
            staging: Vec::new(),
            actions: VecDeque::with_capacity(action_capacity(1)),
            p2p_reached: None,
            completions: completion_queue(1),
            spare_ios: Vec::new(),
            close_after: None,
            stats: QpairStats::default(),
        }
    }

    pub fn qid(&self) -> Option<u16> {
        self.queue.as_ref().map(|queue| queue.qid)
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.queue.as_ref().map(|queue| &queue.controller)
    }

    /// The data buffers this queue's commands take.
    pub fn pool(&self) -> &'static DataPool {
        self.pool
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The in-capsule data this queue accepts in one command.
    pub fn in_capsule_limit(&self) -> usize {
        match self.qid() {
            Some(qid) if qid > 0 => self.opts.in_capsule_data_size as usize,
            _ => self.config.admin_in_capsule_bytes,
        }
    }

    /// The next thing the transport must do, if any.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next thing the transport must do, left in place: a transport that cannot take
    /// more data now leaves the action (and its buffers) with the engine.
    pub fn peek_action(&self) -> Option<&Action> {
        self.actions.front()
    }

    /// Whether the queue has work that moves without input from its host: actions to
    /// turn into PDUs, commands in the bdev layer or waiting for buffers. A queue
    /// without any only needs polling when its host sends something, an event or abort
    /// answer is delivered to it, or its keep-alive is due.
    pub fn needs_poll(&self) -> bool {
        if !self.actions.is_empty() || !self.waiting.is_empty() {
            return true;
        }
        let in_use = self.requests.len() - self.free.len();
        if in_use == 0 {
            return false;
        }
        // An I/O queue's commands are nearly always in flight: no scan on its hot path.
        // An admin queue holds AERs for as long as it lives, which need no polling.
        self.qid().is_some_and(|qid| qid > 0)
            || self.requests.iter().any(|request| {
                matches!(request.state, ReqState::Executing | ReqState::AwaitingBuffer | ReqState::SendingData)
            })
    }

    /// Commands running in the bdev layer.
    pub fn outstanding(&self) -> usize {
        self.requests.iter().filter(|request| request.state == ReqState::Executing).count()
    }

    /// Command slots taken: commands received and not yet answered or let go.
    pub fn slots_in_use(&self) -> usize {
        self.requests.len() - self.free.len()
    }

    /// Closed, with nothing left in the bdev layer, with the transport or to send.
    pub fn is_drained(&self) -> bool {
        self.closing
            && self.actions.is_empty()
            && self.requests.iter().all(|request| {
                !matches!(request.state, ReqState::Executing | ReqState::SendingData | ReqState::AwaitingData)
            })
    }

    /// The data of a command the engine asked the transport to send.
    pub fn data(&self, slot: u16) -> Result<Sgl<'_>, Status> {
        let request = self.requests.get(usize::from(slot)).ok_or(Status::INTERNAL_ERROR)?;
        if request.state != ReqState::SendingData {
            return Err(Status::INTERNAL_ERROR);
        }
        buffers_sgl(&request.buffers, request.data_len)
    }

    /// The data of a command the engine asked the transport to send, as bytes, when it
    /// is one host buffer (the common case: a pool buffer); None otherwise, and [`data`]
    /// gives the tagged list.
    ///
    /// [`data`]: Qpair::data
    pub fn data_bytes(&self, slot: u16) -> Option<&[u8]> {
        let request = self.requests.get(usize::from(slot)).filter(|r| r.state == ReqState::SendingData)?;
        let [buffer] = request.buffers.as_slice() else { return None };
        buffer.host_bytes()?.get(..request.data_len)
    }

    /// Moves the buffers holding the data of the command in `slot` that the transport is
    /// sending to the end of `into`, for a transport whose NIC reads them after the engine
    /// hears the data was sent: an RDMA WRITE posted in one chain with the response SEND
    /// behind it (RC ordering puts the data first, NVMe/RDMA 1.0 §3.6), so the buffers are
    /// the transport's until that SEND completes. [`Qpair::data_sent`] then has none to
    /// free. Both lists keep their capacity: nothing is allocated.
    pub fn move_data_buffers(&mut self, slot: u16, into: &mut Vec<DataBuf>) -> Result<(), Status> {
        let request = self.requests.get_mut(usize::from(slot)).ok_or(Status::INTERNAL_ERROR)?;
        if request.state != ReqState::SendingData {
            return Err(Status::INTERNAL_ERROR);
        }
        into.append(&mut request.buffers);
        Ok(())
    }

    /// The transport sent a command's data (or could not): the command goes on.
    pub fn data_sent(&mut self, cache: &mut IoBufCache<'static>, slot: u16, sent: Result<(), Status>) {
        self.data_sent_lending(cache, slot, sent, None);
    }

    /// `data_sent`, except that with `lend` the command's buffers go there instead of
    /// back to the cache: a zero-copy send still reads them, so the transport keeps them
    /// until the kernel lets go, while the command completes now and its CID is free for
    /// the host to reuse (it may have seen the data's SUCCESS flag already).
    pub fn data_sent_lending(
        &mut self,
        cache: &mut IoBufCache<'static>,
        slot: u16,
        sent: Result<(), Status>,
        lend: Option<&mut dyn FnMut(DataBuf)>,
    ) {
        let index = usize::from(slot);
        let Some(request) = self.requests.get_mut(index).filter(|r| r.state == ReqState::SendingData) else {
            debug_assert!(false, "data_sent for slot {slot} that sent nothing");
            return;
        };
        let (status, result, completes) = (request.status, request.result, request.data_completes);
        match lend {
            Some(lend) => request.buffers.drain(..).for_each(lend),
            None => buffers::give_back(cache, &mut request.buffers),
        }
        match sent {
            Ok(()) if completes => {
                self.stats.completed += 1;
                self.release(index);
            }
            Ok(()) => self.finish(cache, index, status, result),
            Err(failed) => self.finish(cache, index, failed, 0),
        }
        if self.close_after == Some(slot) {
            self.close_after = None;
            self.close("authentication failed");
        }
    }

    /// Ends the queue: no more commands are taken; commands waiting for data, buffers or
    /// events end unanswered, and the queue is drained once the bdev layer gives back
    /// what it runs and the transport sends what is pending.
    pub fn close(&mut self, why: &str) {
        if self.closing {
            return;
        }
        log_debug!(flags::NVMF, "qpair {} from {} closing: {why}", self.id, self.peer);
        self.closing = true;
        self.waiting.clear();
        // A NIC may still be writing host data into a command's buffers (an RDMA READ in
        // flight): those stay the command's until the transport says the read ended.
        let placed_by_nic = self.config.sgl == SglBinding::Rdma;
        for index in 0..self.requests.len() {
            let request = &mut self.requests[index];
            let ends_now = match request.state {
                ReqState::AwaitingData => !placed_by_nic,
                ReqState::AwaitingBuffer | ReqState::AwaitingEvent | ReqState::AwaitingAbort => true,
                _ => false,
            };
            if ends_now {
                // Their pool buffers go back to the shared pool as they drop.
                request.buffers.clear();
                self.release(index);
            }
        }
        if let Some(queue) = self.queue.as_ref() {
            super::connect::disconnect(&queue.controller, queue.qid, self.id);
        }
    }

    /// Takes a free slot for `sqe`; None when the command was answered on the spot.
    fn admit(&mut self, sqe: &Sqe) -> Result<Option<usize>, Fault> {
        let cid = sqe.cid();
        let limit = self.queue.as_ref().map_or(1, |queue| usize::from(queue.entries));
        let in_use = self.requests.len() - self.free.len();
        // A host may not have more commands outstanding than its queue has entries.
        if in_use >= limit {
            return Err(Fault::QueueOverrun);
        }
        self.advance_sqhd();
        if self.cids.contains(&u32::from(cid)) {
            self.push_completion(cid, status::COMMAND_ID_CONFLICT, 0);
            return Ok(None);
        }
        let Some(slot) = self.free.pop() else { return Err(Fault::QueueOverrun) };
        self.cids[usize::from(slot)] = u32::from(cid);
        let request = &mut self.requests[usize::from(slot)];
        debug_assert_eq!(request.state, ReqState::Free);
        debug_assert!(request.buffers.is_empty() && request.channel.is_none());
        // Decoding runs to its end within this call, then the command waits or runs.
        request.state = ReqState::Executing;
        request.sqe = *sqe;
        request.plan = None;
        request.transfer = Transfer::NONE;
        request.received = 0;
        request.data_len = 0;
        request.outstanding = 0;
        request.status = Status::SUCCESS;
        request.result = 0;
        request.staged = false;
        request.data_completes = false;
        Ok(Some(usize::from(slot)))
    }

    fn advance_sqhd(&mut self) {
        if let Some(queue) = self.queue.as_mut() {
            // One entry consumed per command, wrapping at the queue size (NVMe Base 2.0, 3.3.1).
            queue.sqhd = (queue.sqhd + 1) % queue.entries.max(1);
        }
    }

    fn push_completion(&mut self, cid: u16, status: Status, result: u64) {
        let mut cqe = Cqe::new(cid, status).with_result(result);
        if let Some(queue) = self.queue.as_ref() {
            cqe.sqhd = queue.sqhd;
            cqe.sqid = queue.qid;
        }
        self.actions.push_back(Action::Complete(cqe));
        self.stats.completed += 1;
    }

    /// Frees a slot without answering (closing, or answered by its data).
    fn release(&mut self, index: usize) {
        let request = &mut self.requests[index];
        debug_assert!(request.state != ReqState::Free, "slot {index} freed twice");
        request.channel = None;
        request.plan = None;
        request.staged = false;
        request.state = ReqState::Free;
        self.cids[index] = FREE_CID;
        self.free.push(index as u16);
    }

    /// Answers a command and frees its slot; its buffers go back to the group's cache.
    fn finish(&mut self, cache: &mut IoBufCache<'static>, index: usize, status: Status, result: u64) {
        buffers::give_back(cache, &mut self.requests[index].buffers);
        self.finish_unbuffered(index, status, result);
    }

    /// Answers a command that holds no pool buffer (events, aborts, refusals).
    fn finish_unbuffered(&mut self, index: usize, status: Status, result: u64) {
        let cid = self.requests[index].sqe.cid();
        self.requests[index].buffers.clear();
        self.release(index);
        if !self.closing {
            self.push_completion(cid, status, result);
        }
    }

    /// Sizes the queue for `entries` commands once Connect has told how many.
    fn size_queue(&mut self, entries: usize) {
        let had = self.requests.len();
        if entries > had {
            self.requests.extend((had..entries).map(|_| Request::empty()));
            self.cids.resize(entries, FREE_CID);
            self.free.extend((had..entries).rev().map(|index| index as u16));
        }
        self.actions.reserve(action_capacity(entries).saturating_sub(self.actions.capacity()));
        self.completions = completion_queue(entries);
        self.spare_ios.reserve(entries);
        self.waiting.reserve(entries);
    }
}

/// A tagged list over a command's buffers, exactly `len` bytes long.
fn buffers_sgl(buffers: &[DataBuf], len: usize) -> Result<Sgl<'_>, Status> {
    let parts = buffers.iter().map(DataBuf::sgl);
    exactly(joined(parts)?, len)
}

/// A writable list over a command's buffers, exactly `len` bytes long.
fn buffers_sgl_mut(buffers: &mut [DataBuf], len: usize) -> Result<Sgl<'_>, Status> {
    let parts = buffers.iter_mut().map(DataBuf::sgl_mut);
    exactly(joined(parts)?, len)
}

/// One list of the buffers' lists; with one buffer (the common case) that list itself.
fn joined<'a>(mut parts: impl Iterator<Item = peerless_core::mem::Result<Sgl<'a>>>) -> Result<Sgl<'a>, Status> {
    let mut sgl = parts.next().unwrap_or_else(|| Ok(Sgl::new())).map_err(|_| Status::INTERNAL_ERROR)?;
    for part in parts {
        sgl.append(part.map_err(|_| Status::INTERNAL_ERROR)?).map_err(|_| Status::INTERNAL_ERROR)?;
    }
    Ok(sgl)
}

fn exactly(mut sgl: Sgl<'_>, len: usize) -> Result<Sgl<'_>, Status> {
    if sgl.len() < len {
        return Err(Status::INTERNAL_ERROR);
    }
    sgl.truncate(len);
    Ok(sgl)
}
