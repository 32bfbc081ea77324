//! The sans-IO sync engine.
//!
//! One [`Engine`] holds the documents and connections of one node (a
//! browser tab, a device, an edge, the hub). It never does IO and never
//! reads a clock: the driver feeds it inputs through the `handle_*` methods,
//! each carrying `now`, and drains what it wants done through
//! [`Engine::poll_output`]:
//!
//! - [`Output::Send`]: encode the message and send it on the connection;
//! - [`Output::Close`]: close the connection (after sending what precedes it);
//! - [`Output::Storage`]: run the task in order and answer with
//!   [`Engine::handle_storage_result`];
//! - [`Output::Event`]: something the application or the metrics care about.
//!
//! Two rules shape the code below:
//!
//! - **Durable before advertised.** While a write of a document is in
//!   flight, no sync message for that document leaves the engine: every sync
//!   message carries our heads, and heads must only cover committed changes.
//!   Messages are generated again when the last write completes.
//! - **Memory follows the working set.** A document untouched for
//!   [`EngineConfig::idle_evict_after`] leaves memory (its sync states with
//!   persistent peers are saved first); who is subscribed to it is kept, so
//!   it is pushed to them again if it changes after being reloaded.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec::{self, Decoded, Message, PROTOCOL_V1, PeerMetadata};
use crate::ids::{ConnId, DocumentId, PeerId, StorageId};
use crate::storage::{StorageResult, StorageTask, StorageTaskId};

/// Milliseconds on the driver's clock (monotonic, any origin).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default, Hash)]
pub struct Millis(pub u64);

impl Millis {
    fn saturating_sub(self, other: Millis) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

/// How an engine is set up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub peer_id: PeerId,
    /// Our store's id; `None` makes us an ephemeral peer.
    pub storage_id: Option<StorageId>,
    /// Evict a document from memory after this long without activity.
    pub idle_evict_after_ms: u64,
    /// Seed of the engine's RNG (actor ids, document ids).
    pub rng_seed: u64,
    /// This node connects to an upstream (clients and edges do). It then
    /// remembers which evicted documents a reconnecting upstream must hear
    /// of again; a hub sets this to `false` and keeps no such record.
    pub expects_upstream: bool,
    /// Count client writes per document for [`Engine::take_demand`] (edges
    /// report demand to the hub; other nodes leave this off).
    pub track_demand: bool,
    /// Memory budget: at most this many documents in memory (0: no limit).
    /// Past it, each tick evicts the least recently active documents that
    /// can leave (as idle eviction does, before their idle time is up).
    pub max_loaded_docs: usize,
    /// Hand peers in the same sync state copies of one generated message
    /// (see `Generated`). Always on; a test turns it off to compare
    /// against generating every message.
    pub share_generated: bool,
    /// Apply a peer's consecutive messages carrying changes as one (see
    /// `coalesce`). Always on; a test turns it off to compare against
    /// applying each in turn.
    pub coalesce_messages: bool,
    /// Send a peer that has nothing the stored snapshot before loading the
    /// document (see [`Engine::answer_from_snapshot`]). Always on; a test
    /// turns it off to compare against answering after the load.
    pub answer_from_snapshot: bool,
    /// A document's chunks are compacted into one snapshot once they hold
    /// at least this many bytes (and as many as the last snapshot). The
    /// simulation lowers it so small documents are compacted too.
    pub min_compact_bytes: usize,
}

impl EngineConfig {
    pub fn new(peer_id: PeerId, storage_id: Option<StorageId>) -> Self {
        Self {
            peer_id,
            storage_id,
            idle_evict_after_ms: 60_000,
            rng_seed: 0,
            expects_upstream: true,
            track_demand: false,
            max_loaded_docs: 0,
            share_generated: true,
            coalesce_messages: true,
            answer_from_snapshot: true,
            min_compact_bytes: 16 * 1024,
        }
    }
}

/// Which side opened a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// A peer connected to us; it must send `join` first.
    Incoming,
    /// We connected to a server: we send `join` and the server is our
    /// upstream (asked for documents we do not have, sent every document).
    Outgoing,
}

/// Classes of bad input, for errors and metrics.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum ErrorKind {
    Decode,
    NotJoined,
    UnsupportedVersion,
    InvalidSyncMessage,
    Oversize,
    TextFrame,
    Unauthorized,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Decode,
        ErrorKind::NotJoined,
        ErrorKind::UnsupportedVersion,
        ErrorKind::InvalidSyncMessage,
        ErrorKind::Oversize,
        ErrorKind::TextFrame,
        ErrorKind::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Decode => "decode",
            ErrorKind::NotJoined => "not_joined",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::InvalidSyncMessage => "invalid_sync_message",
            ErrorKind::Oversize => "oversize",
            ErrorKind::TextFrame => "text_frame",
            ErrorKind::Unauthorized => "unauthorized",
        }
    }
}

/// What the application (or the metrics) is told.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    PeerConnected {
        conn: ConnId,
        peer: PeerId,
        metadata: PeerMetadata,
    },
    PeerDisconnected {
        conn: ConnId,
        peer: Option<PeerId>,
    },
    /// A document's heads changed in memory (a local change or one from a
    /// peer); it is not durable yet — [`Event::DocChanged`] follows once it
    /// is. Lets an application show remote edits without waiting for its
    /// own storage.
    DocUpdated {
        doc: DocumentId,
    },
    /// A document's heads changed and the change is durable.
    DocChanged {
        doc: DocumentId,
        heads: Vec<ChangeHash>,
    },
    /// A document asked for with [`Engine::find`] is here.
    DocReady {
        doc: DocumentId,
    },
    /// A document asked for with [`Engine::find`] exists nowhere we can ask.
    DocUnavailable {
        doc: DocumentId,
    },
    Ephemeral {
        doc: DocumentId,
        sender: PeerId,
        data: Vec<u8>,
    },
    /// A peer sent bad input; its connection is being closed.
    ProtocolError {
        conn: ConnId,
        kind: ErrorKind,
        detail: String,
    },
    StorageFailed {
        doc: Option<DocumentId>,
        detail: String,
    },
    Evicted {
        doc: DocumentId,
    },
}

/// Everything the engine asks of its driver.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Send { conn: ConnId, message: Message },
    Close { conn: ConnId, reason: String },
    Storage { id: StorageTaskId, task: StorageTask },
    Event(Event),
}

/// Demand for one document at this node, from its downstream peers
/// (clients), for placement (DESIGN §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DocDemand {
    /// Downstream connections subscribed to it now.
    pub subscribers: u32,
    /// Sync messages from downstream peers that brought new changes since
    /// the last [`Engine::take_demand`].
    pub writes: u64,
}

/// Counters for metrics ([`Engine::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Documents whose local copy was dropped for the upstream's
    /// ([`Engine::offload`]).
    pub offloaded: u64,
    /// Documents someone opened that were not stored here, asked of an
    /// upstream or their home edge.
    pub cold_opens: u64,
    /// Sync messages automerge generated for peers of loaded documents.
    pub sync_generated: u64,
    /// Sync messages handed to a peer as a copy of one generated for a peer
    /// in the same sync state (see `Generated`).
    pub sync_shared: u64,
    /// Peers' sync messages applied together with the same peer's previous
    /// one (see `coalesce`) rather than on their own.
    pub sync_merged: u64,
    /// Peers that had nothing and got a document's stored snapshot before
    /// the document was loaded ([`Engine::answer_from_snapshot`]).
    pub snapshot_answers: u64,
}

/// How far a peer is from our durable copy of a document
/// ([`Engine::catch_up`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// The connection is unknown or has not completed its handshake.
    NoPeer,
    /// The document is being loaded; ask again.
    Loading,
    /// We have no data for it: there is nothing to catch up with.
    NoData,
    /// Sync messages are on their way; the peer has not confirmed our heads.
    Behind,
    /// The peer's heads cover every change durable here.
    CaughtUp,
}

/// Why a local operation on a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("document {0} is not loaded")]
    NotLoaded(DocumentId),
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

#[derive(Debug)]
enum ConnState {
    AwaitingJoin,
    AwaitingPeer,
    Ready { peer: PeerId, metadata: PeerMetadata },
    Closed,
}

#[derive(Debug)]
struct Conn {
    direction: Direction,
    state: ConnState,
    /// A link to another edge (placement, DESIGN §5): never an upstream,
    /// and what arrives on it is not client demand. Documents sync on it
    /// only when they are routed to it ([`Engine::set_route`]) or when the
    /// other side sends them.
    edge_peer: bool,
}

impl Conn {
    fn peer(&self) -> Option<&PeerId> {
        match &self.state {
            ConnState::Ready { peer, .. } => Some(peer),
            _ => None,
        }
    }

    fn storage_id(&self) -> Option<&StorageId> {
        match &self.state {
            ConnState::Ready { metadata, .. } if !metadata.is_ephemeral => metadata.storage_id.as_ref(),
            _ => None,
        }
    }

    fn is_upstream_ready(&self) -> bool {
        self.direction == Direction::Outgoing && !self.edge_peer && matches!(self.state, ConnState::Ready { .. })
    }

    /// A client (or device) connected to us: its writes are demand.
    fn is_downstream(&self) -> bool {
        self.direction == Direction::Incoming && !self.edge_peer
    }
}

/// What we know about one peer's interest in one document.
#[derive(Debug)]
struct PeerDoc {
    sync: sync::State,
    /// It asked with `request` (it has nothing) and has not sent data since.
    requesting: bool,
    /// We told it `doc-unavailable`.
    told_unavailable: bool,
    /// It got the stored snapshot at these heads before the document was
    /// loaded ([`Engine::answer_from_snapshot`]); its request is still to
    /// be applied.
    answered_at: Option<Vec<ChangeHash>>,
}

impl PeerDoc {
    fn new() -> Self {
        Self { sync: sync::State::new(), requesting: false, told_unavailable: false, answered_at: None }
    }

    /// Its sync state once its `request` (applied after the load) and our
    /// answer from the snapshot at `heads` are both accounted for: we sent
    /// those heads (so automerge sends nothing more while it is in flight),
    /// and what we send next is what we have beyond them (its `have` is the
    /// snapshot's heads with nothing else: an empty bloom filter contains
    /// nothing). Its own heads stay unknown until it answers, so nobody
    /// (a hand-off's catch-up) takes it to hold the document before it says
    /// so. Automerge itself would record every hash it sent instead;
    /// listing them needs the loaded document's every change.
    fn answered_from_snapshot(&mut self, heads: Vec<ChangeHash>) {
        let s = &mut self.sync;
        s.their_heads = None;
        s.their_have = Some(vec![sync::Have { last_sync: heads.clone(), bloom: sync::BloomFilter::default() }]);
        s.their_need = Some(Vec::new());
        s.last_sent_heads = heads;
        s.have_responded = true;
        s.in_flight = true;
    }
}

/// Sync messages already generated for the document at `heads`, by the
/// peer's sync state before generating: `generate_sync_message` is a pure
/// function of the document and that state, and peers that are in step
/// (a thousand watchers of one document, every fresh peer fetching it) have
/// equal states. So one change to a document with N watchers costs one
/// automerge generate, not N, and a fresh peer fetching a large document
/// reuses the saved document the previous one got.
#[derive(Debug, Default)]
struct Generated {
    /// Look up and remember messages in this pass (see `revalidate`).
    enabled: bool,
    /// The document has several peers: even small messages may be shared.
    several_peers: bool,
    heads: Vec<ChangeHash>,
    by_state: HashMap<sync::State, (sync::State, Option<Vec<u8>>)>,
    /// Roughly what `by_state` holds, in bytes.
    bytes: usize,
}

/// At most this many distinct sync states are remembered per document...
const GENERATED_STATES: usize = 256;
/// ...holding at most about this many bytes.
const GENERATED_BYTES: usize = 8 << 20;
/// A document with one peer remembers only messages this large (a whole
/// saved document for a fresh peer: the next fresh peer gets it without
/// another save); small ones are cheap to generate again.
const SHARED_ALONE_BYTES: usize = 16 << 10;

impl Generated {
    /// Starts a pass over the document's peers. Remembered messages stay
    /// valid while the document is at the same `heads` with no queued
    /// changes (changes waiting for dependencies change what we `need`
    /// without changing the heads); while some are queued nothing is looked
    /// up or remembered, so every entry was made with an empty queue.
    fn revalidate(&mut self, doc: &Automerge, heads: &[ChangeHash], enabled: bool, peers: usize) {
        self.enabled = enabled && doc.get_missing_deps(&[]).is_empty();
        self.several_peers = peers > 1;
        if !self.enabled || self.heads != heads {
            self.by_state.clear();
            self.bytes = 0;
            self.heads = heads.to_vec();
        }
    }

    /// The encoded message for a peer in `state` (advanced as automerge
    /// would advance it), from the cache when a peer in the same state got
    /// one already.
    fn generate(&mut self, doc: &Automerge, state: &mut sync::State, stats: &mut EngineStats) -> Option<Vec<u8>> {
        if let Some((after, message)) = self.by_state.get(state).filter(|_| self.enabled) {
            *state = after.clone();
            stats.sync_shared += 1;
            return message.clone();
        }
        stats.sync_generated += 1;
        if !self.enabled {
            return doc.generate_sync_message(state).map(|m| m.encode());
        }
        let before = state.clone();
        let message = doc.generate_sync_message(state).map(|m| m.encode());
        let len = message.as_ref().map_or(0, Vec::len);
        if self.several_peers || len >= SHARED_ALONE_BYTES {
            // The states' hash sets dominate besides the message. When full,
            // the states seen first stay: with many peers lagging in
            // different ways, clearing would lose the big group in step.
            let bytes = len + 32 * (before.sent_hashes.len() + state.sent_hashes.len()) + 512;
            if self.by_state.len() < GENERATED_STATES && self.bytes + bytes <= GENERATED_BYTES {
                self.bytes += bytes;
                self.by_state.insert(before, (state.clone(), message.clone()));
            }
        }
        message
    }
}

/// A document message waiting until the document (and the sender's sync
/// state) is loaded, or until the commit in flight is done.
#[derive(Debug)]
struct Pending {
    conn: ConnId,
    /// The last message (of those merged into this one) was a `request`.
    requesting: bool,
    /// One of the messages merged into this one was a `sync`.
    any_sync: bool,
    /// How many peer messages this one stands for (see [`coalesce`]).
    merged: u64,
    message: sync::Message,
}

impl Pending {
    /// It carries changes (not only heads, needs and haves).
    fn changes(&self) -> bool {
        !self.message.changes.is_empty()
    }

    /// It may be merged with the same peer's next message: it carries
    /// changes and does not ask us to reset the sync (a reset clears what we
    /// sent before the changes are applied, which a merged message could not
    /// keep apart).
    fn mergeable(&self) -> bool {
        self.changes() && !self.message.flags.is_some_and(|f| f.contains(sync::MessageFlags::SYNC_RESET))
    }

    /// Appends the same peer's next message: its changes follow ours, and its
    /// heads, needs, haves and flags replace ours.
    fn absorb(&mut self, next: Pending) {
        let changes: Vec<Vec<u8>> =
            self.message.changes.iter().chain(next.message.changes.iter()).map(<[u8]>::to_vec).collect();
        self.message = sync::Message { changes: changes.into(), ..next.message };
        self.requesting = next.requesting;
        self.any_sync |= next.any_sync;
        self.merged += next.merged;
    }
}

/// Merges each peer's consecutive messages that carry changes into one, so
/// automerge applies them as one batch: its cost per call grows with the
/// document (a one-change call on a 12 KB text costs about as much as 30
/// changes in one call), and a writer with changes in flight sends many
/// while a commit is in progress. The result is what applying them in turn
/// gives: a peer's document only grows, so its later heads, needs and haves
/// supersede its earlier ones, and the sync state keeps only the latest.
/// Messages from different peers are independent of each other; each
/// peer's keep their order.
fn coalesce(pending: impl IntoIterator<Item = Pending>) -> Vec<Pending> {
    let mut out: Vec<Pending> = Vec::new();
    // Index in `out` of each peer's last message.
    let mut last: BTreeMap<ConnId, usize> = BTreeMap::new();
    for p in pending {
        if let Some(&i) = last.get(&p.conn)
            && out[i].mergeable()
            && p.mergeable()
        {
            out[i].absorb(p);
            continue;
        }
        last.insert(p.conn, out.len());
        out.push(p);
    }
    out
}

#[derive(Debug)]
struct DocState {
    doc: Automerge,
    loading: bool,
    /// Heads covered by writes that were issued (not necessarily done).
    saved_heads: Vec<ChangeHash>,
    writes_in_flight: usize,
    /// Writes issued and completed so far; messages from peers wait until
    /// `hold_until` writes completed (see [`Engine::drain_pending`]).
    writes_issued: u64,
    writes_done: u64,
    hold_until: u64,
    /// Bytes of the last snapshot and of the chunks appended since.
    snapshot_bytes: usize,
    chunk_bytes: usize,
    peers: BTreeMap<ConnId, PeerDoc>,
    /// Peers waiting for their persisted sync state.
    loading_states: BTreeSet<ConnId>,
    /// Peers whose sync state changed (a message from them, a loaded or
    /// reset state) since we last generated a message for them. With the
    /// document's heads unchanged, a clean peer has nothing new coming:
    /// [`Engine::sync_doc`] visits only these, so a message from one of N
    /// peers costs O(1), not O(N).
    dirty: BTreeSet<ConnId>,
    generated: Generated,
    /// The heads when [`Engine::sync_doc`] last generated messages: when
    /// they changed, every peer may need something.
    synced_heads: Vec<ChangeHash>,
    pending: VecDeque<Pending>,
    /// Upstreams that answered `doc-unavailable` since we last had data.
    upstream_unavailable: BTreeSet<ConnId>,
    /// The application is waiting for this document (`find`).
    local_waiting: bool,
    last_active: Millis,
    /// It was asked of a source since it was loaded (counted once).
    cold_open: bool,
    /// Fresh peers got the stored snapshot; the document loads on a second
    /// read ([`Engine::answer_from_snapshot`]).
    answered_from_snapshot: bool,
    /// The stored document, read but not loaded yet: kept while peers'
    /// sync states load, to answer the fresh ones from it first.
    stored: Option<Vec<u8>>,
    /// Nothing is stored for it (we created it, or its load found nothing):
    /// its first write may replace the store with one snapshot. Not so
    /// for a document whose stored bytes failed to load, nor one imported
    /// without a load: what the store holds must stay.
    store_empty: bool,
}

impl DocState {
    fn new(actor: ActorId, now: Millis, loading: bool) -> Self {
        Self {
            doc: Automerge::new().with_actor(actor),
            loading,
            saved_heads: Vec::new(),
            writes_in_flight: 0,
            writes_issued: 0,
            writes_done: 0,
            hold_until: 0,
            snapshot_bytes: 0,
            chunk_bytes: 0,
            peers: BTreeMap::new(),
            loading_states: BTreeSet::new(),
            dirty: BTreeSet::new(),
            generated: Generated::default(),
            synced_heads: Vec::new(),
            pending: VecDeque::new(),
            upstream_unavailable: BTreeSet::new(),
            local_waiting: false,
            last_active: now,
            cold_open: false,
            answered_from_snapshot: false,
            stored: None,
            store_empty: false,
        }
    }

    fn has_data(&self) -> bool {
        !self.doc.get_heads().is_empty()
    }

    fn busy(&self) -> bool {
        self.loading || !self.loading_states.is_empty()
    }
}

#[derive(Debug)]
enum TaskPurpose {
    LoadDoc(DocumentId),
    Write(DocumentId),
    /// Our copy is dropped after an upstream acknowledged all of it.
    Offload(DocumentId),
    LoadSyncState(DocumentId, ConnId),
    PutSyncState,
}

/// The sync engine of one node. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    rng: ChaCha8Rng,
    next_conn: u64,
    next_task: u64,
    conns: BTreeMap<ConnId, Conn>,
    peers: BTreeMap<PeerId, ConnId>,
    docs: BTreeMap<DocumentId, DocState>,
    /// Connections that have shown interest in a document, kept across
    /// eviction so changes are still pushed to them.
    subscribers: BTreeMap<DocumentId, BTreeSet<ConnId>>,
    tasks: BTreeMap<StorageTaskId, TaskPurpose>,
    /// Highest ephemeral `count` seen per (sender, session), with the time.
    ephemeral_seen: BTreeMap<(PeerId, String), (u64, Millis)>,
    /// Documents the local application created or opened.
    opened: BTreeSet<DocumentId>,
    /// Evicted documents an upstream must hear of again when it (re)connects:
    /// an upstream's interest is tied to one connection, so without this a
    /// reconnected upstream would never learn of changes it missed, nor push
    /// ours. See [`Engine::needs_resync`].
    resync_on_upstream: BTreeSet<DocumentId>,
    /// Client writes per document since the last `take_demand` (only with
    /// [`EngineConfig::track_demand`]).
    writes: BTreeMap<DocumentId, u64>,
    /// Documents that also sync on an edge-peer link (to their home edge).
    routes: BTreeMap<DocumentId, ConnId>,
    /// Documents to drop from memory and store once safe ([`Engine::offload`]).
    offloading: BTreeSet<DocumentId>,
    stats: EngineStats,
    /// Between [`Self::begin_batch`] and [`Self::end_batch`]: documents
    /// whose peers' messages wait to be applied, in the order they came.
    batch: Option<Vec<DocumentId>>,
    outputs: VecDeque<Output>,
}

const EPHEMERAL_SESSION_TTL_MS: u64 = 10 * 60_000;

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            config,
            next_conn: 0,
            next_task: 0,
            conns: BTreeMap::new(),
            peers: BTreeMap::new(),
            docs: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            tasks: BTreeMap::new(),
            ephemeral_seen: BTreeMap::new(),
            opened: BTreeSet::new(),
            resync_on_upstream: BTreeSet::new(),
            writes: BTreeMap::new(),
            routes: BTreeMap::new(),
            offloading: BTreeSet::new(),
            stats: EngineStats::default(),
            batch: None,
            outputs: VecDeque::new(),
        }
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.config.peer_id
    }

    /// The next thing the driver should do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Number of documents currently in memory.
    pub fn loaded_docs(&self) -> usize {
        self.docs.len()
    }

    /// Demand per document since the last call: downstream subscribers now,
    /// and client writes counted since (with [`EngineConfig::track_demand`]).
    /// Documents with neither are left out.
    pub fn take_demand(&mut self) -> BTreeMap<DocumentId, DocDemand> {
        let mut out: BTreeMap<DocumentId, DocDemand> = BTreeMap::new();
        for (doc, subs) in &self.subscribers {
            let downstream = subs
                .iter()
                .filter(|c| self.conns.get(c).is_some_and(|c| c.is_downstream() && c.peer().is_some()))
                .count();
            if downstream > 0 {
                out.entry(*doc).or_default().subscribers = downstream as u32;
            }
        }
        for (doc, writes) in std::mem::take(&mut self.writes) {
            out.entry(doc).or_default().writes = writes;
        }
        out
    }

    /// Number of connections that completed the handshake.
    pub fn ready_connections(&self) -> usize {
        self.peers.len()
    }

    /// The in-memory document, if loaded (and not still loading).
    pub fn document(&self, doc: &DocumentId) -> Option<&Automerge> {
        self.docs.get(doc).filter(|d| !d.loading).map(|d| &d.doc)
    }

    /// The heads that are durable in our store for a loaded document.
    pub fn durable_heads(&self, doc: &DocumentId) -> Option<Vec<ChangeHash>> {
        let d = self.docs.get(doc)?;
        (d.writes_in_flight == 0 && !d.loading).then(|| d.doc.get_heads())
    }

    /// Whether the peer on `conn` has told us it has every change up to
    /// `heads` of the document (its heads are `heads` or descend from them).
    /// This is how a client learns a change is durable at its server: a
    /// server only advertises heads that are committed.
    pub fn peer_covers(&self, doc: &DocumentId, conn: ConnId, heads: &[ChangeHash]) -> bool {
        let Some(d) = self.docs.get(doc) else { return false };
        let Some(theirs) = d.peers.get(&conn).and_then(|p| p.sync.their_heads.as_ref()) else { return false };
        if heads.iter().all(|h| theirs.contains(h)) {
            return true;
        }
        if theirs.iter().any(|h| d.doc.get_change_by_hash(h).is_none()) {
            return false;
        }
        let newer = d.doc.get_changes(theirs);
        heads.iter().all(|h| !newer.iter().any(|c| c.hash() == *h))
    }

    // ----- placement: homes and hand-offs ------------------------------

    /// Also syncs `doc` on `conn` (an edge-peer link to the document's home
    /// edge), or stops doing so with `None`. The document keeps syncing with
    /// every upstream: the route is a shortcut to the home, the hub stays
    /// the fallback. Attached whenever the document has data in memory (now
    /// if loaded, else when loaded or when it gets data); forgotten when the
    /// connection goes away.
    pub fn set_route(&mut self, now: Millis, doc_id: DocumentId, conn: Option<ConnId>) {
        let old = match conn {
            Some(c) => self.routes.insert(doc_id, c),
            None => self.routes.remove(&doc_id),
        };
        if old == conn {
            return;
        }
        if let Some(old) = old {
            let storage = self.conns.get(&old).and_then(|c| c.storage_id().cloned());
            self.drop_peer_from_doc(now, doc_id, old, storage.as_ref());
            if let Some(subs) = self.subscribers.get_mut(&doc_id) {
                subs.remove(&old);
            }
        }
        let Some(conn) = conn else { return };
        if self.docs.get(&doc_id).is_some_and(|d| !d.loading && d.has_data()) {
            self.attach_upstream(now, doc_id, conn);
            self.sync_doc(now, doc_id);
        }
    }

    /// Whether the document's home has confirmed `heads` (advertised heads
    /// covering them, which it does only once they are committed there):
    /// asked of the link to its home edge when it is routed and up, else of
    /// a ready upstream. `None`: no such connection.
    pub fn home_covers(&self, doc: &DocumentId, heads: &[ChangeHash]) -> Option<bool> {
        let ready = |c: &ConnId| self.conns.get(c).is_some_and(|c| c.peer().is_some());
        let conn = self.routes.get(doc).copied().filter(ready).or_else(|| self.upstream_conns().first().copied())?;
        Some(self.peer_covers(doc, conn, heads))
    }

    /// The edge-peer link a document is routed to, if any.
    pub fn route(&self, doc: &DocumentId) -> Option<ConnId> {
        self.routes.get(doc).copied()
    }

    /// Brings the peer on `conn` up to our durable copy of `doc` (the hub
    /// does this before it announces `conn`'s edge as the new home), and
    /// says how far it is: whether the peer's heads cover `target` (heads
    /// of ours; our durable heads now if `None`). A caller that keeps
    /// checking passes the heads it first got from [`Engine::durable_heads`]:
    /// under steady writes elsewhere "everything durable here now" is a
    /// moving target the peer may never confirm at one instant. Never asks
    /// the peer for a document we lack: the hub has no upstream.
    pub fn catch_up(
        &mut self,
        now: Millis,
        doc_id: DocumentId,
        conn: ConnId,
        target: Option<&[ChangeHash]>,
    ) -> CatchUp {
        if self.conns.get(&conn).is_none_or(|c| c.peer().is_none()) {
            return CatchUp::NoPeer;
        }
        let Some(d) = self.docs.get_mut(&doc_id) else {
            self.ensure_doc(now, doc_id);
            return CatchUp::Loading;
        };
        d.last_active = now;
        if d.loading {
            return CatchUp::Loading;
        }
        if !d.has_data() {
            return CatchUp::NoData;
        }
        if !d.peers.contains_key(&conn) {
            self.attach_upstream(now, doc_id, conn);
            self.sync_doc(now, doc_id);
        }
        let target = match target {
            Some(t) => t.to_vec(),
            None => match self.durable_heads(&doc_id) {
                Some(heads) => heads,
                None => return CatchUp::Behind,
            },
        };
        if self.peer_covers(&doc_id, conn, &target) { CatchUp::CaughtUp } else { CatchUp::Behind }
    }

    /// The heads the peer on `conn` last advertised for `doc`.
    pub fn peer_heads(&self, doc: &DocumentId, conn: ConnId) -> Option<Vec<ChangeHash>> {
        self.docs.get(doc)?.peers.get(&conn)?.sync.their_heads.clone()
    }

    /// Whether every change in `heads` is here and committed to our store.
    pub fn holds_durably(&self, doc: &DocumentId, heads: &[ChangeHash]) -> bool {
        self.docs.get(doc).is_some_and(|d| {
            !d.loading && d.writes_in_flight == 0 && heads.iter().all(|h| d.doc.get_change_by_hash(h).is_some())
        })
    }

    /// Whether every change the peer on `conn` has advertised for `doc` is
    /// durable here; `None` if it has not told us its heads (or the
    /// document is not in memory).
    pub fn covers_peer(&self, doc: &DocumentId, conn: ConnId) -> Option<bool> {
        let d = self.docs.get(doc).filter(|d| !d.loading)?;
        let theirs = d.peers.get(&conn)?.sync.their_heads.as_ref()?;
        Some(d.writes_in_flight == 0 && theirs.iter().all(|h| d.doc.get_change_by_hash(h).is_some()))
    }

    /// Counters since start.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Drops our copy of a document, in memory and in the store, once that
    /// loses nothing: a ready upstream (the hub, which advertises only
    /// committed heads) has acknowledged every change we hold, no write or
    /// message is in flight, and no client here uses it (subscribed on a
    /// live connection, or opened by the local application). The document
    /// is loaded to check (with the upstream's persisted sync state); if it
    /// is not safe yet it stays marked and is checked again as messages
    /// arrive, and a client's interest unmarks it. Opening it later fetches
    /// it from upstream or its home edge (a cold open). Edges call this to
    /// keep their store under a disk budget (the cloud copy is the hub's).
    pub fn offload(&mut self, now: Millis, doc_id: DocumentId) {
        if !self.config.expects_upstream || self.opened.contains(&doc_id) {
            return;
        }
        self.offloading.insert(doc_id);
        self.ensure_doc(now, doc_id);
        self.maybe_offload(doc_id);
    }

    /// Whether someone here uses the document: the local application opened
    /// it, or a peer that connected to us (a client, or an edge for which we
    /// are the home) is subscribed on a live connection.
    pub fn in_use(&self, doc_id: &DocumentId) -> bool {
        self.opened.contains(doc_id)
            || self.subscribers.get(doc_id).is_some_and(|subs| {
                // Clients, and edges syncing it with us as its home.
                subs.iter().any(|c| {
                    self.conns.get(c).is_some_and(|c| c.direction == Direction::Incoming && c.peer().is_some())
                })
            })
    }

    /// Carries out a pending [`Engine::offload`] if it is safe now.
    fn maybe_offload(&mut self, doc_id: DocumentId) {
        if !self.offloading.contains(&doc_id) {
            return;
        }
        if self.in_use(&doc_id) {
            self.offloading.remove(&doc_id);
            return;
        }
        let Some(d) = self.docs.get(&doc_id) else {
            self.offloading.remove(&doc_id);
            return;
        };
        if d.busy() || d.writes_in_flight > 0 || !d.pending.is_empty() || d.local_waiting {
            return;
        }
        let heads = d.doc.get_heads();
        if heads.is_empty() {
            // Nothing stored here: nothing to drop.
            self.offloading.remove(&doc_id);
            return;
        }
        let acknowledged = d.peers.iter().any(|(conn, pd)| {
            self.conns.get(conn).is_some_and(Conn::is_upstream_ready)
                && heads.iter().all(|h| pd.sync.shared_heads.contains(h))
        });
        if !acknowledged {
            return;
        }
        self.offloading.remove(&doc_id);
        self.docs.remove(&doc_id);
        self.resync_on_upstream.remove(&doc_id);
        // Sync states go with the chunks: a peer must not be remembered as
        // holding what we no longer hold.
        self.storage(TaskPurpose::Offload(doc_id), StorageTask::DeleteDoc { doc: doc_id });
        self.stats.offloaded += 1;
        self.event(Event::Evicted { doc: doc_id });
    }

    /// Connections a document we lack is asked of: every ready upstream,
    /// and the link to its home edge.
    fn sources(&self, doc_id: &DocumentId) -> Vec<ConnId> {
        let mut sources = self.upstream_conns();
        if let Some(r) = self.routes.get(doc_id).filter(|c| self.conns.get(c).is_some_and(|c| c.peer().is_some())) {
            sources.push(*r);
        }
        sources
    }

    fn is_source(&self, conn: ConnId, doc_id: &DocumentId) -> bool {
        self.conns.get(&conn).is_some_and(Conn::is_upstream_ready)
            || (self.routes.get(doc_id) == Some(&conn) && self.conns.get(&conn).is_some_and(|c| c.peer().is_some()))
    }

    // ----- connections -------------------------------------------------

    /// Registers a new connection. For [`Direction::Outgoing`] a `join` is
    /// queued right away.
    pub fn handle_connect(&mut self, now: Millis, direction: Direction) -> ConnId {
        self.connect(now, direction, false)
    }

    /// Registers a link to another edge. `Outgoing` when we dialed it (we
    /// send `join`). Such a link is never an upstream: documents sync on it
    /// when routed to it ([`Engine::set_route`]) or sent by the other side,
    /// and its writes do not count as demand.
    pub fn handle_connect_edge_peer(&mut self, now: Millis, direction: Direction) -> ConnId {
        self.connect(now, direction, true)
    }

    fn connect(&mut self, _now: Millis, direction: Direction, edge_peer: bool) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let state = match direction {
            Direction::Incoming => ConnState::AwaitingJoin,
            Direction::Outgoing => ConnState::AwaitingPeer,
        };
        self.conns.insert(conn, Conn { direction, state, edge_peer });
        if direction == Direction::Outgoing {
            let join = Message::Join {
                sender_id: self.config.peer_id.clone(),
                peer_metadata: self.our_metadata(),
                supported_protocol_versions: Some(vec![PROTOCOL_V1.to_owned()]),
            };
            self.send(conn, join);
        }
        conn
    }

    /// The connection is gone (closed by either side or failed).
    pub fn handle_disconnect(&mut self, now: Millis, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        let peer = c.peer().cloned();
        if let Some(p) = &peer {
            if self.peers.get(p) == Some(&conn) {
                self.peers.remove(p);
            }
        }
        let storage = c.storage_id().cloned();
        let doc_ids: Vec<DocumentId> = self.docs.keys().copied().collect();
        for doc_id in doc_ids {
            self.drop_peer_from_doc(now, doc_id, conn, storage.as_ref());
        }
        for subs in self.subscribers.values_mut() {
            subs.remove(&conn);
        }
        self.subscribers.retain(|_, s| !s.is_empty());
        self.routes.retain(|_, c| *c != conn);
        self.event(Event::PeerDisconnected { conn, peer });
    }

    fn drop_peer_from_doc(&mut self, now: Millis, doc_id: DocumentId, conn: ConnId, storage: Option<&StorageId>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.pending.retain(|p| p.conn != conn);
        let was_upstream_answer = d.upstream_unavailable.remove(&conn);
        let Some(pd) = d.peers.remove(&conn) else { return };
        d.dirty.remove(&conn);
        let loading_state = d.loading_states.remove(&conn);
        if let (Some(storage), false) = (storage, loading_state) {
            let state = pd.sync.encode();
            self.put_sync_state(doc_id, storage.clone(), state);
        }
        if loading_state {
            self.states_loaded(now, doc_id);
        }
        // An upstream that had not answered yet will never answer: waiting
        // requesters may now be owed a `doc-unavailable`.
        if !was_upstream_answer {
            self.resolve_availability(now, doc_id);
        }
    }

    /// Frames handed in until [`Self::end_batch`] queue their document
    /// messages instead of applying them. A runtime with several frames at
    /// hand (a writer's window of changes) hands them all in as one batch,
    /// and each peer's changes reach automerge as one call (see
    /// `coalesce`), whose cost grows with the document rather than with the
    /// number of changes. Everything else is handled as it comes.
    pub fn begin_batch(&mut self) {
        self.batch.get_or_insert_with(Vec::new);
    }

    /// Applies the document messages queued since [`Self::begin_batch`].
    pub fn end_batch(&mut self, now: Millis) {
        for doc_id in self.batch.take().unwrap_or_default() {
            self.drain_pending(now, doc_id);
        }
    }

    /// A complete binary frame arrived on `conn`. Returns the wire type of
    /// the message if it decoded (for metrics).
    pub fn handle_frame(&mut self, now: Millis, conn: ConnId, bytes: &[u8]) -> Option<&'static str> {
        match self.conns.get(&conn).map(|c| &c.state) {
            None | Some(ConnState::Closed) => return None,
            _ => {}
        }
        match codec::decode(bytes) {
            Ok(Decoded::Message(m)) => {
                let message_type = m.type_name();
                self.handle_message(now, conn, m);
                Some(message_type)
            }
            Ok(Decoded::Unknown { message_type }) => {
                tracing::debug!(%conn, %message_type, "ignoring unknown message type");
                Some("other")
            }
            Err(e) => {
                self.reject(conn, ErrorKind::Decode, e.to_string());
                None
            }
        }
    }

    /// The driver found the connection's input unacceptable before it got
    /// to the codec (a text frame, an oversize frame, a bad token): send an
    /// `error` and close.
    pub fn reject(&mut self, conn: ConnId, kind: ErrorKind, detail: impl Into<String>) {
        let detail = detail.into();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if matches!(c.state, ConnState::Closed) {
            return;
        }
        let target_id = c.peer().cloned();
        c.state = ConnState::Closed;
        tracing::info!(%conn, kind = kind.as_str(), %detail, "closing connection after bad input");
        self.event(Event::ProtocolError { conn, kind, detail: detail.clone() });
        let message =
            Message::Error { sender_id: Some(self.config.peer_id.clone()), message: detail.clone(), target_id };
        self.send(conn, message);
        self.outputs.push_back(Output::Close { conn, reason: detail });
    }

    fn handle_message(&mut self, now: Millis, conn: ConnId, msg: Message) {
        let Some(c) = self.conns.get(&conn) else { return };
        match (&c.state, msg) {
            (ConnState::AwaitingJoin, Message::Join { sender_id, peer_metadata, supported_protocol_versions }) => {
                self.handle_join(now, conn, sender_id, peer_metadata, supported_protocol_versions)
            }
            (ConnState::AwaitingPeer, Message::Peer { sender_id, peer_metadata, .. }) => {
                self.become_ready(now, conn, sender_id, peer_metadata)
            }
            (_, Message::Error { message, .. }) => {
                tracing::warn!(%conn, %message, "peer reported an error");
            }
            (ConnState::Ready { .. }, msg) => self.handle_peer_message(now, conn, msg),
            (ConnState::AwaitingJoin, other) => {
                let detail = format!("expected `join` first, got `{}`", other.type_name());
                self.reject(conn, ErrorKind::NotJoined, detail)
            }
            (ConnState::AwaitingPeer, other) => {
                let detail = format!("expected `peer`, got `{}`", other.type_name());
                self.reject(conn, ErrorKind::NotJoined, detail)
            }
            (ConnState::Closed, _) => {}
        }
    }

    fn handle_join(
        &mut self,
        now: Millis,
        conn: ConnId,
        sender: PeerId,
        metadata: PeerMetadata,
        versions: Option<Vec<String>>,
    ) {
        if let Some(v) = &versions {
            if !v.iter().any(|v| v == PROTOCOL_V1) {
                let detail = format!("unsupported protocol version (supported: [\"{PROTOCOL_V1}\"], offered: {v:?})");
                self.reject(conn, ErrorKind::UnsupportedVersion, detail);
                return;
            }
        }
        // A second join with a peer id that is connected replaces the old
        // connection.
        // (A link we dialed to the same peer is another connection, not a
        // previous one: two edges may each dial the other.)
        if let Some(old) = self.peers.get(&sender).copied() {
            if old != conn && self.conns.get(&old).is_some_and(|c| c.direction == Direction::Incoming) {
                self.outputs.push_back(Output::Close { conn: old, reason: "replaced by a new connection".into() });
                self.handle_disconnect(now, old);
            }
        }
        let reply = Message::Peer {
            sender_id: self.config.peer_id.clone(),
            peer_metadata: self.our_metadata(),
            selected_protocol_version: PROTOCOL_V1.to_owned(),
            target_id: sender.clone(),
        };
        self.send(conn, reply);
        self.become_ready(now, conn, sender, metadata);
    }

    fn become_ready(&mut self, now: Millis, conn: ConnId, peer: PeerId, metadata: PeerMetadata) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.state = ConnState::Ready { peer: peer.clone(), metadata: metadata.clone() };
        let upstream = c.direction == Direction::Outgoing && !c.edge_peer;
        self.peers.insert(peer.clone(), conn);
        self.event(Event::PeerConnected { conn, peer, metadata });
        if upstream {
            // A new upstream gets every document we hold in memory, and is
            // asked for the ones somebody is waiting for.
            let doc_ids: Vec<DocumentId> = self.docs.keys().copied().collect();
            for doc_id in doc_ids {
                self.attach_upstream(now, doc_id, conn);
                self.sync_doc(now, doc_id);
            }
            // Evicted documents it must hear of are loaded and attached
            // (even without data: then it is asked for them again).
            for doc_id in std::mem::take(&mut self.resync_on_upstream) {
                self.ensure_doc(now, doc_id);
                self.attach_upstream(now, doc_id, conn);
            }
        }
    }

    fn our_metadata(&self) -> PeerMetadata {
        PeerMetadata { storage_id: self.config.storage_id.clone(), is_ephemeral: self.config.storage_id.is_none() }
    }

    // ----- document messages --------------------------------------------

    fn handle_peer_message(&mut self, now: Millis, conn: ConnId, msg: Message) {
        match msg {
            Message::Sync { document_id, data, .. } => self.handle_doc_data(now, conn, document_id, data, false),
            Message::Request { document_id, data, .. } => self.handle_doc_data(now, conn, document_id, data, true),
            Message::DocUnavailable { document_id, .. } => self.handle_unavailable(now, conn, document_id),
            Message::Ephemeral { sender_id, document_id, session_id, count, data, .. } => {
                self.handle_ephemeral(now, conn, sender_id, document_id, session_id, count, data)
            }
            // Remote-heads gossip is optional in the protocol; we accept and
            // ignore it, as the JS sync server does by default.
            Message::RemoteSubscriptionChange { .. } | Message::RemoteHeadsChanged { .. } => {}
            Message::Join { .. } | Message::Peer { .. } => {
                tracing::debug!(%conn, "ignoring repeated handshake message");
            }
            Message::Error { .. } => {}
        }
    }

    fn handle_doc_data(&mut self, now: Millis, conn: ConnId, doc_id: DocumentId, data: Vec<u8>, requesting: bool) {
        // Validate before anything is loaded or stored on its behalf.
        let message = match sync::Message::decode(&data) {
            Ok(m) => m,
            Err(e) => {
                let detail = format!("invalid automerge sync message for {doc_id}: {e}");
                self.reject(conn, ErrorKind::InvalidSyncMessage, detail);
                return;
            }
        };
        self.subscribe(conn, doc_id);
        self.ensure_doc(now, doc_id);
        self.ensure_peer_doc(doc_id, conn);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.last_active = now;
        d.pending.push_back(Pending { conn, requesting, any_sync: !requesting, merged: 1, message });
        match &mut self.batch {
            Some(docs) => {
                if !docs.contains(&doc_id) {
                    docs.push(doc_id);
                }
            }
            None => self.drain_pending(now, doc_id),
        }
    }

    fn subscribe(&mut self, conn: ConnId, doc_id: DocumentId) {
        self.subscribers.entry(doc_id).or_default().insert(conn);
    }

    /// Makes sure the document is in memory or being loaded.
    fn ensure_doc(&mut self, now: Millis, doc_id: DocumentId) {
        if self.docs.contains_key(&doc_id) {
            return;
        }
        // In memory again, it is attached to upstreams as usual.
        self.resync_on_upstream.remove(&doc_id);
        let actor = self.random_actor();
        self.docs.insert(doc_id, DocState::new(actor, now, true));
        self.storage(TaskPurpose::LoadDoc(doc_id), StorageTask::LoadDoc { doc: doc_id });
    }

    /// Makes sure we have a sync state for this peer on this document,
    /// loading the persisted one for peers with a storage id.
    fn ensure_peer_doc(&mut self, doc_id: DocumentId, conn: ConnId) {
        let storage = self.conns.get(&conn).and_then(|c| c.storage_id().cloned());
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if d.peers.contains_key(&conn) {
            return;
        }
        d.peers.insert(conn, PeerDoc::new());
        d.dirty.insert(conn);
        if let Some(peer) = storage {
            d.loading_states.insert(conn);
            self.storage(TaskPurpose::LoadSyncState(doc_id, conn), StorageTask::LoadSyncState { doc: doc_id, peer });
        }
    }

    fn attach_upstream(&mut self, now: Millis, doc_id: DocumentId, conn: ConnId) {
        self.subscribe(conn, doc_id);
        self.ensure_peer_doc(doc_id, conn);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.last_active = now;
        }
    }

    /// Applies queued document messages once nothing is loading and the
    /// writes of the messages applied last time completed.
    ///
    /// Messages wait for those writes so that their completion can be
    /// acknowledged: peers are answered only when no write is in flight
    /// (durable before advertised), and applying each message as it came
    /// would issue a new write before the last one finished, so a document
    /// written by peers faster than one commit at a time would never be
    /// answered. Waiting, the messages that came in during one commit are
    /// applied together and go to the store as the next one. Only writes
    /// issued here hold messages back: local changes (a client typing
    /// through every IndexedDB commit) never keep peers' edits out. And
    /// only messages carrying changes wait: acknowledgements (a thousand
    /// watchers confirming the last change) are applied as they come, unless
    /// a message of theirs is already waiting (a connection's messages are
    /// applied in order), so the next message each watcher gets starts from
    /// what it confirmed.
    fn drain_pending(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if d.busy() || d.pending.is_empty() {
            return;
        }
        let pending: Vec<Pending> = if d.writes_done >= d.hold_until {
            d.pending.drain(..).collect()
        } else {
            let mut waiting = BTreeSet::new();
            let (mut now_applied, mut kept) = (Vec::new(), VecDeque::new());
            for p in d.pending.drain(..) {
                if p.changes() || waiting.contains(&p.conn) {
                    waiting.insert(p.conn);
                    kept.push_back(p);
                } else {
                    now_applied.push(p);
                }
            }
            d.pending = kept;
            now_applied
        };
        if pending.is_empty() {
            return;
        }
        let pending = if self.config.coalesce_messages { coalesce(pending) } else { pending };
        let before = d.doc.get_heads();
        let issued = d.writes_issued;
        for p in pending {
            self.apply_sync(doc_id, p);
        }
        self.after_doc_update(now, doc_id, before);
        if let Some(d) = self.docs.get_mut(&doc_id)
            && d.writes_issued > issued
        {
            d.hold_until = d.writes_issued;
        }
        self.maybe_offload(doc_id);
    }

    fn apply_sync(&mut self, doc_id: DocumentId, p: Pending) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let Some(pd) = d.peers.get_mut(&p.conn) else { return };
        let message = p.message;
        pd.requesting = p.requesting;
        d.dirty.insert(p.conn);
        if p.any_sync {
            pd.told_unavailable = false;
        }
        if p.merged > 1 {
            self.stats.sync_merged += p.merged - 1;
        }
        // An empty message whose heads equal ours makes automerge record
        // those heads as sent (`last_sent_heads`), so it generates nothing
        // more. But heads whose write is in flight (or not yet issued) were
        // never sent, and advertising them is how the peer learns its
        // changes are stored: keep the heads we really sent.
        let echoes_ours = message.changes.is_empty() && !message.heads.is_empty() && message.heads == d.doc.get_heads();
        let last_sent = pd.sync.last_sent_heads.clone();
        let count_write = self.config.track_demand
            && !message.changes.is_empty()
            && self.conns.get(&p.conn).is_some_and(Conn::is_downstream);
        let before = if count_write { d.doc.get_heads() } else { Vec::new() };
        // Its request, answered from the snapshot before the load: that
        // answer stands if the document holds what the snapshot held (it may
        // hold more: a writer's changes applied before this request are
        // then sent as what lies beyond the snapshot's heads).
        let answered = pd.answered_at.take().filter(|h| {
            h.iter().all(|c| d.doc.get_change_by_hash(c).is_some())
                && message.heads.is_empty()
                && message.changes.is_empty()
        });
        let result = d.doc.receive_sync_message(&mut pd.sync, message);
        if let (Ok(()), Some(heads)) = (&result, answered) {
            pd.answered_from_snapshot(heads);
            return;
        }
        match result {
            Ok(()) if echoes_ours => pd.sync.last_sent_heads = last_sent,
            Ok(()) if count_write && d.doc.get_heads() != before => *self.writes.entry(doc_id).or_default() += p.merged,
            Ok(()) => {}
            Err(e) => {
                let detail = format!("could not apply sync message for {doc_id}: {e}");
                self.reject(p.conn, ErrorKind::InvalidSyncMessage, detail);
            }
        }
    }

    /// After the document may have changed: persist new changes, then (once
    /// durable) answer every peer.
    fn after_doc_update(&mut self, now: Millis, doc_id: DocumentId, before: Vec<ChangeHash>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let heads = d.doc.get_heads();
        if heads != before {
            self.event(Event::DocUpdated { doc: doc_id });
        }
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if heads != before && heads != d.saved_heads {
            d.upstream_unavailable.clear();
            if d.saved_heads.is_empty() && d.store_empty {
                // Nothing stored yet: the first write is a snapshot. A chunk
                // of everything would be as large as one, and a large
                // document (an upload) would then be compacted right away:
                // two full saves on this thread instead of one.
                d.saved_heads = heads;
                self.compact(doc_id);
            } else {
                let chunk = d.doc.save_after(&d.saved_heads);
                d.saved_heads = heads;
                d.writes_in_flight += 1;
                d.writes_issued += 1;
                d.chunk_bytes += chunk.len();
                let compact = d.chunk_bytes >= self.config.min_compact_bytes && d.chunk_bytes >= d.snapshot_bytes;
                self.storage(TaskPurpose::Write(doc_id), StorageTask::AppendChunk { doc: doc_id, data: chunk });
                if compact {
                    self.compact(doc_id);
                }
            }
            // New data goes upstream too, and to the document's home edge.
            let upstreams = self.upstream_conns();
            for up in upstreams.into_iter().chain(self.routes.get(&doc_id).copied()) {
                self.attach_upstream(now, doc_id, up);
            }
        }
        self.sync_doc(now, doc_id);
    }

    fn compact(&mut self, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        // Only applied changes, as appends store: changes waiting for a
        // dependency (automerge's queue, which `save` keeps by default) are
        // not ours to store yet; they are not in our heads, so their
        // sender still counts them unacknowledged and sends them again.
        let snapshot = d.doc.save_with_options(automerge::SaveOptions { deflate: true, retain_orphans: false });
        d.snapshot_bytes = snapshot.len();
        d.chunk_bytes = 0;
        d.writes_in_flight += 1;
        d.writes_issued += 1;
        self.storage(TaskPurpose::Write(doc_id), StorageTask::Compact { doc: doc_id, snapshot });
    }

    /// Sends whatever sync messages are due for a document, unless a write
    /// is in flight (then [`Self::handle_storage_result`] calls us again).
    fn sync_doc(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if d.loading || d.writes_in_flight > 0 {
            return;
        }
        let heads = d.doc.get_heads();
        let has_data = !heads.is_empty();
        if heads != d.synced_heads {
            d.dirty.extend(d.peers.keys().copied());
        }
        d.generated.revalidate(&d.doc, &heads, self.config.share_generated, d.peers.len());
        d.synced_heads = heads;
        let mut out = Vec::new();
        for conn in std::mem::take(&mut d.dirty) {
            let Some(pd) = d.peers.get_mut(&conn) else { continue };
            // A peer that has nothing gets nothing from us while we have
            // nothing either; availability is answered separately.
            if d.loading_states.contains(&conn) || (pd.requesting && !has_data) {
                d.dirty.insert(conn);
                continue;
            }
            if let Some(data) = d.generated.generate(&d.doc, &mut pd.sync, &mut self.stats) {
                out.push((conn, data));
            }
        }
        for (conn, data) in out {
            self.send_doc_message(conn, doc_id, data, has_data);
        }
        self.resolve_availability(now, doc_id);
    }

    /// For a document we do not have: ask upstreams that have not answered,
    /// and tell requesters `doc-unavailable` once nobody is left to ask.
    fn resolve_availability(&mut self, _now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get(&doc_id) else { return };
        if d.loading || d.has_data() || d.writes_in_flight > 0 {
            return;
        }
        let someone_waiting = d.local_waiting || d.peers.values().any(|p| p.requesting && !p.told_unavailable);
        if !someone_waiting {
            return;
        }
        let upstreams = self.sources(&doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let mut asking = Vec::new();
        for up in upstreams {
            let requester = d.peers.get(&up).is_some_and(|p| p.requesting);
            if !d.upstream_unavailable.contains(&up) && !requester {
                asking.push(up);
            }
        }
        if !asking.is_empty() {
            if !std::mem::replace(&mut d.cold_open, true) {
                self.stats.cold_opens += 1;
            }
            let ask: Vec<ConnId> = asking.into_iter().filter(|up| !d.peers.contains_key(up)).collect();
            for up in ask {
                self.ensure_peer_doc(doc_id, up);
                self.subscribe(up, doc_id);
            }
            self.generate_requests(doc_id);
            return;
        }
        self.announce_unavailable(doc_id);
    }

    /// Sends `request` messages to upstreams attached to a document we
    /// have no data for.
    fn generate_requests(&mut self, doc_id: DocumentId) {
        let sources = self.sources(&doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let mut out = Vec::new();
        for (conn, pd) in d.peers.iter_mut() {
            if d.loading_states.contains(conn) || pd.requesting {
                continue;
            }
            if !sources.contains(conn) {
                continue;
            }
            if let Some(m) = d.doc.generate_sync_message(&mut pd.sync) {
                out.push((*conn, m.encode()));
            }
        }
        for (conn, data) in out {
            self.send_doc_message(conn, doc_id, data, false);
        }
    }

    fn announce_unavailable(&mut self, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let mut targets = Vec::new();
        for (conn, pd) in d.peers.iter_mut() {
            if pd.requesting && !pd.told_unavailable {
                pd.told_unavailable = true;
                targets.push(*conn);
            }
        }
        let local = std::mem::take(&mut d.local_waiting);
        for conn in targets {
            let Some(target_id) = self.conns.get(&conn).and_then(|c| c.peer().cloned()) else { continue };
            let sender_id = self.config.peer_id.clone();
            self.send(conn, Message::DocUnavailable { sender_id, target_id, document_id: doc_id });
        }
        if local {
            self.event(Event::DocUnavailable { doc: doc_id });
        }
    }

    fn handle_unavailable(&mut self, now: Millis, conn: ConnId, doc_id: DocumentId) {
        let is_upstream = self.is_source(conn, &doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if is_upstream {
            d.upstream_unavailable.insert(conn);
        }
        if let Some(pd) = d.peers.get_mut(&conn) {
            // Whatever we sent was in vain; start over if it reappears.
            pd.sync = sync::State::new();
            d.dirty.insert(conn);
        }
        // Answers the reset peer if we have data (and, as sync_doc ends,
        // requesters if we do not).
        self.sync_doc(now, doc_id);
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_ephemeral(
        &mut self,
        now: Millis,
        conn: ConnId,
        sender: PeerId,
        doc_id: DocumentId,
        session: String,
        count: u64,
        data: Vec<u8>,
    ) {
        let key = (sender.clone(), session.clone());
        if let Some((seen, _)) = self.ephemeral_seen.get(&key) {
            if count <= *seen {
                return;
            }
        }
        self.ephemeral_seen.insert(key, (count, now));
        self.subscribe(conn, doc_id);
        let targets: Vec<ConnId> = self
            .subscribers
            .get(&doc_id)
            .map(|s| s.iter().copied().filter(|c| *c != conn).collect())
            .unwrap_or_default();
        for target in targets {
            let Some(target_id) = self.conns.get(&target).and_then(|c| c.peer().cloned()) else { continue };
            if target_id == sender {
                continue;
            }
            let message = Message::Ephemeral {
                sender_id: sender.clone(),
                target_id,
                document_id: doc_id,
                session_id: session.clone(),
                count,
                data: data.clone(),
            };
            self.send(target, message);
        }
        self.event(Event::Ephemeral { doc: doc_id, sender, data });
    }

    // ----- storage ------------------------------------------------------

    /// A storage task finished.
    pub fn handle_storage_result(&mut self, now: Millis, id: StorageTaskId, result: StorageResult) {
        let Some(purpose) = self.tasks.remove(&id) else { return };
        match (purpose, result) {
            (TaskPurpose::LoadDoc(doc_id), StorageResult::Loaded(bytes)) => self.doc_loaded(now, doc_id, bytes),
            (TaskPurpose::LoadSyncState(doc_id, conn), StorageResult::Loaded(bytes)) => {
                self.sync_state_loaded(now, doc_id, conn, bytes)
            }
            (TaskPurpose::Write(doc_id), StorageResult::Done) => self.write_done(now, doc_id),
            (TaskPurpose::PutSyncState, StorageResult::Done) => {}
            (TaskPurpose::Offload(doc), StorageResult::Done) => tracing::debug!(%doc, "local copy dropped"),
            (purpose, StorageResult::Failed(detail)) => self.storage_failed(now, purpose, detail),
            // A store answering the wrong kind of result is broken: treated
            // as a failure, so nothing waits for it forever.
            (purpose, result) => {
                let kind = if matches!(result, StorageResult::Done) { "done" } else { "loaded" };
                let detail = format!("storage result `{kind}` does not match its task {purpose:?}");
                self.storage_failed(now, purpose, detail);
            }
        }
    }

    fn doc_loaded(&mut self, now: Millis, doc_id: DocumentId, bytes: Option<Vec<u8>>) {
        if let Some(b) = &bytes
            && self.config.answer_from_snapshot
            && let Some(d) = self.docs.get_mut(&doc_id)
            && !d.answered_from_snapshot
            && !d.pending.is_empty()
            && let Some(heads) = crate::snapshot::document_heads(b).filter(|h| !h.is_empty())
        {
            // Whether waiting peers have nothing shows once their persisted
            // sync states are in ([`Self::states_loaded`]).
            if !d.loading_states.is_empty() {
                d.stored = bytes;
                return;
            }
            if self.answer_from_snapshot(doc_id, b, heads) {
                return;
            }
        }
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.loading = false;
        d.store_empty = bytes.is_none();
        let mut load_error = None;
        if let Some(bytes) = bytes {
            if let Err(e) = d.doc.load_incremental(&bytes) {
                load_error = Some(format!("stored document {doc_id} does not load: {e}"));
            }
            d.snapshot_bytes = bytes.len();
        }
        d.saved_heads = d.doc.get_heads();
        let has_data = d.has_data();
        let local = has_data && std::mem::take(&mut d.local_waiting);
        // Everyone subscribed before an eviction is attached again.
        let subs: Vec<ConnId> = self.subscribers.get(&doc_id).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for conn in subs {
            if self.conns.get(&conn).is_some_and(|c| c.peer().is_some()) {
                self.ensure_peer_doc(doc_id, conn);
            }
        }
        if has_data {
            for up in self.upstream_conns() {
                self.attach_upstream(now, doc_id, up);
            }
            if let Some(route) = self.routes.get(&doc_id).copied() {
                self.attach_upstream(now, doc_id, route);
            }
        }
        if let Some(detail) = load_error {
            self.event(Event::StorageFailed { doc: Some(doc_id), detail });
        }
        if local {
            self.event(Event::DocReady { doc: doc_id });
        }
        self.drain_pending(now, doc_id);
        self.sync_doc(now, doc_id);
        self.maybe_offload(doc_id);
    }

    /// A fresh peer gets the stored snapshot first: when the stored
    /// document is one whole-document chunk (as compaction leaves it) and
    /// peers that have nothing of it are waiting with a `request`, they get
    /// those bytes as automerge's whole-document sync message right away,
    /// and the document is loaded on a second read of the store. Loading a
    /// large document costs automerge far more than reading it (0.5 s
    /// against milliseconds for 800 KiB), and the peer needs the same time
    /// to load what it receives: this way the two loads overlap instead of
    /// following each other. The snapshot is durable, so advertising its
    /// heads keeps "durable before advertised". Returns whether it answered
    /// (and the document is being read again). `bytes` are one document
    /// chunk with these (non-empty) `heads`; it answers once per load.
    fn answer_from_snapshot(&mut self, doc_id: DocumentId, bytes: &[u8], heads: Vec<ChangeHash>) -> bool {
        let Some(d) = self.docs.get_mut(&doc_id) else { return false };
        // Each peer's first waiting message must be a request from a peer
        // with nothing and no sync history with us, able to take a whole
        // document (automerge's v2 messages, which come with flags).
        let mut seen = BTreeSet::new();
        let mut fresh = Vec::new();
        for p in &d.pending {
            if !seen.insert(p.conn) {
                continue;
            }
            let m = &p.message;
            let has_nothing = m.heads.is_empty() && m.need.is_empty() && m.changes.is_empty();
            let no_history = d.peers.get(&p.conn).is_some_and(|pd| pd.sync.their_heads.is_none());
            if p.requesting
                && has_nothing
                && m.flags.is_some()
                && m.have.iter().all(|h| h.last_sync.is_empty())
                && no_history
                && !d.loading_states.contains(&p.conn)
            {
                fresh.push(p.conn);
            }
        }
        if fresh.is_empty() {
            return false;
        }
        let mut flags = sync::MessageFlags::new();
        flags.set(sync::MessageFlags::SUPPORTS_SYNC_RESET);
        // No `have`: we claim nothing about the peer's changes, so it sends
        // none until our heads show it what we lack (then we `need` them).
        let data = sync::Message {
            heads: heads.clone(),
            need: Vec::new(),
            have: Vec::new(),
            changes: vec![bytes.to_vec()].into(),
            flags: Some(flags),
            version: sync::MessageVersion::V2,
        }
        .encode();
        d.answered_from_snapshot = true;
        for conn in &fresh {
            if let Some(pd) = d.peers.get_mut(conn) {
                pd.answered_at = Some(heads.clone());
            }
        }
        self.stats.snapshot_answers += fresh.len() as u64;
        for conn in fresh {
            self.send_doc_message(conn, doc_id, data.clone(), true);
        }
        self.storage(TaskPurpose::LoadDoc(doc_id), StorageTask::LoadDoc { doc: doc_id });
        true
    }

    fn sync_state_loaded(&mut self, now: Millis, doc_id: DocumentId, conn: ConnId, bytes: Option<Vec<u8>>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let Some(pd) = d.peers.get_mut(&conn) else { return };
        d.loading_states.remove(&conn);
        d.dirty.insert(conn);
        if let Some(state) = bytes.and_then(|b| sync::State::decode(&b).ok()) {
            pd.sync = state;
        }
        self.states_loaded(now, doc_id);
    }

    /// A peer's sync state is in, or the peer left while it loaded: the
    /// document's waiting messages may go ahead (once every state is in),
    /// or the stored document kept for them is loaded now.
    fn states_loaded(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if d.loading_states.is_empty()
            && let Some(bytes) = d.stored.take()
        {
            return self.doc_loaded(now, doc_id, Some(bytes));
        }
        self.drain_pending(now, doc_id);
        self.sync_doc(now, doc_id);
        self.maybe_offload(doc_id);
    }

    fn write_done(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.writes_in_flight = d.writes_in_flight.saturating_sub(1);
        d.writes_done += 1;
        if d.writes_in_flight == 0 {
            let heads = d.doc.get_heads();
            let local = std::mem::take(&mut d.local_waiting);
            self.event(Event::DocChanged { doc: doc_id, heads });
            if local {
                self.event(Event::DocReady { doc: doc_id });
            }
            self.sync_doc(now, doc_id);
        }
        self.drain_pending(now, doc_id);
    }

    fn storage_failed(&mut self, now: Millis, purpose: TaskPurpose, detail: String) {
        let doc = match purpose {
            TaskPurpose::LoadDoc(d) | TaskPurpose::Write(d) | TaskPurpose::LoadSyncState(d, _) => Some(d),
            // A failed delete leaves the copy stored: nothing is lost.
            TaskPurpose::PutSyncState | TaskPurpose::Offload(_) => None,
        };
        tracing::error!(?doc, %detail, "storage task failed");
        self.event(Event::StorageFailed { doc, detail });
        // What is in memory may now be ahead of the store: forget it rather
        // than ever advertise it. The peers that synced it believe they
        // delivered their changes (automerge remembers what it sent on a
        // connection), so their connections are closed too: on reconnect
        // both sides start from what is really stored and the changes are
        // sent again.
        if let Some(doc_id) = doc {
            let Some(d) = self.docs.remove(&doc_id) else { return };
            if self.config.expects_upstream {
                // Reloaded from the store and synced when an upstream is
                // ready again.
                self.resync_on_upstream.insert(doc_id);
            }
            self.tasks.retain(|_, p| !matches!(p, TaskPurpose::LoadDoc(d) | TaskPurpose::Write(d) | TaskPurpose::LoadSyncState(d, _) if *d == doc_id));
            for conn in d.peers.keys() {
                self.close_for_storage_failure(*conn);
            }
            let _ = now;
        }
    }

    fn close_for_storage_failure(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if matches!(c.state, ConnState::Closed) {
            return;
        }
        c.state = ConnState::Closed;
        self.outputs.push_back(Output::Close { conn, reason: "storage failure; reconnect to resync".into() });
    }

    fn put_sync_state(&mut self, doc: DocumentId, peer: StorageId, state: Vec<u8>) {
        self.storage(TaskPurpose::PutSyncState, StorageTask::PutSyncState { doc, peer, state });
    }

    fn storage(&mut self, purpose: TaskPurpose, task: StorageTask) {
        let id = StorageTaskId(self.next_task);
        self.next_task += 1;
        self.tasks.insert(id, purpose);
        self.outputs.push_back(Output::Storage { id, task });
    }

    // ----- local documents ----------------------------------------------

    /// Creates a new document with one change made by `init` (an empty
    /// change if `init` does nothing: a document must never have empty
    /// heads, or peers could not tell it from "not found").
    pub fn create<F>(&mut self, now: Millis, init: F) -> Result<DocumentId, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), automerge::AutomergeError>,
    {
        self.create_with(now, CommitOptions::default(), init)
    }

    /// [`Engine::create`] with a commit message and time for the first
    /// change (see [`Engine::change_with`]).
    pub fn create_with<F>(&mut self, now: Millis, options: CommitOptions, init: F) -> Result<DocumentId, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), automerge::AutomergeError>,
    {
        let doc_id = DocumentId::random(&mut self.rng);
        let actor = self.random_actor();
        let mut state = DocState::new(actor, now, false);
        state.store_empty = true;
        let mut tx = state.doc.transaction();
        init(&mut tx)?;
        if tx.pending_ops() == 0 {
            tx.rollback();
            state.doc.empty_commit(options);
        } else {
            tx.commit_with(options);
        }
        self.docs.insert(doc_id, state);
        self.opened.insert(doc_id);
        self.after_doc_update(now, doc_id, Vec::new());
        Ok(doc_id)
    }

    /// Applies a local change to a loaded document.
    pub fn change<F, O>(&mut self, now: Millis, doc_id: DocumentId, f: F) -> Result<O, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<O, automerge::AutomergeError>,
    {
        self.change_with(now, doc_id, CommitOptions::default(), f)
    }

    /// [`Engine::change`] with a commit message and time (the engine reads
    /// no clock: a client that wants wall-clock times in the history passes
    /// them, in seconds as `@automerge/automerge` does).
    pub fn change_with<F, O>(
        &mut self,
        now: Millis,
        doc_id: DocumentId,
        options: CommitOptions,
        f: F,
    ) -> Result<O, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<O, automerge::AutomergeError>,
    {
        let d = self.docs.get_mut(&doc_id).filter(|d| !d.loading).ok_or(DocError::NotLoaded(doc_id))?;
        d.last_active = now;
        self.opened.insert(doc_id);
        let before = d.doc.get_heads();
        let mut tx = d.doc.transaction();
        let out = match f(&mut tx) {
            Ok(o) => o,
            Err(e) => {
                tx.rollback();
                return Err(e.into());
            }
        };
        tx.commit_with(options);
        self.after_doc_update(now, doc_id, before);
        Ok(out)
    }

    /// Imports raw automerge bytes (a saved document or changes) into a
    /// document, creating it if needed.
    pub fn import(&mut self, now: Millis, doc_id: DocumentId, bytes: &[u8]) -> Result<(), DocError> {
        if !self.docs.contains_key(&doc_id) {
            let actor = self.random_actor();
            self.docs.insert(doc_id, DocState::new(actor, now, false));
        }
        let d = self.docs.get_mut(&doc_id).filter(|d| !d.loading).ok_or(DocError::NotLoaded(doc_id))?;
        let before = d.doc.get_heads();
        d.doc.load_incremental(bytes)?;
        self.after_doc_update(now, doc_id, before);
        Ok(())
    }

    /// Asks for a document: loads it from storage, and if it is not there,
    /// from upstream. Answered by [`Event::DocReady`] or
    /// [`Event::DocUnavailable`].
    pub fn find(&mut self, now: Millis, doc_id: DocumentId) {
        self.opened.insert(doc_id);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.last_active = now;
            if !d.loading && d.has_data() && d.writes_in_flight == 0 {
                self.event(Event::DocReady { doc: doc_id });
                return;
            }
            d.local_waiting = true;
            self.resolve_availability(now, doc_id);
            return;
        }
        self.ensure_doc(now, doc_id);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.local_waiting = true;
        }
    }

    /// Sends an ephemeral message about a document to every peer
    /// subscribed to it.
    pub fn broadcast_ephemeral(&mut self, doc_id: DocumentId, session_id: &str, count: u64, data: Vec<u8>) {
        let targets: Vec<ConnId> =
            self.subscribers.get(&doc_id).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for conn in targets {
            let Some(target_id) = self.conns.get(&conn).and_then(|c| c.peer().cloned()) else { continue };
            let message = Message::Ephemeral {
                sender_id: self.config.peer_id.clone(),
                target_id,
                document_id: doc_id,
                session_id: session_id.to_owned(),
                count,
                data: data.clone(),
            };
            self.send(conn, message);
        }
    }

    // ----- time ---------------------------------------------------------

    /// Periodic housekeeping: evicts idle documents and forgets old
    /// ephemeral sessions. Call it every second or so.
    pub fn handle_tick(&mut self, now: Millis) {
        let idle = self.config.idle_evict_after_ms;
        let evict: Vec<DocumentId> = self
            .docs
            .iter()
            .filter(|(_, d)| {
                !d.busy()
                    && d.writes_in_flight == 0
                    && d.pending.is_empty()
                    && !d.local_waiting
                    && now.saturating_sub(d.last_active) >= idle
            })
            .map(|(id, _)| *id)
            .collect();
        for doc_id in evict {
            self.evict(doc_id);
        }
        self.enforce_memory_budget();
        self.ephemeral_seen.retain(|_, (_, at)| now.saturating_sub(*at) < EPHEMERAL_SESSION_TTL_MS);
    }

    /// Evicts the least recently active documents that can leave while
    /// more than [`EngineConfig::max_loaded_docs`] are in memory.
    fn enforce_memory_budget(&mut self) {
        let max = self.config.max_loaded_docs;
        if max == 0 || self.docs.len() <= max {
            return;
        }
        let mut candidates: Vec<(Millis, DocumentId)> = self
            .docs
            .iter()
            .filter(|(_, d)| !d.busy() && d.writes_in_flight == 0 && d.pending.is_empty() && !d.local_waiting)
            .map(|(id, d)| (d.last_active, *id))
            .collect();
        candidates.sort();
        let excess = self.docs.len() - max;
        for (_, doc_id) in candidates.into_iter().take(excess) {
            self.evict(doc_id);
        }
    }

    fn evict(&mut self, doc_id: DocumentId) {
        let Some(d) = self.docs.remove(&doc_id) else { return };
        if self.needs_resync(doc_id, &d) {
            self.resync_on_upstream.insert(doc_id);
        }
        for (conn, pd) in d.peers {
            let storage = self.conns.get(&conn).and_then(|c| c.storage_id().cloned());
            if let Some(storage) = storage {
                self.put_sync_state(doc_id, storage, pd.sync.encode());
            }
        }
        self.event(Event::Evicted { doc: doc_id });
    }

    /// Whether an upstream that connects later must hear of an evicted
    /// document: someone here wants its changes (the local application
    /// opened it, or a downstream peer is subscribed), or it may lack ours
    /// (no ready upstream acknowledged our heads).
    fn needs_resync(&self, doc_id: DocumentId, d: &DocState) -> bool {
        // Without an upstream (a hub) the set would only grow.
        if !self.config.expects_upstream {
            return false;
        }
        if self.opened.contains(&doc_id) {
            return true;
        }
        let heads = d.doc.get_heads();
        let acknowledged = d.peers.iter().any(|(conn, pd)| {
            self.conns.get(conn).is_some_and(Conn::is_upstream_ready)
                && heads.iter().all(|h| pd.sync.shared_heads.contains(h))
        });
        let downstream = self.subscribers.get(&doc_id).is_some_and(|subs| {
            subs.iter().any(|c| self.conns.get(c).is_some_and(|c| c.direction == Direction::Incoming))
        });
        !acknowledged || downstream
    }

    /// Loads a document (if stored) so that it syncs with every upstream,
    /// without the application waiting for it. Used to push stored
    /// documents to a hub that has just connected.
    pub fn open(&mut self, now: Millis, doc_id: DocumentId) {
        self.ensure_doc(now, doc_id);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.last_active = now;
        }
    }

    /// Loaded documents with data, split into (acknowledged by a ready
    /// upstream, not yet acknowledged).
    /// A node without upstreams by design (the hub) has nothing to report.
    pub fn upstream_sync_status(&self) -> (usize, usize) {
        if !self.config.expects_upstream {
            return (0, 0);
        }
        let upstreams = self.upstream_conns();
        let (mut synced, mut pending) = (0, 0);
        for d in self.docs.values().filter(|d| d.has_data()) {
            let heads = d.doc.get_heads();
            let acked = upstreams
                .iter()
                .any(|up| d.peers.get(up).is_some_and(|pd| heads.iter().all(|h| pd.sync.shared_heads.contains(h))));
            if acked { synced += 1 } else { pending += 1 }
        }
        (synced, pending)
    }

    // ----- helpers ------------------------------------------------------

    fn upstream_conns(&self) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, c)| c.is_upstream_ready()).map(|(id, _)| *id).collect()
    }

    fn random_actor(&mut self) -> ActorId {
        let bytes: [u8; 16] = self.rng.random();
        ActorId::from(bytes.as_slice())
    }

    /// A fresh random value from the engine's RNG (for session ids).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.random()
    }

    /// Sends an encoded automerge sync message for `doc_id` to the peer on
    /// `conn`: as `sync` when we have data for the document, as `request`
    /// when we have none.
    fn send_doc_message(&mut self, conn: ConnId, doc_id: DocumentId, data: Vec<u8>, has_data: bool) {
        let Some(target_id) = self.conns.get(&conn).and_then(|c| c.peer().cloned()) else { return };
        let sender_id = self.config.peer_id.clone();
        let message = if has_data {
            Message::Sync { sender_id, target_id, document_id: doc_id, data }
        } else {
            Message::Request { sender_id, target_id, document_id: doc_id, data }
        };
        self.send(conn, message);
    }

    fn send(&mut self, conn: ConnId, message: Message) {
        self.outputs.push_back(Output::Send { conn, message });
    }

    fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }
}
