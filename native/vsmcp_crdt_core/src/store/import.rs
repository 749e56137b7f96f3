//! Import of the replaced application's data (its DETS cold tier) into a
//! store, keeping what each kind of CRDT means across a cluster.
//!
//! Reading the DETS file is Elixir's job (only the BEAM reads DETS); it
//! hands over each old entry as a [`LegacyEntry`] whose terms are already
//! in canonical bytes (`crate::term`). Here each entry becomes a state:
//!
//! * **Counters** keep each node's contribution under the *old* node id
//!   (its canonical term bytes as the [`ReplicaId`]), so two nodes that
//!   import their own files and then sync hold the per-node maximum: the
//!   G-Counter join, exactly as if the old nodes had exchanged states.
//!   New increments go to the importing store's own replica id, which never
//!   equals an encoded term (see `store::directory_id`).
//! * **Sets** hold the elements that had at least one tag not tombstoned,
//!   added by the importing replica: after sync, an element live in any
//!   node's file is in the set (the old tags are not kept: their
//!   `System.monotonic_time` counters are neither dense nor comparable
//!   across nodes).
//! * **Registers** keep their value at [`Timestamp::ZERO`] by the importing
//!   replica: below every write made after the import on any node (the old
//!   timestamps were `System.monotonic_time`, meaningless across VMs); two
//!   nodes that imported different values agree on the one of the larger
//!   replica id.
//!
//! Every imported record has the generation [`import_gen`], the same on
//! every node, so records of one id imported on several nodes *join*
//! instead of one replacing the others (records of different creates do not
//! join: see `record`). It is the earliest generation of epoch 0 after the
//! pre-generation [`Gen::legacy`], so it also wins over a create of the id
//! made concurrently on a node that did not import it. Being constant, it
//! marks imported ids: [`is_imported`] (and `migrated_from` in the
//! metadata) needs no per-id state, and an id deleted and created again
//! has a new generation and is no longer "imported".
//!
//! Entries go through [`Store::merge_remote`], the write path of peers'
//! entries (persisted with the store's durability, joined by generation),
//! and are recorded for sync when capture is on. A store importing before
//! its sync engine starts ships them by anti-entropy: the engine's first
//! digest covers every stored id.

use super::handle::Store;
use super::replication::{note_out, Merged};
use crate::causal::ReplicaId;
use crate::crdt::{Crdt, Kind};
use crate::error::Result;
use crate::gcounter::GCounter;
use crate::hlc::{now_ms, Timestamp};
use crate::lww::{LwwEntry, LwwRegister};
use crate::orset::{ORSet, Policy};
use crate::pncounter::PNCounter;
use crate::record::{Gen, Meta};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The replica of [`import_gen`]: not a possible store replica id (those
/// are 24 bytes: a directory's 16 random bytes and an incarnation).
pub const IMPORT_REPLICA: &[u8] = b"vsmcp_crdt/import";

pub use super::keys::MIGRATED_FROM_KEY;

/// The generation of every imported record (see the module docs).
pub fn import_gen() -> Gen {
    Gen {
        epoch: 0,
        stamp: 0,
        replica: Arc::from(IMPORT_REPLICA),
    }
}

/// Whether a record descends from an import (its generation is
/// [`import_gen`]: imported on this node or on a peer, and not deleted and
/// created again since).
pub fn is_imported(meta: &Meta) -> bool {
    meta.gen.epoch == 0 && meta.gen.stamp == 0 && &*meta.gen.replica == IMPORT_REPLICA
}

/// `(canonical node id bytes, count)` of one old node.
pub type NodeCount = (Vec<u8>, u64);

/// The state of one entry of the replaced application, in core terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyState {
    /// Per old node: its count.
    GCounter(Vec<NodeCount>),
    /// Per old node: its increments and its decrements.
    PNCounter {
        positive: Vec<NodeCount>,
        negative: Vec<NodeCount>,
    },
    /// The elements with a tag not tombstoned (canonical bytes).
    ORSet(Vec<Vec<u8>>),
    /// The value (canonical bytes); `None`: never set.
    LwwRegister(Option<Vec<u8>>),
}

impl LegacyState {
    pub fn kind(&self) -> Kind {
        match self {
            LegacyState::GCounter(_) => Kind::GCounter,
            LegacyState::PNCounter { .. } => Kind::PNCounter,
            LegacyState::ORSet(_) => Kind::ORSet,
            LegacyState::LwwRegister(_) => Kind::LwwRegister,
        }
    }

    /// The state this entry imports as, made by `replica` (the importing
    /// store's replica id; see the module docs).
    pub fn to_crdt(&self, replica: &ReplicaId) -> Result<Crdt> {
        fn counts(c: &[NodeCount]) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
            c.iter().map(|(node, n)| (ReplicaId::new(node), *n))
        }
        Ok(match self {
            LegacyState::GCounter(c) => Crdt::GCounter(GCounter::from_counts(counts(c))),
            LegacyState::PNCounter { positive, negative } => {
                Crdt::PNCounter(PNCounter::from_counts(counts(positive), counts(negative)))
            }
            LegacyState::ORSet(elements) => {
                let mut set = ORSet::new(Policy::RemoveWins);
                for e in elements {
                    set.add(replica, e)?;
                }
                Crdt::ORSet(Box::new(set))
            }
            LegacyState::LwwRegister(value) => {
                Crdt::LwwRegister(LwwRegister::from_entry(value.as_ref().map(|v| LwwEntry {
                    ts: Timestamp::ZERO,
                    replica: replica.clone(),
                    value: v.as_slice().into(),
                })))
            }
        })
    }

    /// The largest element or value (checked against `max_value_bytes`).
    fn largest_payload(&self) -> usize {
        match self {
            LegacyState::ORSet(e) => e.iter().map(Vec::len).max().unwrap_or(0),
            LegacyState::LwwRegister(v) => v.as_ref().map_or(0, Vec::len),
            _ => 0,
        }
    }
}

/// One entry of the replaced application: id (canonical bytes), state and,
/// when the old data had it, the creation time in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEntry {
    pub id: Vec<u8>,
    pub state: LegacyState,
    pub created_at_ms: Option<u64>,
}

impl Store {
    /// Import `entries` (a batch; see the module docs). Each is persisted
    /// with the store's durability; metadata: `created_by` this store's
    /// node id, `created_at` the entry's or now, generation
    /// [`import_gen`]. May block (disk): dirty schedulers only. Returns the
    /// number of entries that changed the store (an id imported twice, or
    /// a record of a later generation already here, changes nothing). On
    /// an error, the entries before it are imported.
    pub fn import_legacy(&self, entries: &[LegacyEntry]) -> Result<usize> {
        let inner = &self.0;
        let now = now_ms();
        let mut changed = 0;
        for e in entries {
            inner.check_size(e.id.len())?;
            inner.check_size(e.state.largest_payload())?;
            let crdt = e.state.to_crdt(&inner.replica)?;
            let meta = Meta {
                kind: e.state.kind(),
                created_by: inner.node_id.clone(),
                created_at: e.created_at_ms.unwrap_or(now),
                updated_at: now,
                gen: import_gen(),
                deleted: false,
            };
            let merged = self.merge_remote(&e.id, &meta, &crdt)?;
            let kept = matches!(
                merged,
                Merged::Created | Merged::Joined | Merged::Replaced { .. }
            );
            if kept {
                changed += 1;
                // A local change: peers learn it like any other.
                if inner.capture.load(Ordering::Relaxed) {
                    let mut sh = inner.lock_state_unchecked(&e.id);
                    note_out(&mut sh.out, &e.id, &meta, &crdt);
                }
            }
        }
        Ok(changed)
    }

    /// Mark the import done: write every pending import to RocksDB, record
    /// `source` (e.g. the DETS path) under [`MIGRATED_FROM_KEY`] (fsynced),
    /// and write the memtables to SST files, so that the import survives a
    /// crash before the caller replaces its source.
    pub fn finish_import(&self, source: &[u8]) -> Result<()> {
        let inner = &self.0;
        inner.flush()?;
        inner.cold.put_meta(MIGRATED_FROM_KEY, source, true)?;
        inner.cold.flush_memtables()?;
        *inner.migrated_from.lock() = Some(Arc::from(source));
        Ok(())
    }

    /// The source this store imported (see [`Store::finish_import`]), if
    /// it did.
    pub fn migrated_from(&self) -> Option<Arc<[u8]>> {
        self.0.migrated_from.lock().clone()
    }
}

/// Read the recorded import source of a store being opened.
pub(super) fn load_migrated_from(cold: &super::cold::ColdTier) -> Result<Option<Arc<[u8]>>> {
    Ok(cold.get_meta(MIGRATED_FROM_KEY)?.map(Arc::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::Value;

    #[test]
    fn counters_keep_old_node_entries_and_join_by_node() {
        let me = ReplicaId::new(b"importer");
        let a = LegacyState::GCounter(vec![(b"n1".to_vec(), 5), (b"n2".to_vec(), 3)]);
        let b = LegacyState::GCounter(vec![(b"n1".to_vec(), 4), (b"n2".to_vec(), 7)]);
        let mut x = a.to_crdt(&me).unwrap();
        x.join(&b.to_crdt(&ReplicaId::new(b"other")).unwrap())
            .unwrap();
        assert_eq!(x.value(), Value::Counter(12));
        let pn = LegacyState::PNCounter {
            positive: vec![(b"n1".to_vec(), 10)],
            negative: vec![(b"n1".to_vec(), 4), (b"n2".to_vec(), 0)],
        };
        assert_eq!(pn.to_crdt(&me).unwrap().value(), Value::Counter(6));
    }

    #[test]
    fn registers_sort_below_any_later_write() {
        let me = ReplicaId::new(b"importer");
        let mut r = LegacyState::LwwRegister(Some(b"old".to_vec()))
            .to_crdt(&me)
            .unwrap();
        let later = LwwRegister::from_entry(Some(LwwEntry {
            ts: Timestamp::new(1, 0),
            replica: ReplicaId::new(b"\0"),
            value: b"new".as_slice().into(),
        }));
        r.join(&Crdt::LwwRegister(later)).unwrap();
        assert_eq!(r.value(), Value::Register(Some(&b"new"[..])));
        let empty = LegacyState::LwwRegister(None).to_crdt(&me).unwrap();
        assert_eq!(empty.value(), Value::Register(None));
    }

    #[test]
    fn import_gen_is_recognised() {
        let meta = Meta {
            kind: Kind::GCounter,
            created_by: Arc::from(&b""[..]),
            created_at: 0,
            updated_at: 0,
            gen: import_gen(),
            deleted: false,
        };
        assert!(is_imported(&meta));
        assert!(!is_imported(&Meta {
            gen: Gen::legacy(),
            ..meta.clone()
        }));
        // It wins over any create of epoch 0 (stamp > 0) and loses to the
        // next epoch.
        let create = Gen {
            epoch: 0,
            stamp: 1,
            replica: Arc::from(&b"r"[..]),
        };
        assert!(import_gen().precedence(&create).is_gt());
        let recreate = Gen { epoch: 1, ..create };
        assert!(import_gen().precedence(&recreate).is_lt());
    }
}
