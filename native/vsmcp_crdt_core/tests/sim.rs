//! The deterministic simulator of whole replicas (see `sim/mod.rs`): runs
//! a fixed list of seeds on two threads, about two minutes on the CI
//! machine, and fails with each failing seed's report (its symptoms, the
//! command that reruns it and its last events).
//!
//! * `SIM_SEED=<n>`: run only seed `n`, printing every event.
//! * `SIM_SEEDS=<count>` (and `SIM_START=<first>`): run that many seeds.
//!
//! A long campaign: `cargo run --release -p vsmcp_crdt_core --example
//! sim_campaign -- --seeds 100000 --out bench/RESULTS-sim.md`.

mod common;
#[path = "sim/mod.rs"]
mod sim;

use std::time::Instant;

/// Seeds the CI run covers (about two minutes on two cores).
const CI_SEEDS: u64 = 800;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn seeds_converge_without_losing_or_resurrecting_data() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let o = sim::run(seed, true);
        println!(
            "seed {seed}: {} events, trace {:016x}, {:?} ops, faults {:?}, {:.2} s",
            o.events,
            o.trace_hash,
            o.stats.ops,
            o.stats.faults,
            o.elapsed.as_secs_f64()
        );
        assert!(o.ok(), "{}", o.report());
        return;
    }
    let start = env_u64("SIM_START").unwrap_or(1);
    let count = env_u64("SIM_SEEDS").unwrap_or(CI_SEEDS);
    let seeds: Vec<u64> = (start..start + count).collect();
    let t = Instant::now();
    let reports = std::sync::Mutex::new(Vec::new());
    let tally = sim::run_many(&seeds, 2, &|o| {
        if !o.ok() {
            reports.lock().unwrap().push((o.seed, o.report()));
        }
    });
    println!("{}", tally.summary(t.elapsed()));
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|r| r.0);
    for (_, r) in reports.iter().take(5) {
        println!("{r}");
    }
    assert!(
        tally.failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        tally.failures.len(),
        tally.seeds,
        tally
            .failures
            .iter()
            .map(|(s, sc, sy, d)| format!("  seed {s} ({sc}): {} -- {d}", sy.join(",")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Two runs of one seed give the same trace (every event and every
/// packet's bytes), hence the same result.
#[test]
fn a_seed_replays_exactly() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => vec![2, 3, 4, 7],
    };
    for seed in seeds {
        let a = sim::run(seed, false);
        let b = sim::run(seed, false);
        assert!(a.events > 1000, "seed {seed}: only {} events", a.events);
        assert_eq!(
            (a.trace_hash, a.events),
            (b.trace_hash, b.events),
            "seed {seed} did not replay:\nfirst run tail:\n{}\nsecond run tail:\n{}",
            a.tail.join("\n"),
            b.tail.join("\n")
        );
        assert_eq!(a.symptoms(), b.symptoms());
    }
}
