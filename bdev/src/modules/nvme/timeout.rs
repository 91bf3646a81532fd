//! Command deadlines, SPDK bdev_nvme's `timeout_us` and `action_on_timeout`: a command
//! outstanding past its deadline is aborted (Abort, NVMe Base 2.0 §5.1), and if the abort
//! does not free it within a second deadline the controller is reset; or it is reset at
//! once. Submitting costs no clock read: a channel stamps each command with a count of
//! its deadline checks, which its poller advances when a check is due (reading the
//! reactor's cached loop time), so a command's age is known to a check period. Asynchronous
//! Event Requests have none: they sit on the admin queue until an event happens, which
//! may be never (NVMe Base 2.0 §5.2), and only the admin queue's synchronous commands
//! (CID 0) are waited for there.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// How often a channel with commands outstanding looks at their ages.
pub const CHECK_PERIOD: Duration = Duration::from_millis(100);
/// Defaults: generous for emulated controllers under TCG, whose commands can take
/// seconds under load.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ABORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Log only.
    None,
    /// Abort the command, and reset the controller if that does not free it in time.
    Abort,
    /// Reset the controller.
    Reset,
}

impl TimeoutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutAction::None => "none",
            TimeoutAction::Abort => "abort",
            TimeoutAction::Reset => "reset",
        }
    }

    pub fn parse(text: &str) -> Option<TimeoutAction> {
        [TimeoutAction::None, TimeoutAction::Abort, TimeoutAction::Reset]
            .into_iter()
            .find(|action| action.as_str() == text)
    }
}

/// What a controller's channels read at each check: settable while I/O runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Zero: no deadline.
    pub timeout: Duration,
    pub action: TimeoutAction,
    /// How long an aborted command may stay outstanding before the controller is reset.
    pub abort_timeout: Duration,
}

pub struct TimeoutSettings {
    timeout_us: AtomicU64,
    abort_timeout_us: AtomicU64,
    action: AtomicU8,
}

impl Default for TimeoutSettings {
    fn default() -> Self {
        TimeoutSettings {
            timeout_us: AtomicU64::new(DEFAULT_TIMEOUT.as_micros() as u64),
            abort_timeout_us: AtomicU64::new(DEFAULT_ABORT_TIMEOUT.as_micros() as u64),
            action: AtomicU8::new(TimeoutAction::Abort as u8),
        }
    }
}

impl TimeoutSettings {
    pub fn set(&self, timeouts: Timeouts) {
        self.timeout_us.store(timeouts.timeout.as_micros() as u64, Ordering::Relaxed);
        self.abort_timeout_us.store(timeouts.abort_timeout.as_micros() as u64, Ordering::Relaxed);
        self.action.store(timeouts.action as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> Timeouts {
        let action = match self.action.load(Ordering::Relaxed) {
            value if value == TimeoutAction::Abort as u8 => TimeoutAction::Abort,
            value if value == TimeoutAction::Reset as u8 => TimeoutAction::Reset,
            _ => TimeoutAction::None,
        };
        Timeouts {
            timeout: Duration::from_micros(self.timeout_us.load(Ordering::Relaxed)),
            action,
            abort_timeout: Duration::from_micros(self.abort_timeout_us.load(Ordering::Relaxed)),
        }
    }
}

/// A channel's count of deadline checks. Ticks are at least a period apart, so a command
/// stamped at tick `s` and looked at in tick `k` has been outstanding at least
/// `(k - s - 1)` periods: a deadline is never declared early, and at most two periods late.
pub struct CheckClock {
    period: Duration,
    epoch: u32,
    next: Option<Instant>,
}

impl CheckClock {
    pub fn new(period: Duration) -> CheckClock {
        CheckClock { period, epoch: 0, next: None }
    }

    /// What a command submitted now is stamped with.
    pub fn stamp(&self) -> u32 {
        self.epoch
    }

    /// Whether a check is due at `now`; a due check advances the count.
    pub fn tick(&mut self, now: Instant) -> bool {
        match self.next {
            Some(next) if now < next => false,
            _ => {
                self.epoch = self.epoch.wrapping_add(1);
                self.next = Some(now + self.period);
                true
            }
        }
    }

    /// The least time a command stamped `stamp` has been outstanding.
    pub fn age_at_least(&self, stamp: u32) -> Duration {
        self.period * self.epoch.wrapping_sub(stamp).saturating_sub(1)
    }

    /// Whether a command stamped `stamp` is surely past `limit` (zero: never).
    pub fn expired(&self, stamp: u32, limit: Duration) -> bool {
        !limit.is_zero() && self.age_at_least(stamp) >= limit
    }
}

/// What a check decides for one outstanding command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    /// Past its deadline: log it (action none).
    Report,
    Abort,
    Reset,
}

/// The decision for a command stamped `stamp`, with `aborted_at` the tick its abort went
/// out (None if none did).
pub fn judge(clock: &CheckClock, stamp: u32, aborted_at: Option<u32>, timeouts: &Timeouts) -> Verdict {
    if let Some(aborted_at) = aborted_at {
        return if clock.expired(aborted_at, timeouts.abort_timeout) { Verdict::Reset } else { Verdict::Wait };
    }
    if !clock.expired(stamp, timeouts.timeout) {
        return Verdict::Wait;
    }
    match timeouts.action {
        TimeoutAction::None => Verdict::Report,
        TimeoutAction::Abort => Verdict::Abort,
        TimeoutAction::Reset => Verdict::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(100);

    fn timeouts(action: TimeoutAction) -> Timeouts {
        Timeouts { timeout: Duration::from_secs(1), action, abort_timeout: Duration::from_millis(500) }
    }

    #[test]
    fn ticks_come_a_period_apart_and_ages_are_never_overstated() {
        let start = Instant::now();
        let mut clock = CheckClock::new(P);
        assert!(clock.tick(start));
        let stamp = clock.stamp();
        assert!(!clock.tick(start + P / 2), "a second check within the period");
        assert_eq!(clock.age_at_least(stamp), Duration::ZERO);
        // Polled irregularly: every 70 ms, or with long gaps; the count only moves a
        // period after the last tick.
        let mut now = start;
        let mut ticks = 0;
        for step in [70, 70, 70, 300, 10, 95, 5, 200] {
            now += Duration::from_millis(step);
            ticks += u32::from(clock.tick(now));
            let real = now - start;
            assert!(clock.age_at_least(stamp) <= real, "{:?} claimed after {real:?}", clock.age_at_least(stamp));
        }
        assert_eq!(clock.stamp(), stamp + ticks);
        assert_eq!(clock.age_at_least(stamp), P * (ticks - 1));
    }

    #[test]
    fn the_count_wraps_without_a_false_deadline() {
        let mut clock = CheckClock { period: P, epoch: u32::MAX - 1, next: None };
        let stamp = clock.stamp();
        let now = Instant::now();
        for tick in 1..=4u32 {
            assert!(clock.tick(now + P * tick));
        }
        assert_eq!(clock.age_at_least(stamp), P * 3);
        assert!(!clock.expired(stamp, Duration::from_secs(1)));
        assert!(!clock.expired(stamp, Duration::ZERO), "a zero limit is no deadline");
    }

    #[test]
    fn a_late_command_is_aborted_then_the_controller_reset() {
        let now = Instant::now();
        let mut clock = CheckClock::new(P);
        clock.tick(now);
        let stamp = clock.stamp();
        let settings = timeouts(TimeoutAction::Abort);
        let mut at = now;
        let mut verdicts = Vec::new();
        let mut aborted_at = None;
        for _ in 0..20 {
            at += P;
            clock.tick(at);
            let verdict = judge(&clock, stamp, aborted_at, &settings);
            if verdict == Verdict::Abort {
                aborted_at = Some(clock.stamp());
            }
            verdicts.push(verdict);
        }
        let abort = verdicts.iter().position(|v| *v == Verdict::Abort).unwrap();
        let reset = verdicts.iter().position(|v| *v == Verdict::Reset).unwrap();
        // 1 s deadline: aborted after 11 ticks of 100 ms (one period of doubt), reset 6 later.
        assert_eq!((abort, reset), (10, 16), "{verdicts:?}");
        assert!(verdicts[..abort].iter().all(|v| *v == Verdict::Wait));
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Abort).count(), 1);
    }

    #[test]
    fn the_action_decides_and_none_only_reports() {
        let now = Instant::now();
        let mut clock = CheckClock::new(P);
        clock.tick(now);
        let stamp = clock.stamp();
        for tick in 1..=12 {
            clock.tick(now + P * tick);
        }
        assert_eq!(judge(&clock, stamp, None, &timeouts(TimeoutAction::None)), Verdict::Report);
        assert_eq!(judge(&clock, stamp, None, &timeouts(TimeoutAction::Reset)), Verdict::Reset);
        let off = Timeouts { timeout: Duration::ZERO, ..timeouts(TimeoutAction::Reset) };
        assert_eq!(judge(&clock, stamp, None, &off), Verdict::Wait);
        let settings = TimeoutSettings::default();
        assert_eq!(settings.get().timeout, DEFAULT_TIMEOUT);
        settings.set(timeouts(TimeoutAction::Reset));
        assert_eq!(settings.get(), timeouts(TimeoutAction::Reset));
        assert_eq!(TimeoutAction::parse("abort"), Some(TimeoutAction::Abort));
        assert_eq!(TimeoutAction::parse("Abort"), None);
    }
}
