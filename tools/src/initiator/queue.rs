//! One NVMe queue pair = one NVMe/TCP connection: command slots indexed by CID, a
//! non-blocking `submit_*` / `poll` API so one thread can drive many queues at high depth,
//! and blocking helpers built on it. Buffers move in with a command and come back in its
//! completion, so the hot path allocates nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{fctype, io, Status};

use super::error::{Error, Result};
use super::inflight::Slot;
#[cfg(feature = "rdma")]
use super::rdma::RdmaLink;
use super::tcp_link::TcpLink;
use super::transport::{Negotiated, RawPdu, MAX_TRANSFER_BYTES, TX_FLUSH_BYTES};

/// Most entries a queue may have (NVMe: SQSIZE is a 0's based u16; we bound it lower
/// because every entry owns a slot).
pub const MAX_QUEUE_ENTRIES: u16 = 4096;
/// Fewest entries: a queue of one entry can hold no command (full = entries - 1).
pub const MIN_QUEUE_ENTRIES: u16 = 2;

/// Which way a command's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xfer {
    None,
    /// Host to controller: in the capsule when it fits, else R2T/H2CData.
    ToController,
    /// Controller to host: C2HData.
    FromController,
}

/// A finished command. `buf` is the buffer given at submission, filled for reads.
#[derive(Debug)]
pub struct Completion {
    pub cid: u16,
    pub opcode: u8,
    pub status: Status,
    pub dnr: bool,
    /// CQE DW0 (low half) and DW1.
    pub result: u64,
    pub buf: Vec<u8>,
    /// Some data of this command arrived with a bad data digest: the data is not to be trusted.
    pub data_digest_error: bool,
}

impl Completion {
    pub fn is_ok(&self) -> bool {
        self.status.is_success() && !self.data_digest_error
    }

    /// Ok(self) on success; the typed error otherwise.
    pub fn into_result(self) -> Result<Completion> {
        if self.data_digest_error {
            return Err(Error::DataDigest { cid: self.cid });
        }
        if !self.status.is_success() {
            let (opcode, cid, status, dnr, dw0) = (self.opcode, self.cid, self.status, self.dnr, self.result as u32);
            return Err(Error::Command { opcode, cid, status, dnr, dw0 });
        }
        Ok(self)
    }
}

/// The connection under a queue pair. An enum, not a trait object: the TCP hot path
/// stays statically dispatched, and the RDMA variant exists only with the `rdma` feature.
pub(crate) enum Link {
    Tcp(TcpLink),
    #[cfg(feature = "rdma")]
    Rdma(Box<RdmaLink>),
}

/// One queue pair on its own connection, driven by one thread through `&mut self`.
///
/// CIDs are slot indices. A CID is handed out again only after its completion left the
/// queue through `poll` or `wait`, but a caller that resubmits while walking a batch of
/// completions may get a CID of that same batch: map the whole batch first.
pub struct QueuePair {
    link: Link,
    qid: u16,
    entries: u16,
    slots: Vec<Slot>,
    free: Vec<u16>,
    ready: VecDeque<Completion>,
    in_capsule_bytes: usize,
    max_transfer_bytes: usize,
    timeout: Duration,
    /// A blocking helper's reusable data buffer.
    spare: Vec<u8>,
    failed: Option<Error>,
}

/// An I/O queue is a queue pair with qid > 0.
pub type IoQueue = QueuePair;

impl QueuePair {
    pub(crate) fn new(link: Link, qid: u16, entries: u16, in_capsule_bytes: usize, timeout: Duration) -> Self {
        assert!((MIN_QUEUE_ENTRIES..=MAX_QUEUE_ENTRIES).contains(&entries), "entries {entries}");
        // A full queue holds entries - 1 commands (NVMe Base 2.0, 3.3.1.5); CIDs are slot indices.
        let depth = entries - 1;
        QueuePair {
            link,
            qid,
            entries,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free: (0..depth).rev().collect(),
            ready: VecDeque::with_capacity(usize::from(depth)),
            in_capsule_bytes,
            max_transfer_bytes: MAX_TRANSFER_BYTES,
            timeout,
            spare: Vec::new(),
            failed: None,
        }
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Entries requested at Connect (SQSIZE + 1).
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Most commands outstanding at once.
    pub fn depth(&self) -> u16 {
        self.entries - 1
    }

    /// Commands submitted whose completions `poll` has not handed out yet.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// What the ICResp granted; NVMe/RDMA has no such handshake (no digests, and data
    /// moves by RDMA READ and WRITE, so MAXH2CDATA 0).
    pub fn negotiated(&self) -> Negotiated {
        match &self.link {
            Link::Tcp(tcp) => tcp.transport.negotiated,
            #[cfg(feature = "rdma")]
            Link::Rdma(_) => Negotiated { digests: Default::default(), maxh2cdata: 0 },
        }
    }

    /// "tcp" or "rdma": the transport this queue runs on.
    pub fn trtype(&self) -> &'static str {
        match &self.link {
            Link::Tcp(_) => "tcp",
            #[cfg(feature = "rdma")]
            Link::Rdma(_) => "rdma",
        }
    }

    pub fn in_capsule_bytes(&self) -> usize {
        self.in_capsule_bytes
    }

    pub fn max_transfer_bytes(&self) -> usize {
        self.max_transfer_bytes
    }

    /// C2HData PDUs whose data was read from the socket straight into the command's buffer.
    pub fn direct_c2h_pdus(&self) -> u64 {
        match &self.link {
            Link::Tcp(tcp) => tcp.direct_pdus,
            #[cfg(feature = "rdma")]
            Link::Rdma(_) => 0,
        }
    }

    /// The error that ended this queue, if one did.
    pub fn failure(&self) -> Option<&Error> {
        self.failed.as_ref()
    }

    /// The controller's limits once known; an RDMA queue keeps within the registered
    /// buffers it was built with.
    pub(crate) fn set_limits(&mut self, in_capsule_bytes: usize, max_transfer_bytes: usize) {
        let (in_capsule_bytes, max_transfer_bytes) = match &self.link {
            Link::Tcp(_) => (in_capsule_bytes, max_transfer_bytes),
            #[cfg(feature = "rdma")]
            Link::Rdma(rdma) => {
                (in_capsule_bytes.min(rdma.in_capsule_bytes()), max_transfer_bytes.min(rdma.chunk_bytes()))
            }
        };
        self.in_capsule_bytes = in_capsule_bytes;
        self.max_transfer_bytes = max_transfer_bytes.clamp(1, MAX_TRANSFER_BYTES);
    }

    /// Queues a read of `nlb` blocks into `buf` (its length is the transfer length).
    pub fn submit_read(&mut self, nsid: u32, slba: u64, nlb: u32, buf: Vec<u8>) -> Result<u16> {
        check_nlb(nlb)?;
        self.submit(SqeBuilder::new(io::READ, 0).rw(nsid, slba, nlb), Xfer::FromController, buf)
    }

    /// Queues a write of `buf` (`nlb` blocks).
    pub fn submit_write(&mut self, nsid: u32, slba: u64, nlb: u32, buf: Vec<u8>) -> Result<u16> {
        check_nlb(nlb)?;
        self.submit(SqeBuilder::new(io::WRITE, 0).rw(nsid, slba, nlb), Xfer::ToController, buf)
    }

    /// Queues any command. The queue sets the CID and the SGL descriptor; `buf` is the
    /// data to send or the space to receive into (empty for `Xfer::None`). On error the
    /// buffer is dropped: check `free_slots()` first to keep it.
    pub fn submit(&mut self, cmd: SqeBuilder, xfer: Xfer, buf: Vec<u8>) -> Result<u16> {
        self.check_failed()?;
        let len = buf.len();
        if xfer != Xfer::None && !(1..=self.max_transfer_bytes).contains(&len) {
            return Err(Error::Invalid(format!("transfer of {len} bytes (limit {})", self.max_transfer_bytes)));
        }
        u32::try_from(len).map_err(|_| Error::Invalid(format!("transfer of {len} bytes")))?;
        let Some(cid) = self.free.pop() else { return Err(Error::QueueFull { depth: self.depth() }) };
        let in_capsule = xfer == Xfer::ToController && len <= self.in_capsule_bytes;
        let QueuePair { link, slots, ready, .. } = self;
        #[cfg(not(feature = "rdma"))]
        let _ = ready;
        let opcode = match link {
            Link::Tcp(tcp) => tcp.submit(cmd, xfer, cid, &buf, in_capsule).opcode(),
            #[cfg(feature = "rdma")]
            Link::Rdma(rdma) => match rdma.submit(cmd, xfer, cid, &buf, in_capsule, slots, ready) {
                Ok(sqe) => sqe.opcode(),
                Err(error) => {
                    self.free.push(cid);
                    return self.fail_on(Err(error));
                }
            },
        };
        let slot = &mut slots[usize::from(cid)];
        debug_assert!(!slot.busy, "cid {cid} was on the free list while busy");
        *slot = Slot { busy: true, opcode, xfer: Some(xfer), in_capsule, buf, moved: 0, digest_error: false };
        #[allow(irrefutable_let_patterns)]
        if let Link::Tcp(tcp) = &mut self.link {
            if tcp.transport.tx.len() >= TX_FLUSH_BYTES {
                let result = tcp.flush();
                self.fail_on(result)?;
            }
        }
        Ok(cid)
    }

    /// Sends what is queued and handles what arrived, then moves up to `max` completions
    /// into `out`. Returns how many it moved. Never blocks.
    pub fn poll(&mut self, max: usize, out: &mut Vec<Completion>) -> Result<usize> {
        self.progress()?;
        let count = max.min(self.ready.len());
        for completion in self.ready.drain(..count) {
            // A CID is reusable only once its completion is in the caller's hands.
            self.free.push(completion.cid);
            out.push(completion);
        }
        Ok(count)
    }

    /// Runs one command to completion, whatever its status.
    pub fn execute(&mut self, cmd: SqeBuilder, xfer: Xfer, buf: Vec<u8>) -> Result<Completion> {
        let cid = self.submit(cmd, xfer, buf)?;
        self.wait(cid)
    }

    /// Runs one command; a failure status becomes `Error::Command`.
    pub fn command(&mut self, cmd: SqeBuilder, xfer: Xfer, buf: Vec<u8>) -> Result<Completion> {
        self.execute(cmd, xfer, buf)?.into_result()
    }

    /// Blocking read into `data` (its length is the transfer length).
    pub fn read(&mut self, nsid: u32, slba: u64, nlb: u32, data: &mut [u8]) -> Result<()> {
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        buf.resize(data.len(), 0);
        let cid = self.submit_read(nsid, slba, nlb, buf)?;
        let completion = self.wait(cid)?;
        data.copy_from_slice(&completion.buf);
        completion.into_result().map(|c| self.spare = c.buf)
    }

    /// Blocking write of `data`.
    pub fn write(&mut self, nsid: u32, slba: u64, nlb: u32, data: &[u8]) -> Result<()> {
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        buf.extend_from_slice(data);
        let cid = self.submit_write(nsid, slba, nlb, buf)?;
        self.wait(cid)?.into_result().map(|c| self.spare = c.buf)
    }

    /// Flush (NVM opcode 0x00) of a namespace.
    pub fn flush_namespace(&mut self, nsid: u32) -> Result<()> {
        self.command(SqeBuilder::new(io::FLUSH, 0).nsid(nsid), Xfer::None, Vec::new()).map(drop)
    }

    /// Fabrics Disconnect (NVMe-oF 1.1, 3.7): ends this queue's association cleanly. The
    /// queue refuses further commands afterwards.
    pub fn disconnect(&mut self) -> Result<()> {
        // RECFMT 0 (byte 40-41).
        let cmd = SqeBuilder::fabrics(fctype::DISCONNECT, 0).u16_at(40, 0);
        self.command(cmd, Xfer::None, Vec::new())?;
        self.failed = Some(Error::Invalid(format!("queue {} was disconnected", self.qid)));
        Ok(())
    }

    /// Waits for command `cid`; other completions stay queued for `poll`. After a timeout
    /// the command is still outstanding and its completion comes through `poll`.
    pub fn wait(&mut self, cid: u16) -> Result<Completion> {
        let deadline = Instant::now() + self.timeout;
        loop {
            self.progress()?;
            if let Some(at) = self.ready.iter().position(|c| c.cid == cid) {
                if let Some(completion) = self.ready.remove(at) {
                    self.free.push(completion.cid);
                    return Ok(completion);
                }
            }
            if Instant::now() >= deadline {
                let ms = self.timeout.as_millis() as u64;
                return Err(Error::Timeout { what: "a command completion", ms });
            }
            match &self.link {
                // Wait for the controller, or for room to send what is still queued.
                Link::Tcp(tcp) => {
                    tcp.transport.wait_ready(deadline, !tcp.transport.tx.is_empty())?;
                }
                // Completions arrive in memory, with no descriptor to sleep on: spin, but
                // let the other threads of a small machine run.
                #[cfg(feature = "rdma")]
                Link::Rdma(_) => std::thread::yield_now(),
            }
        }
    }

    /// Sends bytes exactly as given (tests of the target's PDU validation).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let timeout = self.timeout;
        let tcp = self.tcp()?;
        tcp.transport.tx.push(bytes);
        tcp.transport.flush_all(timeout)
    }

    /// The next PDU as it arrived, unvalidated (tests). Do not mix with outstanding commands.
    pub fn recv_pdu(&mut self, timeout: Duration) -> Result<RawPdu> {
        let tcp = self.tcp()?;
        tcp.transport.flush_all(timeout)?;
        tcp.transport.recv_raw(timeout)
    }

    fn tcp(&mut self) -> Result<&mut TcpLink> {
        match &mut self.link {
            Link::Tcp(tcp) => Ok(tcp),
            #[cfg(feature = "rdma")]
            Link::Rdma(_) => Err(Error::Unsupported("raw PDUs on an NVMe/RDMA queue (they are NVMe/TCP's)".into())),
        }
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    fn fail_on<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(error) = &result {
            if self.failed.is_none() {
                self.failed = Some(error.clone());
                // Best effort: a TermReq we queued should reach the target before we go.
                #[allow(irrefutable_let_patterns)]
                if let Link::Tcp(tcp) = &mut self.link {
                    let _ = tcp.flush();
                }
            }
        }
        result
    }

    /// Sends, receives and handles whatever arrived.
    fn progress(&mut self) -> Result<()> {
        self.check_failed()?;
        let QueuePair { link, slots, ready, .. } = self;
        let result = match link {
            Link::Tcp(tcp) => tcp.flush().and_then(|()| tcp.receive(slots, ready)).and_then(|()| tcp.flush()),
            #[cfg(feature = "rdma")]
            Link::Rdma(rdma) => rdma.poll(slots, ready).map(drop),
        };
        self.fail_on(result)
    }
}

fn check_nlb(nlb: u32) -> Result<()> {
    // NLB is a 0's based 16-bit field: 1..=65536 blocks.
    if (1..=0x1_0000).contains(&nlb) {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{nlb} blocks in one command")))
    }
}
