//! SIMD kernels that need `unsafe` to call CPU intrinsics, behind safe functions with
//! runtime feature detection. `accel` calls these; it never sees the intrinsics.
//!
//! CRC32C on x86-64: the SSE4.2 `crc32` instruction has a latency of three cycles and a
//! throughput of one, so one dependency chain runs at a third of the possible speed. We
//! run three independent streams over three adjacent blocks and merge them with a
//! carry-less multiply (pclmulqdq), the scheme of Intel's "Fast CRC Computation for
//! iSCSI Polynomial Using CRC32 Instruction" white paper.
//!
//! Where the CPU has AVX-512 with VPCLMULQDQ, inputs of at least `WIDE_MIN_BYTES` are
//! folded instead: four 512-bit accumulators (sixteen 128-bit lanes) each multiplied
//! forward by x^(8 * 256) per 256 bytes with carry-less multiplies, reduced to one 128-bit
//! value, which the crc32 instruction finishes (the folding of Intel's "Fast CRC
//! Computation for Generic Polynomials Using PCLMULQDQ Instruction", at 512 bits).
//!
//! State convention: the raw register, reflected, without the initial or final inversion
//! (the caller does those).

/// CRC32C (Castagnoli) polynomial, bit-reflected.
pub(crate) const CRC32C_POLY_REFLECTED: u32 = 0x82F6_3B78;

/// Block per stream for long inputs; large enough that the merge (one multiply and one
/// crc32 per stream) is noise, small enough to stay in L1.
const LONG_BLOCK: usize = 8192;
/// Block per stream for the remainder of long inputs and for medium ones.
const SHORT_BLOCK: usize = 256;

/// `a * b mod P`, both reflected (bit 31 is the x^0 coefficient).
const fn mul_mod(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut i = 0;
    while i < 32 {
        if a & (1 << (31 - i)) != 0 {
            product ^= b;
        }
        // b *= x
        b = if b & 1 != 0 { (b >> 1) ^ CRC32C_POLY_REFLECTED } else { b >> 1 };
        i += 1;
    }
    product
}

/// `x^n mod P`, reflected.
const fn x_pow_mod(mut n: u64) -> u32 {
    let mut result = 1 << 31; // x^0
    let mut square = 1 << 30; // x^1
    while n > 0 {
        if n & 1 != 0 {
            result = mul_mod(result, square);
        }
        square = mul_mod(square, square);
        n >>= 1;
    }
    result
}

/// The multiplier that moves a CRC state forward over `bytes` zero bytes through
/// `crc32(0, clmul(state, k))`: the clmul contributes x^1, the crc32 x^32, so
/// `k = x^(8 * bytes - 33)`.
pub(crate) const fn shift_constant(bytes: usize) -> u32 {
    x_pow_mod(8 * bytes as u64 - 33)
}

/// The pair that folds a 128-bit lane forward over `bytes` bytes: its first (lower) 64
/// bits times x^(8 * bytes + 32) and its second times x^(8 * bytes - 32), both mod P,
/// reflected and shifted by one as a reflected carry-less product needs.
const fn fold_constants(bytes: usize) -> (u64, u64) {
    ((x_pow_mod(8 * bytes as u64 + 32) as u64) << 1, (x_pow_mod(8 * bytes as u64 - 32) as u64) << 1)
}

/// Inputs shorter than this stay on the three-stream crc32 path.
const WIDE_MIN_BYTES: usize = 256;

// Evaluated at compile time: each is thousands of operations to compute.
const FOLD_256: (u64, u64) = fold_constants(256);
const FOLD_192: (u64, u64) = fold_constants(192);
const FOLD_128: (u64, u64) = fold_constants(128);
const FOLD_64: (u64, u64) = fold_constants(64);
const FOLD_48: (u64, u64) = fold_constants(48);
const FOLD_32: (u64, u64) = fold_constants(32);
const FOLD_16: (u64, u64) = fold_constants(16);

const K_LONG_1: u32 = shift_constant(LONG_BLOCK);
const K_LONG_2: u32 = shift_constant(2 * LONG_BLOCK);
const K_SHORT_1: u32 = shift_constant(SHORT_BLOCK);
const K_SHORT_2: u32 = shift_constant(2 * SHORT_BLOCK);

/// Whether [`crc32c_update`] runs on hardware here.
pub(crate) fn has_crc32c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sse4.2") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the 512-bit folding kernel runs here (AVX-512F and VPCLMULQDQ, with the
/// crc32 instruction to finish): 2.2x to 2.5x the three-stream kernel at 4 KiB and
/// 64 KiB (`mem_bench`). `PEERLESS_CRC32C_NARROW=1` turns it off, to compare.
pub(crate) fn has_wide_crc32c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *WIDE.get_or_init(|| {
            has_crc32c()
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("vpclmulqdq")
                && std::env::var_os("PEERLESS_CRC32C_NARROW").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Hardware CRC32C of `data` from register state `crc`; `None` where the CPU lacks it.
pub(crate) fn crc32c_update(crc: u32, data: &[u8]) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() >= WIDE_MIN_BYTES && has_wide_crc32c() {
            // SAFETY: the CPU supports every feature this target_feature function
            // enables (checked just above), its only requirement.
            return Some(unsafe { x86_wide::crc32c(crc, data) });
        }
        if has_crc32c() {
            // SAFETY: the CPU supports sse4.2 and pclmulqdq (checked just above), the
            // only requirement of this target_feature function.
            return Some(unsafe { x86::crc32c(crc, data) });
        }
    }
    let _ = (crc, data);
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _mm_clmulepi64_si128, _mm_crc32_u64, _mm_crc32_u8, _mm_cvtsi128_si64, _mm_cvtsi64_si128,
    };

    fn word(bytes: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(bytes);
        u64::from_le_bytes(w)
    }

    /// `state * x^(8n)` where `k` is [`super::shift_constant`] of `n`.
    ///
    /// # Safety
    /// The CPU must support SSE4.2 and PCLMULQDQ (the caller checks at run time).
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    unsafe fn shift(state: u64, k: u32) -> u64 {
        let a: __m128i = _mm_cvtsi64_si128(state as i64);
        let b: __m128i = _mm_cvtsi64_si128(i64::from(k));
        let product = _mm_cvtsi128_si64(_mm_clmulepi64_si128(a, b, 0)) as u64;
        _mm_crc32_u64(0, product)
    }

    /// Three streams over `3 * block` bytes from state `crc`.
    ///
    /// # Safety
    /// The CPU must support SSE4.2 and PCLMULQDQ (the caller checks at run time).
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    unsafe fn three_way(crc: u64, data: &[u8], block: usize, k1: u32, k2: u32) -> u64 {
        debug_assert_eq!(data.len(), 3 * block);
        let (a, rest) = data.split_at(block);
        let (b, c) = rest.split_at(block);
        let (mut ca, mut cb, mut cc) = (crc, 0u64, 0u64);
        for ((wa, wb), wc) in a.chunks_exact(8).zip(b.chunks_exact(8)).zip(c.chunks_exact(8)) {
            ca = _mm_crc32_u64(ca, word(wa));
            cb = _mm_crc32_u64(cb, word(wb));
            cc = _mm_crc32_u64(cc, word(wc));
        }
        // SAFETY: same target features as this function.
        unsafe { shift(ca, k2) ^ shift(cb, k1) ^ cc }
    }

    #[target_feature(enable = "sse4.2,pclmulqdq")]
    pub(super) unsafe fn crc32c(crc: u32, mut data: &[u8]) -> u32 {
        use super::{K_LONG_1, K_LONG_2, K_SHORT_1, K_SHORT_2, LONG_BLOCK, SHORT_BLOCK};
        let mut state = u64::from(crc);
        while data.len() >= 3 * LONG_BLOCK {
            let (head, rest) = data.split_at(3 * LONG_BLOCK);
            // SAFETY: same target features as this function.
            state = unsafe { three_way(state, head, LONG_BLOCK, K_LONG_1, K_LONG_2) };
            data = rest;
        }
        while data.len() >= 3 * SHORT_BLOCK {
            let (head, rest) = data.split_at(3 * SHORT_BLOCK);
            // SAFETY: same target features as this function.
            state = unsafe { three_way(state, head, SHORT_BLOCK, K_SHORT_1, K_SHORT_2) };
            data = rest;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            state = _mm_crc32_u64(state, word(w));
        }
        let mut state = state as u32;
        for &b in words.remainder() {
            state = _mm_crc32_u8(state, b);
        }
        state
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_wide {
    use std::arch::x86_64::{
        __m128i, __m512i, _mm512_clmulepi64_epi128, _mm512_extracti32x4_epi32, _mm512_loadu_si512, _mm512_set_epi64,
        _mm512_xor_si512, _mm512_zextsi128_si512, _mm_clmulepi64_si128, _mm_crc32_u64, _mm_crc32_u8, _mm_cvtsi128_si64,
        _mm_cvtsi32_si128, _mm_extract_epi64, _mm_loadu_si128, _mm_set_epi64x, _mm_xor_si128,
    };

    use super::{FOLD_128, FOLD_16, FOLD_192, FOLD_256, FOLD_32, FOLD_48, FOLD_64};

    const BLOCK: usize = 256;

    /// The same fold constants in every 128-bit lane.
    #[target_feature(enable = "avx512f")]
    fn broadcast((low, high): (u64, u64)) -> __m512i {
        _mm512_set_epi64(
            high as i64,
            low as i64,
            high as i64,
            low as i64,
            high as i64,
            low as i64,
            high as i64,
            low as i64,
        )
    }

    /// Each 128-bit lane of `x` moved forward by what `k` holds for it.
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn fold(x: __m512i, k: __m512i) -> __m512i {
        _mm512_xor_si512(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11))
    }

    #[target_feature(enable = "pclmulqdq,sse2")]
    fn fold128(x: __m128i, (low, high): (u64, u64)) -> __m128i {
        let k = _mm_set_epi64x(high as i64, low as i64);
        _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11))
    }

    /// # Safety
    /// The CPU must support AVX-512F, VPCLMULQDQ, PCLMULQDQ and SSE4.2 (the caller checks
    /// at run time); `data` holds at least 256 bytes.
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.2,sse4.1")]
    pub(super) unsafe fn crc32c(crc: u32, data: &[u8]) -> u32 {
        debug_assert!(data.len() >= BLOCK);
        let load = |at: usize| -> __m512i {
            let bytes = &data[at..at + 64];
            // SAFETY: `bytes` is 64 readable bytes; the load is unaligned.
            unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
        };
        // The register goes into the first four bytes: a CRC from state c over M is the
        // CRC from state 0 over M with c added to its first 32 bits.
        let mut x0 = _mm512_xor_si512(load(0), _mm512_zextsi128_si512(_mm_cvtsi32_si128(crc as i32)));
        let (mut x1, mut x2, mut x3) = (load(64), load(128), load(192));
        let k_block = broadcast(FOLD_256);
        let mut at = BLOCK;
        while at + BLOCK <= data.len() {
            x0 = _mm512_xor_si512(fold(x0, k_block), load(at));
            x1 = _mm512_xor_si512(fold(x1, k_block), load(at + 64));
            x2 = _mm512_xor_si512(fold(x2, k_block), load(at + 128));
            x3 = _mm512_xor_si512(fold(x3, k_block), load(at + 192));
            at += BLOCK;
        }
        // Four accumulators into x3, then its four lanes into one.
        let mut x = _mm512_xor_si512(fold(x0, broadcast(FOLD_192)), x3);
        x = _mm512_xor_si512(fold(x1, broadcast(FOLD_128)), x);
        x = _mm512_xor_si512(fold(x2, broadcast(FOLD_64)), x);
        let lanes: [__m128i; 4] = [
            _mm512_extracti32x4_epi32::<0>(x),
            _mm512_extracti32x4_epi32::<1>(x),
            _mm512_extracti32x4_epi32::<2>(x),
            _mm512_extracti32x4_epi32::<3>(x),
        ];
        let mut y = lanes[3];
        y = _mm_xor_si128(y, fold128(lanes[0], FOLD_48));
        y = _mm_xor_si128(y, fold128(lanes[1], FOLD_32));
        y = _mm_xor_si128(y, fold128(lanes[2], FOLD_16));
        while at + 16 <= data.len() {
            let bytes = &data[at..at + 16];
            // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
            let next = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
            y = _mm_xor_si128(fold128(y, FOLD_16), next);
            at += 16;
        }
        // The 16 bytes left stand for everything so far: the crc32 instruction finishes
        // them from state 0, then takes the tail.
        let mut state = _mm_crc32_u64(0, _mm_cvtsi128_si64(y) as u64);
        state = _mm_crc32_u64(state, _mm_extract_epi64::<1>(y) as u64);
        let mut state = state as u32;
        for &byte in &data[at..] {
            state = _mm_crc32_u8(state, byte);
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time reference, the definition itself.
    fn reference(mut crc: u32, data: &[u8]) -> u32 {
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ CRC32C_POLY_REFLECTED } else { crc >> 1 };
            }
        }
        crc
    }

    #[test]
    fn shift_constants_move_a_state_over_zero_bytes() {
        // x^32 mod P is the polynomial itself.
        assert_eq!(x_pow_mod(32), CRC32C_POLY_REFLECTED);
        assert_eq!(mul_mod(1 << 31, 0x1234_5678), 0x1234_5678);
        let zeros = vec![0u8; 2 * SHORT_BLOCK];
        let state = 0xdead_beef;
        // Processing n zero bytes multiplies the state by x^(8n).
        let by_bytes = reference(state, &zeros[..SHORT_BLOCK]);
        let by_mul = mul_mod(state, x_pow_mod(8 * SHORT_BLOCK as u64));
        assert_eq!(by_bytes, by_mul);
    }

    #[test]
    fn hardware_matches_the_reference_at_every_length_class() {
        if !has_crc32c() {
            return;
        }
        let data: Vec<u8> = (0..(3 * LONG_BLOCK * 2 + 3 * SHORT_BLOCK + 17)).map(|i| (i * 131 + i / 7) as u8).collect();
        for len in [0, 1, 7, 8, 9, 767, 768, 769, 3 * LONG_BLOCK, data.len()] {
            for start in [0, 3] {
                let d = &data[start..start + len.min(data.len() - start)];
                assert_eq!(crc32c_update(!0, d), Some(reference(!0, d)), "len {len} start {start}");
            }
        }
    }

    /// The 512-bit folding kernel against the definition: every length around its block
    /// (256 bytes) and its 16-byte steps, the PDU sizes from 512 B to 1 MiB, odd starts,
    /// and states other than the initial one.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn wide_kernel_matches_the_reference() {
        let wide_cpu = has_crc32c()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("vpclmulqdq");
        if !wide_cpu {
            eprintln!("no AVX-512 VPCLMULQDQ here: the wide kernel is not run");
            return;
        }
        let data: Vec<u8> = (0..(1 << 20) + 64).map(|i| (i * 151 + i / 13) as u8).collect();
        let mut lengths: Vec<usize> = (256..800).collect();
        lengths.extend([512, 4096, 4096 + 4, 8192, 65536, 131072, 1 << 20, 1000, 4095, 12345]);
        for len in lengths {
            for (start, state) in [(0, !0u32), (1, 0), (5, 0x1234_5678), (63, !0)] {
                let d = &data[start..start + len];
                // SAFETY: wide_cpu checked every feature the kernel enables.
                let wide = unsafe { x86_wide::crc32c(state, d) };
                assert_eq!(wide, reference(state, d), "len {len} start {start} state {state:#x}");
            }
        }
    }
}
