//! The sans-IO sync engine.
//!
//! One [`Engine`] holds the documents and connections of one node (a
//! browser tab, a device, an edge, the hub). It never does IO and never
//! reads a clock: the driver feeds it inputs through the `handle_*` methods,
//! each carrying `now`, hands what it wants done to a
//! [`crate::drive::Driver`] ([`Engine::drive`], built on
//! [`Engine::poll_output`]), and sleeps until [`Engine::poll_timeout`]:
//!
//! - [`Output::Send`]: encode the message and send it on the connection;
//! - [`Output::Close`]: close the connection (after sending what precedes it);
//! - [`Output::Storage`]: run the task in order and answer with
//!   [`Engine::handle_storage_result`];
//! - [`Output::Apply`]: apply a large document's messages on any thread
//!   and answer with [`Engine::handle_applied`] (`off_loop`);
//! - [`Output::Event`]: something the application or the metrics care about.
//!
//! Two rules shape it:
//!
//! - **Durable before advertised** (`persistence`, `fanout`): while a write
//!   of a document is in flight, no sync message for that document leaves
//!   the engine: every sync message carries our heads, and heads must only
//!   cover committed changes. Messages are generated again when the last
//!   write completes.
//! - **Memory follows the working set** (`timers`, `budget`): a document
//!   untouched for [`EngineConfig::idle_evict_after_ms`] leaves memory (its
//!   sync states with persistent peers are saved first); who is subscribed
//!   to it is kept, so it is pushed to them again if it changes after being
//!   reloaded.
//!
//! One concept per file: `api` (public types), `access` (what each
//! connection may read, write and create), `conn` (connections and the
//! handshake), `doc` and `phase` (a document's state and lifecycle),
//! `apply` (peers' messages: waiting, coalescing, batches), `fanout`
//! (generating and sharing sync messages), `availability` (requests,
//! `doc-unavailable`, `find`), `persistence` (writes, compaction, storage
//! results), `snapshot_answer`, `placement` (routes, catch-up, coverage),
//! `off_loop` (applying large documents' messages on another thread),
//! `shared_store` (changes other hubs committed to a store we share),
//! `budget` (eviction, offload), `replicas` (lag, divergence) and
//! `refetch` (its last resort), `policy` (hand-offs, pinning, disk budget
//! choices, backfill, home lag), `timers`, `local` (the application's
//! changes, ephemeral messages), `effects` (the output queue).

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ActorId, Automerge, ChangeHash};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ids::{ConnId, DocumentId, PeerId, StorageId};

mod access;
mod api;
mod apply;
mod availability;
mod budget;
mod conn;
mod doc;
mod effects;
mod fanout;
mod limits;
mod local;
mod off_loop;
mod persistence;
mod phase;
mod placement;
mod policy;
mod refetch;
mod replicas;
mod shard;
mod shared_store;
mod snapshot_answer;
mod timers;

pub use access::{Access, DocSet, Refusal};
pub use api::*;
pub use off_loop::{Applied, ApplyJob};
pub use policy::{HandoffStatus, HandoffTargets};
pub use refetch::REFETCH_AGAIN_AFTER_MS;
pub use replicas::{Divergence, MAX_REPAIRS, ReplicaStatus};
pub use shard::{Route, Shard, ShardedEngine, route, shard_config};

use conn::Conn;
use doc::DocState;
use effects::Effects;
use policy::Policy;
use timers::Timers;

/// The sync engine of one node. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    rng: ChaCha8Rng,
    next_conn: u64,
    conns: BTreeMap<ConnId, Conn>,
    /// Ready connections by the peer id they joined as and their subject
    /// (see `conn::handle_join`: nodes of different subjects may share a
    /// peer id).
    peers: BTreeMap<(PeerId, String), ConnId>,
    /// Boxed: a document's state is 4 KB (automerge's alone 3.5 KB), and a
    /// map node keeps room for eleven.
    docs: BTreeMap<DocumentId, Box<DocState>>,
    /// Connections that have shown interest in a document, kept across
    /// eviction so changes are still pushed to them.
    subscribers: BTreeMap<DocumentId, BTreeSet<ConnId>>,
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
    /// Documents created per token subject in the current minute (see
    /// [`EngineConfig::creates_per_minute`]).
    creations: BTreeMap<String, limits::Window>,
    /// The last [`ApplyJob`]'s number.
    next_job: u64,
    stats: EngineStats,
    /// Between [`Self::begin_batch`] and [`Self::end_batch`]: documents
    /// whose peers' messages wait to be applied, in the order they came.
    batch: Option<Vec<DocumentId>>,
    out: Effects,
    timers: Timers,
    policy: Policy,
    /// Replicas whose heads differ from ours, watched for divergence.
    replica_watch: BTreeMap<(DocumentId, ConnId), replicas::Watch>,
    /// Durable heads followed until every replica confirms them.
    replica_lag: BTreeMap<DocumentId, Vec<replicas::Followed>>,
    replica_lag_len: usize,
    /// When each document was last refetched (see `refetch`).
    refetched: BTreeMap<DocumentId, Millis>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            next_conn: 0,
            conns: BTreeMap::new(),
            peers: BTreeMap::new(),
            docs: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            ephemeral_seen: BTreeMap::new(),
            opened: BTreeSet::new(),
            resync_on_upstream: BTreeSet::new(),
            writes: BTreeMap::new(),
            routes: BTreeMap::new(),
            offloading: BTreeSet::new(),
            creations: BTreeMap::new(),
            next_job: 0,
            stats: EngineStats::default(),
            batch: None,
            out: Effects::new(config.shard),
            timers: Timers::default(),
            policy: Policy::default(),
            replica_watch: BTreeMap::new(),
            replica_lag: BTreeMap::new(),
            replica_lag_len: 0,
            refetched: BTreeMap::new(),
            config,
        }
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.config.peer_id
    }

    /// Which of its node's shards this engine is.
    pub fn shard(&self) -> Shard {
        self.config.shard
    }

    /// Names the store this engine writes to, for handshakes from now on
    /// (a client that opens its store in the background sets it before it
    /// first connects).
    pub fn set_storage_id(&mut self, storage_id: Option<StorageId>) {
        self.config.storage_id = storage_id;
    }

    /// The next thing the driver should do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// Number of documents currently in memory.
    pub fn loaded_docs(&self) -> usize {
        self.docs.len()
    }

    /// Number of connections that completed the handshake.
    pub fn ready_connections(&self) -> usize {
        self.peers.len()
    }

    /// The in-memory document, if loaded (and not still loading).
    pub fn document(&self, doc: &DocumentId) -> Option<&Automerge> {
        self.docs.get(doc).filter(|d| d.is_loaded()).map(|d| &d.doc)
    }

    /// The heads that are durable in our store for a loaded document.
    pub fn durable_heads(&self, doc: &DocumentId) -> Option<Vec<ChangeHash>> {
        self.docs.get(doc).filter(|d| d.is_durable()).map(|d| d.doc.get_heads())
    }

    /// Counters since start.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// A fresh random value from the engine's RNG (for session ids).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.random()
    }

    fn upstream_conns(&self) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, c)| c.is_upstream_ready()).map(|(id, _)| *id).collect()
    }

    fn random_actor(&mut self) -> ActorId {
        let bytes: [u8; 16] = self.rng.random();
        ActorId::from(bytes.as_slice())
    }
}
