//! An NVMe controller over PCIe: bring-up (NVMe Base 2.0 §3.5.1), identify, I/O queue
//! creation and deletion, asynchronous events and log pages, and shutdown (§3.6.1).
//!
//! Admin commands are control plane (`admin`): they run one at a time under a lock and
//! are polled to completion by the caller, as SPDK's driver does for queue creation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use peerless_core::mem::pci::{is_bar_memory, BarMemory};
use peerless_core::mem::{registry, DmaBuf, DomainId, P2pProvider};
use peerless_core::reactor::IoDevice;

use super::admin::{
    admin_command, admin_command_locked, admin_completion_locked, arm_async_events, identify, set_queue_count,
    set_queue_count_locked, AdminQueue, Passthrough, ADMIN_DEPTH, ADMIN_TIMEOUT,
};
use super::async_event::get_log_page_command;
use super::channel::ThreadChannels;
use super::interrupts::CompletionInterrupts;
use super::pci::{PciFunction, Route};
use super::queue::{BusTranslate, QueuePair, PAGE_BYTES};
use super::registers::{disable, enable_cmb, wait_ready};
use super::spec::{
    abort_cdw10, abort_left_command, admin, cc, cmbmsc, csts, reg, Cap, Cqe, IdentifyController, IdentifyNamespace,
    Sqe, IDENTIFY_BYTES,
};

/// Shutdown takes at most this long (RTD3E is often 0, meaning unreported).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// What the driver asks for at most; the controller may grant fewer.
pub const DEFAULT_IO_QUEUES: u16 = 64;
/// Entries per I/O queue when the controller allows that many.
pub const DEFAULT_IO_DEPTH: u16 = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub nsid: u32,
    pub id: IdentifyNamespace,
}

pub struct Controller {
    pci: PciFunction,
    cap: Cap,
    id: IdentifyController,
    max_transfer_bytes: usize,
    io_depth: u16,
    io_queues_granted: u16,
    /// The active namespaces the driver serves, kept current by namespace change events.
    namespaces: Mutex<Vec<Namespace>>,
    admin: Mutex<AdminQueue>,
    /// Free I/O queue identifiers.
    free_qids: Mutex<Vec<u16>>,
    /// The Controller Memory Buffer, when the controller has one that can hold data.
    cmb: Option<BarMemory>,
    /// Commands whose data went through a bounce buffer. Counted on that slow path
    /// only, where a shared counter costs nothing next to the copy.
    bounced_commands: AtomicU64,
    /// Commands that carried SGLs. Each channel adds its count once per poll, not per
    /// command: this line is shared by every thread.
    sgl_commands: AtomicU64,
    /// Each reactor thread's channels on this controller, which a reset reaches by
    /// message on their own threads.
    threads: IoDevice<ThreadChannels>,
    resetting: AtomicBool,
    resets: AtomicU64,
    /// I/Os that were in flight at a reset and were submitted again after it.
    resubmitted: AtomicU64,
    /// Set once the device is found removed: submissions fail at once from then on.
    gone: AtomicBool,
    timeouts: super::timeout::TimeoutSettings,
    /// MSI-X vectors for the I/O queues of sleeping reactors (VFIO only).
    interrupts: Option<CompletionInterrupts>,
    /// Bumped under the admin lock as each reset disables the controller: a queue pair
    /// created under an older value was deleted by that reset.
    queue_generation: AtomicU64,
}

impl Controller {
    /// Opens the function and brings the controller up, ready for I/O queues.
    pub fn attach(bdf: &str, io_queues: u16) -> Result<Arc<Controller>, String> {
        let pci = PciFunction::open(bdf)?;
        let bar = pci.bar0().clone();
        if bar.len() < reg::DOORBELLS + 8 {
            return Err(format!("{}: BAR0 is {} bytes, too small for an NVMe controller", pci.bdf(), bar.len()));
        }
        let cap = Cap(bar.read64(reg::CAP));
        if cap.0 == u64::MAX {
            return Err(format!("{}: registers read all ones: the device is gone or not enabled", pci.bdf()));
        }
        if !cap.nvm_command_set() {
            return Err(format!("{}: the controller lacks the NVM command set", pci.bdf()));
        }
        if cap.min_page_bytes() > PAGE_BYTES || cap.max_page_bytes() < PAGE_BYTES {
            return Err(format!("{}: the controller does not take 4 KiB memory pages", pci.bdf()));
        }
        let stride = cap.doorbell_stride();
        let version = bar.read32(reg::VS);
        peerless_core::log_notice!(
            "nvme {}: NVMe {}.{} controller over {}, {} entries per queue at most",
            pci.bdf(),
            version >> 16,
            version >> 8 & 0xff,
            pci.route().as_str(),
            cap.max_queue_entries()
        );
        disable(&pci, cap)?;
        let cmb = enable_cmb(&pci, cap)?;
        if let Some(cmb) = &cmb {
            super::pci::share_peer_window(cmb.cpu_window());
        }
        let admin_queue = QueuePair::new(0, ADMIN_DEPTH, stride, bar.clone(), &pci)?;
        let data = DmaBuf::alloc_plain(IDENTIFY_BYTES).map_err(|err| format!("identify buffer: {err}"))?;
        let data_bus = pci.host_bus_address(data.addr()).ok_or("identify buffer has no bus address")?;
        let aqa = u32::from(ADMIN_DEPTH - 1) << 16 | u32::from(ADMIN_DEPTH - 1);
        bar.write32(reg::AQA, aqa);
        bar.write64(reg::ASQ, admin_queue.sq_bus());
        bar.write64(reg::ACQ, admin_queue.cq_bus());
        bar.write32(reg::CC, cc::EN | cc::CSS_NVM | cc::mps(12) | cc::IOSQES_64 | cc::IOCQES_16);
        wait_ready(&pci, cap, true)?;
        let admin = Mutex::new(AdminQueue::new(admin_queue, data, data_bus));

        let id = IdentifyController::parse(&identify(&admin, admin::CNS_CONTROLLER, 0, pci.bdf())?)?;
        let max_transfer_bytes = id
            .max_transfer_bytes(cap.min_page_bytes())
            .unwrap_or(usize::MAX)
            // One list page per command: 512 entries of 4 KiB pages.
            .min(PAGE_BYTES / 8 * PAGE_BYTES);
        let wanted = io_queues.clamp(1, u16::MAX - 1);
        let granted = set_queue_count(&admin, wanted, pci.bdf())?;
        let interrupts = CompletionInterrupts::enable(&pci, granted)?;
        let mut namespaces = Vec::new();
        let active =
            super::spec::parse_active_namespaces(&identify(&admin, admin::CNS_ACTIVE_NAMESPACES, 0, pci.bdf())?);
        for nsid in active.into_iter().filter(|nsid| *nsid <= id.nn) {
            let ns = IdentifyNamespace::parse(&identify(&admin, admin::CNS_NAMESPACE, nsid, pci.bdf())?)
                .map_err(|err| format!("namespace {nsid}: {err}"))?;
            if ns.size_blocks > 0 {
                namespaces.push(Namespace { nsid, id: ns });
            }
        }
        let io_depth = DEFAULT_IO_DEPTH.min(cap.max_queue_entries().min(u32::from(QueuePair::max_depth())) as u16);
        let threads = IoDevice::new(&format!("nvme_ctrlr_{}", pci.bdf()), |_| ThreadChannels::default());
        if let Err(err) = arm_async_events(&mut admin.lock(), &id, pci.bdf()) {
            peerless_core::log_warn!("nvme {}: no asynchronous events: {err}", pci.bdf());
        }
        Ok(Arc::new(Controller {
            free_qids: Mutex::new((1..=granted).rev().collect()),
            pci,
            cap,
            id,
            max_transfer_bytes,
            io_depth,
            io_queues_granted: granted,
            namespaces: Mutex::new(namespaces),
            admin,
            cmb,
            bounced_commands: AtomicU64::new(0),
            sgl_commands: AtomicU64::new(0),
            threads,
            resetting: AtomicBool::new(false),
            resets: AtomicU64::new(0),
            resubmitted: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            timeouts: super::timeout::TimeoutSettings::default(),
            interrupts,
            queue_generation: AtomicU64::new(0),
        }))
    }

    pub fn count_bounce(&self) {
        self.bounced_commands.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bounced_commands(&self) -> u64 {
        self.bounced_commands.load(Ordering::Relaxed)
    }

    pub fn count_sgl(&self, commands: u64) {
        self.sgl_commands.fetch_add(commands, Ordering::Relaxed);
    }

    pub fn sgl_commands(&self) -> u64 {
        self.sgl_commands.load(Ordering::Relaxed)
    }

    pub fn cmb(&self) -> Option<&BarMemory> {
        self.cmb.as_ref()
    }

    /// The CMB's domain, whose segments this controller reaches by their bus address.
    pub fn cmb_domain(&self) -> Option<DomainId> {
        self.cmb.as_ref().map(BarMemory::domain)
    }

    /// Whether this controller can DMA to and from device memory of `domain`: its own CMB
    /// by the bus addresses the registry holds, another SSD's by those too over uio, and
    /// over VFIO by the IOVAs the peer window got in the container (`peer_bus_address`).
    pub fn reaches(&self, domain: DomainId) -> bool {
        self.cmb_domain() == Some(domain) || is_bar_memory(domain)
    }

    /// The address this controller DMAs to for `addr` in device memory of `domain`, which
    /// it reaches.
    pub fn device_bus_address(&self, domain: DomainId, addr: usize) -> Option<u64> {
        if self.cmb_domain() == Some(domain) || self.pci.route() == Route::Uio {
            registry::bus_address(domain, addr)
        } else {
            self.pci.host_bus_address(addr)
        }
    }

    pub fn cmb_provider(&self) -> Option<Arc<dyn P2pProvider>> {
        self.cmb.as_ref().map(BarMemory::provider)
    }

    pub fn pci(&self) -> &PciFunction {
        &self.pci
    }

    pub fn identity(&self) -> &IdentifyController {
        &self.id
    }

    /// The namespaces served now.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.namespaces.lock().clone()
    }

    pub(crate) fn namespaces_mut(&self) -> parking_lot::MutexGuard<'_, Vec<Namespace>> {
        self.namespaces.lock()
    }

    pub fn max_transfer_bytes(&self) -> usize {
        self.max_transfer_bytes
    }

    pub fn io_queues_granted(&self) -> u16 {
        self.io_queues_granted
    }

    pub fn io_depth(&self) -> u16 {
        self.io_depth
    }

    pub(crate) fn threads(&self) -> &IoDevice<ThreadChannels> {
        &self.threads
    }

    pub fn timeouts(&self) -> &super::timeout::TimeoutSettings {
        &self.timeouts
    }

    /// Claims the reset; false if one is under way already.
    pub(crate) fn begin_reset(&self) -> bool {
        !self.resetting.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn end_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
        self.resetting.store(false, Ordering::Release);
    }

    pub fn is_resetting(&self) -> bool {
        self.resetting.load(Ordering::Acquire)
    }

    /// Resets completed since attach.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    pub(crate) fn count_resubmitted(&self, ios: usize) {
        self.resubmitted.fetch_add(ios as u64, Ordering::Relaxed);
    }

    /// I/Os in flight at a reset and submitted again after it, since attach.
    pub fn resubmitted(&self) -> u64 {
        self.resubmitted.load(Ordering::Relaxed)
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Records that the device went away; true for the first caller.
    pub fn mark_gone(&self) -> bool {
        !self.gone.swap(true, Ordering::AcqRel)
    }

    /// Whether the registers read all ones, as a removed device's do (§3.1.3).
    pub fn registers_gone(&self) -> bool {
        self.pci.bar0().read32(reg::CSTS) == u32::MAX
    }

    /// CSTS.CFS: the controller hit a fatal error and needs a reset (§3.1.3.6).
    pub fn fatal_status(&self) -> bool {
        let status = self.pci.bar0().read32(reg::CSTS);
        status != u32::MAX && status & csts::CFS != 0
    }

    /// The middle of a controller reset, once every channel has stopped submitting:
    /// CC.EN to 0 (which deletes every I/O queue and stops the controller's DMA, §3.7.2),
    /// the admin queue from its start in the same memory, CC.EN to 1, the CMB's window
    /// again and Number of Queues again. Blocks for the register waits: run it off the
    /// reactors. The admin lock is held throughout, so no other admin command interleaves.
    pub fn reenable(&self) -> Result<(), String> {
        let mut admin = self.admin.lock();
        self.queue_generation.fetch_add(1, Ordering::AcqRel);
        disable(&self.pci, self.cap)?;
        let bar = self.pci.bar0();
        if let (Some(cmb), true) = (&self.cmb, self.cap.cmb_gated()) {
            let value = cmb.bus_base() | cmbmsc::CMSE | cmbmsc::CRE;
            bar.write32(reg::CMBMSC + 4, (value >> 32) as u32);
            bar.write32(reg::CMBMSC, value as u32);
        }
        admin.queue.reset();
        bar.write32(reg::AQA, u32::from(ADMIN_DEPTH - 1) << 16 | u32::from(ADMIN_DEPTH - 1));
        bar.write64(reg::ASQ, admin.queue.sq_bus());
        bar.write64(reg::ACQ, admin.queue.cq_bus());
        bar.write32(reg::CC, cc::EN | cc::CSS_NVM | cc::mps(12) | cc::IOSQES_64 | cc::IOCQES_16);
        wait_ready(&self.pci, self.cap, true)?;
        let granted = set_queue_count_locked(&mut admin, self.io_queues_granted, self.pci.bdf())?;
        if granted < self.io_queues_granted {
            return Err(format!(
                "{}: after the reset the controller grants {granted} I/O queues, fewer than the {} in use",
                self.pci.bdf(),
                self.io_queues_granted
            ));
        }
        // The reset dropped the AERs outstanding and the event configuration with them
        // (features are not saved across a Controller Level Reset, §3.7.2).
        admin.aers = 0;
        if let Err(err) = arm_async_events(&mut admin, &self.id, self.pci.bdf()) {
            peerless_core::log_warn!("nvme {}: no asynchronous events after the reset: {err}", self.pci.bdf());
        }
        Ok(())
    }

    /// Whether `queue` still exists on the controller: false once a reset that began
    /// after its creation has disabled the controller (a channel created while a reset
    /// was on its way, after the reset's first message passed its thread).
    pub fn queue_is_current(&self, queue: &QueuePair) -> bool {
        queue.generation() == self.queue_generation.load(Ordering::Acquire)
    }

    /// Creates a queue pair the reset took away again, in its own memory and under its
    /// own identifier.
    pub fn recreate_io_queue(&self, queue: &mut QueuePair) -> Result<(), String> {
        queue.reset();
        self.register_queue(queue)
    }

    /// Gives back the identifier of a queue pair that no longer exists on the controller.
    pub fn release_qid(&self, qid: u16) {
        self.free_qids.lock().push(qid);
    }

    /// Asks the controller to abort command `cid` of queue `sqid` (§5.1); true when it
    /// says it did.
    pub fn abort(&self, sqid: u16, cid: u16) -> Result<bool, String> {
        let mut sqe = Sqe::new(admin::ABORT);
        sqe.cdw10 = abort_cdw10(sqid, cid);
        let cqe = self.admin_command(sqe)?;
        Ok(!abort_left_command(cqe.result))
    }

    pub fn interrupts(&self) -> Option<&CompletionInterrupts> {
        self.interrupts.as_ref()
    }

    /// Creates an I/O queue pair; with `interrupts`, one that raises its MSI-X vector when
    /// it has one (see `CompletionInterrupts`).
    pub fn create_io_queue(&self, interrupts: bool) -> Result<QueuePair, String> {
        let qid = self.free_qids.lock().pop().ok_or_else(|| {
            format!("{}: all {} I/O queues the controller granted are in use", self.pci.bdf(), self.io_queues_granted)
        })?;
        let vector = if interrupts { self.interrupts.as_ref().and_then(|irq| irq.for_queue(qid)) } else { None };
        let created = self.create_queue_pair(qid, vector.map(|(vector, _)| vector));
        if created.is_err() {
            self.free_qids.lock().push(qid);
        }
        created
    }

    fn create_queue_pair(&self, qid: u16, vector: Option<u16>) -> Result<QueuePair, String> {
        let mut queue =
            QueuePair::new(qid, self.io_depth, self.cap.doorbell_stride(), self.pci.bar0().clone(), &self.pci)?;
        queue.set_interrupt_vector(vector);
        self.register_queue(&mut queue)?;
        Ok(queue)
    }

    /// Creates the pair on the controller: its completion queue first, then its submission
    /// queue (§3.3.1.1).
    fn register_queue(&self, queue: &mut QueuePair) -> Result<(), String> {
        let qid = queue.qid();
        let size = u32::from(self.io_depth - 1) << 16 | u32::from(qid);
        // Both creations and the generation under one hold of the admin lock, which a
        // reset keeps from its disable to its enable: the pair is created wholly before a
        // reset's disable (and carries the old generation) or wholly after its enable.
        let mut admin = self.admin.lock();
        queue.set_generation(self.queue_generation.load(Ordering::Acquire));
        let mut create_cq = Sqe::new(admin::CREATE_IO_CQ);
        create_cq.prp1 = queue.cq_bus();
        create_cq.cdw10 = size;
        // Physically contiguous; interrupts enabled on the queue's vector, if it has one.
        create_cq.cdw11 = match queue.interrupt_vector() {
            Some(vector) => u32::from(vector) << 16 | 1 << 1 | 1,
            None => 1,
        };
        admin_command_locked(&mut admin, create_cq, self.pci.bdf(), ADMIN_TIMEOUT)
            .map_err(|err| format!("create I/O completion queue {qid}: {err}"))?;
        let mut create_sq = Sqe::new(admin::CREATE_IO_SQ);
        create_sq.prp1 = queue.sq_bus();
        create_sq.cdw10 = size;
        create_sq.cdw11 = u32::from(qid) << 16 | 1;
        if let Err(err) = admin_command_locked(&mut admin, create_sq, self.pci.bdf(), ADMIN_TIMEOUT) {
            let mut delete_cq = Sqe::new(admin::DELETE_IO_CQ);
            delete_cq.cdw10 = u32::from(qid);
            let _ = admin_command_locked(&mut admin, delete_cq, self.pci.bdf(), ADMIN_TIMEOUT);
            return Err(format!("create I/O submission queue {qid}: {err}"));
        }
        Ok(())
    }

    /// Deletes a queue pair whose commands have all completed (§3.3.1.3).
    pub fn delete_io_queue(&self, queue: QueuePair) {
        let qid = queue.qid();
        let deleted =
            self.delete_queue(admin::DELETE_IO_SQ, qid).and_then(|_| self.delete_queue(admin::DELETE_IO_CQ, qid));
        match deleted {
            Ok(_) => self.free_qids.lock().push(qid),
            // The queue's identifier stays taken: the controller may still own it.
            Err(err) => peerless_core::log_error!("nvme {}: delete I/O queue {qid}: {err}", self.pci.bdf()),
        }
    }

    fn delete_queue(&self, opcode: u8, qid: u16) -> Result<Cqe, String> {
        let mut sqe = Sqe::new(opcode);
        sqe.cdw10 = u32::from(qid);
        self.admin_command(sqe)
    }

    fn admin_command(&self, sqe: Sqe) -> Result<Cqe, String> {
        admin_command(&self.admin, sqe, self.pci.bdf())
    }

    /// The AER completions that came in since the last call, each AER now no longer
    /// outstanding. Never waits: when a synchronous command holds the queue, its own
    /// polling keeps what arrives for the next call.
    pub fn take_async_events(&self) -> Vec<Cqe> {
        let Some(mut admin) = self.admin.try_lock() else { return Vec::new() };
        if self.is_resetting() || self.is_gone() {
            return Vec::new();
        }
        let bdf = self.pci.bdf();
        admin.reap(|stray| {
            peerless_core::log_warn!("nvme {bdf}: admin completion for no command outstanding (CID {})", stray.cid)
        });
        std::mem::take(&mut admin.events)
    }

    /// Posts AERs again up to the number kept outstanding, once an event is handled
    /// (the controller reports the next event of a type only after its log page is read).
    pub fn repost_async_events(&self) {
        if self.is_resetting() || self.is_gone() {
            return;
        }
        self.admin.lock().post_aers();
    }

    /// Reads `bytes` of log page `log_page` (up to one page), which clears the
    /// asynchronous event that named it (§5.16, RAE clear).
    pub fn read_log_page(&self, log_page: u8, bytes: usize) -> Result<Vec<u8>, String> {
        let bytes = bytes.clamp(4, IDENTIFY_BYTES);
        let mut admin = self.admin.lock();
        let sqe = get_log_page_command(log_page, bytes, admin.data_bus);
        admin_command_locked(&mut admin, sqe, self.pci.bdf(), ADMIN_TIMEOUT)
            .map_err(|err| format!("get log page {log_page:#04x}: {err}"))?;
        let sgl = admin.data.sgl().map_err(|err| err.to_string())?;
        let view = sgl.cpu_view().map_err(|err| err.to_string())?;
        let mut data = view.to_vec();
        data.truncate(bytes);
        Ok(data)
    }

    /// Identify Namespace for `nsid`: None when it is not an active namespace (a zeroed
    /// structure, or the NSID refused as invalid, §5.17.2.1).
    pub fn identify_namespace(&self, nsid: u32) -> Result<Option<IdentifyNamespace>, String> {
        let data = match identify(&self.admin, admin::CNS_NAMESPACE, nsid, self.pci.bdf()) {
            Ok(data) => data,
            // Invalid Field in Command, Invalid Namespace or Format.
            Err(err) if err.contains("status type 0x0 code 0xb") || err.contains("status type 0x0 code 0x2") => {
                return Ok(None)
            }
            Err(err) => return Err(err),
        };
        // An inactive NSID's structure is all zeros: no size, and no valid format either.
        if data.iter().take(8).all(|byte| *byte == 0) {
            return Ok(None);
        }
        IdentifyNamespace::parse(&data).map(Some).map_err(|err| format!("namespace {nsid}: {err}"))
    }

    /// The active namespace list (Identify CNS 02h): the first 1024 NSIDs.
    pub fn active_namespaces(&self) -> Result<Vec<u32>, String> {
        let data = identify(&self.admin, admin::CNS_ACTIVE_NAMESPACES, 0, self.pci.bdf())?;
        Ok(super::spec::parse_active_namespaces(&data).into_iter().filter(|nsid| *nsid <= self.id.nn).collect())
    }

    /// An admin command from outside the driver (bdev_nvme_send_cmd): `data`, up to one
    /// page, goes to the controller before (host to controller) or comes back after it
    /// (controller to host, `data_len` bytes). The queue's own fields (CID, PRPs) are
    /// the driver's. Returns the completion whatever its status, and the data read.
    pub fn passthrough_admin(
        &self,
        mut sqe: Sqe,
        data: Passthrough<'_>,
        timeout: Duration,
    ) -> Result<(Cqe, Vec<u8>), String> {
        if self.is_gone() {
            return Err(format!("{}: the device is gone", self.pci.bdf()));
        }
        if self.is_resetting() {
            return Err(format!("{}: a reset is under way; try again", self.pci.bdf()));
        }
        let mut admin = self.admin.lock();
        let bus = admin.data_bus;
        match data {
            Passthrough::None => {}
            Passthrough::ToController(bytes) => {
                admin.data.zero();
                admin.data.write_bytes(0, bytes);
                sqe.prp1 = bus;
            }
            Passthrough::FromController(_) => {
                admin.data.zero();
                sqe.prp1 = bus;
            }
        }
        let cqe = admin_completion_locked(&mut admin, sqe, self.pci.bdf(), timeout)?;
        let read = match data {
            Passthrough::FromController(len) => {
                let sgl = admin.data.sgl().map_err(|err| err.to_string())?;
                let view = sgl.cpu_view().map_err(|err| err.to_string())?;
                let mut data = view.to_vec();
                data.truncate(len);
                data
            }
            _ => Vec::new(),
        };
        Ok((cqe, read))
    }

    /// Normal shutdown (CC.SHN), waiting for CSTS.SHST to report it complete.
    pub fn shutdown(&self) {
        if self.is_gone() {
            return;
        }
        let bar = self.pci.bar0();
        let cc_value = bar.read32(reg::CC);
        if cc_value == u32::MAX {
            return;
        }
        bar.write32(reg::CC, (cc_value & !cc::SHN_MASK) | cc::SHN_NORMAL);
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            let status = bar.read32(reg::CSTS);
            if status == u32::MAX {
                return;
            }
            if status & csts::SHST_MASK == csts::SHST_COMPLETE {
                peerless_core::log_notice!("nvme {}: shut down", self.pci.bdf());
                return;
            }
            if Instant::now() > deadline {
                peerless_core::log_error!("nvme {}: shutdown did not complete in {SHUTDOWN_TIMEOUT:?}", self.pci.bdf());
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(cmb) = &self.cmb {
            super::pci::unshare_peer_window(cmb.cpu_window());
        }
        if let (Some(interrupts), false) = (&self.interrupts, self.is_gone()) {
            interrupts.disable(&self.pci);
        }
    }
}
