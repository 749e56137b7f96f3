//! The tiered store against a real RocksDB in a temporary directory.

use vsmcp_crdt_core::crdt::{Crdt, Kind, Op, Value};
use vsmcp_crdt_core::store::{Access, Durability, Mutation, Store, StoreConfig, Tier};
use vsmcp_crdt_core::Error;

fn cfg(dir: &std::path::Path) -> StoreConfig {
    StoreConfig::new(dir, b"node-a")
}

fn counter(store: &Store, id: &[u8]) -> i128 {
    store
        .read(id, Access::MayBlock, |c| match c.value() {
            Value::Counter(n) => n,
            other => panic!("not a counter: {other:?}"),
        })
        .unwrap()
}

fn set_len(store: &Store, id: &[u8]) -> usize {
    store
        .read(id, Access::MayBlock, |c| match c.value() {
            Value::Set(s) => s.len(),
            other => panic!("not a set: {other:?}"),
        })
        .unwrap()
}

#[test]
fn create_update_read_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(dir.path())).unwrap();
    s.create(b"c", Kind::GCounter, Access::MemoryOnly).unwrap();
    assert_eq!(
        s.create(b"c", Kind::GCounter, Access::MemoryOnly),
        Err(Error::AlreadyExists)
    );
    for _ in 0..10 {
        s.update(b"c", Mutation::Increment(2), Access::MemoryOnly, |_| ())
            .unwrap();
    }
    s.update(b"c", Mutation::Increment(-5), Access::MemoryOnly, |_| ())
        .unwrap();
    assert_eq!(counter(&s, b"c"), 20);
    assert_eq!(
        s.update(b"c", Mutation::Add(b"x"), Access::MemoryOnly, |_| ())
            .err(),
        Some(Error::UnsupportedOperation)
    );
    assert_eq!(
        s.update(b"missing", Mutation::Increment(1), Access::MayBlock, |_| ())
            .err(),
        Some(Error::NotFound)
    );
    s.create(b"p", Kind::PNCounter, Access::MemoryOnly).unwrap();
    s.update(b"p", Mutation::Decrement(7), Access::MemoryOnly, |_| ())
        .unwrap();
    s.update(b"p", Mutation::Increment(-1), Access::MemoryOnly, |_| ())
        .unwrap();
    assert_eq!(counter(&s, b"p"), -8);
}

#[test]
fn data_survives_restart_and_restart_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(cfg(dir.path())).unwrap();
        for i in 0..500u32 {
            let id = i.to_be_bytes();
            s.create(&id, Kind::GCounter, Access::MemoryOnly).unwrap();
            s.update(
                &id,
                Mutation::Increment(i as i128 + 1),
                Access::MemoryOnly,
                |_| (),
            )
            .unwrap();
        }
        s.create(b"set", Kind::ORSet, Access::MemoryOnly).unwrap();
        for e in 0..100u32 {
            s.update(
                b"set",
                Mutation::Add(&e.to_be_bytes()),
                Access::MemoryOnly,
                |_| (),
            )
            .unwrap();
        }
        s.update(
            b"set",
            Mutation::Remove(&7u32.to_be_bytes()),
            Access::MemoryOnly,
            |_| (),
        )
        .unwrap();
        s.close(std::time::Duration::from_secs(1)).unwrap();
    }
    let s = Store::open(cfg(dir.path())).unwrap();
    let st = s.stats();
    assert_eq!((st.hot, st.warm), (0, 0));
    assert_eq!(st.incarnation, 2);
    // A normal-scheduler call may serve a cold id from RocksDB's memtable or
    // block cache, but never blocks: it answers Some or asks for the disk.
    s.read(&3u32.to_be_bytes(), Access::MemoryOnly, |_| ())
        .unwrap();
    for i in 0..500u32 {
        assert_eq!(counter(&s, &i.to_be_bytes()), i as i128 + 1);
    }
    assert_eq!(set_len(&s, b"set"), 99);
    assert_eq!(s.ids().unwrap().len(), 501);
}

#[test]
fn tiers_respect_limits_and_promote_on_access() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.hot_limit = 2;
    c.warm_limit = 3;
    c.access_threshold = 2;
    let s = Store::open(c).unwrap();
    for i in 0..10u8 {
        s.create(&[i], Kind::GCounter, Access::MayBlock).unwrap();
        s.update(
            &[i],
            Mutation::Increment(i as i128 + 1),
            Access::MayBlock,
            |_| (),
        )
        .unwrap();
    }
    let st = s.stats();
    assert!(st.hot <= 2 && st.warm <= 3, "{st:?}");
    let tier = |id: u8| s.metadata(&[id], Access::MayBlock).unwrap().1;
    assert_eq!(tier(0), Tier::Cold);
    assert_eq!(counter(&s, &[0]), 1);
    assert_eq!(tier(0), Tier::Warm);
    assert_eq!(counter(&s, &[0]), 1);
    assert_eq!(tier(0), Tier::Hot);
    for i in 0..10u8 {
        assert_eq!(counter(&s, &[i]), i as i128 + 1);
    }
    let st = s.stats();
    assert!(st.hot <= 2 && st.warm <= 3, "{st:?}");
    // Two decay passes without access: everything leaves memory.
    s.decay();
    s.decay();
    s.decay();
    let st = s.stats();
    assert_eq!((st.hot, st.warm), (0, 0), "{st:?}");
    assert_eq!(counter(&s, &[9]), 10);
}

#[test]
fn pending_writes_of_cold_items_are_visible_before_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.hot_limit = 1;
    c.warm_limit = 0;
    c.flush_interval_ms = 60_000;
    let s = Store::open(c).unwrap();
    s.create(b"a", Kind::AWSet, Access::MemoryOnly).unwrap();
    s.update(b"a", Mutation::Add(b"x"), Access::MemoryOnly, |_| ())
        .unwrap();
    // Creating more ids pushes "a" out of memory before any flush.
    for i in 0..5u8 {
        s.create(&[i], Kind::GCounter, Access::MayBlock).unwrap();
    }
    assert_eq!(s.metadata(b"a", Access::MayBlock).unwrap().1, Tier::Cold);
    assert_eq!(set_len(&s, b"a"), 1);
    s.delete(b"a", Access::MayBlock).unwrap();
    assert_eq!(
        s.read(b"a", Access::MayBlock, |_| ()).err(),
        Some(Error::NotFound)
    );
    s.create(b"a", Kind::GCounter, Access::MayBlock).unwrap();
    s.flush().unwrap();
    assert_eq!(counter(&s, b"a"), 0);
}

#[test]
fn failing_writes_are_refused_and_reads_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(dir.path())).unwrap();
    s.create(b"c", Kind::GCounter, Access::MemoryOnly).unwrap();
    s.update(b"c", Mutation::Increment(1), Access::MemoryOnly, |_| ())
        .unwrap();
    s.set_fail_writes(true);
    assert!(matches!(
        s.update(b"c", Mutation::Increment(1), Access::MemoryOnly, |_| ()),
        Err(Error::Storage(_))
    ));
    assert_eq!(counter(&s, b"c"), 1);
    s.set_fail_writes(false);
    s.update(b"c", Mutation::Increment(1), Access::MemoryOnly, |_| ())
        .unwrap();
    assert_eq!(counter(&s, b"c"), 2);
}

#[test]
fn strict_mode_writes_need_the_disk_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.durability = Durability::Strict;
    let s = Store::open(c).unwrap();
    assert_eq!(
        s.create(b"c", Kind::LwwRegister, Access::MemoryOnly),
        Err(Error::WouldBlock)
    );
    s.create(b"c", Kind::LwwRegister, Access::MayBlock).unwrap();
    s.update(b"c", Mutation::Set(b"v1"), Access::MayBlock, |_| ())
        .unwrap();
    let before = s.clock();
    drop(s);
    let s = Store::open(cfg(dir.path())).unwrap();
    assert!(s.clock() >= before);
    let v = s
        .read(b"c", Access::MayBlock, |c| match c.crdt {
            Crdt::LwwRegister(r) => r.value().map(|v| v.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(v.as_deref(), Some(&b"v1"[..]));
}

#[test]
fn a_second_open_of_the_same_path_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.flush_interval_ms = 60_000;
    let a = Store::open(c.clone()).unwrap();
    a.create(b"c", Kind::GCounter, Access::MemoryOnly).unwrap();
    a.update(b"c", Mutation::Increment(3), Access::MemoryOnly, |_| ())
        .unwrap();
    let b = Store::open(c).unwrap();
    assert!(a.is_closed());
    assert_eq!(
        a.read(b"c", Access::MemoryOnly, |_| ()).err(),
        Some(Error::Closed)
    );
    assert_eq!(counter(&b, b"c"), 3);
}

#[test]
fn foreign_directory_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    match Store::open(cfg(dir.path())) {
        Err(Error::Storage(msg)) => assert!(msg.contains(&*dir.path().to_string_lossy()), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a foreign directory"),
    }
}

#[test]
fn remote_state_merges_into_the_state_the_api_reads() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(cfg(da.path())).unwrap();
    let b = Store::open(StoreConfig::new(db.path(), b"node-b")).unwrap();
    a.create(b"s", Kind::ORSet, Access::MemoryOnly).unwrap();
    a.update(b"s", Mutation::Add(b"x"), Access::MemoryOnly, |_| ())
        .unwrap();
    let (meta, _) = a.metadata(b"s", Access::MayBlock).unwrap();
    let state = a.read(b"s", Access::MemoryOnly, |c| c.clone()).unwrap();
    // Unknown id on b: created from the remote state.
    b.merge(b"s", &meta, &state, Access::MayBlock).unwrap();
    assert_eq!(set_len(&b, b"s"), 1);
    // Concurrent remove on a and add on b converge after exchanging states.
    a.update(b"s", Mutation::Remove(b"x"), Access::MemoryOnly, |_| ())
        .unwrap();
    b.update(b"s", Mutation::Add(b"y"), Access::MemoryOnly, |_| ())
        .unwrap();
    let sa = a.read(b"s", Access::MemoryOnly, |c| c.clone()).unwrap();
    let sb = b.read(b"s", Access::MemoryOnly, |c| c.clone()).unwrap();
    a.merge(b"s", &meta, &sb, Access::MayBlock).unwrap();
    b.merge(b"s", &meta, &sa, Access::MayBlock).unwrap();
    let va = a.read(b"s", Access::MemoryOnly, |c| c.clone()).unwrap();
    let vb = b.read(b"s", Access::MemoryOnly, |c| c.clone()).unwrap();
    assert_eq!(va, vb);
    assert_eq!(set_len(&a, b"s"), 1);
    // A kind mismatch is refused.
    let wrong = Crdt::new(Kind::GCounter);
    assert_eq!(
        b.merge(b"s", &meta, &wrong, Access::MayBlock),
        Err(Error::TypeMismatch)
    );
    // The merged state is durable.
    b.close(std::time::Duration::from_secs(1)).unwrap();
    drop(b);
    let b = Store::open(StoreConfig::new(db.path(), b"node-b")).unwrap();
    assert_eq!(set_len(&b, b"s"), 1);
}

#[test]
fn close_releases_the_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(cfg(dir.path())).unwrap();
    a.create(b"c", Kind::GCounter, Access::MemoryOnly).unwrap();
    a.close(std::time::Duration::from_secs(1)).unwrap();
    // `a` is still referenced, but its RocksDB is closed: the directory can
    // be removed and a new store there starts empty, with no lock to wait for.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let b = Store::open(cfg(dir.path())).unwrap();
    assert_eq!(
        b.read(b"c", Access::MayBlock, |_| ()).err(),
        Some(Error::NotFound)
    );
    assert_eq!(b.stats().incarnation, 1);
    assert_eq!(a.stats().cold_estimate, 0);
    drop(a);
    b.create(b"c", Kind::GCounter, Access::MayBlock).unwrap();
}

fn strict(dir: &std::path::Path) -> Store {
    let mut c = cfg(dir);
    c.durability = Durability::Strict;
    Store::open(c).unwrap()
}

fn snapshot(s: &Store, id: &[u8]) -> Option<(Crdt, u64)> {
    let crdt = s.read(id, Access::MayBlock, |c| c.clone()).ok()?;
    let (meta, _) = s.metadata(id, Access::MayBlock).ok()?;
    Some((crdt, meta.updated_at))
}

/// A strict operation that fails leaves memory exactly as it
/// was (state, `updated_at`, presence), and nothing of it shows later.
#[test]
fn a_failed_strict_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = strict(dir.path());
    for (id, kind) in [
        (&b"g"[..], Kind::GCounter),
        (b"o", Kind::ORSet),
        (b"r", Kind::LwwRegister),
    ] {
        s.create(id, kind, Access::MayBlock).unwrap();
    }
    s.update(b"g", Mutation::Increment(2), Access::MayBlock, |_| ())
        .unwrap();
    s.update(b"o", Mutation::Add(b"x"), Access::MayBlock, |_| ())
        .unwrap();
    s.update(b"r", Mutation::Set(b"v1"), Access::MayBlock, |_| ())
        .unwrap();
    // Not a wait: lets the clock move, so that a failed write that still
    // touched `updated_at` would show in the comparison below.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let before: Vec<_> = [&b"g"[..], b"o", b"r"]
        .iter()
        .map(|id| snapshot(&s, id))
        .collect();
    s.set_fail_writes(true);
    for (id, m) in [
        (&b"g"[..], Mutation::Increment(5)),
        (b"o", Mutation::Add(b"y")),
        (b"o", Mutation::Remove(b"x")),
        (b"r", Mutation::Set(b"v2")),
    ] {
        assert!(matches!(
            s.update(id, m, Access::MayBlock, |_| ()),
            Err(Error::Storage(_))
        ));
    }
    assert!(matches!(
        s.delete(b"g", Access::MayBlock),
        Err(Error::Storage(_))
    ));
    assert!(matches!(
        s.create(b"new", Kind::GCounter, Access::MayBlock),
        Err(Error::Storage(_))
    ));
    let state = s.read(b"o", Access::MayBlock, |c| c.clone()).unwrap();
    let (meta, _) = s.metadata(b"o", Access::MayBlock).unwrap();
    assert!(matches!(
        s.merge(b"o", &meta, &state, Access::MayBlock),
        Err(Error::Storage(_))
    ));
    let after: Vec<_> = [&b"g"[..], b"o", b"r"]
        .iter()
        .map(|id| snapshot(&s, id))
        .collect();
    assert_eq!(before, after);
    assert!(s.read(b"new", Access::MayBlock, |_| ()).is_err());
    // The next successful write does not carry the failed one with it.
    s.set_fail_writes(false);
    s.update(b"g", Mutation::Increment(1), Access::MayBlock, |_| ())
        .unwrap();
    assert_eq!(counter(&s, b"g"), 3);
    s.close(std::time::Duration::from_secs(1)).unwrap();
    drop(s);
    let s = strict(dir.path());
    assert_eq!(counter(&s, b"g"), 3);
    assert_eq!(set_len(&s, b"o"), 1);
}

/// When the final flush fails, close retries until its
/// deadline and then reports the ids whose acknowledged writes are lost.
#[test]
fn close_reports_unflushed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.flush_interval_ms = 60_000;
    let s = Store::open(c).unwrap();
    for id in [&b"a"[..], b"b", b"c"] {
        s.create(id, Kind::GCounter, Access::MemoryOnly).unwrap();
    }
    s.set_fail_writes(true);
    let t = std::time::Instant::now();
    match s.close(std::time::Duration::from_millis(200)) {
        Err(Error::Unflushed { ids, .. }) => assert_eq!(ids, 3),
        other => panic!("expected Unflushed, got {other:?}"),
    }
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(200),
        "no retry"
    );
}

/// A successor on the same path takes over the pending writes
/// of a predecessor whose disk refuses them, without waiting, and writes
/// them once the disk accepts writes again.
#[test]
fn hand_over_passes_pending_writes_to_the_successor() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.flush_interval_ms = 60_000;
    let a = Store::open(c.clone()).unwrap();
    a.create(b"c", Kind::GCounter, Access::MemoryOnly).unwrap();
    a.update(b"c", Mutation::Increment(7), Access::MemoryOnly, |_| ())
        .unwrap();
    a.set_fail_writes(true);
    let b = Store::open(c.clone()).unwrap();
    assert!(a.is_closed());
    assert_eq!(counter(&b, b"c"), 7);
    b.update(b"c", Mutation::Increment(1), Access::MemoryOnly, |_| ())
        .unwrap();
    b.close(std::time::Duration::from_secs(1)).unwrap();
    drop((a, b));
    let s = Store::open(c).unwrap();
    assert_eq!(counter(&s, b"c"), 8);
}

/// Writes resume once the disk accepts them again, also after
/// a failed strict write left nothing pending to retry.
#[test]
fn writes_resume_after_the_disk_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = strict(dir.path());
    s.create(b"c", Kind::GCounter, Access::MayBlock).unwrap();
    s.set_fail_writes(true);
    assert!(s
        .update(b"c", Mutation::Increment(1), Access::MayBlock, |_| ())
        .is_err());
    s.set_fail_writes(false);
    s.update(b"c", Mutation::Increment(1), Access::MayBlock, |_| ())
        .unwrap();
    assert_eq!(counter(&s, b"c"), 1);
}

/// O(n) work on a large item is refused on a normal scheduler
/// (`WouldBlock`) before anything changes, and done on a dirty one.
#[test]
fn large_items_are_not_worked_on_inline() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.hot_limit = 1;
    c.warm_limit = 10;
    let s = Store::open(c).unwrap();
    s.create(b"big", Kind::ORSet, Access::MemoryOnly).unwrap();
    add_many(&s, b"big", 20_000);
    // Replying with the value is O(n): refused inline, before the add.
    assert_eq!(
        s.update_with(
            b"big",
            Mutation::Add(b"new"),
            Access::MemoryOnly,
            true,
            |_| ()
        ),
        Err(Error::WouldBlock)
    );
    assert_eq!(set_len(&s, b"big"), 20_000);
    s.update_with(
        b"big",
        Mutation::Add(b"new"),
        Access::MayBlock,
        true,
        |_| (),
    )
    .unwrap();
    // Pushed out of the hot tier by a small item: too large to encode
    // inline, so it leaves memory instead of going warm.
    s.create(b"small", Kind::GCounter, Access::MemoryOnly)
        .unwrap();
    s.create(b"small2", Kind::GCounter, Access::MemoryOnly)
        .unwrap();
    let tier = s.metadata(b"big", Access::MayBlock).unwrap().1;
    assert_eq!(tier, Tier::Cold);
    s.flush().unwrap();
    // Loading it back inline would decode megabytes: refused.
    assert_eq!(
        s.read(b"big", Access::MemoryOnly, |_| ()).err(),
        Some(Error::WouldBlock)
    );
    assert_eq!(set_len(&s, b"big"), 20_001);
}

/// Decay demotes a large hot item without encoding it.
#[test]
fn decay_sends_large_items_cold_and_keeps_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(dir.path())).unwrap();
    s.create(b"big", Kind::ORSet, Access::MemoryOnly).unwrap();
    add_many(&s, b"big", 20_000);
    // 20,000 accesses halve to below the threshold, then it goes.
    for _ in 0..20 {
        s.decay();
    }
    assert_eq!(s.metadata(b"big", Access::MayBlock).unwrap().1, Tier::Cold);
    assert_eq!(set_len(&s, b"big"), 20_000);
}

/// Add `n` elements as the NIF does: on a normal scheduler, repeated on a
/// dirty one when the store answers `WouldBlock` (a table about to grow).
fn add_many(s: &Store, id: &[u8], n: u32) {
    for i in 0..n {
        let e = i.to_be_bytes();
        match s.update(id, Mutation::Add(&e), Access::MemoryOnly, |_| ()) {
            Err(Error::WouldBlock) => s
                .update(id, Mutation::Add(&e), Access::MayBlock, |_| ())
                .unwrap(),
            other => other.unwrap(),
        }
    }
}
/// The contract a cache of built values (the NIF's `set_cache`) relies on:
/// `View::version` moves by exactly one per change of the state (a local
/// update, strict or relaxed, or a merge), never on a read, and is never
/// reused for another state of the same id; `View::ext` is kept while the
/// item stays hot and is gone after delete, demotion or a reload.
#[test]
fn view_version_moves_once_per_change_and_ext_lives_while_hot() {
    fn mark(s: &Store, id: &[u8]) -> u64 {
        s.read(id, Access::MayBlock, |v| {
            *v.ext.expect("hot items have an ext slot") = Some(Box::new(7u32));
            v.version
        })
        .unwrap()
    }
    fn seen(s: &Store, id: &[u8]) -> (u64, Option<bool>) {
        s.read(id, Access::MayBlock, |v| {
            (v.version, v.ext.map(|e| e.is_some()))
        })
        .unwrap()
    }
    for durability in [Durability::Relaxed, Durability::Strict] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.durability = durability;
        let s = Store::open(c).unwrap();
        s.create(b"s", Kind::ORSet, Access::MayBlock).unwrap();
        let v0 = mark(&s, b"s");
        assert_eq!(seen(&s, b"s"), (v0, Some(true)), "a read changes nothing");
        let ops = [
            Mutation::Add(b"x"),
            Mutation::Add(b"x"),
            Mutation::Remove(b"x"),
            Mutation::Remove(b"absent"),
            Mutation::Add(b"y"),
        ];
        for (i, m) in ops.into_iter().enumerate() {
            let v = s.update(b"s", m, Access::MayBlock, |v| v.version).unwrap();
            assert_eq!(v, v0 + i as u64 + 1, "{durability:?} {m:?}");
        }
        let v5 = v0 + ops.len() as u64;
        // A merge (e.g. a peer's state) is one change too.
        let (meta, _) = s.metadata(b"s", Access::MayBlock).unwrap();
        let mut other = Crdt::new(Kind::ORSet);
        other
            .mutate(&vsmcp_crdt_core::ReplicaId::new(b"peer"), Op::Add(b"z"))
            .unwrap();
        s.merge(b"s", &meta, &other, Access::MayBlock).unwrap();
        assert_eq!(seen(&s, b"s"), (v5 + 1, Some(true)));
        // Deleted and created again: a version never seen before, no ext.
        s.delete(b"s", Access::MayBlock).unwrap();
        s.create(b"s", Kind::ORSet, Access::MayBlock).unwrap();
        let (v, ext) = seen(&s, b"s");
        assert!(!(v0..=v5 + 1).contains(&v), "{v} reused");
        assert_eq!(ext, Some(false));
        s.close(std::time::Duration::from_secs(1)).unwrap();
    }
}

#[test]
fn ext_goes_when_an_item_leaves_the_hot_tier() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(dir.path())).unwrap();
    let set_ext = |id: &[u8]| {
        s.read(id, Access::MayBlock, |v| {
            *v.ext.unwrap() = Some(Box::new(1u8));
            v.version
        })
        .unwrap()
    };
    let ext_of = |id: &[u8]| {
        s.read(id, Access::MayBlock, |v| v.ext.map(|e| e.is_some()))
            .unwrap()
    };
    // Small: demoted to warm (no ext slot there), then promoted again.
    s.create(b"small", Kind::ORSet, Access::MayBlock).unwrap();
    s.update(b"small", Mutation::Add(b"e"), Access::MayBlock, |_| ())
        .unwrap();
    let v = set_ext(b"small");
    s.decay();
    s.decay();
    assert_eq!(
        s.metadata(b"small", Access::MayBlock).unwrap().1,
        Tier::Warm
    );
    assert_eq!(ext_of(b"small"), None);
    for _ in 0..3 {
        ext_of(b"small");
    }
    assert_eq!(s.metadata(b"small", Access::MayBlock).unwrap().1, Tier::Hot);
    let (v2, ext) = s
        .read(b"small", Access::MayBlock, |v| {
            (v.version, v.ext.map(|e| e.is_some()))
        })
        .unwrap();
    assert_eq!(ext, Some(false));
    assert_eq!(v2, v, "promotion does not change the state");
    // Large: leaves memory with its ext; reloaded under a new version.
    s.create(b"big", Kind::ORSet, Access::MayBlock).unwrap();
    for i in 0u32..20_000 {
        s.update(
            b"big",
            Mutation::Add(&i.to_be_bytes()),
            Access::MayBlock,
            |_| (),
        )
        .unwrap();
    }
    let v = set_ext(b"big");
    for _ in 0..20 {
        s.decay();
    }
    assert_eq!(s.metadata(b"big", Access::MayBlock).unwrap().1, Tier::Cold);
    let (v2, ext) = s
        .read(b"big", Access::MayBlock, |v| {
            (v.version, v.ext.map(|e| e.is_some()))
        })
        .unwrap();
    assert_ne!(v2, v);
    assert_ne!(ext, Some(true));
}

/// Replica identity: two directories configured with the same
/// node id are different replicas, so their increments add up; a restart
/// keeps the directory's id with a new incarnation.
#[test]
fn same_node_id_in_two_directories_are_two_replicas() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(StoreConfig::new(da.path(), b"same")).unwrap();
    let b = Store::open(StoreConfig::new(db.path(), b"same")).unwrap();
    assert_ne!(a.replica_id(), b.replica_id());
    for (s, n) in [(&a, 5), (&b, 7)] {
        s.create(b"c", Kind::GCounter, Access::MayBlock).unwrap();
        s.update(b"c", Mutation::Increment(n), Access::MayBlock, |_| ())
            .unwrap();
    }
    let (meta, _) = a.metadata(b"c", Access::MayBlock).unwrap();
    let sa = a.read(b"c", Access::MayBlock, |c| c.clone()).unwrap();
    let sb = b.read(b"c", Access::MayBlock, |c| c.clone()).unwrap();
    a.merge(b"c", &meta, &sb, Access::MayBlock).unwrap();
    b.merge(b"c", &meta, &sa, Access::MayBlock).unwrap();
    assert_eq!(counter(&a, b"c"), 12);
    assert_eq!(counter(&b, b"c"), 12);
    let before = a.replica_id().as_bytes().to_vec();
    a.close(std::time::Duration::from_secs(1)).unwrap();
    drop(a);
    let a = Store::open(StoreConfig::new(da.path(), b"same")).unwrap();
    let after = a.replica_id().as_bytes();
    assert_eq!(before[..16], after[..16], "the directory's id changed");
    assert_ne!(before, after, "the incarnation did not change");
}

/// Collecting the remove tokens of a set held in the warm tier keeps it
/// warm: the tiers count their items, and a collected state installed as
/// hot in a warm slot made the next demotion underflow the hot count (a
/// panic in `decay`, found by the simulator, seed 1).
#[test]
fn collecting_a_warm_set_keeps_the_tier_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.hot_limit = 1;
    c.warm_limit = 10;
    let s = Store::open(c).unwrap();
    s.create(b"set", Kind::ORSet, Access::MayBlock).unwrap();
    s.update(b"set", Mutation::Add(b"a"), Access::MayBlock, |_| ())
        .unwrap();
    s.update(b"set", Mutation::Remove(b"a"), Access::MayBlock, |_| ())
        .unwrap();
    // Another item pushes the set out of the hot tier.
    s.create(b"other", Kind::GCounter, Access::MayBlock)
        .unwrap();
    for _ in 0..3 {
        if s.metadata(b"set", Access::MayBlock).unwrap().1 == Tier::Warm {
            break;
        }
        s.decay();
    }
    assert_eq!(s.metadata(b"set", Access::MayBlock).unwrap().1, Tier::Warm);
    let gen = s.metadata(b"set", Access::MayBlock).unwrap().0.gen;
    let stable = [(s.replica_id().clone(), u64::MAX)];
    assert_eq!(s.collect(b"set", &gen, &stable), Ok(1));
    for _ in 0..4 {
        s.decay();
    }
    assert_eq!(set_len(&s, b"set"), 0);
}

/// `memory_budget` sizes RocksDB: a quarter as block cache (unless
/// `cache_bytes` is given), an eighth per memtable, the log flushed beyond
/// a quarter; a tiny budget acts as the minimum, a huge one is capped.
#[test]
fn memory_budget_sizes_rocksdb() {
    use vsmcp_crdt_core::store::config::{DEFAULT_MEMORY_BUDGET, MIN_MEMORY_BUDGET};
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    assert_eq!(c.memory_budget, DEFAULT_MEMORY_BUDGET);
    let m = c.rocks_memory();
    assert_eq!(
        (m.cache_bytes, m.write_buffer_bytes, m.max_wal_bytes),
        (64 << 20, 32 << 20, 64 << 20)
    );
    c.memory_budget = 0;
    let m = c.rocks_memory();
    assert_eq!(m.write_buffer_bytes, MIN_MEMORY_BUDGET / 8);
    c.memory_budget = 1 << 48;
    c.cache_bytes = Some(5 << 20);
    let m = c.rocks_memory();
    assert_eq!(
        (m.cache_bytes, m.write_buffer_bytes, m.max_wal_bytes),
        (5 << 20, 256 << 20, 1 << 30)
    );

    // RocksDB takes it: with the smallest budget (4 MiB memtables) 20 MiB
    // of writes are flushed as they come instead of held in a memtable.
    let mut c = cfg(dir.path());
    c.memory_budget = MIN_MEMORY_BUDGET;
    let s = Store::open(c).unwrap();
    let value = vec![7u8; 1000];
    for i in 0..20_000u32 {
        let id = i.to_be_bytes();
        s.create(&id, Kind::LwwRegister, Access::MayBlock).unwrap();
        s.update(&id, Mutation::Set(&value), Access::MayBlock, |_| ())
            .unwrap();
    }
    s.flush().unwrap();
    // RocksDB flushes full memtables in the background: on a loaded
    // machine a few may still be queued just after the writes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut d = s.info().unwrap().disk;
    while d.memtable_bytes > 10 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        d = s.info().unwrap().disk;
    }
    assert!(
        d.memtable_bytes <= 10 << 20,
        "memtables {} B with 4 MiB write buffers",
        d.memtable_bytes
    );
    assert!(d.total_sst_bytes > 0, "nothing flushed to SST files");
}
