//! What a perf run does, checked before anything connects: workload, sizes, cores.

use std::path::PathBuf;
use std::time::Duration;

use crate::initiator::{Digests, HostAuth, HostTls};

use super::trid::Endpoint;

/// Cores a mask may name (the bits of a u64 mask or a list).
pub const MAX_CORES: usize = 64;
/// Longest run accepted.
pub const MAX_DURATION_SECS: u64 = 24 * 3600;
/// Most queues per namespace per core.
pub const MAX_QUEUES_PER_NS: u16 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Sequential,
    Random,
}

/// `-w` and `-M` together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub access: Access,
    pub read_percent: u8,
}

impl Workload {
    /// `-w` names as spdk_nvme_perf takes them; `rw`/`randrw` mix by `-M` (default 50).
    pub fn parse(name: &str, read_percent: Option<u8>) -> Result<Workload, String> {
        let mixed = read_percent.unwrap_or(50);
        if mixed > 100 {
            return Err(format!("-M {mixed}: a percentage"));
        }
        let (access, read_percent) = match name {
            "read" => (Access::Sequential, 100),
            "write" => (Access::Sequential, 0),
            "randread" => (Access::Random, 100),
            "randwrite" => (Access::Random, 0),
            "rw" => (Access::Sequential, mixed),
            "randrw" => (Access::Random, mixed),
            other => return Err(format!("-w {other:?}: read, write, randread, randwrite, rw or randrw")),
        };
        Ok(Workload { access, read_percent })
    }
}

#[derive(Clone, Debug)]
pub struct PerfConfig {
    pub trid: Endpoint,
    pub hostnqn: String,
    /// Outstanding I/Os per namespace per core, spread over its queues.
    pub queue_depth: u16,
    pub io_bytes: usize,
    pub workload: Workload,
    pub duration: Duration,
    pub cores: Vec<usize>,
    pub queues_per_ns: u16,
    pub digests: Digests,
    /// `-L` given once: percentiles in the summary; twice: the whole histogram.
    pub latency_detail: u8,
    pub verify: bool,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub seed: u64,
    /// Keep Alive Timeout for the run's controller.
    pub kato_ms: u32,
    /// `--rate-iops`: the most I/Os the run starts per second, shared over its cores;
    /// `None` runs every queue at full depth.
    pub rate_iops: Option<u32>,
    /// DH-HMAC-CHAP secrets (`--dhchap-key`, `--dhchap-ctrlr-key`).
    pub auth: Option<HostAuth>,
    /// A TLS PSK (`--psk`): connect over TLS 1.3 to a secure_channel listener.
    pub tls: Option<HostTls>,
}

impl PerfConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.tls.is_some() && matches!(&self.trid, Endpoint::Fabric(trid) if trid.subnqn.is_none()) {
            // A PSK identity names the subsystem; discovery to find one is not done over TLS.
            return Err("--psk needs the subsystem: give subnqn:NQN in -r".into());
        }
        if self.queue_depth == 0 {
            return Err("-q must be at least 1".into());
        }
        if self.io_bytes == 0 {
            return Err("-o must be at least 1 byte".into());
        }
        if self.duration.is_zero() || self.duration.as_secs() > MAX_DURATION_SECS {
            return Err(format!("-t {} s: 1 to {MAX_DURATION_SECS}", self.duration.as_secs()));
        }
        if self.cores.is_empty() {
            return Err("-c names no core".into());
        }
        if !(1..=MAX_QUEUES_PER_NS).contains(&self.queues_per_ns) {
            return Err(format!("-P {}: 1 to {MAX_QUEUES_PER_NS}", self.queues_per_ns));
        }
        if self.queues_per_ns > self.queue_depth {
            return Err(format!("-P {} queues cannot share -q {}", self.queues_per_ns, self.queue_depth));
        }
        if let Endpoint::Pcie(_) = self.trid {
            // One bdev channel (one I/O queue pair) per namespace per core.
            if self.queues_per_ns != 1 {
                return Err(format!("-P {}: trtype PCIe runs one queue per namespace per core", self.queues_per_ns));
            }
        }
        if let Some(rate) = self.rate_iops {
            super::pace::share_per_core(rate, self.cores.len())?;
        }
        Ok(())
    }
}

/// A core mask as SPDK takes it: hex (`0x3`, `3`) or a list (`[0,2-3]`).
pub fn parse_core_mask(text: &str) -> Result<Vec<usize>, String> {
    let text = text.trim();
    let mut cores = Vec::new();
    if let Some(list) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        for part in list.split(',').map(str::trim) {
            let bad = || format!("core list item {part:?}");
            let (low, high) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
                None => {
                    let core: usize = part.parse().map_err(|_| bad())?;
                    (core, core)
                }
            };
            if low > high || high >= MAX_CORES {
                return Err(bad());
            }
            cores.extend(low..=high);
        }
    } else {
        let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
        let mask = u64::from_str_radix(hex, 16).map_err(|_| format!("core mask {text:?}"))?;
        cores.extend((0..MAX_CORES).filter(|bit| mask & (1 << bit) != 0));
    }
    cores.sort_unstable();
    cores.dedup();
    if cores.is_empty() {
        return Err(format!("core mask {text:?} names no core"));
    }
    Ok(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_masks() {
        assert_eq!(parse_core_mask("0x1"), Ok(vec![0]));
        assert_eq!(parse_core_mask("0x6"), Ok(vec![1, 2]));
        assert_eq!(parse_core_mask("f"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_core_mask("[0,2-3, 2]"), Ok(vec![0, 2, 3]));
        assert!(parse_core_mask("0x0").is_err());
        assert!(parse_core_mask("[3-1]").is_err());
        assert!(parse_core_mask("[64]").is_err());
        assert!(parse_core_mask("zz").is_err());
    }

    #[test]
    fn workloads() {
        assert_eq!(Workload::parse("randread", None), Ok(Workload { access: Access::Random, read_percent: 100 }));
        assert_eq!(Workload::parse("rw", Some(70)), Ok(Workload { access: Access::Sequential, read_percent: 70 }));
        assert_eq!(Workload::parse("write", Some(70)).map(|w| w.read_percent), Ok(0));
        assert!(Workload::parse("randrw", Some(101)).is_err());
        assert!(Workload::parse("trim", None).is_err());
    }
}
