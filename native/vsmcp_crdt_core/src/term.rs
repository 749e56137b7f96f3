//! Canonical byte encoding of Erlang terms.
//!
//! Element values, register values, ids and node ids cross into Rust as
//! bytes in this encoding. It is *canonical*: equal terms (`=:=`) give equal
//! bytes on every node and OTP release, which `term_to_binary/1` does not
//! promise (atom encodings changed between releases; large maps iterate in
//! hash order). OR-Set membership, LWW tie-breaks and store keys compare
//! these bytes.
//!
//! Layout: a tag byte, then
//! * `ATOM`   varint length + UTF-8 name
//! * `INT`    zigzag varint (integers that fit in i64)
//! * `FLOAT`  8 bytes big-endian IEEE 754
//! * `BINARY` varint length + bytes
//! * `LIST` / `TUPLE` varint arity + elements
//! * `MAP`    varint size + key/value pairs sorted by encoded key bytes
//! * `ETF`    varint length + external term format bytes, for everything
//!   else (big integers, pids, references, ports, funs, improper lists,
//!   bitstrings); decoded with `binary_to_term(_, [:safe])` semantics.
//!
//! The NIF walks a term and calls the writer functions; decoding drives a
//! [`TermBuilder`] the NIF implements. Nesting deeper than [`MAX_DEPTH`] is
//! refused rather than risking the native stack.

use crate::error::{Error, Result};

pub const ATOM: u8 = 1;
pub const INT: u8 = 2;
pub const FLOAT: u8 = 3;
pub const BINARY: u8 = 4;
pub const LIST: u8 = 5;
pub const TUPLE: u8 = 6;
pub const MAP: u8 = 7;
pub const ETF: u8 = 8;

/// Deepest nesting accepted when encoding or decoding. Both walk the term
/// recursively, at about 0.7 KB of stack per level; dirty IO schedulers
/// have the smallest stacks of the BEAM (about 320 KB by default), where
/// 500 levels overflowed. 256 keeps half of that stack free.
pub const MAX_DEPTH: usize = 256;

pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn write_atom(out: &mut Vec<u8>, name: &[u8]) {
    out.push(ATOM);
    write_varint(out, name.len() as u64);
    out.extend_from_slice(name);
}

pub fn write_int(out: &mut Vec<u8>, v: i64) {
    out.push(INT);
    write_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub fn write_float(out: &mut Vec<u8>, v: f64) {
    out.push(FLOAT);
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

pub fn write_binary(out: &mut Vec<u8>, b: &[u8]) {
    out.push(BINARY);
    write_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn write_header(out: &mut Vec<u8>, tag: u8, arity: usize) {
    out.push(tag);
    write_varint(out, arity as u64);
}

pub fn write_etf(out: &mut Vec<u8>, etf: &[u8]) {
    out.push(ETF);
    write_varint(out, etf.len() as u64);
    out.extend_from_slice(etf);
}

/// Write a map from separately encoded `(key, value)` pairs, in canonical
/// (key bytes) order.
pub fn write_map(out: &mut Vec<u8>, pairs: &mut [(Vec<u8>, Vec<u8>)]) {
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    write_header(out, MAP, pairs.len());
    for (k, v) in pairs.iter() {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
}

/// Put a map's pairs, already written one after another at the end of
/// `out`, in canonical (key bytes) order, as [`write_map`] writes them:
/// `spans` holds each pair's `(start, key_end, end)` in `out`, in the
/// order written, the first starting where the pairs start and each
/// ending where the next starts. Encoding the pairs straight into `out`
/// this way allocates nothing per pair; pairs already in order (as many
/// small maps are) are left where they are.
pub fn order_map_pairs(out: &mut Vec<u8>, spans: &mut [(usize, usize, usize)]) {
    let key = |s: &(usize, usize, usize)| s.0..s.1;
    if spans.windows(2).all(|w| out[key(&w[0])] <= out[key(&w[1])]) {
        return;
    }
    let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
        return;
    };
    let (from, to) = (first.0, last.2);
    spans.sort_unstable_by(|a, b| out[key(a)].cmp(&out[key(b)]));
    out.reserve(to - from);
    for s in spans.iter() {
        out.extend_from_within(s.0..s.2);
    }
    out.drain(from..to);
}

/// Builds terms of some host representation while decoding.
pub trait TermBuilder {
    type Term;
    fn atom(&mut self, name: &str) -> Result<Self::Term>;
    fn int(&mut self, v: i64) -> Result<Self::Term>;
    fn float(&mut self, v: f64) -> Result<Self::Term>;
    fn binary(&mut self, b: &[u8]) -> Result<Self::Term>;
    fn list(&mut self, items: Vec<Self::Term>) -> Result<Self::Term>;
    fn tuple(&mut self, items: Vec<Self::Term>) -> Result<Self::Term>;
    fn map(&mut self, pairs: Vec<(Self::Term, Self::Term)>) -> Result<Self::Term>;
    fn etf(&mut self, etf: &[u8]) -> Result<Self::Term>;
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(msg: &str) -> Error {
    Error::Decode(format!("term: {msg}"))
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| bad("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(bad("varint overflow"));
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn len(&mut self) -> Result<usize> {
        let n = self.varint()?;
        // Every element takes at least one byte: a larger count is a lie.
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(bad("length exceeds input"));
        }
        Ok(n as usize)
    }

    fn slice(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| bad("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| bad("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn term<B: TermBuilder>(&mut self, b: &mut B, depth: usize) -> Result<B::Term> {
        if depth > MAX_DEPTH {
            return Err(bad("nesting too deep"));
        }
        match self.byte()? {
            ATOM => {
                let n = self.len()?;
                if n > 255 * 4 {
                    return Err(bad("atom too long"));
                }
                let s = std::str::from_utf8(self.slice(n)?).map_err(|_| bad("atom not UTF-8"))?;
                b.atom(s)
            }
            INT => {
                let z = self.varint()?;
                b.int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            FLOAT => {
                let s = self.slice(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                let f = f64::from_bits(u64::from_be_bytes(a));
                if !f.is_finite() {
                    return Err(bad("non-finite float"));
                }
                b.float(f)
            }
            BINARY => {
                let n = self.len()?;
                let s = self.slice(n)?;
                b.binary(s)
            }
            tag @ (LIST | TUPLE) => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.term(b, depth + 1)?);
                }
                if tag == LIST {
                    b.list(items)
                } else {
                    b.tuple(items)
                }
            }
            MAP => {
                let n = self.len()?;
                let mut pairs = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let k = self.term(b, depth + 1)?;
                    let v = self.term(b, depth + 1)?;
                    pairs.push((k, v));
                }
                b.map(pairs)
            }
            ETF => {
                let n = self.len()?;
                let s = self.slice(n)?;
                b.etf(s)
            }
            _ => Err(bad("unknown tag")),
        }
    }
}

/// Decode one term occupying all of `bytes`.
pub fn decode<B: TermBuilder>(bytes: &[u8], builder: &mut B) -> Result<B::Term> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let t = r.term(builder, 0)?;
    if r.pos != bytes.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(t)
}

/// A plain tree, used by tests and by the demo to show decoded values.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Atom(String),
    Int(i64),
    Float(f64),
    Binary(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Etf(Vec<u8>),
}

/// [`TermBuilder`] producing [`Value`].
pub struct ValueBuilder;

impl TermBuilder for ValueBuilder {
    type Term = Value;
    fn atom(&mut self, name: &str) -> Result<Value> {
        Ok(Value::Atom(name.to_string()))
    }
    fn int(&mut self, v: i64) -> Result<Value> {
        Ok(Value::Int(v))
    }
    fn float(&mut self, v: f64) -> Result<Value> {
        Ok(Value::Float(v))
    }
    fn binary(&mut self, b: &[u8]) -> Result<Value> {
        Ok(Value::Binary(b.to_vec()))
    }
    fn list(&mut self, items: Vec<Value>) -> Result<Value> {
        Ok(Value::List(items))
    }
    fn tuple(&mut self, items: Vec<Value>) -> Result<Value> {
        Ok(Value::Tuple(items))
    }
    fn map(&mut self, pairs: Vec<(Value, Value)>) -> Result<Value> {
        Ok(Value::Map(pairs))
    }
    fn etf(&mut self, etf: &[u8]) -> Result<Value> {
        Ok(Value::Etf(etf.to_vec()))
    }
}

/// Encode a [`Value`] (maps are put in canonical order).
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Atom(a) => write_atom(out, a.as_bytes()),
        Value::Int(i) => write_int(out, *i),
        Value::Float(f) => write_float(out, *f),
        Value::Binary(b) => write_binary(out, b),
        Value::List(items) | Value::Tuple(items) => {
            let tag = if matches!(v, Value::List(_)) {
                LIST
            } else {
                TUPLE
            };
            write_header(out, tag, items.len());
            for i in items {
                encode_value(i, out);
            }
        }
        Value::Map(pairs) => {
            write_header(out, MAP, pairs.len());
            let mut spans = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                let start = out.len();
                encode_value(k, out);
                let key_end = out.len();
                encode_value(v, out);
                spans.push((start, key_end, out.len()));
            }
            order_map_pairs(out, &mut spans);
        }
        Value::Etf(e) => write_etf(out, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_canonical_maps() {
        let v = Value::Map(vec![
            (Value::Atom("b".into()), Value::Int(-5)),
            (
                Value::Atom("a".into()),
                Value::List(vec![Value::Float(1.5)]),
            ),
        ]);
        let mut a = Vec::new();
        encode_value(&v, &mut a);
        let w = Value::Map(vec![
            (
                Value::Atom("a".into()),
                Value::List(vec![Value::Float(1.5)]),
            ),
            (Value::Atom("b".into()), Value::Int(-5)),
        ]);
        let mut b = Vec::new();
        encode_value(&w, &mut b);
        assert_eq!(a, b);
        assert_eq!(decode(&a, &mut ValueBuilder).unwrap(), w);
    }

    proptest::proptest! {
        /// Pairs ordered where they were written give the bytes of
        /// `write_map` over the same pairs, after any prefix already in
        /// `out` (nested maps are encoded after their parent's earlier pairs).
        #[test]
        fn map_pairs_ordered_in_place_as_write_map_writes_them(
            prefix in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
            pairs in proptest::collection::hash_map(
                proptest::collection::vec(0u8..4, 0..4),
                proptest::collection::vec(proptest::num::u8::ANY, 0..4),
                0..12,
            ),
        ) {
            // Distinct keys (a map's), in the hash map's arbitrary order.
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = pairs.into_iter().collect();
            let mut expected = prefix.clone();
            write_map(&mut expected, &mut pairs.clone());
            let mut out = prefix;
            write_header(&mut out, MAP, pairs.len());
            let mut spans = Vec::new();
            for (k, v) in &pairs {
                let start = out.len();
                out.extend_from_slice(k);
                let key_end = out.len();
                out.extend_from_slice(v);
                spans.push((start, key_end, out.len()));
            }
            order_map_pairs(&mut out, &mut spans);
            proptest::prop_assert_eq!(out, expected);
        }
    }

    #[test]
    fn golden_bytes() {
        let mut out = Vec::new();
        encode_value(
            &Value::Tuple(vec![
                Value::Atom("ok".into()),
                Value::Int(-1),
                Value::Binary(b"hi".to_vec()),
            ]),
            &mut out,
        );
        assert_eq!(out, vec![6, 3, 1, 2, b'o', b'k', 2, 1, 4, 2, b'h', b'i']);
    }

    #[test]
    fn malformed_is_error() {
        for bad in [
            &[][..],
            &[1, 5, b'a'],
            &[5, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200],
            &[9],
            &[2, 0, 0],
        ] {
            assert!(decode(bad, &mut ValueBuilder).is_err(), "{bad:?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n([LIST, 1], 10_000).flatten().collect();
        assert!(decode(&deep, &mut ValueBuilder).is_err());
    }
}
