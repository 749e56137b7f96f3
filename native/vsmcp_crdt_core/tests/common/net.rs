//! The simulated network of `tests/sync_engine.rs`: real stores (RocksDB in
//! temporary directories), each with a sync engine, exchanging messages
//! through one queue that can lose, duplicate, reorder or filter them, on a
//! simulated engine time (`Net::now`).
//!
//! Also the small builders those tests share: engine configurations, store
//! metadata and generations, and the wire tags the filters match on.
//!
//! Only `tests/sync_engine.rs` uses this module; the other users of
//! `common` compile it unused, which the `allow(dead_code)` of `common`
//! covers.

use super::Rng;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use vsmcp_crdt_core::store::import::{LegacyEntry, LegacyState};
use vsmcp_crdt_core::store::record::{Gen, Meta};
use vsmcp_crdt_core::store::{Access, Store, StoreConfig};
use vsmcp_crdt_core::sync::{Engine, EngineConfig, Event, Outbound};
use vsmcp_crdt_core::{Kind, Mutation, Value};

/// Wire tags (byte 2 of every sync message), as the network filters see
/// them.
pub mod tag {
    pub const DELTAS: u8 = 1;
    pub const ACK: u8 = 2;
    pub const DIGEST_REQUEST: u8 = 3;
    pub const STATE_REQUEST: u8 = 4;
    pub const STATES: u8 = 5;
    pub const HELLO: u8 = 6;
    pub const FRONTIER: u8 = 7;
}

/// The tag of a message's bytes.
pub fn tag_of(bytes: &[u8]) -> Option<u8> {
    bytes.get(2).copied()
}

/// One replica: a store and the engine syncing it.
pub struct Node {
    pub store: Store,
    pub engine: Engine,
    pub _dir: tempfile::TempDir,
}

/// A new replica in an empty directory, capturing, whose engine speaks
/// `versions` (retransmit after 50 ms, collect after 30 ms).
pub fn open(versions: Vec<u8>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    // Every node has the same label: identity comes from the directory.
    let store = Store::open(StoreConfig::new(dir.path(), b"same")).unwrap();
    store.start_capture();
    let cfg = EngineConfig {
        versions,
        retransmit_ms: 50,
        collect_after_ms: 30,
        ..EngineConfig::default()
    };
    let engine = Engine::new(&store, cfg);
    Node {
        store,
        engine,
        _dir: dir,
    }
}

/// A replica on the store at `path` (a restored backup inside `dir`),
/// capturing, with an engine of `fast_cfg(30)`.
pub fn open_copy(dir: tempfile::TempDir, path: &Path) -> Node {
    let store = Store::open(StoreConfig::new(path, b"same")).unwrap();
    store.start_capture();
    let engine = Engine::new(&store, fast_cfg(30));
    Node {
        store,
        engine,
        _dir: dir,
    }
}

/// Retransmit after 50 ms; collect after `collect_after_ms`.
pub fn fast_cfg(collect_after_ms: u64) -> EngineConfig {
    EngineConfig {
        retransmit_ms: 50,
        collect_after_ms,
        ..EngineConfig::default()
    }
}

/// Retransmit after 50 ms; never collect (tombstones are kept).
pub fn never_collect() -> EngineConfig {
    EngineConfig {
        retransmit_ms: 50,
        collect_after_ms: u64::MAX,
        ..EngineConfig::default()
    }
}

/// Apply `m` to `id`, ignoring the result (the id may be absent or of
/// another type on this replica).
pub fn update(s: &Store, id: &[u8], m: Mutation<'_>) {
    let _ = s.update(id, m, Access::MayBlock, |_| ());
}

/// The entries (elements with dots or tokens) of the OR-Set `id`.
pub fn set_entries(s: &Store, id: &[u8]) -> usize {
    s.read(id, Access::MayBlock, |v| match v.crdt {
        vsmcp_crdt_core::Crdt::ORSet(set) => set.entry_count(),
        _ => 0,
    })
    .unwrap()
}

/// Import `id` as a legacy grow-only counter at `count` (a record with no
/// creating directory, so no collection cut covers it).
pub fn import_legacy_counter(s: &Store, id: &[u8], count: u64) {
    s.import_legacy(&[LegacyEntry {
        id: id.to_vec(),
        state: LegacyState::GCounter(vec![(b"old".to_vec(), count)]),
        created_at_ms: None,
    }])
    .unwrap();
}

/// Generation of epoch 0 created at `stamp` by replica `r`.
pub fn rgen(stamp: u64, r: &[u8]) -> Gen {
    Gen {
        epoch: 0,
        stamp,
        replica: Arc::from(r),
    }
}

/// Counter metadata of generation `gen` (a tombstone when `deleted`).
pub fn rmeta(gen: Gen, deleted: bool, updated_at: u64) -> Meta {
    Meta {
        kind: Kind::GCounter,
        created_by: Arc::from(&b"n"[..]),
        created_at: 1,
        updated_at,
        gen,
        deleted,
    }
}

/// A 24-byte replica id: directory `[dir; 16]`, then incarnation `inc`.
pub fn replica24(dir: u8, inc: u64) -> Arc<[u8]> {
    let mut v = vec![dir; 16];
    v.extend_from_slice(&inc.to_be_bytes());
    Arc::from(v)
}

/// The tombstones each node holds.
pub fn tombstones(net: &Net) -> Vec<usize> {
    net.nodes
        .iter()
        .map(|n| n.store.tombstones().len())
        .collect()
}

/// Wait, in real time, until the wall clock (`hlc::now_ms`) reaches
/// `wall_ms` (at most 10 s). For tests of a clock that ran ahead, whose
/// writes wait by design until the others' wall clocks reach their stamps:
/// the others' HLCs cannot be advanced instead, since they refuse a clock
/// that far ahead, and what the engine checks is their wall clock.
pub fn wait_until_wall_clock_reaches(wall_ms: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while vsmcp_crdt_core::hlc::now_ms() < wall_ms {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Which messages a filtered step lets through: `keep(from, to, tag)`.
pub type Keep<'a> = &'a dyn Fn(usize, usize, u8) -> bool;

pub struct Net {
    pub nodes: Vec<Node>,
    /// (to index, bytes)
    pub queue: VecDeque<(usize, Vec<u8>)>,
    pub loss: u64,
    /// Nodes cut off from everyone (messages to and from them are lost).
    pub cut: Vec<bool>,
    /// Messages with this tag are lost.
    pub drop_tag: Option<u8>,
    /// Nodes that receive nothing (what they send still goes out).
    pub cut_in: Vec<bool>,
    /// Every message delivered, when recording.
    pub recorded: Option<Vec<(usize, Vec<u8>)>>,
    pub rng: Rng,
    /// Engine time (ms), advanced 10 ms a step.
    pub now: u64,
    pub events: Vec<(usize, Event)>,
}

impl Net {
    /// `n` nodes speaking versions 1-4; `loss` percent of messages lost,
    /// duplicated and reordered each; `seed` for the network's choices.
    pub fn new(n: usize, loss: u64, seed: u64) -> Net {
        Net {
            nodes: (0..n).map(|_| open(vec![1, 2, 3, 4])).collect(),
            queue: VecDeque::new(),
            loss,
            cut: vec![false; n],
            drop_tag: None,
            cut_in: vec![false; n],
            recorded: None,
            rng: Rng::new(seed),
            now: 1_000,
            events: Vec::new(),
        }
    }

    /// Add `node` to the network, connected.
    pub fn join(&mut self, node: Node) {
        self.nodes.push(node);
        self.cut.push(false);
        self.cut_in.push(false);
    }

    /// The nodes a message of `from` addressed `to` goes to.
    fn targets(&self, from: usize, o: &Outbound) -> Vec<usize> {
        match &o.to {
            None => (0..self.nodes.len()).filter(|&i| i != from).collect(),
            Some(r) => (0..self.nodes.len())
                .filter(|&i| self.nodes[i].engine.me() == r)
                .collect(),
        }
    }

    /// Queue `outs` of node `from`, through the cuts, `drop_tag` and the
    /// random loss, duplication and reordering.
    pub fn send(&mut self, from: usize, outs: Vec<Outbound>) {
        for o in outs {
            for t in self.targets(from, &o) {
                if self.drop_tag.is_some() && tag_of(&o.bytes) == self.drop_tag {
                    continue;
                }
                if self.cut_in.get(t).copied().unwrap_or(false)
                    || self.cut.get(t).copied().unwrap_or(false)
                    || self.cut.get(from).copied().unwrap_or(false)
                {
                    continue;
                }
                if self.rng.chance(self.loss) {
                    continue;
                }
                let copies = if self.rng.chance(self.loss) { 2 } else { 1 };
                for _ in 0..copies {
                    if self.rng.chance(self.loss) && !self.queue.is_empty() {
                        // Reorder: jump the queue.
                        self.queue.push_front((t, o.bytes.clone()));
                    } else {
                        self.queue.push_back((t, o.bytes.clone()));
                    }
                }
            }
        }
    }

    /// Deliver until the queue is empty (answers included).
    pub fn deliver_all(&mut self) {
        let mut budget = 200_000;
        while let Some((to, bytes)) = self.queue.pop_front() {
            if let Some(r) = &mut self.recorded {
                r.push((to, bytes.clone()));
            }
            let mut ev = Vec::new();
            let n = &mut self.nodes[to];
            let outs = n.engine.receive(&n.store, &bytes, self.now, &mut ev);
            self.events.extend(ev.into_iter().map(|e| (to, e)));
            self.send(to, outs);
            budget -= 1;
            assert!(budget > 0, "message storm");
        }
    }

    /// 10 ms later: what each engine sends when it ticks (and says hello
    /// when `hello`), by node.
    fn tick_all(&mut self, hello: bool) -> Vec<Vec<Outbound>> {
        self.now += 10;
        let now = self.now;
        self.nodes
            .iter_mut()
            .map(|n| {
                let mut ev = Vec::new();
                let mut outs = n.engine.tick(&n.store, now, &mut ev);
                if hello {
                    outs.push(n.engine.hello(&n.store, &mut ev));
                }
                outs
            })
            .collect()
    }

    /// 10 ms later: every engine ticks (and says hello when `hello`), and
    /// everything is delivered.
    pub fn step(&mut self, hello: bool) {
        for (i, outs) in self.tick_all(hello).into_iter().enumerate() {
            self.send(i, outs);
        }
        self.deliver_all();
    }

    /// No more loss, and 40 steps (hellos every other one).
    pub fn settle(&mut self) {
        self.loss = 0;
        for i in 0..40 {
            self.step(i % 2 == 0);
        }
    }

    /// One step in which node `mute`'s delta intervals are all lost (its
    /// hellos, acks, digests and digest answers still go through).
    pub fn step_muting_deltas_of(&mut self, hello: bool, mute: usize) {
        for (i, mut outs) in self.tick_all(hello).into_iter().enumerate() {
            if i == mute {
                outs.retain(|o| tag_of(&o.bytes) != Some(tag::DELTAS));
            }
            self.send(i, outs);
        }
        self.deliver_all();
    }

    /// Queue `outs` of node `from`, keeping only what `keep(from, to, tag)`
    /// lets through (no cuts, no random loss).
    pub fn send_kept(&mut self, from: usize, outs: Vec<Outbound>, keep: Keep<'_>) {
        for o in outs {
            let tag = tag_of(&o.bytes).unwrap_or(0);
            for t in self.targets(from, &o) {
                if keep(from, t, tag) {
                    self.queue.push_back((t, o.bytes.clone()));
                }
            }
        }
    }

    /// [`Net::deliver_all`], the answers filtered by `keep` (not recorded).
    pub fn deliver_kept(&mut self, keep: Keep<'_>) {
        let mut budget = 200_000;
        while let Some((to, bytes)) = self.queue.pop_front() {
            let mut ev = Vec::new();
            let n = &mut self.nodes[to];
            let outs = n.engine.receive(&n.store, &bytes, self.now, &mut ev);
            self.send_kept(to, outs, keep);
            budget -= 1;
            assert!(budget > 0, "message storm");
        }
    }

    /// [`Net::step`], every message filtered by `keep`.
    pub fn step_kept(&mut self, hello: bool, keep: Keep<'_>) {
        for (i, outs) in self.tick_all(hello).into_iter().enumerate() {
            self.send_kept(i, outs, keep);
        }
        self.deliver_kept(keep);
    }

    /// A new engine on `node`'s store (a restart of its sync, not of the
    /// store), with `cfg`.
    pub fn restart_engine(&mut self, node: usize, cfg: EngineConfig) {
        let s = self.nodes[node].store.clone();
        self.nodes[node].engine = Engine::new(&s, cfg);
    }

    /// Reopen `node`'s store on its directory with `tune` applied to its
    /// configuration, and start a new engine on it.
    pub fn reopen_store(&mut self, node: usize, tune: impl FnOnce(&mut StoreConfig)) {
        let path = self.nodes[node]._dir.path().to_path_buf();
        self.nodes[node]
            .store
            .close(std::time::Duration::from_secs(5))
            .unwrap();
        let mut cfg = StoreConfig::new(&path, b"same");
        tune(&mut cfg);
        let store = Store::open(cfg).unwrap();
        store.start_capture();
        self.nodes[node].engine = Engine::new(&store, fast_cfg(30));
        self.nodes[node].store = store;
    }

    /// An empty directory in place of `node`'s (a new replica).
    pub fn reopen_fresh(&mut self, node: usize) {
        self.nodes[node] = open(vec![1, 2, 3, 4]);
        self.restart_engine(node, fast_cfg(30));
    }

    /// Every store's clock moves past the latest timestamp any of them has
    /// issued, as if time had passed everywhere: whatever a store stamps
    /// next is later than everything stamped so far, on every store. (What
    /// a pause of a few milliseconds did, without depending on the wall
    /// clock; the stores are only brought level with the most advanced
    /// one, never ahead of it.)
    pub fn advance_clocks(&self) {
        let Some(latest) = self.nodes.iter().map(|n| n.store.clock()).max() else {
            return;
        };
        for n in &self.nodes {
            n.store.receive_clock(latest).unwrap();
        }
    }

    /// Node 0 creates and deletes `junk` and the network settles until the
    /// connected nodes collect it: their collection cut moves past every
    /// stamp made before this call.
    pub fn collect_on(&mut self, junk: &[u8]) {
        self.advance_clocks();
        let s0 = self.nodes[0].store.clone();
        s0.create(junk, Kind::GCounter, Access::MayBlock).unwrap();
        self.settle();
        s0.delete(junk, Access::MayBlock).unwrap();
        for _ in 0..3 {
            self.settle();
        }
    }

    /// `id`'s value on node `i` (a set's elements sorted), `None` when
    /// absent.
    pub fn value(&self, i: usize, id: &[u8]) -> Option<String> {
        self.nodes[i]
            .store
            .read(id, Access::MayBlock, |v| match v.value() {
                Value::Set(mut elems) => {
                    elems.sort();
                    format!("{elems:?}")
                }
                other => format!("{other:?}"),
            })
            .ok()
    }

    /// `id`'s type on node `i`, `None` when absent.
    pub fn kind(&self, i: usize, id: &[u8]) -> Option<Kind> {
        self.nodes[i]
            .store
            .metadata(id, Access::MayBlock)
            .ok()
            .map(|(m, _)| m.kind)
    }
}
