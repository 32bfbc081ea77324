//! The engine's public types: configuration, inputs' and outputs' vocabulary, counters.

use automerge::ChangeHash;

#[cfg(doc)]
use super::Engine;
use crate::codec::{Message, PeerMetadata};
use crate::ids::{ConnId, DocumentId, PeerId, StorageId};
use crate::storage::{StorageTask, StorageTaskId};

use super::access::Refusal;
use super::off_loop::ApplyJob;

/// Milliseconds on the driver's clock (monotonic, any origin).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub(super) fn saturating_sub(self, other: Millis) -> u64 {
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
    /// Past it, the least recently active documents that can leave are
    /// evicted (as idle eviction does, before their idle time is up): at
    /// once, then every second while it stays exceeded.
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
    /// document (see `Engine::answer_from_snapshot`). Always on; a test
    /// turns it off to compare against answering after the load.
    pub answer_from_snapshot: bool,
    /// A document's chunks are compacted into one snapshot once they hold
    /// at least this many bytes (and as many as the last snapshot). The
    /// simulation lowers it so small documents are compacted too.
    pub min_compact_bytes: usize,
    /// A backfill ([`Engine::backfill`]) opens its next slice of stored
    /// documents this long after the last.
    pub backfill_interval_ms: u64,
    /// Follow changes durable here until the document's home confirms
    /// them ([`Event::HomeConfirmed`]); the node runtime turns it on.
    pub track_home_lag: bool,
    /// Follow changes durable here until each replica syncing the document
    /// confirms them ([`Event::ReplicaConfirmed`]): the lag of each hop
    /// from here; the node runtime turns it on.
    pub track_replica_lag: bool,
    /// Our copy of a document that stays divergent from a ready upstream's
    /// past every forced resync is quarantined and fetched again (see
    /// `refetch`); the node runtime turns it on for edges.
    pub refetch_divergent: bool,
    /// A peer that connected to us and has not sent `join` this long after
    /// is refused and closed (sockets that never join cost nothing for
    /// long). 0: no limit.
    pub join_timeout_ms: u64,
    /// A client's ephemeral messages: at most this many bytes of data each,
    /// and this many per second per connection (0: no limit); past either,
    /// they are dropped and the client is told once (links between nodes
    /// are not limited).
    pub ephemeral_max_bytes: usize,
    pub ephemeral_per_second: u32,
    /// A client's requests for documents nobody has, per minute: past it,
    /// its requests for documents not in memory are answered
    /// `doc-unavailable` at once, with no storage read and no lookup
    /// upstream, and it is told once (a flood of random ids costs nothing).
    /// Links between nodes are not limited; 0: no limit.
    pub unknown_requests_per_minute: u32,
    /// Documents one token subject may create per minute; past it, its
    /// changes to documents nobody has are refused and it is told once.
    /// Clients without a subject (open dev mode) and links between nodes
    /// are not limited; 0: no limit.
    pub creates_per_minute: u32,
    /// A client's message may hold at most this many operations (counted
    /// without loading, `crate::chunks`), and past the first
    /// [`FREE_OPS`] at most `max_ops_per_byte` per byte of the message (a
    /// 1.2 KB saved document can hold a million operations); past either
    /// it is refused with an `error` and the connection closed, before
    /// anything is loaded. 0: no limit. Links between nodes are not limited.
    pub max_message_ops: u64,
    pub max_ops_per_byte: u64,
    /// A client's changes may not take a document past this many
    /// operations (0: no limit).
    pub max_document_ops: u64,
    /// Messages whose application is estimated to cost more than this
    /// (operations in the document plus those the messages bring) are
    /// applied away from the engine's thread ([`Output::Apply`]), so one
    /// large document does not stall the others; 0: always in line.
    /// Automerge applies a peer's change to a long text in time that grows
    /// with the text (about 0.2 s per call at a million characters).
    pub apply_off_loop_ops: u64,
    /// Send sync messages while our writes are in flight, and apply peers'
    /// messages without waiting for the commit in flight: for a client
    /// whose store is its own cache (a browser tab), so a keystroke goes
    /// out while IndexedDB commits it and a remote edit shows at once. Its
    /// heads may then cover changes a crash loses here; the server holds
    /// every change it acknowledged and sends them again when the client
    /// reconnects (a restarted client edits with a new actor, so nothing
    /// it lost is made twice), and the server's acknowledgement stays the
    /// durability signal (`whenSynced`). Never for a node other nodes count
    /// on: edges and hubs keep durable before advertised.
    pub send_before_durable: bool,
    /// Several people writing one document: a client that wrote to it in
    /// the last two seconds gets changes at most every this many ms, folded
    /// into one message (fewer, larger messages for busy clients); readers
    /// and links to other nodes are never held. 0: off.
    pub co_writer_spacing_ms: u64,
    /// Which of the node's shards this engine is (see `shard`): it owns the
    /// documents that hash to it, and only the primary answers handshakes.
    pub shard: super::Shard,
}

/// Operations a client's message may hold whatever its size (see
/// [`EngineConfig::max_ops_per_byte`]).
pub const FREE_OPS: u64 = 100_000;

/// Compressed data in a client's message may inflate to at most this many
/// bytes per column or change before it is counted.
pub const MAX_INFLATED_BYTES: usize = 64 << 20;

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
            backfill_interval_ms: 1000,
            track_home_lag: false,
            track_replica_lag: false,
            refetch_divergent: false,
            join_timeout_ms: 10_000,
            ephemeral_max_bytes: 64 * 1024,
            ephemeral_per_second: 50,
            unknown_requests_per_minute: 120,
            creates_per_minute: 120,
            max_message_ops: 2_000_000,
            max_ops_per_byte: 64,
            max_document_ops: 10_000_000,
            apply_off_loop_ops: 0,
            send_before_durable: false,
            co_writer_spacing_ms: 60,
            shard: super::Shard::default(),
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
    HandshakeTimeout,
    TokenExpired,
    TokenRevoked,
    /// A message or a document past the operation limits.
    TooManyOps,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Decode,
        ErrorKind::NotJoined,
        ErrorKind::UnsupportedVersion,
        ErrorKind::InvalidSyncMessage,
        ErrorKind::Oversize,
        ErrorKind::TextFrame,
        ErrorKind::Unauthorized,
        ErrorKind::HandshakeTimeout,
        ErrorKind::TokenExpired,
        ErrorKind::TokenRevoked,
        ErrorKind::TooManyOps,
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
            ErrorKind::HandshakeTimeout => "handshake_timeout",
            ErrorKind::TokenExpired => "token_expired",
            ErrorKind::TokenRevoked => "token_revoked",
            ErrorKind::TooManyOps => "too_many_ops",
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
    /// A client's changes created a document this node did not have
    /// (with the create right); `subject` is its token's `sub` (never
    /// empty: clients without one are not reported).
    Created {
        doc: DocumentId,
        conn: ConnId,
        subject: String,
    },
    /// A peer was refused something its grants do not allow, without
    /// being disconnected (see `access`).
    Refused {
        conn: ConnId,
        doc: Option<DocumentId>,
        refusal: Refusal,
    },
    StorageFailed {
        doc: Option<DocumentId>,
        detail: String,
    },
    Evicted {
        doc: DocumentId,
    },
    /// A replica (a peer syncing the document) advertised heads covering
    /// a change `lag_ms` after it became durable here
    /// ([`EngineConfig::track_replica_lag`]).
    ReplicaConfirmed {
        doc: DocumentId,
        conn: ConnId,
        lag_ms: u64,
    },
    /// A change durable here reached the document's home (its advertised
    /// heads cover it) `lag_ms` after it became durable here: how far the
    /// home is behind (not for documents homed here, nor changes the home
    /// already had). See [`Engine::pin`].
    HomeConfirmed {
        doc: DocumentId,
        lag_ms: u64,
    },
    /// Another node (on a link between nodes) sent changes to a document
    /// that this copy refuses (automerge's error in `detail`: an actor's
    /// sequence forked, say). The link stays open — one document must not
    /// cut a node off for all the others — and the replica is left to the
    /// divergence watch ([`Engine::check_divergence`]).
    Unapplicable {
        doc: DocumentId,
        conn: ConnId,
        detail: String,
    },
    /// Our copy of a divergent document was replaced by the upstream's
    /// (the old one is in the store's quarantine, see `refetch`):
    /// `restored` changes of ours it lacked were applied to it again,
    /// `left` could not be (they are only in the quarantine).
    Refetched {
        doc: DocumentId,
        restored: u64,
        left: u64,
    },
}

/// Everything the engine asks of its driver.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Send {
        conn: ConnId,
        message: Message,
    },
    Close {
        conn: ConnId,
        reason: String,
    },
    Storage {
        id: StorageTaskId,
        task: StorageTask,
    },
    /// Apply a document's messages (on any thread) and hand the result to
    /// [`Engine::handle_applied`]; the document takes no other peer message
    /// meanwhile (see [`EngineConfig::apply_off_loop_ops`]).
    Apply(ApplyJob),
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
    /// Drains of a document's messages applied away from the engine's
    /// thread ([`Output::Apply`]).
    pub applied_off_loop: u64,
    /// Times changes another node committed to a shared store were taken
    /// in (`Engine::handle_stored_elsewhere`, refreshes).
    pub stored_elsewhere: u64,
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
    /// the document was loaded (`Engine::answer_from_snapshot`).
    pub snapshot_answers: u64,
    /// Copies of divergent documents replaced by an upstream's (`refetch`).
    pub refetches: u64,
}

impl EngineStats {
    /// Both counts added (the shards of one node).
    pub fn sum(&self, other: &Self) -> Self {
        Self {
            offloaded: self.offloaded + other.offloaded,
            applied_off_loop: self.applied_off_loop + other.applied_off_loop,
            stored_elsewhere: self.stored_elsewhere + other.stored_elsewhere,
            cold_opens: self.cold_opens + other.cold_opens,
            sync_generated: self.sync_generated + other.sync_generated,
            sync_shared: self.sync_shared + other.sync_shared,
            sync_merged: self.sync_merged + other.sync_merged,
            snapshot_answers: self.snapshot_answers + other.snapshot_answers,
            refetches: self.refetches + other.refetches,
        }
    }
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
