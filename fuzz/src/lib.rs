//! The bodies of the fuzz targets, so libFuzzer (`fuzz_targets/`) and anything else
//! (a replay of the corpus) run the same code. Each one feeds untrusted bytes through a
//! parser the target exposes to the wire or to an operator and checks the invariants the
//! rest of the code relies on (wire input is untrusted): a refusal is fine, a panic is a
//! bug.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use peerless_bdev::{BdevManager, IoType};
use peerless_core::config;
use peerless_core::reactor::{App, AppOptions};
use peerless_core::rpc::request::{parse_request, response};
use peerless_core::rpc::stream::{next_value, Parsed};
use peerless_core::rpc::{Registry, RpcError};
use peerless_target::nvme::cmd::{Sqe, SQE_BYTES};
use peerless_target::nvme::Status;
use peerless_target::nvmf::ana::AnaState;
use peerless_target::nvmf::connect::{self, ConnInfo};
use peerless_target::nvmf::ctrlr::AdminState;
use peerless_target::nvmf::io_cmd::{self, CommandLimits, NsInfo, Placement, Plan, DSM_MAX_RANGES, DSM_RANGE_BYTES};
use peerless_target::nvmf::subsystem::{ListenAddress, SubsystemKind};
use peerless_target::nvmf::transport::TransportOptions;
use peerless_target::nvmf::{admin, NvmfTarget};
use peerless_target::tcp::pdu::{
    self, pdu_type, CommonHeader, DataHeader, Digests, IcReq, Receiver, CAPSULE_CMD_HLEN, COMMON_HEADER_BYTES,
    TERM_HLEN, TERM_MAX_DATA,
};
use serde_json::{json, Value};

/// The subsystem and host a Connect may name to get past the lookups.
pub const SUBNQN: &str = "nqn.2016-06.io.peerless:fuzz";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:f0000000-0000-4000-8000-000000000001";
/// Values of a JSON stream looked at per input, so a long input cannot run unbounded.
const MAX_VALUES: usize = 64;

/// One in-process target, built once: the real RPC registry and an NVMe-oF target with
/// one subsystem. Nothing is ever started on it; the fuzzers only decode.
struct World {
    registry: Registry,
    methods: Vec<&'static str>,
    target: NvmfTarget,
    options: TransportOptions,
    info: ConnInfo,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // Refusals are the expected outcome here; their warnings would drown libFuzzer's output.
        peerless_core::log::set_print_level(peerless_core::log::Level::Error);
        let options = AppOptions { name: "peerless-fuzz".into(), interrupt_mode: true, ..AppOptions::default() };
        let app: &'static App = Box::leak(Box::new(App::start(options).expect("start an app")));
        let handle = app.handle();
        let bdevs = BdevManager::new();
        let target = NvmfTarget::new(handle.clone(), bdevs.clone());
        let subsystem = target.add_subsystem(SUBNQN, SubsystemKind::Nvme);
        let addr = SocketAddr::from(([127, 0, 0, 1], 4420));
        {
            let mut state = subsystem.state.lock();
            state.hosts.push(HOSTNQN.to_string());
            state.listeners.push(ListenAddress::new(addr, 0, AnaState::Optimized));
        }
        let registry = peerless_target::app::registry(&peerless_core::keyring::Keyring::new(), &bdevs, &target);
        let methods = registry.names(None);
        let options: TransportOptions = serde_json::from_value(json!({"trtype": "TCP"})).expect("default options");
        let info = ConnInfo {
            conn_id: 1,
            thread: handle.app_thread(),
            peer: addr,
            local: addr,
            trtype: "TCP".into(),
            tls: None,
        };
        World { registry, methods, target, options, info }
    })
}

/// NVMe/TCP PDU headers and the commands inside them. The first byte picks the receiving
/// side, the negotiated digests and the data limit; the rest is the PDU, and its bytes
/// also serve as a submission queue entry for command decoding.
pub fn pdu(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else { return };
    let receiver = if control & 1 == 0 { Receiver::Controller } else { Receiver::Host };
    let digests = Digests { header: control & 2 != 0, data: control & 4 != 0 };
    let max_data = [0usize, 512, 8192, 131_072][usize::from((control >> 3) & 3)];
    let header = CommonHeader::parse(rest);
    match pdu::validate(header, receiver, digests, max_data) {
        Ok(layout) => {
            assert_eq!(layout.total, header.plen as usize);
            let trailer = if layout.data_digest { pdu::DIGEST_BYTES } else { 0 };
            assert!(layout.header_bytes <= layout.data_offset, "{layout:?}");
            assert!(layout.data_offset + layout.data_len + trailer <= layout.total, "{layout:?}");
            assert!(layout.data_len <= max_data.max(TERM_MAX_DATA), "{layout:?}");
            assert!(!layout.data_digest || digests.data, "{layout:?}");
        }
        Err(fatal) => {
            assert!((pdu::fes::INVALID_HEADER_FIELD..=pdu::fes::UNSUPPORTED_PARAMETER).contains(&fatal.fes));
            assert!(fatal.fei < 8, "a header field error points inside the common header: {fatal:?}");
            // The TermReq that reports it is itself a valid PDU for the host.
            let term = pdu::term_req(pdu_type::C2H_TERM_REQ, fatal, rest);
            assert_eq!(term.len(), TERM_HLEN + rest.len().min(TERM_MAX_DATA));
            let parsed = CommonHeader::parse(&term);
            assert!(pdu::validate(parsed, Receiver::Host, digests, 0).is_ok(), "{parsed:?}");
        }
    }
    let _ = pdu::header_digest_ok(rest, usize::from(header.hlen));
    let icreq = IcReq::parse(rest);
    assert_eq!(IcReq::parse(&icreq.encode()), icreq);
    let _ = DataHeader::parse(rest);

    // A CapsuleCmd's SQE follows the common header; its data follows the SQE.
    let mut bytes = [0u8; SQE_BYTES];
    let sqe_bytes = rest.get(COMMON_HEADER_BYTES..).unwrap_or_default();
    let take = sqe_bytes.len().min(SQE_BYTES);
    bytes[..take].copy_from_slice(&sqe_bytes[..take]);
    let sqe = Sqe(bytes);
    let capsule_data = rest.get(CAPSULE_CMD_HLEN..).unwrap_or_default();
    io_command(&sqe, control, capsule_data);
    admin_command(&sqe);
    connect_command(&sqe, capsule_data);
}

fn io_command(sqe: &Sqe, control: u8, data: &[u8]) {
    // Every command is planned without limits and with small ones (as `nvmf_create_subsystem`
    // sets them with `dmrsl` and `wzsl`).
    for limits in [CommandLimits::default(), CommandLimits { dmrsl: 8, wzsl: 1 }] {
        let info = NsInfo {
            block_size: 512 << ((control >> 5) & 3),
            num_blocks: if control & 0x80 == 0 { 16_384 } else { u64::MAX },
            limits,
        };
        io_command_within(sqe, &info, data);
    }
}

fn io_command_within(sqe: &Sqe, info: &NsInfo, data: &[u8]) {
    let (max_io_bytes, icd_limit) = (131_072, 8192);
    let in_capsule = data.len();
    // Both bindings' SGL rules, chosen by the command's own bytes.
    let binding = if sqe.cid() & 1 == 1 { io_cmd::SglBinding::Rdma } else { io_cmd::SglBinding::Tcp };
    match io_cmd::plan(sqe, info, max_io_bytes, in_capsule, icd_limit, binding) {
        Ok(Plan::Block { io_type, slba, nlb, transfer }) => {
            assert!(slba.checked_add(nlb).is_some_and(|end| end <= info.num_blocks), "{sqe:?}");
            assert!(transfer.bytes <= max_io_bytes);
            if io_type != IoType::Flush && io_type != IoType::WriteZeroes {
                assert_eq!(transfer.bytes as u64, nlb * u64::from(info.block_size));
            }
            if io_type == IoType::WriteZeroes {
                let bytes = nlb * u64::from(info.block_size);
                assert!(info.limits.write_zeroes_max_bytes().is_none_or(|max| bytes <= max), "{sqe:?}");
            }
            if transfer.placement == Placement::InCapsule {
                assert!(transfer.bytes == in_capsule && transfer.bytes <= icd_limit);
            }
        }
        Ok(Plan::Deallocate { ranges, transfer, .. }) => {
            assert!((1..=DSM_MAX_RANGES).contains(&ranges.count));
            assert_eq!(ranges.max_blocks, info.limits.dmrsl);
            // At least the ranges processed; Linux sends a whole 4 KiB list whatever NR says.
            let needed = ranges.count as usize * DSM_RANGE_BYTES;
            assert!((needed..=DSM_MAX_RANGES as usize * DSM_RANGE_BYTES).contains(&transfer.bytes), "{sqe:?}");
            let processed: Vec<(u64, u64)> = io_cmd::dsm_ranges(data, ranges).collect();
            assert_eq!(processed.len(), ranges.count as usize);
            if ranges.max_blocks > 0 {
                assert!(processed.iter().all(|(_, blocks)| *blocks <= u64::from(ranges.max_blocks)));
            }
        }
        Err(status) => assert_ne!(status, Status::SUCCESS),
    }
}

/// Admin commands against a fresh controller of the fuzz subsystem.
fn admin_command(sqe: &Sqe) {
    let world = world();
    let Some(subsystem) = world.target.find_subsystem(SUBNQN) else { return };
    let controller = std::sync::Arc::new(peerless_target::nvmf::ctrlr::Controller::new(
        1,
        subsystem,
        HOSTNQN.to_string(),
        [0; 16],
        peerless_target::nvme::identify::ControllerType::Io,
        std::time::Duration::from_secs(10),
        4,
    ));
    let mut state = AdminState::new(controller, 128, 4, 0);
    if let admin::Outcome::Done { data: Some(data), .. } =
        admin::execute(&mut state, &world.target, &world.options, io_cmd::SglBinding::Tcp, sqe, 0)
    {
        // Never more than MDTS, whatever the host asked for.
        assert!(data.len() <= world.options.max_io_size as usize, "admin data of {} bytes", data.len());
    }
}

/// Fabrics Connect: the command and its 1024 bytes of data. A Connect that succeeds
/// leaves a controller behind; it is removed so the next input starts from the same state.
fn connect_command(sqe: &Sqe, data: &[u8]) {
    let world = world();
    if let Ok(connected) = connect::connect(&world.target, &world.options, &world.info, sqe, data) {
        assert!(connected.queue_entries >= 2);
        if let Some(subsystem) = world.target.find_subsystem(SUBNQN) {
            subsystem.state.lock().controllers.clear();
        }
    }
}

/// The JSON-RPC server's input: a byte stream split into values, each validated as a
/// request envelope and its parameters decoded by the real method. An input that starts
/// with `#` aims at one method: the next byte picks it, the rest is its parameters.
pub fn rpc(data: &[u8]) {
    let world = world();
    if let [b'#', pick, params @ ..] = data {
        let method = world.methods[usize::from(*pick) % world.methods.len()];
        if let Parsed::Value(value, _) = next_value(params) {
            decode(&world.registry, method, Some(value));
        }
        return;
    }
    let mut rest = data;
    for _ in 0..MAX_VALUES {
        match next_value(rest) {
            Parsed::Value(value, used) => {
                assert!(used > 0 && used <= rest.len(), "used {used} of {}", rest.len());
                rest = &rest[used..];
                match parse_request(value) {
                    Ok(request) => {
                        decode(&world.registry, &request.method, request.params);
                        let id = request.id.unwrap_or(Value::Null);
                        assert!(response(&id, &Ok(Value::Bool(true))).is_object());
                    }
                    Err((error, id)) => {
                        assert!(error.code < 0);
                        assert!(response(&id, &Err(error)).is_object());
                    }
                }
            }
            Parsed::Incomplete | Parsed::Invalid(_) => return,
        }
    }
}

fn decode(registry: &Registry, method: &str, params: Option<Value>) {
    if let Some(Err(RpcError { code, message, .. })) = registry.decode_only(method, params) {
        assert!(code < 0 && !message.is_empty());
    }
}

/// The JSON config loader's parse step, and every entry's parameters through the method
/// it names.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let world = world();
    if let Ok(entries) = config::parse(Path::new("fuzz.json"), text) {
        let lines = text.bytes().filter(|byte| *byte == b'\n').count() + 1;
        for entry in entries {
            assert!((1..=lines).contains(&entry.line), "line {} of {lines}", entry.line);
            decode(&world.registry, &entry.method, entry.params);
        }
    }
}

/// DH-HMAC-CHAP messages (NVMe Base 2.0, 8.13.5) and the controller's session fed with
/// them. Each step takes a byte: even, an Authentication Send of the next `byte / 2`
/// bytes; odd, an Authentication Receive. The target allows the null group only (a DH
/// key pair per input would make runs slow) and has no key for the host, so a reply is
/// checked as far as the key. Every message the session sends must decode, and a decoded
/// message must survive encoding and decoding again.
pub fn auth(data: &[u8]) {
    use peerless_target::nvmf::auth::msg::{message_len, Message};
    use peerless_target::nvmf::auth::session::{HostKeys, Peer, Session};
    use peerless_target::nvmf::auth::{AuthConfig, DhGroup, Digest};

    if let Ok(message) = Message::decode(data) {
        let again = message.encode();
        assert_eq!(Message::decode(&again).as_ref(), Ok(&message), "a decoded message survives a round trip");
        assert_eq!(message_len(&again), Some(again.len()));
    }
    let keys = HostKeys::default();
    let config = AuthConfig { digests: Digest::ALL.to_vec(), dhgroups: vec![DhGroup::Null] };
    let peer = Peer { hostnqn: HOSTNQN, subnqn: SUBNQN, keys: &keys, config: &config, throttled: false };
    let mut session = Session::new();
    let mut rest = data;
    let mut seqnum = 1u32;
    while let Some((&op, tail)) = rest.split_first() {
        if op & 1 == 0 {
            let len = usize::from(op / 2).min(tail.len());
            let (message, after) = tail.split_at(len);
            session.on_send(&peer, message);
            rest = after;
        } else {
            let (bytes, _) = session.on_receive(seqnum);
            seqnum = seqnum.wrapping_add(1).max(1);
            let decoded = Message::decode(&bytes);
            assert!(decoded.is_ok(), "the session sent a message it cannot decode: {bytes:?}");
            assert_eq!(message_len(&bytes), Some(bytes.len()));
            rest = tail;
        }
    }
}
