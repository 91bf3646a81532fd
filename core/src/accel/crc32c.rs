//! CRC32C (Castagnoli, iSCSI / NVMe/TCP digests): SSE4.2 + pclmulqdq where the CPU has
//! them (kernel in `mem::simd`), a slice-by-8 table otherwise.
//!
//! Convention: the `seed` of every function is the CRC of the bytes before (0 to start),
//! so `crc32c(b, crc32c(a, 0)) == crc32c(a ++ b, 0)`.

use crate::mem::{self, CpuView, Sgl, STAGING_CHUNK_BYTES};

use super::Result;

const POLY_REFLECTED: u32 = 0x82F6_3B78;
const TABLE_SLICES: usize = 8;

/// `TABLES[k][b]`: the CRC register contribution of byte `b` followed by `k` zero bytes.
static TABLES: [[u32; 256]; TABLE_SLICES] = build_tables();

const fn build_tables() -> [[u32; 256]; TABLE_SLICES] {
    let mut t = [[0u32; 256]; TABLE_SLICES];
    let mut b = 0;
    while b < 256 {
        let mut crc = b as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ POLY_REFLECTED } else { crc >> 1 };
            bit += 1;
        }
        t[0][b] = crc;
        b += 1;
    }
    let mut k = 1;
    while k < TABLE_SLICES {
        let mut b = 0;
        while b < 256 {
            let prev = t[k - 1][b];
            t[k][b] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            b += 1;
        }
        k += 1;
    }
    t
}

/// Slice-by-8 over the raw register.
fn software(mut crc: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(TABLE_SLICES);
    for w in &mut words {
        let lo = crc ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        crc = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][w[4] as usize]
            ^ TABLES[2][w[5] as usize]
            ^ TABLES[1][w[6] as usize]
            ^ TABLES[0][w[7] as usize];
    }
    for &b in words.remainder() {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ u32::from(b)) & 0xff) as usize];
    }
    crc
}

fn update(state: u32, data: &[u8]) -> u32 {
    match mem::simd::crc32c_update(state, data) {
        Some(s) => s,
        None => software(state, data),
    }
}

/// Streaming CRC32C over host bytes, e.g. a PDU's data as it passes a staging chunk.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c {
    state: u32,
}

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c::new()
    }
}

impl Crc32c {
    pub fn new() -> Crc32c {
        Crc32c::resume(0)
    }

    /// Continues after bytes whose CRC is `crc`.
    pub fn resume(crc: u32) -> Crc32c {
        Crc32c { state: !crc }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.state = update(self.state, data);
    }

    pub fn finish(&self) -> u32 {
        !self.state
    }
}

/// CRC32C of host bytes.
pub fn crc32c_bytes(data: &[u8], seed: u32) -> u32 {
    let mut c = Crc32c::resume(seed);
    c.update(data);
    c.finish()
}

/// CRC32C of a Host view: the path for code that already holds one. Counted as direct.
pub fn crc32c_view(view: &CpuView<'_>, seed: u32) -> u32 {
    let mut c = Crc32c::resume(seed);
    for s in view.slices() {
        c.update(s);
    }
    mem::stats::count_direct(view.len());
    c.finish()
}

/// CRC32C of a list of any kinds: Host in place, IoMem through accessors, Device through
/// its DMA engine, the last two via a host staging chunk.
pub fn crc32c(sgl: &Sgl<'_>, seed: u32) -> Result<u32> {
    if sgl.is_host_only() {
        return Ok(crc32c_view(&sgl.cpu_view()?, seed));
    }
    let mut c = Crc32c::resume(seed);
    let mut staging = [0u8; STAGING_CHUNK_BYTES];
    mem::for_each_chunk::<mem::Error>(sgl, &mut staging, usize::MAX, |chunk| {
        c.update(chunk);
        Ok(())
    })?;
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::testutil::Kit;
    use crate::mem::{MemKind, MemStats};

    /// RFC 3720 appendix B.4 and the common check value.
    fn vectors() -> Vec<(Vec<u8>, u32)> {
        vec![
            (vec![0x00; 32], 0x8A91_36AA),
            (vec![0xFF; 32], 0x62A8_AB43),
            ((0..32u8).collect(), 0x46DD_794E),
            ((0..32u8).rev().collect(), 0x113F_DB5C),
            (b"123456789".to_vec(), 0xE306_9283),
        ]
    }

    fn check(data: &[u8], expected: u32) {
        assert_eq!(crc32c_bytes(data, 0), expected, "dispatch");
        assert_eq!(!software(!0, data), expected, "software");
    }

    #[test]
    fn rfc3720_vectors_in_software_and_hardware() {
        for (data, expected) in vectors() {
            check(&data, expected);
        }
    }

    #[test]
    fn rfc3720_vectors_on_every_kind() {
        let kit = Kit::new();
        for (data, expected) in vectors() {
            for kind in MemKind::ALL {
                let mut bufs = kit.buffers(&[kind], data.len());
                let mut sgl = Kit::sgl_mut(&mut bufs);
                crate::mem::copy(&mut sgl, &Sgl::from_host(&data).expect("host")).expect("fill");
                let before = crate::mem::stats::thread_snapshot();
                assert_eq!(crc32c(&sgl, 0).expect("crc"), expected, "{kind}");
                let d: MemStats = crate::mem::stats::thread_snapshot().since(&before);
                let n = data.len() as u64;
                assert_eq!(d.payload_bytes(kind), n, "{kind} counted by kind");
                match kind {
                    MemKind::Host => assert_eq!(d.cpu_direct_bytes, n),
                    MemKind::IoMem => assert_eq!(d.cpu_io_accessor_bytes, n),
                    MemKind::Device => {
                        assert_eq!((d.dma_bytes, d.cpu_bounce_bytes), (n, n));
                    }
                }
            }
        }
    }

    #[test]
    fn split_anywhere_and_chained_gives_the_same_crc() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
        let whole = crc32c_bytes(&data, 0);
        assert_eq!(whole, !software(!0, &data));
        for cut in [0, 1, 767, 24_576, 50_001, data.len()] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c_bytes(b, crc32c_bytes(a, 0)), whole, "cut {cut}");
        }
        let kit = Kit::new();
        let kinds = [MemKind::Host, MemKind::IoMem, MemKind::Host, MemKind::IoMem];
        let mut bufs = kit.buffers(&kinds, 25_000);
        let mut sgl = Kit::sgl_mut(&mut bufs);
        crate::mem::copy(&mut sgl, &Sgl::from_host(&data).expect("host")).expect("fill");
        assert_eq!(crc32c(&sgl, 0).expect("crc"), whole);
    }

    #[test]
    fn device_memory_without_an_engine_is_refused() {
        let kit = Kit::new();
        let buf = kit.no_dma.alloc(32).expect("alloc");
        let err = crc32c(&buf.sgl(), 0).expect_err("refused");
        assert!(matches!(err, super::super::Error::Mem(mem::Error::NoPath { .. })));
    }
}
