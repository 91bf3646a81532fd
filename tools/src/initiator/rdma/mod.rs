//! A queue pair's NVMe/RDMA side (NVM Express RDMA Transport Specification 1.0): an RDMA
//! CM connection carrying the NVMe/RDMA private data, a receive posted per response
//! capsule, command capsules by SEND, and data moved by the controller's RDMA READ and
//! WRITE of a per-command buffer the keyed SGL names. Both memory regions are registered
//! once per queue at connect, so I/O registers nothing; the caller's buffer is copied in
//! (writes) or out (reads), as the TCP path copies from its socket buffers.

pub(crate) mod layout;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::{Sqe, SqeBuilder};
use peerless_target::nvme::{Cqe, CQE_BYTES, SQE_BYTES};
use spdk_sys::rdma::nvme::CmAccept;
use spdk_sys::rdma::{
    self, Access, CmDevices, CmEvent, CmEventKind, CmId, Completion as Wc, ConnParam, Cq, DmaBuffer, EventChannel, Mr,
    Pd, QpConfig, RecvWr, SendWr,
};

use super::error::{Error, Result};
use super::inflight::{complete_slot, Slot};
use super::queue::{Completion, Xfer};
use layout::{cm_request, decode_wr_id, encode_command, recv_wr_id, rejected, send_wr_id, Layout, WrKind};

/// Work completions taken from the CQ per poll call.
const POLL_BATCH: usize = 32;
/// How often a queue with nothing completing looks at its RDMA CM events: a target that
/// disconnects leaves the posted receives waiting until the event is read (librdmacm
/// moves the queue pair to the error state then, which flushes them).
const CM_CHECK_INTERVAL: Duration = Duration::from_millis(10);

fn rdma_error(op: &'static str) -> impl Fn(rdma::Error) -> Error {
    move |e| Error::Io { op, kind: std::io::ErrorKind::Other, message: e.to_string() }
}

fn post_error(e: rdma::PostError) -> Error {
    Error::Io { op: "RDMA post", kind: std::io::ErrorKind::Other, message: e.to_string() }
}

/// Where and what to connect.
pub(crate) struct Params {
    pub addr: SocketAddr,
    pub qid: u16,
    pub entries: u16,
    pub cntlid: u16,
    pub in_capsule_bytes: usize,
    pub max_transfer_bytes: usize,
    pub timeout: Duration,
}

pub(crate) struct RdmaLink {
    // Field order is drop order: the queue pair goes before the memory it names.
    id: CmId,
    channel: Arc<EventChannel>,
    next_cm_check: Instant,
    cq: Arc<Cq>,
    control_mr: Mr,
    control: Arc<DmaBuffer>,
    data_mr: Mr,
    data: Arc<DmaBuffer>,
    layout: Layout,
    /// SENDs posted whose completions have not been polled, and the send queue's size.
    sends_in_flight: u32,
    max_sends: u32,
    wcs: Vec<Wc>,
    timeout: Duration,
}

impl RdmaLink {
    /// Resolves, builds the queue pair and its memory, posts every receive, and connects
    /// with the NVMe/RDMA request; the controller's accept (CRQSIZE) must cover the queue.
    pub fn connect(p: &Params) -> Result<RdmaLink> {
        let devices = CmDevices::open().map_err(rdma_error("open RDMA devices"))?;
        if devices.is_empty() {
            let message =
                "none on this machine (soft-RoCE: modprobe rdma_rxe; rdma link add rxe0 type rxe netdev IFACE)";
            return Err(Error::Io { op: "RDMA devices", kind: std::io::ErrorKind::NotFound, message: message.into() });
        }
        let channel = EventChannel::new().map_err(rdma_error("RDMA CM event channel"))?;
        let mut id = channel.create_id(u64::from(p.qid)).map_err(rdma_error("RDMA CM id"))?;
        id.resolve_addr(None, p.addr, p.timeout).map_err(rdma_error("RDMA resolve address"))?;
        expect_event(&channel, CmEventKind::AddrResolved, p.timeout)?;
        id.resolve_route(p.timeout).map_err(rdma_error("RDMA resolve route"))?;
        expect_event(&channel, CmEventKind::RouteResolved, p.timeout)?;
        let context = id.context(&devices).map_err(rdma_error("RDMA device of the route"))?;
        let attr = context.query_device().map_err(rdma_error("query RDMA device"))?;
        let pd = Pd::new(&context).map_err(rdma_error("RDMA protection domain"))?;

        let layout = Layout::new(p.entries, p.in_capsule_bytes, p.max_transfer_bytes);
        let control = DmaBuffer::new(layout.control_bytes()).map_err(rdma_error("capsule memory"))?;
        let control_mr = pd.register(control.clone(), Access::LOCAL_WRITE).map_err(rdma_error("register capsules"))?;
        let data = DmaBuffer::new(layout.data_bytes()).map_err(rdma_error("data memory"))?;
        let remote = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
        let data_mr = pd.register(data.clone(), remote).map_err(rdma_error("register data buffers"))?;

        // One SEND per command, plus room for those whose responses came before their
        // send completions were polled.
        let max_sends = u32::from(layout.slots) + 1;
        let recvs = u32::from(layout.recvs);
        let cq = Cq::new(&context, max_sends + recvs, false).map_err(rdma_error("RDMA completion queue"))?;
        let config = QpConfig {
            send_cq: cq.clone(),
            recv_cq: cq.clone(),
            srq: None,
            max_send_wr: max_sends,
            max_recv_wr: recvs,
            max_send_sge: 1,
            max_recv_sge: 1,
        };
        id.create_qp(&pd, config).map_err(rdma_error("RDMA queue pair"))?;
        let mut link = RdmaLink {
            id,
            channel: channel.clone(),
            next_cm_check: Instant::now(),
            cq,
            control_mr,
            control,
            data_mr,
            data,
            layout,
            sends_in_flight: 0,
            max_sends,
            wcs: vec![Wc::default(); POLL_BATCH],
            timeout: p.timeout,
        };
        for index in 0..layout.recvs {
            link.post_recv(index)?;
        }

        let request = cm_request(p.qid, p.entries, p.cntlid).encode();
        // The controller RDMA READs write data from us: let it have as many reads
        // outstanding as the device allows; we never read from it (NVMe/RDMA 1.0 §3.1
        // asks for infinite RNR retries).
        let param = ConnParam {
            private_data: &request,
            responder_resources: attr.max_qp_rd_atom.clamp(1, 255) as u8,
            initiator_depth: 0,
            retry_count: 7,
            rnr_retry_count: 7,
        };
        link.id.connect(&param).map_err(rdma_error("RDMA CM connect"))?;
        let event = next_event(&channel, p.timeout, "the RDMA connection to be established")?;
        match event.kind {
            CmEventKind::Established => {}
            CmEventKind::Rejected => return Err(rejected(event.private_data.as_slice(), event.status)),
            other => {
                let message = format!("{other:?} (status {}) instead of an established connection", event.status);
                return Err(Error::Io { op: "RDMA CM connect", kind: std::io::ErrorKind::ConnectionRefused, message });
            }
        }
        let accept = CmAccept::decode(event.private_data.as_slice())
            .map_err(|status| Error::Protocol(format!("RDMA CM accept private data: {status}")))?;
        // The controller posted CRQSIZE receives for our capsules; more commands in
        // flight than that would find none (NVMe/RDMA 1.0 §3.1, Figure 6).
        if accept.crqsize < layout.slots {
            return Err(Error::Unsupported(format!(
                "queue {}: the controller takes {} commands at once, {} were asked for (use a smaller depth)",
                p.qid, accept.crqsize, layout.slots
            )));
        }
        Ok(link)
    }

    pub fn in_capsule_bytes(&self) -> usize {
        self.layout.in_capsule_bytes
    }

    pub fn chunk_bytes(&self) -> usize {
        self.layout.chunk_bytes
    }

    fn post_recv(&mut self, index: u16) -> Result<()> {
        let sge =
            self.control_mr.sge(self.layout.recv_offset(index), CQE_BYTES as u32).map_err(rdma_error("receive"))?;
        let mut wr = [RecvWr::new(recv_wr_id(index), &[sge]).map_err(|e| Error::Invalid(e.to_string()))?];
        self.id.post_recv(&mut wr).map_err(post_error)
    }

    /// Writes the capsule (and a write's data to its buffer) and SENDs it.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        cmd: SqeBuilder,
        xfer: Xfer,
        cid: u16,
        buf: &[u8],
        in_capsule: bool,
        slots: &mut [Slot],
        ready: &mut VecDeque<Completion>,
    ) -> Result<Sqe> {
        let layout = self.layout;
        if cid >= layout.slots || buf.len() > layout.chunk_bytes || (in_capsule && buf.len() > layout.in_capsule_bytes)
        {
            return Err(Error::Invalid(format!("cid {cid} with {} bytes on this RDMA queue", buf.len())));
        }
        let chunk = layout.chunk_offset(cid);
        let remote = self.data_mr.addr() + chunk as u64;
        let sqe = encode_command(cmd, xfer, cid, buf.len(), in_capsule, remote, self.data_mr.rkey());
        let capsule = layout.capsule_offset(cid);
        self.control.write(capsule, &sqe.0).map_err(rdma_error("capsule"))?;
        let mut sent = SQE_BYTES;
        if in_capsule {
            self.control.write(capsule + SQE_BYTES, buf).map_err(rdma_error("capsule"))?;
            sent += buf.len();
        } else if xfer == Xfer::ToController {
            self.data.write(chunk, buf).map_err(rdma_error("data buffer"))?;
        }
        // A send queue full of completions not yet polled: poll them (and any responses).
        let deadline = Instant::now() + self.timeout;
        while self.sends_in_flight >= self.max_sends {
            if self.poll(slots, ready)? == 0 && Instant::now() >= deadline {
                return Err(Error::Timeout { what: "RDMA send completions", ms: self.timeout.as_millis() as u64 });
            }
        }
        let sge = self.control_mr.sge(capsule, sent as u32).map_err(rdma_error("capsule"))?;
        let mut wr = [SendWr::send(send_wr_id(cid), &[sge]).map_err(|e| Error::Invalid(e.to_string()))?.signaled(true)];
        self.id.post_send(&mut wr).map_err(post_error)?;
        self.sends_in_flight += 1;
        Ok(sqe)
    }

    /// Handles the completions the CQ has: send completions free send queue room, each
    /// response capsule completes its command (a read's data copied out of its buffer)
    /// and its receive is posted again. Returns how many completions it took.
    pub fn poll(&mut self, slots: &mut [Slot], ready: &mut VecDeque<Completion>) -> Result<usize> {
        let mut wcs = std::mem::take(&mut self.wcs);
        let result = self.poll_into(&mut wcs, slots, ready);
        self.wcs = wcs;
        result
    }

    fn poll_into(&mut self, wcs: &mut [Wc], slots: &mut [Slot], ready: &mut VecDeque<Completion>) -> Result<usize> {
        let polled = self.cq.poll(wcs).map_err(rdma_error("poll RDMA completions"))?;
        if polled == 0 {
            self.check_connection()?;
        }
        for wc in &wcs[..polled] {
            if !wc.is_success() {
                if wc.is_flush() {
                    // The queue pair went to error: the target disconnected or failed it.
                    return Err(Error::Closed);
                }
                return Err(Error::Protocol(format!(
                    "RDMA work request {:#x} failed: {}",
                    wc.wr_id(),
                    wc.status_str()
                )));
            }
            match decode_wr_id(wc.wr_id()) {
                Some(WrKind::Send(_)) => self.sends_in_flight = self.sends_in_flight.saturating_sub(1),
                Some(WrKind::Recv(index)) if index < self.layout.recvs => self.response(index, wc, slots, ready)?,
                _ => return Err(Error::Protocol(format!("RDMA completion with unknown id {:#x}", wc.wr_id()))),
            }
        }
        Ok(polled)
    }

    /// Ends the queue when the RDMA CM says the connection is gone; looks at most every
    /// CM_CHECK_INTERVAL, so a busy queue pays nothing and an idle one one read.
    fn check_connection(&mut self) -> Result<()> {
        let now = Instant::now();
        if now < self.next_cm_check {
            return Ok(());
        }
        self.next_cm_check = now + CM_CHECK_INTERVAL;
        while let Some(event) = self.channel.get_event().map_err(rdma_error("RDMA CM event"))? {
            if event.kind.ends_connection() {
                return Err(Error::Closed);
            }
        }
        Ok(())
    }

    fn response(&mut self, index: u16, wc: &Wc, slots: &mut [Slot], ready: &mut VecDeque<Completion>) -> Result<()> {
        if (wc.byte_len() as usize) < CQE_BYTES {
            return Err(Error::Protocol(format!("response capsule of {} bytes (16 expected)", wc.byte_len())));
        }
        let mut bytes = [0u8; CQE_BYTES];
        self.control.read(self.layout.recv_offset(index), &mut bytes).map_err(rdma_error("response"))?;
        // The slot is free again once the CQE is out of it.
        self.post_recv(index)?;
        let cqe = Cqe::decode(&bytes);
        let slot = match slots.get_mut(usize::from(cqe.cid)) {
            Some(slot) if slot.busy => slot,
            _ => return Err(Error::Protocol(format!("response for cid {}, which is not outstanding", cqe.cid))),
        };
        let reads = slot.xfer == Some(Xfer::FromController) && !slot.in_capsule;
        if reads && cqe.status.is_success() {
            // RC delivers the controller's RDMA WRITEs before the SEND behind them.
            let chunk = self.layout.chunk_offset(cqe.cid);
            self.data.read(chunk, &mut slot.buf).map_err(rdma_error("data buffer"))?;
            slot.moved = slot.buf.len();
        }
        complete_slot(slots, ready, cqe.cid, cqe.status, cqe.dnr, cqe.result);
        Ok(())
    }
}

impl Drop for RdmaLink {
    fn drop(&mut self) {
        // Best effort: the target sees the disconnect now rather than at a timeout.
        let _ = self.id.disconnect();
    }
}

fn next_event(channel: &Arc<EventChannel>, timeout: Duration, what: &'static str) -> Result<CmEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout { what, ms: timeout.as_millis() as u64 });
        }
        if let Some(event) = channel.wait_event(left).map_err(rdma_error("RDMA CM event"))? {
            return Ok(event);
        }
    }
}

fn expect_event(channel: &Arc<EventChannel>, want: CmEventKind, timeout: Duration) -> Result<()> {
    let event = next_event(channel, timeout, "RDMA address and route resolution")?;
    if event.kind != want {
        let message = format!("{:?} (status {}) instead of {want:?}", event.kind, event.status);
        return Err(Error::Io { op: "RDMA CM", kind: std::io::ErrorKind::NotFound, message });
    }
    Ok(())
}
