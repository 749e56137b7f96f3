//! The fuzz harness: one function per family of decoders that read bytes
//! from outside (a peer, a file, the replaced DETS store). Each feeds its
//! input to every decoder of the family; none may panic, and each
//! allocation is bounded by what the input holds (libFuzzer's
//! `-malloc_limit_mb` reports a larger one as a crash). Where a decoder
//! accepts the input, cheap invariants that hold for every accepted value
//! are asserted: the value survives an encode and decode, joins are
//! idempotent, equal states hash alike in the digest.
//!
//! Shared, through `#[path]`, by the fuzz targets (`fuzz_targets/*.rs`) and
//! by the core's `tests/fuzz_regressions.rs`, which replays the committed
//! inputs (`regressions/`, `seeds/`) in every `cargo test`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use vsmcp_crdt_core::causal::ReplicaId;
use vsmcp_crdt_core::crdt::Crdt;
use vsmcp_crdt_core::hlc::Timestamp;
use vsmcp_crdt_core::record::{self, Meta, Record, Tombs};
use vsmcp_crdt_core::store::import::{import_gen, LegacyEntry, LegacyState};
use vsmcp_crdt_core::store::{Store, StoreConfig};
use vsmcp_crdt_core::sync::canonical::{canonical_state_bytes, digest_bytes};
use vsmcp_crdt_core::sync::digest::{item_hash, Digest};
use vsmcp_crdt_core::sync::wire::{check_payload, Message, MAX_MESSAGE_BYTES};
use vsmcp_crdt_core::sync::{Engine, EngineConfig};
use vsmcp_crdt_core::term::{self, ValueBuilder};

/// A target: what it does with one input.
pub type Target = fn(&[u8]);

/// The targets, by name (the fuzz binaries and the directories of
/// `seeds/` and `regressions/` have these names).
pub const TARGETS: [(&str, Target); 7] = [
    ("wire", wire),
    ("record", record),
    ("crdt", crdt),
    ("digest", digest),
    ("import", import),
    ("term", term),
    ("engine", engine),
];

/// Two inputs from one: a 2-byte length of the first, then both.
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data {
        [a, b, rest @ ..] => {
            let n = (u16::from_le_bytes([*a, *b]) as usize).min(rest.len());
            rest.split_at(n)
        }
        _ => (data, &[]),
    }
}

/// The inverse of [`split2`] (for writing seeds).
pub fn join2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = (a.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

/// Sync messages of every tag and version (`Message::decode_envelope`),
/// the records they carry (`check_payload`, then the record decoders), and
/// the re-encoding of what decoded.
pub fn wire(data: &[u8]) {
    let Ok(env) = Message::decode_envelope(data) else {
        return;
    };
    assert_eq!(Message::decode(data).as_ref(), Ok(&env.msg));
    match &env.msg {
        Message::Deltas { entries, .. } | Message::States { entries, .. } => {
            for (_, payload) in entries {
                if check_payload(payload).is_ok() {
                    record_accepted(payload);
                }
            }
        }
        Message::DigestRequest { buckets, .. } => {
            let diff = Digest::new().diff(buckets);
            assert!(diff.windows(2).all(|w| w[0] < w[1]));
        }
        _ => {}
    }
    // What decoded encodes (in the version it came in; a `Hello` always in
    // version 1) and decodes to the same message, clock and sequence.
    if data.len() > MAX_MESSAGE_BYTES {
        return;
    }
    let clock = env.clock.unwrap_or(Timestamp::ZERO);
    let again = env.msg.encode_seq(env.version, clock, env.seq);
    let back = Message::decode_envelope(&again).expect("a decoded message encodes and decodes");
    assert_eq!(back.msg, env.msg);
    assert_eq!(back.clock, env.clock);
    if !matches!(env.msg, Message::Hello { .. }) {
        assert_eq!((back.version, back.seq), (env.version, env.seq));
    }
}

/// Stored records and merge operands (`Record::decode`, `decode_parts`,
/// the RocksDB merge operator `merge_records`) and tombstones
/// (`decode_tombs`, `decode_tomb`). The input is one record (or
/// tombstone), and also two (see [`split2`]) for merges.
pub fn record(data: &[u8]) {
    record_one(data);
    let (a, b) = split2(data);
    record_one(a);
    record_one(b);
    // Two operands, in either order, over either base: no panic, and a
    // result only from decodable records.
    for (base, op) in [(a, b), (b, a)] {
        if let Some(merged) = record::merge_records(Some(base), [op].into_iter()) {
            assert!(Record::decode(&merged).is_ok());
        }
        let _ = record::merge_records(None, [base, op].into_iter());
    }
    let (ta, tb) = (record::decode_tombs(a), record::decode_tombs(b));
    if let (Ok(ta), Ok(tb)) = (ta, tb) {
        let ab = Tombs::join(Some(ta.clone()), Some(tb.clone()));
        let ba = Tombs::join(Some(tb), Some(ta));
        // Commutative (the module's claim), at any size.
        assert_eq!(ab, ba);
    }
}

fn record_one(data: &[u8]) {
    let parts = record::decode_parts(data);
    let rec = Record::decode(data);
    match (&parts, &rec) {
        (Ok((meta, _)), Ok(r)) => assert_eq!((meta, r.crdt.kind()), (&r.meta, meta.kind)),
        (Ok((meta, body)), Err(_)) => {
            // Refused only for the state, or a kind that does not match.
            if let Ok(c) = Crdt::decode(body) {
                assert_ne!(c.kind(), meta.kind);
            }
        }
        (Err(_), Ok(_)) => panic!("a record decodes whose parts do not"),
        (Err(_), Err(_)) => {}
    }
    let merged = record::merge_records(None, [data].into_iter());
    assert_eq!(merged.is_some(), parts.is_ok());
    if rec.is_ok() {
        record_accepted(data);
    }
    if let Ok(ts) = record::decode_tombs(data) {
        assert!(!ts.is_empty() && ts.len() <= record::MAX_TOMBS);
        let again = record::decode_tombs(&record::encode_tombs(&ts)).expect("tombstones re-read");
        assert_eq!(again, ts);
        assert_eq!(Tombs::join(Some(ts.clone()), Some(ts.clone())), Some(ts));
    }
    let _ = record::decode_tomb(data);
}

/// A record that decoded: it re-encodes to itself, and joins itself (the
/// merge operator over itself) to itself.
fn record_accepted(data: &[u8]) {
    let Ok(rec) = Record::decode(data) else {
        return;
    };
    let again = Record::decode(&rec.encode()).expect("a decoded record encodes and decodes");
    assert_eq!(again, rec);
    let merged = record::merge_records(Some(data), [data].into_iter())
        .expect("a decodable record merges with itself");
    assert_eq!(Record::decode(&merged).ok(), Some(rec.clone()));
    crdt_accepted(&rec.crdt);
}

/// CRDT states and deltas of every kind (`Crdt::decode`), and joins of two
/// (see [`split2`]).
pub fn crdt(data: &[u8]) {
    if let Ok(c) = Crdt::decode(data) {
        crdt_accepted(&c);
    }
    let (a, b) = split2(data);
    let (Ok(a), Ok(b)) = (Crdt::decode(a), Crdt::decode(b)) else {
        return;
    };
    crdt_accepted(&a);
    crdt_accepted(&b);
    let mut ab = a.clone();
    let mut ba = b.clone();
    if let (Ok(()), Ok(())) = (ab.join(&b), ba.join(&a)) {
        let _ = (ab.value(), ab.encode(), digest_bytes(&ab));
        let _ = (ba.value(), ba.encode(), digest_bytes(&ba));
        // Joining again changes nothing (idempotence of the join).
        let mut abb = ab.clone();
        if abb.join(&b).is_ok() {
            assert_eq!(abb, ab);
        }
    }
}

/// A decoded CRDT: it re-encodes to an equal value, joins itself to
/// itself, and everything that reads it runs.
fn crdt_accepted(c: &Crdt) {
    let bytes = c.encode();
    let again = Crdt::decode(&bytes).expect("a decoded state encodes and decodes");
    assert_eq!(&again, c);
    assert_eq!(canonical_state_bytes(&again), canonical_state_bytes(c));
    assert_eq!(digest_bytes(&again), digest_bytes(c));
    let _ = (
        c.value(),
        c.heap_bytes(),
        c.size_hint(),
        c.next_insert_reallocates(),
    );
    let mut twice = c.clone();
    if twice.join(c).is_ok() {
        assert_eq!(&twice, c);
    }
    let mut collected = c.clone();
    if collected.has_collectable() {
        collected.collect_stable();
    }
    if let Some(stable) = c.stability_snapshot() {
        c.clone().collect_stable_upto(&stable);
    }
}

/// The digest: `DigestRequest` bucket lists and the item hash of decoded
/// records (equal records hash alike, whatever bytes they came in). The
/// input is an id and a record (see [`split2`]); its first bytes are also
/// read as bucket sums.
pub fn digest(data: &[u8]) {
    let buckets: Vec<u64> = data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let mut d = Digest::new();
    let diff = d.diff(&buckets);
    assert!(diff.windows(2).all(|w| w[0] < w[1]));
    let (id, rec) = split2(data);
    let Ok(r) = Record::decode(rec) else {
        return;
    };
    let h = item_hash(id, &r.meta, &r.crdt);
    let again = Record::decode(&r.encode()).expect("a decoded record encodes and decodes");
    assert_eq!(item_hash(id, &again.meta, &again.crdt), h);
    d.replace_hash(id, None, Some(h));
    d.replace_hash(id, Some(h), None);
    assert_eq!(d, Digest::new());
    let _ = d.root();
}

/// Reads `data` front to back; past the end every read is empty or zero.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.byte();
        }
        u64::from_le_bytes(v)
    }

    /// A byte string of a length the input states (one byte).
    fn slice(&mut self) -> &'a [u8] {
        let n = (self.byte() as usize).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        s
    }

    fn counts(&mut self) -> Vec<(Vec<u8>, u64)> {
        (0..self.byte() % 16)
            .map(|_| (self.slice().to_vec(), self.u64()))
            .collect()
    }
}

/// One entry of the replaced DETS store as the NIF hands it over
/// (`LegacyEntry`), built from the input.
pub fn legacy_entry(data: &[u8]) -> LegacyEntry {
    let mut b = Bytes(data);
    let id = b.slice().to_vec();
    let state = match b.byte() % 4 {
        0 => LegacyState::GCounter(b.counts()),
        1 => LegacyState::PNCounter {
            positive: b.counts(),
            negative: b.counts(),
        },
        2 => LegacyState::ORSet((0..b.byte() % 32).map(|_| b.slice().to_vec()).collect()),
        _ => LegacyState::LwwRegister((b.byte() % 2 == 1).then(|| b.slice().to_vec())),
    };
    let created_at_ms = (b.byte() % 2 == 1).then(|| b.u64());
    LegacyEntry {
        id,
        state,
        created_at_ms,
    }
}

/// DETS import entries (`LegacyState::to_crdt`): the state an entry
/// imports as is a valid state of its kind (it encodes, decodes and joins
/// itself), its record too, and two nodes importing entries of one kind
/// join to the same state in either order.
pub fn import(data: &[u8]) {
    let (a, b) = split2(data);
    let replica = ReplicaId::new(b"importer");
    let other = ReplicaId::new(b"other");
    let (ea, eb) = (legacy_entry(a), legacy_entry(b));
    let Ok(ca) = ea.state.to_crdt(&replica) else {
        return;
    };
    assert_eq!(ca.kind(), ea.state.kind());
    crdt_accepted(&ca);
    let meta = Meta {
        kind: ea.state.kind(),
        created_by: Arc::from(&b"node"[..]),
        created_at: ea.created_at_ms.unwrap_or(0),
        updated_at: ea.created_at_ms.unwrap_or(0),
        gen: import_gen(),
        deleted: false,
    };
    let rec = Record {
        meta,
        crdt: ca.clone(),
    };
    record_accepted(&rec.encode());
    let Ok(cb) = eb.state.to_crdt(&other) else {
        return;
    };
    let (mut ab, mut ba) = (ca.clone(), cb.clone());
    if let (Ok(()), Ok(())) = (ab.join(&cb), ba.join(&ca)) {
        assert_eq!(ab, ba);
    }
}

/// The canonical term encoding (`term::decode`): what decodes re-encodes
/// to bytes that decode and encode to themselves.
pub fn term(data: &[u8]) {
    let Ok(v) = term::decode(data, &mut ValueBuilder) else {
        return;
    };
    let mut once = Vec::new();
    term::encode_value(&v, &mut once);
    let again = term::decode(&once, &mut ValueBuilder).expect("an encoded term decodes");
    let mut twice = Vec::new();
    term::encode_value(&again, &mut twice);
    assert_eq!(once, twice);
}

/// A store and its sync engine, in a directory of their own.
struct Node {
    store: Store,
    engine: Engine,
    dir: PathBuf,
    inputs: u64,
    now_ms: u64,
}

/// Inputs a [`Node`] takes before it is replaced by a fresh one (what the
/// inputs merge into it would otherwise grow without end).
const NODE_INPUTS: u64 = 2_000;

impl Node {
    fn open() -> Node {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("vsmcp_crdt-fuzz-engine-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = StoreConfig::new(&dir, b"fuzz");
        cfg.ephemeral = true;
        cfg.cache_bytes = Some(1 << 20);
        cfg.memory_budget = vsmcp_crdt_core::store::config::MIN_MEMORY_BUDGET;
        let store = Store::open(cfg).expect("a store opens in a fresh directory");
        let engine = Engine::new(&store, EngineConfig::default());
        Node {
            store,
            engine,
            dir,
            inputs: 0,
            now_ms: 1_700_000_000_000,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.store.close(std::time::Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

thread_local! {
    static NODE: RefCell<Option<Node>> = const { RefCell::new(None) };
}

/// Sync messages handled end to end (`Engine::receive`: decode, checks,
/// the handler of each tag, entries merged into the store) and DETS import
/// entries imported into the store (`Store::import_legacy`). The input is
/// a sequence of chunks, each a 2-byte length then its bytes: a chunk
/// starting with the wire magic is a message, any other an import entry
/// (see [`legacy_entry`]); the engine ticks after each. State carries over
/// between inputs of one process (a peer's earlier messages), for
/// [`NODE_INPUTS`] inputs.
pub fn engine(data: &[u8]) {
    NODE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|n| n.inputs >= NODE_INPUTS) {
            *cell = None;
            *cell = Some(Node::open());
        }
        let Some(node) = cell.as_mut() else {
            return;
        };
        node.inputs += 1;
        let mut rest = data;
        let mut events = Vec::new();
        while !rest.is_empty() {
            let (chunk, more) = split2(rest);
            rest = more;
            node.now_ms += 7;
            if chunk.first() == Some(&0xC9) {
                let _ = node
                    .engine
                    .receive(&node.store, chunk, node.now_ms, &mut events);
            } else {
                let _ = node.store.import_legacy(&[legacy_entry(chunk)]);
            }
            let _ = node.engine.tick(&node.store, node.now_ms, &mut events);
            events.clear();
        }
    });
}
