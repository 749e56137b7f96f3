//! Real stores (RocksDB in temporary directories) synced by the sync
//! engine over a simulated network that drops, duplicates and reorders
//! messages: concurrent counters, sets, registers, creates of one id with
//! different types, deletes and re-creates must converge exactly, no
//! increment may be lost, and nothing deleted may come back.
//!
//! The tests are grouped by the behaviour they protect, one section each:
//! convergence, wire versions and hostile input, delta intervals,
//! anti-entropy and transfers, set remove tokens, deletes, tombstone
//! collection, generations and the collection cut, membership, clock skew.
//! Many are regressions: their doc comment tells the scenario that once
//! broke the behaviour. The network and the helpers are in
//! `tests/common/net.rs`.

mod common;

use common::net::{
    fast_cfg, import_legacy_counter, never_collect, open, open_copy, replica24, rgen, rmeta,
    set_entries, tag, tag_of, tombstones, update, wait_until_wall_clock_reaches, Net, Node,
};
use common::Rng;
use vsmcp_crdt_core::store::record::Gen;
use vsmcp_crdt_core::store::{Access, Merged, Store, StoreConfig};
use vsmcp_crdt_core::sync::digest::{item_hash, Digest};
use vsmcp_crdt_core::sync::{Engine, EngineConfig, Event, Reject, REPORT_FANOUT};
use vsmcp_crdt_core::{Crdt, Kind, Mutation, Value};

// ---------------------------------------------------------------------
// Convergence.
// Concurrent writes of every type, creates of one id with different
// types, deletes and re-creates converge exactly over a lossy network.
// ---------------------------------------------------------------------

#[test]
fn concurrent_updates_converge_over_a_lossy_network() {
    for seed in [1u64, 7, 42] {
        let mut net = Net::new(3, 15, seed);
        for _ in 0..3 {
            net.step(true);
        }
        let ids: [(&[u8], Kind); 4] = [
            (b"hits", Kind::GCounter),
            (b"bal", Kind::PNCounter),
            (b"tags", Kind::ORSet),
            (b"reg", Kind::LwwRegister),
        ];
        // Node 0 creates; the others learn the ids by sync.
        for (id, k) in ids {
            net.nodes[0].store.create(id, k, Access::MayBlock).unwrap();
        }
        net.settle();
        for i in 0..3 {
            for (id, k) in ids {
                assert_eq!(net.kind(i, id), Some(k), "seed {seed} node {i}");
            }
        }
        net.loss = 15;
        let mut total = 0i128;
        let mut balance = 0i128;
        for round in 0..300u64 {
            let i = net.rng.below(3) as usize;
            let s = net.nodes[i].store.clone();
            let n = net.rng.below(5) as i128 + 1;
            total += n;
            update(&s, b"hits", Mutation::Increment(n));
            if net.rng.chance(50) {
                balance -= n;
                update(&s, b"bal", Mutation::Decrement(n));
            } else {
                balance += n;
                update(&s, b"bal", Mutation::Increment(n));
            }
            let e = format!("e{}", net.rng.below(20));
            if net.rng.chance(60) {
                update(&s, b"tags", Mutation::Add(e.as_bytes()));
            } else {
                update(&s, b"tags", Mutation::Remove(e.as_bytes()));
            }
            let v = format!("v{round}");
            update(&s, b"reg", Mutation::Set(v.as_bytes()));
            if round % 7 == 0 {
                net.step(round % 21 == 0);
            }
        }
        net.settle();
        assert_eq!(
            net.value(0, b"hits"),
            Some(format!("{:?}", Value::Counter(total)))
        );
        assert_eq!(
            net.value(0, b"bal"),
            Some(format!("{:?}", Value::Counter(balance)))
        );
        for id in [&b"hits"[..], b"bal", b"tags", b"reg"] {
            let v0 = net.value(0, id);
            for i in 1..3 {
                assert_eq!(net.value(i, id), v0, "seed {seed} id {id:?} node {i}");
            }
        }
        assert!(net.nodes[0].engine.counters().retransmits > 0);
    }
}

#[test]
fn concurrent_creates_with_different_types_pick_one_winner() {
    let mut net = Net::new(3, 0, 3);
    net.step(true);
    net.nodes[0]
        .store
        .create(b"x", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.nodes[1]
        .store
        .create(b"x", Kind::ORSet, Access::MayBlock)
        .unwrap();
    update(&net.nodes[0].store, b"x", Mutation::Increment(5));
    update(&net.nodes[1].store, b"x", Mutation::Add(b"a"));
    net.settle();
    let k = net.kind(0, b"x");
    assert!(k.is_some());
    for i in 0..3 {
        assert_eq!(net.kind(i, b"x"), k);
        assert_eq!(net.value(i, b"x"), net.value(0, b"x"));
    }
    let clashes = net
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Rejected(_, Reject::TypeClash, _)))
        .count();
    assert!(clashes > 0);
}

#[test]
fn deletes_propagate_and_a_later_create_wins_everywhere() {
    let mut net = Net::new(3, 10, 5);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"d", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"d", Mutation::Increment(3));
    net.settle();
    assert!(net.value(2, b"d").is_some());
    net.nodes[1].store.delete(b"d", Access::MayBlock).unwrap();
    // A concurrent update the delete did not see: the delete wins (the
    // generation is gone everywhere).
    update(&net.nodes[2].store, b"d", Mutation::Increment(1));
    net.settle();
    for i in 0..3 {
        assert_eq!(net.value(i, b"d"), None, "node {i}");
    }
    net.nodes[2]
        .store
        .create(b"d", Kind::ORSet, Access::MayBlock)
        .unwrap();
    update(&net.nodes[2].store, b"d", Mutation::Add(b"z"));
    net.settle();
    for i in 0..3 {
        assert_eq!(net.kind(i, b"d"), Some(Kind::ORSet), "node {i}");
        assert_eq!(net.value(i, b"d"), net.value(2, b"d"));
    }
}

/// Two stores holding one id from before generations existed, with
/// different types, converge on one of them (the larger kind code).
#[test]
fn legacy_records_of_two_types_converge() {
    use vsmcp_crdt_core::store::record::Meta;
    use vsmcp_crdt_core::Crdt;
    let mut net = Net::new(2, 0, 45);
    net.step(true);
    for (i, kind) in [(0, Kind::GCounter), (1, Kind::ORSet)] {
        let meta = Meta {
            kind,
            created_by: std::sync::Arc::from(&b"old"[..]),
            created_at: 1,
            updated_at: 1,
            gen: Default::default(),
            deleted: false,
        };
        net.nodes[i]
            .store
            .merge_remote(b"legacy", &meta, &Crdt::new(kind))
            .unwrap();
    }
    update(&net.nodes[0].store, b"legacy", Mutation::Increment(3));
    update(&net.nodes[1].store, b"legacy", Mutation::Add(b"e"));
    net.settle();
    let k = net.kind(0, b"legacy");
    assert_eq!(k, net.kind(1, b"legacy"));
    assert_eq!(net.value(0, b"legacy"), net.value(1, b"legacy"));
}

/// Random creates (of two types), updates, deletes and re-creates on four
/// nodes over a lossy network with nodes cut off and back, collection on:
/// every node ends with the same ids, types and values. Then every id is
/// deleted: the deletes win everywhere, every tombstone is collected,
/// nothing deleted comes back from what the history left in logs and
/// queues, and ids created again afterwards reach every node.
#[test]
fn random_deletes_and_re_creates_converge_with_collection() {
    for seed in [3u64, 11, 29] {
        let mut net = Net::new(4, 10, seed);
        let mut rng = Rng::new(seed ^ 0xA5A5);
        net.step(true);
        let ids: Vec<Vec<u8>> = (0..6).map(|i| format!("id{i}").into_bytes()).collect();
        for round in 0..400 {
            if rng.chance(2) {
                let k = rng.below(4) as usize;
                net.cut[k] = !net.cut[k];
            }
            let id = &ids[rng.below(ids.len() as u64) as usize];
            let s = net.nodes[rng.below(4) as usize].store.clone();
            match rng.below(12) {
                0 => drop(s.create(id, Kind::PNCounter, Access::MayBlock)),
                1 => drop(s.create(id, Kind::ORSet, Access::MayBlock)),
                2 | 3 => drop(s.delete(id, Access::MayBlock)),
                4..=6 => update(&s, id, Mutation::Increment(1 + rng.below(5) as i128)),
                7 => update(&s, id, Mutation::Decrement(1)),
                8 | 9 => update(&s, id, Mutation::Add(&[b'a' + rng.below(4) as u8])),
                _ => update(&s, id, Mutation::Remove(&[b'a' + rng.below(4) as u8])),
            }
            net.step(round % 3 == 0);
        }
        net.cut = vec![false; 4];
        for _ in 0..3 {
            net.settle();
        }
        for id in &ids {
            for i in 1..4 {
                assert_eq!(net.kind(i, id), net.kind(0, id), "seed {seed}");
                assert_eq!(net.value(i, id), net.value(0, id), "seed {seed}");
            }
        }
        let collected: u64 = net
            .nodes
            .iter()
            .map(|n| n.engine.counters().collected_tombstones)
            .sum();
        // The history exercised collection (24-116 tombstones). Which ids
        // end present depends on the wall clock (stamps are real), so one
        // is created if the history left none.
        assert!(collected > 0, "seed {seed}");
        if ids.iter().all(|id| net.value(0, id).is_none()) {
            net.nodes[0]
                .store
                .create(&ids[0], Kind::PNCounter, Access::MayBlock)
                .unwrap();
            net.settle();
        }
        for (k, id) in ids.iter().enumerate() {
            if net.value(0, id).is_some() {
                net.nodes[k % 4].store.delete(id, Access::MayBlock).unwrap();
            }
        }
        for _ in 0..3 {
            net.settle();
        }
        assert_eq!(tombstones(&net), vec![0; 4], "seed {seed}");
        for id in &ids {
            for i in 0..4 {
                assert_eq!(net.value(i, id), None, "seed {seed} node {i}");
            }
        }
        let s = net.nodes[3].store.clone();
        s.create(&ids[0], Kind::GCounter, Access::MayBlock).unwrap();
        update(&s, &ids[0], Mutation::Increment(9));
        net.settle();
        for i in 0..4 {
            assert_eq!(
                net.value(i, &ids[0]),
                Some(format!("{:?}", Value::Counter(9))),
                "seed {seed} node {i}"
            );
        }
    }
}

// ---------------------------------------------------------------------
// Wire versions and hostile input.
// Mixed protocol versions interoperate; malformed or forged messages are
// refused, counted, and cost bounded memory.
// ---------------------------------------------------------------------

#[test]
fn a_node_speaking_only_version_one_keeps_converging() {
    let mut net = Net::new(2, 0, 9);
    net.nodes.push(open(vec![1]));
    net.step(true);
    net.nodes[2]
        .store
        .create(b"c", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.settle();
    for i in 0..3 {
        update(&net.nodes[i].store, b"c", Mutation::Increment(10));
    }
    net.settle();
    for i in 0..3 {
        assert_eq!(
            net.value(i, b"c"),
            Some(format!("{:?}", Value::Counter(30)))
        );
    }
    // Node 0 talks to node 2 in version 1 and to node 1 in the newest.
    let peers = net.nodes[0].engine.peer_info();
    let v_of =
        |r: &vsmcp_crdt_core::ReplicaId| peers.iter().find(|p| &p.id == r).map(|p| p.version);
    assert_eq!(v_of(net.nodes[2].engine.me()), Some(1));
    assert_eq!(v_of(net.nodes[1].engine.me()), Some(4));
}

#[test]
fn hostile_bytes_are_rejected_and_counted() {
    let mut net = Net::new(2, 0, 11);
    net.step(true);
    let n = &mut net.nodes[0];
    let mut ev = Vec::new();
    for bytes in [
        &b""[..],
        b"garbage",
        &[0xC9, 9, 1, 0x90],
        &[0xC9, 2, 1, 0x96, 0, 0],
    ] {
        let out = n.engine.receive(&n.store, bytes, 5_000, &mut ev);
        assert!(out.is_empty());
    }
    let kinds: Vec<Reject> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Rejected(_, r, _) => Some(*r),
            _ => None,
        })
        .collect();
    assert_eq!(kinds.len(), 4, "{ev:?}");
    assert!(kinds.contains(&Reject::Version));
    assert!(kinds.contains(&Reject::Malformed));
}

/// A forged Deltas message whose base and interval sit at the top of the
/// sequence space (`u64::MAX`) is taken without an arithmetic overflow.
#[test]
fn a_deltas_message_at_the_end_of_the_sequence_space_does_not_overflow() {
    use vsmcp_crdt_core::sync::Message;
    let mut net = Net::new(2, 0, 49);
    net.step(true);
    let from = net.nodes[1].engine.me().clone();
    let n = &mut net.nodes[0];
    let mut ev = Vec::new();
    let entry = |i: u8| {
        use vsmcp_crdt_core::store::record::{encode_parts, Meta};
        let meta = Meta {
            kind: Kind::GCounter,
            created_by: std::sync::Arc::from(&b"x"[..]),
            created_at: 0,
            updated_at: 0,
            gen: Default::default(),
            deleted: false,
        };
        (
            vec![i],
            encode_parts(&meta, &vsmcp_crdt_core::Crdt::new(Kind::GCounter).encode()),
        )
    };
    for _ in 0..3 {
        let m = Message::Deltas {
            from: from.clone(),
            base: u64::MAX - 1,
            seq_start: u64::MAX,
            seq_end: u64::MAX,
            entries: vec![entry(1)],
        };
        let bytes = m.encode_with(2, n.store.clock());
        let _ = n.engine.receive(&n.store, &bytes, 2_000, &mut ev);
    }
}

/// Hellos from sync ids too short to hold a directory are "synced with,
/// never a member": they skip the membership bound (`MAX_MEMBERS`,
/// `Reject::TooManyPeers`), so every forged hello with a fresh short id
/// would add a session (with its log entry, and an answer of a hello, a
/// flush and a 2 KB digest request) kept for ten times `down_after_ms`. The
/// sessions an engine holds stay bounded all the same.
#[test]
fn forged_hellos_with_short_ids_do_not_grow_sessions_without_bound() {
    use vsmcp_crdt_core::causal::ReplicaId;
    use vsmcp_crdt_core::sync::Message;
    let mut net = Net::new(1, 0, 704);
    net.step(true);
    let n = &mut net.nodes[0];
    let mut ev = Vec::new();
    let mut answered = 0usize;
    for k in 0..5_000u32 {
        let hello = Message::Hello {
            // 20 bytes: a 4-byte "directory" of its own, and a session.
            from: ReplicaId::new(&[&k.to_be_bytes()[..], &[7u8; 16][..]].concat()),
            versions: vec![1, 2, 3, 4],
            clock: n.store.clock(),
            root: 0,
            log_pos: 0,
            attrs: Vec::new(),
        };
        let bytes = hello.encode_with(1, n.store.clock());
        answered += n.engine.receive(&n.store, &bytes, 2_000, &mut ev).len();
        ev.clear();
    }
    let sessions = n.engine.peer_info().len();
    eprintln!("{sessions} sessions, {answered} messages sent in answer");
    assert!(
        sessions <= 256 + 1,
        "{sessions} sessions held for forged ids"
    );
}

// ---------------------------------------------------------------------
// Delta intervals: capture, acknowledgement, retransmission.
// An interval is acknowledged only once merged here; a restarted engine is
// a new session; capture tokens belong to their engine.
// ---------------------------------------------------------------------

/// A node that wrote before meeting its peer starts its first interval above
/// 1; the receiver still acknowledges it, so the log is pruned and
/// retransmissions stop.
#[test]
fn writes_before_meeting_a_peer_are_acknowledged() {
    let mut net = Net::new(2, 0, 31);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"c", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"c", Mutation::Increment(1));
    // Recorded with no peer yet.
    let mut ev = Vec::new();
    net.nodes[0].engine.tick(&s0, net.now, &mut ev);
    net.settle();
    for _ in 0..50 {
        update(&s0, b"c", Mutation::Increment(1));
        net.step(false);
    }
    net.settle();
    let e = &net.nodes[0].engine;
    assert_eq!(e.log().len(), 0, "every interval acknowledged and pruned");
    assert_eq!(e.counters().retransmits, 0);
    assert_eq!(
        net.value(1, b"c"),
        Some(format!("{:?}", Value::Counter(51)))
    );
}

/// A new engine on the same store (the peer process restarted) is a new peer
/// for the others: no acknowledgement of the old session covers an interval
/// of the new one.
#[test]
fn a_restarted_engine_gets_no_stale_acknowledgements() {
    let mut net = Net::new(2, 0, 33);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"c", Kind::GCounter, Access::MayBlock).unwrap();
    net.settle();
    for _ in 0..30 {
        update(&s0, b"c", Mutation::Increment(1));
        net.step(false);
    }
    net.settle();
    // Restart node 0's engine on the same store; drop its first interval.
    net.restart_engine(0, fast_cfg(30));
    let _ = s0.start_capture();
    net.step(true);
    net.step(true);
    update(&s0, b"c", Mutation::Increment(100));
    let mut ev = Vec::new();
    let _lost = net.nodes[0].engine.tick(&s0, net.now, &mut ev);
    for _ in 0..40 {
        update(&net.nodes[1].store, b"c", Mutation::Increment(1));
        update(&s0, b"c", Mutation::Increment(1));
        net.step(false);
    }
    net.settle();
    assert_eq!(net.value(0, b"c"), net.value(1, b"c"));
    assert_eq!(
        net.value(1, b"c"),
        Some(format!("{:?}", Value::Counter(210)))
    );
    let malformed: u64 = net.nodes[0].engine.counters().rejected[Reject::Malformed as usize];
    assert_eq!(malformed, 0);
}

/// Stopping an old engine's capture does not stop a newer one's.
#[test]
fn an_old_capture_token_does_not_stop_a_newer_capture() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(StoreConfig::new(dir.path(), b"n")).unwrap();
    let old = s.start_capture();
    let new = s.start_capture();
    s.stop_capture(old);
    s.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    assert_eq!(s.take_outgoing().len(), 1);
    s.stop_capture(new);
    s.create(b"y", Kind::GCounter, Access::MayBlock).unwrap();
    assert_eq!(s.take_outgoing().len(), 0);
}

/// An interval whose merge failed here is not acknowledged, so it arrives
/// again once the disk takes writes.
#[test]
fn a_failed_merge_is_not_acknowledged() {
    let mut net = Net::new(2, 0, 35);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"c", Kind::GCounter, Access::MayBlock).unwrap();
    net.settle();
    net.nodes[1].store.set_fail_writes(true);
    update(&s0, b"c", Mutation::Increment(9));
    for _ in 0..5 {
        net.step(false);
    }
    net.nodes[1].store.set_fail_writes(false);
    // Writes keep going on the sender: no digest is needed to repair it.
    for _ in 0..30 {
        update(&s0, b"c", Mutation::Increment(1));
        net.now += 20;
        net.step(false);
    }
    assert_eq!(
        net.value(1, b"c"),
        Some(format!("{:?}", Value::Counter(39)))
    );
}

/// A digest answer whose states failed to merge here (disk error) does not
/// raise the peer's received position, so the unmerged interval is not
/// acknowledged when it is resent.
#[test]
fn a_failed_digest_answer_does_not_acknowledge_the_interval() {
    let mut net = Net::new(2, 0, 307);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"c", Kind::ORSet, Access::MayBlock).unwrap();
    net.settle();
    net.nodes[1].store.set_fail_writes(true);
    update(&s0, b"c", Mutation::Add(b"lost"));
    net.step(true);
    // Node 1 starts a round: the answer's states fail to merge, then its
    // StateRequest marks node 0's log as received.
    let mut ev = Vec::new();
    let s1 = net.nodes[1].store.clone();
    let (_, outs) = net.nodes[1].engine.round(&s1, net.now, &mut ev);
    net.send(1, outs);
    net.deliver_all();
    net.nodes[1].store.set_fail_writes(false);
    later_writes_reach_node_1(&mut net, &s0);
}

/// Node 0 keeps adding to the set `c` (deltas only, no digest exchange):
/// node 1 ends with the same copy only if no interval was acknowledged
/// without being merged.
fn later_writes_reach_node_1(net: &mut Net, s0: &Store) {
    for i in 0..30u32 {
        update(s0, b"c", Mutation::Add(&i.to_be_bytes()));
        net.now += 20;
        net.step(false);
    }
    assert_eq!(
        net.value(0, b"c"),
        net.value(1, b"c"),
        "acknowledged, never merged"
    );
}

/// A duplicated StateRequest (a late copy of the answer to an earlier
/// digest) arriving while a newer digest is outstanding is not taken for
/// that digest's answer: the peer's log is not marked received up to the
/// newer position, so the interval in between, never merged, is not
/// acknowledged when it is resent.
#[test]
fn a_duplicated_digest_answer_does_not_acknowledge_the_interval() {
    let mut net = Net::new(2, 0, 405);
    let s0 = net.nodes[0].store.clone();
    let s1 = net.nodes[1].store.clone();
    s0.create(b"c", Kind::ORSet, Access::MayBlock).unwrap();
    net.settle();
    net.recorded = Some(Vec::new());
    let mut ev = Vec::new();
    let (_, outs) = net.nodes[1].engine.round(&s1, net.now, &mut ev);
    net.send(1, outs);
    net.deliver_all();
    let rec = net.recorded.take().unwrap();
    let answer = rec
        .iter()
        .find(|(to, b)| *to == 1 && tag_of(b) == Some(tag::STATE_REQUEST))
        .map(|(_, b)| b.clone())
        .expect("a state request");
    // Node 0 writes; the interval is lost; its hello tells its position.
    net.drop_tag = Some(tag::DELTAS);
    update(&s0, b"c", Mutation::Add(b"lost"));
    net.step(true);
    // Node 1's next digest is lost; the old answer arrives again.
    let _ = net.nodes[1].engine.round(&s1, net.now, &mut ev);
    net.queue.push_back((1, answer));
    net.deliver_all();
    net.drop_tag = None;
    later_writes_reach_node_1(&mut net, &s0);
}

/// A round started on one node (what `sync` does) gets a write that the
/// peer made since its last tick: the peer takes its local changes before
/// it digests.
#[test]
fn a_round_sees_the_peers_writes_since_its_last_tick() {
    let mut net = Net::new(2, 0, 71);
    net.step(true);
    net.settle();
    let s1 = net.nodes[1].store.clone();
    s1.create(b"fresh", Kind::GCounter, Access::MayBlock)
        .unwrap();
    update(&s1, b"fresh", Mutation::Increment(4));
    let mut ev = Vec::new();
    let n = &mut net.nodes[0];
    let (peers, outs) = n.engine.round(&n.store, net.now, &mut ev);
    assert_eq!(peers.len(), 1);
    net.send(0, outs);
    // Messages only: no node ticks meanwhile.
    net.deliver_all();
    assert_eq!(
        net.value(0, b"fresh"),
        Some(format!("{:?}", Value::Counter(4)))
    );
}

// ---------------------------------------------------------------------
// Anti-entropy and state transfers.
// Digests repair what deltas lost; transfers are bounded per call, one
// at a time per peer, and go with their session.
// ---------------------------------------------------------------------

/// Anti-entropy runs while both sides keep writing (deltas always in
/// flight), so a state transfer lost at the first meeting is repaired.
#[test]
fn anti_entropy_repairs_while_both_sides_write() {
    let mut net = Net::new(2, 0, 37);
    let s0 = net.nodes[0].store.clone();
    let s1 = net.nodes[1].store.clone();
    for i in 0..20u32 {
        s0.create(&i.to_be_bytes(), Kind::GCounter, Access::MayBlock)
            .unwrap();
    }
    s0.create(b"busy", Kind::GCounter, Access::MayBlock)
        .unwrap();
    s1.create(b"busy1", Kind::GCounter, Access::MayBlock)
        .unwrap();
    // The first meeting's state transfers are lost.
    net.drop_tag = Some(tag::STATES);
    net.step(true);
    net.step(true);
    net.drop_tag = None;
    for i in 0..300 {
        update(&s0, b"busy", Mutation::Increment(1));
        update(&s1, b"busy1", Mutation::Increment(1));
        net.step(i % 2 == 0);
    }
    for i in 0..20u32 {
        assert!(
            net.value(1, &i.to_be_bytes()).is_some(),
            "id {i} never repaired"
        );
    }
}

/// A late joiner's catch-up larger than one call's transfer budget arrives
/// whole, spread over ticks (never built in memory at once).
#[test]
fn a_large_catch_up_is_spread_over_ticks_and_complete() {
    let mut net = Net::new(1, 0, 47);
    let s0 = net.nodes[0].store.clone();
    let value = vec![7u8; 4096];
    for i in 0..3_000u32 {
        let id = i.to_be_bytes();
        s0.create(&id, Kind::LwwRegister, Access::MayBlock).unwrap();
        update(&s0, &id, Mutation::Set(&value));
    }
    net.step(true);
    net.join(open(vec![1, 2, 3, 4]));
    net.settle();
    for i in 0..3_000u32 {
        assert!(net.value(1, &i.to_be_bytes()).is_some(), "id {i} missing");
    }
    assert!(net.nodes[0].engine.counters().states_sent >= 3_000);
}

/// A peer that restarts in the middle of catching up, again and again,
/// leaves no transfer behind: each superseded session's transfer goes
/// with it, and a digest request while a transfer to the same session is
/// under way is refused (one at a time), not queued again.
#[test]
fn transfers_go_with_their_session_and_one_runs_at_a_time() {
    let mut net = Net::new(2, 0, 1404);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    for k in 0..3_000u32 {
        let id = format!("id{k}");
        s0.create(id.as_bytes(), Kind::GCounter, Access::MayBlock)
            .unwrap();
        update(&s0, id.as_bytes(), Mutation::Increment(i128::from(k) + 1));
    }
    net.settle();
    // Node 1 is replaced by an empty replica that restarts its engine as
    // soon as node 0 queued a transfer for it, ten times.
    net.reopen_fresh(1);
    for _ in 0..10 {
        // Hellos both ways, a digest from node 1: node 0 queues its states.
        let mut ev = Vec::new();
        let s1 = net.nodes[1].store.clone();
        let hello = net.nodes[1].engine.hello(&s1, &mut ev);
        net.send(1, vec![hello]);
        let (_, outs) = net.nodes[1].engine.round(&s1, net.now, &mut ev);
        net.send(1, outs);
        // Deliver only to node 0 (its answers to node 1 are lost).
        let q: Vec<_> = net.queue.drain(..).filter(|(to, _)| *to == 0).collect();
        for (_, bytes) in q {
            let n = &mut net.nodes[0];
            let _ = n.engine.receive(&n.store, &bytes, net.now, &mut ev);
        }
        assert!(net.nodes[0].engine.queued_transfers() <= 2 * 256);
        net.restart_engine(1, fast_cfg(30));
    }
    // The last session's transfer at most.
    assert!(net.nodes[0].engine.queued_transfers() <= 256 + 2);
    for _ in 0..3 {
        net.settle();
    }
    assert_eq!(net.nodes[0].engine.queued_transfers(), 0);
    assert_eq!(
        net.value(1, b"id2999"),
        Some(format!("{:?}", Value::Counter(3000)))
    );
}

/// A digest request costs at most one transfer per peer: while our states
/// are still going to a peer (more than one call's budget), its next
/// digest request is refused and counted (`busy`), not queued again.
#[test]
fn a_digest_request_during_a_transfer_to_the_same_peer_is_refused_and_counted() {
    let mut net = Net::new(2, 0, 1407);
    net.step(true);
    net.settle();
    let s0 = net.nodes[0].store.clone();
    let big = vec![7u8; 100_000];
    for k in 0..60 {
        let id = format!("r{k}");
        s0.create(id.as_bytes(), Kind::LwwRegister, Access::MayBlock)
            .unwrap();
        update(&s0, id.as_bytes(), Mutation::Set(&big));
    }
    // Node 1 asks twice before node 0 ticks (its answers are held back).
    let s1 = net.nodes[1].store.clone();
    let mut ev = Vec::new();
    let (_, first) = net.nodes[1].engine.round(&s1, net.now, &mut ev);
    let (_, second) = net.nodes[1].engine.round(&s1, net.now, &mut ev);
    for bytes in first.into_iter().chain(second).map(|o| o.bytes) {
        let n = &mut net.nodes[0];
        let _ = n.engine.receive(&n.store, &bytes, net.now, &mut ev);
    }
    assert!(net.nodes[0].engine.queued_transfers() > 0);
    assert_eq!(
        net.nodes[0].engine.counters().rejected[Reject::Busy as usize],
        1
    );
    for _ in 0..2 {
        net.settle();
    }
    assert_eq!(net.nodes[0].engine.queued_transfers(), 0);
    assert_eq!(net.value(1, b"r59"), net.value(0, b"r59"));
}

/// G-Counters `0..n` (big-endian ids) on `s`.
fn create_counters(s: &Store, n: u32) {
    for k in 0..n {
        s.create(&k.to_be_bytes(), Kind::GCounter, Access::MayBlock)
            .unwrap();
    }
}

/// Reopen `node`'s store (every record on disk, nothing in memory, so its
/// digest is built by reading the records there) under an engine that
/// takes one page of it per call (no time budget).
fn restart_building_a_page_per_call(net: &mut Net, node: usize) {
    net.reopen_store(node, |_| {});
    net.restart_engine(
        node,
        EngineConfig {
            prime_budget_ms: 0,
            ..fast_cfg(30)
        },
    );
}

/// A large store's digest is built page by page (each engine call
/// bounded), not in one call: right after the engine starts it is partial
/// and answers prove nothing; a few ticks later it is complete, and a new
/// replica catches up on every id.
#[test]
fn a_large_stores_digest_is_built_over_several_calls() {
    let mut net = Net::new(2, 0, 1408);
    // 4.5 pages (`PRIME_PAGE` is 1,000): primed by the fifth tick.
    create_counters(&net.nodes[0].store, 4_500);
    restart_building_a_page_per_call(&mut net, 0);
    let s0 = net.nodes[0].store.clone();
    let mut ev = Vec::new();
    for tick in 0..4u32 {
        let _ = net.nodes[0].engine.tick(&s0, net.now, &mut ev);
        assert!(!net.nodes[0].engine.primed());
        // Writes while the digest is built, ahead of and behind the scan:
        // increments, deletes, creates, a remove-wins set with tokens.
        for k in [tick * 1_000 + 10, 4_400 - tick * 1_000] {
            update(&s0, &k.to_be_bytes(), Mutation::Increment(7));
            s0.delete(&(k + 1).to_be_bytes(), Access::MayBlock).unwrap();
        }
        let set = format!("set{tick}");
        s0.create(set.as_bytes(), Kind::ORSet, Access::MayBlock)
            .unwrap();
        update(&s0, set.as_bytes(), Mutation::Add(b"a"));
        update(&s0, set.as_bytes(), Mutation::Remove(b"a"));
    }
    let _ = net.nodes[0].engine.tick(&s0, net.now, &mut ev);
    assert!(net.nodes[0].engine.primed());
    // The digest built from the disk scan, with the writes laid over it,
    // is the digest of every record read through the store.
    let mut reference = Digest::new();
    for id in s0.ids().unwrap() {
        let h = s0.with_sync_state(&id, |m, c, _| (!m.deleted).then(|| item_hash(&id, m, c)));
        reference.replace_hash(&id, None, h.unwrap().flatten());
    }
    assert_eq!(net.nodes[0].engine.digest_root(), reference.root());
    for _ in 0..3 {
        net.settle();
    }
    let s1 = &net.nodes[1].store.clone();
    assert!(s1
        .metadata(&4_499u32.to_be_bytes(), Access::MayBlock)
        .is_ok());
    assert!(s1.metadata(&0u32.to_be_bytes(), Access::MayBlock).is_ok());
    assert!(s1.metadata(&11u32.to_be_bytes(), Access::MayBlock).is_err());
    assert_eq!(s1.ids().unwrap(), s0.ids().unwrap());
    for k in [10u32, 4_400, 3_010, 1_400] {
        let n = s1.read(&k.to_be_bytes(), Access::MayBlock, |v| {
            v.crdt.value() == Value::Counter(7)
        });
        assert!(n.unwrap(), "{k}");
    }
}

#[test]
fn digests_wait_until_a_restarted_stores_digest_is_built_then_are_answered() {
    let mut net = Net::new(2, 0, 1409);
    create_counters(&net.nodes[0].store, 20_000);
    for _ in 0..3 {
        net.settle();
    }
    let s1 = net.nodes[1].store.clone();
    assert_eq!(s1.ids().unwrap().len(), 20_000);
    let pushed_before = net.nodes[1].engine.counters().states_sent;
    // n0 restarts: its digest is built one page per call (20 pages).
    restart_building_a_page_per_call(&mut net, 0);
    net.recorded = Some(Vec::new());
    net.events.clear();
    // Hellos: each side comes up at the other's (n0 puts its digest off).
    net.step(true);
    assert!(!net.nodes[0].engine.primed());
    // n1's `sync` round asks n0 for its digest: put off too.
    let now = net.now;
    let mut ev = Vec::new();
    let (peers, outs) = net.nodes[1].engine.round(&s1, now, &mut ev);
    let r0 = net.nodes[0].engine.me().clone();
    assert_eq!(peers, vec![r0.clone()]);
    net.send(1, outs);
    net.deliver_all();
    // Nothing of the digest exchange leaves n0 while its digest is being
    // built; the tick that completes it answers n1's digest and sends
    // n0's.
    let from_n0 = |net: &Net, tag: u8| {
        net.recorded
            .as_ref()
            .unwrap()
            .iter()
            .filter(|(to, b)| *to == 1 && tag_of(b) == Some(tag))
            .count()
    };
    let answered = |net: &Net| {
        net.events
            .iter()
            .any(|(i, e)| *i == 1 && matches!(e, Event::Answered(r) if *r == r0))
    };
    let mut steps = 0;
    while !net.nodes[0].engine.primed() {
        for t in [tag::DIGEST_REQUEST, tag::STATE_REQUEST, tag::STATES] {
            assert_eq!(
                from_n0(&net, t),
                0,
                "tag {t} sent before the digest was built"
            );
        }
        assert!(!answered(&net));
        net.step(false);
        steps += 1;
    }
    assert!(steps >= 5, "built over several ticks ({steps})");
    assert!(from_n0(&net, tag::STATE_REQUEST) >= 1);
    assert!(from_n0(&net, tag::DIGEST_REQUEST) >= 1);
    assert!(answered(&net));
    // Equal stores: no state crossed either way.
    net.settle();
    assert_eq!(net.nodes[1].engine.counters().states_sent, pushed_before);
    assert_eq!(net.nodes[0].engine.counters().states_sent, 0);
}

// ---------------------------------------------------------------------
// Set remove tokens: collected once stable.
// A remove token is collected only once every member has it, and a
// concurrent add still loses to it.
// ---------------------------------------------------------------------

#[test]
fn quiescence_collects_remove_tokens_everywhere() {
    let mut net = Net::new(3, 0, 21);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"set", Kind::ORSet, Access::MayBlock).unwrap();
    s0.create(b"gone", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.settle();
    for i in 0..1_000u32 {
        update(&s0, b"set", Mutation::Add(&i.to_be_bytes()));
    }
    net.settle();
    // Removes on two nodes (tokens of two replicas), and a delete.
    for i in 0..1_000u32 {
        let s = &net.nodes[(i % 2) as usize].store;
        update(s, b"set", Mutation::Remove(&i.to_be_bytes()));
    }
    update(&net.nodes[1].store, b"set", Mutation::Add(b"kept"));
    net.nodes[2]
        .store
        .delete(b"gone", Access::MayBlock)
        .unwrap();
    net.settle();
    for i in 0..3 {
        let n = &net.nodes[i];
        assert_eq!(set_entries(&n.store, b"set"), 1, "node {i}");
        assert_eq!(net.value(i, b"gone"), None, "node {i}");
        assert!(n.engine.counters().collected_elements > 0, "node {i}");
        assert_eq!(
            net.value(i, b"set"),
            Some(format!("{:?}", vec![b"kept".to_vec()]))
        );
    }
    // Still converging afterwards, and the collected elements can come back.
    update(
        &net.nodes[2].store,
        b"set",
        Mutation::Add(&5u32.to_be_bytes()),
    );
    net.settle();
    for i in 0..3 {
        assert_eq!(net.value(i, b"set"), net.value(2, b"set"));
        assert_eq!(set_entries(&net.nodes[i].store, b"set"), 2);
    }
}

#[test]
fn a_cut_off_peer_blocks_collection_and_its_concurrent_add_still_loses() {
    let mut net = Net::new(3, 0, 23);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"set", Kind::ORSet, Access::MayBlock).unwrap();
    update(&s0, b"set", Mutation::Add(b"x"));
    net.settle();
    net.cut[2] = true;
    // Concurrent: node 0 removes x while the cut-off node 2 adds it again.
    update(&s0, b"set", Mutation::Remove(b"x"));
    update(&net.nodes[2].store, b"set", Mutation::Add(b"x"));
    for i in 0..60 {
        net.step(i % 2 == 0);
    }
    // Node 2 is known but silent: nothing may be collected.
    assert_eq!(net.nodes[0].engine.counters().collected_elements, 0);
    assert!(set_entries(&s0, b"set") > 0);
    net.cut[2] = false;
    net.settle();
    let empty = Some(format!("{:?}", Vec::<Vec<u8>>::new()));
    for i in 0..3 {
        // Remove-wins: the concurrent add lost everywhere.
        assert_eq!(net.value(i, b"set"), empty, "node {i}");
    }
    // The token and the concurrent add it beat stay (one entry): an add
    // beside a token may also be one made after another replica collected
    // the token, which must win, and the two cannot be told apart (found
    // by the simulator: collecting them lost such an add everywhere).
    for i in 0..3 {
        assert_eq!(set_entries(&net.nodes[i].store, b"set"), 1, "node {i}");
    }
}

#[test]
fn a_collected_state_retires_tokens_where_joined() {
    use vsmcp_crdt_core::{Crdt, Op, ReplicaId};
    let r = ReplicaId::from("r");
    let mut a = Crdt::new(Kind::ORSet);
    for i in 0..10u8 {
        a.mutate(&r, Op::Add(&[i])).unwrap();
    }
    for i in 0..10u8 {
        a.mutate(&r, Op::Remove(&[i])).unwrap();
    }
    let mut b = a.clone();
    assert_eq!(b.collect_stable(), 10);
    let b = Crdt::decode(&b.encode()).unwrap();
    a.join(&b).unwrap();
    assert!(!a.has_collectable());
}

/// A remove concurrent with an add made on a cut-off member still wins
/// after the remover's engine restarts, and the three copies read alike
/// (the remove-wins digest covers the value, so copies that read
/// differently always exchange states).
#[test]
fn a_remove_concurrent_with_a_cut_off_add_wins_after_an_engine_restart() {
    let mut net = Net::new(3, 0, 1402);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"s", Kind::ORSet, Access::MayBlock).unwrap();
    update(&s0, b"s", Mutation::Add(b"x"));
    update(&s0, b"s", Mutation::Add(b"y"));
    net.settle();
    net.cut[2] = true;
    for i in 0..10 {
        net.step(i % 2 == 0);
    }
    update(&s0, b"s", Mutation::Remove(b"x"));
    update(&net.nodes[2].store, b"s", Mutation::Add(b"x"));
    net.settle();
    net.restart_engine(0, fast_cfg(30));
    for _ in 0..3 {
        net.settle();
    }
    net.cut[2] = false;
    for _ in 0..4 {
        net.settle();
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"s")).collect();
    let expected = Some(format!("{:?}", vec![b"y".to_vec()]));
    assert_eq!(vals, vec![expected.clone(), expected.clone(), expected]);
}

/// A member's stability report covers only its own members, so a remove is
/// not stable while a member lacks it. Nodes 1 and 2 never hear each other
/// (a partial partition from the start), both talk to node 0. Node 2
/// removes `x`; node 1's report (the least of its frontiers: node 0's, and
/// its clock) passes node 0's snapshot of the set although node 1 never
/// received the remove token (node 0 only relays it by state transfer,
/// which is lost here). Were node 0 to collect it, node 1's later add of
/// `x`, made without having seen the remove (a concurrent add), would
/// bring `x` back on every node: the remove must win.
#[test]
fn a_remove_is_not_stable_while_a_member_lacks_it_across_a_partial_partition() {
    let mut net = Net::new(3, 0, 703);
    let apart = |from: usize, to: usize| (from == 1 && to == 2) || (from == 2 && to == 1);
    let partial = move |from: usize, to: usize, _tag: u8| !apart(from, to);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"s", Kind::ORSet, Access::MayBlock).unwrap();
    update(&s0, b"s", Mutation::Add(b"x"));
    update(&s0, b"s", Mutation::Add(b"y"));
    for i in 0..40 {
        net.step_kept(i % 2 == 0, &partial);
    }
    let xy = Some(format!("{:?}", vec![b"x".to_vec(), b"y".to_vec()]));
    assert_eq!(net.value(1, b"s"), xy);
    assert_eq!(net.value(2, b"s"), xy);
    // Node 2 removes x; node 0's state pushes to node 1 are lost.
    update(&net.nodes[2].store, b"s", Mutation::Remove(b"x"));
    let no_push_0_to_1 = move |from: usize, to: usize, tag: u8| {
        partial(from, to, tag) && !(from == 0 && to == 1 && tag == tag::STATES)
    };
    let mut i = 0;
    while net.nodes[0].engine.counters().collected_elements == 0 && i < 400 {
        net.step_kept(i % 2 == 0, &no_push_0_to_1);
        i += 1;
    }
    eprintln!(
        "node 0 collected {} after {i} steps; node 1 reads {:?}",
        net.nodes[0].engine.counters().collected_elements,
        net.value(1, b"s")
    );
    // Node 1, which never saw the remove, adds x (concurrent with it).
    update(&net.nodes[1].store, b"s", Mutation::Add(b"x"));
    for i in 0..120 {
        net.step_kept(i % 2 == 0, &partial);
    }
    let y = Some(format!("{:?}", vec![b"y".to_vec()]));
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"s")).collect();
    assert_eq!(vals, vec![y.clone(), y.clone(), y], "removed element back");
}

// ---------------------------------------------------------------------
// Deletes: nothing deleted comes back.
// No replayed, delayed, resent or restored message brings a deleted id
// back, before or after its tombstone is collected.
// ---------------------------------------------------------------------

/// Deletes: tombstones are kept, and no replay of any earlier message
/// (duplicates, delayed deltas and states of the deleted generation) brings
/// the id back.
#[test]
fn replaying_old_messages_never_brings_a_deleted_id_back() {
    let mut net = Net::new(3, 0, 41);
    // Tombstones kept (no collection) while everything old is replayed.
    for n in &mut net.nodes {
        n.engine = Engine::new(&n.store, never_collect());
    }
    net.recorded = Some(Vec::new());
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"gone", Kind::PNCounter, Access::MayBlock)
        .unwrap();
    s0.create(b"kept", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.settle();
    update(&net.nodes[1].store, b"gone", Mutation::Increment(4));
    update(&net.nodes[2].store, b"kept", Mutation::Increment(2));
    net.settle();
    net.nodes[2]
        .store
        .delete(b"gone", Access::MayBlock)
        .unwrap();
    net.settle();
    for n in &net.nodes {
        assert!(n.store.tombstone(b"gone").is_some());
    }
    // Replay everything ever delivered, to everyone.
    let old = net.recorded.take().unwrap();
    for (_, bytes) in &old {
        for i in 0..3 {
            net.queue.push_back((i, bytes.clone()));
        }
    }
    net.deliver_all();
    net.settle();
    for i in 0..3 {
        assert_eq!(net.value(i, b"gone"), None, "node {i}");
        assert_eq!(
            net.value(i, b"kept"),
            Some(format!("{:?}", Value::Counter(2)))
        );
    }
    // A later create of the id works everywhere.
    net.nodes[1]
        .store
        .create(b"gone", Kind::ORSet, Access::MayBlock)
        .unwrap();
    net.settle();
    for i in 0..3 {
        assert_eq!(net.kind(i, b"gone"), Some(Kind::ORSet));
    }
}

/// A node cut off while an id is deleted keeps the record; the others keep
/// their tombstones until it is back, and it learns of the delete when its
/// anti-entropy pushes the record.
#[test]
fn a_node_that_missed_a_delete_learns_it_from_the_tombstone() {
    let mut net = Net::new(3, 0, 43);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    net.settle();
    net.cut[2] = true;
    s0.delete(b"x", Access::MayBlock).unwrap();
    for i in 0..80 {
        net.step(i % 2 == 0);
    }
    assert!(net.value(2, b"x").is_some());
    assert!(
        s0.tombstone(b"x").is_some(),
        "collected while a peer missed it"
    );
    net.cut[2] = false;
    net.settle();
    net.settle();
    for i in 0..3 {
        assert_eq!(net.value(i, b"x"), None, "node {i}");
    }
}

/// A delete made while the store does not capture (its sync peer
/// restarting, or the directory opened once without sync) keeps its
/// tombstone, because the directory has synced: peers do not bring the
/// record back.
#[test]
fn a_delete_while_capture_is_off_keeps_its_tombstone() {
    let mut net = Net::new(2, 0, 97);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(3));
    net.settle();
    let s1 = net.nodes[1].store.clone();
    let token = s1.start_capture();
    s1.stop_capture(token);
    s1.delete(b"x", Access::MayBlock).unwrap();
    s1.start_capture();
    net.restart_engine(1, fast_cfg(30));
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..2).map(|i| net.value(i, b"x")).collect();
    assert_eq!(vals, vec![None, None]);
}

/// A replica that missed a delete (restarted while cut off) meets a create
/// made after the delete by a node that joined later. The tombstone holders
/// also hold that record, and still answer a push of the deleted generation
/// with the tombstone, so it does not come back.
#[test]
fn a_deleted_generation_does_not_come_back_through_a_newcomer() {
    let mut net = Net::new(5, 0, 93);
    net.cut[4] = true; // node 4 joins later
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(100));
    net.settle();
    assert_eq!(
        net.value(3, b"x"),
        Some(format!("{:?}", Value::Counter(100)))
    );
    net.cut[3] = true;
    net.nodes[1].store.delete(b"x", Access::MayBlock).unwrap();
    net.settle();
    // Node 3's sync restarts (same store, new session) while cut off.
    net.restart_engine(3, fast_cfg(30));
    net.cut[4] = false;
    net.settle();
    let s4 = net.nodes[4].store.clone();
    s4.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s4, b"x", Mutation::Increment(1));
    net.settle();
    net.cut[3] = false;
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..5).map(|i| net.value(i, b"x")).collect();
    assert!(vals.iter().all(|v| *v == vals[0]), "diverged: {vals:?}");
    assert!(
        !vals.contains(&Some(format!("{:?}", Value::Counter(100)))),
        "deleted value back: {vals:?}"
    );
}

/// A States message (a digest answer) delayed past the collection of a
/// tombstone is dropped (sent before the cut), instead of bringing the
/// deleted id back everywhere.
#[test]
fn late_states_after_collection_bring_nothing_back() {
    let mut net = Net::new(3, 0, 95);
    net.step(true);
    net.cut[2] = true;
    let s0 = net.nodes[0].store.clone();
    s0.create(b"gone", Kind::GCounter, Access::MayBlock)
        .unwrap();
    update(&s0, b"gone", Mutation::Increment(7));
    net.settle();
    net.restart_engine(2, fast_cfg(30));
    net.cut[2] = false;
    net.recorded = Some(Vec::new());
    net.settle();
    assert_eq!(
        net.value(2, b"gone"),
        Some(format!("{:?}", Value::Counter(7)))
    );
    let old = net.recorded.take().unwrap();
    net.nodes[1]
        .store
        .delete(b"gone", Access::MayBlock)
        .unwrap();
    // (A restarted engine only collects once every peer sent a new delta.)
    s0.create(b"other", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.settle();
    net.settle();
    assert_eq!(tombstones(&net), vec![0, 0, 0]);
    let states: Vec<_> = old
        .into_iter()
        .filter(|(_, b)| tag_of(b) == Some(tag::STATES))
        .collect();
    for m in states {
        net.queue.push_back(m);
    }
    net.deliver_all();
    net.settle();
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"gone")).collect();
    assert_eq!(vals, vec![None, None, None]);
}

/// A resent interval that overlaps entries already received
/// (acknowledgements lost) and carries new ones merges only the new ones,
/// so old entries do not come back after their tombstone was collected.
#[test]
fn an_overlapping_resend_after_collection_brings_nothing_back() {
    let mut net = Net::new(3, 0, 205);
    net.step(true);
    net.settle();
    // Acknowledgements are lost from here (node 0 keeps its interval).
    net.drop_tag = Some(tag::ACK);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(100));
    net.settle();
    net.nodes[1].store.delete(b"x", Access::MayBlock).unwrap();
    net.settle();
    net.settle();
    // (A node whose acknowledgements were lost keeps its tombstone.)
    // A new local change on 0: its next (go-back-N) interval starts at the
    // old create and ends past what 1 and 2 received.
    s0.create(b"y", Kind::GCounter, Access::MayBlock).unwrap();
    net.step(true);
    net.drop_tag = None;
    net.settle();
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"x")).collect();
    assert_eq!(vals, vec![None, None, None], "deleted id back");
}

/// A replica that missed a delete does not bring the record back. Node 2
/// receives nothing for a while (its hellos still go out, announcing the
/// root everyone has: without x). Node 1 deletes x and its small log drops
/// the delete before node 2 acknowledged it; nodes 0 and 1 collect. Node 0's
/// log still holds the create for node 2, which gets it when it hears again
/// and pushes x: created before the cut and not held, it is answered with a
/// tombstone instead of coming back.
#[test]
fn a_replica_that_missed_the_delete_does_not_bring_the_record_back() {
    let mut net = Net::new(3, 0, 207);
    let s1 = net.nodes[1].store.clone();
    net.restart_engine(
        1,
        EngineConfig {
            max_log_bytes: 2_000,
            ..fast_cfg(30)
        },
    );
    net.step(true);
    net.settle();
    net.cut_in[2] = true;
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(100));
    net.step(true);
    s1.delete(b"x", Access::MayBlock).unwrap();
    net.step(true);
    // Churn on node 1 that leaves the root as it was but fills its log.
    for k in 0..40 {
        let id = format!("junk{k}");
        s1.create(id.as_bytes(), Kind::GCounter, Access::MayBlock)
            .unwrap();
        s1.delete(id.as_bytes(), Access::MayBlock).unwrap();
        net.step(k % 2 == 0);
    }
    for _ in 0..2 {
        net.settle();
    }
    // (Nodes 0 and 1 may keep their tombstones: node 2 has not
    // acknowledged their whole logs. Either way x must not come back.)
    net.cut_in[2] = false;
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"x")).collect();
    assert_eq!(vals, vec![None, None, None], "deleted id back");
}

/// A backup taken before a delete is restored after the cluster collected
/// the tombstone and created the id again. The copy pushes the old
/// generation, which would win over the re-create (same epoch, smaller
/// stamp); it was created before the collection cut and is not held, so it
/// is treated as deleted at the cut, and the copy learns that tombstone.
#[test]
fn a_backup_restored_after_collection_does_not_undo_a_re_create() {
    let mut net = Net::new(3, 0, 201);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(100));
    net.settle();
    let parent = tempfile::tempdir().unwrap();
    let copy = parent.path().join("copy");
    net.nodes[2].store.backup(&copy).unwrap();
    net.nodes[1].store.delete(b"x", Access::MayBlock).unwrap();
    net.settle();
    net.settle();
    assert_eq!(tombstones(&net), vec![0, 0, 0]);
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(5));
    net.settle();
    assert_eq!(net.value(1, b"x"), Some(format!("{:?}", Value::Counter(5))));
    // The restored node joins.
    net.join(open_copy(parent, &copy));
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..4).map(|i| net.value(i, b"x")).collect();
    assert!(
        vals.iter()
            .all(|v| *v == Some(format!("{:?}", Value::Counter(5)))),
        "re-created value lost / deleted value back: {vals:?}"
    );
}

/// A Deltas interval carrying one id twice (two takes, resent go-back-N) of
/// a deleted generation is answered with each tombstone once (a States
/// message repeating an id is refused whole).
#[test]
fn tombstone_answers_never_repeat_an_id() {
    let mut net = Net::new(3, 0, 305);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    net.settle();
    net.cut_in[2] = true;
    net.nodes[1].store.delete(b"x", Access::MayBlock).unwrap();
    for _ in 0..5 {
        net.step(false);
    }
    // Node 2 missed the delete; its two updates (two log entries) are
    // lost the first time and resent together.
    net.cut_in[2] = false;
    net.drop_tag = Some(tag::DELTAS);
    let s2 = net.nodes[2].store.clone();
    update(&s2, b"x", Mutation::Increment(1));
    net.step(false);
    update(&s2, b"x", Mutation::Increment(1));
    net.step(false);
    net.drop_tag = None;
    net.events.clear();
    for _ in 0..10 {
        net.step(false);
    }
    let dup: Vec<_> = net
        .events
        .iter()
        .filter(|(i, e)| {
            *i == 2
                && matches!(e, Event::Rejected(_, Reject::Malformed, m) if m.contains("duplicate"))
        })
        .collect();
    assert!(dup.is_empty(), "tombstone answer refused: {dup:?}");
}

/// An interval credited by a digest answer does not bring a deleted import
/// back. A digest answer lets a node collect while an interval of the
/// peer's log is still undelivered; when the interval arrives after the
/// collection it must count as seen. Merged instead, an update of a
/// generation no cut covers (an import, a legacy record, a late joiner's
/// create) would create the deleted record again, and anti-entropy would
/// spread it to every node (they collected too).
#[test]
fn an_interval_credited_by_a_digest_answer_does_not_resurrect_an_import() {
    let mut net = Net::new(3, 0, 501);
    net.settle();
    let p = net.nodes[1].store.clone();
    import_legacy_counter(&p, b"x", 5);
    net.settle();
    assert_eq!(net.value(0, b"x"), Some(format!("{:?}", Value::Counter(5))));
    // Node 1's intervals stop arriving; its increment reaches the others
    // by anti-entropy only (their digests are answered).
    update(&p, b"x", Mutation::Increment(1));
    for i in 0..60 {
        net.step_muting_deltas_of(i % 2 == 0, 1);
    }
    assert_eq!(net.value(0, b"x"), Some(format!("{:?}", Value::Counter(6))));
    assert_eq!(net.value(2, b"x"), Some(format!("{:?}", Value::Counter(6))));
    // Node 2 deletes x (its interval is delivered); everyone collects.
    net.nodes[2].store.delete(b"x", Access::MayBlock).unwrap();
    for i in 0..200 {
        net.step_muting_deltas_of(i % 2 == 0, 1);
    }
    // (A node whose log a muted peer has not acknowledged keeps its
    // tombstone; the others may collect. Either way x must not come back.)
    assert!((0..3).all(|i| net.value(i, b"x").is_none()));
    // Node 1's interval (the increment) finally arrives.
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"x")).collect();
    assert_eq!(vals, vec![None, None, None], "deleted import back");
}

/// A delete is acknowledged only once its tombstone is here, even when a
/// digest answer credited its interval: digest answers never carry
/// tombstones (they are outside the digest and the state push). Node 2
/// never receives node 1's delete of an import; the raise at node 2's
/// quiescent point must not acknowledge it. Node 0's import interval lies
/// beyond node 0's last hello at node 2, so it is not "seen" and is merged
/// when it finally arrives; had nodes 0 and 1 collected the tombstone
/// meanwhile (no cut covers the import generation), the deleted record
/// would come back everywhere. Node 1 resends the delete until node 2
/// merges it.
#[test]
fn a_delete_is_acknowledged_only_once_its_tombstone_is_here() {
    let mut net = Net::new(3, 0, 601);
    net.settle();
    // From here on node 0's hellos and intervals to node 2 are lost (its
    // acks, digest answers and states still go through).
    let mute_0_to_2 = |from: usize, to: usize, tag: u8| {
        !(from == 0 && to == 2 && (tag == tag::HELLO || tag == tag::DELTAS))
    };
    let p = net.nodes[0].store.clone();
    import_legacy_counter(&p, b"x", 5);
    net.step_kept(true, &mute_0_to_2);
    assert_eq!(net.value(1, b"x"), Some(format!("{:?}", Value::Counter(5))));
    assert_eq!(net.value(2, b"x"), None);
    // Node 1 deletes it; its interval to node 2 is lost too.
    net.nodes[1].store.delete(b"x", Access::MayBlock).unwrap();
    let mute_both = |from: usize, to: usize, tag: u8| {
        mute_0_to_2(from, to, tag) && !(from == 1 && to == 2 && tag == tag::DELTAS)
    };
    for i in 0..4 {
        net.step_kept(i % 2 == 0, &mute_both);
    }
    assert!(net.value(0, b"x").is_none() && net.value(1, b"x").is_none());
    // A `sync` on node 2: node 1's answer credits its log (the delete).
    let s2 = net.nodes[2].store.clone();
    let mut ev = Vec::new();
    let (_, outs) = net.nodes[2].engine.round(&s2, net.now, &mut ev);
    net.send_kept(2, outs, &mute_both);
    net.deliver_kept(&mute_both);
    // Node 2 reaches its quiescent point (the raise), then node 1's
    // interval gets through: acknowledged, not merged.
    for i in 0..10 {
        net.step_kept(i % 2 == 0, &mute_both);
    }
    for i in 0..10 {
        net.step_kept(i % 2 == 0, &mute_0_to_2);
    }
    eprintln!(
        "node 2 tombstone {:?}; tombstones {:?}",
        net.nodes[2].store.tombstone(b"x"),
        tombstones(&net)
    );
    // Nodes 0 and 1 collect; then node 0's interval reaches node 2.
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"x")).collect();
    assert_eq!(vals, vec![None, None, None], "deleted import back");
}

/// A frontier (a state or log proof) says the member's own changes are
/// here, not that the member has our delete; tombstones are collected once
/// every frontier passes them, relying on the cut rule to kill late copies.
/// An imported record has no creator directory, so no cut covers it: its
/// tombstone waits until every member has the delete. Node 0 deletes an
/// imported `x` while its intervals and tombstone answers to node 1 are
/// lost, and node 1's hellos alone (its log, empty, fully here) raise its
/// frontier past the delete. Collected then, node 1's copy of `x` would come
/// back on node 0 and then, once node 1 collected too, on both for good.
#[test]
fn an_imported_record_is_not_collected_before_every_member_has_its_delete() {
    let mut net = Net::new(2, 0, 702);
    net.step(true);
    net.settle();
    import_legacy_counter(&net.nodes[0].store, b"x", 5);
    net.settle();
    assert_eq!(net.value(1, b"x"), Some(format!("{:?}", Value::Counter(5))));
    // Node 0 deletes x; what it sends node 1 carrying the delete is lost.
    let no_delete_0_to_1 = |from: usize, to: usize, tag: u8| {
        !(from == 0 && to == 1 && (tag == tag::DELTAS || tag == tag::STATES))
    };
    net.nodes[0].store.delete(b"x", Access::MayBlock).unwrap();
    for i in 0..40 {
        net.step_kept(i % 2 == 0, &no_delete_0_to_1);
    }
    eprintln!(
        "after phase 1: tombstones {:?}, values {:?} {:?}",
        tombstones(&net),
        net.value(0, b"x"),
        net.value(1, b"x")
    );
    // Node 0's interval gets through (its state pushes still do not).
    let no_states_0_to_1 =
        |from: usize, to: usize, tag: u8| !(from == 0 && to == 1 && tag == tag::STATES);
    for i in 0..40 {
        net.step_kept(i % 2 == 0, &no_states_0_to_1);
    }
    eprintln!(
        "after phase 2: tombstones {:?}, values {:?} {:?}",
        tombstones(&net),
        net.value(0, b"x"),
        net.value(1, b"x")
    );
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..2).map(|i| net.value(i, b"x")).collect();
    assert_eq!(vals, vec![None, None], "deleted import back");
}

// ---------------------------------------------------------------------
// Tombstone collection: it happens, and keeps happening.
// Once every member's frontier passes a delete its tombstone is dropped,
// under continuous writes, after engine restarts and lost digests.
// ---------------------------------------------------------------------

/// Causal-stability collection of delete tombstones: once every node agrees
/// (and has every log), each drops its tombstone, and the id can be created
/// again everywhere.
#[test]
fn tombstones_are_collected_once_every_node_agrees() {
    let mut net = Net::new(3, 0, 61);
    net.recorded = Some(Vec::new());
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    for id in [&b"x"[..], b"y"] {
        s0.create(id, Kind::GCounter, Access::MayBlock).unwrap();
        update(&s0, id, Mutation::Increment(2));
    }
    net.settle();
    net.nodes[1].store.delete(b"x", Access::MayBlock).unwrap();
    net.nodes[2].store.delete(b"y", Access::MayBlock).unwrap();
    net.settle();
    net.settle();
    assert_eq!(tombstones(&net), vec![0, 0, 0]);
    for (i, n) in net.nodes.iter().enumerate() {
        assert_eq!(n.engine.counters().collected_tombstones, 2, "node {i}");
        assert_eq!(net.value(i, b"x"), None);
        assert_eq!(net.value(i, b"y"), None);
    }
    // Late duplicates of every delta interval bring nothing back.
    let old = net.recorded.take().unwrap();
    for (to, bytes) in old {
        if tag_of(&bytes) == Some(tag::DELTAS) {
            net.queue.push_back((to, bytes));
        }
    }
    net.deliver_all();
    net.settle();
    for i in 0..3 {
        assert_eq!(net.value(i, b"x"), None, "node {i}");
    }
    // Gone from disk too.
    let Node { store, _dir, .. } = net.nodes.remove(1);
    store.close(std::time::Duration::from_secs(5)).unwrap();
    drop(store);
    let reopened = Store::open(StoreConfig::new(_dir.path(), b"same")).unwrap();
    assert!(reopened.tombstones().is_empty());
    reopened.close(std::time::Duration::from_secs(5)).unwrap();
    net.nodes[0]
        .store
        .create(b"x", Kind::ORSet, Access::MayBlock)
        .unwrap();
    update(&net.nodes[0].store, b"x", Mutation::Add(b"back"));
    net.settle();
    for i in 0..2 {
        assert_eq!(net.kind(i, b"x"), Some(Kind::ORSet), "node {i}");
        assert_eq!(net.value(i, b"x"), net.value(0, b"x"));
    }
}

/// Above `REPORT_FANOUT` members, one hello in `ceil(members / fanout)`
/// carries the stability report (each lists every member and goes to every
/// peer: one per hello would cost each node O(members²) bytes a second),
/// and remove tokens (which wait for every member's report) are still
/// collected everywhere, as are delete tombstones.
#[test]
fn stability_reports_are_spaced_out_in_large_clusters() {
    let n = REPORT_FANOUT + 2;
    let mut net = Net::new(n, 0, 71);
    net.settle();
    // Each node's members: the n - 1 other directories.
    assert_eq!(net.nodes[0].engine.member_info().len(), n - 1);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"gone", Kind::GCounter, Access::MayBlock)
        .unwrap();
    s0.create(b"set", Kind::ORSet, Access::MayBlock).unwrap();
    for i in 0..20u32 {
        update(&s0, b"set", Mutation::Add(&i.to_be_bytes()));
    }
    net.settle();
    net.nodes[1]
        .store
        .delete(b"gone", Access::MayBlock)
        .unwrap();
    for i in 0..20u32 {
        let s = &net.nodes[i as usize % n].store;
        update(s, b"set", Mutation::Remove(&i.to_be_bytes()));
    }
    net.recorded = Some(Vec::new());
    let hellos = 8;
    for i in 0..2 * hellos {
        net.step(i % 2 == 0);
    }
    let recorded = net.recorded.take().unwrap();
    let reports = recorded
        .iter()
        .filter(|(_, b)| tag_of(b) == Some(tag::FRONTIER))
        .count();
    // Every node said `hellos` hellos; a report goes to the n - 1 others.
    let every = (n - 1).div_ceil(REPORT_FANOUT);
    assert_eq!(every, 2);
    assert_eq!(reports, n * (hellos / every) * (n - 1));
    for _ in 0..3 {
        net.settle();
    }
    assert_eq!(tombstones(&net), vec![0; n]);
    for i in 0..n {
        assert_eq!(net.value(i, b"gone"), None, "node {i}");
        assert_eq!(set_entries(&net.nodes[i].store, b"set"), 0, "node {i}");
        assert!(
            net.nodes[i].engine.counters().collected_elements > 0,
            "node {i}"
        );
    }
}

/// Replicas collect at different times: a create made on a replica that
/// already dropped its tombstone survives a replica that still holds it.
#[test]
fn a_create_after_collection_survives_a_peer_still_holding_the_tombstone() {
    let mut net = Net::new(3, 0, 63);
    // Node 2 never collects.
    net.restart_engine(2, never_collect());
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::PNCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(7));
    net.settle();
    net.nodes[1].store.delete(b"x", Access::MayBlock).unwrap();
    net.settle();
    net.settle();
    assert_eq!(tombstones(&net), vec![0, 0, 1]);
    // A create on 0 (which forgot the delete) of the same type, and an
    // update on 2's side of an id it never had.
    s0.create(b"x", Kind::PNCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(5));
    net.settle();
    for i in 0..3 {
        assert_eq!(
            net.value(i, b"x"),
            Some(format!("{:?}", Value::Counter(5))),
            "node {i}"
        );
    }
    update(&net.nodes[2].store, b"x", Mutation::Increment(1));
    net.settle();
    for i in 0..3 {
        assert_eq!(net.value(i, b"x"), Some(format!("{:?}", Value::Counter(6))));
    }
}

/// Collection keeps up with writes that never pause: every node writes at
/// every step (the cluster is never quiescent, which the earlier design
/// waited for), and tombstones of deletes made meanwhile are collected on
/// every node anyway, with nothing deleted coming back.
#[test]
fn collection_keeps_up_under_continuous_writes() {
    let mut net = Net::new(3, 0, 203);
    for i in 0..3 {
        net.restart_engine(i, fast_cfg(30));
    }
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"busy", Kind::GCounter, Access::MayBlock)
        .unwrap();
    for k in 0..20 {
        s0.create(format!("d{k}").as_bytes(), Kind::GCounter, Access::MayBlock)
            .unwrap();
    }
    net.settle();
    let mut i = 0u64;
    let mut deleted = 0;
    while net
        .nodes
        .iter()
        .any(|n| n.engine.counters().collected_tombstones < 20)
    {
        for n in 0..3 {
            update(&net.nodes[n].store, b"busy", Mutation::Increment(1));
        }
        if deleted < 20 && i.is_multiple_of(3) {
            let id = format!("d{deleted}");
            net.nodes[(deleted % 3) as usize]
                .store
                .delete(id.as_bytes(), Access::MayBlock)
                .unwrap();
            deleted += 1;
        }
        net.step(i.is_multiple_of(2));
        i += 1;
        assert!(i < 3_000, "nothing collected under continuous writes");
    }
    net.settle();
    assert_eq!(tombstones(&net), vec![0, 0, 0]);
    for n in 0..3 {
        for k in 0..20 {
            assert_eq!(net.value(n, format!("d{k}").as_bytes()), None);
        }
        assert_eq!(net.value(n, b"busy"), net.value(0, b"busy"));
    }
}

/// A restarted engine collects even when a peer never writes again: the
/// peer's answer to its digest tells it the peer's log is in.
#[test]
fn a_restarted_engine_collects_while_a_peer_stays_idle() {
    let mut net = Net::new(3, 0, 207);
    net.step(true);
    net.nodes[1]
        .store
        .create(b"y", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.nodes[0]
        .store
        .create(b"x", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.settle();
    net.restart_engine(2, fast_cfg(30));
    net.settle();
    net.nodes[0].store.delete(b"x", Access::MayBlock).unwrap();
    for _ in 0..3 {
        net.settle();
    }
    assert_eq!(tombstones(&net), vec![0, 0, 0]);
    assert!(net.nodes[2].engine.counters().collected_tombstones > 0);
}

/// A digest that is never answered (lost, refused by the peer) does not
/// leave the count of outstanding digests one too high for good: a later
/// answer is still taken as the one outstanding, so a restarted engine
/// learns that an idle peer's log is in, and collects again.
#[test]
fn a_lost_digest_does_not_stop_collection_for_good() {
    let mut net = Net::new(3, 0, 404);
    net.step(true);
    net.nodes[1]
        .store
        .create(b"y", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.nodes[0]
        .store
        .create(b"x", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.settle();
    let s2 = net.nodes[2].store.clone();
    net.restart_engine(2, fast_cfg(30));
    // Its first digests are lost.
    net.drop_tag = Some(tag::DIGEST_REQUEST);
    net.step(true);
    net.step(true);
    net.drop_tag = None;
    // An explicit round (`sync`) is answered.
    let mut ev = Vec::new();
    let (_, outs) = net.nodes[2].engine.round(&s2, net.now, &mut ev);
    net.send(2, outs);
    net.deliver_all();
    net.settle();
    net.nodes[0].store.delete(b"x", Access::MayBlock).unwrap();
    for _ in 0..3 {
        net.settle();
    }
    assert_eq!(tombstones(&net), vec![0, 0, 0]);
}

// ---------------------------------------------------------------------
// Generations and the collection cut.
// Which create survives which delete: tombstones join in any order, and
// the cut kills only late copies of generations a member created before
// it, never a create it has not seen.
// ---------------------------------------------------------------------

/// The join of two tombstones can kill a record neither kills alone; a store
/// holding the record checks it against the join, so two stores merging the
/// same entries in another order agree.
#[test]
fn tombstones_and_a_record_merged_in_any_order_agree() {
    let (ga, a_at) = (rgen(100, b"a"), 200);
    let g = rgen(300, b"z");
    let (gb, b_at) = (rgen(400, b"b"), 500);
    let empty = Crdt::new(Kind::GCounter);
    let mk = || {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(StoreConfig::new(dir.path(), b"same")).unwrap();
        s.start_capture();
        (s, dir)
    };
    let (p, _dp) = mk();
    let (q, _dq) = mk();
    let ta = rmeta(ga, true, a_at);
    let tb = rmeta(gb, true, b_at);
    let rec = rmeta(g.clone(), false, 1);
    // P: a, g, b.
    assert_eq!(
        p.merge_remote(b"x", &ta, &empty).unwrap(),
        Merged::Tombstone
    );
    assert_eq!(p.merge_remote(b"x", &rec, &empty).unwrap(), Merged::Created);
    p.merge_remote(b"x", &tb, &empty).unwrap();
    // Q: a, b, g.
    q.merge_remote(b"x", &ta, &empty).unwrap();
    q.merge_remote(b"x", &tb, &empty).unwrap();
    q.merge_remote(b"x", &rec, &empty).unwrap();
    // P's own generation is now stale at P itself.
    p.merge_remote(b"x", &rec, &empty).unwrap();
    assert_eq!(
        p.metadata(b"x", Access::MayBlock).is_ok(),
        q.metadata(b"x", Access::MayBlock).is_ok(),
        "P and Q hold the same entries in another order and disagree"
    );
}

/// The same on the network: three creates of one id made one after another
/// on three nodes, the first and the last each deleted right after it was
/// made, converge (and so collect).
#[test]
fn concurrent_creates_deleted_at_once_converge() {
    let mut net = Net::new(3, 0, 91);
    net.step(true);
    net.step(true);
    // One after another: each store's clock orders its own stamps, and
    // `advance_clocks` puts each node's writes after the previous node's.
    let s = |i: usize| net.nodes[i].store.clone();
    s(0).create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    s(0).delete(b"x", Access::MayBlock).unwrap();
    net.advance_clocks();
    s(1).create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s(1), b"x", Mutation::Increment(5));
    net.advance_clocks();
    s(2).create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    s(2).delete(b"x", Access::MayBlock).unwrap();
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"x")).collect();
    assert!(vals.iter().all(|v| *v == vals[0]), "diverged: {vals:?}");
}

/// `g` was created after delete A (so A spares it) and beats the generation
/// B deleted (so B spares it). The tombstones of one id are kept apart
/// (neither covers the other), so `g` survives both, in any order of
/// arrival, and both are kept across a restart.
#[test]
fn a_create_neither_delete_covers_survives_both() {
    let (ga, a_at) = (rgen(100, b"a"), 200);
    let g = rgen(300, b"z");
    let (gb, b_at) = (rgen(400, b"b"), 500);
    let empty = Crdt::new(Kind::GCounter);
    let entries = [
        rmeta(ga, true, a_at),
        rmeta(g, false, 1),
        rmeta(gb, true, b_at),
    ];
    for order in [
        [0, 1, 2],
        [2, 1, 0],
        [0, 2, 1],
        [2, 0, 1],
        [1, 0, 2],
        [1, 2, 0],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = Store::open(StoreConfig::new(dir.path(), b"same")).unwrap();
        p.start_capture();
        for i in order {
            p.merge_remote(b"x", &entries[i], &empty).unwrap();
        }
        assert!(p.metadata(b"x", Access::MayBlock).is_ok(), "{order:?}");
        assert_eq!(p.tombstone(b"x").map(|t| t.len()), Some(2), "{order:?}");
        // Both kept across a restart.
        p.close(std::time::Duration::from_secs(5)).unwrap();
        drop(p);
        let p = Store::open(StoreConfig::new(dir.path(), b"same")).unwrap();
        assert_eq!(p.tombstone(b"x").map(|t| t.len()), Some(2), "{order:?}");
        p.close(std::time::Duration::from_secs(5)).unwrap();
    }
}

/// Past `MAX_TOMBS` the collapse of an id's tombstones depends on their
/// union only, not on the order of arrival: a create at stamp 135 that no
/// delete covers is killed after both orders or after neither.
#[test]
fn tombstone_collapse_is_order_independent() {
    use vsmcp_crdt_core::store::record::{Tomb, Tombs};
    let set = |ts: &[(u64, u64)]| {
        ts.iter()
            .map(|&(stamp, at)| Tomb {
                gen: rgen(stamp, b"r"),
                at,
            })
            .fold(None, |a, t| Tombs::join(a, Some(Tombs::one(t))))
            .unwrap()
    };
    let a = set(&[(3, 9), (27, 30), (75, 76), (117, 135), (136, 144)]);
    let b = set(&[
        (10, 23),
        (26, 54),
        (29, 58),
        (42, 86),
        (61, 99),
        (75, 111),
        (96, 131),
    ]);
    let g = rgen(135, b"r");
    assert!(!a.kills(&g) && !b.kills(&g), "no delete covers g");
    let ab = Tombs::join(Some(a.clone()), Some(b.clone())).unwrap();
    let ba = Tombs::join(Some(b), Some(a)).unwrap();
    assert_eq!(ab.kills(&g), ba.kills(&g), "{ab:?} vs {ba:?}");
}

/// A node that wrote while it had no peer (a late joiner, a node back after
/// a partition long enough to be dropped) joins a cluster that collected a
/// tombstone since. Its creates are older than the cluster's cut, but it
/// was never part of a cut: they are kept, on the writer too (the cut
/// applies per creating replica).
#[test]
fn a_late_joiners_creates_survive_a_cluster_that_collected() {
    let mut net = Net::new(3, 0, 301);
    net.cut[2] = true;
    net.step(true);
    let s2 = net.nodes[2].store.clone();
    s2.create(b"mine", Kind::GCounter, Access::MayBlock)
        .unwrap();
    update(&s2, b"mine", Mutation::Increment(42));
    net.settle();
    net.collect_on(b"junk");
    assert!(net.nodes[0].store.tomb_cut() > 0, "cluster collected");
    net.cut[2] = false;
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"mine")).collect();
    assert_eq!(
        vals,
        vec![Some(format!("{:?}", Value::Counter(42))); 3],
        "acknowledged create lost everywhere, the writer included"
    );
}

/// An incoming generation that beats ours by epoch but that the cut's
/// tombstone would not kill goes through the usual merge, so the replicas
/// converge (dropping it would leave them apart for good). Node 0 creates
/// x; node 2, cut off, creates its own x later, deletes it and creates it
/// again (epoch 1); the cluster collects, and node 2 comes back.
#[test]
fn a_higher_epoch_from_outside_the_cut_converges() {
    let mut net = Net::new(3, 0, 303);
    net.cut[2] = true;
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(100));
    net.settle();
    net.advance_clocks();
    // Node 2, alone: its own x (later stamp), deleted, created again
    // (epoch 1, still later than node 0's create; node 2's clock orders
    // its own stamps).
    let s2 = net.nodes[2].store.clone();
    s2.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    s2.delete(b"x", Access::MayBlock).unwrap();
    s2.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s2, b"x", Mutation::Increment(7));
    net.settle();
    net.collect_on(b"junk");
    assert!(net.nodes[0].store.tomb_cut() > 0, "cluster collected");
    net.cut[2] = false;
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"x")).collect();
    assert!(vals.iter().all(|v| *v == vals[0]), "diverged: {vals:?}");
}

/// The tombstone a late copy is turned into does not kill the create of a
/// replica that was never part of the cut. That tombstone carries the cut
/// as its delete stamp, later than the real (collected) delete; node 2,
/// never in touch with the cluster, created x after the delete, and its
/// create is kept as it is when no late copy came first (see
/// `a_late_joiners_creates_survive_a_cluster_that_collected`). The late
/// copy is node 1's backup, restored after the cluster collected.
#[test]
fn a_late_copy_does_not_make_the_cut_kill_a_non_members_create() {
    let mut net = Net::new(3, 0, 402);
    net.cut[2] = true;
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s0, b"x", Mutation::Increment(100));
    net.settle();
    let parent = tempfile::tempdir().unwrap();
    let copy = parent.path().join("copy");
    net.nodes[1].store.backup(&copy).unwrap();
    net.advance_clocks();
    s0.delete(b"x", Access::MayBlock).unwrap();
    net.advance_clocks();
    // Node 2, never in touch with the cluster, creates x after the delete.
    let s2 = net.nodes[2].store.clone();
    s2.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s2, b"x", Mutation::Increment(42));
    let l_stamp = s2.metadata(b"x", Access::MayBlock).unwrap().0.gen.stamp;
    // The cluster's clocks pass the create, so their cut will.
    net.advance_clocks();
    net.settle();
    net.settle();
    assert_eq!(&tombstones(&net)[..2], &[0, 0], "collected");
    assert!(
        net.nodes[0].store.tomb_cut() > l_stamp,
        "cut above the create"
    );
    // Node 1's disk dies; it comes back from its backup (a late copy of x).
    net.cut[1] = true;
    net.join(open_copy(parent, &copy));
    let mut steps = 0;
    while net.nodes[0].store.tombstone(b"x").is_none() && steps < 200 {
        net.step(steps % 2 == 0);
        steps += 1;
    }
    let synthetic = net.nodes[0]
        .store
        .tombstone(b"x")
        .expect("late copy refused");
    eprintln!("synthetic {synthetic:?}, create at {l_stamp}");
    // The restored copy goes away (so its x cannot reach node 2 before the
    // tombstone does); node 2 joins now: its create came after the delete.
    net.cut[3] = true;
    net.cut[2] = false;
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = [0, 2].iter().map(|&i| net.value(i, b"x")).collect();
    assert_eq!(
        vals,
        vec![Some(format!("{:?}", Value::Counter(42))); 2],
        "a create made after the delete was killed by the cut's tombstone"
    );
}

/// A late copy of a deleted generation that beats the record held here
/// (higher epoch) but was created after it is still taken as deleted: the
/// tombstone `(gen, min(cut, local stamp))` must kill it, or it goes
/// through the usual merge and replaces the record, and the deleted
/// generation is back.
#[test]
fn a_deleted_higher_epoch_does_not_come_back_over_a_non_members_create() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(StoreConfig::new(dir.path(), b"same")).unwrap();
    let empty = Crdt::new(Kind::GCounter);
    let a = replica24(0xAA, 1);
    let j = replica24(0xBB, 1);
    let g = |epoch, stamp, r: &std::sync::Arc<[u8]>| Gen {
        epoch,
        stamp,
        replica: r.clone(),
    };
    // Something collectable, then a collection at 1000 with A a member.
    s.merge_remote(b"junk", &rmeta(g(0, 5, &a), true, 10), &empty)
        .unwrap();
    assert_eq!(s.collect_tombstones(1000, &[(&a[..16], 1000)]).unwrap(), 1);
    // J (never a member) created x at 50, offline; it is kept (see
    // `a_late_joiners_creates_survive_a_cluster_that_collected`).
    assert_eq!(
        s.merge_remote(b"x", &rmeta(g(0, 50, &j), false, 50), &empty)
            .unwrap(),
        Merged::Created
    );
    // A late copy of A's re-create (epoch 1, stamp 100 < cut 1000, A a
    // member, not held here): by the cut rule it was deleted since.
    let m = g(1, 100, &a);
    let r = s.merge_remote(b"x", &rmeta(m.clone(), false, 100), &empty);
    let held = s.metadata(b"x", Access::MayBlock).map(|(meta, _)| meta.gen);
    assert!(
        held.as_ref().map_or(true, |h| *h != m),
        "deleted generation back: {r:?}, held {held:?}"
    );
}

/// A strict create is never cut while in flight. It stamps its generation,
/// then releases the shard lock for the disk write before it is captured
/// for sync; a hello taken meanwhile carries a clock above the stamp and a
/// root and log without the create. A peer that collects on that hello must
/// not record the creator's directory cut above the stamp, or it would
/// treat the create, when it arrives, as deleted at the cut (answering the
/// tombstone to the writer). Racy by nature: a thread keeps creating while
/// the net runs.
#[test]
fn strict_creates_in_flight_during_a_hello_are_never_cut() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use vsmcp_crdt_core::store::Durability;
    let mut net = Net::new(2, 0, 401);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path(), b"same");
    cfg.durability = Durability::Strict;
    let store = Store::open(cfg).unwrap();
    store.start_capture();
    let engine = Engine::new(&store, fast_cfg(30));
    net.nodes[0] = Node {
        store,
        engine,
        _dir: dir,
    };
    net.step(true);
    net.settle();
    let s0 = net.nodes[0].store.clone();
    let s1 = net.nodes[1].store.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut ok = Vec::new();
        let mut i = 0u32;
        while !stop2.load(Ordering::Relaxed) && i < 20_000 {
            let id = format!("k{i}");
            if s0
                .create(id.as_bytes(), Kind::GCounter, Access::MayBlock)
                .is_ok()
            {
                ok.push(id);
            }
            i += 1;
            // Paces the writer so its creates interleave with the hellos
            // (the race under test), not to order clocks.
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        ok
    });
    for k in 0..400u32 {
        // Something collectable on the peer at every scan.
        let junk = format!("junk{k}");
        s1.create(junk.as_bytes(), Kind::GCounter, Access::MayBlock)
            .unwrap();
        s1.delete(junk.as_bytes(), Access::MayBlock).unwrap();
        net.step(true);
    }
    stop.store(true, Ordering::Relaxed);
    let ok = writer.join().unwrap();
    for _ in 0..4 {
        net.step(false);
    }
    for _ in 0..4 {
        net.step(false);
    }
    // The lost ones hold a tombstone at the writer whose delete stamp is
    // the peer's cut for its directory: the hello clock just after the
    // create's stamp.
    for id in ok
        .iter()
        .filter(|id| net.value(0, id.as_bytes()).is_none())
        .take(3)
    {
        eprintln!("{id}: {:?}", net.nodes[0].store.tombstone(id.as_bytes()));
    }
    for _ in 0..3 {
        net.settle();
    }
    let lost: Vec<_> = ok
        .iter()
        .filter(|id| net.value(0, id.as_bytes()).is_none())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged strict creates lost everywhere (e.g. {:?}); tomb_cut on 1: {}",
        lost.len(),
        ok.len(),
        lost.first(),
        net.nodes[1].store.tomb_cut()
    );
}

/// A late copy of an older hello (a duplicate, or one reordered behind a
/// newer one) does not raise the peer's frontier past its log. Such a copy
/// lowers the peer's announced log position while its hello clock keeps
/// the newest; a log proof must not then claim the newest hello's clock
/// with only the older position received. Otherwise node 0 raises node 1's
/// frontier past node 1's create of `x` whose interval it has not received,
/// persists it as node 1's cut while collecting an unrelated tombstone, and
/// when the interval arrives treats the create as a late copy of a deleted
/// record: `x` (acknowledged, never deleted by anyone) is deleted on both
/// nodes.
#[test]
fn a_late_duplicate_hello_does_not_raise_a_frontier_past_the_log() {
    let mut net = Net::new(2, 0, 701);
    net.step(true);
    net.settle();
    let s0 = net.nodes[0].store.clone();
    let s1 = net.nodes[1].store.clone();
    // A hello of node 1 that the network keeps for later (a duplicate).
    let mut ev = Vec::new();
    let old_hello = net.nodes[1].engine.hello(&s1, &mut ev);
    net.settle();
    // An unrelated tombstone on node 0, due once node 1's frontier passes it.
    s0.create(b"junk", Kind::GCounter, Access::MayBlock)
        .unwrap();
    s0.delete(b"junk", Access::MayBlock).unwrap();
    net.advance_clocks();
    // Node 1 creates x; its interval to node 0 is delayed, its hello is not.
    s1.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s1, b"x", Mutation::Increment(5));
    let no_deltas_1_to_0 =
        |from: usize, to: usize, tag: u8| !(from == 1 && to == 0 && tag == tag::DELTAS);
    net.step_kept(true, &no_deltas_1_to_0);
    // The old hello arrives again.
    net.now += 100;
    let outs = net.nodes[0]
        .engine
        .receive(&s0, &old_hello.bytes, net.now, &mut ev);
    net.send_kept(0, outs, &no_deltas_1_to_0);
    net.deliver_kept(&no_deltas_1_to_0);
    for i in 0..4 {
        net.step_kept(i % 2 == 1, &no_deltas_1_to_0);
    }
    // The network heals: node 1's interval reaches node 0.
    for _ in 0..3 {
        net.settle();
    }
    let vals: Vec<_> = (0..2).map(|i| net.value(i, b"x")).collect();
    let five = Some(format!("{:?}", Value::Counter(5)));
    assert_eq!(vals, vec![five.clone(), five], "acknowledged create lost");
}

// ---------------------------------------------------------------------
// Membership: members, sessions, forgetting.
// Collection waits for every member, not just the peers an engine heard
// since it started; sessions drop and members expire by rule; a forgotten
// replica stays forgotten. (Each of these failed on the design that
// trusted the peers heard since the engine's start and waited for the
// whole cluster to be quiet; see the module docs of `sync::engine`.)
// ---------------------------------------------------------------------

/// A member that is down during a rolling restart of the others' engines
/// still holds collection back: the delete it missed is not collected
/// without it, so the record it still holds does not come back when it
/// returns.
#[test]
fn a_member_down_during_a_rolling_restart_blocks_collection() {
    let mut net = Net::new(3, 0, 1401);
    net.step(true);
    net.settle();
    let s2 = net.nodes[2].store.clone();
    s2.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s2, b"x", Mutation::Increment(7));
    net.settle();
    assert_eq!(net.value(0, b"x"), Some(format!("{:?}", Value::Counter(7))));
    // Node 2 goes silent; node 0 deletes x; nodes 0 and 1 restart their
    // engines (a rolling deploy) and keep running.
    net.cut[2] = true;
    for i in 0..10 {
        net.step(i % 2 == 0);
    }
    net.nodes[0].store.delete(b"x", Access::MayBlock).unwrap();
    net.settle();
    net.restart_engine(0, fast_cfg(30));
    net.restart_engine(1, fast_cfg(30));
    for _ in 0..3 {
        net.settle();
    }
    // The tombstone waits for node 2.
    assert_eq!(&tombstones(&net)[..2], &[1, 1]);
    // Node 2 returns with its copy of x.
    net.cut[2] = false;
    for _ in 0..4 {
        net.settle();
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"x")).collect();
    assert_eq!(vals, vec![None, None, None], "deleted counter back");
    // Node 2 acknowledged: now it is collected everywhere.
    assert_eq!(tombstones(&net), vec![0, 0, 0]);
}

/// A session silent for ten times `down_after_ms` is dropped (as the docs
/// say); its directory stays a member until `member_expiry_ms`, then
/// leaves with its frontier as its cut. What it created while away and
/// nobody had seen is kept when it returns; what was deleted stays
/// deleted.
#[test]
fn sessions_drop_after_ten_downs_and_members_expire_by_rule() {
    let mut net = Net::new(3, 0, 1405);
    let cfg = EngineConfig {
        down_after_ms: 100,
        member_expiry_ms: 3_000,
        ..fast_cfg(30)
    };
    for i in 0..3 {
        net.restart_engine(i, cfg.clone());
    }
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    net.settle();
    net.cut[2] = true;
    net.nodes[2]
        .store
        .create(b"mine", Kind::GCounter, Access::MayBlock)
        .unwrap();
    s0.delete(b"x", Access::MayBlock).unwrap();
    let me2 = net.nodes[2].engine.me().clone();
    let dir2 = vsmcp_crdt_core::sync::engine::directory_of(&me2).to_vec();
    // 1 s later (10 x 100 ms): the session is gone, the member is not.
    for i in 0..120 {
        net.step(i % 2 == 0);
    }
    assert!(!net.nodes[0].engine.peer_info().iter().any(|p| p.id == me2));
    assert!(net.nodes[0].store.is_member(&dir2));
    assert_eq!(&tombstones(&net)[..2], &[1, 1]);
    // After the expiry: removed, and collection goes on without it.
    for i in 0..250 {
        net.step(i % 2 == 0);
    }
    assert!(!net.nodes[0].store.is_member(&dir2));
    assert_eq!(&tombstones(&net)[..2], &[0, 0]);
    // It returns: x stays deleted, its own create is kept everywhere.
    net.cut[2] = false;
    for _ in 0..4 {
        net.settle();
    }
    for i in 0..3 {
        assert_eq!(net.value(i, b"x"), None, "node {i}");
        assert_eq!(
            net.value(i, b"mine"),
            Some(format!("{:?}", Value::Counter(0)))
        );
    }
}

/// A forgotten replica stays refused after the forgetting engine restarts
/// (the directory is recorded as forgotten with the store), and the others
/// collect without it.
#[test]
fn a_forgotten_replica_stays_refused_across_engine_restarts() {
    let mut net = Net::new(3, 0, 1406);
    net.step(true);
    net.settle();
    let me2 = net.nodes[2].engine.me().clone();
    let dir2 = vsmcp_crdt_core::sync::engine::directory_of(&me2).to_vec();
    net.cut[2] = true;
    for i in 0..2 {
        let s = net.nodes[i].store.clone();
        let mut ev = Vec::new();
        net.nodes[i].engine.forget(&s, &dir2, &mut ev).unwrap();
    }
    net.nodes[0]
        .store
        .create(b"x", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.settle();
    net.nodes[0].store.delete(b"x", Access::MayBlock).unwrap();
    net.restart_engine(0, fast_cfg(30));
    net.restart_engine(1, fast_cfg(30));
    for _ in 0..3 {
        net.settle();
    }
    assert_eq!(&tombstones(&net)[..2], &[0, 0]);
    net.cut[2] = false;
    for _ in 0..2 {
        net.settle();
    }
    assert!(!net.nodes[0].store.is_member(&dir2));
    assert!(!net.nodes[0].engine.peer_info().iter().any(|p| p.id == me2));
    assert!(net.nodes[0].engine.counters().rejected[Reject::Forgotten as usize] > 0);
}

/// `forget` during a storage failure changes nothing until the forgetting
/// is on disk: the error is returned, the replica stays a member and heard,
/// and a retry forgets it with its cut. (Forgotten in memory only, its cut
/// would never come, its tombstones would be held for ever, and the
/// forgetting would end at the next restart.)
#[test]
fn forget_during_a_storage_failure_fails_cleanly_and_a_retry_succeeds() {
    let mut net = Net::new(3, 0, 1409);
    net.step(true);
    net.settle();
    let me2 = net.nodes[2].engine.me().clone();
    let dir2 = vsmcp_crdt_core::sync::engine::directory_of(&me2).to_vec();
    assert!(net.nodes[0].store.is_member(&dir2));
    let s0 = net.nodes[0].store.clone();
    s0.set_fail_writes(true);
    let mut ev = Vec::new();
    assert!(net.nodes[0].engine.forget(&s0, &dir2, &mut ev).is_err());
    s0.set_fail_writes(false);
    // Nothing was forgotten: node 2 is still a member and still heard.
    assert!(net.nodes[0].store.is_member(&dir2));
    assert_eq!(net.nodes[0].store.member_cut(&dir2), 0);
    assert!(net.nodes[0].store.forgotten().unwrap().is_empty());
    net.settle();
    assert!(net.nodes[0]
        .engine
        .peer_info()
        .iter()
        .any(|p| p.id == me2 && p.up));
    // The retry forgets it for good; once node 1 forgot it too and proved
    // its state, its cut is the end of time.
    net.nodes[0].engine.forget(&s0, &dir2, &mut ev).unwrap();
    assert!(!net.nodes[0].store.is_member(&dir2));
    assert_eq!(net.nodes[0].store.forgotten().unwrap().len(), 1);
    assert!(!net.nodes[0].engine.peer_info().iter().any(|p| p.id == me2));
    assert_eq!(
        net.nodes[0].store.member_cut(&dir2),
        0,
        "node 1 still knows it"
    );
    // The pending forgetting shows, with the member holding it back.
    let dir1 = vsmcp_crdt_core::sync::engine::directory_of(net.nodes[1].engine.me()).to_vec();
    let pending = net.nodes[0].engine.forgetting_info();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (&pending[0].directory, &pending[0].held_by),
        (&dir2, &vec![dir1])
    );
    let s1 = net.nodes[1].store.clone();
    net.nodes[1].engine.forget(&s1, &dir2, &mut ev).unwrap();
    for _ in 0..4 {
        net.settle();
    }
    assert!(net.nodes[0].engine.forgetting_info().is_empty());
    assert_eq!(net.nodes[0].store.member_cut(&dir2), u64::MAX);
    assert_eq!(net.nodes[1].store.member_cut(&dir2), u64::MAX);
}

/// A record the forgotten replica created and shipped to a live member,
/// but not yet to the forgetting node, is a live record: forgetting must
/// not delete it (the forgetting node must not treat it as a late copy
/// while a member may still hold it).
#[test]
fn forgetting_keeps_a_record_a_live_member_holds() {
    let mut net = Net::new(3, 0, 2201);
    net.step(true);
    net.settle();
    let me2 = net.nodes[2].engine.me().clone();
    let dir2 = vsmcp_crdt_core::sync::engine::directory_of(&me2).to_vec();
    // Node 0 is cut off for a moment while node 2 writes x (node 1 gets it).
    let iso0 = |f: usize, t: usize, _tag: u8| f != 0 && t != 0;
    let s2 = net.nodes[2].store.clone();
    s2.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s2, b"x", Mutation::Increment(5));
    for i in 0..20 {
        net.step_kept(i % 2 == 0, &iso0);
    }
    let five = Some(format!("{:?}", Value::Counter(5)));
    assert_eq!(net.value(1, b"x"), five, "node 1 holds x");
    assert_eq!(net.value(0, b"x"), None, "node 0 lacks x");
    // Node 2 is lost for good; the survivors forget it.
    net.cut[2] = true;
    for i in 0..2 {
        let s = net.nodes[i].store.clone();
        net.nodes[i]
            .engine
            .forget(&s, &dir2, &mut Vec::new())
            .unwrap();
    }
    for _ in 0..4 {
        net.settle();
    }
    assert_eq!(net.value(1, b"x"), five, "node 1 lost x");
    assert_eq!(net.value(0, b"x"), five, "node 0 lacks x");
    assert_eq!(net.nodes[0].store.member_cut(&dir2), u64::MAX);
}

/// Forgetting is rolled out node by node: a write the forgotten replica
/// makes after node 0 forgot it, while node 1 has not yet, reaches node 0
/// through node 1 and is kept everywhere.
#[test]
fn forgetting_keeps_a_write_relayed_while_it_is_rolled_out() {
    let mut net = Net::new(3, 0, 2202);
    net.step(true);
    net.settle();
    let me2 = net.nodes[2].engine.me().clone();
    let dir2 = vsmcp_crdt_core::sync::engine::directory_of(&me2).to_vec();
    let s0 = net.nodes[0].store.clone();
    net.nodes[0]
        .engine
        .forget(&s0, &dir2, &mut Vec::new())
        .unwrap();
    net.advance_clocks();
    let s2 = net.nodes[2].store.clone();
    s2.create(b"y", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s2, b"y", Mutation::Increment(7));
    for _ in 0..3 {
        net.settle();
    }
    // Node 2 goes; node 1 forgets it too.
    net.cut[2] = true;
    let s1 = net.nodes[1].store.clone();
    net.nodes[1]
        .engine
        .forget(&s1, &dir2, &mut Vec::new())
        .unwrap();
    for _ in 0..4 {
        net.settle();
    }
    let seven = Some(format!("{:?}", Value::Counter(7)));
    assert_eq!(net.value(1, b"y"), seven, "node 1 lost y");
    assert_eq!(net.value(0, b"y"), seven, "node 0 lacks y");
}

/// Forgetting waits for a member's member we never heard: in a line of
/// four nodes (0-1, 1-2, 2-3), node 3 writes `r` that only node 2 gets,
/// then is lost and forgotten by nodes 0 and 1. Node 1 never knew node 3,
/// but its reports list node 2, which node 0 does not know: node 0 must not
/// treat `r` as a late copy when node 2 passes it on through node 1.
#[test]
fn forgetting_waits_for_a_members_member_we_never_heard() {
    let mut net = Net::new(4, 0, 3301);
    let linked = |a: usize, b: usize| matches!((a.min(b), a.max(b)), (0, 1) | (1, 2) | (2, 3));
    let line = move |f: usize, t: usize, _: u8| linked(f, t);
    for i in 0..40 {
        net.step_kept(i % 2 == 0, &line);
    }
    let dir = |n: &Node| vsmcp_crdt_core::sync::engine::directory_of(n.engine.me()).to_vec();
    let dir3 = dir(&net.nodes[3]);
    assert!(!net.nodes[0].store.is_member(&dir(&net.nodes[2])));
    let split = move |f: usize, t: usize, g: u8| line(f, t, g) && !(f.min(t) == 1 && f.max(t) == 2);
    let s3 = net.nodes[3].store.clone();
    s3.create(b"r", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s3, b"r", Mutation::Increment(9));
    for i in 0..20 {
        net.step_kept(i % 2 == 0, &split);
    }
    let nine = Some(format!("{:?}", Value::Counter(9)));
    assert_eq!(net.value(2, b"r"), nine);
    assert_eq!(net.value(1, b"r"), None);
    let gone = move |f: usize, t: usize, g: u8| split(f, t, g) && f != 3 && t != 3;
    for i in [0, 1] {
        let s = net.nodes[i].store.clone();
        net.nodes[i]
            .engine
            .forget(&s, &dir3, &mut Vec::new())
            .unwrap();
    }
    for i in 0..40 {
        net.step_kept(i % 2 == 0, &gone);
    }
    let healed = move |f: usize, t: usize, g: u8| line(f, t, g) && f != 3 && t != 3;
    for i in 0..120 {
        net.step_kept(i % 2 == 0, &healed);
    }
    let vals: Vec<_> = (0..3).map(|i| net.value(i, b"r")).collect();
    assert_eq!(vals, vec![nine.clone(), nine.clone(), nine], "r lost");
}

/// `forget` refuses what names no peer directory (a member's directory
/// passed through `directory_of`, which leaves nothing) and our own
/// directory: nothing is forgotten, and the error says so.
#[test]
fn forget_refuses_what_is_not_a_peer_directory() {
    let mut net = Net::new(2, 0, 2203);
    net.step(true);
    net.settle();
    let dir_of = |n: &Node| vsmcp_crdt_core::sync::engine::directory_of(n.engine.me()).to_vec();
    let (dir0, dir1) = (dir_of(&net.nodes[0]), dir_of(&net.nodes[1]));
    let stripped =
        vsmcp_crdt_core::sync::engine::directory_of(&vsmcp_crdt_core::ReplicaId::new(&dir1))
            .to_vec();
    let s0 = net.nodes[0].store.clone();
    for d in [stripped, dir0.clone()] {
        let r = net.nodes[0].engine.forget(&s0, &d, &mut Vec::new());
        assert!(
            matches!(r, Err(vsmcp_crdt_core::Error::InvalidArgument(_))),
            "{r:?}"
        );
    }
    assert!(s0.is_member(&dir1));
    assert_eq!(s0.member_cut(&dir0), 0);
    assert!(s0.forgotten().unwrap().is_empty());
    // A member's directory itself is accepted.
    net.nodes[0]
        .engine
        .forget(&s0, &dir1, &mut Vec::new())
        .unwrap();
    assert!(!s0.is_member(&dir1));
}

// ---------------------------------------------------------------------
// Clock skew.
// A clock that ran ahead is not locked out and its future writes wait; a
// clock announced to peers is one saved on disk.
// ---------------------------------------------------------------------

/// A node whose clock ran ahead of the others' offset (or whose persisted
/// clock is still ahead after its clock was fixed) is not locked out: it
/// stays known, a member and in sync with everything the others write,
/// both sides show the offset, and only its own writes stamped beyond the
/// offset wait until the others' clocks reach them. Nothing deleted comes
/// back and collection completes.
#[test]
fn a_node_whose_clock_ran_ahead_stays_in_sync_and_its_future_writes_wait() {
    let mut net = Net::new(3, 0, 1403);
    net.step(true);
    let s0 = net.nodes[0].store.clone();
    s0.create(b"x", Kind::GCounter, Access::MayBlock).unwrap();
    s0.create(b"r", Kind::LwwRegister, Access::MayBlock)
        .unwrap();
    net.settle();
    // Node 2 (offset 5 s) takes a clock 1.5 s ahead of the others' 500 ms.
    net.reopen_store(2, |c| c.max_clock_offset_ms = 5_000);
    let ahead = vsmcp_crdt_core::Timestamp::new(vsmcp_crdt_core::hlc::now_ms() + 1_500, 0);
    net.nodes[2].store.receive_clock(ahead).unwrap();
    for _ in 0..2 {
        net.settle();
    }
    // It receives what the others write.
    net.nodes[0].store.delete(b"x", Access::MayBlock).unwrap();
    update(&s0, b"r", Mutation::Set(b"from 0"));
    for _ in 0..2 {
        net.settle();
    }
    assert_eq!(net.value(2, b"x"), None);
    assert_eq!(net.value(2, b"r"), net.value(0, b"r"));
    // Its own register write is stamped 1.5 s ahead: refused, counted and
    // shown with the offset.
    update(&net.nodes[2].store, b"r", Mutation::Set(b"from 2"));
    for _ in 0..2 {
        net.settle();
    }
    assert_ne!(net.value(0, b"r"), net.value(2, b"r"));
    let me2 = net.nodes[2].engine.me().clone();
    let seen = net.nodes[0].engine.peer_info();
    let p2 = seen.iter().find(|p| p.id == me2).expect("node 2 known");
    assert!(p2.refused_ahead_ms >= 1_000, "{p2:?}");
    assert!(p2.clock_offset_ms >= 1_000, "{p2:?}");
    assert!(net.nodes[0].engine.counters().rejected[Reject::ClockAhead as usize] > 0);
    // Once the others' clocks reach its stamps, it converges.
    // (Real time: what holds its writes back is the others' wall clock.)
    wait_until_wall_clock_reaches(ahead.wall_ms + 50);
    for _ in 0..4 {
        net.settle();
    }
    for i in 0..3 {
        assert_eq!(net.value(i, b"x"), None, "node {i}");
        assert_eq!(net.value(i, b"r"), net.value(2, b"r"), "node {i}");
    }
    assert_eq!(tombstones(&net), vec![0, 0, 0]);
}

/// A forgotten directory's cut is the end of time, so a record it stamped
/// however far ahead is deleted on arrival and leaves no tombstone behind.
/// A replica whose clock ran ahead is lost for good and forgotten; a
/// restored copy of it brings a record it stamped past the others' clocks.
/// With the forgetting node's clock as the cut (below that stamp), the
/// record would merge as "created after the cut" and its tombstone, once
/// deleted, could never be collected (no cut ever covers it).
#[test]
fn a_forgotten_replica_whose_clock_ran_ahead_leaves_no_tombstone_behind() {
    let mut net = Net::new(3, 0, 1408);
    net.step(true);
    net.settle();
    // Node 2 (offset 5 s) takes a clock 1.5 s ahead of the others' 500 ms
    // and creates y there; the others refuse the create for now.
    net.reopen_store(2, |c| c.max_clock_offset_ms = 5_000);
    let ahead = vsmcp_crdt_core::Timestamp::new(vsmcp_crdt_core::hlc::now_ms() + 1_500, 0);
    net.nodes[2].store.receive_clock(ahead).unwrap();
    let s2 = net.nodes[2].store.clone();
    s2.create(b"y", Kind::GCounter, Access::MayBlock).unwrap();
    update(&s2, b"y", Mutation::Increment(5));
    let parent = tempfile::tempdir().unwrap();
    let copy = parent.path().join("copy");
    s2.backup(&copy).unwrap();
    // Node 2 is lost for good and forgotten by the others.
    net.cut[2] = true;
    let me2 = net.nodes[2].engine.me().clone();
    let dir2 = vsmcp_crdt_core::sync::engine::directory_of(&me2).to_vec();
    for i in 0..2 {
        let s = net.nodes[i].store.clone();
        let mut ev = Vec::new();
        net.nodes[i].engine.forget(&s, &dir2, &mut ev).unwrap();
    }
    // Once the others' clocks pass y's stamp, its backup joins as a new
    // replica (the lost one forgotten there too, as the guide says), and
    // node 0 deletes whatever y it has.
    wait_until_wall_clock_reaches(ahead.wall_ms + 50);
    let mut restored = open_copy(parent, &copy);
    restored
        .engine
        .forget(&restored.store, &dir2, &mut Vec::new())
        .unwrap();
    net.join(restored);
    for _ in 0..3 {
        net.settle();
    }
    let _ = net.nodes[0].store.delete(b"y", Access::MayBlock);
    for _ in 0..6 {
        net.settle();
    }
    for i in [0, 1, 3] {
        assert_eq!(net.value(i, b"y"), None, "node {i}");
    }
    let held: Vec<usize> = [0, 1, 3]
        .iter()
        .map(|&i| net.nodes[i].store.tombstones().len())
        .collect();
    assert_eq!(held, vec![0, 0, 0], "tombstones held");
}

/// A hello whose flush failed does not announce a clock that is not on
/// disk. Were it announced, a peer would cut at it; the node restarts
/// (within its clock's lead over the wall clock, at most `max_offset`) and
/// stamps a create below the cut, which the peer would take for a late
/// copy of a deleted record and delete on the writer too.
#[test]
fn a_hello_whose_flush_failed_does_not_announce_an_unsaved_clock() {
    use vsmcp_crdt_core::hlc::now_ms;
    use vsmcp_crdt_core::Timestamp;
    let mut net = Net::new(2, 0, 502);
    net.settle();
    let s0 = net.nodes[0].store.clone();
    let s1 = net.nodes[1].store.clone();
    // Node 0's disk starts failing; its clock was pulled ahead by a peer
    // (within the accepted offset).
    s0.set_fail_writes(true);
    s0.receive_clock(Timestamp::new(now_ms() + 490, 0)).unwrap();
    // Something for node 1 to collect (node 0 never held it).
    s1.create(b"junk", Kind::GCounter, Access::MayBlock)
        .unwrap();
    s1.delete(b"junk", Access::MayBlock).unwrap();
    let mut steps = 0;
    while !s1.tombstones().is_empty() && steps < 100 {
        net.step(steps % 2 == 0);
        steps += 1;
    }
    // (Node 1 does not collect here: node 0 announces no clock beyond
    // the one on its disk, so the cut stays below it.)
    drop(s0);
    // Node 0 restarts.
    let path = net.nodes[0]._dir.path().to_path_buf();
    let spare = tempfile::tempdir().unwrap();
    let placeholder = Store::open(StoreConfig::new(spare.path(), b"same")).unwrap();
    let engine = Engine::new(&placeholder, fast_cfg(30));
    let old = std::mem::replace(
        &mut net.nodes[0],
        Node {
            store: placeholder,
            engine,
            _dir: spare,
        },
    );
    let Node {
        store,
        engine,
        _dir,
    } = old;
    drop(engine);
    let _ = store.close(std::time::Duration::ZERO);
    drop(store);
    let store = Store::open(StoreConfig::new(&path, b"same")).unwrap();
    store.start_capture();
    store
        .create(b"mine", Kind::GCounter, Access::MayBlock)
        .unwrap();
    let stamp = store
        .metadata(b"mine", Access::MayBlock)
        .unwrap()
        .0
        .gen
        .stamp;
    assert!(stamp >= s1.tomb_cut(), "stamped below a cut");
    let engine = Engine::new(&store, fast_cfg(30));
    let _ = std::mem::replace(
        &mut net.nodes[0],
        Node {
            store,
            engine,
            _dir,
        },
    );
    for _ in 0..3 {
        net.settle();
    }
    assert!(
        net.value(0, b"mine").is_some() && net.value(1, b"mine").is_some(),
        "acknowledged create lost: {:?} / {:?}",
        net.value(0, b"mine"),
        net.value(1, b"mine")
    );
}
