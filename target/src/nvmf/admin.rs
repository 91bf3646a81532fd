//! Admin and fabrics commands of the admin queue (NVMe Base 2.0, 5; NVMe-oF 1.1, 3.5),
//! executed on the admin queue's thread against its `AdminState`.

use std::sync::Arc;
use std::time::Duration;

use super::ana::{self, AnaState, ANA_TRANSITION_TIME_S};
use super::connect::keep_alive_timeout_ms;
use super::ctrlr::{AdminState, Controller, SmartCounters, MAX_ASYNC_EVENTS};
use super::io_cmd::{CommandLimits, SglBinding};
use super::namespace::Namespace;
use super::subsystem::{Subsystem, SubsystemKind};
use super::target::NvmfTarget;
use super::transport::TransportOptions;
use crate::nvme::identify::{self, cns, csi, ControllerData, ControllerType, NamespaceData, NvmControllerData};
use crate::nvme::log::{self as logpage, lid, DiscoveryEntry};
use crate::nvme::{admin as opc, fctype, le32, le64, status, Sqe, Status};

/// What an admin command produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done {
        status: Status,
        result: u64,
        data: Option<Vec<u8>>,
    },
    /// An AER: it completes when an event arrives.
    Held,
}

fn done(status: Status) -> Outcome {
    Outcome::Done { status, result: 0, data: None }
}

fn with_result(result: u64) -> Outcome {
    Outcome::Done { status: Status::SUCCESS, result, data: None }
}

fn with_data(data: Vec<u8>) -> Outcome {
    Outcome::Done { status: Status::SUCCESS, result: 0, data: Some(data) }
}

/// Feature identifiers (NVMe Base 2.0, Figure 317).
mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// The firmware revision the target reports (8 ASCII bytes).
pub fn firmware_revision() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn execute(
    admin: &mut AdminState,
    target: &NvmfTarget,
    options: &TransportOptions,
    sgl: SglBinding,
    sqe: &Sqe,
    now_ns: u64,
) -> Outcome {
    // Any admin command shows the host is alive (SPDK restarts the timer the same way).
    admin.last_keep_alive_ns = now_ns;
    let discovery = admin.controller.kind == ControllerType::Discovery;
    match sqe.opcode() {
        opc::FABRICS => fabrics(admin, sqe),
        opc::IDENTIFY => identify(admin, options, sgl, sqe),
        opc::GET_LOG_PAGE => get_log_page(admin, target, options, sqe),
        opc::SET_FEATURES => set_features(admin, options, sqe, discovery),
        opc::GET_FEATURES => get_features(admin, sqe, discovery),
        opc::KEEP_ALIVE => done(Status::SUCCESS),
        opc::ASYNC_EVENT_REQUEST => {
            if admin.pending_aers.len() >= MAX_ASYNC_EVENTS {
                return done(status::ASYNC_EVENT_LIMIT_EXCEEDED);
            }
            admin.pending_aers.push(sqe.cid());
            Outcome::Held
        }
        // Abort needs the queues, so the engine runs it; discovery controllers have none.
        _ => done(Status::INVALID_OPCODE),
    }
}

fn fabrics(admin: &mut AdminState, sqe: &Sqe) -> Outcome {
    let size_8 = sqe.0[40] & 0x7 == 1;
    let offset = le32(&sqe.0, 44);
    match sqe.fctype() {
        fctype::PROPERTY_GET => match admin.property_get(offset, size_8) {
            Some(value) => with_result(value),
            None => done(Status::INVALID_FIELD),
        },
        fctype::PROPERTY_SET => {
            if admin.property_set(offset, le64(&sqe.0, 48)) {
                done(Status::SUCCESS)
            } else {
                done(Status::INVALID_FIELD)
            }
        }
        // A second Connect on a connected queue is out of sequence.
        fctype::CONNECT => done(status::COMMAND_SEQUENCE_ERROR),
        _ => done(Status::INVALID_OPCODE),
    }
}

fn identify(admin: &AdminState, options: &TransportOptions, sgl: SglBinding, sqe: &Sqe) -> Outcome {
    let cns = (sqe.cdw(10) & 0xff) as u8;
    let subsystem = &admin.controller.subsystem;
    let state = subsystem.state.lock();
    let nsid = sqe.nsid();
    let discovery = admin.controller.kind == ControllerType::Discovery;
    match cns {
        cns::CONTROLLER => with_data(identify::controller(&ControllerData {
            serial: &state.serial,
            model: if discovery { "Peerless discovery controller" } else { &state.model },
            firmware: firmware_revision(),
            cntlid: admin.controller.cntlid,
            version: super::ctrlr::VERSION,
            subnqn: &subsystem.nqn,
            controller_type: admin.controller.kind,
            mdts: options.mdts(),
            max_namespaces: state.max_namespaces,
            kas: options.kas,
            aerl: (MAX_ASYNC_EVENTS - 1) as u8,
            volatile_write_cache: false,
            in_capsule_data_bytes: options.in_capsule_data_size,
            max_commands: admin.max_queue_entries,
            oncs: oncs(&state.limits),
            ana_groups: Subsystem::ana_groups(&state),
            ana_transition_time_s: ANA_TRANSITION_TIME_S,
            keyed_sgl: sgl == SglBinding::Rdma,
        })),
        _ if discovery => done(Status::INVALID_FIELD),
        // Linux asks for this of every controller reporting NVMe 1.2 or later (its
        // `nvme_init_non_mdts_limits`) and sizes discards and write-zeroes from it.
        cns::IOCS_CONTROLLER => match identify_csi(sqe) {
            csi::NVM => with_data(identify::nvm_controller(&NvmControllerData {
                wzsl: state.limits.wzsl,
                dmrl: state.limits.dmrl(),
                dmrsl: state.limits.dmrsl,
                dmsl: state.limits.dmsl(),
            })),
            _ => done(Status::INVALID_FIELD),
        },
        // The NVM set's namespace fields (Figure 100) describe protection information
        // and extended LBA formats; namespaces here have neither, so they are all zero.
        cns::IOCS_NAMESPACE => match identify_csi(sqe) {
            csi::NVM if nsid == 0 || (nsid > state.max_namespaces && nsid != u32::MAX) => {
                done(Status::INVALID_NAMESPACE)
            }
            csi::NVM => with_data(vec![0u8; identify::IDENTIFY_BYTES]),
            _ => done(Status::INVALID_FIELD),
        },
        cns::NAMESPACE => {
            if nsid == 0 || (nsid > state.max_namespaces && nsid != u32::MAX) {
                return done(Status::INVALID_NAMESPACE);
            }
            // An allocated but inactive namespace identifies as all zeroes.
            match state.namespaces.get(&nsid) {
                Some(ns) => with_data(namespace_data(ns, &admin.controller)),
                None => with_data(vec![0u8; identify::IDENTIFY_BYTES]),
            }
        }
        cns::ACTIVE_NAMESPACES => {
            if nsid >= 0xffff_fffe {
                return done(Status::INVALID_NAMESPACE);
            }
            let nsids: Vec<u32> = state.namespaces.keys().copied().collect();
            with_data(identify::active_namespaces(&nsids, nsid))
        }
        cns::NAMESPACE_DESCRIPTORS => match state.namespaces.get(&nsid) {
            Some(ns) => with_data(identify::namespace_descriptors(&ns.nguid, &ns.eui64, &ns.uuid)),
            None => done(Status::INVALID_NAMESPACE),
        },
        _ => done(Status::INVALID_FIELD),
    }
}

/// The Command Set Identifier of an Identify command (CDW11 bits 31:24).
fn identify_csi(sqe: &Sqe) -> u8 {
    (sqe.cdw(11) >> 24) as u8
}

/// ONCS for a subsystem's limits. A Write Zeroes Size Limit is made binding by clearing
/// ONCS bit 3 (NVM Command Set 1.0, 3.2.8 and Figure 102): hosts that read CNS 06h
/// (Linux does) keep Write Zeroes within WZSL, those that do not see no Write Zeroes and
/// write zeroes as data. A Dataset Management limit keeps bit 2: ranges are processed up
/// to it (see `io_cmd::dsm_ranges`), so hosts that never read CNS 06h still deallocate.
pub fn oncs(limits: &CommandLimits) -> u16 {
    if limits.wzsl == 0 {
        identify::ONCS
    } else {
        identify::ONCS & !identify::ONCS_WRITE_ZEROES
    }
}

/// Identify Namespace as `controller` sees it: with ANA, the namespace's group, and
/// through a path that cannot reach it, no capacity in use.
pub fn namespace_data(ns: &Arc<Namespace>, controller: &Controller) -> Vec<u8> {
    let info = ns.desc.bdev().info();
    let reached = controller.ana.as_ref().map(|ana| ana.state(ns.anagrpid));
    identify::namespace(&NamespaceData {
        num_blocks: ns.desc.num_blocks(),
        block_size: info.block_size,
        nguid: ns.nguid,
        eui64: ns.eui64,
        shared: true,
        anagrpid: if reached.is_some() { ns.anagrpid } else { 0 },
        accessible: !matches!(reached, Some(AnaState::Inaccessible | AnaState::PersistentLoss)),
    })
}

fn get_log_page(admin: &mut AdminState, target: &NvmfTarget, options: &TransportOptions, sqe: &Sqe) -> Outcome {
    let cdw10 = sqe.cdw(10);
    let log_id = (cdw10 & 0xff) as u8;
    let retain_event = cdw10 & (1 << 15) != 0;
    let dwords = ((u64::from(sqe.cdw(11) & 0xffff) << 16) | u64::from(cdw10 >> 16)) + 1;
    let offset = u64::from(sqe.cdw(12)) | (u64::from(sqe.cdw(13)) << 32);
    if offset % 4 != 0 {
        return done(Status::INVALID_FIELD);
    }
    // NUMD is the host's word: up to 16 GiB. Refuse what the SGL cannot hold or MDTS
    // does not allow before allocating (SPDK: "len > buf size" is an invalid field).
    let length = dwords * 4;
    if length > u64::from(sqe.sgl_length()) || length > u64::from(options.max_io_size) {
        return done(Status::INVALID_FIELD);
    }
    let discovery = admin.controller.kind == ControllerType::Discovery;
    let page = match log_id {
        lid::DISCOVERY if discovery => discovery_log(target, &admin.controller.hostnqn),
        lid::ERROR_INFORMATION if !discovery => {
            vec![0u8; logpage::ERROR_ENTRY_BYTES * usize::from(identify::ERROR_LOG_ENTRIES)]
        }
        lid::SMART_HEALTH if !discovery => {
            let counters = admin.controller.smart();
            logpage::smart(
                SmartCounters::data_units(counters.bytes_read),
                SmartCounters::data_units(counters.bytes_written),
                counters.read_commands,
                counters.write_commands,
            )
        }
        lid::FIRMWARE_SLOT if !discovery => logpage::firmware_slot(firmware_revision()),
        // With ANA reporting only (SPDK answers the same); Return Groups Only is LSP bit 0
        // (CDW10 bit 8). Reading it without RAE lets the next change send a notice.
        lid::ANA if !discovery && admin.controller.ana.is_some() => {
            let page = ana::log_page(&admin.controller, cdw10 & (1 << 8) != 0);
            if !retain_event {
                admin.ana_notice_masked = false;
            }
            page
        }
        lid::CHANGED_NAMESPACES if !discovery => {
            let page = logpage::changed_namespaces(&admin.changed_namespaces);
            if !retain_event {
                admin.changed_namespaces.clear();
            }
            page
        }
        _ => return done(status::INVALID_LOG_PAGE),
    };
    // The host asks for a window of the page. An offset past its end is an invalid field
    // (NVMe Base 2.0, 5.16); a window that runs past the end reads as zeroes there.
    if offset >= page.len() as u64 {
        return done(Status::INVALID_FIELD);
    }
    let length = length as usize;
    let mut data = vec![0u8; length];
    let tail = &page[offset as usize..];
    let take = tail.len().min(length);
    data[..take].copy_from_slice(&tail[..take]);
    with_data(data)
}

/// Entries for every subsystem `hostnqn` may reach, one per listener, and this
/// discovery subsystem's own listeners.
pub fn discovery_log(target: &NvmfTarget, hostnqn: &str) -> Vec<u8> {
    let mut owned: Vec<(u8, String, std::net::SocketAddr, bool, &'static str)> = Vec::new();
    for subsystem in target.subsystems() {
        let state = subsystem.state.lock();
        let subtype = match subsystem.kind {
            SubsystemKind::Discovery => 3,
            SubsystemKind::Nvme if state.allow_any_host || state.hosts.iter().any(|host| host == hostnqn) => 2,
            SubsystemKind::Nvme => continue,
        };
        for listener in &state.listeners {
            owned.push((subtype, subsystem.nqn.clone(), listener.addr, listener.secure, listener.trtype));
        }
    }
    let addresses: Vec<(String, String)> =
        owned.iter().map(|(_, _, addr, _, _)| (addr.ip().to_string(), addr.port().to_string())).collect();
    let entries: Vec<DiscoveryEntry<'_>> = owned
        .iter()
        .zip(&addresses)
        .enumerate()
        .map(|(index, ((subtype, nqn, addr, secure, trtype), (traddr, trsvcid)))| DiscoveryEntry {
            subtype: *subtype,
            portid: index as u16,
            ipv6: addr.is_ipv6(),
            trsvcid,
            traddr,
            subnqn: nqn,
            secure_channel_required: *secure,
            trtype,
        })
        .collect();
    logpage::discovery(target.discovery_generation(), &entries)
}

fn set_features(admin: &mut AdminState, options: &TransportOptions, sqe: &Sqe, discovery: bool) -> Outcome {
    let cdw10 = sqe.cdw(10);
    if cdw10 & (1 << 31) != 0 {
        return done(status::FEATURE_NOT_SAVEABLE);
    }
    let value = sqe.cdw(11);
    match (cdw10 & 0xff) as u8 {
        fid::KEEP_ALIVE_TIMER => match keep_alive_timeout_ms(value, options.min_kato) {
            Some(kato_ms) => {
                admin.kato = Duration::from_millis(u64::from(kato_ms));
                done(Status::SUCCESS)
            }
            // Keep-alive is what reclaims a vanished host's controller: it cannot be off.
            None => done(status::KEEP_ALIVE_TIMEOUT_INVALID),
        },
        fid::ASYNC_EVENT_CONFIG => {
            admin.async_event_config = value;
            done(Status::SUCCESS)
        }
        _ if discovery => done(Status::INVALID_FIELD),
        fid::NUMBER_OF_QUEUES => {
            let (sq, cq) = ((value & 0xffff) as u16, (value >> 16) as u16);
            if sq == 0xffff || cq == 0xffff {
                return done(Status::INVALID_FIELD);
            }
            with_result(u64::from(admin.grant_queues(sq, cq)))
        }
        fid::ARBITRATION => {
            admin.arbitration = value;
            done(Status::SUCCESS)
        }
        fid::POWER_MANAGEMENT => {
            // Power state 0 is the only one described.
            if value & 0x1f != 0 {
                return done(Status::INVALID_FIELD);
            }
            admin.power_management = value;
            done(Status::SUCCESS)
        }
        fid::TEMPERATURE_THRESHOLD => {
            admin.temperature_threshold = value & 0xffff;
            done(Status::SUCCESS)
        }
        // No volatile write cache is reported, so there is none to switch.
        fid::VOLATILE_WRITE_CACHE | fid::ERROR_RECOVERY => done(Status::INVALID_FIELD),
        _ => done(Status::INVALID_FIELD),
    }
}

fn get_features(admin: &AdminState, sqe: &Sqe, discovery: bool) -> Outcome {
    let value = match (sqe.cdw(10) & 0xff) as u8 {
        fid::KEEP_ALIVE_TIMER => admin.kato.as_millis() as u32,
        fid::ASYNC_EVENT_CONFIG => admin.async_event_config,
        _ if discovery => return done(Status::INVALID_FIELD),
        fid::NUMBER_OF_QUEUES => {
            let granted = u32::from(admin.controller.io_queues().max(1) - 1);
            granted | (granted << 16)
        }
        fid::ARBITRATION => admin.arbitration,
        fid::POWER_MANAGEMENT => admin.power_management,
        fid::TEMPERATURE_THRESHOLD => admin.temperature_threshold,
        fid::VOLATILE_WRITE_CACHE => u32::from(admin.volatile_write_cache),
        fid::ERROR_RECOVERY => 0,
        _ => return done(Status::INVALID_FIELD),
    };
    with_result(u64::from(value))
}
