//! I/O accessors: how the CPU reads and writes IoMem (a BAR mapped write-combining).
//!
//! Device memory must never be touched by ordinary loads the compiler may merge, split,
//! reorder or turn into `&[u8]` reads: accesses are volatile and naturally aligned, in the
//! spirit of Linux's `memcpy_fromio` / `memcpy_toio`. The unaligned head and tail go a
//! byte at a time; the body moves in aligned 8-byte words.

const WORD: usize = std::mem::size_of::<u64>();

/// Copies `dst.len()` bytes from I/O memory at `src` into host memory.
///
/// # Safety
/// `src..src + dst.len()` must lie in a live mapping this module owns, and nothing may
/// hold a Rust reference to those bytes.
pub(crate) unsafe fn read(src: usize, dst: &mut [u8]) {
    let len = dst.len();
    let head = (src.wrapping_neg() % WORD).min(len);
    for (i, b) in dst[..head].iter_mut().enumerate() {
        // SAFETY: in bounds per the caller's contract; bytes need no alignment.
        *b = unsafe { std::ptr::read_volatile((src + i) as *const u8) };
    }
    let body_words = (len - head) / WORD;
    let body = &mut dst[head..head + body_words * WORD];
    for (w, out) in body.chunks_exact_mut(WORD).enumerate() {
        let at = src + head + w * WORD;
        debug_assert_eq!(at % WORD, 0);
        // SAFETY: `at` is 8-aligned and `at..at + 8` is in bounds per the contract.
        let word = unsafe { std::ptr::read_volatile(at as *const u64) };
        out.copy_from_slice(&word.to_ne_bytes());
    }
    let done = head + body_words * WORD;
    for (i, b) in dst[done..].iter_mut().enumerate() {
        // SAFETY: in bounds per the caller's contract.
        *b = unsafe { std::ptr::read_volatile((src + done + i) as *const u8) };
    }
}

/// Copies `src` into I/O memory at `dst`.
///
/// # Safety
/// `dst..dst + src.len()` must lie in a live writable mapping this module owns, and
/// nothing may hold a Rust reference to those bytes.
pub(crate) unsafe fn write(dst: usize, src: &[u8]) {
    let len = src.len();
    let head = (dst.wrapping_neg() % WORD).min(len);
    for (i, b) in src[..head].iter().enumerate() {
        // SAFETY: in bounds per the caller's contract.
        unsafe { std::ptr::write_volatile((dst + i) as *mut u8, *b) };
    }
    let body_words = (len - head) / WORD;
    for (w, chunk) in src[head..head + body_words * WORD].chunks_exact(WORD).enumerate() {
        let at = dst + head + w * WORD;
        debug_assert_eq!(at % WORD, 0);
        let mut word = [0u8; WORD];
        word.copy_from_slice(chunk);
        // SAFETY: `at` is 8-aligned and `at..at + 8` is in bounds per the contract.
        unsafe { std::ptr::write_volatile(at as *mut u64, u64::from_ne_bytes(word)) };
    }
    let done = head + body_words * WORD;
    for (i, b) in src[done..].iter().enumerate() {
        // SAFETY: in bounds per the caller's contract.
        unsafe { std::ptr::write_volatile((dst + done + i) as *mut u8, *b) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_heads_and_tails_round_trip() {
        let mut backing = vec![0u8; 96];
        let base = backing.as_mut_ptr() as usize;
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 23, 64] {
                let src: Vec<u8> = (0..len).map(|i| (i * 7 + start) as u8).collect();
                // SAFETY: `backing` is alive, 96 bytes, and not otherwise borrowed here.
                unsafe { write(base + start, &src) };
                let mut back = vec![0u8; len];
                // SAFETY: as above.
                unsafe { read(base + start, &mut back) };
                assert_eq!(back, src, "start {start} len {len}");
            }
        }
        drop(backing);
    }
}
