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
use super::history::{GenKey, History, Op, What};
use super::net::{Net, NetStats};
use super::node::{Life, Node};
use super::plan::Plan;
use super::trace::{fnv64, Trace};
use crate::common::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use vsmcp_crdt_core::crdt::Crdt;
use vsmcp_crdt_core::store::{Access, Durability, Store, StoreConfig};
use vsmcp_crdt_core::sync::{EngineConfig, Event, Outbound};
use vsmcp_crdt_core::{Error, Kind, Mutation};

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

const KINDS: [Kind; 5] = [
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
    root: tempfile::TempDir,
    backups: Vec<Backup>,
    schedule: BTreeMap<(u64, u64), Action>,
    sched_seq: u64,
    dirs_made: u64,
    /// Directory ids of retired nodes (forgotten by the others).
    pub retired_dirs: Vec<Vec<u8>>,
    /// Debugging (`SIM_WATCH=<id>`): the id whose state on every node is
    /// traced whenever it changes, and the last state seen per node.
    watch: Option<(usize, Vec<String>)>,
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

macro_rules! ev {
    ($w:expr, $($arg:tt)*) => {
        $w.trace.push($w.now, format_args!($($arg)*))
    };
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

    fn make_node(&mut self, dir: PathBuf, durability: Durability) -> Node {
        let i = self.nodes.len();
        let mut cfg = StoreConfig::new(dir, b"sim");
        cfg.durability = durability;
        // The flush thread never fires: flushes are the world's choice.
        cfg.flush_interval_ms = 3_600_000;
        cfg.cache_bytes = 1 << 20;
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

    fn run_scheduled(&mut self) {
        while let Some((&key, _)) = self.schedule.first_key_value() {
            if key.0 > self.now {
                break;
            }
            let a = self.schedule.remove(&key).expect("present");
            self.apply(a);
        }
    }

    fn apply(&mut self, a: Action) {
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

    fn fault(&mut self, kind: &'static str) {
        *self.stats.faults.entry(kind).or_default() += 1;
    }

    fn set_cuts(&mut self, links: &[(usize, usize)], cut: bool) {
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

    fn deliver_until(&mut self, until: u64) {
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
    fn watch_id(&mut self) {
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

    fn handle_events(&mut self, i: usize, events: Vec<Event>) {
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
                Event::LocalChanged(_) | Event::Answered(_) => {}
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

    fn send_all(&mut self, from: usize, outs: Vec<Outbound>, at: u64) {
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

    fn node_step(&mut self, i: usize) {
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
            self.nodes[i].start_engine();
            ev!(
                self,
                "n{i} engine started (session {})",
                self.nodes[i].engines
            );
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
    fn after_step(&mut self) {
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

    // ---- node lifecycle ------------------------------------------------

    fn open_node(&mut self, i: usize) {
        let now = self.now;
        match self.nodes[i].open(now) {
            Ok(()) => {
                let r = self.nodes[i].running().expect("just opened");
                let dir: Vec<u8> = r.store.replica_id().as_bytes()[..16].to_vec();
                let inc = r.store.incarnation();
                self.nodes[i].dir_id = Some(dir.clone());
                ev!(self, "n{i} open: dir {:02x?} incarnation {inc}", &dir[..4]);
                for k in 0..self.ids.len() {
                    self.observe(i, k);
                }
            }
            Err(e) => {
                self.failures.push(Failure::new("error", e.clone()));
                ev!(self, "n{i} open failed: {e}");
                self.nodes[i].life = Life::Retired;
            }
        }
    }

    fn restart_engine(&mut self, i: usize, gap_ms: u64) {
        let n = &self.nodes[i];
        if !n.is_up() || n.engine_back_at.is_some() {
            return;
        }
        self.fault("engine-restart");
        ev!(self, "n{i} engine stopped (restart in {gap_ms} ms)");
        self.nodes[i].stop_engine(self.now + gap_ms);
    }

    /// Stop node `i`'s process: cleanly (close) or by a kill (crash).
    fn restart_store(&mut self, i: usize, crash: bool, down_ms: u64) {
        let Some(store) = self.nodes[i].store() else {
            return;
        };
        self.fault(if crash { "crash" } else { "store-restart" });
        let lost = if crash {
            store.crash();
            true
        } else {
            match store.close(std::time::Duration::ZERO) {
                Ok(()) => false,
                Err(e) => {
                    ev!(self, "n{i} close: {}", e.reason());
                    self.fault("close-unflushed");
                    true
                }
            }
        };
        drop(store);
        let unsure = if lost { self.lose_unflushed(i) } else { 0 };
        ev!(
            self,
            "n{i} {} (down {down_ms} ms, {unsure} writes may be lost)",
            if crash { "killed" } else { "closed" }
        );
        let node = &mut self.nodes[i];
        node.life = Life::Down {
            back_at: self.now + down_ms,
        };
        node.engine_back_at = None;
        node.fail_writes = false;
        self.net.purge(i);
    }

    /// Node `i` lost its unflushed writes: they become unsure, and the
    /// generations it killed since its last flush may come back.
    fn lose_unflushed(&mut self, i: usize) -> usize {
        let node = &mut self.nodes[i];
        let lost = std::mem::take(&mut node.unflushed);
        for k in std::mem::take(&mut node.killed_unflushed) {
            node.killed_here.remove(&k);
        }
        for op in &lost {
            if self.hist.ops[*op].sure {
                self.hist.mark_unsure(*op);
                self.stats.unsure_ops += 1;
            }
        }
        lost.len()
    }

    fn fail_writes(&mut self, i: usize, on: bool) {
        let Some(store) = self.nodes[i].store() else {
            return;
        };
        if on == self.nodes[i].fail_writes {
            return;
        }
        if on {
            self.fault("fail-writes");
        }
        store.set_fail_writes(on);
        self.nodes[i].fail_writes = on;
        ev!(
            self,
            "n{i} writes {}",
            if on { "failing" } else { "recovered" }
        );
    }

    fn backup(&mut self, i: usize) {
        let Some(store) = self.nodes[i].store() else {
            return;
        };
        let path = self.root.path().join(format!("backup{}", self.dirs_made));
        self.dirs_made += 1;
        match store.backup(&path) {
            Ok(()) => {
                self.fault("backup");
                ev!(self, "n{i} backup taken");
                // A backup flushes first: every write acknowledged so far is
                // in it.
                self.nodes[i].unflushed.clear();
                self.nodes[i].killed_unflushed.clear();
                self.backups.push(Backup {
                    of: i,
                    path,
                    ops_before: self.hist.ops.len(),
                });
            }
            Err(e) => ev!(self, "n{i} backup failed: {}", e.reason()),
        }
    }

    /// Restore the oldest backup as a new node; with `replace`, the node it
    /// was taken of is lost first (killed for good) and forgotten by the
    /// others.
    fn restore(&mut self, replace: bool) {
        if self.backups.is_empty() || self.nodes.len() >= MAX_NODES {
            return;
        }
        let b = self.backups.remove(0);
        if replace {
            if self.nodes[b.of].is_retired() || self.live_nodes() <= 2 {
                return;
            }
            self.fault("replace-by-backup");
            if let Some(store) = self.nodes[b.of].store() {
                store.crash();
            }
            self.nodes[b.of].life = Life::Retired;
            self.net.purge(b.of);
            // What it acknowledged after the backup may be lost with it.
            for i in b.ops_before..self.hist.ops.len() {
                if self.hist.ops[i].node == b.of && self.hist.ops[i].sure {
                    self.hist.mark_unsure(i);
                    self.stats.unsure_ops += 1;
                }
            }
            let dir = self.nodes[b.of].dir_id.clone().unwrap_or_default();
            ev!(self, "n{} lost for good; forgotten by the others", b.of);
            for n in &mut self.nodes {
                if let Some(e) = n.running_mut().and_then(|r| r.engine.as_mut()) {
                    let mut events = Vec::new();
                    e.forget(&dir, &mut events);
                }
            }
            self.retired_dirs.push(dir);
        } else {
            self.fault("restore-clone");
        }
        let durability = self.nodes[b.of].cfg.durability;
        let i = self.nodes.len();
        let node = self.make_node(b.path, durability);
        self.nodes.push(node);
        self.net.add_node();
        for row in &mut self.cuts {
            row.push(0);
        }
        self.cuts.push(vec![0; i + 1]);
        ev!(self, "n{i} restored from a backup of n{}", b.of);
        self.open_node(i);
    }

    pub fn live_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| !n.is_retired()).count()
    }

    // ---- random faults -------------------------------------------------

    fn random_node(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_up())
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.below(up.len() as u64) as usize])
    }

    fn roll(&mut self, rate: u64) -> bool {
        self.rng.below(10_000) < rate
    }

    fn random_faults(&mut self) {
        let r = self.plan.rates.clone();
        let n = self.nodes.len();
        if self.roll(r.partition) {
            let d = 100 + self.rng.below(3_000);
            let links: Vec<(usize, usize)> = match self.rng.below(4) {
                // One node cut off.
                0 => {
                    let p = self.rng.below(n as u64) as usize;
                    (0..n)
                        .filter(|o| *o != p)
                        .flat_map(|o| [(p, o), (o, p)])
                        .collect()
                }
                // Two groups.
                1 => {
                    let side: Vec<bool> = (0..n).map(|_| self.rng.chance(50)).collect();
                    (0..n)
                        .flat_map(|a| (0..n).map(move |b| (a, b)))
                        .filter(|&(a, b)| a != b && side[a] != side[b])
                        .collect()
                }
                // One link, both ways (a partial partition).
                2 => {
                    let a = self.rng.below(n as u64) as usize;
                    let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    vec![(a, b), (b, a)]
                }
                // One link, one way (asymmetric).
                _ => {
                    let a = self.rng.below(n as u64) as usize;
                    let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    vec![(a, b)]
                }
            };
            self.fault("partition");
            ev!(self, "partition {links:?} for {d} ms");
            self.set_cuts(&links, true);
            self.at(self.now + d, Action::Uncut(links));
        }
        if self.roll(r.clock) {
            if let Some(i) = self.random_node() {
                let (skew, fix_after) = match self.rng.below(4) {
                    // Small skews and jumps, within the offset bound.
                    0 | 1 => (self.rng.below(400) as i64 - 200, None),
                    // Far ahead: refused by everyone.
                    2 => (
                        600 + self.rng.below(8_000) as i64,
                        Some(200 + self.rng.below(3_000)),
                    ),
                    // Far behind: it refuses everyone.
                    _ => (
                        -(600 + self.rng.below(4_000) as i64),
                        Some(200 + self.rng.below(3_000)),
                    ),
                };
                self.fault("clock");
                self.apply(Action::Skew(i, skew));
                if let Some(after) = fix_after {
                    self.at(self.now + after, Action::Skew(i, 0));
                }
            }
        }
        if self.roll(r.engine_restart) {
            if let Some(i) = self.random_node() {
                let gap = self.rng.below(300);
                self.restart_engine(i, gap);
            }
        }
        if self.roll(r.store_restart) {
            if let Some(i) = self.random_node() {
                let down = self.rng.below(1_500);
                self.restart_store(i, false, down);
            }
        }
        if self.roll(r.crash) {
            if let Some(i) = self.random_node() {
                let down = self.rng.below(1_500);
                self.restart_store(i, true, down);
            }
        }
        if self.roll(r.fail_writes) {
            if let Some(i) = self.random_node() {
                let d = 20 + self.rng.below(1_500);
                self.fail_writes(i, true);
                self.at(self.now + d, Action::FailWrites(i, false));
            }
        }
        if self.roll(r.backup) {
            if let Some(i) = self.random_node() {
                if !self.nodes[i].fail_writes {
                    self.backup(i);
                }
            }
        }
        if self.roll(r.restore) {
            let replace = self.rng.chance(50);
            self.restore(replace);
        }
        if self.roll(r.flush) {
            if let Some(i) = self.random_node() {
                if let Some(s) = self.nodes[i].store() {
                    let ok = s.flush().is_ok();
                    ev!(self, "n{i} flush {}", if ok { "ok" } else { "failed" });
                }
            }
        }
        if self.roll(r.decay) {
            if let Some(i) = self.random_node() {
                if let Some(s) = self.nodes[i].store() {
                    s.decay();
                    ev!(self, "n{i} decay");
                }
            }
        }
    }

    // ---- operations ----------------------------------------------------

    fn random_op(&mut self, i: usize) {
        let pool: Vec<usize> = (0..self.ids.len())
            .filter(|k| self.ids[*k].random_ops)
            .collect();
        let k = pool[self.rng.below(pool.len() as u64) as usize];
        let Some(store) = self.nodes[i].store() else {
            return;
        };
        match store.metadata(&self.ids[k].name, Access::MayBlock) {
            Err(Error::NotFound) => {
                let kind = if self.rng.chance(85) {
                    self.ids[k].home
                } else {
                    KINDS[self.rng.below(KINDS.len() as u64) as usize]
                };
                self.op_create(i, k, kind);
            }
            Err(e) => {
                self.stats.failed_ops += 1;
                ev!(self, "n{i} metadata {}: {}", self.id_name(k), e.reason());
            }
            Ok((m, _)) if self.rng.chance(self.plan.delete_pct) => {
                let _ = m;
                self.op_delete(i, k);
            }
            Ok((m, _)) => match m.kind {
                Kind::GCounter => {
                    let n = 1 + self.rng.below(9) as i128;
                    self.op_count(i, k, n);
                }
                Kind::PNCounter => {
                    let n = 1 + self.rng.below(9) as i128;
                    let n = if self.rng.chance(40) { -n } else { n };
                    self.op_count(i, k, n);
                }
                Kind::ORSet | Kind::AWSet => {
                    let e = self.rng.below(ELEMS as u64) as u8;
                    let add = self.rng.chance(60);
                    self.op_set(i, k, e, add);
                }
                Kind::LwwRegister => {
                    self.op_reg(i, k);
                }
            },
        }
    }

    pub fn id_name(&self, k: usize) -> String {
        String::from_utf8_lossy(&self.ids[k].name).into_owned()
    }

    /// Record an acknowledged operation of node `i`.
    fn record(&mut self, i: usize, k: usize, gen: GenKey, what: What, name: &'static str) -> usize {
        let op = Op {
            node: i,
            t: self.now,
            id: k,
            gen,
            what,
            sure: true,
        };
        let idx = self.hist.push(op);
        *self.stats.ops.entry(name).or_default() += 1;
        if self.nodes[i].cfg.durability == Durability::Relaxed {
            self.nodes[i].unflushed.push(idx);
        }
        idx
    }

    fn failed(&mut self, i: usize, k: usize, what: &str, e: &Error) {
        self.stats.failed_ops += 1;
        ev!(
            self,
            "n{i} {what} {} failed: {}",
            self.id_name(k),
            e.reason()
        );
    }

    fn live_gen(store: &Store, id: &[u8]) -> Result<GenKey, Error> {
        store
            .metadata(id, Access::MayBlock)
            .map(|(m, _)| GenKey::of(&m.gen))
    }

    pub fn op_create(&mut self, i: usize, k: usize, kind: Kind) -> bool {
        let Some(store) = self.nodes[i].store() else {
            return false;
        };
        let id = self.ids[k].name.clone();
        if let Err(e) = store.create(&id, kind, Access::MayBlock) {
            self.failed(i, k, "create", &e);
            return false;
        }
        let gen = match Self::live_gen(&store, &id) {
            Ok(g) => g,
            Err(e) => {
                self.failures.push(Failure::new(
                    "error",
                    format!("n{i}: {} unreadable after its create: {e}", self.id_name(k)),
                ));
                return false;
            }
        };
        ev!(
            self,
            "n{i} create {} {} {gen}",
            self.id_name(k),
            kind_name(kind)
        );
        self.record(i, k, gen, What::Create { kind }, "create");
        self.observe(i, k);
        true
    }

    pub fn op_delete(&mut self, i: usize, k: usize) -> bool {
        let Some(store) = self.nodes[i].store() else {
            return false;
        };
        let id = self.ids[k].name.clone();
        let gen = match Self::live_gen(&store, &id) {
            Ok(g) => g,
            Err(e) => {
                self.failed(i, k, "delete", &e);
                return false;
            }
        };
        if let Err(e) = store.delete(&id, Access::MayBlock) {
            self.failed(i, k, "delete", &e);
            return false;
        }
        let full = gen.gen();
        let at = store
            .tombstone(&id)
            .and_then(|t| t.iter().find(|t| t.gen == full).map(|t| t.at));
        ev!(self, "n{i} delete {} {gen} at {at:?}", self.id_name(k));
        self.record(i, k, gen, What::Delete { at }, "delete");
        self.observe(i, k);
        true
    }

    pub fn op_count(&mut self, i: usize, k: usize, n: i128) -> bool {
        let Some(store) = self.nodes[i].store() else {
            return false;
        };
        let id = self.ids[k].name.clone();
        let gen = match Self::live_gen(&store, &id) {
            Ok(g) => g,
            Err(e) => {
                self.failed(i, k, "count", &e);
                return false;
            }
        };
        let m = if n >= 0 {
            Mutation::Increment(n)
        } else {
            Mutation::Decrement(-n)
        };
        if let Err(e) = store.update(&id, m, Access::MayBlock, |_| ()) {
            self.failed(i, k, "count", &e);
            return false;
        }
        ev!(self, "n{i} count {} {n:+} {gen}", self.id_name(k));
        self.record(i, k, gen, What::Count(n), "count");
        true
    }

    pub fn op_set(&mut self, i: usize, k: usize, elem: u8, add: bool) -> bool {
        let Some(store) = self.nodes[i].store() else {
            return false;
        };
        let id = self.ids[k].name.clone();
        let gen = match Self::live_gen(&store, &id) {
            Ok(g) => g,
            Err(e) => {
                self.failed(i, k, "set-op", &e);
                return false;
            }
        };
        let before = store.read(&id, Access::MayBlock, |v| match v.crdt {
            Crdt::ORSet(s) => Some(s.causal_context()),
            _ => None,
        });
        let ctx = match before {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.failed(i, k, "set-op", &Error::UnsupportedOperation);
                return false;
            }
            Err(e) => {
                self.failed(i, k, "set-op", &e);
                return false;
            }
        };
        let e = elem_bytes(elem);
        let m = if add {
            Mutation::Add(&e)
        } else {
            Mutation::Remove(&e)
        };
        let me = store.replica_id().clone();
        let after = store.update(&id, m, Access::MayBlock, |v| match v.crdt {
            Crdt::ORSet(s) => s.normalized().elems.get(&e).and_then(|dots| {
                dots.iter()
                    .filter(|(r, _, _)| *r == me)
                    .map(|(_, c, _)| *c)
                    .max()
            }),
            _ => None,
        });
        let dot = match after {
            Ok(c) => c.map(|c| (me.clone(), c)),
            Err(e) => {
                self.failed(i, k, "set-op", &e);
                return false;
            }
        };
        let observed: Vec<usize> = self
            .hist
            .set_ops(k, &gen, elem)
            .iter()
            .copied()
            .filter(|j| match &self.hist.ops[*j].what {
                What::SetOp {
                    dot: Some((r, c)), ..
                } => ctx.vv.get(r).is_some_and(|m| m >= c) || ctx.cloud.contains(&(r.clone(), *c)),
                _ => false,
            })
            .collect();
        ev!(
            self,
            "n{i} {} {} e{elem} {gen} dot {:?} observed {observed:?}",
            if add { "add" } else { "remove" },
            self.id_name(k),
            dot.as_ref().map(|d| d.1)
        );
        self.record(
            i,
            k,
            gen,
            What::SetOp {
                elem,
                add,
                dot,
                observed,
            },
            if add { "add" } else { "remove" },
        );
        true
    }

    pub fn op_reg(&mut self, i: usize, k: usize) -> bool {
        let Some(store) = self.nodes[i].store() else {
            return false;
        };
        let id = self.ids[k].name.clone();
        let gen = match Self::live_gen(&store, &id) {
            Ok(g) => g,
            Err(e) => {
                self.failed(i, k, "set", &e);
                return false;
            }
        };
        let value = format!("v{}n{i}", self.rng.below(1000)).into_bytes();
        let me = store.replica_id().clone();
        let after = store.update(&id, Mutation::Set(&value), Access::MayBlock, |v| {
            match v.crdt {
                Crdt::LwwRegister(r) => r.entry().cloned(),
                _ => None,
            }
        });
        let entry = match after {
            Ok(Some(e)) if e.replica == me && *e.value == *value => {
                Some((e.ts, e.replica.as_bytes().to_vec(), e.value.to_vec()))
            }
            Ok(_) => None,
            Err(e) => {
                self.failed(i, k, "set", &e);
                return false;
            }
        };
        ev!(
            self,
            "n{i} set {} {} {gen} ts {:?}",
            self.id_name(k),
            String::from_utf8_lossy(&value),
            entry.as_ref().map(|e| e.0)
        );
        self.record(i, k, gen, What::Reg { entry }, "set");
        true
    }

    /// Look at the generation of id `k` on node `i`: one that left while
    /// the node held a tombstone killing it is remembered, and must never
    /// be live there again.
    pub fn observe(&mut self, i: usize, k: usize) {
        let Some(store) = self.nodes[i].store() else {
            return;
        };
        let id = &self.ids[k].name;
        let now = match Self::live_gen(&store, id) {
            Ok(g) => Some(g),
            Err(Error::NotFound) => None,
            Err(_) => return,
        };
        let before = self.nodes[i].seen[k].clone();
        if before == now {
            return;
        }
        let show = |g: &Option<GenKey>| g.as_ref().map_or("-".to_string(), |g| g.to_string());
        ev!(
            self,
            "n{i} {} now {} (was {})",
            self.id_name(k),
            show(&now),
            show(&before)
        );
        if let Some(g) = before {
            let killed = store.tombstone(id).is_some_and(|t| t.kills(&g.gen()));
            if killed {
                let node = &mut self.nodes[i];
                node.killed_here.insert((k, g.clone()));
                if node.cfg.durability == Durability::Relaxed {
                    node.killed_unflushed.push((k, g));
                }
            }
        }
        if let Some(g) = &now {
            if self.nodes[i].killed_here.contains(&(k, g.clone())) {
                let detail = format!(
                    "n{i}: {} generation {g} is live again after it was deleted there",
                    self.id_name(k)
                );
                ev!(self, "VIOLATION {detail}");
                self.failures.push(Failure::new("resurrected", detail));
                // Reported once.
                self.nodes[i].killed_here.remove(&(k, g.clone()));
            }
        }
        self.nodes[i].seen[k] = now;
    }

    // ---- phases ----------------------------------------------------------

    /// The fault phase: random faults and the scenario's schedule.
    pub fn run_faults(&mut self) {
        let ms = self.plan.fault_ms;
        self.run_for(ms);
    }

    /// Stop every fault: the network is reliable, clocks are right, disks
    /// work, every node is up with an engine. What is still scheduled is
    /// dropped (its undo is this).
    pub fn heal(&mut self) {
        self.faults_on = false;
        self.schedule.clear();
        self.net.make_reliable();
        for row in &mut self.cuts {
            row.iter_mut().for_each(|c| *c = 0);
        }
        ev!(self, "heal");
        for i in 0..self.nodes.len() {
            self.nodes[i].skew = 0;
            self.nodes[i].set_wall(self.now);
            if self.nodes[i].fail_writes {
                self.fail_writes(i, false);
            }
            if matches!(self.nodes[i].life, Life::Down { .. }) {
                self.open_node(i);
            }
            if self.nodes[i].is_up() && self.nodes[i].engine_back_at.is_some() {
                self.nodes[i].start_engine();
            }
        }
    }

    /// Every live node up with an engine, one digest root, empty logs and
    /// transfers, no tombstones.
    pub fn settled(&self) -> bool {
        let mut root = None;
        for n in self.nodes.iter().filter(|n| !n.is_retired()) {
            let Some(r) = n.running() else { return false };
            let Some(e) = r.engine.as_ref() else {
                return false;
            };
            if *root.get_or_insert(e.digest_root()) != e.digest_root()
                || !e.log().is_empty()
                || e.transfers_queued() > 0
                || (!no_collection() && !r.store.tombstones().is_empty())
            {
                return false;
            }
            if !no_collection() && self.ids.iter().any(|id| holds_tokens(&r.store, &id.name)) {
                return false;
            }
        }
        root.is_some()
    }

    /// Run until `done` holds at two checks 100 ms apart, or `max_ms`
    /// passed. Returns whether it held.
    pub fn run_until(&mut self, max_ms: u64, done: impl Fn(&World) -> bool) -> bool {
        let end = self.now + max_ms;
        let mut held = 0;
        while self.now < end {
            for _ in 0..10 {
                self.step();
            }
            if done(self) {
                held += 1;
                if held >= 2 {
                    return true;
                }
            } else {
                held = 0;
            }
        }
        false
    }

    /// Every live node writes a probe counter once; afterwards every node
    /// must read every probe (a node locked out by its clock fails this).
    pub fn start_probes(&mut self) {
        self.rejected_before_probes = self.stats.rejected.clone();
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_retired() {
                continue;
            }
            let k = self.ids.len();
            self.ids.push(IdSpec {
                name: format!("probe{i}").into_bytes(),
                home: Kind::GCounter,
                random_ops: false,
            });
            for n in &mut self.nodes {
                n.seen.push(None);
            }
            if self.op_create(i, k, Kind::GCounter) && self.op_count(i, k, 1) {
                self.probes.push((i, k));
            }
        }
    }

    /// Whether every live node reads every probe as 1.
    pub fn probes_seen(&self) -> bool {
        self.nodes.iter().filter(|n| !n.is_retired()).all(|n| {
            let Some(s) = n.store() else { return false };
            self.probes.iter().all(|(_, k)| {
                s.read(&self.ids[*k].name, Access::MayBlock, |v| {
                    v.value() == vsmcp_crdt_core::Value::Counter(1)
                })
                .unwrap_or(false)
            })
        })
    }

    /// Figures for the report.
    pub fn collect_counters(&mut self) {
        self.stats.net = self.net.stats.clone();
    }
}

/// Whether `id` is a remove-wins set holding a remove token.
fn holds_tokens(store: &Store, id: &[u8]) -> bool {
    store
        .read(id, Access::MayBlock, |v| match v.crdt {
            Crdt::ORSet(s) => s.has_remove_tokens(),
            _ => false,
        })
        .unwrap_or(false)
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
