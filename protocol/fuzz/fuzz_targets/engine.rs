//! Drives one sync engine with an input read as a program of connects,
//! joins, disconnects, sync messages, raw and golden frames, ephemeral
//! messages, storage completions, ticks and local operations from several
//! peers with and without grants; see `harness/engine.rs` for the
//! operations and the invariants checked (a violation panics).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/engine.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::run(data));
