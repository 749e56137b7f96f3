//! A stable 64-bit hash: the same on every node, build and run, because
//! replicas compare its values (sync digests, the value hash of an OR-Set).
//! FNV-1a 64 with a SplitMix64 finalizer, with fixed constants; not
//! collision resistant against an adversary (see `sync::digest`).

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A stable 64-bit hash: FNV-1a over the parts, each prefixed by its length
/// (so `("ab", "c")` and `("a", "bc")` differ), then a SplitMix64 finalizer.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    };
    for p in parts {
        feed(&(p.len() as u64).to_le_bytes());
        feed(p);
    }
    mix(h)
}

pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
