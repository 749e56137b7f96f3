//! The pure core of distributed sync: delta-interval shipping with
//! acknowledgements plus digest-based anti-entropy. No I/O and no clocks:
//! the caller moves the bytes and decides when to send.
//!
//! Following Almeida, Shoker and Baquero, "Delta State Replicated Data
//! Types" (J. Parallel Distrib. Comput., 2018), Algorithm 2:
//!
//! * each replica records its *local* deltas in a [`DeltaLog`] under
//!   increasing sequence numbers, and remembers per peer the highest
//!   sequence number the peer acknowledged;
//! * it sends each peer the delta-interval after that acknowledgement
//!   ([`Message::Deltas`]); the peer joins every delta (join is idempotent,
//!   commutative and associative, so duplicates and reordering are
//!   harmless) and answers [`Message::Ack`] with the interval's end;
//! * the log is bounded: entries every peer acknowledged are dropped, and
//!   the oldest are dropped when over the byte bound. A peer that missed
//!   dropped deltas ([`NextBatch::NeedsAntiEntropy`]) catches up by state
//!   transfer.
//!
//! Anti-entropy compares [`Digest`]s: each replica keeps bucket sums of
//! stable hashes of each record (id, generation, kind, state in digest
//! form), updated incrementally.
//! `A` sends its digest ([`Message::DigestRequest`]) to `B`; `B` asks for
//! the buckets that differ ([`Message::StateRequest`]); `A` answers with its
//! states of those buckets ([`Message::States`]); `B` joins them. Repeated
//! in both directions this converges whatever was lost, and it is what a
//! replica returning after a long absence goes through.
//!
//! The protocol as a whole (membership, frontiers and stability,
//! collection, clock skew, the trust model) is described once, for users,
//! in `guides/distributed-sync.md`; the module docs of [`engine`] and
//! [`wire`] give the details the code relies on.
//!
//! Invariants the caller relies on:
//!
//! * only local deltas are recorded, so nothing is echoed back;
//! * every message decodes through [`Message::decode`], which validates
//!   everything and never panics; no message of more than one entry exceeds
//!   [`MAX_MESSAGE_BYTES`];
//! * equal states have equal digests ([`canonical_state_bytes`]).

pub mod auth;
pub mod canonical;
pub mod digest;
pub mod engine;
pub mod log;
pub mod wire;

pub use auth::{AuthError, Keyring};
pub use canonical::canonical_state_bytes;
pub use digest::{bucket_of, Digest, BUCKETS};
pub use engine::{
    directory_of, Counters, Engine, EngineConfig, Event, ForgettingInfo, MemberInfo, Outbound,
    PeerInfo, PeerStats, Reject, REPORT_FANOUT,
};
pub use log::{Batch, DeltaLog, NextBatch, PeerAck};
pub use wire::{
    batch_budget, negotiate, states_messages, Entry, Envelope, Message, MAX_MESSAGE_BYTES,
    MIN_WIRE_VERSION, WIRE_MAGIC, WIRE_VERSION,
};
