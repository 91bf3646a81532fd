//! Controllers (dynamic model, NVMe-oF 1.1 3.1): the part every queue of a controller may
//! read, shared across poll groups, and the admin state only the admin queue's thread
//! touches: properties, features, asynchronous events, keep-alive.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use peerless_core::reactor::ThreadHandle;

use super::subsystem::Subsystem;
use crate::nvme::identify::ControllerType;

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
        }
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
pub const NOTICE_DISCOVERY_CHANGED: u8 = 0xf0;
/// Async Event Configuration bits that enable notices (Figure 317).
pub const AEC_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
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
    pub last_keep_alive: Instant,
    /// Keep Alive Timeout; starts as the Connect's, Set Features may change it.
    pub kato: Duration,
    pub max_io_queues: u16,
}

/// Default temperature threshold: 0x157 K (70 C), as SPDK and most drives report.
const DEFAULT_TEMPERATURE_THRESHOLD: u32 = 0x157;

impl AdminState {
    pub fn new(controller: Arc<Controller>, max_queue_entries: u16, max_io_queues: u16) -> AdminState {
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
            last_keep_alive: Instant::now(),
            max_io_queues,
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

    pub fn keep_alive_expired(&self, now: Instant) -> bool {
        !self.kato.is_zero() && now.duration_since(self.last_keep_alive) > self.kato
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
        AdminState::new(controller, 128, 4)
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
        assert!(admin.property_set(prop::CC, 0));
        assert!(!admin.controller.is_enabled());
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
