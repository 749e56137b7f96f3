//! The history of acknowledged operations, as the checker needs it.
//!
//! Every operation is recorded with the generation it applied to (read
//! from the store right before it: the simulator is single-threaded), so
//! the checker never has to model generations: an operation counts iff its
//! generation is the one that survives. A set operation also records its
//! own dot (read back from the state) and which earlier operations on the
//! element it observed (their dots were in its replica's causal context
//! just before it): that is the causal order the OR-Set semantics need.
//!
//! An operation is *sure* unless it may have been lost: a relaxed write
//! not yet flushed when its store crashed, or a write made after the
//! backup of a replica that was then replaced by that backup.

use std::collections::BTreeMap;
use vsmcp_crdt_core::store::record::{Gen, Tomb};
use vsmcp_crdt_core::{Kind, ReplicaId, Timestamp};

/// A generation as an ordered, owned key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GenKey {
    pub epoch: u32,
    pub stamp: u64,
    pub replica: Vec<u8>,
}

impl GenKey {
    pub fn of(g: &Gen) -> GenKey {
        GenKey {
            epoch: g.epoch,
            stamp: g.stamp,
            replica: g.replica.to_vec(),
        }
    }

    pub fn gen(&self) -> Gen {
        Gen {
            epoch: self.epoch,
            stamp: self.stamp,
            replica: std::sync::Arc::from(self.replica.as_slice()),
        }
    }

    /// Whether `self` wins over `other` (see `Gen::precedence`).
    pub fn beats(&self, other: &GenKey) -> bool {
        self.gen().precedence(&other.gen()).is_gt()
    }
}

impl std::fmt::Display for GenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.replica;
        // Directory bytes 0..2 and the incarnation's last byte.
        let short = match r.len() {
            24 => format!("{:02x}{:02x}.{}", r[0], r[1], r[23]),
            _ => format!("{r:02x?}"),
        };
        write!(
            f,
            "e{}@{}.{}/{}",
            self.epoch,
            Timestamp::wall_of_u64(self.stamp) % 1_000_000,
            self.stamp & 0xF_FFFF,
            short
        )
    }
}

/// A dot: replica and counter.
pub type Dot = (ReplicaId, u64);

#[derive(Debug, Clone)]
pub enum What {
    Create {
        kind: Kind,
    },
    /// The delete's tombstone stamp (`None`: not found, e.g. collapsed).
    Delete {
        at: Option<u64>,
    },
    /// Signed amount of a counter operation.
    Count(i128),
    SetOp {
        elem: u8,
        add: bool,
        /// The dot it wrote (an add-wins remove writes none).
        dot: Option<Dot>,
        /// Indexes (in `History::ops`) of the operations on the element
        /// it observed.
        observed: Vec<usize>,
    },
    /// The register entry it wrote, if it won locally: (timestamp,
    /// replica, value).
    Reg {
        entry: Option<(Timestamp, Vec<u8>, Vec<u8>)>,
    },
}

#[derive(Debug, Clone)]
pub struct Op {
    pub node: usize,
    pub t: u64,
    /// Index of the id in the world's id list.
    pub id: usize,
    pub gen: GenKey,
    pub what: What,
    pub sure: bool,
}

impl Op {
    /// The tombstone of a delete, if known.
    pub fn tomb(&self) -> Option<Tomb> {
        match self.what {
            What::Delete { at: Some(at) } => Some(Tomb::new(self.gen.gen(), at)),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct History {
    pub ops: Vec<Op>,
    /// Set operations by (id, generation, element), in order.
    by_elem: BTreeMap<(usize, GenKey, u8), Vec<usize>>,
}

impl History {
    /// Record an operation; returns its index.
    pub fn push(&mut self, op: Op) -> usize {
        let i = self.ops.len();
        if let What::SetOp { elem, .. } = op.what {
            self.by_elem
                .entry((op.id, op.gen.clone(), elem))
                .or_default()
                .push(i);
        }
        self.ops.push(op);
        i
    }

    /// The earlier set operations on `elem` of `(id, gen)` with a dot.
    pub fn set_ops(&self, id: usize, gen: &GenKey, elem: u8) -> &[usize] {
        self.by_elem
            .get(&(id, gen.clone(), elem))
            .map_or(&[], Vec::as_slice)
    }

    pub fn mark_unsure(&mut self, i: usize) {
        self.ops[i].sure = false;
    }
}
