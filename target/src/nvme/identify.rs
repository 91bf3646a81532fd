//! Identify data structures the target returns (NVMe Base 2.0, 5.17.2).

use super::{put16, put32, put64, put_str};

pub const IDENTIFY_BYTES: usize = 4096;

/// CNS values (NVMe Base 2.0, Figure 273).
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    pub const NAMESPACE_DESCRIPTORS: u8 = 0x03;
    /// I/O Command Set specific Identify Namespace, for the set CDW11.CSI names.
    pub const IOCS_NAMESPACE: u8 = 0x05;
    /// I/O Command Set specific Identify Controller, for the set CDW11.CSI names.
    pub const IOCS_CONTROLLER: u8 = 0x06;
}

/// Command Set Identifiers (NVMe Base 2.0, Figure 286): CDW11 bits 31:24 of Identify.
pub mod csi {
    pub const NVM: u8 = 0x00;
}

/// Controller type (CNTRLTYPE, byte 111).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerType {
    Io = 1,
    Discovery = 2,
}

/// What the controller says about itself.
pub struct ControllerData<'a> {
    pub serial: &'a str,
    pub model: &'a str,
    pub firmware: &'a str,
    pub cntlid: u16,
    pub version: u32,
    pub subnqn: &'a str,
    pub controller_type: ControllerType,
    /// MDTS: max transfer as a power of two of the minimum page size (4 KiB).
    pub mdts: u8,
    pub max_namespaces: u32,
    /// Keep Alive Support granularity in 100 ms units.
    pub kas: u16,
    pub aerl: u8,
    pub volatile_write_cache: bool,
    /// In-capsule data bytes accepted beyond the 64-byte command.
    pub in_capsule_data_bytes: u32,
    pub max_commands: u16,
    /// ONCS: the optional NVM commands supported, see [`ONCS`].
    pub oncs: u16,
    /// ANA groups (ANAGRPMAX and NANAGRPID) when the subsystem reports ANA, else 0.
    pub ana_groups: u32,
    /// ANATT in seconds, with ANA.
    pub ana_transition_time_s: u8,
    /// Keyed SGL Data Blocks are supported (SGLS bit 2): what the RDMA binding moves
    /// data with, and what a host on it requires.
    pub keyed_sgl: bool,
}

/// SGL descriptors a command may carry with keyed data blocks (the RDMA binding), as
/// SPDK's RDMA transport reports (its NVMF_DEFAULT_MSDBD).
pub const KEYED_MSDBD: u8 = 16;

/// PCI vendor ID reported; SPDK's target reports Intel's, we report none rather than borrow one.
const VENDOR_ID: u16 = 0;
/// ONCS bits: Compare (0), Dataset Management (2), Write Zeroes (3).
pub const ONCS: u16 = (1 << 0) | ONCS_DATASET_MANAGEMENT | ONCS_WRITE_ZEROES;
pub const ONCS_DATASET_MANAGEMENT: u16 = 1 << 2;
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// OAES bit 8: Namespace Attribute Notices.
const OAES_NAMESPACE_ATTRIBUTE_NOTICES: u32 = 1 << 8;
/// OAES bit 11: Asymmetric Namespace Access Change Notices.
const OAES_ANA_CHANGE_NOTICES: u32 = 1 << 11;
/// CMIC bit 3: Asymmetric Namespace Access Reporting.
const CMIC_ANA_REPORTING: u8 = 1 << 3;
/// ANACAP: the optimized (0), non-optimized (1) and inaccessible (2) states are
/// reported, and a namespace's ANAGRPID does not change while attached (6). Persistent
/// loss and change are never reported (SPDK reports the same capabilities).
const ANACAP: u8 = 0b111 | (1 << 6);
/// LPA bit 2: extended data for Get Log Page (offsets and larger sizes).
const LPA_EXTENDED_DATA: u8 = 1 << 2;
/// SGLS: SGLs supported (bits 1:0 = 01b) and SGL offsets in capsules (bit 20).
const SGLS: u32 = 0x1 | (1 << 20);
/// SGLS bit 2: Keyed SGL Data Blocks.
const SGLS_KEYED: u32 = 1 << 2;
/// Error log entries kept (ELPE is 0's based).
pub const ERROR_LOG_ENTRIES: u8 = 1;

pub fn controller(data: &ControllerData<'_>) -> Vec<u8> {
    let mut bytes = vec![0u8; IDENTIFY_BYTES];
    put16(&mut bytes, 0, VENDOR_ID);
    put16(&mut bytes, 2, VENDOR_ID);
    put_str(&mut bytes, 4, 20, data.serial, b' ');
    put_str(&mut bytes, 24, 40, data.model, b' ');
    put_str(&mut bytes, 64, 8, data.firmware, b' ');
    bytes[72] = 6; // RAB: recommended arbitration burst, 2^6 as SPDK reports
    bytes[76] = 1 << 1; // CMIC: may have more than one controller
    let ana = data.ana_groups > 0 && data.controller_type == ControllerType::Io;
    if ana {
        bytes[76] |= CMIC_ANA_REPORTING;
    }
    bytes[77] = data.mdts;
    put16(&mut bytes, 78, data.cntlid);
    put32(&mut bytes, 80, data.version);
    if data.controller_type == ControllerType::Io {
        let ana_notices = if ana { OAES_ANA_CHANGE_NOTICES } else { 0 };
        put32(&mut bytes, 92, OAES_NAMESPACE_ATTRIBUTE_NOTICES | ana_notices);
    }
    bytes[111] = data.controller_type as u8;
    bytes[258] = 3; // ACL: four concurrent aborts (0's based)
    bytes[259] = data.aerl;
    bytes[260] = 1 << 1 | 1; // FRMW: one slot, slot 1 read-only
    bytes[261] = LPA_EXTENDED_DATA;
    bytes[262] = ERROR_LOG_ENTRIES - 1;
    put16(&mut bytes, 320, data.kas);
    if ana {
        bytes[342] = data.ana_transition_time_s; // ANATT
        bytes[343] = ANACAP;
        put32(&mut bytes, 344, data.ana_groups); // ANAGRPMAX
        put32(&mut bytes, 348, data.ana_groups); // NANAGRPID
                                                 // MNAN: with ANA, the namespaces the subsystem may hold (5.17.2.1; Linux sizes
                                                 // its ANA log buffer by it).
        put32(&mut bytes, 540, data.max_namespaces);
    }
    bytes[512] = 0x66; // SQES: 64-byte entries
    bytes[513] = 0x44; // CQES: 16-byte entries
    put16(&mut bytes, 514, data.max_commands);
    put32(&mut bytes, 516, data.max_namespaces);
    if data.controller_type == ControllerType::Io {
        put16(&mut bytes, 520, data.oncs);
    }
    bytes[525] = u8::from(data.volatile_write_cache);
    put32(&mut bytes, 536, if data.keyed_sgl { SGLS | SGLS_KEYED } else { SGLS });
    put_str(&mut bytes, 768, 256, data.subnqn, 0);
    // NVMe-oF attributes (NVMe-oF 1.1, Figure 28): capsule sizes in 16-byte units.
    put32(&mut bytes, 1792, (64 + data.in_capsule_data_bytes) / 16);
    put32(&mut bytes, 1796, 1);
    put16(&mut bytes, 1800, 0); // ICDOFF
    bytes[1802] = 0; // FCATT: dynamic controller model
                     // MSDBD: keyed data blocks come several to a command (a Last Segment list in the
                     // capsule, NVMe-oF 1.1 §2.3.1); a transport data block comes alone.
    bytes[1803] = if data.keyed_sgl { KEYED_MSDBD } else { 1 };
    bytes
}

/// The NVM Command Set's I/O Command Set specific Identify Controller data structure
/// (CNS 06h, CSI 00h; NVM Command Set 1.0, 4.1.5.4, Figure 102): command size limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmControllerData {
    /// Write Zeroes Size Limit, 2^n minimum memory pages; 0 = none.
    pub wzsl: u8,
    /// Dataset Management Ranges Limit (1-based); 0 = none.
    pub dmrl: u8,
    /// Dataset Management Range Size Limit, in logical blocks; 0 = none.
    pub dmrsl: u32,
    /// Dataset Management Size Limit, in logical blocks; 0 = none.
    pub dmsl: u64,
}

pub fn nvm_controller(data: &NvmControllerData) -> Vec<u8> {
    let mut bytes = vec![0u8; IDENTIFY_BYTES];
    // VSL (byte 0) and WUSL (byte 2) stay 0: Verify and Write Uncorrectable are not supported.
    bytes[1] = data.wzsl;
    bytes[3] = data.dmrl;
    put32(&mut bytes, 4, data.dmrsl);
    put64(&mut bytes, 8, data.dmsl);
    bytes
}

pub struct NamespaceData {
    pub num_blocks: u64,
    pub block_size: u32,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub shared: bool,
    /// ANAGRPID, with ANA reporting; 0 otherwise.
    pub anagrpid: u32,
    /// Whether the path the host asks through reaches the data: NUSE reads 0 where it
    /// does not (inaccessible or persistent loss), as SPDK reports it.
    pub accessible: bool,
}

pub fn namespace(data: &NamespaceData) -> Vec<u8> {
    let mut bytes = vec![0u8; IDENTIFY_BYTES];
    put64(&mut bytes, 0, data.num_blocks);
    put64(&mut bytes, 8, data.num_blocks);
    put64(&mut bytes, 16, if data.accessible { data.num_blocks } else { 0 });
    bytes[24] = 1 << 3; // NSFEAT: NGUID/EUI64 are never reused
    bytes[25] = 0; // NLBAF: one LBA format (0's based)
    bytes[26] = 0; // FLBAS: format 0, no metadata
    bytes[30] = u8::from(data.shared); // NMIC
    bytes[33] = 1; // DLFEAT: deallocated blocks read as zeroes
    put32(&mut bytes, 92, data.anagrpid);
    bytes[104..120].copy_from_slice(&data.nguid);
    bytes[120..128].copy_from_slice(&data.eui64);
    // LBA format 0: no metadata, LBADS = log2(block size), best relative performance.
    bytes[130] = data.block_size.trailing_zeros() as u8;
    bytes
}

/// Namespace Identification Descriptor list (CNS 03h, NVMe Base 2.0 Figure 276).
pub fn namespace_descriptors(nguid: &[u8; 16], eui64: &[u8; 8], uuid: &[u8; 16]) -> Vec<u8> {
    let mut bytes = vec![0u8; IDENTIFY_BYTES];
    let mut at = 0;
    for (nidt, id) in [(1u8, &eui64[..]), (2, &nguid[..]), (3, &uuid[..])] {
        if id.iter().all(|b| *b == 0) {
            continue;
        }
        bytes[at] = nidt;
        bytes[at + 1] = id.len() as u8;
        bytes[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    }
    bytes
}

/// Active namespace IDs greater than `after`, ascending, at most 1024 (CNS 02h).
pub fn active_namespaces(nsids: &[u32], after: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; IDENTIFY_BYTES];
    for (index, nsid) in nsids.iter().filter(|nsid| **nsid > after).take(IDENTIFY_BYTES / 4).enumerate() {
        put32(&mut bytes, index * 4, *nsid);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::{get_str, le16, le32, le64};

    #[test]
    fn controller_fields_land_at_their_offsets() {
        let data = controller(&ControllerData {
            serial: "SN1",
            model: "Peerless",
            firmware: "0.1",
            cntlid: 7,
            version: 0x0001_0300,
            subnqn: "nqn.2016-06.io.peerless:cnode1",
            controller_type: ControllerType::Io,
            mdts: 5,
            max_namespaces: 32,
            kas: 100,
            aerl: 3,
            volatile_write_cache: false,
            in_capsule_data_bytes: 4096,
            max_commands: 128,
            oncs: ONCS & !ONCS_WRITE_ZEROES,
            ana_groups: 0,
            ana_transition_time_s: 10,
            keyed_sgl: false,
        });
        assert_eq!(&data[4..7], b"SN1");
        assert_eq!(data[7], b' ', "serial is space-padded");
        assert_eq!((data[77], le16(&data, 78), le32(&data, 80)), (5, 7, 0x10300));
        assert_eq!((data[111], le16(&data, 320), le32(&data, 516)), (1, 100, 32));
        assert_eq!(get_str(&data, 768, 256).as_deref(), Some("nqn.2016-06.io.peerless:cnode1"));
        assert_eq!(le32(&data, 1792), (64 + 4096) / 16);
        assert_eq!(le16(&data, 520), 0b101, "Compare and Dataset Management, not Write Zeroes");
        assert_eq!((data[76], le32(&data, 92)), (1 << 1, 1 << 8), "no ANA reporting");
        assert!(data[342..352].iter().all(|b| *b == 0) && le32(&data, 540) == 0);
        assert_eq!(le32(&data, 536), 0x1 | (1 << 20), "SGLS: no keyed data blocks (TCP)");
        assert_eq!(data[1803], 1, "MSDBD: one transport data block per command (TCP)");
    }

    #[test]
    fn ana_fields_land_at_their_offsets() {
        let data = controller(&ControllerData {
            serial: "SN1",
            model: "Peerless",
            firmware: "0.1",
            cntlid: 7,
            version: 0x0001_0300,
            subnqn: "nqn.2016-06.io.peerless:cnode1",
            controller_type: ControllerType::Io,
            mdts: 5,
            max_namespaces: 32,
            kas: 100,
            aerl: 3,
            volatile_write_cache: false,
            in_capsule_data_bytes: 4096,
            max_commands: 128,
            oncs: ONCS,
            ana_groups: 32,
            ana_transition_time_s: 10,
            keyed_sgl: true,
        });
        assert_eq!(le32(&data, 536), 0x1 | (1 << 2) | (1 << 20), "SGLS with keyed data blocks (RDMA)");
        assert_eq!(data[1803], KEYED_MSDBD, "MSDBD: up to 16 keyed data blocks per command (RDMA)");
        assert_eq!(data[76], (1 << 1) | (1 << 3), "CMIC: multiple controllers, ANA reporting");
        assert_eq!(le32(&data, 92), (1 << 8) | (1 << 11), "OAES: namespace attribute and ANA change notices");
        assert_eq!((data[342], data[343]), (10, 0b0100_0111), "ANATT, ANACAP");
        assert_eq!((le32(&data, 344), le32(&data, 348), le32(&data, 540)), (32, 32, 32), "ANAGRPMAX NANAGRPID MNAN");
    }

    #[test]
    fn nvm_controller_limits_land_at_their_offsets() {
        let data = nvm_controller(&NvmControllerData { wzsl: 3, dmrl: 255, dmrsl: 0x0102_0304, dmsl: u64::MAX });
        assert_eq!((data[0], data[1], data[2], data[3]), (0, 3, 0, 255));
        assert_eq!((le32(&data, 4), le64(&data, 8)), (0x0102_0304, u64::MAX));
        assert!(data[16..].iter().all(|b| *b == 0), "the rest is reserved");
    }

    #[test]
    fn namespace_and_lists() {
        let data = namespace(&NamespaceData {
            num_blocks: 1000,
            block_size: 4096,
            nguid: [1; 16],
            eui64: [2; 8],
            shared: true,
            anagrpid: 3,
            accessible: true,
        });
        assert_eq!((le64(&data, 0), data[130], data[30]), (1000, 12, 1));
        assert_eq!((le64(&data, 16), le32(&data, 92)), (1000, 3), "NUSE, ANAGRPID");
        let through_inaccessible = namespace(&NamespaceData {
            num_blocks: 1000,
            block_size: 4096,
            nguid: [1; 16],
            eui64: [2; 8],
            shared: true,
            anagrpid: 3,
            accessible: false,
        });
        assert_eq!((le64(&through_inaccessible, 0), le64(&through_inaccessible, 16)), (1000, 0), "NUSE 0, NSZE kept");
        let descriptors = namespace_descriptors(&[1; 16], &[0; 8], &[3; 16]);
        assert_eq!((descriptors[0], descriptors[1]), (2, 16), "a zero EUI64 is left out");
        assert_eq!((descriptors[20], descriptors[21]), (3, 16));
        let list = active_namespaces(&[1, 2, 5], 1);
        assert_eq!((le32(&list, 0), le32(&list, 4), le32(&list, 8)), (2, 5, 0));
    }
}
