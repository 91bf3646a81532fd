//! The `--verify` data pattern: every block starts with its LBA and the write's seed,
//! followed by bytes derived from both, so a block read back from the wrong place, from
//! an older write, or corrupted in flight does not match.

/// Bytes of the self-describing header at the start of each block (LBA, seed).
const BLOCK_HEADER_BYTES: usize = 16;

/// xorshift64*: cheap, deterministic, good enough to make every byte depend on (LBA, seed).
pub fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn block_state(lba: u64, seed: u64) -> u64 {
    // Never zero: xorshift stays at zero forever.
    (lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed) | 1
}

fn fill_block(block: &mut [u8], lba: u64, seed: u64) {
    let mut state = block_state(lba, seed);
    block[..8].copy_from_slice(&lba.to_le_bytes());
    block[8..16].copy_from_slice(&seed.to_le_bytes());
    for word in block[BLOCK_HEADER_BYTES..].chunks_mut(8) {
        let bytes = next_random(&mut state).to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// Fills `buf` (whole blocks of `block_size`) for blocks starting at `slba`.
pub fn fill(buf: &mut [u8], slba: u64, block_size: usize, seed: u64) {
    assert!(block_size >= BLOCK_HEADER_BYTES && buf.len().is_multiple_of(block_size), "{} / {block_size}", buf.len());
    for (index, block) in buf.chunks_mut(block_size).enumerate() {
        fill_block(block, slba + index as u64, seed);
    }
}

/// How many blocks of `buf` differ from what `fill` would have written.
pub fn mismatched_blocks(buf: &[u8], slba: u64, block_size: usize, seed: u64, scratch: &mut Vec<u8>) -> u64 {
    assert!(block_size >= BLOCK_HEADER_BYTES && buf.len().is_multiple_of(block_size));
    scratch.resize(block_size, 0);
    let mut bad = 0;
    for (index, block) in buf.chunks(block_size).enumerate() {
        fill_block(scratch, slba + index as u64, seed);
        bad += u64::from(block != &scratch[..]);
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_names_lba_and_seed_and_catches_every_kind_of_mismatch() {
        let mut buf = vec![0u8; 4 * 512];
        fill(&mut buf, 100, 512, 7);
        assert_eq!(u64::from_le_bytes(buf[512..520].try_into().expect("8 bytes")), 101);
        assert_eq!(u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")), 7);
        let mut scratch = Vec::new();
        assert_eq!(mismatched_blocks(&buf, 100, 512, 7, &mut scratch), 0);
        assert_eq!(mismatched_blocks(&buf, 101, 512, 7, &mut scratch), 4, "wrong place");
        assert_eq!(mismatched_blocks(&buf, 100, 512, 8, &mut scratch), 4, "older write");
        buf[3 * 512 + 300] ^= 1;
        assert_eq!(mismatched_blocks(&buf, 100, 512, 7, &mut scratch), 1, "one flipped bit");
        let mut other = vec![0u8; 512];
        fill(&mut other, 100, 512, 7);
        assert!(other[16..] != buf[512 + 16..1024], "blocks differ beyond their headers");
    }
}
