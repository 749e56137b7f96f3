//! The world: simulated time, the nodes, the network, the operations and
//! the faults, and the record the checker reads.
//!
//! Time advances in steps of [`STEP_MS`]. A step first delivers the packets
//! due in it, in order (each answer is sent at its packet's delivery time,
//! so a round trip can finish inside one step), then fires the scheduled
//! actions and the random faults, then lets every node act: an operation
//! now and then, an engine tick every step, a hello every [`HELLO_EVERY`]
//! steps. Nothing here reads the system clock or iterates a hashed map, so
//! a seed replays exactly.

use super::check::Failure;
use super::history::History;
use super::net::{Net, NetStats};
use super::node::{Life, Node};
use super::plan::Plan;
use super::trace::{ev, fnv64, Trace};
use crate::common::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use vsmcp_crdt_core::store::{Durability, Store, StoreConfig};
use vsmcp_crdt_core::sync::{EngineConfig, Event, Outbound};
use vsmcp_crdt_core::Kind;

pub const STEP_MS: u64 = 10;
/// Steps between two hellos of a node.
pub const HELLO_EVERY: u64 = 5;
/// Elements of the sets.
pub const ELEMS: u8 = 4;
/// Most nodes (restored backups join as new ones).
pub const MAX_NODES: usize = 6;

/// The engine settings of the simulation: small times, so that a few
/// simulated seconds hold many collection rounds.
pub fn engine_config(max_log_bytes: usize) -> EngineConfig {
    EngineConfig {
        max_log_bytes,
        retransmit_ms: 40,
        down_after_ms: 300,
        collect_after_ms: if no_collection() { u64::MAX } else { 100 },
        ..EngineConfig::default()
    }
}

/// The control experiment (`SIM_NO_COLLECT=1`): engines never collect,
/// and the checker skips the bounds. What still fails then is not a
/// collection defect (or is the checker's).
pub fn no_collection() -> bool {
    std::env::var("SIM_NO_COLLECT").is_ok_and(|v| v == "1")
}

pub fn elem_bytes(e: u8) -> Vec<u8> {
    format!("e{e}").into_bytes()
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::GCounter => "g",
        Kind::PNCounter => "pn",
        Kind::ORSet => "rw",
        Kind::AWSet => "aw",
        Kind::LwwRegister => "lww",
    }
}

pub(super) const KINDS: [Kind; 5] = [
    Kind::GCounter,
    Kind::PNCounter,
    Kind::ORSet,
    Kind::AWSet,
    Kind::LwwRegister,
];

/// An id of the simulation.
pub struct IdSpec {
    pub name: Vec<u8>,
    /// The kind it is usually created with.
    pub home: Kind,
    /// Random operations touch it (scenario ids are left to their
    /// schedule).
    pub random_ops: bool,
}

/// Something scheduled at a time.
#[derive(Debug, Clone)]
pub enum Action {
    Isolate(usize, bool),
    /// Cut (or restore) the links between two nodes, both ways.
    CutPair(usize, usize, bool),
    Skew(usize, i64),
    RestartEngine {
        node: usize,
        gap_ms: u64,
    },
    RestartStore {
        node: usize,
        crash: bool,
        down_ms: u64,
    },
    FailWrites(usize, bool),
    Create {
        node: usize,
        id: usize,
        kind: Kind,
    },
    Count {
        node: usize,
        id: usize,
        n: i128,
    },
    SetOp {
        node: usize,
        id: usize,
        elem: u8,
        add: bool,
    },
    Delete {
        node: usize,
        id: usize,
    },
    /// Undo a random link fault (by its index in `World::cuts`).
    Uncut(Vec<(usize, usize)>),
}

#[derive(Default, Debug, Clone)]
pub struct Stats {
    /// Acknowledged operations by kind.
    pub ops: BTreeMap<&'static str, u64>,
    /// Operations that failed (not acknowledged).
    pub failed_ops: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub rejected: BTreeMap<&'static str, u64>,
    pub max_tombstones: usize,
    /// Operations that may have been lost (relaxed writes at a crash,
    /// writes after the backup of a replaced node).
    pub unsure_ops: u64,
    pub sim_ms: u64,
    pub net: NetStats,
    pub collected_tombstones: u64,
    pub collected_elements: u64,
}

/// A backup taken and not yet restored.
pub struct Backup {
    pub of: usize,
    pub path: PathBuf,
    /// Ops recorded before it (all of them acknowledged before the call).
    pub ops_before: usize,
}

pub struct World {
    pub seed: u64,
    pub plan: Plan,
    pub rng: Rng,
    pub now: u64,
    pub nodes: Vec<Node>,
    pub net: Net,
    /// Link faults in force: `cuts[from][to]` counts them.
    pub cuts: Vec<Vec<u32>>,
    pub hist: History,
    pub trace: Trace,
    pub stats: Stats,
    pub ids: Vec<IdSpec>,
    /// Violations seen during the run (a killed generation back on a node).
    pub failures: Vec<Failure>,
    /// Liveness probes of the last phase: (node, id index).
    pub probes: Vec<(usize, usize)>,
    /// Rejections counted when the probes were written.
    pub rejected_before_probes: BTreeMap<&'static str, u64>,
    pub faults_on: bool,
    pub(super) root: tempfile::TempDir,
    pub(super) backups: Vec<Backup>,
    pub(super) schedule: BTreeMap<(u64, u64), Action>,
    pub(super) sched_seq: u64,
    pub(super) dirs_made: u64,
    /// Directory ids of retired nodes (forgotten by the others).
    pub retired_dirs: Vec<Vec<u8>>,
    /// Debugging (`SIM_WATCH=<id>`): the id whose state on every node is
    /// traced whenever it changes, and the last state seen per node.
    pub(super) watch: Option<(usize, Vec<String>)>,
}

/// A temporary directory, in RAM when `/dev/shm` exists (RocksDB is much
/// faster there).
fn temp_root() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("vsmcp-sim-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("vsmcp-sim-")
        .tempdir()
        .expect("temporary directory")
}

impl World {
    pub fn new(seed: u64, verbose: bool) -> World {
        let plan = Plan::of_seed(seed);
        let mut ids: Vec<IdSpec> = [
            Kind::GCounter,
            Kind::PNCounter,
            Kind::ORSet,
            Kind::AWSet,
            Kind::LwwRegister,
            Kind::GCounter,
            Kind::ORSet,
            Kind::LwwRegister,
        ]
        .iter()
        .enumerate()
        .map(|(i, k)| IdSpec {
            name: format!("k{i}").into_bytes(),
            home: *k,
            random_ops: true,
        })
        .collect();
        // The scenario ids (see `scenario`).
        for (name, home) in [
            ("x", Kind::GCounter),
            ("s", Kind::ORSet),
            ("w", Kind::AWSet),
        ] {
            ids.push(IdSpec {
                name: name.as_bytes().to_vec(),
                home,
                random_ops: false,
            });
        }
        let n = plan.nodes;
        let mut net = Net::new(n);
        net.drop_pct = plan.drop_pct;
        net.dup_pct = plan.dup_pct;
        net.slow_pct = plan.slow_pct;
        net.max_delay_ms = plan.max_delay_ms;
        let mut w = World {
            seed,
            rng: Rng::new(seed),
            now: 0,
            nodes: Vec::new(),
            net,
            cuts: vec![vec![0; n]; n],
            hist: History::default(),
            trace: Trace::new(verbose),
            stats: Stats::default(),
            ids,
            failures: Vec::new(),
            probes: Vec::new(),
            rejected_before_probes: BTreeMap::new(),
            faults_on: true,
            root: temp_root(),
            backups: Vec::new(),
            schedule: BTreeMap::new(),
            sched_seq: 0,
            dirs_made: 0,
            retired_dirs: Vec::new(),
            watch: None,
            plan,
        };
        if let Ok(name) = std::env::var("SIM_WATCH") {
            w.watch = w.id_index(name.as_bytes()).map(|k| (k, Vec::new()));
        }
        ev!(
            w,
            "seed {seed} scenario {} nodes {} durability {:?} fault_ms {} net drop {}% dup {}% slow {}%<{}ms tiny_tiers {} log {}",
            w.plan.scenario.name(),
            n,
            w.plan.durability,
            w.plan.fault_ms,
            w.plan.drop_pct,
            w.plan.dup_pct,
            w.plan.slow_pct,
            w.plan.max_delay_ms,
            w.plan.tiny_tiers,
            w.plan.max_log_bytes
        );
        for i in 0..n {
            let dir = w.root.path().join(format!("n{i}"));
            let durability = w.plan.durability[i];
            let node = w.make_node(dir, durability);
            w.nodes.push(node);
            w.open_node(i);
        }
        super::scenario::schedule(&mut w);
        w
    }

    pub(super) fn make_node(&mut self, dir: PathBuf, durability: Durability) -> Node {
        let i = self.nodes.len();
        let mut cfg = StoreConfig::new(dir, b"sim");
        cfg.durability = durability;
        // The flush thread never fires: flushes are the world's choice.
        cfg.flush_interval_ms = 3_600_000;
        cfg.cache_bytes = Some(1 << 20);
        cfg.memory_budget = vsmcp_crdt_core::store::config::MIN_MEMORY_BUDGET;
        if self.plan.tiny_tiers {
            cfg.hot_limit = 2;
            cfg.warm_limit = 2;
        }
        self.dirs_made += 1;
        cfg.test_replica_seed = Some(
            self.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.dirs_made),
        );
        let mut ecfg = engine_config(self.plan.max_log_bytes);
        ecfg.attrs = format!("n{i}").into_bytes();
        let session_seed = self.seed ^ (self.dirs_made << 48);
        Node::new(format!("n{i}"), cfg, ecfg, session_seed, self.ids.len())
    }

    // ---- scheduling --------------------------------------------------

    pub fn at(&mut self, t: u64, a: Action) {
        self.sched_seq += 1;
        self.schedule.insert((t, self.sched_seq), a);
    }

    pub(super) fn run_scheduled(&mut self) {
        while let Some((&key, _)) = self.schedule.first_key_value() {
            if key.0 > self.now {
                break;
            }
            let a = self.schedule.remove(&key).expect("present");
            self.apply(a);
        }
    }

    pub(super) fn apply(&mut self, a: Action) {
        match a {
            Action::Isolate(i, cut) => {
                ev!(self, "n{i} {}", if cut { "isolated" } else { "rejoins" });
                self.fault("isolate");
                let n = self.nodes.len();
                let links: Vec<(usize, usize)> = (0..n)
                    .filter(|o| *o != i)
                    .flat_map(|o| [(i, o), (o, i)])
                    .collect();
                self.set_cuts(&links, cut);
            }
            Action::CutPair(a, b, cut) => {
                ev!(
                    self,
                    "link n{a}-n{b} {}",
                    if cut { "cut" } else { "restored" }
                );
                self.fault("cut-pair");
                self.set_cuts(&[(a, b), (b, a)], cut);
            }
            Action::Uncut(links) => {
                self.set_cuts(&links, false);
                ev!(self, "links restored {links:?}");
            }
            Action::Skew(i, skew) => {
                ev!(self, "n{i} clock skew {} -> {skew} ms", self.nodes[i].skew);
                self.nodes[i].skew = skew;
                self.nodes[i].set_wall(self.now);
                if skew.unsigned_abs() > 500 {
                    self.fault("clock-beyond-offset");
                }
            }
            Action::RestartEngine { node, gap_ms } => self.restart_engine(node, gap_ms),
            Action::RestartStore {
                node,
                crash,
                down_ms,
            } => self.restart_store(node, crash, down_ms),
            Action::FailWrites(i, on) => self.fail_writes(i, on),
            Action::Create { node, id, kind } => {
                self.op_create(node, id, kind);
            }
            Action::Count { node, id, n } => {
                self.op_count(node, id, n);
            }
            Action::SetOp {
                node,
                id,
                elem,
                add,
            } => {
                self.op_set(node, id, elem, add);
            }
            Action::Delete { node, id } => {
                self.op_delete(node, id);
            }
        }
    }

    pub(super) fn fault(&mut self, kind: &'static str) {
        *self.stats.faults.entry(kind).or_default() += 1;
    }

    pub(super) fn set_cuts(&mut self, links: &[(usize, usize)], cut: bool) {
        for &(a, b) in links {
            if a >= self.cuts.len() || b >= self.cuts.len() {
                continue;
            }
            let c = &mut self.cuts[a][b];
            *c = if cut { *c + 1 } else { c.saturating_sub(1) };
            self.net.blocked[a][b] = *c > 0;
        }
    }

    // ---- the step loop -------------------------------------------------

    /// Run `ms` of simulated time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    pub fn step(&mut self) {
        let until = self.now + STEP_MS;
        self.deliver_until(until);
        self.now = until;
        for n in &self.nodes {
            n.set_wall(self.now);
        }
        self.run_scheduled();
        if self.faults_on {
            self.random_faults();
        }
        for i in 0..self.nodes.len() {
            self.node_step(i);
        }
        self.after_step();
        self.watch_id();
        self.stats.sim_ms = self.now;
    }

    pub(super) fn deliver_until(&mut self, until: u64) {
        let mut budget = 500_000u32;
        while let Some(p) = self.net.next_due(until) {
            budget -= 1;
            if budget == 0 {
                self.failures.push(Failure::new(
                    "error",
                    format!("message storm: {} in flight", self.net.in_flight()),
                ));
                return;
            }
            self.now = p.at;
            let to = p.to;
            let node = &mut self.nodes[to];
            node.set_wall(p.at);
            let tag = tag_name(p.bytes.get(2).copied());
            let Some(r) = node.running_mut() else {
                continue;
            };
            let Some(engine) = r.engine.as_mut() else {
                ev!(
                    self,
                    "n{}->n{to} {tag} {}B: engine stopped",
                    p.from,
                    p.bytes.len()
                );
                continue;
            };
            let mut events = Vec::new();
            let outs = engine.receive(&r.store, &p.bytes, p.at, &mut events);
            ev!(
                self,
                "n{}->n{to} {tag} {}B #{:016x}",
                p.from,
                p.bytes.len(),
                fnv64(&p.bytes)
            );
            self.handle_events(to, events);
            self.send_all(to, outs, p.at);
            self.watch_id();
        }
    }

    /// Trace the watched id's state on every node that changed.
    pub(super) fn watch_id(&mut self) {
        let Some((k, mut last)) = self.watch.take() else {
            return;
        };
        last.resize(self.nodes.len(), String::new());
        let stores: Vec<Option<Store>> = self.nodes.iter().map(Node::store).collect();
        for (i, store) in stores.into_iter().enumerate() {
            let Some(store) = store else {
                continue;
            };
            let s = match super::check::read(&store, &self.ids[k].name) {
                Ok(r) => format!("{} {}", r.show(), r.dots),
                Err(e) => e.reason().to_string(),
            };
            if s != last[i] {
                ev!(self, "n{i} watch {}: {s}", self.id_name(k));
                last[i] = s;
            }
        }
        self.watch = Some((k, last));
    }

    pub(super) fn handle_events(&mut self, i: usize, events: Vec<Event>) {
        for e in events {
            match e {
                Event::Changed(id) => {
                    if let Some(k) = self.id_index(&id) {
                        self.observe(i, k);
                    }
                }
                Event::Rejected(from, why, _) => {
                    *self.stats.rejected.entry(why.name()).or_default() += 1;
                    let from = from.map(|r| self.node_of_sync_id(r.as_bytes()));
                    ev!(self, "n{i} rejected {} from {from:?}", why.name());
                }
                Event::PeerUp(r, _) => {
                    let j = self.node_of_sync_id(r.as_bytes());
                    ev!(self, "n{i} peer up {j}");
                }
                Event::PeerDown(r) => {
                    let j = self.node_of_sync_id(r.as_bytes());
                    ev!(self, "n{i} peer down {j}");
                }
                // Collections are traced from the engine's counters.
                Event::LocalChanged(_) | Event::Answered(_) | Event::Collected { .. } => {}
            }
        }
    }

    /// A node name for a sync id: `nJ` for a current engine, `nJ~` for an
    /// older session or incarnation of node J's directory.
    pub fn node_of_sync_id(&self, sync: &[u8]) -> String {
        for (j, n) in self.nodes.iter().enumerate() {
            if let Some(e) = n.running().and_then(|r| r.engine.as_ref()) {
                if e.me().as_bytes() == sync {
                    return format!("n{j}");
                }
            }
        }
        for (j, n) in self.nodes.iter().enumerate() {
            if n.dir_id.as_deref().is_some_and(|d| sync.starts_with(d)) {
                return format!("n{j}~");
            }
        }
        "?".into()
    }

    pub fn id_index(&self, id: &[u8]) -> Option<usize> {
        self.ids.iter().position(|s| s.name == id)
    }

    pub(super) fn send_all(&mut self, from: usize, outs: Vec<Outbound>, at: u64) {
        for o in outs {
            match &o.to {
                None => {
                    for j in 0..self.nodes.len() {
                        if j != from && !self.nodes[j].is_retired() {
                            self.net.send(&mut self.rng, at, from, j, o.bytes.clone());
                        }
                    }
                }
                Some(r) => {
                    let target = (0..self.nodes.len()).find(|j| {
                        self.nodes[*j]
                            .running()
                            .and_then(|x| x.engine.as_ref())
                            .is_some_and(|e| e.me() == r)
                    });
                    if let Some(j) = target {
                        self.net.send(&mut self.rng, at, from, j, o.bytes);
                    }
                }
            }
        }
    }

    pub(super) fn node_step(&mut self, i: usize) {
        if let Life::Down { back_at } = self.nodes[i].life {
            if self.now >= back_at {
                self.open_node(i);
            }
            return;
        }
        if !self.nodes[i].is_up() {
            return;
        }
        if self.nodes[i].engine_back_at.is_some_and(|t| self.now >= t) {
            let forget = self.retired_dirs.clone();
            self.nodes[i].start_engine(&forget);
            ev!(
                self,
                "n{i} engine started (session {})",
                self.nodes[i].engines
            );
        }
        if !self.nodes[i].to_forget.is_empty() {
            self.forget_pending(i);
        }
        if self.faults_on && self.rng.chance(self.plan.op_pct) {
            self.random_op(i);
        }
        let now = self.now;
        let hello = (now / STEP_MS + i as u64).is_multiple_of(HELLO_EVERY);
        let node = &mut self.nodes[i];
        let Some(r) = node.running_mut() else {
            return;
        };
        let Some(engine) = r.engine.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        let mut outs = engine.tick(&r.store, now, &mut events);
        if hello {
            outs.push(engine.hello(&r.store, &mut events));
        }
        self.handle_events(i, events);
        self.send_all(i, outs, now);
    }

    /// Bookkeeping once every node acted: writes known flushed, and the
    /// largest tombstone count seen.
    pub(super) fn after_step(&mut self) {
        let check_tombs = (self.now / STEP_MS).is_multiple_of(10);
        for i in 0..self.nodes.len() {
            let Some(c) = self.nodes[i]
                .running()
                .and_then(|r| r.engine.as_ref())
                .map(|e| e.counters())
            else {
                continue;
            };
            let now = (c.collected_elements, c.collected_tombstones);
            let before = std::mem::replace(&mut self.nodes[i].collected, now);
            if now != before {
                self.stats.collected_elements += now.0 - before.0;
                self.stats.collected_tombstones += now.1 - before.1;
                ev!(
                    self,
                    "n{i} collected {} set elements, {} tombstones",
                    now.0 - before.0,
                    now.1 - before.1
                );
            }
        }
        for n in &mut self.nodes {
            let Some(store) = n.store() else { continue };
            if (!n.unflushed.is_empty() || !n.killed_unflushed.is_empty())
                && store.stats().pending_writes == 0
            {
                n.unflushed.clear();
                n.killed_unflushed.clear();
            }
            if check_tombs {
                let t = store.tombstones().len();
                self.stats.max_tombstones = self.stats.max_tombstones.max(t);
            }
        }
    }
}

fn tag_name(t: Option<u8>) -> &'static str {
    match t {
        Some(1) => "deltas",
        Some(2) => "ack",
        Some(3) => "digest",
        Some(4) => "state-req",
        Some(5) => "states",
        Some(6) => "hello",
        _ => "?",
    }
}
