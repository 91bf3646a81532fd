//! How a reactor waits for work, and adaptive mode's poll window.
//!
//! Poll mode spins without pause: the lowest latency, one whole core per reactor even
//! when idle. Interrupt mode sleeps in epoll as soon as a pass over its threads finds
//! nothing: no CPU when idle, but every request that finds the reactor asleep pays the
//! wake-up (on a virtual machine, where an idle vCPU halts, tens of microseconds).
//! Adaptive mode spins on after the last work for a window, as Linux's NAPI busy polling
//! and io_uring's SQPOLL idle time do, and sleeps only when the window passes empty.
//!
//! The window follows the recent gaps between bursts of work. A gap is the idle time
//! from the end of a pass that did work to the start of the next pass that did, whether
//! the reactor spun or slept in between. While gaps are short enough that spinning
//! through them costs no more than the cap the operator allowed, the window is a
//! multiple of their average, so the next request is caught while spinning; a steady
//! stream never lets the window expire, so a generous window costs nothing there. When
//! gaps grow longer than the cap, spinning could not bridge them anyway, and the window
//! falls to its floor: at a low request rate the reactor sleeps right after each
//! request, as in interrupt mode.

use std::fmt;

/// The largest window accepted for either bound: past a second, polling is poll mode.
pub const MAX_POLL_WINDOW_US: u32 = 1_000_000;

/// Each gap moves the average by 1/2^GAP_WEIGHT_SHIFT of its difference (as TCP's
/// smoothed RTT does with 1/8): a few gaps change the window, one outlier does not.
const GAP_WEIGHT_SHIFT: u32 = 3;

/// The window covers this many average gaps, so the usual spread of arrival times
/// around the average still lands inside it.
const WINDOW_PER_GAP: u64 = 4;

/// A gap counts for at most this many caps: long enough to say "beyond the cap", short
/// enough that a burst after a long idle period pulls the average back within a few
/// gaps.
const GAP_SAMPLE_CAPS: u64 = 2;

/// How a reactor waits when a pass finds nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReactorMode {
    /// Spin without pause (SPDK's default).
    Poll,
    /// Sleep in epoll as soon as a pass finds nothing (SPDK's `--interrupt-mode`).
    Interrupt,
    /// Spin for an adaptive window after the last work, then sleep in epoll.
    Adaptive,
}

impl ReactorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReactorMode::Poll => "poll",
            ReactorMode::Interrupt => "interrupt",
            ReactorMode::Adaptive => "adaptive",
        }
    }

    /// Whether the reactor ever sleeps in epoll, so that anything with a file descriptor
    /// must watch it to be woken.
    pub fn sleeps(self) -> bool {
        self != ReactorMode::Poll
    }
}

impl fmt::Display for ReactorMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The floor and the cap of adaptive mode's poll window, in microseconds. A cap of 0
/// leaves no window: interrupt mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollWindow {
    pub min_us: u32,
    pub max_us: u32,
}

impl PollWindow {
    /// No window: a reactor that may sleep does so at once (interrupt mode).
    pub const NONE: PollWindow = PollWindow { min_us: 0, max_us: 0 };

    /// The target's default: a cap of 50 us, a few wake-ups' worth on a virtual machine
    /// (Linux suggests the same for `net.core.busy_poll`), and a floor of 5 us that
    /// still catches the host's immediate answer (an H2CData after an R2T) without a
    /// wake-up when requests are sparse.
    pub const DEFAULT: PollWindow = PollWindow { min_us: 5, max_us: 50 };

    pub fn validate(&self) -> Result<(), String> {
        if self.max_us > MAX_POLL_WINDOW_US {
            return Err(format!("poll window cap {} us exceeds {MAX_POLL_WINDOW_US} us", self.max_us));
        }
        if self.min_us > self.max_us {
            return Err(format!("poll window floor {} us exceeds its cap {} us", self.min_us, self.max_us));
        }
        Ok(())
    }
}

impl Default for PollWindow {
    fn default() -> Self {
        PollWindow::NONE
    }
}

/// Adaptive mode's window: fed every gap, it answers how long to keep spinning after
/// the last work. Pure arithmetic on nanoseconds, so tests drive it without a clock.
#[derive(Clone, Debug)]
pub(crate) struct WindowEstimator {
    min_ns: u64,
    max_ns: u64,
    gap_avg_ns: u64,
    window_ns: u64,
}

impl WindowEstimator {
    pub fn new(bounds: PollWindow) -> Self {
        debug_assert!(bounds.validate().is_ok(), "unchecked poll window {bounds:?}");
        let (min_ns, max_ns) = (u64::from(bounds.min_us) * 1_000, u64::from(bounds.max_us) * 1_000);
        // Until gaps are seen, assume they are as long as the cap allows: the window
        // starts wide and narrows as the workload shows itself.
        let mut estimator = WindowEstimator { min_ns, max_ns, gap_avg_ns: max_ns, window_ns: max_ns };
        estimator.window_ns = estimator.window_for_average();
        estimator
    }

    /// How long to keep spinning after the last work.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Records one gap: idle time from the end of work to the start of the next work.
    pub fn on_gap(&mut self, gap_ns: u64) {
        let sample = gap_ns.min(self.max_ns.saturating_mul(GAP_SAMPLE_CAPS));
        // Moves the average toward the sample by 1/8 of the difference, either way.
        if sample >= self.gap_avg_ns {
            self.gap_avg_ns += (sample - self.gap_avg_ns) >> GAP_WEIGHT_SHIFT;
        } else {
            self.gap_avg_ns -= (self.gap_avg_ns - sample).div_ceil(1 << GAP_WEIGHT_SHIFT);
        }
        self.window_ns = self.window_for_average();
        debug_assert!(self.window_ns >= self.min_ns && self.window_ns <= self.max_ns);
    }

    fn window_for_average(&self) -> u64 {
        if self.gap_avg_ns > self.max_ns {
            // Gaps longer than the cap: spinning would not bridge them.
            return self.min_ns;
        }
        self.gap_avg_ns.saturating_mul(WINDOW_PER_GAP).clamp(self.min_ns, self.max_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// Feeds `gaps_us` to a fresh estimator with `bounds` and returns the windows it
    /// chose after each, in microseconds (rounded down).
    fn windows(bounds: PollWindow, gaps_us: &[u64]) -> Vec<u64> {
        let mut estimator = WindowEstimator::new(bounds);
        gaps_us
            .iter()
            .map(|gap| {
                estimator.on_gap(gap * US);
                estimator.window_ns() / US
            })
            .collect()
    }

    fn last_window(bounds: PollWindow, gaps_us: &[u64]) -> u64 {
        *windows(bounds, gaps_us).last().expect("at least one gap")
    }

    #[test]
    fn a_fresh_estimator_starts_at_the_cap() {
        let estimator = WindowEstimator::new(PollWindow::DEFAULT);
        assert_eq!(estimator.window_ns(), 50 * US);
        assert_eq!(WindowEstimator::new(PollWindow::NONE).window_ns(), 0);
    }

    #[test]
    fn steady_short_gaps_settle_at_four_gaps() {
        // A request every 5 us (a host at queue depth 1): the window covers 20 us.
        assert_eq!(last_window(PollWindow::DEFAULT, &[5; 64]), 20);
        // Back-to-back work (gaps near zero) keeps the floor.
        assert_eq!(last_window(PollWindow::DEFAULT, &[0; 64]), 5);
        // Gaps of 12 us want 48 us, still inside the cap; 20 us gaps hit the cap.
        assert_eq!(last_window(PollWindow::DEFAULT, &[12; 64]), 48);
        assert_eq!(last_window(PollWindow::DEFAULT, &[20; 64]), 50);
    }

    #[test]
    fn gaps_beyond_the_cap_drop_the_window_to_its_floor() {
        // 1,000 requests a second: 1 ms gaps that no 50 us window bridges.
        assert_eq!(last_window(PollWindow::DEFAULT, &[1_000; 16]), 5);
        let floorless = PollWindow { min_us: 0, max_us: 50 };
        assert_eq!(last_window(floorless, &[1_000; 16]), 0);
        // Just past the cap is beyond it too.
        assert_eq!(last_window(PollWindow::DEFAULT, &[60; 64]), 5);
    }

    #[test]
    fn one_long_gap_in_a_stream_does_not_close_the_window() {
        let mut gaps = vec![5; 64];
        gaps.push(10_000_000);
        let after = windows(PollWindow::DEFAULT, &gaps);
        assert_eq!(after[63], 20);
        // The outlier counts as two caps at most: the average rises but stays catchable.
        assert_eq!(after[64], 50, "{after:?}");
        gaps.extend([5; 48]);
        assert_eq!(last_window(PollWindow::DEFAULT, &gaps), 20, "the stream pulls the window back");
    }

    #[test]
    fn a_burst_after_a_long_idle_period_opens_the_window_within_a_few_gaps() {
        let mut gaps = vec![10_000_000; 8];
        assert_eq!(last_window(PollWindow::DEFAULT, &gaps), 5);
        // The burst's first gaps include the wake-up (the reactor slept through them),
        // which is still within the cap: the window opens to catch the next ones.
        gaps.extend([30; 12]);
        let after = windows(PollWindow::DEFAULT, &gaps);
        let opened = after[8..].iter().position(|&window| window == 50).expect("the window opened");
        assert!(opened < 10, "the window took {opened} gaps to open: {after:?}");
    }

    #[test]
    fn the_window_always_stays_within_its_bounds() {
        let bounds = PollWindow { min_us: 7, max_us: 30 };
        let gaps: Vec<u64> = (0..500).map(|i| (i * 7919) % 200).collect();
        for window in windows(bounds, &gaps) {
            assert!((7..=30).contains(&window), "window {window} us outside 7..=30");
        }
        assert!(windows(PollWindow::NONE, &[0, 5, 1_000]).iter().all(|&window| window == 0));
    }

    #[test]
    fn bounds_are_checked() {
        assert!(PollWindow::DEFAULT.validate().is_ok());
        assert!(PollWindow::NONE.validate().is_ok());
        let inverted = PollWindow { min_us: 60, max_us: 50 }.validate().unwrap_err();
        assert!(inverted.contains("floor 60 us exceeds its cap 50 us"), "{inverted}");
        let huge = PollWindow { min_us: 0, max_us: MAX_POLL_WINDOW_US + 1 }.validate().unwrap_err();
        assert!(huge.contains("exceeds"), "{huge}");
    }

    #[test]
    fn modes_name_themselves_and_say_whether_they_sleep() {
        let named: Vec<(&str, bool)> = [ReactorMode::Poll, ReactorMode::Interrupt, ReactorMode::Adaptive]
            .into_iter()
            .map(|mode| (mode.as_str(), mode.sleeps()))
            .collect();
        assert_eq!(named, [("poll", false), ("interrupt", true), ("adaptive", true)]);
    }
}
