//! The last resort of divergence repair (`refetch`): an edge whose copy of
//! a document cannot take the hub's changes — an actor's sequence forked,
//! so each side holds a change the other refuses, and no resync helps —
//! quarantines its copy and fetches the hub's again, keeping every change
//! of its own that still applies. The link between them stays open
//! throughout; a client sending such a change is told so and that document
//! stops syncing with it, its others go on.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, ChangeHash, ROOT, ReadDoc};
use meridian_protocol::codec::{self, Message};
use meridian_protocol::engine::{
    Access, Direction, Divergence, DocSet, EngineConfig, Event, MAX_REPAIRS, Millis, REFETCH_AGAIN_AFTER_MS, Refusal,
};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId, StorageId};
use meridian_protocol::storage::{MemoryStore, StorageTask};
use meridian_protocol::testing::TestNode;

const THRESHOLD_MS: u64 = 1_000;

/// Delivers frames between the edge (on `up`) and the hub (on `down`)
/// until both are quiet; a bounded number of rounds (a ping-pong between
/// them is a failure).
fn settle(edge: &mut TestNode, up: ConnId, hub: &mut TestNode, down: ConnId) {
    for _ in 0..200 {
        let (to_hub, to_edge) = (edge.drain_frames(), hub.drain_frames());
        if to_hub.is_empty() && to_edge.is_empty() {
            return;
        }
        for (_, f) in to_hub.into_iter().filter(|(c, _)| *c == up) {
            hub.engine.handle_frame(hub.now, down, &f);
        }
        for (_, f) in to_edge.into_iter().filter(|(c, _)| *c == down) {
            edge.engine.handle_frame(edge.now, up, &f);
        }
    }
    panic!("edge and hub never went quiet: {:?}", edge.events.iter().rev().take(10).collect::<Vec<_>>());
}

/// A base document, and on it two changes of one actor with the same
/// sequence number (a cloned device): `x` and `y`, each refused by a copy
/// holding the other.
struct Fork {
    base: AutoCommit,
    x: AutoCommit,
    y: AutoCommit,
}

fn fork() -> Fork {
    let mut base = AutoCommit::new();
    base.put(ROOT, "title", "shared").unwrap();
    base.commit();
    let cloned = ActorId::random();
    let mut x = base.fork().with_actor(cloned.clone());
    x.put(ROOT, "x", "written at the edge").unwrap();
    x.commit();
    let mut y = base.fork().with_actor(cloned);
    y.put(ROOT, "y", "written at the hub").unwrap();
    y.commit();
    Fork { base, x, y }
}

fn stored(doc: DocumentId, copy: &mut AutoCommit) -> MemoryStore {
    let mut store = MemoryStore::new();
    store.execute(&StorageTask::Compact { doc, snapshot: copy.save() });
    store
}

fn keys(d: &Automerge) -> Vec<String> {
    d.keys(ROOT).collect()
}

fn heads(node: &TestNode, doc: &DocumentId) -> Vec<ChangeHash> {
    let mut h = node.engine.document(doc).map(Automerge::get_heads).unwrap_or_default();
    h.sort();
    h
}

/// The edge's copy: the fork's `x`, then `z` (another actor, on the base:
/// a client's change the hub never got) and `w` (on `x`: left out with it).
fn edge_copy(f: &Fork) -> AutoCommit {
    let mut copy = f.x.clone();
    copy.merge(&mut f.base.clone()).unwrap();
    let mut z = f.base.clone().fork();
    z.put(ROOT, "z", "a client's change on the base").unwrap();
    z.commit();
    copy.merge(&mut z).unwrap();
    let mut w = f.x.clone().fork();
    w.put(ROOT, "w", "a change on x").unwrap();
    w.commit();
    copy.merge(&mut w).unwrap();
    copy
}

/// A hub holding `y` and an edge holding [`edge_copy`] of `doc`, linked
/// (the edge dialed the hub, which registered it as a node) and settled.
fn linked(f: &Fork, doc: DocumentId) -> (TestNode, ConnId, TestNode, ConnId) {
    let config = |name: &str, adjust: fn(&mut EngineConfig)| {
        let mut c = EngineConfig::new(PeerId::new(name), Some(StorageId::new(format!("{name}-store"))));
        // This harness has no clock: nothing held for later (co-writers'
        // spacing, its own simulation scenario) would ever go.
        c.co_writer_spacing_ms = 0;
        adjust(&mut c);
        c
    };
    let mut hub = TestNode::with_config(config("hub", |c| c.expects_upstream = false), stored(doc, &mut f.y.clone()));
    let mut edge =
        TestNode::with_config(config("edge", |c| c.refetch_divergent = true), stored(doc, &mut edge_copy(f)));
    // The edge dials the hub and pushes what it stores, as a driver does.
    let up = edge.engine.handle_connect(Millis(0), Direction::Outgoing);
    let down = hub.engine.handle_connect_with(Millis(0), Direction::Incoming, Access::node("edge"));
    settle(&mut edge, up, &mut hub, down);
    edge.engine.open(Millis(0), doc);
    settle(&mut edge, up, &mut hub, down);
    (edge, up, hub, down)
}

/// Runs both nodes' divergence checks at `now` and delivers what follows.
fn check_at(now: u64, edge: &mut TestNode, up: ConnId, hub: &mut TestNode, down: ConnId) -> Divergence {
    edge.now = Millis(now);
    hub.now = Millis(now);
    let found = edge.engine.check_divergence(Millis(now), THRESHOLD_MS);
    hub.engine.check_divergence(Millis(now), THRESHOLD_MS);
    settle(edge, up, hub, down);
    found
}

#[test]
fn a_copy_that_refuses_the_upstreams_changes_is_quarantined_and_fetched_again() {
    let f = fork();
    let doc = DocumentId::from_bytes([9; 16]);
    let (mut edge, up, mut hub, down) = linked(&f, doc);

    // The edge refuses the hub's change (the first to carry one), stops
    // asking for it, and the link stays open: both sides go quiet (a
    // bounded `settle`), apart.
    let refused = |n: &TestNode| n.events.iter().filter(|e| matches!(e, Event::Unapplicable { .. })).count();
    assert_eq!(refused(&edge), 1, "the edge refuses the hub's change: {:?}", edge.events);
    assert!(edge.closed.is_empty() && hub.closed.is_empty(), "no link closed: {:?} {:?}", edge.closed, hub.closed);
    assert_ne!(heads(&edge, &doc), heads(&hub, &doc));

    // The divergence watch: resyncs first, each a threshold further apart;
    // none helps; then the edge's copy is fetched again.
    let mut repairs = 0;
    let mut refetching = Vec::new();
    for step in 0..=(MAX_REPAIRS as u64 + 2) {
        let found = check_at(step * THRESHOLD_MS, &mut edge, up, &mut hub, down);
        repairs += found.repairs;
        refetching.extend(found.refetching);
        if edge.events.iter().any(|e| matches!(e, Event::Refetched { .. })) {
            break;
        }
    }
    assert_eq!(repairs, u64::from(MAX_REPAIRS), "every forced resync was tried first");
    assert_eq!(refetching, vec![(doc, up)]);
    let refetched: Vec<(u64, u64)> = edge
        .events
        .iter()
        .filter_map(|e| if let Event::Refetched { restored, left, .. } = e { Some((*restored, *left)) } else { None })
        .collect();
    assert_eq!(refetched.len(), 1, "{:?}", edge.events);
    assert_eq!(refetched[0].1, 2, "x and w (on x) are left out: {refetched:?}");

    // Both copies meet: the hub's, plus the edge's client change that
    // still applies; the refused change and what depends on it are only
    // in the edge's quarantine, as the old copy was.
    settle(&mut edge, up, &mut hub, down);
    assert_eq!(heads(&edge, &doc), heads(&hub, &doc));
    let expected = vec!["title".to_owned(), "y".into(), "z".into()];
    assert_eq!(keys(edge.engine.document(&doc).unwrap()), expected);
    assert_eq!(keys(hub.engine.document(&doc).unwrap()), expected);
    let quarantined = edge.store.quarantined(&doc);
    assert_eq!(quarantined.len(), 1, "the old copy's one chunk");
    let old = Automerge::load(quarantined[0].0).unwrap();
    assert_eq!(keys(&old), vec!["title", "w", "x", "z"]);
    assert!(quarantined[0].1.contains("divergent"), "{}", quarantined[0].1);
    // The new copy is what the edge stores now.
    let mut reloaded = Automerge::new();
    let meridian_protocol::storage::StorageResult::Loaded(Some(bytes)) =
        edge.store.execute(&StorageTask::LoadDoc { doc })
    else {
        panic!("the new copy is stored")
    };
    reloaded.load_incremental(&bytes).unwrap();
    assert_eq!(keys(&reloaded), expected);
    assert!(edge.closed.is_empty() && hub.closed.is_empty(), "no link closed: {:?} {:?}", edge.closed, hub.closed);
    assert_eq!(edge.engine.stats().refetches, 1);

    // Healed at both ends; no second refetch within the hour.
    for step in 1..=3 {
        let now = Millis(edge.now.0 + step * THRESHOLD_MS);
        edge.now = now;
        hub.now = now;
        let found = edge.engine.check_divergence(now, THRESHOLD_MS);
        assert!(found.divergent.is_empty() && found.refetching.is_empty(), "{found:?}");
        let found = hub.engine.check_divergence(now, THRESHOLD_MS);
        assert!(found.divergent.is_empty(), "{found:?}");
        settle(&mut edge, up, &mut hub, down);
    }
}

#[test]
fn a_client_whose_changes_the_copy_refuses_is_told_and_keeps_its_other_documents() {
    let f = fork();
    let doc = DocumentId::from_bytes([10; 16]);
    let other = DocumentId::from_bytes([12; 16]);
    let mut store = stored(doc, &mut f.y.clone());
    let mut unrelated = AutoCommit::new();
    unrelated.put(ROOT, "n", 1).unwrap();
    store.execute(&StorageTask::Compact { doc: other, snapshot: unrelated.save() });
    let mut edge =
        TestNode::with_config(EngineConfig::new(PeerId::new("edge"), Some(StorageId::new("edge-store"))), store);
    let access = Access::client("alice", DocSet::all(), DocSet::all(), true);
    let conn: ConnId = edge.engine.handle_connect_with(Millis(0), Direction::Incoming, access);
    let join = Message::Join {
        sender_id: PeerId::new("alice"),
        peer_metadata: Default::default(),
        supported_protocol_versions: Some(vec![codec::PROTOCOL_V1.into()]),
    };
    edge.receive(conn, &codec::encode(&join));
    let to_edge = |document_id, data| Message::Sync {
        sender_id: PeerId::new("alice"),
        target_id: PeerId::new("edge"),
        document_id,
        data,
    };
    // The client holds x (a cloned device) and sends everything it has.
    let client = f.x.clone().document().clone();
    let first = client.generate_sync_message(&mut sync::State::new()).unwrap();
    let changes: Vec<Vec<u8>> = client.get_changes(&[]).iter().map(|c| c.raw_bytes().to_vec()).collect();
    let data = sync::Message { changes: changes.into(), ..first }.encode();
    let sent = edge.receive(conn, &codec::encode(&to_edge(doc, data)));
    // Told why, once; nothing stored; the connection stays.
    let told: Vec<&String> = sent
        .iter()
        .filter_map(
            |(c, m)| if let (true, Message::Error { message, .. }) = (*c == conn, m) { Some(message) } else { None },
        )
        .collect();
    assert_eq!(told.len(), 1, "{sent:?}");
    assert!(told[0].contains("do not apply"), "{}", told[0]);
    assert!(edge.closed.is_empty(), "{:?}", edge.closed);
    assert!(edge.events.iter().any(|e| matches!(e, Event::Refused { refusal: Refusal::Unapplicable, .. })));
    assert!(!edge.events.iter().any(|e| matches!(e, Event::Unapplicable { .. })), "that is for nodes");
    assert_eq!(keys(edge.engine.document(&doc).unwrap()), vec!["title", "y"]);
    // Its other documents go on syncing.
    let ask = Automerge::new().generate_sync_message(&mut sync::State::new()).unwrap().encode();
    let request = Message::Request {
        sender_id: PeerId::new("alice"),
        target_id: PeerId::new("edge"),
        document_id: other,
        data: ask,
    };
    let sent = edge.receive(conn, &codec::encode(&request));
    let answered = sent.iter().any(|(c, m)| {
        *c == conn
            && matches!(m, Message::Sync { document_id, data, .. }
                if *document_id == other && !sync::Message::decode(data).unwrap().changes.is_empty())
    });
    assert!(answered, "{sent:?}");
}

#[test]
fn a_refetch_given_up_is_offered_again_an_hour_later() {
    let f = fork();
    let doc = DocumentId::from_bytes([11; 16]);
    let (mut edge, up, mut hub, down) = linked(&f, doc);
    let mut now = 0;
    let started = loop {
        edge.now = Millis(now);
        let found = edge.engine.check_divergence(Millis(now), THRESHOLD_MS);
        if !found.refetching.is_empty() {
            break now;
        }
        settle(&mut edge, up, &mut hub, down);
        now += THRESHOLD_MS;
        assert!(now < 20 * THRESHOLD_MS, "never refetched");
    };
    // Its request is lost; the hub never answers.
    edge.drain_frames();
    // Given up after two minutes: the old copy goes on as before...
    let found = check_at(started + 121_000, &mut edge, up, &mut hub, down);
    assert!(found.refetching.is_empty());
    assert_eq!(edge.engine.stats().refetches, 0);
    assert!(edge.closed.is_empty() && hub.closed.is_empty());
    // ...still divergent, and not fetched again within the hour...
    for minutes in [5, 30, 59] {
        let found = check_at(started + minutes * 60_000, &mut edge, up, &mut hub, down);
        assert!(found.refetching.is_empty(), "at {minutes} min");
        assert!(found.divergent.iter().any(|(d, c, ..)| *d == doc && *c == up), "at {minutes} min: {found:?}");
    }
    // ...but after it: then it completes.
    let found = check_at(started + REFETCH_AGAIN_AFTER_MS + 1_000, &mut edge, up, &mut hub, down);
    assert_eq!(found.refetching, vec![(doc, up)]);
    assert_eq!(edge.engine.stats().refetches, 1);
    settle(&mut edge, up, &mut hub, down);
    assert_eq!(heads(&edge, &doc), heads(&hub, &doc));
}
