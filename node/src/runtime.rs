//! The node runtime shared by edges and the hub: one actor that owns the
//! sync [`Engine`], feeds it events from connections (WebSocket or QUIC),
//! the storage thread and a timer, and carries out what the engine asks.
//!
//! SQLite runs on a dedicated thread ([`StorageWorker`]) that executes the
//! engine's storage tasks in order, grouping whatever is queued into one
//! transaction (group commit). Results come back to the loop only after the
//! transaction committed, which is what lets the engine keep its
//! durable-before-advertised rule.
//!
//! Transports talk to the runtime through [`NodeEvent`]s: a connection
//! task registers with [`NodeEvent::Connected`] (getting a [`ConnId`] and a
//! queue of [`Outbound`] frames), then forwards frames and finally reports
//! [`NodeEvent::Disconnected`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use meridian_protocol::automerge::ChangeHash;
use meridian_protocol::codec;
use meridian_protocol::engine::{
    CatchUp, Direction, DocDemand, Engine, EngineConfig, ErrorKind, Event, Millis, Output,
};
use meridian_protocol::ids::{ConnId, DocumentId};
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::metrics::NodeMetrics;
use crate::store::DocStore;

/// Frames queued towards one connection before it counts as too slow.
pub const OUTBOUND_CAPACITY: usize = 8192;

/// How many stored documents are opened per tick to sync them with a newly
/// connected upstream, and the loaded-document count above which the
/// backfill waits for evictions.
const BACKFILL_PER_TICK: usize = 256;
const BACKFILL_MAX_LOADED: usize = 4096;

/// What the loop sends to a connection task.
#[derive(Debug)]
pub enum Outbound {
    Frame(Vec<u8>),
    /// A federation control message (QUIC links only; WebSockets drop it).
    /// Queued behind the frames before it, so it follows the document data
    /// it may refer to.
    Control(Vec<u8>),
    /// Close the connection with this reason (after the frames queued before it).
    Close(String),
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
        out: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<ConnId>,
    },
    Frame {
        conn: ConnId,
        bytes: Vec<u8>,
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
    /// Queue a control message on a connection (the hub's `home` notices).
    SendControl {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// Where a hand-off of `doc` stands (the hub, before it announces a new
    /// home): `to` is made to catch up with our durable copy
    /// ([`Engine::catch_up`]); for `from` we learn whether we hold
    /// everything it advertised ([`Engine::covers_peer`]).
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
}

/// What a hand-off waits for: the new home to cover `to` (our durable
/// heads when it started), us to hold `from` (the old home's heads then).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandoffTargets {
    pub to: Option<Vec<ChangeHash>>,
    pub from: Option<Vec<ChangeHash>>,
}

/// Answer to [`NodeEvent::Handoff`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffStatus {
    pub to: Option<CatchUp>,
    /// `None`: the old home has not told us its heads (or is gone).
    pub from_covered: Option<bool>,
    /// The heads that were checked (to keep as targets).
    pub targets: HandoffTargets,
}

type Batch = Vec<(StorageTaskId, StorageTask)>;
type BatchResult = Vec<(StorageTaskId, StorageResult)>;

/// Work for the storage thread.
enum StoreRequest {
    Tasks(Batch),
    /// Every stored document id (to sync them with a new upstream).
    ListDocs,
    /// Bytes stored and the least recently written documents (disk budget).
    Usage,
}

/// Answers from the storage thread.
enum StoreReply {
    Done(BatchResult),
    Docs(Vec<DocumentId>),
    Usage(u64, Vec<DocumentId>),
}

/// Documents considered per disk-budget check, and how long one that could
/// not be dropped (not yet acknowledged by the hub, or in use) is left alone.
const OFFLOAD_CANDIDATES: usize = 64;
const OFFLOAD_PER_CHECK: usize = 16;
const OFFLOAD_RETRY: Duration = Duration::from_secs(30);

/// Owns the SQLite thread. Dropping the sender ends the thread after it
/// has run every queued request.
struct StorageWorker {
    tx: Option<std::sync::mpsc::Sender<StoreRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StorageWorker {
    fn start(
        mut store: Box<dyn DocStore>,
        replies: mpsc::UnboundedSender<StoreReply>,
        metrics: Arc<NodeMetrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<StoreRequest>();
        let thread = std::thread::Builder::new().name("meridian-store".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                // Group commit: every batch already queued goes into the same
                // transaction, in order.
                let mut pending = vec![first];
                pending.extend(rx.try_iter());
                if !run_requests(store.as_mut(), pending, &replies, &metrics) {
                    break;
                }
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    fn submit(&self, request: StoreRequest) {
        if let Some(tx) = &self.tx {
            // The thread only goes away at shutdown; nothing to do then.
            let _ = tx.send(request);
        }
    }

    /// Waits until every submitted request has run.
    fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs queued requests on the storage thread; false once nobody listens.
fn run_requests(
    store: &mut dyn DocStore,
    pending: Vec<StoreRequest>,
    replies: &mpsc::UnboundedSender<StoreReply>,
    metrics: &NodeMetrics,
) -> bool {
    let mut batch = Vec::new();
    let (mut list, mut usage) = (false, false);
    for request in pending {
        match request {
            StoreRequest::Tasks(b) => batch.extend(b),
            StoreRequest::ListDocs => list = true,
            StoreRequest::Usage => usage = true,
        }
    }
    if !batch.is_empty() {
        let started = Instant::now();
        let out = store.execute_batch(&batch);
        metrics.storage_batch_seconds.observe(started.elapsed().as_secs_f64());
        metrics.storage_batches.fetch_add(1, Relaxed);
        metrics.storage_tasks.fetch_add(batch.len() as u64, Relaxed);
        let failed = out.iter().filter(|(_, r)| matches!(r, StorageResult::Failed(_))).count();
        metrics.storage_failures.fetch_add(failed as u64, Relaxed);
        if replies.send(StoreReply::Done(out)).is_err() {
            return false;
        }
    }
    if list {
        let docs = match store.document_ids() {
            Ok(docs) => docs,
            Err(e) => {
                tracing::error!(error = %e, "listing stored documents failed");
                Vec::new()
            }
        };
        if replies.send(StoreReply::Docs(docs)).is_err() {
            return false;
        }
    }
    if usage {
        let (bytes, oldest) = store.usage(OFFLOAD_CANDIDATES).unwrap_or_else(|e| {
            tracing::error!(error = %e, "measuring the store failed");
            (0, Vec::new())
        });
        if replies.send(StoreReply::Usage(bytes, oldest)).is_err() {
            return false;
        }
    }
    true
}

/// The node loop's state.
struct NodeLoop {
    engine: Engine,
    conns: BTreeMap<ConnId, mpsc::Sender<Outbound>>,
    storage: StorageWorker,
    metrics: Arc<NodeMetrics>,
    started: Instant,
    /// Stored documents to open so they sync with the upstream.
    backfill: VecDeque<DocumentId>,
    /// Disk budget in bytes of document data (0: none).
    disk_budget: u64,
    usage_pending: bool,
    /// Documents asked to offload recently.
    offload_tried: BTreeMap<DocumentId, Instant>,
    /// Documents homed here (kept whatever the disk budget).
    pinned: std::collections::BTreeSet<DocumentId>,
    /// Changes durable here that the document's home has not confirmed yet
    /// (`meridian_edge_home_lag_seconds`), oldest first.
    home_lag: VecDeque<(DocumentId, Vec<ChangeHash>, Instant)>,
    home_lag_checked: Instant,
}

/// At most this many changes are followed until their home confirms them,
/// for at most this long.
const HOME_LAG_TRACKED: usize = 4096;
const HOME_LAG_GIVE_UP: Duration = Duration::from_secs(60);

/// Events the loop takes at once when they are already waiting (see
/// [`NodeLoop::handle_batch`]): enough for a writer's window of changes
/// from several writers, few enough that nobody waits long for the batch.
const MAX_BATCH: usize = 256;

impl NodeLoop {
    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    /// Handles `first` and whatever else is already waiting (up to
    /// [`MAX_BATCH`] events) as one engine batch: the document messages
    /// among them are applied together at the end, each peer's as one
    /// automerge call ([`Engine::begin_batch`]).
    fn handle_batch(&mut self, first: NodeEvent, events: &mut mpsc::Receiver<NodeEvent>) {
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
    }

    fn handle(&mut self, event: NodeEvent) {
        let now = self.now();
        match event {
            NodeEvent::Connected { direction, edge_peer, out, reply } => {
                let conn = if edge_peer {
                    self.engine.handle_connect_edge_peer(now, direction)
                } else {
                    self.engine.handle_connect(now, direction)
                };
                self.conns.insert(conn, out);
                self.metrics.connections.fetch_add(1, Relaxed);
                self.metrics.connections_total.fetch_add(1, Relaxed);
                if direction == Direction::Outgoing && !edge_peer {
                    // Everything stored must reach the new upstream.
                    self.storage.submit(StoreRequest::ListDocs);
                }
                let _ = reply.send(conn);
            }
            NodeEvent::Frame { conn, bytes } => {
                let t = self.engine.handle_frame(now, conn, &bytes).unwrap_or("other");
                self.metrics.message_in(t, bytes.len());
            }
            NodeEvent::Reject { conn, kind, detail } => self.engine.reject(conn, kind, detail),
            NodeEvent::Disconnected { conn } => {
                if self.conns.remove(&conn).is_some() {
                    self.metrics.connections.fetch_sub(1, Relaxed);
                }
                self.engine.handle_disconnect(now, conn);
            }
            NodeEvent::TakeDemand { reply } => {
                let _ = reply.send(self.engine.take_demand());
            }
            NodeEvent::SendControl { conn, bytes } => {
                if let Some(tx) = self.conns.get(&conn) {
                    let _ = tx.try_send(Outbound::Control(bytes));
                }
            }
            NodeEvent::Handoff { doc, to, from, targets, reply } => {
                let to_target = targets.to.or_else(|| self.engine.durable_heads(&doc));
                let to = to.map(|c| self.engine.catch_up(now, doc, c, to_target.as_deref()));
                let from_target = from.and_then(|c| {
                    // Attached so that it tells us its heads.
                    self.engine.catch_up(now, doc, c, None);
                    targets.from.clone().or_else(|| self.engine.peer_heads(&doc, c))
                });
                let from_covered = from_target.as_ref().map(|h| self.engine.holds_durably(&doc, h));
                let targets = HandoffTargets { to: to_target, from: from_target };
                let _ = reply.send(HandoffStatus { to, from_covered, targets });
            }
            NodeEvent::Route { doc, conn } => self.engine.set_route(now, doc, conn),
            NodeEvent::Pin { doc, pinned } => {
                if pinned {
                    self.pinned.insert(doc);
                } else {
                    self.pinned.remove(&doc);
                }
            }
        }
        self.drain();
    }

    fn storage_reply(&mut self, reply: StoreReply) {
        let now = self.now();
        match reply {
            StoreReply::Done(results) => {
                for (id, result) in results {
                    self.engine.handle_storage_result(now, id, result);
                }
            }
            StoreReply::Docs(docs) => {
                self.backfill = docs.into();
                self.metrics.backfill_queued.store(self.backfill.len() as u64, Relaxed);
            }
            StoreReply::Usage(bytes, oldest) => self.enforce_disk_budget(now, bytes, oldest),
        }
        self.drain();
    }

    /// Over the disk budget, the least recently written documents that are
    /// not in memory are offered to [`Engine::offload`], which drops them
    /// only once the hub holds all of them and nobody here uses them.
    fn enforce_disk_budget(&mut self, now: Millis, bytes: u64, oldest: Vec<DocumentId>) {
        self.usage_pending = false;
        self.metrics.store_bytes.store(bytes, Relaxed);
        if bytes <= self.disk_budget {
            return;
        }
        self.offload_tried.retain(|_, at| at.elapsed() < OFFLOAD_RETRY);
        let candidates: Vec<DocumentId> = oldest
            .into_iter()
            .filter(|d| self.engine.document(d).is_none() && !self.engine.in_use(d))
            .filter(|d| !self.offload_tried.contains_key(d) && !self.pinned.contains(d))
            .take(OFFLOAD_PER_CHECK)
            .collect();
        for doc in candidates {
            self.offload_tried.insert(doc, Instant::now());
            self.engine.offload(now, doc);
        }
    }

    fn tick(&mut self) {
        let now = self.now();
        self.engine.handle_tick(now);
        self.run_backfill(now);
        if self.disk_budget > 0 && !self.usage_pending {
            self.usage_pending = true;
            self.storage.submit(StoreRequest::Usage);
        }
        self.drain();
        let stats = self.engine.stats();
        self.metrics.offloaded.store(stats.offloaded, Relaxed);
        self.metrics.cold_opens.store(stats.cold_opens, Relaxed);
        self.metrics.sync_generated.store(stats.sync_generated, Relaxed);
        self.metrics.sync_shared.store(stats.sync_shared, Relaxed);
        self.metrics.sync_merged.store(stats.sync_merged, Relaxed);
        self.metrics.snapshot_answers.store(stats.snapshot_answers, Relaxed);
        self.metrics.documents_loaded.store(self.engine.loaded_docs() as u64, Relaxed);
        let (synced, pending) = self.engine.upstream_sync_status();
        self.metrics.docs_synced_upstream.store(synced as u64, Relaxed);
        self.metrics.docs_pending_upstream.store(pending as u64, Relaxed);
    }

    /// Opens a slice of the stored documents so they sync with the
    /// upstream; idle ones are evicted again later.
    fn run_backfill(&mut self, now: Millis) {
        if self.engine.loaded_docs() >= BACKFILL_MAX_LOADED {
            return;
        }
        for _ in 0..BACKFILL_PER_TICK {
            let Some(doc) = self.backfill.pop_front() else { break };
            self.engine.open(now, doc);
        }
        self.metrics.backfill_queued.store(self.backfill.len() as u64, Relaxed);
    }

    /// Carries out everything the engine asked for.
    fn drain(&mut self) {
        let mut batch = Vec::new();
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send { conn, message } => self.send(conn, &message),
                Output::Close { conn, reason } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        let _ = tx.try_send(Outbound::Close(reason));
                    }
                }
                Output::Storage { id, task } => batch.push((id, task)),
                Output::Event(e) => self.on_event(e),
            }
        }
        if !batch.is_empty() {
            self.storage.submit(StoreRequest::Tasks(batch));
        }
        self.observe_home_lag();
    }

    /// Starts timing a change durable here until its home confirms it
    /// (only on nodes with an upstream, for documents not homed here, and
    /// for changes the home does not have yet).
    fn follow_to_home(&mut self, doc: DocumentId, heads: Vec<ChangeHash>) {
        if self.pinned.contains(&doc) || self.engine.home_covers(&doc, &heads) != Some(false) {
            return;
        }
        if self.home_lag.len() >= HOME_LAG_TRACKED {
            self.home_lag.pop_front();
        }
        self.home_lag.push_back((doc, heads, Instant::now()));
    }

    /// Checked after the loop's work, at most every couple of milliseconds
    /// (a busy loop drains often).
    fn observe_home_lag(&mut self) {
        if self.home_lag.is_empty() || self.home_lag_checked.elapsed() < Duration::from_millis(2) {
            return;
        }
        self.home_lag_checked = Instant::now();
        let (engine, metrics) = (&self.engine, &self.metrics);
        self.home_lag.retain(|(doc, heads, since)| {
            if engine.home_covers(doc, heads) == Some(true) {
                metrics.home_lag_seconds.observe(since.elapsed().as_secs_f64());
                return false;
            }
            since.elapsed() < HOME_LAG_GIVE_UP
        });
    }

    fn send(&mut self, conn: ConnId, message: &codec::Message) {
        let Some(tx) = self.conns.get(&conn) else { return };
        let bytes = codec::encode(message);
        self.metrics.message_out(message.type_name(), bytes.len());
        if tx.try_send(Outbound::Frame(bytes)).is_err() {
            // Too slow (or already gone): dropping our sender makes its task
            // close the connection; the engine hears about it as a disconnect.
            tracing::warn!(%conn, "peer is not reading; closing its connection");
            self.conns.remove(&conn);
            self.metrics.connections.fetch_sub(1, Relaxed);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ProtocolError { conn, kind, detail } => {
                self.metrics.error(kind);
                tracing::info!(%conn, kind = kind.as_str(), %detail, "bad input");
            }
            Event::Evicted { doc } => {
                self.metrics.evictions.fetch_add(1, Relaxed);
                tracing::debug!(%doc, "evicted");
            }
            Event::PeerConnected { conn, peer, .. } => tracing::info!(%conn, %peer, "peer joined"),
            Event::PeerDisconnected { conn, peer } => tracing::info!(%conn, ?peer, "peer left"),
            Event::StorageFailed { doc, detail } => tracing::error!(?doc, %detail, "storage failed"),
            Event::DocChanged { doc, heads } => {
                tracing::trace!(%doc, "changed");
                self.follow_to_home(doc, heads);
            }
            Event::DocUpdated { .. }
            | Event::DocReady { .. }
            | Event::DocUnavailable { .. }
            | Event::Ephemeral { .. } => {}
        }
    }

    /// Saves per-peer sync state and waits for the store to be idle.
    fn shutdown(mut self) {
        let now = self.now();
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.engine.handle_disconnect(now, conn);
        }
        self.conns.clear();
        self.drain();
        self.storage.finish();
    }
}

/// A running node loop (with its storage thread). Transports feed it
/// through [`NodeRuntime::events`]. Dropping it aborts the loop; call
/// [`NodeRuntime::shutdown`] to save state and flush the store first.
#[derive(Debug)]
pub struct NodeRuntime {
    events: mpsc::Sender<NodeEvent>,
    metrics: Arc<NodeMetrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl NodeRuntime {
    /// Starts the loop on `store` with `config` (its storage id is taken
    /// from the store).
    pub fn start(
        store: Box<dyn DocStore>,
        config: EngineConfig,
        tick_interval: Duration,
        metrics: Arc<NodeMetrics>,
    ) -> std::io::Result<Self> {
        Self::start_with_disk_budget(store, config, tick_interval, metrics, 0)
    }

    /// [`NodeRuntime::start`] keeping the store's document data under
    /// `disk_budget` bytes (0: no budget) by dropping the local copy of
    /// documents the hub holds ([`Engine::offload`]); for edges.
    pub fn start_with_disk_budget(
        store: Box<dyn DocStore>,
        mut config: EngineConfig,
        tick_interval: Duration,
        metrics: Arc<NodeMetrics>,
        disk_budget: u64,
    ) -> std::io::Result<Self> {
        config.storage_id = Some(store.storage_id().clone());
        let (replies_tx, replies_rx) = mpsc::unbounded_channel();
        let storage = StorageWorker::start(store, replies_tx, metrics.clone())?;
        let node = NodeLoop {
            engine: Engine::new(config),
            conns: BTreeMap::new(),
            storage,
            metrics: metrics.clone(),
            started: Instant::now(),
            backfill: VecDeque::new(),
            disk_budget,
            usage_pending: false,
            offload_tried: BTreeMap::new(),
            pinned: std::collections::BTreeSet::new(),
            home_lag: VecDeque::new(),
            home_lag_checked: Instant::now(),
        };
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(run_loop(node, events_rx, replies_rx, shutdown_rx, tick_interval));
        Ok(Self { events: events_tx, metrics, shutdown: Some(shutdown_tx), task: Some(task) })
    }

    pub fn events(&self) -> mpsc::Sender<NodeEvent> {
        self.events.clone()
    }

    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// Closes every connection after saving its sync state and waits until
    /// every storage write has committed.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn run_loop(
    mut node: NodeLoop,
    mut events: mpsc::Receiver<NodeEvent>,
    mut replies: mpsc::UnboundedReceiver<StoreReply>,
    mut shutdown: oneshot::Receiver<()>,
    tick_interval: Duration,
) {
    let mut tick = tokio::time::interval(tick_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(event) = events.recv() => node.handle_batch(event, &mut events),
            Some(reply) = replies.recv() => node.storage_reply(reply),
            _ = tick.tick() => node.tick(),
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: saving sync states and flushing the store");
    // The store thread blocks while it drains; keep it off the runtime.
    let _ = tokio::task::spawn_blocking(move || node.shutdown()).await;
}

/// Registers a connection with the loop; `None` if the loop is gone.
pub async fn register(
    events: &mpsc::Sender<NodeEvent>,
    direction: Direction,
) -> Option<(ConnId, mpsc::Receiver<Outbound>)> {
    register_as(events, direction, false).await
}

/// Registers a link to another edge (see [`NodeEvent::Connected`]).
pub async fn register_edge_peer(
    events: &mpsc::Sender<NodeEvent>,
    direction: Direction,
) -> Option<(ConnId, mpsc::Receiver<Outbound>)> {
    register_as(events, direction, true).await
}

async fn register_as(
    events: &mpsc::Sender<NodeEvent>,
    direction: Direction,
    edge_peer: bool,
) -> Option<(ConnId, mpsc::Receiver<Outbound>)> {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let (reply_tx, reply_rx) = oneshot::channel();
    events.send(NodeEvent::Connected { direction, edge_peer, out: out_tx, reply: reply_tx }).await.ok()?;
    let conn = reply_rx.await.ok()?;
    Some((conn, out_rx))
}
