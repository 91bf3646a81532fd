//! A first-fit allocator over a provider's region (CMB, p2pmem). Control plane: buffers
//! are carved out at set-up or pooled by their users, so a mutex around it is fine.

use parking_lot::Mutex;

/// Free ranges `(offset, len)`, sorted by offset and never adjacent (merged on free).
#[derive(Debug)]
pub(crate) struct RangeAlloc {
    granule: usize,
    capacity: usize,
    free: Mutex<Vec<(usize, usize)>>,
}

/// Failure details for the provider's error message.
pub(crate) struct Full {
    pub(crate) available: usize,
    pub(crate) largest: usize,
}

impl RangeAlloc {
    pub(crate) fn new(capacity: usize, granule: usize) -> RangeAlloc {
        assert!(granule.is_power_of_two());
        assert!(capacity > 0 && capacity.is_multiple_of(granule));
        RangeAlloc { granule, capacity, free: Mutex::new(vec![(0, capacity)]) }
    }

    /// Rounds a request up to the granule; zero-byte requests take one granule so every
    /// allocation has a distinct offset.
    pub(crate) fn rounded(&self, len: usize) -> usize {
        len.max(1).div_ceil(self.granule) * self.granule
    }

    pub(crate) fn alloc(&self, len: usize) -> Result<usize, Full> {
        let want = self.rounded(len);
        let mut free = self.free.lock();
        let Some(i) = free.iter().position(|&(_, l)| l >= want) else {
            return Err(Full {
                available: free.iter().map(|r| r.1).sum(),
                largest: free.iter().map(|r| r.1).max().unwrap_or(0),
            });
        };
        let (off, l) = free[i];
        if l == want {
            free.remove(i);
        } else {
            free[i] = (off + want, l - want);
        }
        debug_assert_eq!(off % self.granule, 0);
        Ok(off)
    }

    pub(crate) fn free(&self, off: usize, len: usize) {
        let len = self.rounded(len);
        assert!(off.is_multiple_of(self.granule) && off + len <= self.capacity);
        let mut free = self.free.lock();
        let i = free.partition_point(|&(o, _)| o < off);
        assert!(i == 0 || free[i - 1].0 + free[i - 1].1 <= off, "double free at {off}");
        assert!(i == free.len() || off + len <= free[i].0, "double free at {off}");
        free.insert(i, (off, len));
        if i + 1 < free.len() && free[i].0 + free[i].1 == free[i + 1].0 {
            free[i].1 += free[i + 1].1;
            free.remove(i + 1);
        }
        if i > 0 && free[i - 1].0 + free[i - 1].1 == free[i].0 {
            free[i - 1].1 += free[i].1;
            free.remove(i);
        }
    }

    pub(crate) fn available(&self) -> usize {
        self.free.lock().iter().map(|r| r.1).sum()
    }

    /// A provider's `allocate` over this allocator: addresses from `base`, a full region
    /// named in the error.
    pub(crate) fn allocate_from(&self, base: usize, len: usize, provider: &str) -> super::Result<usize> {
        self.alloc(len).map(|off| base + off).map_err(|full| super::Error::ProviderFull {
            provider: provider.to_string(),
            requested: len,
            available: full.available,
            largest: full.largest,
        })
    }

    /// A provider's `free`: `addr` must be what `allocate_from(base, ..)` gave.
    pub(crate) fn free_from(&self, base: usize, addr: usize, len: usize, provider: &str) {
        let off =
            addr.checked_sub(base).unwrap_or_else(|| panic!("freeing {addr:#x}, which {provider} did not allocate"));
        self.free(off, len);
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_frees_and_coalesces() {
        let a = RangeAlloc::new(16 * 4096, 4096);
        let offs: Vec<usize> = (0..16).map(|_| a.alloc(100).ok().expect("room")).collect();
        assert!(a.alloc(1).is_err());
        for off in offs.iter().step_by(2) {
            a.free(*off, 100);
        }
        let full = a.alloc(2 * 4096).expect_err("fragmented");
        assert_eq!((full.available, full.largest), (8 * 4096, 4096));
        for off in offs.iter().skip(1).step_by(2) {
            a.free(*off, 4096);
        }
        assert_eq!(a.available(), a.capacity());
        assert_eq!(a.alloc(16 * 4096).ok(), Some(0));
    }
}
