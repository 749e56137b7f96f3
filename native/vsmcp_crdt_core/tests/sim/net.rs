//! The simulated network: every message is a packet with a delivery time.
//! A packet is lost on a cut link (checked when it is sent and again when
//! it arrives: a link that breaks loses what is on it), dropped or
//! duplicated at random, and delayed by 1-3 ms or, when "slow", by up to
//! `max_delay_ms` (so packets overtake each other). Packets due at one
//! time are delivered in the order they were sent.

use crate::common::Rng;
use std::collections::BTreeMap;

pub struct Packet {
    pub at: u64,
    pub from: usize,
    pub to: usize,
    pub bytes: Vec<u8>,
}

#[derive(Default, Debug, Clone)]
pub struct NetStats {
    pub sent: u64,
    pub cut: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub slowed: u64,
    pub delivered: u64,
}

pub struct Net {
    /// In flight, by (delivery time, send order).
    flight: BTreeMap<(u64, u64), Packet>,
    seq: u64,
    /// `blocked[from][to]`: the link loses everything.
    pub blocked: Vec<Vec<bool>>,
    pub drop_pct: u64,
    pub dup_pct: u64,
    pub slow_pct: u64,
    pub max_delay_ms: u64,
    pub stats: NetStats,
}

impl Net {
    pub fn new(n: usize) -> Net {
        Net {
            flight: BTreeMap::new(),
            seq: 0,
            blocked: vec![vec![false; n]; n],
            drop_pct: 0,
            dup_pct: 0,
            slow_pct: 0,
            max_delay_ms: 0,
            stats: NetStats::default(),
        }
    }

    /// Room for one more node (its links start open).
    pub fn add_node(&mut self) {
        for row in &mut self.blocked {
            row.push(false);
        }
        let n = self.blocked.len() + 1;
        self.blocked.push(vec![false; n]);
    }

    /// No loss, no duplicates, no long delays, no cut links.
    pub fn make_reliable(&mut self) {
        self.drop_pct = 0;
        self.dup_pct = 0;
        self.slow_pct = 0;
        for row in &mut self.blocked {
            row.iter_mut().for_each(|b| *b = false);
        }
    }

    /// Cut (or restore) every link to and from `node`.
    pub fn isolate(&mut self, node: usize, cut: bool) {
        let n = self.blocked.len();
        for other in 0..n {
            if other != node {
                self.blocked[node][other] = cut;
                self.blocked[other][node] = cut;
            }
        }
    }

    pub fn is_isolated(&self, node: usize) -> bool {
        let n = self.blocked.len();
        (0..n).filter(|o| *o != node).all(|o| self.blocked[node][o])
    }

    /// Hand a packet to the network at time `at`.
    pub fn send(&mut self, rng: &mut Rng, at: u64, from: usize, to: usize, mut bytes: Vec<u8>) {
        self.stats.sent += 1;
        if self.blocked[from][to] {
            self.stats.cut += 1;
            return;
        }
        if rng.chance(self.drop_pct) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if rng.chance(self.dup_pct) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for c in 0..copies {
            let mut delay = 1 + rng.below(3);
            if self.max_delay_ms > 0 && rng.chance(self.slow_pct) {
                self.stats.slowed += 1;
                delay += rng.below(self.max_delay_ms);
            }
            self.seq += 1;
            let bytes = if c + 1 == copies {
                std::mem::take(&mut bytes)
            } else {
                bytes.clone()
            };
            self.flight.insert(
                (at + delay, self.seq),
                Packet {
                    at: at + delay,
                    from,
                    to,
                    bytes,
                },
            );
        }
    }

    /// The next packet due at or before `until` that its link lets through
    /// (the others are lost on the way).
    pub fn next_due(&mut self, until: u64) -> Option<Packet> {
        loop {
            let (&key, _) = self.flight.first_key_value()?;
            if key.0 > until {
                return None;
            }
            let p = self.flight.remove(&key).expect("present");
            if self.blocked[p.from][p.to] {
                self.stats.cut += 1;
                continue;
            }
            self.stats.delivered += 1;
            return Some(p);
        }
    }

    /// Forget every packet to or from `node` (its process is gone).
    pub fn purge(&mut self, node: usize) {
        self.flight.retain(|_, p| p.from != node && p.to != node);
    }

    pub fn in_flight(&self) -> usize {
        self.flight.len()
    }
}
