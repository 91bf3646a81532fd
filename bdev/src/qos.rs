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

/// One channel's budget for the current timeslice.
#[derive(Debug)]
pub(crate) struct QosBudget {
    limits: QosLimits,
    ios: Option<u64>,
    rw_bytes: Option<u64>,
    read_bytes: Option<u64>,
    write_bytes: Option<u64>,
    slice_started: Instant,
}

fn per_slice(per_sec: u64, share: u64) -> Option<u64> {
    (per_sec > 0).then(|| (per_sec / TIMESLICES_PER_SEC / share.max(1)).max(1))
}

impl QosBudget {
    pub fn new(limits: QosLimits, now: Instant) -> Self {
        let mut budget =
            QosBudget { limits, ios: None, rw_bytes: None, read_bytes: None, write_bytes: None, slice_started: now };
        budget.refill(now, 1);
        budget
    }

    /// Starts a new timeslice with this channel's share of each limit.
    pub fn refill(&mut self, now: Instant, share: u64) {
        self.slice_started = now;
        self.ios = per_slice(self.limits.rw_ios_per_sec, share);
        self.rw_bytes = per_slice(self.limits.rw_mbytes_per_sec * BYTES_PER_MB, share);
        self.read_bytes = per_slice(self.limits.r_mbytes_per_sec * BYTES_PER_MB, share);
        self.write_bytes = per_slice(self.limits.w_mbytes_per_sec * BYTES_PER_MB, share);
    }

    pub fn slice_over(&self, now: Instant) -> bool {
        now.duration_since(self.slice_started) >= QOS_TIMESLICE
    }

    /// Charges an I/O to the budget if any is left. Like SPDK, the last I/O of a slice may
    /// overshoot; the next slice starts fresh rather than paying the debt back.
    pub fn admit(&mut self, io: &BdevIo, block_size: u32) -> bool {
        let bytes = io.num_blocks * u64::from(block_size);
        let is_read = io.io_type == IoType::Read;
        let is_write = matches!(io.io_type, IoType::Write | IoType::WriteZeroes);
        let exhausted = |left: Option<u64>| left == Some(0);
        if exhausted(self.ios)
            || exhausted(self.rw_bytes)
            || (is_read && exhausted(self.read_bytes))
            || (is_write && exhausted(self.write_bytes))
        {
            return false;
        }
        let charge = |left: &mut Option<u64>, amount: u64| {
            if let Some(left) = left {
                *left = left.saturating_sub(amount);
            }
        };
        charge(&mut self.ios, 1);
        charge(&mut self.rw_bytes, bytes);
        if is_read {
            charge(&mut self.read_bytes, bytes);
        }
        if is_write {
            charge(&mut self.write_bytes, bytes);
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
        budget.refill(now, 2);
        assert_eq!((0..100).filter(|_| budget.admit(&io, 512)).count(), 5, "two channels split the slice");

        let bytes = QosLimits { r_mbytes_per_sec: 1, ..QosLimits::default() };
        let mut budget = QosBudget::new(bytes, now);
        let write = BdevIo::new(IoType::Write, 0, 8);
        assert!((0..100).all(|_| budget.admit(&write, 512)), "a read limit does not hold writes back");
        let admitted = (0..100).filter(|_| budget.admit(&io, 512)).count();
        assert_eq!(admitted, 1, "1 MiB/s is ~1 KiB per slice: one 4 KiB read overshoots, then stop");
    }

    #[test]
    fn iops_limits_must_be_multiples_of_1000() {
        assert!(QosLimits { rw_ios_per_sec: 1500, ..QosLimits::default() }.validate().is_err());
        assert!(QosLimits { rw_ios_per_sec: 2000, ..QosLimits::default() }.validate().is_ok());
        assert!(QosLimits::default().is_unlimited());
    }
}
