//! Changes a peer lost after we sent them: the simulation found a document
//! evicted while a change from a client waited in automerge's queue for its
//! dependency (queued changes live only in memory), and the client, which
//! never sends a change twice on one connection, never sent it again. Both
//! sides now prevent it: a peer that says it needs a change we sent gets it
//! again, and a document with queued changes is not evicted.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use meridian_protocol::codec::{self, Decoded, Message, PROTOCOL_V1};
use meridian_protocol::engine::{Direction, Event, Millis};
use meridian_protocol::ids::{DocumentId, PeerId};

use meridian_protocol::testing::TestNode;

fn sync_frames(frames: &[(meridian_protocol::ids::ConnId, Vec<u8>)]) -> Vec<sync::Message> {
    frames
        .iter()
        .filter_map(|(_, f)| match codec::decode(f) {
            Ok(Decoded::Message(Message::Sync { data, .. })) => sync::Message::decode(&data).ok(),
            _ => None,
        })
        .collect()
}

#[test]
fn a_peer_that_needs_a_change_we_sent_gets_it_again() {
    let mut edge = TestNode::new("edge", |c| c.track_demand = false);
    let doc = edge.engine.create(Millis(0), |tx| tx.put(ROOT, "k", "v").map(|_| ())).unwrap();
    edge.drain_frames();
    let conn = edge.engine.handle_connect(Millis(0), Direction::Incoming);
    let peer = PeerId::new("client");
    let join = Message::Join {
        sender_id: peer.clone(),
        peer_metadata: Default::default(),
        supported_protocol_versions: Some(vec![PROTOCOL_V1.into()]),
    };
    edge.engine.handle_frame(Millis(0), conn, &codec::encode(&join));
    edge.drain_frames();
    let send = |edge: &mut TestNode, doc: DocumentId, data: Vec<u8>, request: bool| {
        let (sender_id, target_id, document_id) = (peer.clone(), PeerId::new("edge"), doc);
        let m = if request {
            Message::Request { sender_id, target_id, document_id, data }
        } else {
            Message::Sync { sender_id, target_id, document_id, data }
        };
        edge.engine.handle_frame(Millis(1), conn, &codec::encode(&m));
        edge.drain_frames()
    };
    // The client fetches the document and they settle...
    let (mut client, mut state) = (Automerge::new(), sync::State::new());
    let mut reply = Some((client.generate_sync_message(&mut state).unwrap().encode(), true));
    while let Some((data, request)) = reply.take() {
        for m in sync_frames(&send(&mut edge, doc, data, request)) {
            client.receive_sync_message(&mut state, m).unwrap();
        }
        reply = client.generate_sync_message(&mut state).map(|m| (m.encode(), false));
    }
    assert_eq!(client.get_heads(), edge.engine.document(&doc).unwrap().get_heads());
    // ...then the edge's next change reaches the client, which loses it
    // (it keeps only the heads), so it needs it.
    edge.engine.change(Millis(2), doc, |tx| tx.put(ROOT, "k", "w")).unwrap();
    let sent = sync_frames(&edge.drain_frames());
    assert!(sent.iter().any(|m| !m.changes.is_empty()), "the change is sent");
    for mut m in sent {
        m.changes = Vec::<Vec<u8>>::new().into();
        client.receive_sync_message(&mut state, m).unwrap();
    }
    let need = client.generate_sync_message(&mut state).unwrap();
    assert!(!need.need.is_empty(), "the client needs the edge's new head");
    let again = sync_frames(&send(&mut edge, doc, need.encode(), false));
    assert!(again.iter().any(|m| !m.changes.is_empty()), "the needed change is sent again: {again:?}");
}

#[test]
fn a_document_with_a_peers_change_waiting_for_its_dependency_is_not_evicted() {
    let mut edge = TestNode::new("edge", |c| c.idle_evict_after_ms = 1_000);
    let mut source = Automerge::new();
    let mut tx = source.transaction();
    tx.put(ROOT, "a", 1).unwrap();
    tx.commit();
    let mut tx = source.transaction();
    tx.put(ROOT, "b", 2).unwrap();
    tx.commit();
    let second = source.get_last_local_change().unwrap();
    let doc = DocumentId::from_bytes([7; 16]);
    // A client sends the second change alone (its first is lost on the way).
    let conn = edge.accept("client", Default::default());
    let data = sync::Message {
        heads: vec![second.hash()],
        need: Vec::new(),
        have: Vec::new(),
        changes: vec![second.raw_bytes().to_vec()].into(),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode();
    let sync =
        Message::Sync { sender_id: PeerId::new("client"), target_id: PeerId::new("edge"), document_id: doc, data };
    edge.receive(conn, &codec::encode(&sync));
    let evicted = |edge: &mut TestNode, now: u64| {
        edge.events.clear();
        edge.now = Millis(now);
        edge.engine.handle_timeout(Millis(now));
        edge.drain();
        edge.events.iter().any(|e| matches!(e, Event::Evicted { .. }))
    };
    assert!(!evicted(&mut edge, 1_000), "the queued change would be lost while its sender believes it delivered");
    // Once the client is gone, a reconnecting one starts afresh: it may go.
    edge.engine.handle_disconnect(Millis(1_500), conn);
    edge.drain();
    assert!(evicted(&mut edge, 2_000), "without its sender it leaves as usual");
}
