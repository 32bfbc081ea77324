//! Timers as data: the engine says when it next needs to run
//! (`poll_timeout`) and `handle_timeout` does exactly what is due then.

use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::engine::{Direction, Engine, EngineConfig, Event, Millis, Output};
use meridian_protocol::ids::{DocumentId, PeerId, StorageId};
use meridian_protocol::storage::{MemoryStore, StorageTask, StorageTaskId};

const IDLE: u64 = 5_000;

struct Node {
    engine: Engine,
    store: MemoryStore,
    events: Vec<Event>,
    /// Storage tasks held back (a write in flight).
    held: Vec<(StorageTaskId, StorageTask)>,
    hold: bool,
}

impl Node {
    fn new(adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        let mut config = EngineConfig::new(PeerId::new("node"), Some(StorageId::new("node-store")));
        config.idle_evict_after_ms = IDLE;
        adjust(&mut config);
        Self {
            engine: Engine::new(config),
            store: MemoryStore::new(),
            events: Vec::new(),
            held: Vec::new(),
            hold: false,
        }
    }

    fn drain(&mut self, now: Millis) {
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Storage { id, task } if self.hold => self.held.push((id, task)),
                Output::Storage { id, task } => {
                    let r = self.store.execute(&task);
                    self.engine.handle_storage_result(now, id, r);
                }
                Output::Event(e) => self.events.push(e),
                Output::Send { .. } | Output::Close { .. } => {}
            }
        }
    }

    fn create(&mut self, now: Millis) -> DocumentId {
        let doc = self.engine.create(now, |tx| tx.put(automerge_root(), "n", 1).map(|_| ())).unwrap();
        self.drain(now);
        doc
    }

    fn timeout(&mut self, now: Millis) {
        self.engine.handle_timeout(now);
        self.drain(now);
    }

    fn evicted(&self) -> Vec<DocumentId> {
        self.events.iter().filter_map(|e| if let Event::Evicted { doc } = e { Some(*doc) } else { None }).collect()
    }
}

fn automerge_root() -> meridian_protocol::automerge::ObjId {
    meridian_protocol::automerge::ROOT
}

#[test]
fn a_fresh_engine_has_nothing_scheduled() {
    let node = Node::new(|_| {});
    assert_eq!(node.engine.poll_timeout(), None);
}

#[test]
fn an_idle_document_is_evicted_at_its_deadline_and_not_before() {
    let mut node = Node::new(|_| {});
    let doc = node.create(Millis(100));
    assert_eq!(node.engine.poll_timeout(), Some(Millis(100 + IDLE)));
    node.timeout(Millis(100 + IDLE - 1));
    assert!(node.evicted().is_empty(), "early: nothing is due");
    assert_eq!(node.engine.poll_timeout(), Some(Millis(100 + IDLE)));
    node.timeout(Millis(100 + IDLE));
    assert_eq!(node.evicted(), vec![doc]);
    assert_eq!(node.engine.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn a_touched_document_waits_for_its_new_deadline() {
    let mut node = Node::new(|_| {});
    let doc = node.create(Millis(0));
    node.engine.change(Millis(3_000), doc, |tx| tx.put(automerge_root(), "n", 2)).unwrap();
    node.drain(Millis(3_000));
    // The entry was due at IDLE; it moves to the real deadline when it comes.
    node.timeout(Millis(IDLE));
    assert!(node.evicted().is_empty());
    assert_eq!(node.engine.poll_timeout(), Some(Millis(3_000 + IDLE)));
    node.timeout(Millis(3_000 + IDLE));
    assert_eq!(node.evicted(), vec![doc]);
}

#[test]
fn a_document_with_a_write_in_flight_is_looked_at_again_later() {
    let mut node = Node::new(|_| {});
    node.hold = true;
    let doc = node.create(Millis(0));
    assert!(!node.held.is_empty(), "the first write is in flight");
    node.timeout(Millis(IDLE));
    assert!(node.evicted().is_empty(), "not quiet: it stays");
    let again = node.engine.poll_timeout().expect("a recheck is scheduled");
    assert!(again > Millis(IDLE), "{again:?}");
    node.hold = false;
    for (id, task) in std::mem::take(&mut node.held) {
        let r = node.store.execute(&task);
        node.engine.handle_storage_result(Millis(IDLE + 1), id, r);
    }
    node.drain(Millis(IDLE + 1));
    node.timeout(again);
    assert_eq!(node.evicted(), vec![doc]);
}

#[test]
fn past_the_memory_budget_a_check_is_due_at_once_and_evicts_the_least_recent() {
    let mut node = Node::new(|c| c.max_loaded_docs = 2);
    let first = node.create(Millis(10));
    node.create(Millis(20));
    assert_eq!(node.engine.poll_timeout(), Some(Millis(10 + IDLE)), "within budget: only idle deadlines");
    node.create(Millis(30));
    assert_eq!(node.engine.poll_timeout(), Some(Millis(30)), "over budget: due now");
    node.timeout(Millis(30));
    assert_eq!(node.evicted(), vec![first]);
    assert_eq!(node.engine.loaded_docs(), 2);
    assert_eq!(node.engine.poll_timeout(), Some(Millis(20 + IDLE)));
}

#[test]
fn ephemeral_sessions_are_forgotten_after_ten_minutes() {
    let mut node = Node::new(|_| {});
    let doc = node.create(Millis(0));
    let conn = node.engine.handle_connect(Millis(0), Direction::Incoming);
    let join = meridian_protocol::codec::encode(&meridian_protocol::codec::Message::Join {
        sender_id: PeerId::new("client"),
        peer_metadata: Default::default(),
        supported_protocol_versions: Some(vec![meridian_protocol::codec::PROTOCOL_V1.into()]),
    });
    node.engine.handle_frame(Millis(0), conn, &join);
    let ephemeral = |count| {
        meridian_protocol::codec::encode(&meridian_protocol::codec::Message::Ephemeral {
            sender_id: PeerId::new("client"),
            target_id: PeerId::new("node"),
            document_id: doc,
            session_id: "s".into(),
            count,
            data: vec![1],
        })
    };
    node.engine.handle_frame(Millis(1_000), conn, &ephemeral(5));
    node.drain(Millis(1_000));
    let ttl = 10 * 60_000;
    assert_eq!(node.engine.poll_timeout(), Some(Millis(IDLE)), "the document's idle deadline comes first");
    node.timeout(Millis(IDLE));
    assert_eq!(node.engine.poll_timeout(), Some(Millis(1_000 + ttl)));
    // Within the session's lifetime an old count is a duplicate...
    node.events.clear();
    node.engine.handle_frame(Millis(2_000), conn, &ephemeral(3));
    node.drain(Millis(2_000));
    assert!(!node.events.iter().any(|e| matches!(e, Event::Ephemeral { .. })));
    // ...once it is forgotten, the same count is news again.
    node.timeout(Millis(1_000 + ttl));
    assert_eq!(node.engine.poll_timeout(), None);
    node.engine.handle_frame(Millis(1_000 + ttl), conn, &ephemeral(3));
    node.drain(Millis(1_000 + ttl));
    assert!(node.events.iter().any(|e| matches!(e, Event::Ephemeral { .. })));
}
