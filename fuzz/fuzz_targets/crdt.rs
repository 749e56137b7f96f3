//! Fuzz target `crdt`: see `harness::crdt`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::crdt(data));
