//! Access control in the engine (DESIGN §4, guarantee 5): what a
//! connection may read, write and create, who it may speak for, and when
//! its grants end. Each rule is driven through real engines: a client
//! engine connects to an edge engine that accepted it with given grants.

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use meridian_protocol::codec::{self, Message, PROTOCOL_V1};
use meridian_protocol::engine::{Access, Direction, DocSet, ErrorKind, Event, Millis, Refusal};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId};
use meridian_protocol::storage::{StorageResult, StorageTask};
use meridian_protocol::testing::TestNode;

/// Nodes joined by links, with frames delivered until all are quiet.
struct Net {
    nodes: Vec<TestNode>,
    /// (node, its connection) ↔ (node, its connection)
    links: Vec<((usize, ConnId), (usize, ConnId))>,
}

impl Net {
    fn new(nodes: Vec<TestNode>) -> Self {
        Self { nodes, links: Vec::new() }
    }

    /// `client` connects to `server`, which grants it `access`.
    fn connect(&mut self, client: usize, server: usize, access: Access) -> (ConnId, ConnId) {
        let now = self.nodes[server].now;
        let s = self.nodes[server].engine.handle_connect_with(now, Direction::Incoming, access);
        let now = self.nodes[client].now;
        let c = self.nodes[client].engine.handle_connect(now, Direction::Outgoing);
        self.links.push(((client, c), (server, s)));
        (c, s)
    }

    fn other_end(&self, node: usize, conn: ConnId) -> Option<(usize, ConnId)> {
        self.links.iter().find_map(|&(a, b)| {
            if a == (node, conn) {
                Some(b)
            } else if b == (node, conn) {
                Some(a)
            } else {
                None
            }
        })
    }

    /// Delivers frames until no node sends anything; returns every
    /// message each node sent, in order.
    fn settle(&mut self) -> Vec<Vec<(ConnId, Message)>> {
        let mut sent: Vec<Vec<(ConnId, Message)>> = vec![Vec::new(); self.nodes.len()];
        for _round in 0..10_000 {
            let mut any = false;
            for (i, sent_by) in sent.iter_mut().enumerate() {
                for (conn, m) in self.nodes[i].drain() {
                    any = true;
                    sent_by.push((conn, m.clone()));
                    let closed = self.nodes[i].closed.iter().any(|(c, _)| *c == conn);
                    if let (Some((j, to)), false) = (self.other_end(i, conn), closed) {
                        let now = self.nodes[j].now;
                        self.nodes[j].engine.handle_frame(now, to, &codec::encode(&m));
                    }
                }
            }
            if !any {
                return sent;
            }
        }
        panic!("the nodes never went quiet (a sync loop?)");
    }
}

fn node(name: &str) -> TestNode {
    TestNode::new(name, |c| c.join_timeout_ms = 0)
}

/// An edge with one document written by itself, and a client.
fn edge_with_doc() -> (Net, DocumentId) {
    let mut edge = node("edge");
    let doc = edge.engine.create(Millis(0), |tx| tx.put(ROOT, "title", "secret").map(|_| ())).unwrap();
    edge.drain();
    (Net::new(vec![node("client"), edge]), doc)
}

const CLIENT: usize = 0;
const EDGE: usize = 1;

fn grants(read: &[DocumentId], write: &[DocumentId], create: bool) -> Access {
    Access::client("alice", DocSet::of(read.iter().copied()), DocSet::of(write.iter().copied()), create)
}

fn errors_to(sent: &[(ConnId, Message)], conn: ConnId) -> Vec<String> {
    sent.iter()
        .filter(|(c, _)| *c == conn)
        .filter_map(|(_, m)| match m {
            Message::Error { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// What the node's store holds of a document.
fn stored(node: &mut TestNode, doc: DocumentId) -> Option<Vec<u8>> {
    match node.store.execute(&StorageTask::LoadDoc { doc }) {
        StorageResult::Loaded(bytes) => bytes,
        other => panic!("load failed: {other:?}"),
    }
}

fn title(node: &TestNode, doc: &DocumentId) -> Option<String> {
    let d = node.engine.document(doc)?;
    d.get(ROOT, "title").ok().flatten().map(|(v, _)| v.as_str().unwrap_or_default().to_owned())
}

#[test]
fn a_document_not_granted_is_answered_as_an_unknown_one_and_nothing_flows() {
    let (mut net, doc) = edge_with_doc();
    let unknown = DocumentId::from_bytes([7; 16]);
    let (_, s) = net.connect(CLIENT, EDGE, grants(&[unknown], &[], false));
    net.settle();
    for d in [doc, unknown] {
        net.nodes[CLIENT].engine.find(Millis(1), d);
    }
    let sent = net.settle();
    let unavailable: Vec<DocumentId> = net.nodes[CLIENT]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::DocUnavailable { doc } => Some(*doc),
            _ => None,
        })
        .collect();
    assert_eq!(unavailable, vec![doc, unknown], "both answered alike");
    let to_client: Vec<&Message> = sent[EDGE].iter().filter(|(c, _)| *c == s).map(|(_, m)| m).collect();
    assert!(
        to_client.iter().all(|m| matches!(m, Message::DocUnavailable { .. } | Message::Peer { .. })),
        "only `doc-unavailable` reached the client: {to_client:?}"
    );
    assert!(net.nodes[EDGE].events.iter().any(|e| matches!(e, Event::Refused { refusal: Refusal::NotGranted, .. })));
    // A later change is not pushed to it, and its ephemeral messages on the
    // document go nowhere.
    net.nodes[EDGE].engine.change(Millis(2), doc, |tx| tx.put(ROOT, "title", "still secret")).unwrap();
    net.nodes[CLIENT].engine.broadcast_ephemeral(doc, "s", 1, vec![0xa0]);
    let sent = net.settle();
    assert!(sent[EDGE].iter().all(|(c, _)| *c != s), "nothing sent to the client: {:?}", sent[EDGE]);
    assert!(!net.nodes[EDGE].events.iter().any(|e| matches!(e, Event::Ephemeral { .. })));
    assert!(net.nodes[CLIENT].engine.document(&doc).is_none_or(|d| d.get_heads().is_empty()), "it has nothing of it");
}

#[test]
fn a_read_only_peer_receives_everything_and_its_changes_go_nowhere() {
    let (mut net, doc) = edge_with_doc();
    let (_, s) = net.connect(CLIENT, EDGE, grants(&[doc], &[], false));
    net.settle();
    net.nodes[CLIENT].engine.find(Millis(1), doc);
    net.settle();
    assert_eq!(title(&net.nodes[CLIENT], &doc).as_deref(), Some("secret"), "it reads the document");
    let edge_heads = net.nodes[EDGE].engine.document(&doc).unwrap().get_heads();
    // Two changes of its own: neither is applied, and it is told once.
    let mut errors = Vec::new();
    for (t, text) in [(2, "mine"), (3, "mine again")] {
        net.nodes[CLIENT].engine.change(Millis(t), doc, |tx| tx.put(ROOT, "title", text)).unwrap();
        errors.extend(errors_to(&net.settle()[EDGE], s));
    }
    assert_eq!(errors.len(), 1, "told once: {errors:?}");
    assert!(errors[0].contains("read-only"), "{errors:?}");
    assert_eq!(net.nodes[EDGE].engine.document(&doc).unwrap().get_heads(), edge_heads, "nothing applied");
    let stored = stored(&mut net.nodes[EDGE], doc).unwrap();
    let mut reloaded = automerge::Automerge::new();
    reloaded.load_incremental(&stored).unwrap();
    assert_eq!(reloaded.get_heads(), edge_heads, "nothing stored");
    assert!(net.nodes[EDGE].closed.is_empty(), "it stays connected");
    // The edge's next change still reaches it.
    net.nodes[EDGE].engine.change(Millis(4), doc, |tx| tx.put(ROOT, "other", "news")).unwrap();
    net.settle();
    let client_doc = net.nodes[CLIENT].engine.document(&doc).unwrap();
    assert!(client_doc.get(ROOT, "other").unwrap().is_some(), "later changes arrive");
}

#[test]
fn a_writer_changes_a_granted_document() {
    let (mut net, doc) = edge_with_doc();
    net.connect(CLIENT, EDGE, grants(&[], &[doc], false));
    net.settle();
    net.nodes[CLIENT].engine.find(Millis(1), doc);
    net.settle();
    net.nodes[CLIENT].engine.change(Millis(2), doc, |tx| tx.put(ROOT, "title", "edited")).unwrap();
    net.settle();
    assert_eq!(title(&net.nodes[EDGE], &doc).as_deref(), Some("edited"));
    assert_eq!(
        net.nodes[EDGE].engine.durable_heads(&doc),
        Some(net.nodes[CLIENT].engine.document(&doc).unwrap().get_heads())
    );
}

#[test]
fn creating_a_document_needs_the_create_right() {
    for create in [false, true] {
        let mut net = Net::new(vec![node("client"), node("edge")]);
        let (_, s) = net.connect(CLIENT, EDGE, Access::client("alice", DocSet::none(), DocSet::all(), create));
        net.settle();
        let doc = net.nodes[CLIENT].engine.create(Millis(1), |tx| tx.put(ROOT, "title", "new").map(|_| ())).unwrap();
        let sent = net.settle();
        let stored = stored(&mut net.nodes[EDGE], doc).is_some();
        let errors = errors_to(&sent[EDGE], s);
        if create {
            assert!(stored, "created");
            assert!(errors.is_empty(), "{errors:?}");
        } else {
            assert!(!stored, "nothing stored without the create right");
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains("create right"), "{errors:?}");
            let unavailable = sent[EDGE].iter().any(|(c, m)| {
                *c == s && matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == doc)
            });
            assert!(unavailable, "told it is unavailable");
            assert!(net.nodes[EDGE].engine.document(&doc).is_none_or(|d| d.get_heads().is_empty()));
        }
    }
}

/// A writer without the create right whose first changes reach an edge
/// that lacks the document: they are held while the edge asks the hub, and
/// applied once it arrives.
#[test]
fn changes_to_a_document_the_upstream_has_are_held_until_it_arrives() {
    let mut hub = node("hub");
    let doc = hub.engine.create(Millis(0), |tx| tx.put(ROOT, "title", "from the hub").map(|_| ())).unwrap();
    hub.drain();
    // The client holds a copy (it synced it earlier, elsewhere) and edits it.
    let bytes = hub.engine.document(&doc).unwrap().save();
    let mut client = node("client");
    client.engine.import(Millis(0), doc, &bytes).unwrap();
    client.engine.change(Millis(1), doc, |tx| tx.put(ROOT, "title", "edited offline")).unwrap();
    client.drain();
    let mut net = Net::new(vec![client, node("edge"), hub]);
    net.connect(EDGE, 2, Access::full());
    let (_, s) = net.connect(CLIENT, EDGE, grants(&[], &[doc], false));
    net.settle();
    let client_heads = net.nodes[CLIENT].engine.document(&doc).unwrap().get_heads();
    assert_eq!(net.nodes[EDGE].engine.durable_heads(&doc), Some(client_heads.clone()));
    assert_eq!(net.nodes[2].engine.durable_heads(&doc), Some(client_heads));
    assert_eq!(title(&net.nodes[2], &doc).as_deref(), Some("edited offline"));
    let refused = net.nodes[EDGE].events.iter().any(|e| matches!(e, Event::Refused { conn, .. } if *conn == s));
    assert!(!refused, "nothing refused: it only writes");
}

fn join(node: &mut TestNode, conn: ConnId, peer: &str) {
    let join = Message::Join {
        sender_id: PeerId::new(peer),
        peer_metadata: Default::default(),
        supported_protocol_versions: Some(vec![PROTOCOL_V1.into()]),
    };
    node.engine.handle_frame(node.now, conn, &codec::encode(&join));
}

/// A peer connects with `access` and joins as `peer`; its connection.
fn joined(node: &mut TestNode, access: Access, peer: &str) -> ConnId {
    let conn = node.engine.handle_connect_with(node.now, Direction::Incoming, access);
    join(node, conn, peer);
    node.drain();
    conn
}

/// The connections the node closed, in order.
fn closed(node: &TestNode) -> Vec<ConnId> {
    node.closed.iter().map(|(c, _)| *c).collect()
}

/// An ephemeral frame about `doc` from `sender`.
fn ephemeral(doc: DocumentId, sender: &str, count: u64, data: Vec<u8>) -> Vec<u8> {
    codec::encode(&Message::Ephemeral {
        sender_id: PeerId::new(sender),
        target_id: PeerId::new("edge"),
        document_id: doc,
        session_id: "s".into(),
        count,
        data,
    })
}

/// An edge with a document and two clients, `peer-a` and `peer-b`, that
/// may do everything.
fn edge_with_two_clients(edge: TestNode) -> (TestNode, DocumentId, ConnId, ConnId) {
    let mut edge = edge;
    let doc = edge.engine.create(Millis(0), |tx| tx.put(ROOT, "k", "v").map(|_| ())).unwrap();
    let everything = || Access::client("x", DocSet::all(), DocSet::all(), true);
    let a = joined(&mut edge, everything(), "peer-a");
    let b = joined(&mut edge, everything(), "peer-b");
    (edge, doc, a, b)
}

/// The ephemeral messages `sent` to `conn`, by sender.
fn ephemeral_senders_to(sent: &[(ConnId, Message)], conn: ConnId) -> Vec<PeerId> {
    sent.iter()
        .filter_map(|(c, m)| match m {
            Message::Ephemeral { sender_id, .. } if *c == conn => Some(sender_id.clone()),
            _ => None,
        })
        .collect()
}

/// A peer id in use is taken over only by the same subject (a client
/// reconnecting); another subject joining with it gets a connection of its
/// own, and the first keeps its: no hijack, and no lock-out either.
#[test]
fn a_peer_id_is_taken_over_only_by_the_same_subject() {
    let mut edge = node("edge");
    let as_who = |who: &str| Access::client(who, DocSet::all(), DocSet::all(), true);
    let victim = joined(&mut edge, as_who("alice"), "peer-alice");
    joined(&mut edge, as_who("mallory"), "peer-alice");
    assert!(edge.closed.is_empty(), "neither is closed: {:?}", edge.closed);
    assert_eq!(edge.engine.ready_connections(), 2);
    // The same subject reconnecting replaces its old connection.
    joined(&mut edge, as_who("alice"), "peer-alice");
    assert_eq!(closed(&edge), vec![victim], "alice's old one is replaced");
    assert_eq!(edge.engine.ready_connections(), 2);
}

/// Nodes (edges at the hub) are told apart by the id they authenticated
/// as, whatever peer id they join with: two of them with one peer id both
/// stay; the same node reconnecting replaces its old connection.
#[test]
fn nodes_sharing_a_peer_id_are_told_apart_by_their_subject() {
    let mut hub = node("hub");
    let as_node = Access::node;
    let eu = joined(&mut hub, as_node("eu"), "meridian-edge");
    joined(&mut hub, as_node("us"), "meridian-edge");
    assert!(hub.closed.is_empty(), "both stay: {:?}", hub.closed);
    assert_eq!(hub.engine.ready_connections(), 2);
    joined(&mut hub, as_node("eu"), "meridian-edge");
    assert_eq!(closed(&hub), vec![eu], "eu's old link is replaced");
    assert_eq!(hub.engine.ready_connections(), 2);
}

#[test]
fn a_client_speaks_only_for_itself_in_ephemeral_messages() {
    let (mut edge, doc, a, b) = edge_with_two_clients(node("edge"));
    // b subscribes; a claims to be b with a huge count, then b speaks, then
    // a speaks as itself.
    let mut sent = Vec::new();
    for (conn, sender, count) in [(b, "peer-b", 1), (a, "peer-b", 1 << 53), (b, "peer-b", 2), (a, "peer-a", 1)] {
        edge.engine.handle_frame(Millis(1), conn, &ephemeral(doc, sender, count, vec![0xa0]));
        sent.extend(edge.drain());
    }
    let senders: Vec<String> = edge
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Ephemeral { sender, .. } => Some(sender.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(senders, ["peer-b", "peer-b", "peer-a"], "the forgery is dropped, and b's count 2 still counts");
    assert_eq!(ephemeral_senders_to(&sent, b), vec![PeerId::new("peer-a")], "only a's own message reaches b");
}

#[test]
fn a_connection_is_closed_when_its_grants_expire() {
    let mut edge = node("edge");
    let mut access = Access::client("alice", DocSet::all(), DocSet::all(), false);
    access.expires_at = Some(Millis(5_000));
    let conn = edge.engine.handle_connect_with(Millis(0), Direction::Incoming, access);
    join(&mut edge, conn, "peer-alice");
    edge.drain();
    assert_eq!(edge.engine.poll_timeout(), Some(Millis(5_000)));
    edge.engine.handle_timeout(Millis(4_999));
    edge.drain();
    assert!(edge.closed.is_empty(), "not before");
    edge.engine.handle_timeout(Millis(5_000));
    let sent = edge.drain();
    assert_eq!(edge.closed, vec![(conn, "token expired".to_owned())]);
    assert_eq!(errors_to(&sent, conn), vec!["token expired".to_owned()]);
    assert!(edge.events.iter().any(|e| matches!(e, Event::ProtocolError { kind: ErrorKind::TokenExpired, .. })));
    assert_eq!(edge.engine.poll_timeout(), None, "nothing left scheduled");
}

/// A connection that goes before its grants expire leaves no deadline.
#[test]
fn a_closed_connection_leaves_no_expiry_deadline() {
    let mut edge = node("edge");
    let mut access = Access::full();
    access.expires_at = Some(Millis(5_000));
    let conn = edge.engine.handle_connect_with(Millis(0), Direction::Incoming, access);
    edge.engine.handle_disconnect(Millis(1), conn);
    assert_eq!(edge.engine.poll_timeout(), None);
}

/// A client's ephemeral messages are bounded in size and rate (fan-out
/// amplification): past either they are dropped and it is told once; the
/// next second it may speak again.
#[test]
fn a_clients_ephemeral_messages_are_bounded_in_size_and_rate() {
    let limited = TestNode::new("edge", |c| {
        c.join_timeout_ms = 0;
        c.ephemeral_per_second = 5;
        c.ephemeral_max_bytes = 100;
    });
    let (mut edge, doc, a, b) = edge_with_two_clients(limited);
    // b listens; a sends 8 small messages in one instant, then a big one.
    edge.engine.handle_frame(Millis(1), b, &ephemeral(doc, "peer-b", 1, vec![0xa0]));
    let mut sent = edge.drain();
    for n in 1..=8 {
        edge.engine.handle_frame(Millis(2), a, &ephemeral(doc, "peer-a", n, vec![0x01]));
        sent.extend(edge.drain());
    }
    assert_eq!(ephemeral_senders_to(&sent, b).len(), 5, "the rate limit holds");
    assert_eq!(errors_to(&sent, a).len(), 1, "told once: {:?}", errors_to(&sent, a));
    // The next second: allowed again, but not a message over the size limit.
    edge.engine.handle_frame(Millis(1_500), a, &ephemeral(doc, "peer-a", 9, vec![0x01]));
    let mut big = vec![0x58, 200];
    big.extend([0u8; 200]);
    edge.engine.handle_frame(Millis(1_500), a, &ephemeral(doc, "peer-a", 10, big));
    let sent = edge.drain();
    assert_eq!(ephemeral_senders_to(&sent, b).len(), 1, "one more in the new window, the big one dropped");
    assert!(edge.closed.is_empty(), "nobody is disconnected for it");
}

/// A `request` frame for `doc` from a client that has nothing of it.
fn request(doc: DocumentId, sender: &str) -> Vec<u8> {
    use automerge::sync::SyncDoc;
    let mut state = automerge::sync::State::new();
    let data = automerge::Automerge::new().generate_sync_message(&mut state).map(|m| m.encode()).unwrap_or_default();
    codec::encode(&Message::Request {
        sender_id: PeerId::new(sender),
        target_id: PeerId::new("edge"),
        document_id: doc,
        data,
    })
}

fn loads_of(held: &std::collections::VecDeque<(meridian_protocol::storage::StorageTaskId, StorageTask)>) -> usize {
    held.iter().filter(|(_, t)| matches!(t, StorageTask::LoadDoc { .. })).count()
}

fn unavailable_to(sent: &[(ConnId, Message)], conn: ConnId) -> usize {
    sent.iter().filter(|(c, m)| *c == conn && matches!(m, Message::DocUnavailable { .. })).count()
}

/// A client probing random ids: the first ones are looked for (a storage
/// read each; with an upstream, a lookup there too) and answered
/// `doc-unavailable`; past its limit a minute, requests for documents not
/// in memory are answered at once with no storage read, and it is told why
/// once. Other clients are unaffected, and a minute later it may look
/// again. Nothing is stored for the documents that do not exist, not even
/// sync states.
#[test]
fn requests_for_unknown_documents_past_the_limit_cost_no_lookup() {
    let mut edge = TestNode::new("edge", |c| {
        c.join_timeout_ms = 0;
        c.expects_upstream = false;
        c.unknown_requests_per_minute = 3;
    });
    let known = edge.engine.create(Millis(0), |tx| tx.put(ROOT, "k", "v").map(|_| ())).unwrap();
    edge.drain();
    // Mallory keeps sync states (a storage id): one is saved for the
    // document that exists, none for those that do not.
    let mallory = edge.engine.handle_connect_with(
        edge.now,
        Direction::Incoming,
        Access::client("mallory", DocSet::all(), DocSet::all(), false),
    );
    let join = Message::Join {
        sender_id: PeerId::new("mallory"),
        peer_metadata: codec::PeerMetadata {
            storage_id: Some(meridian_protocol::ids::StorageId::new("mallory-store")),
            is_ephemeral: false,
        },
        supported_protocol_versions: Some(vec![PROTOCOL_V1.into()]),
    };
    edge.receive(mallory, &codec::encode(&join));
    edge.receive(mallory, &request(known, "mallory"));
    let honest = joined(&mut edge, Access::client("bob", DocSet::all(), DocSet::all(), false), "bob");
    edge.hold_storage = true;
    let ids: Vec<DocumentId> = (0..10u8).map(|i| DocumentId::from_bytes([i + 1; 16])).collect();
    let mut loads = 0;
    let mut answered = 0;
    let mut errors = Vec::new();
    for id in &ids {
        edge.engine.handle_frame(edge.now, mallory, &request(*id, "mallory"));
        let mut sent = edge.drain();
        loads += loads_of(&edge.held);
        sent.extend(edge.release());
        answered += unavailable_to(&sent, mallory);
        errors.extend(errors_to(&sent, mallory));
    }
    assert_eq!(answered, 10, "every request is answered doc-unavailable");
    assert_eq!(loads, 3, "only the first 3 cost a storage read");
    assert_eq!(errors.len(), 1, "told once: {errors:?}");
    assert!(errors[0].contains("over 3 requests a minute"), "{errors:?}");
    let refused =
        edge.events.iter().filter(|e| matches!(e, Event::Refused { refusal: Refusal::LookupLimit, .. })).count();
    assert_eq!(refused, 7);
    // Another client still looks.
    edge.engine.handle_frame(edge.now, honest, &request(DocumentId::from_bytes([99; 16]), "bob"));
    edge.drain();
    assert_eq!(loads_of(&edge.held), 1, "another client's request is looked for");
    edge.release();
    // A minute later, mallory may look again.
    edge.now = Millis(60_001);
    edge.engine.handle_frame(edge.now, mallory, &request(DocumentId::from_bytes([77; 16]), "mallory"));
    edge.drain();
    assert_eq!(loads_of(&edge.held), 1, "the window passed");
    edge.release();
    // Disconnecting leaves no sync state for the documents that do not exist.
    edge.engine.handle_disconnect(edge.now, mallory);
    edge.engine.handle_disconnect(edge.now, honest);
    edge.drain();
    let states: Vec<DocumentId> = edge
        .held
        .iter()
        .filter_map(|(_, t)| match t {
            StorageTask::PutSyncState { doc, .. } => Some(*doc),
            _ => None,
        })
        .collect();
    assert_eq!(states, vec![known], "a sync state for the document that exists only");
    edge.release();
    for id in &ids {
        assert!(stored(&mut edge, *id).is_none());
    }
}

/// A subject may create a few documents a minute: past that its creating
/// changes are refused (told once, nothing stored) while another subject
/// still creates; a minute later it may again.
#[test]
fn documents_created_per_subject_are_limited() {
    let mut net = Net::new(vec![
        node("client"),
        TestNode::new("edge", |c| {
            c.join_timeout_ms = 0;
            c.creates_per_minute = 2;
        }),
    ]);
    let (_, s) = net.connect(CLIENT, EDGE, Access::client("alice", DocSet::none(), DocSet::all(), true));
    net.settle();
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for i in 0..4 {
        let doc = net.nodes[CLIENT].engine.create(Millis(1), |tx| tx.put(ROOT, "n", i as i64).map(|_| ())).unwrap();
        errors.extend(errors_to(&net.settle()[EDGE], s));
        docs.push(doc);
    }
    let stored_docs: Vec<bool> = docs.iter().map(|d| stored(&mut net.nodes[EDGE], *d).is_some()).collect();
    assert_eq!(stored_docs, [true, true, false, false], "two created, then refused");
    assert_eq!(errors.len(), 2, "told once per document: {errors:?}");
    assert!(errors.iter().all(|e| e.contains("over 2 new documents a minute")), "{errors:?}");
    assert!(net.nodes[EDGE].closed.is_empty(), "it stays connected");
    // Another subject is not affected.
    net.nodes.push(node("bob"));
    net.connect(2, EDGE, Access::client("bob", DocSet::none(), DocSet::all(), true));
    net.settle();
    let id = net.nodes[2].engine.create(Millis(1), |tx| tx.put(ROOT, "by", "bob").map(|_| ())).unwrap();
    net.settle();
    assert!(stored(&mut net.nodes[EDGE], id).is_some(), "bob creates");
}

/// A sync message from `doc` to a peer that has nothing of it (automerge
/// sends the whole document as one compressed chunk).
fn first_sync(doc: &mut automerge::AutoCommit) -> Vec<u8> {
    use automerge::sync::SyncDoc;
    let (mut ours, mut theirs) = (automerge::sync::State::new(), automerge::sync::State::new());
    let hello = automerge::Automerge::new().generate_sync_message(&mut theirs).unwrap();
    doc.sync().receive_sync_message(&mut ours, hello).unwrap();
    doc.sync().generate_sync_message(&mut ours).unwrap().encode()
}

/// A 1.2 KB message holding a saved document of a million operations is
/// refused before anything is loaded (an error naming the limit, the
/// connection closed, nothing stored); a client's changes may not take a
/// document past its operation limit; a node link is not limited.
#[test]
fn messages_and_documents_past_the_operation_limits_are_refused_before_loading() {
    use automerge::ObjType;
    let mut edge = TestNode::new("edge", |c| {
        c.join_timeout_ms = 0;
        c.max_document_ops = 1000;
    });
    let mallory = joined(&mut edge, Access::client("m", DocSet::all(), DocSet::all(), true), "mallory");
    let mut bomb = automerge::AutoCommit::new();
    let text = bomb.put_object(ROOT, "t", ObjType::Text).unwrap();
    bomb.splice_text(&text, 0, 0, &"a".repeat(1_000_000)).unwrap();
    let data = first_sync(&mut bomb);
    assert!(data.len() < 4096, "{} bytes", data.len());
    let doc = DocumentId::from_bytes([9; 16]);
    let sync = |data: Vec<u8>, sender: &str| {
        codec::encode(&Message::Sync {
            sender_id: PeerId::new(sender),
            target_id: PeerId::new("edge"),
            document_id: doc,
            data,
        })
    };
    let started = std::time::Instant::now();
    let sent = edge.receive(mallory, &sync(data.clone(), "mallory"));
    let took = started.elapsed();
    let errors = errors_to(&sent, mallory);
    assert_eq!(errors.len(), 1, "{sent:?}");
    assert!(errors[0].contains("1000001 operations") && errors[0].contains("per byte"), "{errors:?}");
    assert_eq!(closed(&edge), vec![mallory], "closed");
    assert!(stored(&mut edge, doc).is_none(), "nothing stored");
    assert!(edge.engine.document(&doc).is_none_or(|d| d.get_heads().is_empty()), "nothing loaded");
    eprintln!("a 1M-operation document in {} bytes refused in {took:?}", data.len());
    // Within the message limits but past the document's: refused too.
    let bob = joined(&mut edge, Access::client("b", DocSet::all(), DocSet::all(), true), "bob");
    let mut big = automerge::AutoCommit::new();
    let text = big.put_object(ROOT, "t", ObjType::Text).unwrap();
    big.splice_text(&text, 0, 0, &"xy".repeat(1000)).unwrap();
    let sent = edge.receive(bob, &sync(first_sync(&mut big), "bob"));
    for _ in 0..3 {
        edge.drain();
    }
    let errors = errors_to(&sent, bob);
    let all_errors: Vec<String> = errors.into_iter().chain(edge.closed.iter().map(|(_, r)| r.clone())).collect();
    assert!(all_errors.iter().any(|e| e.contains("past the limit of 1000")), "{all_errors:?}");
    assert!(stored(&mut edge, doc).is_none(), "nothing stored");
    // A node link is not counted: the same bomb from a full-access link loads.
    let mut edge_big = TestNode::new("edge2", |c| c.join_timeout_ms = 0);
    let link2 = joined(&mut edge_big, Access::full(), "hub");
    edge_big.receive(link2, &sync(data, "hub"));
    for _ in 0..3 {
        edge_big.drain();
    }
    assert!(stored(&mut edge_big, doc).is_some(), "a node link's message is applied");
}
