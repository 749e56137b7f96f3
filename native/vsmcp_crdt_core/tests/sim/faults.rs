//! Faults: node lifecycle (engine restarts, clean restarts and kills of
//! the store, failing disks, backups restored beside or instead of their
//! node) and the random faults of the fault phase.

use super::check::Failure;
use super::node::Life;
use super::trace::ev;
use super::world::{Action, Backup, World, MAX_NODES};

impl World {
    // ---- node lifecycle ------------------------------------------------

    pub(super) fn open_node(&mut self, i: usize) {
        let now = self.now;
        let forget = self.retired_dirs.clone();
        match self.nodes[i].open(now, &forget) {
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

    pub(super) fn restart_engine(&mut self, i: usize, gap_ms: u64) {
        let n = &self.nodes[i];
        if !n.is_up() || n.engine_back_at.is_some() {
            return;
        }
        self.fault("engine-restart");
        ev!(self, "n{i} engine stopped (restart in {gap_ms} ms)");
        self.nodes[i].stop_engine(self.now + gap_ms);
    }

    /// Stop node `i`'s process: cleanly (close) or by a kill (crash).
    pub(super) fn restart_store(&mut self, i: usize, crash: bool, down_ms: u64) {
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
    pub(super) fn lose_unflushed(&mut self, i: usize) -> usize {
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

    pub(super) fn fail_writes(&mut self, i: usize, on: bool) {
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

    pub(super) fn backup(&mut self, i: usize) {
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
    pub(super) fn restore(&mut self, replace: bool) {
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
            for i in 0..self.nodes.len() {
                self.nodes[i].to_forget.push(dir.clone());
                self.forget_pending(i);
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

    /// Retry the forgets node `i` still owes (see `Node::to_forget`).
    pub(super) fn forget_pending(&mut self, i: usize) {
        for e in self.nodes[i].forget_pending() {
            ev!(self, "n{i} forget failed: {e} (retried)");
        }
    }

    pub fn live_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| !n.is_retired()).count()
    }

    // ---- random faults -------------------------------------------------

    pub(super) fn random_node(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_up())
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.below(up.len() as u64) as usize])
    }

    pub(super) fn roll(&mut self, rate: u64) -> bool {
        self.rng.below(10_000) < rate
    }

    pub(super) fn random_faults(&mut self) {
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
        if self.roll(r.round) {
            if let Some(i) = self.random_node() {
                self.round(i);
            }
        }
    }

    /// A caller's `sync`: an anti-entropy round with every peer that is up.
    fn round(&mut self, i: usize) {
        let now = self.now;
        let Some(r) = self.nodes[i].running_mut() else {
            return;
        };
        let Some(engine) = r.engine.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        let (peers, outs) = engine.round(&r.store, now, &mut events);
        ev!(self, "n{i} sync round with {} peers", peers.len());
        self.handle_events(i, events);
        self.send_all(i, outs, now);
    }
}
