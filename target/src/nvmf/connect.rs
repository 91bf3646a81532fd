//! Fabrics Connect (NVMe-oF 1.1, 3.3): checks the command and its data, then creates a
//! controller (admin queue) or joins one (I/O queue). A refusal says which parameter
//! was wrong, in the IATTR/IPO form the spec defines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peerless_core::reactor::ThreadHandle;

use super::ana::ListenerAna;
use super::ctrlr::{Controller, QpairInfo};
use super::subsystem::{Subsystem, SubsystemKind, SubsystemState};
use super::target::NvmfTarget;
use super::transport::TransportOptions;
use crate::nvme::identify::ControllerType;
use crate::nvme::{get_str, le16, le32, status, Sqe, Status};

pub const CONNECT_DATA_BYTES: usize = 1024;
const DYNAMIC_CNTLID: u16 = 0xffff;
/// KAS granularity the target reports (100 ms units): KATO rounds up to it.
const KATO_GRANULARITY_MS: u32 = 100;
/// A discovery controller whose host asked for no keep-alive still goes after this long
/// (SPDK's NVMF_DISC_KATO_IN_MS): a host that vanished must not hold it forever.
pub const DISCOVERY_DEFAULT_KATO_MS: u32 = 120_000;

/// The Keep Alive Timeout a controller runs with for a host's request (Connect KATO or
/// Set Features Keep Alive Timer, NVMe Base 2.0, 5.27.1.12), or None for 0, which asks
/// for no keep-alive: keep-alive is what reclaims a vanished host's controller, so the
/// caller picks a timeout (Connect) or refuses (Set Features), as SPDK does.
pub fn keep_alive_timeout_ms(requested_ms: u32, min_kato_ms: u32) -> Option<u32> {
    match requested_ms {
        0 => None,
        // Rounding up near u32::MAX would wrap to a few milliseconds: cap at the largest multiple.
        kato => Some(
            kato.max(min_kato_ms)
                .checked_next_multiple_of(KATO_GRANULARITY_MS)
                .unwrap_or(u32::MAX / KATO_GRANULARITY_MS * KATO_GRANULARITY_MS),
        ),
    }
}

/// A refused Connect: its status and DW0 (IPO in bits 15:0, IATTR in bits 23:16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub dw0: u32,
}

fn invalid(in_data: bool, offset: u16) -> Refusal {
    Refusal { status: status::CONNECT_INVALID_PARAMETERS, dw0: u32::from(offset) | (u32::from(in_data) << 16) }
}

/// Where the connection came from and where it lives.
pub struct ConnInfo {
    pub conn_id: u64,
    pub thread: ThreadHandle,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The transport it came over ("TCP", "RDMA"): with `local`, the listener it reached.
    pub trtype: String,
    /// Who the connection's TLS handshake proved it to be; None for plain TCP.
    pub tls: Option<TlsPeer>,
}

/// The host and subsystem a TLS PSK identity named (NVMe/TCP 1.0, 3.6.1.3): the PSK
/// the handshake used is theirs, so Connect must name the same two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPeer {
    pub hostnqn: String,
    pub subnqn: String,
}

pub struct Connected {
    pub controller: Arc<Controller>,
    pub qid: u16,
    /// Queue entries the host may have outstanding (SQSIZE + 1).
    pub queue_entries: u16,
    /// The host has a DH-HMAC-CHAP key here: it must authenticate this queue.
    pub auth_required: bool,
}

pub fn connect(
    target: &NvmfTarget,
    options: &TransportOptions,
    info: &ConnInfo,
    sqe: &Sqe,
    data: &[u8],
) -> Result<Connected, Refusal> {
    let result = admit(target, options, info, sqe, data);
    if result.is_err() {
        let hostnqn = data.get(..CONNECT_DATA_BYTES).and_then(|data| get_str(data, 512, 256));
        target.0.connect_refusals.count(hostnqn.as_deref().unwrap_or(super::refusals::UNKNOWN_HOST));
    }
    result
}

fn admit(
    target: &NvmfTarget,
    options: &TransportOptions,
    info: &ConnInfo,
    sqe: &Sqe,
    data: &[u8],
) -> Result<Connected, Refusal> {
    if data.len() < CONNECT_DATA_BYTES {
        return Err(Refusal { status: status::DATA_SGL_LENGTH_INVALID, dw0: 0 });
    }
    let recfmt = le16(&sqe.0, 40);
    if recfmt != 0 {
        return Err(Refusal { status: status::CONNECT_INCOMPATIBLE_FORMAT, dw0: 0 });
    }
    let qid = le16(&sqe.0, 42);
    let queue_entries = u32::from(le16(&sqe.0, 44)) + 1;
    let hostid: [u8; 16] = data[..16].try_into().map_err(|_| invalid(true, 0))?;
    let cntlid = le16(data, 16);
    let subnqn = get_str(data, 256, 256).ok_or(invalid(true, 256))?;
    let hostnqn = get_str(data, 512, 256).ok_or(invalid(true, 512))?;

    let subsystem = target.find_subsystem(&subnqn).ok_or(invalid(true, 256))?;
    if !subsystem.listener_allowed(&info.trtype, info.local) {
        peerless_core::log_warn!("connect to '{subnqn}' on {}: not a listener of that subsystem", info.local);
        return Err(invalid(true, 256));
    }
    if !subsystem.host_allowed(&hostnqn) {
        peerless_core::log_warn!("connect to '{subnqn}' refused: host '{hostnqn}' is not allowed");
        return Err(Refusal { status: status::CONNECT_INVALID_HOST, dw0: 512 | (1 << 16) });
    }
    check_secure_channel(&subsystem, info, &subnqn, &hostnqn)?;
    let auth_required = subsystem.host_keys(&hostnqn).required();
    let connected = if qid == 0 {
        connect_admin(&subsystem, options, info, sqe, hostnqn, hostid, cntlid, queue_entries)
    } else {
        connect_io(&subsystem, options, info, qid, hostnqn, cntlid, queue_entries)
    };
    connected.map(|connected| Connected { auth_required, ..connected })
}

/// A secure listener admits only the host and subsystem its TLS handshake proved; a
/// host with a PSK connects only over TLS (its key says its traffic is to be encrypted).
fn check_secure_channel(subsystem: &Subsystem, info: &ConnInfo, subnqn: &str, hostnqn: &str) -> Result<(), Refusal> {
    let refused = Refusal { status: status::CONNECT_INVALID_HOST, dw0: 512 | (1 << 16) };
    match &info.tls {
        Some(peer) if peer.hostnqn != hostnqn || peer.subnqn != subnqn => {
            peerless_core::log_warn!(
                "connect to '{subnqn}' as '{hostnqn}' refused: the TLS PSK identity was for '{}' to '{}'",
                peer.hostnqn,
                peer.subnqn
            );
            Err(refused)
        }
        Some(_) => Ok(()),
        None if subsystem.listener_secure(&info.trtype, info.local) => {
            peerless_core::log_warn!("connect to '{subnqn}' on {} refused: that listener requires TLS", info.local);
            Err(refused)
        }
        None if subsystem.host_psk(hostnqn).is_some() => {
            peerless_core::log_warn!(
                "connect to '{subnqn}' on {} refused: host '{hostnqn}' has a PSK and must use a secure_channel listener",
                info.local
            );
            Err(refused)
        }
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn connect_admin(
    subsystem: &Arc<Subsystem>,
    options: &TransportOptions,
    info: &ConnInfo,
    sqe: &Sqe,
    hostnqn: String,
    hostid: [u8; 16],
    cntlid: u16,
    queue_entries: u32,
) -> Result<Connected, Refusal> {
    if !(2..=options.max_aq_depth).contains(&queue_entries) {
        return Err(invalid(false, 44));
    }
    if cntlid != DYNAMIC_CNTLID {
        return Err(invalid(true, 16));
    }
    let discovery = subsystem.kind == SubsystemKind::Discovery;
    // An I/O controller without keep-alive could never be reclaimed; Connect asking for
    // none gets the minimum (as SPDK does), where Set Features is refused.
    let fallback_ms = if discovery { DISCOVERY_DEFAULT_KATO_MS } else { options.min_kato };
    let kato_ms = keep_alive_timeout_ms(le32(&sqe.0, 48), options.min_kato).unwrap_or(fallback_ms);
    let kind = match subsystem.kind {
        SubsystemKind::Nvme => ControllerType::Io,
        SubsystemKind::Discovery => ControllerType::Discovery,
    };
    let mut state = subsystem.state.lock();
    let Some(cntlid) = Subsystem::allocate_cntlid(&mut state) else {
        return Err(Refusal { status: status::CONNECT_CONTROLLER_BUSY, dw0: 0 });
    };
    let controller = Arc::new(
        Controller::new(
            cntlid,
            subsystem.clone(),
            hostnqn,
            hostid,
            kind,
            Duration::from_millis(u64::from(kato_ms)),
            // As SPDK: the transport's limit until Set Features Number of Queues lowers it.
            options.max_io_qpairs_per_ctrlr,
        )
        .with_ana(listener_ana(&state, &info.trtype, info.local)),
    );
    controller.qpairs.lock().push(qpair_info(info, 0));
    state.controllers.insert(cntlid, controller.clone());
    Ok(Connected { controller, qid: 0, queue_entries: queue_entries as u16, auth_required: false })
}

fn connect_io(
    subsystem: &Arc<Subsystem>,
    options: &TransportOptions,
    info: &ConnInfo,
    qid: u16,
    hostnqn: String,
    cntlid: u16,
    queue_entries: u32,
) -> Result<Connected, Refusal> {
    if subsystem.kind == SubsystemKind::Discovery {
        return Err(invalid(false, 42));
    }
    if !(2..=u32::from(options.max_queue_depth)).contains(&queue_entries) {
        return Err(invalid(false, 44));
    }
    let controller = subsystem.state.lock().controllers.get(&cntlid).cloned().ok_or(invalid(true, 16))?;
    if controller.hostnqn != hostnqn {
        return Err(invalid(true, 512));
    }
    if !controller.is_enabled() || controller.is_failed() {
        return Err(Refusal { status: status::COMMAND_SEQUENCE_ERROR, dw0: 0 });
    }
    if qid > controller.io_queues() {
        return Err(invalid(false, 42));
    }
    // ANA states are per controller, and a controller's are its listener's: every queue
    // must come through that listener, as SPDK requires (NVMe Base 2.0, 8.1.1).
    if controller.ana.is_some() && controller.admin().is_some_and(|admin| admin.local != info.local) {
        peerless_core::log_warn!(
            "I/O queue {qid} of controller {cntlid} of '{}' came through {}, not its admin queue's listener",
            subsystem.nqn,
            info.local
        );
        return Err(invalid(true, 16));
    }
    let mut qpairs = controller.qpairs.lock();
    if qpairs.iter().any(|qpair| qpair.qid == qid) {
        return Err(invalid(false, 42));
    }
    qpairs.push(qpair_info(info, qid));
    drop(qpairs);
    Ok(Connected { controller, qid, queue_entries: queue_entries as u16, auth_required: false })
}

/// The ANA states of the listener of `trtype` at `local`, when the subsystem reports ANA.
fn listener_ana(state: &SubsystemState, trtype: &str, local: SocketAddr) -> Option<Arc<ListenerAna>> {
    if !state.ana_reporting {
        return None;
    }
    state.listeners.iter().find(|listener| listener.is(trtype, local)).map(|listener| listener.ana.clone())
}

fn qpair_info(info: &ConnInfo, qid: u16) -> QpairInfo {
    QpairInfo { qid, thread: info.thread.clone(), conn_id: info.conn_id, peer: info.peer, local: info.local }
}

/// Undoes a connect when its queue goes: an admin queue takes its controller with it.
pub fn disconnect(controller: &Arc<Controller>, qid: u16, conn_id: u64) {
    controller.qpairs.lock().retain(|qpair| qpair.conn_id != conn_id);
    if qid == 0 {
        controller.fail();
        controller.subsystem.state.lock().controllers.remove(&controller.cntlid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_timeouts() {
        assert_eq!(keep_alive_timeout_ms(0, 10_000), None);
        assert_eq!(keep_alive_timeout_ms(1, 10_000), Some(10_000), "at least the minimum");
        assert_eq!(keep_alive_timeout_ms(15_001, 10_000), Some(15_100), "rounded up to KAS");
        assert_eq!(keep_alive_timeout_ms(u32::MAX, 10_000), Some(u32::MAX / 100 * 100), "no wrap");
    }
}
