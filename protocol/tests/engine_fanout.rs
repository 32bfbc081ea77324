//! One document, many peers: the server generates one automerge sync
//! message per group of peers in the same sync state and hands the others
//! a copy. These tests check that peers served from that cache end up
//! exactly where peers served fresh do: in step, in lagging groups, and
//! fresh peers fetching a whole document one after another.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ROOT, ReadDoc};
use meridian_protocol::codec::{Decoded, Message, decode};
use meridian_protocol::engine::{Direction, Millis};
use meridian_protocol::ids::{ConnId, DocumentId};

use meridian_protocol::testing::TestNode;

/// A server with client engines, each on its own connection.
struct Star {
    server: TestNode,
    clients: Vec<(TestNode, ConnId, ConnId)>,
    /// Clients whose frames from the server wait in `held` (a slow link).
    held: BTreeMap<usize, Vec<Vec<u8>>>,
    /// Sync payloads the server sent, per client.
    received: Vec<Vec<Vec<u8>>>,
}

impl Star {
    /// `share`: the server hands peers in the same sync state one message.
    fn new(n: usize, share: bool) -> Self {
        // No clock here: nothing held for later (co-writers' spacing, its
        // own simulation scenario) would ever go.
        let server = TestNode::new("edge", |c| {
            c.share_generated = share;
            c.co_writer_spacing_ms = 0;
        });
        let mut star = Self { server, clients: Vec::new(), held: BTreeMap::new(), received: vec![] };
        for _ in 0..n {
            star.add_client();
        }
        star
    }

    /// Connects one more client (each with its own actor ids).
    fn add_client(&mut self) -> usize {
        let i = self.clients.len();
        let mut client = TestNode::new(&format!("client-{i}"), |c| {
            c.rng_seed = i as u64 + 1;
            c.co_writer_spacing_ms = 0;
        });
        let s_conn = self.server.engine.handle_connect(Millis(0), Direction::Incoming);
        let c_conn = client.engine.handle_connect(Millis(0), Direction::Outgoing);
        self.clients.push((client, s_conn, c_conn));
        self.received.push(Vec::new());
        self.settle();
        i
    }

    fn hold(&mut self, client: usize) {
        self.held.entry(client).or_default();
    }

    /// Delivers what `client` missed and lets it talk again.
    fn release(&mut self, client: usize) {
        for frame in self.held.remove(&client).unwrap_or_default() {
            let (node, _, c_conn) = &mut self.clients[client];
            node.engine.handle_frame(Millis(0), *c_conn, &frame);
        }
    }

    /// Delivers frames until everyone is quiet.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for (conn, frame) in self.server.drain_frames() {
                moved = true;
                let i = self.clients.iter().position(|(_, s, _)| *s == conn).expect("frame to a known client");
                if let Ok(Decoded::Message(Message::Sync { data, .. })) = decode(&frame) {
                    self.received[i].push(data);
                }
                match self.held.get_mut(&i) {
                    Some(queue) => queue.push(frame),
                    None => {
                        let (node, _, c_conn) = &mut self.clients[i];
                        node.engine.handle_frame(Millis(0), *c_conn, &frame);
                    }
                }
            }
            for (node, s_conn, _) in &mut self.clients {
                for (_, frame) in node.drain_frames() {
                    moved = true;
                    self.server.engine.handle_frame(Millis(0), *s_conn, &frame);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn heads(&self, client: usize, doc: DocumentId) -> Vec<ChangeHash> {
        self.clients[client].0.engine.document(&doc).map(|d| d.get_heads()).unwrap_or_default()
    }

    fn text(&self, client: usize, doc: DocumentId) -> String {
        let d = self.clients[client].0.engine.document(&doc).expect("document loaded");
        let (_, id) = d.get(ROOT, "text").expect("read").expect("text object");
        d.text(&id).expect("text")
    }

    fn type_text(&mut self, client: usize, doc: DocumentId, at: usize, s: &str) {
        let node = &mut self.clients[client].0;
        let id = node.engine.document(&doc).and_then(|d| d.get(ROOT, "text").ok().flatten()).expect("text").1;
        node.engine.change(Millis(0), doc, |tx| tx.splice_text(&id, at, 0, s)).expect("change");
    }
}

fn create_text(star: &mut Star) -> DocumentId {
    let node = &mut star.clients[0].0;
    let doc = node
        .engine
        .create(Millis(0), |tx| tx.put_object(ROOT, "text", automerge::ObjType::Text).map(|_| ()))
        .expect("create");
    star.settle();
    for i in 1..star.clients.len() {
        star.clients[i].0.engine.find(Millis(0), doc);
    }
    star.settle();
    doc
}

#[test]
fn watchers_in_step_get_identical_messages_and_all_converge() {
    let mut star = Star::new(30, true);
    let doc = create_text(&mut star);
    for k in 0..10 {
        let before: Vec<usize> = star.received.iter().map(Vec::len).collect();
        star.type_text(0, doc, k, "x");
        star.settle();
        let want = star.heads(0, doc);
        let mut payloads = BTreeSet::new();
        for i in 1..star.clients.len() {
            assert_eq!(star.heads(i, doc), want, "client {i} after change {k}");
            // Exactly one message per watcher for the change, and it is the
            // same bytes for every watcher (they were all in step).
            assert_eq!(star.received[i].len(), before[i] + 1, "client {i} after change {k}");
            payloads.insert(star.received[i].last().cloned());
        }
        assert_eq!(payloads.len(), 1, "watchers in step got different messages");
    }
    assert_eq!(star.text(29, doc), "x".repeat(10));
}

/// Watchers that lag (their link holds the server's messages), write
/// concurrently, and fresh peers that fetch the whole document one after
/// another: every client is sent exactly the bytes it is sent when the
/// server generates every message itself, and everyone converges.
fn scripted(share: bool) -> (Vec<Vec<Vec<u8>>>, Vec<Vec<ChangeHash>>) {
    let mut star = Star::new(12, share);
    let doc = create_text(&mut star);
    for k in 0..60 {
        star.type_text(0, doc, k, "y");
        star.settle();
    }
    // Watchers 1..=4 stop hearing from the server for a while: their sync
    // states diverge from the others', and from each other's as they come
    // back one by one between changes.
    for i in 1..=4 {
        star.hold(i);
    }
    for k in 0..6 {
        star.type_text(0, doc, k, "ab");
        // A watcher in step writes too, so the document moves on two sides.
        star.type_text(7, doc, 0, "z");
        star.settle();
        if (1..=4).contains(&(k + 1)) {
            star.release(k + 1);
            star.settle();
        }
    }
    // Fresh peers, one at a time: with sharing, the later ones are handed
    // the whole-document message generated for the first.
    for _ in 0..3 {
        let fresh = star.add_client();
        star.clients[fresh].0.engine.find(Millis(0), doc);
        star.settle();
    }
    star.type_text(9, doc, 3, "end");
    star.settle();
    let want = star.heads(0, doc);
    let text = star.text(0, doc);
    for i in 0..star.clients.len() {
        assert_eq!(star.heads(i, doc), want, "client {i}");
        assert_eq!(star.text(i, doc), text, "client {i}");
    }
    let stats = star.server.engine.stats();
    if share {
        assert!(stats.sync_shared > stats.sync_generated, "few messages shared: {stats:?}");
    } else {
        assert_eq!(stats.sync_shared, 0);
    }
    let heads = (0..star.clients.len()).map(|i| star.heads(i, doc)).collect();
    (star.received, heads)
}

#[test]
fn shared_messages_are_the_bytes_each_peer_would_be_generated() {
    let (shared, shared_heads) = scripted(true);
    let (own, own_heads) = scripted(false);
    assert_eq!(shared_heads, own_heads);
    assert_eq!(shared.len(), own.len());
    for (i, (a, b)) in shared.iter().zip(&own).enumerate() {
        assert_eq!(a.len(), b.len(), "client {i}: number of sync messages");
        assert!(a == b, "client {i}: different sync messages with and without sharing");
    }
    // The fresh peers got the whole document: the same bytes each time.
    let whole: Vec<&Vec<u8>> = shared[12..].iter().filter_map(|m| m.iter().max_by_key(|p| p.len())).collect();
    assert_eq!(whole.len(), 3);
    assert!(whole.windows(2).all(|w| w[0] == w[1]), "fresh peers got different documents");
}
