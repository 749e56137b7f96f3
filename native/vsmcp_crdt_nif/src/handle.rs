//! Finding a store from a NIF argument: the `StoreResource` that wraps a
//! `vsmcp_crdt_core::store::Store`, the registry of owner pids, and
//! [`resolve`] / [`with_store`].
//!
//! **Handles.** Stores are found by their owner's pid in a registry here
//! (`store_register/2`): a lookup is a read lock and a hash probe, and
//! starting or stopping a store costs nothing VM-wide (a
//! `:persistent_term` erase makes every process scan its heap). Every NIF
//! takes the pid (or the handle itself).
//!
//! The store argument stays a plain `Term` rather than a type implementing
//! `Decoder`: a decoder's failure raises `badarg` where the NIFs answer
//! `{:error, :noproc}`, and a decoded value would own a reference, while
//! [`with_store`] deliberately lends the handle under the read lock
//! without touching its reference count.
//!
//! **Lifecycle.** The resource monitors the owner: if it dies without
//! closing the store (`Process.exit(pid, :kill)`), the entry goes and the
//! store is closed on a background thread. A handle dropped unclosed is
//! closed on a background thread too, never on the scheduler that
//! collected it.

use crate::atoms;
use crate::errors::NifError;
use crate::term::Trust;
use parking_lot::RwLock;
use rustler::{Env, LocalPid, Monitor, Resource, ResourceArc, Term};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use vsmcp_crdt_core::store::Store;

pub struct StoreResource {
    pub(crate) store: Store,
    /// How terms read back from the store are decoded (`sync_opts:
    /// [decode: :safe]` makes it `Remote`).
    pub(crate) trust: Trust,
}

impl Drop for StoreResource {
    fn drop(&mut self) {
        if !self.store.is_closed() {
            close_in_background(self.store.clone());
        }
    }
}

fn close_in_background(store: Store) {
    let _ = std::thread::Builder::new()
        .name("vsmcp-crdt-close".into())
        .spawn(move || {
            let _ = store.close(Duration::from_secs(5));
        });
}

#[rustler::resource_impl]
impl Resource for StoreResource {
    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _mon: Monitor) {
        registry().write().remove(&pid);
        // Closing flushes to disk: not on a scheduler thread.
        close_in_background(self.store.clone());
    }
}

pub type Handle = ResourceArc<StoreResource>;

fn registry() -> &'static RwLock<HashMap<LocalPid, Handle>> {
    static REG: OnceLock<RwLock<HashMap<LocalPid, Handle>>> = OnceLock::new();
    REG.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Register `h` under its owner `pid` and close it when `pid` exits,
/// however it exits; false (and nothing registered) if `owner` is gone.
pub fn register(env: Env, h: &Handle, owner: LocalPid) -> bool {
    registry().write().insert(owner, h.clone());
    let monitored = h.monitor(Some(env), &owner).is_some();
    if !monitored {
        // The owner is already gone: nothing would ever remove the entry.
        registry().write().remove(&owner);
    }
    monitored
}

/// Whether `pid` owns a registered store.
pub fn is_registered(pid: &LocalPid) -> bool {
    registry().read().contains_key(pid)
}

/// Drop every registry entry of `h` (it is being closed).
pub fn unregister(h: &Handle) {
    registry()
        .write()
        .retain(|_, v| !std::ptr::eq::<StoreResource>(&**v, &**h));
}

fn noproc<'e>() -> NifError<'e> {
    NifError::Reason(atoms::noproc())
}

/// Call `f` with the store behind `t` (a registered owner pid, or a
/// handle) without touching the resource's reference count: the registry's
/// read lock is held for the call. Only for calls of microseconds (normal
/// schedulers): registering a store waits for it.
pub fn with_store<'e, R>(t: Term, f: impl FnOnce(&Handle) -> R) -> Result<R, NifError<'e>> {
    if let Ok(pid) = t.decode::<LocalPid>() {
        let reg = registry().read();
        return reg.get(&pid).map(f).ok_or_else(noproc);
    }
    t.decode::<Handle>().map(|h| f(&h)).map_err(|_| noproc())
}

/// The store behind `t`: a registered owner pid, or a handle;
/// `{:error, :noproc}` otherwise.
pub fn resolve<'e>(t: Term) -> Result<Handle, NifError<'e>> {
    if let Ok(pid) = t.decode::<LocalPid>() {
        return registry().read().get(&pid).cloned().ok_or_else(noproc);
    }
    t.decode::<Handle>().map_err(|_| noproc())
}
