//! The 64-byte submission queue entry (NVMe Base 2.0, 4.2 Figure 88), read in place.

use super::{le16, le32, le64};

pub const SQE_BYTES: usize = 64;

/// SGL descriptor types the TCP transport binding uses (NVMe-oF 1.1, 7.4.5 / TCP 1.0
/// 3.3.7): data arrives in the capsule (Data Block, Offset subtype) or is moved by the
/// transport (Transport Data Block).
pub const SGL_DATA_BLOCK_OFFSET: u8 = 0x01;
pub const SGL_TRANSPORT_DATA_BLOCK: u8 = 0x5a;
/// The RDMA binding's host memory (NVMe/RDMA 1.0 §2.3, NVMe Base 2.0 Figure 121): a
/// Keyed SGL Data Block (type 4h), Address subtype, or Invalidate Key subtype (the
/// controller answers with SEND with Invalidate of the key).
pub const SGL_KEYED_DATA_BLOCK: u8 = 0x40;
pub const SGL_KEYED_DATA_BLOCK_INVALIDATE: u8 = 0x4f;
/// A Last Segment descriptor (type 3h) with the Offset subtype (1h): the command's SGL
/// continues in a list of descriptors in the capsule, at an offset into its data
/// (NVMe-oF 1.1 §2.3.1, NVMe Base 2.0 4.3.2); the RDMA binding carries several keyed
/// data blocks this way (up to MSDBD of them).
pub const SGL_LAST_SEGMENT_OFFSET: u8 = 0x31;
/// The descriptor type of keyed data blocks (bits 7:4 of the SGL identifier).
const SGL_TYPE_KEYED: u8 = 0x4;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; SQE_BYTES]);

impl Sqe {
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }

    /// PSDT (bits 7:6): 0 = PRP, 1 or 2 = SGL. Fabrics commands must use SGLs.
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }

    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x3
    }

    pub fn cid(&self) -> u16 {
        le16(&self.0, 2)
    }

    pub fn nsid(&self) -> u32 {
        le32(&self.0, 4)
    }

    /// Fabrics commands carry their type in byte 4 instead of an NSID.
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }

    pub fn sgl_address(&self) -> u64 {
        le64(&self.0, 24)
    }

    /// The data length the SGL names: 24 bits in a keyed descriptor, whose key takes the
    /// rest (NVMe Base 2.0, Figure 121), 32 bits otherwise.
    pub fn sgl_length(&self) -> u32 {
        if self.sgl_type() >> 4 == SGL_TYPE_KEYED {
            le32(&self.0, 32) & 0x00ff_ffff
        } else {
            le32(&self.0, 32)
        }
    }

    /// The key of a keyed SGL data block (the host's rkey).
    pub fn sgl_key(&self) -> u32 {
        le32(&self.0, 35)
    }

    /// SGL identifier: descriptor type in bits 7:4, subtype in bits 3:0.
    pub fn sgl_type(&self) -> u8 {
        self.0[39]
    }

    pub fn cdw(&self, index: usize) -> u32 {
        debug_assert!((10..=15).contains(&index), "command dword {index}");
        le32(&self.0, index * 4)
    }

    /// Starting LBA of an NVM I/O command (CDW10-11).
    pub fn slba(&self) -> u64 {
        le64(&self.0, 40)
    }

    /// Number of logical blocks of an NVM I/O command (CDW12 bits 15:0, 0's based).
    pub fn nlb(&self) -> u32 {
        (self.cdw(12) & 0xffff) + 1
    }

    pub fn bytes(&self) -> &[u8; SQE_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sqe(opc {:#04x} cid {} nsid {})", self.opcode(), self.cid(), self.nsid())
    }
}

/// Builds commands (the initiator's side, and tests).
#[derive(Clone, Copy)]
pub struct SqeBuilder(pub [u8; SQE_BYTES]);

impl SqeBuilder {
    pub fn new(opcode: u8, cid: u16) -> Self {
        let mut bytes = [0u8; SQE_BYTES];
        bytes[0] = opcode;
        bytes[1] = 1 << 6;
        super::put16(&mut bytes, 2, cid);
        SqeBuilder(bytes)
    }

    pub fn fabrics(fctype: u8, cid: u16) -> Self {
        let mut builder = SqeBuilder::new(super::admin::FABRICS, cid);
        builder.0[4] = fctype;
        builder
    }

    pub fn nsid(mut self, nsid: u32) -> Self {
        super::put32(&mut self.0, 4, nsid);
        self
    }

    pub fn cdw(mut self, index: usize, value: u32) -> Self {
        super::put32(&mut self.0, index * 4, value);
        self
    }

    pub fn byte(mut self, at: usize, value: u8) -> Self {
        self.0[at] = value;
        self
    }

    pub fn u16_at(mut self, at: usize, value: u16) -> Self {
        super::put16(&mut self.0, at, value);
        self
    }

    pub fn u32_at(mut self, at: usize, value: u32) -> Self {
        super::put32(&mut self.0, at, value);
        self
    }

    pub fn u64_at(mut self, at: usize, value: u64) -> Self {
        super::put64(&mut self.0, at, value);
        self
    }

    /// Data in the capsule at offset 0, `len` bytes.
    pub fn in_capsule(mut self, len: u32) -> Self {
        super::put64(&mut self.0, 24, 0);
        super::put32(&mut self.0, 32, len);
        self.0[39] = SGL_DATA_BLOCK_OFFSET;
        self
    }

    /// Data moved by the transport (R2T/H2CData or C2HData), `len` bytes.
    pub fn transport_data(mut self, len: u32) -> Self {
        super::put64(&mut self.0, 24, 0);
        super::put32(&mut self.0, 32, len);
        self.0[39] = SGL_TRANSPORT_DATA_BLOCK;
        self
    }

    /// Host memory named by a Keyed SGL Data Block (the RDMA binding): `len` bytes (24
    /// bits) at `addr` under `key`, with the Invalidate Key subtype when `invalidate`.
    pub fn keyed(mut self, addr: u64, len: u32, key: u32, invalidate: bool) -> Self {
        debug_assert!(len < 1 << 24, "a keyed length has 24 bits");
        super::put64(&mut self.0, 24, addr);
        super::put32(&mut self.0, 32, len);
        super::put32(&mut self.0, 35, key);
        self.0[39] = if invalidate { SGL_KEYED_DATA_BLOCK_INVALIDATE } else { SGL_KEYED_DATA_BLOCK };
        self
    }

    /// An NVM read or write of `nlb` blocks at `slba`.
    pub fn rw(self, nsid: u32, slba: u64, nlb: u32) -> Self {
        debug_assert!((1..=0x1_0000).contains(&nlb), "NLB {nlb}");
        self.nsid(nsid).u64_at(40, slba).cdw(12, nlb - 1)
    }

    pub fn build(self) -> Sqe {
        Sqe(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_accessors_agree() {
        let sqe = SqeBuilder::new(0x02, 0xabcd).rw(1, 0x1_0000_0002, 8).transport_data(4096).build();
        assert_eq!((sqe.opcode(), sqe.cid(), sqe.nsid()), (0x02, 0xabcd, 1));
        assert_eq!((sqe.slba(), sqe.nlb()), (0x1_0000_0002, 8));
        assert_eq!((sqe.sgl_length(), sqe.sgl_type(), sqe.psdt()), (4096, SGL_TRANSPORT_DATA_BLOCK, 1));
        let connect = SqeBuilder::fabrics(super::super::fctype::CONNECT, 7).u16_at(42, 3).build();
        assert_eq!((connect.opcode(), connect.fctype(), super::super::le16(&connect.0, 42)), (0x7f, 0x01, 3));
    }
}
