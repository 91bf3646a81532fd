//! The TCP transport's part of a poll group: its connections, driven by readiness as
//! SPDK's sock groups are.
//!
//! Every connection's socket is in the group's epoll (level-triggered). A pass asks it,
//! without waiting, which sockets have something, and polls only those plus the
//! connections with work of their own (I/O in the bdev layer, output the socket would
//! not take yet, PDUs left over from a budget, a close draining): the active list. A
//! connected host that sends nothing costs nothing per pass, however many there are.
//! A sweep visits every connection in small slices each `SWEEP_INTERVAL_NS` for what
//! only time brings: deadlines of unestablished connections, keep-alive, giving back
//! idle buffers.
//!
//! A connection with I/O in flight is read directly on every pass, as before readiness
//! (it nearly always has data), and the epoll is then asked at most every
//! `EPOLL_WHILE_BUSY_NS`: one syscall per pass instead of two for a busy host.
//!
//! The reactor watches the group's epoll fd, so a sleeping reactor (interrupt and
//! adaptive mode) wakes when any socket of the group is readable, and a timed poller
//! wakes it for the sweep while the group has connections.

use std::any::Any;
use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsFd;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use peerless_core::log::flags;
use peerless_core::poll_ring::{PollRing, Readiness};
use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};
use peerless_core::{log_debug, log_warn};

use super::conn::Conn;
use super::lifecycle::{Deadlines, IdleWatch, Lifecycle, Progress, Seat, Stage};
use super::options::TcpOptions;
use super::socket::Socket;
use super::tls::TlsSocket;
use crate::nvmf::qpair::Qpair;
use crate::nvmf::transport::{GroupCtx, SockImpl, TransportPollGroup};

/// Readiness reports taken per pass; more wait for the next pass (level-triggered).
const EVENTS_PER_POLL: usize = 256;
/// Requests the io_uring readiness ring takes at once: watches and their removals, each
/// submitted at once, so a few suffice; its completion ring is four times larger.
const URING_WATCH_ENTRIES: u32 = 256;
/// While some connection has I/O in flight (and is read directly every pass), the epoll
/// is asked at most this often: a syscall per pass would cost a busy host a tenth of its
/// IOPS, and a quiet host's first command waits at most this long longer.
const EPOLL_WHILE_BUSY_NS: u64 = 4_000;
/// PDUs a connection may hand the engine per pass when it is the only one polled: a
/// lone busy host takes in a whole burst at once.
const SOLE_PDU_BUDGET: usize = 64;
/// ... and when others are polled too: a host with 128 commands queued gets no more
/// turns than one with 16, so a deep queue cannot starve a shallow one (the fairness
/// bench). Smaller shares cost a lone host its IOPS, hence two figures.
const SHARED_PDU_BUDGET: usize = 16;
/// Every connection is visited this often for deadlines, keep-alive and idle buffers.
const SWEEP_INTERVAL_NS: u64 = 100_000_000;
/// Connections visited per pass of a sweep, so 10,000 idle hosts cost any one pass a few
/// microseconds, never a millisecond.
const SWEEP_SLICE: usize = 64;

struct Entry<S: Socket> {
    conn: Conn<S>,
    /// Its place in its listener's counts; None for connections no listener made (the
    /// simulation's), which have no deadlines either.
    seat: Option<Seat>,
    life: Lifecycle,
    /// On the active list.
    active: bool,
    /// The epoll reported the socket this pass.
    readable: bool,
    /// Polled and read every pass: its socket has no fd, or the group no epoll.
    always: bool,
    /// Its watch in the group's io_uring (a `uring` listener's connection), by token.
    uring_token: Option<u64>,
    /// Whether it has been idle long enough to give back its buffers.
    idle: IdleWatch,
}

impl<S: Socket> Entry<S> {
    fn is_unestablished(&self) -> bool {
        self.seat.as_ref().is_some_and(Seat::is_unestablished)
    }
}

/// The connections of one poll group, over sockets of type `S` (kernel TCP streams, or
/// in-memory ones in tests and the simulation).
pub struct TcpPollGroup<S: Socket = TcpStream> {
    /// None when it could not be created, or for in-memory sockets: every connection is
    /// then polled every pass, as before readiness.
    epoll: Option<Epoll>,
    /// Connections by slot; a slot is the epoll token of its socket.
    slots: Vec<Option<Entry<S>>>,
    free: Vec<u32>,
    live: usize,
    /// Slots polled every pass (see the module comment).
    active: Vec<u32>,
    events: Vec<EpollEvent>,
    /// Unestablished connections as (slot, connection id), oldest first; entries of
    /// connections established or gone meanwhile are dropped as they are met.
    unestablished: VecDeque<(u32, u64)>,
    max_unestablished: u32,
    deadlines: Deadlines,
    /// When the epoll was last asked.
    last_epoll_ns: u64,
    /// The next slot the sweep visits, and when the next sweep starts once this ends.
    sweep_cursor: usize,
    next_sweep_ns: u64,
    /// Wakes a sleeping reactor for the sweep; paused while the group is empty.
    sweep_timer: Option<Poller>,
    /// Readiness of `uring` listeners' connections, made at the first of them; None
    /// also when io_uring is unavailable (they are then watched by the epoll).
    uring: Option<PollRing>,
    uring_unavailable: bool,
    /// Told apart the watches of successive connections in one slot (the upper half of
    /// a token), since the ring may still report a watch after its connection left.
    watch_generation: u32,
    /// Slots whose io_uring watch the kernel ended during a look, watched again after it.
    ended_watches: Vec<u32>,
    /// Connections of secure listeners, in a group of their own made at the first: the
    /// plain connections' sockets stay of a type with no TLS in their path.
    secure: Option<Box<TcpPollGroup<TlsSocket>>>,
}

/// Without epoll, deadlines or a limit: for in-memory sockets (tests, the simulation).
impl<S: Socket> Default for TcpPollGroup<S> {
    fn default() -> Self {
        TcpPollGroup {
            epoll: None,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            active: Vec::new(),
            events: Vec::new(),
            unestablished: VecDeque::new(),
            max_unestablished: u32::MAX,
            deadlines: Deadlines { icreq_ns: 0, connect_ns: 0, enable_ns: 0 },
            last_epoll_ns: 0,
            sweep_cursor: 0,
            next_sweep_ns: 0,
            sweep_timer: None,
            uring: None,
            uring_unavailable: true,
            watch_generation: 0,
            ended_watches: Vec::new(),
            secure: None,
        }
    }
}

impl<S: Socket> TcpPollGroup<S> {
    pub fn new(ctx: &mut ThreadCtx, tcp: &TcpOptions) -> TcpPollGroup<S> {
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(epoll) => match ctx.watch_fd(epoll.0.as_fd()) {
                Ok(()) => Some(epoll),
                Err(err) => {
                    peerless_core::log_error!("TCP poll group on {}: the reactor cannot watch its epoll: {err}; its connections are polled every pass",
                        ctx.name());
                    None
                }
            },
            Err(err) => {
                peerless_core::log_error!(
                    "TCP poll group on {}: cannot create its epoll: {err}; its connections are polled every pass",
                    ctx.name()
                );
                None
            }
        };
        let sweep_timer = ctx.poller("nvmf_tcp_sweep", SWEEP_INTERVAL_NS / 1_000, |_| PollStatus::Idle);
        sweep_timer.pause();
        TcpPollGroup {
            epoll,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            active: Vec::new(),
            events: vec![EpollEvent::empty(); EVENTS_PER_POLL],
            unestablished: VecDeque::new(),
            max_unestablished: tcp.max_unestablished_connections_per_listener,
            deadlines: Deadlines::from_options(tcp),
            last_epoll_ns: 0,
            sweep_cursor: 0,
            next_sweep_ns: 0,
            sweep_timer: Some(sweep_timer),
            uring: None,
            uring_unavailable: false,
            watch_generation: 0,
            ended_watches: Vec::new(),
            secure: None,
        }
    }

    /// The group of this thread's TLS connections, made at the first of them.
    pub fn secure_group(&mut self, ctx: &mut ThreadCtx, tcp: &TcpOptions) -> &mut TcpPollGroup<TlsSocket> {
        self.secure.get_or_insert_with(|| Box::new(TcpPollGroup::new(ctx, tcp)))
    }

    /// The group's io_uring readiness ring, made on first use; the reactor watches its
    /// eventfd when it sleeps.
    fn uring_ring(&mut self, ctx: &mut ThreadCtx) -> Option<&mut PollRing> {
        if self.uring.is_none() && !self.uring_unavailable {
            let made = PollRing::new(URING_WATCH_ENTRIES, ctx.reactor_sleeps()).and_then(|ring| {
                if let Some(fd) = ring.eventfd() {
                    ctx.watch_fd(fd)?;
                }
                Ok(ring)
            });
            match made {
                Ok(ring) => self.uring = Some(ring),
                Err(err) => {
                    self.uring_unavailable = true;
                    log_warn!(
                        "TCP poll group on {}: io_uring readiness unavailable ({err}); uring listeners' connections use the epoll",
                        ctx.name()
                    );
                }
            }
        }
        self.uring.as_mut()
    }

    fn next_token(&mut self, slot: u32) -> u64 {
        self.watch_generation = self.watch_generation.wrapping_add(1);
        u64::from(slot) | (u64::from(self.watch_generation) << 32)
    }

    /// Takes a connection accepted by a listener; its seat counts it there. When the
    /// listener already has as many unestablished connections as allowed, the oldest
    /// of this group's that has made the least progress is closed for it.
    pub fn add_conn(&mut self, ctx: &mut ThreadCtx, conn: Conn<S>, seat: Option<Seat>, sock_impl: SockImpl) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let mut uring_token = None;
        if let (SockImpl::Uring, Some(fd)) = (sock_impl, conn.fd()) {
            let token = self.next_token(slot);
            if let Some(ring) = self.uring_ring(ctx) {
                match ring.watch(fd, token) {
                    Ok(()) => uring_token = Some(token),
                    Err(err) => log_warn!(
                        "conn {} from {}: io_uring cannot watch its socket ({err}); the epoll does",
                        conn.id(),
                        conn.peer()
                    ),
                }
            }
        }
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, u64::from(slot));
        let always = match (self.epoll.as_ref(), conn.fd()) {
            _ if uring_token.is_some() => false,
            (Some(epoll), Some(fd)) => match epoll.add(fd, event) {
                Ok(()) => false,
                Err(err) => {
                    log_warn!("conn {} from {}: cannot watch its socket: {err}", conn.id(), conn.peer());
                    self.free.push(slot);
                    return;
                }
            },
            _ => {
                // Polled every pass; a sleeping reactor still needs its fd to wake.
                if let Some(fd) = conn.fd() {
                    let _ = ctx.watch_fd(fd);
                }
                true
            }
        };
        let over = seat.as_ref().is_some_and(|seat| seat.counts().unestablished() > self.max_unestablished);
        self.unestablished.push_back((slot, conn.id()));
        let life = Lifecycle::new(ctx.now_ns());
        // Polled once at once: a host may have sent ICReq with its first segment.
        self.slots[slot as usize] = Some(Entry {
            conn,
            seat,
            life,
            active: true,
            readable: true,
            always,
            uring_token,
            idle: IdleWatch::default(),
        });
        self.active.push(slot);
        self.live += 1;
        if self.live == 1 {
            if let Some(timer) = &self.sweep_timer {
                timer.resume();
            }
        }
        if over {
            self.evict_one_unestablished();
        }
    }

    /// Drops entries of connections established or gone from the eviction order.
    fn forget_established(&mut self) {
        let slots = &self.slots;
        self.unestablished.retain(|&(slot, id)| {
            slots[slot as usize].as_ref().is_some_and(|entry| entry.conn.id() == id && entry.is_unestablished())
        });
    }

    /// Closes the unestablished connection that has made the least progress, oldest
    /// first, and gives back its seat at once.
    fn evict_one_unestablished(&mut self) {
        self.forget_established();
        let Some(position) = (0..self.unestablished.len()).min_by_key(|&position| {
            let (slot, _) = self.unestablished[position];
            self.slots[slot as usize].as_ref().map_or(Stage::Established, |entry| entry.life.stage())
        }) else {
            return;
        };
        let Some((slot, _)) = self.unestablished.remove(position) else { return };
        let Some(entry) = self.slots[slot as usize].as_mut() else { return };
        log_debug!(
            flags::NVMF_TCP,
            "conn {} from {}: evicted at {:?}, the limit of unestablished connections was reached",
            entry.conn.id(),
            entry.conn.peer(),
            entry.life.stage()
        );
        if let Some(seat) = entry.seat.as_mut() {
            seat.release();
        }
        entry.conn.close("evicted for a newer connection: too many unestablished connections");
        if !entry.active {
            entry.active = true;
            self.active.push(slot);
        }
    }

    /// Marks every socket the io_uring reports as readable and active, and watches again
    /// those whose watch the kernel ended. A look costs no system call, except the
    /// eventfd's clearing when the group is idle and its reactor may sleep.
    fn collect_uring_ready(&mut self) {
        let Some(ring) = self.uring.as_mut() else { return };
        if self.active.is_empty() {
            ring.clear_eventfd();
        }
        let (slots, active, ended) = (&mut self.slots, &mut self.active, &mut self.ended_watches);
        ring.ready(|event| {
            let (Readiness::Ready(token) | Readiness::Ended(token)) = event;
            let slot = token as u32;
            let Some(Some(entry)) = slots.get_mut(slot as usize) else { return };
            if entry.uring_token != Some(token) {
                return;
            }
            match event {
                Readiness::Ready(_) => {
                    entry.readable = true;
                    if !entry.active {
                        entry.active = true;
                        active.push(slot);
                    }
                }
                Readiness::Ended(_) => ended.push(slot),
            }
        });
        for slot in std::mem::take(&mut self.ended_watches) {
            self.rewatch(slot);
        }
    }

    /// Watches a connection's socket again after the kernel ended its multishot poll
    /// (an overflow of the completion ring, or a failure), and polls it once for
    /// anything that arrived meanwhile.
    fn rewatch(&mut self, slot: u32) {
        let token = self.next_token(slot);
        let (Some(ring), Some(Some(entry))) = (self.uring.as_mut(), self.slots.get_mut(slot as usize)) else { return };
        let Some(fd) = entry.conn.fd() else { return };
        entry.uring_token = match ring.watch(fd, token) {
            Ok(()) => Some(token),
            Err(err) => {
                log_warn!(
                    "conn {} from {}: io_uring cannot watch its socket again ({err}); it is polled every pass",
                    entry.conn.id(),
                    entry.conn.peer()
                );
                entry.always = true;
                None
            }
        };
        entry.readable = true;
        if !entry.active {
            entry.active = true;
            self.active.push(slot);
        }
    }

    /// Marks every socket the epoll reports as readable and active.
    fn collect_ready(&mut self) {
        let Some(epoll) = self.epoll.as_ref() else { return };
        let ready = match epoll.wait(&mut self.events, EpollTimeout::ZERO) {
            Ok(ready) => ready,
            Err(_) => return,
        };
        for event in &self.events[..ready] {
            let slot = event.data() as u32;
            if let Some(Some(entry)) = self.slots.get_mut(slot as usize) {
                entry.readable = true;
                if !entry.active {
                    entry.active = true;
                    self.active.push(slot);
                }
            }
        }
    }

    /// Visits the next slice of connections when a sweep is due: checks deadlines,
    /// gives back buffers of idle ones and polls each once (keep-alive, events).
    fn sweep_slice(&mut self, now_ns: u64) {
        if now_ns < self.next_sweep_ns {
            return;
        }
        let end = (self.sweep_cursor + SWEEP_SLICE).min(self.slots.len());
        for slot in self.sweep_cursor..end {
            let Some(entry) = self.slots[slot].as_mut() else { continue };
            let long_idle = entry.idle.visit();
            if !entry.active {
                if long_idle {
                    entry.conn.release_idle_buffers();
                }
                entry.active = true;
                self.active.push(slot as u32);
            }
        }
        self.sweep_cursor = end;
        if end >= self.slots.len() {
            self.sweep_cursor = 0;
            self.next_sweep_ns = now_ns + SWEEP_INTERVAL_NS;
            self.forget_established();
        }
    }

    /// After a connection's poll: its progress, its deadline, whether it stays active
    /// or goes. Returns false when it left the active list (or the group).
    fn settle(&mut self, slot: u32, now_ns: u64, group: &mut GroupCtx<'_>) -> bool {
        let Some(entry) = self.slots[slot as usize].as_mut() else { return false };
        if entry.is_unestablished() {
            let qpair = entry.conn.qpair();
            let progress = Progress {
                ic_done: entry.conn.ic_done(),
                qid: qpair.qid(),
                controller_enabled: qpair.controller().is_some_and(|controller| controller.is_enabled()),
            };
            if entry.life.advance(progress, now_ns) && !entry.conn.qpair().is_closing() {
                if let Some(seat) = entry.seat.as_mut() {
                    seat.establish();
                }
            }
            if let Some(why) = entry.life.expired(&self.deadlines, now_ns) {
                if !entry.conn.qpair().is_closing() {
                    log_debug!(flags::NVMF_TCP, "conn {} from {}: {why}", entry.conn.id(), entry.conn.peer());
                    if let Some(seat) = entry.seat.as_mut() {
                        seat.release();
                    }
                    entry.conn.close(why);
                }
            }
        }
        if entry.conn.is_done() {
            let Some(entry) = self.slots[slot as usize].take() else { return false };
            match (entry.uring_token, self.uring.as_mut()) {
                // The kernel holds the socket open until its watch is gone.
                (Some(token), Some(ring)) => {
                    if let Err(err) = ring.unwatch(token) {
                        log_warn!(
                            "conn {} from {}: cannot end its io_uring watch: {err}",
                            entry.conn.id(),
                            entry.conn.peer()
                        );
                    }
                }
                _ => {
                    if let (Some(epoll), Some(fd)) = (self.epoll.as_ref(), entry.conn.fd()) {
                        let _ = epoll.delete(fd);
                    }
                }
            }
            group.retired.retire(entry.conn.qpair());
            self.free.push(slot);
            self.live -= 1;
            if self.live == 0 {
                if let Some(timer) = &self.sweep_timer {
                    timer.pause();
                }
            }
            return false;
        }
        if entry.always || entry.conn.wants_poll() {
            return true;
        }
        entry.active = false;
        false
    }

    /// After an outside visit to a queue (an event, an abort, a close): poll it next.
    fn activate(&mut self, slot: u32) {
        if let Some(Some(entry)) = self.slots.get_mut(slot as usize) {
            if !entry.active && entry.conn.wants_poll() {
                entry.active = true;
                self.active.push(slot);
            }
        }
    }
}

impl<S: Socket + 'static> TransportPollGroup for TcpPollGroup<S> {
    fn poll(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) -> bool {
        let now_ns = group.now_ns;
        if self.active.is_empty() || now_ns.saturating_sub(self.last_epoll_ns) >= EPOLL_WHILE_BUSY_NS {
            self.last_epoll_ns = now_ns;
            self.collect_ready();
        }
        self.collect_uring_ready();
        self.sweep_slice(now_ns);
        let mut busy = false;
        let budget = if self.active.len() > 1 { SHARED_PDU_BUDGET } else { SOLE_PDU_BUDGET };
        let mut index = 0;
        while index < self.active.len() {
            let slot = self.active[index];
            if let Some(entry) = self.slots[slot as usize].as_mut() {
                let readable = std::mem::take(&mut entry.readable) || entry.always;
                let worked = entry.conn.poll(ctx, group, readable, budget);
                if worked {
                    entry.idle.worked();
                }
                busy |= worked;
                // Output the socket would not take yet keeps the reactor awake.
                busy |= entry.conn.has_pending_output();
            }
            if self.settle(slot, now_ns, group) {
                index += 1;
            } else {
                // The last entry moves here and is polled next: nobody is skipped.
                self.active.swap_remove(index);
            }
        }
        if let Some(secure) = self.secure.as_mut() {
            busy |= secure.poll(ctx, group);
        }
        busy
    }

    fn for_each_qpair(&mut self, visit: &mut dyn FnMut(&mut Qpair)) {
        for slot in 0..self.slots.len() {
            let Some(entry) = self.slots[slot].as_mut() else { continue };
            visit(entry.conn.qpair_mut());
            self.activate(slot as u32);
        }
        if let Some(secure) = self.secure.as_mut() {
            secure.for_each_qpair(visit);
        }
    }

    fn connection_count(&self) -> usize {
        self.live + self.secure.as_ref().map_or(0, |secure| secure.connection_count())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
