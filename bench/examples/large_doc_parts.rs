//! Where a server's time goes when a fresh peer fetches the large document
//! (300,000 text operations) after a restart: loading the stored snapshot,
//! then generating the first sync message (for a peer that has nothing,
//! a save of the whole document). The measurement behind answering fresh
//! peers from the stored snapshot before the load (ARCHITECTURE.md, "A
//! fresh peer gets the stored snapshot first"): on 2026-11-27 the load took
//! 430-550 ms (as long without checking the heads), the generate 65-85 ms,
//! against about 1 ms to read the snapshot from SQLite.
//!
//! `cargo run --release -p meridian-bench --example large_doc_parts`

use std::time::Instant;

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, LoadOptions, VerificationMode};
#[path = "../src/workload.rs"]
#[allow(dead_code)]
mod workload;

fn main() {
    let doc = workload::text_history(1, 300_000, 10);
    let t = Instant::now();
    let saved = doc.save();
    println!("save: {:?} ({} KiB)", t.elapsed(), saved.len() / 1024);
    for _ in 0..3 {
        let t = Instant::now();
        let loaded = Automerge::load(&saved).expect("loads");
        let load = t.elapsed();
        let t = Instant::now();
        let options = LoadOptions::new().verification_mode(VerificationMode::DontCheck);
        Automerge::load_with_options(&saved, options).expect("loads");
        let unchecked = t.elapsed();
        // A fresh peer's request (empty heads) makes the server's first
        // message carry the whole document.
        let request = Automerge::new().generate_sync_message(&mut sync::State::new()).expect("a request");
        let mut state = sync::State::new();
        let mut server = loaded.clone();
        server.receive_sync_message(&mut state, request).expect("applies");
        let t = Instant::now();
        let first = server.generate_sync_message(&mut state).expect("the document").encode();
        let generate = t.elapsed();
        println!(
            "load {load:?} (without checking heads {unchecked:?}), first message {generate:?} ({} KiB)",
            first.len() / 1024
        );
    }
}
