//! The discovery service from the host side (NVMe-oF 1.1, 5.3): connect to the well-known
//! discovery NQN and read the discovery log page consistently (generation counter).

use std::net::SocketAddr;

use peerless_target::nvme::get_str;
use peerless_target::nvme::log::{lid, DISCOVERY_ENTRY_BYTES, DISCOVERY_HEADER_BYTES};
use peerless_target::nvme::{le16, le64};

use super::controller::{Controller, Options};
use super::error::{Error, Result};

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Entries read at most; a longer log is cut short with an error.
pub const MAX_DISCOVERY_ENTRIES: u64 = 1024;
/// Re-reads when the generation counter moves while we read.
const MAX_GENERATION_RETRIES: usize = 4;

/// SUBTYPE values (NVMe-oF 1.1, Figure 38).
pub mod subtype {
    pub const REFERRAL: u8 = 1;
    pub const NVME: u8 = 2;
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// One discovery log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
    /// TSAS SECTYPE of a TCP entry: 0 none, 2 TLS 1.3 (NVMe/TCP 1.0, 3.6.1.1).
    pub tcp_sectype: u8,
}

impl DiscoveryEntry {
    pub fn parse(bytes: &[u8]) -> DiscoveryEntry {
        let text = |at, width| get_str(bytes, at, width).map(|s: String| s.trim_end().to_string()).unwrap_or_default();
        DiscoveryEntry {
            trtype: bytes.first().copied().unwrap_or(0),
            adrfam: bytes.get(1).copied().unwrap_or(0),
            subtype: bytes.get(2).copied().unwrap_or(0),
            treq: bytes.get(3).copied().unwrap_or(0),
            portid: le16(bytes, 4),
            cntlid: le16(bytes, 6),
            asqsz: le16(bytes, 8),
            trsvcid: text(32, 32),
            subnqn: text(256, 256),
            traddr: text(512, 256),
            tcp_sectype: bytes.get(768).copied().unwrap_or(0),
        }
    }
}

/// A discovery log read at one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryLog {
    pub generation: u64,
    pub entries: Vec<DiscoveryEntry>,
}

impl Controller {
    /// Reads the whole discovery log; retries while the generation counter changes.
    pub fn discovery_log(&mut self) -> Result<DiscoveryLog> {
        for _ in 0..MAX_GENERATION_RETRIES {
            let header = self.get_log_page(lid::DISCOVERY, 0, 0, DISCOVERY_HEADER_BYTES)?;
            let (generation, count) = (le64(&header, 0), le64(&header, 8));
            if count > MAX_DISCOVERY_ENTRIES {
                return Err(Error::Unsupported(format!("{count} discovery log entries")));
            }
            let mut entries = Vec::with_capacity(count as usize);
            if count > 0 {
                let body = self.get_log_page(
                    lid::DISCOVERY,
                    0,
                    DISCOVERY_HEADER_BYTES as u64,
                    count as usize * DISCOVERY_ENTRY_BYTES,
                )?;
                entries.extend(body.chunks_exact(DISCOVERY_ENTRY_BYTES).map(DiscoveryEntry::parse));
            }
            let after = self.get_log_page(lid::DISCOVERY, 0, 0, DISCOVERY_HEADER_BYTES)?;
            if le64(&after, 0) == generation {
                return Ok(DiscoveryLog { generation, entries });
            }
        }
        Err(Error::Protocol("discovery log generation kept changing while read".into()))
    }
}

/// Connects to the discovery controller at `addr` and reads its log.
pub fn discover(addr: SocketAddr, hostnqn: &str, options: &Options) -> Result<DiscoveryLog> {
    let mut options = options.clone();
    // A discovery association is short; no keep-alive needed (NVMe-oF 1.1, 3.3: KATO may be 0).
    options.kato_ms = 0;
    let mut controller = Controller::connect(addr, DISCOVERY_NQN, hostnqn, &options)?;
    controller.discovery_log()
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerless_target::nvme::log::{discovery, DiscoveryEntry as Wire};

    #[test]
    fn parses_the_targets_discovery_layout() {
        let wire = Wire {
            subtype: 2,
            portid: 3,
            ipv6: false,
            trsvcid: "4420",
            traddr: "127.0.0.1",
            subnqn: "nqn.2016-06.io.peerless:cnode1",
            secure_channel_required: false,
            trtype: "TCP",
        };
        let page = discovery(5, &[wire]);
        let entry = DiscoveryEntry::parse(&page[DISCOVERY_HEADER_BYTES..]);
        assert_eq!((entry.trtype, entry.adrfam, entry.subtype, entry.portid, entry.cntlid), (3, 1, 2, 3, 0xffff));
        assert_eq!((entry.trsvcid.as_str(), entry.traddr.as_str()), ("4420", "127.0.0.1"));
        assert_eq!(entry.subnqn, "nqn.2016-06.io.peerless:cnode1");
    }
}
