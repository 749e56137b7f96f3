//! Failures as Elixir terms: `{:error, reason}` with a documented atom, or
//! `{:error, {reason, detail}}` where a detail helps the caller.
//!
//! [`NifError`] encodes as the *reason*, so a NIF whose reply is
//! `{:ok, value} | {:error, reason}` returns `Result<T, NifError>` and
//! rustler's encoding of `Result` builds both tuples. A NIF whose success
//! has another shape (`:ok`, `{:ok, a, b}`, a bare term, or `:dirty`)
//! returns a `Term` built by [`answer`] (or [`answer_or_dirty`]).

use crate::atoms;
use rustler::{Atom, Encoder, Env, Term};
use vsmcp_crdt_core::Error;

/// Why a NIF did not answer its value.
pub enum NifError<'a> {
    /// A core error: its reason atom (`Error::reason`), with a detail for
    /// clock skew, storage and decode errors, oversized values and
    /// unflushed writes.
    Core(Error),
    /// A reason of the glue itself (`:noproc`, `:closed`, `:invalid_replica`).
    Reason(Atom),
    /// A reason built with terms of the call (`{:invalid_amount, n}`,
    /// `{:unknown_type, kind}`, `{:unsupported_operation, type, op}`, ...).
    Detail(Term<'a>),
}

impl From<Error> for NifError<'_> {
    fn from(e: Error) -> Self {
        NifError::Core(e)
    }
}

impl From<Atom> for NifError<'_> {
    fn from(reason: Atom) -> Self {
        NifError::Reason(reason)
    }
}

impl Encoder for NifError<'_> {
    /// The reason (what follows `:error` in the reply).
    fn encode<'b>(&self, env: Env<'b>) -> Term<'b> {
        match self {
            NifError::Core(e) => reason_term(env, e),
            NifError::Reason(a) => a.encode(env),
            NifError::Detail(t) => t.encode(env),
        }
    }
}

fn reason_term<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    // Reason names are a fixed, documented set: never from input.
    let reason = Atom::from_str(env, e.reason()).unwrap_or_else(|_| atoms::error());
    match e {
        Error::ClockSkew { ahead_ms } => (reason, *ahead_ms).encode(env),
        Error::Storage(msg) | Error::Decode(msg) => (reason, msg.as_str()).encode(env),
        Error::ValueTooLarge { size, max } => (reason, *size, *max).encode(env),
        // Only `store_close` meets it: `{:unflushed, ids, reason}`.
        Error::Unflushed { ids, reason: why } => (reason, *ids, why.as_str()).encode(env),
        _ => reason.encode(env),
    }
}

/// The reply of a NIF whose success is not `{:ok, value}`: what `f`
/// returns, or `{:error, reason}`.
pub fn answer<'a>(env: Env<'a>, f: impl FnOnce() -> Result<Term<'a>, NifError<'a>>) -> Term<'a> {
    f().unwrap_or_else(|e| (atoms::error(), e).encode(env))
}

/// [`answer`] for a call that may run on a normal scheduler: the core's
/// `Error::WouldBlock` is `:dirty` (repeat the call on its `_dirty` twin).
pub fn answer_or_dirty<'a>(
    env: Env<'a>,
    f: impl FnOnce() -> Result<Term<'a>, NifError<'a>>,
) -> Term<'a> {
    match f() {
        Ok(t) => t,
        Err(NifError::Core(Error::WouldBlock)) => atoms::dirty().encode(env),
        Err(e) => (atoms::error(), e).encode(env),
    }
}
