//! Writes the large text document of the benchmarks (`workload::text_history`)
//! and one edit to it by another actor, for the browser benchmark
//! (`cargo xtask bench browser`, `tests/js/browser-bench.mjs`):
//! `DIR/doc.bin` (the document saved) and `DIR/edit.bin` (the edit's change).
//!
//! `cargo run --release -p meridian-bench --example text_doc -- OPS DIR`

use automerge::transaction::Transactable;
use automerge::{ActorId, ReadDoc};
#[path = "../src/workload.rs"]
#[allow(dead_code)]
mod workload;

fn main() {
    let mut args = std::env::args().skip(1);
    let ops: usize = args.next().and_then(|a| a.parse().ok()).expect("usage: text_doc OPS DIR");
    let dir = std::path::PathBuf::from(args.next().expect("usage: text_doc OPS DIR"));
    let doc = workload::text_history(1, ops, 10);
    let mut other = doc.fork().with_actor(ActorId::from(&[0xed; 16][..]));
    let (_, text) = other.get(automerge::ROOT, "text").expect("reads").expect("a text");
    let middle = other.length(&text) / 2;
    let mut tx = other.transaction();
    tx.splice_text(&text, middle, 0, "remote edit").expect("splice in range");
    tx.commit();
    let edit = other.get_last_local_change().expect("the edit").raw_bytes().to_vec();
    std::fs::create_dir_all(&dir).expect("the output folder");
    std::fs::write(dir.join("doc.bin"), doc.save()).expect("doc.bin");
    std::fs::write(dir.join("edit.bin"), edit).expect("edit.bin");
    println!("{{\"ops\":{ops},\"length\":{},\"changes\":{}}}", other.length(&text), doc.get_changes(&[]).len());
}
