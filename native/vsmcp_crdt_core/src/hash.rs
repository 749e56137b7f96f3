//! The hash maps whose iteration order reaches the outside: the store's
//! shard choice and its tombstone and outgoing-change maps, and the sync
//! engine's peers, transfers and digested ids. Their order decides which
//! message carries which entry, so it must replay exactly in the
//! deterministic simulator (`tests/sim.rs`).
//!
//! Normally the hasher is hashbrown's default (foldhash with a per-process
//! random seed: no hash flooding from ids a peer chooses). Built with the
//! test-only `fault-injection` feature it is foldhash with a fixed seed, so
//! a seeded run iterates every such map in the same order each time.
//! Maps only ever looked up (the CRDTs' indexes, the write-behind groups,
//! the log's acknowledgements) keep hashbrown's default: their order never
//! shows.

/// The hasher of [`HashMap`] and [`HashSet`].
#[cfg(not(feature = "fault-injection"))]
pub type RandomState = hashbrown::DefaultHashBuilder;
/// The hasher of [`HashMap`] and [`HashSet`]: a fixed seed in test builds.
#[cfg(feature = "fault-injection")]
pub type RandomState = foldhash::fast::FixedState;

/// A hashbrown map with the crate's hasher; build it with `default()`.
pub type HashMap<K, V> = hashbrown::HashMap<K, V, RandomState>;
/// A hashbrown set with the crate's hasher; build it with `default()`.
pub type HashSet<K> = hashbrown::HashSet<K, RandomState>;
