//! Versioned sync protocol messages and their codec.
//!
//! ```text
//! byte 0   WIRE_MAGIC  0xC9
//! byte 1   wire version (1 to 4)
//! byte 2   message tag (see [`Tag`])
//! rest     MessagePack body (rmp-serde, tuples as arrays, bytes as bin)
//! ```
//!
//! Bodies, by tag, in version 1:
//!
//! | tag | message         | body                                            |
//! |-----|-----------------|-------------------------------------------------|
//! | 1   | `Deltas`        | `[from, base, seq_start, seq_end, [[id, entry], ..]]` |
//! | 2   | `Ack`           | `[from, upto]`                                  |
//! | 3   | `DigestRequest` | `[from, [bucket hash; 256]]`                    |
//! | 4   | `StateRequest`  | `[from, [bucket index, ..]]`                    |
//! | 5   | `States`        | `[from, [[id, entry], ..], last]`               |
//! | 6   | `Hello`         | `[from, [version, ..], wall_ms, counter, root, log_pos, attrs]` |
//!
//! Version 2 appends the sender's HLC (`wall_ms, counter`) to the bodies
//! of tags 1 to 5, so the receiver applies the HLC receive rule and refuses
//! a clock too far ahead. `Hello` is always sent with version byte 1 and
//! lists every version its sender speaks: peers then use the highest
//! version both know ([`negotiate`]), so a node one version behind keeps
//! syncing. An entry is a store record (`record`): metadata with the
//! generation, and a delta or state, or a tombstone.
//!
//! Version 4 adds what causal-stability collection needs (see
//! `sync::engine`, "Membership and stability"): a `States` body gains a
//! trailing `seq` (the sender's count of `States` messages to this
//! receiver, from 1) before the clock, and two messages exist only in
//! version 4:
//!
//! | tag | message     | body (then the clock)                           |
//! |-----|-------------|-------------------------------------------------|
//! | 7   | `Frontier`  | `[from, at, [[directory, frontier], ..]]`       |
//! | 8   | `AnswerEnd` | `[from, first, last, log_pos]`                  |
//!
//! `Frontier` reports, as of the sender's hello stamped `at`, its frontier
//! of each member directory it knows (everything that directory made
//! before that HLC stamp has reached the sender), at most
//! [`MAX_FRONTIERS`] of them. `AnswerEnd` closes the sender's answer to a digest:
//! its pushed states went in `States` messages `first..=last` (none when
//! `first > last`), its envelope clock is the moment its state was taken,
//! and `log_pos` the last position of its log then (its changes up to
//! there are in that state).
//!
//! Version 3 has version 2's bytes. It announces that the sender's
//! tombstone entries carry the delete's HLC stamp in `updated_at`, that a
//! tombstone kills only what was created before the delete
//! (`record::Tomb`), and that it collects tombstones: a replica
//! collects them only while every peer speaks version 3.
//!
//! [`Message::decode`] validates everything (header, shape, sequence range
//! against entry count, CRDT headers of every payload, bucket counts and
//! ranges, duplicate ids, trailing bytes) and refuses a message longer than
//! [`MAX_MESSAGE_BYTES`], except a `Deltas` or `States` message carrying
//! exactly one entry, which may reach [`MAX_SINGLE_ENTRY_MESSAGE_BYTES`]: the
//! encoder side ([`DeltaLog::next_batch`](super::log::DeltaLog::next_batch),
//! [`states_messages`]) packs entries up to the limit and sends an entry
//! larger than the limit alone, never truncated. Golden vectors in this
//! module's tests pin the bytes.

use crate::causal::ReplicaId;
use crate::crdt::split_header;
use crate::error::{Error, Result};
use crate::hlc::Timestamp;
use crate::record::decode_parts;
use hashbrown::HashSet;
use serde::Deserialize;
use serde_bytes::{ByteBuf, Bytes};

use super::digest::BUCKETS;

/// First byte of every sync message (CRDT bytes use 0xC7, store records 0xC8).
pub const WIRE_MAGIC: u8 = 0xC9;
/// The newest protocol version this build speaks.
pub const WIRE_VERSION: u8 = 4;
/// The oldest protocol version this build speaks.
pub const MIN_WIRE_VERSION: u8 = 1;

/// The highest version in both `ours` and `theirs`, if any.
pub fn negotiate(ours: &[u8], theirs: &[u8]) -> Option<u8> {
    ours.iter().copied().filter(|v| theirs.contains(v)).max()
}
/// Largest message holding more than one entry (and of every other kind).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Largest message holding a single entry larger than [`MAX_MESSAGE_BYTES`]
/// (the store's default `max_value_bytes` is 16 MiB).
pub const MAX_SINGLE_ENTRY_MESSAGE_BYTES: usize = 64 << 20;

/// Upper bound of the bytes one `[id, payload]` entry adds to a message
/// beyond `id.len() + payload.len()`: a fixarray byte and two bin headers.
pub const ENTRY_OVERHEAD: usize = 1 + 5 + 5;

/// Upper bound of the encoded size of an entry in a `Deltas` or `States` body.
pub fn entry_size(id: &[u8], payload: &[u8]) -> usize {
    id.len() + payload.len() + ENTRY_OVERHEAD
}

/// Upper bound of the bytes of a `Deltas` or `States` message from `from`
/// beyond its entries: header, array headers, `from`, two sequence numbers
/// or the `last` flag.
pub fn message_overhead(from: &ReplicaId) -> usize {
    3 + 1 + 5 + from.as_bytes().len() + 9 + 9 + 5
}

/// The entry budget that keeps a `Deltas` or `States` message from `from`
/// within [`MAX_MESSAGE_BYTES`], measured with [`entry_size`].
pub fn batch_budget(from: &ReplicaId) -> usize {
    MAX_MESSAGE_BYTES.saturating_sub(message_overhead(from))
}

/// Message tags, with their stable wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// [`Message::Deltas`].
    Deltas = 1,
    /// [`Message::Ack`].
    Ack = 2,
    /// [`Message::DigestRequest`].
    DigestRequest = 3,
    /// [`Message::StateRequest`].
    StateRequest = 4,
    /// [`Message::States`].
    States = 5,
    /// [`Message::Hello`].
    Hello = 6,
    /// [`Message::Frontier`] (version 4).
    Frontier = 7,
    /// [`Message::AnswerEnd`] (version 4).
    AnswerEnd = 8,
}

impl Tag {
    /// The tag of wire code `c`.
    pub fn from_code(c: u8) -> Result<Tag> {
        Ok(match c {
            1 => Tag::Deltas,
            2 => Tag::Ack,
            3 => Tag::DigestRequest,
            4 => Tag::StateRequest,
            5 => Tag::States,
            6 => Tag::Hello,
            7 => Tag::Frontier,
            8 => Tag::AnswerEnd,
            _ => return Err(Error::Decode(format!("unknown sync message tag {c}"))),
        })
    }
}

/// One `(id, CRDT bytes)` pair: a delta in `Deltas`, a state in `States`.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A sync protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A delta-interval: the sender's local deltas numbered
    /// `seq_start..=seq_end`, one entry per sequence number, in order
    /// (Almeida et al., Algorithm 2). Answered with `Ack { upto: seq_end }`.
    Deltas {
        /// The sending replica.
        from: ReplicaId,
        /// Everything up to `base` reached the receiver by acknowledged
        /// intervals or by a digest exchange (`base < seq_start`): the
        /// receiver's contiguous prefix starts there.
        base: u64,
        /// Sequence number of the first entry (>= 1).
        seq_start: u64,
        /// Sequence number of the last entry.
        seq_end: u64,
        /// `(id, encoded delta)`, `seq_end - seq_start + 1` of them.
        entries: Vec<Entry>,
    },
    /// The sender has joined the receiver's deltas up to `upto`.
    Ack {
        /// The acknowledging replica.
        from: ReplicaId,
        /// Highest sequence number of the interval received.
        upto: u64,
    },
    /// The sender's digest: asks the receiver to request the states of the
    /// buckets where the receiver's digest differs.
    DigestRequest {
        /// The replica whose digest this is.
        from: ReplicaId,
        /// Exactly [`BUCKETS`] bucket hashes.
        buckets: Vec<u64>,
    },
    /// Asks the receiver for its states of every id in `buckets`.
    StateRequest {
        /// The requesting replica.
        from: ReplicaId,
        /// Bucket indices, strictly increasing, each below [`BUCKETS`].
        buckets: Vec<u16>,
    },
    /// Full states answering a `StateRequest`, possibly in several messages.
    States {
        /// The replica the states come from.
        from: ReplicaId,
        /// `(id, encoded state)`, ids distinct within the message.
        entries: Vec<Entry>,
        /// Whether this is the last message of the answer.
        last: bool,
    },
    /// A heartbeat: announces the sender, the versions it speaks and the
    /// root of its digest (so peers that differ start anti-entropy).
    Hello {
        /// The announcing replica.
        from: ReplicaId,
        /// Every wire version the sender speaks.
        versions: Vec<u8>,
        /// The sender's HLC.
        clock: Timestamp,
        /// A hash of the sender's digest buckets.
        root: u64,
        /// The sequence number of the sender's last recorded local delta.
        log_pos: u64,
        /// Free-form attributes (at most 4 KiB), e.g. the node label.
        attrs: Vec<u8>,
    },
    /// The sender's frontiers (version 4), as of its hello stamped `at`:
    /// for each member directory it knows, everything that directory made
    /// before the stamp has reached the sender.
    Frontier {
        /// The reporting replica.
        from: ReplicaId,
        /// The clock of the hello it goes with (`Timestamp::to_u64`).
        at: u64,
        /// `(directory, frontier)`, at most [`MAX_FRONTIERS`].
        frontiers: Vec<(Vec<u8>, u64)>,
    },
    /// The end of the sender's answer to the receiver's digest (version
    /// 4): the states it pushed went in its `States` messages numbered
    /// `first..=last`, and the envelope clock is when its state was taken.
    AnswerEnd {
        /// The answering replica.
        from: ReplicaId,
        /// The first `States` sequence number of the answer.
        first: u64,
        /// The last one (`first > last`: the answer pushed nothing).
        last: u64,
        /// The sender's log position when it took its state.
        log_pos: u64,
    },
}

/// A decoded message with what its header and clock said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The wire version it was encoded with.
    pub version: u8,
    /// The sender's HLC (version 2, and `Hello`).
    pub clock: Option<Timestamp>,
    /// A `States` message's sequence number (version 4; 0 otherwise).
    pub seq: u64,
    /// The message.
    pub msg: Message,
}

type EntryRef<'a> = (&'a Bytes, &'a Bytes);
type EntryWire = (ByteBuf, ByteBuf);

fn entries_ref(entries: &[Entry]) -> Vec<EntryRef<'_>> {
    entries
        .iter()
        .map(|(i, p)| (Bytes::new(i), Bytes::new(p)))
        .collect()
}

fn entries_from_wire(w: Vec<EntryWire>) -> Vec<Entry> {
    w.into_iter()
        .map(|(i, p)| (i.into_vec(), p.into_vec()))
        .collect()
}

fn de_err(e: rmp_serde::decode::Error) -> Error {
    Error::Decode(e.to_string())
}

/// Check one entry's payload: a record whose state header names its kind.
/// Entries are checked one by one by the receiver, so that one entry this
/// build cannot read (e.g. a newer record version) does not cost the rest
/// of the message.
pub fn check_payload(payload: &[u8]) -> Result<()> {
    let (meta, crdt) = decode_parts(payload)?;
    let (kind, _) = split_header(crdt)?;
    if kind != meta.kind {
        return Err(Error::Decode("entry kind does not match its state".into()));
    }
    Ok(())
}

/// Most entries of a `Frontier` report (the store's membership bound).
pub const MAX_FRONTIERS: usize = crate::store::membership::MAX_MEMBERS;

/// Largest `Hello::attrs`.
pub const MAX_HELLO_ATTRS: usize = 4096;

impl Message {
    /// The message's tag.
    pub fn tag(&self) -> Tag {
        match self {
            Message::Deltas { .. } => Tag::Deltas,
            Message::Ack { .. } => Tag::Ack,
            Message::DigestRequest { .. } => Tag::DigestRequest,
            Message::StateRequest { .. } => Tag::StateRequest,
            Message::States { .. } => Tag::States,
            Message::Hello { .. } => Tag::Hello,
            Message::Frontier { .. } => Tag::Frontier,
            Message::AnswerEnd { .. } => Tag::AnswerEnd,
        }
    }

    /// The sending replica.
    pub fn from(&self) -> &ReplicaId {
        match self {
            Message::Deltas { from, .. }
            | Message::Ack { from, .. }
            | Message::DigestRequest { from, .. }
            | Message::StateRequest { from, .. }
            | Message::States { from, .. }
            | Message::Hello { from, .. }
            | Message::Frontier { from, .. }
            | Message::AnswerEnd { from, .. } => from,
        }
    }

    /// Encode in version 1 (no clock).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(1, Timestamp::ZERO)
    }

    /// Encode with the versioned header, in `version` (1, or 2 with the
    /// sender's `clock`; a `Hello` is always version 1). Size limits are
    /// the builder's business (see the module docs); this encodes what it
    /// is given.
    pub fn encode_with(&self, version: u8, clock: Timestamp) -> Vec<u8> {
        self.encode_seq(version, clock, 0)
    }

    /// [`Message::encode_with`], numbering a `States` message `seq` in
    /// version 4. `Frontier` and `AnswerEnd` exist only in version 4: in
    /// an older version they encode as that version would read them, which
    /// is never (callers send them to version 4 peers only).
    pub fn encode_seq(&self, version: u8, clock: Timestamp, seq: u64) -> Vec<u8> {
        let version = if matches!(self, Message::Hello { .. }) {
            1
        } else {
            version.clamp(MIN_WIRE_VERSION, WIRE_VERSION)
        };
        let mut out = vec![WIRE_MAGIC, version, self.tag() as u8];
        let res = match self {
            Message::Deltas {
                from,
                base,
                seq_start,
                seq_end,
                entries,
            } => rmp_serde::encode::write(
                &mut out,
                &(from, base, seq_start, seq_end, entries_ref(entries)),
            ),
            Message::Ack { from, upto } => rmp_serde::encode::write(&mut out, &(from, upto)),
            Message::DigestRequest { from, buckets } => {
                rmp_serde::encode::write(&mut out, &(from, buckets))
            }
            Message::StateRequest { from, buckets } => {
                rmp_serde::encode::write(&mut out, &(from, buckets))
            }
            Message::States {
                from,
                entries,
                last,
            } if version >= 4 => {
                rmp_serde::encode::write(&mut out, &(from, entries_ref(entries), last, seq))
            }
            Message::States {
                from,
                entries,
                last,
            } => rmp_serde::encode::write(&mut out, &(from, entries_ref(entries), last)),
            Message::Frontier {
                from,
                at,
                frontiers,
            } => {
                let f: Vec<(&Bytes, u64)> =
                    frontiers.iter().map(|(d, v)| (Bytes::new(d), *v)).collect();
                rmp_serde::encode::write(&mut out, &(from, at, f))
            }
            Message::AnswerEnd {
                from,
                first,
                last,
                log_pos,
            } => rmp_serde::encode::write(&mut out, &(from, first, last, log_pos)),
            Message::Hello {
                from,
                versions,
                clock,
                root,
                log_pos,
                attrs,
            } => rmp_serde::encode::write(
                &mut out,
                &(
                    from,
                    Bytes::new(versions),
                    clock.wall_ms,
                    clock.counter,
                    root,
                    log_pos,
                    Bytes::new(attrs),
                ),
            ),
        };
        // Writing to a Vec cannot fail, and every field is serializable.
        debug_assert!(res.is_ok());
        if version >= 2 && !matches!(self, Message::Hello { .. }) {
            // The body is an array: bump its length by two and append the
            // clock (fixarray bodies here have at most 5 elements).
            if let Some(b) = out.get_mut(3) {
                *b += 2;
            }
            let res = rmp_serde::encode::write(&mut out, &clock.wall_ms)
                .and_then(|_| rmp_serde::encode::write(&mut out, &clock.counter));
            debug_assert!(res.is_ok());
        }
        out
    }

    /// Decode bytes from a peer, with their version and clock. Validates
    /// everything; never panics.
    pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope> {
        let version = match bytes {
            [WIRE_MAGIC, v @ MIN_WIRE_VERSION..=WIRE_VERSION, _, ..] => *v,
            [WIRE_MAGIC, v, _, ..] => return Err(Error::UnsupportedVersion(*v)),
            _ => return Err(Error::Decode("missing sync message header".into())),
        };
        if version == 1 || bytes[2] == Tag::Hello as u8 {
            let (msg, seq) = Self::decode_body(bytes, version, None)?;
            let clock = match &msg {
                Message::Hello { clock, .. } => Some(*clock),
                _ => None,
            };
            return Ok(Envelope {
                version,
                clock,
                seq,
                msg,
            });
        }
        // Version 2: the body array ends with the clock.
        let mut clock = Timestamp::ZERO;
        let (msg, seq) = Self::decode_body(bytes, version, Some(&mut clock))?;
        Ok(Envelope {
            version,
            clock: Some(clock),
            seq,
            msg,
        })
    }

    /// Decode bytes from a peer (any version). Validates everything;
    /// never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message> {
        Ok(Self::decode_envelope(bytes)?.msg)
    }

    fn decode_body(
        bytes: &[u8],
        version: u8,
        clock: Option<&mut Timestamp>,
    ) -> Result<(Message, u64)> {
        let (tag, body) = match bytes {
            [WIRE_MAGIC, _, tag, body @ ..] => (Tag::from_code(*tag)?, body),
            _ => return Err(Error::Decode("missing sync message header".into())),
        };
        let oversized = bytes.len() > MAX_MESSAGE_BYTES;
        if bytes.len() > MAX_SINGLE_ENTRY_MESSAGE_BYTES
            || (oversized && !matches!(tag, Tag::Deltas | Tag::States))
        {
            return Err(Error::Decode(format!(
                "sync message of {} bytes exceeds the limit",
                bytes.len()
            )));
        }
        // Version 2 bodies are one array longer by the clock's two fields:
        // the body is read with its array header shortened by two, then the
        // clock's fields one by one (no copy of the body).
        let first = match (clock.is_some(), body.first()) {
            (false, _) => None,
            (true, Some(&b)) if (0x92..=0x9f).contains(&b) => Some([b - 2]),
            (true, _) => return Err(Error::Decode("malformed version 2 body".into())),
        };
        let reader = match &first {
            Some(h) => std::io::Read::chain(&h[..], &body[1..]),
            None => std::io::Read::chain(&[][..], body),
        };
        let mut de = rmp_serde::Deserializer::new(reader);
        if matches!(tag, Tag::Frontier | Tag::AnswerEnd) && version < 4 {
            return Err(Error::Decode(format!(
                "sync message tag {} needs wire version 4",
                tag as u8
            )));
        }
        let mut seq = 0;
        let msg = match tag {
            Tag::Deltas => {
                type DeltasWire = (ReplicaId, u64, u64, u64, Vec<EntryWire>);
                let (from, base, seq_start, seq_end, entries): DeltasWire =
                    Deserialize::deserialize(&mut de).map_err(de_err)?;
                let entries = entries_from_wire(entries);
                if seq_start == 0 || seq_end < seq_start || base >= seq_start {
                    return Err(Error::Decode("invalid delta-interval".into()));
                }
                if (seq_end - seq_start).checked_add(1) != Some(entries.len() as u64) {
                    return Err(Error::Decode(
                        "delta-interval does not match its entry count".into(),
                    ));
                }
                Message::Deltas {
                    from,
                    base,
                    seq_start,
                    seq_end,
                    entries,
                }
            }
            Tag::Ack => {
                let (from, upto): (ReplicaId, u64) =
                    Deserialize::deserialize(&mut de).map_err(de_err)?;
                Message::Ack { from, upto }
            }
            Tag::DigestRequest => {
                let (from, buckets): (ReplicaId, Vec<u64>) =
                    Deserialize::deserialize(&mut de).map_err(de_err)?;
                if buckets.len() != BUCKETS {
                    return Err(Error::Decode(format!(
                        "digest has {} buckets, expected {BUCKETS}",
                        buckets.len()
                    )));
                }
                Message::DigestRequest { from, buckets }
            }
            Tag::StateRequest => {
                let (from, buckets): (ReplicaId, Vec<u16>) =
                    Deserialize::deserialize(&mut de).map_err(de_err)?;
                if buckets.iter().any(|&b| b as usize >= BUCKETS) {
                    return Err(Error::Decode("bucket index out of range".into()));
                }
                if buckets.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::Decode(
                        "bucket indices not strictly increasing".into(),
                    ));
                }
                Message::StateRequest { from, buckets }
            }
            Tag::Hello => {
                type HelloWire = (ReplicaId, ByteBuf, u64, u32, u64, u64, ByteBuf);
                let (from, versions, wall_ms, counter, root, log_pos, attrs): HelloWire =
                    Deserialize::deserialize(&mut de).map_err(de_err)?;
                if versions.is_empty() || versions.len() > 32 || attrs.len() > MAX_HELLO_ATTRS {
                    return Err(Error::Decode("malformed hello".into()));
                }
                Message::Hello {
                    from,
                    versions: versions.into_vec(),
                    clock: Timestamp::new(wall_ms, counter),
                    root,
                    log_pos,
                    attrs: attrs.into_vec(),
                }
            }
            Tag::States => {
                let (from, entries, last) = if version >= 4 {
                    let (from, entries, last, s): (ReplicaId, Vec<EntryWire>, bool, u64) =
                        Deserialize::deserialize(&mut de).map_err(de_err)?;
                    seq = s;
                    (from, entries, last)
                } else {
                    let w: (ReplicaId, Vec<EntryWire>, bool) =
                        Deserialize::deserialize(&mut de).map_err(de_err)?;
                    w
                };
                let entries = entries_from_wire(entries);
                let distinct = {
                    let mut seen = HashSet::with_capacity(entries.len());
                    entries.iter().all(|(id, _)| seen.insert(id.as_slice()))
                };
                if !distinct {
                    return Err(Error::Decode("duplicate id in states".into()));
                }
                Message::States {
                    from,
                    entries,
                    last,
                }
            }
            Tag::Frontier => {
                let (from, at, f): (ReplicaId, u64, Vec<(ByteBuf, u64)>) =
                    Deserialize::deserialize(&mut de).map_err(de_err)?;
                if f.len() > MAX_FRONTIERS || f.iter().any(|(d, _)| d.len() > 64) {
                    return Err(Error::Decode("malformed frontier report".into()));
                }
                Message::Frontier {
                    from,
                    at,
                    frontiers: f.into_iter().map(|(d, v)| (d.into_vec(), v)).collect(),
                }
            }
            Tag::AnswerEnd => {
                let (from, first, last, log_pos): (ReplicaId, u64, u64, u64) =
                    Deserialize::deserialize(&mut de).map_err(de_err)?;
                Message::AnswerEnd {
                    from,
                    first,
                    last,
                    log_pos,
                }
            }
        };
        if let Some(clock) = clock {
            let (wall_ms, counter): (u64, u32) = (
                Deserialize::deserialize(&mut de).map_err(de_err)?,
                Deserialize::deserialize(&mut de).map_err(de_err)?,
            );
            *clock = Timestamp::new(wall_ms, counter);
        }
        let (head, rest) = de.get_ref().get_ref();
        if !head.is_empty() || !rest.is_empty() {
            return Err(Error::Decode("trailing bytes".into()));
        }
        if oversized {
            let n = match &msg {
                Message::Deltas { entries, .. } | Message::States { entries, .. } => entries.len(),
                _ => 0,
            };
            if n != 1 {
                return Err(Error::Decode(format!(
                    "sync message of {} bytes with {n} entries exceeds the limit",
                    bytes.len()
                )));
            }
        }
        Ok((msg, seq))
    }
}

/// Pack `(id, state)` pairs answering a `StateRequest` into `States`
/// messages of at most [`MAX_MESSAGE_BYTES`] each; a state too large for
/// that travels alone. The last message has `last: true`; with no entries
/// the answer is one empty message, so the requester learns it is complete.
pub fn states_messages(from: &ReplicaId, entries: impl IntoIterator<Item = Entry>) -> Vec<Message> {
    let budget = batch_budget(from);
    let mut out = Vec::new();
    let mut cur: Vec<Entry> = Vec::new();
    let mut cur_bytes = 0usize;
    for (id, state) in entries {
        let size = entry_size(&id, &state);
        if !cur.is_empty() && cur_bytes + size > budget {
            out.push(Message::States {
                from: from.clone(),
                entries: std::mem::take(&mut cur),
                last: false,
            });
            cur_bytes = 0;
        }
        cur_bytes += size;
        cur.push((id, state));
    }
    out.push(Message::States {
        from: from.clone(),
        entries: cur,
        last: true,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{Crdt, Kind};
    use crate::Op;
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn delta() -> Vec<u8> {
        let mut c = Crdt::new(Kind::GCounter);
        let d = c.mutate(&ReplicaId::from("a"), Op::Increment(2)).unwrap();
        let meta = crate::record::Meta {
            kind: Kind::GCounter,
            created_by: std::sync::Arc::from(&b"n"[..]),
            created_at: 1,
            updated_at: 2,
            gen: Default::default(),
            deleted: false,
        };
        crate::record::encode_parts(&meta, &d.encode())
    }

    /// Raw CRDT bytes as an entry (a record of the kind in their header).
    fn rec_of(crdt: &[u8]) -> Vec<u8> {
        let (kind, _) = split_header(crdt).unwrap();
        let meta = crate::record::Meta {
            kind,
            created_by: std::sync::Arc::from(&b""[..]),
            created_at: 0,
            updated_at: 0,
            gen: Default::default(),
            deleted: false,
        };
        crate::record::encode_parts(&meta, crdt)
    }

    fn samples() -> Vec<Message> {
        let a = ReplicaId::from("a");
        let mut buckets = vec![0u64; BUCKETS];
        buckets[1] = 7;
        buckets[255] = u64::MAX;
        vec![
            Message::Deltas {
                from: a.clone(),
                base: 2,
                seq_start: 3,
                seq_end: 4,
                entries: vec![(b"x".to_vec(), delta()), (b"y".to_vec(), delta())],
            },
            Message::Ack {
                from: a.clone(),
                upto: 300,
            },
            Message::DigestRequest {
                from: a.clone(),
                buckets,
            },
            Message::StateRequest {
                from: a.clone(),
                buckets: vec![0, 17, 255],
            },
            Message::States {
                from: a.clone(),
                entries: vec![(b"x".to_vec(), delta())],
                last: true,
            },
        ]
    }

    #[test]
    fn version_4_golden_vectors() {
        let a = ReplicaId::from("a");
        let t = Timestamp::new(5, 1);
        // States in version 4: [bin "a", [], true, seq 7, 5, 1].
        let states = Message::States {
            from: a.clone(),
            entries: Vec::new(),
            last: true,
        };
        let b = states.encode_seq(4, t, 7);
        assert_eq!(hex(&b), "c9040596c4016190c3070501");
        let env = Message::decode_envelope(&b).unwrap();
        assert_eq!((env.version, env.seq, env.clock), (4, 7, Some(t)));
        assert_eq!(env.msg, states);
        // The same message in version 3 has no seq.
        assert_eq!(hex(&states.encode_seq(3, t, 7)), "c9030595c4016190c30501");
        // Frontier: [bin "a", 8, [[bin "d", 9]], 5, 1].
        let f = Message::Frontier {
            from: a.clone(),
            at: 8,
            frontiers: vec![(b"d".to_vec(), 9)],
        };
        let b = f.encode_with(4, t);
        assert_eq!(hex(&b), "c9040795c40161089192c40164090501");
        assert_eq!(Message::decode(&b).unwrap(), f);
        // AnswerEnd: [bin "a", 3, 2, 10, 5, 1].
        let e = Message::AnswerEnd {
            from: a,
            first: 3,
            last: 2,
            log_pos: 10,
        };
        let b = e.encode_with(4, t);
        assert_eq!(hex(&b), "c9040896c4016103020a0501");
        assert_eq!(Message::decode(&b).unwrap(), e);
        // Neither exists before version 4.
        let mut old = b.clone();
        old[1] = 3;
        assert!(Message::decode(&old).is_err());
    }

    #[test]
    fn golden_vectors() {
        // The sample entry: a record (c802) of a G-Counter delta, header
        // c70101, body [[bin "a", 2]]:
        // [1, bin "n", 1, 2, bin9 delta, epoch 0, stamp 0, bin "", false].
        let rec = "c802".to_string() + "9901c4016e0102c409c701019192c4016102" + "0000c400c2";
        assert_eq!(hex(&delta()), rec);
        let gc = format!("{:02x}", rec.len() / 2) + &rec;
        let expect = [
            // Deltas: [bin "a", 3, 4, [[bin "x", bin9 gc], [bin "y", bin9 gc]]]
            "c90101".to_string()
                + "95c4016102"
                + "0304"
                + "92"
                + "92c40178c4"
                + &gc
                + "92c40179c4"
                + &gc,
            // Ack: [bin "a", uint16 300]
            "c9010292c40161cd012c".to_string(),
            // DigestRequest: checked separately below.
            String::new(),
            // StateRequest: [bin "a", [0, 17, uint8 255]]
            "c9010492c40161930011ccff".to_string(),
            // States: [bin "a", [[bin "x", bin9 gc]], true]
            "c9010593c4016191".to_string() + "92c40178c4" + &gc + "c3",
        ];
        for (m, want) in samples().iter().zip(expect) {
            let bytes = m.encode();
            if !want.is_empty() {
                assert_eq!(hex(&bytes), want, "{m:?}");
            }
            assert_eq!(&Message::decode(&bytes).unwrap(), m);
        }
        // Version 2 appends the sender's clock to the body array.
        let v2 = samples()[1].encode_with(2, Timestamp::new(5, 1));
        assert_eq!(hex(&v2), "c9020294c40161cd012c0501");
        let env = Message::decode_envelope(&v2).unwrap();
        assert_eq!(env.version, 2);
        assert_eq!(env.clock, Some(Timestamp::new(5, 1)));
        assert_eq!(env.msg, samples()[1]);
        for m in samples() {
            let e = Message::decode_envelope(&m.encode_with(2, Timestamp::new(9, 3))).unwrap();
            assert_eq!((e.msg, e.clock), (m, Some(Timestamp::new(9, 3))));
        }
        let hello = Message::Hello {
            from: ReplicaId::from("a"),
            versions: vec![1, 2],
            clock: Timestamp::new(7, 0),
            root: 9,
            log_pos: 3,
            attrs: b"n".to_vec(),
        };
        // Hello is always version 1:
        // [bin "a", bin [1, 2], 7, 0, 9, 3, bin "n"].
        let hb = hello.encode_with(2, Timestamp::ZERO);
        assert_eq!(hex(&hb), "c9010697c40161c402010207000903c4016e");
        assert_eq!(
            Message::decode_envelope(&hb).unwrap().clock,
            Some(Timestamp::new(7, 0))
        );
        let digest = samples()[2].encode();
        assert_eq!(hex(&digest[..11]), "c9010392c40161dc010000");
        assert_eq!(hex(&digest[11..13]), "0700");
        assert_eq!(hex(&digest[digest.len() - 9..]), "cfffffffffffffffff");
        assert_eq!(digest.len(), 10 + 255 + 9);
    }

    #[test]
    fn rejects_invalid_messages() {
        let bad = |m: Message| Message::decode(&m.encode()).unwrap_err();
        let a = ReplicaId::from("a");
        bad(Message::Deltas {
            from: a.clone(),
            base: 0,
            seq_start: 0,
            seq_end: 0,
            entries: vec![(b"x".to_vec(), delta())],
        });
        bad(Message::Deltas {
            from: a.clone(),
            base: 0,
            seq_start: 1,
            seq_end: 2,
            entries: vec![(b"x".to_vec(), delta())],
        });
        bad(Message::Deltas {
            from: a.clone(),
            base: 0,
            seq_start: 1,
            seq_end: u64::MAX,
            entries: vec![(b"x".to_vec(), delta())],
        });
        bad(Message::Deltas {
            from: a.clone(),
            base: 1,
            seq_start: 1,
            seq_end: 1,
            entries: vec![(b"x".to_vec(), delta())],
        });
        // Payloads are checked entry by entry by the receiver.
        assert!(check_payload(b"not crdt").is_err());
        assert!(check_payload(&delta()).is_ok());
        bad(Message::DigestRequest {
            from: a.clone(),
            buckets: vec![0; 3],
        });
        bad(Message::StateRequest {
            from: a.clone(),
            buckets: vec![3, 3],
        });
        bad(Message::StateRequest {
            from: a.clone(),
            buckets: vec![256],
        });
        bad(Message::States {
            from: a.clone(),
            entries: vec![(b"x".to_vec(), delta()), (b"x".to_vec(), delta())],
            last: false,
        });
        let mut v = samples()[1].encode();
        v[1] = WIRE_VERSION + 1;
        assert_eq!(
            Message::decode(&v),
            Err(Error::UnsupportedVersion(WIRE_VERSION + 1))
        );
        v[1] = 1;
        v.push(0);
        assert!(Message::decode(&v).is_err(), "trailing bytes");
        v[2] = 9;
        assert!(Message::decode(&v).is_err(), "unknown tag");
    }

    #[test]
    fn size_limits() {
        let a = ReplicaId::from("a");
        // A huge single state travels alone and decodes.
        let mut big = Crdt::new(Kind::LwwRegister);
        big.mutate(
            &a,
            Op::Set(
                &vec![7u8; MAX_MESSAGE_BYTES + 10],
                crate::Timestamp::new(1, 0),
            ),
        )
        .unwrap();
        let small = delta();
        let msgs = states_messages(
            &a,
            vec![
                (b"s1".to_vec(), small.clone()),
                (b"big".to_vec(), rec_of(&big.encode())),
                (b"s2".to_vec(), small.clone()),
            ],
        );
        assert_eq!(msgs.len(), 3);
        for (i, m) in msgs.iter().enumerate() {
            let bytes = m.encode();
            assert_eq!(&Message::decode(&bytes).unwrap(), m);
            assert_eq!(matches!(m, Message::States { last: true, .. }), i == 2);
        }
        // Two entries over the limit are refused.
        let two = Message::States {
            from: a.clone(),
            entries: vec![
                (b"big".to_vec(), rec_of(&big.encode())),
                (b"s".to_vec(), small),
            ],
            last: true,
        };
        assert!(Message::decode(&two.encode()).is_err());
        // Many small states are packed within the limit.
        let many: Vec<Entry> = (0..20_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), rec_of(&[0xC7, 1, 1, 0x90])))
            .chain((0..3u32).map(|i| (format!("lww{i}").into_bytes(), rec_of(&[0xC7, 1, 5, 0xc0]))))
            .chain((0..200u32).map(|i| {
                let mut s = vec![0xC7, 1, 5];
                s.resize(9_000, 0);
                (format!("pad{i}").into_bytes(), rec_of(&s))
            }))
            .collect();
        let msgs = states_messages(&a, many.clone());
        assert!(msgs.len() > 1);
        let mut back = Vec::new();
        for m in msgs {
            let bytes = m.encode();
            assert!(bytes.len() <= MAX_MESSAGE_BYTES);
            match Message::decode(&bytes).unwrap() {
                Message::States { entries, .. } => back.extend(entries),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, many);
        assert_eq!(states_messages(&a, Vec::new()).len(), 1);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
            let mut with_header = vec![WIRE_MAGIC, WIRE_VERSION, bytes.first().map_or(1, |b| b % 6)];
            with_header.extend_from_slice(&bytes);
            let _ = Message::decode(&with_header);
        }

        #[test]
        fn mutated_messages_never_panic(
            which in 0usize..5,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut bytes = samples()[which].encode();
            for (pos, val) in edits {
                let n = bytes.len();
                bytes[pos % n] = val;
            }
            let _ = Message::decode(&bytes);
            let n = bytes.len();
            let _ = Message::decode(&bytes[..cut % (n + 1)]);
        }

        #[test]
        fn round_trip(
            from in proptest::collection::vec(any::<u8>(), 0..8),
            seq_start in 1u64..u64::MAX / 2,
            ids in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 0..6), 0..8),
            upto in any::<u64>(),
            bucket_set in proptest::collection::btree_set(0u16..BUCKETS as u16, 0..20),
            hashes in proptest::collection::vec(any::<u64>(), BUCKETS),
            last in any::<bool>(),
        ) {
            let from = ReplicaId::new(&from);
            let entries: Vec<Entry> = ids.into_iter().map(|i| (i, delta())).collect();
            let mut msgs = vec![
                Message::Ack { from: from.clone(), upto },
                Message::DigestRequest { from: from.clone(), buckets: hashes },
                Message::StateRequest { from: from.clone(), buckets: bucket_set.into_iter().collect() },
                Message::States { from: from.clone(), entries: entries.clone(), last },
            ];
            if !entries.is_empty() {
                msgs.push(Message::Deltas {
                    from: from.clone(),
                    base: seq_start - 1,
                    seq_start,
                    seq_end: seq_start + entries.len() as u64 - 1,
                    entries,
                });
            }
            for m in msgs {
                let bytes = m.encode();
                prop_assert_eq!(Message::decode(&bytes).unwrap(), m.clone());
                prop_assert_eq!(Message::decode(&bytes).unwrap().encode(), bytes);
            }
        }
    }
}
