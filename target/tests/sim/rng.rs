//! The simulation's only source of randomness: SplitMix64 (Steele, Lea, Flood 2014), one
//! stream per part of the world, all forked from the run's seed, so a part that draws
//! more or fewer numbers does not shift what the others draw.

#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// A new independent stream; `label` keeps forks of the same parent apart.
    pub fn fork(&mut self, label: u64) -> Rng {
        Rng::new(mix(self.next_u64() ^ label.wrapping_mul(0xd1b5_4a32_d192_ed03)))
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for our n).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "range({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_million` / 1e6.
    pub fn chance(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.below(1_000_000) < u64::from(per_million)
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A probability for swarm testing: off for some runs, rare or frequent for others,
    /// so each seed explores a differently shaped world.
    pub fn swarm_rate(&mut self, max_per_million: u32) -> u32 {
        match self.below(4) {
            0 => 0,
            1 => max_per_million / 100,
            2 => max_per_million / 10,
            _ => max_per_million,
        }
    }
}

/// SplitMix64's output function: a bijection with full avalanche.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
