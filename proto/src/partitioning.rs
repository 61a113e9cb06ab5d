//! How `AppendRequest.partition_key` chooses a partition.
//!
//! Every client, in every language, must route a key to the same partition
//! as the broker, so the hash is fixed, simple and documented in the proto:
//! FNV-1a, 64-bit, over the key bytes, then `hash % partitions` on unsigned
//! 64-bit integers. The test vectors below are the ones the proto and
//! `docs/api.md` quote; other implementations can check themselves against
//! them.

/// The FNV-1a 64-bit offset basis: the hash of the empty input.
pub const FNV1A64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// The FNV-1a 64-bit prime.
pub const FNV1A64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit: for each byte, `hash ^= byte` then `hash *= prime`,
/// wrapping modulo 2^64, starting from the offset basis.
#[must_use]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV1A64_OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV1A64_PRIME)
    })
}

/// The partition, `0..partitions`, that `key` routes to:
/// `fnv1a64(key) % partitions`.
///
/// Never panics: a topic always has at least one partition, but for
/// `partitions == 0` this returns 0 rather than dividing by zero.
#[must_use]
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    let partition = fnv1a64(key) % u64::from(partitions);
    // The remainder is below `partitions`, itself a `u32`, so this never
    // fails; the fallback only keeps the function free of panics.
    u32::try_from(partition).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_test_vectors() {
        // From the FNV reference test suite (Fowler, Noll, Vo).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fnv1a64_matches_documented_key_vectors() {
        // Quoted in the proto comment of `AppendRequest.partition_key`.
        assert_eq!(fnv1a64(b"order-42"), 0x7d1d_eb86_a056_62d4);
        assert_eq!(fnv1a64(b"user-1234"), 0x5510_5776_24a4_5805);
    }

    #[test]
    fn partition_for_key_is_hash_modulo_partitions() {
        assert_eq!(partition_for_key(b"order-42", 12), 8);
        assert_eq!(partition_for_key(b"order-42", 8), 4);
        assert_eq!(partition_for_key(b"order-42", 3), 2);
        assert_eq!(partition_for_key(b"a", 8), 4);
        assert_eq!(partition_for_key(b"foobar", 12), 0);
        assert_eq!(partition_for_key(b"user-1234", 12), 5);
        assert_eq!(partition_for_key(b"", 8), 5);
    }

    #[test]
    fn partition_for_key_with_one_partition_is_zero() {
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    fn partition_for_key_with_zero_partitions_returns_zero_without_panicking() {
        assert_eq!(partition_for_key(b"anything", 0), 0);
        assert_eq!(partition_for_key(b"", 0), 0);
    }

    #[test]
    fn partition_for_key_stays_in_range_for_large_partition_counts() {
        for partitions in [2, 7, 10_000, u32::MAX] {
            for key in [&b""[..], b"a", b"order-42", &[0xff; 64]] {
                assert!(partition_for_key(key, partitions) < partitions);
            }
        }
    }
}
