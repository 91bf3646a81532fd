//! One NVMe/TCP connection (one queue pair) on its poll group's thread: non-blocking
//! socket I/O, PDU framing and validation, the send path, termination. What commands do
//! is in `command.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use peerless_bdev::{completion_queue, BdevHandle, BdevIo, CompletionQueue, DataBuf};
use peerless_core::log::flags;
use peerless_core::mem::{ChunkReader, Sgl};
use peerless_core::reactor::ThreadCtx;
use peerless_core::{log_debug, log_warn};

use super::options::TransportOptions;
use super::pdu::{self, fes, pdu_type, CommonHeader, Digests, Fatal, IcReq, IcResp, Receiver};
use super::poll_group::NsTables;
use crate::nvme::{Cqe, Sqe, Status};
use crate::nvmf::ctrlr::{AdminState, Controller};
use crate::nvmf::io_cmd::{Plan, Transfer};
use crate::nvmf::NvmfTarget;

/// Admin queues carry 8 KiB of in-capsule data (NVMe/TCP 1.0, 3.3.7): enough for Connect.
pub const ADMIN_IN_CAPSULE_BYTES: usize = 8192;
/// Bytes read from the socket per read call at most; larger PDUs take several.
const READ_SLACK_BYTES: usize = 4096;
/// PDUs handled per poll, so one busy connection cannot starve its neighbours.
const PDUS_PER_POLL: usize = 64;
/// A host that stops reading is cut off past this much unsent output.
const MAX_PENDING_OUTPUT_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    AwaitIcReq,
    Ready,
    /// No more input is read; output drains, in-flight I/O finishes, then the conn goes.
    Closing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    /// Waiting for H2CData after an R2T.
    AwaitingData,
    /// Running in the bdev layer (or held, for an AER).
    Executing,
    Held,
}

/// One command in flight; its index is the R2T transfer tag.
pub(super) struct Slot {
    pub state: SlotState,
    pub sqe: Sqe,
    /// Host data buffer, kept across commands so steady state allocates nothing.
    pub buffer: Option<DataBuf>,
    /// This command's buffer in its namespace's P2P provider, when it has one; it goes
    /// back to the provider when the command ends.
    pub p2p: Option<DataBuf>,
    pub transfer: Transfer,
    pub received: usize,
    pub plan: Option<Plan>,
    pub outstanding: u32,
    pub status: Status,
    /// The namespace's bdev channel while this command's I/O is at the bdev: a namespace
    /// removed meanwhile must not take the channel (and the I/O in it) away.
    pub channel: Option<BdevHandle>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            state: SlotState::Free,
            sqe: Sqe([0; 64]),
            buffer: None,
            p2p: None,
            transfer: Transfer::NONE,
            received: 0,
            plan: None,
            outstanding: 0,
            status: Status::SUCCESS,
            channel: None,
        }
    }
}

/// A connected queue.
pub(super) struct Queue {
    pub controller: Arc<Controller>,
    pub qid: u16,
    pub entries: u16,
    pub admin: Option<AdminState>,
    pub sqhd: u16,
}

/// Counters `nvmf_subsystem_get_qpairs` and `nvmf_get_stats` report.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnStats {
    pub completed_io: u64,
    /// Payload bytes placed in buffers of each kind (indexed by `MemKind::index`).
    pub placed_bytes: [u64; 3],
    /// Commands whose namespace wanted P2P memory but got host memory (provider full).
    pub p2p_fallbacks: u64,
}

impl ConnStats {
    pub(super) fn placed(&mut self, buffer: Option<&DataBuf>, bytes: usize) {
        let kind = match buffer {
            Some(DataBuf::P2p(buf)) => buf.tag().kind(),
            _ => peerless_core::mem::MemKind::Host,
        };
        self.placed_bytes[kind.index()] += bytes as u64;
    }
}

pub struct Conn {
    pub id: u64,
    stream: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub(super) phase: Phase,
    pub(super) digests: Digests,
    recv: Vec<u8>,
    recv_start: usize,
    recv_end: usize,
    pub(super) out: Vec<u8>,
    out_pos: usize,
    pub(super) options: Arc<TransportOptions>,
    pub(super) target: NvmfTarget,
    pub(super) queue: Option<Queue>,
    pub(super) slots: Vec<Slot>,
    pub(super) free_slots: Vec<u16>,
    pub(super) completions: CompletionQueue,
    /// Finished I/O objects, reused: they travel as boxes through the bdev layer, and
    /// keeping the boxes is what makes steady state allocation-free.
    #[allow(clippy::vec_box)]
    pub(super) spare_ios: Vec<Box<BdevIo>>,
    pub stats: ConnStats,
    /// The listener's count of live connections, released when this one goes.
    listener_connections: Arc<AtomicU32>,
}

impl Conn {
    pub fn new(
        id: u64,
        stream: TcpStream,
        target: NvmfTarget,
        options: Arc<TransportOptions>,
        listener_connections: Arc<AtomicU32>,
    ) -> std::io::Result<Conn> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let slots = usize::from(options.max_queue_depth).max(options.max_aq_depth as usize);
        // The largest PDU: an H2CData of max_io_size or a capsule with its in-capsule data.
        let largest_data =
            (options.max_io_size as usize).max(options.in_capsule_data_size as usize).max(ADMIN_IN_CAPSULE_BYTES);
        let recv_bytes = pdu::MAX_HEADER_BYTES + 2 * pdu::DIGEST_BYTES + largest_data + READ_SLACK_BYTES;
        Ok(Conn {
            id,
            stream,
            peer,
            local,
            phase: Phase::AwaitIcReq,
            digests: Digests::default(),
            recv: vec![0u8; recv_bytes],
            recv_start: 0,
            recv_end: 0,
            out: Vec::new(),
            out_pos: 0,
            options,
            target,
            queue: None,
            slots: (0..slots).map(|_| Slot::empty()).collect(),
            free_slots: (0..slots as u16).rev().collect(),
            completions: completion_queue(slots),
            spare_ios: Vec::with_capacity(slots),
            stats: ConnStats::default(),
            listener_connections: {
                listener_connections.fetch_add(1, Ordering::Relaxed);
                listener_connections
            },
        })
    }

    pub fn has_pending_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.stream.as_fd()
    }

    pub fn qid(&self) -> Option<u16> {
        self.queue.as_ref().map(|queue| queue.qid)
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.queue.as_ref().map(|queue| &queue.controller)
    }

    pub fn is_admin(&self) -> bool {
        self.qid() == Some(0)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Commands still running in the bdev layer.
    pub fn outstanding(&self) -> usize {
        self.slots.iter().filter(|slot| slot.state == SlotState::Executing && slot.outstanding > 0).count()
    }

    /// Whether the connection is finished and can be dropped.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Closing && self.outstanding() == 0 && self.out_pos >= self.out.len()
    }

    /// One timeslice: read and handle PDUs, finish completed I/O, send.
    pub fn poll(&mut self, ctx: &mut ThreadCtx, tables: &mut NsTables) -> bool {
        let mut busy = self.reap_completions(ctx);
        if self.phase != Phase::Closing {
            busy |= self.receive(ctx, tables);
            self.check_liveness(ctx);
        }
        busy |= self.flush();
        busy
    }

    fn receive(&mut self, ctx: &mut ThreadCtx, tables: &mut NsTables) -> bool {
        let mut busy = false;
        if self.recv_start == self.recv_end {
            self.recv_start = 0;
            self.recv_end = 0;
        } else if self.recv_start > 0 && self.recv.len() - self.recv_end < READ_SLACK_BYTES {
            // Unhandled PDUs sit at the end: move them to the front before reading more.
            self.recv.copy_within(self.recv_start..self.recv_end, 0);
            self.recv_end -= self.recv_start;
            self.recv_start = 0;
        }
        // A full buffer holds only complete PDUs (a partial one always fits): handle them
        // first. Reading into no space would return 0, which means EOF.
        let read = if self.recv_end == self.recv.len() {
            Ok(None)
        } else {
            self.stream.read(&mut self.recv[self.recv_end..]).map(Some)
        };
        match read {
            Ok(None) => busy = true,
            Ok(Some(0)) => {
                self.close("the host closed the connection");
                return true;
            }
            Ok(Some(read)) => {
                self.recv_end += read;
                busy = true;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock || err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                self.close(&format!("read failed: {err}"));
                return true;
            }
        }
        for _ in 0..PDUS_PER_POLL {
            match self.next_pdu(ctx, tables) {
                Ok(true) => busy = true,
                Ok(false) => break,
                Err((fatal, offending)) => {
                    self.terminate(fatal, &offending);
                    return true;
                }
            }
        }
        busy
    }

    /// Handles one complete PDU from the receive buffer; Ok(false) when none is whole yet.
    fn next_pdu(&mut self, ctx: &mut ThreadCtx, tables: &mut NsTables) -> Result<bool, (Fatal, Vec<u8>)> {
        let available = self.recv_end - self.recv_start;
        if available < pdu::COMMON_HEADER_BYTES {
            return Ok(false);
        }
        let start = self.recv_start;
        let header = CommonHeader::parse(&self.recv[start..start + pdu::COMMON_HEADER_BYTES]);
        let quote = |bytes: &[u8]| bytes[..bytes.len().min(pdu::TERM_MAX_DATA)].to_vec();
        let layout = match self.phase {
            Phase::AwaitIcReq if header.pdu_type != pdu_type::IC_REQ => {
                return Err((Fatal::new(fes::PDU_SEQUENCE_ERROR, 0), quote(&self.recv[start..self.recv_end])));
            }
            Phase::Ready if header.pdu_type == pdu_type::IC_REQ => {
                return Err((Fatal::new(fes::PDU_SEQUENCE_ERROR, 0), quote(&self.recv[start..self.recv_end])));
            }
            _ => pdu::validate(header, Receiver::Controller, self.digests, self.max_data(header.pdu_type)),
        };
        let layout = layout.map_err(|fatal| (fatal, quote(&self.recv[start..self.recv_end])))?;
        if layout.total > self.recv.len() {
            return Err((Fatal::new(fes::DATA_LIMIT_EXCEEDED, 4), quote(&self.recv[start..self.recv_end])));
        }
        if available < layout.total {
            if start + layout.total > self.recv.len() {
                // Make room for the rest of this PDU at the end of the buffer.
                self.recv.copy_within(start..self.recv_end, 0);
                self.recv_end -= start;
                self.recv_start = 0;
            }
            return Ok(false);
        }
        let bytes = &self.recv[start..start + layout.total];
        if self.digests.header
            && layout.header_bytes > usize::from(header.hlen)
            && !pdu::header_digest_ok(bytes, usize::from(header.hlen))
        {
            return Err((Fatal::new(fes::HEADER_DIGEST_ERROR, 0), quote(bytes)));
        }
        let data_range = layout.data_offset..layout.data_offset + layout.data_len;
        if layout.data_digest {
            let expected = &bytes[data_range.end..data_range.end + pdu::DIGEST_BYTES];
            if pdu::digest(&bytes[data_range.clone()]) != expected {
                // SPDK's target ends the connection on a data digest error as well.
                return Err((Fatal::new(fes::HEADER_DIGEST_ERROR, 0), quote(&bytes[..layout.header_bytes])));
            }
        }
        // Hand the PDU over without holding a borrow of the receive buffer.
        let recv = std::mem::take(&mut self.recv);
        let result = {
            let bytes = &recv[start..start + layout.total];
            self.on_pdu(ctx, tables, header, &bytes[..layout.header_bytes], &bytes[data_range])
        };
        self.recv = recv;
        self.recv_start += layout.total;
        result.map(|()| true).map_err(|fatal| (fatal, quote(&self.recv[start..start + layout.header_bytes])))
    }

    /// The most data a PDU of this type may carry on this connection.
    fn max_data(&self, pdu_type: u8) -> usize {
        match pdu_type {
            pdu_type::CAPSULE_CMD if self.queue.as_ref().is_none_or(|queue| queue.qid == 0) => ADMIN_IN_CAPSULE_BYTES,
            pdu_type::CAPSULE_CMD => self.options.in_capsule_data_size as usize,
            pdu_type::H2C_DATA => self.options.max_io_size as usize,
            _ => 0,
        }
    }

    fn on_pdu(
        &mut self,
        ctx: &mut ThreadCtx,
        tables: &mut NsTables,
        header: CommonHeader,
        header_bytes: &[u8],
        data: &[u8],
    ) -> Result<(), Fatal> {
        match header.pdu_type {
            pdu_type::IC_REQ => self.on_ic_req(header_bytes),
            pdu_type::CAPSULE_CMD => {
                let mut sqe = [0u8; 64];
                sqe.copy_from_slice(&header_bytes[pdu::COMMON_HEADER_BYTES..pdu::CAPSULE_CMD_HLEN]);
                self.on_command(ctx, tables, Sqe(sqe), data)
            }
            pdu_type::H2C_DATA => {
                self.on_h2c_data(ctx, tables, pdu::DataHeader::parse(header_bytes), header.flags, data)
            }
            pdu_type::H2C_TERM_REQ => {
                let fatal_status = crate::nvme::le16(header_bytes, 8);
                self.close(&format!("the host terminated the connection (FES {fatal_status:#x})"));
                Ok(())
            }
            _ => Err(Fatal::field(0)),
        }
    }

    fn on_ic_req(&mut self, bytes: &[u8]) -> Result<(), Fatal> {
        let request = IcReq::parse(bytes);
        if request.pfv != 0 {
            return Err(Fatal::new(fes::UNSUPPORTED_PARAMETER, 8));
        }
        if request.hpda > 31 {
            return Err(Fatal::field(10));
        }
        self.digests = request.digests;
        let response = IcResp { pfv: 0, cpda: 0, digests: request.digests, maxh2cdata: self.options.max_io_size };
        self.out.extend_from_slice(&response.encode());
        self.phase = Phase::Ready;
        log_debug!(flags::NVMF_TCP, "conn {} from {}: ICReq, digests {:?}", self.id, self.peer, self.digests);
        Ok(())
    }

    /// Sends a completion (CapsuleResp).
    pub(super) fn send_response(&mut self, cid: u16, status: Status, result: u64) {
        let mut cqe = Cqe::new(cid, status).with_result(result);
        if let Some(queue) = self.queue.as_mut() {
            // SQ head pointer: one entry consumed per command, wrapping at the queue size.
            queue.sqhd = (queue.sqhd + 1) % queue.entries.max(1);
            cqe.sqhd = queue.sqhd;
            cqe.sqid = queue.qid;
        }
        let encoded = pdu::capsule_resp(&cqe.encode(), self.digests);
        self.out.extend_from_slice(encoded.as_slice());
        self.stats.completed_io += 1;
    }

    /// Sends `len` bytes of `sgl` as C2HData for `cid`. `success` asks the host to
    /// treat the command as completed without a CapsuleResp (c2h_success).
    pub(super) fn send_c2h(&mut self, cid: u16, sgl: &Sgl<'_>, len: usize, success: bool) -> Result<(), Status> {
        let mut flags = pdu::flags::LAST_PDU;
        if success {
            flags |= pdu::flags::SUCCESS;
        }
        let header = pdu::DataHeader { cccid: cid, ttag: 0, offset: 0, length: len as u32 };
        let encoded = pdu::data_pdu(pdu_type::C2H_DATA, header, flags, self.digests);
        self.out.extend_from_slice(encoded.as_slice());
        // The send buffer is the host staging chunk: device data is copied into it
        // through the gate's accessors and the digest is computed there, never by
        // reading device memory twice.
        let start = self.out.len();
        self.out.resize(start + len, 0);
        let mut reader = ChunkReader::new(sgl);
        let copied = reader.read(&mut self.out[start..]).map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        if copied != len {
            self.out.truncate(start);
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        if self.digests.data {
            let digest = pdu::digest(&self.out[start..]);
            self.out.extend_from_slice(&digest);
        }
        Ok(())
    }

    pub(super) fn send_r2t(&mut self, cid: u16, ttag: u16, length: usize) {
        let header = pdu::DataHeader { cccid: cid, ttag, offset: 0, length: length as u32 };
        let encoded = pdu::r2t(header, self.digests);
        self.out.extend_from_slice(encoded.as_slice());
    }

    /// Sends what is queued; returns whether anything moved.
    fn flush(&mut self) -> bool {
        let mut moved = false;
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => break,
                Ok(written) => {
                    self.out_pos += written;
                    moved = true;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // The host is gone; nothing more can be sent.
                    self.out_pos = self.out.len();
                    self.close("the connection broke while sending");
                    break;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.phase == Phase::Closing {
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
            }
        } else if self.out.len() - self.out_pos > MAX_PENDING_OUTPUT_BYTES {
            self.out_pos = self.out.len();
            self.close("the host stopped reading");
        }
        moved
    }

    /// Ends the connection with a C2HTermReq quoting the offending PDU header.
    pub(super) fn terminate(&mut self, fatal: Fatal, offending: &[u8]) {
        log_warn!(
            "conn {} from {}: protocol error (FES {:#x}, field {}); terminating",
            self.id,
            self.peer,
            fatal.fes,
            fatal.fei
        );
        let term = pdu::term_req(pdu_type::C2H_TERM_REQ, fatal, offending);
        self.out.extend_from_slice(&term);
        self.close("protocol error");
        self.flush();
    }

    /// Stops reading; the poll group drops the connection once in-flight I/O is back.
    pub fn close(&mut self, why: &str) {
        if self.phase == Phase::Closing {
            return;
        }
        log_debug!(flags::NVMF_TCP, "conn {} from {} closing: {why}", self.id, self.peer);
        self.phase = Phase::Closing;
        // Commands waiting for data or an event will never get it.
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::AwaitingData | SlotState::Held) {
                slot.state = SlotState::Free;
            }
        }
        if let Some(queue) = self.queue.as_ref() {
            crate::nvmf::connect::disconnect(&queue.controller, queue.qid, self.id);
        }
        if self.out_pos >= self.out.len() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn check_liveness(&mut self, ctx: &mut ThreadCtx) {
        let Some(queue) = self.queue.as_ref() else { return };
        if queue.controller.is_failed() {
            self.close("its controller failed");
            return;
        }
        if let Some(admin) = queue.admin.as_ref() {
            if admin.keep_alive_expired(ctx.now()) {
                log_warn!(
                    "Disconnecting host {} from subsystem {} due to keep alive timeout",
                    queue.controller.hostnqn,
                    queue.controller.subsystem.nqn
                );
                queue.controller.fail();
                let target = self.target.clone();
                let controller = queue.controller.clone();
                self.close("keep alive timeout");
                target.disconnect_controller(&controller);
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        debug_assert!(self.outstanding() == 0, "connection dropped with I/O in flight");
        self.listener_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
