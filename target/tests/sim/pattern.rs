//! What hosts write: every block carries the write's stamp and its own address, and a
//! body derived from both, so a read can tell which write a block came from, and a block
//! that landed at the wrong LBA, in the wrong namespace, or torn, does not pass.

const K_BASE: u64 = 0x9e37_79b9_7f4a_7c15;
const K_WORD: u64 = 0xd6e8_feb8_6659_fd93;

fn address(nsid: u32, lba: u64) -> u64 {
    (u64::from(nsid) << 48) | lba
}

fn base(nsid: u32, lba: u64, stamp: u64) -> u64 {
    (stamp ^ address(nsid, lba).rotate_left(23)).wrapping_mul(K_BASE)
}

/// Fills `block` with what write `stamp` puts at `lba` of namespace `nsid`.
pub fn fill(block: &mut [u8], nsid: u32, lba: u64, stamp: u64) {
    debug_assert!(stamp != 0, "stamp 0 is the media's initial zeroes");
    let base = base(nsid, lba, stamp);
    for (index, word) in block.chunks_exact_mut(8).enumerate() {
        let value = match index {
            0 => stamp,
            1 => address(nsid, lba),
            _ => base ^ (index as u64).wrapping_mul(K_WORD),
        };
        word.copy_from_slice(&value.to_le_bytes());
    }
}

/// Fills consecutive blocks from `lba` on.
pub fn fill_blocks(data: &mut [u8], block_size: usize, nsid: u32, lba: u64, stamp: u64) {
    for (index, block) in data.chunks_exact_mut(block_size).enumerate() {
        fill(block, nsid, lba + index as u64, stamp);
    }
}

fn word(block: &[u8], index: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&block[index * 8..index * 8 + 8]);
    u64::from_le_bytes(bytes)
}

/// The stamp of the write a block holds (0 for never written), or what is wrong with it.
pub fn decode(block: &[u8], nsid: u32, lba: u64) -> Result<u64, String> {
    let stamp = word(block, 0);
    if stamp == 0 {
        return match block.iter().position(|byte| *byte != 0) {
            None => Ok(0),
            Some(at) => Err(format!("stamp 0 (never written) but byte {at} is {:#04x}", block[at])),
        };
    }
    let found = word(block, 1);
    if found != address(nsid, lba) {
        return Err(format!(
            "stamp {stamp} but the block says it is nsid {} lba {} (expected nsid {nsid} lba {lba})",
            found >> 48,
            found & 0xffff_ffff_ffff
        ));
    }
    let base = base(nsid, lba, stamp);
    for index in 2..block.len() / 8 {
        if word(block, index) != base ^ (index as u64).wrapping_mul(K_WORD) {
            return Err(format!("stamp {stamp}: word {index} of the block is not what that write wrote (torn?)"));
        }
    }
    Ok(stamp)
}

#[test]
fn patterns_round_trip_and_catch_misplacement() {
    let mut block = vec![0u8; 512];
    assert_eq!(decode(&block, 1, 3), Ok(0));
    fill(&mut block, 1, 3, 77);
    assert_eq!(decode(&block, 1, 3), Ok(77));
    assert!(decode(&block, 1, 4).is_err(), "wrong LBA");
    assert!(decode(&block, 2, 3).is_err(), "wrong namespace");
    block[100] ^= 1;
    assert!(decode(&block, 1, 3).is_err(), "torn");
}
