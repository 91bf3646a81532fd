//! Parsed identify data (NVMe Base 2.0, 5.17.2; NVMe-oF 1.1, 4.1) and controller
//! capabilities, read with the shared wire layer's bounded accessors.

use peerless_target::nvme::{get_str, le16, le32, le64};

/// Controller Capabilities (CAP, NVMe Base 2.0, 3.1.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// Maximum queue entries supported (MQES is 0's based).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }

    /// Worst-case time to become ready after CC.EN changes (CAP.TO, 500 ms units).
    pub fn ready_timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff) * 500
    }

    /// Minimum memory page size in bytes (2 ^ (12 + MPSMIN)).
    pub fn min_page_bytes(self) -> usize {
        1 << (12 + ((self.0 >> 48) & 0xf))
    }
}

fn trimmed(bytes: &[u8], at: usize, width: usize) -> String {
    get_str(bytes, at, width).map(|s| s.trim_end().to_string()).unwrap_or_default()
}

/// Identify Controller (CNS 01h), the fields a host acts on or shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    pub vid: u16,
    pub ssvid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub cmic: u8,
    /// Maximum data transfer size as a power of two of the minimum page size; 0 = no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub version: u32,
    pub oaes: u32,
    pub cntrltype: u8,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    /// Keep Alive Support granularity, 100 ms units.
    pub kas: u16,
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub vwc: u8,
    pub sgls: u32,
    pub subnqn: String,
    /// I/O command capsule size in 16-byte units.
    pub ioccsz: u32,
    pub iorcsz: u32,
    pub icdoff: u16,
    pub fcatt: u8,
    pub msdbd: u8,
}

impl ControllerInfo {
    pub fn parse(bytes: &[u8]) -> ControllerInfo {
        ControllerInfo {
            vid: le16(bytes, 0),
            ssvid: le16(bytes, 2),
            serial: trimmed(bytes, 4, 20),
            model: trimmed(bytes, 24, 40),
            firmware: trimmed(bytes, 64, 8),
            cmic: bytes.get(76).copied().unwrap_or(0),
            mdts: bytes.get(77).copied().unwrap_or(0),
            cntlid: le16(bytes, 78),
            version: le32(bytes, 80),
            oaes: le32(bytes, 92),
            cntrltype: bytes.get(111).copied().unwrap_or(0),
            acl: bytes.get(258).copied().unwrap_or(0),
            aerl: bytes.get(259).copied().unwrap_or(0),
            frmw: bytes.get(260).copied().unwrap_or(0),
            lpa: bytes.get(261).copied().unwrap_or(0),
            elpe: bytes.get(262).copied().unwrap_or(0),
            kas: le16(bytes, 320),
            sqes: bytes.get(512).copied().unwrap_or(0),
            cqes: bytes.get(513).copied().unwrap_or(0),
            maxcmd: le16(bytes, 514),
            nn: le32(bytes, 516),
            oncs: le16(bytes, 520),
            vwc: bytes.get(525).copied().unwrap_or(0),
            sgls: le32(bytes, 536),
            subnqn: get_str(bytes, 768, 256).unwrap_or_default(),
            ioccsz: le32(bytes, 1792),
            iorcsz: le32(bytes, 1796),
            icdoff: le16(bytes, 1800),
            fcatt: bytes.get(1802).copied().unwrap_or(0),
            msdbd: bytes.get(1803).copied().unwrap_or(0),
        }
    }

    /// In-capsule data bytes an I/O command may carry (IOCCSZ counts the 64-byte SQE too).
    /// 0 when the controller wants the data at an offset (ICDOFF): we place it right after
    /// the SQE, so such a controller gets every write through R2T instead.
    pub fn in_capsule_data_bytes(&self) -> usize {
        if self.icdoff != 0 {
            return 0;
        }
        (self.ioccsz as usize * 16).saturating_sub(64)
    }

    /// Largest transfer of one command, given CAP.MPSMIN; None when MDTS sets no limit.
    pub fn max_transfer_bytes(&self, min_page_bytes: usize) -> Option<usize> {
        (self.mdts != 0).then(|| min_page_bytes.checked_shl(u32::from(self.mdts)).unwrap_or(usize::MAX))
    }

    /// "1.3.0" from VER (major 31:16, minor 15:8, tertiary 7:0).
    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version >> 16, (self.version >> 8) & 0xff, self.version & 0xff)
    }
}

/// Identify Namespace (CNS 00h) plus the identifiers of CNS 03h.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    pub nlbaf: u8,
    pub flbas: u8,
    pub nmic: u8,
    pub dlfeat: u8,
    pub block_size: u32,
    pub metadata_bytes: u16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// From the namespace identification descriptors, when the controller lists one.
    pub uuid: Option<[u8; 16]>,
}

/// LBA data size exponents outside this range are not a valid format (NVMe Base 2.0: LBADS >= 9).
const LBADS_RANGE: std::ops::RangeInclusive<u8> = 9..=31;

impl NamespaceInfo {
    pub fn parse(nsid: u32, bytes: &[u8]) -> NamespaceInfo {
        let flbas = bytes.get(26).copied().unwrap_or(0);
        // FLBAS bits 3:0 pick the LBA format; each format is 4 bytes from byte 128.
        let format = 128 + 4 * usize::from(flbas & 0xf);
        let lbads = bytes.get(format + 2).copied().unwrap_or(0);
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(bytes.get(104..120).unwrap_or(&[0; 16]));
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(bytes.get(120..128).unwrap_or(&[0; 8]));
        NamespaceInfo {
            nsid,
            nsze: le64(bytes, 0),
            ncap: le64(bytes, 8),
            nuse: le64(bytes, 16),
            nsfeat: bytes.get(24).copied().unwrap_or(0),
            nlbaf: bytes.get(25).copied().unwrap_or(0),
            flbas,
            nmic: bytes.get(30).copied().unwrap_or(0),
            dlfeat: bytes.get(33).copied().unwrap_or(0),
            block_size: if LBADS_RANGE.contains(&lbads) { 1 << lbads } else { 0 },
            metadata_bytes: le16(bytes, format),
            nguid,
            eui64,
            uuid: None,
        }
    }

    /// Fills identifiers from a CNS 03h descriptor list (NVMe Base 2.0, Figure 276).
    pub fn apply_descriptors(&mut self, list: &[u8]) {
        let mut at = 0;
        // Each descriptor: NIDT, NIDL, 2 reserved, NIDL bytes; a zero NIDT ends the list.
        while let (Some(&nidt), Some(&nidl)) = (list.get(at), list.get(at + 1)) {
            let Some(id) = list.get(at + 4..at + 4 + usize::from(nidl)) else { break };
            match (nidt, id.len()) {
                (1, 8) => self.eui64.copy_from_slice(id),
                (2, 16) => self.nguid.copy_from_slice(id),
                (3, 16) => self.uuid = Some(id.try_into().unwrap_or([0; 16])),
                (0, _) => break,
                _ => {}
            }
            at += 4 + usize::from(nidl);
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.nsze.saturating_mul(u64::from(self.block_size))
    }
}

/// Hex with no separators, as spdk_nvme_identify prints NGUID and EUI64.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 8-4-4-4-12 UUID text.
pub fn uuid_string(bytes: &[u8; 16]) -> String {
    let h = hex(bytes);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerless_target::nvme::identify::{self, ControllerData, ControllerType, NamespaceData};

    #[test]
    fn controller_round_trips_through_the_targets_builder() {
        let bytes = identify::controller(&ControllerData {
            serial: "SN42",
            model: "Peerless Ctrl",
            firmware: "0.1",
            cntlid: 9,
            version: 0x0001_0300,
            subnqn: "nqn.2016-06.io.peerless:cnode1",
            controller_type: ControllerType::Io,
            mdts: 5,
            max_namespaces: 32,
            kas: 100,
            aerl: 3,
            volatile_write_cache: true,
            in_capsule_data_bytes: 8192,
            max_commands: 128,
            oncs: identify::ONCS,
            ana_groups: 0,
            ana_transition_time_s: 0,
            keyed_sgl: false,
        });
        let info = ControllerInfo::parse(&bytes);
        assert_eq!(
            (info.serial.as_str(), info.model.as_str(), info.firmware.as_str()),
            ("SN42", "Peerless Ctrl", "0.1")
        );
        assert_eq!((info.cntlid, info.mdts, info.nn, info.kas, info.vwc), (9, 5, 32, 100, 1));
        assert_eq!(info.in_capsule_data_bytes(), 8192);
        assert_eq!(info.max_transfer_bytes(4096), Some(128 * 1024));
        assert_eq!(info.version_string(), "1.3.0");
        assert_eq!(info.subnqn, "nqn.2016-06.io.peerless:cnode1");
    }

    #[test]
    fn namespace_and_descriptors() {
        let bytes = identify::namespace(&NamespaceData {
            num_blocks: 2048,
            block_size: 512,
            nguid: [7; 16],
            eui64: [8; 8],
            shared: false,
            anagrpid: 0,
            accessible: true,
        });
        let mut ns = NamespaceInfo::parse(1, &bytes);
        assert_eq!((ns.nsze, ns.block_size, ns.size_bytes()), (2048, 512, 1024 * 1024));
        ns.apply_descriptors(&identify::namespace_descriptors(&[7; 16], &[8; 8], &[9; 16]));
        assert_eq!(ns.uuid, Some([9; 16]));
        assert_eq!(uuid_string(&[0xab; 16]), "abababab-abab-abab-abab-abababababab");
        let garbage = NamespaceInfo::parse(2, &[0xff; 10]);
        assert_eq!(garbage.block_size, 0, "a short or bogus page never panics");
    }

    #[test]
    fn capabilities() {
        let cap = Capabilities(0x0000_0020_1e01_007f | (1 << 48));
        assert_eq!((cap.max_queue_entries(), cap.ready_timeout_ms(), cap.min_page_bytes()), (128, 15_000, 8192));
    }
}
