//! A peer that has nothing of a document stored as one snapshot gets the
//! stored bytes before the server has loaded the document, and everything
//! ends where it ends when the server loads first: same heads everywhere,
//! the whole document sent once, the peer's own writes kept.
//!
//! The server's storage tasks wait until the test runs them, so each test
//! sees what the server sent while the document was still being read.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ObjType, ROOT, ReadDoc};
use meridian_protocol::codec::{Decoded, Message, decode};
use meridian_protocol::engine::{Direction, EngineConfig, Millis};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId, StorageId};
use meridian_protocol::snapshot::document_heads;
use meridian_protocol::storage::{MemoryStore, StorageTask};

use meridian_protocol::testing::TestNode;

/// A server whose storage tasks queue until [`TestNode::run_storage`].
fn server(store: MemoryStore, answer_from_snapshot: bool) -> TestNode {
    let mut config = EngineConfig::new(PeerId::new("edge"), Some(StorageId::new("edge-store")));
    config.answer_from_snapshot = answer_from_snapshot;
    let mut node = TestNode::with_config(config, store);
    node.hold_storage = true;
    node
}

fn loads_waiting(server: &TestNode) -> usize {
    server.held.iter().filter(|(_, t)| matches!(t, StorageTask::LoadDoc { .. })).count()
}

struct Client {
    node: TestNode,
    /// The connection on the server's side, and on the client's.
    at_server: ConnId,
    conn: ConnId,
    open: bool,
    /// Frames to the server wait here while this is set (a slow uplink).
    held: Option<Vec<Vec<u8>>>,
    /// Sync payloads from the server that carried changes, and those of
    /// them that carried a whole document.
    changes_received: usize,
    whole_docs_received: usize,
}

/// A server and its clients; frames go through [`World::deliver`].
struct World {
    server: TestNode,
    clients: Vec<Client>,
}

impl World {
    fn new(store: MemoryStore, answer_from_snapshot: bool) -> Self {
        Self { server: server(store, answer_from_snapshot), clients: Vec::new() }
    }

    /// `persistent`: the client has a storage id, so the server loads the
    /// sync state it persisted for it.
    fn connect(&mut self, name: &str, persistent: bool) -> usize {
        let mut node = TestNode::new(name, |c| {
            c.rng_seed = self.clients.len() as u64 + 7;
            if !persistent {
                c.storage_id = None;
            }
        });
        let at_server = self.server.engine.handle_connect(Millis(0), Direction::Incoming);
        let conn = node.engine.handle_connect(Millis(0), Direction::Outgoing);
        self.clients.push(Client {
            node,
            at_server,
            conn,
            open: true,
            held: None,
            changes_received: 0,
            whole_docs_received: 0,
        });
        self.deliver();
        self.clients.len() - 1
    }

    fn release(&mut self, i: usize) {
        let c = &mut self.clients[i];
        for frame in c.held.take().unwrap_or_default() {
            self.server.engine.handle_frame(Millis(0), c.at_server, &frame);
        }
    }

    fn disconnect(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.open = false;
        self.server.engine.handle_disconnect(Millis(0), c.at_server);
        c.node.engine.handle_disconnect(Millis(0), c.conn);
    }

    /// Delivers frames both ways until nobody sends; storage the server
    /// has not run stays queued.
    fn deliver(&mut self) {
        loop {
            let mut moved = false;
            for (conn, frame) in self.server.drain_frames() {
                let Some(c) = self.clients.iter_mut().find(|c| c.at_server == conn && c.open) else { continue };
                moved = true;
                if let Ok(Decoded::Message(Message::Sync { data, .. })) = decode(&frame) {
                    let m = automerge::sync::Message::decode(&data).expect("a sync message");
                    if !m.changes.is_empty() {
                        c.changes_received += 1;
                    }
                    if m.changes.iter().any(|c| document_heads(c).is_some()) {
                        c.whole_docs_received += 1;
                    }
                }
                c.node.engine.handle_frame(Millis(0), c.conn, &frame);
            }
            for c in self.clients.iter_mut().filter(|c| c.open) {
                for (_, frame) in c.node.drain_frames() {
                    if let Some(held) = &mut c.held {
                        held.push(frame);
                        continue;
                    }
                    moved = true;
                    self.server.engine.handle_frame(Millis(0), c.at_server, &frame);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs every storage task and delivers every frame until quiet.
    fn settle(&mut self) {
        loop {
            self.deliver();
            if !self.server.run_storage() {
                self.deliver();
                if self.server.held.is_empty() {
                    return;
                }
            }
        }
    }

    fn client_heads(&self, i: usize, doc: DocumentId) -> Vec<ChangeHash> {
        self.clients[i].node.engine.document(&doc).map(Automerge::get_heads).unwrap_or_default()
    }
}

/// A text typed by two authors (so it has two heads), stored as one
/// snapshot, as compaction leaves a document.
fn stored_text() -> (MemoryStore, DocumentId, Automerge) {
    let mut a = Automerge::new().with_actor(ActorId::from(b"author-a".as_slice()));
    let mut tx = a.transaction();
    let text = tx.put_object(ROOT, "text", ObjType::Text).unwrap();
    tx.commit();
    let mut b = a.fork().with_actor(ActorId::from(b"author-b".as_slice()));
    for k in 0..150 {
        let mut tx = a.transaction();
        tx.splice_text(&text, k, 0, "a").unwrap();
        tx.commit();
        let mut tx = b.transaction();
        tx.splice_text(&text, 0, 0, "b").unwrap();
        tx.commit();
    }
    a.merge(&mut b).unwrap();
    assert_eq!(a.get_heads().len(), 2);
    let doc = DocumentId::from_bytes(*b"snapshot-answer!");
    let mut store = MemoryStore::new();
    store.execute(&StorageTask::Compact { doc, snapshot: a.save() });
    (store, doc, a)
}

/// A server on [`stored_text`] and one client (`tab`) that has asked for
/// the document; nothing has been delivered yet.
fn tab_finds_stored_text(answer_from_snapshot: bool, persistent: bool) -> (World, usize, DocumentId, Automerge) {
    let (store, doc, expected) = stored_text();
    let mut w = World::new(store, answer_from_snapshot);
    let c = w.connect("tab", persistent);
    w.clients[c].node.engine.find(Millis(0), doc);
    (w, c, doc, expected)
}

fn text_of(doc: &Automerge) -> String {
    let (_, id) = doc.get(ROOT, "text").unwrap().expect("text object");
    doc.text(&id).unwrap()
}

/// Runs the server's storage one task at a time until `client` holds the
/// document; returns whether the server had loaded it by then.
fn until_client_has_it(w: &mut World, client: usize, doc: DocumentId, want: &[ChangeHash]) -> bool {
    loop {
        w.deliver();
        if w.client_heads(client, doc) == want {
            return w.server.engine.document(&doc).is_some();
        }
        assert!(
            w.server.run_storage(),
            "storage ran out before client {client} got the document: it has {:?}, the server {:?}",
            w.client_heads(client, doc),
            w.server.engine.document(&doc).map(Automerge::get_heads)
        );
    }
}

/// `persistent`: the server reads the peer's sync state too. `slow_reply`:
/// the peer's answer to the snapshot reaches the server only after it has
/// loaded the document (otherwise both its messages are applied together).
#[test]
fn a_fresh_peer_gets_the_snapshot_before_the_server_loads_it() {
    for (persistent, slow_reply) in [(false, false), (true, false), (false, true), (true, true)] {
        let case = format!("persistent {persistent}, slow reply {slow_reply}");
        let (mut w, c, doc, expected) = tab_finds_stored_text(true, persistent);
        w.deliver();
        if slow_reply {
            w.clients[c].held = Some(Vec::new());
        }
        let loaded_first = until_client_has_it(&mut w, c, doc, &expected.get_heads());
        assert!(!loaded_first, "{case}: the server loaded the document before answering");
        assert_eq!(loads_waiting(&w.server), 1, "{case}: the server reads the document again to load it");
        assert_eq!(text_of(w.clients[c].node.engine.document(&doc).unwrap()), text_of(&expected));
        if slow_reply {
            while w.server.run_storage() {}
            w.deliver();
            assert!(w.server.engine.document(&doc).is_some(), "{case}");
            // Until it answers, nobody takes it to hold the document (a
            // hand-off's catch-up reads this).
            assert_eq!(w.server.engine.peer_heads(&doc, w.clients[c].at_server), None, "{case}");
            w.release(c);
        }
        w.settle();
        let server_doc = w.server.engine.document(&doc).expect("loaded after the answer");
        assert_eq!(server_doc.get_heads(), expected.get_heads());
        assert_eq!(w.client_heads(c, doc), expected.get_heads());
        assert_eq!(w.clients[c].changes_received, 1, "{case}: the whole document is sent once");
        assert_eq!(w.server.engine.peer_heads(&doc, w.clients[c].at_server), Some(expected.get_heads()), "{case}");
        assert_eq!(w.server.engine.stats().snapshot_answers, 1);
    }
}

#[test]
fn without_the_snapshot_answer_the_server_loads_first_and_ends_the_same() {
    let (mut w, c, doc, expected) = tab_finds_stored_text(false, true);
    assert!(until_client_has_it(&mut w, c, doc, &expected.get_heads()));
    w.settle();
    assert_eq!(w.clients[c].changes_received, 1);
    assert_eq!(w.server.engine.stats().snapshot_answers, 0);
}

/// The peer writes as soon as it has the document, before the server has
/// loaded it: the write waits, then is applied, stored and acknowledged.
#[test]
fn a_peer_writing_before_the_server_loaded_keeps_its_change() {
    let (mut w, c, doc, expected) = tab_finds_stored_text(true, false);
    assert!(!until_client_has_it(&mut w, c, doc, &expected.get_heads()));
    let node = &mut w.clients[c].node;
    let text = node.engine.document(&doc).unwrap().get(ROOT, "text").unwrap().unwrap().1;
    node.engine.change(Millis(0), doc, |tx| tx.splice_text(&text, 0, 0, "NEW ")).unwrap();
    let mine = w.client_heads(c, doc);
    w.settle();
    let server_doc = w.server.engine.document(&doc).expect("loaded");
    assert_eq!(server_doc.get_heads(), mine);
    assert!(text_of(server_doc).starts_with("NEW "));
    // Durable: a new server on the same store has it.
    let mut reread = World::new(w.server.store.clone(), true);
    let c2 = reread.connect("later", false);
    reread.clients[c2].node.engine.find(Millis(0), doc);
    reread.settle();
    assert_eq!(reread.client_heads(c2, doc), mine);
    assert_eq!(w.clients[c].changes_received, 1);
}

/// Only peers with nothing, and only a document stored as one snapshot:
/// a peer that has an older copy, or a store with changes after the
/// snapshot, is answered after the load as usual.
#[test]
fn peers_with_data_and_documents_with_later_chunks_wait_for_the_load() {
    // A peer with an older copy.
    let (store, doc, expected) = stored_text();
    let mut older = Automerge::new();
    older.apply_changes(expected.get_changes(&[]).into_iter().take(40)).unwrap();
    let mut w = World::new(store, true);
    let c = w.connect("tab", false);
    w.clients[c].node.engine.import(Millis(0), doc, &older.save()).unwrap();
    w.clients[c].node.engine.find(Millis(0), doc);
    assert!(until_client_has_it(&mut w, c, doc, &expected.get_heads()));
    w.settle();
    assert_eq!(w.server.engine.stats().snapshot_answers, 0);

    // A snapshot followed by an incremental chunk.
    let (mut store, doc, mut expected) = stored_text();
    let before = expected.get_heads();
    let mut tx = expected.transaction();
    tx.put(ROOT, "title", "later").unwrap();
    tx.commit();
    store.execute(&StorageTask::AppendChunk { doc, data: expected.save_after(&before) });
    let mut w = World::new(store, true);
    let c = w.connect("tab", false);
    w.clients[c].node.engine.find(Millis(0), doc);
    assert!(until_client_has_it(&mut w, c, doc, &expected.get_heads()));
    w.settle();
    assert_eq!(w.server.engine.stats().snapshot_answers, 0);
}

/// A persistent peer leaves while the server reads its sync state: the
/// fresh peer waiting with it is still answered, and the document loads.
#[test]
fn a_peer_leaving_while_its_state_loads_does_not_hold_up_the_others() {
    let (store, doc, expected) = stored_text();
    let mut w = World::new(store, true);
    let leaving = w.connect("leaving", true);
    let staying = w.connect("staying", false);
    w.clients[leaving].node.engine.find(Millis(0), doc);
    w.clients[staying].node.engine.find(Millis(0), doc);
    w.deliver();
    // The document's read completes; the leaving peer's state has not.
    let first = w.server.held.front().map(|(_, t)| matches!(t, StorageTask::LoadDoc { .. }));
    assert_eq!(first, Some(true));
    w.server.run_storage();
    w.deliver();
    assert_eq!(w.client_heads(staying, doc), Vec::<ChangeHash>::new(), "answered before every state was in");
    w.disconnect(leaving);
    w.deliver();
    assert_eq!(w.client_heads(staying, doc), expected.get_heads(), "answered once the leaving peer left");
    w.settle();
    assert_eq!(w.server.engine.document(&doc).map(Automerge::get_heads), Some(expected.get_heads()));
    assert_eq!(w.server.engine.stats().snapshot_answers, 1);
    assert_eq!(w.clients[staying].changes_received, 1);
}

/// A sync message carrying `change` (whose heads are `heads`) from a
/// client that already has everything before it.
fn push(doc: DocumentId, from: &str, heads: Vec<ChangeHash>, change: Vec<u8>) -> Vec<u8> {
    let mut flags = automerge::sync::MessageFlags::new();
    flags.set(automerge::sync::MessageFlags::SUPPORTS_SYNC_RESET);
    let data = automerge::sync::Message {
        heads: heads.clone(),
        need: Vec::new(),
        have: vec![automerge::sync::Have { last_sync: heads, bloom: automerge::sync::BloomFilter::default() }],
        changes: vec![change].into(),
        flags: Some(flags),
        version: automerge::sync::MessageVersion::V2,
    }
    .encode();
    let message =
        Message::Sync { sender_id: PeerId::new(from), target_id: PeerId::new("edge"), document_id: doc, data };
    meridian_protocol::codec::encode(&message)
}

/// A writer's change waiting ahead of the fresh peer's request is applied
/// first, after the load: the fresh peer gets it as what lies beyond the
/// snapshot, not the whole document a second time.
#[test]
fn a_write_applied_before_the_request_follows_the_snapshot() {
    let (store, doc, expected) = stored_text();
    let mut w = World::new(store, true);
    let writer = w.connect("writer", false);
    let fresh = w.connect("tab", false);
    let mut ahead = expected.fork();
    let mut tx = ahead.transaction();
    tx.put(ROOT, "title", "written meanwhile").unwrap();
    tx.commit();
    let change = ahead.get_last_local_change().unwrap().raw_bytes().to_vec();
    let frame = push(doc, "writer", ahead.get_heads(), change);
    w.server.engine.handle_frame(Millis(0), w.clients[writer].at_server, &frame);
    w.clients[fresh].node.engine.find(Millis(0), doc);
    w.deliver();
    // Its answer to the snapshot reaches the server only after the load
    // (otherwise it is applied too and hides what the server would send).
    w.clients[fresh].held = Some(Vec::new());
    while w.server.run_storage() {
        w.deliver();
    }
    w.release(fresh);
    w.settle();
    assert_eq!(w.server.engine.stats().snapshot_answers, 1);
    assert_eq!(w.client_heads(fresh, doc), ahead.get_heads());
    assert_eq!(w.clients[fresh].whole_docs_received, 1, "the whole document is sent once");
}

/// Stored bytes that do not load stay stored: a write to that document is
/// appended after them, never a snapshot that would replace them.
#[test]
fn a_write_after_a_failed_load_keeps_what_was_stored() {
    let doc = DocumentId::from_bytes(*b"damaged-document");
    let mut store = MemoryStore::new();
    store.execute(&StorageTask::AppendChunk { doc, data: b"not an automerge document".to_vec() });
    let mut w = World::new(store, true);
    let writer = w.connect("writer", false);
    let mut d = Automerge::new();
    let mut tx = d.transaction();
    tx.put(ROOT, "k", 1).unwrap();
    tx.commit();
    let change = d.get_last_local_change().unwrap().raw_bytes().to_vec();
    let frame = push(doc, "writer", d.get_heads(), change);
    w.server.engine.handle_frame(Millis(0), w.clients[writer].at_server, &frame);
    w.settle();
    assert_eq!(w.server.engine.document(&doc).map(Automerge::get_heads), Some(d.get_heads()));
    assert_eq!(w.server.store.chunk_count(&doc), 2, "the damaged bytes and the new change");
}
