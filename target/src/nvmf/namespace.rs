//! Namespaces: a claimed bdev exported under an NSID, and where its command data may be
//! placed (host memory or a P2P provider). A namespace is added to a subsystem and taken
//! away by the control plane, or goes by itself when its bdev is removed (hot-remove).

use std::sync::{Arc, Weak};

use peerless_bdev::manager::{RemoveCallback, ResizeCallback};
use peerless_bdev::{Bdev, ClaimType, Desc};
use peerless_core::mem::P2pProvider;
use peerless_core::reactor::ThreadCtx;

use super::error::NvmfError;
use super::subsystem::{Subsystem, SubsystemState, MAX_NSID};
use super::target::{NvmfTarget, TargetShared};

/// Who claims a namespace's bdev, as `bdev_get_bdevs` names it.
pub const NS_CLAIMANT: &str = "NVMe-oF Target";

pub struct Namespace {
    pub nsid: u32,
    pub bdev_name: String,
    pub desc: Arc<Desc>,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: [u8; 16],
    /// Its ANA group (NVMe Base 2.0, 8.1.2): fixed while it is attached (ANACAP bit 6).
    pub anagrpid: u32,
    /// Where command data may be placed, as it was asked for.
    pub p2pmem: P2pPlacement,
    /// The provider command data is placed in, when `p2pmem` is not off.
    pub provider: Option<Arc<dyn P2pProvider>>,
}

/// Where a namespace's command data is placed (`nvmf_subsystem_add_ns`'s `p2pmem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum P2pPlacement {
    /// Host memory (the default).
    Off,
    /// The bdev's own P2P provider.
    Auto,
    /// The P2P provider of this name, which must be the bdev's.
    Provider(String),
}

impl P2pPlacement {
    pub fn parse(text: &str) -> P2pPlacement {
        match text {
            "off" => P2pPlacement::Off,
            "auto" => P2pPlacement::Auto,
            name => P2pPlacement::Provider(name.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            P2pPlacement::Off => "off",
            P2pPlacement::Auto => "auto",
            P2pPlacement::Provider(name) => name,
        }
    }
}

/// A namespace to add. Identifiers left out come from the bdev: the UUID is the bdev's,
/// the NGUID the UUID, and the EUI-64 none (all zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceSpec {
    /// `None` (or 0, as SPDK takes it) picks the lowest free NSID.
    pub nsid: Option<u32>,
    pub bdev_name: String,
    pub nguid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
    pub uuid: Option<[u8; 16]>,
    /// `None` (or 0) puts the namespace in the group numbered as its NSID, as SPDK does.
    pub anagrpid: Option<u32>,
    pub p2pmem: P2pPlacement,
}

impl NamespaceSpec {
    /// The bdev `bdev_name` under the lowest free NSID, with the bdev's identifiers.
    pub fn new(bdev_name: &str) -> NamespaceSpec {
        NamespaceSpec {
            nsid: None,
            bdev_name: bdev_name.to_string(),
            nguid: None,
            eui64: None,
            uuid: None,
            anagrpid: None,
            p2pmem: P2pPlacement::Off,
        }
    }
}

/// The P2P provider command data for a namespace over `bdev` is placed in. Data lives in
/// a provider only if the bdev can DMA from it directly: the transport places it there
/// with the CPU's I/O accessors, and the bdev's DMA takes it from there.
pub fn choose_provider(
    bdev: &Arc<dyn Bdev>,
    placement: &P2pPlacement,
) -> Result<Option<Arc<dyn P2pProvider>>, NvmfError> {
    let name = &bdev.info().name;
    let usable = bdev.p2p_provider().filter(|provider| bdev.accepts_domain(provider.domain()));
    match placement {
        P2pPlacement::Off => Ok(None),
        P2pPlacement::Auto => match usable {
            Some(provider) => Ok(Some(provider)),
            None => Err(NvmfError::Invalid(format!(
                "p2pmem: bdev '{name}' has no P2P memory it can DMA from; p2pmem must be \"off\""
            ))),
        },
        P2pPlacement::Provider(wanted) => match usable {
            Some(provider) if provider.name() == wanted => Ok(Some(provider)),
            // Another device's memory, which this bdev reaches peer to peer.
            _ => match peerless_core::mem::registry::provider_named(wanted) {
                Some(provider) if bdev.accepts_domain(provider.domain()) => Ok(Some(provider)),
                Some(_) => {
                    Err(NvmfError::Invalid(format!("p2pmem: bdev '{name}' cannot DMA from P2P provider '{wanted}'")))
                }
                None => Err(NvmfError::Invalid(format!(
                    "p2pmem: bdev '{name}' cannot DMA from P2P provider '{wanted}': no provider has that name"
                ))),
            },
        },
    }
}

/// The NSID a new namespace of subsystem `nqn` gets: the one asked for if it is free and
/// within max_namespaces, else the lowest free one.
pub fn choose_nsid(nqn: &str, state: &SubsystemState, wanted: Option<u32>) -> Result<u32, NvmfError> {
    debug_assert!(state.max_namespaces <= MAX_NSID, "checked when the subsystem was created");
    match wanted {
        Some(0) | None => Subsystem::free_nsid(state)
            .ok_or_else(|| NvmfError::NoFreeNsid { nqn: nqn.to_string(), max: state.max_namespaces }),
        Some(nsid) if nsid > state.max_namespaces => {
            Err(NvmfError::NsidTooLarge { nqn: nqn.to_string(), nsid, max: state.max_namespaces })
        }
        Some(nsid) if state.namespaces.contains_key(&nsid) => Err(NvmfError::NsidInUse { nqn: nqn.to_string(), nsid }),
        Some(nsid) => Ok(nsid),
    }
}

/// The ANA group of namespace `nsid`: the one asked for, or the NSID's (SPDK's default).
/// A group is at most ANAGRPMAX (max_namespaces); without ANA reporting none may be named.
pub fn choose_anagrpid(nqn: &str, state: &SubsystemState, nsid: u32, wanted: Option<u32>) -> Result<u32, NvmfError> {
    match wanted.filter(|group| *group != 0) {
        None => Ok(nsid),
        Some(group) if !state.ana_reporting => Err(NvmfError::unsupported(
            "anagrpid",
            format!("{group}: {nqn} does not report ANA (nvmf_create_subsystem ana_reporting); omit it"),
        )),
        Some(group) if group > state.max_namespaces => Err(NvmfError::Invalid(format!(
            "anagrpid {group} is more than ANAGRPMAX, {} (max_namespaces) for {nqn}",
            state.max_namespaces
        ))),
        Some(group) => Ok(group),
    }
}

impl NvmfTarget {
    /// Exports a bdev as a namespace of subsystem `nqn`: the bdev is opened for writing
    /// and claimed exclusively; hosts hear of the namespace (Namespace Attribute Changed).
    /// Returns its NSID.
    pub fn add_namespace(&self, ctx: &mut ThreadCtx, nqn: &str, spec: NamespaceSpec) -> Result<u32, NvmfError> {
        let subsystem = self.nvm_subsystem(nqn, "namespaces")?;
        let bdev = self.0.bdevs.get(&spec.bdev_name)?;
        let provider = choose_provider(&bdev, &spec.p2pmem)?;
        let uuid = spec.uuid.unwrap_or(bdev.info().uuid.0);
        let mut state = subsystem.state.lock();
        let nsid = choose_nsid(&subsystem.nqn, &state, spec.nsid)?;
        let anagrpid = choose_anagrpid(&subsystem.nqn, &state, nsid, spec.anagrpid)?;
        let on_remove = on_bdev_removed(Arc::downgrade(&self.0), subsystem.nqn.clone(), nsid);
        let desc = self.0.bdevs.open(&spec.bdev_name, true, Some(ctx.handle()), Some(on_remove))?;
        desc.on_resize(on_bdev_resized(Arc::downgrade(&self.0), subsystem.nqn.clone(), nsid));
        desc.claim(ClaimType::ExclusiveWrite, NS_CLAIMANT)?;
        let ns = Namespace {
            nsid,
            bdev_name: bdev.info().name.clone(),
            desc: Arc::new(desc),
            nguid: spec.nguid.unwrap_or(uuid),
            eui64: spec.eui64.unwrap_or_default(),
            uuid,
            anagrpid,
            p2pmem: spec.p2pmem,
            provider,
        };
        let previous = state.namespaces.insert(nsid, Arc::new(ns));
        debug_assert!(previous.is_none(), "choose_nsid picked a free NSID");
        drop(state);
        self.namespace_changed(ctx, &subsystem, nsid);
        Ok(nsid)
    }

    /// Takes namespace `nsid` out of subsystem `nqn`; its bdev is released once the poll
    /// groups have dropped their view of it.
    pub fn remove_namespace(&self, ctx: &mut ThreadCtx, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let subsystem = self.nvm_subsystem(nqn, "namespaces")?;
        let removed = subsystem.state.lock().namespaces.remove(&nsid);
        if removed.is_none() {
            return Err(NvmfError::NoSuchNamespace { nqn: subsystem.nqn.clone(), nsid });
        }
        self.namespace_changed(ctx, &subsystem, nsid);
        Ok(())
    }
}

/// What runs when the bdev under namespace `nsid` of `nqn` goes: the namespace goes too,
/// so hosts do not send I/O to nothing. The bdev manager keeps this callback and the
/// target owns the manager, so it holds the target weakly: a strong handle here would
/// keep the target alive for as long as the namespace is.
fn on_bdev_removed(target: Weak<TargetShared>, nqn: String, nsid: u32) -> RemoveCallback {
    Box::new(move |ctx: &mut ThreadCtx| {
        let Some(shared) = target.upgrade() else { return };
        let target = NvmfTarget(shared);
        let Some(subsystem) = target.find_subsystem(&nqn) else { return };
        let removed = {
            let mut state = subsystem.state.lock();
            // The NSID may have been reused since, over another bdev: only a namespace
            // whose own bdev is gone goes.
            match state.namespaces.get(&nsid) {
                Some(ns) if ns.desc.is_removed() => state.namespaces.remove(&nsid),
                _ => None,
            }
        };
        if let Some(ns) = removed {
            peerless_core::log_notice!("namespace {nsid} of {nqn} removed: its bdev '{}' went away", ns.bdev_name);
            target.namespace_changed(ctx, &subsystem, nsid);
        }
    })
}

/// What runs when the bdev under namespace `nsid` of `nqn` is resized: the poll groups
/// forget their cached size and every controller gets a Namespace Attribute Changed
/// notice with the NSID in its Changed Namespace List (NVMe Base 2.0, 5.2.2 and 5.16.1.5),
/// after which hosts read Identify Namespace again and see the new NSZE. Weak for the
/// reason `on_bdev_removed` gives.
fn on_bdev_resized(target: Weak<TargetShared>, nqn: String, nsid: u32) -> ResizeCallback {
    Arc::new(move |ctx: &mut ThreadCtx, num_blocks: u64| {
        let Some(shared) = target.upgrade() else { return };
        let target = NvmfTarget(shared);
        let Some(subsystem) = target.find_subsystem(&nqn) else { return };
        let bdev_name = match subsystem.state.lock().namespaces.get(&nsid) {
            Some(ns) => ns.bdev_name.clone(),
            None => return,
        };
        peerless_core::log_notice!(
            "namespace {nsid} of {nqn} now holds {num_blocks} blocks (bdev '{bdev_name}' resized)"
        );
        target.namespace_changed(ctx, &subsystem, nsid);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::subsystem::{SubsystemConfig, SubsystemKind, DISCOVERY_NQN};
    use crate::nvmf::testing::World;
    use peerless_bdev::BdevError;

    const NQN: &str = "nqn.2016-06.io.peerless:ns";

    fn world() -> World {
        let world = World::new();
        world.target.create_subsystem(&SubsystemConfig { max_namespaces: 4, ..SubsystemConfig::new(NQN) }).unwrap();
        world
    }

    fn add(world: &World, spec: NamespaceSpec) -> Result<u32, NvmfError> {
        world.on_app(move |ctx, target| target.add_namespace(ctx, NQN, spec))
    }

    fn bdevs_of(world: &World) -> Vec<(u32, String)> {
        let subsystem = world.target.find_subsystem(NQN).unwrap();
        let state = subsystem.state.lock();
        state.namespaces.values().map(|ns| (ns.nsid, ns.bdev_name.clone())).collect()
    }

    #[test]
    fn nsids_are_the_lowest_free_or_the_one_asked_for() {
        let subsystem = Subsystem::new(1, NQN, SubsystemKind::Nvme);
        let mut state = subsystem.state.lock();
        state.max_namespaces = 3;
        assert_eq!(choose_nsid(NQN, &state, None), Ok(1));
        assert_eq!(choose_nsid(NQN, &state, Some(0)), Ok(1), "0 asks for any, as in SPDK");
        assert_eq!(choose_nsid(NQN, &state, Some(3)), Ok(3));
        let err = choose_nsid(NQN, &state, Some(4)).unwrap_err();
        assert_eq!(err, NvmfError::NsidTooLarge { nqn: NQN.into(), nsid: 4, max: 3 });
        assert!(err.to_string().contains("exceeds max_namespaces 3"), "{err}");
        state.max_namespaces = 0;
        assert_eq!(choose_nsid(NQN, &state, None), Err(NvmfError::NoFreeNsid { nqn: NQN.into(), max: 0 }));
    }

    #[test]
    fn p2p_placement_needs_a_provider_the_bdev_can_dma_from() {
        let world = World::new();
        world.malloc("M0");
        let bdev = world.bdevs.get("M0").unwrap();
        assert!(choose_provider(&bdev, &P2pPlacement::Off).unwrap().is_none());
        for placement in [P2pPlacement::Auto, P2pPlacement::Provider("cmb0".into())] {
            let err = choose_provider(&bdev, &placement).err().expect("refused").to_string();
            assert!(err.starts_with("p2pmem: bdev 'M0'"), "{placement:?}: {err}");
        }
        assert_eq!(P2pPlacement::parse("auto"), P2pPlacement::Auto);
        assert_eq!(P2pPlacement::parse("cmb0").as_str(), "cmb0");
    }

    #[test]
    fn namespaces_claim_their_bdev_until_removed() {
        let world = world();
        for name in ["M0", "M1", "M2"] {
            world.malloc(name);
        }
        assert_eq!(add(&world, NamespaceSpec::new("M0")), Ok(1));
        assert_eq!(add(&world, NamespaceSpec { nsid: Some(3), ..NamespaceSpec::new("M1") }), Ok(3));
        assert_eq!(add(&world, NamespaceSpec::new("M2")), Ok(2), "the lowest free NSID");
        assert_eq!(world.bdevs.claim_of("M0").map(|(_, by)| by), Some(NS_CLAIMANT.to_string()));
        // A claimed bdev cannot be exported twice; nothing is left behind by the refusal.
        let err = add(&world, NamespaceSpec::new("M0")).unwrap_err();
        assert!(matches!(err, NvmfError::Bdev(BdevError::Claimed { .. })), "{err:?}");
        let err = add(&world, NamespaceSpec { nsid: Some(2), ..NamespaceSpec::new("M0") }).unwrap_err();
        assert_eq!(err, NvmfError::NsidInUse { nqn: NQN.into(), nsid: 2 });
        assert_eq!(bdevs_of(&world), vec![(1, "M0".into()), (2, "M2".into()), (3, "M1".into())]);

        // Identifiers: the bdev's UUID, the NGUID from it, or what was asked for.
        let subsystem = world.target.find_subsystem(NQN).unwrap();
        let ns = subsystem.state.lock().namespaces[&1].clone();
        assert_eq!((ns.uuid, ns.nguid, ns.eui64), (world.bdevs.get("M0").unwrap().info().uuid.0, ns.uuid, [0; 8]));
        drop(ns);

        assert_eq!(world.on_app(|ctx, target| target.remove_namespace(ctx, NQN, 1)), Ok(()));
        assert!(world.bdevs.claim_of("M0").is_none(), "removing the namespace released its bdev");
        let err = world.on_app(|ctx, target| target.remove_namespace(ctx, NQN, 1)).unwrap_err();
        assert_eq!(err, NvmfError::NoSuchNamespace { nqn: NQN.into(), nsid: 1 });
        let err = add(&world, NamespaceSpec::new("nope")).unwrap_err();
        assert_eq!(err, NvmfError::Bdev(BdevError::NotFound("nope".into())));
    }

    #[test]
    fn the_discovery_subsystem_and_unknown_ones_have_no_namespaces() {
        let world = world();
        world.malloc("M0");
        let err = world.on_app(|ctx, target| target.add_namespace(ctx, "discovery", NamespaceSpec::new("M0")));
        assert_eq!(err, Err(NvmfError::Discovery("namespaces")));
        let err = world
            .on_app(|ctx, target| target.add_namespace(ctx, "nqn.2016-06.io.peerless:x", NamespaceSpec::new("M0")));
        assert_eq!(err, Err(NvmfError::NoSuchSubsystem("nqn.2016-06.io.peerless:x".into())));
        assert!(world.target.find_subsystem(DISCOVERY_NQN).unwrap().state.lock().namespaces.is_empty());
        assert!(world.bdevs.claim_of("M0").is_none());
    }

    #[test]
    fn a_namespace_goes_with_its_bdev() {
        let world = world();
        world.malloc("M0");
        assert_eq!(add(&world, NamespaceSpec::new("M0")), Ok(1));
        world.on_app(|ctx, target| target.0.bdevs.unregister(Some(ctx), "M0")).unwrap();
        assert_eq!(bdevs_of(&world), vec![]);
    }

    /// A namespace still held elsewhere (a poll group that has not yet dropped its view)
    /// keeps its bdev open after removal. When that bdev goes, the NSID may belong to
    /// another bdev by then: it must stay.
    #[test]
    fn a_bdev_going_away_leaves_a_reused_nsid_alone() {
        let world = world();
        world.malloc("M0");
        world.malloc("M1");
        assert_eq!(add(&world, NamespaceSpec::new("M0")), Ok(1));
        let held = world.target.find_subsystem(NQN).unwrap().state.lock().namespaces[&1].clone();
        assert_eq!(world.on_app(|ctx, target| target.remove_namespace(ctx, NQN, 1)), Ok(()));
        assert_eq!(add(&world, NamespaceSpec { nsid: Some(1), ..NamespaceSpec::new("M1") }), Ok(1));
        world.on_app(|ctx, target| target.0.bdevs.unregister(Some(ctx), "M0")).unwrap();
        assert_eq!(bdevs_of(&world), vec![(1, "M1".into())]);
        drop(held);
    }

    /// The hot-remove callback lives in the bdev manager, which the target owns: it must
    /// not keep the target alive.
    #[test]
    fn a_namespace_does_not_keep_its_target_alive() {
        let world = world();
        world.malloc("M0");
        assert_eq!(add(&world, NamespaceSpec::new("M0")), Ok(1));
        let target = Arc::downgrade(&world.target.0);
        let bdevs = world.bdevs.clone();
        drop(world);
        assert!(target.upgrade().is_none(), "something still holds the target");
        assert!(bdevs.claim_of("M0").is_none(), "the target's namespaces went with it");
    }
}
