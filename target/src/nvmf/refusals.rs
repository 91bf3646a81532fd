//! Refused Fabrics Connects counted per host NQN, for operators (`--metrics`): a host
//! that keeps failing to connect (not on the allow-list, wrong subsystem, bad queue size)
//! shows up by name. Connect is control plane, so a mutex-guarded map is fine here; the
//! NQN comes off the wire, so the map is bounded.

use std::collections::BTreeMap;

use parking_lot::Mutex;

/// Distinct host NQNs counted by name; refusals from further hosts are counted together
/// under [`OTHER_HOSTS`], so a host inventing a new NQN per attempt cannot grow the map.
pub const MAX_HOSTS: usize = 1024;
/// The bucket for hosts beyond [`MAX_HOSTS`]: not a valid NQN, so no host can own it.
pub const OTHER_HOSTS: &str = "*";
/// The name for refusals whose command carried no readable host NQN (a short or
/// malformed Connect data block).
pub const UNKNOWN_HOST: &str = "";

#[derive(Default)]
pub struct ConnectRefusals {
    by_host: Mutex<BTreeMap<String, u64>>,
}

impl ConnectRefusals {
    pub fn count(&self, hostnqn: &str) {
        let mut by_host = self.by_host.lock();
        if let Some(count) = by_host.get_mut(hostnqn) {
            *count += 1;
            return;
        }
        let key = if by_host.len() < MAX_HOSTS { hostnqn } else { OTHER_HOSTS };
        *by_host.entry(key.to_string()).or_default() += 1;
        debug_assert!(by_host.len() <= MAX_HOSTS + 1);
    }

    /// Every host's count, in NQN order.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.by_host.lock().iter().map(|(host, count)| (host.clone(), *count)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_host_and_bounds_the_map() {
        let refusals = ConnectRefusals::default();
        refusals.count("nqn.2014-08.org.nvmexpress:uuid:a");
        refusals.count("nqn.2014-08.org.nvmexpress:uuid:a");
        refusals.count(UNKNOWN_HOST);
        assert_eq!(
            refusals.snapshot(),
            vec![(UNKNOWN_HOST.to_string(), 1), ("nqn.2014-08.org.nvmexpress:uuid:a".to_string(), 2)]
        );

        for host in 0..MAX_HOSTS + 10 {
            refusals.count(&format!("nqn.2014-08.io.example:host{host}"));
        }
        let snapshot = refusals.snapshot();
        assert_eq!(snapshot.len(), MAX_HOSTS + 1, "named hosts up to the bound, plus the shared bucket");
        let other = snapshot.iter().find(|(host, _)| host == OTHER_HOSTS).map(|(_, count)| *count);
        assert_eq!(other, Some(12), "the 12 hosts past the bound share one count");
        let total: u64 = snapshot.iter().map(|(_, count)| count).sum();
        assert_eq!(total, 3 + MAX_HOSTS as u64 + 10, "no refusal is lost");
        refusals.count("nqn.2014-08.org.nvmexpress:uuid:a");
        assert!(
            refusals.snapshot().contains(&("nqn.2014-08.org.nvmexpress:uuid:a".to_string(), 3)),
            "known hosts still count by name"
        );
    }
}
