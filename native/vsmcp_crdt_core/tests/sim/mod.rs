//! A deterministic simulator of whole replicas, in the spirit of
//! FoundationDB's simulation testing and TigerBeetle's VOPR: 3-5 real
//! stores (RocksDB in a RAM directory) with their sync engines in one
//! process, driven by one seeded generator.
//!
//! A run has two phases. **Faults** (8-16 s of simulated time, 11-19 s
//! with a targeted scenario): random operations on every type (G/PN
//! counters, remove-wins and add-wins OR-Sets, LWW registers, deletes and
//! re-creates, re-creates with another type, callers' `sync` rounds) on
//! every node, while the network drops, duplicates, delays and
//! reorders packets and is partitioned (one node, two groups, one link,
//! one direction); clocks are skewed, jump, or run beyond
//! `max_clock_offset` and are fixed again; engines restart (a new session
//! on the same store); stores close and reopen, or are killed
//! (`Store::crash`: unflushed relaxed writes are lost); writes fail
//! (`set_fail_writes`); backups are taken and restored as new replicas,
//! beside the original or replacing it (which is then forgotten). Stores
//! are strict, relaxed or mixed. Targeted scenarios (`plan`, `scenario`)
//! weight the run toward the known collection hazards. **Heal**: faults
//! stop, the network is reliable, clocks are right, every node is up, and
//! every node writes a probe at once: within 3 s every node must read
//! every probe (else the run is `stuck`: a node locked out). Then the
//! cluster runs until it settled (one digest root, empty logs, no
//! tombstone, no remove token) or 8 s passed, and `check` asserts
//! convergence, the semantics of the acknowledged history, that no deleted
//! generation came back, and the bounds (see its docs).
//!
//! **Determinism.** Physical time is simulated (`WallClock::Manual`), the
//! flush thread never fires, replica ids and engine sessions come from the
//! seed, and the core's maps whose order shows use a fixed-seed hasher
//! (all of these through the `fault-injection` feature). The simulator
//! iterates no hashed map. So a seed replays exactly: the trace hash (every
//! event, every packet's bytes) is the same on every run, which
//! `a_seed_replays_exactly` checks.
//!
//! **Debugging**: `SIM_SEED=<n>` prints every event of seed `n`;
//! `SIM_WATCH=<id>` adds the state of that id on every node whenever it
//! changes; `SIM_NO_COLLECT=1` runs the control experiment (no
//! collection, no bounds checked: what still fails is not collection's).
//!
//! **Cost**: about 0.25 s of one core per seed on a quiet machine, more
//! for seeds that wait out the heal (see `bench/RESULTS-sim.md`).

#![allow(dead_code)]

pub mod check;
pub mod faults;
pub mod history;
pub mod net;
pub mod node;
pub mod ops;
pub mod phases;
pub mod plan;
pub mod scenario;
pub mod trace;
pub mod world;

use check::{Checked, Failure};
use std::time::{Duration, Instant};
use world::{Stats, World};

/// Longest wait, once the faults stopped, for every node's probe write to
/// reach every node (ms simulated).
pub const PROBE_MS: u64 = 3_000;
/// Longest wait then for the cluster to settle (one digest root, empty
/// logs, nothing left to collect) before the checker runs anyway.
pub const HEAL_MS: u64 = 8_000;

/// The result of one seed.
pub struct Outcome {
    pub seed: u64,
    pub scenario: &'static str,
    pub nodes: usize,
    pub failures: Vec<Failure>,
    pub stats: Stats,
    pub checked: Checked,
    pub trace_hash: u64,
    pub events: u64,
    pub tail: Vec<String>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The symptom classes, distinct, in order.
    pub fn symptoms(&self) -> Vec<&'static str> {
        let mut s: Vec<&'static str> = self.failures.iter().map(|f| f.symptom).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The command that reruns this seed with its whole trace.
    pub fn repro(&self) -> String {
        format!(
            "SIM_SEED={} cargo test --release --workspace --test sim seeds -- --nocapture",
            self.seed
        )
    }

    /// The failure report: seed, failures, the last events.
    pub fn report(&self) -> String {
        let mut s = format!(
            "seed {} ({}, {} nodes) FAILED: {}\n  rerun: {}\n",
            self.seed,
            self.scenario,
            self.nodes,
            self.symptoms().join(", "),
            self.repro()
        );
        for f in &self.failures {
            s.push_str(&format!("  [{}] {}\n", f.symptom, f.detail));
        }
        s.push_str(&format!(
            "  last {} of {} events:\n",
            self.tail.len(),
            self.events
        ));
        for l in &self.tail {
            s.push_str(&format!("    {l}\n"));
        }
        s
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Run one seed (printing every event when `verbose`).
pub fn run(seed: u64, verbose: bool) -> Outcome {
    let start = Instant::now();
    let mut w = World::new(seed, verbose);
    let mut checked = Checked::default();
    let phases = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.run_faults();
        w.heal();
        // A node whose clock ran ahead keeps its HLC (it never goes back):
        // its writes are stamped in the others' future and wait, by design
        // (see the sync guide, "Clock skew"), until their clocks get there.
        // So the probes start once every clock has passed every HLC.
        let ahead = w.hlc_ahead_ms();
        if ahead > 2_000 {
            // Far ahead (minutes, hours): skip the quiet time at once.
            w.skip_time(ahead - 2_000);
        }
        let ahead = w.hlc_ahead_ms();
        if ahead > 0 {
            w.run_until(ahead + 100, |_| false);
        }
        // Every node writes at once: each write must reach everyone soon
        // (a node whose clock was fixed must rejoin, not stay locked out).
        w.start_probes();
        let live = w.run_until(PROBE_MS, World::probes_seen);
        if live {
            w.run_until(HEAL_MS, World::settled);
        }
        w.collect_counters();
        check::check(&w, live, &mut checked)
    }));
    let failures = match phases {
        Ok(f) => f,
        Err(p) => {
            let mut f = w.failures.clone();
            f.push(Failure::new("panic", panic_text(&*p)));
            f
        }
    };
    Outcome {
        seed,
        scenario: w.plan.scenario.name(),
        nodes: w.plan.nodes,
        failures,
        stats: w.stats.clone(),
        checked,
        trace_hash: w.trace.hash(),
        events: w.trace.events(),
        tail: w.trace.tail(),
        elapsed: start.elapsed(),
    }
}

/// Figures over many seeds.
#[derive(Default)]
pub struct Tally {
    pub seeds: u64,
    pub ops: u64,
    pub failed_ops: u64,
    pub unsure_ops: u64,
    pub faults: std::collections::BTreeMap<&'static str, u64>,
    pub scenarios: std::collections::BTreeMap<&'static str, u64>,
    pub packets: u64,
    pub checks: u64,
    pub undecided: u64,
    pub collected_tombstones: u64,
    pub sim_ms: u64,
    /// (seed, scenario, symptoms, first detail)
    pub failures: Vec<(u64, &'static str, Vec<&'static str>, String)>,
    pub cpu: Duration,
}

impl Tally {
    pub fn add(&mut self, o: &Outcome) {
        self.seeds += 1;
        self.ops += o.stats.ops.values().sum::<u64>();
        self.failed_ops += o.stats.failed_ops;
        self.unsure_ops += o.stats.unsure_ops;
        for (k, v) in &o.stats.faults {
            *self.faults.entry(k).or_default() += v;
        }
        *self.scenarios.entry(o.scenario).or_default() += 1;
        self.packets += o.stats.net.sent;
        self.checks += o.checked.values;
        self.undecided += o.checked.undecided;
        self.collected_tombstones += o.stats.collected_tombstones;
        self.sim_ms += o.stats.sim_ms;
        self.cpu += o.elapsed;
        if !o.ok() {
            let first = o
                .failures
                .first()
                .map(|f| f.detail.clone())
                .unwrap_or_default();
            self.failures
                .push((o.seed, o.scenario, o.symptoms(), first));
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.seeds += other.seeds;
        self.ops += other.ops;
        self.failed_ops += other.failed_ops;
        self.unsure_ops += other.unsure_ops;
        for (k, v) in other.faults {
            *self.faults.entry(k).or_default() += v;
        }
        for (k, v) in other.scenarios {
            *self.scenarios.entry(k).or_default() += v;
        }
        self.packets += other.packets;
        self.checks += other.checks;
        self.undecided += other.undecided;
        self.collected_tombstones += other.collected_tombstones;
        self.sim_ms += other.sim_ms;
        self.cpu += other.cpu;
        self.failures.extend(other.failures);
        self.failures.sort_by_key(|f| f.0);
    }

    /// Failing seeds by symptom class.
    pub fn by_symptom(&self) -> std::collections::BTreeMap<&'static str, Vec<u64>> {
        let mut m: std::collections::BTreeMap<&'static str, Vec<u64>> = Default::default();
        for (seed, _, symptoms, _) in &self.failures {
            for s in symptoms {
                m.entry(s).or_default().push(*seed);
            }
        }
        m
    }

    /// A plain-text summary.
    pub fn summary(&self, wall: Duration) -> String {
        let mut s = format!(
            "seeds {} in {:.1} s wall ({:.2} seeds/s; {:.1} s of one core per 100 seeds)\n\
             operations {} acknowledged, {} refused, {} possibly lost (unsure)\n\
             packets {}, simulated time {:.0} s, checks {} ({} undecided), tombstones collected {}\n\
             scenarios {:?}\nfaults {:?}\nfailures {}\n",
            self.seeds,
            wall.as_secs_f64(),
            self.seeds as f64 / wall.as_secs_f64().max(1e-9),
            self.cpu.as_secs_f64() * 100.0 / self.seeds.max(1) as f64,
            self.ops,
            self.failed_ops,
            self.unsure_ops,
            self.packets,
            self.sim_ms as f64 / 1000.0,
            self.checks,
            self.undecided,
            self.collected_tombstones,
            self.scenarios,
            self.faults,
            self.failures.len()
        );
        let mut by_scenario: std::collections::BTreeMap<&str, u64> = Default::default();
        for (_, scenario, _, _) in &self.failures {
            *by_scenario.entry(scenario).or_default() += 1;
        }
        let shown: Vec<String> = self
            .scenarios
            .iter()
            .map(|(sc, n)| format!("{sc} {}/{n}", by_scenario.get(sc).copied().unwrap_or(0)))
            .collect();
        s.push_str(&format!("  failing by scenario: {}\n", shown.join(", ")));
        for (symptom, seeds) in self.by_symptom() {
            let shown: Vec<String> = seeds.iter().take(12).map(u64::to_string).collect();
            s.push_str(&format!(
                "  {symptom}: {} seeds ({}{})\n",
                seeds.len(),
                shown.join(" "),
                if seeds.len() > 12 { " ..." } else { "" }
            ));
        }
        s
    }
}

/// Run `seeds` on `threads` worker threads (each takes the next seed),
/// calling `each` with every outcome.
pub fn run_many(seeds: &[u64], threads: usize, each: &(dyn Fn(&Outcome) + Sync)) -> Tally {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut t = Tally::default();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&seed) = seeds.get(i) else { break };
                        let o = run(seed, false);
                        each(&o);
                        t.add(&o);
                    }
                    t
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let mut all = Tally::default();
    for t in tallies {
        all.merge(t);
    }
    all
}
