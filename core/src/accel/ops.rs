//! Copy, fill and compare on lists of any kinds, through the tag gate.

use crate::mem::{self, ChunkReader, Sgl, STAGING_CHUNK_BYTES};

use super::{Error, Result};

/// Copies all of `src` into the start of `dst`; returns the bytes copied.
pub fn copy(dst: &mut Sgl<'_>, src: &Sgl<'_>) -> Result<usize> {
    Ok(mem::copy(dst, src)?)
}

/// Sets every byte of `dst` to `byte`.
pub fn fill(dst: &mut Sgl<'_>, byte: u8) -> Result<()> {
    Ok(mem::fill(dst, byte)?)
}

/// Compares two equally long lists: `None` when equal, else the offset of the first
/// differing byte.
pub fn compare(a: &Sgl<'_>, b: &Sgl<'_>) -> Result<Option<usize>> {
    if a.len() != b.len() {
        return Err(Error::LengthMismatch { a: a.len(), b: b.len() });
    }
    let mut other = ChunkReader::new(b);
    let mut theirs = [0u8; STAGING_CHUNK_BYTES];
    let mut staging = [0u8; STAGING_CHUNK_BYTES];
    let mut offset = 0;
    let mut found = None;
    mem::for_each_chunk::<Error>(a, &mut staging, STAGING_CHUNK_BYTES, |mine| {
        if found.is_some() {
            return Ok(());
        }
        let n = other.read(&mut theirs[..mine.len()])?;
        debug_assert_eq!(n, mine.len(), "lengths checked equal");
        if let Some(i) = mine.iter().zip(&theirs[..n]).position(|(x, y)| x != y) {
            found = Some(offset + i);
        }
        offset += n;
        Ok(())
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::testutil::Kit;
    use crate::mem::MemKind;

    #[test]
    fn compare_finds_the_first_difference_on_every_pair_of_kinds() {
        let kit = Kit::new();
        let len = STAGING_CHUNK_BYTES + 500;
        for ka in MemKind::ALL {
            for kb in MemKind::ALL {
                let mut a = kit.buffers(&[MemKind::Host, ka], len);
                let mut b = kit.buffers(&[kb, MemKind::Host], len);
                Kit::fill_pattern(&mut a, 9);
                Kit::fill_pattern(&mut b, 9);
                assert_eq!(compare(&Kit::sgl(&a), &Kit::sgl(&b)).expect("cmp"), None);
                let poke = len + 321;
                let mut one = [0u8; 1];
                {
                    let sgl = Kit::sgl(&b);
                    let sub = sgl.sub(poke, 1).expect("in range");
                    copy(&mut Sgl::from_host_mut(&mut one).expect("host"), &sub).expect("rd");
                }
                one[0] ^= 0xff;
                {
                    let mut sgl = Kit::sgl_mut(&mut b);
                    let mut sub = sgl.sub_mut(poke, 1).expect("in range");
                    copy(&mut sub, &Sgl::from_host(&one).expect("host")).expect("poke");
                }
                assert_eq!(compare(&Kit::sgl(&a), &Kit::sgl(&b)).expect("cmp"), Some(poke), "{ka} vs {kb}");
            }
        }
    }

    #[test]
    fn fill_reaches_every_kind() {
        let kit = Kit::new();
        let mut bufs = kit.buffers(&[MemKind::Host, MemKind::IoMem, MemKind::Host], 9000);
        fill(&mut Kit::sgl_mut(&mut bufs), 0xA5).expect("fill");
        assert!(Kit::read_all(&bufs).iter().all(|&b| b == 0xA5));
        let mut dev = kit.buffers(&[MemKind::Device], 9000);
        fill(&mut Kit::sgl_mut(&mut dev), 0x3C).expect("fill");
        assert!(Kit::read_all(&dev).iter().all(|&b| b == 0x3C));
    }

    #[test]
    fn compare_refuses_unequal_lengths() {
        let (x, y) = ([0u8; 3], [0u8; 4]);
        let r = compare(&Sgl::from_host(&x).expect("x"), &Sgl::from_host(&y).expect("y"));
        assert!(matches!(r, Err(Error::LengthMismatch { a: 3, b: 4 })));
    }
}
