//! Asymmetric Namespace Access (NVMe Base 2.0, 8.1): each listener of a subsystem with
//! `ana_reporting` holds one state per ANA group, and a controller sees the states of
//! the listener its admin queue connected through. The control plane changes states
//! under the subsystem's lock; the data path reads them with one atomic load per
//! command, so a state change needs no message to the poll groups.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use peerless_bdev::status::sct;

use super::ctrlr::{event, Controller, EVENT_TYPE_NOTICE, NOTICE_ANA_CHANGE};
use super::error::NvmfError;
use super::subsystem::Subsystem;
use super::target::NvmfTarget;
use crate::nvme::log::{self as logpage, lid, AnaGroupDescriptor};
use crate::nvme::Status;

/// ANA groups a subsystem with `ana_reporting` may have. Groups are numbered up to
/// max_namespaces (ANAGRPMAX, as SPDK reports it) and every listener keeps a state for
/// each, so the count is bounded where `nvmf_create_subsystem` allows ANA.
pub const MAX_ANA_GROUPS: u32 = 1024;
/// ANATT: seconds a host waits for a group in the change state (SPDK's value; states
/// change at once here, so hosts never wait on it).
pub const ANA_TRANSITION_TIME_S: u8 = 10;

/// An ANA state (NVMe Base 2.0, 8.1.3; the values of Figure 208's ANA State field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnaState {
    Optimized = 0x1,
    NonOptimized = 0x2,
    Inaccessible = 0x3,
    PersistentLoss = 0x4,
    Change = 0xf,
}

impl AnaState {
    /// The states `nvmf_subsystem_listener_set_ana_state` takes, by SPDK's names.
    pub const SETTABLE: [AnaState; 3] = [AnaState::Optimized, AnaState::NonOptimized, AnaState::Inaccessible];

    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non_optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::PersistentLoss => "persistent_loss",
            AnaState::Change => "change",
        }
    }

    /// A state an operator may set. Persistent loss and change are the target's to
    /// report, never the RPC's (SPDK refuses them too): a group is in change only while
    /// a transition runs, and persistent loss is final.
    pub fn parse_settable(name: &str) -> Result<AnaState, NvmfError> {
        if let Some(state) = AnaState::SETTABLE.into_iter().find(|state| state.name() == name) {
            return Ok(state);
        }
        let why = match name {
            "persistent_loss" | "change" => format!("'{name}' is reported by the target, not set"),
            _ => format!("'{name}' is not an ANA state"),
        };
        Err(NvmfError::Invalid(format!("ana_state {why}; use optimized, non_optimized or inaccessible")))
    }

    fn from_wire(value: u8) -> AnaState {
        match value {
            0x1 => AnaState::Optimized,
            0x2 => AnaState::NonOptimized,
            0x4 => AnaState::PersistentLoss,
            0xf => AnaState::Change,
            _ => AnaState::Inaccessible,
        }
    }

    /// The status a command to a namespace of a group in this state completes with, if
    /// it cannot run (NVMe Base 2.0, Figure 103, Path Related Status; 8.1.3.3-5).
    pub fn refusal(self) -> Option<Status> {
        let sc = match self {
            AnaState::Optimized | AnaState::NonOptimized => return None,
            AnaState::PersistentLoss => 0x01,
            AnaState::Inaccessible => 0x02,
            AnaState::Change => 0x03,
        };
        Some(Status { sct: sct::PATH, sc })
    }
}

/// One listener's ANA states, a state and a change count per group (index = ANAGRPID - 1).
#[derive(Debug)]
pub struct ListenerAna {
    states: Box<[AtomicU8]>,
    group_changes: Box<[AtomicU64]>,
    changes: AtomicU64,
    /// Cleared when the listener is removed: its controllers then see every group
    /// inaccessible (as SPDK reports an inactive listener's).
    active: AtomicBool,
}

impl ListenerAna {
    pub fn new(groups: u32, initial: AnaState) -> ListenerAna {
        debug_assert!(groups <= MAX_ANA_GROUPS, "bounded by nvmf_create_subsystem");
        ListenerAna {
            states: (0..groups).map(|_| AtomicU8::new(initial as u8)).collect(),
            group_changes: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            changes: AtomicU64::new(0),
            active: AtomicBool::new(true),
        }
    }

    pub fn groups(&self) -> u32 {
        self.states.len() as u32
    }

    /// The state of group `anagrpid`; a group out of range has none and is inaccessible.
    pub fn state(&self, anagrpid: u32) -> AnaState {
        if !self.active.load(Ordering::Acquire) {
            return AnaState::Inaccessible;
        }
        let slot = (anagrpid as usize).wrapping_sub(1);
        self.states.get(slot).map_or(AnaState::Inaccessible, |state| AnaState::from_wire(state.load(Ordering::Acquire)))
    }

    /// The listener's change count: how many times any of its states changed.
    pub fn change_count(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn group_change_count(&self, anagrpid: u32) -> u64 {
        let slot = (anagrpid as usize).wrapping_sub(1);
        self.group_changes.get(slot).map_or(0, |count| count.load(Ordering::Acquire))
    }

    /// The change counts now, from which a controller's own counts start.
    pub fn counts(&self) -> AnaCounts {
        AnaCounts {
            total: self.change_count(),
            groups: self.group_changes.iter().map(|count| count.load(Ordering::Acquire)).collect(),
        }
    }

    /// Sets group `anagrpid`'s state, or every group's for `None`; the caller holds the
    /// subsystem's lock. Whether any state changed.
    pub fn set(&self, state: AnaState, anagrpid: Option<u32>) -> bool {
        let mut changed = false;
        for (index, slot) in self.states.iter().enumerate() {
            let group = index as u32 + 1;
            if anagrpid.is_some_and(|only| only != group) || slot.load(Ordering::Acquire) == state as u8 {
                continue;
            }
            slot.store(state as u8, Ordering::Release);
            self.group_changes[index].fetch_add(1, Ordering::AcqRel);
            changed = true;
        }
        if changed {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Groups whose state is not optimized, for `save_config`.
    pub fn not_optimized(&self) -> Vec<(u32, AnaState)> {
        (1..=self.groups()).map(|group| (group, self.state(group))).filter(|(_, s)| *s != AnaState::Optimized).collect()
    }
}

/// A listener's change counts at one moment. The log page's counts start at 0 after a
/// Controller Level Reset (NVMe Base 2.0, 5.16.1.13), so each controller keeps the
/// listener's counts at its connect and last reset and reports the changes since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnaCounts {
    total: u64,
    groups: Box<[u64]>,
}

impl AnaCounts {
    fn group(&self, anagrpid: u32) -> u64 {
        self.groups.get((anagrpid as usize).wrapping_sub(1)).copied().unwrap_or(0)
    }
}

/// The ANA log page (NVMe Base 2.0, 5.16.1.13) as controller `controller` sees it: one
/// descriptor per group that has a namespace, in group order, each with the state of the
/// controller's listener. `rgo` (Return Groups Only) leaves out the NSID lists.
pub fn log_page(controller: &Controller, rgo: bool) -> Vec<u8> {
    let Some(ana) = controller.ana.as_ref() else { return Vec::new() };
    let base = controller.ana_counts_base();
    let state = controller.subsystem.state.lock();
    let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
    for ns in state.namespaces.values() {
        match groups.iter_mut().find(|(group, _)| *group == ns.anagrpid) {
            Some((_, nsids)) => nsids.push(ns.nsid),
            None => groups.push((ns.anagrpid, vec![ns.nsid])),
        }
    }
    drop(state);
    groups.sort_unstable_by_key(|(group, _)| *group);
    let descriptors: Vec<AnaGroupDescriptor<'_>> = groups
        .iter()
        .map(|(group, nsids)| AnaGroupDescriptor {
            anagrpid: *group,
            change_count: ana.group_change_count(*group).wrapping_sub(base.group(*group)),
            state: ana.state(*group) as u8,
            nsids: if rgo { &[] } else { nsids },
        })
        .collect();
    logpage::ana(ana.change_count().wrapping_sub(base.total), &descriptors)
}

impl NvmfTarget {
    /// `nvmf_subsystem_listener_set_ana_state`: sets the state of group `anagrpid` (every
    /// group for `None` or 0, as SPDK takes it) on the listener of `trtype` at `addr`, and
    /// sends the ANA change notice to the controllers connected through it.
    pub fn set_ana_state(
        &self,
        nqn: &str,
        trtype: &str,
        addr: SocketAddr,
        state: AnaState,
        anagrpid: Option<u32>,
    ) -> Result<(), NvmfError> {
        let subsystem = self.nvm_subsystem(nqn, "ANA states")?;
        if !AnaState::SETTABLE.contains(&state) {
            return Err(NvmfError::Invalid(format!("ana_state '{}' is reported by the target, not set", state.name())));
        }
        let anagrpid = anagrpid.filter(|group| *group != 0);
        let changed = {
            let sub = subsystem.state.lock();
            if !sub.ana_reporting {
                return Err(NvmfError::Invalid(format!(
                    "{nqn} does not report ANA: create it with ana_reporting to set ANA states"
                )));
            }
            if let Some(group) = anagrpid.filter(|group| *group > sub.max_namespaces) {
                return Err(NvmfError::Invalid(format!(
                    "anagrpid {group} is more than ANAGRPMAX, {} (max_namespaces) for {nqn}",
                    sub.max_namespaces
                )));
            }
            let Some(listener) = sub.listeners.iter().find(|listener| listener.is(trtype, addr)) else {
                let trtype = trtype.to_uppercase();
                return Err(NvmfError::NoSuchListener { nqn: nqn.to_string(), trtype, addr });
            };
            listener.ana.set(state, anagrpid).then(|| listener.ana.clone())
        };
        if let Some(ana) = changed {
            self.ana_changed(&subsystem, &ana);
        }
        Ok(())
    }

    /// Tells each controller that sees `ana` that its ANA log page changed.
    pub fn ana_changed(&self, subsystem: &Arc<Subsystem>, ana: &Arc<ListenerAna>) {
        let controllers: Vec<Arc<Controller>> = subsystem
            .state
            .lock()
            .controllers
            .values()
            .filter(|controller| controller.ana.as_ref().is_some_and(|seen| Arc::ptr_eq(seen, ana)))
            .cloned()
            .collect();
        for controller in controllers {
            self.post_event(&controller, event(EVENT_TYPE_NOTICE, NOTICE_ANA_CHANGE, lid::ANA), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::nvme::identify::ControllerType;
    use crate::nvme::{le16, le32, le64};
    use crate::nvmf::ctrlr::{prop, AdminState};
    use crate::nvmf::namespace::NamespaceSpec;
    use crate::nvmf::subsystem::SubsystemConfig;
    use crate::nvmf::testing::{World, TRTYPE};

    const NQN: &str = "nqn.2016-06.io.peerless:ana";
    const PLAIN: &str = "nqn.2016-06.io.peerless:plain";

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A subsystem with ANA and four groups, namespaces 1 (group 1), 2 (group 3) and 3
    /// (group 3), and listeners on ports 4420 and 4421; and one without ANA.
    fn world() -> World {
        let world = World::new();
        let ana = SubsystemConfig { ana_reporting: true, max_namespaces: 4, ..SubsystemConfig::new(NQN) };
        world.target.create_subsystem(&ana).unwrap();
        world.target.create_subsystem(&SubsystemConfig::new(PLAIN)).unwrap();
        for (name, group) in [("M0", None), ("M1", Some(3)), ("M2", Some(3))] {
            world.malloc(name);
            let spec = NamespaceSpec { anagrpid: group, ..NamespaceSpec::new(name) };
            world.on_app(move |ctx, target| target.add_namespace(ctx, NQN, spec)).unwrap();
        }
        for port in [4420, 4421] {
            world
                .on_app(move |ctx, target| {
                    target.add_listener(ctx, NQN, TRTYPE, addr(port), AnaState::Optimized, None, false)
                })
                .unwrap();
        }
        world
    }

    fn controller_on(world: &World, port: u16) -> Controller {
        let subsystem = world.target.lookup(NQN).unwrap();
        let ana = subsystem.state.lock().listeners.iter().find(|l| l.addr == addr(port)).map(|l| l.ana.clone());
        Controller::new(1, subsystem, "host".into(), [0; 16], ControllerType::Io, Duration::ZERO, 1).with_ana(ana)
    }

    #[test]
    fn namespaces_join_their_nsid_s_group_or_the_one_named() {
        let world = world();
        let subsystem = world.target.lookup(NQN).unwrap();
        let groups: Vec<u32> = subsystem.state.lock().namespaces.values().map(|ns| ns.anagrpid).collect();
        assert_eq!(groups, vec![1, 3, 3]);
        world.malloc("M3");
        let refused = |group: u32, nqn: &'static str| {
            let spec = NamespaceSpec { anagrpid: Some(group), ..NamespaceSpec::new("M3") };
            world.on_app(move |ctx, target| target.add_namespace(ctx, nqn, spec)).unwrap_err().to_string()
        };
        assert!(refused(5, NQN).contains("anagrpid 5 is more than ANAGRPMAX, 4"));
        assert!(refused(u32::MAX, NQN).contains("ANAGRPMAX"));
        assert!(refused(1, PLAIN).contains("anagrpid: 1"), "no groups without ANA reporting");
        let zero = NamespaceSpec { anagrpid: Some(0), ..NamespaceSpec::new("M3") };
        assert_eq!(world.on_app(move |ctx, target| target.add_namespace(ctx, NQN, zero)), Ok(4));
        assert_eq!(subsystem.state.lock().namespaces[&4].anagrpid, 4, "0 asks for the default, as in SPDK");
    }

    #[test]
    fn states_are_set_per_listener_and_refused_when_they_cannot_be() {
        let world = world();
        let target = &world.target;
        assert_eq!(target.set_ana_state(NQN, TRTYPE, addr(4421), AnaState::Inaccessible, Some(3)), Ok(()));
        let (on_a, on_b) = (controller_on(&world, 4420), controller_on(&world, 4421));
        assert_eq!((on_a.ana_refusal(3), on_b.ana_refusal(1)), (None, None));
        assert_eq!(on_b.ana_refusal(3), Some(Status { sct: 3, sc: 2 }), "only B's group 3");
        assert_eq!(
            target.set_ana_state(NQN, TRTYPE, addr(4420), AnaState::NonOptimized, Some(0)),
            Ok(()),
            "0 is every group"
        );
        assert!((1..=4).all(|group| on_a.ana.as_ref().unwrap().state(group) == AnaState::NonOptimized));

        let err = |result: Result<(), NvmfError>| result.unwrap_err().to_string();
        assert!(err(target.set_ana_state(NQN, TRTYPE, addr(4420), AnaState::Optimized, Some(5))).contains("ANAGRPMAX"));
        assert!(
            err(target.set_ana_state(NQN, TRTYPE, addr(4499), AnaState::Optimized, None)).contains("does not listen")
        );
        assert!(
            err(target.set_ana_state(PLAIN, TRTYPE, addr(4420), AnaState::Optimized, None)).contains("ana_reporting")
        );
        assert!(err(target.set_ana_state(NQN, TRTYPE, addr(4420), AnaState::Change, None))
            .contains("reported by the target"));
        assert!(
            err(target.set_ana_state("discovery", TRTYPE, addr(4420), AnaState::Optimized, None)).contains("discovery")
        );
        assert!(err(target.set_ana_state(
            "nqn.2016-06.io.peerless:none",
            TRTYPE,
            addr(4420),
            AnaState::Optimized,
            None
        ))
        .contains("Unable to find subsystem"));
        let plain_listener = world.on_app(|ctx, target| {
            target.add_listener(ctx, PLAIN, TRTYPE, addr(4430), AnaState::Inaccessible, None, false)
        });
        assert!(err(plain_listener).contains("does not report ANA"));
    }

    #[test]
    fn each_controller_reads_its_own_listener_s_states() {
        let world = world();
        let (on_a, on_b) = (controller_on(&world, 4420), controller_on(&world, 4421));
        world.target.set_ana_state(NQN, TRTYPE, addr(4421), AnaState::Inaccessible, Some(3)).unwrap();
        let page_a = log_page(&on_a, false);
        let page_b = log_page(&on_b, false);
        // Groups 1 (NSID 1) and 3 (NSIDs 2 and 3); groups 2 and 4 have no namespace.
        assert_eq!(page_b.len(), 16 + 32 + 4 + 32 + 8);
        assert_eq!((le64(&page_a, 0), le64(&page_b, 0)), (0, 1), "B's change count moved");
        assert_eq!(le16(&page_b, 8), 2);
        assert_eq!((le32(&page_b, 16), le32(&page_b, 20), page_b[32], le32(&page_b, 48)), (1, 1, 1, 1));
        assert_eq!((le32(&page_b, 52), le32(&page_b, 56), page_b[68]), (3, 2, 3), "group 3 inaccessible through B");
        assert_eq!((le32(&page_b, 84), le32(&page_b, 88)), (2, 3));
        assert_eq!(page_a[68], 1, "and optimized through A");
        let groups_only = log_page(&on_b, true);
        assert_eq!((groups_only.len(), le32(&groups_only, 20), le32(&groups_only, 48)), (16 + 64, 0, 3));
        assert_eq!((le64(&page_b, 24), le64(&page_b, 60)), (0, 1), "group 3 changed once, group 1 never");

        // Change counts start at 0 at a controller's connect and at each Controller Level Reset.
        let late = Arc::new(controller_on(&world, 4421));
        assert_eq!((le64(&log_page(&late, false), 0), le64(&log_page(&late, false), 60)), (0, 0));
        world.target.set_ana_state(NQN, TRTYPE, addr(4421), AnaState::Optimized, Some(3)).unwrap();
        assert_eq!((le64(&log_page(&late, false), 0), le64(&log_page(&late, false), 60)), (1, 1));
        assert_eq!(le64(&log_page(&on_b, false), 0), 2, "the earlier controller saw both changes");
        let mut admin = AdminState::new(late.clone(), 128, 4, 0);
        assert!(admin.property_set(prop::CC, 1 | (6 << 16) | (4 << 20)));
        assert!(admin.property_set(prop::CC, 0));
        assert_eq!((le64(&log_page(&late, false), 0), le64(&log_page(&late, false), 60)), (0, 0));

        world.on_app(|ctx, target| target.remove_listener(ctx, NQN, TRTYPE, addr(4420))).unwrap();
        assert_eq!(
            on_a.ana_refusal(1),
            Some(Status { sct: 3, sc: 2 }),
            "a removed listener's controllers reach nothing"
        );
        assert_eq!(log_page(&on_a, false)[32], AnaState::Inaccessible as u8);
    }

    #[test]
    fn settable_states_are_spdk_s_three() {
        for state in AnaState::SETTABLE {
            assert_eq!(AnaState::parse_settable(state.name()), Ok(state));
        }
        for (name, why) in [
            ("persistent_loss", "reported by the target"),
            ("change", "reported by the target"),
            ("Optimized", "not an ANA state"),
            ("", "not an ANA state"),
        ] {
            let err = AnaState::parse_settable(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn states_map_to_path_statuses() {
        assert_eq!(AnaState::Optimized.refusal(), None);
        assert_eq!(AnaState::NonOptimized.refusal(), None, "non-optimized paths still serve I/O");
        assert_eq!(AnaState::PersistentLoss.refusal(), Some(Status { sct: 3, sc: 1 }));
        assert_eq!(AnaState::Inaccessible.refusal(), Some(Status { sct: 3, sc: 2 }));
        assert_eq!(AnaState::Change.refusal(), Some(Status { sct: 3, sc: 3 }));
    }

    #[test]
    fn a_listener_changes_one_group_or_all_and_counts_changes() {
        let ana = ListenerAna::new(4, AnaState::Optimized);
        assert_eq!((ana.groups(), ana.change_count()), (4, 0));
        assert!(!ana.set(AnaState::Optimized, None), "no change, no count");
        assert_eq!(ana.change_count(), 0);
        assert!(ana.set(AnaState::Inaccessible, Some(2)));
        assert_eq!(
            (ana.state(1), ana.state(2), ana.state(3)),
            (AnaState::Optimized, AnaState::Inaccessible, AnaState::Optimized)
        );
        assert_eq!((ana.change_count(), ana.group_change_count(2), ana.group_change_count(1)), (1, 1, 0));
        assert!(!ana.set(AnaState::Inaccessible, Some(2)), "setting the same state again changes nothing");
        assert!(ana.set(AnaState::NonOptimized, None));
        assert!((1..=4).all(|group| ana.state(group) == AnaState::NonOptimized));
        assert_eq!(ana.not_optimized().len(), 4);
        assert_eq!((ana.state(0), ana.state(5)), (AnaState::Inaccessible, AnaState::Inaccessible), "no such group");
        ana.deactivate();
        assert_eq!(ana.state(1), AnaState::Inaccessible, "a removed listener serves nothing");
    }

    #[test]
    fn the_log_page_holds_a_header_and_a_descriptor_per_group() {
        let page = logpage::ana(
            7,
            &[
                AnaGroupDescriptor { anagrpid: 1, change_count: 2, state: 1, nsids: &[1, 3] },
                AnaGroupDescriptor { anagrpid: 2, change_count: 5, state: 3, nsids: &[2] },
            ],
        );
        assert_eq!(page.len(), 16 + 32 + 8 + 32 + 4);
        assert_eq!((le64(&page, 0), le16(&page, 8)), (7, 2));
        assert_eq!((le32(&page, 16), le32(&page, 20), le64(&page, 24), page[32]), (1, 2, 2, 1));
        assert_eq!((le32(&page, 48), le32(&page, 52)), (1, 3));
        assert_eq!((le32(&page, 56), le32(&page, 60), le64(&page, 64), page[72]), (2, 1, 5, 3));
        assert_eq!(le32(&page, 88), 2);
        let groups_only = logpage::ana(7, &[AnaGroupDescriptor { anagrpid: 9, change_count: 0, state: 2, nsids: &[] }]);
        assert_eq!((groups_only.len(), le32(&groups_only, 16), le32(&groups_only, 20)), (48, 9, 0));
    }
}
