//! `{:increment, n}`, `{:add, e}`, ... as a core [`Mutation`]: the one term
//! parser of both the store NIFs and the pure `Types.*` NIFs. Fitting the
//! mutation to a kind (and the rule for negative amounts) is the core's
//! `Mutation::fit`.

use crate::atoms::{add, decrement, increment, remove, set};
use crate::term as tc;
use rustler::{Atom, Term};
use vsmcp_crdt_core::{Error, Mutation};

/// Why a term is not a mutation.
pub enum OpError<'a> {
    /// Not `{tag, arg}` with a known tag.
    NotAnOperation,
    /// `{:increment | :decrement, n}` whose `n` is not an integer in
    /// `-(2^63)..2^64-1`: `{:error, {:invalid_amount, n}}`.
    InvalidAmount(Term<'a>),
    /// The element or value cannot be encoded (nested too deeply).
    Term(Error),
}

/// A counter amount, exactly, or `None`. Decoding goes through `i64` and
/// `u64` only: rustler's `i128` decoder panics on some big integers.
pub fn amount(t: Term) -> Option<i128> {
    if let Ok(i) = t.decode::<i64>() {
        return Some(i128::from(i));
    }
    t.decode::<u64>().ok().map(i128::from)
}

/// Parse `op`. Payloads are encoded into `buf` (cleared first), which the
/// result borrows;
/// one larger than `limit` bytes is `OpError::Term(Error::WouldBlock)`
/// (see `term::encode_within`).
pub fn parse<'a, 'b>(
    op: Term<'a>,
    buf: &'b mut Vec<u8>,
    limit: usize,
) -> Result<Mutation<'b>, OpError<'a>> {
    let Ok((tag, arg)) = op.decode::<(Atom, Term)>() else {
        return Err(OpError::NotAnOperation);
    };
    if tag == increment() || tag == decrement() {
        let n = amount(arg).ok_or(OpError::InvalidAmount(arg))?;
        return Ok(if tag == increment() {
            Mutation::Increment(n)
        } else {
            Mutation::Decrement(n)
        });
    }
    if tag != add() && tag != remove() && tag != set() {
        return Err(OpError::NotAnOperation);
    }
    buf.clear();
    tc::encode_append(arg, buf, limit).map_err(OpError::Term)?;
    let b: &'b [u8] = buf.as_slice();
    Ok(if tag == add() {
        Mutation::Add(b)
    } else if tag == remove() {
        Mutation::Remove(b)
    } else {
        Mutation::Set(b)
    })
}

/// The amount term of `op` when it is a counter operation (for
/// `{:invalid_amount, n}` when the counter would overflow).
pub fn amount_term(op: Term) -> Option<Term> {
    op.decode::<(Atom, Term)>()
        .ok()
        .filter(|(tag, _)| *tag == increment() || *tag == decrement())
        .map(|(_, n)| n)
}
