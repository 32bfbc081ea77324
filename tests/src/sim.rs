//! A deterministic discrete-event simulation of Meridian nodes.
//!
//! Modelled on corrosion's seeded simulator and samod's test harness: many
//! sans-IO [`Engine`]s run in one thread against a virtual clock, and every
//! source of nondeterminism (network delays, storage latency, faults, the
//! engines' RNG seeds) is drawn from one seeded [`ChaCha8Rng`]. The same
//! seed gives the same [`Sim::trace`], line for line.
//!
//! ## What is modelled
//! - **Nodes**: an [`Engine`] plus a [`MemoryStore`]. A node's storage tasks
//!   run one at a time in the order the engine emitted them, each after a
//!   random latency; a task takes effect on the store at the moment its
//!   result is handed back, so "completed" and "durable" are the same thing.
//! - **Links**: one node's [`Direction::Outgoing`] connection to another's
//!   [`Direction::Incoming`] one. Frames are real bytes ([`codec::encode`] on
//!   one side, [`Engine::handle_frame`] on the other), delivered after a
//!   random delay, FIFO within a link (like a TCP or WebSocket stream) and in
//!   any order across links. An orderly close ([`Output::Close`]) reaches the
//!   other side after the frames sent before it.
//! - **Topology**: every node has at most one upstream ([`NodeSpec::upstream`]);
//!   a star is clients under one edge, a chain or tree puts edges under a hub.
//!   A node whose uplink goes down reconnects after a random backoff.
//! - **Faults**: a link drop (in-flight frames are lost; each side notices
//!   after its own random delay, so a server may still hold the old
//!   connection when the client's new `join` arrives), a partition of a node
//!   from its upstream (connection attempts fail until it heals), and a crash
//!   (the engine is dropped together with every storage task not yet
//!   completed; a persistent node keeps its store, an ephemeral one loses
//!   it). A restarted node gets a new engine with the same peer id and
//!   storage id, reconnects upstream, and its application opens the
//!   documents it knew again.
//!
//! ## Invariants checked while running
//! A violation panics with the last lines of the trace.
//! - **Durable before advertised**: every `sync`/`request` a node sends has
//!   heads that are all in the node's store at that moment (except clients
//!   that send before their writes are durable, as browser tabs do:
//!   [`NodeSpec::sends_before_durable`], half the workload's clients); so
//!   do the heads of [`Event::DocChanged`].
//! - Durable data never shrinks: a compaction covers everything stored.
//! - Valid traffic never causes [`Event::ProtocolError`] or
//!   [`Event::StorageFailed`].
//!
//! Once the simulation is quiet, [`Sim::check_caught_up`] checks that no
//! change is stuck below the top of the tree and that every document in
//! memory is current, and [`Sim::check_converged`] that every replica has
//! the same heads and value and that no edit durable at its author is lost.
//! [`run`] drives a random workload with faults for one seed.
//!
//! Placement (DESIGN §5) is exercised where it touches the engine: the
//! workload has the hub push documents to edges as a hand-off does
//! ([`Sim::handoff`], [`Engine::catch_up`]) and has edges drop their copy
//! for the hub's ([`Sim::offload`], [`Engine::offload`]), amid the faults;
//! the checks then also require every edit that was ever durable at a
//! persistent node to survive.
//!
//! **Several hubs on one store** ([`NodeSpec::sharing_store_of`], issue 16):
//! hubs share a model of the PostgreSQL store ([`shared::SharedStore`]:
//! compaction deletes only the chunks a hub covers) and a lossy bus that
//! hands each committed chunk to the others ([`Engine::handle_stored_elsewhere`];
//! a lost message is reported and answered by reading the store again, and
//! while the bus is down hubs read it every 2 s); an edge given a second hub
//! ([`NodeSpec::fallback`]) fails over to it when its hub is down.
//! [`run_cloud_seed`] drives that topology with the same faults.
//!
//! Storage failures: the random workload fails 5 % of document writes while
//! faults last ([`Sim::storage_failure_percent`]); scenario tests none.
//! Not modelled:
//! corrupt or malicious frames, clock skew (the engines only compare times
//! they were given), and more than one upstream per node (so no edge ↔ edge
//! links to a document's home: those are covered by the process tests).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, AutomergeError, ChangeHash, ObjType, ROOT, ReadDoc};
use meridian_protocol::codec::{self, Message};
use meridian_protocol::drive::Driver;
use meridian_protocol::engine::{
    Access, Applied, ApplyJob, CatchUp, Direction, DocError, DocSet, EngineConfig, Event, HandoffTargets, Millis,
    ShardedEngine,
};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId, StorageId};
use meridian_protocol::storage::{MemoryStore, StorageResult, StorageTask, StorageTaskId, WriteFence};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub mod shared;

/// A node of the simulation, by insertion order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct NodeId(pub usize);

/// One connection between two nodes, never reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct LinkId(pub usize);

/// The two ends of a link: the client opened it (Outgoing), the server
/// accepted it (Incoming).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn idx(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// Ranges `(min, max)` of the random delays, in virtual milliseconds.
#[derive(Clone, Debug)]
pub struct Timing {
    /// One-way latency of a frame.
    pub net_delay: (u64, u64),
    /// Now and then (`.0` percent of frames) a frame is held up longer
    /// (`.1`), and every later frame on its link waits behind it.
    pub net_spike: (u32, (u64, u64)),
    /// Time to complete one storage task.
    pub storage_latency: (u64, u64),
    /// Now and then (`.0` percent of tasks) the store stalls (`.1`).
    pub storage_stall: (u32, (u64, u64)),
    /// How long a side takes to notice that a transport died.
    pub detect_delay: (u64, u64),
    /// Wait before a client tries to connect again.
    pub reconnect_backoff: (u64, u64),
    /// Now and then (`.0` percent of frames) the receiving node takes the
    /// frames that arrive over the next `.1` ms as one engine batch
    /// ([`Engine::begin_batch`]), as the edge does with the events already
    /// waiting for its loop.
    pub batch: (u32, (u64, u64)),
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            net_delay: (1, 40),
            net_spike: (2, (100, 600)),
            storage_latency: (0, 15),
            storage_stall: (3, (100, 800)),
            detect_delay: (0, 1500),
            reconnect_backoff: (50, 1500),
            batch: (10, (0, 30)),
        }
    }
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    /// With a storage id and a store that survives crashes; otherwise an
    /// ephemeral peer whose (in-memory) store dies with it.
    pub persistent: bool,
    pub idle_evict_after_ms: u64,
    /// The server this node connects to and treats as its upstream.
    pub upstream: Option<NodeId>,
    /// Its upstream grants it reading only (access control): it receives
    /// every change, and its own never leave it.
    pub read_only: bool,
    /// A second upstream, tried when the first is down (an edge given two
    /// hubs); they swap roles on each fail-over.
    pub fallback: Option<NodeId>,
    /// Shares that node's store (hubs on one database), with the bus
    /// between them.
    pub store_of: Option<NodeId>,
    /// Its upstream registers it as another node (an edge at a hub), not a
    /// client ([`Access::node`]).
    pub node: bool,
    /// Sends before its writes are durable, as a browser tab does
    /// ([`EngineConfig::send_before_durable`]): exempt from the durable
    /// before advertised check.
    pub sends_before_durable: bool,
    /// Runs on this many engine shards, from the first to the second
    /// (drawn at each start, so a restart may change it, as
    /// `--engine-threads` may), with the routing of a sharded edge
    /// ([`ShardedEngine`]).
    pub shards: (usize, usize),
}

impl NodeSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            persistent: true,
            idle_evict_after_ms: 60_000,
            upstream: None,
            read_only: false,
            fallback: None,
            store_of: None,
            node: false,
            sends_before_durable: false,
            shards: (1, 1),
        }
    }

    /// Runs on 1 to `max` engine shards (see [`NodeSpec::shards`]).
    pub fn sharded(mut self, max: usize) -> Self {
        self.shards = (1, max.max(1));
        self
    }

    /// Runs on `count` engine shards at every start.
    pub fn shards(mut self, count: usize) -> Self {
        self.shards = (count.max(1), count.max(1));
        self
    }

    /// A browser tab: sends before its writes are durable.
    pub fn sends_before_durable(mut self, yes: bool) -> Self {
        self.sends_before_durable = yes;
        self
    }

    /// An edge under a hub: its link is between nodes.
    pub fn edge_of(mut self, hub: NodeId) -> Self {
        self.upstream = Some(hub);
        self.node = true;
        self
    }

    pub fn fallback(mut self, node: NodeId) -> Self {
        self.fallback = Some(node);
        self
    }

    /// On the same store as `node` (which must not have stored anything yet).
    pub fn sharing_store_of(mut self, node: NodeId) -> Self {
        self.store_of = Some(node);
        self
    }

    /// A client its upstream lets read everything and write nothing.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    pub fn ephemeral(mut self) -> Self {
        self.persistent = false;
        self
    }

    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    pub fn evict_after(mut self, ms: u64) -> Self {
        self.idle_evict_after_ms = ms;
        self
    }

    pub fn upstream(mut self, node: NodeId) -> Self {
        self.upstream = Some(node);
        self
    }
}

/// A local change made through [`Sim::change`] and the change hash it made.
#[derive(Clone, Debug)]
pub struct Edit {
    pub node: NodeId,
    pub doc: DocumentId,
    pub hash: ChangeHash,
}

/// What [`Sim::step_until`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    /// A simulated event (frame, storage completion, engine timer, ...).
    Handled,
    /// A timer set with [`Sim::schedule_user`] fired.
    User(u64),
}

struct Node {
    spec: NodeSpec,
    peer_id: PeerId,
    storage_id: Option<StorageId>,
    engine: Option<ShardedEngine>,
    /// Bumped on every crash; events of an older incarnation are void.
    incarnation: u32,
    store: MemoryStore,
    /// What the store holds, loaded: the durable changes of each document.
    durable: BTreeMap<DocumentId, Automerge>,
    tasks: VecDeque<(StorageTaskId, StorageTask)>,
    storage_busy: bool,
    /// Messages being applied off the engine's loop (`Output::Apply`),
    /// each finishing after a drawn delay, in order.
    applying: VecDeque<ApplyJob>,
    /// The driver's fence after a failed write (new with each incarnation).
    fence: WriteFence,
    /// Documents the node's application has opened (created or found).
    known_docs: BTreeSet<DocumentId>,
    events: Vec<Event>,
    received: Vec<Message>,
    /// Ephemeral payloads this incarnation was handed, by sender: each
    /// must arrive at most once.
    ephemeral_seen: BTreeSet<(PeerId, Vec<u8>)>,
    uplink: Option<LinkId>,
    open_links: BTreeSet<LinkId>,
    partitioned_until: Millis,
    /// The engine is in a batch (see [`Timing::batch`]).
    batching: bool,
    /// When the engine's next timeout is scheduled ([`Engine::poll_timeout`]).
    timer_at: Option<u64>,
    /// Documents homed here ([`Engine::pin`]).
    pinned: BTreeSet<DocumentId>,
    /// The shared store it is on ([`Sim::groups`]), if any.
    group: Option<usize>,
}

struct Link {
    /// `[client, server]`, indexed by [`Side::idx`].
    ends: [NodeId; 2],
    conns: [ConnId; 2],
    incarnations: [u32; 2],
    /// The transport works; frames in flight on a dead link are lost.
    alive: bool,
    /// The side's engine still has the connection.
    open: [bool; 2],
    /// Arrival time of the last frame towards each side (FIFO).
    last_arrival: [u64; 2],
    /// Bytes sent towards each side.
    bytes_to: [u64; 2],
}

enum Scheduled {
    Frame {
        link: LinkId,
        to: Side,
        bytes: Vec<u8>,
    },
    /// The other side closed the connection after its last frame.
    Fin {
        link: LinkId,
        to: Side,
    },
    /// The side notices that the transport died.
    Detect {
        link: LinkId,
        side: Side,
    },
    StorageDone {
        node: NodeId,
        incarnation: u32,
    },
    /// The node's oldest apply job off the loop is done.
    Applied {
        node: NodeId,
        incarnation: u32,
    },
    Reconnect {
        node: NodeId,
        incarnation: u32,
    },
    /// The node's engine applies the frames of its batch.
    /// Another hub's commit arrives over the bus.
    BusDeliver {
        node: NodeId,
        incarnation: u32,
        doc: DocumentId,
        bytes: Vec<u8>,
    },
    /// The hub reads every open document from the store again (a lost bus
    /// message reported, the bus back, or polling while it is down).
    BusRefresh {
        node: NodeId,
        incarnation: u32,
    },
    EndBatch {
        node: NodeId,
        incarnation: u32,
    },
    /// The node's engine asked to run then ([`Engine::poll_timeout`]).
    Timeout {
        node: NodeId,
        incarnation: u32,
        at: u64,
    },
    /// The driver's housekeeping interval: the divergence check
    /// ([`Engine::check_divergence`]), as the node runtime runs it.
    Housekeeping {
        node: NodeId,
        incarnation: u32,
    },
    User(u64),
}

/// The simulated driver's housekeeping interval, and how long a replica may
/// stay apart before it is divergent and resynced.
const HOUSEKEEPING_MS: u64 = 1_000;
const DIVERGENCE_AFTER_MS: u64 = 5_000;

/// The simulation: nodes, links, a virtual clock and an event queue.
pub struct Sim {
    seed: u64,
    now: Millis,
    rng: ChaCha8Rng,
    timing: Timing,
    nodes: Vec<Node>,
    links: Vec<Link>,
    conn_links: BTreeMap<(NodeId, u32, ConnId), LinkId>,
    queue: BTreeMap<(u64, u64), Scheduled>,
    next_seq: u64,
    /// Scheduled events other than engine and user timers: while any is
    /// pending, something can still happen.
    busy: usize,
    trace: Vec<String>,
    edits: Vec<Edit>,
    /// Keep every decoded message a node receives (for scenario tests).
    pub record_messages: bool,
    /// Every ephemeral message sent carries a payload of its own: then no
    /// node may be handed the same payload from the same sender twice.
    pub unique_ephemeral_payloads: bool,
    /// Percent of document writes that fail (nothing is stored and the
    /// engine gets [`StorageResult::Failed`]): 5 in the random workload
    /// (`MERIDIAN_SIM_STORAGE_FAILURES`), 0 in scenario tests.
    pub storage_failure_percent: u32,
    /// Edits that were durable at a persistent node at some point.
    ever_durable: BTreeSet<ChangeHash>,
    /// Documents dropped from a store ([`Sim::offload`]).
    offloads: usize,
    /// Fresh peers answered from a stored snapshot, by engines since crashed.
    snapshot_answers: usize,
    /// Apply jobs run off an engine's loop and handed back.
    applied_off_loop: usize,
    /// Replicas resynced from scratch for divergence.
    pub divergence_repairs: usize,
    /// Copies fetched again from an upstream for divergence.
    pub divergence_refetches: usize,
    /// Writes failed on purpose.
    pub storage_failures: usize,
    /// Stores shared by several hubs.
    groups: Vec<shared::SharedStore>,
    /// Percent of bus messages lost (each reported to its receiver).
    pub bus_loss_percent: u32,
    bus_down_until: Millis,
    /// Bus messages delivered, and reads of the store they stood in for.
    bus_delivered: usize,
    bus_refreshes: usize,
    failovers: usize,
}

const INJECTED_FAILURE: &str = "injected storage failure";

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl Sim {
    pub fn new(seed: u64, timing: Timing) -> Self {
        Self {
            seed,
            now: Millis(0),
            rng: ChaCha8Rng::seed_from_u64(seed),
            timing,
            nodes: Vec::new(),
            links: Vec::new(),
            conn_links: BTreeMap::new(),
            queue: BTreeMap::new(),
            next_seq: 0,
            busy: 0,
            trace: Vec::new(),
            edits: Vec::new(),
            record_messages: false,
            unique_ephemeral_payloads: false,
            storage_failure_percent: 0,
            ever_durable: BTreeSet::new(),
            offloads: 0,
            snapshot_answers: 0,
            applied_off_loop: 0,
            divergence_repairs: 0,
            divergence_refetches: 0,
            storage_failures: 0,
            groups: Vec::new(),
            bus_loss_percent: 0,
            bus_down_until: Millis(0),
            bus_delivered: 0,
            bus_refreshes: 0,
            failovers: 0,
        }
    }

    // ----- set-up and inspection ------------------------------------------

    /// Adds a node and, if it has an upstream, connects it.
    pub fn add_node(&mut self, spec: NodeSpec) -> NodeId {
        let id = NodeId(self.nodes.len());
        let mut group = None;
        let storage_id = match spec.store_of {
            // Hubs on one database present its storage id.
            Some(other) => {
                let g = match self.nodes[other.0].group {
                    Some(g) => g,
                    None => {
                        self.groups.push(shared::SharedStore::new(other));
                        self.nodes[other.0].group = Some(self.groups.len() - 1);
                        self.groups.len() - 1
                    }
                };
                self.groups[g].members.push(id);
                group = Some(g);
                self.nodes[other.0].storage_id.clone()
            }
            None => spec.persistent.then(|| StorageId::random(&mut self.rng)),
        };
        self.nodes.push(Node {
            peer_id: PeerId::new(spec.name.clone()),
            spec,
            storage_id,
            engine: None,
            incarnation: 0,
            store: MemoryStore::new(),
            durable: BTreeMap::new(),
            tasks: VecDeque::new(),
            storage_busy: false,
            applying: VecDeque::new(),
            fence: WriteFence::default(),
            known_docs: BTreeSet::new(),
            events: Vec::new(),
            received: Vec::new(),
            ephemeral_seen: BTreeSet::new(),
            uplink: None,
            open_links: BTreeSet::new(),
            partitioned_until: Millis(0),
            batching: false,
            timer_at: None,
            pinned: BTreeSet::new(),
            group,
        });
        self.start_node(id);
        id
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    /// The simulation's RNG, for workloads that must stay deterministic.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + use<> {
        (0..self.nodes.len()).map(NodeId)
    }

    pub fn name(&self, n: NodeId) -> &str {
        &self.nodes[n.0].spec.name
    }

    pub fn spec(&self, n: NodeId) -> &NodeSpec {
        &self.nodes[n.0].spec
    }

    /// The node's spec, to change before it restarts.
    pub fn spec_mut(&mut self, n: NodeId) -> &mut NodeSpec {
        &mut self.nodes[n.0].spec
    }

    pub fn peer_id(&self, n: NodeId) -> &PeerId {
        &self.nodes[n.0].peer_id
    }

    pub fn storage_id(&self, n: NodeId) -> Option<&StorageId> {
        self.nodes[n.0].storage_id.as_ref()
    }

    /// The node's engine, unless it is crashed.
    pub fn engine(&self, n: NodeId) -> Option<&ShardedEngine> {
        self.nodes[n.0].engine.as_ref()
    }

    pub fn is_up(&self, n: NodeId) -> bool {
        self.nodes[n.0].engine.is_some()
    }

    /// Every application event the node's engines emitted, across restarts.
    pub fn events(&self, n: NodeId) -> &[Event] {
        &self.nodes[n.0].events
    }

    /// Decoded messages the node received (only with `record_messages`).
    pub fn received(&self, n: NodeId) -> &[Message] {
        &self.nodes[n.0].received
    }

    /// The durable state of a document in the node's store.
    pub fn durable_doc(&self, n: NodeId, doc: &DocumentId) -> Option<&Automerge> {
        self.nodes[n.0].durable.get(doc)
    }

    pub fn known_docs(&self, n: NodeId) -> &BTreeSet<DocumentId> {
        &self.nodes[n.0].known_docs
    }

    /// The node's current connection to its upstream, if any.
    pub fn uplink(&self, n: NodeId) -> Option<LinkId> {
        self.nodes[n.0].uplink
    }

    /// Links whose transport is up (candidates for a drop).
    pub fn live_links(&self) -> Vec<LinkId> {
        (0..self.links.len()).map(LinkId).filter(|l| self.links[l.0].alive).collect()
    }

    /// Bytes sent on a link towards one side so far.
    pub fn link_bytes_to(&self, link: LinkId, to: Side) -> u64 {
        self.links[link.0].bytes_to[to.idx()]
    }

    /// Whether both ends of the link hold a ready connection.
    pub fn link_ready(&self, link: LinkId) -> bool {
        let l = &self.links[link.0];
        l.alive && l.open == [true, true]
    }

    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }

    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    pub fn into_trace(self) -> Vec<String> {
        self.trace
    }

    /// Adds a line to the trace (for workloads).
    pub fn note(&mut self, what: impl AsRef<str>) {
        let line = format!("{:>7} {}", self.now.0, what.as_ref());
        self.trace.push(line);
    }

    /// Panics with the seed and the end of the trace. With
    /// `MERIDIAN_SIM_TRACE=<file>` the whole trace is written there first.
    pub fn fail(&self, what: impl AsRef<str>) -> ! {
        if let Ok(path) = std::env::var("MERIDIAN_SIM_TRACE") {
            let _ = std::fs::write(&path, self.trace.join("\n"));
        }
        let tail = self.trace.len().saturating_sub(60);
        let trace = self.trace[tail..].join("\n");
        panic!(
            "simulation seed {} at t={}: {}\n--- last trace lines ---\n{trace}",
            self.seed,
            self.now.0,
            what.as_ref()
        )
    }

    // ----- the application's side ---------------------------------------

    /// Creates a document holding a `text` object and the creator's name.
    pub fn create(&mut self, n: NodeId) -> DocumentId {
        let name = self.nodes[n.0].spec.name.clone();
        self.create_with(n, |tx| {
            tx.put_object(ROOT, "text", ObjType::Text)?;
            tx.put(ROOT, "created_by", name.as_str())?;
            Ok(())
        })
    }

    pub fn create_with<F>(&mut self, n: NodeId, init: F) -> DocumentId
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
    {
        let now = self.now;
        let Some(engine) = self.nodes[n.0].engine.as_mut() else { self.fail("create on a crashed node") };
        let doc = engine.create(now, init).unwrap_or_else(|e| panic!("create failed: {e}"));
        let hash = engine.document(&doc).map(Automerge::get_heads).unwrap_or_default();
        self.nodes[n.0].known_docs.insert(doc);
        if let Some(hash) = hash.first() {
            self.edits.push(Edit { node: n, doc, hash: *hash });
        }
        self.note(format!("{} app create {}", self.name(n), short(&doc)));
        self.pump(n);
        doc
    }

    /// Applies a local change; records it as an [`Edit`] if it made one.
    pub fn change<F, O>(&mut self, n: NodeId, doc: DocumentId, f: F) -> Result<O, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<O, AutomergeError>,
    {
        let now = self.now;
        let Some(engine) = self.nodes[n.0].engine.as_mut() else { return Err(DocError::NotLoaded(doc)) };
        let before = engine.document(&doc).map(Automerge::get_heads).unwrap_or_default();
        let out = engine.change(now, doc, f)?;
        let after = engine.document(&doc).map(Automerge::get_heads).unwrap_or_default();
        if after != before {
            // A local change depends on every previous head: it is the only head.
            self.edits.push(Edit { node: n, doc, hash: after[0] });
            self.note(format!("{} app change {} -> {}", self.name(n), short(&doc), hex8(&after[0])));
        }
        self.pump(n);
        Ok(out)
    }

    /// Opens a document by id (the application learned its URL).
    pub fn find(&mut self, n: NodeId, doc: DocumentId) {
        let now = self.now;
        self.nodes[n.0].known_docs.insert(doc);
        let Some(engine) = self.nodes[n.0].engine.as_mut() else { return };
        engine.find(now, doc);
        self.note(format!("{} app find {}", self.name(n), short(&doc)));
        self.pump(n);
    }

    pub fn broadcast_ephemeral(&mut self, n: NodeId, doc: DocumentId, session: &str, count: u64, data: Vec<u8>) {
        let Some(engine) = self.nodes[n.0].engine.as_mut() else { return };
        engine.broadcast_ephemeral(doc, session, count, data);
        self.note(format!("{} app ephemeral {} {session}#{count}", self.name(n), short(&doc)));
        self.pump(n);
    }

    // ----- placement ----------------------------------------------------

    /// A hand-off's catch-up: `edge`'s upstream pushes `doc` to it
    /// ([`Engine::catch_up`]). `None` if their link is not up.
    pub fn handoff(&mut self, edge: NodeId, doc: DocumentId) -> Option<CatchUp> {
        let up = self.spec(edge).upstream?;
        let link = self.nodes[edge.0].uplink?;
        let l = &self.links[link.0];
        let server = Side::Server.idx();
        if !l.alive || !l.open[server] || l.incarnations[server] != self.nodes[up.0].incarnation {
            return None;
        }
        let conn = l.conns[server];
        let now = self.now;
        let engine = self.nodes[up.0].engine.as_mut()?;
        let status = engine.handoff_status(now, doc, Some(conn), None, HandoffTargets::default()).to?;
        self.note(format!("{} hand-off {} to {}: {status:?}", self.name(up), short(&doc), self.name(edge)));
        self.pump(up);
        if status == CatchUp::CaughtUp {
            self.announce_home(edge, doc);
        }
        Some(status)
    }

    /// The hub announces `edge` as the document's home: the edge pins it
    /// (its copy is the hot replica, never offloaded), the previous home
    /// unpins it.
    fn announce_home(&mut self, edge: NodeId, doc: DocumentId) {
        for n in 0..self.nodes.len() {
            let pinned = NodeId(n) == edge;
            if let Some(engine) = self.nodes[n].engine.as_mut()
                && engine.is_pinned(&doc) != pinned
            {
                engine.pin(doc, pinned);
                if pinned {
                    self.nodes[n].pinned.insert(doc);
                } else {
                    self.nodes[n].pinned.remove(&doc);
                }
                self.note(format!("{} {} {}", self.name(NodeId(n)), if pinned { "pin" } else { "unpin" }, short(&doc)));
            }
        }
    }

    /// `n` drops its copy of `doc` once its upstream holds all of it
    /// ([`Engine::offload`]).
    pub fn offload(&mut self, n: NodeId, doc: DocumentId) {
        let now = self.now;
        let Some(engine) = self.nodes[n.0].engine.as_mut() else { return };
        engine.offload(now, doc);
        self.note(format!("{} offload {}", self.name(n), short(&doc)));
        self.pump(n);
    }

    // ----- faults -------------------------------------------------------

    /// The transport of a link dies; each side notices after a while.
    pub fn drop_link(&mut self, link: LinkId) {
        if !self.links[link.0].alive {
            return;
        }
        self.links[link.0].alive = false;
        let [c, s] = self.links[link.0].ends;
        self.note(format!("fault drop link{} {}<->{}", link.0, self.name(c), self.name(s)));
        for side in [Side::Client, Side::Server] {
            if self.links[link.0].open[side.idx()] {
                let delay = self.draw(self.timing.detect_delay);
                self.schedule(delay, Scheduled::Detect { link, side });
            }
        }
    }

    /// Gives a node an upstream (or a new one) and connects to it.
    pub fn set_upstream(&mut self, n: NodeId, up: NodeId) {
        self.nodes[n.0].spec.upstream = Some(up);
        if let Some(link) = self.nodes[n.0].uplink {
            self.drop_link(link);
        } else {
            self.connect_up(n);
        }
    }

    /// Cuts a node from its upstream until `until`.
    pub fn partition(&mut self, n: NodeId, until: Millis) {
        self.nodes[n.0].partitioned_until = until;
        self.note(format!("fault partition {} until {}", self.name(n), until.0));
        if let Some(link) = self.nodes[n.0].uplink {
            self.drop_link(link);
        }
    }

    pub fn heal(&mut self, n: NodeId) {
        if self.nodes[n.0].partitioned_until > self.now {
            self.nodes[n.0].partitioned_until = self.now;
            self.note(format!("heal partition {}", self.name(n)));
        }
    }

    /// Kills the node: its engine and every storage task not yet completed
    /// are gone. A persistent store survives; an ephemeral one does not.
    pub fn crash(&mut self, n: NodeId) {
        if self.nodes[n.0].engine.is_none() {
            return;
        }
        self.note(format!("fault crash {} (lost {} pending storage tasks)", self.name(n), self.nodes[n.0].tasks.len()));
        let node = &mut self.nodes[n.0];
        if let Some(engine) = node.engine.take() {
            self.snapshot_answers += engine.stats().snapshot_answers as usize;
        }
        node.incarnation += 1;
        node.timer_at = None;
        node.pinned.clear();
        node.batching = false;
        node.ephemeral_seen.clear();
        node.tasks.clear();
        node.applying.clear();
        node.storage_busy = false;
        node.fence = WriteFence::default();
        node.uplink = None;
        if !node.spec.persistent && node.group.is_none() {
            node.store = MemoryStore::new();
            node.durable.clear();
        }
        if let Some(g) = node.group {
            self.groups[g].forget_writer(n);
        }
        let links = std::mem::take(&mut node.open_links);
        for link in links {
            let side = self.side_of(link, n);
            let l = &mut self.links[link.0];
            l.open[side.idx()] = false;
            self.conn_links.remove(&(n, l.incarnations[side.idx()], l.conns[side.idx()]));
            // The peer notices the dead connection after a while.
            self.drop_link(link);
        }
    }

    /// Writes `chunk` of `doc` into a crashed node's store, as restoring a
    /// backup (or a cloned disk) would: what it holds is loaded when the
    /// node starts again. Appended after what is stored.
    pub fn restore_into_store(&mut self, n: NodeId, doc: DocumentId, chunk: Vec<u8>) {
        assert!(self.nodes[n.0].engine.is_none(), "{} must be down", self.name(n));
        let task = StorageTask::AppendChunk { doc, data: chunk };
        self.nodes[n.0].store.execute(&task);
        self.apply_to_own_mirror(n, &task);
        self.note(format!("fault {} restored a backup of {doc}", self.name(n)));
    }

    /// Starts a crashed node again with the same peer id and storage id.
    pub fn restart(&mut self, n: NodeId) {
        if self.nodes[n.0].engine.is_some() {
            return;
        }
        self.start_node(n);
        let docs: Vec<DocumentId> = self.nodes[n.0].known_docs.iter().copied().collect();
        for doc in docs {
            self.find(n, doc);
        }
    }

    // ----- running ------------------------------------------------------

    /// Schedules a [`Step::User`] timer `after` ms from now.
    pub fn schedule_user(&mut self, after: u64, tag: u64) {
        self.schedule(after, Scheduled::User(tag));
    }

    /// Handles the next event if it is due by `deadline`; otherwise moves
    /// the clock to `deadline` and returns `None`.
    pub fn step_until(&mut self, deadline: Millis) -> Option<Step> {
        let (&(at, seq), _) = self.queue.first_key_value()?;
        if at > deadline.0 {
            self.now = deadline;
            return None;
        }
        let event = self.queue.remove(&(at, seq))?;
        self.now = Millis(at);
        Some(self.dispatch(event))
    }

    /// Runs every event due in the next `ms` milliseconds (user timers are
    /// dropped).
    pub fn run_for(&mut self, ms: u64) {
        let deadline = Millis(self.now.0 + ms);
        while self.step_until(deadline).is_some() {}
        self.now = deadline;
    }

    /// Runs until nothing but timers (engines', and user timers, which are dropped) is
    /// pending, for at most `limit_ms`. Returns whether it got quiet.
    pub fn run_until_quiet(&mut self, limit_ms: u64) -> bool {
        let deadline = Millis(self.now.0 + limit_ms);
        while self.busy > 0 || self.engines_have_work_scheduled() {
            if self.step_until(deadline).is_none() {
                return false;
            }
        }
        true
    }

    /// Some engine still has stored documents to open (a backfill runs on
    /// the engine's timer, which does not count as busy), or messages held
    /// for a peer's answer (sent by a deadline at the latest).
    fn engines_have_work_scheduled(&self) -> bool {
        self.nodes.iter().filter_map(|n| n.engine.as_ref()).any(|e| e.backfill_queued() > 0 || e.replies_awaited() > 0)
    }

    fn dispatch(&mut self, event: Scheduled) -> Step {
        if !matches!(event, Scheduled::Timeout { .. } | Scheduled::Housekeeping { .. } | Scheduled::User(_)) {
            self.busy -= 1;
        }
        match event {
            Scheduled::Frame { link, to, bytes } => self.deliver(link, to, &bytes),
            Scheduled::Fin { link, to } => self.end_of_stream(link, to, "closed by peer"),
            Scheduled::Detect { link, side } => self.end_of_stream(link, side, "transport lost"),
            Scheduled::StorageDone { node, incarnation } => self.finish_storage(node, incarnation),
            Scheduled::Applied { node, incarnation } => self.finish_apply(node, incarnation),
            Scheduled::Reconnect { node, incarnation } => {
                if self.nodes[node.0].incarnation == incarnation {
                    self.connect_up(node);
                }
            }
            Scheduled::EndBatch { node, incarnation } => self.end_batch(node, incarnation),
            Scheduled::BusDeliver { node, incarnation, doc, bytes } => self.bus_deliver(node, incarnation, doc, bytes),
            Scheduled::BusRefresh { node, incarnation } => self.bus_refresh(node, incarnation),
            Scheduled::Timeout { node, incarnation, at } => self.timeout(node, incarnation, at),
            Scheduled::Housekeeping { node, incarnation } => self.housekeeping(node, incarnation),
            Scheduled::User(tag) => return Step::User(tag),
        }
        Step::Handled
    }

    fn schedule(&mut self, after: u64, event: Scheduled) {
        self.schedule_at(self.now.0 + after, event);
    }

    fn schedule_at(&mut self, at: u64, event: Scheduled) {
        if !matches!(event, Scheduled::Timeout { .. } | Scheduled::Housekeeping { .. } | Scheduled::User(_)) {
            self.busy += 1;
        }
        self.queue.insert((at, self.next_seq), event);
        self.next_seq += 1;
    }

    fn draw(&mut self, (lo, hi): (u64, u64)) -> u64 {
        self.rng.random_range(lo..=hi)
    }

    fn draw_with_outliers(&mut self, usual: (u64, u64), (percent, outlier): (u32, (u64, u64))) -> u64 {
        if self.rng.random_range(0..100) < percent { self.draw(outlier) } else { self.draw(usual) }
    }

    /// A node's engine timer fires (unless superseded by an earlier one,
    /// or the node crashed since).
    fn timeout(&mut self, n: NodeId, incarnation: u32, at: u64) {
        let node = &mut self.nodes[n.0];
        if node.timer_at != Some(at) || node.incarnation != incarnation {
            return;
        }
        node.timer_at = None;
        let now = self.now;
        if let Some(engine) = node.engine.as_mut() {
            engine.handle_timeout(now);
            self.pump(n);
        }
    }

    /// The node's housekeeping: divergent replicas are found and resynced.
    fn housekeeping(&mut self, n: NodeId, incarnation: u32) {
        if self.nodes[n.0].incarnation != incarnation {
            return;
        }
        let now = self.now;
        let Some(engine) = self.nodes[n.0].engine.as_mut() else { return };
        let found = engine.check_divergence(now, DIVERGENCE_AFTER_MS);
        self.divergence_repairs += found.repairs as usize;
        self.divergence_refetches += found.refetching.len();
        for (doc, conn) in &found.refetching {
            self.note(format!("{} fetches its copy of {doc} again from {conn}", self.name(n)));
        }
        for (doc, conn, _, apart) in &found.divergent {
            self.note(format!("{} finds its replica on {conn} of {doc} divergent ({apart} ms apart)", self.name(n)));
        }
        self.pump(n);
        self.schedule(HOUSEKEEPING_MS, Scheduled::Housekeeping { node: n, incarnation });
    }

    /// Schedules the node's engine timer for its next deadline, unless one
    /// as early is scheduled already.
    fn arm_timer(&mut self, n: NodeId) {
        let node = &self.nodes[n.0];
        let Some(at) = node.engine.as_ref().and_then(ShardedEngine::poll_timeout) else { return };
        let at = at.0.max(self.now.0);
        if node.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        let incarnation = node.incarnation;
        self.nodes[n.0].timer_at = Some(at);
        self.schedule_at(at, Scheduled::Timeout { node: n, incarnation, at });
    }

    // ----- nodes and links -----------------------------------------------

    fn start_node(&mut self, n: NodeId) {
        let rng_seed = self.rng.random();
        let node = &mut self.nodes[n.0];
        let mut config = EngineConfig::new(node.peer_id.clone(), node.storage_id.clone());
        config.idle_evict_after_ms = node.spec.idle_evict_after_ms;
        config.track_home_lag = true;
        config.rng_seed = rng_seed;
        config.expects_upstream = node.spec.upstream.is_some();
        config.send_before_durable = node.spec.sends_before_durable;
        // As `meridian_node::client` and `@meridian/client`: a client's own
        // changes are never spaced out (servers space what they send).
        if node.spec.upstream.is_some() && !node.spec.node {
            config.co_writer_spacing_ms = 0;
        }
        // As the node runtime: a copy still divergent from the upstream's
        // after the resyncs is fetched again (must lose nothing here).
        config.refetch_divergent = node.spec.upstream.is_some();
        // Small documents are compacted too (most of the time), so reloads
        // read one snapshot and fresh peers are answered from it.
        config.min_compact_bytes = [0, 512, 16 * 1024][(rng_seed % 3) as usize];
        // Peers' messages are applied off the loop: never, always, or for
        // documents past a few hundred operations.
        config.apply_off_loop_ops = [0, 1, 300][((rng_seed >> 8) % 3) as usize];
        let (least, most) = node.spec.shards;
        let shards = least + (rng_seed >> 16) as usize % (most - least + 1);
        node.engine = Some(ShardedEngine::new(config, shards));
        let incarnation = node.incarnation;
        self.schedule(HOUSEKEEPING_MS, Scheduled::Housekeeping { node: n, incarnation });
        let shards = self.nodes[n.0].engine.as_ref().map_or(0, |e| e.shards().len());
        let incarnation = self.nodes[n.0].incarnation;
        self.note(format!("{} start (incarnation {incarnation}, {shards} shard(s))", self.name(n)));
        self.connect_up(n);
    }

    /// Opens a connection to the node's upstream, or retries later if that
    /// is impossible right now.
    fn connect_up(&mut self, n: NodeId) {
        let node = &self.nodes[n.0];
        let Some(up) = node.spec.upstream else { return };
        if node.engine.is_none() || node.uplink.is_some() {
            return;
        }
        if let Some(other) = node.spec.fallback
            && self.nodes[up.0].engine.is_none()
            && self.nodes[other.0].engine.is_some()
            && self.now >= node.partitioned_until
        {
            // Its hub is down: the next one it was given.
            let spec = &mut self.nodes[n.0].spec;
            (spec.upstream, spec.fallback) = (Some(other), Some(up));
            self.failovers += 1;
            self.note(format!("{} fails over from {} to {}", self.name(n), self.name(up), self.name(other)));
            return self.connect_up(n);
        }
        if self.now < node.partitioned_until || self.nodes[up.0].engine.is_none() {
            self.note(format!("{} connect to {} refused", self.name(n), self.name(up)));
            self.schedule_reconnect(n);
            return;
        }
        let now = self.now;
        let link = LinkId(self.links.len());
        let client_conn = self.nodes[n.0].engine.as_mut().map(|e| e.handle_connect(now, Direction::Outgoing));
        let access = match (self.spec(n).read_only, self.spec(n).node) {
            (true, _) => Access::client(self.name(n), DocSet::all(), DocSet::none(), false),
            (false, true) => Access::node(self.name(n)),
            (false, false) => Access::full(),
        };
        let server_conn =
            self.nodes[up.0].engine.as_mut().map(|e| e.handle_connect_with(now, Direction::Incoming, access));
        let (Some(client_conn), Some(server_conn)) = (client_conn, server_conn) else { return };
        let incarnations = [self.nodes[n.0].incarnation, self.nodes[up.0].incarnation];
        self.links.push(Link {
            ends: [n, up],
            conns: [client_conn, server_conn],
            incarnations,
            alive: true,
            open: [true, true],
            last_arrival: [0, 0],
            bytes_to: [0, 0],
        });
        self.conn_links.insert((n, incarnations[0], client_conn), link);
        self.conn_links.insert((up, incarnations[1], server_conn), link);
        self.nodes[n.0].uplink = Some(link);
        self.nodes[n.0].open_links.insert(link);
        self.nodes[up.0].open_links.insert(link);
        self.note(format!("{} connect link{} to {}", self.name(n), link.0, self.name(up)));
        self.pump(n);
        self.pump(up);
    }

    fn schedule_reconnect(&mut self, n: NodeId) {
        let delay = self.draw(self.timing.reconnect_backoff);
        let incarnation = self.nodes[n.0].incarnation;
        self.schedule(delay, Scheduled::Reconnect { node: n, incarnation });
    }

    fn side_of(&self, link: LinkId, n: NodeId) -> Side {
        if self.links[link.0].ends[0] == n { Side::Client } else { Side::Server }
    }

    fn deliver(&mut self, link: LinkId, to: Side, bytes: &[u8]) {
        let l = &self.links[link.0];
        let i = to.idx();
        if !l.alive || !l.open[i] {
            return;
        }
        let (n, conn) = (l.ends[i], l.conns[i]);
        if self.record_messages
            && let Ok(codec::Decoded::Message(m)) = codec::decode(bytes)
        {
            self.nodes[n.0].received.push(m);
        }
        let now = self.now;
        if self.nodes[n.0].engine.is_none() {
            return;
        }
        let (percent, length) = self.timing.batch;
        if !self.nodes[n.0].batching && self.rng.random_range(0..100) < percent {
            let after = self.draw(length);
            let node = &mut self.nodes[n.0];
            node.batching = true;
            node.engine.as_mut().map(ShardedEngine::begin_batch);
            self.note(format!("{} batch for {after} ms", self.name(n)));
            let incarnation = self.nodes[n.0].incarnation;
            self.schedule(after, Scheduled::EndBatch { node: n, incarnation });
        }
        if let Some(engine) = self.nodes[n.0].engine.as_mut() {
            let _ = engine.handle_frame(now, conn, bytes);
            self.pump(n);
        }
    }

    fn end_batch(&mut self, n: NodeId, incarnation: u32) {
        let now = self.now;
        let node = &mut self.nodes[n.0];
        if node.incarnation != incarnation || !node.batching {
            return;
        }
        node.batching = false;
        if let Some(engine) = node.engine.as_mut() {
            engine.end_batch(now);
            self.pump(n);
        }
    }

    /// The side's connection ends: the peer closed it or the transport died.
    fn end_of_stream(&mut self, link: LinkId, side: Side, why: &str) {
        let l = &mut self.links[link.0];
        let i = side.idx();
        if !l.open[i] {
            return;
        }
        l.open[i] = false;
        l.alive = false;
        let (n, conn, incarnation) = (l.ends[i], l.conns[i], l.incarnations[i]);
        self.conn_links.remove(&(n, incarnation, conn));
        self.nodes[n.0].open_links.remove(&link);
        self.note(format!("{} link{} ends: {why}", self.name(n), link.0));
        let now = self.now;
        if let Some(engine) = self.nodes[n.0].engine.as_mut() {
            engine.handle_disconnect(now, conn);
            self.pump(n);
        }
        if side == Side::Client && self.nodes[n.0].uplink == Some(link) {
            self.nodes[n.0].uplink = None;
            self.schedule_reconnect(n);
        }
    }

    /// The engine asked to close a connection (after what it sent before).
    /// Closes the node's side of `conn`'s link; whether it was open (then
    /// the engine is told of the disconnect).
    fn close_conn(&mut self, n: NodeId, conn: ConnId, reason: &str) -> bool {
        let incarnation = self.nodes[n.0].incarnation;
        let Some(link) = self.conn_links.remove(&(n, incarnation, conn)) else { return false };
        let side = self.side_of(link, n);
        self.note(format!("{} closes link{}: {reason}", self.name(n), link.0));
        let l = &mut self.links[link.0];
        l.open[side.idx()] = false;
        self.nodes[n.0].open_links.remove(&link);
        let l = &self.links[link.0];
        let to = side.other();
        if l.alive && l.open[to.idx()] {
            let at = self.arrival_time(link, to);
            self.schedule_at(at, Scheduled::Fin { link, to });
        }
        if side == Side::Client && self.nodes[n.0].uplink == Some(link) {
            self.nodes[n.0].uplink = None;
            self.schedule_reconnect(n);
        }
        true
    }

    /// When something sent now towards `to` arrives, keeping the link FIFO.
    fn arrival_time(&mut self, link: LinkId, to: Side) -> u64 {
        let delay = self.draw_with_outliers(self.timing.net_delay, self.timing.net_spike);
        let l = &mut self.links[link.0];
        let at = (self.now.0 + delay).max(l.last_arrival[to.idx()]);
        l.last_arrival[to.idx()] = at;
        at
    }

    // ----- engine outputs -------------------------------------------------

    /// Drives the node's engine ([`Engine::drive_to_event`]) and carries
    /// out what it asked for; events are handled with the engine back in
    /// place, in order.
    fn pump(&mut self, n: NodeId) {
        loop {
            let Some(mut engine) = self.nodes[n.0].engine.take() else { return };
            let now = self.now;
            let event = engine.drive_to_event(now, &mut SimIo { sim: self, n });
            self.nodes[n.0].engine = Some(engine);
            match event {
                Some(event) => self.on_event(n, event),
                None => return self.arm_timer(n),
            }
        }
    }

    fn send(&mut self, n: NodeId, conn: ConnId, message: &Message) {
        let summary = self.check_advertised_heads_durable(n, message);
        let bytes = codec::encode(message);
        let incarnation = self.nodes[n.0].incarnation;
        let Some(&link) = self.conn_links.get(&(n, incarnation, conn)) else {
            self.note(format!("{} send on closed {conn} dropped", self.name(n)));
            return;
        };
        let side = self.side_of(link, n);
        let to = side.other();
        let l = &self.links[link.0];
        let peer = l.ends[to.idx()];
        let delivered = l.alive && l.open[side.idx()];
        self.note(format!(
            "{} -> {} link{} {}{} {}B{}{}",
            self.name(n),
            self.name(peer),
            link.0,
            message.type_name(),
            message.document_id().map(|d| format!(" {}", short(&d))).unwrap_or_default(),
            bytes.len(),
            summary,
            if delivered { "" } else { " (lost)" },
        ));
        if !delivered {
            return;
        }
        let at = self.arrival_time(link, to);
        self.links[link.0].bytes_to[to.idx()] += bytes.len() as u64;
        self.schedule_at(at, Scheduled::Frame { link, to, bytes });
    }

    fn on_event(&mut self, n: NodeId, event: Event) {
        match &event {
            Event::ProtocolError { conn, kind, detail } => {
                self.fail(format!("{} reported a protocol error on {conn} ({}): {detail}", self.name(n), kind.as_str()))
            }
            Event::StorageFailed { detail, .. } if detail != INJECTED_FAILURE => {
                self.fail(format!("{}: storage failed: {detail}", self.name(n)))
            }
            Event::Ephemeral { sender, data, .. }
                if self.unique_ephemeral_payloads
                    && !self.nodes[n.0].ephemeral_seen.insert((sender.clone(), data.clone())) =>
            {
                self.fail(format!("{} got the same ephemeral message from {sender} twice", self.name(n)));
            }
            Event::DocChanged { doc, heads } => {
                if let Some(missing) = self.not_durable(n, doc, heads) {
                    self.fail(format!(
                        "{} announced heads of {doc} that are not durable: {}",
                        self.name(n),
                        hex8(&missing)
                    ));
                }
            }
            Event::PeerConnected { conn, .. } if self.is_uplink_conn(n, *conn) => self.backfill(n),
            _ => {}
        }
        self.note(format!("{} event {}", self.name(n), describe_event(&event)));
        self.nodes[n.0].events.push(event);
    }

    /// Whether `conn` is node `n`'s connection to its upstream.
    fn is_uplink_conn(&self, n: NodeId, conn: ConnId) -> bool {
        let Some(link) = self.uplink(n) else { return false };
        self.links[link.0].conns[self.side_of(link, n).idx()] == conn
    }

    /// What the node runtime does once an uplink is up: the engine's
    /// backfill ([`Engine::backfill`]) opens every stored document so it
    /// syncs with the hub — documents no local application has open too
    /// (evicted, or handed to this edge by a hub).
    fn backfill(&mut self, n: NodeId) {
        let docs: Vec<DocumentId> = self.nodes[n.0].durable.keys().copied().collect();
        let now = self.now;
        let Some(engine) = self.nodes[n.0].engine.as_mut() else { return };
        let count = docs.len();
        engine.backfill(now, docs);
        self.note(format!("{} backfill {count} stored documents", self.name(n)));
    }

    /// Durable before advertised: the heads of every sync message a node
    /// sends must be in its store already.
    ///
    /// Returns a summary of the sync message for the trace.
    fn check_advertised_heads_durable(&self, n: NodeId, message: &Message) -> String {
        let (doc, data) = match message {
            Message::Sync { document_id, data, .. } | Message::Request { document_id, data, .. } => (document_id, data),
            _ => return String::new(),
        };
        let Ok(sync) = automerge::sync::Message::decode(data) else {
            self.fail(format!("{} sent a sync message for {doc} that does not decode", self.name(n)))
        };
        if let Some(missing) = self.not_durable(n, doc, &sync.heads).filter(|_| !self.spec(n).sends_before_durable) {
            self.fail(format!(
                "durable-before-advertised violated: {} sent {} for {doc} advertising head {} not yet in its store",
                self.name(n),
                message.type_name(),
                hex8(&missing)
            ));
        }
        format!(" heads={} need={} changes={}", heads_str(&sync.heads), sync.need.len(), sync.changes.len())
    }

    /// The first of `heads` missing from the node's store, if any.
    fn not_durable(&self, n: NodeId, doc: &DocumentId, heads: &[ChangeHash]) -> Option<ChangeHash> {
        let durable = self.nodes[n.0].durable.get(doc);
        heads.iter().copied().find(|h| !durable.is_some_and(|d| contains(d, h)))
    }

    // ----- storage --------------------------------------------------------

    fn start_storage(&mut self, n: NodeId) {
        if self.nodes[n.0].engine.is_some() {
            self.run_next_task(n);
        }
    }

    /// Schedules the completion of the node's next storage task, unless one
    /// is running (the node is up).
    fn run_next_task(&mut self, n: NodeId) {
        let node = &self.nodes[n.0];
        if node.storage_busy || node.tasks.is_empty() {
            return;
        }
        self.nodes[n.0].storage_busy = true;
        let latency = self.draw_with_outliers(self.timing.storage_latency, self.timing.storage_stall);
        let incarnation = self.nodes[n.0].incarnation;
        self.schedule(latency, Scheduled::StorageDone { node: n, incarnation });
    }

    /// The task at the head of the node's queue completes: it takes effect
    /// on the store and the engine learns the result.
    fn finish_storage(&mut self, n: NodeId, incarnation: u32) {
        if self.nodes[n.0].incarnation != incarnation {
            return;
        }
        self.nodes[n.0].storage_busy = false;
        let Some((id, task)) = self.nodes[n.0].tasks.pop_front() else { return };
        let is_write = matches!(task, StorageTask::AppendChunk { .. } | StorageTask::Compact { .. });
        // Only draw when failures are on, so that turning them off leaves
        // every seed's schedule as it was.
        let fail = is_write
            && self.storage_failure_percent > 0
            && self.rng.random_range(0..100) < self.storage_failure_percent;
        let result = if let Some(fenced) = self.nodes[n.0].fence.check(&task) {
            fenced
        } else if fail {
            self.storage_failures += 1;
            StorageResult::Failed(INJECTED_FAILURE.to_owned())
        } else {
            let result = match self.nodes[n.0].group {
                Some(g) => self.groups[g].execute(n, &task),
                None => self.nodes[n.0].store.execute(&task),
            };
            self.apply_to_mirror(n, &task);
            result
        };
        if let (Some(g), StorageResult::Done) = (self.nodes[n.0].group, &result)
            && let StorageTask::AppendChunk { doc, data } | StorageTask::Compact { doc, snapshot: data } = &task
        {
            self.publish(n, g, *doc, data.clone());
        }
        self.nodes[n.0].fence.record(&task, &result);
        let outcome = match &result {
            StorageResult::Done | StorageResult::Loaded(Some(_)) => "done".to_owned(),
            StorageResult::Loaded(None) => "done (nothing stored)".to_owned(),
            StorageResult::Failed(e) => format!("FAILED: {e}"),
        };
        self.note(format!("{} storage {} {outcome}", self.name(n), describe_task(&task)));
        let now = self.now;
        if let Some(engine) = self.nodes[n.0].engine.as_mut() {
            engine.handle_storage_result(now, id, result);
            self.pump(n);
        }
        self.start_storage(n);
    }

    /// A hub committed a chunk to a shared store: the bus takes it to the
    /// other hubs on it (FIFO per pair). Lost messages are reported to the
    /// receiver, which reads the store again; while the bus is down nothing
    /// crosses.
    fn publish(&mut self, from: NodeId, g: usize, doc: DocumentId, bytes: Vec<u8>) {
        for m in self.groups[g].members.clone() {
            if m == from || self.nodes[m.0].engine.is_none() || self.now < self.bus_down_until {
                continue;
            }
            let incarnation = self.nodes[m.0].incarnation;
            let delay = self.draw(self.timing.net_delay);
            if self.rng.random_range(0..100) < self.bus_loss_percent {
                self.note(format!("bus lost {}'s commit of {} to {}", self.name(from), short(&doc), self.name(m)));
                self.schedule(delay, Scheduled::BusRefresh { node: m, incarnation });
                continue;
            }
            let last = self.groups[g].bus_last.get(&(from, m)).copied().unwrap_or(0);
            let at = (self.now.0 + delay).max(last);
            self.groups[g].bus_last.insert((from, m), at);
            self.schedule_at(at, Scheduled::BusDeliver { node: m, incarnation, doc, bytes: bytes.clone() });
        }
    }

    fn bus_deliver(&mut self, n: NodeId, incarnation: u32, doc: DocumentId, bytes: Vec<u8>) {
        if self.nodes[n.0].incarnation != incarnation {
            return;
        }
        let now = self.now;
        if let Some(engine) = self.nodes[n.0].engine.as_mut() {
            self.bus_delivered += 1;
            engine.handle_stored_elsewhere(now, doc, bytes);
            self.pump(n);
        }
    }

    /// (Any incarnation: a hub started since reads the store too, as it
    /// would when the bus tells it it is back.)
    fn bus_refresh(&mut self, n: NodeId, _incarnation: u32) {
        let now = self.now;
        if let Some(engine) = self.nodes[n.0].engine.as_mut() {
            self.bus_refreshes += 1;
            engine.refresh_all_from_store(now);
            self.note(format!("{} reads its open documents from the shared store again", self.name(n)));
            self.pump(n);
        }
    }

    /// The bus is down until `until`: hubs read the store every 2 s
    /// meanwhile, and once more when it is back.
    pub fn bus_outage(&mut self, until: Millis) {
        self.bus_down_until = until;
        self.note(format!("fault bus down until {}", until.0));
        let hubs: Vec<NodeId> = self.groups.iter().flat_map(|g| g.members.clone()).collect();
        for h in hubs {
            let incarnation = self.nodes[h.0].incarnation;
            let mut at = self.now.0 + shared::POLL_WHILE_DOWN;
            while at < until.0 {
                self.schedule_at(at, Scheduled::BusRefresh { node: h, incarnation });
                at += shared::POLL_WHILE_DOWN;
            }
            self.schedule_at(until.0, Scheduled::BusRefresh { node: h, incarnation });
        }
    }

    /// Ends a bus outage now.
    pub fn bus_heal(&mut self) {
        if self.bus_down_until > self.now {
            self.bus_outage(self.now);
        }
    }

    /// The node's oldest apply job completes and the engine takes its result.
    fn finish_apply(&mut self, n: NodeId, incarnation: u32) {
        if self.nodes[n.0].incarnation != incarnation {
            return;
        }
        let Some(job) = self.nodes[n.0].applying.pop_front() else { return };
        self.note(format!("{} applied off the loop for {}", self.name(n), short(&job.doc())));
        let now = self.now;
        if let Some(engine) = self.nodes[n.0].engine.as_mut() {
            self.applied_off_loop += 1;
            engine.handle_applied(now, job.run());
            self.pump(n);
        }
    }

    /// Keeps the loaded view of the store in step with a completed task.
    fn apply_to_mirror(&mut self, n: NodeId, task: &StorageTask) {
        if let Some(g) = self.nodes[n.0].group {
            self.apply_to_group_mirror(n, g, task);
        } else {
            self.apply_to_own_mirror(n, task);
        }
        self.check_stored(n, task);
    }

    /// The loaded view of a shared store, the same at every hub on it:
    /// what it holds of the document now, which must keep every change it
    /// held before.
    fn apply_to_group_mirror(&mut self, n: NodeId, g: usize, task: &StorageTask) {
        let doc = match task {
            StorageTask::AppendChunk { doc, .. }
            | StorageTask::Compact { doc, .. }
            | StorageTask::Quarantine { doc, .. }
            | StorageTask::DeleteDoc { doc } => *doc,
            StorageTask::LoadDoc { .. }
            | StorageTask::ReadDoc { .. }
            | StorageTask::LoadSyncState { .. }
            | StorageTask::PutSyncState { .. } => {
                return;
            }
        };
        let now = match self.groups[g].load(&doc) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                self.fail(format!("{} left chunks of {doc} in the shared store that do not load: {e}", self.name(n)))
            }
        };
        if !matches!(task, StorageTask::DeleteDoc { .. }) {
            let old = self.nodes[n.0].durable.get(&doc).map(Automerge::get_heads).unwrap_or_default();
            if let Some(lost) = old.iter().find(|h| !now.as_ref().is_some_and(|d| contains(d, h))) {
                self.fail(format!("{} lost change {} of {doc} from the shared store", self.name(n), hex8(lost)));
            }
        } else {
            self.offloads += 1;
        }
        for m in self.groups[g].members.clone() {
            match &now {
                Some(d) => self.nodes[m.0].durable.insert(doc, d.clone()),
                None => self.nodes[m.0].durable.remove(&doc),
            };
        }
    }

    fn apply_to_own_mirror(&mut self, n: NodeId, task: &StorageTask) {
        match task {
            StorageTask::AppendChunk { doc, data } => {
                let d = self.nodes[n.0].durable.entry(*doc).or_insert_with(empty_doc);
                if let Err(e) = d.load_incremental(data) {
                    self.fail(format!("{} stored a chunk of {doc} that does not load: {e}", self.name(n)));
                }
            }
            // A snapshot replacing every chunk: a compaction keeps every
            // change; a replaced copy (`Quarantine`) may leave out only what
            // the new copy refuses.
            StorageTask::Compact { doc, snapshot } | StorageTask::Quarantine { doc, snapshot, .. } => {
                let Ok(new) = Automerge::load(snapshot) else {
                    self.fail(format!("{} stored a snapshot of {doc} that does not load", self.name(n)))
                };
                if let Some(old) = self.nodes[n.0].durable.get(doc) {
                    let wrong = if matches!(task, StorageTask::Quarantine { .. }) {
                        left_out_wrongly(old, &new)
                    } else {
                        old.get_heads()
                            .iter()
                            .find(|h| !contains(&new, h))
                            .map(|lost| format!("compacted into a snapshot without {}", hex8(lost)))
                    };
                    if let Some(why) = wrong {
                        self.fail(format!("{} stored {doc}: {why}", self.name(n)));
                    }
                }
                self.nodes[n.0].durable.insert(*doc, new);
            }
            StorageTask::DeleteDoc { doc } => {
                self.nodes[n.0].durable.remove(doc);
                self.offloads += 1;
            }
            StorageTask::LoadDoc { .. }
            | StorageTask::ReadDoc { .. }
            | StorageTask::LoadSyncState { .. }
            | StorageTask::PutSyncState { .. } => {}
        }
    }

    /// Checks on what a completed write left in the store.
    fn check_stored(&mut self, n: NodeId, task: &StorageTask) {
        if let StorageTask::AppendChunk { doc, .. } = task {
            let complete = self.nodes[n.0].durable.get(doc).is_some_and(|d| d.get_missing_deps(&[]).is_empty());
            if !complete {
                self.fail(format!("{} stored changes of {doc} whose dependencies are not stored", self.name(n)));
            }
        }
        if let (StorageTask::AppendChunk { doc, .. }, true) = (task, self.spec(n).persistent) {
            let stored = &self.nodes[n.0].durable[doc];
            let newly: Vec<ChangeHash> = self
                .edits
                .iter()
                .filter(|e| e.doc == *doc && !self.ever_durable.contains(&e.hash) && contains(stored, &e.hash))
                .map(|e| e.hash)
                .collect();
            self.ever_durable.extend(newly);
        }
        if let StorageTask::AppendChunk { doc, .. } | StorageTask::Compact { doc, .. } = task
            && !self.spec(n).read_only
        {
            let stored = &self.nodes[n.0].durable[doc];
            let foreign =
                self.edits.iter().find(|e| e.doc == *doc && self.is_viewer(e.node) && contains(stored, &e.hash));
            if let Some(e) = foreign {
                let (hash, author) = (hex8(&e.hash), self.name(e.node));
                self.fail(format!("{} stored change {hash} of {doc} from the read-only {author}", self.name(n)));
            }
        }
    }

    /// A read-only client (see [`NodeSpec::read_only`]).
    pub fn is_viewer(&self, n: NodeId) -> bool {
        self.spec(n).read_only
    }

    // ----- checks -----------------------------------------------------------

    /// Checks, once quiet, that every replica of every document agrees:
    /// same heads and same value on every node that holds it, every client
    /// that opened a document (and every server above it) holds it, and
    /// every edit that was durable at the node that made it is everywhere.
    pub fn check_converged(&self) -> Result<(), String> {
        for n in self.node_ids() {
            if !self.is_up(n) {
                return Err(format!("{} is down", self.name(n)));
            }
            if let Some(up) = self.spec(n).upstream
                && !self.uplink(n).is_some_and(|l| self.link_ready(l))
            {
                return Err(format!("{} is not connected to {}", self.name(n), self.name(up)));
            }
        }
        for doc in self.all_docs() {
            self.check_doc_converged(&doc)?;
        }
        Ok(())
    }

    /// Checks, once quiet and before any application touches its documents
    /// again, that nothing is stuck below the top of the tree: every change
    /// in any node's store is in the store of the node at the top of its
    /// chain (the hub, or the edge of a star), and every node that has a
    /// document in memory is at the top's heads.
    pub fn check_caught_up(&self) -> Result<(), String> {
        for n in self.node_ids() {
            let root = self.root_of(n);
            // A read-only client's own changes stay with it.
            let viewer = self.is_viewer(n);
            for (doc, stored) in self.nodes[n.0].durable.iter().filter(|_| !viewer) {
                let top = self.nodes[root.0].durable.get(doc);
                let missing = stored.get_heads().into_iter().find(|h| !top.is_some_and(|t| contains(t, h)));
                if let Some(h) = missing {
                    return Err(format!(
                        "{} stores change {} of {doc} that never reached {}",
                        self.name(n),
                        hex8(&h),
                        self.name(root)
                    ));
                }
            }
            let Some(engine) = self.engine(n) else { continue };
            for doc in self.all_docs() {
                let Some(live) = engine.document(&doc).filter(|d| !d.get_heads().is_empty()) else { continue };
                let top = self.replica(root, &doc)?.map(Automerge::get_heads).unwrap_or_default();
                let current = if viewer { top.iter().all(|h| contains(live, h)) } else { live.get_heads() == top };
                if !current {
                    return Err(format!(
                        "{} has {doc} in memory at {} but {} is at {}",
                        self.name(n),
                        heads_str(&live.get_heads()),
                        self.name(root),
                        heads_str(&top)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every application opens each document it knows again (as after a
    /// page reload), so that evicted copies sync as well.
    pub fn reopen_all(&mut self) {
        for n in self.node_ids() {
            let docs: Vec<DocumentId> = self.nodes[n.0].known_docs.iter().copied().collect();
            for doc in docs {
                self.find(n, doc);
            }
        }
    }

    fn root_of(&self, mut n: NodeId) -> NodeId {
        while let Some(up) = self.spec(n).upstream {
            n = up;
        }
        n
    }

    fn all_docs(&self) -> BTreeSet<DocumentId> {
        let mut docs = BTreeSet::new();
        for node in &self.nodes {
            docs.extend(node.known_docs.iter().copied());
            docs.extend(node.durable.keys().copied());
        }
        docs
    }

    /// The node's replica of a document: what is in memory (which must be
    /// durable by now) or else what is in its store.
    pub fn replica(&self, n: NodeId, doc: &DocumentId) -> Result<Option<&Automerge>, String> {
        let durable = self.nodes[n.0].durable.get(doc).filter(|d| !d.get_heads().is_empty());
        let memory = self.engine(n).and_then(|e| e.document(doc)).filter(|d| !d.get_heads().is_empty());
        match (memory, durable) {
            (Some(m), Some(d)) if m.get_heads() != d.get_heads() => Err(format!(
                "{} holds {doc} in memory at heads {} but its store has {}",
                self.name(n),
                heads_str(&m.get_heads()),
                heads_str(&d.get_heads())
            )),
            (Some(_), _) if durable.is_none() => {
                Err(format!("{} holds {doc} in memory but nothing of it is stored", self.name(n)))
            }
            (m, d) => Ok(m.or(d)),
        }
    }

    /// Changes a node holds in memory that wait for a dependency are stuck
    /// if some node has that dependency: sync failed to deliver it. (If no
    /// node has it, it died with an ephemeral node before reaching anyone,
    /// and what depends on it is lost too.)
    fn check_no_stuck_changes(&self, doc: &DocumentId) -> Result<(), String> {
        for n in self.node_ids() {
            let Some(d) = self.engine(n).and_then(|e| e.document(doc)) else { continue };
            for dep in d.get_missing_deps(&[]) {
                let holder = self.node_ids().find(|m| {
                    let memory = self.engine(*m).and_then(|e| e.document(doc));
                    memory.into_iter().chain(self.nodes[m.0].durable.get(doc)).any(|r| contains(r, &dep))
                });
                if let Some(holder) = holder {
                    return Err(format!(
                        "{} holds changes of {doc} waiting for {} which {} has",
                        self.name(n),
                        hex8(&dep),
                        self.name(holder)
                    ));
                }
            }
        }
        Ok(())
    }

    fn required_holders(&self, doc: &DocumentId) -> BTreeSet<NodeId> {
        let mut required = BTreeSet::new();
        for n in self.node_ids() {
            if self.nodes[n.0].known_docs.contains(doc) {
                let mut at = Some(n);
                while let Some(m) = at {
                    required.insert(m);
                    at = self.spec(m).upstream;
                }
            }
        }
        required
    }

    fn check_doc_converged(&self, doc: &DocumentId) -> Result<(), String> {
        self.check_no_stuck_changes(doc)?;
        let mut replicas = Vec::new();
        for n in self.node_ids() {
            replicas.push((n, self.replica(n, doc)?));
        }
        // A document nobody holds was lost with the only (ephemeral) node
        // that had it; the edit check below still applies.
        let lost = replicas.iter().all(|(_, r)| r.is_none());
        let required = if lost { BTreeSet::new() } else { self.required_holders(doc) };
        let mut reference: Option<(NodeId, &Automerge)> = None;
        let mut viewers = Vec::new();
        for (n, replica) in replicas {
            let Some(replica) = replica else {
                if required.contains(&n) {
                    return Err(format!("{} should hold {doc} but does not", self.name(n)));
                }
                continue;
            };
            if self.is_viewer(n) {
                viewers.push((n, replica));
                continue;
            }
            let Some((r, reference_doc)) = reference else {
                reference = Some((n, replica));
                continue;
            };
            if replica.get_heads() != reference_doc.get_heads() {
                return Err(format!(
                    "{doc} diverged: {} has heads {} but {} has {}",
                    self.name(r),
                    heads_str(&reference_doc.get_heads()),
                    self.name(n),
                    heads_str(&replica.get_heads())
                ));
            }
            if replica.hydrate(None) != reference_doc.hydrate(None) {
                return Err(format!(
                    "{doc} has the same heads on {} and {} but different values",
                    self.name(r),
                    self.name(n)
                ));
            }
        }
        // A read-only client has everything the others agree on (and edits
        // of its own that went nowhere).
        if let Some((r, reference_doc)) = reference {
            for (n, viewer) in viewers {
                if let Some(h) = reference_doc.get_heads().iter().find(|h| !contains(viewer, h)) {
                    let (viewer, holder) = (self.name(n), self.name(r));
                    return Err(format!("the read-only {viewer} lacks change {} of {doc} that {holder} has", hex8(h)));
                }
            }
        }
        for e in self.edits.iter().filter(|e| e.doc == *doc && !self.is_viewer(e.node)) {
            let durable_at_author = self.nodes[e.node.0].durable.get(doc).is_some_and(|d| contains(d, &e.hash));
            // Durable at a node that keeps its store: never to be lost, even
            // if that node dropped its copy later (it may, once the upstream
            // has it).
            let durable = durable_at_author || self.ever_durable.contains(&e.hash);
            if durable && !reference.is_some_and(|(_, r)| contains(r, &e.hash)) {
                return Err(format!(
                    "edit {} of {doc} by {} was durable there but is lost",
                    hex8(&e.hash),
                    self.name(e.node)
                ));
            }
        }
        Ok(())
    }

    /// Edits that are in no replica at the end (lost legitimately: never
    /// durable anywhere before a crash).
    pub fn lost_edits(&self) -> usize {
        self.edits
            .iter()
            .filter(|e| !self.is_viewer(e.node))
            .filter(|e| {
                !self.node_ids().any(|n| self.replica(n, &e.doc).ok().flatten().is_some_and(|d| contains(d, &e.hash)))
            })
            .count()
    }
}

/// A replaced copy (`StorageTask::Quarantine`) may leave out only the old
/// copy's changes the new one refuses — one with the actor and sequence
/// number of a different change it holds — and those that depend on them.
fn left_out_wrongly(old: &Automerge, new: &Automerge) -> Option<String> {
    let mut left_out = std::collections::HashSet::new();
    let taken: Vec<(ActorId, u64)> = new.get_changes(&[]).iter().map(|c| (c.actor_id().clone(), c.seq())).collect();
    for change in old.get_changes(&[]) {
        let hash = change.hash();
        if contains(new, &hash) {
            continue;
        }
        let forked = taken.iter().any(|(actor, seq)| actor == change.actor_id() && *seq == change.seq());
        if !forked && !change.deps().iter().any(|d| left_out.contains(d)) {
            return Some(format!("change {} was left out though the new copy would take it", hex8(&hash)));
        }
        left_out.insert(hash);
    }
    None
}

fn empty_doc() -> Automerge {
    // A fixed actor: the mirror never makes changes, and `ActorId::random`
    // would draw from the OS.
    Automerge::new().with_actor(ActorId::from(&[0u8; 16][..]))
}

/// Whether the document has applied the change. The fast check is exact
/// only while no change waits in the document's queue (always so for the
/// stores, asserted in [`Sim::apply_to_mirror`]).
fn contains(doc: &Automerge, hash: &ChangeHash) -> bool {
    if doc.get_missing_deps(&[]).is_empty() {
        doc.get_missing_deps(std::slice::from_ref(hash)).is_empty()
    } else {
        doc.get_change_meta_by_hash(hash).is_some()
    }
}

fn short(doc: &DocumentId) -> String {
    doc.to_string().chars().take(6).collect()
}

fn hex8(hash: &ChangeHash) -> String {
    hash.0[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn heads_str(heads: &[ChangeHash]) -> String {
    let parts: Vec<String> = heads.iter().map(hex8).collect();
    format!("[{}]", parts.join(","))
}

fn describe_task(task: &StorageTask) -> String {
    match task {
        StorageTask::LoadDoc { doc } => format!("load {}", short(doc)),
        StorageTask::ReadDoc { doc } => format!("read {}", short(doc)),
        StorageTask::AppendChunk { doc, data } => format!("append {} {}B", short(doc), data.len()),
        StorageTask::Compact { doc, snapshot } => format!("compact {} {}B", short(doc), snapshot.len()),
        StorageTask::DeleteDoc { doc } => format!("delete {}", short(doc)),
        StorageTask::Quarantine { doc, snapshot, .. } => format!("quarantine {} {}B", short(doc), snapshot.len()),
        StorageTask::LoadSyncState { doc, peer } => format!("load-sync-state {} {}", short(doc), &peer.as_str()[..8]),
        StorageTask::PutSyncState { doc, peer, .. } => format!("put-sync-state {} {}", short(doc), &peer.as_str()[..8]),
    }
}

fn describe_event(event: &Event) -> String {
    match event {
        Event::PeerConnected { conn, peer, .. } => format!("peer-connected {conn} {peer}"),
        Event::PeerDisconnected { conn, peer } => format!("peer-disconnected {conn} {peer:?}"),
        Event::DocUpdated { doc } => format!("doc-updated {}", short(doc)),
        Event::DocChanged { doc, heads } => format!("doc-changed {} {}", short(doc), heads_str(heads)),
        Event::DocReady { doc } => format!("doc-ready {}", short(doc)),
        Event::DocUnavailable { doc } => format!("doc-unavailable {}", short(doc)),
        Event::Ephemeral { doc, sender, data } => format!("ephemeral {} from {sender} {}B", short(doc), data.len()),
        Event::ProtocolError { conn, kind, .. } => format!("protocol-error {conn} {}", kind.as_str()),
        Event::StorageFailed { doc, .. } => format!("storage-failed {doc:?}"),
        Event::Evicted { doc } => format!("evicted {}", short(doc)),
        Event::HomeConfirmed { doc, lag_ms } => format!("home-confirmed {} after {lag_ms} ms", short(doc)),
        Event::ReplicaConfirmed { doc, conn, lag_ms } => {
            format!("replica-confirmed {} on {conn} after {lag_ms} ms", short(doc))
        }
        Event::Refused { conn, refusal, .. } => format!("refused {conn} {}", refusal.as_str()),
        Event::Created { doc, conn, .. } => format!("created {} by {conn}", short(doc)),
        Event::Unapplicable { doc, conn, detail } => format!("unapplicable {} from {conn}: {detail}", short(doc)),
        Event::Refetched { doc, restored, left } => {
            format!("refetched {} ({restored} restored, {left} left out)", short(doc))
        }
    }
}

/// The simulation's side of one node's engine outputs (the engine is taken
/// out of the node while it drives).
struct SimIo<'a> {
    sim: &'a mut Sim,
    n: NodeId,
}

impl Driver for SimIo<'_> {
    fn send(&mut self, conn: ConnId, message: Message) {
        self.sim.send(self.n, conn, &message);
    }

    fn close(&mut self, conn: ConnId, reason: String) -> bool {
        self.sim.close_conn(self.n, conn, &reason)
    }

    fn storage(&mut self, id: StorageTaskId, task: StorageTask) -> Option<StorageResult> {
        // The engine holds the pinned set, but it is out of the node while it
        // drives; what it pins is mirrored in `pinned`.
        if let StorageTask::DeleteDoc { doc } = &task
            && self.sim.nodes[self.n.0].pinned.contains(doc)
        {
            let name = self.sim.name(self.n).to_owned();
            self.sim.fail(format!("{name} drops {doc}, which is homed there"));
        }
        self.sim.nodes[self.n.0].tasks.push_back((id, task));
        self.sim.run_next_task(self.n);
        None
    }

    fn apply(&mut self, job: ApplyJob) -> Option<Applied> {
        let latency = self.sim.draw(self.sim.timing.storage_latency);
        let incarnation = self.sim.nodes[self.n.0].incarnation;
        self.sim.nodes[self.n.0].applying.push_back(job);
        self.sim.schedule(latency, Scheduled::Applied { node: self.n, incarnation });
        None
    }
}

// ----- the random workload ---------------------------------------------------

/// What one seed's run did, besides its trace.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub nodes: usize,
    pub docs: usize,
    pub edits: usize,
    /// Edits in no replica at the end (made at a node that crashed before
    /// they were durable or had reached anyone).
    pub lost_edits: usize,
    pub link_drops: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub evictions: usize,
    /// Ephemeral messages handed to applications (each at most once).
    pub ephemeral_delivered: usize,
    /// Hand-off catch-ups started by a hub, and documents edges dropped
    /// for the hub's copy.
    pub handoffs: usize,
    pub offloads: usize,
    /// Fresh peers answered from a stored snapshot before the load.
    pub snapshot_answers: usize,
    /// Apply jobs run off an engine's loop (`Output::Apply`).
    pub applied_off_loop: usize,
    /// Changes whose home confirmed them, as the engine reported
    /// ([`Event::HomeConfirmed`]).
    pub home_confirmed: usize,
    /// Read-only clients (access control), and the times a server refused
    /// one's changes ([`Event::Refused`]).
    pub viewers: usize,
    pub read_only_refusals: usize,
    /// Writes failed on purpose ([`Sim::storage_failure_percent`]), and
    /// replicas resynced for divergence.
    pub storage_failures: usize,
    pub divergence_repairs: usize,
    /// Copies fetched again from an upstream (the last resort).
    pub divergence_refetches: usize,
    /// Virtual time at which the run was quiet and checked.
    pub end_ms: u64,
    /// Several hubs on one store: commits the bus delivered, reads of the
    /// store in their stead (lost messages, outages), edges' fail-overs.
    pub bus_delivered: usize,
    pub bus_refreshes: usize,
    pub failovers: usize,
}

impl RunStats {
    /// Adds another run's numbers to these (the longest run wins `end_ms`).
    pub fn add(&mut self, other: &RunStats) {
        self.nodes += other.nodes;
        self.docs += other.docs;
        self.edits += other.edits;
        self.lost_edits += other.lost_edits;
        self.link_drops += other.link_drops;
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.evictions += other.evictions;
        self.ephemeral_delivered += other.ephemeral_delivered;
        self.handoffs += other.handoffs;
        self.offloads += other.offloads;
        self.snapshot_answers += other.snapshot_answers;
        self.applied_off_loop += other.applied_off_loop;
        self.viewers += other.viewers;
        self.read_only_refusals += other.read_only_refusals;
        self.storage_failures += other.storage_failures;
        self.divergence_repairs += other.divergence_repairs;
        self.divergence_refetches += other.divergence_refetches;
        self.home_confirmed += other.home_confirmed;
        self.bus_delivered += other.bus_delivered;
        self.bus_refreshes += other.bus_refreshes;
        self.failovers += other.failovers;
        self.end_ms = self.end_ms.max(other.end_ms);
    }
}

/// The trace and numbers of one seed's run.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub trace: Vec<String>,
    pub stats: RunStats,
}

/// Runs the random workload for one seed and returns its trace; panics if
/// an invariant breaks or the replicas do not converge.
pub fn run(seed: u64) -> Vec<String> {
    run_seed(seed).trace
}

/// Runs the random workload for one seed: a random topology, random edits
/// and faults for a while, then every fault healed, quiet, and the
/// convergence check.
pub fn run_seed(seed: u64) -> RunOutcome {
    run_workload(Workload::new(seed))
}

/// [`run_seed`] on the cloud tier's topology: two hubs on one shared store
/// with a lossy bus between them (and outages of it), an edge under each
/// given the other hub to fail over to, clients under the edges.
pub fn run_cloud_seed(seed: u64) -> RunOutcome {
    run_workload(Workload::new_cloud(seed))
}

fn run_workload(mut w: Workload) -> RunOutcome {
    w.run_faulty_phase();
    w.heal_everything();
    if !w.sim.run_until_quiet(600_000) {
        w.sim.fail("did not get quiet within 600 s of virtual time after the faults stopped");
    }
    w.sim.note("quiet");
    if let Err(e) = w.sim.check_caught_up() {
        w.sim.fail(format!("not caught up: {e}"));
    }
    if let Err(e) = w.sim.check_converged() {
        w.sim.fail(format!("not converged before reopening: {e}"));
    }
    w.sim.reopen_all();
    if !w.sim.run_until_quiet(600_000) {
        w.sim.fail("did not get quiet within 600 s of virtual time after reopening every document");
    }
    w.sim.note("quiet after reopening");
    if let Err(e) = w.sim.check_converged() {
        w.sim.fail(format!("not converged: {e}"));
    }
    w.stats.nodes = w.sim.nodes.len();
    w.stats.docs = w.docs.len();
    w.stats.edits = w.sim.edits.len();
    w.stats.lost_edits = w.sim.lost_edits();
    w.stats.evictions =
        w.sim.nodes.iter().flat_map(|n| &n.events).filter(|e| matches!(e, Event::Evicted { .. })).count();
    w.stats.ephemeral_delivered =
        w.sim.nodes.iter().flat_map(|n| &n.events).filter(|e| matches!(e, Event::Ephemeral { .. })).count();
    w.stats.offloads = w.sim.offloads;
    w.stats.home_confirmed =
        w.sim.nodes.iter().flat_map(|n| &n.events).filter(|e| matches!(e, Event::HomeConfirmed { .. })).count();
    w.stats.snapshot_answers = w.sim.snapshot_answers
        + w.sim
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .map(|e| e.stats().snapshot_answers as usize)
            .sum::<usize>();
    w.stats.applied_off_loop = w.sim.applied_off_loop;
    w.stats.viewers = w.clients.iter().filter(|c| w.sim.is_viewer(**c)).count();
    w.stats.read_only_refusals =
        w.sim.nodes.iter().flat_map(|n| &n.events).filter(|e| matches!(e, Event::Refused { .. })).count();
    w.stats.end_ms = w.sim.now.0;
    w.stats.storage_failures = w.sim.storage_failures;
    w.stats.divergence_repairs = w.sim.divergence_repairs;
    w.stats.divergence_refetches = w.sim.divergence_refetches;
    w.stats.bus_delivered = w.sim.bus_delivered;
    w.stats.bus_refreshes = w.sim.bus_refreshes;
    w.stats.failovers = w.sim.failovers;
    RunOutcome { trace: w.sim.into_trace(), stats: w.stats }
}

/// The share of document writes that fail while faults last: 5 % unless
/// `MERIDIAN_SIM_STORAGE_FAILURES=<percent>` says otherwise (0 turns it
/// off). A failed write is never advertised; the writes queued behind it
/// for the same document are refused by the store ([`WriteFence`]), the
/// engine drops the document and its peers send the changes again.
fn storage_failures_from_env() -> u32 {
    std::env::var("MERIDIAN_SIM_STORAGE_FAILURES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(5)
}

/// Timers of the workload, carried as [`Step::User`] tags.
#[derive(Clone, Copy, Debug)]
enum Action {
    Edit,
    Chaos,
    CreateDoc(NodeId),
    Learn(NodeId, DocumentId),
    Restart(NodeId),
    Ephemeral,
    Heal(NodeId),
    Placement,
}

struct Workload {
    sim: Sim,
    clients: Vec<NodeId>,
    docs: Vec<DocumentId>,
    actions: Vec<Action>,
    /// Documents clients are yet to learn about (done at once on healing).
    pending_learns: BTreeSet<(NodeId, DocumentId)>,
    work_end: Millis,
    ephemeral_count: u64,
    stats: RunStats,
    /// Two hubs on one store ([`run_cloud_seed`]).
    cloud: bool,
}

impl Workload {
    fn new(seed: u64) -> Self {
        Self::with_topology(seed, false)
    }

    fn new_cloud(seed: u64) -> Self {
        Self::with_topology(seed, true)
    }

    fn with_topology(seed: u64, cloud: bool) -> Self {
        let mut sim = Sim::new(seed, Timing::default());
        sim.unique_ephemeral_payloads = true;
        sim.storage_failure_percent = storage_failures_from_env();
        let mut clients = if cloud { build_cloud_topology(&mut sim) } else { build_topology(&mut sim) };
        add_viewer(&mut sim, &mut clients, seed);
        let work_end = Millis(sim.rng.random_range(8_000..=20_000));
        let mut w = Self {
            sim,
            clients,
            docs: Vec::new(),
            actions: Vec::new(),
            pending_learns: BTreeSet::new(),
            work_end,
            ephemeral_count: 0,
            stats: RunStats::default(),
            cloud,
        };
        let first = w.clients[0];
        let at = w.sim.rng.random_range(0..1000);
        w.later(at, Action::CreateDoc(first));
        if w.sim.rng.random_bool(0.5) {
            let creator = w.pick_client();
            let at = w.sim.rng.random_range(1000..w.work_end.0);
            w.later(at, Action::CreateDoc(creator));
        }
        let at = w.sim.rng.random_range(100..500);
        w.later(at, Action::Edit);
        let at = w.sim.rng.random_range(200..1000);
        w.later(at, Action::Ephemeral);
        let at = w.sim.rng.random_range(500..2000);
        w.later(at, Action::Chaos);
        let at = w.sim.rng.random_range(300..3000);
        w.later(at, Action::Placement);
        w
    }

    fn later(&mut self, after: u64, action: Action) {
        let tag = self.actions.len() as u64;
        self.actions.push(action);
        self.sim.schedule_user(after, tag);
    }

    fn pick_client(&mut self) -> NodeId {
        let i = self.sim.rng.random_range(0..self.clients.len());
        self.clients[i]
    }

    fn run_faulty_phase(&mut self) {
        while let Some(step) = self.sim.step_until(self.work_end) {
            if let Step::User(tag) = step {
                let action = self.actions[tag as usize];
                self.act(action);
            }
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Edit => {
                self.random_edit();
                let next = self.sim.rng.random_range(20..400);
                self.later(next, Action::Edit);
            }
            Action::Chaos => {
                self.chaos();
                let next = self.sim.rng.random_range(200..2500);
                self.later(next, Action::Chaos);
            }
            Action::CreateDoc(n) => self.create_doc(n),
            Action::Learn(n, doc) => {
                if self.pending_learns.remove(&(n, doc)) {
                    self.sim.find(n, doc);
                }
            }
            Action::Restart(n) => self.sim.restart(n),
            Action::Heal(n) => self.sim.heal(n),
            Action::Ephemeral => {
                self.random_ephemeral();
                let next = self.sim.rng.random_range(100..1500);
                self.later(next, Action::Ephemeral);
            }
            Action::Placement => {
                self.placement();
                let next = self.sim.rng.random_range(200..3000);
                self.later(next, Action::Placement);
            }
        }
    }

    /// What placement does to an edge under a hub: the hub pushes it a
    /// document (a move's catch-up), or the edge drops a document it
    /// stores for the hub's copy (disk budget).
    fn placement(&mut self) {
        let edges: Vec<NodeId> = self
            .sim
            .node_ids()
            .filter(|n| self.sim.spec(*n).upstream.is_some() && !self.clients.contains(n) && self.sim.is_up(*n))
            .collect();
        if edges.is_empty() || self.docs.is_empty() {
            return;
        }
        let edge = edges[self.sim.rng.random_range(0..edges.len())];
        if self.sim.rng.random_bool(0.5) {
            let doc = self.docs[self.sim.rng.random_range(0..self.docs.len())];
            if self.sim.handoff(edge, doc).is_some() {
                self.stats.handoffs += 1;
            }
        } else {
            let stored: Vec<DocumentId> = self.sim.nodes[edge.0].durable.keys().copied().collect();
            if !stored.is_empty() {
                let doc = stored[self.sim.rng.random_range(0..stored.len())];
                self.sim.offload(edge, doc);
            }
        }
    }

    fn create_doc(&mut self, n: NodeId) {
        // A read-only client cannot create documents; the first client does.
        let n = if self.sim.is_viewer(n) { self.clients[0] } else { n };
        if !self.sim.is_up(n) {
            let retry = self.sim.rng.random_range(100..1000);
            self.later(retry, Action::CreateDoc(n));
            return;
        }
        let doc = self.sim.create(n);
        self.docs.push(doc);
        // The URL is shared out of band; some learn it before the document
        // has reached any server.
        for c in self.clients.clone() {
            if c != n && self.sim.rng.random_bool(0.85) {
                self.pending_learns.insert((c, doc));
                let at = self.sim.rng.random_range(0..6000);
                self.later(at, Action::Learn(c, doc));
            }
        }
    }

    fn random_edit(&mut self) {
        let n = self.pick_client();
        if self.sim.rng.random_range(0..100) < 2 {
            // A URL that leads nowhere: it must come back unavailable.
            let ghost = DocumentId::random(self.sim.rng());
            return self.sim.find(n, ghost);
        }
        let Some(doc) = self.random_known_doc(n) else { return };
        let Some(engine) = self.sim.engine(n) else { return };
        match engine.document(&doc) {
            // Evicted (or still loading): the application opens it again.
            None => return self.sim.find(n, doc),
            // Not here yet: nothing to edit.
            Some(d) if d.get_heads().is_empty() => return,
            Some(_) => {}
        }
        let rng = self.sim.rng();
        let (kind, key, value, pos, text) = (
            rng.random_range(0..3u8),
            format!("k{}", rng.random_range(0..6u8)),
            rng.random_range(0..1000i64),
            rng.random_range(0..10_000usize),
            ["a", "bc", "def", "\u{e9}", "xy"][rng.random_range(0..5usize)],
        );
        let result = self.sim.change(n, doc, |tx| random_change(tx, kind, &key, value, pos, text));
        if let Err(e) = result {
            let e = e.to_string();
            self.sim.note(format!("{} app change refused: {e}", self.sim.name(n)));
        }
    }

    fn random_known_doc(&mut self, n: NodeId) -> Option<DocumentId> {
        let known: Vec<DocumentId> = self.sim.known_docs(n).iter().copied().collect();
        (!known.is_empty()).then(|| known[self.sim.rng.random_range(0..known.len())])
    }

    /// A presence-style ephemeral message about a document the client has.
    fn random_ephemeral(&mut self) {
        let n = self.pick_client();
        let Some(doc) = self.random_known_doc(n) else { return };
        if self.sim.engine(n).and_then(|e| e.document(&doc)).is_none_or(|d| d.get_heads().is_empty()) {
            return;
        }
        self.ephemeral_count += 1;
        let incarnation = self.sim.nodes[n.0].incarnation;
        let session = format!("{}-{incarnation}", self.sim.name(n));
        // CBOR: an unsigned integer unique to this message.
        let mut data = vec![0x1b];
        data.extend_from_slice(&self.ephemeral_count.to_be_bytes());
        self.sim.broadcast_ephemeral(n, doc, &session, self.ephemeral_count, data);
    }

    fn chaos(&mut self) {
        if self.cloud && self.sim.rng.random_range(0..100u32) < 15 {
            let length = self.sim.rng.random_range(500..6000);
            let until = Millis(self.sim.now().0 + length);
            self.sim.bus_outage(until);
            return;
        }
        let roll = self.sim.rng.random_range(0..100u32);
        match roll {
            0..40 => {
                let links = self.sim.live_links();
                if !links.is_empty() {
                    let link = links[self.sim.rng.random_range(0..links.len())];
                    self.sim.drop_link(link);
                    self.stats.link_drops += 1;
                }
            }
            40..70 => {
                let nodes: Vec<NodeId> = self.sim.node_ids().filter(|n| self.sim.is_up(*n)).collect();
                if nodes.is_empty() {
                    return;
                }
                let n = nodes[self.sim.rng.random_range(0..nodes.len())];
                self.sim.crash(n);
                self.stats.crashes += 1;
                let down = self.sim.rng.random_range(0..6000);
                self.later(down, Action::Restart(n));
            }
            _ => {
                let nodes: Vec<NodeId> = self.sim.node_ids().filter(|n| self.sim.spec(*n).upstream.is_some()).collect();
                let n = nodes[self.sim.rng.random_range(0..nodes.len())];
                let length = self.sim.rng.random_range(500..8000);
                let until = Millis(self.sim.now().0 + length);
                self.sim.partition(n, until);
                self.stats.partitions += 1;
                self.later(length, Action::Heal(n));
            }
        }
    }

    /// Faults stop: everyone is restarted, partitions heal, every URL that
    /// was shared is opened.
    fn heal_everything(&mut self) {
        self.sim.note("faults stop");
        self.sim.storage_failure_percent = 0;
        self.sim.bus_heal();
        for n in self.sim.node_ids().collect::<Vec<_>>() {
            self.sim.heal(n);
            self.sim.restart(n);
        }
        for (n, doc) in std::mem::take(&mut self.pending_learns) {
            self.sim.find(n, doc);
        }
    }
}

/// A random topology: a star (clients under one edge), a chain (clients
/// under an edge under a hub) or a tree (two edges under a hub, one client
/// straight on the hub). Returns the clients.
fn build_topology(sim: &mut Sim) -> Vec<NodeId> {
    let shape = sim.rng.random_range(0..3u8);
    let mut servers = Vec::new();
    match shape {
        0 => {
            let e = random_evict(sim);
            servers.push(sim.add_node(NodeSpec::new("edge").evict_after(e).sharded(3)));
        }
        _ => {
            let e = random_evict(sim);
            let hub = sim.add_node(NodeSpec::new("hub").evict_after(e));
            for i in 0..shape {
                let e = random_evict(sim);
                servers.push(sim.add_node(NodeSpec::new(format!("edge{i}")).evict_after(e).edge_of(hub).sharded(3)));
            }
            if shape == 2 {
                servers.push(hub);
            }
        }
    }
    let count = sim.rng.random_range(2..=4usize) + servers.len();
    add_random_clients(sim, &servers, count)
}

/// Idle-eviction times the random topologies draw from.
fn random_evict(sim: &mut Sim) -> u64 {
    const CHOICES: [u64; 3] = [500, 3000, 60_000];
    CHOICES[sim.rng.random_range(0..CHOICES.len())]
}

/// `count` clients dealt in turn over `servers`: half persistent, most
/// keeping open documents in memory, half browser tabs (sending before
/// their writes are durable). Returns them.
fn add_random_clients(sim: &mut Sim, servers: &[NodeId], count: usize) -> Vec<NodeId> {
    let mut clients = Vec::new();
    for i in 0..count {
        let server = servers[i % servers.len()];
        let persistent = sim.rng.random_bool(0.5);
        // Most applications keep open documents in memory; some evict.
        let e = if sim.rng.random_bool(0.8) { 600_000 } else { random_evict(sim) };
        let tab = sim.rng.random_bool(0.5);
        let spec = NodeSpec::new(format!("c{i}"))
            .persistent(persistent)
            .evict_after(e)
            .upstream(server)
            .sends_before_durable(tab);
        clients.push(sim.add_node(spec));
    }
    clients
}

/// Two hubs on one shared store with a lossy bus (losing 0-20 % of its
/// messages), an edge under each given the other hub too, and two to four
/// clients under the edges. Returns the clients.
fn build_cloud_topology(sim: &mut Sim) -> Vec<NodeId> {
    let e = random_evict(sim);
    let h1 = sim.add_node(NodeSpec::new("hub1").evict_after(e));
    let e = random_evict(sim);
    let h2 = sim.add_node(NodeSpec::new("hub2").evict_after(e).sharing_store_of(h1));
    sim.bus_loss_percent = sim.rng.random_range(0..=20);
    let mut edges = Vec::new();
    for (i, (hub, other)) in [(h1, h2), (h2, h1)].into_iter().enumerate() {
        let e = random_evict(sim);
        edges.push(
            sim.add_node(NodeSpec::new(format!("edge{i}")).evict_after(e).edge_of(hub).fallback(other).sharded(3)),
        );
    }
    let count = sim.rng.random_range(2..=4usize);
    add_random_clients(sim, &edges, count)
}

/// In a third of the seeds, a read-only client under a random server (it
/// edits, like the others, and its changes must go nowhere). Drawn from a
/// stream of its own, so seeds without one run as they did before.
fn add_viewer(sim: &mut Sim, clients: &mut Vec<NodeId>, seed: u64) {
    let mut side = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_6164_6f6e_6c79);
    if side.random_range(0..3u8) != 0 {
        return;
    }
    let servers: BTreeSet<NodeId> = clients.iter().filter_map(|c| sim.spec(*c).upstream).collect();
    let servers: Vec<NodeId> = servers.into_iter().collect();
    let server = servers[side.random_range(0..servers.len())];
    let persistent = side.random_bool(0.5);
    let spec = NodeSpec::new("viewer").persistent(persistent).evict_after(600_000).upstream(server).read_only();
    clients.push(sim.add_node(spec));
}

/// One random local change: a map key, or a splice in the shared text.
fn random_change(
    tx: &mut Transaction<'_>,
    kind: u8,
    key: &str,
    value: i64,
    pos: usize,
    text: &str,
) -> Result<(), AutomergeError> {
    let text_obj = match tx.get(ROOT, "text")? {
        Some((automerge::Value::Object(ObjType::Text), id)) if kind > 0 => id,
        _ => return tx.put(ROOT, key, value),
    };
    let len = tx.length(&text_obj);
    let pos = pos % (len + 1);
    if kind == 2 && pos < len { tx.splice_text(&text_obj, pos, 1, "") } else { tx.splice_text(&text_obj, pos, 0, text) }
}
