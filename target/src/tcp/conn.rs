//! One NVMe/TCP connection (one queue pair) on its poll group's thread: non-blocking
//! socket I/O, PDU framing and validation, termination. What commands mean is the
//! engine's [`Qpair`]; turning its actions into PDUs is in `send.rs`.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::Arc;

use peerless_core::log::flags;
use peerless_core::reactor::ThreadCtx;
use peerless_core::{log_debug, log_warn};

use super::h2c_direct::{DirectH2c, Stop, DIRECT_H2C_MIN_BYTES, H2C_HEADER_READ_BYTES};
use super::options::TcpOptions;
use super::outbox::{Flushed, Outbox};
use super::pdu::{self, fes, pdu_type, CommonHeader, Digests, Fatal, IcReq, IcResp, Receiver};
use super::socket::Socket;
use crate::nvme::Sqe;
use crate::nvmf::io_cmd::SglBinding;
use crate::nvmf::qpair::{Fault, P2pReach, Qpair, QpairConfig};
use crate::nvmf::transport::{GroupCtx, Transport};
use crate::nvmf::NvmfTarget;

/// Admin queues carry 8 KiB of in-capsule data (NVMe/TCP 1.0, 3.3.7): enough for Connect.
pub const ADMIN_IN_CAPSULE_BYTES: usize = 8192;
/// Bytes read from the socket per read call at most; larger PDUs take several.
const READ_SLACK_BYTES: usize = 4096;
/// A host that stops reading is cut off past this much unsent output.
const MAX_PENDING_OUTPUT_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    AwaitIcReq,
    Ready,
    /// No more input is read; output drains, in-flight I/O finishes, then the conn goes.
    Closing,
}

/// One connection over a socket `S`: a kernel TCP stream, or an in-memory one in tests and
/// the simulation.
pub struct Conn<S: Socket = TcpStream> {
    pub(super) stream: S,
    pub(super) phase: Phase,
    pub(super) digests: Digests,
    /// Allocated when the socket first has something to read and given back when the
    /// connection has been idle a while (`release_idle_buffers`): an idle host costs
    /// no receive buffer.
    pub(super) recv: Vec<u8>,
    /// The size `recv` has when allocated: the largest PDU plus read slack.
    recv_bytes: usize,
    /// Complete PDUs left in `recv` when the per-poll budget ran out: poll again even if
    /// the socket has nothing new.
    input_backlog: bool,
    pub(super) recv_start: usize,
    pub(super) recv_end: usize,
    /// An H2CData PDU whose data goes from the socket straight into its command's buffer.
    pub(super) direct: Option<DirectH2c>,
    /// H2CData bytes asked for by R2T and not yet received: while some are, a read at a
    /// PDU boundary takes little, so a large H2CData's data is read into its command's
    /// buffer rather than slurped into the receive buffer and copied.
    pub(super) h2c_bytes_awaited: u64,
    /// PDUs queued for the socket, C2HData payloads in place in their pool buffers.
    pub(super) out: Outbox,
    /// The largest H2CData this connection accepts (ICResp MAXH2CDATA).
    max_h2c_data: usize,
    /// Where C2HData puts its data: at a multiple of this many bytes from the PDU's
    /// start, as the host asked with ICReq HPDA (NVMe/TCP 1.0, 3.6.2.2).
    pub(super) data_alignment: usize,
    pub(super) qpair: Qpair,
}

impl<S: Socket> Conn<S> {
    pub fn new(
        id: u64,
        mut stream: S,
        target: &NvmfTarget,
        transport: &Arc<dyn Transport>,
        tcp: &TcpOptions,
    ) -> std::io::Result<Conn<S>> {
        stream.prepare(tcp.sock_priority)?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let options = transport.opts().clone();
        // The largest PDU: an H2CData of max_io_size or a capsule with its in-capsule data.
        let largest_data =
            (options.max_io_size as usize).max(options.in_capsule_data_size as usize).max(ADMIN_IN_CAPSULE_BYTES);
        let recv_bytes = pdu::MAX_HEADER_BYTES + 2 * pdu::DIGEST_BYTES + largest_data + READ_SLACK_BYTES;
        let config = QpairConfig {
            data_completes: tcp.c2h_success,
            admin_in_capsule_bytes: ADMIN_IN_CAPSULE_BYTES,
            sgl: SglBinding::Tcp,
            p2p_reach: P2pReach::Cpu,
        };
        let max_h2c_data = options.max_io_size as usize;
        let qpair = Qpair::new(id, target.clone(), options, transport.pool(), config, peer, local);
        Ok(Conn {
            stream,
            phase: Phase::AwaitIcReq,
            digests: Digests::default(),
            recv: Vec::new(),
            recv_bytes,
            input_backlog: false,
            recv_start: 0,
            recv_end: 0,
            direct: None,
            h2c_bytes_awaited: 0,
            out: Outbox::default(),
            max_h2c_data,
            data_alignment: 4,
            qpair,
        })
    }

    pub fn id(&self) -> u64 {
        self.qpair.id
    }

    pub fn peer(&self) -> std::net::SocketAddr {
        self.qpair.peer
    }

    pub fn qpair(&self) -> &Qpair {
        &self.qpair
    }

    pub fn qpair_mut(&mut self) -> &mut Qpair {
        &mut self.qpair
    }

    /// Bytes queued for the socket and not yet written.
    pub(super) fn pending_output(&self) -> usize {
        self.out.pending()
    }

    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The descriptor interrupt mode watches, if the socket has one.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.stream.fd()
    }

    /// Sends C2HData with MSG_ZEROCOPY from now on when a write carries at least
    /// `threshold` bytes of command data; a socket that refuses keeps copying.
    pub fn enable_zerocopy_sends(&mut self, threshold: u32) {
        match self.stream.enable_zerocopy() {
            Ok(()) => self.out.enable_zerocopy(threshold as usize),
            Err(err) => {
                log_warn!("conn {} from {}: SO_ZEROCOPY refused ({err}); its sends copy", self.id(), self.peer())
            }
        }
    }

    /// Whether the connection is finished and can be dropped.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Closing
            && self.qpair.is_drained()
            && self.out.is_empty()
            && !self.out.awaiting_notifications()
    }

    /// One timeslice: read and handle PDUs (when the socket is `readable`, PDUs are left
    /// from the last one, or commands are in flight, when the host most likely sent
    /// more), run the engine, turn its actions into PDUs, send.
    /// At most `pdu_budget` PDUs are handled: the poll group's share for this connection.
    pub fn poll(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, readable: bool, pdu_budget: usize) -> bool {
        let read = readable || self.input_backlog || self.qpair.needs_poll();
        let mut busy = self.reap_zerocopy_notifications(group);
        busy |= self.qpair.poll(ctx, group, group.now_ns);
        // Once the engine has ended the queue (a reset, keep-alive expiry), what the host
        // still sends was in flight before it could know: read no more of it.
        if self.phase != Phase::Closing && !self.qpair.is_closing() && read && self.receive(ctx, group, pdu_budget) {
            busy = true;
            // A bdev that completes in its submit (null, malloc, a cache hit) has answered
            // already: its responses go out in this pass's flush. Left for the next pass,
            // each would cost a pass more latency and, commands being in flight, a read
            // of the socket that finds nothing.
            self.qpair.take_completions(ctx, group);
        }
        busy |= self.send_actions(group);
        if self.qpair.is_closing() && self.phase != Phase::Closing {
            self.close("the engine ended the queue");
        }
        busy |= self.flush(group);
        busy
    }

    fn receive(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, pdu_budget: usize) -> bool {
        let mut busy = false;
        self.input_backlog = false;
        if self.direct_h2c_reading() {
            match self.read_direct_h2c() {
                Ok(progress) => busy = progress,
                Err(Stop::Closed(why)) => {
                    self.close(&why);
                    return true;
                }
                Err(Stop::Fatal(fatal, offending)) => {
                    self.terminate(group, fatal, &offending);
                    return true;
                }
            }
            if self.direct_h2c_reading() {
                self.input_backlog = self.stream.has_buffered_input();
                return busy;
            }
        }
        if self.recv.is_empty() {
            self.recv = vec![0u8; self.recv_bytes];
        }
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
            let limit = if self.recv_start == self.recv_end && self.h2c_bytes_awaited >= DIRECT_H2C_MIN_BYTES as u64 {
                (self.recv_end + H2C_HEADER_READ_BYTES).min(self.recv.len())
            } else {
                self.recv.len()
            };
            self.stream.read(&mut self.recv[self.recv_end..limit]).map(Some)
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
        let mut handled = 0;
        while handled < pdu_budget {
            match self.next_pdu(ctx, group) {
                Ok(true) => {
                    busy = true;
                    handled += 1;
                }
                Ok(false) => break,
                Err((fatal, offending)) => {
                    self.terminate(group, fatal, &offending);
                    return true;
                }
            }
            // A PDU that ended the queue (Disconnect) ends the reading too.
            if self.phase == Phase::Closing || self.qpair.is_closing() {
                break;
            }
        }
        // The budget ran out with PDUs perhaps still whole in the buffer, or the buffer
        // is full and the socket was not read: either way come back next pass.
        self.input_backlog = self.phase != Phase::Closing
            && (handled == pdu_budget || self.recv_end == self.recv.len() || self.stream.has_buffered_input());
        busy
    }

    /// Handles one complete PDU from the receive buffer; Ok(false) when none is whole yet.
    fn next_pdu(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) -> Result<bool, (Fatal, Vec<u8>)> {
        if self.direct.is_some() {
            return self.finish_direct_h2c(ctx, group);
        }
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
        // The header digest covers PLEN (NVMe/TCP 1.0, 3.6.2.1): check it as soon as the
        // header is in, before waiting for the data PLEN promises. A flipped bit there
        // would otherwise have the connection wait for bytes a host waiting for its
        // answers never sends.
        let hlen = usize::from(header.hlen);
        if self.digests.header && layout.header_bytes > hlen {
            if available < layout.header_bytes {
                return Ok(self.wait_for(layout.header_bytes));
            }
            let head = &self.recv[start..start + layout.header_bytes];
            if !pdu::header_digest_ok(head, hlen) {
                return Err((Fatal::new(fes::HEADER_DIGEST_ERROR, 0), quote(head)));
            }
        }
        if self.start_direct_h2c(header, &layout, start)? {
            return Ok(true);
        }
        if layout.total > self.recv.len() {
            return Err((Fatal::new(fes::DATA_LIMIT_EXCEEDED, 4), quote(&self.recv[start..self.recv_end])));
        }
        if available < layout.total {
            return Ok(self.wait_for(layout.total));
        }
        let bytes = &self.recv[start..start + layout.total];
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
            self.on_pdu(ctx, group, header, &bytes[..layout.header_bytes], &bytes[data_range])
        };
        self.recv = recv;
        self.recv_start += layout.total;
        result.map(|()| true).map_err(|fatal| (fatal, quote(&self.recv[start..start + layout.header_bytes])))
    }

    /// Waits for the PDU at the start of the unhandled bytes to be `len` bytes long,
    /// making room for the rest of it at the end of the buffer. Returns false: no PDU yet.
    fn wait_for(&mut self, len: usize) -> bool {
        debug_assert!(len <= self.recv.len());
        if self.recv_start + len > self.recv.len() {
            self.recv.copy_within(self.recv_start..self.recv_end, 0);
            self.recv_end -= self.recv_start;
            self.recv_start = 0;
        }
        false
    }

    /// The most data a PDU of this type may carry on this connection.
    fn max_data(&self, pdu_type: u8) -> usize {
        match pdu_type {
            pdu_type::CAPSULE_CMD => self.qpair.in_capsule_limit(),
            pdu_type::H2C_DATA => self.max_h2c_data,
            _ => 0,
        }
    }

    fn on_pdu(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        header: CommonHeader,
        header_bytes: &[u8],
        data: &[u8],
    ) -> Result<(), Fatal> {
        match header.pdu_type {
            pdu_type::IC_REQ => self.on_ic_req(header_bytes),
            pdu_type::CAPSULE_CMD => {
                let mut sqe = [0u8; 64];
                sqe.copy_from_slice(&header_bytes[pdu::COMMON_HEADER_BYTES..pdu::CAPSULE_CMD_HLEN]);
                self.qpair.on_command(ctx, group, Sqe(sqe), data).map_err(fault_to_fatal)
            }
            pdu_type::H2C_DATA => {
                self.h2c_bytes_awaited = self.h2c_bytes_awaited.saturating_sub(data.len() as u64);
                let data_header = pdu::DataHeader::parse(header_bytes);
                self.qpair
                    .data_received(ctx, group, data_header.ttag, data_header.cccid, data_header.offset as usize, data)
                    .map_err(fault_to_fatal)
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
        // ICReq follows a completed TLS handshake, if any: the peer is known now.
        self.qpair.tls_peer = self.stream.tls_peer();
        // HPDA is 0's based, in dwords: 4 to 128 bytes.
        self.data_alignment = (usize::from(request.hpda) + 1) * 4;
        let response = IcResp { pfv: 0, cpda: 0, digests: request.digests, maxh2cdata: self.max_h2c_data as u32 };
        self.out.push_bytes(&response.encode());
        self.phase = Phase::Ready;
        log_debug!(flags::NVMF_TCP, "conn {} from {}: ICReq, digests {:?}", self.id(), self.peer(), self.digests);
        Ok(())
    }

    /// Hands back the slots whose zero-copy sends the kernel let go of (their readiness
    /// shows as EPOLLERR, which wakes a sleeping poll group).
    fn reap_zerocopy_notifications(&mut self, group: &mut GroupCtx<'_>) -> bool {
        match self.out.reap_notifications(&mut self.stream, group.buffers) {
            Ok(released) => released,
            Err(err) => {
                log_warn!("conn {} from {}: reading zero-copy notifications: {err}", self.id(), self.peer());
                false
            }
        }
    }

    /// Sends what is queued; returns whether anything moved.
    fn flush(&mut self, group: &mut GroupCtx<'_>) -> bool {
        let moved = match self.out.flush(&mut self.stream, &mut self.qpair, group.buffers) {
            Flushed::Wrote(written) => written > 0,
            Flushed::Broken(err) => {
                // The host is gone; nothing more can be sent.
                self.close(&format!("the connection broke while sending: {err}"));
                true
            }
        };
        if self.out.is_empty() {
            if self.phase == Phase::Closing {
                self.stream.shutdown();
            }
        } else if self.out.pending() > MAX_PENDING_OUTPUT_BYTES {
            self.out.discard(&mut self.qpair, group.buffers);
            self.close("the host stopped reading");
        }
        moved
    }

    /// Ends the connection with a C2HTermReq quoting the offending PDU header
    /// (NVMe/TCP 1.0, 3.6.2.4).
    fn terminate(&mut self, group: &mut GroupCtx<'_>, fatal: Fatal, offending: &[u8]) {
        log_warn!(
            "conn {} from {}: protocol error (FES {:#x}, field {}); terminating",
            self.id(),
            self.peer(),
            fatal.fes,
            fatal.fei
        );
        // What the engine had ready still goes out ahead of the termination.
        self.send_actions(group);
        let term = pdu::term_req(pdu_type::C2H_TERM_REQ, fatal, offending);
        self.out.push_bytes(&term);
        self.close("protocol error");
        self.flush(group);
    }

    /// Whether the poll group must poll this connection on its next pass even if its
    /// socket reports nothing: output the socket would not take yet, PDUs left over,
    /// work in the engine, or a close still draining.
    pub fn wants_poll(&self) -> bool {
        self.has_pending_output()
            || self.input_backlog
            || self.phase == Phase::Closing
            || self.qpair.needs_poll()
            || self.out.awaiting_notifications()
    }

    /// Whether ICReq has been answered.
    pub fn ic_done(&self) -> bool {
        self.phase != Phase::AwaitIcReq
    }

    /// Gives back the receive buffer and send capacity of a connection with nothing
    /// buffered either way; the next read allocates again. Called for connections that
    /// have been idle for a while, so a steady stream of I/O keeps its buffers.
    pub fn release_idle_buffers(&mut self) {
        if self.recv_start == self.recv_end && !self.recv.is_empty() {
            log_debug!(flags::NVMF_TCP, "conn {} from {}: idle, its buffers given back", self.id(), self.peer());
            self.recv = Vec::new();
            self.recv_start = 0;
            self.recv_end = 0;
        }
        self.out.release_capacity();
    }

    /// Stops reading; the poll group drops the connection once in-flight I/O is back.
    pub fn close(&mut self, why: &str) {
        if self.phase == Phase::Closing {
            return;
        }
        log_debug!(flags::NVMF_TCP, "conn {} from {} closing: {why}", self.id(), self.peer());
        self.phase = Phase::Closing;
        self.qpair.close(why);
        if self.out.is_empty() {
            self.stream.shutdown();
        }
    }
}

/// The NVMe/TCP fatal error a fault of the engine's input maps to (NVMe/TCP 1.0,
/// Figure 16), with the offending field's byte offset in the PDU header.
pub(super) fn fault_to_fatal(fault: Fault) -> Fatal {
    match fault {
        Fault::QueueOverrun => Fatal::new(fes::PDU_SEQUENCE_ERROR, 0),
        // H2CData: TTAG at byte 10, CCCID at byte 8, DATAO at byte 12.
        Fault::UnknownTransfer => Fatal::field(10),
        Fault::WrongCommand => Fatal::field(8),
        Fault::OutOfRange => Fatal::new(fes::DATA_OUT_OF_RANGE, 12),
    }
}

impl<S: Socket> Drop for Conn<S> {
    fn drop(&mut self) {
        // A poll group lets a connection go only once its I/O is back, except at shutdown
        // when a backend never answers (an RBD image whose OSD is down): the process is
        // ending then, and what comes back later finds no queue and is dropped.
        if self.out.awaiting_notifications() {
            log_warn!(
                "conn {} from {}: dropped with zero-copy sends the kernel has not released",
                self.id(),
                self.peer()
            );
        }
        let outstanding = self.qpair.outstanding();
        if outstanding > 0 {
            log_warn!(
                "conn {} from {}: dropped with {outstanding} command(s) still in the bdev layer",
                self.id(),
                self.peer()
            );
        }
    }
}

#[cfg(test)]
mod tests;
