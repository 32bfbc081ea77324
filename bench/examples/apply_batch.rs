//! What one automerge apply call costs with 1, 4, 16 or 32 changes in it,
//! on a text typed word by word (2,000 changes, 12 KB): the measurement
//! behind applying a peer's waiting changes as one batch (ARCHITECTURE.md,
//! "A peer's changes are applied in batches").
//!
//! `cargo run --release -p meridian-bench --example apply_batch`

use automerge::{Automerge, ObjType, ROOT, transaction::Transactable};
use std::time::Instant;
fn main() {
    let mut w = Automerge::new();
    let mut tx = w.transaction();
    let text = tx.put_object(ROOT, "text", ObjType::Text).unwrap();
    tx.commit();
    let mut len = 0;
    let mut changes = vec![w.get_changes(&[]).into_iter().next().unwrap().raw_bytes().to_vec()];
    for _ in 0..2000 {
        let mut tx = w.transaction();
        tx.splice_text(&text, len, 0, "quick ").unwrap();
        tx.commit();
        len += 6;
        changes.push(w.get_last_local_change().unwrap().raw_bytes().to_vec());
    }
    for batch in [1usize, 4, 16, 32] {
        let t = Instant::now();
        let mut d = Automerge::new();
        for chunk in changes.chunks(batch) {
            d.load_incremental(&chunk.concat()).unwrap();
        }
        let el = t.elapsed();
        assert_eq!(d.get_heads(), w.get_heads());
        println!("batch {batch}: {:.1} us/change", el.as_secs_f64() * 1e6 / changes.len() as f64);
    }
}
