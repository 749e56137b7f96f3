//! The test-only hooks the deterministic simulator (`tests/sim.rs`) stands
//! on: a manual wall clock, a simulated kill (`Store::crash`), replica ids
//! and engine sessions from a seed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vsmcp_crdt_core::hlc::WallClock;
use vsmcp_crdt_core::store::{Access, Durability, Mutation, Store, StoreConfig};
use vsmcp_crdt_core::sync::{Engine, EngineConfig};
use vsmcp_crdt_core::{Error, Kind, Timestamp, Value};

fn counter(s: &Store, id: &[u8]) -> i128 {
    s.read(id, Access::MayBlock, |v| match v.value() {
        Value::Counter(n) => n,
        other => panic!("not a counter: {other:?}"),
    })
    .unwrap()
}

fn incr(s: &Store, id: &[u8], n: i128) {
    s.update(id, Mutation::Increment(n), Access::MayBlock, |_| ())
        .unwrap();
}

fn config(dir: &std::path::Path, durability: Durability) -> StoreConfig {
    let mut c = StoreConfig::new(dir, b"hooks");
    c.durability = durability;
    // The flush thread never fires on its own: flushes are the test's.
    c.flush_interval_ms = 3_600_000;
    c
}

#[test]
fn a_manual_wall_clock_drives_the_hlc_and_the_skew_check() {
    let dir = tempfile::tempdir().unwrap();
    let wall = Arc::new(AtomicU64::new(5_000_000));
    let mut c = config(dir.path(), Durability::Relaxed);
    c.wall_clock = WallClock::Manual(wall.clone());
    c.max_clock_offset_ms = 500;
    let s = Store::open(c).unwrap();
    assert_eq!(s.now_ms(), 5_000_000);
    assert_eq!(s.tick_clock(), Timestamp::new(5_000_000, 0));
    assert_eq!(s.tick_clock(), Timestamp::new(5_000_000, 1));
    wall.store(5_000_100, Ordering::Release);
    assert_eq!(s.tick_clock(), Timestamp::new(5_000_100, 0));
    // A peer 600 ms ahead of this store's (manual) time is refused.
    assert!(matches!(
        s.receive_clock(Timestamp::new(5_000_700, 0)),
        Err(Error::ClockSkew { ahead_ms: 600 })
    ));
    assert!(s.receive_clock(Timestamp::new(5_000_500, 0)).is_ok());
    // Metadata times come from it too.
    s.create(b"c", Kind::GCounter, Access::MayBlock).unwrap();
    let (meta, _) = s.metadata(b"c", Access::MayBlock).unwrap();
    assert_eq!(meta.created_at, 5_000_100);
}

#[test]
fn a_crash_loses_unflushed_relaxed_writes_and_keeps_what_reached_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(config(dir.path(), Durability::Relaxed)).unwrap();
    s.create(b"c", Kind::GCounter, Access::MayBlock).unwrap();
    incr(&s, b"c", 5);
    s.flush().unwrap();
    incr(&s, b"c", 7);
    s.create(b"lost", Kind::GCounter, Access::MayBlock).unwrap();
    assert!(s.stats().pending_writes > 0);
    let incarnation = s.incarnation();
    s.crash();
    assert!(s.is_closed());
    assert_eq!(
        s.update(b"c", Mutation::Increment(1), Access::MayBlock, |_| ())
            .err(),
        Some(Error::Closed)
    );
    s.crash();
    drop(s);
    // The directory opens again at once: a new incarnation with what was
    // flushed, without what was pending.
    let s = Store::open(config(dir.path(), Durability::Relaxed)).unwrap();
    assert_eq!(s.incarnation(), incarnation + 1);
    assert_eq!(counter(&s, b"c"), 5);
    assert_eq!(
        s.metadata(b"lost", Access::MayBlock).err(),
        Some(Error::NotFound)
    );
}

#[test]
fn a_crash_keeps_every_acknowledged_strict_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(config(dir.path(), Durability::Strict)).unwrap();
    s.create(b"c", Kind::PNCounter, Access::MayBlock).unwrap();
    incr(&s, b"c", 3);
    incr(&s, b"c", -10);
    s.create(b"d", Kind::GCounter, Access::MayBlock).unwrap();
    s.delete(b"d", Access::MayBlock).unwrap();
    s.crash();
    drop(s);
    let s = Store::open(config(dir.path(), Durability::Strict)).unwrap();
    assert_eq!(counter(&s, b"c"), -7);
    assert_eq!(
        s.metadata(b"d", Access::MayBlock).err(),
        Some(Error::NotFound)
    );
}

#[test]
fn seeded_replica_ids_repeat_and_a_restored_backup_takes_its_own() {
    let parent = tempfile::tempdir().unwrap();
    let open = |name: &str, seed: u64| {
        let mut c = config(&parent.path().join(name), Durability::Relaxed);
        c.test_replica_seed = Some(seed);
        Store::open(c).unwrap()
    };
    let a = open("a", 7);
    let b = open("b", 7);
    let c = open("c", 8);
    let dir = |s: &Store| s.replica_id().as_bytes()[..16].to_vec();
    assert_eq!(dir(&a), dir(&b));
    assert_ne!(dir(&a), dir(&c));
    // The seed only names a directory that has no id yet.
    let a_dir = dir(&a);
    a.close(std::time::Duration::from_secs(1)).unwrap();
    drop(a);
    assert_eq!(dir(&open("a", 99)), a_dir);
    // A restored backup forgets the id and takes its seed's.
    let copy = parent.path().join("copy");
    c.backup(&copy).unwrap();
    let mut cfg = config(&copy, Durability::Relaxed);
    cfg.test_replica_seed = Some(9);
    let restored = Store::open(cfg).unwrap();
    assert_eq!(dir(&restored), dir(&open("d", 9)));
}

#[test]
fn an_engine_session_can_be_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(config(dir.path(), Durability::Relaxed)).unwrap();
    let cfg = EngineConfig {
        session: Some(0x0102_0304_0506_0708),
        ..EngineConfig::default()
    };
    let e = Engine::new(&s, cfg.clone());
    let me = e.me().as_bytes();
    assert_eq!(&me[me.len() - 8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(Engine::new(&s, cfg).me(), e.me());
    assert_ne!(Engine::new(&s, EngineConfig::default()).me(), e.me());
}
