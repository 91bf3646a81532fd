//! Log pages (NVMe Base 2.0, 5.16.1) and the discovery log (NVMe-oF 1.1, 5.3).

use super::{put16, put64, put_str};

/// Log page identifiers.
pub mod lid {
    pub const ERROR_INFORMATION: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NAMESPACES: u8 = 0x04;
    pub const ANA: u8 = 0x0c;
    pub const DISCOVERY: u8 = 0x70;
}

pub const ERROR_ENTRY_BYTES: usize = 64;
pub const SMART_BYTES: usize = 512;
pub const FIRMWARE_SLOT_BYTES: usize = 512;
pub const CHANGED_NAMESPACES_BYTES: usize = 4096;
pub const DISCOVERY_HEADER_BYTES: usize = 1024;
pub const DISCOVERY_ENTRY_BYTES: usize = 1024;
/// A changed-namespace list holds this many IDs before it reports "too many".
pub const CHANGED_NAMESPACES_MAX: usize = 1024;

/// SMART / Health: a healthy device at 300 K with its I/O counts (in units of 1000
/// 512-byte blocks, as the spec counts them).
pub fn smart(data_units_read: u64, data_units_written: u64, host_reads: u64, host_writes: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; SMART_BYTES];
    put16(&mut bytes, 1, 300); // composite temperature, kelvin
    bytes[3] = 100; // available spare, percent
    bytes[4] = 10; // available spare threshold
    put64(&mut bytes, 32, data_units_read);
    put64(&mut bytes, 48, data_units_written);
    put64(&mut bytes, 64, host_reads);
    put64(&mut bytes, 80, host_writes);
    bytes
}

pub fn firmware_slot(revision: &str) -> Vec<u8> {
    let mut bytes = vec![0u8; FIRMWARE_SLOT_BYTES];
    bytes[0] = 1; // AFI: slot 1 active
    put_str(&mut bytes, 8, 8, revision, b' ');
    bytes
}

/// Changed Namespace List: the IDs, or 0xFFFFFFFF first when there were too many.
pub fn changed_namespaces(nsids: &[u32]) -> Vec<u8> {
    let mut bytes = vec![0u8; CHANGED_NAMESPACES_BYTES];
    if nsids.len() > CHANGED_NAMESPACES_MAX {
        super::put32(&mut bytes, 0, u32::MAX);
        return bytes;
    }
    for (index, nsid) in nsids.iter().enumerate() {
        super::put32(&mut bytes, index * 4, *nsid);
    }
    bytes
}

/// One ANA Group Descriptor (NVMe Base 2.0, Figure 209).
pub struct AnaGroupDescriptor<'a> {
    pub anagrpid: u32,
    pub change_count: u64,
    /// The ANA state's value (8.1.3).
    pub state: u8,
    /// The group's namespaces; empty when the host asked for groups only (RGO).
    pub nsids: &'a [u32],
}

pub const ANA_HEADER_BYTES: usize = 16;
pub const ANA_DESCRIPTOR_BYTES: usize = 32;

/// Asymmetric Namespace Access log page (NVMe Base 2.0, Figure 208): change count,
/// descriptor count, then each descriptor followed by its NSIDs.
pub fn ana(change_count: u64, groups: &[AnaGroupDescriptor<'_>]) -> Vec<u8> {
    let size =
        ANA_HEADER_BYTES + groups.iter().map(|group| ANA_DESCRIPTOR_BYTES + 4 * group.nsids.len()).sum::<usize>();
    let mut bytes = vec![0u8; size];
    put64(&mut bytes, 0, change_count);
    put16(&mut bytes, 8, groups.len() as u16);
    let mut at = ANA_HEADER_BYTES;
    for group in groups {
        super::put32(&mut bytes, at, group.anagrpid);
        super::put32(&mut bytes, at + 4, group.nsids.len() as u32);
        put64(&mut bytes, at + 8, group.change_count);
        bytes[at + 16] = group.state & 0xf;
        at += ANA_DESCRIPTOR_BYTES;
        for nsid in group.nsids {
            super::put32(&mut bytes, at, *nsid);
            at += 4;
        }
    }
    debug_assert_eq!(at, size);
    bytes
}

/// One discovery log entry (NVMe-oF 1.1, Figure 38).
pub struct DiscoveryEntry<'a> {
    /// 1 = referral to a discovery subsystem, 2 = NVMe subsystem, 3 = this discovery subsystem.
    pub subtype: u8,
    pub portid: u16,
    pub ipv6: bool,
    pub trsvcid: &'a str,
    pub traddr: &'a str,
    pub subnqn: &'a str,
    pub secure_channel_required: bool,
    /// The listener's transport: "TCP" or "RDMA".
    pub trtype: &'static str,
}

/// TRTYPE for TCP.
const TRTYPE_TCP: u8 = 3;
/// TRTYPE for RDMA.
const TRTYPE_RDMA: u8 = 1;
/// RDMA TSAS (NVMe-oF 1.1, Figure 38): a reliable connected queue pair, no particular
/// provider, connections made through the RDMA CM.
const RDMA_QPTYPE_RELIABLE_CONNECTED: u8 = 1;
const RDMA_PRTYPE_NOT_SPECIFIED: u8 = 1;
const RDMA_CMS_RDMA_CM: u8 = 1;
/// TSAS SECTYPE of a TCP entry whose listener requires TLS 1.3.
const TCP_SECTYPE_TLS13: u8 = 2;
/// Admin queue size a host may use to connect (SPDK_NVMF_MIN_ADMIN_MAX_SQ_SIZE).
const ADMIN_MAX_SQ_SIZE: u16 = 32;

pub fn discovery(generation: u64, entries: &[DiscoveryEntry<'_>]) -> Vec<u8> {
    let mut bytes = vec![0u8; DISCOVERY_HEADER_BYTES + entries.len() * DISCOVERY_ENTRY_BYTES];
    put64(&mut bytes, 0, generation);
    put64(&mut bytes, 8, entries.len() as u64);
    for (index, entry) in entries.iter().enumerate() {
        let at = DISCOVERY_HEADER_BYTES + index * DISCOVERY_ENTRY_BYTES;
        let rdma = entry.trtype.eq_ignore_ascii_case("RDMA");
        bytes[at] = if rdma { TRTYPE_RDMA } else { TRTYPE_TCP };
        bytes[at + 1] = if entry.ipv6 { 2 } else { 1 };
        bytes[at + 2] = entry.subtype;
        // TREQ: secure channel required (1) or not required (2).
        bytes[at + 3] = if entry.secure_channel_required { 1 } else { 2 };
        put16(&mut bytes, at + 4, entry.portid);
        put16(&mut bytes, at + 6, 0xffff); // dynamic controller model
        put16(&mut bytes, at + 8, ADMIN_MAX_SQ_SIZE);
        put_str(&mut bytes, at + 32, 32, entry.trsvcid, b' ');
        put_str(&mut bytes, at + 256, 256, entry.subnqn, 0);
        put_str(&mut bytes, at + 512, 256, entry.traddr, b' ');
        if rdma {
            bytes[at + 768] = RDMA_QPTYPE_RELIABLE_CONNECTED;
            bytes[at + 769] = RDMA_PRTYPE_NOT_SPECIFIED;
            bytes[at + 770] = RDMA_CMS_RDMA_CM;
            // RDMA_PKEY (bytes 8-9) stays 0: no partition (RoCE and iWARP have none).
            continue;
        }
        // TSAS for TCP (NVMe/TCP 1.0, 3.6.1.1): SECTYPE 2 is TLS 1.3, 0 no security.
        if entry.secure_channel_required {
            bytes[at + 768] = TCP_SECTYPE_TLS13;
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::{get_str, le16, le32, le64};

    #[test]
    fn discovery_layout() {
        let entry = DiscoveryEntry {
            subtype: 2,
            portid: 1,
            ipv6: false,
            trsvcid: "4420",
            traddr: "127.0.0.1",
            subnqn: "nqn.2016-06.io.peerless:cnode1",
            secure_channel_required: false,
            trtype: "TCP",
        };
        let page = discovery(9, &[entry]);
        assert_eq!(page.len(), 2048);
        assert_eq!((le64(&page, 0), le64(&page, 8)), (9, 1));
        assert_eq!((page[1024], page[1025], page[1026], page[1027]), (3, 1, 2, 2));
        assert_eq!(le16(&page, 1024 + 6), 0xffff);
        assert_eq!(&page[1024 + 32..1024 + 36], b"4420");
        assert_eq!(get_str(&page, 1024 + 256, 256).as_deref(), Some("nqn.2016-06.io.peerless:cnode1"));
        assert_eq!(&page[1024 + 512..1024 + 521], b"127.0.0.1");
        assert_eq!(page[1024 + 768], 0, "TSAS SECTYPE: no security");
    }

    #[test]
    fn a_secure_listener_requires_tls_1_3() {
        let entry = DiscoveryEntry {
            subtype: 2,
            portid: 0,
            ipv6: false,
            trsvcid: "4421",
            traddr: "127.0.0.1",
            subnqn: "nqn.2016-06.io.peerless:secure",
            secure_channel_required: true,
            trtype: "TCP",
        };
        let page = discovery(1, &[entry]);
        assert_eq!(page[1024 + 3], 1, "TREQ: secure channel required");
        assert_eq!(page[1024 + 768], 2, "TSAS SECTYPE: TLS 1.3");
    }

    #[test]
    fn an_rdma_listener_has_the_rdma_fields() {
        let entry = DiscoveryEntry {
            subtype: 2,
            portid: 3,
            ipv6: false,
            trsvcid: "4420",
            traddr: "10.0.2.15",
            subnqn: "nqn.2016-06.io.peerless:rdma",
            secure_channel_required: false,
            trtype: "RDMA",
        };
        let page = discovery(2, &[entry]);
        assert_eq!((page[1024], page[1025], page[1026], page[1027]), (1, 1, 2, 2), "TRTYPE RDMA, IPv4, TREQ");
        assert_eq!(&page[1024 + 768..1024 + 771], &[1, 1, 1], "RC queue pair, no provider, RDMA CM");
        assert_eq!(&page[1024 + 512..1024 + 521], b"10.0.2.15");
    }

    #[test]
    fn changed_list_overflows_to_all_ones() {
        assert_eq!(le32(&changed_namespaces(&[3, 9]), 4), 9);
        assert_eq!(le32(&changed_namespaces(&vec![1; 2000]), 0), u32::MAX);
        assert_eq!(le16(&smart(1, 2, 3, 4), 1), 300);
    }
}
