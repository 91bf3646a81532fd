//! MSG_ZEROCOPY sends of C2HData (SPDK's `enable_zerocopy_send_server` and
//! `zerocopy_threshold`): the settings, and the bookkeeping of which sends the kernel
//! still holds.
//!
//! A zero-copy send pins the pages it was given, so they must not change until the
//! kernel says it let go: a notification on the socket's error queue naming an inclusive
//! range of send numbers (Linux's msg_zerocopy.rst). Each send call the kernel accepts
//! with MSG_ZEROCOPY takes the next number of a per-socket 32-bit counter that starts at
//! 0 and wraps; ranges may come merged and, in principle, out of order. The COPIED code
//! says the kernel copied after all (always so on loopback, where local delivery copies
//! the frags); the memory is free again either way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::nvmf::transport::SockImpl;

/// Per implementation (posix, uring): whether accepted connections send zero-copy, and
/// the least command data a write carries to go zero-copy. Off by default: on loopback the
/// kernel copies zero-copy frags at local delivery anyway and the notifications cost more
/// (README, sock_impl: the figures).
static ENABLED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
static THRESHOLD: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

static SENDS: AtomicU64 = AtomicU64::new(0);
static COPIED: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static HELD: AtomicU64 = AtomicU64::new(0);

fn index(sock_impl: SockImpl) -> usize {
    match sock_impl {
        SockImpl::Posix => 0,
        SockImpl::Uring => 1,
    }
}

pub fn enabled(sock_impl: SockImpl) -> bool {
    ENABLED[index(sock_impl)].load(Ordering::Relaxed)
}

pub fn set_enabled(sock_impl: SockImpl, enable: bool) {
    ENABLED[index(sock_impl)].store(enable, Ordering::Relaxed);
}

pub fn threshold(sock_impl: SockImpl) -> u32 {
    THRESHOLD[index(sock_impl)].load(Ordering::Relaxed)
}

pub fn set_threshold(sock_impl: SockImpl, bytes: u32) {
    THRESHOLD[index(sock_impl)].store(bytes, Ordering::Relaxed);
}

/// The threshold connections accepted through `sock_impl` use, when they send zero-copy.
pub fn threshold_for(sock_impl: SockImpl) -> Option<u32> {
    enabled(sock_impl).then(|| threshold(sock_impl))
}

/// Counts since start: zero-copy sends, the ones the kernel reported it copied anyway,
/// and the sends that fell back to copying (the kernel refused: ENOBUFS, optmem); and
/// the data buffers lent to the kernel now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroCopyStats {
    pub sends: u64,
    pub copied: u64,
    pub fallbacks: u64,
    pub held: u64,
}

pub fn stats() -> ZeroCopyStats {
    ZeroCopyStats {
        sends: SENDS.load(Ordering::Relaxed),
        copied: COPIED.load(Ordering::Relaxed),
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
        held: HELD.load(Ordering::Relaxed),
    }
}

/// Data buffers were lent to the kernel (`count` > 0) or given back (< 0).
pub(super) fn count_held(count: i64) {
    if count >= 0 {
        HELD.fetch_add(count as u64, Ordering::Relaxed);
    } else {
        HELD.fetch_sub(count.unsigned_abs(), Ordering::Relaxed);
    }
}

pub(super) fn count_fallback() {
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
}

/// `a` comes before `b` on the wrapping counter (they are less than 2^31 apart: far
/// more sends than any socket has outstanding).
fn before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

/// The send numbers a socket has given out and not yet heard back about.
#[derive(Debug, Default)]
pub struct Notifications {
    /// The number the kernel gives the next zero-copy send.
    next: u32,
    /// Sends in the order made, each with whether its notification came.
    outstanding: VecDeque<(u32, bool)>,
}

impl Notifications {
    /// A zero-copy send was accepted: its number.
    pub fn sent(&mut self) -> u32 {
        let number = self.next;
        self.next = self.next.wrapping_add(1);
        self.outstanding.push_back((number, false));
        SENDS.fetch_add(1, Ordering::Relaxed);
        number
    }

    /// The number of the last send made, if any is outstanding.
    pub fn last(&self) -> Option<u32> {
        self.outstanding.back().map(|&(number, _)| number)
    }

    /// The kernel let go of sends `first..=last` (wrapping); `copied`: it copied them.
    /// Numbers never given out, or already heard of, are ignored.
    pub fn complete(&mut self, first: u32, last: u32, copied: bool) {
        let span = last.wrapping_sub(first);
        for (number, done) in self.outstanding.iter_mut() {
            if !*done && number.wrapping_sub(first) <= span {
                *done = true;
                if copied {
                    COPIED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while self.outstanding.front().is_some_and(|&(_, done)| done) {
            self.outstanding.pop_front();
        }
    }

    /// Whether send `number` and every send before it have been let go.
    pub fn released_through(&self, number: u32) -> bool {
        match self.outstanding.front() {
            None => true,
            Some(&(oldest, _)) => before(number, oldest),
        }
    }

    /// Sends not yet released (including done ones behind an older one still held).
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    pub fn is_idle(&self) -> bool {
        self.outstanding.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_single_and_merged_ranges_release_in_send_order() {
        let mut sent = Notifications::default();
        let numbers: Vec<u32> = (0..5).map(|_| sent.sent()).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4]);
        assert!(!sent.released_through(0));
        sent.complete(0, 0, false);
        assert!(sent.released_through(0) && !sent.released_through(1));
        sent.complete(1, 3, true);
        assert!(sent.released_through(3) && !sent.released_through(4));
        sent.complete(4, 4, false);
        assert!(sent.released_through(4) && sent.is_idle());
    }

    #[test]
    fn an_out_of_order_range_waits_for_the_sends_before_it() {
        let mut sent = Notifications::default();
        for _ in 0..4 {
            sent.sent();
        }
        sent.complete(2, 3, false);
        assert!(!sent.released_through(0), "send 0 is still held");
        assert!(!sent.released_through(3), "sends 2 and 3 are done but 0 and 1 are not");
        sent.complete(0, 0, false);
        assert!(sent.released_through(0) && !sent.released_through(1));
        sent.complete(1, 1, false);
        assert!(sent.released_through(3) && sent.is_idle());
    }

    #[test]
    fn the_counter_wraps_and_ranges_across_the_wrap_are_inclusive() {
        let mut sent = Notifications { next: u32::MAX - 1, outstanding: VecDeque::new() };
        let numbers: Vec<u32> = (0..4).map(|_| sent.sent()).collect();
        assert_eq!(numbers, [u32::MAX - 1, u32::MAX, 0, 1]);
        assert!(!sent.released_through(u32::MAX - 1));
        sent.complete(u32::MAX - 1, 0, false);
        assert!(sent.released_through(0), "the range ran across the wrap");
        assert!(!sent.released_through(1));
        assert_eq!(sent.last(), Some(1));
        sent.complete(1, 1, true);
        assert!(sent.is_idle() && sent.released_through(1));
    }

    #[test]
    fn repeated_and_unknown_numbers_change_nothing_and_copied_is_counted() {
        let mut sent = Notifications::default();
        sent.sent();
        sent.sent();
        let before = stats().copied;
        sent.complete(0, 0, true);
        sent.complete(0, 0, true);
        sent.complete(7, 9, true);
        assert!(!sent.released_through(1));
        assert!(stats().copied > before, "the COPIED code is counted");
        sent.complete(1, 1, false);
        assert!(sent.is_idle());
    }
}
