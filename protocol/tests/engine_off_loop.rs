//! Applying a large document's messages away from the engine's loop
//! (`EngineConfig::apply_off_loop_ops`, `Output::Apply`): while the job
//! runs, the other documents are served, the large one takes local changes
//! and queues its peers' messages, and nothing about it is advertised
//! before its changes are stored.

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ObjType, ROOT, ReadDoc};
use meridian_protocol::engine::{Direction, Millis};
use meridian_protocol::ids::{ConnId, DocumentId};
use meridian_protocol::storage::{StorageResult, StorageTask};
use meridian_protocol::testing::{TestNode, settle};

/// Operations past which the edge applies off the loop in these tests.
const OFF_LOOP: u64 = 2_000;

fn edge() -> TestNode {
    let mut edge = TestNode::new("edge", |c| {
        c.apply_off_loop_ops = OFF_LOOP;
        c.join_timeout_ms = 0;
    });
    edge.hold_applies = true;
    edge
}

fn tab(name: &str) -> TestNode {
    TestNode::new(name, |c| {
        c.join_timeout_ms = 0;
        // Tabs draw different document ids.
        c.rng_seed = name.bytes().map(u64::from).sum();
    })
}

/// `tab` connects to `edge`: (the tab's connection, the edge's).
fn connect(tab: &mut TestNode, edge: &mut TestNode) -> (ConnId, ConnId) {
    let e = edge.engine.handle_connect(edge.now, Direction::Incoming);
    let t = tab.engine.handle_connect(tab.now, Direction::Outgoing);
    settle(tab, t, edge, e);
    (t, e)
}

/// `len` characters that do not compress.
fn text(len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (b'a' + (x >> 59) as u8 % 26) as char
        })
        .collect()
}

/// `node` creates a document holding a text of `len` characters.
fn create_text(node: &mut TestNode, len: usize, seed: u64) -> DocumentId {
    node.engine
        .create(Millis(0), |tx| {
            let t = tx.put_object(ROOT, "text", ObjType::Text)?;
            tx.splice_text(&t, 0, 0, &text(len, seed))
        })
        .unwrap()
}

fn heads(node: &TestNode, doc: DocumentId) -> Vec<ChangeHash> {
    node.engine.document(&doc).map(|d| d.get_heads()).unwrap_or_default()
}

/// The heads the edge's store holds for `doc` (read back as a new load would).
fn stored_heads(edge: &TestNode, doc: DocumentId) -> Vec<ChangeHash> {
    let mut store = edge.store.clone();
    match store.execute(&StorageTask::LoadDoc { doc }) {
        StorageResult::Loaded(Some(bytes)) => automerge::Automerge::load(&bytes).unwrap().get_heads(),
        _ => Vec::new(),
    }
}

/// A tab writes a long text: the edge applies it off the loop. Meanwhile
/// another tab's small document is applied in line and acknowledged, and
/// nothing about the large one leaves the edge.
#[test]
fn a_large_document_is_applied_off_the_loop_while_others_are_served() {
    let mut edge = edge();
    let (mut big_tab, mut small_tab) = (tab("big"), tab("small"));
    let (bt, be) = connect(&mut big_tab, &mut edge);
    let (st, se) = connect(&mut small_tab, &mut edge);

    let big = create_text(&mut big_tab, 5_000, 1);
    settle(&mut big_tab, bt, &mut edge, be);
    assert_eq!(edge.jobs.len(), 1, "the long text goes off the loop");
    assert_eq!(edge.engine.stats().applied_off_loop, 1);
    assert!(heads(&edge, big).is_empty(), "not applied on the loop");
    assert!(stored_heads(&edge, big).is_empty(), "nothing stored yet");
    assert_eq!(edge.engine.peer_heads(&big, be), Some(heads(&big_tab, big)), "the edge heard the tab's heads");

    // The small document goes through while the large one waits.
    let small = small_tab.engine.create(Millis(0), |tx| tx.put(ROOT, "n", 1).map(|_| ())).unwrap();
    settle(&mut small_tab, st, &mut edge, se);
    assert_eq!(heads(&edge, small), heads(&small_tab, small));
    assert_eq!(stored_heads(&edge, small), heads(&small_tab, small));
    assert_eq!(edge.jobs.len(), 1, "the small document stayed on the loop");

    // The tab types on during the job: its message waits for the job.
    let t = big_tab.engine.document(&big).unwrap().get(ROOT, "text").unwrap().unwrap().1;
    big_tab.engine.change(Millis(0), big, |tx| tx.splice_text(&t, 0, 0, "NEW ")).unwrap();
    settle(&mut big_tab, bt, &mut edge, be);
    assert!(heads(&edge, big).is_empty(), "still waiting for the job");

    while edge.run_apply() {
        settle(&mut big_tab, bt, &mut edge, be);
    }
    let want = heads(&big_tab, big);
    assert_eq!(heads(&edge, big), want);
    assert_eq!(stored_heads(&edge, big), want, "stored before it is acknowledged");
    assert_eq!(edge.engine.peer_heads(&big, be), Some(want));
    assert!(edge.engine.stats().applied_off_loop >= 2, "the next message went off the loop too");
    let doc = edge.engine.document(&big).unwrap();
    assert!(doc.text(doc.get(ROOT, "text").unwrap().unwrap().1).unwrap().starts_with("NEW "));
}

/// The edge's own change, made while a job applies a tab's changes to the
/// same document, is kept with them, stored, and reaches the tab.
#[test]
fn a_local_change_made_during_the_job_is_kept() {
    let mut edge = edge();
    let mut tab = tab("tab");
    let (t, e) = connect(&mut tab, &mut edge);
    let doc = create_text(&mut tab, 5_000, 2);
    settle(&mut tab, t, &mut edge, e);
    assert_eq!(edge.jobs.len(), 1);

    edge.engine.change(Millis(0), doc, |tx| tx.put(ROOT, "by", "edge").map(|_| ())).unwrap();
    edge.drain();
    assert_eq!(edge.engine.document(&doc).unwrap().get_heads().len(), 1, "the local change alone, for now");

    assert!(edge.run_apply());
    settle(&mut tab, t, &mut edge, e);
    let merged = heads(&edge, doc);
    assert_eq!(merged.len(), 2, "the tab's change and the edge's, concurrent");
    assert_eq!(stored_heads(&edge, doc), merged);
    assert_eq!(heads(&tab, doc), merged, "the tab got the edge's change");
    let at_tab = tab.engine.document(&doc).unwrap();
    assert_eq!(at_tab.get(ROOT, "by").unwrap().map(|(v, _)| v.to_string()), Some("\"edge\"".to_owned()));
}

/// Small documents stay on the loop.
#[test]
fn below_the_threshold_nothing_goes_off_the_loop() {
    let mut edge = edge();
    let mut tab = tab("tab");
    let (t, e) = connect(&mut tab, &mut edge);
    let doc = create_text(&mut tab, 200, 3);
    settle(&mut tab, t, &mut edge, e);
    assert!(edge.jobs.is_empty());
    assert_eq!(edge.engine.stats().applied_off_loop, 0);
    assert_eq!(stored_heads(&edge, doc), heads(&tab, doc));
}
