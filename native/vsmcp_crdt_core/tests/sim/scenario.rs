//! Targeted schedules: the collection hazards random faults reach too
//! rarely, laid over the random run with random timings and variants (see
//! `plan` for the three scenarios). The scenario ids `x` (a counter), `s`
//! (a remove-wins set) and `w` (an add-wins set) are touched only here.

use super::plan::Scenario;
use super::world::{Action, World};
use vsmcp_crdt_core::Kind;

pub fn schedule(w: &mut World) {
    match w.plan.scenario {
        Scenario::Random => {}
        Scenario::LostDelete => lost_delete(w),
        Scenario::RemoveVsCutAdd => remove_vs_cut_add(w),
        Scenario::ClockRefused => clock_refused(w),
    }
}

fn two_nodes(w: &mut World) -> (usize, usize) {
    let n = w.plan.nodes as u64;
    let p = w.rng.below(n) as usize;
    let d = (p + 1 + w.rng.below(n - 1) as usize) % w.plan.nodes;
    (p, d)
}

fn id(w: &World, name: &str) -> usize {
    w.id_index(name.as_bytes()).expect("scenario id")
}

/// Node `p` creates `x` (counted up) and adds an element to `s`, the
/// cluster syncs, `p` is cut off; node `d` deletes `x` and removes the
/// element while `p` increments `x` and re-adds it; then the engines of
/// the others restart one by one (a rolling deploy), or `d` is killed and
/// restarted, or both; `p` returns after the others had time to collect.
fn lost_delete(w: &mut World) {
    let (p, d) = two_nodes(w);
    let (x, s) = (id(w, "x"), id(w, "s"));
    let kind = if w.rng.chance(50) {
        Kind::GCounter
    } else {
        Kind::PNCounter
    };
    let t0 = 300 + w.rng.below(2_000);
    w.at(
        t0,
        Action::Create {
            node: p,
            id: x,
            kind,
        },
    );
    for j in 0..7 {
        w.at(
            t0 + 1 + j,
            Action::Count {
                node: p,
                id: x,
                n: 1,
            },
        );
    }
    let creator = if w.rng.chance(50) { p } else { d };
    w.at(
        t0,
        Action::Create {
            node: creator,
            id: s,
            kind: Kind::ORSet,
        },
    );
    w.at(
        t0 + 200,
        Action::SetOp {
            node: p,
            id: s,
            elem: 0,
            add: true,
        },
    );
    let t1 = t0 + 500 + w.rng.below(800);
    w.at(t1, Action::Isolate(p, true));
    let t2 = t1 + 50 + w.rng.below(300);
    w.at(t2, Action::Delete { node: d, id: x });
    w.at(
        t2,
        Action::SetOp {
            node: d,
            id: s,
            elem: 0,
            add: false,
        },
    );
    // The cut-off node's concurrent writes.
    let tp = t2 + w.rng.below(200);
    w.at(
        tp,
        Action::Count {
            node: p,
            id: x,
            n: 5,
        },
    );
    w.at(
        tp,
        Action::SetOp {
            node: p,
            id: s,
            elem: 0,
            add: true,
        },
    );
    let variant = w.rng.below(3);
    let mut t = t2 + 100 + w.rng.below(300);
    if variant != 1 {
        for i in 0..w.plan.nodes {
            if i != p {
                let gap = w.rng.below(100);
                w.at(
                    t,
                    Action::RestartEngine {
                        node: i,
                        gap_ms: gap,
                    },
                );
                t += 50 + w.rng.below(300);
            }
        }
    }
    if variant != 0 {
        let down = 50 + w.rng.below(500);
        w.at(
            t,
            Action::RestartStore {
                node: d,
                crash: true,
                down_ms: down,
            },
        );
        t += down;
    }
    let back = t + 1_000 + w.rng.below(3_000);
    w.at(back, Action::Isolate(p, false));
}

/// `s` holds an element everywhere; node `p` is cut off (fully, or only
/// from the remover `a`); `a` removes the element while `p` adds it (and
/// likewise on the add-wins `w`); then only `a`'s engine restarts (or, in
/// the brief partial variant, nothing restarts); `p` returns.
fn remove_vs_cut_add(w: &mut World) {
    let (p, a) = two_nodes(w);
    let (s, aw) = (id(w, "s"), id(w, "w"));
    let t0 = 300 + w.rng.below(2_000);
    let creator = w.rng.below(w.plan.nodes as u64) as usize;
    w.at(
        t0,
        Action::Create {
            node: creator,
            id: s,
            kind: Kind::ORSet,
        },
    );
    w.at(
        t0,
        Action::Create {
            node: creator,
            id: aw,
            kind: Kind::AWSet,
        },
    );
    for set in [s, aw] {
        w.at(
            t0 + 150,
            Action::SetOp {
                node: creator,
                id: set,
                elem: 1,
                add: true,
            },
        );
    }
    let variant = w.rng.below(3);
    let t1 = t0 + 500 + w.rng.below(800);
    if variant == 0 {
        w.at(t1, Action::Isolate(p, true));
    } else {
        w.at(t1, Action::CutPair(p, a, true));
    }
    let t2 = t1 + 50 + w.rng.below(300);
    for set in [s, aw] {
        w.at(
            t2,
            Action::SetOp {
                node: a,
                id: set,
                elem: 1,
                add: false,
            },
        );
        let ta = t2 + w.rng.below(100);
        w.at(
            ta,
            Action::SetOp {
                node: p,
                id: set,
                elem: 1,
                add: true,
            },
        );
    }
    let mut back = t2 + 200 + w.rng.below(400);
    if variant != 2 {
        let t3 = t2 + 100 + w.rng.below(300);
        let gap = w.rng.below(100);
        w.at(
            t3,
            Action::RestartEngine {
                node: a,
                gap_ms: gap,
            },
        );
        back = t3 + 1_000 + w.rng.below(2_000);
    }
    if variant == 0 {
        w.at(back, Action::Isolate(p, false));
    } else {
        w.at(back, Action::CutPair(p, a, false));
    }
}

/// `x` is created and synced; then node `p`'s clock runs far ahead
/// (everyone refuses it) or far behind (it refuses everyone); meanwhile
/// another node deletes `x`, `p` counts on it and creates `s`; later the
/// clock is fixed.
fn clock_refused(w: &mut World) {
    let (p, d) = two_nodes(w);
    let (x, s) = (id(w, "x"), id(w, "s"));
    let t0 = 300 + w.rng.below(1_500);
    w.at(
        t0,
        Action::Create {
            node: p,
            id: x,
            kind: Kind::GCounter,
        },
    );
    w.at(
        t0 + 1,
        Action::Count {
            node: p,
            id: x,
            n: 3,
        },
    );
    let t1 = t0 + 500 + w.rng.below(800);
    let ahead = w.rng.chance(60);
    let skew = if ahead {
        // Some within the heal phase's reach, some far beyond it.
        1_000 + w.rng.below(20_000) as i64
    } else {
        -(700 + w.rng.below(4_000) as i64)
    };
    w.at(t1, Action::Skew(p, skew));
    let t2 = t1 + 100 + w.rng.below(500);
    w.at(t2, Action::Delete { node: d, id: x });
    w.at(
        t2 + 50,
        Action::Count {
            node: p,
            id: x,
            n: 4,
        },
    );
    w.at(
        t2 + 60,
        Action::Create {
            node: p,
            id: s,
            kind: Kind::ORSet,
        },
    );
    w.at(
        t2 + 70,
        Action::SetOp {
            node: p,
            id: s,
            elem: 2,
            add: true,
        },
    );
    if w.rng.chance(50) {
        // The others go on: engines restart meanwhile.
        let i = (p + 1 + w.rng.below(w.plan.nodes as u64 - 1) as usize) % w.plan.nodes;
        w.at(
            t2 + 300,
            Action::RestartEngine {
                node: i,
                gap_ms: 20,
            },
        );
    }
    let fix = t2 + 500 + w.rng.below(4_000);
    w.at(fix, Action::Skew(p, 0));
}
