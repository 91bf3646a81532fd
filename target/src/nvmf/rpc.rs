//! The nvmf JSON-RPC methods, with SPDK's names, parameters and result shapes
//! (RPC.md 5.3 and 5.4). They run on the app thread, which owns listeners.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_bdev::ClaimType;
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::framework::TICK_RATE_HZ;
use peerless_core::rpc::{Registry, Responder, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use super::poll_group::{self, PollGroupStats};
use super::subsystem::{
    validate_ascii, validate_nqn, ListenAddress, Namespace, Subsystem, SubsystemKind, DISCOVERY_NQN, MAX_CNTLID,
    MIN_CNTLID, MODEL_MAX_BYTES, SERIAL_MAX_BYTES,
};
use super::target::{hex, poll_group_name, NvmfTarget, DEFAULT_MAX_SUBSYSTEMS};

/// Who claims a namespace's bdev, as `bdev_get_bdevs` will name it.
const NS_CLAIMANT: &str = "NVMe-oF Target";
const DEFAULT_TRSVCID: u16 = 4420;

/// Answers a change that hosts see in the discovery log: on success the log's generation
/// moves (and discovery controllers get the notice), then the caller hears `true`.
fn announce(target: &NvmfTarget, result: Result<(), RpcError>, responder: Responder) {
    match result {
        Ok(()) => {
            target.discovery_changed();
            responder.ok_true()
        }
        Err(err) => responder.err(err),
    }
}

fn invalid(message: impl Into<String>) -> RpcError {
    RpcError::invalid_params(message)
}

pub fn register(registry: &mut Registry, target: &NvmfTarget) {
    macro_rules! method {
        ($name:literal, $params:ty, $handler:ident) => {{
            let target = target.clone();
            registry.method($name, StateMask::RUNTIME, move |ctx, params: $params, responder| {
                $handler(ctx, &target, params, responder)
            });
        }};
    }
    method!("nvmf_create_transport", Value, create_transport);
    method!("nvmf_get_transports", TargetFilter, get_transports);
    method!("nvmf_create_subsystem", CreateSubsystem, create_subsystem);
    method!("nvmf_delete_subsystem", NqnParams, delete_subsystem);
    method!("nvmf_subsystem_add_listener", ListenerParams, add_listener);
    method!("nvmf_subsystem_remove_listener", ListenerParams, remove_listener);
    method!("nvmf_subsystem_add_ns", AddNs, add_ns);
    method!("nvmf_subsystem_remove_ns", RemoveNs, remove_ns);
    method!("nvmf_subsystem_add_host", HostParams, add_host);
    method!("nvmf_subsystem_remove_host", HostParams, remove_host);
    method!("nvmf_subsystem_allow_any_host", AllowAnyHost, allow_any_host);
    method!("nvmf_get_subsystems", OptionalNqn, get_subsystems);
    method!("nvmf_subsystem_get_controllers", NqnParams, get_controllers);
    method!("nvmf_subsystem_get_qpairs", NqnParams, get_qpairs);
    method!("nvmf_subsystem_get_listeners", NqnParams, get_listeners);
    method!("nvmf_get_stats", TargetFilter, get_stats);
    let mem_target = target.clone();
    registry.method_without_params("mem_get_stats", StateMask::RUNTIME, move |ctx, responder| {
        mem_get_stats(ctx, &mem_target, responder)
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFilter {
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    trtype: Option<String>,
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

fn subsystem(target: &NvmfTarget, nqn: &str) -> Result<Arc<Subsystem>, RpcError> {
    let nqn = if nqn == "discovery" { DISCOVERY_NQN } else { nqn };
    target.find_subsystem(nqn).ok_or_else(|| invalid(format!("Unable to find subsystem with NQN {nqn}")))
}

fn nvme_subsystem(target: &NvmfTarget, nqn: &str) -> Result<Arc<Subsystem>, RpcError> {
    let found = subsystem(target, nqn)?;
    if found.kind == SubsystemKind::Discovery {
        return Err(invalid("the discovery subsystem has no namespaces or hosts"));
    }
    Ok(found)
}

/// Decoded relaxed, as SPDK does: rpc.py sends other transports' keys, and each transport
/// reads its own from the same parameters.
fn create_transport(ctx: &mut ThreadCtx, target: &NvmfTarget, params: Value, responder: Responder) {
    let Some(trtype) = params.get("trtype").and_then(Value::as_str) else {
        return responder.err(invalid("trtype is required (e.g. \"TCP\")"));
    };
    let poll_groups = ctx.app().options().cpumask.cores().count().max(1);
    match target.create_transport(trtype, &params, poll_groups) {
        Ok(_) => responder.ok_true(),
        Err(why) if why.contains("already exists") => responder.err(RpcError::exists(why)),
        Err(why) => responder.err(invalid(why)),
    }
}

fn get_transports(_: &mut ThreadCtx, target: &NvmfTarget, params: TargetFilter, responder: Responder) {
    let _ = params.tgt_name;
    let transports: Vec<Value> = target
        .transports()
        .iter()
        .filter(|transport| {
            params.trtype.as_deref().is_none_or(|trtype| trtype.eq_ignore_ascii_case(transport.trtype()))
        })
        .map(|transport| transport.to_json())
        .collect();
    responder.ok(transports);
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
    dmrsl: u32,
    #[serde(default)]
    wzsl: u32,
    #[serde(default)]
    passthrough: bool,
    #[serde(default)]
    enable_nssr: bool,
    #[serde(default)]
    max_discard_size_kib: u64,
    #[serde(default)]
    max_write_zeroes_size_kib: u64,
}

fn create_subsystem(_: &mut ThreadCtx, target: &NvmfTarget, params: CreateSubsystem, responder: Responder) {
    let _ = (
        params.tgt_name,
        params.admin_label,
        params.dmrsl,
        params.wzsl,
        params.max_discard_size_kib,
        params.max_write_zeroes_size_kib,
    );
    let result = (|| {
        validate_nqn(&params.nqn).map_err(|why| invalid(format!("Invalid NQN: {why}")))?;
        if params.ana_reporting || params.passthrough || params.enable_nssr {
            return Err(invalid("ana_reporting, passthrough and enable_nssr are not supported; leave them false"));
        }
        if let Some(serial) = &params.serial_number {
            validate_ascii("serial_number", serial, SERIAL_MAX_BYTES).map_err(invalid)?;
        }
        if let Some(model) = &params.model_number {
            validate_ascii("model_number", model, MODEL_MAX_BYTES).map_err(invalid)?;
        }
        let min = params.min_cntlid.unwrap_or(MIN_CNTLID);
        let max = params.max_cntlid.unwrap_or(MAX_CNTLID);
        if min < MIN_CNTLID || max > MAX_CNTLID || min > max {
            return Err(invalid(format!("cntlid range {min}-{max} must lie within {MIN_CNTLID}-{MAX_CNTLID}")));
        }
        if target.find_subsystem(&params.nqn).is_some() {
            return Err(RpcError::exists(format!("Subsystem NQN {} already exists", params.nqn)));
        }
        if target.subsystems().len() >= DEFAULT_MAX_SUBSYSTEMS {
            return Err(invalid(format!("the target already has the maximum of {DEFAULT_MAX_SUBSYSTEMS} subsystems")));
        }
        let subsystem = target.add_subsystem(&params.nqn, SubsystemKind::Nvme);
        let mut state = subsystem.state.lock();
        if let Some(serial) = params.serial_number {
            state.serial = serial;
        }
        if let Some(model) = params.model_number {
            state.model = model;
        }
        if params.max_namespaces > 0 {
            state.max_namespaces = params.max_namespaces;
        }
        state.allow_any_host = params.allow_any_host;
        state.min_cntlid = min;
        state.max_cntlid = max;
        Ok(())
    })();
    announce(target, result, responder);
}

fn delete_subsystem(ctx: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    let _ = params.tgt_name;
    let found = match nvme_subsystem(target, &params.nqn) {
        Ok(found) => found,
        Err(err) => return responder.err(err),
    };
    target.0.subsystems.lock().retain(|other| !Arc::ptr_eq(other, &found));
    let controllers: Vec<_> = found.state.lock().controllers.values().cloned().collect();
    for controller in controllers {
        target.disconnect_controller(&controller);
    }
    let addresses: Vec<SocketAddr> = {
        let mut state = found.state.lock();
        state.namespaces.clear();
        state.listeners.drain(..).map(|listener| listener.addr).collect()
    };
    for addr in addresses {
        release_listener(ctx, target, addr);
    }
    let id = found.id;
    for group in target.0.poll_groups.lock().clone() {
        let target_for_group = target.clone();
        let _ = ctx.send_to(&group, move |ctx| {
            poll_group::with(&target_for_group, ctx, |group, _| group.forget_subsystem(id))
        });
    }
    target.discovery_changed();
    responder.ok_true();
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenAddressParams {
    trtype: String,
    #[serde(default)]
    adrfam: Option<String>,
    traddr: String,
    #[serde(default)]
    trsvcid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerParams {
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

fn parse_address(target: &NvmfTarget, address: &ListenAddressParams) -> Result<SocketAddr, RpcError> {
    if !target.transport_types().iter().any(|known| known.eq_ignore_ascii_case(&address.trtype)) {
        return Err(invalid(format!(
            "trtype '{}' is not supported; use one of {:?}",
            address.trtype,
            target.transport_types()
        )));
    }
    let ip: IpAddr =
        address.traddr.parse().map_err(|_| invalid(format!("traddr '{}' is not an IP address", address.traddr)))?;
    if let Some(adrfam) = &address.adrfam {
        let matches = match adrfam.to_ascii_lowercase().as_str() {
            "ipv4" => ip.is_ipv4(),
            "ipv6" => ip.is_ipv6(),
            _ => return Err(invalid(format!("adrfam '{adrfam}' is not supported; use IPv4 or IPv6"))),
        };
        if !matches {
            return Err(invalid(format!("traddr '{}' is not an {adrfam} address", address.traddr)));
        }
    }
    let port = match &address.trsvcid {
        Some(port) => port.parse::<u16>().map_err(|_| invalid(format!("trsvcid '{port}' is not a port number")))?,
        None => DEFAULT_TRSVCID,
    };
    Ok(SocketAddr::new(ip, port))
}

fn add_listener(ctx: &mut ThreadCtx, target: &NvmfTarget, params: ListenerParams, responder: Responder) {
    let _ = (params.tgt_name, params.ana_state, params.sock_impl, params.numa_id);
    let result = (|| {
        if params.secure_channel {
            return Err(invalid("secure_channel (TLS) is not supported yet"));
        }
        let found = subsystem(target, &params.nqn)?;
        let addr = parse_address(target, &params.listen_address)?;
        let trtype = &params.listen_address.trtype;
        let Some(transport) = target.transport(trtype) else {
            return Err(invalid(format!(
                "Unable to find {} transport: call nvmf_create_transport first",
                trtype.to_uppercase()
            )));
        };
        if found.state.lock().listeners.iter().any(|listener| listener.addr == addr) {
            return Err(RpcError::exists(format!("{} already listens on {addr}", found.nqn)));
        }
        if !target.is_listening(transport.trtype(), addr) {
            let listener = transport
                .listen(ctx, target, addr)
                .map_err(|why| RpcError::errno(nix::errno::Errno::EADDRINUSE, why))?;
            target.0.listeners.lock().push((transport.trtype(), listener));
        }
        found.state.lock().listeners.push(ListenAddress { addr });
        Ok(())
    })();
    announce(target, result, responder);
}

/// Closes the socket of `addr` once no subsystem lists it.
fn release_listener(ctx: &mut ThreadCtx, target: &NvmfTarget, addr: SocketAddr) {
    let still_used =
        target.subsystems().iter().any(|subsystem| subsystem.state.lock().listeners.iter().any(|l| l.addr == addr));
    if still_used {
        return;
    }
    let mut listeners = target.0.listeners.lock();
    if let Some(position) = listeners.iter().position(|(_, listener)| listener.addr() == addr) {
        let (_, listener) = listeners.swap_remove(position);
        drop(listeners);
        listener.stop(ctx);
    }
}

fn remove_listener(ctx: &mut ThreadCtx, target: &NvmfTarget, params: ListenerParams, responder: Responder) {
    let result = (|| {
        let found = subsystem(target, &params.nqn)?;
        let addr = parse_address(target, &params.listen_address)?;
        let mut state = found.state.lock();
        let before = state.listeners.len();
        state.listeners.retain(|listener| listener.addr != addr);
        if state.listeners.len() == before {
            return Err(RpcError::no_such_device(format!("{} does not listen on {addr}", found.nqn)));
        }
        Ok(addr)
    })();
    match result {
        Ok(addr) => {
            release_listener(ctx, target, addr);
            target.discovery_changed();
            responder.ok_true()
        }
        Err(err) => responder.err(err),
    }
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
        return Err(invalid(format!("{field} '{text}' must be {} hex digits", N * 2)));
    }
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[index * 2..index * 2 + 2], 16)
            .map_err(|_| invalid(format!("{field} '{text}' is not hex")))?;
    }
    Ok(bytes)
}

fn add_ns(ctx: &mut ThreadCtx, target: &NvmfTarget, params: AddNs, responder: Responder) {
    let _ = params.tgt_name;
    let spec = params.namespace;
    let _ = (spec.ptpl_file, spec.anagrpid, spec.hide_metadata);
    let result = (|| {
        if spec.no_auto_visible {
            return Err(invalid("no_auto_visible (namespace masking) is not supported yet"));
        }
        let found = nvme_subsystem(target, &params.nqn)?;
        let bdev = target.0.bdevs.get(&spec.bdev_name).map_err(RpcError::from)?;
        let p2pmem = spec.p2pmem.unwrap_or_else(|| "off".into());
        // Data may live in a provider only if the bdev can DMA from it directly.
        let provider = match p2pmem.as_str() {
            "off" => None,
            "auto" => match bdev.p2p_provider() {
                Some(provider) if bdev.accepts_domain(provider.domain()) => Some(provider),
                _ => {
                    let why =
                        format!("bdev '{}' has no P2P memory it can DMA from; p2pmem must be \"off\"", spec.bdev_name);
                    return Err(invalid(why));
                }
            },
            name => match bdev.p2p_provider() {
                Some(provider) if provider.name() == name && bdev.accepts_domain(provider.domain()) => Some(provider),
                _ => return Err(invalid(format!("bdev '{}' cannot DMA from P2P provider '{name}'", spec.bdev_name))),
            },
        };
        let uuid = match &spec.uuid {
            Some(text) => parse_hex::<16>("uuid", text)?,
            None => bdev.info().uuid.0,
        };
        let nguid = match &spec.nguid {
            Some(text) => parse_hex::<16>("nguid", text)?,
            None => uuid,
        };
        let eui64 = match &spec.eui64 {
            Some(text) => parse_hex::<8>("eui64", text)?,
            None => [0; 8],
        };
        let mut state = found.state.lock();
        let nsid = match spec.nsid {
            Some(0) | None => Subsystem::free_nsid(&state).ok_or_else(|| {
                invalid(format!("{} has no free NSID (max_namespaces {})", found.nqn, state.max_namespaces))
            })?,
            Some(nsid) if nsid > state.max_namespaces => {
                return Err(invalid(format!(
                    "NSID {nsid} exceeds max_namespaces {} of {}",
                    state.max_namespaces, found.nqn
                )));
            }
            Some(nsid) if state.namespaces.contains_key(&nsid) => {
                return Err(RpcError::exists(format!("NSID {nsid} is already in use")))
            }
            Some(nsid) => nsid,
        };
        // Removing the namespace when its bdev goes keeps hosts from I/O to nothing.
        let (weak_target, nqn) = (target.clone(), found.nqn.clone());
        let on_remove: peerless_bdev::manager::RemoveCallback = Box::new(move |ctx: &mut ThreadCtx| {
            if let Some(subsystem) = weak_target.find_subsystem(&nqn) {
                let removed = subsystem.state.lock().namespaces.remove(&nsid);
                if removed.is_some() {
                    peerless_core::log_notice!("namespace {nsid} of {nqn} removed: its bdev went away");
                    weak_target.namespace_changed(ctx, &subsystem, nsid);
                }
            }
        });
        let desc =
            target.0.bdevs.open(&spec.bdev_name, true, Some(ctx.handle()), Some(on_remove)).map_err(RpcError::from)?;
        desc.claim(ClaimType::ExclusiveWrite, NS_CLAIMANT).map_err(RpcError::from)?;
        let ns = Namespace {
            nsid,
            bdev_name: bdev.info().name.clone(),
            desc: Arc::new(desc),
            nguid,
            eui64,
            uuid,
            p2pmem,
            provider,
        };
        state.namespaces.insert(nsid, Arc::new(ns));
        drop(state);
        Ok((found, nsid))
    })();
    match result {
        Ok((found, nsid)) => {
            target.namespace_changed(ctx, &found, nsid);
            responder.ok(nsid)
        }
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
    let _ = params.tgt_name;
    let found = match nvme_subsystem(target, &params.nqn) {
        Ok(found) => found,
        Err(err) => return responder.err(err),
    };
    let removed = found.state.lock().namespaces.remove(&params.nsid);
    if removed.is_none() {
        return responder.err(invalid(format!("Invalid parameters: {} has no namespace {}", found.nqn, params.nsid)));
    }
    target.namespace_changed(ctx, &found, params.nsid);
    responder.ok_true();
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostParams {
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
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn add_host(_: &mut ThreadCtx, target: &NvmfTarget, params: HostParams, responder: Responder) {
    let _ = (params.tgt_name, params.timeout_ms);
    let result = (|| {
        if params.psk.is_some() || params.dhchap_key.is_some() || params.dhchap_ctrlr_key.is_some() {
            return Err(invalid("psk and DH-HMAC-CHAP keys are not supported yet"));
        }
        validate_nqn(&params.host).map_err(|why| invalid(format!("Invalid host NQN: {why}")))?;
        let found = nvme_subsystem(target, &params.nqn)?;
        let mut state = found.state.lock();
        if state.hosts.contains(&params.host) {
            return Err(RpcError::exists(format!("host {} is already allowed on {}", params.host, found.nqn)));
        }
        state.hosts.push(params.host);
        Ok(())
    })();
    announce(target, result, responder);
}

fn remove_host(_: &mut ThreadCtx, target: &NvmfTarget, params: HostParams, responder: Responder) {
    let result = (|| {
        let found = nvme_subsystem(target, &params.nqn)?;
        let mut state = found.state.lock();
        let before = state.hosts.len();
        state.hosts.retain(|host| *host != params.host);
        if state.hosts.len() == before {
            return Err(RpcError::no_such_device(format!("host {} is not allowed on {}", params.host, found.nqn)));
        }
        // A host that may no longer connect loses the controllers it has.
        let gone: Vec<_> =
            state.controllers.values().filter(|c| c.hostnqn == params.host && !state.allow_any_host).cloned().collect();
        drop(state);
        for controller in gone {
            target.disconnect_controller(&controller);
        }
        Ok(())
    })();
    announce(target, result, responder);
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
    let _ = params.tgt_name;
    match nvme_subsystem(target, &params.nqn) {
        Ok(found) => {
            found.state.lock().allow_any_host = params.allow_any_host;
            target.discovery_changed();
            responder.ok_true()
        }
        Err(err) => responder.err(err),
    }
}

pub fn subsystem_json(subsystem: &Subsystem) -> Value {
    let state = subsystem.state.lock();
    let listen: Vec<Value> = state.listeners.iter().map(ListenAddress::to_json).collect();
    let hosts: Vec<Value> = state.hosts.iter().map(|host| json!({"nqn": host})).collect();
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
                    "nguid": hex(&ns.nguid), "uuid": peerless_bdev::Uuid(ns.uuid).to_string(), "p2pmem": ns.p2pmem});
                // As SPDK: an EUI-64 is listed only when one was given.
                if ns.eui64 != [0; 8] {
                    entry.as_object_mut().expect("built as an object").insert("eui64".into(), json!(hex(&ns.eui64)));
                }
                entry
            })
            .collect();
        map.insert("serial_number".into(), json!(state.serial));
        map.insert("model_number".into(), json!(state.model));
        map.insert("max_namespaces".into(), json!(state.max_namespaces));
        map.insert("min_cntlid".into(), json!(state.min_cntlid));
        map.insert("max_cntlid".into(), json!(state.max_cntlid));
        map.insert("namespaces".into(), Value::Array(namespaces));
    }
    object
}

fn get_subsystems(_: &mut ThreadCtx, target: &NvmfTarget, params: OptionalNqn, responder: Responder) {
    let _ = params.tgt_name;
    match params.nqn {
        Some(nqn) => match subsystem(target, &nqn) {
            Ok(found) => responder.ok(vec![subsystem_json(&found)]),
            Err(err) => responder.err(err),
        },
        None => responder.ok(target.subsystems().iter().map(|subsystem| subsystem_json(subsystem)).collect::<Vec<_>>()),
    }
}

fn get_controllers(_: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    match subsystem(target, &params.nqn) {
        Ok(found) => {
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
        Err(err) => responder.err(err),
    }
}

/// Visits every poll group thread in turn, collecting what `visit` returns.
pub(crate) fn gather<T: Send + 'static>(
    ctx: &mut ThreadCtx,
    target: &NvmfTarget,
    visit: impl Fn(&mut poll_group::PollGroup, &ThreadCtx) -> T + Send + Sync + 'static,
    done: impl FnOnce(&mut ThreadCtx, Vec<(String, T)>) + Send + 'static,
) {
    let collected: Arc<Mutex<Vec<(String, T)>>> = Arc::default();
    let sink = collected.clone();
    let target_for_visit = target.clone();
    let groups: Vec<u64> = target.0.poll_groups.lock().iter().map(|group| group.id().0).collect();
    ctx.app().for_each_thread(
        ctx,
        move |ctx| {
            if groups.contains(&ctx.id().0) {
                let name = ctx.name().to_string();
                let value = poll_group::with(&target_for_visit, ctx, |group, ctx| visit(group, ctx));
                sink.lock().push((name, value));
            }
        },
        move |ctx| {
            let mut results = std::mem::take(&mut *collected.lock());
            results.sort_by(|a, b| a.0.cmp(&b.0));
            done(ctx, results)
        },
    );
}

fn get_qpairs(ctx: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    let found = match subsystem(target, &params.nqn) {
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
                    qpairs.push(json!({"cntlid": row.cntlid, "qid": row.qid, "state": row.state, "thread": thread,
                        "hostnqn": hostnqn, "trtype": row.trtype,
                        "listen_address": ListenAddress { addr: row.local }.to_json(),
                        "peer_address": ListenAddress { addr: row.peer }.to_json()}));
                }
            }
            responder.ok(qpairs)
        },
    );
}

fn get_listeners(_: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    match subsystem(target, &params.nqn) {
        Ok(found) => {
            let listeners: Vec<Value> =
                found.state.lock().listeners.iter().map(|listener| json!({"address": listener.to_json()})).collect();
            responder.ok(listeners)
        }
        Err(err) => responder.err(err),
    }
}

fn get_stats(ctx: &mut ThreadCtx, target: &NvmfTarget, params: TargetFilter, responder: Responder) {
    let _ = (params.tgt_name, params.trtype);
    let trtypes: Vec<Value> =
        target.transports().iter().map(|transport| json!({"trtype": transport.trtype()})).collect();
    gather(
        ctx,
        target,
        |group, _| group.stats(),
        move |_, groups| {
            let poll_groups: Vec<Value> = groups
                .iter()
                .map(|(name, stats): &(String, PollGroupStats)| {
                    json!({"name": name, "admin_qpairs": stats.admin_qpairs, "io_qpairs": stats.io_qpairs,
                        "current_admin_qpairs": stats.current_admin_qpairs, "current_io_qpairs": stats.current_io_qpairs,
                        "current_unassociated_qpairs": stats.current_unassociated_qpairs,
                        "pending_bdev_io": stats.pending_bdev_io, "completed_nvme_io": stats.completed_nvme_io,
                        "pending_buffer_waits": stats.buffer_waits, "transports": trtypes})
                })
                .collect();
            let _ = poll_group_name;
            responder.ok(json!({"tick_rate": TICK_RATE_HZ, "poll_groups": poll_groups}))
        },
    );
}

/// `mem_get_stats`: where payload went and what the CPU touched (issue 7's contract):
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
        |group, _| group.stats(),
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
            }))
        },
    );
}
