//! Operations: the random operations of the fault phase and the scheduled
//! ones, each recorded in the history once acknowledged, and the per-node
//! watch that no generation a node deleted comes back there.

use super::check::Failure;
use super::history::{GenKey, Op, What};
use super::trace::ev;
use super::world::{elem_bytes, kind_name, World, ELEMS, KINDS};
use vsmcp_crdt_core::crdt::Crdt;
use vsmcp_crdt_core::store::{Access, Durability, Store};
use vsmcp_crdt_core::{Error, Kind, Mutation};

impl World {
    // ---- operations ----------------------------------------------------

    pub(super) fn random_op(&mut self, i: usize) {
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
    pub(super) fn record(
        &mut self,
        i: usize,
        k: usize,
        gen: GenKey,
        what: What,
        name: &'static str,
    ) -> usize {
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

    pub(super) fn failed(&mut self, i: usize, k: usize, what: &str, e: &Error) {
        self.stats.failed_ops += 1;
        ev!(
            self,
            "n{i} {what} {} failed: {}",
            self.id_name(k),
            e.reason()
        );
    }

    pub(super) fn live_gen(store: &Store, id: &[u8]) -> Result<GenKey, Error> {
        store
            .metadata(id, Access::MayBlock)
            .map(|(m, _)| GenKey::of(&m.gen))
    }

    /// The store of node `i`, id `k`'s name and its live generation there,
    /// for an operation `what` on it (`None`: the node is down, or the id
    /// is not there, which is counted as a failed operation).
    fn live_target(&mut self, i: usize, k: usize, what: &str) -> Option<(Store, Vec<u8>, GenKey)> {
        let store = self.nodes[i].store()?;
        let id = self.ids[k].name.clone();
        match Self::live_gen(&store, &id) {
            Ok(g) => Some((store, id, g)),
            Err(e) => {
                self.failed(i, k, what, &e);
                None
            }
        }
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
        let Some((store, id, gen)) = self.live_target(i, k, "delete") else {
            return false;
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
        let Some((store, id, gen)) = self.live_target(i, k, "count") else {
            return false;
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
        let Some((store, id, gen)) = self.live_target(i, k, "set-op") else {
            return false;
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
        let Some((store, id, gen)) = self.live_target(i, k, "set") else {
            return false;
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
}
