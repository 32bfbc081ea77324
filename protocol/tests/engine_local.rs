//! The local application's documents: `Engine::delete_local` (the
//! browser client's `repo.delete`).

use automerge::transaction::Transactable;
use meridian_protocol::engine::{Event, Millis};
use meridian_protocol::storage::{StorageResult, StorageTask};
use meridian_protocol::testing::TestNode;

#[test]
fn a_locally_deleted_document_leaves_memory_and_the_store_after_its_pending_writes() {
    let mut tab = TestNode::new("tab", |_| {});
    tab.hold_storage = true;
    let doc = tab.engine.create(Millis(0), |tx| tx.put(automerge::ROOT, "n", 1).map(drop)).expect("create");
    tab.engine.change(Millis(0), doc, |tx| tx.put(automerge::ROOT, "n", 2).map(drop)).expect("change");
    tab.drain();
    tab.engine.delete_local(doc);
    tab.drain();
    // The delete runs after the writes already issued, never before.
    let kinds: Vec<bool> = tab.held.iter().map(|(_, t)| matches!(t, StorageTask::DeleteDoc { .. })).collect();
    assert_eq!(kinds.last(), Some(&true), "the delete is the last task");
    assert!(kinds.iter().filter(|d| **d).count() == 1 && kinds.len() > 1, "writes first, then one delete: {kinds:?}");
    assert!(tab.engine.document(&doc).is_none(), "gone from memory at once");
    tab.release();
    assert!(
        matches!(tab.store.execute(&StorageTask::LoadDoc { doc }), StorageResult::Loaded(None)),
        "nothing of it is left in the store"
    );
    // Opening it again finds nothing here (no peer to ask).
    tab.hold_storage = false;
    tab.events.clear();
    tab.engine.find(Millis(1), doc);
    tab.drain();
    assert!(tab.events.iter().any(|e| matches!(e, Event::DocUnavailable { doc: d } if *d == doc)), "{:?}", tab.events);
    assert!(tab.engine.document(&doc).is_none_or(|d| d.get_heads().is_empty()), "no data came back");
}

#[test]
fn an_imported_document_gets_a_fresh_id_and_garbage_leaves_nothing() {
    let mut tab = TestNode::new("tab", |_| {});
    let mut source = automerge::Automerge::new();
    let mut tx = source.transaction();
    tx.put(automerge::ROOT, "from", "elsewhere").expect("put");
    tx.commit();
    let doc = tab.engine.import_new(Millis(0), &source.save()).expect("import");
    tab.drain();
    assert_eq!(tab.engine.document(&doc).map(|d| d.get_heads()), Some(source.get_heads()));
    assert!(
        matches!(tab.store.execute(&StorageTask::LoadDoc { doc }), StorageResult::Loaded(Some(_))),
        "stored like a created document"
    );
    let before = tab.engine.loaded_docs();
    assert!(tab.engine.import_new(Millis(0), b"not automerge").is_err());
    assert_eq!(tab.engine.loaded_docs(), before, "a failed import leaves no document behind");
}
