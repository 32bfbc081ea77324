//! Feeds arbitrary bytes to `codec::decode`. It must never panic, and
//! whatever it accepts must re-encode to a frame that decodes to the same
//! message (see `harness/decode.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/decode.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::run(data));
