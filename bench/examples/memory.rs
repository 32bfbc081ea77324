//! Where an open document's memory goes at the edge (issue 19, item 4):
//! the heap the edge's engine keeps per open document with its client
//! connection (the `connect` scenario's case: each client creates one small
//! document and stays), and how much of it is the automerge document and
//! the peer's sync state. A counting allocator counts what is allocated
//! and freed inside calls into the edge (the engine and its SQLite store;
//! SQLite's own page cache is not on this heap). What the process adds per
//! connection (socket, WebSocket buffers, tasks) is the `connect`
//! scenario's RSS per document minus this. `rest` is the edge's own
//! bookkeeping: what is left once a copied (small) automerge document
//! and a sync state are taken out.
//!
//! ```text
//! cargo run --release -p meridian-bench --example memory [N]
//! ```

mod common;

use std::alloc::System;
use std::cell::Cell;

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, sync};
use meridian_node::store::SqliteStore;
use meridian_protocol::engine::{Direction, Engine, EngineConfig, Millis};
use meridian_protocol::ids::{ConnId, PeerId};
use meridian_protocol::storage::MemoryStore;
use meridian_protocol::testing::TestNode;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

use common::EdgeIo;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

thread_local! {
    /// Bytes allocated and not freed inside [`counted`] calls.
    static HELD: Cell<isize> = const { Cell::new(0) };
}

/// Runs `f` with what it allocates and frees counted (one thread: the
/// clients' work between calls is not).
fn counted<R>(f: impl FnOnce() -> R) -> R {
    let region = Region::new(GLOBAL);
    let r = f();
    let c = region.change();
    let delta = c.bytes_allocated as isize - c.bytes_deallocated as isize + c.bytes_reallocated;
    HELD.with(|h| h.set(h.get() + delta));
    r
}

fn held() -> isize {
    HELD.with(Cell::get)
}

/// The edge: its engine on a SQLite store, storage run after each input.
struct Edge {
    engine: Engine,
    store: SqliteStore,
}

impl Edge {
    /// Hands `frame` from `conn` to the edge and drives it until quiet: the
    /// frames it sends (encoded inside, so freed inside too).
    fn input(&mut self, f: impl FnOnce(&mut Engine)) -> Vec<(ConnId, Vec<u8>)> {
        counted(|| {
            f(&mut self.engine);
            let mut out = Vec::new();
            loop {
                let mut queue = Vec::new();
                self.engine.drive(Millis(0), &mut EdgeIo { out: &mut out, queue: &mut queue });
                if queue.is_empty() {
                    break;
                }
                for (id, result) in self.store.execute_batch(&queue) {
                    self.engine.handle_storage_result(Millis(0), id, result);
                }
            }
            out
        })
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("meridian-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = SqliteStore::open(&dir.join("edge.sqlite3")).expect("sqlite store");
    let config = EngineConfig::new(PeerId::new("edge"), Some(store.storage_id().clone()));
    let mut edge = counted(|| Edge { engine: Engine::new(config), store });

    let before = held();
    let mut saved = Vec::new();
    let mut clients = Vec::new();
    for i in 0..n {
        // A client (in memory, not counted) creates a small document.
        let mut config = EngineConfig::new(PeerId::new(format!("c{i}")), None);
        config.rng_seed = i as u64 + 1;
        let mut c = TestNode::with_config(config, MemoryStore::new());
        let conn = c.engine.handle_connect(c.now, Direction::Outgoing);
        let mut accepted = None;
        let greeting = edge.input(|e| accepted = Some(e.handle_connect(Millis(0), Direction::Incoming)));
        counted(|| drop(greeting));
        let at_edge = accepted.expect("accepted");
        let doc = c
            .engine
            .create(c.now, |tx| {
                tx.put(ROOT, "title", format!("document {i}"))?;
                tx.put(ROOT, "n", i as i64).map(drop)
            })
            .expect("create");
        loop {
            let frames = c.drain_frames();
            if frames.is_empty() {
                break;
            }
            for (_, frame) in frames {
                let replies = edge.input(|e| {
                    e.handle_frame(Millis(0), at_edge, &frame);
                });
                for (to, reply) in &replies {
                    if *to == at_edge {
                        c.engine.handle_frame(c.now, conn, reply);
                    }
                }
                counted(|| drop(replies));
            }
        }
        saved.push(c.engine.document(&doc).expect("its document").save());
        clients.push(c);
    }
    let per_doc = (held() - before) as f64 / n as f64;
    assert_eq!(edge.engine.loaded_docs(), n, "every document is open at the edge");

    // The parts: an automerge document as the edge holds it (loaded from
    // the client's change), and a sync state after one exchange.
    let before = held();
    let docs: Vec<Automerge> = counted(|| saved.iter().map(|b| Automerge::load(b).expect("load")).collect());
    let per_automerge = (held() - before) as f64 / n as f64;
    // As the edge keeps a small one once durable (`DocState::shrink_once`).
    let before = held();
    let copies: Vec<Automerge> = counted(|| docs.iter().map(Automerge::clone).collect());
    let per_copy = (held() - before) as f64 / n as f64;
    let before = held();
    let states: Vec<sync::State> = counted(|| {
        docs.iter()
            .map(|d| {
                use automerge::sync::SyncDoc;
                let mut ours = sync::State::new();
                let mut theirs = sync::State::new();
                let mut empty = Automerge::new();
                let m = d.generate_sync_message(&mut ours).expect("a first message");
                empty.receive_sync_message(&mut theirs, m).expect("receive");
                if let Some(reply) = empty.generate_sync_message(&mut theirs) {
                    let mut d = d.clone();
                    d.receive_sync_message(&mut ours, reply).expect("receive the reply");
                }
                ours
            })
            .collect()
    });
    let per_state = (held() - before) as f64 / n as f64;
    println!(
        "{{\"documents\":{n},\"edge_heap_bytes_per_document\":{per_doc:.0},\"automerge_document_loaded_bytes\":{per_automerge:.0},\"automerge_document_copied_bytes\":{per_copy:.0},\"sync_state_bytes\":{per_state:.0},\"rest_bytes\":{:.0}}}",
        per_doc - per_copy - per_state
    );
    drop((docs, copies, states, clients));
    let _ = std::fs::remove_dir_all(&dir);
}
