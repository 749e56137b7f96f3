//! Every size limit of the sync protocol, tested at the limit and one past
//! it: the message is built at exactly the limit and decodes (or is taken
//! by the engine), and the same message one byte, entry or element larger
//! is refused. The table "Size limits" of `guides/distributed-sync.md`
//! names these tests.
//!
//! Messages are built with the public codec (`Message::encode_seq`) and
//! brought to an exact byte length by sizing one entry's value: the
//! decoder reads the bytes, so the length that counts is that of the
//! encoded message, header and clock included.

mod common;

use common::net::Net;
use std::sync::Arc;
use vsmcp_crdt_core::causal::ReplicaId;
use vsmcp_crdt_core::store::record::{encode_parts, Gen, Meta};
use vsmcp_crdt_core::store::Access;
use vsmcp_crdt_core::sync::wire::{
    check_payload, Message, MAX_FRONTIERS, MAX_HELLO_ATTRS, MAX_MESSAGE_BYTES,
    MAX_SINGLE_ENTRY_MESSAGE_BYTES,
};
use vsmcp_crdt_core::sync::{Reject, BUCKETS};
use vsmcp_crdt_core::{Crdt, Kind, Op, Timestamp};

/// Most versions a hello may list (`Message::decode`).
const MAX_HELLO_VERSIONS: usize = 32;
/// Longest frontier directory in a `Frontier` report (`Message::decode`).
const MAX_FRONTIER_DIRECTORY_BYTES: usize = 64;
/// Longest sync id, or creating replica id, the engine takes from a peer
/// (`MAX_ID_BYTES` of `sync::engine`, private there).
const MAX_ID_BYTES: usize = 64;

fn from() -> ReplicaId {
    ReplicaId::from("limits")
}

fn clock() -> Timestamp {
    Timestamp::new(1_700_000_000_000, 3)
}

/// A store record of an LWW register holding `len` bytes: an entry every
/// receiver can check and merge.
fn register_record(len: usize) -> Vec<u8> {
    let mut c = Crdt::new(Kind::LwwRegister);
    c.mutate(&from(), Op::Set(&vec![7u8; len], Timestamp::new(1, 0)))
        .unwrap();
    let meta = Meta {
        kind: Kind::LwwRegister,
        created_by: Arc::from(&b"n"[..]),
        created_at: 1,
        updated_at: 1,
        gen: Gen::default(),
        deleted: false,
    };
    encode_parts(&meta, &c.encode())
}

/// What a `Deltas` or `States` message is made of, before its entries.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Deltas,
    States,
}

fn message(shape: Shape, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Message {
    match shape {
        Shape::Deltas => Message::Deltas {
            from: from(),
            base: 4,
            seq_start: 5,
            seq_end: 4 + entries.len() as u64,
            entries,
        },
        Shape::States => Message::States {
            from: from(),
            entries,
            last: false,
        },
    }
}

/// Records of LWW registers for a message of `n` entries of about
/// `target` bytes (a little less: the ids make up the rest). Every value
/// is at least 64 KiB, so every length prefix has its widest form.
fn records(n: usize, target: usize) -> Vec<Vec<u8>> {
    let record_overhead = register_record(1 << 16).len() - (1 << 16);
    let each = (target - 128) / n;
    (0..n)
        .map(|_| register_record(each - record_overhead))
        .collect()
}

/// The encoded `shape` message in `version` of `records`, whose length is
/// exactly `target` bytes: the last entry's id (`e0`, `e1`, ... padded
/// with `_`) takes up the difference, so the same records give a message
/// at a limit and one a byte past it.
fn exactly(shape: Shape, version: u8, records: &[Vec<u8>], target: usize) -> Vec<u8> {
    let build = |pad: usize| {
        let entries = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut id = format!("e{i}").into_bytes();
                if i + 1 == records.len() {
                    id.resize(id.len() + pad, b'_');
                }
                (id, r.clone())
            })
            .collect();
        message(shape, entries).encode_seq(version, clock(), 9)
    };
    let pad = target - build(0).len();
    assert!(pad < 200, "{pad}: ids stay short (one length byte)");
    let bytes = build(pad);
    assert_eq!(bytes.len(), target, "{shape:?} in version {version}");
    bytes
}

/// Decodes, and every entry is a record a receiver can merge.
fn accepted(bytes: &[u8], entries: usize) {
    let msg = Message::decode(bytes).unwrap_or_else(|e| panic!("{} bytes: {e}", bytes.len()));
    let got = match &msg {
        Message::Deltas { entries, .. } | Message::States { entries, .. } => entries,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), entries);
    for (_, payload) in got {
        check_payload(payload).unwrap();
    }
}

fn refused(bytes: &[u8]) {
    assert!(
        Message::decode(bytes).is_err(),
        "{} bytes accepted",
        bytes.len()
    );
}

/// `MAX_MESSAGE_BYTES`: a message of two or three entries of exactly 1 MiB
/// is taken, one byte more is refused, in every version and both shapes.
#[test]
fn a_multi_entry_message_of_exactly_max_message_bytes_is_accepted_and_one_byte_more_refused() {
    for n in [2, 3] {
        let records = records(n, MAX_MESSAGE_BYTES);
        for shape in [Shape::Deltas, Shape::States] {
            for version in [1, 2, 4] {
                accepted(&exactly(shape, version, &records, MAX_MESSAGE_BYTES), n);
                refused(&exactly(shape, version, &records, MAX_MESSAGE_BYTES + 1));
            }
        }
    }
}

/// Past `MAX_MESSAGE_BYTES` the engine counts a multi-entry message as
/// `oversized`, not `malformed`.
#[test]
fn the_engine_counts_a_multi_entry_message_one_byte_past_the_limit_as_oversized() {
    let mut net = Net::new(1, 0, 51);
    let n = &mut net.nodes[0];
    let mut ev = Vec::new();
    let records = records(2, MAX_MESSAGE_BYTES);
    for shape in [Shape::Deltas, Shape::States] {
        let past = exactly(shape, 4, &records, MAX_MESSAGE_BYTES + 1);
        let _ = n.engine.receive(&n.store, &past, 1_000, &mut ev);
    }
    let rejected = n.engine.counters().rejected;
    assert_eq!(rejected[Reject::Oversized as usize], 2);
    assert_eq!(rejected[Reject::Malformed as usize], 0);
}

/// `MAX_SINGLE_ENTRY_MESSAGE_BYTES`: a message of one entry of exactly
/// 64 MiB is taken, one byte more is refused.
#[test]
fn a_single_entry_message_of_exactly_64_mib_is_accepted_and_one_byte_more_refused() {
    let records = records(1, MAX_SINGLE_ENTRY_MESSAGE_BYTES);
    for shape in [Shape::Deltas, Shape::States] {
        accepted(
            &exactly(shape, 4, &records, MAX_SINGLE_ENTRY_MESSAGE_BYTES),
            1,
        );
        refused(&exactly(
            shape,
            4,
            &records,
            MAX_SINGLE_ENTRY_MESSAGE_BYTES + 1,
        ));
    }
}

fn hello(from: ReplicaId, versions: Vec<u8>, attrs: Vec<u8>) -> Message {
    Message::Hello {
        from,
        versions,
        clock: clock(),
        root: 0,
        log_pos: 0,
        attrs,
    }
}

/// A hello lists 1 to 32 versions and at most `MAX_HELLO_ATTRS` bytes of
/// attributes.
#[test]
fn a_hello_of_32_versions_and_4096_attribute_bytes_is_accepted_and_one_more_refused() {
    let ok = |versions: usize, attrs: usize| {
        let m = hello(from(), vec![4; versions], vec![b'a'; attrs]);
        Message::decode(&m.encode()).map(|back| assert_eq!(back, m))
    };
    assert!(ok(MAX_HELLO_VERSIONS, MAX_HELLO_ATTRS).is_ok());
    assert!(ok(1, 0).is_ok());
    assert!(ok(MAX_HELLO_VERSIONS + 1, 0).is_err());
    assert!(ok(0, 0).is_err());
    assert!(ok(1, MAX_HELLO_ATTRS + 1).is_err());
}

fn frontier(entries: usize, dir_bytes: usize) -> Message {
    Message::Frontier {
        from: from(),
        at: 8,
        frontiers: (0..entries)
            .map(|i| {
                let mut d = vec![b'd'; dir_bytes];
                d[..4].copy_from_slice(&(i as u32).to_be_bytes());
                (d, i as u64)
            })
            .collect(),
    }
}

/// A frontier report holds at most `MAX_FRONTIERS` (256) entries, each of
/// a directory of at most 64 bytes.
#[test]
fn a_frontier_report_of_256_entries_of_64_bytes_is_accepted_and_one_more_refused() {
    assert_eq!(MAX_FRONTIERS, 256);
    let decode = |m: &Message| Message::decode(&m.encode_with(4, clock()));
    let at = frontier(MAX_FRONTIERS, MAX_FRONTIER_DIRECTORY_BYTES);
    assert_eq!(decode(&at).unwrap(), at);
    assert!(decode(&frontier(MAX_FRONTIERS + 1, MAX_FRONTIER_DIRECTORY_BYTES)).is_err());
    assert!(decode(&frontier(1, MAX_FRONTIER_DIRECTORY_BYTES + 1)).is_err());
    // One long directory among 256 good ones.
    let mut one_long = at;
    if let Message::Frontier { frontiers, .. } = &mut one_long {
        frontiers[255].0.push(b'x');
    }
    assert!(decode(&one_long).is_err());
}

/// A digest request carries exactly `BUCKETS` (256) bucket hashes.
#[test]
fn a_digest_request_of_exactly_256_buckets_is_accepted_and_255_or_257_refused() {
    assert_eq!(BUCKETS, 256);
    for version in [1, 4] {
        for n in [BUCKETS - 1, BUCKETS, BUCKETS + 1] {
            let m = Message::DigestRequest {
                from: from(),
                buckets: (0..n as u64).collect(),
            };
            let back = Message::decode(&m.encode_with(version, clock()));
            if n == BUCKETS {
                assert_eq!(back.unwrap(), m);
            } else {
                assert!(back.is_err(), "{n} buckets accepted");
            }
        }
    }
}

fn malformed(net: &Net, node: usize) -> u64 {
    net.nodes[node].engine.counters().rejected[Reject::Malformed as usize]
}

/// A sync id of `len` bytes, distinct per `k`.
fn long_id(len: usize, k: u8) -> ReplicaId {
    let mut v = vec![k; len];
    v[0] = b'z';
    ReplicaId::new(&v)
}

/// The engine takes a hello from a sync id of 64 bytes and counts one of
/// 65 bytes as `malformed`.
#[test]
fn the_engine_takes_a_sender_id_of_64_bytes_and_refuses_65_as_malformed() {
    let mut net = Net::new(1, 0, 52);
    net.step(true);
    let before = net.nodes[0].engine.peer_info().len();
    let n = &mut net.nodes[0];
    let mut ev = Vec::new();
    let send = |n: &mut common::net::Node, ev: &mut Vec<_>, len: usize| {
        let m = Message::Hello {
            from: long_id(len, 1),
            versions: vec![1, 2, 3, 4],
            clock: n.store.clock(),
            root: 0,
            log_pos: 0,
            attrs: Vec::new(),
        };
        n.engine.receive(&n.store, &m.encode(), 1_000, ev)
    };
    let answer = send(n, &mut ev, MAX_ID_BYTES);
    assert!(!answer.is_empty(), "a hello from 64 bytes is answered");
    assert_eq!(malformed(&net, 0), 0, "{ev:?}");
    assert_eq!(net.nodes[0].engine.peer_info().len(), before + 1);
    let n = &mut net.nodes[0];
    ev.clear();
    let answer = send(n, &mut ev, MAX_ID_BYTES + 1);
    assert!(answer.is_empty());
    assert_eq!(malformed(&net, 0), 1);
    assert!(ev
        .iter()
        .any(|e| format!("{e:?}").contains("sender id too long")));
    assert_eq!(net.nodes[0].engine.peer_info().len(), before + 1);
}

/// An entry whose creating replica id (`Gen::replica`) is 64 bytes long is
/// merged; one of 65 bytes is counted as `malformed` and not merged.
#[test]
fn the_engine_merges_an_entry_created_by_a_64_byte_replica_and_refuses_65_as_malformed() {
    let mut net = Net::new(2, 0, 53);
    net.step(true);
    net.step(true);
    let from = net.nodes[1].engine.me().clone();
    let entry = |id: &[u8], replica_len: usize| {
        let meta = Meta {
            kind: Kind::GCounter,
            created_by: Arc::from(&b"n"[..]),
            created_at: 1,
            updated_at: 1,
            gen: Gen {
                epoch: 0,
                stamp: 1,
                replica: Arc::from(vec![b'r'; replica_len]),
            },
            deleted: false,
        };
        let mut c = Crdt::new(Kind::GCounter);
        c.mutate(&ReplicaId::from("r"), Op::Increment(1)).unwrap();
        (id.to_vec(), encode_parts(&meta, &c.encode()))
    };
    let n = &mut net.nodes[0];
    let mut ev = Vec::new();
    let m = Message::States {
        from: from.clone(),
        entries: vec![entry(b"at", MAX_ID_BYTES), entry(b"past", MAX_ID_BYTES + 1)],
        last: true,
    };
    let bytes = m.encode_seq(4, n.store.clock(), 1);
    let _ = n.engine.receive(&n.store, &bytes, net.now, &mut ev);
    let has = |id: &[u8]| n.store.read(id, Access::MayBlock, |_| ()).is_ok();
    assert!(has(b"at"), "{ev:?}");
    assert!(!has(b"past"));
    assert_eq!(malformed(&net, 0), 1, "{ev:?}");
    assert!(ev
        .iter()
        .any(|e| format!("{e:?}").contains("replica id too long")));
}
