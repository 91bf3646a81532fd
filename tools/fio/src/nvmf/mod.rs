//! `peerless_nvmf`: fio files are NVMe-oF namespaces reached with the initiator library.
//! One controller and one I/O queue per (fio thread, file), driven by polling from the
//! fio thread itself, as SPDK's NVMe plugin does.
//!
//! First version: data is copied between the io_u buffer and the queue's `Vec` buffers
//! (the initiator owns its buffers); the Vecs are recycled, so steady state allocates nothing.

mod file;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use peerless_tools::initiator::auth::secret_argument;
use peerless_tools::initiator::{
    self, subtype, Completion, Controller, Error, HostAuth, HostTls, Options, Trtype, MAX_QUEUE_ENTRIES,
    MIN_QUEUE_ENTRIES,
};

use crate::engine::{Engine, Event, Op, Queued, Request};
use crate::spec::{parse_digests, parse_nvmf_filename, NvmfFile};
use file::{File, MAX_BLOCKS_PER_COMMAND};

/// SPDK's fio plugin connects with a host NQN of its own when none is given.
pub const DEFAULT_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:7065726c-6573-4466-996f-000000000001";
/// Empty polls before the fio thread yields its core once (kind to a shared machine).
const SPINS_BEFORE_YIELD: u32 = 64;
/// How often getevents looks at keep-alive deadlines.
const KEEP_ALIVE_CHECK: Duration = Duration::from_millis(500);

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
    /// `dhchap_key`, `dhchap_ctrlr_key`: DH-HMAC-CHAP key files; `psk`: a TLS PSK file
    /// (all as `peerless-perf`'s).
    pub fn new(
        hostnqn: Option<&str>,
        digest_enable: Option<&str>,
        dhchap_key: Option<&str>,
        dhchap_ctrlr_key: Option<&str>,
        psk: Option<&str>,
    ) -> Result<NvmfEngine, String> {
        let digests = parse_digests(digest_enable)?;
        let auth = match (dhchap_key, dhchap_ctrlr_key) {
            (None, None) => None,
            (None, Some(_)) => return Err("dhchap_ctrlr_key needs dhchap_key".into()),
            (Some(key), ctrlr) => {
                let secret = secret_argument(key).map_err(|e| format!("dhchap_key: {e}"))?;
                let ctrlr = ctrlr.map(secret_argument).transpose().map_err(|e| format!("dhchap_ctrlr_key: {e}"))?;
                Some(HostAuth::new(&secret, ctrlr.as_deref()).map_err(|e| e.to_string())?)
            }
        };
        let tls = psk
            .map(|path| HostTls::from_file(std::path::Path::new(path)))
            .transpose()
            .map_err(|e| format!("psk: {e}"))?;
        Ok(NvmfEngine {
            hostnqn: hostnqn.unwrap_or(DEFAULT_HOSTNQN).to_string(),
            options: Options { digests, auth, tls, ..Options::default() },
            files: HashMap::new(),
            spare: Vec::new(),
            completions: Vec::new(),
            ready: VecDeque::new(),
            next_keep_alive_check: Instant::now() + KEEP_ALIVE_CHECK,
        })
    }

    fn connect(&self, spec: &NvmfFile) -> Result<Controller, Error> {
        let subnqn = match &spec.subnqn {
            // A PSK identity names the subsystem; discovery is not done over TLS.
            None if self.options.tls.is_some() => {
                return Err(Error::Invalid("psk needs the subsystem: name it with subnqn= in the filename".into()))
            }
            Some(nqn) => nqn.clone(),
            None => {
                let log = initiator::discover(spec.addr, &self.hostnqn, &self.options_for(spec.trtype))?;
                let first = log.entries.into_iter().find(|entry| entry.subtype == subtype::NVME);
                first.map(|entry| entry.subnqn).ok_or(Error::Invalid(format!(
                    "the discovery log of {} lists no NVMe subsystem; name one with subnqn=",
                    spec.addr
                )))?
            }
        };
        Controller::connect(spec.addr, &subnqn, &self.hostnqn, &self.options_for(spec.trtype))
    }

    /// The engine's options on the fabric a filename names.
    fn options_for(&self, trtype: Trtype) -> Options {
        Options { trtype, ..self.options.clone() }
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
                self.ready.extend(file.fail_all(libc::EIO));
                continue;
            }
            for completion in self.completions.drain(..) {
                self.ready.extend(file.complete(&completion));
                self.spare.push(completion.buf);
            }
            file.pump(&mut self.spare, &mut self.ready);
        }
    }

    /// Fails every outstanding io_u with ETIMEDOUT and drops the queues they were on.
    fn abandon_queues(&mut self) {
        for file in self.files.values_mut() {
            if !file.busy() {
                continue;
            }
            eprintln!(
                "peerless_nvmf: nsid {}: no completion in {:?}; failing its I/O",
                file.nsid, self.options.command_timeout
            );
            self.ready.extend(file.fail_all(libc::ETIMEDOUT));
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
        let file =
            File::new(spec.trtype, spec.addr, controller.subnqn().to_string(), nsid, ns.block_size, ns.size_bytes());
        let size = file.size_bytes;
        self.files.insert(fileno, file);
        Ok(size)
    }

    fn open_file(&mut self, fileno: u32, depth: u32, max_bs: u64) -> Result<(), String> {
        let file = self.files.get_mut(&fileno).ok_or_else(|| format!("file {fileno} was not set up"))?;
        if file.queue.is_some() {
            return Ok(());
        }
        let options = Options { trtype: file.trtype, ..self.options.clone() };
        let controller = match &mut file.controller {
            Some(controller) => controller,
            slot => slot.insert(
                Controller::connect(file.addr, &file.subnqn, &self.hostnqn, &options)
                    .map_err(|err| format!("connect to {} at {}: {err}", file.subnqn, file.addr))?,
            ),
        };
        // READ/WRITE carry at most 64Ki blocks; MDTS may allow less.
        let block = file.block_size as usize;
        let chunk = controller.max_transfer_bytes().min(MAX_BLOCKS_PER_COMMAND * block) / block * block;
        if chunk == 0 {
            return Err(format!("the controller's transfer limit is below one {block}-byte block"));
        }
        // Room for `depth` io_us of the largest size, split; more wait in the file's
        // software queue.
        let pieces = usize::try_from(max_bs).unwrap_or(usize::MAX).div_ceil(chunk).max(1);
        let wanted = (depth as usize).saturating_mul(pieces).saturating_add(1);
        let entries = u16::try_from(wanted)
            .unwrap_or(MAX_QUEUE_ENTRIES)
            .clamp(MIN_QUEUE_ENTRIES, controller.max_io_queue_entries().max(MIN_QUEUE_ENTRIES));
        let queue = controller.io_queue(entries).map_err(|err| format!("I/O queue of {entries} entries: {err}"))?;
        file.chunk_bytes = chunk.min(queue.max_transfer_bytes() / block * block);
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
        let Some(file) = self.files.get_mut(&fileno) else { return Queued::Failed(libc::EBADF) };
        let buf = if matches!(request.op, Op::Read | Op::Write) { request.buf } else { None };
        match file.queue(request.op, request.offset, request.len, buf, request.token) {
            Ok(()) => {
                file.pump(&mut self.spare, &mut self.ready);
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
            let outstanding = self.files.values().any(File::busy);
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
