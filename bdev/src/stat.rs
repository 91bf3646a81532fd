//! I/O statistics with SPDK's field names (`bdev_get_iostat`). Each channel keeps its
//! own block, written only by its thread; a query sums the channels and the totals
//! retired from channels that have gone.

use serde_json::{json, Map, Value};

use crate::io::IoType;
use crate::status::IoStatus;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpStat {
    pub bytes: u64,
    pub ops: u64,
    pub latency_ticks: u64,
    pub max_latency_ticks: u64,
    /// u64::MAX until the first operation, reported as 0.
    pub min_latency_ticks: u64,
}

impl OpStat {
    fn record(&mut self, bytes: u64, latency_ns: u64) {
        if self.ops == 0 {
            self.min_latency_ticks = u64::MAX;
        }
        self.bytes += bytes;
        self.ops += 1;
        self.latency_ticks += latency_ns;
        self.max_latency_ticks = self.max_latency_ticks.max(latency_ns);
        self.min_latency_ticks = self.min_latency_ticks.min(latency_ns);
    }

    fn add(&mut self, other: &OpStat) {
        if other.ops == 0 {
            return;
        }
        let min =
            if self.ops == 0 { other.min_latency_ticks } else { self.min_latency_ticks.min(other.min_latency_ticks) };
        self.bytes += other.bytes;
        self.ops += other.ops;
        self.latency_ticks += other.latency_ticks;
        self.max_latency_ticks = self.max_latency_ticks.max(other.max_latency_ticks);
        self.min_latency_ticks = min;
    }

    fn min_reported(&self) -> u64 {
        // u64::MAX until an operation since creation or since a max/min reset.
        if self.ops == 0 || self.min_latency_ticks == u64::MAX {
            0
        } else {
            self.min_latency_ticks
        }
    }

    fn reset_max_min(&mut self) {
        self.max_latency_ticks = 0;
        self.min_latency_ticks = u64::MAX;
    }
}

/// What `bdev_get_iostat {reset_mode}` clears once the figures are read (SPDK's
/// `spdk_bdev_reset_stat_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResetMode {
    /// Every counter, as if the bdev were new.
    All,
    /// Only the maximum and minimum latencies.
    MaxMin,
    /// Only the failed I/O counts.
    Error,
    #[default]
    None,
}

impl ResetMode {
    pub fn parse(text: &str) -> Option<ResetMode> {
        match text {
            "all" => Some(ResetMode::All),
            "maxmin" => Some(ResetMode::MaxMin),
            "error" => Some(ResetMode::Error),
            "none" => Some(ResetMode::None),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStat {
    pub read: OpStat,
    pub write: OpStat,
    pub unmap: OpStat,
    pub copy: OpStat,
    pub other_ops: u64,
    /// Failed I/O by status, in SPDK's `io_error` map.
    pub errors: Vec<(IoStatus, u64)>,
    /// I/O whose buffers had to be copied through host memory (a domain the bdev
    /// cannot DMA from).
    pub bounced_ios: u64,
    /// Times an I/O was queued to wait for the module's resources: the module said "no
    /// resources" to it, or to an I/O ahead of it on the channel.
    pub nomem_retries: u64,
}

impl IoStat {
    pub fn record(&mut self, io_type: IoType, bytes: u64, latency_ns: u64, status: IoStatus) {
        if !status.is_success() {
            match self.errors.iter_mut().find(|(seen, _)| *seen == status) {
                Some((_, count)) => *count += 1,
                None => self.errors.push((status, 1)),
            }
            return;
        }
        match io_type {
            IoType::Read => self.read.record(bytes, latency_ns),
            IoType::Write => self.write.record(bytes, latency_ns),
            IoType::Unmap => self.unmap.record(bytes, latency_ns),
            _ => self.other_ops += 1,
        }
    }

    pub fn add(&mut self, other: &IoStat) {
        self.read.add(&other.read);
        self.write.add(&other.write);
        self.unmap.add(&other.unmap);
        self.copy.add(&other.copy);
        self.other_ops += other.other_ops;
        self.bounced_ios += other.bounced_ios;
        self.nomem_retries += other.nomem_retries;
        for (status, count) in &other.errors {
            match self.errors.iter_mut().find(|(seen, _)| seen == status) {
                Some((_, total)) => *total += count,
                None => self.errors.push((*status, *count)),
            }
        }
    }

    /// Clears what `mode` names; the caller has read the figures first.
    pub fn reset(&mut self, mode: ResetMode) {
        match mode {
            ResetMode::All => *self = IoStat::default(),
            ResetMode::MaxMin => {
                for op in [&mut self.read, &mut self.write, &mut self.unmap, &mut self.copy] {
                    op.reset_max_min();
                }
            }
            ResetMode::Error => self.errors.clear(),
            ResetMode::None => {}
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, count)| count).sum()
    }

    /// One bdev's entry of `bdev_get_iostat`, keys in SPDK's order.
    pub fn to_json(&self, name: &str) -> Value {
        let errors: Map<String, Value> =
            self.errors.iter().map(|(status, count)| (status.to_string(), json!(count))).collect();
        json!({
            "name": name,
            "bytes_read": self.read.bytes, "num_read_ops": self.read.ops,
            "bytes_written": self.write.bytes, "num_write_ops": self.write.ops,
            "bytes_unmapped": self.unmap.bytes, "num_unmap_ops": self.unmap.ops,
            "bytes_copied": self.copy.bytes, "num_copy_ops": self.copy.ops,
            "read_latency_ticks": self.read.latency_ticks,
            "max_read_latency_ticks": self.read.max_latency_ticks,
            "min_read_latency_ticks": self.read.min_reported(),
            "write_latency_ticks": self.write.latency_ticks,
            "max_write_latency_ticks": self.write.max_latency_ticks,
            "min_write_latency_ticks": self.write.min_reported(),
            "unmap_latency_ticks": self.unmap.latency_ticks,
            "max_unmap_latency_ticks": self.unmap.max_latency_ticks,
            "min_unmap_latency_ticks": self.unmap.min_reported(),
            "copy_latency_ticks": self.copy.latency_ticks,
            "max_copy_latency_ticks": self.copy.max_latency_ticks,
            "min_copy_latency_ticks": self.copy.min_reported(),
            "io_error": errors,
            "driver_specific": {"bounced_ios": self.bounced_ios, "nomem_retries": self.nomem_retries},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_sums() {
        let mut one = IoStat::default();
        one.record(IoType::Read, 4096, 100, IoStatus::SUCCESS);
        one.record(IoType::Read, 4096, 50, IoStatus::SUCCESS);
        one.record(IoType::Write, 512, 70, IoStatus::SUCCESS);
        one.record(IoType::Read, 4096, 1, IoStatus::UNRECOVERED_READ_ERROR);
        let mut two = IoStat::default();
        two.record(IoType::Read, 8192, 30, IoStatus::SUCCESS);
        two.record(IoType::Read, 8192, 1, IoStatus::UNRECOVERED_READ_ERROR);
        let mut total = IoStat::default();
        total.add(&one);
        total.add(&two);
        assert_eq!((total.read.ops, total.read.bytes), (3, 16384));
        assert_eq!((total.read.min_latency_ticks, total.read.max_latency_ticks), (30, 100));
        assert_eq!(total.error_count(), 2);
        let json = total.to_json("Malloc0");
        assert_eq!(json["num_write_ops"], 1);
        assert_eq!(json["min_unmap_latency_ticks"], 0, "no unmap yet reports 0, not u64::MAX");
        assert_eq!(json["io_error"]["unrecovered read error"], 2);
    }

    #[test]
    fn resets_clear_what_their_mode_names() {
        let sample = || {
            let mut stat = IoStat::default();
            stat.record(IoType::Read, 4096, 100, IoStatus::SUCCESS);
            stat.record(IoType::Read, 4096, 40, IoStatus::SUCCESS);
            stat.record(IoType::Write, 4096, 1, IoStatus::UNRECOVERED_READ_ERROR);
            stat
        };
        let mut none = sample();
        none.reset(ResetMode::None);
        assert_eq!(none, sample());

        let mut errors = sample();
        errors.reset(ResetMode::Error);
        assert_eq!((errors.error_count(), errors.read.ops), (0, 2), "only the failures go");

        let mut max_min = sample();
        max_min.reset(ResetMode::MaxMin);
        assert_eq!((max_min.read.ops, max_min.read.latency_ticks), (2, 140), "sums stay");
        let json = max_min.to_json("Malloc0");
        assert_eq!(
            (json["max_read_latency_ticks"].as_u64(), json["min_read_latency_ticks"].as_u64()),
            (Some(0), Some(0))
        );
        max_min.record(IoType::Read, 4096, 70, IoStatus::SUCCESS);
        assert_eq!((max_min.read.max_latency_ticks, max_min.read.min_latency_ticks), (70, 70), "a new window");

        let mut all = sample();
        all.reset(ResetMode::All);
        assert_eq!(all, IoStat::default());
        assert_eq!(ResetMode::parse("maxmin"), Some(ResetMode::MaxMin));
        assert_eq!(ResetMode::parse("bogus"), None);
    }
}
