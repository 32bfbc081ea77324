//! The edge's event loop: one actor that owns the sync [`Engine`], feeds it
//! events from WebSocket connections, the storage thread and a timer, and
//! carries out what the engine asks for.
//!
//! SQLite runs on a dedicated thread ([`StorageWorker`]) that executes the
//! engine's storage tasks in order, grouping whatever is queued into one
//! transaction (group commit). Results come back to the loop only after the
//! transaction committed, which is what lets the engine keep its
//! durable-before-advertised rule.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use meridian_protocol::codec;
use meridian_protocol::engine::{Direction, Engine, EngineConfig, ErrorKind, Event, Millis, Output};
use meridian_protocol::ids::{ConnId, PeerId};
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::EdgeConfig;
use crate::metrics::EdgeMetrics;
use crate::store::{SqliteStore, StoreError};

/// Frames queued towards one connection before it counts as too slow.
pub const OUTBOUND_CAPACITY: usize = 8192;

/// What the loop sends to a connection task.
#[derive(Debug)]
pub enum Outbound {
    Frame(Vec<u8>),
    /// Close the socket with this reason (after the frames queued before it).
    Close(String),
}

/// Everything the node loop reacts to.
#[derive(Debug)]
pub enum NodeEvent {
    Connected { out: mpsc::Sender<Outbound>, reply: oneshot::Sender<ConnId> },
    Frame { conn: ConnId, bytes: Vec<u8> },
    Reject { conn: ConnId, kind: ErrorKind, detail: String },
    Disconnected { conn: ConnId },
}

type Batch = Vec<(StorageTaskId, StorageTask)>;
type BatchResult = Vec<(StorageTaskId, StorageResult)>;

/// Errors starting an edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("starting the storage thread: {0}")]
    Thread(std::io::Error),
}

/// Owns the SQLite thread. Dropping the sender ends the thread after it
/// has run every queued batch.
struct StorageWorker {
    tx: Option<std::sync::mpsc::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StorageWorker {
    fn start(
        mut store: SqliteStore,
        results: mpsc::UnboundedSender<BatchResult>,
        metrics: Arc<EdgeMetrics>,
    ) -> Result<Self, EdgeError> {
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        let thread = std::thread::Builder::new()
            .name("meridian-store".into())
            .spawn(move || {
                while let Ok(mut batch) = rx.recv() {
                    // Group commit: everything already queued goes into the
                    // same transaction.
                    while let Ok(more) = rx.try_recv() {
                        batch.extend(more);
                    }
                    let started = Instant::now();
                    let out = store.execute_batch(&batch);
                    metrics.storage_batch_seconds.observe(started.elapsed().as_secs_f64());
                    metrics.storage_batches.fetch_add(1, Relaxed);
                    metrics.storage_tasks.fetch_add(batch.len() as u64, Relaxed);
                    let failed = out.iter().filter(|(_, r)| matches!(r, StorageResult::Failed(_))).count();
                    metrics.storage_failures.fetch_add(failed as u64, Relaxed);
                    if results.send(out).is_err() {
                        break;
                    }
                }
            })
            .map_err(EdgeError::Thread)?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    fn submit(&self, batch: Batch) {
        if let Some(tx) = &self.tx {
            // The thread only goes away at shutdown; nothing to do then.
            let _ = tx.send(batch);
        }
    }

    /// Waits until every submitted batch has run.
    fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The node loop's state.
struct NodeLoop {
    engine: Engine,
    conns: BTreeMap<ConnId, mpsc::Sender<Outbound>>,
    storage: StorageWorker,
    metrics: Arc<EdgeMetrics>,
    started: Instant,
}

impl NodeLoop {
    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    fn handle(&mut self, event: NodeEvent) {
        let now = self.now();
        match event {
            NodeEvent::Connected { out, reply } => {
                let conn = self.engine.handle_connect(now, Direction::Incoming);
                self.conns.insert(conn, out);
                self.metrics.connections.fetch_add(1, Relaxed);
                self.metrics.connections_total.fetch_add(1, Relaxed);
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
        }
        self.drain();
    }

    fn storage_done(&mut self, results: BatchResult) {
        let now = self.now();
        for (id, result) in results {
            self.engine.handle_storage_result(now, id, result);
        }
        self.drain();
    }

    fn tick(&mut self) {
        let now = self.now();
        self.engine.handle_tick(now);
        self.drain();
        self.metrics.documents_loaded.store(self.engine.loaded_docs() as u64, Relaxed);
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
            self.storage.submit(batch);
        }
    }

    fn send(&mut self, conn: ConnId, message: &codec::Message) {
        let Some(tx) = self.conns.get(&conn) else { return };
        let bytes = codec::encode(message);
        self.metrics.message_out(message.type_name(), bytes.len());
        if tx.try_send(Outbound::Frame(bytes)).is_err() {
            // Too slow (or already gone): dropping our sender makes its task
            // close the socket; the engine hears about it as a disconnect.
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
            Event::DocChanged { doc, .. } => tracing::trace!(%doc, "changed"),
            Event::DocReady { .. } | Event::DocUnavailable { .. } | Event::Ephemeral { .. } => {}
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

/// A running edge node. Dropping it aborts its tasks; call
/// [`EdgeNode::shutdown`] for a graceful stop.
#[derive(Debug)]
pub struct EdgeNode {
    addr: SocketAddr,
    metrics: Arc<EdgeMetrics>,
    shutdown: Option<oneshot::Sender<()>>,
    node_task: Option<JoinHandle<()>>,
    http_task: Option<JoinHandle<()>>,
}

impl EdgeNode {
    /// Opens the store, binds the listener and starts serving.
    pub async fn start(config: EdgeConfig) -> Result<Self, EdgeError> {
        config.validate()?;
        let store = SqliteStore::open_with(&config.database_path(), crate::store::StoreOptions { fsync: config.fsync })?;
        let metrics = Arc::new(EdgeMetrics::default());
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| EdgeError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| EdgeError::Bind { addr: config.listen, source })?;

        let mut engine_config = EngineConfig::new(PeerId::new(config.peer_id.clone()), Some(store.storage_id().clone()));
        engine_config.idle_evict_after_ms = config.idle_evict_after.as_millis() as u64;
        engine_config.rng_seed = rand::random();
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let storage = StorageWorker::start(store, results_tx, metrics.clone())?;
        let node = NodeLoop {
            engine: Engine::new(engine_config),
            conns: BTreeMap::new(),
            storage,
            metrics: metrics.clone(),
            started: Instant::now(),
        };
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (http_stop_tx, http_stop_rx) = oneshot::channel();
        let node_task = tokio::spawn(run_loop(node, events_rx, results_rx, shutdown_rx, http_stop_tx, config.clone()));
        let app = crate::server::router(crate::server::AppState {
            events: events_tx,
            metrics: metrics.clone(),
            max_message_bytes: config.max_message_bytes,
            ping_interval: config.ping_interval,
        });
        let http_task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = http_stop_rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(%addr, data = %config.data_dir.display(), "edge listening");
        Ok(Self { addr, metrics, shutdown: Some(shutdown_tx), node_task: Some(node_task), http_task: Some(http_task) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The automerge-repo WebSocket URL of this edge.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/sync", self.addr)
    }

    pub fn metrics(&self) -> &Arc<EdgeMetrics> {
        &self.metrics
    }

    /// Stops accepting, closes connections after saving their sync state,
    /// and waits until every storage write has committed.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.node_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.http_task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for EdgeNode {
    fn drop(&mut self) {
        for t in [self.node_task.take(), self.http_task.take()].into_iter().flatten() {
            t.abort();
        }
    }
}

async fn run_loop(
    mut node: NodeLoop,
    mut events: mpsc::Receiver<NodeEvent>,
    mut results: mpsc::UnboundedReceiver<BatchResult>,
    mut shutdown: oneshot::Receiver<()>,
    http_stop: oneshot::Sender<()>,
    config: EdgeConfig,
) {
    let mut tick = tokio::time::interval(config.tick_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(event) = events.recv() => node.handle(event),
            Some(done) = results.recv() => node.storage_done(done),
            _ = tick.tick() => node.tick(),
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: saving sync states and flushing the store");
    let _ = http_stop.send(());
    // The store thread blocks while it drains; keep it off the runtime.
    let _ = tokio::task::spawn_blocking(move || node.shutdown()).await;
}
