//! Import of the replaced application's entries (`store::import`) into a
//! real store: values, metadata, persistence, and what two nodes that each
//! imported their own file hold after exchanging their records.

use vsmcp_crdt_core::crdt::{Crdt, Kind, Value};
use vsmcp_crdt_core::store::import::{is_imported, LegacyEntry, LegacyState};
use vsmcp_crdt_core::store::record::decode_parts;
use vsmcp_crdt_core::store::{Access, Durability, Mutation, Store, StoreConfig};
use vsmcp_crdt_core::Error;

fn open(dir: &std::path::Path, node: &[u8]) -> Store {
    Store::open(StoreConfig::new(dir, node)).unwrap()
}

fn value(store: &Store, id: &[u8]) -> String {
    store
        .read(id, Access::MayBlock, |c| format!("{:?}", c.value()))
        .unwrap()
}

fn counter(store: &Store, id: &[u8]) -> i128 {
    store
        .read(id, Access::MayBlock, |c| match c.value() {
            Value::Counter(n) => n,
            other => panic!("not a counter: {other:?}"),
        })
        .unwrap()
}

fn set(store: &Store, id: &[u8]) -> Vec<Vec<u8>> {
    let mut v = store
        .read(id, Access::MayBlock, |c| match c.value() {
            Value::Set(s) => s.iter().map(|e| e.to_vec()).collect::<Vec<_>>(),
            other => panic!("not a set: {other:?}"),
        })
        .unwrap();
    v.sort();
    v
}

fn entry(id: &[u8], state: LegacyState) -> LegacyEntry {
    LegacyEntry {
        id: id.to_vec(),
        state,
        created_at_ms: None,
    }
}

fn counts(c: &[(&[u8], u64)]) -> Vec<(Vec<u8>, u64)> {
    c.iter().map(|(n, c)| (n.to_vec(), *c)).collect()
}

/// Push every record of `from` (as sync's state transfer would) into `to`.
fn push_all(from: &Store, to: &Store) {
    for id in from.ids().unwrap() {
        let (meta, crdt) = from
            .with_sync_state(&id, |m, c, _| (m.clone(), c.clone()))
            .unwrap()
            .unwrap();
        to.merge_remote(&id, &meta, &crdt).unwrap();
    }
}

#[test]
fn imports_every_kind_with_its_metadata_and_keeps_it_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), b"node-a");
    let entries = vec![
        entry(
            b"g",
            LegacyState::GCounter(counts(&[(b"n1", 5), (b"n2", 3)])),
        ),
        entry(
            b"pn",
            LegacyState::PNCounter {
                positive: counts(&[(b"n1", 10)]),
                negative: counts(&[(b"n2", 4)]),
            },
        ),
        entry(
            b"set",
            LegacyState::ORSet(vec![b"x".to_vec(), b"y".to_vec()]),
        ),
        entry(b"reg", LegacyState::LwwRegister(Some(b"v".to_vec()))),
        LegacyEntry {
            created_at_ms: Some(1234),
            ..entry(b"empty", LegacyState::LwwRegister(None))
        },
    ];
    assert_eq!(s.import_legacy(&entries).unwrap(), 5);
    assert_eq!(counter(&s, b"g"), 8);
    assert_eq!(counter(&s, b"pn"), 6);
    assert_eq!(set(&s, b"set"), vec![b"x".to_vec(), b"y".to_vec()]);
    assert_eq!(value(&s, b"reg"), "Register(Some([118]))");
    assert_eq!(value(&s, b"empty"), "Register(None)");
    let (meta, _) = s.metadata(b"empty", Access::MayBlock).unwrap();
    assert!(is_imported(&meta));
    assert_eq!(meta.created_at, 1234);
    assert_eq!(&*meta.created_by, b"node-a");
    assert_eq!(meta.kind, Kind::LwwRegister);
    assert_eq!(s.migrated_from(), None);
    s.finish_import(b"/data/crdt_storage.dets").unwrap();
    assert_eq!(
        s.migrated_from().as_deref(),
        Some(&b"/data/crdt_storage.dets"[..])
    );

    // Writes after the import: counters add the store's own entry, a set
    // write and a register write win over the imported state.
    s.update(b"g", Mutation::Increment(2), Access::MayBlock, |_| ())
        .unwrap();
    s.update(b"reg", Mutation::Set(b"w"), Access::MayBlock, |_| ())
        .unwrap();
    s.update(b"set", Mutation::Remove(b"x"), Access::MayBlock, |_| ())
        .unwrap();
    s.close(std::time::Duration::from_secs(5)).unwrap();

    let s = open(dir.path(), b"node-a");
    assert_eq!(
        s.migrated_from().as_deref(),
        Some(&b"/data/crdt_storage.dets"[..])
    );
    assert_eq!(counter(&s, b"g"), 10);
    assert_eq!(counter(&s, b"pn"), 6);
    assert_eq!(set(&s, b"set"), vec![b"y".to_vec()]);
    assert_eq!(value(&s, b"reg"), "Register(Some([119]))");
    let (meta, _) = s.metadata(b"g", Access::MayBlock).unwrap();
    assert!(is_imported(&meta), "an update keeps the import generation");
    // Deleted and created again: a new generation, no longer imported.
    s.delete(b"g", Access::MayBlock).unwrap();
    s.create(b"g", Kind::GCounter, Access::MayBlock).unwrap();
    assert!(!is_imported(&s.metadata(b"g", Access::MayBlock).unwrap().0));
}

#[test]
fn two_nodes_importing_their_own_files_converge_per_node() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(da.path(), b"same");
    let b = open(db.path(), b"same");
    // Node a's file saw n1 at 5 and n2 at 3; node b's saw n1 at 4 and n2 at 7.
    a.import_legacy(&[
        entry(
            b"g",
            LegacyState::GCounter(counts(&[(b"n1", 5), (b"n2", 3)])),
        ),
        entry(
            b"pn",
            LegacyState::PNCounter {
                positive: counts(&[(b"n1", 5)]),
                negative: counts(&[(b"n2", 1)]),
            },
        ),
        entry(b"s", LegacyState::ORSet(vec![b"x".to_vec()])),
        entry(b"r", LegacyState::LwwRegister(Some(b"from-a".to_vec()))),
        entry(b"only-a", LegacyState::GCounter(counts(&[(b"n1", 1)]))),
    ])
    .unwrap();
    b.import_legacy(&[
        entry(
            b"g",
            LegacyState::GCounter(counts(&[(b"n1", 4), (b"n2", 7)])),
        ),
        entry(
            b"pn",
            LegacyState::PNCounter {
                positive: counts(&[(b"n1", 2), (b"n2", 8)]),
                negative: counts(&[(b"n2", 3)]),
            },
        ),
        entry(b"s", LegacyState::ORSet(vec![b"y".to_vec()])),
        entry(b"r", LegacyState::LwwRegister(Some(b"from-b".to_vec()))),
    ])
    .unwrap();
    // A write made after the import on one node wins over both imports.
    b.create(b"later", Kind::LwwRegister, Access::MayBlock)
        .unwrap();
    push_all(&a, &b);
    push_all(&b, &a);
    for s in [&a, &b] {
        assert_eq!(counter(s, b"g"), 5 + 7, "per-node maximum");
        assert_eq!(counter(s, b"pn"), (5 + 8) - 3);
        assert_eq!(set(s, b"s"), vec![b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(counter(s, b"only-a"), 1);
    }
    assert_eq!(
        value(&a, b"r"),
        value(&b, b"r"),
        "one register value everywhere"
    );
    // Pushing again (sync is at-least-once) changes nothing.
    push_all(&a, &b);
    push_all(&b, &a);
    assert_eq!(counter(&b, b"g"), 12);
    a.update(b"r", Mutation::Set(b"new"), Access::MayBlock, |_| ())
        .unwrap();
    push_all(&a, &b);
    assert_eq!(value(&b, b"r"), "Register(Some([110, 101, 119]))");
}

#[test]
fn a_second_import_of_the_same_entries_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), b"n");
    let entries = [entry(b"g", LegacyState::GCounter(counts(&[(b"n1", 5)])))];
    assert_eq!(s.import_legacy(&entries).unwrap(), 1);
    s.import_legacy(&entries).unwrap();
    assert_eq!(counter(&s, b"g"), 5);
}

#[test]
fn imports_are_captured_for_sync_when_capture_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), b"n");
    let token = s.start_capture();
    s.import_legacy(&[entry(b"g", LegacyState::GCounter(counts(&[(b"n1", 5)])))])
        .unwrap();
    let out = s.take_outgoing();
    assert_eq!(out.len(), 1);
    let (meta, body) = decode_parts(&out[0].1).unwrap();
    assert!(is_imported(&meta));
    assert_eq!(Crdt::decode(body).unwrap().value(), Value::Counter(5));
    s.stop_capture(token);
}

#[test]
fn oversized_ids_and_elements_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path(), b"n");
    cfg.max_value_bytes = 8;
    cfg.durability = Durability::Strict;
    let s = Store::open(cfg).unwrap();
    let big = vec![0u8; 9];
    assert!(matches!(
        s.import_legacy(&[entry(&big, LegacyState::LwwRegister(None))]),
        Err(Error::ValueTooLarge { size: 9, max: 8 })
    ));
    assert!(matches!(
        s.import_legacy(&[entry(b"s", LegacyState::ORSet(vec![big.clone()]))]),
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(matches!(
        s.import_legacy(&[entry(b"r", LegacyState::LwwRegister(Some(big)))]),
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(s.ids().unwrap().len(), 0);
}

#[test]
fn an_import_wins_over_a_create_of_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), b"n");
    s.create(b"g", Kind::PNCounter, Access::MayBlock).unwrap();
    s.update(b"g", Mutation::Increment(100), Access::MayBlock, |_| ())
        .unwrap();
    s.import_legacy(&[entry(b"g", LegacyState::GCounter(counts(&[(b"n1", 5)])))])
        .unwrap();
    assert_eq!(counter(&s, b"g"), 5);
    assert_eq!(
        s.metadata(b"g", Access::MayBlock).unwrap().0.kind,
        Kind::GCounter
    );
}
