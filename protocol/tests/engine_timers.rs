//! Timers as data: the engine says when it next needs to run
//! (`poll_timeout`) and `handle_timeout` does exactly what is due then.

use meridian_protocol::automerge::ROOT;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::codec::{self, Message};
use meridian_protocol::engine::{EngineConfig, Event, Millis};
use meridian_protocol::ids::{DocumentId, PeerId};
use meridian_protocol::testing::TestNode;

const IDLE: u64 = 5_000;

fn node(adjust: impl FnOnce(&mut EngineConfig)) -> TestNode {
    TestNode::new("node", |c| {
        c.idle_evict_after_ms = IDLE;
        adjust(c);
    })
}

fn create(node: &mut TestNode, now: u64) -> DocumentId {
    node.now = Millis(now);
    let doc = node.engine.create(node.now, |tx| tx.put(ROOT, "n", 1).map(|_| ())).unwrap();
    node.drain();
    doc
}

fn timeout(node: &mut TestNode, now: Millis) {
    node.now = now;
    node.engine.handle_timeout(now);
    node.drain();
}

fn evicted(node: &TestNode) -> Vec<DocumentId> {
    node.events.iter().filter_map(|e| if let Event::Evicted { doc } = e { Some(*doc) } else { None }).collect()
}

#[test]
fn a_fresh_engine_has_nothing_scheduled() {
    let node = node(|_| {});
    assert_eq!(node.engine.poll_timeout(), None);
}

#[test]
fn an_idle_document_is_evicted_at_its_deadline_and_not_before() {
    let mut node = node(|_| {});
    let doc = create(&mut node, 100);
    assert_eq!(node.engine.poll_timeout(), Some(Millis(100 + IDLE)));
    timeout(&mut node, Millis(100 + IDLE - 1));
    assert!(evicted(&node).is_empty(), "early: nothing is due");
    assert_eq!(node.engine.poll_timeout(), Some(Millis(100 + IDLE)));
    timeout(&mut node, Millis(100 + IDLE));
    assert_eq!(evicted(&node), vec![doc]);
    assert_eq!(node.engine.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn a_touched_document_waits_for_its_new_deadline() {
    let mut node = node(|_| {});
    let doc = create(&mut node, 0);
    node.engine.change(Millis(3_000), doc, |tx| tx.put(ROOT, "n", 2)).unwrap();
    node.drain();
    // The entry was due at IDLE; it moves to the real deadline when it comes.
    timeout(&mut node, Millis(IDLE));
    assert!(evicted(&node).is_empty());
    assert_eq!(node.engine.poll_timeout(), Some(Millis(3_000 + IDLE)));
    timeout(&mut node, Millis(3_000 + IDLE));
    assert_eq!(evicted(&node), vec![doc]);
}

#[test]
fn a_document_with_a_write_in_flight_is_looked_at_again_later() {
    let mut node = node(|_| {});
    node.hold_storage = true;
    let doc = create(&mut node, 0);
    assert!(!node.held.is_empty(), "the first write is in flight");
    timeout(&mut node, Millis(IDLE));
    assert!(evicted(&node).is_empty(), "not quiet: it stays");
    let again = node.engine.poll_timeout().expect("a recheck is scheduled");
    assert!(again > Millis(IDLE), "{again:?}");
    node.now = Millis(IDLE + 1);
    node.release();
    timeout(&mut node, again);
    assert_eq!(evicted(&node), vec![doc]);
}

#[test]
fn past_the_memory_budget_a_check_is_due_at_once_and_evicts_the_least_recent() {
    let mut node = node(|c| c.max_loaded_docs = 2);
    let first = create(&mut node, 10);
    create(&mut node, 20);
    assert_eq!(node.engine.poll_timeout(), Some(Millis(10 + IDLE)), "within budget: only idle deadlines");
    create(&mut node, 30);
    assert_eq!(node.engine.poll_timeout(), Some(Millis(30)), "over budget: due now");
    timeout(&mut node, Millis(30));
    assert_eq!(evicted(&node), vec![first]);
    assert_eq!(node.engine.loaded_docs(), 2);
    assert_eq!(node.engine.poll_timeout(), Some(Millis(20 + IDLE)));
}

#[test]
fn ephemeral_sessions_are_forgotten_after_ten_minutes() {
    let mut node = node(|_| {});
    let doc = create(&mut node, 0);
    let conn = node.accept("client", Default::default());
    let ephemeral = |count| {
        codec::encode(&Message::Ephemeral {
            sender_id: PeerId::new("client"),
            target_id: PeerId::new("node"),
            document_id: doc,
            session_id: "s".into(),
            count,
            data: vec![1],
        })
    };
    node.now = Millis(1_000);
    node.receive(conn, &ephemeral(5));
    let ttl = 10 * 60_000;
    assert_eq!(node.engine.poll_timeout(), Some(Millis(IDLE)), "the document's idle deadline comes first");
    timeout(&mut node, Millis(IDLE));
    assert_eq!(node.engine.poll_timeout(), Some(Millis(1_000 + ttl)));
    // Within the session's lifetime an old count is a duplicate...
    node.events.clear();
    node.now = Millis(2_000);
    node.receive(conn, &ephemeral(3));
    assert!(!node.events.iter().any(|e| matches!(e, Event::Ephemeral { .. })));
    // ...once it is forgotten, the same count is news again.
    timeout(&mut node, Millis(1_000 + ttl));
    assert_eq!(node.engine.poll_timeout(), None);
    node.now = Millis(1_000 + ttl);
    node.receive(conn, &ephemeral(3));
    assert!(node.events.iter().any(|e| matches!(e, Event::Ephemeral { .. })));
}

#[test]
fn a_peer_that_never_joins_is_refused_at_its_deadline() {
    let mut node = node(|c| c.join_timeout_ms = 2_000);
    let silent = node.engine.handle_connect(Millis(0), meridian_protocol::engine::Direction::Incoming);
    node.now = Millis(500);
    let joined = node.accept("client", Default::default());
    assert_eq!(node.engine.poll_timeout(), Some(Millis(2_000)));
    timeout(&mut node, Millis(1_999));
    assert!(node.closed.is_empty(), "not before the deadline");
    timeout(&mut node, Millis(2_000));
    assert_eq!(node.closed.len(), 1);
    assert_eq!(node.closed[0].0, silent);
    assert!(node.closed[0].1.contains("no `join` within 2 s"), "{}", node.closed[0].1);
    assert!(node.events.iter().any(|e| matches!(
        e,
        Event::ProtocolError { conn, kind: meridian_protocol::engine::ErrorKind::HandshakeTimeout, .. } if *conn == silent
    )));
    // The peer that joined in time is left alone, and nothing more is due.
    timeout(&mut node, Millis(2_500));
    assert_eq!(node.closed.len(), 1);
    assert!(node.closed.iter().all(|(c, _)| *c != joined));
    assert_eq!(node.engine.poll_timeout(), None);
}
