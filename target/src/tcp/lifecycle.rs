//! Where a connection is on its way to carrying I/O, how long each step may take, and
//! its seat at the listener.
//!
//! A connection is unestablished until its queue is usable: ICReq (NVMe/TCP 1.0,
//! 3.6.2.2), then Fabrics Connect (NVMe-oF 1.1, 3.3), then, for an admin queue, the
//! host's CC.EN = 1 (NVMe Base 2.0, 3.5.1). Each step has a deadline. Unestablished
//! connections have a limit of their own at the listener, separate from the limit on
//! established ones, and the oldest goes first when it is reached: someone who opens
//! sockets and says nothing can never keep out a host that completes the steps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::options::TcpOptions;

/// The steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    AwaitIcReq,
    AwaitConnect,
    /// An admin queue whose controller the host has not enabled yet.
    AwaitEnable,
    Established,
}

/// What a connection shows of its progress, read after each of its polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub ic_done: bool,
    /// The queue it carries: None before Connect, Some(0) for an admin queue.
    pub qid: Option<u16>,
    pub controller_enabled: bool,
}

impl Progress {
    pub fn stage(self) -> Stage {
        match (self.ic_done, self.qid) {
            (false, _) => Stage::AwaitIcReq,
            (true, None) => Stage::AwaitConnect,
            (true, Some(0)) if !self.controller_enabled => Stage::AwaitEnable,
            (true, Some(_)) => Stage::Established,
        }
    }
}

/// How long each step may take, in nanoseconds; 0 means no deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    pub icreq_ns: u64,
    pub connect_ns: u64,
    pub enable_ns: u64,
}

impl Deadlines {
    pub fn from_options(options: &TcpOptions) -> Deadlines {
        let ns = |ms: u32| u64::from(ms) * 1_000_000;
        Deadlines {
            icreq_ns: ns(options.icreq_timeout_ms),
            connect_ns: ns(options.connect_timeout_ms),
            enable_ns: ns(options.enable_timeout_ms),
        }
    }
}

/// A connection's step and since when it has been on it.
#[derive(Clone, Copy, Debug)]
pub struct Lifecycle {
    stage: Stage,
    since_ns: u64,
}

impl Lifecycle {
    pub fn new(now_ns: u64) -> Lifecycle {
        Lifecycle { stage: Stage::AwaitIcReq, since_ns: now_ns }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Moves on to what `progress` shows (never back: a controller disabled by a reset
    /// does not make its established queue new again); whether it became established.
    pub fn advance(&mut self, progress: Progress, now_ns: u64) -> bool {
        let stage = progress.stage();
        if stage <= self.stage {
            return false;
        }
        self.stage = stage;
        self.since_ns = now_ns;
        stage == Stage::Established
    }

    /// Why the connection must go, if its step has taken longer than allowed.
    pub fn expired(&self, deadlines: &Deadlines, now_ns: u64) -> Option<&'static str> {
        let (limit_ns, why) = match self.stage {
            Stage::AwaitIcReq => (deadlines.icreq_ns, "no ICReq within icreq_timeout_ms"),
            Stage::AwaitConnect => (deadlines.connect_ns, "no Fabrics Connect within connect_timeout_ms"),
            Stage::AwaitEnable => (deadlines.enable_ns, "the controller was not enabled within enable_timeout_ms"),
            Stage::Established => return None,
        };
        (limit_ns > 0 && now_ns.saturating_sub(self.since_ns) >= limit_ns).then_some(why)
    }
}

/// A listener's connections, counted from every poll group.
#[derive(Debug, Default)]
pub struct ListenerCounts {
    pub established: AtomicU32,
    pub unestablished: AtomicU32,
}

impl ListenerCounts {
    pub fn established(&self) -> u32 {
        self.established.load(Ordering::Relaxed)
    }

    pub fn unestablished(&self) -> u32 {
        self.unestablished.load(Ordering::Relaxed)
    }
}

/// One connection's place in its listener's counts; dropping it gives the place back.
#[derive(Debug)]
pub struct Seat {
    counts: Arc<ListenerCounts>,
    state: SeatState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeatState {
    Unestablished,
    Established,
    /// Counted nowhere: the connection was chosen for eviction and is on its way out.
    Released,
}

impl Seat {
    /// A new connection's seat among the unestablished.
    pub fn take(counts: &Arc<ListenerCounts>) -> Seat {
        counts.unestablished.fetch_add(1, Ordering::Relaxed);
        Seat { counts: counts.clone(), state: SeatState::Unestablished }
    }

    pub fn counts(&self) -> &Arc<ListenerCounts> {
        &self.counts
    }

    pub fn is_unestablished(&self) -> bool {
        self.state == SeatState::Unestablished
    }

    pub fn establish(&mut self) {
        if self.state == SeatState::Unestablished {
            self.counts.unestablished.fetch_sub(1, Ordering::Relaxed);
            self.counts.established.fetch_add(1, Ordering::Relaxed);
            self.state = SeatState::Established;
        }
    }

    /// Gives the place back now, before the connection is gone, so the next arrival
    /// does not evict another one for the same place.
    pub fn release(&mut self) {
        match self.state {
            SeatState::Unestablished => self.counts.unestablished.fetch_sub(1, Ordering::Relaxed),
            SeatState::Established => self.counts.established.fetch_sub(1, Ordering::Relaxed),
            SeatState::Released => return,
        };
        self.state = SeatState::Released;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.release();
    }
}

/// A connection gives back its buffers after this many sweep visits in a row (about a
/// second at the poll group's sweep interval) that find it did no work since the one
/// before. A host between commands at the instant of one visit (at queue depth 1 it
/// nearly always is), or a reactor kept off its core for a moment by the scheduler, must
/// not cost a reallocation on the next command.
pub const IDLE_SWEEPS_BEFORE_RELEASE: u32 = 10;

/// Whether a connection has been idle long enough to give back its buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleWatch {
    worked_since_visit: bool,
    idle_visits: u32,
}

impl IdleWatch {
    /// The connection did work (it took input, or sent or completed something).
    pub fn worked(&mut self) {
        self.worked_since_visit = true;
    }

    /// A sweep visit: whether the connection has now been idle for
    /// `IDLE_SWEEPS_BEFORE_RELEASE` visits or more.
    pub fn visit(&mut self) -> bool {
        self.idle_visits =
            if std::mem::take(&mut self.worked_since_visit) { 0 } else { self.idle_visits.saturating_add(1) };
        self.idle_visits >= IDLE_SWEEPS_BEFORE_RELEASE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn progress(ic_done: bool, qid: Option<u16>, controller_enabled: bool) -> Progress {
        Progress { ic_done, qid, controller_enabled }
    }

    #[test]
    fn stages_follow_icreq_connect_and_enable() {
        for (shown, stage) in [
            (progress(false, None, false), Stage::AwaitIcReq),
            (progress(true, None, false), Stage::AwaitConnect),
            (progress(true, Some(0), false), Stage::AwaitEnable),
            (progress(true, Some(0), true), Stage::Established),
            // An I/O queue is usable at its Connect: its controller is already enabled.
            (progress(true, Some(3), false), Stage::Established),
        ] {
            assert_eq!(shown.stage(), stage, "{shown:?}");
        }
    }

    #[test]
    fn each_step_has_its_own_deadline_counted_from_its_start() {
        let deadlines = Deadlines { icreq_ns: 100 * MS, connect_ns: 200 * MS, enable_ns: 300 * MS };
        let mut life = Lifecycle::new(0);
        assert_eq!(life.expired(&deadlines, 99 * MS), None);
        assert!(life.expired(&deadlines, 100 * MS).unwrap().contains("icreq_timeout_ms"));
        assert!(!life.advance(progress(true, None, false), 90 * MS));
        assert_eq!(life.expired(&deadlines, 289 * MS), None, "Connect's clock starts at ICReq");
        assert!(life.expired(&deadlines, 290 * MS).unwrap().contains("connect_timeout_ms"));
        assert!(!life.advance(progress(true, Some(0), false), 100 * MS));
        assert_eq!(life.expired(&deadlines, 399 * MS), None);
        assert!(life.expired(&deadlines, 400 * MS).unwrap().contains("enable_timeout_ms"));
        assert!(life.advance(progress(true, Some(0), true), 150 * MS));
        assert_eq!(life.expired(&deadlines, u64::MAX), None, "an established connection has no deadline");
        // A reset that disables the controller does not make the queue new again.
        assert!(!life.advance(progress(true, Some(0), false), 200 * MS));
        assert_eq!(life.stage(), Stage::Established);
    }

    #[test]
    fn a_zero_deadline_is_none_and_steps_may_be_skipped() {
        let none = Deadlines { icreq_ns: 0, connect_ns: 0, enable_ns: 0 };
        let life = Lifecycle::new(0);
        assert_eq!(life.expired(&none, u64::MAX), None);
        // ICReq and Connect in one read: straight to established.
        let mut life = Lifecycle::new(5);
        assert!(life.advance(progress(true, Some(1), false), 6));
    }

    #[test]
    fn seats_move_between_counts_and_are_given_back_once() {
        let counts = Arc::new(ListenerCounts::default());
        let mut first = Seat::take(&counts);
        let mut second = Seat::take(&counts);
        assert_eq!((counts.established(), counts.unestablished()), (0, 2));
        first.establish();
        first.establish();
        assert_eq!((counts.established(), counts.unestablished()), (1, 1));
        second.release();
        assert!(!second.is_unestablished());
        assert_eq!((counts.established(), counts.unestablished()), (1, 0));
        drop(second);
        assert_eq!((counts.established(), counts.unestablished()), (1, 0), "released seats are not given back twice");
        drop(first);
        assert_eq!((counts.established(), counts.unestablished()), (0, 0));
    }

    #[test]
    fn only_a_whole_run_of_idle_visits_lets_the_buffers_go() {
        let mut watch = IdleWatch::default();
        for visit in 1..IDLE_SWEEPS_BEFORE_RELEASE {
            assert!(!watch.visit(), "released after {visit} idle visits");
        }
        // Work just before the last visit of the run starts the count again: the visit
        // after the work finds work, and only then do idle visits count.
        watch.worked();
        for visit in 1..=IDLE_SWEEPS_BEFORE_RELEASE {
            assert!(!watch.visit(), "released {visit} visits after work");
        }
        assert!(watch.visit());
        assert!(watch.visit(), "still idle: still releasable (a second release frees nothing)");
        watch.worked();
        assert!(!watch.visit());
    }

    #[test]
    fn a_connection_working_between_every_visit_keeps_its_buffers() {
        let mut watch = IdleWatch::default();
        for _ in 0..10 * IDLE_SWEEPS_BEFORE_RELEASE {
            watch.worked();
            assert!(!watch.visit());
        }
    }
}
