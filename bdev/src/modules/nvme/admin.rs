//! The admin queue (NVMe Base 2.0 §3.3.1): synchronous commands, one at a time under a
//! lock and polled to completion by their caller (at attach, at a reset, when a channel
//! creates or deletes its I/O queue pair, for an RPC), beside the Asynchronous Event
//! Requests kept outstanding on it (§5.2), whose completions are kept for the health
//! poller whoever polls the queue.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use peerless_core::mem::DmaBuf;

use super::async_event::{aer_command, event_config, CONFIG_NAMESPACE_NOTICES, MAX_OUTSTANDING};
use super::queue::QueuePair;
use super::spec::{admin, Cqe, IdentifyController, Sqe};

/// Admin queue entries: a handful of commands are ever in flight.
pub(super) const ADMIN_DEPTH: u16 = 32;
/// Longest an admin command may take. Emulated controllers under TCG are slow.
pub(super) const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct AdminQueue {
    pub(super) queue: QueuePair,
    /// One page for identify and log page data, and a passthrough command's data.
    pub(super) data: DmaBuf,
    pub(super) data_bus: u64,
    /// Asynchronous Event Requests outstanding, by command identifier (bit n: CID n).
    /// Synchronous admin commands take CID 0, so an AER's completion is told apart from
    /// theirs whoever polls the queue.
    pub(super) aers: u32,
    /// How many AERs to keep outstanding: AERL + 1, at most `MAX_OUTSTANDING`; 0 until
    /// they are armed.
    pub(super) aer_target: u16,
    /// AER completions reaped while waiting for a synchronous command, for the poller.
    pub(super) events: Vec<Cqe>,
}

impl AdminQueue {
    pub(super) fn new(queue: QueuePair, data: DmaBuf, data_bus: u64) -> AdminQueue {
        AdminQueue { queue, data, data_bus, aers: 0, aer_target: 0, events: Vec::new() }
    }

    /// Takes every completion there is: an AER's is kept in `events`, a synchronous
    /// command's (CID 0) handed to `on_sync`.
    pub(super) fn reap(&mut self, mut on_sync: impl FnMut(Cqe)) {
        let AdminQueue { queue, aers, events, .. } = self;
        queue.poll(usize::from(ADMIN_DEPTH), |cqe| {
            if (1..32).contains(&cqe.cid) && *aers >> cqe.cid & 1 == 1 {
                *aers &= !(1 << cqe.cid);
                events.push(cqe);
            } else {
                on_sync(cqe);
            }
        });
    }

    /// Posts AERs until `aer_target` are outstanding.
    pub(super) fn post_aers(&mut self) {
        let mut posted = false;
        while (self.aers.count_ones() as u16) < self.aer_target {
            let cid = (1..=MAX_OUTSTANDING).find(|cid| self.aers >> cid & 1 == 0).unwrap_or(1);
            self.aers |= 1 << cid;
            self.queue.push(&aer_command(cid));
            posted = true;
        }
        if posted {
            self.queue.ring();
        }
    }
}

/// Where a passthrough admin command's data goes.
#[derive(Clone, Copy, Debug)]
pub enum Passthrough<'a> {
    None,
    ToController(&'a [u8]),
    /// This many bytes come back.
    FromController(usize),
}

pub(super) fn admin_command(admin: &Mutex<AdminQueue>, sqe: Sqe, bdf: &str) -> Result<Cqe, String> {
    admin_command_locked(&mut admin.lock(), sqe, bdf, ADMIN_TIMEOUT)
}

pub(super) fn admin_command_locked(
    admin: &mut AdminQueue,
    sqe: Sqe,
    bdf: &str,
    timeout: Duration,
) -> Result<Cqe, String> {
    let cqe = admin_completion_locked(admin, sqe, bdf, timeout)?;
    if cqe.is_success() {
        Ok(cqe)
    } else {
        Err(format!("status type {:#x} code {:#x}", cqe.sct, cqe.sc))
    }
}

/// Submits one synchronous command (CID 0) and polls for its completion, keeping the
/// completions of AERs that come in meanwhile. Only these commands have a deadline:
/// an AER is outstanding until an event happens, which may be never (§5.2).
pub(super) fn admin_completion_locked(
    admin: &mut AdminQueue,
    mut sqe: Sqe,
    bdf: &str,
    timeout: Duration,
) -> Result<Cqe, String> {
    sqe.cid = 0;
    admin.queue.submit(&sqe);
    let deadline = Instant::now() + timeout;
    loop {
        let mut done = None;
        admin.reap(|cqe| done = Some(cqe));
        if let Some(cqe) = done {
            return Ok(cqe);
        }
        if admin.queue.controller_gone() {
            return Err(format!("{bdf}: the device is gone"));
        }
        // A failed controller completes nothing more (§3.1.3.6): only a reset helps.
        if admin.queue.controller_failed() {
            return Err(format!("{bdf}: controller fatal status (CSTS.CFS)"));
        }
        if Instant::now() > deadline {
            return Err(format!("{bdf}: admin command {:#04x} timed out after {timeout:?}", sqe.opcode));
        }
        std::hint::spin_loop();
    }
}

/// One Identify data structure (§5.17).
pub(super) fn identify(admin: &Mutex<AdminQueue>, cns: u32, nsid: u32, bdf: &str) -> Result<Vec<u8>, String> {
    let data_bus = admin.lock().data_bus;
    let mut sqe = Sqe::new(admin::IDENTIFY);
    sqe.nsid = nsid;
    sqe.prp1 = data_bus;
    sqe.cdw10 = cns;
    admin_command(admin, sqe, bdf).map_err(|err| format!("identify (CNS {cns}, namespace {nsid}): {err}"))?;
    let admin = admin.lock();
    let sgl = admin.data.sgl().map_err(|err| err.to_string())?;
    let view = sgl.cpu_view().map_err(|err| err.to_string())?;
    Ok(view.to_vec())
}

/// Asks for `wanted` I/O queue pairs (Set Features, Number of Queues, §5.27.1.5) and
/// returns how many the controller granted: the lesser of its submission and
/// completion queue counts.
pub(super) fn set_queue_count(admin: &Mutex<AdminQueue>, wanted: u16, bdf: &str) -> Result<u16, String> {
    set_queue_count_locked(&mut admin.lock(), wanted, bdf)
}

pub(super) fn set_queue_count_locked(admin: &mut AdminQueue, wanted: u16, bdf: &str) -> Result<u16, String> {
    let mut sqe = Sqe::new(admin::SET_FEATURES);
    sqe.cdw10 = admin::FEATURE_NUMBER_OF_QUEUES;
    let zero_based = u32::from(wanted - 1);
    sqe.cdw11 = zero_based << 16 | zero_based;
    let cqe =
        admin_command_locked(admin, sqe, bdf, ADMIN_TIMEOUT).map_err(|err| format!("set number of queues: {err}"))?;
    let granted = (cqe.result & 0xffff).min(cqe.result >> 16) + 1;
    Ok(granted.min(u32::from(wanted)) as u16)
}

/// Turns on the SMART / Health critical warnings and Namespace Attribute Notices when the
/// controller has them (Set Features 0Bh, §5.27.1.7; error events need no enabling) and
/// posts AERL + 1 AERs, at most `MAX_OUTSTANDING` (§5.2).
pub(super) fn arm_async_events(admin: &mut AdminQueue, id: &IdentifyController, bdf: &str) -> Result<(), String> {
    let notices = id.supports_namespace_notices();
    if !notices {
        peerless_core::log_notice!("nvme {bdf}: the controller does not report namespace changes (OAES bit 8 clear)");
    }
    let mut sqe = Sqe::new(admin::SET_FEATURES);
    sqe.cdw10 = admin::FEATURE_ASYNC_EVENT_CONFIG;
    sqe.cdw11 = event_config(notices);
    if let Err(err) = admin_command_locked(admin, sqe, bdf, ADMIN_TIMEOUT) {
        // A controller may refuse a warning it cannot raise; the notices matter most.
        peerless_core::log_warn!("nvme {bdf}: asynchronous event configuration {:#x}: {err}", sqe.cdw11);
        if notices {
            sqe.cdw11 = CONFIG_NAMESPACE_NOTICES;
            admin_command_locked(admin, sqe, bdf, ADMIN_TIMEOUT)
                .map_err(|err| format!("set asynchronous event configuration: {err}"))?;
        }
    }
    admin.aer_target = (u16::from(id.aerl) + 1).min(MAX_OUTSTANDING);
    admin.post_aers();
    Ok(())
}
