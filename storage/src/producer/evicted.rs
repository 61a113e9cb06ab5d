//! A bounded memory of producer ids the table forgot (expired or evicted): a Bloom filter
//! in two generations, so it never grows and never fills up.
//!
//! Without it, a producer evicted after appending its sequence 0 and retrying that very
//! sequence would look new and be appended twice. With it, a sequence 0 from a forgotten id
//! is refused; a false positive (an id never seen) only asks that producer to pick another id.
//! An id falls out once two generations of later evictions have passed it.

use std::hash::{BuildHasher, RandomState};

/// Ids one generation holds before it becomes the previous one (and the previous is dropped).
pub const GENERATION_IDS: u32 = 4096;
/// Bits per generation: ten per id, for about 1% false positives with [`HASHES`] probes.
const GENERATION_WORDS: usize = GENERATION_IDS as usize * 10 / 64;
const HASHES: u64 = 7;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictedFilter {
    /// Keyed per table (and saved with it), so ids cannot be chosen to collide.
    seed: u64,
    /// Ids added to `current`.
    count: u32,
    current: Vec<u64>,
    previous: Vec<u64>,
}

impl Default for EvictedFilter {
    fn default() -> Self {
        EvictedFilter {
            seed: RandomState::new().hash_one(0u64),
            count: 0,
            current: Vec::new(),
            previous: Vec::new(),
        }
    }
}

impl EvictedFilter {
    /// Remembers that `id` was forgotten.
    pub fn insert(&mut self, id: u64) {
        if self.count >= GENERATION_IDS {
            self.previous = std::mem::take(&mut self.current);
            self.count = 0;
        }
        if self.current.is_empty() {
            self.current = vec![0; GENERATION_WORDS];
        }
        for bit in self.bits(id) {
            self.current[bit / 64] |= 1 << (bit % 64);
        }
        self.count += 1;
    }

    /// Whether `id` may have been forgotten (never a false negative within two generations).
    pub fn may_contain(&self, id: u64) -> bool {
        let has = |words: &[u64]| {
            !words.is_empty() && self.bits(id).all(|b| words[b / 64] & (1 << (b % 64)) != 0)
        };
        has(&self.current) || has(&self.previous)
    }

    fn bits(&self, id: u64) -> impl Iterator<Item = usize> + use<> {
        // Double hashing over two keyed mixes of the id.
        let h1 = mix(id ^ self.seed);
        let h2 = mix(h1 ^ 0x9e37_79b9_7f4a_7c15) | 1;
        let n = (GENERATION_WORDS * 64) as u64;
        (0..HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % n) as usize)
    }

    /// Appends the filter to a snapshot (see `docs/format.md`).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        for words in [&self.current, &self.previous] {
            out.push(u8::from(!words.is_empty()));
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
    }

    pub fn decode_from(r: &mut super::snapshot::Reader<'_>) -> Option<EvictedFilter> {
        let seed = r.u64()?;
        let count = r.u32()?;
        let mut words = || -> Option<Vec<u64>> {
            match r.u8()? {
                0 => Some(Vec::new()),
                1 => (0..GENERATION_WORDS).map(|_| r.u64()).collect(),
                _ => None,
            }
        };
        let current = words()?;
        let previous = words()?;
        (count <= GENERATION_IDS).then_some(EvictedFilter {
            seed,
            count,
            current,
            previous,
        })
    }
}

/// splitmix64's finaliser: a cheap, well-distributed 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_two_generations_with_few_false_positives() {
        let mut f = EvictedFilter::default();
        assert!(!f.may_contain(1));
        for id in 0..u64::from(GENERATION_IDS) * 2 {
            f.insert(id);
        }
        assert!((0..u64::from(GENERATION_IDS) * 2).all(|id| f.may_contain(id)));
        let strangers = (1_000_000..1_010_000)
            .filter(|&id| f.may_contain(id))
            .count();
        assert!(strangers < 400, "{strangers} false positives in 10,000");
        // A third generation pushes the first out, so memory stays fixed.
        for id in 10_000_000..10_000_000 + u64::from(GENERATION_IDS) + 1 {
            f.insert(id);
        }
        let old = (0..u64::from(GENERATION_IDS))
            .filter(|&id| f.may_contain(id))
            .count();
        assert!(old < 400, "{old} ids of a dropped generation still match");
        assert_eq!(f.current.len() + f.previous.len(), 2 * GENERATION_WORDS);
    }
}
