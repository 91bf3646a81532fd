//! Who may reach a subsystem: the transport addresses it listens on, and the hosts it
//! allows (a list, or any host). Every change shows in the discovery log, so discovery
//! controllers hear of it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_core::keyring::KeyRef;
use peerless_core::reactor::{PollStatus, PollerId, ThreadCtx};

use super::ana::AnaState;
use super::auth::session::HostKeys;
use super::ctrlr::Controller;
use super::error::NvmfError;
use super::subsystem::{validate_nqn, ListenAddress, Subsystem, SubsystemKind};
use super::target::NvmfTarget;
use super::transport::SockImpl;

/// How long removing a host waits for its queues to close when not told (SPDK's
/// NVMF_CTRLR_RESET_SHN_TIMEOUT_IN_MS: a controller's shutdown time and 5 s more).
pub const DEFAULT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often that wait looks.
const DISCONNECT_POLL_US: u64 = 1_000;

impl NvmfTarget {
    /// Lets hosts reach subsystem `nqn` at `addr` over transport `trtype`; the transport
    /// listens there unless it already does for another subsystem. With ANA reporting,
    /// every ANA group of the new listener starts in `ana_state`. With `secure`, hosts
    /// reach it over TLS 1.3 only.
    #[allow(clippy::too_many_arguments)]
    pub fn add_listener(
        &self,
        ctx: &mut ThreadCtx,
        nqn: &str,
        trtype: &str,
        addr: SocketAddr,
        ana_state: AnaState,
        sock_impl: Option<SockImpl>,
        secure: bool,
    ) -> Result<(), NvmfError> {
        let subsystem = self.lookup(nqn)?;
        if secure && subsystem.kind == SubsystemKind::Discovery {
            // Its PSK identity would name the discovery NQN, for which no host has a key.
            return Err(NvmfError::unsupported(
                "secure_channel",
                "the discovery subsystem is not served over TLS here",
            ));
        }
        if secure && subsystem.state.lock().allow_any_host {
            // TLS finds a host's key by its NQN: an unknown host has none (SPDK refuses too).
            return Err(NvmfError::Invalid(format!(
                "secure_channel: {nqn} allows any host; a secure channel needs each host's PSK (nvmf_subsystem_add_host --psk)"
            )));
        }
        if !AnaState::SETTABLE.contains(&ana_state) {
            return Err(NvmfError::Invalid(format!(
                "ana_state '{}' is reported by the target, not set",
                ana_state.name()
            )));
        }
        let groups = Subsystem::ana_groups(&subsystem.state.lock());
        if groups == 0 && ana_state != AnaState::Optimized {
            return Err(NvmfError::unsupported(
                "ana_state",
                format!("'{}': {nqn} does not report ANA (nvmf_create_subsystem ana_reporting)", ana_state.name()),
            ));
        }
        let Some(transport) = self.transport(trtype) else {
            return Err(NvmfError::NoTransport(trtype.to_uppercase()));
        };
        if subsystem.state.lock().listeners.iter().any(|listener| listener.is(transport.trtype(), addr)) {
            let trtype = transport.trtype().to_string();
            return Err(NvmfError::ListenerExists { nqn: subsystem.nqn.clone(), trtype, addr });
        }
        if let Some(existing) = self.listening_secure(transport.trtype(), addr).filter(|existing| *existing != secure) {
            // One socket serves every subsystem at an address: TLS or not, for all of them.
            return Err(NvmfError::CannotListen(format!(
                "{addr} already listens {} for another subsystem; secure_channel must match",
                if existing { "with a secure channel (TLS)" } else { "without a secure channel" }
            )));
        }
        match self.listening_sock_impl(transport.trtype(), addr) {
            // Another subsystem's listener already there: its sockets are watched one way.
            Some(existing) if sock_impl.is_some_and(|wanted| wanted != existing) => {
                return Err(NvmfError::CannotListen(format!(
                    "{addr} already listens with sock_impl \"{}\" for another subsystem; ask for that or omit it",
                    existing.as_str()
                )))
            }
            Some(_) => {}
            None => {
                let listener = transport
                    .listen(ctx, self, addr, sock_impl.unwrap_or_default(), secure)
                    .map_err(NvmfError::CannotListen)?;
                self.0.listeners.lock().push((transport.trtype(), listener));
            }
        }
        let mut listener = ListenAddress::new(addr, groups, ana_state);
        listener.secure = secure;
        listener.trtype = transport.trtype();
        subsystem.state.lock().listeners.push(listener);
        self.discovery_changed();
        Ok(())
    }

    /// Stops subsystem `nqn` listening over `trtype` at `addr`; the transport's listener
    /// there closes once no subsystem lists it.
    pub fn remove_listener(
        &self,
        ctx: &mut ThreadCtx,
        nqn: &str,
        trtype: &str,
        addr: SocketAddr,
    ) -> Result<(), NvmfError> {
        let subsystem = self.lookup(nqn)?;
        let removed = {
            let mut state = subsystem.state.lock();
            let Some(position) = state.listeners.iter().position(|listener| listener.is(trtype, addr)) else {
                let trtype = trtype.to_uppercase();
                return Err(NvmfError::NoSuchListener { nqn: subsystem.nqn.clone(), trtype, addr });
            };
            state.listeners.remove(position)
        };
        // Controllers connected through it stay until their host goes; they now reach
        // nothing, and with ANA they are told so.
        removed.ana.deactivate();
        if Subsystem::ana_groups(&subsystem.state.lock()) > 0 {
            self.ana_changed(&subsystem, &removed.ana);
        }
        self.release_listener(ctx, removed.trtype, addr);
        self.discovery_changed();
        Ok(())
    }

    /// Closes the listener of transport `trtype` at `addr` once no subsystem lists it;
    /// another transport's listener at the same address stays.
    pub(super) fn release_listener(&self, ctx: &mut ThreadCtx, trtype: &str, addr: SocketAddr) {
        let still_used = self
            .subsystems()
            .iter()
            .any(|subsystem| subsystem.state.lock().listeners.iter().any(|listener| listener.is(trtype, addr)));
        if still_used {
            return;
        }
        let mut listeners = self.0.listeners.lock();
        let position =
            listeners.iter().position(|(kind, listener)| kind.eq_ignore_ascii_case(trtype) && listener.addr() == addr);
        if let Some(position) = position {
            let (_, listener) = listeners.swap_remove(position);
            drop(listeners);
            listener.stop(ctx);
        }
    }

    /// Puts `host` on the allow-list of subsystem `nqn`.
    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        self.add_host_with_keys(nqn, host, HostKeys::default())
    }

    /// Puts `host` on the allow-list of subsystem `nqn`; with a DH-HMAC-CHAP key, the
    /// host must authenticate on every queue it connects.
    pub fn add_host_with_keys(&self, nqn: &str, host: &str, keys: HostKeys) -> Result<(), NvmfError> {
        self.add_host_with_psk(nqn, host, keys, None)
    }

    /// Puts `host` on the allow-list of subsystem `nqn` with its DH-HMAC-CHAP keys and its
    /// TLS pre-shared key; with a PSK, the host connects through secure listeners only.
    pub fn add_host_with_psk(
        &self,
        nqn: &str,
        host: &str,
        keys: HostKeys,
        psk: Option<KeyRef>,
    ) -> Result<(), NvmfError> {
        validate_nqn(host).map_err(|why| NvmfError::Invalid(format!("Invalid host NQN: {why}")))?;
        check_keys(&keys)?;
        let subsystem = self.nvm_subsystem(nqn, "hosts")?;
        {
            let mut state = subsystem.state.lock();
            if state.hosts.iter().any(|known| known == host) {
                return Err(NvmfError::HostExists { nqn: subsystem.nqn.clone(), host: host.to_string() });
            }
            state.hosts.push(host.to_string());
            if keys.required() {
                state.host_keys.insert(host.to_string(), keys);
            }
            if let Some(psk) = psk {
                state.host_psks.insert(host.to_string(), psk);
            }
        }
        self.discovery_changed();
        Ok(())
    }

    /// Replaces the DH-HMAC-CHAP keys of listed `host` (both; an absent key is cleared).
    /// Queues already authenticated stay; the next authentication uses the new keys.
    pub fn set_host_keys(&self, nqn: &str, host: &str, keys: HostKeys) -> Result<(), NvmfError> {
        check_keys(&keys)?;
        let subsystem = self.nvm_subsystem(nqn, "hosts")?;
        let mut state = subsystem.state.lock();
        if !state.hosts.iter().any(|known| known == host) {
            return Err(NvmfError::NoSuchHost { nqn: subsystem.nqn.clone(), host: host.to_string() });
        }
        if keys.required() {
            state.host_keys.insert(host.to_string(), keys);
        } else {
            state.host_keys.remove(host);
        }
        Ok(())
    }

    /// Takes `host` off the allow-list of subsystem `nqn`. Unless any host may connect,
    /// the host loses its controllers: they are torn down, and returned so the caller can
    /// wait for their queues to close ([`when_disconnected`]).
    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<Vec<Arc<Controller>>, NvmfError> {
        let subsystem = self.nvm_subsystem(nqn, "hosts")?;
        let gone: Vec<Arc<Controller>> = {
            let mut state = subsystem.state.lock();
            let before = state.hosts.len();
            state.hosts.retain(|known| known != host);
            if state.hosts.len() == before {
                return Err(NvmfError::NoSuchHost { nqn: subsystem.nqn.clone(), host: host.to_string() });
            }
            state.host_keys.remove(host);
            state.host_psks.remove(host);
            if state.allow_any_host {
                Vec::new()
            } else {
                state.controllers.values().filter(|controller| controller.hostnqn == host).cloned().collect()
            }
        };
        for controller in &gone {
            self.disconnect_controller(controller);
        }
        self.discovery_changed();
        Ok(gone)
    }

    /// Lets any host connect to subsystem `nqn`, or only those on its list. Hosts already
    /// connected keep their controllers either way, as in SPDK.
    pub fn set_allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), NvmfError> {
        let subsystem = self.nvm_subsystem(nqn, "hosts")?;
        let mut state = subsystem.state.lock();
        if allow && state.listeners.iter().any(|listener| listener.secure) {
            return Err(NvmfError::Invalid(format!(
                "allow_any_host: {nqn} has a secure_channel listener, which needs each host's PSK"
            )));
        }
        state.allow_any_host = allow;
        drop(state);
        self.discovery_changed();
        Ok(())
    }
}

/// A controller key alone would let the controller prove itself to a host that never
/// proves itself: SPDK refuses it, and so do we.
fn check_keys(keys: &HostKeys) -> Result<(), NvmfError> {
    if keys.dhchap_ctrlr_key.is_some() && keys.dhchap_key.is_none() {
        return Err(NvmfError::Invalid("Invalid parameters: dhchap_ctrlr_key requires dhchap_key".into()));
    }
    Ok(())
}

/// Calls `done` on this thread with `true` once none of `controllers` has a queue left,
/// or with `false` if `timeout` passes first. Polls; never blocks the reactor.
pub fn when_disconnected(
    ctx: &mut ThreadCtx,
    controllers: Vec<Arc<Controller>>,
    timeout: Duration,
    done: impl FnOnce(&mut ThreadCtx, bool) + 'static,
) {
    let all_gone = |controllers: &[Arc<Controller>]| controllers.iter().all(|c| c.qpairs.lock().is_empty());
    if all_gone(&controllers) {
        return done(ctx, true);
    }
    let deadline = Instant::now() + timeout;
    let mut done = Some(done);
    let slot: Rc<Cell<Option<PollerId>>> = Rc::default();
    let own_id = slot.clone();
    let id = ctx.register_timed_poller("nvmf_disconnect_wait", DISCONNECT_POLL_US, move |ctx| {
        let gone = all_gone(&controllers);
        if !gone && Instant::now() < deadline {
            return PollStatus::Idle;
        }
        if let Some(done) = done.take() {
            done(ctx, gone);
        }
        if let Some(id) = own_id.get() {
            ctx.unregister_poller(id);
        }
        PollStatus::Busy
    });
    slot.set(Some(id));
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::nvme::identify::ControllerType;
    use crate::nvmf::ctrlr::QpairInfo;
    use crate::nvmf::subsystem::{SubsystemConfig, DISCOVERY_NQN};
    use crate::nvmf::testing::{World, OTHER_TRTYPE, TRTYPE};

    const NQN: &str = "nqn.2016-06.io.peerless:access";
    const OTHER: &str = "nqn.2016-06.io.peerless:other";
    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-000000000001";

    fn world() -> World {
        let world = World::new();
        for nqn in [NQN, OTHER] {
            world.target.create_subsystem(&SubsystemConfig::new(nqn)).unwrap();
        }
        world
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn listen(world: &World, nqn: &'static str, port: u16) -> Result<(), NvmfError> {
        world.on_app(move |ctx, target| {
            target.add_listener(ctx, nqn, TRTYPE, addr(port), AnaState::Optimized, None, false)
        })
    }

    fn unlisten(world: &World, nqn: &'static str, port: u16) -> Result<(), NvmfError> {
        world.on_app(move |ctx, target| target.remove_listener(ctx, nqn, TRTYPE, addr(port)))
    }

    #[test]
    fn subsystems_share_a_listener_until_the_last_one_leaves() {
        let world = world();
        let generation = world.target.discovery_generation();
        assert_eq!(listen(&world, NQN, 4420), Ok(()));
        assert!(world.target.discovery_generation() > generation, "the discovery log changed");
        assert_eq!(listen(&world, OTHER, 4420), Ok(()));
        assert_eq!(listen(&world, "discovery", 4420), Ok(()), "the discovery subsystem listens too");
        assert_eq!(world.open_listeners(), vec![addr(4420)], "one socket for all three");
        assert_eq!(
            listen(&world, NQN, 4420),
            Err(NvmfError::ListenerExists { nqn: NQN.into(), trtype: TRTYPE.into(), addr: addr(4420) })
        );

        assert_eq!(unlisten(&world, NQN, 4420), Ok(()));
        assert_eq!(unlisten(&world, "discovery", 4420), Ok(()));
        assert_eq!(world.open_listeners(), vec![addr(4420)], "{OTHER} still listens");
        assert_eq!(unlisten(&world, OTHER, 4420), Ok(()));
        assert_eq!(world.open_listeners(), vec![], "the last one closed the socket");
        assert_eq!(
            unlisten(&world, OTHER, 4420),
            Err(NvmfError::NoSuchListener { nqn: OTHER.into(), trtype: TRTYPE.into(), addr: addr(4420) })
        );
    }

    /// A listener is its whole transport ID: one address and port carry a listener of
    /// each transport for one subsystem, each added, found and removed on its own.
    #[test]
    fn one_address_carries_a_listener_of_each_transport() {
        let world = world();
        world.target.create_transport(OTHER_TRTYPE, &serde_json::json!({"trtype": OTHER_TRTYPE}), 1).unwrap();
        let other = |world: &World, nqn: &'static str, add: bool| {
            world.on_app(move |ctx, target| match add {
                true => target.add_listener(ctx, nqn, OTHER_TRTYPE, addr(4420), AnaState::Optimized, None, false),
                false => target.remove_listener(ctx, nqn, OTHER_TRTYPE, addr(4420)),
            })
        };
        assert_eq!(listen(&world, NQN, 4420), Ok(()));
        assert_eq!(other(&world, NQN, true), Ok(()), "a second transport at the same address");
        assert_eq!(
            other(&world, NQN, true),
            Err(NvmfError::ListenerExists { nqn: NQN.into(), trtype: OTHER_TRTYPE.into(), addr: addr(4420) })
        );
        assert_eq!(world.open_listeners_by_transport(), vec![(TRTYPE, addr(4420)), (OTHER_TRTYPE, addr(4420))]);
        let subsystem = world.target.find_subsystem(NQN).unwrap();
        let shown: Vec<_> = subsystem.state.lock().listeners.iter().map(|l| l.to_json()["trtype"].clone()).collect();
        assert_eq!(shown, vec![TRTYPE, OTHER_TRTYPE]);
        // A connection is let in only through a listener of its own transport.
        assert!(subsystem.listener_allowed(TRTYPE, addr(4420)) && subsystem.listener_allowed(OTHER_TRTYPE, addr(4420)));
        assert!(!subsystem.listener_allowed("TCP", addr(4420)), "no TCP listener there");

        // OTHER listens at that address over the second transport only.
        assert_eq!(other(&world, OTHER, true), Ok(()));
        let only_other = world.target.find_subsystem(OTHER).unwrap();
        assert!(only_other.listener_allowed(OTHER_TRTYPE, addr(4420)));
        assert!(!only_other.listener_allowed(TRTYPE, addr(4420)), "the first transport's queues do not reach it");

        // Removing one transport's listener leaves the other's, here and on the target.
        assert_eq!(unlisten(&world, NQN, 4420), Ok(()));
        assert!(
            !subsystem.listener_allowed(TRTYPE, addr(4420)) && subsystem.listener_allowed(OTHER_TRTYPE, addr(4420))
        );
        assert_eq!(world.open_listeners_by_transport(), vec![(OTHER_TRTYPE, addr(4420))]);
        assert_eq!(
            unlisten(&world, NQN, 4420),
            Err(NvmfError::NoSuchListener { nqn: NQN.into(), trtype: TRTYPE.into(), addr: addr(4420) })
        );
        // The second transport's listener closes with the last subsystem using it.
        assert_eq!(other(&world, NQN, false), Ok(()));
        assert_eq!(world.open_listeners_by_transport(), vec![(OTHER_TRTYPE, addr(4420))], "{OTHER} still uses it");
        assert_eq!(world.on_app(|ctx, target| target.delete_subsystem(ctx, OTHER)), Ok(()));
        assert_eq!(world.open_listeners_by_transport(), vec![]);
    }

    #[test]
    fn a_listener_needs_its_transport_and_an_address_it_can_take() {
        let world = world();
        let err = world
            .on_app(|ctx, target| target.add_listener(ctx, NQN, "RDMA", addr(4420), AnaState::Optimized, None, false));
        assert_eq!(err, Err(NvmfError::NoTransport("RDMA".into())));
        // The test transport refuses port 1, as a system refuses an address in use.
        let err = listen(&world, NQN, 1).unwrap_err();
        assert!(matches!(&err, NvmfError::CannotListen(why) if why.contains("cannot listen")), "{err:?}");
        assert!(world.target.find_subsystem(NQN).unwrap().state.lock().listeners.is_empty(), "nothing kept");
        assert_eq!(
            listen(&world, "nqn.2016-06.io.peerless:none", 4420),
            Err(NvmfError::NoSuchSubsystem("nqn.2016-06.io.peerless:none".into()))
        );
        assert_eq!(world.open_listeners(), vec![]);
    }

    #[test]
    fn deleting_a_subsystem_closes_the_listeners_only_it_used() {
        let world = world();
        assert_eq!(listen(&world, NQN, 4420), Ok(()));
        assert_eq!(listen(&world, NQN, 4421), Ok(()));
        assert_eq!(listen(&world, OTHER, 4421), Ok(()));
        assert_eq!(world.on_app(|ctx, target| target.delete_subsystem(ctx, NQN)), Ok(()));
        assert_eq!(world.open_listeners(), vec![addr(4421)]);
        assert!(world.target.find_subsystem(NQN).is_none());
        let err = world.on_app(|ctx, target| target.delete_subsystem(ctx, DISCOVERY_NQN));
        assert_eq!(err, Err(NvmfError::Discovery("deletion")));
    }

    #[test]
    fn hosts_are_checked_listed_and_unlisted() {
        let world = world();
        let err = world.target.add_host(NQN, "host-without-nqn").unwrap_err().to_string();
        assert!(err.starts_with("Invalid host NQN") && err.contains("must start with 'nqn.'"), "{err}");
        assert_eq!(world.target.add_host(NQN, HOST), Ok(()));
        assert_eq!(world.target.add_host(NQN, HOST), Err(NvmfError::HostExists { nqn: NQN.into(), host: HOST.into() }));
        assert_eq!(world.target.add_host("discovery", HOST), Err(NvmfError::Discovery("hosts")));
        assert!(world.target.find_subsystem(NQN).unwrap().host_allowed(HOST));
        assert_eq!(world.target.remove_host(NQN, HOST).map(|gone| gone.len()), Ok(0));
        assert!(!world.target.find_subsystem(NQN).unwrap().host_allowed(HOST));
        assert_eq!(
            world.target.remove_host(NQN, HOST).map(|gone| gone.len()),
            Err(NvmfError::NoSuchHost { nqn: NQN.into(), host: HOST.into() })
        );
        assert_eq!(world.target.set_allow_any_host(NQN, true), Ok(()));
        assert!(world.target.find_subsystem(NQN).unwrap().host_allowed(HOST));
    }

    /// A controller of `host` on subsystem `nqn` with an admin queue on the app thread.
    fn connected(world: &World, nqn: &str, host: &str) -> Arc<Controller> {
        let subsystem = world.target.find_subsystem(nqn).unwrap();
        let controller = Arc::new(Controller::new(
            7,
            subsystem.clone(),
            host.to_string(),
            [0; 16],
            ControllerType::Io,
            Duration::from_secs(10),
            1,
        ));
        let thread = world.target.0.app.app_thread();
        controller.qpairs.lock().push(QpairInfo { qid: 0, thread, conn_id: 99, peer: addr(5000), local: addr(4420) });
        subsystem.state.lock().controllers.insert(7, controller.clone());
        controller
    }

    fn wait_for(world: &World, controllers: Vec<Arc<Controller>>, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        world.on_app(move |ctx, _| {
            when_disconnected(ctx, controllers, timeout, move |_, closed| {
                let _ = tx.send(closed);
            })
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("the wait ended")
    }

    #[test]
    fn removing_a_host_tears_down_its_controllers_and_waits_for_their_queues() {
        let world = world();
        assert_eq!(world.target.add_host(NQN, HOST), Ok(()));
        let controller = connected(&world, NQN, HOST);
        let gone = world.target.remove_host(NQN, HOST).unwrap();
        assert_eq!(gone.len(), 1);
        assert!(Arc::ptr_eq(&gone[0], &controller) && controller.is_failed(), "its controller is torn down");
        // Its queue is still open (nothing here closes it): the wait gives up.
        assert!(!wait_for(&world, gone.clone(), Duration::from_millis(30)));
        // Once the queue is gone, the wait ends well within its time.
        let closer = controller.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            closer.qpairs.lock().clear();
        });
        assert!(wait_for(&world, gone, Duration::from_secs(5)));
        assert!(wait_for(&world, Vec::new(), Duration::ZERO), "nothing to wait for ends at once");
    }

    #[test]
    fn with_any_host_allowed_removing_one_disconnects_nobody() {
        let world = world();
        assert_eq!(world.target.add_host(NQN, HOST), Ok(()));
        assert_eq!(world.target.set_allow_any_host(NQN, true), Ok(()));
        let controller = connected(&world, NQN, HOST);
        assert_eq!(world.target.remove_host(NQN, HOST).map(|gone| gone.len()), Ok(0));
        assert!(!controller.is_failed());
    }
}
