//! The test harness every engine test drives: a node with an in-memory
//! store whose storage answers at once or waits until the test runs it,
//! and delivery between two nodes until both are quiet ([`settle`]). Built
//! on the driver kit ([`crate::drive`]), like every real driver.

use std::collections::VecDeque;

use crate::codec::{self, Message, PROTOCOL_V1, PeerMetadata};
use crate::drive::Driver;
use crate::engine::{Applied, ApplyJob, Direction, Engine, EngineConfig, Event, Millis};
use crate::ids::{ConnId, PeerId, StorageId};
use crate::storage::{MemoryStore, StorageResult, StorageTask, StorageTaskId};

/// An engine with an in-memory store, and what it sent and said.
#[derive(Debug)]
pub struct TestNode {
    pub engine: Engine,
    pub store: MemoryStore,
    /// The time handed to the engine with what the harness feeds it.
    pub now: Millis,
    /// Storage tasks wait in `held` instead of running at once.
    pub hold_storage: bool,
    pub held: VecDeque<(StorageTaskId, StorageTask)>,
    /// Apply jobs ([`crate::engine::Output::Apply`]) wait in `jobs` instead
    /// of running at once.
    pub hold_applies: bool,
    pub jobs: VecDeque<ApplyJob>,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Connections the engine closed, with the reason.
    pub closed: Vec<(ConnId, String)>,
}

/// What a drain sent, in order.
type Sent = Vec<(ConnId, Message)>;

struct Collect<'a> {
    store: &'a mut MemoryStore,
    hold: bool,
    held: &'a mut VecDeque<(StorageTaskId, StorageTask)>,
    hold_applies: bool,
    jobs: &'a mut VecDeque<ApplyJob>,
    events: &'a mut Vec<Event>,
    closed: &'a mut Vec<(ConnId, String)>,
    sent: Sent,
}

impl Driver for Collect<'_> {
    fn send(&mut self, conn: ConnId, message: Message) {
        self.sent.push((conn, message));
    }

    fn close(&mut self, conn: ConnId, reason: String) -> bool {
        self.closed.push((conn, reason));
        false
    }

    fn storage(&mut self, id: StorageTaskId, task: StorageTask) -> Option<StorageResult> {
        if self.hold {
            self.held.push_back((id, task));
            return None;
        }
        Some(self.store.execute(&task))
    }

    fn apply(&mut self, job: ApplyJob) -> Option<Applied> {
        if self.hold_applies {
            self.jobs.push_back(job);
            return None;
        }
        Some(job.run())
    }

    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

impl TestNode {
    /// A persistent node (its storage id is `{name}-store`) whose
    /// configuration `adjust` changes first.
    pub fn new(name: &str, adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        let mut config = EngineConfig::new(PeerId::new(name), Some(StorageId::new(format!("{name}-store"))));
        adjust(&mut config);
        Self::with_config(config, MemoryStore::new())
    }

    pub fn with_config(config: EngineConfig, store: MemoryStore) -> Self {
        Self {
            engine: Engine::new(config),
            store,
            now: Millis(0),
            hold_storage: false,
            held: VecDeque::new(),
            hold_applies: false,
            jobs: VecDeque::new(),
            events: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// Hands the engine's outputs to the harness; returns the messages sent.
    pub fn drain(&mut self) -> Sent {
        let mut driver = Collect {
            store: &mut self.store,
            hold: self.hold_storage,
            held: &mut self.held,
            hold_applies: self.hold_applies,
            jobs: &mut self.jobs,
            events: &mut self.events,
            closed: &mut self.closed,
            sent: Vec::new(),
        };
        self.engine.drive(self.now, &mut driver);
        driver.sent
    }

    /// [`TestNode::drain`], the messages encoded as frames.
    pub fn drain_frames(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        self.drain().into_iter().map(|(conn, m)| (conn, codec::encode(&m))).collect()
    }

    /// Runs the oldest held storage task; `false` when none waits. Its
    /// consequences stay queued for the next drain.
    pub fn run_storage(&mut self) -> bool {
        let Some((id, task)) = self.held.pop_front() else { return false };
        let result = self.store.execute(&task);
        self.engine.handle_storage_result(self.now, id, result);
        true
    }

    /// Runs the oldest held apply job and hands its result in; `false`
    /// when none waits. Its consequences stay queued for the next drain.
    pub fn run_apply(&mut self) -> bool {
        let Some(job) = self.jobs.pop_front() else { return false };
        self.engine.handle_applied(self.now, job.run());
        true
    }

    /// Runs every held storage task (and what they lead to), then drains.
    pub fn release(&mut self) -> Sent {
        let hold = std::mem::replace(&mut self.hold_storage, false);
        while self.run_storage() {}
        let sent = self.drain();
        self.hold_storage = hold;
        sent
    }

    /// Feeds a frame; returns what the engine sent in answer.
    pub fn receive(&mut self, conn: ConnId, frame: &[u8]) -> Sent {
        self.engine.handle_frame(self.now, conn, frame);
        self.drain()
    }

    /// A peer `peer` connects and joins (as an automerge-repo client with
    /// `metadata` would): its connection, once the engine has answered.
    pub fn accept(&mut self, peer: &str, metadata: PeerMetadata) -> ConnId {
        let conn = self.engine.handle_connect(self.now, Direction::Incoming);
        let join = Message::Join {
            sender_id: PeerId::new(peer),
            peer_metadata: metadata,
            supported_protocol_versions: Some(vec![PROTOCOL_V1.into()]),
        };
        self.receive(conn, &codec::encode(&join));
        conn
    }
}

/// Delivers frames between `a` (on `a_conn`) and `b` (on `b_conn`) until
/// both are quiet; frames for other connections are counted, not sent.
pub fn settle(a: &mut TestNode, a_conn: ConnId, b: &mut TestNode, b_conn: ConnId) -> usize {
    let mut elsewhere = 0;
    loop {
        let (to_b, to_a) = (a.drain_frames(), b.drain_frames());
        if to_b.is_empty() && to_a.is_empty() {
            return elsewhere;
        }
        for (conn, f) in to_b {
            if conn == a_conn {
                b.engine.handle_frame(b.now, b_conn, &f);
            } else {
                elsewhere += 1;
            }
        }
        for (conn, f) in to_a {
            if conn == b_conn {
                a.engine.handle_frame(a.now, a_conn, &f);
            } else {
                elsewhere += 1;
            }
        }
    }
}
