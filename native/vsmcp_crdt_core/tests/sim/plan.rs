//! What a seed runs: the scenario, the cluster and the fault rates, all
//! drawn from the seed before the run starts.
//!
//! Four scenarios, by seed: `Random` (every fault at a moderate rate), and
//! three with a targeted schedule on top of lighter random faults, each
//! built to reach one collection hazard with random timings:
//!
//! * `LostDelete`: a node holding a create (and a set element it re-adds)
//!   is cut off while another deletes it, then the others' engines restart
//!   (a rolling deploy) or the deleter is killed and restarted;
//! * `RemoveVsCutAdd`: a remove-wins element is removed on one side while a
//!   cut-off node adds it, then only the remover's engine restarts (or the
//!   cut is partial);
//! * `ClockRefused`: one node's clock runs far ahead (everyone refuses it)
//!   or far behind (it refuses everyone) for a while, then is fixed.

use crate::common::Rng;
use vsmcp_crdt_core::store::Durability;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Random,
    LostDelete,
    RemoveVsCutAdd,
    ClockRefused,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Random => "random",
            Scenario::LostDelete => "lost-delete",
            Scenario::RemoveVsCutAdd => "remove-vs-cut-add",
            Scenario::ClockRefused => "clock-refused",
        }
    }
}

/// Per-step chances of each random fault, in 1/10,000.
#[derive(Debug, Clone)]
pub struct Rates {
    pub partition: u64,
    pub clock: u64,
    pub engine_restart: u64,
    pub store_restart: u64,
    pub crash: u64,
    pub fail_writes: u64,
    pub backup: u64,
    pub restore: u64,
    pub flush: u64,
    pub decay: u64,
    /// A caller's `sync` (an anti-entropy round).
    pub round: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub nodes: usize,
    pub durability: Vec<Durability>,
    /// Length of the fault phase (ms of simulated time).
    pub fault_ms: u64,
    /// Chance per node and step of an operation, percent.
    pub op_pct: u64,
    /// Chance that an operation on a present id deletes it, percent.
    pub delete_pct: u64,
    pub drop_pct: u64,
    pub dup_pct: u64,
    pub slow_pct: u64,
    pub max_delay_ms: u64,
    /// Small tiers push items to warm and to disk.
    pub tiny_tiers: bool,
    pub max_log_bytes: usize,
    pub rates: Rates,
}

impl Plan {
    pub fn of_seed(seed: u64) -> Plan {
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_5EED);
        let scenario = match seed % 8 {
            0 | 4 => Scenario::Random,
            1 | 5 => Scenario::LostDelete,
            2 | 6 => Scenario::RemoveVsCutAdd,
            _ => Scenario::ClockRefused,
        };
        let nodes = 3 + rng.below(3) as usize;
        let durability = match rng.below(3) {
            0 => vec![Durability::Strict; nodes],
            1 => vec![Durability::Relaxed; nodes],
            _ => (0..nodes)
                .map(|_| {
                    if rng.chance(50) {
                        Durability::Strict
                    } else {
                        Durability::Relaxed
                    }
                })
                .collect(),
        };
        let light = scenario != Scenario::Random;
        // Targeted scenarios keep random faults light, so that the schedule
        // is what decides the run.
        let r = |rng: &mut Rng, base: u64| {
            let x = base / 2 + rng.below(base + 1);
            if light {
                x / 3
            } else {
                x
            }
        };
        let rates = Rates {
            partition: r(&mut rng, 40),
            clock: r(&mut rng, 25),
            engine_restart: r(&mut rng, 30),
            store_restart: r(&mut rng, 15),
            crash: r(&mut rng, 15),
            fail_writes: r(&mut rng, 15),
            backup: r(&mut rng, 8),
            restore: r(&mut rng, 6),
            flush: 100 + rng.below(400),
            decay: 20 + rng.below(100),
            round: rng.below(60),
        };
        Plan {
            scenario,
            nodes,
            durability,
            // Targeted schedules end by about 10 s.
            fault_ms: if light { 11_000 } else { 8_000 } + rng.below(8_000),
            op_pct: 4 + rng.below(8),
            delete_pct: 3 + rng.below(10),
            drop_pct: rng.below(12),
            dup_pct: rng.below(8),
            slow_pct: rng.below(15),
            max_delay_ms: 20 + rng.below(300),
            tiny_tiers: rng.chance(30),
            max_log_bytes: if rng.chance(25) { 2 << 10 } else { 1 << 20 },
            rates,
        }
    }
}
