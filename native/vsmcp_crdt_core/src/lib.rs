//! vsmcp_crdt_core: the product behind `Vsmcp.CRDT`.
//!
//! Delta-state CRDTs (G-Counter, PN-Counter, remove-wins and add-wins
//! OR-Set, LWW-Register), a hybrid logical clock, the canonical encoding of
//! Erlang terms, the versioned wire format, and the tiered store whose cold
//! tier is RocksDB. No rustler here: `cargo test -p vsmcp_crdt_core` runs it
//! alone. The NIF crate only converts terms and delegates.

pub mod causal;
pub mod crdt;
pub mod error;
pub mod gcounter;
pub mod hash;
pub mod hlc;
pub mod lww;
pub mod orset;
pub mod pncounter;
pub mod record;
pub mod stable_hash;
pub mod term;

pub use causal::ReplicaId;
pub use crdt::{Crdt, Kind, Mutation, Op, Value};
pub use error::{Error, Result};
pub use hlc::{Clock, Timestamp};
pub mod store;
pub mod sync;
