//! What one operation costs the edge, in instructions (issue 19, item 2):
//! the edge's own code — the sans-IO engine, the codec and the SQLite
//! store, driven in one thread as `NodeRuntime` drives them (storage tasks
//! run as one batch, group commit, after each input) — without the
//! sockets and the async runtime around them. Clients are engines too,
//! in memory; their work is not counted.
//!
//! Every call into the edge goes through [`edge`]; during the measured
//! phase that is [`count_me`], the function `callgrind --toggle-collect`
//! counts, so the totals are the edge's instructions for the measured
//! operations only (setup and clients excluded). `cargo xtask bench cost`
//! runs each scenario under callgrind and divides by the number of
//! operations this prints. Run alone it prints wall time per operation
//! (noisy; the instruction counts are the figure).
//!
//! ```text
//! cargo run --release -p meridian-bench --example cost -- accept|write|fanout|open
//! ```

mod common;

/// The edge's allocator (`meridian-edge`'s `main.rs`): with glibc's, a
/// quarter of a fan-out's instructions were malloc and free.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use automerge::ROOT;
use automerge::transaction::Transactable;
use meridian_node::store::SqliteStore;
use meridian_protocol::engine::{Direction, Engine, EngineConfig, Millis};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId};
use meridian_protocol::storage::MemoryStore;
use meridian_protocol::testing::TestNode;

use common::EdgeIo;

static MEASURING: AtomicBool = AtomicBool::new(false);

/// The measured phase's calls into the edge (callgrind counts inside).
#[inline(never)]
fn count_me(f: &mut dyn FnMut()) {
    // Its own body, so that the linker cannot fold it into `skip_me`.
    CALLS.fetch_add(1, Ordering::Relaxed);
    f()
}

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Setup's calls into the edge (not counted).
#[inline(never)]
fn skip_me(f: &mut dyn FnMut()) {
    f()
}

fn edge<R>(f: impl FnOnce() -> R) -> R {
    let mut f = Some(f);
    let mut out = None;
    let mut call = || out = f.take().map(|f| f());
    if MEASURING.load(Ordering::Relaxed) {
        count_me(&mut call)
    } else {
        skip_me(&mut call)
    }
    out.expect("called once")
}

/// The edge: an engine on a SQLite store, its storage tasks run as one
/// batch after each input (as `NodeRuntime` does).
struct Edge {
    engine: Engine,
    store: SqliteStore,
    now: Millis,
    out: Vec<(ConnId, Vec<u8>)>,
}

impl Edge {
    fn open(path: &std::path::Path) -> Self {
        let store = SqliteStore::open(path).expect("sqlite store");
        let config = EngineConfig::new(PeerId::new("edge"), Some(store.storage_id().clone()));
        Self { engine: Engine::new(config), store, now: Millis(0), out: Vec::new() }
    }

    /// Drives the engine until it has nothing left: outputs, then the
    /// storage batch and its results.
    fn pump(&mut self) {
        loop {
            let mut queue = Vec::new();
            self.engine.drive(self.now, &mut EdgeIo { out: &mut self.out, queue: &mut queue });
            if queue.is_empty() {
                return;
            }
            for (id, result) in self.store.execute_batch(&queue) {
                self.engine.handle_storage_result(self.now, id, result);
            }
        }
    }
}

/// A client (an in-memory engine, like a browser tab) and its connection
/// at the edge.
struct Client {
    node: TestNode,
    conn: ConnId,
    at_edge: ConnId,
}

fn client(e: &mut Edge, name: &str) -> Client {
    let mut node = TestNode::with_config(EngineConfig::new(PeerId::new(name), None), MemoryStore::new());
    let conn = node.engine.handle_connect(node.now, Direction::Outgoing);
    let at_edge = edge(|| e.engine.handle_connect(e.now, Direction::Incoming));
    Client { node, conn, at_edge }
}

/// Delivers frames between the edge and the clients until all are quiet.
fn settle(e: &mut Edge, clients: &mut [Client]) {
    loop {
        let mut moved = false;
        for c in clients.iter_mut() {
            for (conn, frame) in c.node.drain_frames() {
                if conn == c.conn {
                    moved = true;
                    edge(|| {
                        e.engine.handle_frame(e.now, c.at_edge, &frame);
                    });
                }
            }
        }
        edge(|| e.pump());
        let out = std::mem::take(&mut e.out);
        for (conn, frame) in out {
            if let Some(c) = clients.iter_mut().find(|c| c.at_edge == conn) {
                moved = true;
                c.node.engine.handle_frame(c.node.now, c.conn, &frame);
            }
        }
        if !moved {
            return;
        }
    }
}

fn create(c: &mut Client) -> DocumentId {
    c.node.engine.create(c.node.now, |tx| tx.put(ROOT, "n", 0).map(drop)).expect("create")
}

fn change(c: &mut Client, doc: DocumentId, i: i64) {
    c.node.engine.change(c.node.now, doc, |tx| tx.put(ROOT, "n", i).map(drop)).expect("change");
}

/// Runs `f` as the measured phase; prints the operation count.
fn measure(name: &str, ops: u64, unit: &str, f: impl FnOnce()) {
    MEASURING.store(true, Ordering::Relaxed);
    let t = Instant::now();
    f();
    let el = t.elapsed();
    MEASURING.store(false, Ordering::Relaxed);
    println!(
        "{{\"scenario\":\"{name}\",\"ops\":{ops},\"unit\":\"{unit}\",\"wall_us_per_op\":{:.2}}}",
        el.as_secs_f64() * 1e6 / ops as f64
    );
}

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("meridian-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("edge.sqlite3");
    let mut e = Edge::open(&path);
    match scenario.as_str() {
        // A client connects and joins: the edge's accept, handshake and reply.
        "accept" => {
            const N: u64 = 200;
            let mut clients = Vec::new();
            measure("accept", N, "connection accepted", || {
                for i in 0..N {
                    clients.push(client(&mut e, &format!("c{i}")));
                    settle(&mut e, std::slice::from_mut(clients.last_mut().expect("pushed")));
                }
            });
        }
        // One client writes a change at a time, each stored (one SQLite
        // commit) and acknowledged before the next.
        "write" => {
            const C: u64 = 200;
            let mut w = [client(&mut e, "writer")];
            settle(&mut e, &mut w);
            let doc = create(&mut w[0]);
            settle(&mut e, &mut w);
            measure("write", C, "durable write", || {
                for i in 0..C {
                    change(&mut w[0], doc, i as i64 + 1);
                    settle(&mut e, &mut w);
                }
            });
        }
        // One writer, W watchers of the document: each change is stored,
        // sent to every watcher, and their acknowledgements handled.
        "fanout" => {
            const W: u64 = 100;
            const C: u64 = 20;
            let mut cs: Vec<Client> = (0..=W).map(|i| client(&mut e, &format!("c{i}"))).collect();
            settle(&mut e, &mut cs);
            let doc = create(&mut cs[0]);
            settle(&mut e, &mut cs);
            for c in &mut cs[1..] {
                c.node.engine.find(c.node.now, doc);
            }
            settle(&mut e, &mut cs);
            measure("fanout", C * W, "change per watcher", || {
                for i in 0..C {
                    change(&mut cs[0], doc, i as i64 + 1);
                    settle(&mut e, &mut cs);
                }
            });
            let n = |c: &Client| -> Option<i64> {
                let d = c.node.engine.document(&doc)?;
                match automerge::ReadDoc::get(d, ROOT, "n").ok()??.0 {
                    automerge::Value::Scalar(s) => match s.as_ref() {
                        automerge::ScalarValue::Int(i) => Some(*i),
                        _ => None,
                    },
                    _ => None,
                }
            };
            assert!(cs.iter().all(|c| n(c) == Some(C as i64)), "every watcher has every change");
        }
        // D documents stored; a fresh edge on the same file; a client asks
        // for each: the edge loads it from SQLite and sends it.
        "open" => {
            const D: u64 = 200;
            let mut w = [client(&mut e, "writer")];
            settle(&mut e, &mut w);
            let docs: Vec<DocumentId> = (0..D).map(|_| create(&mut w[0])).collect();
            settle(&mut e, &mut w);
            drop(e);
            let mut e = Edge::open(&path);
            let mut r = [client(&mut e, "reader")];
            settle(&mut e, &mut r);
            measure("open", D, "document opened from storage", || {
                for doc in &docs {
                    r[0].node.engine.find(r[0].node.now, *doc);
                    settle(&mut e, &mut r);
                }
            });
            assert!(docs.iter().all(|d| r[0].node.engine.document(d).is_some_and(|d| !d.get_heads().is_empty())));
        }
        other => {
            eprintln!("usage: cost accept|write|fanout|open (not {other:?})");
            std::process::exit(2);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
