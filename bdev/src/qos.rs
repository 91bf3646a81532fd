//! QoS rate limits per bdev, enforced in 1 ms timeslices as SPDK does. Each channel
//! enforces its share of the bdev's limit (the limit divided by the channels open when
//! a timeslice starts), so no I/O crosses threads and no counter is shared.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::io::{BdevIo, IoType};

/// SPDK's granularity of an IOPS limit.
pub const QOS_MIN_IOS_PER_SEC: u64 = 1000;
pub const QOS_TIMESLICE: Duration = Duration::from_millis(1);
const TIMESLICES_PER_SEC: u64 = 1000;
const BYTES_PER_MB: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosLimits {
    #[serde(default)]
    pub rw_ios_per_sec: u64,
    #[serde(default)]
    pub rw_mbytes_per_sec: u64,
    #[serde(default)]
    pub r_mbytes_per_sec: u64,
    #[serde(default)]
    pub w_mbytes_per_sec: u64,
}

impl QosLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == QosLimits::default()
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.rw_ios_per_sec.is_multiple_of(QOS_MIN_IOS_PER_SEC) {
            return Err(format!(
                "rw_ios_per_sec {} is not a multiple of {QOS_MIN_IOS_PER_SEC} (0 means unlimited)",
                self.rw_ios_per_sec
            ));
        }
        Ok(())
    }
}

/// Timeslices of unused budget a channel may bank: a reactor preempted for a few
/// milliseconds catches up instead of losing them, while a long idle spell does not turn
/// into a burst far above the limit.
const MAX_BANKED_SLICES: u64 = 10;

/// One channel's token bucket, refilled per 1 ms timeslice. The four budgets are, in
/// order: I/Os, read+write bytes, read bytes, write bytes.
#[derive(Debug)]
pub(crate) struct QosBudget {
    limits: QosLimits,
    per_slice: [Option<u64>; 4],
    left: [Option<u64>; 4],
    slice_started: Instant,
}

fn per_slice(per_sec: u64, share: u64) -> Option<u64> {
    (per_sec > 0).then(|| (per_sec / TIMESLICES_PER_SEC / share.max(1)).max(1))
}

impl QosBudget {
    pub fn new(limits: QosLimits, now: Instant) -> Self {
        let mut budget = QosBudget { limits, per_slice: [None; 4], left: [None; 4], slice_started: now };
        budget.set_share(1);
        budget.left = budget.per_slice;
        budget
    }

    fn set_share(&mut self, share: u64) {
        self.per_slice = [
            per_slice(self.limits.rw_ios_per_sec, share),
            per_slice(self.limits.rw_mbytes_per_sec * BYTES_PER_MB, share),
            per_slice(self.limits.r_mbytes_per_sec * BYTES_PER_MB, share),
            per_slice(self.limits.w_mbytes_per_sec * BYTES_PER_MB, share),
        ];
    }

    /// Credits every whole timeslice since the last refill, at this channel's share.
    pub fn refill(&mut self, now: Instant, share: u64) {
        self.set_share(share);
        let elapsed = now.saturating_duration_since(self.slice_started);
        let slices = (elapsed.as_nanos() / QOS_TIMESLICE.as_nanos()).max(1) as u64;
        // Keep the 1 ms cadence rather than restarting the slice at "now".
        self.slice_started += QOS_TIMESLICE * slices.min(u64::from(u32::MAX)) as u32;
        for (left, per_slice) in self.left.iter_mut().zip(self.per_slice) {
            if let Some(per_slice) = per_slice {
                let banked = left.unwrap_or(0).saturating_add(per_slice.saturating_mul(slices));
                *left = Some(banked.min(per_slice.saturating_mul(MAX_BANKED_SLICES)));
            } else {
                *left = None;
            }
        }
    }

    pub fn slice_over(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.slice_started) >= QOS_TIMESLICE
    }

    /// Charges an I/O to the budget if any is left. Like SPDK, the last I/O of a slice may
    /// overshoot; the next slice starts fresh rather than paying the debt back.
    pub fn admit(&mut self, io: &BdevIo, block_size: u32) -> bool {
        if io.io_type == IoType::Reset {
            // A reset moves no data and is no host's load to limit (SPDK's QoS leaves it
            // alone too): it waits only for the I/O queued ahead of it, never for budget.
            return true;
        }
        let bytes = io.num_blocks * u64::from(block_size);
        let is_read = io.io_type == IoType::Read;
        let is_write = matches!(io.io_type, IoType::Write | IoType::WriteZeroes);
        let applies = [true, true, is_read, is_write];
        let exhausted = self.left.iter().zip(applies).any(|(left, applies)| applies && *left == Some(0));
        if exhausted {
            return false;
        }
        let charges = [1, bytes, bytes, bytes];
        for ((left, applies), charge) in self.left.iter_mut().zip(applies).zip(charges) {
            if let (Some(left), true) = (left.as_mut(), applies) {
                *left = left.saturating_sub(charge);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_per_slice_and_share() {
        let limits = QosLimits { rw_ios_per_sec: 10_000, ..QosLimits::default() };
        let now = Instant::now();
        let mut budget = QosBudget::new(limits, now);
        let io = BdevIo::new(IoType::Read, 0, 8);
        let admitted = (0..100).filter(|_| budget.admit(&io, 512)).count();
        assert_eq!(admitted, 10, "10k IOPS is 10 I/O per 1 ms slice");
        budget.refill(now + QOS_TIMESLICE, 2);
        assert_eq!((0..100).filter(|_| budget.admit(&io, 512)).count(), 5, "two channels split the slice");
        // A reactor preempted for 3 ms banks the slices it missed, up to the cap.
        budget.refill(now + QOS_TIMESLICE * 4, 1);
        assert_eq!((0..100).filter(|_| budget.admit(&io, 512)).count(), 30);
        budget.refill(now + QOS_TIMESLICE * 100, 1);
        assert_eq!((0..200).filter(|_| budget.admit(&io, 512)).count(), 100, "banking stops at 10 slices");

        let bytes = QosLimits { r_mbytes_per_sec: 1, ..QosLimits::default() };
        let mut budget = QosBudget::new(bytes, now);
        let write = BdevIo::new(IoType::Write, 0, 8);
        assert!((0..100).all(|_| budget.admit(&write, 512)), "a read limit does not hold writes back");
        let admitted = (0..100).filter(|_| budget.admit(&io, 512)).count();
        assert_eq!(admitted, 1, "1 MiB/s is ~1 KiB per slice: one 4 KiB read overshoots, then stop");
    }

    #[test]
    fn a_reset_needs_no_budget_and_takes_none() {
        let limits = QosLimits { rw_ios_per_sec: 1_000, ..QosLimits::default() };
        let mut budget = QosBudget::new(limits, Instant::now());
        let read = BdevIo::new(IoType::Read, 0, 1);
        assert!(budget.admit(&read, 512), "1k IOPS is one I/O per 1 ms slice");
        assert!(!budget.admit(&read, 512));
        assert!(budget.admit(&BdevIo::new(IoType::Reset, 0, 0), 512), "a reset passes an exhausted budget");

        let mut budget = QosBudget::new(limits, Instant::now());
        assert!(budget.admit(&BdevIo::new(IoType::Reset, 0, 0), 512));
        assert!(budget.admit(&read, 512), "the reset left the slice's one I/O to the read");
    }

    #[test]
    fn iops_limits_must_be_multiples_of_1000() {
        assert!(QosLimits { rw_ios_per_sec: 1500, ..QosLimits::default() }.validate().is_err());
        assert!(QosLimits { rw_ios_per_sec: 2000, ..QosLimits::default() }.validate().is_ok());
        assert!(QosLimits::default().is_unlimited());
    }
}
