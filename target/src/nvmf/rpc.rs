//! The nvmf JSON-RPC methods, with SPDK's names, parameters and result shapes. Each
//! method decodes SPDK's parameters, refuses with -32602 any that asks for what the
//! target does not do (naming it), calls the control plane on `NvmfTarget`, and encodes
//! the answer. Nothing SPDK's rpc.py sends is accepted and then ignored. They run on
//! the app thread, which owns listeners.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nix::errno::Errno;
use peerless_core::keyring::Keyring;
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::framework::TICK_RATE_HZ;
use peerless_core::rpc::{Registry, Responder, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{when_disconnected, DEFAULT_DISCONNECT_TIMEOUT};
use super::ana::AnaState;
use super::auth::rpc::resolve_keys;
use super::error::NvmfError;
use super::io_cmd::CommandLimits;
use super::namespace::{NamespaceSpec, P2pPlacement};
use super::poll_group::{gather, PollGroupStats};
use super::subsystem::{
    address_json, ListenAddress, Subsystem, SubsystemConfig, SubsystemKind, MAX_CNTLID, MIN_CNTLID,
};
use super::target::{hex, NvmfTarget};
use super::transport::SockImpl;

const DEFAULT_TRSVCID: u16 = 4420;
/// SPDK's "any NUMA node" (SPDK_ENV_NUMA_ID_ANY).
const NUMA_ID_ANY: i32 = -1;

impl From<NvmfError> for RpcError {
    fn from(err: NvmfError) -> RpcError {
        let message = err.to_string();
        match err {
            NvmfError::Bdev(err) => err.into(),
            NvmfError::SubsystemExists(_)
            | NvmfError::ListenerExists { .. }
            | NvmfError::HostExists { .. }
            | NvmfError::NsidInUse { .. } => RpcError::exists(message),
            NvmfError::NoSuchListener { .. } | NvmfError::NoSuchHost { .. } | NvmfError::NoSuchTransport { .. } => {
                RpcError::no_such_device(message)
            }
            NvmfError::CannotListen(_) => RpcError::errno(Errno::EADDRINUSE, message),
            NvmfError::HostRemovalTimeout { .. } => RpcError::internal(message),
            NvmfError::Invalid(_)
            | NvmfError::Unsupported { .. }
            | NvmfError::NoSuchTarget(_)
            | NvmfError::NoSuchSubsystem(_)
            | NvmfError::Discovery(_)
            | NvmfError::TooManySubsystems(_)
            | NvmfError::NoTransport(_)
            | NvmfError::NsidTooLarge { .. }
            | NvmfError::NoFreeNsid { .. }
            | NvmfError::NoSuchNamespace { .. } => RpcError::invalid_params(message),
        }
    }
}

/// A parameter asking for something the target does not do.
fn refuse(param: &'static str, why: impl Into<String>) -> RpcError {
    NvmfError::unsupported(param, why).into()
}

pub(super) fn check_target(tgt_name: &Option<String>) -> Result<(), RpcError> {
    Ok(NvmfTarget::check_name(tgt_name.as_deref())?)
}

/// Answers `true`, or the error.
pub(super) fn answer(responder: Responder, result: Result<(), RpcError>) {
    match result {
        Ok(()) => responder.ok_true(),
        Err(err) => responder.err(err),
    }
}

pub fn register(registry: &mut Registry, target: &NvmfTarget, keyring: &Keyring) {
    macro_rules! method {
        ($name:literal, $params:ty, $handler:ident) => {{
            let target = target.clone();
            registry.method($name, StateMask::RUNTIME, move |ctx, params: $params, responder| {
                $handler(ctx, &target, params, responder)
            });
        }};
    }
    method!("nvmf_create_transport", Value, create_transport);
    method!("nvmf_get_transports", GetTransports, get_transports);
    method!("nvmf_create_subsystem", CreateSubsystem, create_subsystem);
    method!("nvmf_delete_subsystem", NqnParams, delete_subsystem);
    method!("nvmf_subsystem_add_listener", AddListener, add_listener);
    method!("nvmf_subsystem_remove_listener", RemoveListener, remove_listener);
    method!("nvmf_subsystem_add_ns", AddNs, add_ns);
    method!("nvmf_subsystem_remove_ns", RemoveNs, remove_ns);
    let (host_target, host_keyring) = (target.clone(), keyring.clone());
    registry.method("nvmf_subsystem_add_host", StateMask::RUNTIME, move |ctx, params: AddHost, responder| {
        add_host(ctx, &host_target, &host_keyring, params, responder)
    });
    super::auth::rpc::register(registry, target, keyring);
    method!("nvmf_subsystem_remove_host", RemoveHost, remove_host);
    method!("nvmf_subsystem_allow_any_host", AllowAnyHost, allow_any_host);
    method!("nvmf_get_subsystems", OptionalNqn, get_subsystems);
    method!("nvmf_subsystem_get_controllers", NqnParams, get_controllers);
    method!("nvmf_subsystem_get_qpairs", NqnParams, get_qpairs);
    method!("nvmf_subsystem_get_listeners", NqnParams, get_listeners);
    super::ana_rpc::register(registry, target);
    method!("nvmf_get_stats", TargetOnly, get_stats);
    let mem_target = target.clone();
    registry.method_without_params("mem_get_stats", StateMask::RUNTIME, move |ctx, responder| {
        mem_get_stats(ctx, &mem_target, responder)
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetOnly {
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnParams {
    nqn: String,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionalNqn {
    #[serde(default)]
    nqn: Option<String>,
    #[serde(default)]
    tgt_name: Option<String>,
}

/// Decoded relaxed, as SPDK does: rpc.py sends other transports' keys, and each transport
/// reads its own from the same parameters.
fn create_transport(ctx: &mut ThreadCtx, target: &NvmfTarget, params: Value, responder: Responder) {
    let result = (|| {
        match params.get("tgt_name") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) => NvmfTarget::check_name(Some(name))?,
            Some(other) => return Err(RpcError::invalid_params(format!("tgt_name must be a string, not {other}"))),
        }
        let Some(trtype) = params.get("trtype").and_then(Value::as_str) else {
            return Err(RpcError::invalid_params("trtype is required (e.g. \"TCP\")"));
        };
        let poll_groups = ctx.app().options().cpumask.cores().count().max(1);
        match target.create_transport(trtype, &params, poll_groups) {
            Ok(_) => Ok(()),
            Err(why) if why.contains("already exists") => Err(RpcError::exists(why)),
            Err(why) => Err(RpcError::invalid_params(why)),
        }
    })();
    answer(responder, result);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransports {
    #[serde(default)]
    tgt_name: Option<String>,
    /// Only this transport; one the target does not have is an error, as in SPDK.
    #[serde(default)]
    trtype: Option<String>,
}

fn get_transports(_: &mut ThreadCtx, target: &NvmfTarget, params: GetTransports, responder: Responder) {
    if let Err(err) = check_target(&params.tgt_name) {
        return responder.err(err);
    }
    let transports = match &params.trtype {
        None => target.transports(),
        Some(trtype) => match target.transport(trtype) {
            Some(transport) => vec![transport],
            None => {
                let have = target.transports().iter().map(|transport| transport.trtype()).collect();
                return responder.err(NvmfError::NoSuchTransport { trtype: trtype.clone(), have }.into());
            }
        },
    };
    responder.ok(transports.iter().map(|transport| transport.to_json()).collect::<Vec<Value>>());
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubsystem {
    nqn: String,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    model_number: Option<String>,
    #[serde(default)]
    admin_label: Option<String>,
    #[serde(default)]
    max_namespaces: u32,
    #[serde(default)]
    allow_any_host: bool,
    #[serde(default)]
    ana_reporting: bool,
    #[serde(default)]
    min_cntlid: Option<u16>,
    #[serde(default)]
    max_cntlid: Option<u16>,
    #[serde(default)]
    dmrsl: Option<u32>,
    #[serde(default)]
    wzsl: Option<u8>,
    #[serde(default)]
    passthrough: bool,
    #[serde(default)]
    enable_nssr: bool,
    /// SPDK before 26.09: the discard limit in KiB, converted to `dmrsl`.
    #[serde(default)]
    max_discard_size_kib: Option<u64>,
    /// SPDK before 26.09: the Write Zeroes limit in KiB, converted to `wzsl`.
    #[serde(default)]
    max_write_zeroes_size_kib: Option<u64>,
}

/// `max_discard_size_kib` as DMRSL. SPDK converts it assuming 512-byte blocks, whatever
/// the namespaces' block size; the same configuration must report the same limit here.
fn dmrsl_from_kib(kib: u64) -> Result<u32, RpcError> {
    kib.checked_mul(2).and_then(|blocks| u32::try_from(blocks).ok()).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "max_discard_size_kib {kib} is more than dmrsl can say ({} KiB in 512-byte blocks)",
            u32::MAX / 2
        ))
    })
}

/// `max_write_zeroes_size_kib` as WZSL, a power of two of 4 KiB pages (CAP.MPSMIN is 0).
/// 0 is no limit; anything else must be a whole power of two pages, at least two (one
/// page would be WZSL 0, which means no limit), as SPDK requires.
fn wzsl_from_kib(kib: u64) -> Result<u8, RpcError> {
    match kib {
        0 => Ok(0),
        kib if kib >= 8 && kib.is_power_of_two() => Ok((kib / 4).trailing_zeros() as u8),
        kib => Err(RpcError::invalid_params(format!(
            "max_write_zeroes_size_kib {kib} must be 0 (no limit) or a power of two of at least 8"
        ))),
    }
}

impl CreateSubsystem {
    fn config(self) -> Result<SubsystemConfig, RpcError> {
        check_target(&self.tgt_name)?;
        if self.passthrough {
            return Err(refuse("passthrough", "NVMe passthrough is not implemented; leave it false"));
        }
        if self.enable_nssr {
            return Err(refuse("enable_nssr", "NVM subsystem reset is not implemented; leave it false"));
        }
        let dmrsl = match (self.dmrsl, self.max_discard_size_kib) {
            (Some(_), Some(_)) => {
                return Err(RpcError::invalid_params("give dmrsl or max_discard_size_kib (its older form), not both"))
            }
            (Some(dmrsl), None) => dmrsl,
            (None, Some(kib)) => dmrsl_from_kib(kib)?,
            (None, None) => 0,
        };
        let wzsl = match (self.wzsl, self.max_write_zeroes_size_kib) {
            (Some(_), Some(_)) => {
                return Err(RpcError::invalid_params(
                    "give wzsl or max_write_zeroes_size_kib (its older form), not both",
                ))
            }
            (Some(wzsl), None) => wzsl,
            (None, Some(kib)) => wzsl_from_kib(kib)?,
            (None, None) => 0,
        };
        Ok(SubsystemConfig {
            nqn: self.nqn,
            serial: self.serial_number,
            model: self.model_number,
            // SPDK takes an empty label as none.
            admin_label: self.admin_label.filter(|label| !label.is_empty()),
            max_namespaces: self.max_namespaces,
            allow_any_host: self.allow_any_host,
            ana_reporting: self.ana_reporting,
            min_cntlid: self.min_cntlid.unwrap_or(MIN_CNTLID),
            max_cntlid: self.max_cntlid.unwrap_or(MAX_CNTLID),
            limits: CommandLimits { dmrsl, wzsl },
        })
    }
}

fn create_subsystem(_: &mut ThreadCtx, target: &NvmfTarget, params: CreateSubsystem, responder: Responder) {
    let result = params.config().and_then(|config| Ok(target.create_subsystem(&config).map(drop)?));
    answer(responder, result);
}

fn delete_subsystem(ctx: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    let result = check_target(&params.tgt_name).and_then(|()| Ok(target.delete_subsystem(ctx, &params.nqn)?));
    answer(responder, result);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenAddressParams {
    trtype: String,
    #[serde(default)]
    adrfam: Option<String>,
    traddr: String,
    #[serde(default)]
    trsvcid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddListener {
    nqn: String,
    listen_address: ListenAddressParams,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    secure_channel: bool,
    #[serde(default)]
    ana_state: Option<String>,
    #[serde(default)]
    sock_impl: Option<String>,
    #[serde(default)]
    numa_id: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveListener {
    nqn: String,
    listen_address: ListenAddressParams,
    #[serde(default)]
    tgt_name: Option<String>,
}

pub(super) fn parse_address(target: &NvmfTarget, address: &ListenAddressParams) -> Result<SocketAddr, RpcError> {
    if !target.transport_types().iter().any(|known| known.eq_ignore_ascii_case(&address.trtype)) {
        return Err(RpcError::invalid_params(format!(
            "trtype '{}' is not supported; use one of {:?}",
            address.trtype,
            target.transport_types()
        )));
    }
    let ip: IpAddr = address
        .traddr
        .parse()
        .map_err(|_| RpcError::invalid_params(format!("traddr '{}' is not an IP address", address.traddr)))?;
    if let Some(adrfam) = &address.adrfam {
        let matches = match adrfam.to_ascii_lowercase().as_str() {
            "ipv4" => ip.is_ipv4(),
            "ipv6" => ip.is_ipv6(),
            _ => return Err(RpcError::invalid_params(format!("adrfam '{adrfam}' is not supported; use IPv4 or IPv6"))),
        };
        if !matches {
            return Err(RpcError::invalid_params(format!("traddr '{}' is not an {adrfam} address", address.traddr)));
        }
    }
    let port = match &address.trsvcid {
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| RpcError::invalid_params(format!("trsvcid '{port}' is not a port number")))?,
        None => DEFAULT_TRSVCID,
    };
    Ok(SocketAddr::new(ip, port))
}

impl AddListener {
    /// Refuses what a listener here cannot be: other socket layers, NUMA pinning.
    /// Returns the ANA state its groups start in.
    fn check(&self) -> Result<AnaState, RpcError> {
        check_target(&self.tgt_name)?;
        if let Some(sock_impl) = self.sock_impl.as_deref().filter(|name| SockImpl::parse(name).is_none()) {
            return Err(refuse(
                "sock_impl",
                format!("'{sock_impl}' is not available; choose one of {:?}", SockImpl::NAMES),
            ));
        }
        if let Some(numa_id) = self.numa_id.filter(|id| *id != NUMA_ID_ANY) {
            return Err(refuse(
                "numa_id",
                format!("{numa_id}: listeners are not pinned to a NUMA node; omit it or pass {NUMA_ID_ANY} (any)"),
            ));
        }
        match &self.ana_state {
            None => Ok(AnaState::Optimized),
            Some(name) => Ok(AnaState::parse_settable(name)?),
        }
    }
}

fn add_listener(ctx: &mut ThreadCtx, target: &NvmfTarget, params: AddListener, responder: Responder) {
    let result = params.check().and_then(|ana_state| {
        let addr = parse_address(target, &params.listen_address)?;
        let sock_impl = params.sock_impl.as_deref().and_then(SockImpl::parse);
        let trtype = &params.listen_address.trtype;
        Ok(target.add_listener(ctx, &params.nqn, trtype, addr, ana_state, sock_impl, params.secure_channel)?)
    });
    answer(responder, result);
}

fn remove_listener(ctx: &mut ThreadCtx, target: &NvmfTarget, params: RemoveListener, responder: Responder) {
    let result = check_target(&params.tgt_name).and_then(|()| {
        let addr = parse_address(target, &params.listen_address)?;
        Ok(target.remove_listener(ctx, &params.nqn, addr)?)
    });
    answer(responder, result);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceParams {
    #[serde(default)]
    nsid: Option<u32>,
    bdev_name: String,
    #[serde(default)]
    nguid: Option<String>,
    #[serde(default)]
    eui64: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    ptpl_file: Option<String>,
    #[serde(default)]
    anagrpid: Option<u32>,
    #[serde(default)]
    no_auto_visible: bool,
    #[serde(default)]
    hide_metadata: bool,
    /// Where command data for this namespace is placed: "off", "auto", or a provider name.
    #[serde(default)]
    p2pmem: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNs {
    nqn: String,
    namespace: NamespaceParams,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn parse_hex<const N: usize>(field: &str, text: &str) -> Result<[u8; N], RpcError> {
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    let mut bytes = [0u8; N];
    if digits.len() != N * 2 {
        return Err(RpcError::invalid_params(format!("{field} '{text}' must be {} hex digits", N * 2)));
    }
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[index * 2..index * 2 + 2], 16)
            .map_err(|_| RpcError::invalid_params(format!("{field} '{text}' is not hex")))?;
    }
    Ok(bytes)
}

impl NamespaceParams {
    fn spec(self) -> Result<NamespaceSpec, RpcError> {
        if self.ptpl_file.as_deref().is_some_and(|path| !path.is_empty()) {
            return Err(refuse(
                "ptpl_file",
                "reservations are not implemented, so there is nothing to persist through power loss",
            ));
        }
        if self.no_auto_visible {
            return Err(refuse(
                "no_auto_visible",
                "namespace masking is not implemented: every host that may connect sees every namespace; leave it false",
            ));
        }
        if self.hide_metadata {
            return Err(refuse("hide_metadata", "bdevs with metadata are not exported, so there is none to hide"));
        }
        Ok(NamespaceSpec {
            nsid: self.nsid,
            bdev_name: self.bdev_name,
            nguid: self.nguid.map(|text| parse_hex::<16>("nguid", &text)).transpose()?,
            eui64: self.eui64.map(|text| parse_hex::<8>("eui64", &text)).transpose()?,
            uuid: self.uuid.map(|text| parse_hex::<16>("uuid", &text)).transpose()?,
            anagrpid: self.anagrpid,
            p2pmem: self.p2pmem.as_deref().map_or(P2pPlacement::Off, P2pPlacement::parse),
        })
    }
}

fn add_ns(ctx: &mut ThreadCtx, target: &NvmfTarget, params: AddNs, responder: Responder) {
    let result = check_target(&params.tgt_name)
        .and_then(|()| params.namespace.spec())
        .and_then(|spec| Ok(target.add_namespace(ctx, &params.nqn, spec)?));
    match result {
        Ok(nsid) => responder.ok(nsid),
        Err(err) => responder.err(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn remove_ns(ctx: &mut ThreadCtx, target: &NvmfTarget, params: RemoveNs, responder: Responder) {
    let result =
        check_target(&params.tgt_name).and_then(|()| Ok(target.remove_namespace(ctx, &params.nqn, params.nsid)?));
    answer(responder, result);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddHost {
    nqn: String,
    host: String,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    psk: Option<String>,
    #[serde(default)]
    dhchap_key: Option<String>,
    #[serde(default)]
    dhchap_ctrlr_key: Option<String>,
}

fn add_host(_: &mut ThreadCtx, target: &NvmfTarget, keyring: &Keyring, params: AddHost, responder: Responder) {
    let result = (|| {
        check_target(&params.tgt_name)?;
        let psk = params.psk.as_deref().map(|name| crate::tcp::tls::resolve_psk(keyring, name)).transpose()?;
        let keys = resolve_keys(keyring, params.dhchap_key.as_deref(), params.dhchap_ctrlr_key.as_deref())?;
        Ok(target.add_host_with_psk(&params.nqn, &params.host, keys, psk)?)
    })();
    answer(responder, result);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveHost {
    nqn: String,
    host: String,
    #[serde(default)]
    tgt_name: Option<String>,
    /// How long to wait for the host's queues to close; absent or 0 is SPDK's default.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Answers once the host's controllers have closed every queue, as SPDK does, or with
/// an error when `timeout_ms` passes first.
fn remove_host(ctx: &mut ThreadCtx, target: &NvmfTarget, params: RemoveHost, responder: Responder) {
    let gone = match check_target(&params.tgt_name).and_then(|()| Ok(target.remove_host(&params.nqn, &params.host)?)) {
        Ok(gone) => gone,
        Err(err) => return responder.err(err),
    };
    let timeout = match params.timeout_ms {
        None | Some(0) => DEFAULT_DISCONNECT_TIMEOUT,
        Some(ms) => Duration::from_millis(ms),
    };
    when_disconnected(ctx, gone, timeout, move |_, closed| {
        if closed {
            return responder.ok_true();
        }
        let timeout_ms = timeout.as_millis() as u64;
        responder.err(NvmfError::HostRemovalTimeout { nqn: params.nqn, host: params.host, timeout_ms }.into())
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAnyHost {
    nqn: String,
    allow_any_host: bool,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn allow_any_host(_: &mut ThreadCtx, target: &NvmfTarget, params: AllowAnyHost, responder: Responder) {
    let result = check_target(&params.tgt_name)
        .and_then(|()| Ok(target.set_allow_any_host(&params.nqn, params.allow_any_host)?));
    answer(responder, result);
}

/// One subsystem as `nvmf_get_subsystems` shows it, keys in SPDK's order.
pub fn subsystem_json(subsystem: &Subsystem) -> Value {
    let state = subsystem.state.lock();
    let listen: Vec<Value> = state.listeners.iter().map(ListenAddress::to_json).collect();
    // Key names as SPDK shows them; the keys themselves stay in their files.
    let hosts: Vec<Value> = state
        .hosts
        .iter()
        .map(|host| {
            let mut entry = json!({"nqn": host});
            if let Some(keys) = state.host_keys.get(host) {
                if let Some(key) = &keys.dhchap_key {
                    entry["dhchap_key"] = json!(key.name());
                }
                if let Some(key) = &keys.dhchap_ctrlr_key {
                    entry["dhchap_ctrlr_key"] = json!(key.name());
                }
            }
            if let Some(key) = state.host_psks.get(host) {
                entry["psk"] = json!(key.name());
            }
            entry
        })
        .collect();
    let mut object = json!({
        "nqn": subsystem.nqn,
        "subtype": if subsystem.kind == SubsystemKind::Discovery { "Discovery" } else { "NVMe" },
        "listen_addresses": listen,
        "allow_any_host": state.allow_any_host,
        "hosts": hosts,
    });
    if subsystem.kind == SubsystemKind::Nvme {
        let map = object.as_object_mut().expect("built as an object");
        let namespaces: Vec<Value> = state
            .namespaces
            .values()
            .map(|ns| {
                let mut entry = json!({"nsid": ns.nsid, "bdev_name": ns.bdev_name, "name": ns.bdev_name,
                    "nguid": hex(&ns.nguid), "uuid": peerless_bdev::Uuid(ns.uuid).to_string(),
                    "p2pmem": ns.p2pmem.as_str()});
                if ns.eui64 != [0; 8] {
                    entry["eui64"] = json!(hex(&ns.eui64));
                }
                if state.ana_reporting {
                    entry["anagrpid"] = json!(ns.anagrpid);
                }
                entry
            })
            .collect();
        map.insert("serial_number".into(), json!(state.serial));
        map.insert("model_number".into(), json!(state.model));
        if let Some(label) = &state.admin_label {
            map.insert("admin_label".into(), json!(label));
        }
        map.insert("max_namespaces".into(), json!(state.max_namespaces));
        // Always false: nvmf_create_subsystem refuses passthrough.
        map.insert("passthrough".into(), json!(false));
        map.insert("min_cntlid".into(), json!(state.min_cntlid));
        map.insert("max_cntlid".into(), json!(state.max_cntlid));
        map.insert("dmrsl".into(), json!(state.limits.dmrsl));
        map.insert("wzsl".into(), json!(state.limits.wzsl));
        map.insert("namespaces".into(), Value::Array(namespaces));
    }
    object
}

fn get_subsystems(_: &mut ThreadCtx, target: &NvmfTarget, params: OptionalNqn, responder: Responder) {
    let result = check_target(&params.tgt_name).and_then(|()| match &params.nqn {
        Some(nqn) => Ok(vec![subsystem_json(&*target.lookup(nqn)?)]),
        None => Ok(target.subsystems().iter().map(|subsystem| subsystem_json(subsystem)).collect()),
    });
    match result {
        Ok(subsystems) => responder.ok(subsystems),
        Err(err) => responder.err(err),
    }
}

fn get_controllers(_: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    let found = match check_target(&params.tgt_name).and_then(|()| Ok(target.lookup(&params.nqn)?)) {
        Ok(found) => found,
        Err(err) => return responder.err(err),
    };
    let controllers: Vec<Value> = found
        .state
        .lock()
        .controllers
        .values()
        .map(|controller| {
            let io_qpairs = controller.qpairs.lock().iter().filter(|qpair| qpair.qid > 0).count();
            json!({"cntlid": controller.cntlid,
                "cntrltype": if found.kind == SubsystemKind::Discovery { "discovery" } else { "io" },
                "hostnqn": controller.hostnqn, "hostid": peerless_bdev::Uuid(controller.hostid).to_string(),
                "num_io_qpairs": io_qpairs})
        })
        .collect();
    responder.ok(controllers)
}

fn get_qpairs(ctx: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    let found = match check_target(&params.tgt_name).and_then(|()| Ok(target.lookup(&params.nqn)?)) {
        Ok(found) => found,
        Err(err) => return responder.err(err),
    };
    let nqn = found.nqn.clone();
    let hosts: Vec<(u16, String)> =
        found.state.lock().controllers.values().map(|c| (c.cntlid, c.hostnqn.clone())).collect();
    gather(
        ctx,
        target,
        move |group, _| group.qpairs(&nqn),
        move |_, groups| {
            let mut qpairs = Vec::new();
            for (thread, entries) in groups {
                for row in entries {
                    let hostnqn =
                        hosts.iter().find(|(id, _)| *id == row.cntlid).map(|(_, nqn)| nqn.clone()).unwrap_or_default();
                    let mut qpair = json!({"cntlid": row.cntlid, "qid": row.qid, "state": row.state, "thread": thread,
                        "hostnqn": hostnqn, "trtype": row.trtype,
                        "listen_address": address_json(row.local),
                        "peer_address": address_json(row.peer)});
                    // SPDK's `auth` object, on queues that authenticated or are authenticating.
                    if let Some((state, digest, dhgroup)) = row.auth {
                        qpair["auth"] = json!({"state": state, "digest": digest, "dhgroup": dhgroup});
                    }
                    qpairs.push(qpair);
                }
            }
            responder.ok(qpairs)
        },
    );
}

fn get_listeners(_: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    match check_target(&params.tgt_name).and_then(|()| Ok(target.lookup(&params.nqn)?)) {
        Ok(found) => {
            let state = found.state.lock();
            let listeners: Vec<Value> = state
                .listeners
                .iter()
                .map(|listener| {
                    let mut entry = json!({"address": listener.to_json()});
                    if listener.secure {
                        entry["secure_channel"] = json!(true);
                    }
                    // As SPDK: every group up to ANAGRPMAX, when the subsystem reports ANA.
                    if state.ana_reporting {
                        let states: Vec<Value> = (1..=listener.ana.groups())
                            .map(|group| json!({"ana_group": group, "ana_state": listener.ana.state(group).name()}))
                            .collect();
                        entry["ana_states"] = Value::Array(states);
                    }
                    entry
                })
                .collect();
            responder.ok(listeners)
        }
        Err(err) => responder.err(err),
    }
}

fn get_stats(ctx: &mut ThreadCtx, target: &NvmfTarget, params: TargetOnly, responder: Responder) {
    if let Err(err) = check_target(&params.tgt_name) {
        return responder.err(err);
    }
    let trtypes: Vec<Value> =
        target.transports().iter().map(|transport| json!({"trtype": transport.trtype()})).collect();
    let auth_failures = target.0.auth_limiter.counts();
    gather(
        ctx,
        target,
        |group, ctx| group.stats(ctx.stats().busy_ns),
        move |_, groups| {
            let poll_groups: Vec<Value> = groups
                .iter()
                .map(|(name, stats): &(String, PollGroupStats)| {
                    json!({"name": name, "admin_qpairs": stats.admin_qpairs, "io_qpairs": stats.io_qpairs,
                        "current_admin_qpairs": stats.current_admin_qpairs, "current_io_qpairs": stats.current_io_qpairs,
                        "current_unassociated_qpairs": stats.current_unassociated_qpairs,
                        "pending_bdev_io": stats.pending_bdev_io, "completed_nvme_io": stats.completed_nvme_io,
                        "pending_buffer_waits": stats.buffer_waits, "busy_ns": stats.busy_ns,
                        "cpu_ns_per_io": stats.busy_ns.checked_div(stats.completed_nvme_io).unwrap_or(0),
                        "transports": trtypes})
                })
                .collect();
            // Beside SPDK's fields: failed DH-HMAC-CHAP attempts by host and address.
            let auth_failures: Vec<Value> = auth_failures
                .iter()
                .map(|count| {
                    json!({"hostnqn": count.hostnqn, "address": count.addr.to_string(),
                        "failures": count.failures, "throttled": count.throttled})
                })
                .collect();
            responder.ok(json!({"tick_rate": TICK_RATE_HZ, "poll_groups": poll_groups, "auth_failures": auth_failures}))
        },
    );
}

/// `mem_get_stats`: where payload went and what the CPU touched, so a user can see it:
/// payload bytes the target placed in buffers of each kind, CPU bytes by path from the
/// memory gate's counters, fallbacks to host memory, refusals, and every P2P provider.
fn mem_get_stats(ctx: &mut ThreadCtx, target: &NvmfTarget, responder: Responder) {
    let providers: Vec<Value> = target
        .0
        .bdevs
        .list()
        .iter()
        .filter_map(|bdev| bdev.p2p_provider())
        .map(|provider| {
            json!({"name": provider.name(), "kind": provider.kind().to_string(), "size": provider.capacity_bytes(),
                "free": provider.available_bytes()})
        })
        .collect();
    // Each transport's data buffers: fixed at creation, the bound on payload memory.
    let data_buffers: Vec<Value> = target
        .transports()
        .iter()
        .map(|transport| {
            let pool = transport.pool();
            let (small_free, large_free) = pool.available();
            json!({"trtype": transport.trtype(), "bytes": pool.memory_bytes(), "buffers_per_class": pool.capacity(),
                "cache_per_poll_group": pool.cache_size(), "small_free": small_free, "large_free": large_free})
        })
        .collect();
    gather(
        ctx,
        target,
        |group, ctx| group.stats(ctx.stats().busy_ns),
        move |_, groups| {
            use peerless_core::mem::{stats, MemKind, Path};
            let mut placed = [0u64; 3];
            let mut fallbacks = 0;
            let mut buffer_waits = 0;
            for (_, group) in &groups {
                buffer_waits += group.buffer_waits;
                for (total, bytes) in placed.iter_mut().zip(group.placed_bytes) {
                    *total += bytes;
                }
                fallbacks += group.p2p_fallbacks;
            }
            let cpu = stats::snapshot();
            responder.ok(json!({
                "payload_bytes": {"host": placed[MemKind::Host.index()], "iomem": placed[MemKind::IoMem.index()],
                    "device": placed[MemKind::Device.index()]},
                "cpu_bytes": {"direct": cpu.cpu_bytes(Path::Direct), "io_accessor": cpu.cpu_bytes(Path::IoAccessor),
                    "bounce": cpu.cpu_bytes(Path::Bounce)},
                "p2p_fallbacks": fallbacks,
                "buffer_waits": buffer_waits,
                "data_buffers": data_buffers,
                "refused": cpu.refusals,
                "providers": providers,
                "heap_bytes": peerless_core::mem::alloc_count::live_bytes(),
            }))
        },
    );
}
