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
use super::poll_group::{gather, PollGroupStats, QpairRow};
use super::subsystem::{
    transport_address_json, ListenAddress, Subsystem, SubsystemConfig, SubsystemKind, MAX_CNTLID, MIN_CNTLID,
};
use super::target::{hex, NvmfTarget};
use super::transport::SockImpl;

mod query;

pub use query::subsystem_json;
use query::{get_controllers, get_listeners, get_qpairs, get_stats, get_subsystems, mem_get_stats};

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
            Ok(transport) => Ok(transport),
            Err(why) if why.contains("already exists") => Err(RpcError::exists(why)),
            Err(why) => Err(RpcError::invalid_params(why)),
        }
    })();
    match result {
        Ok(transport) => super::poll_group::add_transport(ctx, target, transport, move |_| responder.ok_true()),
        Err(err) => responder.err(err),
    }
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
    pub(super) trtype: String,
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
        Ok(target.remove_listener(ctx, &params.nqn, &params.listen_address.trtype, addr)?)
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
