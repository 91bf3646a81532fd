//! `--rate-iops`: a worker starts at most its share of I/Os per second, evenly spaced,
//! whatever its queue depth, so a run can hold a target at a steady load (to measure
//! what that load costs it) instead of at its peak. Latency is still timed from each
//! I/O's submission, so waiting for a slot is not counted as latency.

use std::time::Instant;

const NS_PER_SECOND: u64 = 1_000_000_000;

/// Evenly spaced start slots: one every `interval_ns`, from the run's start.
#[derive(Clone, Debug)]
pub struct Pacer {
    start: Instant,
    interval_ns: u64,
    next_ns: u64,
}

impl Pacer {
    /// Slots for `per_second` I/Os a second (at least 1), counted from `start`.
    pub fn new(start: Instant, per_second: u32) -> Pacer {
        assert!(per_second > 0, "a pacer needs a rate of at least one I/O a second");
        Pacer { start, interval_ns: NS_PER_SECOND / u64::from(per_second), next_ns: 0 }
    }

    /// Takes the next slot if it has come by `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let now_ns = now.saturating_duration_since(self.start).as_nanos() as u64;
        if now_ns < self.next_ns {
            return false;
        }
        // Keep the cadence while on time; after a stall start afresh from now rather
        // than burst to make up every missed slot (at most one extra slot is taken).
        self.next_ns = (self.next_ns + self.interval_ns).max(now_ns);
        debug_assert!(self.next_ns >= now_ns);
        true
    }
}

/// Splits a run's `--rate-iops` over its worker cores: each gets an equal share, the
/// first ones one more for the remainder. Every core must get at least one a second.
pub fn share_per_core(rate_iops: u32, cores: usize) -> Result<Vec<u32>, String> {
    let count = u32::try_from(cores).map_err(|_| format!("{cores} cores"))?;
    if count == 0 || rate_iops < count {
        return Err(format!("--rate-iops {rate_iops} gives less than one I/O a second to each of {cores} cores"));
    }
    Ok((0..count).map(|index| rate_iops / count + u32::from(index < rate_iops % count)).collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How many slots a pacer at `per_second` grants when asked at each of `times_us`
    /// (microseconds from the start; a time may be asked several times).
    fn granted(per_second: u32, times_us: &[u64]) -> Vec<bool> {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, per_second);
        times_us.iter().map(|&us| pacer.try_take(start + Duration::from_micros(us))).collect()
    }

    #[test]
    fn slots_are_evenly_spaced() {
        // 1,000 a second: one slot per millisecond, the first at once.
        assert_eq!(
            granted(1_000, &[0, 0, 500, 999, 1_000, 1_000, 1_500, 2_000]),
            [true, false, false, false, true, false, false, true]
        );
    }

    #[test]
    fn a_spinning_caller_gets_exactly_the_rate() {
        // Asked every microsecond for a second, a 250/s pacer grants 250 slots.
        let times: Vec<u64> = (0..1_000_000).collect();
        let count = granted(250, &times).into_iter().filter(|&granted| granted).count();
        assert_eq!(count, 250);
    }

    #[test]
    fn a_stall_does_not_turn_into_a_burst() {
        // Nobody asks for 10 ms at 1,000/s: afterwards one late slot and the one due
        // now are granted, not the ten missed ones, and the cadence resumes.
        let times = [0, 10_000, 10_000, 10_000, 10_500, 11_000];
        assert_eq!(granted(1_000, &times), [true, true, true, false, false, true]);
    }

    #[test]
    fn the_rate_is_shared_over_cores() {
        assert_eq!(share_per_core(1_000, 1), Ok(vec![1_000]));
        assert_eq!(share_per_core(1_000, 3), Ok(vec![334, 333, 333]));
        assert_eq!(share_per_core(2, 2), Ok(vec![1, 1]));
        let err = share_per_core(1, 2).unwrap_err();
        assert!(err.contains("less than one I/O a second"), "{err}");
    }
}
