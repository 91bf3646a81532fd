//! Throttling of repeated log lines: an event that can fire thousands of times a second
//! (a refused connection, an accept that finds no file descriptor) is logged once, then
//! at most once per interval, each later line saying how many it stood for. The clock
//! is passed in, so the arithmetic is tested without waiting.

use std::time::Duration;

/// One kind of repeated event. Not shared between threads: each thread that reports an
/// event keeps its own.
#[derive(Debug)]
pub struct Throttle {
    interval_ns: u64,
    /// When the last line was let through; None before the first.
    last_line_ns: Option<u64>,
    /// Events held back since that line.
    held_back: u64,
}

/// What to log for an event that was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Events this line stands for: itself and those held back since the last line.
    pub events: u64,
}

impl Report {
    /// Words to append to the line: empty for a single event.
    pub fn suffix(&self) -> String {
        if self.events <= 1 {
            String::new()
        } else {
            format!(" ({} times since the last such message)", self.events)
        }
    }
}

impl Throttle {
    /// A line at most every `interval` (at least 1 ns).
    pub fn new(interval: Duration) -> Throttle {
        Throttle { interval_ns: (interval.as_nanos() as u64).max(1), last_line_ns: None, held_back: 0 }
    }

    /// The event happened at `now_ns`: Some when a line is due (the first ever, or the
    /// first after a whole interval), None when it is only counted.
    pub fn event(&mut self, now_ns: u64) -> Option<Report> {
        self.held_back += 1;
        self.due(now_ns)
    }

    /// Events held back whose interval has passed with no new event to carry them: call
    /// it from a periodic poller so the count is not left unsaid.
    pub fn flush(&mut self, now_ns: u64) -> Option<Report> {
        if self.held_back == 0 {
            return None;
        }
        self.due(now_ns)
    }

    /// Events counted but not yet reported.
    pub fn held_back(&self) -> u64 {
        self.held_back
    }

    fn due(&mut self, now_ns: u64) -> Option<Report> {
        debug_assert!(self.held_back > 0);
        let due = match self.last_line_ns {
            None => true,
            Some(last) => now_ns.saturating_sub(last) >= self.interval_ns,
        };
        if !due {
            return None;
        }
        let report = Report { events: self.held_back };
        self.held_back = 0;
        self.last_line_ns = Some(now_ns);
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// Feeds events at the given times; returns (time, events) of every line let through.
    fn lines(interval: Duration, at: &[u64]) -> Vec<(u64, u64)> {
        let mut throttle = Throttle::new(interval);
        at.iter().filter_map(|&now| throttle.event(now).map(|report| (now, report.events))).collect()
    }

    #[test]
    fn the_first_event_is_logged_at_once_then_one_line_per_interval() {
        // 2,000 events over 2 s, one per millisecond: three lines, counts adding up.
        let times: Vec<u64> = (0..2000).map(|i| i * SECOND / 1000).collect();
        let got = lines(Duration::from_secs(1), &times);
        assert_eq!(got, vec![(0, 1), (SECOND, 1000)]);
        let mut throttle = Throttle::new(Duration::from_secs(1));
        for &now in &times {
            throttle.event(now);
        }
        assert_eq!(throttle.held_back(), 999, "events after the last line wait for the next");
        assert_eq!(throttle.flush(2 * SECOND - 1), None, "not a whole interval yet");
        assert_eq!(throttle.flush(2 * SECOND), Some(Report { events: 999 }));
        assert_eq!(throttle.flush(10 * SECOND), None, "nothing left to say");
    }

    #[test]
    fn sparse_events_are_each_logged_alone() {
        let times = [0, 2 * SECOND, 5 * SECOND, 5 * SECOND + SECOND];
        assert_eq!(lines(Duration::from_secs(1), &times), times.iter().map(|&t| (t, 1)).collect::<Vec<_>>());
    }

    #[test]
    fn counts_are_never_lost_whatever_the_interval() {
        for interval_ms in [1u64, 7, 100, 1000, 60_000] {
            let mut throttle = Throttle::new(Duration::from_millis(interval_ms));
            let mut reported = 0;
            let events = 5000u64;
            for i in 0..events {
                if let Some(report) = throttle.event(i * 313_000) {
                    reported += report.events;
                }
            }
            if let Some(report) = throttle.flush(u64::MAX) {
                reported += report.events;
            }
            assert_eq!(reported, events, "interval {interval_ms} ms");
        }
    }

    #[test]
    fn a_clock_that_steps_back_holds_lines_back_rather_than_flooding() {
        let mut throttle = Throttle::new(Duration::from_secs(1));
        assert!(throttle.event(10 * SECOND).is_some());
        assert_eq!(throttle.event(SECOND), None);
        assert_eq!(throttle.event(11 * SECOND), Some(Report { events: 2 }));
    }

    #[test]
    fn the_suffix_names_the_count_only_for_repeats() {
        assert_eq!(Report { events: 1 }.suffix(), "");
        assert_eq!(Report { events: 1969 }.suffix(), " (1969 times since the last such message)");
    }
}
