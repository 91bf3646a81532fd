//! A poll group: the connections one reactor thread serves, and that thread's own view
//! of namespaces (a bdev channel per namespace, found without a lock once cached).
//! Everything here is touched only by its thread; the rest of the target reaches it by
//! message (`with`).

use std::sync::{Arc, Weak};

use peerless_bdev::{BdevHandle, BdevInfo};
use peerless_core::reactor::{PollStatus, ThreadCtx};

use super::conn::{Conn, Phase};
use crate::nvmf::subsystem::{Namespace, Subsystem};
use crate::nvmf::target::TargetShared;
use crate::nvmf::NvmfTarget;

/// A namespace as one poll group uses it.
pub struct NsEntry {
    pub ns: Arc<Namespace>,
    pub handle: BdevHandle,
    pub info: BdevInfo,
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
                let ns = subsystem.state.lock().namespaces.get(&nsid).cloned()?;
                let handle = ns.desc.channel(ctx);
                let info = ns.desc.bdev().info().clone();
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
}

pub struct PollGroup {
    target: Weak<TargetShared>,
    conns: Vec<Conn>,
    tables: NsTables,
    poller_registered: bool,
    /// Counters of connections that have gone, so totals survive them.
    retired: crate::tcp::conn::ConnStats,
    seen_admin: u64,
    seen_io: u64,
}

impl PollGroup {
    pub fn new(target: Weak<TargetShared>, _ctx: &mut ThreadCtx) -> PollGroup {
        PollGroup {
            target,
            conns: Vec::new(),
            tables: NsTables::default(),
            poller_registered: false,
            retired: Default::default(),
            seen_admin: 0,
            seen_io: 0,
        }
    }

    fn poll(&mut self, ctx: &mut ThreadCtx) -> PollStatus {
        let mut busy = false;
        let PollGroup { conns, tables, .. } = self;
        for conn in conns.iter_mut() {
            let had_queue = conn.qid();
            busy |= conn.poll(ctx, tables);
            if had_queue.is_none() {
                match conn.qid() {
                    Some(0) => self.seen_admin += 1,
                    Some(_) => self.seen_io += 1,
                    None => {}
                }
            }
            // Output the socket would not take yet keeps the reactor awake.
            busy |= conn.has_pending_output();
        }
        let mut index = 0;
        while index < self.conns.len() {
            if self.conns[index].is_done() {
                let conn = self.conns.swap_remove(index);
                let _ = ctx.unwatch_fd(conn.fd());
                self.retired.completed_io += conn.stats.completed_io;
                self.retired.p2p_fallbacks += conn.stats.p2p_fallbacks;
                for (total, placed) in self.retired.placed_bytes.iter_mut().zip(conn.stats.placed_bytes) {
                    *total += placed;
                }
            } else {
                index += 1;
            }
        }
        PollStatus::from_work(busy)
    }

    pub fn add_conn(&mut self, ctx: &mut ThreadCtx, conn: Conn) {
        if let Err(err) = ctx.watch_fd(conn.fd()) {
            peerless_core::log_warn!("conn {} from {}: cannot watch its socket: {err}", conn.id, conn.peer);
        }
        self.conns.push(conn);
    }

    pub fn forget_namespace(&mut self, subsystem_id: u32, nsid: u32) {
        self.tables.forget(subsystem_id, nsid);
    }

    pub fn forget_subsystem(&mut self, subsystem_id: u32) {
        self.tables.forget_subsystem(subsystem_id);
    }

    pub fn deliver_event(
        &mut self,
        _ctx: &mut ThreadCtx,
        conn_id: u64,
        cntlid: u16,
        dw0: u32,
        changed_nsid: Option<u32>,
    ) {
        if let Some(conn) = self.conns.iter_mut().find(|conn| conn.id == conn_id) {
            conn.deliver_event(cntlid, dw0, changed_nsid);
        }
    }

    /// Closes every connection (target shutdown); each goes once its in-flight I/O is back.
    pub fn close_all(&mut self, why: &str) {
        for conn in &mut self.conns {
            conn.close(why);
        }
    }

    pub fn close_conn(&mut self, conn_id: u64, why: &str) {
        if let Some(conn) = self.conns.iter_mut().find(|conn| conn.id == conn_id) {
            conn.close(why);
        }
    }

    pub fn stats(&self) -> PollGroupStats {
        let mut stats = PollGroupStats {
            admin_qpairs: self.seen_admin,
            io_qpairs: self.seen_io,
            completed_nvme_io: self.retired.completed_io,
            placed_bytes: self.retired.placed_bytes,
            p2p_fallbacks: self.retired.p2p_fallbacks,
            ..PollGroupStats::default()
        };
        for conn in &self.conns {
            stats.completed_nvme_io += conn.stats.completed_io;
            stats.p2p_fallbacks += conn.stats.p2p_fallbacks;
            for (total, placed) in stats.placed_bytes.iter_mut().zip(conn.stats.placed_bytes) {
                *total += placed;
            }
            stats.pending_bdev_io += conn.outstanding() as u64;
            if conn.phase() == Phase::Closing {
                continue;
            }
            match conn.qid() {
                Some(0) => stats.current_admin_qpairs += 1,
                Some(_) => stats.current_io_qpairs += 1,
                None => stats.current_unassociated_qpairs += 1,
            }
        }
        stats
    }

    /// (cntlid, qid, state, peer, local) of every connection, for `nvmf_subsystem_get_qpairs`.
    pub fn qpairs(
        &self,
        subsystem_nqn: &str,
    ) -> Vec<(u16, u16, &'static str, std::net::SocketAddr, std::net::SocketAddr)> {
        self.conns
            .iter()
            .filter_map(|conn| {
                let controller = conn.controller()?;
                if controller.subsystem.nqn != subsystem_nqn {
                    return None;
                }
                let state = if conn.phase() == Phase::Closing { "deactivating" } else { "enabled" };
                Some((controller.cntlid, conn.qid()?, state, conn.peer, conn.local))
            })
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
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
        ctx.register_poller("nvmf_tcp_poll_group", move |ctx| held.borrow_mut().poll(ctx));
    }
    let mut group = channel.borrow_mut();
    work(&mut group, ctx)
}
