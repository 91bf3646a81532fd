//! Controllers (dynamic model, NVMe-oF 1.1 3.1): the part every queue of a controller may
//! read, shared across poll groups, and the admin state only the admin queue's thread
//! touches: properties, features, asynchronous events, keep-alive.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use peerless_bdev::IoType;
use peerless_core::reactor::ThreadHandle;

use super::ana::{AnaCounts, ListenerAna};
use super::subsystem::Subsystem;
use crate::nvme::identify::ControllerType;
use crate::nvme::Status;

/// Controller properties (NVMe Base 2.0, 3.1.3; NVMe-oF 1.1 3.4).
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
}

/// NVMe 1.3, the version SPDK's target reports and Linux's host expects of fabrics.
pub const VERSION: u32 = 0x0001_0300;
/// CAP.TO: 7.5 s in 500 ms units, SPDK's value, for a host waiting on CSTS.RDY.
const CAP_TIMEOUT_UNITS: u64 = 15;
/// Outstanding AERs a controller holds (AERL + 1, SPDK_NVMF_MAX_ASYNC_EVENTS).
pub const MAX_ASYNC_EVENTS: usize = 4;
/// Events queued for a host that has no AER outstanding; older ones are dropped first.
const MAX_PENDING_EVENTS: usize = 16;

/// One qpair of a controller, for RPC reports and teardown.
#[derive(Clone, Debug)]
pub struct QpairInfo {
    pub qid: u16,
    pub thread: ThreadHandle,
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// What every queue of a controller may see.
pub struct Controller {
    pub cntlid: u16,
    pub subsystem: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub kind: ControllerType,
    pub kato: Duration,
    /// CC.EN with CSTS.RDY: I/O queues may connect and run.
    enabled: AtomicBool,
    /// Torn down (keep-alive expiry, admin queue gone, subsystem deleted): every queue ends.
    failed: AtomicBool,
    /// I/O queues granted by Set Features Number of Queues (a count, not 0's based).
    io_queues: AtomicU16,
    pub qpairs: Mutex<Vec<QpairInfo>>,
    /// Each I/O queue's share of the SMART / Health counters; summed when read.
    counters: Mutex<Vec<Arc<IoCounters>>>,
    /// The ANA states of the listener the admin queue connected through, when the
    /// subsystem reports ANA (NVMe Base 2.0, 8.1: states are per controller).
    pub ana: Option<Arc<ListenerAna>>,
    /// The listener's ANA change counts at connect or the last reset (see `AnaCounts`).
    ana_counts_base: Mutex<AnaCounts>,
}

/// One I/O queue's counters for the SMART / Health log (NVMe Base 2.0, Figure 207).
/// A queue's poll group is the only writer, with plain load + store: no read-modify-write
/// on a line another core writes. Readers (Get Log Page) sum every queue's.
#[derive(Debug, Default)]
pub struct IoCounters {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    read_commands: AtomicU64,
    write_commands: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

impl IoCounters {
    /// Counts a finished command; only successful reads and writes count (Figure 207).
    pub fn count(&self, io_type: IoType, bytes: usize, success: bool) {
        if !success {
            return;
        }
        match io_type {
            IoType::Read => {
                bump(&self.bytes_read, bytes as u64);
                bump(&self.read_commands, 1);
            }
            IoType::Write => {
                bump(&self.bytes_written, bytes as u64);
                bump(&self.write_commands, 1);
            }
            _ => {}
        }
    }
}

/// The SMART / Health counters of a controller, summed over its queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmartCounters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub read_commands: u64,
    pub write_commands: u64,
}

impl SmartCounters {
    /// Data units of 1000 512-byte blocks, rounded up (NVMe Base 2.0, Figure 207).
    pub fn data_units(bytes: u64) -> u64 {
        (bytes.div_ceil(512)).div_ceil(1000)
    }
}

impl Controller {
    pub fn new(
        cntlid: u16,
        subsystem: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        kind: ControllerType,
        kato: Duration,
        default_io_queues: u16,
    ) -> Controller {
        Controller {
            cntlid,
            subsystem,
            hostnqn,
            hostid,
            kind,
            kato,
            enabled: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            io_queues: AtomicU16::new(default_io_queues),
            qpairs: Mutex::new(Vec::new()),
            counters: Mutex::new(Vec::new()),
            ana: None,
            ana_counts_base: Mutex::new(AnaCounts::default()),
        }
    }

    /// The controller of a subsystem with ANA reporting, seeing `ana`'s states.
    pub fn with_ana(self, ana: Option<Arc<ListenerAna>>) -> Controller {
        let base = ana.as_ref().map(|ana| ana.counts()).unwrap_or_default();
        Controller { ana, ana_counts_base: Mutex::new(base), ..self }
    }

    pub fn ana_counts_base(&self) -> AnaCounts {
        self.ana_counts_base.lock().clone()
    }

    /// A Controller Level Reset: the ANA log page's change counts start again at 0.
    fn restart_ana_counts(&self) {
        if let Some(ana) = &self.ana {
            *self.ana_counts_base.lock() = ana.counts();
        }
    }

    /// The path status a command to a namespace of group `anagrpid` gets through this
    /// controller, when its ANA state does not let it run.
    pub fn ana_refusal(&self, anagrpid: u32) -> Option<Status> {
        self.ana.as_ref().and_then(|ana| ana.state(anagrpid).refusal())
    }

    /// A new I/O queue's counters, kept for as long as the controller lives.
    pub fn io_counters(&self) -> Arc<IoCounters> {
        let counters = Arc::new(IoCounters::default());
        self.counters.lock().push(counters.clone());
        counters
    }

    pub fn smart(&self) -> SmartCounters {
        let mut sum = SmartCounters::default();
        for queue in self.counters.lock().iter() {
            sum.bytes_read += queue.bytes_read.load(Ordering::Relaxed);
            sum.bytes_written += queue.bytes_written.load(Ordering::Relaxed);
            sum.read_commands += queue.read_commands.load(Ordering::Relaxed);
            sum.write_commands += queue.write_commands.load(Ordering::Relaxed);
        }
        sum
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub fn io_queues(&self) -> u16 {
        self.io_queues.load(Ordering::Acquire)
    }

    /// The admin queue's thread and connection, where events for this controller go.
    pub fn admin(&self) -> Option<QpairInfo> {
        self.qpairs.lock().iter().find(|qpair| qpair.qid == 0).cloned()
    }
}

/// Asynchronous event completion DW0 (NVMe Base 2.0, Figure 150).
pub fn event(event_type: u8, info: u8, log_page: u8) -> u32 {
    u32::from(event_type) | (u32::from(info) << 8) | (u32::from(log_page) << 16)
}

pub const EVENT_TYPE_NOTICE: u8 = 2;
pub const NOTICE_NAMESPACE_CHANGED: u8 = 0x00;
pub const NOTICE_ANA_CHANGE: u8 = 0x03;
pub const NOTICE_DISCOVERY_CHANGED: u8 = 0xf0;
/// Async Event Configuration bits that enable notices (Figure 317).
pub const AEC_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
pub const AEC_ANA_CHANGE: u32 = 1 << 11;
pub const AEC_DISCOVERY_LOG_CHANGE: u32 = 1 << 31;

/// The admin queue's view of its controller.
pub struct AdminState {
    pub controller: Arc<Controller>,
    pub cc: u32,
    pub csts: u32,
    pub max_queue_entries: u16,
    pub async_event_config: u32,
    pub arbitration: u32,
    pub power_management: u32,
    pub temperature_threshold: u32,
    pub volatile_write_cache: bool,
    pub pending_aers: Vec<u16>,
    pending_events: VecDeque<u32>,
    pub changed_namespaces: Vec<u32>,
    /// An ANA change notice was sent and the host has not yet read the ANA log page
    /// without Retain Asynchronous Event: further changes send no notice (5.2.2).
    pub ana_notice_masked: bool,
    /// When the host last showed it is alive, on the thread's nanosecond clock.
    pub last_keep_alive_ns: u64,
    /// Keep Alive Timeout; starts as the Connect's, Set Features may change it.
    pub kato: Duration,
    pub max_io_queues: u16,
    /// CC.EN went from 1 to 0: the engine deletes the I/O queues.
    reset_requested: bool,
}

/// Default temperature threshold: 0x157 K (70 C), as SPDK and most drives report.
const DEFAULT_TEMPERATURE_THRESHOLD: u32 = 0x157;

impl AdminState {
    pub fn new(controller: Arc<Controller>, max_queue_entries: u16, max_io_queues: u16, now_ns: u64) -> AdminState {
        AdminState {
            kato: controller.kato,
            controller,
            cc: 0,
            csts: 0,
            max_queue_entries,
            async_event_config: 0,
            arbitration: 0,
            power_management: 0,
            temperature_threshold: DEFAULT_TEMPERATURE_THRESHOLD,
            volatile_write_cache: false,
            pending_aers: Vec::new(),
            pending_events: VecDeque::new(),
            changed_namespaces: Vec::new(),
            ana_notice_masked: false,
            last_keep_alive_ns: now_ns,
            max_io_queues,
            reset_requested: false,
        }
    }

    /// CAP (NVMe Base 2.0, Figure 36): MQES, CQR, TO, NVM command set, 4 KiB pages.
    pub fn cap(&self) -> u64 {
        u64::from(self.max_queue_entries - 1) | (1 << 16) | (CAP_TIMEOUT_UNITS << 24) | (1 << 37)
    }

    pub fn property_get(&self, offset: u32, size_8: bool) -> Option<u64> {
        let value = match offset {
            prop::CAP => self.cap(),
            prop::VS => u64::from(VERSION),
            prop::CC => u64::from(self.cc),
            prop::CSTS => u64::from(self.csts),
            _ => return None,
        };
        // CAP is the one 8-byte property; others are read as 4 bytes.
        (size_8 == (offset == prop::CAP) || !size_8).then_some(value)
    }

    /// Applies a Property Set; returns false for a property that cannot be written.
    pub fn property_set(&mut self, offset: u32, value: u64) -> bool {
        if offset != prop::CC {
            return false;
        }
        let new = value as u32;
        let was_enabled = self.cc & 1 != 0;
        let enable = new & 1 != 0;
        let shutdown = (new >> 14) & 0x3;
        self.cc = new;
        if enable && !was_enabled {
            // IOSQES 6 (64 bytes) and IOCQES 4 (16 bytes) are the only sizes we serve.
            let iosqes = (new >> 16) & 0xf;
            let iocqes = (new >> 20) & 0xf;
            if self.controller.kind == ControllerType::Io && (iosqes != 6 || iocqes != 4) {
                self.csts |= 1 << 1; // CFS: the host asked for something impossible
                return true;
            }
            self.csts |= 1;
            self.controller.enabled.store(true, Ordering::Release);
        } else if !enable && was_enabled {
            // A reset: I/O queues end and the controller must be enabled again.
            self.csts &= !1;
            self.controller.enabled.store(false, Ordering::Release);
            self.controller.restart_ana_counts();
            self.reset_requested = true;
        }
        if shutdown != 0 {
            self.csts = (self.csts & !(0x3 << 2)) | (0x2 << 2); // SHST: shutdown complete
            self.controller.enabled.store(false, Ordering::Release);
        }
        true
    }

    /// Grants I/O queues for Set Features Number of Queues; returns DW0 (0's based).
    pub fn grant_queues(&mut self, requested_sq: u16, requested_cq: u16) -> u32 {
        let granted = requested_sq.min(requested_cq).saturating_add(1).min(self.max_io_queues);
        self.controller.io_queues.store(granted, Ordering::Release);
        let value = u32::from(granted - 1);
        value | (value << 16)
    }

    /// Queues an event; it completes a held AER at once if one is waiting.
    pub fn post_event(&mut self, dw0: u32) {
        if self.pending_events.len() == MAX_PENDING_EVENTS {
            self.pending_events.pop_front();
        }
        self.pending_events.push_back(dw0);
    }

    /// Pairs a held AER with a pending event: (AER cid, event DW0).
    pub fn next_event_completion(&mut self) -> Option<(u16, u32)> {
        if self.pending_aers.is_empty() || self.pending_events.is_empty() {
            return None;
        }
        let cid = self.pending_aers.remove(0);
        let dw0 = self.pending_events.pop_front()?;
        Some((cid, dw0))
    }

    /// Whether a reset was asked for since the last call.
    pub fn take_reset(&mut self) -> bool {
        std::mem::take(&mut self.reset_requested)
    }

    pub fn keep_alive_expired(&self, now_ns: u64) -> bool {
        !self.kato.is_zero() && now_ns.saturating_sub(self.last_keep_alive_ns) > self.kato.as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::subsystem::SubsystemKind;

    fn admin() -> AdminState {
        let subsystem = Arc::new(Subsystem::new(1, "nqn.2016-06.io.spdk:cnode1", SubsystemKind::Nvme));
        let controller =
            Arc::new(Controller::new(1, subsystem, "host".into(), [0; 16], ControllerType::Io, Duration::ZERO, 0));
        AdminState::new(controller, 128, 4, 0)
    }

    #[test]
    fn enable_reset_and_shutdown() {
        let mut admin = admin();
        assert_eq!(admin.cap() & 0xffff, 127);
        assert_eq!(admin.property_get(prop::VS, false), Some(u64::from(VERSION)));
        assert_eq!(admin.property_get(prop::CAP, false), Some(admin.cap()));
        assert_eq!(admin.property_get(prop::CC, true), None, "CC is a 4-byte property");
        assert!(admin.property_set(prop::CC, 1 | (6 << 16) | (4 << 20)));
        assert_eq!(admin.csts & 1, 1);
        assert!(admin.controller.is_enabled());
        assert!(!admin.take_reset());
        assert!(admin.property_set(prop::CC, 0));
        assert!(!admin.controller.is_enabled());
        assert!(admin.take_reset(), "CC.EN 1 -> 0 deletes the I/O queues");
        assert!(!admin.take_reset(), "once");
        assert!(admin.property_set(prop::CC, 1 | (6 << 16) | (4 << 20) | (1 << 14)));
        assert_eq!((admin.csts >> 2) & 3, 2, "shutdown complete");
        assert!(!admin.property_set(prop::CAP, 5), "CAP is read-only");
        let mut bad = self::admin();
        assert!(bad.property_set(prop::CC, 1));
        assert_eq!(bad.csts, 1 << 1, "unsupported entry sizes make the controller fatal");
    }

    #[test]
    fn queues_and_events() {
        let mut admin = admin();
        assert_eq!(admin.grant_queues(7, 7), 3 | (3 << 16), "granted down to the limit of 4");
        assert_eq!(admin.controller.io_queues(), 4);
        admin.post_event(event(EVENT_TYPE_NOTICE, NOTICE_NAMESPACE_CHANGED, 4));
        assert_eq!(admin.next_event_completion(), None, "no AER outstanding yet");
        admin.pending_aers.push(9);
        assert_eq!(admin.next_event_completion(), Some((9, 0x0004_0002)));
    }
}

#[cfg(test)]
mod counter_tests {
    use super::*;
    use crate::nvmf::subsystem::SubsystemKind;

    #[test]
    fn smart_counters_sum_queues_and_count_only_successful_io() {
        let subsystem = Arc::new(Subsystem::new(1, "nqn.2016-06.io.spdk:cnode1", SubsystemKind::Nvme));
        let controller = Controller::new(1, subsystem, "host".into(), [0; 16], ControllerType::Io, Duration::ZERO, 1);
        let (a, b) = (controller.io_counters(), controller.io_counters());
        a.count(IoType::Read, 4096, true);
        b.count(IoType::Read, 512, true);
        b.count(IoType::Write, 1_000_000, true);
        b.count(IoType::Write, 4096, false);
        a.count(IoType::Flush, 0, true);
        let smart = controller.smart();
        assert_eq!(
            smart,
            SmartCounters { bytes_read: 4608, bytes_written: 1_000_000, read_commands: 2, write_commands: 1 }
        );
        assert_eq!(SmartCounters::data_units(0), 0);
        assert_eq!(SmartCounters::data_units(512), 1, "rounded up");
        assert_eq!(SmartCounters::data_units(512_000), 1);
        assert_eq!(SmartCounters::data_units(512_001), 2);
    }
}
