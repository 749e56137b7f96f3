//! Fuzz target `digest`: see `harness::digest`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::digest(data));
