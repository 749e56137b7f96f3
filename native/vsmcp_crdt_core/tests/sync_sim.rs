//! Deterministic simulation of the sync core: 3-5 replicas holding real
//! CRDTs of every kind mutate concurrently, ship delta-intervals with
//! acknowledgements and run digest anti-entropy over a network that drops,
//! duplicates and reorders messages. After a quiescent phase on a reliable
//! network every replica must hold equal states and digests, and counters
//! must equal the exact sum of every increment. A second scenario keeps one
//! replica down while the others outgrow their logs' byte bound.

mod common;

use common::Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use vsmcp_crdt_core::store::record::{decode_parts, encode_parts, Gen, Meta};
use vsmcp_crdt_core::sync::digest::item_hash;
use vsmcp_crdt_core::sync::{
    batch_budget, bucket_of, canonical_state_bytes, states_messages, DeltaLog, Digest, Message,
    NextBatch, MAX_MESSAGE_BYTES,
};
use vsmcp_crdt_core::{Crdt, Kind, Op, ReplicaId, Timestamp, Value};

/// The metadata of every record of the simulation.
fn meta(kind: Kind) -> Meta {
    Meta {
        kind,
        created_by: std::sync::Arc::from(&b"sim"[..]),
        created_at: 0,
        updated_at: 0,
        gen: Gen::default(),
        deleted: false,
    }
}

/// Entries travel as store records (metadata plus state).
fn rec(c: &Crdt) -> Vec<u8> {
    encode_parts(&meta(c.kind()), &c.encode())
}

/// The digest's item hash of `id` holding `c`: the one the engine uses.
fn hash(id: &[u8], c: &Crdt) -> u64 {
    item_hash(id, &meta(c.kind()), c)
}

fn unrec(b: &[u8]) -> Crdt {
    let (_, c) = decode_parts(b).expect("valid record");
    Crdt::decode(c).expect("valid state")
}

/// The ids of the simulation and their kinds.
const IDS: [(&str, Kind); 8] = [
    ("g:hits", Kind::GCounter),
    ("g:bytes", Kind::GCounter),
    ("p:balance", Kind::PNCounter),
    ("s:tags", Kind::ORSet),
    ("s:members", Kind::ORSet),
    ("a:cart", Kind::AWSet),
    ("l:title", Kind::LwwRegister),
    ("l:owner", Kind::LwwRegister),
];

fn kind_of(id: &[u8]) -> Kind {
    IDS.iter()
        .find(|(n, _)| n.as_bytes() == id)
        .map(|(_, k)| *k)
        .expect("known id")
}

struct Replica {
    id: ReplicaId,
    states: BTreeMap<Vec<u8>, Crdt>,
    log: DeltaLog,
    digest: Digest,
    /// State transfers started because the log had dropped deltas.
    resyncs: usize,
}

impl Replica {
    fn new(name: &str, peers: &[ReplicaId], log_bytes: usize) -> Self {
        let id = ReplicaId::from(name);
        let mut log = DeltaLog::new(log_bytes);
        for p in peers.iter().filter(|p| **p != id) {
            log.add_peer(p.clone());
        }
        Replica {
            id,
            states: BTreeMap::new(),
            log,
            digest: Digest::new(),
            resyncs: 0,
        }
    }

    /// Join `x` into the state of `id`, keeping the digest in step.
    fn join(&mut self, id: &[u8], x: &Crdt) {
        self.apply(id, |state, _| {
            state.join(x).expect("same kind");
        });
    }

    /// Run `f` on the state of `id` (created empty if absent) and update the
    /// digest from the state's item hash before and after.
    fn apply<R>(&mut self, id: &[u8], f: impl FnOnce(&mut Crdt, &ReplicaId) -> R) -> R {
        let existed = self.states.contains_key(id);
        let state = self
            .states
            .entry(id.to_vec())
            .or_insert_with(|| Crdt::new(kind_of(id)));
        let old = existed.then(|| hash(id, state));
        let r = f(state, &self.id);
        self.digest.replace_hash(id, old, Some(hash(id, state)));
        r
    }

    /// A local mutation: apply, update the digest, record the delta.
    fn mutate(&mut self, id: &[u8], op: Op<'_>) {
        let delta = self.apply(id, |state, me| state.mutate(me, op).expect("op fits kind"));
        self.log.record(id, &rec(&delta));
    }

    fn handle(&mut self, msg: Message, out: &mut Vec<(ReplicaId, Vec<u8>)>) {
        match msg {
            Message::Deltas {
                from,
                seq_end,
                entries,
                ..
            } => {
                for (id, delta) in entries {
                    let d = unrec(&delta);
                    self.join(&id, &d);
                }
                let ack = Message::Ack {
                    from: self.id.clone(),
                    upto: seq_end,
                };
                out.push((from, ack.encode()));
            }
            Message::Ack { from, upto } => {
                self.log.ack(&from, upto).expect("ack of a sent interval");
            }
            Message::DigestRequest { from, buckets } => {
                let diff = self.digest.diff(&buckets);
                if !diff.is_empty() {
                    let req = Message::StateRequest {
                        from: self.id.clone(),
                        buckets: diff,
                    };
                    out.push((from, req.encode()));
                }
            }
            Message::StateRequest { from, buckets } => {
                let wanted: BTreeSet<u16> = buckets.into_iter().collect();
                let entries = self
                    .states
                    .iter()
                    .filter(|(id, _)| wanted.contains(&bucket_of(id)))
                    .map(|(id, s)| (id.clone(), rec(s)));
                for m in states_messages(&self.id, entries) {
                    out.push((from.clone(), m.encode()));
                }
            }
            Message::States { entries, .. } => {
                for (id, state) in entries {
                    let s = unrec(&state);
                    self.join(&id, &s);
                }
            }
            Message::Hello { .. } | Message::Frontier { .. } | Message::AnswerEnd { .. } => {}
        }
    }

    /// Ship the next delta-interval to `peer`; on a log that dropped what
    /// the peer needs, start a state transfer instead.
    fn ship(&mut self, peer: &ReplicaId, out: &mut Vec<(ReplicaId, Vec<u8>)>) {
        match self.log.next_batch(peer, batch_budget(&self.id)).unwrap() {
            NextBatch::UpToDate => {}
            NextBatch::Batch(b) => {
                let base = b.seq_start - 1;
                let bytes = b.into_message(self.id.clone(), base).encode();
                assert!(bytes.len() <= MAX_MESSAGE_BYTES);
                out.push((peer.clone(), bytes));
            }
            NextBatch::NeedsAntiEntropy => {
                self.resyncs += 1;
                self.log.resync(peer).unwrap();
                out.push((peer.clone(), self.digest_request()));
            }
        }
    }

    fn digest_request(&self) -> Vec<u8> {
        Message::DigestRequest {
            from: self.id.clone(),
            buckets: self.digest.buckets().to_vec(),
        }
        .encode()
    }

    /// The digest recomputed from scratch must equal the incremental one.
    fn check_digest(&self) {
        let mut d = Digest::new();
        for (id, s) in &self.states {
            d.replace_hash(id, None, Some(hash(id, s)));
        }
        assert_eq!(
            d, self.digest,
            "incremental digest drifted at {:?}",
            self.id
        );
    }
}

struct Net {
    queue: VecDeque<(ReplicaId, Vec<u8>)>,
    /// Percent of messages dropped, duplicated, and delivered out of order.
    fault: u64,
    down: Option<ReplicaId>,
    delivered: usize,
}

impl Net {
    fn send(&mut self, rng: &mut Rng, msgs: Vec<(ReplicaId, Vec<u8>)>, from: &ReplicaId) {
        for (to, bytes) in msgs {
            if self.down.as_ref().is_some_and(|d| *d == to || d == from) {
                continue;
            }
            if rng.chance(self.fault) {
                continue; // dropped
            }
            if rng.chance(self.fault) {
                self.queue.push_back((to.clone(), bytes.clone())); // duplicated
            }
            self.queue.push_back((to, bytes));
        }
    }

    fn pop(&mut self, rng: &mut Rng) -> Option<(ReplicaId, Vec<u8>)> {
        if self.queue.is_empty() {
            return None;
        }
        if rng.chance(self.fault) {
            // Reorder: deliver a random message out of its turn.
            let i = rng.below(self.queue.len() as u64) as usize;
            return self.queue.remove(i);
        }
        self.queue.pop_front()
    }
}

struct Sim {
    rng: Rng,
    replicas: Vec<Replica>,
    net: Net,
    /// Exact expected counter values: the sum of every increment.
    expected: BTreeMap<Vec<u8>, i128>,
    time: u64,
}

impl Sim {
    fn new(seed: u64, n: usize, fault: u64, log_bytes: usize) -> Self {
        let names: Vec<ReplicaId> = (0..n)
            .map(|i| ReplicaId::from(format!("node{i}").as_str()))
            .collect();
        Sim {
            rng: Rng::new(seed),
            replicas: (0..n)
                .map(|i| Replica::new(&format!("node{i}"), &names, log_bytes))
                .collect(),
            net: Net {
                queue: VecDeque::new(),
                fault,
                down: None,
                delivered: 0,
            },
            expected: BTreeMap::new(),
            time: 0,
        }
    }

    fn index_of(&self, id: &ReplicaId) -> usize {
        self.replicas.iter().position(|r| r.id == *id).unwrap()
    }

    fn is_down(&self, i: usize) -> bool {
        self.net
            .down
            .as_ref()
            .is_some_and(|d| *d == self.replicas[i].id)
    }

    fn mutate_random(&mut self, i: usize) {
        self.time += 1;
        let (name, kind) = IDS[self.rng.below(IDS.len() as u64) as usize];
        let id = name.as_bytes();
        let elem = [b'e', b'0' + self.rng.below(6) as u8];
        let value = format!("v{}", self.rng.below(1000)).into_bytes();
        let n = 1 + self.rng.below(9);
        let op = match kind {
            Kind::GCounter => Op::Increment(n),
            Kind::PNCounter if self.rng.chance(40) => Op::Decrement(n),
            Kind::PNCounter => Op::Increment(n),
            Kind::ORSet | Kind::AWSet if self.rng.chance(35) => Op::Remove(&elem),
            Kind::ORSet | Kind::AWSet => Op::Add(&elem),
            Kind::LwwRegister => Op::Set(&value, Timestamp::new(self.time, 0)),
        };
        let delta = match op {
            Op::Increment(n) => n as i128,
            Op::Decrement(n) => -(n as i128),
            _ => 0,
        };
        if matches!(kind, Kind::GCounter | Kind::PNCounter) {
            *self.expected.entry(id.to_vec()).or_default() += delta;
        }
        self.replicas[i].mutate(id, op);
    }

    fn ship_all(&mut self, i: usize) {
        let peers: Vec<ReplicaId> = self
            .replicas
            .iter()
            .filter(|r| r.id != self.replicas[i].id)
            .map(|r| r.id.clone())
            .collect();
        let mut out = Vec::new();
        for p in &peers {
            self.replicas[i].ship(p, &mut out);
        }
        let from = self.replicas[i].id.clone();
        self.net.send(&mut self.rng, out, &from);
    }

    fn anti_entropy(&mut self, i: usize, j: usize) {
        let msg = self.replicas[i].digest_request();
        let (from, to) = (self.replicas[i].id.clone(), self.replicas[j].id.clone());
        self.net.send(&mut self.rng, vec![(to, msg)], &from);
    }

    fn deliver(&mut self, budget: usize) {
        for _ in 0..budget {
            let Some((to, bytes)) = self.net.pop(&mut self.rng) else {
                return;
            };
            self.net.delivered += 1;
            let i = self.index_of(&to);
            if self.is_down(i) {
                continue;
            }
            let msg = Message::decode(&bytes).expect("valid message");
            let mut out = Vec::new();
            self.replicas[i].handle(msg, &mut out);
            let from = self.replicas[i].id.clone();
            self.net.send(&mut self.rng, out, &from);
        }
    }

    /// One round of concurrent activity.
    fn step(&mut self, round: u64, mutate_percent: u64) {
        let n = self.replicas.len();
        for i in 0..n {
            if self.is_down(i) {
                continue;
            }
            if self.rng.chance(mutate_percent) {
                self.mutate_random(i);
            }
            if round % 3 == i as u64 % 3 {
                self.ship_all(i);
            }
            if round.is_multiple_of(17) {
                let mut j = self.rng.below(n as u64) as usize;
                if j == i {
                    j = (j + 1) % n;
                }
                self.anti_entropy(i, j);
            }
        }
        let budget = 1 + self.rng.below(2 * (n * n) as u64) as usize;
        self.deliver(budget);
    }

    /// Reliable network, no mutations: ship, acknowledge and run
    /// anti-entropy between every pair until everything is delivered.
    fn quiesce(&mut self) {
        self.net.fault = 0;
        self.net.down = None;
        let n = self.replicas.len();
        for _ in 0..20 {
            for i in 0..n {
                self.ship_all(i);
                for j in 0..n {
                    if i != j {
                        self.anti_entropy(i, j);
                    }
                }
            }
            self.deliver(usize::MAX);
            if self.converged() {
                break;
            }
        }
    }

    fn converged(&self) -> bool {
        let first = &self.replicas[0];
        self.replicas
            .iter()
            .all(|r| r.states == first.states && r.digest == first.digest)
    }

    fn assert_converged(&self) {
        let first = &self.replicas[0];
        for r in &self.replicas {
            r.check_digest();
            assert_eq!(
                r.states, first.states,
                "{:?} differs from {:?}",
                r.id, first.id
            );
            assert_eq!(r.digest, first.digest);
            for (id, s) in &r.states {
                let v = canonical_state_bytes(s);
                assert_eq!(v, canonical_state_bytes(&first.states[id]));
            }
        }
        for (id, sum) in &self.expected {
            for r in &self.replicas {
                assert_eq!(
                    r.states[id].value(),
                    Value::Counter(*sum),
                    "counter {} at {:?}",
                    String::from_utf8_lossy(id),
                    r.id
                );
            }
        }
    }
}

#[test]
fn replicas_converge_over_a_lossy_network() {
    for seed in 1..=12u64 {
        let n = 3 + (seed % 3) as usize;
        let fault = 5 + (seed * 7) % 16; // 5-20%
        let mut sim = Sim::new(seed, n, fault, 1 << 20);
        for round in 0..1500 {
            sim.step(round, 60);
        }
        assert!(sim.net.delivered > 1000);
        for r in &sim.replicas {
            r.check_digest();
        }
        sim.quiesce();
        sim.assert_converged();
        assert!(!sim.expected.is_empty());
        // Every delta was acknowledged by every peer and pruned.
        for r in &sim.replicas {
            assert!(r.log.is_empty(), "{:?} still holds {}", r.id, r.log.len());
        }
    }
}

#[test]
fn a_long_absent_replica_converges_through_anti_entropy() {
    let log_bytes = 4 << 10;
    for seed in [3u64, 11, 29] {
        let n = 4;
        let mut sim = Sim::new(seed, n, 10, log_bytes);
        for round in 0..200 {
            sim.step(round, 50);
        }
        let absent = sim.replicas[n - 1].id.clone();
        sim.net.down = Some(absent.clone());
        let mut recorded = 0;
        for round in 200..4200 {
            let before: u64 = sim.replicas.iter().map(|r| r.log.next_seq()).sum();
            sim.step(round, 90);
            recorded += sim.replicas.iter().map(|r| r.log.next_seq()).sum::<u64>() - before;
            for r in &sim.replicas {
                assert!(r.log.bytes() <= log_bytes, "log over its bound");
            }
        }
        // Far more deltas than any log can hold went by.
        assert!(recorded as usize * 64 > 20 * log_bytes, "{recorded}");
        // The logs dropped deltas the absent replica never acknowledged.
        for r in &sim.replicas[..n - 1] {
            assert!(r.resyncs > 0, "{:?} never needed anti-entropy", r.id);
        }
        // The replica returns; a few lossy rounds, then quiescence.
        sim.net.down = None;
        for round in 4200..4400 {
            sim.step(round, 20);
        }
        sim.quiesce();
        sim.assert_converged();
    }
}
