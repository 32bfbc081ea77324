//! Messages that arrive while a document's write is in flight, with a store
//! that answers only when the test says so: peers' changes that come in
//! during a commit wait for it and go to the store together as the next
//! one (so a document written faster than one commit at a time is still
//! acknowledged every commit), while local changes in flight never hold
//! peers' changes back.

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ROOT, ReadDoc};
use meridian_protocol::codec::{Decoded, Message, decode};
use meridian_protocol::engine::{Direction, Engine, EngineConfig, Millis, Output};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId, StorageId};
use meridian_protocol::storage::{MemoryStore, StorageTask, StorageTaskId};

mod common;
use common::Node;

/// An edge whose storage tasks wait in `held` until released.
struct SlowEdge {
    engine: Engine,
    store: MemoryStore,
    held: Vec<(StorageTaskId, StorageTask)>,
    /// Heads advertised to each connection, in order.
    advertised: Vec<(ConnId, Vec<ChangeHash>)>,
}

impl SlowEdge {
    fn new() -> Self {
        let config = EngineConfig::new(PeerId::new("edge"), Some(StorageId::new("edge-store")));
        Self { engine: Engine::new(config), store: MemoryStore::new(), held: Vec::new(), advertised: Vec::new() }
    }

    /// Collects outputs: frames to deliver, storage tasks held.
    fn poll(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Send { conn, message } => {
                    if let Message::Sync { data, .. } = &message {
                        let heads = automerge::sync::Message::decode(data).expect("sync message").heads;
                        self.advertised.push((conn, heads));
                    }
                    frames.push((conn, meridian_protocol::codec::encode(&message)));
                }
                Output::Storage { id, task } => self.held.push((id, task)),
                Output::Close { .. } | Output::Event(_) => {}
            }
        }
        frames
    }

    fn appends_held(&self) -> usize {
        self.held.iter().filter(|(_, t)| matches!(t, StorageTask::AppendChunk { .. })).count()
    }

    /// Completes the oldest held task.
    fn complete_one(&mut self) {
        let (id, task) = self.held.remove(0);
        let result = self.store.execute(&task);
        self.engine.handle_storage_result(Millis(0), id, result);
    }

    /// Completes every held task (and those they lead to); the frames sent meanwhile.
    fn complete_all(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        let mut frames = Vec::new();
        while !self.held.is_empty() {
            self.complete_one();
            frames.extend(self.poll());
        }
        frames
    }
}

/// A writer client synced with the edge, and its document.
fn writer_with_doc(edge: &mut SlowEdge) -> (Node, ConnId, ConnId, DocumentId) {
    let mut client = Node::with("writer", |c| c.rng_seed = 7);
    let e_conn = edge.engine.handle_connect(Millis(0), Direction::Incoming);
    let c_conn = client.engine.handle_connect(Millis(0), Direction::Outgoing);
    let doc = client.engine.create(Millis(0), |tx| tx.put(ROOT, "n", 0).map(|_| ())).expect("create");
    // Handshake and upload, completing the edge's storage as it goes.
    for _ in 0..20 {
        for (_, f) in client.drain() {
            edge.engine.handle_frame(Millis(0), e_conn, &f);
        }
        let mut frames = edge.poll();
        frames.extend(edge.complete_all());
        for (_, f) in frames {
            client.engine.handle_frame(Millis(0), c_conn, &f);
        }
    }
    let heads = client.engine.document(&doc).map(|d| d.get_heads());
    assert_eq!(edge.engine.durable_heads(&doc), heads, "the edge holds the document");
    (client, e_conn, c_conn, doc)
}

/// The sync frames a client would send for `k` successive local changes,
/// each sent before the edge answers (a window of changes in flight).
fn changes_in_flight(client: &mut Node, doc: DocumentId, k: i64) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for i in 1..=k {
        client.engine.change(Millis(0), doc, |tx| tx.put(ROOT, "n", i).map(|_| ())).expect("change");
        frames.extend(client.drain().into_iter().map(|(_, f)| f));
    }
    frames
}

fn sync_frames(frames: &[Vec<u8>]) -> usize {
    frames.iter().filter(|f| matches!(decode(f), Ok(Decoded::Message(Message::Sync { .. })))).count()
}

#[test]
fn changes_arriving_during_a_commit_wait_and_are_stored_together_then_acknowledged() {
    let mut edge = SlowEdge::new();
    let (mut client, e_conn, _, doc) = writer_with_doc(&mut edge);
    let frames = changes_in_flight(&mut client, doc, 5);
    assert!(sync_frames(&frames) >= 2, "the client sent its changes as several messages");
    let mut frames = frames.into_iter();
    // The first message is applied and its write issued at once.
    edge.engine.handle_frame(Millis(0), e_conn, &frames.next().expect("a frame"));
    edge.poll();
    assert_eq!(edge.appends_held(), 1);
    let first = edge.engine.document(&doc).map(|d| d.get_heads()).expect("loaded");
    // The others arrive during that commit: they wait.
    for f in frames {
        edge.engine.handle_frame(Millis(0), e_conn, &f);
    }
    edge.poll();
    assert_eq!(edge.appends_held(), 1, "no write for the waiting messages yet");
    assert_eq!(edge.engine.document(&doc).map(|d| d.get_heads()), Some(first.clone()));
    assert!(edge.advertised.iter().all(|(_, h)| *h != first), "nothing advertised before the commit");
    // The commit completes: the client is acknowledged at the committed
    // heads, then the waiting messages are applied as one write.
    edge.complete_one();
    edge.poll();
    assert_eq!(edge.advertised.last().map(|(c, h)| (*c, h.clone())), Some((e_conn, first)));
    assert_eq!(edge.appends_held(), 1, "the waiting messages went to the store as one write");
    let all = client.engine.document(&doc).map(|d| d.get_heads());
    assert_eq!(edge.engine.document(&doc).map(|d| d.get_heads()), all);
    assert_ne!(edge.advertised.last().map(|(_, h)| h.clone()), all, "not advertised before its commit");
    edge.complete_all();
    assert_eq!(edge.advertised.last().map(|(_, h)| h.clone()), all, "acknowledged once committed");
    assert_eq!(edge.engine.durable_heads(&doc), all);
}

#[test]
fn local_changes_in_flight_do_not_hold_back_a_peers_changes() {
    let mut edge = SlowEdge::new();
    let (mut client, e_conn, _, doc) = writer_with_doc(&mut edge);
    // The edge's own application writes to the document; its write stays
    // in flight for the rest of the test.
    edge.engine.change(Millis(0), doc, |tx| tx.put(ROOT, "local", 1).map(|_| ())).expect("local change");
    edge.poll();
    assert_eq!(edge.appends_held(), 1);
    // A peer's change arrives meanwhile: it is applied at once (and stored).
    let frames = changes_in_flight(&mut client, doc, 1);
    for f in &frames {
        edge.engine.handle_frame(Millis(0), e_conn, f);
    }
    edge.poll();
    let peer_head = client.engine.document(&doc).map(|d| d.get_heads()).expect("client doc")[0];
    let edge_doc = edge.engine.document(&doc).expect("loaded");
    assert!(edge_doc.get_change_by_hash(&peer_head).is_some(), "the peer's change waited for a local write");
    assert_eq!(edge.appends_held(), 2);
    edge.complete_all();
    // Both are committed and advertised to the peer.
    let durable = edge.engine.durable_heads(&doc).expect("durable heads");
    assert_eq!(Some(durable.clone()), edge.engine.document(&doc).map(|d| d.get_heads()));
    assert!(durable.len() == 2 && durable.contains(&peer_head), "local and peer changes are both heads");
    assert_eq!(edge.advertised.last().map(|(c, h)| (*c, h.clone())), Some((e_conn, durable)));
}
