//! The phases after the faults: heal, probes, settling.

use super::node::Life;
use super::trace::ev;
use super::world::{no_collection, IdSpec, World};
use vsmcp_crdt_core::crdt::Crdt;
use vsmcp_crdt_core::store::{Access, Store};
use vsmcp_crdt_core::Kind;

impl World {
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
                let forget = self.retired_dirs.clone();
                self.nodes[i].start_engine(&forget);
            }
        }
    }

    /// Let `ms` pass at once (nothing happens meanwhile; every node's wall
    /// clock moves with it).
    pub fn skip_time(&mut self, ms: u64) {
        self.now += ms;
        for i in 0..self.nodes.len() {
            let now = self.now;
            self.nodes[i].set_wall(now);
        }
        ev!(self, "time skipped {ms} ms");
    }

    /// How far the furthest HLC of a running node is ahead of now (ms).
    pub fn hlc_ahead_ms(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.running())
            .map(|r| {
                r.store
                    .clock()
                    .wall_ms
                    .saturating_sub(super::node::BASE_MS + self.now)
            })
            .max()
            .unwrap_or(0)
    }

    /// Every live node up with an engine, one digest root, empty logs and
    /// transfers, no tombstone and no remove token.
    pub fn settled(&self) -> bool {
        let mut root = None;
        for n in self.nodes.iter().filter(|n| !n.is_retired()) {
            let Some(r) = n.running() else { return false };
            let Some(e) = r.engine.as_ref() else {
                return false;
            };
            if *root.get_or_insert(e.digest_root()) != e.digest_root()
                || !e.log().is_empty()
                || e.queued_transfers() > 0
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
            Crdt::ORSet(s) => s.has_collectable_tokens(),
            _ => false,
        })
        .unwrap_or(false)
}
