//! Core errors as Elixir terms: `{:error, reason}` with a documented atom,
//! or `{:error, {reason, detail}}` where a detail helps the caller.

use rustler::{Atom, Encoder, Env, Term};
use vsmcp_crdt_core::Error;

rustler::atoms! {
    ok,
    error,
}

pub fn reason_term<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    // Reason names are a fixed, documented set: never from input.
    let reason = Atom::from_str(env, e.reason()).unwrap_or_else(|_| error());
    match e {
        Error::ClockSkew { ahead_ms } => (reason, *ahead_ms).encode(env),
        Error::Storage(msg) | Error::Decode(msg) => (reason, msg.as_str()).encode(env),
        Error::ValueTooLarge { size, max } => (reason, *size, *max).encode(env),
        _ => reason.encode(env),
    }
}

pub fn error_term<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    (error(), reason_term(env, e)).encode(env)
}

/// `{:ok, t}` or `{:error, reason}`.
pub fn result_term<'a>(env: Env<'a>, r: Result<Term<'a>, Error>) -> Term<'a> {
    match r {
        Ok(t) => (ok(), t).encode(env),
        Err(e) => error_term(env, &e),
    }
}
