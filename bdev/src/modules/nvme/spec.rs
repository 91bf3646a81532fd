//! The NVMe PCIe controller's registers and the admin and NVM command set structures
//! the driver uses (NVMe Base 2.0 §3.1 registers, §4.2 submission and §4.6 completion
//! queue entries, §5 admin commands, NVM Command Set 1.0 §3 I/O commands). Pure
//! encoding and decoding: no device access, so every field is unit-tested here.

/// Controller register offsets in BAR0 (NVMe Base 2.0 §3.1.3).
pub mod reg {
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1c;
    pub const AQA: usize = 0x24;
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
    pub const CMBLOC: usize = 0x38;
    pub const CMBSZ: usize = 0x3c;
    pub const CMBMSC: usize = 0x50;
    pub const CMBSTS: usize = 0x58;
    /// The first doorbell; the rest follow at the stride CAP.DSTRD gives.
    pub const DOORBELLS: usize = 0x1000;
}

/// Controller Capabilities (§3.1.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Largest queue a controller takes, in entries (MQES is 0-based).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Worst-case time for CSTS.RDY to follow CC.EN, in milliseconds (TO, 500 ms units).
    pub fn ready_timeout_ms(self) -> u64 {
        (self.0 >> 24 & 0xff) * 500
    }
    /// Bytes between one doorbell and the next (4 << DSTRD).
    pub fn doorbell_stride(self) -> usize {
        4 << (self.0 >> 32 & 0xf)
    }
    /// Whether the NVM command set is supported (CSS bit 0).
    pub fn nvm_command_set(self) -> bool {
        self.0 >> 37 & 1 == 1
    }
    /// Whether CMBLOC and CMBSZ read 0 until CMBMSC.CRE is set (CMBS, NVMe 1.4).
    pub fn cmb_gated(self) -> bool {
        self.0 >> 57 & 1 == 1
    }
    /// Smallest memory page size, in bytes (MPSMIN).
    pub fn min_page_bytes(self) -> usize {
        1 << (12 + (self.0 >> 48 & 0xf))
    }
    /// Largest memory page size, in bytes (MPSMAX).
    pub fn max_page_bytes(self) -> usize {
        1 << (12 + (self.0 >> 52 & 0xf))
    }
}

/// Controller Configuration (§3.1.3.5).
pub mod cc {
    pub const EN: u32 = 1;
    /// NVM command set (CSS = 000b).
    pub const CSS_NVM: u32 = 0;
    pub const fn mps(page_shift: u32) -> u32 {
        (page_shift - 12) << 7
    }
    /// Submission queue entries of 64 bytes (2^6).
    pub const IOSQES_64: u32 = 6 << 16;
    /// Completion queue entries of 16 bytes (2^4).
    pub const IOCQES_16: u32 = 4 << 20;
    /// Normal shutdown notification (SHN = 01b).
    pub const SHN_NORMAL: u32 = 1 << 14;
    pub const SHN_MASK: u32 = 3 << 14;
}

/// Controller Status (§3.1.3.6).
pub mod csts {
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    pub const SHST_MASK: u32 = 3 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
}

/// Where a Controller Memory Buffer is and what it may hold (CMBLOC §3.1.3.12, CMBSZ
/// §3.1.3.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmbLayout {
    pub bar: u32,
    pub offset: u64,
    pub size: u64,
    /// Read Data Support and Write Data Support: PRPs may point into it for data.
    pub data: bool,
}

impl CmbLayout {
    /// None when CMBSZ says there is no CMB.
    pub fn decode(cmbloc: u32, cmbsz: u32) -> Option<CmbLayout> {
        let units = u64::from(cmbsz >> 12);
        let szu = cmbsz >> 8 & 0xf;
        if units == 0 || szu > 6 {
            return None;
        }
        let unit = 1u64 << (12 + 4 * szu);
        Some(CmbLayout {
            bar: cmbloc & 0x7,
            offset: u64::from(cmbloc >> 12) * unit,
            size: units * unit,
            data: cmbsz >> 3 & 0x3 == 0x3,
        })
    }
}

/// Controller Memory Buffer Memory Space Control (§3.1.3.22).
pub mod cmbmsc {
    /// Capabilities Registers Enabled: CMBLOC and CMBSZ read their values.
    pub const CRE: u64 = 1;
    /// Controller Memory Space Enable: the controller takes CBA as its CMB's address.
    pub const CMSE: u64 = 1 << 1;
}

/// Admin command opcodes (§5).
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Identify CNS values (§5.17.1).
    pub const CNS_NAMESPACE: u32 = 0x00;
    pub const CNS_CONTROLLER: u32 = 0x01;
    pub const CNS_ACTIVE_NAMESPACES: u32 = 0x02;
    /// Set Features identifiers (§5.27.1).
    pub const FEATURE_NUMBER_OF_QUEUES: u32 = 0x07;
    pub const FEATURE_ASYNC_EVENT_CONFIG: u32 = 0x0b;
}

/// Abort's command dword 10 (§5.1): the command's identifier in bits 31:16, the
/// submission queue it was placed in in bits 15:00.
pub fn abort_cdw10(sqid: u16, cid: u16) -> u32 {
    u32::from(cid) << 16 | u32::from(sqid)
}

/// Abort's completion dword 0, bit 0 (§5.1.1): set when the command was not aborted.
pub fn abort_left_command(result: u32) -> bool {
    result & 1 == 1
}

/// NVM command set opcodes (NVM Command Set 1.0 §3).
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

pub const SQE_BYTES: usize = 64;
pub const CQE_BYTES: usize = 16;
/// Identify data structures are one 4 KiB page.
pub const IDENTIFY_BYTES: usize = 4096;

/// PSDT values (§4.2, Figure 88).
pub mod psdt {
    pub const PRP: u32 = 0b00;
    /// SGLs for data; MPTR names a contiguous metadata buffer (unused: no metadata).
    pub const SGL: u32 = 0b01;
}

/// A submission queue entry (§4.2), as the controller reads it: little-endian dwords.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    pub opcode: u8,
    pub cid: u16,
    pub nsid: u32,
    /// PRP or SGL for Data Transfer (PSDT, command dword 0 bits 15:14, §4.2): `psdt::PRP`,
    /// or `psdt::SGL` when `prp1` and `prp2` hold the 16 bytes of an SGL descriptor.
    pub psdt: u32,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl Sqe {
    pub fn new(opcode: u8) -> Sqe {
        Sqe { opcode, ..Sqe::default() }
    }

    /// The 64 wire bytes. FUSE = 0.
    pub fn encode(&self) -> [u8; SQE_BYTES] {
        let mut bytes = [0u8; SQE_BYTES];
        let dw0 = u32::from(self.opcode) | (self.psdt & 3) << 14 | u32::from(self.cid) << 16;
        bytes[0..4].copy_from_slice(&dw0.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (index, dword) in
            [self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15].iter().enumerate()
        {
            bytes[40 + index * 4..44 + index * 4].copy_from_slice(&dword.to_le_bytes());
        }
        bytes
    }
}

/// A completion queue entry (§4.6), decoded from its four dwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    pub result: u32,
    /// Dword 1, command specific (most commands leave it 0).
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub phase: bool,
    /// Status Code Type and Status Code (§4.6.1.2).
    pub sct: u8,
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Cqe {
    pub fn decode(dwords: [u32; 4]) -> Cqe {
        let status = dwords[3] >> 16;
        Cqe {
            result: dwords[0],
            dw1: dwords[1],
            sq_head: dwords[2] as u16,
            sq_id: (dwords[2] >> 16) as u16,
            cid: dwords[3] as u16,
            phase: status & 1 == 1,
            sc: (status >> 1) as u8,
            sct: (status >> 9 & 0x7) as u8,
            dnr: status >> 15 & 1 == 1,
        }
    }

    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 16 wire bytes, as `decode` read them.
    pub fn encode(&self) -> [u8; CQE_BYTES] {
        let status = u32::from(self.phase)
            | u32::from(self.sc) << 1
            | u32::from(self.sct & 0x7) << 9
            | u32::from(self.dnr) << 15;
        let dwords = [
            self.result,
            self.dw1,
            u32::from(self.sq_id) << 16 | u32::from(self.sq_head),
            status << 16 | u32::from(self.cid),
        ];
        let mut bytes = [0u8; CQE_BYTES];
        for (index, dword) in dwords.iter().enumerate() {
            bytes[index * 4..index * 4 + 4].copy_from_slice(&dword.to_le_bytes());
        }
        bytes
    }
}

/// What the driver uses of Identify Controller (§5.17.2.1, Figure 275).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    pub vid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum Data Transfer Size as a power of two of the minimum page size; 0: no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub version: u32,
    pub nn: u32,
    /// Optional NVM Command Support (ONCS): Dataset Management, Write Zeroes.
    pub oncs: u16,
    /// Volatile Write Cache present.
    pub vwc: bool,
    /// SGL Support (SGLS, bytes 539:536).
    pub sgls: u32,
    /// Asynchronous Event Request Limit, 0-based: AERL + 1 may be outstanding.
    pub aerl: u8,
    /// Optional Asynchronous Events Supported (OAES); bit 8: Namespace Attribute Notices.
    pub oaes: u32,
}

/// Whether NVM commands may carry SGLs, and what Data Blocks must respect (SGLS bits 1:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SglSupport {
    /// 00b (and the reserved 11b): PRPs only.
    None,
    /// 01b: any byte address and length.
    Unaligned,
    /// 10b: Data Block addresses and lengths in whole dwords.
    DwordAligned,
}

impl SglSupport {
    pub fn as_str(self) -> &'static str {
        match self {
            SglSupport::None => "unsupported",
            SglSupport::Unaligned => "supported",
            SglSupport::DwordAligned => "dword_aligned",
        }
    }
}

impl IdentifyController {
    pub fn parse(data: &[u8]) -> Result<IdentifyController, String> {
        if data.len() < IDENTIFY_BYTES {
            return Err(format!("identify controller data of {} bytes", data.len()));
        }
        Ok(IdentifyController {
            vid: u16::from_le_bytes([data[0], data[1]]),
            serial: ascii_field(&data[4..24]),
            model: ascii_field(&data[24..64]),
            firmware: ascii_field(&data[64..72]),
            mdts: data[77],
            cntlid: u16::from_le_bytes([data[78], data[79]]),
            version: u32::from_le_bytes(data[80..84].try_into().unwrap_or_default()),
            nn: u32::from_le_bytes(data[516..520].try_into().unwrap_or_default()),
            oncs: u16::from_le_bytes([data[520], data[521]]),
            vwc: data[525] & 1 == 1,
            sgls: u32::from_le_bytes(data[536..540].try_into().unwrap_or_default()),
            aerl: data[259],
            oaes: u32::from_le_bytes(data[92..96].try_into().unwrap_or_default()),
        })
    }

    pub fn supports_dataset_management(&self) -> bool {
        self.oncs >> 2 & 1 == 1
    }

    pub fn supports_write_zeroes(&self) -> bool {
        self.oncs >> 3 & 1 == 1
    }

    pub fn sgl_support(&self) -> SglSupport {
        match self.sgls & 3 {
            0b01 => SglSupport::Unaligned,
            0b10 => SglSupport::DwordAligned,
            _ => SglSupport::None,
        }
    }

    /// Whether the controller can report Namespace Attribute Changed events (OAES bit 8).
    pub fn supports_namespace_notices(&self) -> bool {
        self.oaes >> 8 & 1 == 1
    }

    /// Largest transfer in bytes given the page size in use; None: no limit.
    pub fn max_transfer_bytes(&self, min_page_bytes: usize) -> Option<usize> {
        (self.mdts != 0).then(|| min_page_bytes << self.mdts.min(20))
    }
}

/// What the driver uses of Identify Namespace (NVM Command Set 1.0 §4.1.5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in logical blocks (NSZE); 0: the NSID is not active.
    pub size_blocks: u64,
    pub block_size: u32,
    /// Metadata bytes per block of the format in use; the driver serves only 0.
    pub metadata_bytes: u16,
    /// NGUID, or the EUI64 padded, or zeros: a stable identity for the bdev's UUID.
    pub nguid: [u8; 16],
}

impl IdentifyNamespace {
    pub fn parse(data: &[u8]) -> Result<IdentifyNamespace, String> {
        if data.len() < IDENTIFY_BYTES {
            return Err(format!("identify namespace data of {} bytes", data.len()));
        }
        let size_blocks = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
        let formats = usize::from(data[25]) + 1;
        // FLBAS bits 3:0, and bits 6:5 above them when more than 16 formats exist.
        let flbas = data[26];
        let index = usize::from(flbas & 0xf) | if formats > 16 { usize::from(flbas >> 5 & 0x3) << 4 } else { 0 };
        if index >= formats || index >= 64 {
            return Err(format!("FLBAS names format {index} of {formats}"));
        }
        let lbaf = u32::from_le_bytes(data[128 + index * 4..132 + index * 4].try_into().unwrap_or_default());
        let lbads = lbaf >> 16 & 0xff;
        if !(9..=16).contains(&lbads) {
            return Err(format!("LBA format {index} has a block size of 2^{lbads} bytes"));
        }
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&data[104..120]);
        if nguid == [0; 16] {
            nguid[..8].copy_from_slice(&data[120..128]);
        }
        Ok(IdentifyNamespace { size_blocks, block_size: 1 << lbads, metadata_bytes: lbaf as u16, nguid })
    }
}

/// The active NSIDs of a CNS 02h list: ascending, ended by the first zero.
pub fn parse_active_namespaces(data: &[u8]) -> Vec<u32> {
    data.chunks_exact(4)
        .map(|chunk| u32::from_le_bytes(chunk.try_into().unwrap_or_default()))
        .take_while(|nsid| *nsid != 0)
        .collect()
}

/// An ASCII identify field with its space padding removed.
fn ascii_field(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end_matches([' ', '\0']).to_string()
}

/// The doorbell offsets of queue `qid` (§3.1.3.23): its submission tail and completion head.
pub fn doorbells(qid: u16, stride: usize) -> (usize, usize) {
    let sq = reg::DOORBELLS + 2 * usize::from(qid) * stride;
    (sq, sq + stride)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        // QEMU's nvme: MQES 2047, CQR, TO 15, DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4, CMBS.
        let cap = Cap(0x07ff | 1 << 16 | 0x0f << 24 | 1 << 37 | 4 << 52 | 1 << 57);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert_eq!(cap.ready_timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 4);
        assert!(cap.nvm_command_set());
        assert_eq!((cap.min_page_bytes(), cap.max_page_bytes()), (4096, 65536));
        assert!(cap.cmb_gated() && !Cap(0).cmb_gated());
        assert_eq!(Cap(2 << 32).doorbell_stride(), 16);
        assert_eq!(doorbells(0, 4), (0x1000, 0x1004));
        assert_eq!(doorbells(3, 16), (0x1000 + 6 * 16, 0x1000 + 7 * 16));
    }

    #[test]
    fn cmb_layout_decodes_units_and_support() {
        // QEMU's 64 MiB CMB: BAR2, offset 0, SZU 1 MiB, SZ 64, SQS LISTS RDS WDS.
        let layout = CmbLayout::decode(2, 64 << 12 | 2 << 8 | 0b11101).unwrap();
        assert_eq!(layout, CmbLayout { bar: 2, offset: 0, size: 64 << 20, data: true });
        // 4 KiB units at offset 16 units in BAR0, without write data support.
        let layout = CmbLayout::decode(16 << 12, 8 << 12 | 0b01000).unwrap();
        assert_eq!((layout.bar, layout.offset, layout.size, layout.data), (0, 65536, 32768, false));
        assert_eq!(CmbLayout::decode(2, 0), None, "no CMB");
        assert_eq!(CmbLayout::decode(2, 1 << 12 | 7 << 8), None, "a reserved size unit");
    }

    #[test]
    fn sqe_encodes_little_endian_dwords() {
        let sqe = Sqe {
            opcode: nvm::WRITE,
            cid: 0x1234,
            nsid: 1,
            prp1: 0x1122_3344_5566_7788,
            prp2: 0x99,
            cdw10: 10,
            cdw11: 11,
            cdw12: 12,
            cdw15: 15,
            ..Sqe::default()
        };
        let bytes = sqe.encode();
        assert_eq!(&bytes[0..4], &[0x01, 0x00, 0x34, 0x12]);
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(&bytes[8..24], &[0; 16], "CDW2-3 and MPTR stay zero");
        assert_eq!(&bytes[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &0x99u64.to_le_bytes());
        assert_eq!(&bytes[40..44], &10u32.to_le_bytes());
        assert_eq!(&bytes[48..52], &12u32.to_le_bytes());
        assert_eq!(&bytes[60..64], &15u32.to_le_bytes());
        // PSDT 01b lands in bits 15:14 of dword 0, beside the opcode and under the CID.
        let bytes = Sqe { psdt: psdt::SGL, ..sqe }.encode();
        assert_eq!(&bytes[0..4], &[0x01, 0x40, 0x34, 0x12]);
    }

    #[test]
    fn abort_names_the_command_and_its_queue() {
        assert_eq!(abort_cdw10(3, 0x1234), 0x1234_0003);
        assert_eq!(abort_cdw10(0xffff, 0), 0x0000_ffff);
        assert_eq!(abort_cdw10(1, 0xffff), 0xffff_0001);
        assert!(abort_left_command(1) && !abort_left_command(0) && !abort_left_command(2));
    }

    #[test]
    fn cqe_decodes_status_and_phase() {
        // SCT 2 (media), SC 0x81, DNR, phase 1, CID 7, SQ 3 head 9.
        let status: u32 = 1 | 0x81 << 1 | 2 << 9 | 1 << 15;
        let cqe = Cqe::decode([0xdead, 0, 3 << 16 | 9, status << 16 | 7]);
        assert_eq!((cqe.result, cqe.sq_id, cqe.sq_head, cqe.cid), (0xdead, 3, 9, 7));
        assert!(cqe.phase && cqe.dnr && !cqe.is_success());
        assert_eq!((cqe.sct, cqe.sc), (2, 0x81));
        assert_eq!(Cqe::decode(u32s(&cqe.encode())), cqe, "encode gives back what decode read");
        let ok = Cqe::decode([0, 0, 0, 0]);
        assert!(ok.is_success() && !ok.phase);
        let with_dw1 = Cqe::decode([1, 0x1234, 0, 0]);
        assert_eq!(with_dw1.dw1, 0x1234);
        assert_eq!(&with_dw1.encode()[4..8], &0x1234u32.to_le_bytes());
    }

    fn u32s(bytes: &[u8; CQE_BYTES]) -> [u32; 4] {
        std::array::from_fn(|index| u32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap()))
    }

    #[test]
    fn identify_controller_fields() {
        let mut data = vec![0u8; IDENTIFY_BYTES];
        data[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        data[4..24].copy_from_slice(b"cmb0                ");
        data[24..64].copy_from_slice(format!("{:<40}", "QEMU NVMe Ctrl").as_bytes());
        data[64..72].copy_from_slice(b"7.2.0   ");
        data[77] = 7;
        data[78..80].copy_from_slice(&1u16.to_le_bytes());
        data[516..520].copy_from_slice(&256u32.to_le_bytes());
        data[520] = 0b1100;
        data[525] = 1;
        // SGLs without alignment and Bit Bucket descriptors, as QEMU's controller reports.
        data[536..540].copy_from_slice(&(1u32 | 1 << 16).to_le_bytes());
        data[259] = 3;
        data[92..96].copy_from_slice(&(1u32 << 8).to_le_bytes());
        let id = IdentifyController::parse(&data).unwrap();
        assert_eq!(id.aerl, 3);
        assert!(id.supports_namespace_notices());
        assert!(!IdentifyController { oaes: 1 << 9, ..id.clone() }.supports_namespace_notices());
        assert_eq!(
            (id.vid, id.serial.as_str(), id.model.as_str(), id.firmware.as_str()),
            (0x1b36, "cmb0", "QEMU NVMe Ctrl", "7.2.0")
        );
        assert_eq!((id.cntlid, id.nn), (1, 256));
        assert!(id.supports_dataset_management() && id.supports_write_zeroes() && id.vwc);
        assert_eq!(id.max_transfer_bytes(4096), Some(512 * 1024));
        assert_eq!(id.sgl_support(), SglSupport::Unaligned);
        assert_eq!(IdentifyController { sgls: 0b10, ..id.clone() }.sgl_support(), SglSupport::DwordAligned);
        assert_eq!(IdentifyController { sgls: 0b11, ..id.clone() }.sgl_support(), SglSupport::None);
        assert_eq!(IdentifyController { sgls: 0, ..id.clone() }.sgl_support(), SglSupport::None);
        assert_eq!(IdentifyController { mdts: 0, ..id }.max_transfer_bytes(4096), None);
        assert!(IdentifyController::parse(&data[..100]).is_err());
    }

    #[test]
    fn identify_namespace_picks_the_format_in_use() {
        let mut data = vec![0u8; IDENTIFY_BYTES];
        data[0..8].copy_from_slice(&1000u64.to_le_bytes());
        data[25] = 1; // two formats
        data[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        data[132..136].copy_from_slice(&(12u32 << 16 | 8).to_le_bytes());
        data[120..128].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let ns = IdentifyNamespace::parse(&data).unwrap();
        assert_eq!((ns.size_blocks, ns.block_size, ns.metadata_bytes), (1000, 512, 0));
        assert_eq!(&ns.nguid[..8], &[1, 2, 3, 4, 5, 6, 7, 8], "EUI64 stands in for a missing NGUID");
        data[26] = 1;
        let ns = IdentifyNamespace::parse(&data).unwrap();
        assert_eq!((ns.block_size, ns.metadata_bytes), (4096, 8));
        data[26] = 2;
        assert!(IdentifyNamespace::parse(&data).unwrap_err().contains("format 2 of 2"));
        data[26] = 0;
        data[128..132].copy_from_slice(&(30u32 << 16).to_le_bytes());
        assert!(IdentifyNamespace::parse(&data).is_err(), "a 1 GiB block is refused");
    }

    #[test]
    fn active_namespace_list_ends_at_zero() {
        let mut data = vec![0u8; IDENTIFY_BYTES];
        for (index, nsid) in [1u32, 2, 5].iter().enumerate() {
            data[index * 4..index * 4 + 4].copy_from_slice(&nsid.to_le_bytes());
        }
        data[20..24].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(parse_active_namespaces(&data), vec![1, 2, 5]);
    }
}
