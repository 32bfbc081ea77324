//! A hub sharing its store with other hubs (issue 16): changes another hub
//! committed (told by the bus, or found by reading the store again) are
//! applied, synced to this hub's edges, and never written again.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ROOT, ReadDoc};
use meridian_protocol::engine::{Direction, Millis};
use meridian_protocol::ids::{ConnId, DocumentId};
use meridian_protocol::storage::StorageTask;
use meridian_protocol::testing::{TestNode, settle};

/// A hub and an edge linked to it; the edge created a document, stored at
/// the hub: (hub, edge, hub's conn, edge's conn, the document).
fn hub_with_doc(
    adjust: impl FnOnce(&mut meridian_protocol::engine::EngineConfig),
) -> (TestNode, TestNode, ConnId, ConnId, DocumentId) {
    let mut hub = TestNode::new("hub", |c| {
        c.expects_upstream = false;
        c.join_timeout_ms = 0;
        adjust(c);
    });
    let mut edge = TestNode::new("edge", |c| {
        c.join_timeout_ms = 0;
        c.rng_seed = 7;
    });
    let h = hub.engine.handle_connect(hub.now, Direction::Incoming);
    let e = edge.engine.handle_connect(edge.now, Direction::Outgoing);
    settle(&mut edge, e, &mut hub, h);
    let doc = edge.engine.create(Millis(0), |tx| tx.put(ROOT, "by", "edge").map(|_| ())).unwrap();
    settle(&mut edge, e, &mut hub, h);
    (hub, edge, h, e, doc)
}

/// Another hub's change to `doc`, committed to `hub`'s store (as that hub
/// would, on the shared database): its bytes.
fn commit_elsewhere(hub: &mut TestNode, doc: DocumentId, key: &str) -> Vec<u8> {
    let mut other = AutoCommit::load(&hub.engine.document(&doc).unwrap().save()).unwrap();
    other.put(ROOT, key, "another hub").unwrap();
    other.commit();
    let bytes = other.get_last_local_change().unwrap().raw_bytes().to_vec();
    hub.store.execute(&StorageTask::AppendChunk { doc, data: bytes.clone() });
    bytes
}

fn heads(node: &TestNode, doc: DocumentId) -> Vec<ChangeHash> {
    node.engine.document(&doc).map(|d| d.get_heads()).unwrap_or_default()
}

fn has_key(node: &TestNode, doc: DocumentId, key: &str) -> bool {
    node.engine.document(&doc).is_some_and(|d| d.get(ROOT, key).unwrap().is_some())
}

#[test]
fn a_change_another_hub_stored_reaches_our_edges_and_is_not_written_again() {
    let (mut hub, mut edge, h, e, doc) = hub_with_doc(|_| {});
    let bytes = commit_elsewhere(&mut hub, doc, "from_h2");
    let chunks = hub.store.chunk_count(&doc);

    hub.engine.handle_stored_elsewhere(hub.now, doc, bytes);
    settle(&mut edge, e, &mut hub, h);
    assert!(has_key(&edge, doc, "from_h2"), "the edge got the other hub's change");
    assert_eq!(heads(&edge, doc), heads(&hub, doc));
    assert_eq!(hub.store.chunk_count(&doc), chunks, "nothing written again");
    assert_eq!(hub.engine.stats().stored_elsewhere, 1);
}

/// After a gap (the bus lost a message), reading the store again finds
/// what was missed.
#[test]
fn reading_the_store_again_finds_what_the_bus_missed() {
    let (mut hub, mut edge, h, e, doc) = hub_with_doc(|_| {});
    commit_elsewhere(&mut hub, doc, "missed");
    let chunks = hub.store.chunk_count(&doc);
    hub.engine.refresh_from_store(hub.now, doc);
    settle(&mut edge, e, &mut hub, h);
    assert!(has_key(&edge, doc, "missed"));
    assert_eq!(hub.store.chunk_count(&doc), chunks, "nothing written again");
}

/// A change arriving while the document applies messages off the loop
/// waits for that, then goes through.
#[test]
fn a_change_stored_elsewhere_waits_while_the_document_is_busy() {
    let (mut hub, mut edge, h, e, doc) = hub_with_doc(|c| c.apply_off_loop_ops = 1);
    hub.hold_applies = true;
    // The edge writes: the hub applies it off the loop (held).
    edge.engine.change(Millis(0), doc, |tx| tx.put(ROOT, "edge_again", 1).map(|_| ())).unwrap();
    settle(&mut edge, e, &mut hub, h);
    assert_eq!(hub.jobs.len(), 1);
    let bytes = commit_elsewhere(&mut hub, doc, "during_job");
    hub.engine.handle_stored_elsewhere(hub.now, doc, bytes);
    hub.drain();
    assert!(!has_key(&hub, doc, "during_job"), "waits for the job");
    while hub.run_apply() {
        settle(&mut edge, e, &mut hub, h);
    }
    settle(&mut edge, e, &mut hub, h);
    assert!(has_key(&hub, doc, "during_job") && has_key(&hub, doc, "edge_again"));
    assert!(has_key(&edge, doc, "during_job"));
    assert_eq!(heads(&edge, doc), heads(&hub, doc));
}

/// A document the hub evicted while an edge still holds it: another hub's
/// change (told by the bus, or found after a gap) loads it, so it reaches
/// the edge (found by the simulation of several hubs: the edge stayed
/// behind until it wrote again).
#[test]
fn an_evicted_document_an_edge_holds_is_loaded_for_a_change_stored_elsewhere() {
    for by_bus in [true, false] {
        let (mut hub, mut edge, h, e, doc) = hub_with_doc(|c| c.idle_evict_after_ms = 1_000);
        hub.now = Millis(5_000);
        hub.engine.handle_timeout(hub.now);
        hub.drain();
        assert!(hub.engine.document(&doc).is_none(), "evicted at the hub");
        let mut other = AutoCommit::load(&edge.engine.document(&doc).unwrap().save()).unwrap();
        other.put(ROOT, "while_evicted", "another hub").unwrap();
        other.commit();
        let bytes = other.get_last_local_change().unwrap().raw_bytes().to_vec();
        hub.store.execute(&StorageTask::AppendChunk { doc, data: bytes.clone() });
        if by_bus {
            hub.engine.handle_stored_elsewhere(hub.now, doc, bytes);
        } else {
            hub.engine.refresh_all_from_store(hub.now);
        }
        settle(&mut edge, e, &mut hub, h);
        assert!(has_key(&edge, doc, "while_evicted"), "the edge got it (by bus: {by_bus})");
    }
}

/// A document not in memory, that no peer holds, is left alone: its next
/// load reads the store.
#[test]
fn a_document_not_in_memory_is_left_alone() {
    let mut hub = TestNode::new("hub", |c| c.expects_upstream = false);
    let doc = DocumentId::from_bytes([5; 16]);
    hub.engine.handle_stored_elsewhere(hub.now, doc, vec![1, 2, 3]);
    hub.engine.refresh_from_store(hub.now, doc);
    assert!(hub.drain().is_empty());
    assert_eq!(hub.engine.loaded_docs(), 0);
    assert_eq!(hub.engine.stats().stored_elsewhere, 0);
}
