//! The node runtime shared by edges and the hub: one actor per engine shard
//! (an edge runs one per core, `--engine-threads`; the hub one), each owning
//! a sync [`Engine`] with the documents that hash to it, fed events from
//! connections (WebSocket or QUIC), the storage thread and its engine's
//! own deadlines ([`Engine::poll_timeout`]), and carrying out what its
//! engine asks. Policy (hand-offs, pinning, the disk budget's choices,
//! backfill pacing, home lag) is the engine's; a loop only moves bytes,
//! runs storage and refreshes metrics on its housekeeping interval.
//!
//! SQLite runs on a dedicated thread (`storage::StorageWorker`) that executes
//! every shard's storage tasks in order, grouping whatever is queued into
//! one transaction (group commit). Results come back to a loop only after
//! the transaction committed, which is what lets the engine keep its
//! durable-before-advertised rule.
//!
//! Transports talk to the runtime through [`NodeEvents`]
//! (`router.rs`: decoding, and which shard gets what): a connection task
//! registers with [`NodeEvent::Connected`] (getting a [`ConnId`] and a
//! queue of [`Outbound`] frames, which every shard sends on), then forwards
//! frames and finally reports [`NodeEvent::Disconnected`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_protocol::engine::{
    Access, Applied, Direction, DocDemand, DocSet, Engine, EngineConfig, ErrorKind, HandoffStatus, HandoffTargets,
    Millis, ReplicaStatus, shard_config,
};
use meridian_protocol::ids::{ConnId, DocumentId};
use meridian_protocol::log::Maybe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::metrics::NodeMetrics;
use crate::store::DocStore;

mod grants;
mod housekeeping;
pub use housekeeping::{DEFAULT_DIVERGENCE_AFTER, DEFAULT_SCRUB_BYTES_PER_SEC};
use housekeeping::{DivergenceWatch, Scrub};
mod io;
mod outbound;
mod router;
mod storage;
mod traces;

use housekeeping::Figures;
use io::Io;
use outbound::outbound_queue;
pub use outbound::{OUTBOUND_CAPACITY, OUTBOUND_MAX_BYTES, Outbound, OutboundQueue, OutboundSender};
use router::ShardEvent;
pub use router::{Closed, NodeEvents};
use storage::{StorageSender, StorageWorker, StoreReply, StoreRequest};

/// A chunk this node committed to its store (a write the engine issued),
/// for the other nodes sharing that store ([`NodeRuntime::start_shared`]).
#[derive(Debug)]
pub struct Committed {
    pub doc: DocumentId,
    pub data: Vec<u8>,
}

/// Everything the node loop reacts to.
#[derive(Debug)]
pub enum NodeEvent {
    /// A transport has a new connection. `Outgoing` connections go to an
    /// upstream (the hub): the engine sends `join` and syncs every document
    /// with it.
    Connected {
        direction: Direction,
        /// A link to another edge ([`Engine::handle_connect_edge_peer`]).
        edge_peer: bool,
        /// A link to another node (uplink, an edge at the hub, an edge
        /// peer): what we send it carries our trace context.
        link: bool,
        /// What it may do ([`Access::full`] for links between nodes and in
        /// open dev mode), and for how long from now (`None`: no end).
        access: Access,
        valid_for: Option<Duration>,
        /// The client's token, forwarded to every upstream (an untrusted
        /// edge's hub grants it only what its clients' tokens grant).
        grant: Option<String>,
        out: OutboundSender,
        reply: oneshot::Sender<ConnId>,
    },
    /// More documents a connection may read and write (a token an
    /// untrusted edge forwarded for its client, verified by the hub): see
    /// [`Engine::extend_access`].
    Grant {
        conn: ConnId,
        access: Access,
    },
    /// A document message; `parent`: the W3C `traceparent` that came in
    /// front of it on a link between nodes (see `runtime/traces.rs`).
    Frame {
        conn: ConnId,
        bytes: Vec<u8>,
        parent: Option<String>,
    },
    Reject {
        conn: ConnId,
        kind: ErrorKind,
        detail: String,
    },
    Disconnected {
        conn: ConnId,
    },
    /// Demand per document since the last such request (for the uplink's
    /// placement reports); see [`Engine::take_demand`].
    TakeDemand {
        reply: oneshot::Sender<BTreeMap<DocumentId, DocDemand>>,
    },
    /// Tokens were revoked: close the connections holding them (see
    /// [`Engine::revoke`]).
    Revoke(Vec<crate::auth::Revocation>),
    /// Queue a control message on a connection (the hub's `home` notices).
    SendControl {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// Where a hand-off of `doc` stands (the hub, before it announces a new
    /// home), answered by [`Engine::handoff_status`]: `to` is made to catch
    /// up with our durable copy; for `from` we learn whether we durably hold
    /// everything it advertised.
    Handoff {
        doc: DocumentId,
        to: Option<ConnId>,
        from: Option<ConnId>,
        /// Heads to check against (from the first answer); `None`: now's.
        targets: HandoffTargets,
        reply: oneshot::Sender<HandoffStatus>,
    },
    /// Also sync `doc` on an edge-peer link (its home), or stop
    /// ([`Engine::set_route`]).
    Route {
        doc: DocumentId,
        conn: Option<ConnId>,
    },
    /// This node is (or no longer is) the document's home: its copy is the
    /// hot replica, never dropped for the disk budget.
    Pin {
        doc: DocumentId,
        pinned: bool,
    },
    /// Another node sharing our store committed `bytes` for `doc`
    /// ([`Engine::handle_stored_elsewhere`]).
    StoredElsewhere {
        doc: DocumentId,
        bytes: Vec<u8>,
    },
    /// Read a document (`None`: every one in memory) from the store again:
    /// what told us of other nodes' commits had a gap.
    Refresh {
        doc: Option<DocumentId>,
    },
    /// How many bytes of stored chunks the background scrub checks per
    /// second (0: none); [`DEFAULT_SCRUB_BYTES_PER_SEC`] until told.
    ScrubRate {
        bytes_per_sec: u64,
    },
    /// How long a replica may stay apart from us before it is divergent
    /// (0: not checked); [`DEFAULT_DIVERGENCE_AFTER`] until told.
    DivergenceAfter {
        after: Duration,
    },
    /// This node's durable heads of `doc` and every replica of it (`None`:
    /// not in memory here).
    Replicas {
        doc: DocumentId,
        reply: oneshot::Sender<Option<(Vec<meridian_protocol::automerge::ChangeHash>, Vec<ReplicaStatus>)>>,
    },
    /// The documents in memory (at most `limit`, in id order, from after
    /// `after`): each with our durable heads and its replicas.
    Documents {
        after: Option<DocumentId>,
        limit: usize,
        reply: oneshot::Sender<Vec<DocReplicas>>,
    },
    /// The replicas divergent now: document, peer, apart for (ms).
    Divergent {
        reply: oneshot::Sender<Vec<(DocumentId, Option<String>, u64)>>,
    },
}

/// A document in memory: our durable heads, and its replicas.
pub type DocReplicas = (DocumentId, Vec<meridian_protocol::automerge::ChangeHash>, Vec<ReplicaStatus>);

/// One engine shard's loop.
struct NodeLoop {
    engine: Engine,
    io: Io,
    storage: StorageSender,
    /// The figures every shard adds to the node's metrics.
    figures: Figures,
    started: Instant,
    /// Disk budget in bytes of document data (0: none).
    disk_budget: u64,
    usage_pending: bool,
    /// When the store was last asked how much it holds.
    last_usage: Option<Instant>,
    /// Where the background scrub is.
    scrub: Scrub,
    /// Replicas watched for divergence.
    divergence: DivergenceWatch,
}

/// The default of [`meridian_protocol::engine::EngineConfig::apply_off_loop_ops`]
/// for nodes: at about 0.2 µs per operation of a text, a drain that would
/// hold the loop for more than ~20 ms is applied on a thread of its own.
pub const APPLY_OFF_LOOP_OPS: u64 = 100_000;

/// Events the loop takes at once when they are already waiting (see
/// [`NodeLoop::handle_batch`]): enough for a writer's window of changes
/// from several writers, few enough that nobody waits long for the batch.
const MAX_BATCH: usize = 256;

impl NodeLoop {
    /// The primary shard: it runs the store's scrub, measures its size and
    /// publishes the node's metrics.
    fn primary(&self) -> bool {
        self.engine.shard().is_primary()
    }

    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    /// Handles `first` and whatever else is already waiting (up to
    /// [`MAX_BATCH`] events) as one engine batch: the document messages
    /// among them are applied together at the end, each peer's as one
    /// automerge call ([`Engine::begin_batch`]).
    fn handle_batch(&mut self, first: ShardEvent, events: &mut mpsc::Receiver<ShardEvent>) {
        self.engine.begin_batch();
        self.handle(first);
        for _ in 1..MAX_BATCH {
            match events.try_recv() {
                Ok(event) => self.handle(event),
                Err(_) => break,
            }
        }
        self.engine.end_batch(self.now());
        self.drain();
        self.io.traces.batch_done();
    }

    fn handle(&mut self, event: ShardEvent) {
        let now = self.now();
        match event {
            ShardEvent::Connect { conn, direction, edge_peer, link, mut access, valid_for, out } => {
                access.expires_at = valid_for.map(|d| Millis(now.0.saturating_add(d.as_millis() as u64)));
                self.engine.handle_connect_as(now, conn, direction, edge_peer, access);
                self.io.conns.insert(conn, out);
                self.io.traces.connected(conn, link);
                if direction == Direction::Outgoing && !edge_peer {
                    // Everything stored must reach the new upstream.
                    self.storage.submit(StoreRequest::ListDocs);
                }
            }
            ShardEvent::Message { conn, message, len, parent } => {
                self.io.traces.received(conn, &message, len, parent.as_deref());
                self.engine.handle_decoded(now, conn, message);
            }
            ShardEvent::Undecodable { conn, bytes } => {
                self.engine.handle_frame(now, conn, &bytes);
            }
            ShardEvent::Node(event) => self.handle_node(now, event),
        }
        self.drain();
    }

    fn handle_node(&mut self, now: Millis, event: NodeEvent) {
        match event {
            // The router turns these into `ShardEvent`s.
            NodeEvent::Connected { .. } | NodeEvent::Frame { .. } => {}
            NodeEvent::Reject { conn, kind, detail } => self.engine.reject_connection(conn, kind, detail),
            NodeEvent::Grant { conn, access } => self.engine.extend_access(conn, &access),
            NodeEvent::Disconnected { conn } => {
                self.io.traces.disconnected(conn);
                self.io.conns.remove(&conn);
                self.engine.handle_disconnect(now, conn);
            }
            NodeEvent::TakeDemand { reply } => {
                let _ = reply.send(self.engine.take_demand());
            }
            NodeEvent::Revoke(revoked) => {
                for r in revoked {
                    let closed = self.engine.revoke(|access| r.covers(access));
                    if self.primary() {
                        tracing::info!(jti = %Maybe(&r.jti), sub = %Maybe(&r.sub), closed, "token revoked");
                    }
                }
            }
            NodeEvent::SendControl { conn, bytes } => {
                if let Some(tx) = self.io.conns.get(&conn) {
                    tx.other(Outbound::Control(bytes));
                }
            }
            NodeEvent::Handoff { doc, to, from, targets, reply } => {
                let _ = reply.send(self.engine.handoff_status(now, doc, to, from, targets));
            }
            NodeEvent::Route { doc, conn } => self.engine.set_route(now, doc, conn),
            NodeEvent::Pin { doc, pinned } => self.engine.pin(doc, pinned),
            NodeEvent::StoredElsewhere { doc, bytes } => self.engine.handle_stored_elsewhere(now, doc, bytes),
            NodeEvent::Refresh { doc: Some(doc) } => self.engine.refresh_from_store(now, doc),
            NodeEvent::Refresh { doc: None } => self.engine.refresh_all_from_store(now),
            NodeEvent::ScrubRate { bytes_per_sec } => self.scrub.rate = bytes_per_sec,
            NodeEvent::DivergenceAfter { after } => self.divergence.after = after,
            NodeEvent::Replicas { doc, reply } => {
                let ours = self.engine.durable_heads(&doc).unwrap_or_default();
                let _ = reply.send(self.engine.replicas(now, &doc).map(|r| (ours, r)));
            }
            NodeEvent::Documents { after, limit, reply } => {
                let list = self.engine.loaded_documents(after).take(limit).map(|doc| {
                    let heads = self.engine.durable_heads(&doc).unwrap_or_default();
                    (doc, heads, self.engine.replicas(now, &doc).unwrap_or_default())
                });
                let _ = reply.send(list.collect());
            }
            NodeEvent::Divergent { reply } => {
                let list = self.divergence.now.iter().map(|(d, _, p, ms)| (*d, p.as_ref().map(|p| p.to_string()), *ms));
                let _ = reply.send(list.collect());
            }
        }
    }

    fn storage_reply(&mut self, reply: StoreReply) {
        let now = self.now();
        match reply {
            StoreReply::Done(results) => {
                for (id, result) in results {
                    self.io.traces.stored(id, &result);
                    self.engine.handle_storage_result(now, id, result);
                }
            }
            StoreReply::Docs(docs) => self.engine.backfill(now, docs),
            StoreReply::Usage(bytes, oldest) => self.enforce_disk_budget(now, bytes, oldest),
            StoreReply::Scrubbed(step) => self.scrubbed(step),
        }
        self.drain();
    }

    fn applied(&mut self, result: Applied) {
        let now = self.now();
        self.engine.handle_applied(now, result);
        self.drain();
    }

    /// The engine's deadline ([`Engine::poll_timeout`]) came.
    fn timeout(&mut self) {
        let now = self.now();
        self.engine.handle_timeout(now);
        self.drain();
    }

    /// When the engine next needs to run, on the loop's clock.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        engine_deadline(&self.engine, self.started)
    }

    /// Carries out everything the engine asked for; storage tasks go to
    /// the storage thread as one batch.
    fn drain(&mut self) {
        let now = self.now();
        self.engine.drive(now, &mut self.io);
        if !self.io.created.is_empty() {
            self.storage.submit(StoreRequest::Creators(std::mem::take(&mut self.io.created)));
        }
        if !self.io.batch.is_empty() {
            self.storage.submit(StoreRequest::Tasks(std::mem::take(&mut self.io.batch)));
        }
    }

    /// Saves per-peer sync state (the runtime then waits for the store).
    fn shutdown(mut self) {
        let now = self.now();
        let conns: Vec<ConnId> = self.io.conns.keys().copied().collect();
        for conn in conns {
            self.engine.handle_disconnect(now, conn);
        }
        self.io.conns.clear();
        self.drain();
    }
}

/// A running node: its engine shards' loops and the storage thread.
/// Transports feed it through [`NodeRuntime::events`]. Dropping it aborts
/// the loops; call [`NodeRuntime::shutdown`] to save state and flush the
/// store first.
#[derive(Debug)]
pub struct NodeRuntime {
    events: NodeEvents,
    metrics: Arc<NodeMetrics>,
    shutdown: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    storage: Option<StorageWorker>,
}

impl NodeRuntime {
    /// Starts one loop on `store` with `config` (its storage id is taken
    /// from the store). Every `tick_interval` the loop asks the store how
    /// much it holds (with a disk budget) and refreshes the metrics; a
    /// backfill opens one slice of stored documents per interval.
    pub fn start(
        store: Box<dyn DocStore>,
        config: EngineConfig,
        tick_interval: Duration,
        metrics: Arc<NodeMetrics>,
    ) -> std::io::Result<Self> {
        Self::start_full(store, config, tick_interval, metrics, 0, None, 1)
    }

    /// [`NodeRuntime::start`] on `engine_threads` engine shards (documents
    /// hashed over them, each on its own task: an edge uses every core),
    /// keeping the store's document data under `disk_budget` bytes (0: no
    /// budget) by dropping the local copy of documents the hub holds
    /// ([`Engine::offload`]); for edges.
    pub fn start_edge(
        store: Box<dyn DocStore>,
        config: EngineConfig,
        tick_interval: Duration,
        metrics: Arc<NodeMetrics>,
        disk_budget: u64,
        engine_threads: usize,
    ) -> std::io::Result<Self> {
        Self::start_full(store, config, tick_interval, metrics, disk_budget, None, engine_threads)
    }

    /// [`NodeRuntime::start`] on a store other nodes share (hubs on one
    /// database): every chunk committed is also sent to `committed` (the
    /// bus tells the other hubs), and what they commit is handed in as
    /// [`NodeEvent::StoredElsewhere`] and [`NodeEvent::Refresh`].
    pub fn start_shared(
        store: Box<dyn DocStore>,
        config: EngineConfig,
        tick_interval: Duration,
        metrics: Arc<NodeMetrics>,
        committed: mpsc::UnboundedSender<Committed>,
    ) -> std::io::Result<Self> {
        Self::start_full(store, config, tick_interval, metrics, 0, Some(committed), 1)
    }

    fn start_full(
        store: Box<dyn DocStore>,
        mut config: EngineConfig,
        tick_interval: Duration,
        metrics: Arc<NodeMetrics>,
        disk_budget: u64,
        committed: Option<mpsc::UnboundedSender<Committed>>,
        shards: usize,
    ) -> std::io::Result<Self> {
        let shards = shards.max(1);
        config.storage_id = Some(store.storage_id().clone());
        // A backfill opens a slice of the stored documents each interval.
        config.backfill_interval_ms = (tick_interval.as_millis() as u64).max(1);
        // `meridian_edge_home_lag_seconds`, `_replica_lag_seconds`.
        config.track_home_lag = true;
        config.track_replica_lag = true;
        // An edge's copy still divergent from the hub's after the resyncs
        // is quarantined and fetched again (the hub has no upstream).
        config.refetch_divergent = true;
        let (replies_tx, replies_rx): (Vec<_>, Vec<_>) = (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
        let storage = StorageWorker::start(store, replies_tx, metrics.clone(), committed)?;
        let started = Instant::now();
        let figures = Figures::new(shards);
        let (mut senders, mut shutdown, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        for (index, replies) in replies_rx.into_iter().enumerate() {
            let (applied_tx, applied_rx) = mpsc::unbounded_channel();
            let node = NodeLoop {
                engine: Engine::new(shard_config(&config, index, shards)),
                io: Io {
                    conns: BTreeMap::new(),
                    metrics: metrics.clone(),
                    batch: Vec::new(),
                    created: Vec::new(),
                    applied: applied_tx,
                    traces: traces::Traces::default(),
                    primary: index == 0,
                },
                storage: storage.sender(index).expect("the storage thread just started"),
                figures: figures.clone(),
                started,
                disk_budget,
                usage_pending: false,
                last_usage: None,
                scrub: Scrub { rate: DEFAULT_SCRUB_BYTES_PER_SEC, after: 0, pending: false, last: None },
                divergence: DivergenceWatch { after: DEFAULT_DIVERGENCE_AFTER, now: Vec::new() },
            };
            let (events_tx, events_rx) = mpsc::channel(1024);
            let (shutdown_tx, shutdown_rx) = oneshot::channel();
            tasks.push(tokio::spawn(run_loop(node, events_rx, replies, applied_rx, shutdown_rx, tick_interval)));
            senders.push(events_tx);
            shutdown.push(shutdown_tx);
        }
        let events = NodeEvents::new(senders, metrics.clone());
        Ok(Self { events, metrics, shutdown, tasks, storage: Some(storage) })
    }

    pub fn events(&self) -> NodeEvents {
        self.events.clone()
    }

    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// Closes every connection after saving its sync state and waits until
    /// every storage write has committed.
    pub async fn shutdown(mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(mut storage) = self.storage.take() {
            // The store thread blocks while it drains; keep it off the runtime.
            let _ = tokio::task::spawn_blocking(move || storage.finish()).await;
        }
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn run_loop(
    mut node: NodeLoop,
    mut events: mpsc::Receiver<ShardEvent>,
    mut replies: mpsc::UnboundedReceiver<StoreReply>,
    mut applied: mpsc::UnboundedReceiver<Applied>,
    mut shutdown: oneshot::Receiver<()>,
    tick_interval: Duration,
) {
    let mut tick = tokio::time::interval(tick_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One timer for the engine's deadline, moved when the deadline moves.
    let engine_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(engine_timer);
    loop {
        let deadline = node.deadline();
        if let Some(at) = deadline
            && engine_timer.deadline() != at
        {
            engine_timer.as_mut().reset(at);
        }
        tokio::select! {
            Some(event) = events.recv() => node.handle_batch(event, &mut events),
            _ = &mut engine_timer, if deadline.is_some() => node.timeout(),
            Some(reply) = replies.recv() => node.storage_reply(reply),
            Some(result) = applied.recv() => node.applied(result),
            _ = tick.tick() => node.housekeeping(),
            _ = &mut shutdown => break,
        }
    }
    if node.primary() {
        tracing::info!("shutting down: saving sync states and flushing the store");
    }
    node.shutdown();
}

/// When `engine` next needs [`Engine::handle_timeout`], as an instant on a
/// driver's clock whose `Millis(0)` is `started`; `None`: nothing is due
/// (or it lies past what the clock can hold).
pub fn engine_deadline(engine: &Engine, started: Instant) -> Option<tokio::time::Instant> {
    let at = started.checked_add(Duration::from_millis(engine.poll_timeout()?.0))?;
    Some(tokio::time::Instant::from_std(at))
}

/// Registers a connection with the loop, with [`Access::full`] (a link
/// between nodes, or any connection in open dev mode); `None` if the loop
/// is gone.
pub async fn register(events: &NodeEvents, direction: Direction) -> Option<(ConnId, OutboundQueue)> {
    // An outgoing one is the uplink; an incoming one, an open-dev-mode client.
    register_as(events, direction, false, direction == Direction::Outgoing, Access::full(), None, None).await
}

/// Registers a client's connection that may do what `access` grants, for
/// `valid_for` from now (its token's lifetime).
/// `token` (what it presented) is forwarded to every upstream: a hub that
/// does not trust this edge grants it what its clients' tokens grant.
pub async fn register_client(
    events: &NodeEvents,
    access: Access,
    valid_for: Option<Duration>,
    token: Option<String>,
) -> Option<(ConnId, OutboundQueue)> {
    register_as(events, Direction::Incoming, false, false, access, valid_for, token.filter(|t| !t.is_empty())).await
}

/// Registers a link from another node that authenticated as `node_id`
/// (an edge at the hub, by its `hello`): it may do everything, and is told
/// apart from other nodes by that id, whatever peer id it joins with.
pub async fn register_node(
    events: &NodeEvents,
    direction: Direction,
    node_id: &str,
) -> Option<(ConnId, OutboundQueue)> {
    register_as(events, direction, false, true, Access::node(node_id), None, None).await
}

/// Registers an edge the hub does not trust (see `--untrusted-edge`): it
/// starts with no document, and gains those its clients' tokens grant
/// ([`NodeEvent::Grant`]) as it forwards them.
pub async fn register_untrusted_node(events: &NodeEvents, node_id: &str) -> Option<(ConnId, OutboundQueue)> {
    let access = Access { read: DocSet::none(), write: DocSet::none(), create: false, ..Access::node(node_id) };
    register_as(events, Direction::Incoming, false, true, access, None, None).await
}

/// Registers a link to another edge (see [`NodeEvent::Connected`]); with
/// `node_id` when the other end authenticated as that edge.
pub async fn register_edge_peer(
    events: &NodeEvents,
    direction: Direction,
    node_id: Option<&str>,
) -> Option<(ConnId, OutboundQueue)> {
    let access = node_id.map_or(Access { node: true, ..Access::full() }, Access::node);
    register_as(events, direction, true, true, access, None, None).await
}

async fn register_as(
    events: &NodeEvents,
    direction: Direction,
    edge_peer: bool,
    link: bool,
    access: Access,
    valid_for: Option<Duration>,
    grant: Option<String>,
) -> Option<(ConnId, OutboundQueue)> {
    let (out, queue) = outbound_queue(OUTBOUND_CAPACITY, OUTBOUND_MAX_BYTES);
    let (reply_tx, reply_rx) = oneshot::channel();
    let connected = NodeEvent::Connected { direction, edge_peer, link, access, valid_for, grant, out, reply: reply_tx };
    events.send(connected).await.ok()?;
    let conn = reply_rx.await.ok()?;
    Some((conn, queue))
}
