//! SIMD kernels that need `unsafe` to call CPU intrinsics, behind safe functions with
//! runtime feature detection. `accel` calls these; it never sees the intrinsics.
//!
//! CRC32C on x86-64: the SSE4.2 `crc32` instruction has a latency of three cycles and a
//! throughput of one, so one dependency chain runs at a third of the possible speed. We
//! run three independent streams over three adjacent blocks and merge them with a
//! carry-less multiply (pclmulqdq), the scheme of Intel's "Fast CRC Computation for
//! iSCSI Polynomial Using CRC32 Instruction" white paper.
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

/// Hardware CRC32C of `data` from register state `crc`; `None` where the CPU lacks it.
pub(crate) fn crc32c_update(crc: u32, data: &[u8]) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
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
}
