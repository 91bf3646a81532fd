//! A poll group: what one reactor thread serves of the target. It holds that thread's
//! view of namespaces (a bdev channel per namespace, found without a lock once cached),
//! and each transport's part of the group with its cache of that transport's data
//! buffers. Everything here is touched only by its thread; the rest of the target
//! reaches it by message (`with`).

use std::sync::{Arc, Weak};

use peerless_bdev::BdevHandle;
use peerless_core::mem::IoBufCache;
use peerless_core::reactor::{PollStatus, ThreadCtx};

use super::io_cmd::NsInfo;
use super::namespace::Namespace;
use super::qpair::{Qpair, QpairStats};
use super::subsystem::Subsystem;
use super::target::TargetShared;
use super::transport::{GroupCtx, Transport, TransportPollGroup};
use super::NvmfTarget;

/// A namespace as one poll group uses it.
pub struct NsEntry {
    pub ns: Arc<Namespace>,
    pub handle: BdevHandle,
    /// What its commands are checked against.
    pub info: NsInfo,
}

/// Namespaces by subsystem, cached on first use. Lists, not maps: a subsystem has few
/// namespaces, and a linear scan of a handful beats hashing on every I/O.
#[derive(Default)]
pub struct NsTables {
    by_subsystem: Vec<Vec<(u32, NsEntry)>>,
}

impl NsTables {
    pub fn get(&mut self, ctx: &mut ThreadCtx, subsystem: &Arc<Subsystem>, nsid: u32) -> Option<&NsEntry> {
        let sid = subsystem.id as usize;
        if self.by_subsystem.len() <= sid {
            self.by_subsystem.resize_with(sid + 1, Vec::new);
        }
        let position = self.by_subsystem[sid].iter().position(|(id, _)| *id == nsid);
        let position = match position {
            Some(position) => position,
            None => {
                // A miss takes the subsystem's lock once; an unknown NSID never grows the table.
                let (ns, limits) = {
                    let state = subsystem.state.lock();
                    (state.namespaces.get(&nsid).cloned()?, state.limits)
                };
                let handle = ns.desc.channel(ctx);
                let info = NsInfo::new(ns.desc.bdev().info().block_size, ns.desc.num_blocks(), limits);
                self.by_subsystem[sid].push((nsid, NsEntry { ns, handle, info }));
                self.by_subsystem[sid].len() - 1
            }
        };
        self.by_subsystem[sid].get(position).map(|(_, entry)| entry)
    }

    pub fn forget(&mut self, subsystem_id: u32, nsid: u32) {
        if let Some(table) = self.by_subsystem.get_mut(subsystem_id as usize) {
            table.retain(|(id, _)| *id != nsid);
        }
    }

    pub fn forget_subsystem(&mut self, subsystem_id: u32) {
        if let Some(table) = self.by_subsystem.get_mut(subsystem_id as usize) {
            table.clear();
        }
    }
}

/// Totals of queue pairs a group has let go, so counters survive them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retired {
    pub stats: QpairStats,
    pub admin_qpairs: u64,
    pub io_qpairs: u64,
}

impl Retired {
    /// Keeps what a queue pair counted; the transport calls it as it drops one.
    pub fn retire(&mut self, qpair: &Qpair) {
        self.stats.add(&qpair.stats);
        match qpair.qid() {
            Some(0) => self.admin_qpairs += 1,
            Some(_) => self.io_qpairs += 1,
            None => {}
        }
    }
}

/// Per-poll-group counters in `nvmf_get_stats`' terms.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollGroupStats {
    pub admin_qpairs: u64,
    pub io_qpairs: u64,
    pub current_admin_qpairs: u64,
    pub current_io_qpairs: u64,
    pub current_unassociated_qpairs: u64,
    pub completed_nvme_io: u64,
    pub pending_bdev_io: u64,
    /// Payload bytes placed in buffers of each memory kind (MemKind::index order).
    pub placed_bytes: [u64; 3],
    pub p2p_fallbacks: u64,
    pub buffer_waits: u64,
    /// Time the group's thread spent in passes that found work, as its reactor accounts
    /// them: on a busy-polling reactor, the CPU time its I/O cost (idle polls excluded),
    /// so `busy_ns / completed_nvme_io` is the CPU time per I/O a regression shows in.
    pub busy_ns: u64,
}

/// One transport's part of the group and its buffer cache.
struct TransportPart {
    trtype: &'static str,
    group: Box<dyn TransportPollGroup>,
    cache: IoBufCache<'static>,
}

pub struct PollGroup {
    target: Weak<TargetShared>,
    tables: NsTables,
    transports: Vec<TransportPart>,
    retired: Retired,
    poller_registered: bool,
}

/// A queue pair's row in `nvmf_subsystem_get_qpairs`.
pub struct QpairRow {
    pub cntlid: u16,
    pub qid: u16,
    pub state: &'static str,
    pub trtype: &'static str,
    pub peer: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    /// DH-HMAC-CHAP state, digest and group of a queue that authenticated (or is).
    pub auth: Option<(&'static str, &'static str, &'static str)>,
}

impl PollGroup {
    pub fn new(target: Weak<TargetShared>, _ctx: &mut ThreadCtx) -> PollGroup {
        PollGroup {
            target,
            tables: NsTables::default(),
            transports: Vec::new(),
            retired: Retired::default(),
            poller_registered: false,
        }
    }

    fn poll(&mut self, ctx: &mut ThreadCtx) -> PollStatus {
        // No clock reads of its own: the reactor already times each pass of the thread,
        // and two more per poll cost about 2 % of a busy reactor.
        let mut busy = false;
        let now_ns = ctx.now_ns();
        let PollGroup { tables, transports, retired, .. } = self;
        for part in transports.iter_mut() {
            let mut group = GroupCtx { tables, buffers: &mut part.cache, now_ns, retired };
            busy |= part.group.poll(ctx, &mut group);
        }
        PollStatus::from_work(busy)
    }

    /// This group's part of `transport`, created on first use.
    pub fn transport_group(
        &mut self,
        ctx: &mut ThreadCtx,
        transport: &Arc<dyn Transport>,
    ) -> &mut dyn TransportPollGroup {
        let trtype = transport.trtype();
        let position = match self.transports.iter().position(|part| part.trtype == trtype) {
            Some(position) => position,
            None => {
                let group = transport.create_poll_group(ctx);
                self.transports.push(TransportPart { trtype, group, cache: transport.pool().cache() });
                self.transports.len() - 1
            }
        };
        self.transports[position].group.as_mut()
    }

    /// Runs `visit` on a transport's group with what the engine lends it.
    pub fn with_transport<R>(
        &mut self,
        ctx: &mut ThreadCtx,
        transport: &Arc<dyn Transport>,
        visit: impl FnOnce(&mut dyn TransportPollGroup, &mut ThreadCtx, &mut GroupCtx<'_>) -> R,
    ) -> R {
        self.transport_group(ctx, transport);
        let now_ns = ctx.now_ns();
        let PollGroup { tables, transports, retired, .. } = self;
        let part = transports
            .iter_mut()
            .find(|part| part.trtype == transport.trtype())
            .unwrap_or_else(|| unreachable!("created just above"));
        let mut group = GroupCtx { tables, buffers: &mut part.cache, now_ns, retired };
        visit(part.group.as_mut(), ctx, &mut group)
    }

    fn for_each_qpair(&mut self, mut visit: impl FnMut(&mut Qpair, &'static str)) {
        for part in &mut self.transports {
            let trtype = part.trtype;
            part.group.for_each_qpair(&mut |qpair| visit(qpair, trtype));
        }
    }

    fn find_qpair(&mut self, id: u64, work: impl FnOnce(&mut Qpair)) {
        let mut work = Some(work);
        self.for_each_qpair(|qpair, _| {
            if qpair.id == id {
                if let Some(work) = work.take() {
                    work(qpair);
                }
            }
        });
    }

    pub fn forget_namespace(&mut self, subsystem_id: u32, nsid: u32) {
        self.tables.forget(subsystem_id, nsid);
    }

    pub fn forget_subsystem(&mut self, subsystem_id: u32) {
        self.tables.forget_subsystem(subsystem_id);
    }

    pub fn deliver_event(&mut self, qpair_id: u64, cntlid: u16, dw0: u32, changed_nsid: Option<u32>) {
        self.find_qpair(qpair_id, |qpair| qpair.deliver_event(cntlid, dw0, changed_nsid));
    }

    /// Asks a queue to abort its command `cid`; whether it did.
    pub fn abort(&mut self, qpair_id: u64, cid: u16) -> bool {
        let mut aborted = false;
        self.find_qpair(qpair_id, |qpair| aborted = qpair.abort_waiting(cid));
        aborted
    }

    pub fn abort_answered(&mut self, qpair_id: u64, slot: u16, aborted: bool) {
        self.find_qpair(qpair_id, |qpair| qpair.abort_answered(slot, aborted));
    }

    /// Closes every queue (target shutdown); each goes once its in-flight I/O is back.
    pub fn close_all(&mut self, why: &str) {
        self.for_each_qpair(|qpair, _| qpair.close(why));
    }

    pub fn close_qpair(&mut self, qpair_id: u64, why: &str) {
        self.find_qpair(qpair_id, |qpair| qpair.close(why));
    }

    /// The group's figures; `thread_busy_ns` is its thread's busy time (`ThreadCtx::stats`).
    pub fn stats(&mut self, thread_busy_ns: u64) -> PollGroupStats {
        let retired = self.retired;
        let mut live = Retired::default();
        let mut stats = PollGroupStats::default();
        self.for_each_qpair(|qpair, _| {
            live.retire(qpair);
            stats.pending_bdev_io += qpair.outstanding() as u64;
            if qpair.is_closing() {
                return;
            }
            match qpair.qid() {
                Some(0) => stats.current_admin_qpairs += 1,
                Some(_) => stats.current_io_qpairs += 1,
                None => stats.current_unassociated_qpairs += 1,
            }
        });
        stats.admin_qpairs = retired.admin_qpairs + live.admin_qpairs;
        stats.io_qpairs = retired.io_qpairs + live.io_qpairs;
        let mut totals = retired.stats;
        totals.add(&live.stats);
        stats.completed_nvme_io = totals.completed;
        stats.placed_bytes = totals.placed_bytes;
        stats.p2p_fallbacks = totals.p2p_fallbacks;
        stats.buffer_waits = totals.buffer_waits;
        stats.busy_ns = thread_busy_ns;
        stats
    }

    /// This group's `transports` entries of `nvmf_get_stats`: each transport part's type
    /// and what the transport reports of it.
    pub fn transport_stats(&self) -> Vec<serde_json::Value> {
        self.transports
            .iter()
            .map(|part| {
                let mut entry = serde_json::Map::new();
                entry.insert("trtype".into(), part.trtype.into());
                if let serde_json::Value::Object(fields) = part.group.dump_stats() {
                    entry.extend(fields);
                }
                serde_json::Value::Object(entry)
            })
            .collect()
    }

    /// Every queue pair of the subsystem `nqn`, for `nvmf_subsystem_get_qpairs`.
    pub fn qpairs(&mut self, nqn: &str) -> Vec<QpairRow> {
        let mut rows = Vec::new();
        self.for_each_qpair(|qpair, trtype| {
            let (Some(controller), Some(qid)) = (qpair.controller(), qpair.qid()) else { return };
            if controller.subsystem.nqn != nqn {
                return;
            }
            let state = match (qpair.is_closing(), qpair.auth_pending()) {
                (true, _) => "deactivating",
                (false, true) => "authenticating",
                (false, false) => "enabled",
            };
            let auth = qpair.auth_status();
            rows.push(QpairRow {
                cntlid: controller.cntlid,
                qid,
                state,
                trtype,
                peer: qpair.peer,
                local: qpair.local,
                auth,
            });
        });
        rows
    }

    /// Connections of every transport, connected or not.
    pub fn connection_count(&self) -> usize {
        self.transports.iter().map(|part| part.group.connection_count()).sum()
    }

    pub fn target(&self) -> Option<NvmfTarget> {
        self.target.upgrade().map(NvmfTarget)
    }
}

/// Runs `work` on this thread's poll group, creating it (and its poller) on first use.
pub fn with<R>(target: &NvmfTarget, ctx: &mut ThreadCtx, work: impl FnOnce(&mut PollGroup, &mut ThreadCtx) -> R) -> R {
    let channel = ctx.get_io_channel(&target.0.pg_device);
    if !channel.borrow().poller_registered {
        channel.borrow_mut().poller_registered = true;
        // The poller holds the group for as long as the thread runs.
        let held = channel.clone();
        ctx.poller("nvmf_poll_group", 0, move |ctx| held.borrow_mut().poll(ctx)).detach();
    }
    let mut group = channel.borrow_mut();
    work(&mut group, ctx)
}

/// Gives every poll group its part of a new transport, then runs `done` on the calling
/// thread. Made now rather than at a group's first connection, so the descriptors a part
/// holds (its epoll, its timers) are taken while configuring, never while the process is
/// short of them and a host is waiting.
pub fn add_transport(
    ctx: &mut ThreadCtx,
    target: &NvmfTarget,
    transport: Arc<dyn Transport>,
    done: impl FnOnce(&mut ThreadCtx) + Send + 'static,
) {
    let target = target.clone();
    let groups: Vec<u64> = target.0.poll_groups.lock().iter().map(|group| group.id().0).collect();
    ctx.app().for_each_thread(
        ctx,
        move |ctx| {
            if groups.contains(&ctx.id().0) {
                with(&target, ctx, |group, ctx| {
                    group.transport_group(ctx, &transport);
                });
            }
        },
        done,
    );
}

/// Visits every poll group thread in turn, collecting what `visit` returns; `done` runs
/// on the calling thread with the results, ordered by thread name.
pub fn gather<T: Send + 'static>(
    ctx: &mut ThreadCtx,
    target: &NvmfTarget,
    visit: impl Fn(&mut PollGroup, &ThreadCtx) -> T + Send + Sync + 'static,
    done: impl FnOnce(&mut ThreadCtx, Vec<(String, T)>) + Send + 'static,
) {
    let collected: Arc<parking_lot::Mutex<Vec<(String, T)>>> = Arc::default();
    let sink = collected.clone();
    let target_for_visit = target.clone();
    let groups: Vec<u64> = target.0.poll_groups.lock().iter().map(|group| group.id().0).collect();
    ctx.app().for_each_thread(
        ctx,
        move |ctx| {
            if groups.contains(&ctx.id().0) {
                let name = ctx.name().to_string();
                let value = with(&target_for_visit, ctx, |group, ctx| visit(group, ctx));
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
