//! Self-checking record values: each carries its id and a checksum of its own bytes, so a
//! consumer can tell a corrupt record from a good one without asking anyone.
//!
//! Layout (ASCII): `{id:010}.{padding}.{fnv1a64(id '.' padding):016x}`. The padding is a
//! random run of letters (its length varies, so batches straddle index entries and segment
//! boundaries at varied places).

use rand::Rng;

/// FNV-1a, 64 bits: tiny, dependency-free, and enough to catch flipped or torn bytes.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The value of record `id`, with `rng` choosing the padding.
pub fn encode(id: u64, rng: &mut impl Rng) -> String {
    let len = rng.random_range(8..160);
    let padding: String = (0..len)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    let body = format!("{id:010}.{padding}");
    let sum = fnv1a64(body.as_bytes());
    format!("{body}.{sum:016x}")
}

/// The id a value carries, or why the value is not one [`encode`] made intact.
pub fn decode(value: &[u8]) -> Result<u64, String> {
    let show = || String::from_utf8_lossy(&value[..value.len().min(80)]).into_owned();
    let text = std::str::from_utf8(value).map_err(|_| format!("not UTF-8: {:?}", show()))?;
    let (body, sum) = text
        .rsplit_once('.')
        .ok_or_else(|| format!("no checksum: {:?}", show()))?;
    let sum =
        u64::from_str_radix(sum, 16).map_err(|_| format!("bad checksum field: {:?}", show()))?;
    if sum != fnv1a64(body.as_bytes()) || sum_len(text) != 16 {
        return Err(format!("checksum mismatch: {:?}", show()));
    }
    let (id, _) = body
        .split_once('.')
        .ok_or_else(|| format!("no id: {:?}", show()))?;
    if id.len() != 10 {
        return Err(format!("bad id field: {:?}", show()));
    }
    id.parse()
        .map_err(|_| format!("bad id field: {:?}", show()))
}

fn sum_len(text: &str) -> usize {
    text.rsplit_once('.').map_or(0, |(_, s)| s.len())
}

#[test]
fn values_round_trip_and_any_flipped_byte_is_caught() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for id in [0, 1, 42, 9_999_999_999] {
        let v = encode(id, &mut rng);
        assert_eq!(decode(v.as_bytes()), Ok(id));
        for i in 0..v.len() {
            let mut bad = v.clone().into_bytes();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "flip at {i} of {v} went unnoticed");
        }
        assert!(decode(&v.as_bytes()[..v.len() - 1]).is_err());
    }
}
