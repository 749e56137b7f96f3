//! The option maps of `store_open/1` and `sync_start/2`, read into the
//! core's `StoreConfig` and `EngineConfig`.
//!
//! Both maps are built and range-checked in Elixir
//! (`Vsmcp.CRDT.ContextStore.Options`, `Vsmcp.CRDT.Sync.Peer`); a missing
//! optional key keeps the core's default, and a value of the wrong type
//! here is `badarg`. Not a `#[derive(NifMap)]`: its decoder requires every
//! key and raises a message instead of `badarg`.

use crate::atoms;
use crate::term::{self as tc, Trust};
use rustler::{Atom, Binary, Decoder, NifResult, Term};
use std::path::PathBuf;
use vsmcp_crdt_core::store::{Durability, StoreConfig};
use vsmcp_crdt_core::sync::{EngineConfig, Keyring};

/// The value under the atom `key` of `map`, if there is one.
fn get<'a, T: Decoder<'a>>(map: Term<'a>, key: &str) -> NifResult<Option<T>> {
    let k = Atom::from_str(map.get_env(), key)?;
    match map.map_get(k) {
        Ok(v) => v.decode().map(Some),
        Err(_) => Ok(None),
    }
}

/// `store_open/1`'s argument: the map `ContextStore.Options.to_native/1`
/// builds.
pub struct StoreOptions(pub StoreConfig, pub Trust);

impl<'a> Decoder<'a> for StoreOptions {
    fn decode(map: Term<'a>) -> NifResult<Self> {
        let path: String = get(map, "path")?.ok_or(rustler::Error::BadArg)?;
        let node: Term = get(map, "node_id")?.ok_or(rustler::Error::BadArg)?;
        let node_bytes = tc::encode(node).map_err(|_| rustler::Error::BadArg)?;
        let mut cfg = StoreConfig::new(PathBuf::from(path), &node_bytes);
        if let Some(v) = get(map, "ephemeral")? {
            cfg.ephemeral = v;
        }
        // The legacy names of the replaced ETS/DETS tiers, translated here.
        if let Some(v) = get::<usize>(map, "memory_limit")? {
            cfg.hot_limit = v.max(1);
        }
        if let Some(v) = get::<usize>(map, "ets_limit")? {
            cfg.warm_limit = v;
        }
        if let Some(v) = get::<u32>(map, "access_threshold")? {
            cfg.access_threshold = v.max(1);
        }
        if let Some(v) = get::<u64>(map, "flush_interval")? {
            cfg.flush_interval_ms = v.max(1);
        }
        if let Some(v) = get::<usize>(map, "max_value_bytes")? {
            cfg.max_value_bytes = v;
        }
        if let Some(v) = get::<u64>(map, "max_clock_offset")? {
            cfg.max_clock_offset_ms = v;
        }
        if let Some(v) = get::<usize>(map, "cache_bytes")? {
            cfg.cache_bytes = Some(v);
        }
        if let Some(v) = get::<usize>(map, "memory_budget")? {
            cfg.memory_budget = v;
        }
        if let Some(d) = get::<Atom>(map, "durability")? {
            cfg.durability = if d == atoms::strict() {
                Durability::Strict
            } else if d == atoms::relaxed() {
                Durability::Relaxed
            } else {
                return Err(rustler::Error::BadArg);
            };
        }
        // `sync_opts: [decode: :safe]`: every term read back is decoded as
        // if it came from a peer (see `term::Trust`).
        let trust = match get::<bool>(map, "safe_decode")? {
            Some(true) => Trust::Remote,
            _ => Trust::Local,
        };
        Ok(StoreOptions(cfg, trust))
    }
}

/// `sync_start/2`'s options: `versions` (list of wire versions),
/// `retransmit_ms`, `down_after_ms`, `max_log_bytes`, `collect_after_ms`,
/// `member_expiry_ms`, `attrs` (binary). A function, not a `Decoder`:
/// `sync_start` reads the map only once the store is found, so an unknown
/// store is `{:error, :noproc}` whatever the map holds.
pub fn engine_config(opts: Term) -> NifResult<EngineConfig> {
    let mut cfg = EngineConfig::default();
    if let Some(v) = get::<Vec<u8>>(opts, "versions")? {
        cfg.versions = v;
    }
    if let Some(v) = get::<u64>(opts, "retransmit_ms")? {
        cfg.retransmit_ms = v;
    }
    if let Some(v) = get::<u64>(opts, "down_after_ms")? {
        cfg.down_after_ms = v;
    }
    if let Some(v) = get::<usize>(opts, "max_log_bytes")? {
        cfg.max_log_bytes = v;
    }
    if let Some(v) = get::<u64>(opts, "collect_after_ms")? {
        cfg.collect_after_ms = v;
    }
    if let Some(v) = get::<u64>(opts, "member_expiry_ms")? {
        cfg.member_expiry_ms = v;
    }
    if let Some(v) = get::<Binary>(opts, "attrs")? {
        cfg.attrs = v.as_slice().to_vec();
    }
    if let Some(secrets) = get::<Vec<Binary>>(opts, "secrets")? {
        // The topic: a MAC made for one topic does not pass on another.
        let context = get::<Binary>(opts, "auth_context")?;
        let context = context.as_ref().map_or(&[][..], |b| b.as_slice());
        let secrets: Vec<&[u8]> = secrets.iter().map(|b| b.as_slice()).collect();
        // The Elixir side checked the secrets (`Options`); this is a
        // programmer error.
        let ring = Keyring::new(&secrets, context).map_err(|_| rustler::Error::BadArg)?;
        cfg.auth = Some(ring);
    }
    Ok(cfg)
}
