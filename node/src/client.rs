//! The native client: the same sync engine as the edge, run by a device app
//! or a test, connected to an edge (or any automerge-repo sync server) over
//! WebSocket, with reconnect and exponential backoff with jitter.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use meridian_node::client::{Client, ClientOptions};
//! use meridian_protocol::automerge::{ROOT, transaction::Transactable};
//! let client = Client::connect("ws://127.0.0.1:7300/sync", ClientOptions::default()).await?;
//! let doc = client.create(|tx| { tx.put(ROOT, "title", "hello")?; Ok(()) }).await?;
//! println!("automerge:{doc}");
//! # Ok(()) }
//! ```
//!
//! One actor task owns the engine, the store and the socket; the [`Client`]
//! handle talks to it through commands. Dropping the handle stops the task.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::quic::HubTrust;
use crate::store::{SqliteStore, StoreError};
use meridian_protocol::automerge::transaction::{CommitOptions, Transaction};
use meridian_protocol::automerge::{Automerge, AutomergeError, ChangeHash};
use meridian_protocol::codec::{self, Message};
use meridian_protocol::drive::Driver;
use meridian_protocol::engine::{Direction, Engine, EngineConfig, Event, Millis};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId};
use meridian_protocol::storage::{MemoryStore, StorageResult, StorageTask, StorageTaskId};
use rand::RngExt;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
mod link;

use link::{Link, LinkError};

type InitFn = Box<dyn for<'a> FnOnce(&mut Transaction<'a>) -> Result<(), AutomergeError> + Send>;
type ReadFn = Box<dyn FnOnce(Option<&Automerge>) + Send>;

/// The "URL" of an in-process client ([`Client::in_process`]).
const IN_PROCESS: &str = "in-process:";

/// How a client is set up.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Peer id on the wire; random if `None`.
    pub peer_id: Option<String>,
    /// A SQLite file for a local replica that survives restarts; in memory
    /// (an ephemeral peer) if `None`.
    pub store_path: Option<std::path::PathBuf>,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_message_bytes: usize,
    /// How to trust the edge's certificate for `quic://` URLs.
    pub quic_trust: Option<HubTrust>,
    /// Access token (`meridian-edge auth token`) for an edge with auth on.
    pub token: Option<String>,
    /// Connect to this node loop of the same process instead of a URL
    /// (see [`Client::in_process`]).
    pub node: Option<crate::runtime::NodeEvents>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            peer_id: None,
            store_path: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_message_bytes: crate::DEFAULT_MAX_MESSAGE_BYTES,
            quic_trust: None,
            token: None,
            node: None,
        }
    }
}

/// Errors of client operations.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the client has stopped")]
    Stopped,
    #[error("document {0} is unavailable: no peer has it")]
    Unavailable(DocumentId),
    #[error("document {0} is not loaded; call find first")]
    NotLoaded(DocumentId),
    #[error("automerge: {0}")]
    Automerge(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("`{0}` is not an edge URL: use ws://HOST:PORT/sync, wss://… or quic://HOST:PORT")]
    BadUrl(String),
}

/// Connection state, as observed by [`Client::connection_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    Backoff,
    /// The edge refused our token (missing, expired, …); retrying.
    Refused,
}

enum Command {
    Create { init: InitFn, reply: oneshot::Sender<Result<DocumentId, ClientError>> },
    Change { doc: DocumentId, options: CommitOptions, f: InitFn, reply: oneshot::Sender<Result<(), ClientError>> },
    Find { doc: DocumentId, reply: oneshot::Sender<Result<(), ClientError>> },
    Import { bytes: Vec<u8>, reply: oneshot::Sender<Result<DocumentId, ClientError>> },
    Read { doc: DocumentId, f: ReadFn },
    Acked { doc: DocumentId, reply: oneshot::Sender<()> },
    State { reply: oneshot::Sender<ConnectionState> },
    LastError { reply: oneshot::Sender<Option<String>> },
}

/// A handle to a running client.
#[derive(Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    changes: broadcast::Sender<(DocumentId, Vec<ChangeHash>)>,
    peer_id: PeerId,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Starts a client that connects (and keeps reconnecting) to `url`.
    /// A client of the node loop `events` of this process, connected
    /// without a socket (the edge's admin API uses one).
    pub async fn in_process(events: crate::runtime::NodeEvents, options: ClientOptions) -> Result<Self, ClientError> {
        Self::connect(IN_PROCESS, ClientOptions { node: Some(events), ..options }).await
    }

    pub async fn connect(url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let in_process = url == IN_PROCESS && options.node.is_some();
        if !in_process && !["ws://", "wss://", "quic://"].iter().any(|p| url.starts_with(p)) {
            return Err(ClientError::BadUrl(url.to_owned()));
        }
        let mut rng = rand::rng();
        let peer_id =
            PeerId::new(options.peer_id.clone().unwrap_or_else(|| format!("meridian-{:08x}", rng.random::<u32>())));
        let store = match &options.store_path {
            Some(path) => ClientStore::Sqlite(SqliteStore::open(path)?),
            None => ClientStore::Memory(MemoryStore::new()),
        };
        let mut config = EngineConfig::new(peer_id.clone(), store.storage_id());
        config.rng_seed = rng.random();
        config.idle_evict_after_ms = u64::MAX;
        // Its own changes are never spaced out; the server folds what it
        // sends to busy co-writers.
        config.co_writer_spacing_ms = 0;
        let (commands, rx) = mpsc::channel(64);
        let (changes, _) = broadcast::channel(1024);
        let backoff = Backoff::new(options.min_backoff, options.max_backoff);
        let actor = Actor {
            engine: Engine::new(config),
            store,
            url: url.to_owned(),
            options,
            link: None,
            conn: None,
            state: ConnectionState::Connecting,
            backoff,
            started: Instant::now(),
            waiting_find: BTreeMap::new(),
            changes: changes.clone(),
            ready: false,
            ack_waiters: Vec::new(),
            last_error: None,
        };
        let task = tokio::spawn(actor.run(rx));
        Ok(Self { commands, changes, peer_id, task })
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }

    /// Stops the client and waits until its task (and socket) are gone.
    pub async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Creates a document; returns once it is durable locally.
    pub async fn create<F>(&self, init: F) -> Result<DocumentId, ClientError>
    where
        F: for<'a> FnOnce(&mut Transaction<'a>) -> Result<(), AutomergeError> + Send + 'static,
    {
        self.ask(|reply| Command::Create { init: Box::new(init), reply }).await?
    }

    /// Changes a loaded document.
    pub async fn change<F>(&self, doc: DocumentId, f: F) -> Result<(), ClientError>
    where
        F: for<'a> FnOnce(&mut Transaction<'a>) -> Result<(), AutomergeError> + Send + 'static,
    {
        self.change_with(doc, CommitOptions::default().with_time(unix_seconds()), f).await
    }

    /// [`Client::change`] with a commit message and time (`options`).
    pub async fn change_with<F>(&self, doc: DocumentId, options: CommitOptions, f: F) -> Result<(), ClientError>
    where
        F: for<'a> FnOnce(&mut Transaction<'a>) -> Result<(), AutomergeError> + Send + 'static,
    {
        self.ask(|reply| Command::Change { doc, options, f: Box::new(f), reply }).await?
    }

    /// A new document holding the changes of a saved `.automerge` file
    /// (`Automerge::save` bytes, or changes); it syncs like a created one.
    pub async fn import(&self, bytes: Vec<u8>) -> Result<DocumentId, ClientError> {
        self.ask(|reply| Command::Import { bytes, reply }).await?
    }

    /// Restores `doc` to its state at `heads` as one new change ("Rollback
    /// to …"), which syncs like any edit ([`crate::document::rollback`]).
    pub async fn rollback(&self, doc: DocumentId, heads: Vec<ChangeHash>) -> Result<(), ClientError> {
        let short: Vec<String> = heads.iter().map(|h| h.to_string()[..12].to_owned()).collect();
        let options =
            CommitOptions::default().with_message(format!("Rollback to {}", short.join(","))).with_time(unix_seconds());
        self.change_with(doc, options, move |tx| crate::document::rollback(tx, &heads)).await
    }

    /// Loads a document locally or fetches it from the server.
    pub async fn find(&self, doc: DocumentId) -> Result<(), ClientError> {
        self.ask(|reply| Command::Find { doc, reply }).await?
    }

    /// Reads a document (if loaded) with `f`.
    pub async fn read<T: Send + 'static>(
        &self,
        doc: DocumentId,
        f: impl FnOnce(&Automerge) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let f: ReadFn = Box::new(move |d| {
            let _ = tx.send(d.map(f));
        });
        self.commands.send(Command::Read { doc, f }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Waits until the server has acknowledged every local change made to
    /// the document so far (its advertised heads cover ours). Edges only
    /// advertise committed heads, so after this the changes are durable
    /// there.
    pub async fn wait_acked(&self, doc: DocumentId) -> Result<(), ClientError> {
        self.ask(|reply| Command::Acked { doc, reply }).await
    }

    /// Notified with (document, heads) whenever a document changes durably.
    pub fn subscribe(&self) -> broadcast::Receiver<(DocumentId, Vec<ChangeHash>)> {
        self.changes.subscribe()
    }

    pub async fn connection_state(&self) -> Result<ConnectionState, ClientError> {
        self.ask(|reply| Command::State { reply }).await
    }

    /// Why the last attempt to connect failed, in words ("connection
    /// refused"); `None` once connected.
    pub async fn last_connect_error(&self) -> Option<String> {
        self.ask(|reply| Command::LastError { reply }).await.ok().flatten()
    }

    /// Waits until `pred` holds for the document (checked on every change).
    pub async fn wait_for(
        &self,
        doc: DocumentId,
        pred: impl Fn(&Automerge) -> bool + Send + Sync + Clone + 'static,
    ) -> Result<(), ClientError> {
        let mut changes = self.subscribe();
        loop {
            let p = pred.clone();
            if self.read(doc, move |d| p(d)).await == Some(true) {
                return Ok(());
            }
            match changes.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(ClientError::Stopped),
            }
        }
    }
}

/// The client's local replica.
#[derive(Debug)]
enum ClientStore {
    Memory(MemoryStore),
    Sqlite(SqliteStore),
}

impl ClientStore {
    fn storage_id(&self) -> Option<meridian_protocol::ids::StorageId> {
        match self {
            ClientStore::Memory(_) => None,
            ClientStore::Sqlite(s) => Some(s.storage_id().clone()),
        }
    }

    fn execute(&mut self, task: &StorageTask) -> StorageResult {
        match self {
            ClientStore::Memory(m) => m.execute(task),
            ClientStore::Sqlite(s) => s.execute(task),
        }
    }
}

type ConnectFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Link, LinkError>> + Send>>;

/// Why the actor woke up.
enum Wake {
    Command(Option<Command>),
    Frame(Option<Vec<u8>>),
    Connected(Result<Link, LinkError>),
    Reconnect,
    Timeout,
}

struct Actor {
    engine: Engine,
    store: ClientStore,
    url: String,
    options: ClientOptions,
    link: Option<Link>,
    conn: Option<ConnId>,
    state: ConnectionState,
    backoff: Backoff,
    started: Instant,
    waiting_find: BTreeMap<DocumentId, Vec<oneshot::Sender<Result<(), ClientError>>>>,
    changes: broadcast::Sender<(DocumentId, Vec<ChangeHash>)>,
    /// The server answered our `join`.
    ready: bool,
    ack_waiters: Vec<(DocumentId, Vec<ChangeHash>, oneshot::Sender<()>)>,
    /// Why the last connection attempt failed (cleared on connecting).
    last_error: Option<String>,
}

impl Actor {
    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    /// When the engine next needs to run ([`Engine::poll_timeout`]).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        crate::runtime::engine_deadline(&self.engine, self.started)
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut reconnect_at = tokio::time::Instant::now();
        // A connection attempt runs alongside commands, so local edits never
        // wait for the network (a QUIC handshake to a dead edge takes a while).
        let mut connecting: Option<ConnectFuture> = None;
        loop {
            if self.link.is_none() && connecting.is_none() && tokio::time::Instant::now() >= reconnect_at {
                self.state = ConnectionState::Connecting;
                connecting = Some(self.connect_future());
            }
            let idle = self.link.is_none() && connecting.is_none();
            let deadline = self.deadline();
            let wake = {
                let frame = async {
                    match self.link.as_mut() {
                        Some(link) => link.next().await,
                        None => std::future::pending().await,
                    }
                };
                let attempt = async {
                    match connecting.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                };
                let engine_timer = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    cmd = commands.recv() => Wake::Command(cmd),
                    msg = frame => Wake::Frame(msg),
                    result = attempt => Wake::Connected(result),
                    _ = tokio::time::sleep_until(reconnect_at), if idle => Wake::Reconnect,
                    _ = engine_timer => Wake::Timeout,
                }
            };
            match wake {
                Wake::Command(Some(cmd)) => self.command(cmd),
                Wake::Command(None) => break,
                Wake::Frame(msg) => self.incoming(msg),
                Wake::Connected(result) => {
                    connecting = None;
                    reconnect_at = tokio::time::Instant::now() + self.connected(result);
                }
                Wake::Reconnect => {}
                Wake::Timeout => {
                    let now = self.now();
                    self.engine.handle_timeout(now);
                }
            }
            self.drain().await;
        }
    }

    fn connect_future(&self) -> ConnectFuture {
        let (url, max, trust) = (self.url.clone(), self.options.max_message_bytes, self.options.quic_trust.clone());
        let token = self.options.token.clone();
        if let Some(node) = self.options.node.clone() {
            return Box::pin(Link::local(node));
        }
        Box::pin(async move { Link::connect(&url, max, trust.as_ref(), token.as_deref()).await })
    }

    /// Takes the outcome of a connection attempt; returns the delay before
    /// the next attempt if it failed.
    fn connected(&mut self, result: Result<Link, LinkError>) -> Duration {
        match result {
            Ok(link) => {
                tracing::info!(url = %self.url, "connected");
                self.link = Some(link);
                self.backoff.reset();
                self.state = ConnectionState::Connected;
                self.last_error = None;
                let now = self.now();
                self.conn = Some(self.engine.handle_connect(now, Direction::Outgoing));
                Duration::ZERO
            }
            Err(LinkError::Refused(reason)) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(url = %self.url, %reason, ?delay, "the edge refused our token; retrying");
                self.state = ConnectionState::Refused;
                self.last_error = Some(format!("refused: {reason}"));
                delay
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                tracing::info!(url = %self.url, error = %e, ?delay, "connect failed; retrying");
                self.state = ConnectionState::Backoff;
                self.last_error = Some(e.in_words());
                delay
            }
        }
    }

    fn incoming(&mut self, msg: Option<Vec<u8>>) {
        let Some(conn) = self.conn else { return };
        let now = self.now();
        match msg {
            Some(bytes) => {
                self.engine.handle_frame(now, conn, &bytes);
                self.check_acks();
            }
            None => self.disconnected(),
        }
    }

    /// Answers `wait_acked` callers whose heads the server now covers.
    fn check_acks(&mut self) {
        let Some(conn) = self.conn else { return };
        let engine = &self.engine;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ack_waiters)
            .into_iter()
            .partition(|(doc, heads, _)| engine.peer_covers(doc, conn, heads));
        self.ack_waiters = waiting;
        for (_, _, reply) in done {
            let _ = reply.send(());
        }
    }

    fn disconnected(&mut self) {
        if let Some(conn) = self.conn.take() {
            let now = self.now();
            self.engine.handle_disconnect(now, conn);
        }
        self.link = None;
        self.ready = false;
        self.state = ConnectionState::Backoff;
        tracing::info!(url = %self.url, "disconnected");
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Create { init, reply } => {
                let options = CommitOptions::default().with_time(unix_seconds());
                let r = self.engine.create_with(now, options, init).map_err(|e| ClientError::Automerge(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Import { bytes, reply } => {
                let doc = DocumentId::random(&mut rand::rng());
                let r = self.engine.import(now, doc, &bytes).map(|()| doc);
                if r.is_ok() {
                    self.engine.find(now, doc);
                }
                let _ = reply.send(r.map_err(|e| ClientError::Automerge(e.to_string())));
            }
            Command::Change { doc, options, f, reply } => {
                let r = self.engine.change_with(now, doc, options, f).map_err(|e| match e {
                    meridian_protocol::engine::DocError::NotLoaded(d) => ClientError::NotLoaded(d),
                    other => ClientError::Automerge(other.to_string()),
                });
                let _ = reply.send(r);
            }
            Command::Find { doc, reply } => {
                self.waiting_find.entry(doc).or_default().push(reply);
                self.engine.find(now, doc);
            }
            Command::Read { doc, f } => f(self.engine.document(&doc)),
            Command::State { reply } => {
                let _ = reply.send(self.state);
            }
            Command::LastError { reply } => {
                let _ = reply.send(self.last_error.clone());
            }
            Command::Acked { doc, reply } => {
                let heads = self.engine.document(&doc).map(|d| d.get_heads()).unwrap_or_default();
                self.ack_waiters.push((doc, heads, reply));
                self.check_acks();
            }
        }
    }

    /// Drives the engine ([`Engine::drive_to_event`]) and carries out what
    /// it asked, in order: the frames up to each event go out on the link
    /// (async, so after the drive), then the event reaches its waiters (and
    /// may ask the engine for more).
    async fn drain(&mut self) {
        loop {
            let now = self.now();
            let mut io = ClientIo { store: &mut self.store, conn: self.conn, out: Outcome::default() };
            let event = self.engine.drive_to_event(now, &mut io);
            let out = io.out;
            for bytes in out.frames {
                let sent = match self.link.as_mut() {
                    Some(link) => link.send(bytes).await.is_ok(),
                    None => false,
                };
                if !sent {
                    self.disconnected();
                    break;
                }
            }
            if out.close && self.conn.is_some() {
                if let Some(link) = self.link.take() {
                    link.close().await;
                }
                self.disconnected();
            }
            match event {
                Some(e) => self.event(e),
                None => return,
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::DocChanged { doc, heads } => {
                let _ = self.changes.send((doc, heads));
            }
            Event::DocReady { doc } => {
                for r in self.waiting_find.remove(&doc).unwrap_or_default() {
                    let _ = r.send(Ok(()));
                }
            }
            // Before the server has answered our `join` there is nobody to
            // ask yet: keep waiting, and ask again once it has.
            Event::DocUnavailable { .. } if !self.ready => {}
            Event::PeerConnected { .. } => {
                self.ready = true;
                let now = self.now();
                let waiting: Vec<DocumentId> = self.waiting_find.keys().copied().collect();
                for doc in waiting {
                    self.engine.find(now, doc);
                }
            }
            Event::DocUnavailable { doc } => {
                for r in self.waiting_find.remove(&doc).unwrap_or_default() {
                    let _ = r.send(Err(ClientError::Unavailable(doc)));
                }
            }
            Event::ProtocolError { detail, .. } => tracing::warn!(%detail, "server rejected our input"),
            _ => {}
        }
    }
}

/// What one drive of the engine, up to an event, left for the actor (see
/// [`Actor::drain`]).
#[derive(Default)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    /// The engine closed the connection.
    close: bool,
}

/// The actor's side of the engine's outputs: its store answers at once;
/// frames for the live connection and the close wait in [`Outcome`].
struct ClientIo<'a> {
    store: &'a mut ClientStore,
    conn: Option<ConnId>,
    out: Outcome,
}

impl Driver for ClientIo<'_> {
    fn send(&mut self, conn: ConnId, message: Message) {
        if Some(conn) == self.conn && !self.out.close {
            self.out.frames.push(codec::encode(&message));
        }
    }

    fn close(&mut self, conn: ConnId, _reason: String) -> bool {
        if Some(conn) == self.conn {
            self.out.close = true;
        }
        // The actor reports the disconnect once the link is closed.
        false
    }

    fn storage(&mut self, _id: StorageTaskId, task: StorageTask) -> Option<StorageResult> {
        Some(self.store.execute(&task))
    }
}

/// Wall-clock seconds, as change times are recorded (`@automerge/automerge` does the same).
fn unix_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
