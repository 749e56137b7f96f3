//! One simulated node: a store directory, the store and sync engine
//! running on it (or not, while its process is down), its wall clock, and
//! what the checker tracks per node.
//!
//! Physical time is simulated: the store reads a manual [`WallClock`]
//! that the world sets to `BASE_MS + t + skew` before every call into the
//! node, and the engine is passed `t` (the monotonic time of the caller).
//! The store's flush thread never runs on its own (a flush interval of an
//! hour): flushes happen in hellos and where the world chooses.

use super::history::GenKey;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vsmcp_crdt_core::hlc::WallClock;
use vsmcp_crdt_core::store::{Store, StoreConfig};
use vsmcp_crdt_core::sync::{Engine, EngineConfig};

/// Simulated time 0 on the wall clocks (2025-01-01).
pub const BASE_MS: u64 = 1_735_689_600_000;

/// A store and its engine (`None` between an engine's stop and the next
/// start: local changes are then not captured).
pub struct Running {
    pub store: Store,
    pub engine: Option<Engine>,
    pub capture: u64,
}

pub enum Life {
    Up(Box<Running>),
    /// The process is down; it starts again at `back_at`.
    Down {
        back_at: u64,
    },
    /// Gone for good (replaced by a restored backup).
    Retired,
}

pub struct Node {
    pub name: String,
    pub cfg: StoreConfig,
    pub ecfg: EngineConfig,
    pub wall: Arc<AtomicU64>,
    /// Offset of this node's wall clock from simulated time (ms).
    pub skew: i64,
    pub life: Life,
    /// When a stopped engine starts again (engine restart in progress).
    pub engine_back_at: Option<u64>,
    /// Seed of the engine sessions; `engines` counts them.
    pub session_seed: u64,
    pub engines: u64,
    pub fail_writes: bool,
    /// Relaxed writes acknowledged here and not yet known to be flushed
    /// (indexes into the history).
    pub unflushed: Vec<usize>,
    /// Per id: the generation last seen live here.
    pub seen: Vec<Option<GenKey>>,
    /// Generations that left this node while it held a tombstone killing
    /// them: they must never be live here again.
    pub killed_here: BTreeSet<(usize, GenKey)>,
    /// Those of `killed_here` whose tombstone may not be flushed yet (a
    /// crash may legitimately undo them).
    pub killed_unflushed: Vec<(usize, GenKey)>,
    /// Times the store was opened (incarnations).
    pub opens: u64,
    /// The directory id (first bytes of the replica id), once opened.
    pub dir_id: Option<Vec<u8>>,
    /// The current engine's collection counters last seen (elements,
    /// tombstones).
    pub collected: (u64, u64),
    /// Directories of replicas lost for good that the current engine has
    /// not forgotten yet (a `forget` that failed on a storage error is
    /// retried every step, as an operator retries `forget_replica`).
    pub to_forget: Vec<Vec<u8>>,
}

impl Node {
    pub fn new(
        name: String,
        cfg: StoreConfig,
        ecfg: EngineConfig,
        session_seed: u64,
        ids: usize,
    ) -> Node {
        let wall = Arc::new(AtomicU64::new(BASE_MS));
        let mut cfg = cfg;
        cfg.wall_clock = WallClock::Manual(wall.clone());
        Node {
            name,
            cfg,
            ecfg,
            wall,
            skew: 0,
            life: Life::Down { back_at: 0 },
            engine_back_at: None,
            session_seed,
            engines: 0,
            fail_writes: false,
            unflushed: Vec::new(),
            seen: vec![None; ids],
            killed_here: BTreeSet::new(),
            killed_unflushed: Vec::new(),
            opens: 0,
            dir_id: None,
            collected: (0, 0),
            to_forget: Vec::new(),
        }
    }

    /// Set the wall clock for simulated time `t`.
    pub fn set_wall(&self, t: u64) {
        let wall = (BASE_MS + t).saturating_add_signed(self.skew);
        self.wall.store(wall, Ordering::Release);
    }

    pub fn running(&self) -> Option<&Running> {
        match &self.life {
            Life::Up(r) => Some(r),
            _ => None,
        }
    }

    pub fn running_mut(&mut self) -> Option<&mut Running> {
        match &mut self.life {
            Life::Up(r) => Some(r),
            _ => None,
        }
    }

    pub fn store(&self) -> Option<Store> {
        self.running().map(|r| r.store.clone())
    }

    pub fn is_up(&self) -> bool {
        matches!(self.life, Life::Up(_))
    }

    pub fn is_retired(&self) -> bool {
        matches!(self.life, Life::Retired)
    }

    /// A new engine (with the next seeded session) on `store`, capturing
    /// its changes from now on (as the NIF's `sync_start` does). The
    /// directories in `forget` (replicas lost for good) are forgotten, as
    /// an operator's `forget_replica` on every node would (those that fail
    /// stay in [`Node::to_forget`], retried by the world every step).
    pub fn start_engine(&mut self, forget: &[Vec<u8>]) {
        self.engines += 1;
        let mut ecfg = self.ecfg.clone();
        ecfg.session = Some(
            self.session_seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.engines),
        );
        if let Some(r) = self.running_mut() {
            r.capture = r.store.start_capture();
            r.engine = Some(Engine::new(&r.store, ecfg));
        }
        self.engine_back_at = None;
        self.collected = (0, 0);
        self.to_forget = forget.to_vec();
        self.forget_pending();
    }

    /// Forget what [`Node::to_forget`] holds with the running engine (if
    /// any); what fails stays for a later call. Returns the errors.
    pub fn forget_pending(&mut self) -> Vec<String> {
        let mut pending = std::mem::take(&mut self.to_forget);
        let mut errors = Vec::new();
        if let Some(Running {
            store,
            engine: Some(engine),
            ..
        }) = self.running_mut()
        {
            let mut events = Vec::new();
            pending.retain(|dir| match engine.forget(store, dir, &mut events) {
                Ok(()) => false,
                Err(e) => {
                    // The reason only: the message names the random store path,
                    // and a trace must replay exactly.
                    errors.push(e.reason().to_string());
                    true
                }
            });
        }
        self.to_forget = pending;
        errors
    }

    /// Stop the engine (as the NIF's `sync_stop`: capture stops, what it
    /// recorded is dropped); it starts again at `back_at`.
    pub fn stop_engine(&mut self, back_at: u64) {
        if let Some(r) = self.running_mut() {
            r.store.stop_capture(r.capture);
            r.engine = None;
        }
        self.engine_back_at = Some(back_at);
    }

    /// Open the store (a new incarnation) and start its engine (see
    /// [`Node::start_engine`] for `forget`).
    pub fn open(&mut self, t: u64, forget: &[Vec<u8>]) -> Result<(), String> {
        self.set_wall(t);
        let store =
            Store::open(self.cfg.clone()).map_err(|e| format!("{}: open: {e}", self.name))?;
        self.opens += 1;
        self.life = Life::Up(Box::new(Running {
            store,
            engine: None,
            capture: 0,
        }));
        self.fail_writes = false;
        self.start_engine(forget);
        Ok(())
    }

    pub fn dir(&self) -> PathBuf {
        self.cfg.path.clone()
    }
}
