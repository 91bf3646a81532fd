//! The target's shared state and the `nvmf` framework subsystem: poll groups (one
//! lightweight thread per reactor), subsystems including discovery, the transport's
//! options and listeners, and the fan-out of changes to every poll group by message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use peerless_bdev::BdevManager;
use peerless_core::reactor::{AppHandle, FiniDone, InitDone, IoDevice, ThreadCtx, ThreadHandle};
use serde_json::{json, Value};

use super::auth::limiter::AuthLimiter;
use super::auth::AuthConfig;
use super::ctrlr::{event, Controller, EVENT_TYPE_NOTICE, NOTICE_DISCOVERY_CHANGED, NOTICE_NAMESPACE_CHANGED};
use super::error::{NvmfError, TARGET_NAME};
use super::poll_group::{self, PollGroup};
use super::refusals::ConnectRefusals;
use super::subsystem::{Subsystem, SubsystemConfig, SubsystemKind, DISCOVERY_NQN};
use super::transport::{SockImpl, Transport, TransportFactory, TransportListener};
use crate::nvme::log::lid;

/// SPDK's default limit on subsystems (SPDK_NVMF_DEFAULT_MAX_SUBSYSTEMS).
pub const DEFAULT_MAX_SUBSYSTEMS: usize = 1024;

pub struct TargetShared {
    pub app: AppHandle,
    pub bdevs: BdevManager,
    pub subsystems: Mutex<Vec<Arc<Subsystem>>>,
    next_subsystem_id: AtomicU32,
    /// Transport types this target can create, by SPDK's upper-case name.
    transport_types: Mutex<Vec<(&'static str, TransportFactory)>>,
    pub transports: Mutex<Vec<Arc<dyn Transport>>>,
    pub listeners: Mutex<Vec<(&'static str, Box<dyn TransportListener>)>>,
    pub poll_groups: Mutex<Vec<ThreadHandle>>,
    pub pg_device: IoDevice<PollGroup>,
    discovery_generation: AtomicU64,
    next_poll_group: AtomicUsize,
    next_conn_id: AtomicU64,
    pub connect_refusals: ConnectRefusals,
    /// The digests and DH groups authentication may use (`nvmf_set_config`).
    pub auth_config: Mutex<AuthConfig>,
    pub auth_limiter: AuthLimiter,
    /// The next DH-HMAC-CHAP challenge's sequence number (NVMe Base 2.0, 8.13.5.2:
    /// unique per challenge; starts at a random value).
    auth_seqnum: AtomicU32,
}

/// A handle on the target, shared by RPC handlers, listeners and poll groups.
#[derive(Clone)]
pub struct NvmfTarget(pub Arc<TargetShared>);

impl NvmfTarget {
    pub fn new(app: AppHandle, bdevs: BdevManager) -> NvmfTarget {
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<TargetShared>| {
            let target = weak.clone();
            TargetShared {
                app,
                bdevs,
                subsystems: Mutex::new(Vec::new()),
                next_subsystem_id: AtomicU32::new(0),
                transport_types: Mutex::new(Vec::new()),
                transports: Mutex::new(Vec::new()),
                listeners: Mutex::new(Vec::new()),
                poll_groups: Mutex::new(Vec::new()),
                pg_device: IoDevice::new("nvmf_tgt", move |ctx| PollGroup::new(target.clone(), ctx)),
                discovery_generation: AtomicU64::new(1),
                next_poll_group: AtomicUsize::new(0),
                next_conn_id: AtomicU64::new(1),
                connect_refusals: ConnectRefusals::default(),
                auth_config: Mutex::new(AuthConfig::default()),
                auth_limiter: AuthLimiter::default(),
                auth_seqnum: AtomicU32::new(random_seqnum()),
            }
        });
        let target = NvmfTarget(shared);
        target.add_subsystem(DISCOVERY_NQN, SubsystemKind::Discovery);
        target
    }

    /// A fresh, non-zero challenge sequence number.
    pub fn next_auth_seqnum(&self) -> u32 {
        loop {
            let seqnum = self.0.auth_seqnum.fetch_add(1, Ordering::Relaxed);
            if seqnum != 0 {
                return seqnum;
            }
        }
    }

    pub fn add_subsystem(&self, nqn: &str, kind: SubsystemKind) -> Arc<Subsystem> {
        let id = self.0.next_subsystem_id.fetch_add(1, Ordering::Relaxed);
        let subsystem = Arc::new(Subsystem::new(id, nqn, kind));
        self.0.subsystems.lock().push(subsystem.clone());
        subsystem
    }

    pub fn find_subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.0.subsystems.lock().iter().find(|subsystem| subsystem.nqn == nqn).cloned()
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.0.subsystems.lock().clone()
    }

    /// Checks an RPC's `tgt_name`: there is one target, and absent names it.
    pub fn check_name(tgt_name: Option<&str>) -> Result<(), NvmfError> {
        match tgt_name {
            None | Some(TARGET_NAME) => Ok(()),
            Some(other) => Err(NvmfError::NoSuchTarget(other.to_string())),
        }
    }

    /// The subsystem `nqn` names; "discovery" names the discovery subsystem, as in SPDK.
    pub fn lookup(&self, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        let nqn = if nqn == "discovery" { DISCOVERY_NQN } else { nqn };
        self.find_subsystem(nqn).ok_or_else(|| NvmfError::NoSuchSubsystem(nqn.to_string()))
    }

    /// The NVM subsystem `nqn` names, for an operation on its `what` (namespaces, hosts)
    /// that the discovery subsystem does not have.
    pub fn nvm_subsystem(&self, nqn: &str, what: &'static str) -> Result<Arc<Subsystem>, NvmfError> {
        let found = self.lookup(nqn)?;
        if !found.kind.is_nvme() {
            return Err(NvmfError::Discovery(what));
        }
        Ok(found)
    }

    /// Creates an NVM subsystem; discovery controllers hear of it.
    pub fn create_subsystem(&self, config: &SubsystemConfig) -> Result<Arc<Subsystem>, NvmfError> {
        config.validate()?;
        let subsystem = {
            // One lock across the checks and the insert, so two creations cannot both pass.
            let mut subsystems = self.0.subsystems.lock();
            if subsystems.iter().any(|subsystem| subsystem.nqn == config.nqn) {
                return Err(NvmfError::SubsystemExists(config.nqn.clone()));
            }
            // The discovery subsystem counts, as its SPDK ID does.
            if subsystems.len() >= DEFAULT_MAX_SUBSYSTEMS {
                return Err(NvmfError::TooManySubsystems(DEFAULT_MAX_SUBSYSTEMS));
            }
            let id = self.0.next_subsystem_id.fetch_add(1, Ordering::Relaxed);
            let subsystem = Arc::new(Subsystem::new(id, &config.nqn, SubsystemKind::Nvme));
            subsystem.configure(config);
            subsystems.push(subsystem.clone());
            subsystem
        };
        self.discovery_changed();
        Ok(subsystem)
    }

    /// Deletes an NVM subsystem: its hosts are disconnected, its namespaces released,
    /// listeners no other subsystem uses closed, and every poll group forgets it.
    pub fn delete_subsystem(&self, ctx: &mut ThreadCtx, nqn: &str) -> Result<(), NvmfError> {
        let found = self.nvm_subsystem(nqn, "deletion")?;
        self.0.subsystems.lock().retain(|other| !Arc::ptr_eq(other, &found));
        let controllers: Vec<Arc<Controller>> = found.state.lock().controllers.values().cloned().collect();
        for controller in controllers {
            self.disconnect_controller(&controller);
        }
        let addresses: Vec<(&'static str, SocketAddr)> = {
            let mut state = found.state.lock();
            state.namespaces.clear();
            state.listeners.drain(..).map(|listener| (listener.trtype, listener.addr)).collect()
        };
        for (trtype, addr) in addresses {
            self.release_listener(ctx, trtype, addr);
        }
        let id = found.id;
        for group in self.0.poll_groups.lock().clone() {
            let target = self.clone();
            let _ =
                ctx.send_to(&group, move |ctx| poll_group::with(&target, ctx, |group, _| group.forget_subsystem(id)));
        }
        self.discovery_changed();
        Ok(())
    }

    /// Makes a transport type available to `nvmf_create_transport`.
    pub fn register_transport_type(&self, trtype: &'static str, factory: TransportFactory) {
        self.0.transport_types.lock().push((trtype, factory));
    }

    /// The transport types this target knows, for messages.
    pub fn transport_types(&self) -> Vec<&'static str> {
        self.0.transport_types.lock().iter().map(|(name, _)| *name).collect()
    }

    /// Creates a transport of `trtype` from `nvmf_create_transport`'s parameters.
    pub fn create_transport(
        &self,
        trtype: &str,
        params: &serde_json::Value,
        poll_groups: usize,
    ) -> Result<Arc<dyn Transport>, String> {
        let factory =
            self.0.transport_types.lock().iter().find(|(name, _)| name.eq_ignore_ascii_case(trtype)).map(|(_, f)| *f);
        let Some(factory) = factory else {
            return Err(format!("transport type '{trtype}' is not supported; use one of {:?}", self.transport_types()));
        };
        let mut transports = self.0.transports.lock();
        if transports.iter().any(|transport| transport.trtype().eq_ignore_ascii_case(trtype)) {
            return Err(format!("Transport type '{}' already exists", trtype.to_uppercase()));
        }
        let transport = factory(params, poll_groups)?;
        transports.push(transport.clone());
        Ok(transport)
    }

    pub fn transport(&self, trtype: &str) -> Option<Arc<dyn Transport>> {
        self.0.transports.lock().iter().find(|transport| transport.trtype().eq_ignore_ascii_case(trtype)).cloned()
    }

    pub fn transports(&self) -> Vec<Arc<dyn Transport>> {
        self.0.transports.lock().clone()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.0.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Round-robin over poll groups, as SPDK places a new qpair without a hint.
    pub fn pick_poll_group(&self) -> Option<ThreadHandle> {
        let groups = self.0.poll_groups.lock();
        if groups.is_empty() {
            return None;
        }
        let index = self.0.next_poll_group.fetch_add(1, Ordering::Relaxed) % groups.len();
        Some(groups[index].clone())
    }

    pub fn discovery_generation(&self) -> u64 {
        self.0.discovery_generation.load(Ordering::Acquire)
    }

    /// Something the discovery log shows changed: bump its generation and tell every
    /// discovery controller that asked for the notice.
    pub fn discovery_changed(&self) {
        self.0.discovery_generation.fetch_add(1, Ordering::AcqRel);
        if let Some(discovery) = self.find_subsystem(DISCOVERY_NQN) {
            let controllers: Vec<Arc<Controller>> = discovery.state.lock().controllers.values().cloned().collect();
            for controller in controllers {
                self.post_event(&controller, event(EVENT_TYPE_NOTICE, NOTICE_DISCOVERY_CHANGED, lid::DISCOVERY), None);
            }
        }
    }

    /// A namespace of `subsystem` appeared or went: each poll group forgets its cached
    /// view (the next I/O looks it up again), and every controller gets the notice.
    pub fn namespace_changed(&self, ctx: &mut ThreadCtx, subsystem: &Arc<Subsystem>, nsid: u32) {
        let subsystem_id = subsystem.id;
        for group in self.0.poll_groups.lock().clone() {
            let target = self.clone();
            let _ = ctx.send_to(&group, move |ctx| {
                poll_group::with(&target, ctx, |group, _| group.forget_namespace(subsystem_id, nsid));
            });
        }
        let controllers: Vec<Arc<Controller>> = subsystem.state.lock().controllers.values().cloned().collect();
        for controller in controllers {
            self.post_event(
                &controller,
                event(EVENT_TYPE_NOTICE, NOTICE_NAMESPACE_CHANGED, lid::CHANGED_NAMESPACES),
                Some(nsid),
            );
        }
    }

    /// Delivers an asynchronous event to the thread of the controller's admin queue.
    pub fn post_event(&self, controller: &Arc<Controller>, dw0: u32, changed_nsid: Option<u32>) {
        let Some(admin) = controller.admin() else { return };
        let target = self.clone();
        let cntlid = controller.cntlid;
        let _ = admin.thread.send(move |ctx| {
            poll_group::with(&target, ctx, |group, _| group.deliver_event(admin.conn_id, cntlid, dw0, changed_nsid));
        });
    }

    /// Ends every connection of a controller (host removed, subsystem deleted).
    pub fn disconnect_controller(&self, controller: &Arc<Controller>) {
        controller.fail();
        for qpair in controller.qpairs.lock().clone() {
            let target = self.clone();
            let _ = qpair.thread.send(move |ctx| {
                poll_group::with(&target, ctx, |group, _| {
                    group.close_qpair(qpair.conn_id, "its controller was torn down")
                });
            });
        }
    }

    /// A controller reset (CC.EN 1 -> 0) deletes its I/O queues (NVMe Base 2.0, 3.7.2):
    /// each is closed on its own thread, and its QID is free to connect again at once.
    pub fn reset_io_queues(&self, controller: &Arc<Controller>) {
        let io_qpairs: Vec<_> = {
            let mut qpairs = controller.qpairs.lock();
            let (io, admin): (Vec<_>, Vec<_>) = qpairs.drain(..).partition(|qpair| qpair.qid > 0);
            *qpairs = admin;
            io
        };
        for qpair in io_qpairs {
            let target = self.clone();
            let _ = qpair.thread.send(move |ctx| {
                poll_group::with(&target, ctx, |group, _| group.close_qpair(qpair.conn_id, "its controller was reset"));
            });
        }
    }

    /// Whether `addr` is a listener of any subsystem (or the discovery one).
    pub fn is_listening(&self, trtype: &str, addr: SocketAddr) -> bool {
        self.listening_sock_impl(trtype, addr).is_some()
    }

    /// How the transport's listener at `addr` watches its sockets, if there is one.
    pub fn listening_sock_impl(&self, trtype: &str, addr: SocketAddr) -> Option<SockImpl> {
        self.0
            .listeners
            .lock()
            .iter()
            .find(|(kind, listener)| kind.eq_ignore_ascii_case(trtype) && listener.addr() == addr)
            .map(|(_, listener)| listener.sock_impl())
    }

    /// Whether the transport's socket at `addr` is a secure (TLS) one; None when none listens there.
    pub fn listening_secure(&self, trtype: &str, addr: SocketAddr) -> Option<bool> {
        self.0
            .listeners
            .lock()
            .iter()
            .find(|(kind, listener)| kind.eq_ignore_ascii_case(trtype) && listener.addr() == addr)
            .map(|(_, listener)| listener.secure())
    }
}

/// The `nvmf` framework subsystem.
pub struct NvmfSubsystem {
    pub target: NvmfTarget,
}

/// Poll group threads are named as SPDK names them (nvmf_get_stats shows the names).
pub fn poll_group_name(index: usize) -> String {
    format!("nvmf_tgt_poll_group_{index:03}")
}

impl peerless_core::reactor::Subsystem for NvmfSubsystem {
    fn name(&self) -> &'static str {
        "nvmf"
    }

    fn depends_on(&self) -> &'static [&'static str] {
        &["bdev"]
    }

    fn init(&self, ctx: &mut ThreadCtx, done: InitDone) {
        let app = ctx.app();
        let mut groups = Vec::new();
        for (index, core) in app.options().cpumask.cores().enumerate() {
            match app.spawn_thread(&poll_group_name(index), Some(core)) {
                Ok(thread) => groups.push(thread),
                Err(err) => return done(ctx, Err(format!("cannot start poll group on core {core}: {err}"))),
            }
        }
        // Create each group's state on its own thread so its poller lives there.
        for group in &groups {
            let target = self.target.clone();
            let _ = ctx.send_to(group, move |ctx| poll_group::with(&target, ctx, |_, _| ()));
        }
        *self.target.0.poll_groups.lock() = groups;
        done(ctx, Ok(()));
    }

    fn fini(&self, ctx: &mut ThreadCtx, done: FiniDone) {
        // Stop accepting and end every connection; then wait, bounded, until their in-flight
        // I/O is back before the namespaces' bdevs are released: a connection dropped with
        // I/O the bdev layer still owns is a bug (and a panic in debug builds).
        for (_, listener) in std::mem::take(&mut *self.target.0.listeners.lock()) {
            listener.stop(ctx);
        }
        for subsystem in self.target.subsystems() {
            let controllers: Vec<Arc<Controller>> = subsystem.state.lock().controllers.values().cloned().collect();
            for controller in controllers {
                self.target.disconnect_controller(&controller);
            }
        }
        let target = self.target.clone();
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        poll_group::gather(
            ctx,
            &self.target,
            |group, _| group.close_all("the target is shutting down"),
            move |ctx, _| wait_drained(ctx, target, deadline, done),
        );
    }

    fn config(&self, _ctx: &mut ThreadCtx) -> Vec<Value> {
        let mut entries = Vec::new();
        let auth = self.target.0.auth_config.lock().clone();
        if auth != AuthConfig::default() {
            entries.push(json!({"method": "nvmf_set_config", "params": {
                "dhchap_digests": auth.digests.iter().map(|d| d.name()).collect::<Vec<_>>(),
                "dhchap_dhgroups": auth.dhgroups.iter().map(|g| g.name()).collect::<Vec<_>>()}}));
        }
        for transport in self.target.transports() {
            entries.push(json!({"method": "nvmf_create_transport", "params": transport.to_json()}));
        }
        for subsystem in self.target.subsystems() {
            let state = subsystem.state.lock();
            if subsystem.kind == SubsystemKind::Discovery {
                for listener in &state.listeners {
                    entries.push(json!({"method": "nvmf_subsystem_add_listener", "params": {
                        "nqn": "discovery", "listen_address": listener.to_json()}}));
                }
                continue;
            }
            let mut create = json!({
                "nqn": subsystem.nqn, "serial_number": state.serial, "model_number": state.model,
                "allow_any_host": state.allow_any_host, "max_namespaces": state.max_namespaces,
                "min_cntlid": state.min_cntlid, "max_cntlid": state.max_cntlid,
                "dmrsl": state.limits.dmrsl, "wzsl": state.limits.wzsl, "ana_reporting": state.ana_reporting});
            if let Some(label) = &state.admin_label {
                create["admin_label"] = json!(label);
            }
            entries.push(json!({"method": "nvmf_create_subsystem", "params": create}));
            for host in &state.hosts {
                let mut params = json!({"nqn": subsystem.nqn, "host": host});
                // Key names only: the keyring subsystem, saved before this one, holds the files.
                if let Some(keys) = state.host_keys.get(host) {
                    if let Some(key) = &keys.dhchap_key {
                        params["dhchap_key"] = json!(key.name());
                    }
                    if let Some(key) = &keys.dhchap_ctrlr_key {
                        params["dhchap_ctrlr_key"] = json!(key.name());
                    }
                }
                if let Some(key) = state.host_psks.get(host) {
                    params["psk"] = json!(key.name());
                }
                entries.push(json!({"method": "nvmf_subsystem_add_host", "params": params}));
            }
            for ns in state.namespaces.values() {
                let mut namespace = json!({
                    "nsid": ns.nsid, "bdev_name": ns.bdev_name, "nguid": hex(&ns.nguid), "eui64": hex(&ns.eui64),
                    "uuid": peerless_bdev::Uuid(ns.uuid).to_string(), "p2pmem": ns.p2pmem.as_str()});
                if state.ana_reporting {
                    namespace["anagrpid"] = json!(ns.anagrpid);
                }
                entries.push(json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": subsystem.nqn,
                    "namespace": namespace}}));
            }
            for listener in &state.listeners {
                let mut params = json!({"nqn": subsystem.nqn, "listen_address": listener.to_json()});
                if let Some(SockImpl::Uring) = self.target.listening_sock_impl(listener.trtype, listener.addr) {
                    params["sock_impl"] = json!(SockImpl::Uring.as_str());
                }
                if listener.secure {
                    params["secure_channel"] = json!(true);
                }
                entries.push(json!({"method": "nvmf_subsystem_add_listener", "params": params}));
                // A listener starts optimized; each group set otherwise is set again.
                for (group, ana_state) in listener.ana.not_optimized() {
                    entries.push(json!({"method": "nvmf_subsystem_listener_set_ana_state", "params": {
                        "nqn": subsystem.nqn, "listen_address": listener.to_json(), "ana_state": ana_state.name(),
                        "anagrpid": group}}));
                }
            }
        }
        entries
    }
}

fn random_seqnum() -> u32 {
    let mut bytes = [0u8; 4];
    // A fixed start only makes sequence numbers guessable, not wrong.
    let _ = super::auth::crypto::random(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// How long shutdown waits for connections to get their in-flight I/O back.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Asks every poll group how many connections it still has until none is left (or the
/// deadline passes), then releases every namespace and finishes the subsystem.
fn wait_drained(ctx: &mut ThreadCtx, target: NvmfTarget, deadline: Instant, done: FiniDone) {
    let next = target.clone();
    poll_group::gather(
        ctx,
        &target,
        |group, _| group.connection_count(),
        move |ctx, counts| {
            let left: usize = counts.iter().map(|(_, count)| count).sum();
            if left > 0 && Instant::now() < deadline {
                return wait_drained(ctx, next, deadline, done);
            }
            if left > 0 {
                peerless_core::log_warn!("shutdown: {left} connection(s) still busy after {SHUTDOWN_DRAIN:?}");
            }
            report_buffers(&next);
            for subsystem in next.subsystems() {
                subsystem.state.lock().namespaces.clear();
            }
            done(ctx);
        },
    );
}

/// Says, once every connection is gone, whether each transport's data buffers all came
/// back: a command that kept one (a transport that lost track of a buffer its NIC may
/// still write) shows here rather than nowhere. Buffers in poll-group caches are free
/// too, so with caches the count is a bound.
fn report_buffers(target: &NvmfTarget) {
    let groups = target.0.poll_groups.lock().len();
    for transport in target.transports() {
        let pool = transport.pool();
        let (small, large) = pool.available();
        let (capacity, cached) = (pool.capacity(), pool.cache_size() * groups);
        let held = |free: usize| capacity.saturating_sub(free + cached);
        let trtype = transport.trtype();
        if held(small) + held(large) > 0 {
            peerless_core::log_warn!(
                "shutdown: transport {trtype}: {} small and {} large data buffer(s) still held by commands",
                held(small),
                held(large)
            );
        } else {
            peerless_core::log_notice!(
                "shutdown: transport {trtype}: every data buffer back ({small} small and {large} large free, up to {cached} of each in poll-group caches)"
            );
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::io_cmd::CommandLimits;
    use crate::nvmf::namespace::NamespaceSpec;
    use crate::nvmf::testing::World;

    const NQN: &str = "nqn.2016-06.io.peerless:target";

    #[test]
    fn there_is_one_target_and_absent_names_it() {
        assert_eq!(NvmfTarget::check_name(None), Ok(()));
        assert_eq!(NvmfTarget::check_name(Some(TARGET_NAME)), Ok(()));
        let err = NvmfTarget::check_name(Some("tgt2")).unwrap_err();
        assert_eq!(err, NvmfError::NoSuchTarget("tgt2".into()));
        assert!(err.to_string().contains("'nvmf_tgt'"), "{err}");
    }

    #[test]
    fn subsystems_are_created_once_and_announced() {
        let world = World::new();
        let generation = world.target.discovery_generation();
        let config = SubsystemConfig { limits: CommandLimits { dmrsl: 16, wzsl: 2 }, ..SubsystemConfig::new(NQN) };
        let subsystem = world.target.create_subsystem(&config).unwrap();
        assert_eq!(subsystem.state.lock().limits, CommandLimits { dmrsl: 16, wzsl: 2 });
        assert!(world.target.discovery_generation() > generation);
        assert_eq!(world.target.create_subsystem(&config).err(), Some(NvmfError::SubsystemExists(NQN.into())));
        let bad = SubsystemConfig { min_cntlid: 0, ..SubsystemConfig::new("nqn.2016-06.io.peerless:bad") };
        assert!(matches!(world.target.create_subsystem(&bad), Err(NvmfError::Invalid(_))));
        assert!(world.target.find_subsystem("nqn.2016-06.io.peerless:bad").is_none(), "a refusal creates nothing");
        assert_eq!(world.target.lookup("discovery").unwrap().nqn, DISCOVERY_NQN);
    }

    #[test]
    fn subsystems_stop_at_the_limit_counting_discovery() {
        let world = World::new();
        for index in 1..DEFAULT_MAX_SUBSYSTEMS {
            world.target.create_subsystem(&SubsystemConfig::new(&format!("{NQN}{index}"))).unwrap();
        }
        let err = world.target.create_subsystem(&SubsystemConfig::new(NQN)).err();
        assert_eq!(err, Some(NvmfError::TooManySubsystems(DEFAULT_MAX_SUBSYSTEMS)));
        assert_eq!(world.target.subsystems().len(), DEFAULT_MAX_SUBSYSTEMS);
    }

    #[test]
    fn deleting_a_subsystem_releases_its_namespaces() {
        let world = World::new();
        world.target.create_subsystem(&SubsystemConfig::new(NQN)).unwrap();
        world.malloc("M0");
        assert_eq!(world.on_app(|ctx, target| target.add_namespace(ctx, NQN, NamespaceSpec::new("M0"))), Ok(1));
        assert!(world.bdevs.claim_of("M0").is_some());
        assert_eq!(world.on_app(|ctx, target| target.delete_subsystem(ctx, NQN)), Ok(()));
        assert!(world.bdevs.claim_of("M0").is_none());
        assert_eq!(
            world.on_app(|ctx, target| target.delete_subsystem(ctx, NQN)),
            Err(NvmfError::NoSuchSubsystem(NQN.into()))
        );
    }
}
