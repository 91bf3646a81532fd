//! `peerless_nvmf`: fio files are NVMe-oF namespaces reached with the initiator library.
//! One controller and one I/O queue per (fio thread, file), driven by polling from the
//! fio thread itself, as SPDK's NVMe plugin does.
//!
//! First version: data is copied between the io_u buffer and the queue's `Vec` buffers
//! (the initiator owns its buffers); the Vecs are recycled, so steady state allocates nothing.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::io;
use peerless_tools::initiator::{
    self, subtype, Completion, Controller, Error, IoQueue, Options, Xfer, MAX_QUEUE_ENTRIES, MIN_QUEUE_ENTRIES,
};

use crate::engine::{blocks, Engine, Event, Op, Queued, Request, Token};
use crate::iou::IoBuf;
use crate::spec::{parse_digests, parse_nvmf_filename, NvmfFile};

/// SPDK's fio plugin connects with a host NQN of its own when none is given.
pub const DEFAULT_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:7065726c-6573-4466-996f-000000000001";
/// Empty polls before the fio thread yields its core once (kind to a shared machine).
const SPINS_BEFORE_YIELD: u32 = 64;
/// How often getevents looks at keep-alive deadlines.
const KEEP_ALIVE_CHECK: Duration = Duration::from_millis(500);
/// One Dataset Management range (NVMe Base 2.0, Figure 310): context attributes, NLB, SLBA.
const DSM_RANGE_BYTES: usize = 16;
/// DSM CDW11 bit 2: Attribute - Deallocate.
const DSM_DEALLOCATE: u32 = 1 << 2;

struct Inflight {
    token: Token,
    /// Where a read's data goes.
    read_into: Option<IoBuf>,
}

struct File {
    addr: SocketAddr,
    subnqn: String,
    /// Connected from open to close only (see `add_file`).
    controller: Option<Controller>,
    nsid: u32,
    block_size: u32,
    size_bytes: u64,
    queue: Option<IoQueue>,
    /// By CID.
    inflight: HashMap<u16, Inflight>,
}

pub struct NvmfEngine {
    hostnqn: String,
    options: Options,
    files: HashMap<u32, File>,
    /// Recycled data buffers.
    spare: Vec<Vec<u8>>,
    completions: Vec<Completion>,
    /// Finished io_us not yet handed to fio.
    ready: VecDeque<Event>,
    next_keep_alive_check: Instant,
}

impl NvmfEngine {
    pub fn new(hostnqn: Option<&str>, digest_enable: Option<&str>) -> Result<NvmfEngine, String> {
        let digests = parse_digests(digest_enable)?;
        Ok(NvmfEngine {
            hostnqn: hostnqn.unwrap_or(DEFAULT_HOSTNQN).to_string(),
            options: Options { digests, ..Options::default() },
            files: HashMap::new(),
            spare: Vec::new(),
            completions: Vec::new(),
            ready: VecDeque::new(),
            next_keep_alive_check: Instant::now() + KEEP_ALIVE_CHECK,
        })
    }

    fn connect(&self, spec: &NvmfFile) -> Result<Controller, Error> {
        let subnqn = match &spec.subnqn {
            Some(nqn) => nqn.clone(),
            None => {
                let log = initiator::discover(spec.addr, &self.hostnqn, &self.options)?;
                let first = log.entries.into_iter().find(|entry| entry.subtype == subtype::NVME);
                first.map(|entry| entry.subnqn).ok_or(Error::Invalid(format!(
                    "the discovery log of {} lists no NVMe subsystem; name one with subnqn=",
                    spec.addr
                )))?
            }
        };
        Controller::connect(spec.addr, &subnqn, &self.hostnqn, &self.options)
    }

    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        buf
    }

    fn submit(&mut self, fileno: u32, request: &Request) -> Result<u16, i32> {
        let file = self.files.get(&fileno).ok_or(libc::EBADF)?;
        let (nsid, block_size, size_bytes) = (file.nsid, file.block_size, file.size_bytes);
        let range = || blocks(request.offset, request.len, block_size, size_bytes);
        // READ/WRITE NLB is a 0's based 16-bit field: at most 65536 blocks per command.
        let rw_range = || match range()? {
            (slba, nlb) if nlb <= 0x1_0000 => Ok((slba, nlb as u32)),
            _ => Err(libc::EINVAL),
        };
        let (sqe, xfer, data) = match request.op {
            Op::Flush => (SqeBuilder::new(io::FLUSH, 0).nsid(nsid), Xfer::None, Vec::new()),
            Op::Read => {
                let (slba, nlb) = rw_range()?;
                (SqeBuilder::new(io::READ, 0).rw(nsid, slba, nlb), Xfer::FromController, self.buffer(request.len))
            }
            Op::Write => {
                let (slba, nlb) = rw_range()?;
                let mut data = self.buffer(0);
                data.extend_from_slice(request.buf.as_ref().map_or(&[][..], IoBuf::bytes));
                (SqeBuilder::new(io::WRITE, 0).rw(nsid, slba, nlb), Xfer::ToController, data)
            }
            Op::Trim => {
                let (slba, nlb) = range()?;
                let nlb = u32::try_from(nlb).map_err(|_| libc::EINVAL)?;
                // One range: context attributes (0), length in blocks, starting LBA.
                let mut data = self.buffer(DSM_RANGE_BYTES);
                data[4..8].copy_from_slice(&nlb.to_le_bytes());
                data[8..16].copy_from_slice(&slba.to_le_bytes());
                // CDW10 NR is 0's based: one range.
                let sqe = SqeBuilder::new(io::DATASET_MANAGEMENT, 0).nsid(nsid).cdw(10, 0).cdw(11, DSM_DEALLOCATE);
                (sqe, Xfer::ToController, data)
            }
        };
        let queue = self.files.get_mut(&fileno).and_then(|file| file.queue.as_mut()).ok_or(libc::EBADF)?;
        queue.submit(sqe, xfer, data).map_err(|err| match err {
            // Larger than the controller's MDTS, say: fio's bs is wrong for this target.
            Error::Invalid(_) => libc::EINVAL,
            _ => libc::EIO,
        })
    }

    /// Takes every completion off every queue into `ready`, failing the io_us of a broken
    /// queue. All of them, not just what fio asked for: the initiator frees a CID when the
    /// completion arrives, before `poll` hands it out, so a completion left in the queue
    /// could be mistaken for the next command that reuses its CID.
    fn reap(&mut self) {
        for file in self.files.values_mut() {
            let Some(queue) = file.queue.as_mut() else { continue };
            if let Err(error) = queue.poll(usize::MAX, &mut self.completions) {
                // The connection is gone: nothing outstanding will complete.
                eprintln!("peerless_nvmf: nsid {} queue failed: {error}", file.nsid);
                self.ready.extend(file.inflight.drain().map(|(_, io)| Event { token: io.token, error: libc::EIO }));
                file.queue = None;
                continue;
            }
            for completion in self.completions.drain(..) {
                let Some(io) = file.inflight.remove(&completion.cid) else { continue };
                let error = if completion.is_ok() { 0 } else { libc::EIO };
                if let (0, Some(mut dest)) = (error, io.read_into) {
                    dest.fill(&completion.buf);
                }
                self.spare.push(completion.buf);
                self.ready.push_back(Event { token: io.token, error });
            }
        }
    }

    /// Fails every outstanding io_u with ETIMEDOUT and drops the queues they were on.
    fn abandon_queues(&mut self) {
        for file in self.files.values_mut() {
            if file.inflight.is_empty() {
                continue;
            }
            eprintln!(
                "peerless_nvmf: nsid {}: no completion in {:?}; failing {} I/O",
                file.nsid,
                self.options.command_timeout,
                file.inflight.len()
            );
            self.ready.extend(file.inflight.drain().map(|(_, io)| Event { token: io.token, error: libc::ETIMEDOUT }));
            file.queue = None;
        }
    }

    fn keep_alive(&mut self) {
        let now = Instant::now();
        if now < self.next_keep_alive_check {
            return;
        }
        self.next_keep_alive_check = now + KEEP_ALIVE_CHECK;
        for file in self.files.values_mut() {
            let Some(controller) = file.controller.as_mut() else { continue };
            if let Err(error) = controller.keep_alive_if_due() {
                eprintln!("peerless_nvmf: keep alive to {}: {error}", file.subnqn);
            }
        }
    }
}

impl Engine for NvmfEngine {
    fn add_file(&mut self, fileno: u32, name: &str) -> Result<u64, String> {
        let spec = parse_nvmf_filename(name)?;
        let mut controller = self.connect(&spec).map_err(|err| format!("connect to {}: {err}", spec.addr))?;
        let nsid = match spec.nsid {
            Some(nsid) => nsid,
            None => controller
                .active_namespaces()
                .map_err(|err| err.to_string())?
                .first()
                .copied()
                .ok_or_else(|| format!("{} has no active namespace", controller.subnqn()))?,
        };
        let ns = controller.identify_namespace(nsid).map_err(|err| format!("identify namespace {nsid}: {err}"))?;
        if ns.block_size == 0 || ns.nsze == 0 {
            return Err(format!("namespace {nsid} of {} is not active or has no usable format", controller.subnqn()));
        }
        // fio sets up every job before the first one runs; a controller left connected
        // here would sit without keep-alives through the earlier jobs (stonewall) and be
        // dropped by the target. So this one only sizes the namespace; open reconnects.
        let file = File {
            addr: spec.addr,
            subnqn: controller.subnqn().to_string(),
            controller: None,
            nsid,
            block_size: ns.block_size,
            size_bytes: ns.size_bytes(),
            queue: None,
            inflight: HashMap::new(),
        };
        let size = file.size_bytes;
        self.files.insert(fileno, file);
        Ok(size)
    }

    fn open_file(&mut self, fileno: u32, depth: u32) -> Result<(), String> {
        let file = self.files.get_mut(&fileno).ok_or_else(|| format!("file {fileno} was not set up"))?;
        if file.queue.is_some() {
            return Ok(());
        }
        let controller = match &mut file.controller {
            Some(controller) => controller,
            slot => slot.insert(
                Controller::connect(file.addr, &file.subnqn, &self.hostnqn, &self.options)
                    .map_err(|err| format!("connect to {} at {}: {err}", file.subnqn, file.addr))?,
            ),
        };
        // A queue of N entries holds N - 1 commands.
        let wanted = u16::try_from(depth.saturating_add(1)).unwrap_or(MAX_QUEUE_ENTRIES);
        let entries = wanted.clamp(MIN_QUEUE_ENTRIES, controller.max_io_queue_entries().max(MIN_QUEUE_ENTRIES));
        let queue = controller.io_queue(entries).map_err(|err| format!("I/O queue of {entries} entries: {err}"))?;
        file.inflight.reserve(usize::from(queue.depth()));
        file.queue = Some(queue);
        Ok(())
    }

    fn close_file(&mut self, fileno: u32) {
        if let Some(file) = self.files.get_mut(&fileno) {
            file.queue = None;
            file.controller = None;
        }
    }

    fn queue(&mut self, fileno: u32, request: Request) -> Queued {
        let free = self.files.get(&fileno).and_then(|file| file.queue.as_ref()).map(|queue| queue.free_slots());
        match free {
            None => return Queued::Failed(libc::EIO),
            Some(0) => return Queued::Busy(request),
            Some(_) => {}
        }
        match self.submit(fileno, &request) {
            Ok(cid) => {
                let read_into = if request.op == Op::Read { request.buf } else { None };
                let inflight = Inflight { token: request.token, read_into };
                if let Some(file) = self.files.get_mut(&fileno) {
                    file.inflight.insert(cid, inflight);
                }
                Queued::Queued
            }
            Err(errno) => Queued::Failed(errno),
        }
    }

    fn getevents(&mut self, min: usize, max: usize, timeout: Option<Duration>, out: &mut Vec<Event>) {
        debug_assert!(min <= max, "min {min} > max {max}");
        let start = Instant::now();
        let deadline = timeout.map(|timeout| start + timeout);
        let mut last_progress = start;
        let mut spins = 0;
        loop {
            if self.ready.len() < max - out.len() {
                self.reap();
            }
            let take = self.ready.len().min(max - out.len());
            out.extend(self.ready.drain(..take));
            let outstanding = self.files.values().any(|file| !file.inflight.is_empty());
            // Nothing in flight would make waiting for `min` endless.
            if out.len() >= min || out.len() == max || (!outstanding && self.ready.is_empty()) {
                break;
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                break;
            }
            if take > 0 {
                last_progress = now;
            } else if now - last_progress > self.options.command_timeout {
                // fio waits without a timeout; a target that stopped answering must not
                // hang it forever.
                self.abandon_queues();
                last_progress = now;
            }
            spins += 1;
            if spins % SPINS_BEFORE_YIELD == 0 {
                std::thread::yield_now();
            }
        }
        self.keep_alive();
    }
}
