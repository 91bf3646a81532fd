//! Failed authentications counted per host NQN and source address, and refused for a
//! while once a host fails too often: a guessing host gets a handful of tries a minute,
//! and an operator sees who is failing (`nvmf_get_stats`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;

/// Failures within one window after which further attempts are refused.
pub const MAX_FAILURES_PER_WINDOW: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
const WINDOW_NS: u64 = WINDOW.as_nanos() as u64;
/// Hosts and addresses tracked at once; the stalest entry goes to make room, so a flood
/// of made-up NQNs cannot grow the table without bound.
pub const MAX_TRACKED: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureCount {
    pub hostnqn: String,
    pub addr: IpAddr,
    /// Failed attempts since the target started (refused ones included).
    pub failures: u64,
    /// Attempts refused without trying because of earlier failures.
    pub throttled: u64,
}

/// Times are the engine's clock (a poll group's `now_ns`), so a simulation drives it.
struct Entry {
    window_start_ns: u64,
    in_window: u32,
    failures: u64,
    throttled: u64,
}

#[derive(Default)]
pub struct AuthLimiter {
    entries: Mutex<HashMap<(String, IpAddr), Entry>>,
}

impl AuthLimiter {
    /// Whether an attempt from `hostnqn` at `addr` is refused now; a refusal is counted.
    pub fn check(&self, hostnqn: &str, addr: IpAddr, now_ns: u64) -> bool {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(&(hostnqn.to_string(), addr)) else { return false };
        if now_ns.saturating_sub(entry.window_start_ns) >= WINDOW_NS {
            entry.window_start_ns = now_ns;
            entry.in_window = 0;
        }
        let refused = entry.in_window >= MAX_FAILURES_PER_WINDOW;
        if refused {
            entry.throttled += 1;
        }
        refused
    }

    /// Counts a failed attempt.
    pub fn failed(&self, hostnqn: &str, addr: IpAddr, now_ns: u64) {
        let mut entries = self.entries.lock();
        let key = (hostnqn.to_string(), addr);
        if !entries.contains_key(&key) && entries.len() >= MAX_TRACKED {
            let stalest = entries.iter().min_by_key(|(_, entry)| entry.window_start_ns).map(|(key, _)| key.clone());
            if let Some(stalest) = stalest {
                entries.remove(&stalest);
            }
        }
        let entry =
            entries.entry(key).or_insert(Entry { window_start_ns: now_ns, in_window: 0, failures: 0, throttled: 0 });
        if now_ns.saturating_sub(entry.window_start_ns) >= WINDOW_NS {
            entry.window_start_ns = now_ns;
            entry.in_window = 0;
        }
        entry.in_window = entry.in_window.saturating_add(1);
        entry.failures += 1;
    }

    pub fn counts(&self) -> Vec<FailureCount> {
        let mut counts: Vec<FailureCount> = self
            .entries
            .lock()
            .iter()
            .map(|((hostnqn, addr), entry)| FailureCount {
                hostnqn: hostnqn.clone(),
                addr: *addr,
                failures: entry.failures,
                throttled: entry.throttled,
            })
            .collect();
        counts.sort_by(|a, b| (&a.hostnqn, a.addr).cmp(&(&b.hostnqn, b.addr)));
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:a";
    const OTHER: &str = "nqn.2014-08.org.nvmexpress:uuid:b";

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_host_is_refused_after_its_failures_until_the_window_passes() {
        let limiter = AuthLimiter::default();
        let start = 5_000_000_000;
        for attempt in 0..MAX_FAILURES_PER_WINDOW {
            assert!(!limiter.check(HOST, ip(1), start), "attempt {attempt} may try");
            limiter.failed(HOST, ip(1), start);
        }
        assert!(limiter.check(HOST, ip(1), start), "one failure too many");
        assert!(!limiter.check(HOST, ip(2), start), "another address is its own count");
        assert!(!limiter.check(OTHER, ip(1), start), "another host is its own count");
        assert!(limiter.check(HOST, ip(1), start + WINDOW_NS - 1), "still refused just before the minute is out");
        assert!(!limiter.check(HOST, ip(1), start + WINDOW_NS), "the next window starts afresh");
        assert_eq!(
            limiter.counts(),
            vec![FailureCount { hostnqn: HOST.into(), addr: ip(1), failures: 5, throttled: 2 }]
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let limiter = AuthLimiter::default();
        for n in 0..MAX_TRACKED + 10 {
            limiter.failed(&format!("nqn.host:{n}"), ip(1), 1_000_000 * n as u64);
        }
        let counts = limiter.counts();
        assert_eq!(counts.len(), MAX_TRACKED);
        assert!(!counts.iter().any(|count| count.hostnqn == "nqn.host:0"), "the stalest went first");
    }
}
