//! T10 DIF, Type 1: protection information generated and checked per block.
//!
//! Layout: extended blocks, `block_size` data bytes followed by 8 bytes of PI (NVMe
//! "metadata interleaved", PI last), big-endian on the wire (T10 SBC-3 4.22):
//!
//! ```text
//! | guard: CRC16 T10-DIF of the data (u16) | application tag (u16) | reference tag (u32) |
//! ```
//!
//! Type 1: the reference tag is the low 32 bits of the LBA, incrementing per block; an
//! application tag of 0xFFFF disables all checks of that block.

use std::fmt;

use crate::mem::{self, Sgl, STAGING_CHUNK_BYTES};

use super::{Error, Result};

/// Bytes of protection information per block.
pub const DIF_PI_BYTES: usize = 8;
/// Largest data block protected.
pub const DIF_MAX_BLOCK_BYTES: usize = 64 * 1024;
/// Data block sizes are multiples of this.
const DIF_BLOCK_GRANULE: usize = 512;
/// Application tag value that disables checking of a Type 1 block.
const APP_TAG_ESCAPE: u16 = 0xFFFF;
/// CRC16 T10-DIF polynomial (x^16 + x^15 + x^11 + x^9 + x^8 + x^7 + x^5 + x^4 + x^2 + x + 1).
const T10DIF_POLY: u16 = 0x8BB7;

static CRC16_TABLE: [u16; 256] = build_crc16_table();

const fn build_crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        let mut crc = (b as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ T10DIF_POLY } else { crc << 1 };
            bit += 1;
        }
        t[b] = crc;
        b += 1;
    }
    t
}

/// CRC16 T10-DIF (MSB first, initial 0, no final inversion), continuing from `crc`.
pub fn crc16_t10dif(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)];
    }
    crc
}

/// Which PI field failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DifCheck {
    Guard,
    AppTag,
    RefTag,
}

impl fmt::Display for DifCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DifCheck::Guard => "guard",
            DifCheck::AppTag => "application tag",
            DifCheck::RefTag => "reference tag",
        })
    }
}

/// How blocks are protected and what to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DifCtx {
    block_size: usize,
    /// Reference tag of the first block: the low 32 bits of its LBA.
    pub ref_tag: u32,
    pub app_tag: u16,
    /// Bits of the application tag that verification compares (0: none).
    pub app_tag_mask: u16,
    pub check_guard: bool,
    pub check_ref_tag: bool,
}

impl DifCtx {
    /// Type 1 protection of `block_size`-byte blocks starting at `lba`, checking guard
    /// and reference tag.
    pub fn new(block_size: usize, lba: u64, app_tag: u16) -> Result<DifCtx> {
        if block_size == 0 || !block_size.is_multiple_of(DIF_BLOCK_GRANULE) || block_size > DIF_MAX_BLOCK_BYTES {
            return Err(Error::DifBlockSize { block_size, max: DIF_MAX_BLOCK_BYTES });
        }
        Ok(DifCtx { block_size, ref_tag: lba as u32, app_tag, app_tag_mask: 0, check_guard: true, check_ref_tag: true })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Data plus PI of one block.
    pub fn extended_block_size(&self) -> usize {
        self.block_size + DIF_PI_BYTES
    }

    fn blocks(&self, len: usize) -> Result<u64> {
        let ext = self.extended_block_size();
        if !len.is_multiple_of(ext) {
            return Err(Error::DifLayout { len, extended: ext });
        }
        Ok((len / ext) as u64)
    }

    fn pi(&self, block: u64, guard: u16) -> [u8; DIF_PI_BYTES] {
        let mut pi = [0u8; DIF_PI_BYTES];
        pi[0..2].copy_from_slice(&guard.to_be_bytes());
        pi[2..4].copy_from_slice(&self.app_tag.to_be_bytes());
        pi[4..8].copy_from_slice(&self.ref_tag.wrapping_add(block as u32).to_be_bytes());
        pi
    }

    fn verify_block(&self, block: u64, guard: u16, pi: &[u8; DIF_PI_BYTES]) -> Result<()> {
        let found_guard = u16::from_be_bytes([pi[0], pi[1]]);
        let found_app = u16::from_be_bytes([pi[2], pi[3]]);
        let found_ref = u32::from_be_bytes([pi[4], pi[5], pi[6], pi[7]]);
        let ref_tag = self.ref_tag.wrapping_add(block as u32);
        if found_app == APP_TAG_ESCAPE {
            return Ok(());
        }
        let fail = |check, expected: u32, actual: u32| Error::DifMismatch { block, ref_tag, check, expected, actual };
        if self.check_guard && found_guard != guard {
            return Err(fail(DifCheck::Guard, guard.into(), found_guard.into()));
        }
        if (found_app ^ self.app_tag) & self.app_tag_mask != 0 {
            return Err(fail(
                DifCheck::AppTag,
                (self.app_tag & self.app_tag_mask).into(),
                (found_app & self.app_tag_mask).into(),
            ));
        }
        if self.check_ref_tag && found_ref != ref_tag {
            return Err(fail(DifCheck::RefTag, ref_tag, found_ref));
        }
        Ok(())
    }
}

/// Where a byte stream is within its extended block.
struct Walker {
    data_len: usize,
    pos: usize,
    block: u64,
    guard: u16,
}

impl Walker {
    fn new(ctx: &DifCtx) -> Walker {
        Walker { data_len: ctx.block_size, pos: 0, block: 0, guard: 0 }
    }

    /// Feeds the data bytes at the front of `bytes` to the guard; returns how many.
    fn take_data(&mut self, bytes: &[u8]) -> usize {
        if self.pos >= self.data_len {
            return 0;
        }
        let n = (self.data_len - self.pos).min(bytes.len());
        self.guard = crc16_t10dif(self.guard, &bytes[..n]);
        self.pos += n;
        n
    }

    /// Offset into the PI and how many of `avail` bytes belong to it.
    fn pi_span(&self, avail: usize) -> (usize, usize) {
        debug_assert!(self.pos >= self.data_len);
        let pi_off = self.pos - self.data_len;
        (pi_off, (DIF_PI_BYTES - pi_off).min(avail))
    }

    fn advance_pi(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.data_len + DIF_PI_BYTES);
        if self.pos == self.data_len + DIF_PI_BYTES {
            self.pos = 0;
            self.block += 1;
            self.guard = 0;
        }
    }
}

/// Writes the PI of every block of `sgl` (data already in place).
pub fn dif_generate(sgl: &mut Sgl<'_>, ctx: &DifCtx) -> Result<()> {
    let blocks = ctx.blocks(sgl.len())?;
    let mut w = Walker::new(ctx);
    let mut staging = [0u8; STAGING_CHUNK_BYTES];
    mem::for_each_chunk_mut::<Error>(sgl, &mut staging, usize::MAX, true, |chunk| {
        let mut at = 0;
        while at < chunk.len() {
            at += w.take_data(&chunk[at..]);
            if at < chunk.len() {
                let (pi_off, n) = w.pi_span(chunk.len() - at);
                let pi = ctx.pi(w.block, w.guard);
                chunk[at..at + n].copy_from_slice(&pi[pi_off..pi_off + n]);
                w.advance_pi(n);
                at += n;
            }
        }
        Ok(())
    })?;
    debug_assert_eq!((w.block, w.pos), (blocks, 0));
    Ok(())
}

/// Checks the PI of every block of `sgl`; the first failure names block and field.
pub fn dif_verify(sgl: &Sgl<'_>, ctx: &DifCtx) -> Result<()> {
    let blocks = ctx.blocks(sgl.len())?;
    let mut w = Walker::new(ctx);
    let mut pi = [0u8; DIF_PI_BYTES];
    let mut staging = [0u8; STAGING_CHUNK_BYTES];
    mem::for_each_chunk::<Error>(sgl, &mut staging, usize::MAX, |chunk| {
        let mut at = 0;
        while at < chunk.len() {
            at += w.take_data(&chunk[at..]);
            if at < chunk.len() {
                let (pi_off, n) = w.pi_span(chunk.len() - at);
                pi[pi_off..pi_off + n].copy_from_slice(&chunk[at..at + n]);
                if pi_off + n == DIF_PI_BYTES {
                    ctx.verify_block(w.block, w.guard, &pi)?;
                }
                w.advance_pi(n);
                at += n;
            }
        }
        Ok(())
    })?;
    debug_assert_eq!((w.block, w.pos), (blocks, 0));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::testutil::Kit;
    use crate::mem::MemKind;

    #[test]
    fn crc16_t10dif_known_vectors() {
        let check = |data: &[u8], expected: u16| assert_eq!(crc16_t10dif(0, data), expected);
        check(b"123456789", 0xD0DB);
        check(&[], 0);
        check(&[0u8; 512], 0);
        // Chaining equals one pass.
        let (a, b) = b"123456789".split_at(4);
        assert_eq!(crc16_t10dif(crc16_t10dif(0, a), b), 0xD0DB);
    }

    /// Builds `blocks` extended blocks of patterned data with room for PI.
    fn blocks(ctx: &DifCtx, blocks: usize) -> Vec<u8> {
        let ext = ctx.extended_block_size();
        let mut v = vec![0u8; ext * blocks];
        for (i, b) in v.iter_mut().enumerate() {
            if i % ext < ctx.block_size() {
                *b = (i * 13 + i / 97) as u8;
            }
        }
        v
    }

    #[test]
    fn generate_writes_the_expected_pi_fields() {
        let ctx = DifCtx::new(512, 0x1_0000_0007, 0x1234).expect("ctx");
        let mut data = blocks(&ctx, 3);
        dif_generate(&mut Sgl::from_host_mut(&mut data).expect("host"), &ctx).expect("gen");
        for b in 0..3 {
            let start = b * ctx.extended_block_size();
            let guard = crc16_t10dif(0, &data[start..start + 512]);
            let pi = &data[start + 512..start + 520];
            assert_eq!(&pi[0..2], &guard.to_be_bytes());
            assert_eq!(&pi[2..4], &[0x12, 0x34]);
            assert_eq!(&pi[4..8], &(7 + b as u32).to_be_bytes(), "low 32 bits of the LBA");
        }
        dif_verify(&Sgl::from_host(&data).expect("host"), &ctx).expect("verifies");
    }

    #[test]
    fn generate_and_verify_on_every_kind_across_segment_cuts() {
        let kit = Kit::new();
        let ctx = DifCtx::new(4096, 42, 0).expect("ctx");
        let plain = blocks(&ctx, 4);
        let mut reference = plain.clone();
        dif_generate(&mut Sgl::from_host_mut(&mut reference).expect("host"), &ctx).expect("host gen");
        // Three segments whose cuts fall inside data and inside PI.
        let seg_len = plain.len() / 3;
        assert_eq!(seg_len * 3, plain.len());
        for kind in MemKind::ALL {
            let kinds = [MemKind::Host, kind, MemKind::Host];
            let mut bufs = kit.buffers(&kinds, seg_len);
            let mut sgl = Kit::sgl_mut(&mut bufs);
            crate::mem::copy(&mut sgl, &Sgl::from_host(&plain).expect("host")).expect("fill");
            dif_generate(&mut sgl, &ctx).expect("generate");
            dif_verify(&sgl, &ctx).expect("verify");
            drop(sgl);
            assert_eq!(Kit::read_all(&bufs), reference, "{kind}");
        }
    }

    #[test]
    fn verify_names_the_failing_block_and_field() {
        let mut ctx = DifCtx::new(512, 100, 0xAB00).expect("ctx");
        ctx.app_tag_mask = 0xFF00;
        let mut data = blocks(&ctx, 4);
        dif_generate(&mut Sgl::from_host_mut(&mut data).expect("host"), &ctx).expect("gen");
        let ext = ctx.extended_block_size();
        let cases: [(usize, usize, DifCheck); 3] =
            [(1, 10, DifCheck::Guard), (2, 512 + 2, DifCheck::AppTag), (3, 512 + 7, DifCheck::RefTag)];
        for (block, offset, check) in cases {
            let mut bad = data.clone();
            bad[block * ext + offset] ^= 0x80;
            match dif_verify(&Sgl::from_host(&bad).expect("host"), &ctx) {
                Err(Error::DifMismatch { block: b, check: c, ref_tag, .. }) => {
                    assert_eq!((b, c), (block as u64, check));
                    assert_eq!(ref_tag, 100 + block as u32);
                }
                other => panic!("block {block}: expected a {check} mismatch, got {other:?}"),
            }
        }
        // App tag 0xFFFF turns checking off for that block (Type 1 escape).
        let mut escaped = data.clone();
        escaped[ext + 10] ^= 1;
        escaped[ext + 514..ext + 516].copy_from_slice(&[0xFF, 0xFF]);
        dif_verify(&Sgl::from_host(&escaped).expect("host"), &ctx).expect("escaped block");
    }

    #[test]
    fn layout_errors() {
        assert!(matches!(DifCtx::new(500, 0, 0), Err(Error::DifBlockSize { .. })));
        assert!(matches!(DifCtx::new(0, 0, 0), Err(Error::DifBlockSize { .. })));
        let ctx = DifCtx::new(512, 0, 0).expect("ctx");
        let data = vec![0u8; 512];
        assert!(matches!(
            dif_verify(&Sgl::from_host(&data).expect("host"), &ctx),
            Err(Error::DifLayout { len: 512, extended: 520 })
        ));
    }
}
