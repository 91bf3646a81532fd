//! The injection table of an error bdev, one entry per I/O type SPDK injects into (read,
//! write, unmap, flush), shared by every channel.
//!
//! Counts are exact across channels ("inject 3 failures" fails exactly 3 I/O, whichever
//! threads they run on), so an armed entry is claimed with an atomic read-modify-write.
//! That is the one atomic RMW on an I/O path in the bdev modules, and a deliberate
//! exception to shared-nothing on the data path: this is fault injection for tests, and an
//! entry that is not armed costs one relaxed load, no RMW. Per-channel copies pushed by
//! `for_each_channel` would avoid it but could not share one count between threads.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::io::IoType;
use crate::status::IoStatus;

/// SPDK's `error_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorType {
    /// Complete with a generic failure (SPDK's FAILED: Internal Device Error).
    Failure = 1,
    /// Hold the I/O until a reset arrives on its channel.
    Pending = 2,
    /// Let the I/O through, flipping `corrupt_value`'s bits at `corrupt_offset` (a
    /// write's payload before it goes down, a read's data after it comes back).
    CorruptData = 3,
    /// Refuse with "no resources": the layer queues and retries it.
    Nomem = 4,
    /// Complete with the given NVMe status code type and code.
    NvmeFailure = 5,
}

impl ErrorType {
    pub fn parse(text: &str) -> Option<ErrorType> {
        Some(match text {
            "failure" => ErrorType::Failure,
            "pending" => ErrorType::Pending,
            "corrupt_data" => ErrorType::CorruptData,
            "nomem" => ErrorType::Nomem,
            "nvme_failure" => ErrorType::NvmeFailure,
            _ => return None,
        })
    }

    fn from_u8(value: u8) -> Option<ErrorType> {
        [ErrorType::Failure, ErrorType::Pending, ErrorType::CorruptData, ErrorType::Nomem, ErrorType::NvmeFailure]
            .into_iter()
            .find(|kind| *kind as u8 == value)
    }
}

/// SPDK's `io_type` targets: one type, all four, or "clear" (every entry disarmed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    One(IoType),
    All,
    Clear,
}

impl Target {
    pub fn parse(text: &str) -> Option<Target> {
        Some(match text {
            "read" => Target::One(IoType::Read),
            "write" => Target::One(IoType::Write),
            "unmap" => Target::One(IoType::Unmap),
            "flush" => Target::One(IoType::Flush),
            "all" => Target::All,
            "clear" => Target::Clear,
            _ => return None,
        })
    }
}

/// What to inject, as `bdev_error_inject_error` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    pub error_type: ErrorType,
    pub num: u32,
    /// Inject only while the channel has at least this many I/O at the base (0: always).
    pub queue_depth: u64,
    pub corrupt_offset: u64,
    pub corrupt_value: u8,
    pub status: IoStatus,
}

#[derive(Default)]
struct Entry {
    remaining: AtomicU32,
    error_type: AtomicU8,
    queue_depth: AtomicU64,
    corrupt_offset: AtomicU64,
    corrupt_value: AtomicU8,
    sct: AtomicU8,
    sc: AtomicU8,
}

const INJECTABLE: [IoType; 4] = [IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush];

#[derive(Default)]
pub struct Injections([Entry; 4]);

fn slot(io_type: IoType) -> Option<usize> {
    INJECTABLE.iter().position(|candidate| *candidate == io_type)
}

impl Injections {
    /// Arms (or, for `Target::Clear`, disarms) entries. Control plane only.
    pub fn set(&self, target: Target, injection: Injection) {
        let entries: Vec<&Entry> = match target {
            Target::One(io_type) => slot(io_type).map(|index| &self.0[index]).into_iter().collect(),
            Target::All => self.0.iter().collect(),
            Target::Clear => {
                for entry in &self.0 {
                    entry.remaining.store(0, Ordering::Release);
                }
                return;
            }
        };
        for entry in entries {
            // Disarm, describe, re-arm: a channel that sees the new count (Acquire) sees
            // the description stored before it (Release).
            entry.remaining.store(0, Ordering::Release);
            entry.error_type.store(injection.error_type as u8, Ordering::Relaxed);
            entry.queue_depth.store(injection.queue_depth, Ordering::Relaxed);
            entry.corrupt_offset.store(injection.corrupt_offset, Ordering::Relaxed);
            entry.corrupt_value.store(injection.corrupt_value, Ordering::Relaxed);
            entry.sct.store(injection.status.sct, Ordering::Relaxed);
            entry.sc.store(injection.status.sc, Ordering::Relaxed);
            entry.remaining.store(injection.num, Ordering::Release);
        }
    }

    /// Injections of `io_type` still to fire.
    pub fn remaining(&self, io_type: IoType) -> u32 {
        slot(io_type).map_or(0, |index| self.0[index].remaining.load(Ordering::Acquire))
    }

    /// Claims one injection for an I/O of `io_type` on a channel with `outstanding` I/O,
    /// if one is armed and the queue depth condition holds.
    pub fn take(&self, io_type: IoType, outstanding: u64) -> Option<Injection> {
        let entry = &self.0[slot(io_type)?];
        if entry.remaining.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let queue_depth = entry.queue_depth.load(Ordering::Relaxed);
        if queue_depth != 0 && outstanding < queue_depth {
            return None;
        }
        let left = entry.remaining.fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| count.checked_sub(1));
        let left = left.ok()?;
        Some(Injection {
            error_type: ErrorType::from_u8(entry.error_type.load(Ordering::Relaxed))?,
            num: left - 1,
            queue_depth,
            corrupt_offset: entry.corrupt_offset.load(Ordering::Relaxed),
            corrupt_value: entry.corrupt_value.load(Ordering::Relaxed),
            status: IoStatus::new(entry.sct.load(Ordering::Relaxed), entry.sc.load(Ordering::Relaxed)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(num: u32) -> Injection {
        Injection {
            error_type: ErrorType::Failure,
            num,
            queue_depth: 0,
            corrupt_offset: 0,
            corrupt_value: 0,
            status: IoStatus::SUCCESS,
        }
    }

    #[test]
    fn counts_fire_exactly_and_only_for_their_type() {
        let injections = Injections::default();
        injections.set(Target::One(IoType::Read), failure(3));
        assert!(injections.take(IoType::Write, 0).is_none());
        let fired: Vec<_> = (0..5).filter_map(|_| injections.take(IoType::Read, 0)).collect();
        assert_eq!(fired.len(), 3);
        assert_eq!(fired.iter().map(|fired| fired.num).collect::<Vec<_>>(), vec![2, 1, 0]);
        assert_eq!(injections.remaining(IoType::Read), 0);
        assert!(injections.take(IoType::Reset, 0).is_none(), "resets are never injected");
    }

    #[test]
    fn all_arms_every_type_and_clear_disarms_them() {
        let injections = Injections::default();
        injections.set(Target::All, failure(2));
        for io_type in INJECTABLE {
            assert_eq!(injections.remaining(io_type), 2);
        }
        injections.set(Target::Clear, failure(0));
        assert!(INJECTABLE.iter().all(|io_type| injections.take(*io_type, 0).is_none()));
    }

    #[test]
    fn queue_depth_gates_an_injection() {
        let injections = Injections::default();
        injections.set(Target::One(IoType::Write), Injection { queue_depth: 4, ..failure(1) });
        assert!(injections.take(IoType::Write, 3).is_none());
        assert!(injections.take(IoType::Write, 4).is_some());
    }

    #[test]
    fn names_parse_as_spdk_spells_them() {
        assert_eq!(ErrorType::parse("nvme_failure"), Some(ErrorType::NvmeFailure));
        assert_eq!(ErrorType::parse("boom"), None);
        assert_eq!(Target::parse("all"), Some(Target::All));
        assert_eq!(Target::parse("clear"), Some(Target::Clear));
        assert_eq!(Target::parse("write_zeroes"), None);
    }
}
