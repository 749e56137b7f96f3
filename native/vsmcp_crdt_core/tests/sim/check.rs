//! The checker, run once the faults stopped and the cluster settled.
//!
//! * **Convergence**: every live replica reads the same generation, kind
//!   and value of every id. A difference is reported with whether the
//!   engines' digest roots are equal (then anti-entropy will never repair
//!   it).
//! * **Generations**: the live generation of an id must be the one the
//!   acknowledged creates and deletes give: among the created generations
//!   that no delete's tombstone kills (`Tomb::kills`), the one of highest
//!   precedence, or, when a generation that beat it was created (and
//!   deleted since), possibly the next one or none: a replaced record is
//!   dropped whole (`record`), so a loser may be gone everywhere. A
//!   generation killed by a sure delete that is live is a resurrection. (During the run, a generation that left a node while it
//!   held a tombstone killing it must never be live there again: see
//!   `World::observe`.)
//! * **Values**, for the live generation: a counter equals the sum of its
//!   acknowledged operations (exactly when all are sure; within the range
//!   of the unsure ones otherwise); a set element is present as the OR-Set
//!   semantics of the recorded causal history say (the operations no other
//!   operation observed decide: remove-wins, present iff they are all adds;
//!   add-wins, present iff one is an add); a register holds the greatest
//!   (timestamp, replica, value) written.
//! * **Bounds**: no tombstone, no remove token, no unacknowledged log entry
//!   and no queued transfer is left once collection could run.
//! * **Liveness**: every node reads every node's probe write (written when
//!   the faults stopped) within `PROBE_MS`. When one does not, a node is
//!   locked out (by its clock): that is the failure reported, and the
//!   other checks, which assume convergence, are skipped.
//!
//! Unsure operations (possibly lost, see `history`) make a set of
//! possible outcomes, enumerated when there are at most [`MAX_UNSURE`] of
//! them for the value at hand; beyond, that value is counted undecided
//! (only a resurrection by a sure delete is still checked).

use super::history::{GenKey, Op, What};
use super::world::{elem_bytes, kind_name, World, ELEMS};
use std::collections::BTreeSet;
use vsmcp_crdt_core::crdt::Crdt;
use vsmcp_crdt_core::store::record::Tomb;
use vsmcp_crdt_core::store::{Access, Store};
use vsmcp_crdt_core::{Error, Kind, Timestamp, Value};

/// Most unsure operations enumerated for one value.
pub const MAX_UNSURE: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The class of the symptom (`resurrected`, `diverged`, ...).
    pub symptom: &'static str,
    pub detail: String,
}

impl Failure {
    pub fn new(symptom: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            symptom,
            detail: detail.into(),
        }
    }
}

/// Checks made and checks left undecided (too many unsure operations).
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub values: u64,
    pub undecided: u64,
}

type Entry = (Timestamp, Vec<u8>, Vec<u8>);

/// What one node reads of one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reading {
    gen: Option<GenKey>,
    kind: Option<Kind>,
    counter: Option<i128>,
    elems: Option<BTreeSet<Vec<u8>>>,
    reg: Option<Option<Entry>>,
    tokens: bool,
    /// A set's dots per element, for reports (not compared).
    pub(super) dots: String,
}

impl Reading {
    pub(super) fn show(&self) -> String {
        let Some(g) = &self.gen else {
            return "absent".into();
        };
        let kind = self.kind.map_or("?", kind_name);
        let v = if let Some(c) = self.counter {
            c.to_string()
        } else if let Some(e) = &self.elems {
            let e: Vec<String> = e
                .iter()
                .map(|b| String::from_utf8_lossy(b).into())
                .collect();
            format!("[{}]", e.join(","))
        } else if let Some(r) = &self.reg {
            match r {
                Some((ts, _, v)) => format!(
                    "{}@{}.{}",
                    String::from_utf8_lossy(v),
                    ts.wall_ms % 1_000_000,
                    ts.counter
                ),
                None => "nil".into(),
            }
        } else {
            "?".into()
        };
        format!("{kind} {g} {v}")
    }
}

pub(super) fn read(store: &Store, id: &[u8]) -> Result<Reading, Error> {
    let meta = match store.metadata(id, Access::MayBlock) {
        Ok((m, _)) => m,
        Err(Error::NotFound) => {
            return Ok(Reading {
                gen: None,
                kind: None,
                counter: None,
                elems: None,
                reg: None,
                tokens: false,
                dots: String::new(),
            })
        }
        Err(e) => return Err(e),
    };
    store.read(id, Access::MayBlock, |v| {
        let mut r = Reading {
            gen: Some(GenKey::of(&meta.gen)),
            kind: Some(meta.kind),
            counter: None,
            elems: None,
            reg: None,
            tokens: false,
            dots: String::new(),
        };
        match v.crdt {
            Crdt::ORSet(s) => {
                r.elems = Some(s.elements().map(<[u8]>::to_vec).collect());
                r.tokens = s.has_collectable_tokens();
                let n = s.normalized();
                let short = |id: &vsmcp_crdt_core::ReplicaId| {
                    let b = id.as_bytes();
                    format!("{:02x}{:02x}.{}", b[0], b[1], b[b.len() - 1])
                };
                let elems: Vec<String> = n
                    .elems
                    .iter()
                    .map(|(e, dots)| {
                        let d: Vec<String> = dots
                            .iter()
                            .map(|(r, c, rm)| {
                                format!("{}{}:{c}", if *rm { "-" } else { "+" }, short(r))
                            })
                            .collect();
                        format!("{}{{{}}}", String::from_utf8_lossy(e), d.join(" "))
                    })
                    .collect();
                let vv: Vec<String> = n
                    .ctx
                    .vv
                    .iter()
                    .map(|(r, c)| format!("{}:{c}", short(r)))
                    .collect();
                r.dots = format!(
                    "{} ctx [{}] cloud {}",
                    elems.join(" "),
                    vv.join(" "),
                    n.ctx.cloud.len()
                );
            }
            Crdt::LwwRegister(l) => {
                r.reg = Some(
                    l.entry()
                        .map(|e| (e.ts, e.replica.as_bytes().to_vec(), e.value.to_vec())),
                );
            }
            c => {
                if let Value::Counter(n) = c.value() {
                    r.counter = Some(n);
                }
                let short = |id: &vsmcp_crdt_core::ReplicaId| {
                    let b = id.as_bytes();
                    format!("{:02x}{:02x}.{}", b[0], b[1], b[b.len() - 1])
                };
                let entries = |g: &vsmcp_crdt_core::gcounter::GCounter| {
                    g.sorted_entries()
                        .into_iter()
                        .map(|(r, n)| format!("{}:{n}", short(r)))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                r.dots = match c {
                    Crdt::GCounter(g) => format!("[{}]", entries(g)),
                    Crdt::PNCounter(p) => {
                        format!("p[{}] n[{}]", entries(p.positive()), entries(p.negative()))
                    }
                    _ => String::new(),
                };
            }
        }
        r
    })
}

/// Every subset of the unsure items (all of them when there are more than
/// `MAX_UNSURE`: `None`).
fn subsets(unsure: usize) -> Option<impl Iterator<Item = u64>> {
    (unsure <= MAX_UNSURE).then(|| 0..(1u64 << unsure))
}

/// Check the world after the heal; `live`: the probes reached everyone
/// within `PROBE_MS`.
pub fn check(w: &World, live_ok: bool, checked: &mut Checked) -> Vec<Failure> {
    let mut out = w.failures.clone();
    let live: Vec<usize> = (0..w.nodes.len())
        .filter(|i| !w.nodes[*i].is_retired())
        .collect();
    for &i in &live {
        if w.nodes[i]
            .running()
            .and_then(|r| r.engine.as_ref())
            .is_none()
        {
            out.push(Failure::new(
                "error",
                format!("n{i} is not running after the heal"),
            ));
            return out;
        }
    }
    // Liveness.
    let mut missing = Vec::new();
    for &i in &live {
        let store = w.nodes[i].store().expect("running");
        for (j, k) in &w.probes {
            let ok = store
                .read(&w.ids[*k].name, Access::MayBlock, |v| {
                    v.value() == Value::Counter(1)
                })
                .unwrap_or(false);
            if !ok {
                missing.push(format!("n{i} lacks n{j}'s"));
            }
        }
    }
    if !live_ok && missing.is_empty() {
        missing.push("late".into());
    }
    if w.probes.len() < live.len() {
        missing.push(format!(
            "{} of {} probes written",
            w.probes.len(),
            live.len()
        ));
    }
    if !missing.is_empty() {
        // The replicas did not converge: their values say nothing more.
        let since = rejections_since_probes(w);
        out.push(Failure::new(
            "stuck",
            format!(
                "probe writes made when the faults stopped did not reach everyone within {} ms: {} (rejections meanwhile: {})",
                super::PROBE_MS,
                missing.join(", "),
                since.join(", ")
            ),
        ));
        return out;
    }
    let roots: Vec<u64> = live
        .iter()
        .map(|i| {
            w.nodes[*i]
                .running()
                .and_then(|r| r.engine.as_ref())
                .map_or(0, |e| e.digest_root())
        })
        .collect();
    let roots_equal = roots.windows(2).all(|p| p[0] == p[1]);
    let mut tokens_at: Vec<(usize, String)> = Vec::new();
    for k in 0..w.ids.len() {
        let name = w.id_name(k);
        let mut readings: Vec<(usize, Reading)> = Vec::new();
        for &i in &live {
            let store = w.nodes[i].store().expect("running");
            match read(&store, &w.ids[k].name) {
                Ok(r) => {
                    if r.tokens {
                        tokens_at.push((i, name.clone()));
                    }
                    readings.push((i, r));
                }
                Err(e) => out.push(Failure::new(
                    "error",
                    format!("n{i}: {name} unreadable: {}", e.reason()),
                )),
            }
        }
        let same = |a: &Reading, b: &Reading| {
            a.gen == b.gen
                && a.kind == b.kind
                && a.counter == b.counter
                && a.elems == b.elems
                && a.reg == b.reg
        };
        if readings.windows(2).any(|p| !same(&p[0].1, &p[1].1)) {
            let shown: Vec<String> = readings
                .iter()
                .map(|(i, r)| {
                    if r.dots.is_empty() {
                        format!("n{i}: {}", r.show())
                    } else {
                        format!("n{i}: {} = {}", r.show(), r.dots)
                    }
                })
                .collect();
            let (symptom, roots) = if roots_equal {
                ("diverged-equal-roots", "equal digest roots")
            } else {
                ("diverged", "digest roots differ")
            };
            out.push(Failure::new(
                symptom,
                format!("{name} reads differently ({roots}): {}", shown.join(" | ")),
            ));
        }
        // The semantics, once per distinct reading.
        let mut seen: Vec<&Reading> = Vec::new();
        for (i, r) in &readings {
            if seen.iter().any(|s| same(s, r)) {
                continue;
            }
            seen.push(r);
            let at: Vec<String> = readings
                .iter()
                .filter(|(_, x)| same(x, r))
                .map(|(j, _)| format!("n{j}"))
                .collect();
            let _ = i;
            expect(w, k, r, &at.join(","), checked, &mut out);
        }
    }
    if !super::world::no_collection() {
        bounds(w, &live, &tokens_at, &mut out);
    }
    out
}

/// Nothing collection should have dropped is left.
fn bounds(w: &World, live: &[usize], tokens_at: &[(usize, String)], out: &mut Vec<Failure>) {
    let since = rejections_since_probes(w);
    for &i in live {
        let r = w.nodes[i].running().expect("running");
        let e = r.engine.as_ref().expect("engine");
        let tombs = r.store.tombstones();
        let mut held = Vec::new();
        if !tombs.is_empty() {
            let names: Vec<String> = tombs
                .iter()
                .take(4)
                .map(|(id, t)| format!("{}x{}", String::from_utf8_lossy(id), t.len()))
                .collect();
            held.push(format!("{} tombstones ({})", tombs.len(), names.join(" ")));
        }
        let tokens: Vec<&str> = tokens_at
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, n)| n.as_str())
            .collect();
        if !tokens.is_empty() {
            held.push(format!("remove tokens in {}", tokens.join(" ")));
        }
        if !e.log().is_empty() {
            held.push(format!("{} unacknowledged log entries", e.log().len()));
        }
        if e.queued_transfers() > 0 {
            held.push(format!("{} queued transfer items", e.queued_transfers()));
        }
        if !held.is_empty() {
            let peers: Vec<String> = e
                .peer_info()
                .iter()
                .map(|p| {
                    format!(
                        "{}{} lag {}{}",
                        w.node_of_sync_id(p.id.as_bytes()),
                        if p.up { "" } else { " down" },
                        p.ack_lag,
                        if p.anchored { "" } else { " unanchored" }
                    )
                })
                .collect();
            // Simulated ms of a stamp (`Timestamp::to_u64`).
            let at = |stamp: u64| {
                vsmcp_crdt_core::Timestamp::wall_of_u64(stamp).saturating_sub(super::node::BASE_MS)
            };
            let members: Vec<String> = e
                .member_info()
                .iter()
                .map(|m| {
                    let mut sync = m.directory.clone();
                    sync.extend_from_slice(&[0; 16]);
                    format!(
                        "{}{} frontier {} stable {}",
                        w.node_of_sync_id(&sync).trim_end_matches('~'),
                        if m.up { "" } else { " down" },
                        at(m.frontier),
                        at(m.stable)
                    )
                })
                .collect();
            out.push(Failure::new(
                "unbounded",
                format!(
                    "n{i} after the heal (t={}): {} (its peers: {}; members: {}; rejections since the heal: {}{})",
                    w.now,
                    held.join(", "),
                    peers.join("; "),
                    members.join("; "),
                    if since.is_empty() {
                        "none".into()
                    } else {
                        since.join(", ")
                    },
                    if w.plan.tiny_tiers {
                        "; tiny tiers"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
}

/// The refusals counted since the probes were written (after the heal),
/// by kind: `"clock_ahead 3"`.
fn rejections_since_probes(w: &World) -> Vec<String> {
    w.stats
        .rejected
        .iter()
        .map(|(k, v)| (k, v - w.rejected_before_probes.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect()
}

/// The generation the creates and deletes of `k` give, for each choice of
/// the unsure ones; `None` if undecidable.
fn possible_gens(w: &World, k: usize) -> Option<BTreeSet<Option<GenKey>>> {
    let ops: Vec<&Op> = w.hist.ops.iter().filter(|o| o.id == k).collect();
    let creates: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| matches!(o.what, What::Create { .. }))
        .collect();
    let deletes: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| matches!(o.what, What::Delete { .. }))
        .collect();
    if deletes.iter().any(|d| d.tomb().is_none()) {
        return None;
    }
    let items: Vec<&Op> = creates.iter().chain(deletes.iter()).copied().collect();
    let unsure: Vec<usize> = (0..items.len()).filter(|i| !items[*i].sure).collect();
    let mut out = BTreeSet::new();
    for mask in subsets(unsure.len())? {
        let included = |i: usize| {
            items[i].sure
                || unsure
                    .iter()
                    .position(|u| *u == i)
                    .is_some_and(|b| mask >> b & 1 == 1)
        };
        let tombs: Vec<Tomb> = (creates.len()..items.len())
            .filter(|i| included(*i))
            .filter_map(|i| items[i].tomb())
            .collect();
        let mut alive: Vec<&GenKey> = (0..creates.len())
            .filter(|i| included(*i))
            .map(|i| &items[i].gen)
            .filter(|g| !tombs.iter().any(|t| t.kills(&g.gen())))
            .collect();
        alive.sort_by(|a, b| b.gen().precedence(&a.gen()));
        // The best surviving generation, unless a created generation that
        // beats it (since deleted) replaced it: a replaced record is
        // dropped whole, so it may be gone everywhere. Then the next one,
        // and so on.
        let mut all_replaceable = true;
        for g in alive {
            out.insert(Some(g.clone()));
            if !creates.iter().any(|h| h.gen.beats(g)) {
                all_replaceable = false;
                break;
            }
        }
        if all_replaceable {
            out.insert(None);
        }
    }
    Some(out)
}

fn expect(
    w: &World,
    k: usize,
    r: &Reading,
    at: &str,
    checked: &mut Checked,
    out: &mut Vec<Failure>,
) {
    let name = w.id_name(k);
    // A generation killed by a sure delete must not be live.
    if let Some(g) = &r.gen {
        let killer = w
            .hist
            .ops
            .iter()
            .find(|o| o.id == k && o.sure && o.tomb().is_some_and(|t| t.kills(&g.gen())));
        if let Some(d) = killer {
            out.push(Failure::new(
                "resurrected",
                format!(
                    "{name} generation {g} is live on {at}, but n{}'s delete at t={} killed it ({})",
                    d.node,
                    d.t,
                    r.show()
                ),
            ));
            return;
        }
    }
    checked.values += 1;
    match possible_gens(w, k) {
        None => checked.undecided += 1,
        Some(p) if !p.contains(&r.gen) => {
            let expected: Vec<String> = p
                .iter()
                .map(|g| g.as_ref().map_or("absent".into(), |g| g.to_string()))
                .collect();
            let symptom = if r.gen.is_none() {
                "lost-data"
            } else {
                "wrong-generation"
            };
            out.push(Failure::new(
                symptom,
                format!(
                    "{name} on {at}: {}; expected one of [{}]",
                    r.show(),
                    expected.join(", ")
                ),
            ));
            return;
        }
        Some(_) => {}
    }
    let Some(g) = &r.gen else { return };
    let ops: Vec<&Op> = w
        .hist
        .ops
        .iter()
        .filter(|o| o.id == k && o.gen == *g)
        .collect();
    if let Some(v) = r.counter {
        let (mut sure, mut lo, mut hi) = (0i128, 0i128, 0i128);
        for o in &ops {
            if let What::Count(n) = o.what {
                if o.sure {
                    sure += n;
                } else if n < 0 {
                    lo += n;
                } else {
                    hi += n;
                }
            }
        }
        checked.values += 1;
        if v < sure + lo || v > sure + hi {
            let symptom = if v < sure + lo {
                "lost-data"
            } else {
                "counter-too-high"
            };
            out.push(Failure::new(
                symptom,
                format!(
                    "{name} {g} on {at} reads {v}; acknowledged operations give {sure} (unsure range {}..={})",
                    sure + lo,
                    sure + hi
                ),
            ));
        }
    }
    if let Some(elems) = &r.elems {
        let remove_wins = r.kind == Some(Kind::ORSet);
        for e in 0..ELEMS {
            let set_ops: Vec<usize> = w.hist.set_ops(k, g, e).to_vec();
            if set_ops.is_empty() {
                continue;
            }
            let unsure: Vec<usize> = set_ops
                .iter()
                .copied()
                .filter(|i| !w.hist.ops[*i].sure)
                .collect();
            let Some(masks) = subsets(unsure.len()) else {
                checked.undecided += 1;
                continue;
            };
            checked.values += 1;
            let mut possible = BTreeSet::new();
            for mask in masks {
                let included: Vec<usize> = set_ops
                    .iter()
                    .copied()
                    .filter(|i| {
                        w.hist.ops[*i].sure
                            || unsure
                                .iter()
                                .position(|u| u == i)
                                .is_some_and(|b| mask >> b & 1 == 1)
                    })
                    .collect();
                possible.insert(present(w, &included, remove_wins));
            }
            let actual = elems.contains(&elem_bytes(e));
            if !possible.contains(&actual) {
                let history: Vec<String> = set_ops
                    .iter()
                    .map(|i| {
                        let o = &w.hist.ops[*i];
                        match &o.what {
                            What::SetOp {
                                add, dot, observed, ..
                            } => format!(
                                "#{i} n{} t={} {}{} dot {:?} saw {observed:?}",
                                o.node,
                                o.t,
                                if *add { "add" } else { "remove" },
                                if o.sure { "" } else { "?" },
                                dot.as_ref().map(|d| d.1)
                            ),
                            _ => String::new(),
                        }
                    })
                    .collect();
                out.push(Failure::new(
                    if remove_wins {
                        "remove-wins-violated"
                    } else {
                        "add-wins-violated"
                    },
                    format!(
                        "{name} {g} on {at}: e{e} {}; history: {}",
                        if actual { "present" } else { "absent" },
                        history.join("; ")
                    ),
                ));
            }
        }
    }
    if let Some(reg) = &r.reg {
        let cands: Vec<(&Entry, bool)> = ops
            .iter()
            .filter_map(|o| match &o.what {
                What::Reg { entry: Some(e) } => Some((e, o.sure)),
                _ => None,
            })
            .collect();
        if cands.is_empty() {
            return;
        }
        checked.values += 1;
        let max_sure = cands.iter().filter(|(_, s)| *s).map(|(e, _)| *e).max();
        let max_all = cands.iter().map(|(e, _)| *e).max();
        let ok = match reg {
            None => max_sure.is_none(),
            Some(e) => cands.iter().any(|(c, _)| *c == e) && max_sure.is_none_or(|m| e >= m),
        };
        let exact = cands.iter().all(|(_, s)| *s);
        if !ok || (exact && reg.as_ref() != max_all) {
            out.push(Failure::new(
                "register-not-greatest",
                format!(
                    "{name} {g} on {at}: {}; greatest written {:?}",
                    r.show(),
                    max_all.map(|e| (e.0, String::from_utf8_lossy(&e.2)))
                ),
            ));
        }
    }
}

/// Whether the element is present after the set operations `included`
/// (indexes into the history): the operations no included one observed
/// decide.
fn present(w: &World, included: &[usize], remove_wins: bool) -> bool {
    let frontier: Vec<bool> = included
        .iter()
        .filter(|a| {
            matches!(&w.hist.ops[**a].what, What::SetOp { dot: Some(_), .. })
                && !included.iter().any(|b| match &w.hist.ops[*b].what {
                    What::SetOp { observed, .. } => observed.contains(a),
                    _ => false,
                })
        })
        .map(|a| matches!(w.hist.ops[*a].what, What::SetOp { add: true, .. }))
        .collect();
    if remove_wins {
        !frontier.is_empty() && frontier.iter().all(|add| *add)
    } else {
        frontier.iter().any(|add| *add)
    }
}
