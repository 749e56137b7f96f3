//! Operations on a running store: backup and restore, listing page by
//! page, and `Store::info`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use vsmcp_crdt_core::crdt::{Crdt, Kind, Value};
use vsmcp_crdt_core::store::cold::admin::BACKUP_OF_KEY;
use vsmcp_crdt_core::store::cold::{ColdTier, REPLICA_KEY};
use vsmcp_crdt_core::store::{Access, Durability, Mutation, Store, StoreConfig, Tier};
use vsmcp_crdt_core::{Error, Timestamp};

fn cfg(dir: &std::path::Path) -> StoreConfig {
    StoreConfig::new(dir, b"node-a")
}

fn state(s: &Store, id: &[u8]) -> Crdt {
    s.read(id, Access::MayBlock, |v| v.crdt.clone()).unwrap()
}

fn counter(s: &Store, id: &[u8]) -> i128 {
    match state(s, id).value() {
        Value::Counter(n) => n,
        other => panic!("not a counter: {other:?}"),
    }
}

fn directory_id(s: &Store) -> Vec<u8> {
    s.replica_id().0[..16].to_vec()
}

/// Every type, some deleted ids, some pending writes.
fn populate(s: &Store) {
    for i in 0..200u32 {
        let id = format!("c{i}");
        s.create(id.as_bytes(), Kind::PNCounter, Access::MayBlock)
            .unwrap();
        s.update(
            id.as_bytes(),
            Mutation::Decrement(i as i128),
            Access::MayBlock,
            |_| (),
        )
        .unwrap();
    }
    for (id, kind) in [(&b"set"[..], Kind::ORSet), (b"aw", Kind::AWSet)] {
        s.create(id, kind, Access::MayBlock).unwrap();
        for e in 0..50u8 {
            s.update(id, Mutation::Add(&[e]), Access::MayBlock, |_| ())
                .unwrap();
        }
        s.update(id, Mutation::Remove(&[7]), Access::MayBlock, |_| ())
            .unwrap();
    }
    s.create(b"reg", Kind::LwwRegister, Access::MayBlock)
        .unwrap();
    s.update(b"reg", Mutation::Set(b"hello"), Access::MayBlock, |_| ())
        .unwrap();
    s.create(b"g", Kind::GCounter, Access::MayBlock).unwrap();
    s.update(b"g", Mutation::Increment(42), Access::MayBlock, |_| ())
        .unwrap();
    // Deletes of a syncing store leave tombstones (a backup keeps them).
    let token = s.start_capture();
    for i in 0..10u32 {
        s.delete(format!("c{i}").as_bytes(), Access::MayBlock)
            .unwrap();
    }
    s.stop_capture(token);
}

#[test]
fn a_backup_restores_values_metadata_and_tombstones_under_a_new_identity() {
    for durability in [Durability::Relaxed, Durability::Strict] {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("backup");
        let mut c = cfg(&dir.path().join("db"));
        c.durability = durability;
        // A long flush interval: the writes are still pending at backup.
        c.flush_interval_ms = 60_000;
        let s = Store::open(c).unwrap();
        populate(&s);
        let backed_up_clock = s.clock();
        s.backup(&dest).unwrap();
        let ids = s.ids().unwrap();

        // The copy forgot the identity and says where it came from.
        {
            let small = StoreConfig::new(&dest, b"n").rocks_memory();
            let tier = ColdTier::open(&dest, false, small).unwrap();
            assert_eq!(tier.get_meta(REPLICA_KEY).unwrap(), None);
            let origin = tier.get_meta(BACKUP_OF_KEY).unwrap().unwrap();
            assert_eq!(&origin[..16], &directory_id(&s)[..]);
            tier.release();
        }

        let r = Store::open(cfg(&dest)).unwrap();
        assert_ne!(directory_id(&r), directory_id(&s), "{durability:?}");
        assert_eq!(r.ids().unwrap(), ids);
        for id in &ids {
            assert_eq!(state(&r, id), state(&s, id), "{durability:?}");
            let (rm, _) = r.metadata(id, Access::MayBlock).unwrap();
            let (sm, _) = s.metadata(id, Access::MayBlock).unwrap();
            assert_eq!(rm, sm);
        }
        for i in 0..10u32 {
            let id = format!("c{i}");
            assert_eq!(
                r.metadata(id.as_bytes(), Access::MayBlock).err(),
                Some(Error::NotFound)
            );
            assert!(r.tombstone(id.as_bytes()).is_some(), "tombstone of {id}");
            assert_eq!(r.tombstone(id.as_bytes()), s.tombstone(id.as_bytes()));
        }
        // The HLC high-water mark came along: time never goes back.
        assert!(r.clock() >= backed_up_clock);

        // Both live: each keeps its own identity across restarts, and
        // writes to one do not show in the other.
        r.update(b"g", Mutation::Increment(1), Access::MayBlock, |_| ())
            .unwrap();
        assert_eq!(counter(&r, b"g"), 43);
        assert_eq!(counter(&s, b"g"), 42);
        let restored_id = directory_id(&r);
        r.close(std::time::Duration::from_secs(5)).unwrap();
        let r = Store::open(cfg(&dest)).unwrap();
        assert_eq!(directory_id(&r), restored_id);
        assert_eq!(counter(&r, b"g"), 43);
        r.close(std::time::Duration::from_secs(5)).unwrap();
        s.close(std::time::Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn a_backup_refuses_an_existing_or_unwritable_destination() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(&dir.path().join("db"))).unwrap();
    s.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    let exists = dir.path().join("exists");
    std::fs::create_dir(&exists).unwrap();
    assert_eq!(s.backup(&exists), Err(Error::AlreadyExists));
    assert_eq!(std::fs::read_dir(&exists).unwrap().count(), 0);
    // A parent that is a file (unwritable even for root).
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        s.backup(&file.join("backup")),
        Err(Error::Storage(_))
    ));
    assert_eq!(
        s.backup(&dir.path().join("db")),
        Err(Error::AlreadyExists),
        "its own directory"
    );
}

#[test]
fn a_backup_taken_while_writing_holds_every_write_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(&dir.path().join("db"))).unwrap();
    s.create(b"n", Kind::GCounter, Access::MayBlock).unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, acked, stop) = (s.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut created = 0u32;
            while !stop.load(Ordering::Relaxed) {
                s.update(b"n", Mutation::Increment(1), Access::MayBlock, |_| ())
                    .unwrap();
                acked.fetch_add(1, Ordering::SeqCst);
                if created < 5_000 {
                    let id = format!("new{created}");
                    s.create(id.as_bytes(), Kind::GCounter, Access::MayBlock)
                        .unwrap();
                    created += 1;
                }
            }
        })
    };
    while acked.load(Ordering::SeqCst) < 2_000 {
        std::thread::yield_now();
    }
    let mut floors = Vec::new();
    for i in 0..3 {
        floors.push(acked.load(Ordering::SeqCst));
        s.backup(&dir.path().join(format!("b{i}"))).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let total = counter(&s, b"n") as u64;
    for (i, floor) in floors.into_iter().enumerate() {
        let r = Store::open(cfg(&dir.path().join(format!("b{i}")))).unwrap();
        let n = counter(&r, b"n") as u64;
        assert!(n >= floor && n <= total, "{floor} <= {n} <= {total}");
        // Every id listed in the copy reads back.
        for id in r.ids().unwrap() {
            r.metadata(&id, Access::MayBlock).unwrap();
        }
        r.close(std::time::Duration::from_secs(5)).unwrap();
    }
}

fn page_all(s: &Store, limit: usize) -> Vec<Box<[u8]>> {
    let mut out = Vec::new();
    let mut cursor: Option<Box<[u8]>> = None;
    loop {
        let (ids, next) = s.ids_page(cursor.as_deref(), limit).unwrap();
        assert!(ids.len() <= limit);
        out.extend(ids);
        match next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// 3,000 ids on disk (each incremented by its number), writes kept pending
/// for a minute, and pending on top of the disk: deletes of flushed ids,
/// new ids, an id deleted and created again, an id created and deleted.
fn pending_over_disk(dir: &std::path::Path) -> Store {
    let mut c = cfg(dir);
    c.flush_interval_ms = 60_000;
    c.hot_limit = 100;
    c.warm_limit = 100;
    let s = Store::open(c).unwrap();
    for i in 0..3_000u32 {
        s.create(&i.to_be_bytes(), Kind::GCounter, Access::MayBlock)
            .unwrap();
        s.update(
            &i.to_be_bytes(),
            Mutation::Increment(i.into()),
            Access::MayBlock,
            |_| (),
        )
        .unwrap();
    }
    s.flush().unwrap();
    for i in (0..3_000u32).step_by(7) {
        s.delete(&i.to_be_bytes(), Access::MayBlock).unwrap();
    }
    for i in 3_000..3_500u32 {
        s.create(&i.to_be_bytes(), Kind::GCounter, Access::MayBlock)
            .unwrap();
    }
    s.create(&0u32.to_be_bytes(), Kind::GCounter, Access::MayBlock)
        .unwrap();
    s.create(b"gone", Kind::GCounter, Access::MayBlock).unwrap();
    s.delete(b"gone", Access::MayBlock).unwrap();
    s
}

#[test]
fn pages_list_every_id_once_in_order_with_pending_writes_laid_over_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let empty = Store::open(cfg(&dir.path().join("empty"))).unwrap();
    assert_eq!(empty.ids_page(None, 10).unwrap(), (vec![], None));
    let s = pending_over_disk(&dir.path().join("db"));
    let expected = s.ids().unwrap();
    for limit in [1, 7, 1000, 10_000] {
        assert_eq!(page_all(&s, limit), expected, "limit {limit}");
    }
    // A full last page is followed by an empty one.
    let n = expected.len();
    let (ids, next) = s.ids_page(None, n).unwrap();
    assert_eq!(ids.len(), n);
    assert_eq!(s.ids_page(next.as_deref(), n).unwrap(), (vec![], None));
}

#[test]
fn record_pages_read_each_id_once_from_disk_or_name_it_pending_and_touch_no_tier() {
    let dir = tempfile::tempdir().unwrap();
    let empty = Store::open(cfg(&dir.path().join("empty"))).unwrap();
    let none = empty
        .records_page(None, 10, |_, _| panic!("empty"))
        .unwrap();
    assert!(none.pending.is_empty() && none.next.is_none());
    let s = pending_over_disk(&dir.path().join("db"));
    // Pending: increments of flushed ids, and the ids created after the
    // flush (not the deletes).
    let mut pending: BTreeSet<Vec<u8>> = (3_000..3_500u32)
        .chain([0])
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    for i in (1..3_000u32).step_by(11).filter(|i| i % 7 != 0) {
        s.update(
            &i.to_be_bytes(),
            Mutation::Increment(1),
            Access::MayBlock,
            |_| (),
        )
        .unwrap();
        pending.insert(i.to_be_bytes().to_vec());
    }
    // `ids_page`, not `ids`, which flushes first.
    let expected: Vec<Vec<u8>> = page_all(&s, 10_000).iter().map(|i| i.to_vec()).collect();
    for limit in [1, 7, 1000, 10_000] {
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut named: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut cursor: Option<Box<[u8]>> = None;
        loop {
            let page = s
                .records_page(cursor.as_deref(), limit, |id, r| {
                    // What the disk holds is what the store reads.
                    assert_eq!(r.crdt.encode(), state(&s, id).encode());
                    assert_eq!(r.meta, s.metadata(id, Access::MayBlock).unwrap().0);
                    seen.push(id.to_vec());
                })
                .unwrap();
            for id in page.pending {
                assert!(named.insert(id.to_vec()), "named twice");
                seen.push(id.to_vec());
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, expected, "limit {limit}: every id once");
        assert_eq!(named, pending, "limit {limit}: pending writes named");
    }
    // A scan of a reopened store (every id cold) loads nothing into memory.
    s.close(std::time::Duration::from_secs(5)).unwrap();
    let s = Store::open(cfg(&dir.path().join("db"))).unwrap();
    let mut n = 0;
    let page = s.records_page(None, 10_000, |_, _| n += 1).unwrap();
    assert_eq!(
        (n, page.pending.len(), page.next),
        (expected.len(), 0, None)
    );
    let info = s.info().unwrap();
    assert_eq!((info.hot.count, info.warm.count), (0, 0));
}

#[test]
fn pages_taken_during_writes_never_repeat_an_id_nor_miss_a_stable_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.hot_limit = 500;
    c.warm_limit = 500;
    c.flush_interval_ms = 1;
    let s = Store::open(c).unwrap();
    let stable: BTreeSet<Vec<u8>> = (0..20_000u32)
        .map(|i| {
            let id = [b"s".as_slice(), &i.to_be_bytes()].concat();
            s.create(&id, Kind::GCounter, Access::MayBlock).unwrap();
            id
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // Ids before, among and after the stable ones, created
                // and deleted.
                for prefix in [&b"a"[..], b"s", b"z"] {
                    let id = [prefix, &i.to_be_bytes(), b"x"].concat();
                    s.create(&id, Kind::GCounter, Access::MayBlock).unwrap();
                    if i.is_multiple_of(2) {
                        s.delete(&id, Access::MayBlock).unwrap();
                    }
                }
                i += 1;
            }
        })
    };
    for _ in 0..3 {
        let listed = page_all(&s, 500);
        assert!(listed.windows(2).all(|w| w[0] < w[1]), "strictly ascending");
        let listed: BTreeSet<Vec<u8>> = listed.into_iter().map(Vec::from).collect();
        assert!(stable.is_subset(&listed));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

#[test]
fn info_counts_types_and_tiers_and_reports_disk_lag_ops_and_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.hot_limit = 100;
    c.warm_limit = 100;
    c.flush_interval_ms = 60_000;
    let s = Store::open(c).unwrap();
    populate(&s);
    let info = s.info().unwrap();
    let kinds = |k: Kind| Kind::ALL.iter().position(|x| *x == k).unwrap();
    let all = |i: &vsmcp_crdt_core::store::Info, k: Kind| {
        i.hot.by_kind[kinds(k)] + i.warm.by_kind[kinds(k)] + i.cold.by_kind[kinds(k)]
    };
    // Exact: few records.
    assert!(info.cold.exact);
    assert_eq!(all(&info, Kind::PNCounter), 190);
    assert_eq!(all(&info, Kind::ORSet), 1);
    assert_eq!(all(&info, Kind::AWSet), 1);
    assert_eq!(all(&info, Kind::LwwRegister), 1);
    assert_eq!(all(&info, Kind::GCounter), 1);
    assert_eq!(info.hot.count, info.hot.by_kind.iter().sum::<u64>());
    assert_eq!(info.hot.count + info.warm.count, {
        let st = s.stats();
        (st.hot + st.warm) as u64
    });
    assert!(info.hot.bytes > 0);
    assert_eq!(info.cold.count, info.cold.by_kind.iter().sum::<u64>());
    // Writes are pending (long flush interval); nothing on disk in SSTs.
    assert!(info.lag.ids > 0);
    assert!(info.lag.oldest_ms.is_some());
    assert!(info.ops.writes >= 200 + 200 + 2 * 52 + 4 + 10);
    assert_eq!(info.ops.reads, 0);
    assert_eq!(info.max_remote_ahead_ms, None);
    assert_eq!(info.hlc, s.clock());

    s.read(b"g", Access::MayBlock, |_| ()).unwrap();
    s.flush().unwrap();
    s.decay();
    s.decay();
    s.receive_clock(Timestamp::new(vsmcp_crdt_core::hlc::now_ms() + 200, 0))
        .unwrap();
    let info = s.info().unwrap();
    assert_eq!(info.lag.ids, 0);
    assert_eq!(info.lag.oldest_ms, None);
    assert!(info.ops.reads >= 1);
    assert!(info.disk.wal_bytes > 0 && info.disk.wal_files >= 1);
    assert!(info.disk.memtable_bytes > 0);
    let ahead = info.max_remote_ahead_ms.unwrap();
    assert!((150..=200).contains(&ahead), "{ahead}");
    // Decayed to disk: counted there, still exactly.
    assert!(info.cold.count > 0, "{:?}", info.cold);
    assert!(info.cold.exact);
    assert_eq!(all(&info, Kind::PNCounter), 190);
    let total = info.hot.count + info.warm.count + info.cold.count;
    assert_eq!(total, s.ids().unwrap().len() as u64);
    assert_eq!(s.metadata(b"c50", Access::MayBlock).unwrap().1, Tier::Cold);
}

#[test]
fn info_estimates_a_large_cold_tier_by_type_from_a_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.hot_limit = 10;
    c.warm_limit = 10;
    let s = Store::open(c).unwrap();
    for i in 0..60_000u32 {
        let kind = if i.is_multiple_of(4) {
            Kind::ORSet
        } else {
            Kind::GCounter
        };
        s.create(&i.to_be_bytes(), kind, Access::MayBlock).unwrap();
    }
    s.flush().unwrap();
    s.close(std::time::Duration::from_secs(5)).unwrap();
    let s = Store::open(cfg(dir.path())).unwrap();
    let info = s.info().unwrap();
    assert!(!info.cold.exact);
    assert!(info.cold.sampled >= 500, "{:?}", info.cold);
    let g = info.cold.by_kind[0] as f64;
    let sets = info.cold.by_kind[2] as f64;
    assert!(info.cold.count >= 30_000 && info.cold.count <= 240_000);
    let share = sets / (g + sets);
    assert!((0.15..0.35).contains(&share), "{:?}", info.cold);
    assert!(info.disk.keys_estimate >= 30_000);
    assert!(info.disk.live_sst_bytes > 0 && info.disk.total_sst_bytes > 0);
}

#[test]
fn info_counts_ids_that_left_memory_before_their_first_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.hot_limit = 10;
    c.warm_limit = 10;
    c.flush_interval_ms = 60_000;
    let s = Store::open(c).unwrap();
    for i in 0..100u32 {
        s.create(&i.to_be_bytes(), Kind::LwwRegister, Access::MayBlock)
            .unwrap();
    }
    for _ in 0..2 {
        let info = s.info().unwrap();
        assert!(info.cold.exact);
        assert_eq!(info.hot.count + info.warm.count, 20);
        assert_eq!(info.cold.count, 80, "{:?}", info.cold);
        assert_eq!(info.cold.by_kind[4], 80);
        s.flush().unwrap();
    }
}
