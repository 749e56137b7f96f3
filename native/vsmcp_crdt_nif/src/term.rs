//! Erlang term <-> canonical bytes (`vsmcp_crdt_core::term`).
//!
//! Encoding walks the term; anything the canonical format has no tag for
//! (big integers, pids, refs, ports, funs, improper lists, bitstrings) is
//! carried as external term format. Decoding builds terms back; atoms are
//! created only for `Trust::Local` data (this node's own store), while
//! `Trust::Remote` bytes may only name atoms that already exist and their
//! ETF payloads are decoded with `binary_to_term(_, [:safe])` rules.
//!
//! [`decode_shown`] is what callers see: a `Trust::Remote` term that cannot
//! be built that way (an atom unknown here, a function or a pid of an
//! unknown node) reads as `%Vsmcp.CRDT.UnsafeTerm{bytes: stored, tag:
//! _}`, and encoding that struct gives back exactly `stored`, so such an
//! element or id can be read, removed and deleted without creating
//! anything. The tag (a keyed hash under a key of this VM) proves the
//! struct was read here; any other map of that shape encodes as the map
//! it is.

use crate::atoms;
use rustler::types::map::MapIterator;
use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{Atom, Binary, Encoder, Env, NewBinary, Term, TermType};
use smallvec::SmallVec;
use vsmcp_crdt_core::term::{self as ct, TermBuilder};
use vsmcp_crdt_core::{Error, Result};

/// Whether decoded bytes may create atoms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Trust {
    Local,
    /// Bytes that may come from a peer: ids of remote changes, and every
    /// read of a store with `sync_opts: [decode: :safe]`.
    Remote,
}

/// Canonical bytes of `term`; `Err(Error::InvalidArgument)` when the term is
/// nested deeper than `term::MAX_DEPTH`.
pub fn encode(term: Term) -> Result<Vec<u8>> {
    encode_within(term, usize::MAX)
}

/// [`encode`] for a call on a normal scheduler: a term whose encoding
/// would exceed about `limit` bytes (binaries by length, other nodes
/// counted as 16 bytes) is `Error::WouldBlock` before the large part is
/// copied.
pub fn encode_within(term: Term, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(32);
    let mut budget = limit;
    encode_into(term, &mut out, 0, &mut budget)?;
    Ok(out)
}

thread_local! {
    static SCRATCH: std::cell::RefCell<[Vec<u8>; 2]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
}

/// Call `f` with two empty byte buffers kept per thread, so that encoding
/// an id and an operand on every call allocates nothing. A nested call gets
/// fresh buffers; buffers grown past 4 KiB are not kept.
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> R) -> R {
    let mut bufs = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let [a, b] = &mut bufs;
    a.clear();
    b.clear();
    let r = f(a, b);
    for buf in bufs.iter_mut().filter(|b| b.capacity() > 4096) {
        *buf = Vec::new();
    }
    SCRATCH.with(|s| *s.borrow_mut() = bufs);
    r
}

/// Append the encoding of `term` to `out`, within `limit` bytes (see
/// [`encode_within`]).
pub fn encode_append(term: Term, out: &mut Vec<u8>, limit: usize) -> Result<()> {
    let mut budget = limit;
    encode_into(term, out, 0, &mut budget)
}

fn spend(budget: &mut usize, n: usize) -> Result<()> {
    *budget = budget.checked_sub(n).ok_or(Error::WouldBlock)?;
    Ok(())
}

fn encode_into(term: Term, out: &mut Vec<u8>, depth: usize, budget: &mut usize) -> Result<()> {
    if depth > ct::MAX_DEPTH {
        return Err(Error::InvalidArgument("term nested too deeply"));
    }
    spend(budget, 16)?;
    match term.get_type() {
        TermType::Atom => match ascii_atom(term, &mut [0; 256]) {
            Some(name) => ct::write_atom(out, name),
            None => match term.atom_to_string() {
                Ok(name) => ct::write_atom(out, name.as_bytes()),
                Err(_) => write_etf(term, out),
            },
        },
        TermType::Integer => match term.decode::<i64>() {
            Ok(i) => ct::write_int(out, i),
            Err(_) => write_etf(term, out),
        },
        TermType::Float => match term.decode::<f64>() {
            Ok(f) => ct::write_float(out, f),
            Err(_) => write_etf(term, out),
        },
        TermType::Binary => match term.decode::<Binary>() {
            Ok(b) => {
                spend(budget, b.len())?;
                ct::write_binary(out, b.as_slice())
            }
            Err(_) => write_etf(term, out),
        },
        TermType::List => match term.list_length() {
            Ok(n) => {
                ct::write_header(out, ct::LIST, n);
                let iter = term
                    .into_list_iterator()
                    .map_err(|_| Error::InvalidArgument("list"))?;
                for item in iter {
                    encode_into(item, out, depth + 1, budget)?;
                }
            }
            Err(_) => write_etf(term, out), // improper list
        },
        TermType::Tuple => {
            let items = get_tuple(term).map_err(|_| Error::InvalidArgument("tuple"))?;
            ct::write_header(out, ct::TUPLE, items.len());
            for item in items {
                encode_into(item, out, depth + 1, budget)?;
            }
        }
        TermType::Map => {
            if let Some(bytes) = unsafe_term_bytes(term)? {
                spend(budget, bytes.len())?;
                out.extend_from_slice(bytes);
                return Ok(());
            }
            let n = term.map_size().map_err(|_| Error::InvalidArgument("map"))?;
            let iter = MapIterator::new(term).ok_or(Error::InvalidArgument("map"))?;
            // Each pair encoded straight into `out`, then put in canonical
            // order there: no buffer per key and value.
            ct::write_header(out, ct::MAP, n);
            // No more room than the budget can pay for (each pair spends
            // at least 32): a huge map on a normal scheduler gives up
            // after a few pairs, not after reserving room for all of them.
            let room = n.min(*budget / 32 + 1);
            let mut spans = SmallVec::<[(usize, usize, usize); 8]>::with_capacity(room);
            for (k, v) in iter {
                let start = out.len();
                encode_into(k, out, depth + 1, budget)?;
                let key_end = out.len();
                encode_into(v, out, depth + 1, budget)?;
                spans.push((start, key_end, out.len()));
            }
            if spans.len() != n {
                return Err(Error::InvalidArgument("map"));
            }
            ct::order_map_pairs(out, &mut spans);
        }
        _ => write_etf(term, out),
    }
    Ok(())
}

/// The name of an atom that is all ASCII, read into `buf` without
/// allocating (ids are often atoms); `None` for any other atom, which
/// `atom_to_string` handles (the bytes are the same for ASCII names).
fn ascii_atom<'b>(term: Term, buf: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    // SAFETY: `buf` has room for the longest Latin-1 atom (255) and the
    // NUL; enif_get_atom writes at most `buf.len()` bytes and returns the
    // count including the NUL, or 0.
    let n = unsafe {
        rustler::sys::enif_get_atom(
            term.get_env().as_c_arg(),
            term.as_c_arg(),
            buf.as_mut_ptr() as *mut std::ffi::c_char,
            buf.len() as std::ffi::c_uint,
            rustler::sys::ErlNifCharEncoding::ERL_NIF_LATIN1,
        )
    };
    let name = buf.get(..(n as usize).checked_sub(1)?)?;
    name.is_ascii().then_some(name)
}

fn write_etf(term: Term, out: &mut Vec<u8>) {
    let bin = term.to_binary();
    ct::write_etf(out, bin.as_slice());
}

struct Maker<'a> {
    env: Env<'a>,
    trust: Trust,
}

/// Atoms most recently decoded on this thread, by name: a hit skips the
/// VM's atom table (a hash and a lock per lookup), which dominated decoding
/// of small maps with atom keys. An atom is a VM-wide constant, valid in
/// every environment, and an atom found here exists, so `Trust::Remote`
/// may use it too. Direct-mapped, `ATOM_CACHE_SLOTS` names of at most
/// `ATOM_CACHE_NAME` bytes; a miss replaces the slot.
const ATOM_CACHE_SLOTS: usize = 256;
const ATOM_CACHE_NAME: usize = 64;

/// One slot of the atom cache: a name and its atom.
type AtomSlot = Option<(Box<[u8]>, Atom)>;

thread_local! {
    static ATOM_CACHE: std::cell::RefCell<Vec<AtomSlot>> =
        std::cell::RefCell::new(vec![None; ATOM_CACHE_SLOTS]);
}

fn atom_slot(name: &[u8]) -> usize {
    // FNV-1a: names are short.
    let h = name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h as usize) % ATOM_CACHE_SLOTS
}

impl<'a> Maker<'a> {
    fn lookup_atom(&self, name: &str) -> Option<Atom> {
        let atom = match self.trust {
            Trust::Local => Atom::from_str(self.env, name),
            Trust::Remote => Atom::existing_from_str(self.env, name),
        };
        atom.ok()
    }
}

impl<'a> TermBuilder for Maker<'a> {
    type Term = Term<'a>;

    fn atom(&mut self, name: &str) -> Result<Term<'a>> {
        let bytes = name.as_bytes();
        let atom = if bytes.len() <= ATOM_CACHE_NAME {
            let slot = atom_slot(bytes);
            let hit = ATOM_CACHE.with(|c| match &c.borrow()[slot] {
                Some((n, a)) if **n == *bytes => Some(*a),
                _ => None,
            });
            hit.or_else(|| {
                let a = self.lookup_atom(name)?;
                ATOM_CACHE.with(|c| c.borrow_mut()[slot] = Some((bytes.into(), a)));
                Some(a)
            })
        } else {
            self.lookup_atom(name)
        };
        atom.map(|a| a.encode(self.env))
            .ok_or_else(|| Error::Decode(format!("atom {name:?} is unknown or invalid")))
    }
    fn int(&mut self, v: i64) -> Result<Term<'a>> {
        Ok(v.encode(self.env))
    }
    fn float(&mut self, v: f64) -> Result<Term<'a>> {
        Ok(v.encode(self.env))
    }
    fn binary(&mut self, b: &[u8]) -> Result<Term<'a>> {
        Ok(make_binary(self.env, b))
    }
    fn list(&mut self, items: Vec<Term<'a>>) -> Result<Term<'a>> {
        Ok(items.encode(self.env))
    }
    fn tuple(&mut self, items: Vec<Term<'a>>) -> Result<Term<'a>> {
        Ok(make_tuple(self.env, &items))
    }
    fn map(&mut self, pairs: Vec<(Term<'a>, Term<'a>)>) -> Result<Term<'a>> {
        let (keys, values): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        Term::map_from_term_arrays(self.env, &keys, &values)
            .map_err(|_| Error::Decode("map with duplicate keys".into()))
    }
    fn etf(&mut self, etf: &[u8]) -> Result<Term<'a>> {
        let decoded = match self.trust {
            // SAFETY: local data (this node's own store) is trusted as the
            // replaced DETS tier trusted its file: it may name atoms not
            // yet created in this VM (run-time atoms, nodes of pids and
            // references). The VM still validates the encoding.
            Trust::Local => unsafe { self.env.binary_to_term_trusted(etf) },
            Trust::Remote => self.env.binary_to_term(etf),
        };
        match decoded {
            Some((t, used)) if used == etf.len() => Ok(t),
            _ => Err(Error::Decode("invalid or unsafe external term".into())),
        }
    }
}

/// The canonical bytes inside a `%Vsmcp.CRDT.UnsafeTerm{bytes: _, tag: _}`
/// this VM made (its `tag` checks out), `None` for any other map: a struct
/// made by hand, sent by a peer or read in another VM is an ordinary map.
fn unsafe_term_bytes<'a>(term: Term<'a>) -> Result<Option<&'a [u8]>> {
    let env = term.get_env();
    match term.map_get(atoms::__struct__().encode(env)) {
        Ok(m) if m == atoms::unsafe_term_module().encode(env) => {}
        _ => return Ok(None),
    }
    let field = |name: Atom| {
        term.map_get(name.encode(env))
            .and_then(|b| b.decode::<Binary<'a>>())
            .ok()
    };
    match (field(atoms::bytes()), field(atoms::tag())) {
        (Some(bytes), Some(tag)) if tag.as_slice() == unsafe_tag(bytes.as_slice()) => {
            Ok(Some(bytes.as_slice()))
        }
        _ => Ok(None),
    }
}

/// The tag of an `UnsafeTerm` of `bytes`: a keyed hash under a key drawn
/// at random when the library loads, so only this VM's decoder makes
/// structs whose bytes are spliced back verbatim.
fn unsafe_tag(bytes: &[u8]) -> [u8; 16] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut k));
        if read.is_err() {
            // No /dev/urandom: a hash of what differs between VMs.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let seed = format!("{t} {} {:p}", std::process::id(), &k);
            k = *blake3::hash(seed.as_bytes()).as_bytes();
        }
        k
    });
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&blake3::keyed_hash(key, bytes).as_bytes()[..16]);
    tag
}

/// [`decode`] for what a caller reads: with `Trust::Remote`, bytes that do
/// not decode that way read as `%Vsmcp.CRDT.UnsafeTerm{bytes: bytes}`
/// (see the module docs); with `Trust::Local`, as [`decode`].
pub fn decode_shown<'a>(env: Env<'a>, bytes: &[u8], trust: Trust) -> Result<Term<'a>> {
    match (decode(env, bytes, trust), trust) {
        (Ok(t), _) => Ok(t),
        (Err(_), Trust::Remote) => Ok(unsafe_term(env, bytes)),
        (Err(e), Trust::Local) => Err(e),
    }
}

fn unsafe_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let keys = [
        atoms::__struct__().encode(env),
        atoms::bytes().encode(env),
        atoms::tag().encode(env),
    ];
    let vals = [
        atoms::unsafe_term_module().encode(env),
        make_binary(env, bytes),
        make_binary(env, &unsafe_tag(bytes)),
    ];
    Term::map_from_term_arrays(env, &keys, &vals).unwrap_or_else(|_| make_binary(env, bytes))
}

/// Decode canonical bytes into a term of `env`.
pub fn decode<'a>(env: Env<'a>, bytes: &[u8], trust: Trust) -> Result<Term<'a>> {
    ct::decode(bytes, &mut Maker { env, trust })
}

/// A fresh binary term holding `bytes`.
pub fn make_binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut nb = NewBinary::new(env, bytes.len());
    nb.as_mut_slice().copy_from_slice(bytes);
    Binary::from(nb).encode(env)
}
