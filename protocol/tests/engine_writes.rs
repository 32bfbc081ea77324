//! Messages that arrive while a document's write is in flight, with a store
//! that answers only when the test says so: peers' changes that come in
//! during a commit wait for it and go to the store together as the next
//! one (so a document written faster than one commit at a time is still
//! acknowledged every commit), while local changes in flight never hold
//! peers' changes back.

use automerge::transaction::Transactable;
use std::collections::BTreeSet;

use automerge::{ChangeHash, ROOT, ReadDoc};
use meridian_protocol::codec::{Decoded, Message, decode};
use meridian_protocol::engine::{Direction, EngineConfig, Millis};
use meridian_protocol::ids::{ConnId, DocumentId};
use meridian_protocol::storage::StorageTask;

use meridian_protocol::testing::TestNode;

/// An edge whose storage tasks wait in `held` until released.
struct SlowEdge {
    node: TestNode,
    /// Heads advertised to each connection, in order.
    advertised: Vec<(ConnId, Vec<ChangeHash>)>,
}

impl SlowEdge {
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// An edge whose configuration `adjust` changes first.
    fn with(adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        // No clock here: nothing held for later (co-writers' spacing, its
        // own simulation scenario) would ever go.
        let mut node = TestNode::new("edge", |c| {
            c.co_writer_spacing_ms = 0;
            adjust(c);
        });
        node.hold_storage = true;
        Self { node, advertised: Vec::new() }
    }

    /// Collects outputs: frames to deliver, storage tasks held.
    fn poll(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        let sent = self.node.drain();
        for (conn, message) in &sent {
            if let Message::Sync { data, .. } = message {
                let heads = automerge::sync::Message::decode(data).expect("sync message").heads;
                self.advertised.push((*conn, heads));
            }
        }
        sent.into_iter().map(|(conn, m)| (conn, meridian_protocol::codec::encode(&m))).collect()
    }

    fn appends_held(&self) -> usize {
        self.node.held.iter().filter(|(_, t)| matches!(t, StorageTask::AppendChunk { .. })).count()
    }

    /// Completes the oldest held task.
    fn complete_one(&mut self) {
        self.node.run_storage();
    }

    /// Completes every held task (and those they lead to); the frames sent meanwhile.
    fn complete_all(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        let mut frames = Vec::new();
        while !self.node.held.is_empty() {
            self.complete_one();
            frames.extend(self.poll());
        }
        frames
    }
}

/// A writer client synced with the edge, and its document.
fn writer_with_doc(edge: &mut SlowEdge) -> (TestNode, ConnId, ConnId, DocumentId) {
    let mut client = TestNode::new("writer", |c| {
        c.rng_seed = 7;
        c.co_writer_spacing_ms = 0;
    });
    let doc = client.engine.create(Millis(0), |tx| tx.put(ROOT, "n", 0).map(|_| ())).expect("create");
    let (e_conn, c_conn) = connect_and_settle(edge, &mut client);
    let heads = client.engine.document(&doc).map(|d| d.get_heads());
    assert_eq!(edge.node.engine.durable_heads(&doc), heads, "the edge holds the document");
    (client, e_conn, c_conn, doc)
}

/// Another client, named `name`, that opened `doc` at the edge.
fn joined(edge: &mut SlowEdge, name: &str, seed: u64, doc: DocumentId) -> (TestNode, ConnId, ConnId) {
    let mut client = TestNode::new(name, |c| {
        c.rng_seed = seed;
        c.co_writer_spacing_ms = 0;
    });
    client.engine.find(Millis(0), doc);
    let (e_conn, c_conn) = connect_and_settle(edge, &mut client);
    let heads = client.engine.document(&doc).map(|d| d.get_heads());
    assert_eq!(edge.node.engine.durable_heads(&doc), heads, "{name} has the document");
    (client, e_conn, c_conn)
}

/// Connects `client` to the edge and exchanges messages until both are
/// quiet, completing the edge's storage as it goes. Returns the
/// connection at the edge and at the client.
fn connect_and_settle(edge: &mut SlowEdge, client: &mut TestNode) -> (ConnId, ConnId) {
    let e_conn = edge.node.engine.handle_connect(Millis(0), Direction::Incoming);
    let c_conn = client.engine.handle_connect(Millis(0), Direction::Outgoing);
    for _ in 0..20 {
        for (_, f) in client.drain_frames() {
            edge.node.engine.handle_frame(Millis(0), e_conn, &f);
        }
        let mut frames = edge.poll();
        frames.extend(edge.complete_all());
        for (conn, f) in frames {
            if conn == e_conn {
                client.engine.handle_frame(Millis(0), c_conn, &f);
            }
        }
    }
    (e_conn, c_conn)
}

/// The sync frames a client would send for `k` successive local changes,
/// each sent before the edge answers (a window of changes in flight). They
/// are a second apart, so the client does not hold one for the edge's
/// answer to the last (as a JS automerge-repo client never does).
fn changes_in_flight(client: &mut TestNode, doc: DocumentId, k: i64) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for i in 1..=k {
        client.now = Millis(i as u64 * 1000);
        client.engine.change(client.now, doc, |tx| tx.put(ROOT, "n", i).map(|_| ())).expect("change");
        frames.extend(client.drain_frames().into_iter().map(|(_, f)| f));
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
    edge.node.engine.handle_frame(Millis(0), e_conn, &frames.next().expect("a frame"));
    edge.poll();
    assert_eq!(edge.appends_held(), 1);
    let first = edge.node.engine.document(&doc).map(|d| d.get_heads()).expect("loaded");
    // The others arrive during that commit: they wait.
    for f in frames {
        edge.node.engine.handle_frame(Millis(0), e_conn, &f);
    }
    edge.poll();
    assert_eq!(edge.appends_held(), 1, "no write for the waiting messages yet");
    assert_eq!(edge.node.engine.document(&doc).map(|d| d.get_heads()), Some(first.clone()));
    assert!(edge.advertised.iter().all(|(_, h)| *h != first), "nothing advertised before the commit");
    // The commit completes: the client is acknowledged at the committed
    // heads, then the waiting messages are applied as one write.
    edge.complete_one();
    edge.poll();
    assert_eq!(edge.advertised.last().map(|(c, h)| (*c, h.clone())), Some((e_conn, first)));
    assert_eq!(edge.appends_held(), 1, "the waiting messages went to the store as one write");
    let all = client.engine.document(&doc).map(|d| d.get_heads());
    assert_eq!(edge.node.engine.document(&doc).map(|d| d.get_heads()), all);
    assert_ne!(edge.advertised.last().map(|(_, h)| h.clone()), all, "not advertised before its commit");
    edge.complete_all();
    assert_eq!(edge.advertised.last().map(|(_, h)| h.clone()), all, "acknowledged once committed");
    assert_eq!(edge.node.engine.durable_heads(&doc), all);
}

#[test]
fn local_changes_in_flight_do_not_hold_back_a_peers_changes() {
    let mut edge = SlowEdge::new();
    let (mut client, e_conn, _, doc) = writer_with_doc(&mut edge);
    // The edge's own application writes to the document; its write stays
    // in flight for the rest of the test.
    edge.node.engine.change(Millis(0), doc, |tx| tx.put(ROOT, "local", 1).map(|_| ())).expect("local change");
    edge.poll();
    assert_eq!(edge.appends_held(), 1);
    // A peer's change arrives meanwhile: it is applied at once (and stored).
    let frames = changes_in_flight(&mut client, doc, 1);
    for f in &frames {
        edge.node.engine.handle_frame(Millis(0), e_conn, f);
    }
    edge.poll();
    let peer_head = client.engine.document(&doc).map(|d| d.get_heads()).expect("client doc")[0];
    let edge_doc = edge.node.engine.document(&doc).expect("loaded");
    assert!(edge_doc.get_change_by_hash(&peer_head).is_some(), "the peer's change waited for a local write");
    assert_eq!(edge.appends_held(), 2);
    edge.complete_all();
    // Both are committed and advertised to the peer.
    let durable = edge.node.engine.durable_heads(&doc).expect("durable heads");
    assert_eq!(Some(durable.clone()), edge.node.engine.document(&doc).map(|d| d.get_heads()));
    assert!(durable.len() == 2 && durable.contains(&peer_head), "local and peer changes are both heads");
    assert_eq!(edge.advertised.last().map(|(c, h)| (*c, h.clone())), Some((e_conn, durable)));
}

/// Two writers with changes in flight during a commit, and a reader. The
/// edge applies each writer's waiting messages as one batch (`coalesce`),
/// and everything it sends is byte for byte what it sends when it applies
/// them one by one; everyone converges.
#[test]
fn a_writers_waiting_messages_applied_as_one_batch_get_the_same_answers() {
    let run = |coalesce: bool| {
        let mut edge = SlowEdge::with(|c| c.coalesce_messages = coalesce);
        let (a, a_conn, a_c, doc) = writer_with_doc(&mut edge);
        let (b, b_conn, b_c) = joined(&mut edge, "writer-b", 8, doc);
        let reader = joined(&mut edge, "reader", 9, doc);
        let mut clients = [(a, a_conn, a_c), (b, b_conn, b_c), reader];
        let from_a = changes_in_flight(&mut clients[0].0, doc, 6);
        let from_b = changes_in_flight(&mut clients[1].0, doc, 6);
        assert!(from_a.len() >= 3 && from_b.len() >= 3, "each writer sent several messages");
        // The first message starts a commit; the others, interleaved, wait for it.
        edge.node.engine.handle_frame(Millis(0), a_conn, &from_a[0]);
        let mut transcript = edge.poll();
        let (mut rest_a, mut rest_b) = (from_a[1..].iter(), from_b.iter());
        loop {
            let (fa, fb) = (rest_a.next(), rest_b.next());
            if fa.is_none() && fb.is_none() {
                break;
            }
            for (conn, f) in [(a_conn, fa), (b_conn, fb)] {
                if let Some(f) = f {
                    edge.node.engine.handle_frame(Millis(0), conn, f);
                }
            }
            transcript.extend(edge.poll());
        }
        // Commits complete; answers go out and are answered until all are quiet.
        let mut to_clients = edge.complete_all();
        while !to_clients.is_empty() {
            transcript.extend(to_clients.iter().cloned());
            for (conn, f) in to_clients {
                let (client, _, c_conn) = clients.iter_mut().find(|(_, c, _)| *c == conn).expect("a client");
                client.engine.handle_frame(Millis(0), *c_conn, &f);
            }
            for (client, conn, _) in &mut clients {
                for (_, f) in client.drain_frames() {
                    edge.node.engine.handle_frame(Millis(0), *conn, &f);
                }
            }
            to_clients = edge.poll();
            to_clients.extend(edge.complete_all());
        }
        let heads = edge.node.engine.durable_heads(&doc).expect("durable heads");
        for (client, _, _) in &clients {
            assert_eq!(client.engine.document(&doc).map(|d| d.get_heads()), Some(heads.clone()), "converged");
        }
        assert_eq!(heads.len(), 2, "both writers' last changes are heads");
        (transcript, edge.node.engine.stats().sync_merged)
    };
    let (batched, merged) = run(true);
    let (one_by_one, none) = run(false);
    assert!(merged >= 4, "waiting messages were applied in batches: {merged} merged");
    assert_eq!(none, 0);
    assert_eq!(batched.len(), one_by_one.len(), "as many messages sent");
    for (i, (x, y)) in batched.iter().zip(&one_by_one).enumerate() {
        assert_eq!(canonical(x), canonical(y), "message {i} differs");
    }
}

/// What a sent frame means, for comparing two runs: the frame itself, but
/// for a sync message its heads, needs, haves and the hashes of the
/// changes it carries. (A batch changes the order in which the edge applied
/// two writers' changes, and with it how a whole-document message encodes
/// the same changes.)
fn canonical((conn, frame): &(ConnId, Vec<u8>)) -> (ConnId, String) {
    let Ok(Decoded::Message(Message::Sync { data, .. })) = decode(frame) else {
        return (*conn, format!("{frame:?}"));
    };
    let m = automerge::sync::Message::decode(&data).expect("a sync message");
    let mut hashes = BTreeSet::new();
    for chunk in m.changes.iter() {
        match automerge::Change::from_bytes(chunk.to_vec()) {
            Ok(c) => {
                hashes.insert(c.hash());
            }
            Err(_) => {
                let doc = automerge::Automerge::load(chunk).expect("a change or a document");
                hashes.extend(doc.get_changes(&[]).iter().map(|c| c.hash()));
            }
        }
    }
    let have: Vec<_> = m.have.iter().map(|h| (h.last_sync.clone(), h.bloom.to_bytes())).collect();
    (*conn, format!("heads {:?} need {:?} have {have:?} changes {hashes:?}", m.heads, m.need))
}
