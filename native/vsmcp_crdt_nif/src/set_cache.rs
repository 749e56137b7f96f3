//! The built value of a hot OR-Set, kept beside it in its store slot
//! (`View::ext`), so that a reply copies a ready `MapSet` map instead of
//! decoding and hashing every element again.
//!
//! **What is kept.** The inner map `%{e => []}` of the set's `MapSet`, in a
//! process-independent environment (`OwnedEnv`) owned by the cache, and the
//! state `version` it reflects once the elements in `pending` are applied.
//! The store bumps a slot's version by one on every change of its state and
//! makes versions unique per (re)insert, and drops `ext` when the item leaves
//! the hot tier or is deleted; so a cache whose version is not the slot's is
//! stale and is dropped (a remote merge, a mutation made while no value was
//! built), and one that is exactly one behind was made stale by the add or
//! remove just applied, whose element is recorded in `pending`.
//!
//! **Edits.** A pending element `e` is put into the map if the set now
//! contains it and removed otherwise, reading membership from the set at
//! that moment (so the map only ever holds decodings of present elements).
//! The map is therefore correct exactly when it has as many keys as the set
//! has present elements; that count (O(n), a few ns per element, skipped
//! when the map has as many keys as the set has entries) is checked after
//! every batch of edits, and a mismatch (two elements that decode to
//! equal terms, an element that no longer decodes) drops the cache: such a
//! set is built per call, as it was before this cache.
//!
//! **Cost** (measured with small-integer elements, see
//! `bench/RESULTS-store.md`). Building costs 0.25-0.5 µs per element; an
//! edit is a decode and a HAMT path copy (about 1 µs); a reply copies the
//! map into the caller's heap (`enif_make_copy`): 11-14 ns per element up
//! to ~10,000 elements, ~50 ns at 200,000 (no longer in cache), which is
//! what sending the same `MapSet` to another process costs.
//!
//! **Memory.** The map itself: 3.75 words (30 bytes) per element plus the
//! elements' own heap size, and about 1.2 KiB per cache (measured 30-31
//! bytes per small-integer element from 2,000 elements up, 42 at 100).
//! Each edit leaves the map's old path behind (the environment is never
//! garbage collected; ~780 bytes per edit at 200,000 elements), so once
//! edits exceed `len / 32 + 8` the live map is copied into a fresh
//! environment and the old one freed: garbage stays below the map's size
//! (~0.8x at 200,000 elements, ~0.5x at 5,000), for one extra copy per
//! `len / 32` edits. Pending elements hold their encoded
//! bytes; past `len / 16 + 64` of them the cache is dropped (bounding that
//! memory and the time a reply spends applying them).
//!
//! **Replies by message.** A reply copied into the calling process's heap
//! as a NIF's return value lands in a heap fragment whenever it is larger
//! than the heap's free space, and the VM then garbage-collects the caller
//! right after the NIF returns, with the reply live: a second full copy of
//! it, on about every third get of a 5,000-element set (measured: gets at
//! 0.74-0.84x the rate of receiving the same `MapSet` from another
//! process). So when the caller passes a reference (`reply_to`) and the
//! set has at least `SEND_MIN_LEN` elements, the map is copied into a
//! message environment instead and sent to the caller as `{ref, {:ok,
//! set}}` (`enif_send` moves the message's heap, no second copy); the NIF
//! returns `ref` and the Elixir side receives the message at once. The
//! caller's next collection then finds the reply dead, as a received
//! message usually is, or copies it if still in use.
//!
//! **Scheduling.** On a normal scheduler a cached reply does a count, a
//! copy and at most `INLINE_PENDING` edits, up to `COPY_INLINE_BYTES`
//! (about 0.3 ms at the bound); a compaction or a build of more than
//! `INLINE_BYTES` answers `Error::WouldBlock` (the dirty retry does it).

use crate::atoms;
use crate::set_value::{decode_elements, mapset_of, set_map};
use crate::term::{self as tc, Trust};
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::types::tuple::make_tuple;
use rustler::{Encoder, Env, Term};
use vsmcp_crdt_core::orset::ORSet;
use vsmcp_crdt_core::store::{drop_in_background, Ext, INLINE_BYTES};
use vsmcp_crdt_core::Error;

/// Sets with fewer stored entries are built per call and not cached: their
/// build costs a few µs, and a cache has a fixed cost (about 1.2 KiB).
pub const MIN_LEN: usize = 64;

/// Largest set (`Crdt::size_hint`, estimated encoded bytes) whose cached
/// value is copied on a normal scheduler. Copying costs about a twentieth
/// of building, so this is a multiple of `INLINE_BYTES` (which bounds
/// building): 256 KiB is ~9,500 small integers, whose copy, count and 64
/// edits measured 0.15-0.35 ms.
pub const COPY_INLINE_BYTES: usize = 4 * INLINE_BYTES;

/// Sets with fewer elements are returned as the NIF's value even when the
/// caller passed a reference: a reply this small usually fits the caller's
/// heap, and costs about as much as the message would.
pub const SEND_MIN_LEN: usize = 256;

/// Most pending edits applied on a normal scheduler (each about 1 µs).
const INLINE_PENDING: usize = 64;

/// A cache of this many elements (plus edits) or more is freed on a
/// background thread: freeing its environment is O(heap fragments).
const BACKGROUND_DROP_LEN: usize = 20_000;

pub struct SetCache {
    env: OwnedEnv,
    /// `%{e => []}`, in `env`.
    map: SavedTerm,
    /// Keys in `map`.
    len: usize,
    /// The state version `map` reflects once `pending` is applied.
    version: u64,
    /// Elements added or removed since `map` was last edited.
    pending: Vec<Box<[u8]>>,
    /// Edits since `env` was last compacted.
    edits: usize,
}

impl SetCache {
    /// Apply `pending`; false if the map no longer matches `s` exactly.
    fn sync(&mut self, s: &ORSet, trust: Trust) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let Self {
            env,
            map,
            len,
            pending,
            edits,
            ..
        } = self;
        let ok = env.run(|oe| {
            let empty = Term::list_new_empty(oe);
            let mut m = map.load(oe);
            for e in pending.drain(..) {
                // An element that no longer decodes is left out, as in a
                // build; the count below then refuses the map.
                let Ok(k) = tc::decode_shown(oe, &e, trust) else {
                    continue;
                };
                let edited = if s.contains(&e) {
                    m.map_put(k, empty)
                } else {
                    m.map_remove(k)
                };
                m = match edited {
                    Ok(m) => m,
                    Err(_) => return false,
                };
                *edits += 1;
            }
            *len = m.map_size().unwrap_or(usize::MAX);
            *map = env.save(m);
            true
        });
        // Keys <= present elements <= entries (the map holds only
        // decodings of present elements): as many keys as entries settles
        // it in O(1), as in a set never removed from; else count.
        ok && (self.len == s.entry_count() || self.len == s.len())
    }

    /// Whether applying `pending` would make a compaction due.
    fn compaction_due(&self) -> bool {
        self.edits + self.pending.len() > self.len / 32 + 8
    }

    /// Copy the live map into a fresh environment once the edits since the
    /// last compaction left garbage of up to about the map's size.
    fn compact(&mut self) {
        if !self.compaction_due() {
            return;
        }
        let fresh = OwnedEnv::new();
        let saved = self.env.run(|oe| fresh.save(self.map.load(oe)));
        let old = std::mem::replace(&mut self.env, fresh);
        self.map = saved;
        self.edits = 0;
        discard_env(old, self.len);
    }

    /// The map, copied into `env`.
    fn copy_to<'a>(&self, env: Env<'a>) -> Term<'a> {
        self.env.run(|oe| self.map.load(oe).in_env(env))
    }

    /// The reply to the caller of `env`: the map copied into `env`, or,
    /// with `ReplyTo::Message` and a set of `SEND_MIN_LEN` elements or
    /// more, `{tag, {:ok, set}}` sent to the caller (see the module docs).
    fn reply<'a>(&self, env: Env<'a>, reply_to: ReplyTo<'a>) -> SetReply<'a> {
        match reply_to {
            ReplyTo::Message(tag) if self.len >= SEND_MIN_LEN && self.send(env, tag) => {
                SetReply::Sent(tag)
            }
            _ => SetReply::Map(self.copy_to(env)),
        }
    }

    /// Send `{tag, {:ok, set}}` to the process calling in `env`, the set
    /// copied once, into the message's own environment.
    fn send(&self, env: Env, tag: Term) -> bool {
        let pid = env.pid();
        let msg_env = OwnedEnv::new();
        msg_env.run(|me| {
            let m = self.copy_to(me);
            let reply = (atoms::ok(), mapset_of(me, m)).encode(me);
            let msg = make_tuple(me, &[tag.in_env(me), reply]);
            // SAFETY: `env` is the calling process's environment (normal or
            // dirty NIF), `me` a process-independent one holding `msg`;
            // enif_send moves `me`'s heap into the message and clears `me`,
            // whose terms are not used afterwards.
            unsafe {
                rustler::sys::enif_send(
                    env.as_c_arg(),
                    pid.as_c_arg(),
                    me.as_c_arg(),
                    msg.as_c_arg(),
                ) == 1
            }
        })
    }
}

/// How the caller of a NIF takes a value (its reply argument).
#[derive(Clone, Copy)]
pub enum ReplyTo<'a> {
    /// As the NIF's return value.
    Return,
    /// A large set's as the message `{tag, {:ok, set}}`, the NIF returning
    /// `tag` (a reference the caller made, see the module docs).
    Message(Term<'a>),
    /// Ask first: a hot set of `SEND_MIN_LEN` entries or more answers
    /// `:by_message` at once, without copying anything, and the caller asks
    /// again with a reference (so that a reference and the receive it
    /// needs are made only for large sets); anything else as `Return`.
    AskFirst,
}

impl<'a> ReplyTo<'a> {
    /// From a NIF argument: a reference, `:ask`, or anything else (`nil`,
    /// `true`) for `Return`.
    pub fn from_term(t: Term<'a>) -> Self {
        if t.is_ref() {
            ReplyTo::Message(t)
        } else if t == crate::atoms::ask().encode(t.get_env()) {
            ReplyTo::AskFirst
        } else {
            ReplyTo::Return
        }
    }
}

/// A set's reply (see [`value`]).
pub enum SetReply<'a> {
    /// The inner map `%{e => []}`, in the caller's environment.
    Map(Term<'a>),
    /// `{tag, {:ok, set}}` was sent to the caller.
    Sent(Term<'a>),
}

fn cache_mut(ext: &mut Ext) -> Option<&mut SetCache> {
    ext.as_mut().and_then(|b| b.downcast_mut::<SetCache>())
}

/// Most pending edits before the cache is dropped instead.
fn max_pending(len: usize) -> usize {
    len / 16 + 64
}

/// Drop the cache in `ext`, a large one off this thread.
fn discard(ext: &mut Ext) {
    let big = cache_mut(ext).is_some_and(|c| c.len + c.edits >= BACKGROUND_DROP_LEN);
    if let Some(b) = ext.take() {
        if big {
            drop_in_background(b);
        }
    }
}

fn discard_env(env: OwnedEnv, len: usize) {
    if len >= BACKGROUND_DROP_LEN {
        drop_in_background(env);
    }
}

/// Record that the add or remove of `edited` made `version` (or that some
/// other change did, with `edited == None`): O(1). Called by every update of
/// a hot set, also those that reply without a value.
pub fn note_update(version: u64, ext: &mut Ext, edited: Option<&[u8]>) {
    let Some(c) = cache_mut(ext) else {
        return;
    };
    if c.version == version {
        return;
    }
    match edited {
        Some(e) if c.version.wrapping_add(1) == version && c.pending.len() < max_pending(c.len) => {
            c.pending.push(e.into());
            c.version = version;
        }
        _ => discard(ext),
    }
}

/// The value of `s` (at `version`) for the caller of `env`: its inner map,
/// or sent (with `reply_to`, see [`SetReply`]), from the cache in `ext` when
/// it is current, building (and caching) it otherwise. `edited` as in
/// [`note_update`]; `inline` as in `value::value_term`.
#[allow(clippy::too_many_arguments)]
pub fn value<'a>(
    env: Env<'a>,
    s: &ORSet,
    version: u64,
    ext: &mut Ext,
    edited: Option<&[u8]>,
    inline: bool,
    trust: Trust,
    reply_to: ReplyTo<'a>,
) -> Result<SetReply<'a>, Error> {
    let size = 16 + s.size_hint();
    if let Some(c) = cache_mut(ext) {
        if c.version != version && edited.is_none() {
            discard(ext);
        }
    }
    if edited.is_some() {
        note_update(version, ext, edited);
    }
    if let Some(c) = cache_mut(ext) {
        // Inline: a count and a copy, and a few edits; a compaction (a
        // second copy) waits for a dirty scheduler.
        if inline
            && (size > COPY_INLINE_BYTES || c.pending.len() > INLINE_PENDING || c.compaction_due())
        {
            return Err(Error::WouldBlock);
        }
        if c.sync(s, trust) {
            c.compact();
            return Ok(c.reply(env, reply_to));
        }
        discard(ext);
    }
    if inline && size > INLINE_BYTES {
        return Err(Error::WouldBlock);
    }
    if s.entry_count() < MIN_LEN {
        let (terms, _) = decode_elements(env, s, trust);
        return Ok(SetReply::Map(set_map(env, &terms).0));
    }
    // Built in the cache's environment, then copied out.
    let oenv = OwnedEnv::new();
    let (map, exact, len) = oenv.run(|oe| {
        let (terms, present) = decode_elements(oe, s, trust);
        let (m, distinct) = set_map(oe, &terms);
        let exact = distinct && terms.len() == present;
        (oenv.save(m), exact, present)
    });
    let cache = SetCache {
        env: oenv,
        map,
        len,
        version,
        pending: Vec::new(),
        edits: 0,
    };
    let out = cache.reply(env, reply_to);
    if exact {
        *ext = Some(Box::new(cache));
    } else if len >= BACKGROUND_DROP_LEN {
        drop_in_background(cache);
    }
    Ok(out)
}

/// Test-only: `(keys, pending edits, edits since compaction)` of the cache
/// in `ext`, if there is one.
#[cfg(feature = "fault-injection")]
pub fn describe(ext: &mut Ext) -> Option<(usize, usize, usize)> {
    cache_mut(ext).map(|c| (c.len, c.pending.len(), c.edits))
}
